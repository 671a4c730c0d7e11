"""Infrastructure template (cfn-lint, security properties) and the Lambda zip."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import yaml

from cloud import build_lambda

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "cloud" / "template.yaml"
CFN_LINT = Path(sys.executable).with_name("cfn-lint")


class _Loader(yaml.SafeLoader):
    """Reads CloudFormation short-form tags (!Ref, !Sub, ...) as {"Fn::X": value}."""


def _tag(loader: yaml.Loader, suffix: str, node: yaml.Node) -> dict:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value = loader.construct_scalar(node)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


_Loader.add_multi_constructor("!", _tag)


@pytest.fixture(scope="module")
def template() -> dict:
    return yaml.load(TEMPLATE.read_text(), Loader=_Loader)  # a SafeLoader subclass


def test_cfn_lint_clean() -> None:
    run = subprocess.run([str(CFN_LINT), str(TEMPLATE)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_cfn_lint_catches_a_broken_template(tmp_path: Path) -> None:
    # The check above is only worth something if cfn-lint really reads the SAM resources.
    broken = TEMPLATE.read_text().replace(
        "      Handler: cloud.ingest.handler\n",
        "      Handler: cloud.ingest.handler\n      Handlr: typo\n",
    )
    path = tmp_path / "broken.yaml"
    path.write_text(broken)
    run = subprocess.run([str(CFN_LINT), str(path)], capture_output=True, text=True)
    assert run.returncode != 0 and "Handlr" in run.stdout


def _resources(template: dict, kind: str) -> dict:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def test_bucket_private_encrypted_with_preview_lifecycle(template: dict) -> None:
    [bucket] = _resources(template, "AWS::S3::Bucket").values()
    props = bucket["Properties"]
    assert all(props["PublicAccessBlockConfiguration"].values())
    assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"][0][
        "ServerSideEncryptionByDefault"]["SSEAlgorithm"] in ("AES256", "aws:kms")
    rules = {r["Id"]: r for r in props["LifecycleConfiguration"]["Rules"]}
    assert rules["expire-previews"]["Prefix"] == "previews/"
    assert rules["expire-previews"]["ExpirationInDays"] == {"Ref": "PreviewRetentionDays"}


def test_device_policy_uses_thing_name_variables(template: dict) -> None:
    [policy] = _resources(template, "AWS::IoT::Policy").values()
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    by_action: dict[str, str] = {}
    for s in statements:
        for action in [s["Action"]] if isinstance(s["Action"], str) else s["Action"]:
            by_action[action] = json.dumps(s["Resource"])
    thing = "${!iot:Connection.Thing.ThingName}"
    assert by_action["iot:Connect"].endswith(f':client/{thing}"}}')
    assert by_action["iot:Publish"].endswith(f':topic/${{TopicPrefix}}/{thing}/*"}}')
    assert "*" not in by_action["iot:Connect"]
    assert "iot:*" not in by_action


def test_rule_sql_error_action_and_permission(template: dict) -> None:
    [rule] = _resources(template, "AWS::IoT::TopicRule").values()
    payload = rule["Properties"]["TopicRulePayload"]
    assert payload["AwsIotSqlVersion"] == "2016-03-23"
    assert payload["Sql"] == {
        "Fn::Sub": "SELECT *, topic(2) AS thing FROM '${TopicPrefix}/+/detection' "
        "WHERE isUndefined(thing)"
    }
    assert payload["ErrorAction"]["S3"]["Key"].startswith("ingest-errors/")
    [permission] = _resources(template, "AWS::Lambda::Permission").values()
    assert permission["Properties"]["Principal"] == "iot.amazonaws.com"
    assert "SourceArn" in permission["Properties"]


def test_least_privilege_for_the_functions(template: dict) -> None:
    functions = _resources(template, "AWS::Serverless::Function")
    for name, fn in functions.items():
        for policy in fn["Properties"]["Policies"]:
            for s in policy["Statement"]:
                actions = [s["Action"]] if isinstance(s["Action"], str) else s["Action"]
                assert not any(a.endswith("*") for a in actions), (name, actions)
                assert s["Resource"] != "*", name
    ingest = functions["IngestFunction"]["Properties"]
    assert ingest["Handler"] == "cloud.ingest.handler"
    assert "TELEGRAM_TOKEN" not in ingest["Environment"]["Variables"]  # only the SSM name
    assert ingest["EventInvokeConfig"]["DestinationConfig"]["OnFailure"]["Type"] == "SQS"
    assert functions["WebsiteFunction"]["Properties"]["Events"]["Daily"]["Type"] == "Schedule"
    alias = _resources(template, "AWS::IoT::RoleAlias")
    assert len(alias) == 1


def test_lambda_zip_contents_and_isolated_import(tmp_path: Path) -> None:
    first = build_lambda.build(tmp_path / "a" / "lambda.zip")
    second = build_lambda.build(tmp_path / "b" / "lambda.zip")
    assert first.read_bytes() == second.read_bytes()  # reproducible
    with zipfile.ZipFile(first) as zf:
        names = set(zf.namelist())
        zf.extractall(tmp_path / "unzipped")
    assert {"cloud/ingest.py", "cloud/telegram.py", "cloud/website.py",
            "edge/eventschema.py", "edge/schemas/event.schema.json"} <= names
    assert not any(n.startswith("edge/") and n not in build_lambda.EXTRA for n in names)
    # Only the zip and the standard library + boto3 (as in the Lambda runtime) on the path.
    code = (
        "import sys; sys.path[:0] = [sys.argv[1]]\n"
        "import cloud.ingest, cloud.website, edge.eventschema\n"
        "assert cloud.ingest.__file__.startswith(sys.argv[1]), cloud.ingest.__file__\n"
        "assert edge.eventschema.event_schema()['title'].startswith('guaita')\n"
        "assert 'numpy' not in sys.modules and 'cv2' not in sys.modules\n"
    )
    run = subprocess.run(
        [sys.executable, "-I", "-c", code, str(tmp_path / "unzipped")],
        capture_output=True, text=True, cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
