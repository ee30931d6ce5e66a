"""boto3 against Freshet in secure mode (FRESHET_AUTH=sigv4): the issued
key works, and every way of getting authentication wrong is refused with
the exception name and HTTP status AWS uses.

Usage: python3 tests/smoke/boto3_secure.py ENDPOINT ACCESS_KEY SECRET_KEY
Exits non-zero with a message on the first thing that does not work.
"""
import sys
import uuid

import boto3
import botocore
from botocore.config import Config
from botocore.exceptions import ClientError

endpoint, access_key, secret_key = sys.argv[1:4]
no_retries = Config(retries={"max_attempts": 1, "mode": "standard"})


def client(key=access_key, secret=secret_key, region="us-east-1", config=no_retries):
    return boto3.client(
        "kinesis",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id=key,
        aws_secret_access_key=secret,
        config=config,
    )


def refused(call, code, status):
    try:
        call()
    except ClientError as error:
        got = (error.response["Error"]["Code"], error.response["ResponseMetadata"]["HTTPStatusCode"])
        assert got == (code, status), "expected %s/%d, got %s/%d: %s" % (code, status, got[0], got[1], error)
        return
    raise AssertionError("expected %s, the call succeeded" % code)


kinesis = client()
name = "secure-" + uuid.uuid4().hex[:8]
kinesis.create_stream(StreamName=name, ShardCount=1)
kinesis.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
kinesis.put_record(StreamName=name, PartitionKey="k", Data=b"signed")
assert name in kinesis.list_streams()["StreamNames"]

refused(lambda: client(secret="wrong" + secret_key).list_streams(), "InvalidSignatureException", 400)
refused(lambda: client(key="AKIANOSUCHKEY0000000").list_streams(), "UnrecognizedClientException", 400)
refused(lambda: client(region="eu-west-1").list_streams(), "InvalidSignatureException", 400)
unsigned = Config(signature_version=botocore.UNSIGNED, retries={"max_attempts": 1, "mode": "standard"})
refused(lambda: client(config=unsigned).list_streams(), "MissingAuthenticationTokenException", 400)
print("boto3 secure-mode checks passed")
