//! CBOR 1.1, the Java SDK's (and so KCL's) default protocol: every
//! operation answers a CBOR request as it answers the same JSON one, with
//! a client built from botocore's model of the API (`cbor_client.rs`),
//! and SubscribeToShard's events come in CBOR.

use std::time::Duration;

use freshet_e2e::cbor_client::{same_reply, Model};
use freshet_e2e::raw_http::{kinesis_cbor, kinesis_http1, DEV_AMZ_DATE, DEV_AUTHORIZATION};
use freshet_e2e::{create_active_stream, stream_arn, wait_until, Cluster};
use serde_json::{json, Value};

fn header<'a>(response: &'a freshet_e2e::raw_http::RawResponse, name: &str) -> Option<&'a str> {
    response
        .headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Calls `operation` with `input` in JSON and in CBOR; both answers, in
/// JSON form (the CBOR one read by the model).
async fn both(
    model: &Model,
    address: &str,
    operation: &str,
    input: &Value,
) -> anyhow::Result<(u16, Value, u16, Value)> {
    let input_shape = model
        .io_shape(operation, "input")
        .ok_or_else(|| anyhow::anyhow!("{operation} has no input"))?;
    let json_answer = kinesis_http1(address, operation, &input.to_string()).await?;
    let cbor_answer = kinesis_cbor(address, operation, &model.encode(&input_shape, input)?).await?;
    assert_eq!(
        header(&cbor_answer, "content-type"),
        Some("application/x-amz-cbor-1.1"),
        "{operation}"
    );
    let json_value: Value = if json_answer.body.is_empty() {
        json!({})
    } else {
        serde_json::from_str(&json_answer.body)?
    };
    let cbor_value = if cbor_answer.status == 200 {
        match model.io_shape(operation, "output") {
            Some(shape) => model.decode(&shape, &cbor_answer.body_bytes)?,
            None => model.decode("DescribeStreamInput", &cbor_answer.body_bytes)?,
        }
    } else {
        // An error: `__type` and `message`, with the type in a header too.
        let value = model.decode("DescribeStreamInput", &cbor_answer.body_bytes);
        let value = value.unwrap_or_else(|_| json!({}));
        assert_eq!(
            header(&cbor_answer, "x-amzn-errortype"),
            value["__type"].as_str(),
            "{operation}"
        );
        value
    };
    Ok((
        json_answer.status,
        json_value,
        cbor_answer.status,
        cbor_value,
    ))
}

/// The answers agree once what legitimately differs between two calls
/// (fresh iterators and tokens) is set aside.
fn assert_same(operation: &str, json: &Value, cbor: &Value) {
    let strip = |value: &Value| {
        let mut value = value.clone();
        if let Some(map) = value.as_object_mut() {
            map.remove("NextShardIterator");
            map.remove("ShardIterator");
            map.remove("NextToken");
        }
        value
    };
    assert!(
        same_reply(&strip(json), &strip(cbor)),
        "{operation}: JSON {json} but CBOR {cbor}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_operation_answers_cbor_as_it_answers_json() -> anyhow::Result<()> {
    let model = Model::from_botocore()?;
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    let address = cluster.endpoint.trim_start_matches("http://").to_owned();

    // The frontend maps blobs and timestamps by member name: no member
    // name of the model may have two types.
    let mut types = std::collections::HashMap::new();
    for (_, member, kind) in model.typed_members() {
        let special = matches!(kind.as_str(), "blob" | "timestamp");
        let previous = types.insert(member.clone(), (kind.clone(), special));
        if let Some((other, other_special)) = previous {
            assert!(
                other == kind || !(special || other_special),
                "member {member} is both {other} and {kind}"
            );
        }
    }

    // Every operation of the model, with an empty input: the same
    // exception (or answer) either way.
    for operation in model.operations() {
        if operation == "SubscribeToShard" {
            continue; // an event stream: below
        }
        let (json_status, json, cbor_status, cbor) =
            both(&model, &address, &operation, &json!({})).await?;
        assert_eq!(json_status, cbor_status, "{operation}: {json} / {cbor}");
        assert_eq!(json["__type"], cbor["__type"], "{operation}");
    }

    // Through a stream's life, written in CBOR, each answer as JSON's.
    let created = kinesis_cbor(
        &address,
        "CreateStream",
        &model.encode(
            "CreateStreamInput",
            &json!({"StreamName": "binary", "ShardCount": 1, "Tags": {"lang": "java"}}),
        )?,
    )
    .await?;
    assert_eq!(created.status, 200, "{}", created.body);
    wait_until(Duration::from_secs(10), || {
        freshet_e2e::is_active(&client, "binary")
    })
    .await?;
    // Bytes no text encoding would carry intact.
    let payload: Vec<u8> = (0..=255).collect();
    use base64::Engine as _;
    let data = base64::engine::general_purpose::STANDARD.encode(&payload);
    let put = kinesis_cbor(
        &address,
        "PutRecord",
        &model.encode(
            "PutRecordInput",
            &json!({"StreamName": "binary", "PartitionKey": "k", "Data": data}),
        )?,
    )
    .await?;
    assert_eq!(put.status, 200, "{}", put.body);
    let put = kinesis_cbor(
        &address,
        "PutRecords",
        &model.encode(
            "PutRecordsInput",
            &json!({"StreamName": "binary", "Records": [
                {"PartitionKey": "a", "Data": "AA=="},
                {"PartitionKey": "b", "Data": "/w=="},
            ]}),
        )?,
    )
    .await?;
    assert_eq!(put.status, 200, "{}", put.body);
    let arn = stream_arn("binary").to_string();
    let registered = kinesis_cbor(
        &address,
        "RegisterStreamConsumer",
        &model.encode(
            "RegisterStreamConsumerInput",
            &json!({"StreamARN": arn, "ConsumerName": "java", "Tags": {"app": "kcl"}}),
        )?,
    )
    .await?;
    assert_eq!(registered.status, 200, "{}", registered.body);
    let tagged = kinesis_cbor(
        &address,
        "AddTagsToStream",
        &model.encode(
            "AddTagsToStreamInput",
            &json!({"StreamName": "binary", "Tags": {"team": "data", "empty": ""}}),
        )?,
    )
    .await?;
    assert_eq!(tagged.status, 200, "{}", tagged.body);
    let consumer = model.decode("RegisterStreamConsumerOutput", &registered.body_bytes)?;
    let consumer_arn = consumer["Consumer"]["ConsumerARN"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    let iterator: Value = serde_json::from_str(
        &kinesis_http1(
            &address,
            "GetShardIterator",
            &json!({"StreamName": "binary", "ShardId": "shardId-000000000000", "ShardIteratorType": "TRIM_HORIZON"}).to_string(),
        )
        .await?
        .body,
    )?;
    let summary = client
        .describe_stream_summary()
        .stream_name("binary")
        .send()
        .await?
        .stream_description_summary
        .ok_or_else(|| anyhow::anyhow!("no summary"))?;
    let created_at = summary.stream_creation_timestamp.as_secs_f64();
    let reads = [
        ("DescribeStream", json!({"StreamName": "binary"})),
        ("DescribeStreamSummary", json!({"StreamName": "binary"})),
        ("ListStreams", json!({})),
        ("ListShards", json!({"StreamName": "binary"})),
        (
            "ListShards",
            json!({"StreamARN": arn, "StreamCreationTimestamp": created_at}),
        ),
        (
            "GetShardIterator",
            json!({"StreamName": "binary", "ShardId": "shardId-000000000000", "ShardIteratorType": "AT_TIMESTAMP", "Timestamp": created_at}),
        ),
        (
            "GetRecords",
            json!({"ShardIterator": iterator["ShardIterator"]}),
        ),
        (
            "DescribeStreamConsumer",
            json!({"ConsumerARN": consumer_arn}),
        ),
        ("ListStreamConsumers", json!({"StreamARN": arn})),
        (
            "ListTagsForStream",
            json!({"StreamName": "binary", "Limit": 2}),
        ),
        ("ListTagsForResource", json!({"ResourceARN": arn})),
        ("ListTagsForResource", json!({"ResourceARN": consumer_arn})),
        ("DescribeAccountSettings", json!({})),
        ("DescribeStream", json!({"StreamName": "missing"})),
    ];
    for (operation, input) in reads {
        let (json_status, json, cbor_status, cbor) =
            both(&model, &address, operation, &input).await?;
        assert_eq!(json_status, cbor_status, "{operation}");
        assert_same(operation, &json, &cbor);
    }
    // The record's bytes came back as they went in.
    let (_, records, _, _) = both(
        &model,
        &address,
        "GetRecords",
        &json!({"ShardIterator": iterator["ShardIterator"]}),
    )
    .await?;
    assert_eq!(records["Records"][0]["Data"], data);

    // A body that is not CBOR is refused in CBOR.
    let garbage = kinesis_cbor(&address, "ListStreams", &[0xff, 0x00]).await?;
    assert_eq!(garbage.status, 400);
    assert_eq!(
        header(&garbage, "x-amzn-errortype"),
        Some("SerializationException")
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_to_shard_in_cbor_sends_cbor_events() -> anyhow::Result<()> {
    let model = Model::from_botocore()?;
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    let address = cluster.endpoint.trim_start_matches("http://").to_owned();
    create_active_stream(&client, "java", 1).await?;
    client
        .put_record()
        .stream_name("java")
        .partition_key("k")
        .data(aws_sdk_kinesis::primitives::Blob::new(vec![0u8, 1, 2, 255]))
        .send()
        .await?;
    let consumer = client
        .register_stream_consumer()
        .stream_arn(stream_arn("java").to_string())
        .consumer_name("kcl")
        .send()
        .await?
        .consumer
        .map(|c| c.consumer_arn)
        .unwrap_or_default();
    wait_until(Duration::from_secs(10), || async {
        client
            .describe_stream_consumer()
            .consumer_arn(&consumer)
            .send()
            .await
            .ok()
            .and_then(|d| d.consumer_description)
            .is_some_and(|d| d.consumer_status == aws_sdk_kinesis::types::ConsumerStatus::Active)
    })
    .await?;

    // Over HTTP/2, as the Java SDK subscribes.
    let body = model.encode(
        "SubscribeToShardInput",
        &json!({"ConsumerARN": consumer, "ShardId": "shardId-000000000000", "StartingPosition": {"Type": "TRIM_HORIZON"}}),
    )?;
    let stream = tokio::net::TcpStream::connect(&address).await?;
    let (h2, connection) = h2::client::handshake(stream).await?;
    tokio::spawn(connection);
    let mut h2 = h2.ready().await?;
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{address}/"))
        .header("content-type", "application/x-amz-cbor-1.1")
        .header("x-amz-target", "Kinesis_20131202.SubscribeToShard")
        .header("authorization", DEV_AUTHORIZATION)
        .header("x-amz-date", DEV_AMZ_DATE)
        .body(())?;
    let (response, mut send) = h2.send_request(request, false)?;
    send.send_data(bytes::Bytes::from(body), true)?;
    let response = response.await?;
    assert_eq!(response.status(), 200);
    let mut events = response.into_body();
    let mut buffer = bytes::BytesMut::new();
    let mut messages = Vec::new();
    while messages.len() < 2 {
        let chunk = tokio::time::timeout(Duration::from_secs(10), events.data())
            .await?
            .ok_or_else(|| anyhow::anyhow!("the stream ended"))??;
        let _ = events.flow_control().release_capacity(chunk.len());
        buffer.extend_from_slice(&chunk);
        while buffer.len() >= 4 {
            let total = u32::from_be_bytes([buffer[0], buffer[1], buffer[2], buffer[3]]) as usize;
            if buffer.len() < total {
                break;
            }
            let frame = buffer.split_to(total).freeze();
            messages.push(aws_smithy_eventstream::frame::read_message_from(frame)?);
        }
    }
    let header = |message: &aws_smithy_types::event_stream::Message, name: &str| {
        message
            .headers()
            .iter()
            .find(|h| h.name().as_str() == name)
            .and_then(|h| h.value().as_string().ok())
            .map(|s| s.as_str().to_owned())
    };
    assert_eq!(
        header(&messages[0], ":event-type").as_deref(),
        Some("initial-response")
    );
    assert_eq!(
        header(&messages[1], ":event-type").as_deref(),
        Some("SubscribeToShardEvent")
    );
    assert_eq!(
        header(&messages[1], ":content-type").as_deref(),
        Some("application/x-amz-cbor-1.1")
    );
    // Read by the model: the blob a byte string, the arrival time tagged
    // milliseconds.
    let event = model.decode("SubscribeToShardEvent", messages[1].payload())?;
    assert_eq!(event["Records"][0]["Data"], "AAEC/w==");
    assert!(event["Records"][0]["ApproximateArrivalTimestamp"].is_number());
    assert!(event["ContinuationSequenceNumber"].is_string());
    cluster.shutdown().await;
    Ok(())
}
