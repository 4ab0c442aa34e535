"""Starts an S3 server (moto) and an Azure Blob server (Azurite) on 127.0.0.1, each on a
port the OS picks, creates the bucket and the container the tests use, prints one JSON
line with their endpoints, and stops both when its standard input closes (the test
that started it ended, or died) or on SIGTERM.

Installed by scripts/object-store-env.sh; run with the .venv's Python:

    .venv/bin/python scripts/object_stores.py [--bucket quiver] [--container quiver]

The credentials are the servers' well-known test ones; nothing leaves 127.0.0.1.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

# Azurite's documented development account (not a secret: every emulator has it).
AZURE_ACCOUNT = "devstoreaccount1"
AZURE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
DEADLINE_S = 60


def start(cmd, pattern, name, env=None):
    """Start `cmd`; wait for a line matching `pattern` (its port) within the deadline."""
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        start_new_session=True,
    )
    found = {}
    lines = []

    def read():
        for line in proc.stdout:
            lines.append(line)
            m = re.search(pattern, line)
            if m and "port" not in found:
                found["port"] = int(m.group(1))
        # Keep draining until exit so the server never blocks on a full pipe.

    threading.Thread(target=read, daemon=True).start()
    deadline = time.monotonic() + DEADLINE_S
    while "port" not in found:
        if proc.poll() is not None or time.monotonic() > deadline:
            stop(proc)
            sys.exit(f"{name} did not start within {DEADLINE_S}s:\n{''.join(lines)[-4000:]}")
        time.sleep(0.05)
    return proc, found["port"]


def stop(proc):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=5)
        except Exception:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except Exception:
                pass


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bucket", default="quiver")
    ap.add_argument("--container", default="quiver")
    ap.add_argument("--azurite", default=os.environ.get("QUIVER_AZURITE") or os.path.expanduser(
        "~/.cache/quiver/azurite/node_modules/.bin/azurite-blob"))
    args = ap.parse_args()
    venv_bin = os.path.dirname(sys.executable)
    procs = []
    try:
        # moto checks signatures once its first three requests (which create the IAM
        # user whose key the tests sign with) are done: a wrong secret is refused.
        moto, s3_port = start(
            [os.path.join(venv_bin, "moto_server"), "-H", "127.0.0.1", "-p", "0"],
            r"Running on http://127\.0\.0\.1:(\d+)",
            "moto_server",
            env=dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="3"),
        )
        procs.append(moto)
        azurite, az_port = start(
            [args.azurite, "--blobHost", "127.0.0.1", "--blobPort", "0", "--inMemoryPersistence",
             "--disableTelemetry", "--skipApiVersionCheck", "--loose"]
            + (["--debug", os.environ["QUIVER_AZURITE_DEBUG"]] if os.environ.get("QUIVER_AZURITE_DEBUG") else []),
            r"listens on http://127\.0\.0\.1:(\d+)",
            "azurite",
        )
        procs.append(azurite)

        import boto3
        s3_endpoint = f"http://127.0.0.1:{s3_port}"
        iam = boto3.client("iam", endpoint_url=s3_endpoint, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="quiver")
        key = iam.create_access_key(UserName="quiver")["AccessKey"]
        iam.put_user_policy(UserName="quiver", PolicyName="all", PolicyDocument=json.dumps({
            "Version": "2012-10-17",
            "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        S3_KEY_ID, S3_SECRET = key["AccessKeyId"], key["SecretAccessKey"]
        boto3.client(
            "s3", endpoint_url=s3_endpoint, region_name="us-east-1",
            aws_access_key_id=S3_KEY_ID, aws_secret_access_key=S3_SECRET,
        ).create_bucket(Bucket=args.bucket)

        from azure.storage.blob import BlobServiceClient
        az_endpoint = f"http://127.0.0.1:{az_port}/{AZURE_ACCOUNT}"
        BlobServiceClient(
            account_url=az_endpoint,
            credential={"account_name": AZURE_ACCOUNT, "account_key": AZURE_KEY},
        ).create_container(args.container)

        print(json.dumps({
            "s3": {"endpoint": s3_endpoint, "bucket": args.bucket, "region": "us-east-1",
                    "access_key_id": S3_KEY_ID, "secret_access_key": S3_SECRET},
            "azure": {"endpoint": az_endpoint, "container": args.container,
                      "account": AZURE_ACCOUNT, "key": AZURE_KEY},
        }), flush=True)
        signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
        # Until the parent closes our stdin (or dies, which closes it too).
        sys.stdin.read()
    finally:
        for p in procs:
            stop(p)


if __name__ == "__main__":
    main()
