"""A boto3 smoke check: what a Python user does, against a running Freshet.

Usage: python3 tests/smoke/boto3_smoke.py [ENDPOINT]   (default http://127.0.0.1:4567)
Exits non-zero with a message on the first thing that does not work.
"""
import sys
import time
import uuid

import boto3

endpoint = sys.argv[1] if len(sys.argv) > 1 else "http://127.0.0.1:4567"
kinesis = boto3.client(
    "kinesis",
    endpoint_url=endpoint,
    region_name="us-east-1",
    aws_access_key_id="test",
    aws_secret_access_key="test",
)
name = "smoke-" + uuid.uuid4().hex[:8]
kinesis.create_stream(StreamName=name, ShardCount=2, Tags={"suite": "smoke"})
kinesis.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})

# Tags, as infrastructure-as-code tools set them.
kinesis.add_tags_to_stream(StreamName=name, Tags={"team": "data", "suite": "smoke-2"})
kinesis.remove_tags_from_stream(StreamName=name, TagKeys=["team"])
listed = kinesis.list_tags_for_stream(StreamName=name)
assert listed["Tags"] == [{"Key": "suite", "Value": "smoke-2"}], listed
assert listed["HasMoreTags"] is False, listed

# Retention and shard-level metrics, as infrastructure-as-code tools set them.
kinesis.increase_stream_retention_period(StreamName=name, RetentionPeriodHours=168)
try:
    kinesis.decrease_stream_retention_period(StreamName=name, RetentionPeriodHours=200)
    raise AssertionError("a decrease to a longer period was accepted")
except kinesis.exceptions.InvalidArgumentException:
    pass
kinesis.enable_enhanced_monitoring(StreamName=name, ShardLevelMetrics=["IncomingBytes"])
summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
assert summary["RetentionPeriodHours"] == 168, summary
assert summary["EnhancedMonitoring"] == [{"ShardLevelMetrics": ["IncomingBytes"]}], summary

first = kinesis.put_record(StreamName=name, PartitionKey="alpha", Data=b"hello")
batch = kinesis.put_records(
    StreamName=name,
    Records=[{"PartitionKey": "key-%d" % i, "Data": ("record-%d" % i).encode()} for i in range(20)],
)
assert batch["FailedRecordCount"] == 0, batch

seen = []
for shard in kinesis.list_shards(StreamName=name)["Shards"]:
    iterator = kinesis.get_shard_iterator(
        StreamName=name, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON"
    )["ShardIterator"]
    records = kinesis.get_records(ShardIterator=iterator, Limit=1000)["Records"]
    seen.extend(r["Data"] for r in records)
assert b"hello" in seen, seen
assert len(seen) == 21, len(seen)

summary = kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
assert summary["OpenShardCount"] == 2, summary
assert "StreamId" not in summary, summary

try:
    kinesis.describe_stream(StreamName="does-not-exist-" + name)
    raise AssertionError("describing a missing stream must fail")
except kinesis.exceptions.ResourceNotFoundException:
    pass

# An enhanced fan-out consumer, as KCL registers one: CREATING, then ACTIVE
# within its ten one-second polls.

stream_arn = summary["StreamARN"]
consumer = kinesis.register_stream_consumer(StreamARN=stream_arn, ConsumerName="smoke")["Consumer"]
assert consumer["ConsumerStatus"] == "CREATING", consumer
for _ in range(10):
    described = kinesis.describe_stream_consumer(ConsumerARN=consumer["ConsumerARN"])["ConsumerDescription"]
    if described["ConsumerStatus"] == "ACTIVE":
        break
    time.sleep(1)
assert described["ConsumerStatus"] == "ACTIVE", described
assert described["StreamARN"] == stream_arn, described
listed = [
    c["ConsumerName"]
    for page in kinesis.get_paginator("list_stream_consumers").paginate(StreamARN=stream_arn)
    for c in page["Consumers"]
]
assert listed == ["smoke"], listed

# SubscribeToShard over HTTP/1.1 (botocore has no HTTP/2): the records
# written above, pushed as events, with a continuation to resume from.
pushed = []
for shard in kinesis.list_shards(StreamName=name)["Shards"]:
    subscription = kinesis.subscribe_to_shard(
        ConsumerARN=consumer["ConsumerARN"],
        ShardId=shard["ShardId"],
        StartingPosition={"Type": "TRIM_HORIZON"},
    )
    for event in subscription["EventStream"]:
        event = event["SubscribeToShardEvent"]
        pushed.extend(r["Data"] for r in event["Records"])
        assert event["ContinuationSequenceNumber"], event
        if not event["Records"]:
            break  # caught up: an idle heartbeat
    subscription["EventStream"].close()
assert sorted(pushed) == sorted(seen), (len(pushed), len(seen))

# Resubscribing after the last continuation, as KCL does, loses and repeats
# nothing; a split during a subscription ends it with the parent's children
# and no continuation.
parent = kinesis.list_shards(StreamName=name)["Shards"][0]


def subscribe(position):
    time.sleep(1.1)  # one SubscribeToShard per consumer and shard a second
    return kinesis.subscribe_to_shard(
        ConsumerARN=consumer["ConsumerARN"], ShardId=parent["ShardId"], StartingPosition=position
    )["EventStream"]


def read(events, count):
    """Records until `count` arrived (or, with count 0, the first idle event)."""
    got, continuation = [], None
    for event in events:
        event = event["SubscribeToShardEvent"]
        got.extend(r["Data"] for r in event["Records"])
        continuation = event["ContinuationSequenceNumber"]
        if (count and len(got) >= count) or (not count and not event["Records"]):
            return got, continuation
    raise AssertionError("the subscription ended early")


events = subscribe({"Type": "TRIM_HORIZON"})
_, continuation = read(events, 0)
events.close()
keyed = [("efo-%d" % i).encode() for i in range(10)]
for data in keyed:
    kinesis.put_record(StreamName=name, PartitionKey="efo", ExplicitHashKey="0", Data=data)
events = subscribe({"Type": "AFTER_SEQUENCE_NUMBER", "SequenceNumber": continuation})
resumed, _ = read(events, len(keyed))
assert resumed == keyed, resumed
middle = (int(parent["HashKeyRange"]["StartingHashKey"]) + int(parent["HashKeyRange"]["EndingHashKey"])) // 2
kinesis.split_shard(StreamName=name, ShardToSplit=parent["ShardId"], NewStartingHashKey=str(middle))
last = None
for event in events:
    event = event["SubscribeToShardEvent"]
    assert not event["Records"], "nothing was written after the split began"
    if event.get("ChildShards"):
        last = event
        break
assert last is not None, "the parent's subscription ended without its children"
assert last.get("ContinuationSequenceNumber") is None, last
assert len(last["ChildShards"]) == 2, last
assert list(events) == [], "the subscription ends after the children"
kinesis.get_waiter("stream_exists").wait(StreamName=name, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
try:
    kinesis.delete_stream(StreamName=name)
    raise AssertionError("a stream with consumers is deleted only with EnforceConsumerDeletion")
except kinesis.exceptions.ResourceInUseException:
    pass
kinesis.deregister_stream_consumer(StreamARN=stream_arn, ConsumerName="smoke")

# After the split: the parent is closed, its children open.
latest = [s["ShardId"] for s in kinesis.list_shards(StreamName=name, ShardFilter={"Type": "AT_LATEST"})["Shards"]]
at_start = [s["ShardId"] for s in kinesis.list_shards(StreamName=name, ShardFilter={"Type": "AT_TRIM_HORIZON"})["Shards"]]
assert parent["ShardId"] not in latest and len(latest) == 3, latest
assert parent["ShardId"] in at_start and len(at_start) == 2, at_start
limits = kinesis.describe_limits()
assert limits["ShardLimit"] >= limits["OpenShardCount"] >= 3, limits

# AUTO record distribution, where this botocore knows the operation: one
# partition key reaches every shard of an on-demand stream.
if hasattr(kinesis, "update_stream_record_distribution_strategy"):
    spread = name + "-auto"
    kinesis.create_stream(StreamName=spread, StreamModeDetails={"StreamMode": "ON_DEMAND"})
    kinesis.get_waiter("stream_exists").wait(StreamName=spread, WaiterConfig={"Delay": 1, "MaxAttempts": 30})
    spread_arn = kinesis.describe_stream_summary(StreamName=spread)["StreamDescriptionSummary"]["StreamARN"]
    kinesis.update_stream_record_distribution_strategy(StreamARN=spread_arn, RecordDistributionStrategy="AUTO")
    shards = {kinesis.put_record(StreamName=spread, PartitionKey="same", Data=b"x")["ShardId"] for _ in range(8)}
    assert len(shards) == 4, shards
    kinesis.delete_stream(StreamName=spread)

kinesis.delete_stream(StreamName=name)
print("boto3 smoke: ok (%s, first sequence number %s)" % (name, first["SequenceNumber"]))
