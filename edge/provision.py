"""``guaita provision``: register this Pi as an AWS IoT thing and install its certificate.

Runs once, by an admin with AWS credentials (an AWS profile), not by the service: it creates the
thing, a key pair and certificate, attaches the device policy (from the cloud template) and the
thing, writes the key and certificate with tight modes, and prints the ``[mqtt]`` settings for
/etc/guaita.toml. The private key never leaves this machine except through this one API answer.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

THING_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")  # also a valid observatory id


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("thing", help="thing name = MQTT client id = observatory id")
    parser.add_argument("--policy", default="guaita-device",
                        help="IoT policy to attach (created by cloud/template.yaml)")
    parser.add_argument("--certs-dir", type=Path, default=Path("/etc/guaita/certs"))
    parser.add_argument("--region", default=None)
    parser.add_argument("--profile", default=None, help="AWS profile with IoT admin rights")
    parser.add_argument("--endpoint-url", default=None, help="IoT API endpoint (tests)")


def provision(thing: str, *, policy: str, certs_dir: Path, iot) -> dict[str, str]:
    """Create and attach everything; return the written paths and the data endpoint."""
    if not THING_RE.match(thing):
        raise ValueError(f"thing name {thing!r}: letters, digits, '-' and '_' only, 1-64 chars")
    key_path, cert_path = certs_dir / f"{thing}.key", certs_dir / f"{thing}.pem"
    if key_path.exists():
        raise FileExistsError(f"{key_path} exists; remove it to provision again")
    iot.create_thing(thingName=thing)
    created = iot.create_keys_and_certificate(setAsActive=True)
    iot.attach_policy(policyName=policy, target=created["certificateArn"])
    iot.attach_thing_principal(thingName=thing, principal=created["certificateArn"])
    certs_dir.mkdir(parents=True, exist_ok=True)
    # Write the key with 0640 from the first byte: never world-readable, even briefly.
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    with os.fdopen(fd, "w") as fh:
        fh.write(created["keyPair"]["PrivateKey"])
    cert_path.write_text(created["certificatePem"])
    endpoint = iot.describe_endpoint(endpointType="iot:Data-ATS")["endpointAddress"]
    return {"key": str(key_path), "cert": str(cert_path), "endpoint": endpoint,
            "certificate_arn": created["certificateArn"]}


def run(args: argparse.Namespace) -> int:
    import boto3

    session = boto3.Session(profile_name=args.profile, region_name=args.region)
    iot = session.client("iot", endpoint_url=args.endpoint_url)
    try:
        result = provision(args.thing, policy=args.policy, certs_dir=args.certs_dir, iot=iot)
    except (ValueError, FileExistsError) as exc:
        print(f"guaita provision: {exc}", file=sys.stderr)
        return 2
    print(f"""thing {args.thing} registered; certificate {result['certificate_arn']}
Put this in /etc/guaita.toml (Amazon's root CA: https://www.amazontrust.com/repository/AmazonRootCA1.pem):

observatory = "{args.thing}"
[mqtt]
enabled = true
host = "{result['endpoint']}"
port = 8883
client_id = "{args.thing}"
[mqtt.tls]
ca = "{args.certs_dir / 'AmazonRootCA1.pem'}"
cert = "{result['cert']}"
key = "{result['key']}"
""")
    return 0
