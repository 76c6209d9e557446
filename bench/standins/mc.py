#!/usr/bin/env python3
"""The `mc` commands minio-init and the healthcheck use, against moto (benchmark only)."""

import json
import sys
import urllib.request
from pathlib import Path

ALIASES = Path("/tmp/mc-aliases.json")


def endpoint(alias: str) -> str:
    if alias == "local" and not ALIASES.exists():
        return "http://127.0.0.1:9000"
    return json.loads(ALIASES.read_text())[alias]["url"]


def main(args: list[str]) -> int:
    if args[:1] == ["ready"]:
        urllib.request.urlopen(endpoint(args[1]) + "/moto-api/", timeout=4)
        return 0
    if args[:2] == ["alias", "set"]:
        aliases = json.loads(ALIASES.read_text()) if ALIASES.exists() else {}
        aliases[args[2]] = {"url": args[3], "user": args[4], "password": args[5]}
        ALIASES.write_text(json.dumps(aliases))
        return 0
    if args[:1] == ["mb"]:
        import boto3

        target = [a for a in args[1:] if not a.startswith("--")][0]
        alias, _, bucket = target.partition("/")
        s3 = boto3.client(
            "s3",
            endpoint_url=endpoint(alias),
            region_name="us-east-1",
            aws_access_key_id="standin",
            aws_secret_access_key="standin",
        )
        if bucket not in [b["Name"] for b in s3.list_buckets()["Buckets"]]:
            s3.create_bucket(Bucket=bucket)
        print(f"Bucket created successfully `{target}`.")
        return 0
    if args[:1] == ["admin"]:
        print("mc admin " + " ".join(args[1:3]) + ": accepted (moto checks no credentials)")
        return 0
    print(f"mc stand-in: unsupported command {args}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
