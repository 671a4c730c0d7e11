"""`guaita provision` against moto's IoT API (server mode, real HTTP)."""

import stat
import subprocess
import sys

import boto3
import pytest

from edge.provision import provision


def test_provision_registers_thing_and_writes_key(tmp_path, s3_endpoint):
    iot = boto3.client("iot", endpoint_url=s3_endpoint, region_name="eu-west-1")
    iot.create_policy(policyName="guaita-device", policyDocument='{"Version": "2012-10-17", '
                      '"Statement": [{"Effect": "Allow", "Action": "iot:Connect", '
                      '"Resource": "*"}]}')
    result = provision("pujalt-pi", policy="guaita-device", certs_dir=tmp_path / "certs", iot=iot)
    key = tmp_path / "certs" / "pujalt-pi.key"
    assert "PRIVATE KEY" in key.read_text()
    assert stat.S_IMODE(key.stat().st_mode) == 0o640
    assert "BEGIN CERTIFICATE" in (tmp_path / "certs" / "pujalt-pi.pem").read_text()
    principals = iot.list_thing_principals(thingName="pujalt-pi")["principals"]
    assert principals == [result["certificate_arn"]]
    policies = iot.list_attached_policies(target=result["certificate_arn"])["policies"]
    assert [p["policyName"] for p in policies] == ["guaita-device"]
    with pytest.raises(FileExistsError):
        provision("pujalt-pi", policy="guaita-device", certs_dir=tmp_path / "certs", iot=iot)


def test_provision_refuses_bad_names(tmp_path, s3_endpoint):
    out = subprocess.run([sys.executable, "-m", "edge.cli", "provision", "../evil",
                          "--certs-dir", str(tmp_path), "--endpoint-url", s3_endpoint,
                          "--region", "eu-west-1"], capture_output=True, text=True, check=False)
    assert out.returncode == 2 and "thing name" in out.stderr
