//! What Kinesis answers for each operation, including every documented bad
//! input: the exception name, the HTTP status, and that nothing changed.

use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{
    PutRecordsRequestEntry, ShardIteratorType, StreamMode, StreamModeDetails,
};
use freshet_e2e::raw_http::{kinesis_h2c, kinesis_http1, post_http1};
use freshet_e2e::{create_active_stream, Cluster};

fn address(cluster: &Cluster) -> String {
    cluster.endpoint.trim_start_matches("http://").to_owned()
}

use freshet_e2e::error_code as code;

async fn total_records(client: &aws_sdk_kinesis::Client, stream: &str) -> anyhow::Result<usize> {
    Ok(freshet_e2e::read_stream(client, stream).await?.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_errors_match_kinesis() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let address = address(&cluster);

    let no_auth = post_http1(
        &address,
        &[
            ("Content-Type", "application/x-amz-json-1.1"),
            ("X-Amz-Target", "Kinesis_20131202.ListStreams"),
        ],
        b"{}",
    )
    .await?;
    assert_eq!(
        (no_auth.status, no_auth.error_type().as_str()),
        (400, "MissingAuthenticationTokenException")
    );

    let unknown = kinesis_http1(&address, "FlyToTheMoon", "{}").await?;
    assert_eq!(
        (unknown.status, unknown.error_type().as_str()),
        (400, "UnknownOperationException")
    );

    let not_built = kinesis_http1(&address, "CreateQueue", "{}").await?;
    assert_eq!(not_built.status, 501);
    assert_eq!(not_built.error_type(), "NotImplemented");

    let malformed = kinesis_http1(&address, "CreateStream", "{not json").await?;
    assert_eq!(
        (malformed.status, malformed.error_type().as_str()),
        (400, "SerializationException")
    );
    let wrong_type = kinesis_http1(
        &address,
        "CreateStream",
        r#"{"StreamName":"s","ShardCount":"two"}"#,
    )
    .await?;
    assert_eq!(wrong_type.error_type(), "SerializationException");

    // Development mode takes any key, but not a malformed signature.
    let malformed_signature = post_http1(
        &address,
        &[
            ("Content-Type", "application/x-amz-json-1.1"),
            ("X-Amz-Target", "Kinesis_20131202.ListStreams"),
            ("X-Amz-Date", freshet_e2e::raw_http::DEV_AMZ_DATE),
            ("Authorization", "AWS4-HMAC-SHA256 Credential=AKIANOBODY/20260101/us-east-1/kinesis/aws4_request, SignedHeaders=host, Signature=0"),
        ],
        b"{}",
    )
    .await?;
    assert_eq!(
        (
            malformed_signature.status,
            malformed_signature.error_type().as_str()
        ),
        (400, "IncompleteSignatureException")
    );

    // CBOR is spoken (tests/tests/cbor.rs); a body that is not CBOR is a
    // SerializationException, said in CBOR.
    let not_cbor = freshet_e2e::raw_http::kinesis_cbor(&address, "ListStreams", b"{}").await?;
    assert_eq!(not_cbor.status, 400);
    assert!(not_cbor
        .headers
        .iter()
        .any(|(name, value)| name == "x-amzn-errortype" && value == "SerializationException"));
    let unknown_type = post_http1(
        &address,
        &[
            ("Content-Type", "application/xml"),
            ("X-Amz-Target", "Kinesis_20131202.ListStreams"),
            ("Authorization", freshet_e2e::raw_http::DEV_AUTHORIZATION),
            ("X-Amz-Date", freshet_e2e::raw_http::DEV_AMZ_DATE),
        ],
        b"<ListStreams/>",
    )
    .await?;
    assert_eq!(unknown_type.error_type(), "SerializationException");

    // Nothing above created anything.
    let listed = kinesis_http1(&address, "ListStreams", "{}").await?;
    assert_eq!(listed.status, 200);
    assert!(listed
        .headers
        .iter()
        .any(|(name, _)| name == "x-amzn-requestid"));
    let body: serde_json::Value = serde_json::from_str(&listed.body)?;
    assert_eq!(body["StreamNames"], serde_json::json!([]));
    assert_eq!(body["HasMoreStreams"], false);
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_port_speaks_http2_with_prior_knowledge() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let created = kinesis_h2c(
        &address(&cluster),
        "CreateStream",
        r#"{"StreamName":"h2","ShardCount":1}"#,
    )
    .await?;
    assert_eq!(created.status, 200, "{}", created.body);
    let listed = kinesis_h2c(&address(&cluster), "ListStreams", "{}").await?;
    assert_eq!(listed.status, 200);
    assert!(listed.body.contains("\"h2\""), "{}", listed.body);
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_lifecycle_and_pagination() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    for name in ["alpha", "beta", "gamma"] {
        create_active_stream(&client, name, 5).await?;
    }

    let duplicate = client
        .create_stream()
        .stream_name("alpha")
        .shard_count(1)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&duplicate), "ResourceInUseException");

    let first = client.list_streams().limit(2).send().await?;
    assert_eq!(first.stream_names, ["alpha", "beta"]);
    assert!(first.has_more_streams);
    let summaries = first.stream_summaries.clone().unwrap_or_default();
    assert_eq!(
        summaries[0].stream_arn,
        "arn:aws:kinesis:us-east-1:000000000000:stream/alpha"
    );
    let second = client
        .list_streams()
        .next_token(first.next_token.expect("a token"))
        .send()
        .await?;
    assert_eq!(second.stream_names, ["gamma"]);
    assert!(!second.has_more_streams);
    let after = client
        .list_streams()
        .exclusive_start_stream_name("alpha")
        .send()
        .await?;
    assert_eq!(after.stream_names, ["beta", "gamma"]);

    let page = client
        .list_shards()
        .stream_name("alpha")
        .max_results(2)
        .send()
        .await?;
    let ids: Vec<String> = page
        .shards
        .unwrap_or_default()
        .into_iter()
        .map(|s| s.shard_id)
        .collect();
    assert_eq!(ids, ["shardId-000000000000", "shardId-000000000001"]);
    let rest = client
        .list_shards()
        .next_token(page.next_token.expect("a token"))
        .send()
        .await?;
    assert_eq!(rest.shards.unwrap_or_default().len(), 3);
    assert!(rest.next_token.is_none());
    let both = client
        .list_shards()
        .stream_name("alpha")
        .next_token("x")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&both), "InvalidArgumentException");
    let from = client
        .list_shards()
        .stream_name("alpha")
        .exclusive_start_shard_id("shardId-000000000003")
        .send()
        .await?;
    assert_eq!(from.shards.unwrap_or_default().len(), 1);

    let described = client
        .describe_stream()
        .stream_name("alpha")
        .limit(3)
        .send()
        .await?
        .stream_description
        .expect("description");
    assert_eq!(described.shards.len(), 3);
    assert!(described.has_more_shards);
    assert_eq!(described.retention_period_hours, 24);
    let summary = client
        .describe_stream_summary()
        .stream_name("alpha")
        .send()
        .await?
        .stream_description_summary
        .expect("summary");
    assert_eq!(summary.open_shard_count, 5);
    assert_eq!(summary.stream_id, None, "StreamId must never be returned");
    assert_eq!(summary.max_record_size_in_kib, Some(1024));

    let on_demand = client
        .create_stream()
        .stream_name("auto")
        .stream_mode_details(
            StreamModeDetails::builder()
                .stream_mode(StreamMode::OnDemand)
                .build()?,
        )
        .send()
        .await;
    assert!(on_demand.is_ok(), "{on_demand:?}");
    let auto = client
        .describe_stream_summary()
        .stream_name("auto")
        .send()
        .await?
        .stream_description_summary
        .expect("summary");
    assert_eq!(auto.open_shard_count, 4);
    assert_eq!(
        auto.stream_mode_details.map(|d| d.stream_mode),
        Some(StreamMode::OnDemand)
    );

    client.delete_stream().stream_name("beta").send().await?;
    let gone = client
        .describe_stream_summary()
        .stream_name("beta")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&gone), "ResourceNotFoundException");
    let put_gone = client
        .put_record()
        .stream_name("beta")
        .partition_key("k")
        .data(Blob::new("x"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&put_gone), "ResourceNotFoundException");
    let delete_again = client
        .delete_stream()
        .stream_name("beta")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&delete_again), "ResourceNotFoundException");

    // Recreated under the same name, it is a new, empty stream.
    client
        .put_record()
        .stream_name("gamma")
        .partition_key("k")
        .data(Blob::new("old"))
        .send()
        .await?;
    client.delete_stream().stream_name("gamma").send().await?;
    create_active_stream(&client, "gamma", 1).await?;
    assert_eq!(total_records(&client, "gamma").await?, 0);
    client
        .put_record()
        .stream_name("gamma")
        .partition_key("k")
        .data(Blob::new("new"))
        .send()
        .await?;
    assert_eq!(total_records(&client, "gamma").await?, 1);
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_control_plane_input_is_refused_and_creates_nothing() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    let bad_name = client
        .create_stream()
        .stream_name("has spaces")
        .shard_count(1)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&bad_name), "ValidationException");
    let long_name = client
        .create_stream()
        .stream_name("x".repeat(129))
        .shard_count(1)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&long_name), "ValidationException");
    let zero = client
        .create_stream()
        .stream_name("zero")
        .shard_count(0)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&zero), "ValidationException");
    assert!(zero
        .as_service_error()
        .and_then(|e| e.message())
        .unwrap_or_default()
        .contains("shardCount"));
    let too_many = client
        .create_stream()
        .stream_name("huge")
        .shard_count(5000)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&too_many), "LimitExceededException");
    let record_size = client
        .create_stream()
        .stream_name("big")
        .shard_count(1)
        .max_record_size_in_kib(512)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&record_size), "ValidationException");
    let missing = client
        .describe_stream()
        .stream_name("nope")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&missing), "ResourceNotFoundException");
    let bad_limit = client.list_streams().limit(0).send().await.unwrap_err();
    assert_eq!(code(&bad_limit), "ValidationException");
    let foreign_arn = client
        .describe_stream_summary()
        .stream_arn("arn:aws:kinesis:us-east-1:111111111111:stream/theirs")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&foreign_arn), "AccessDeniedException");
    assert!(client.list_streams().send().await?.stream_names.is_empty());
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_refused_and_nothing_is_written() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "strict", 2).await?;
    let entry = |key: &str, data: Vec<u8>| {
        PutRecordsRequestEntry::builder()
            .partition_key(key)
            .data(Blob::new(data))
            .build()
    };

    let long_key = client
        .put_record()
        .stream_name("strict")
        .partition_key("k".repeat(257))
        .data(Blob::new("x"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&long_key), "ValidationException");
    let too_big = client
        .put_record()
        .stream_name("strict")
        .partition_key("k")
        .data(Blob::new(vec![0u8; 1024 * 1024 + 1]))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&too_big), "ValidationException");
    let out_of_range = client
        .put_record()
        .stream_name("strict")
        .partition_key("k")
        .explicit_hash_key("340282366920938463463374607431768211456")
        .data(Blob::new("x"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&out_of_range), "InvalidArgumentException");
    let no_stream = client
        .put_record()
        .stream_name("missing")
        .partition_key("k")
        .data(Blob::new("x"))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&no_stream), "ResourceNotFoundException");
    let dry_run = client
        .put_record()
        .stream_name("strict")
        .partition_key("k")
        .data(Blob::new("x"))
        .dry_run(true)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&dry_run), "DryRunOperationException");

    // One bad record rejects the whole PutRecords.
    let mut mixed = (0..10)
        .map(|i| entry(&format!("k{i}"), b"fine".to_vec()))
        .collect::<Result<Vec<_>, _>>()?;
    mixed.push(entry(&"k".repeat(300), b"bad key".to_vec())?);
    let rejected = client
        .put_records()
        .stream_name("strict")
        .set_records(Some(mixed))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&rejected), "ValidationException");
    let too_many = (0..501)
        .map(|i| entry(&format!("k{i}"), b"x".to_vec()))
        .collect::<Result<Vec<_>, _>>()?;
    let rejected = client
        .put_records()
        .stream_name("strict")
        .set_records(Some(too_many))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&rejected), "ValidationException");
    let heavy = (0..11)
        .map(|i| entry(&format!("k{i}"), vec![7u8; 1_000_000]))
        .collect::<Result<Vec<_>, _>>()?;
    let rejected = client
        .put_records()
        .stream_name("strict")
        .set_records(Some(heavy))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&rejected), "InvalidArgumentException");
    assert_eq!(
        total_records(&client, "strict").await?,
        0,
        "a refused request must write nothing"
    );

    // Iterators.
    let shard = "shardId-000000000000";
    let bad_type = kinesis_http1(&address(&cluster), "GetShardIterator", r#"{"StreamName":"strict","ShardId":"shardId-000000000000","ShardIteratorType":"SOMEWHERE"}"#).await?;
    assert_eq!(bad_type.error_type(), "ValidationException");
    let missing_sequence = client
        .get_shard_iterator()
        .stream_name("strict")
        .shard_id(shard)
        .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&missing_sequence), "InvalidArgumentException");
    let foreign_sequence = client
        .get_shard_iterator()
        .stream_name("strict")
        .shard_id(shard)
        .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
        .starting_sequence_number("12345")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&foreign_sequence), "InvalidArgumentException");
    let no_shard = client
        .get_shard_iterator()
        .stream_name("strict")
        .shard_id("shardId-000000000009")
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&no_shard), "ResourceNotFoundException");
    let short_form = client
        .get_shard_iterator()
        .stream_name("strict")
        .shard_id("shardId-1")
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await;
    assert!(
        short_form.is_ok(),
        "shardId-1 is accepted for shardId-000000000001"
    );

    let tampered = client
        .get_records()
        .shard_iterator("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA")
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&tampered), "InvalidArgumentException");
    let iterator = client
        .get_shard_iterator()
        .stream_name("strict")
        .shard_id(shard)
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await?
        .shard_iterator
        .expect("iterator");
    let zero_limit = client
        .get_records()
        .shard_iterator(&iterator)
        .limit(0)
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&zero_limit), "ValidationException");

    // An iterator issued more than five minutes ago (signed with the test key).
    let signer = freshet_frontend::iterator::TokenSigner::new(b"test-secret");
    let mut old = signer
        .decode_iterator(&iterator)
        .expect("our own iterator decodes");
    old.issued_ms -= 301_000;
    let expired = client
        .get_records()
        .shard_iterator(signer.encode_iterator(&old))
        .send()
        .await
        .unwrap_err();
    assert_eq!(code(&expired), "ExpiredIteratorException");
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creations_never_exceed_the_shard_limit_together() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(freshet_e2e::ClusterOptions {
        shard_limit: 10,
        ..Default::default()
    })
    .await?;
    let client = cluster.kinesis();
    let attempts = (0..8).map(|i| {
        let client = client.clone();
        async move {
            client
                .create_stream()
                .stream_name(format!("racer-{i}"))
                .shard_count(3)
                .send()
                .await
        }
    });
    let outcomes = futures::future::join_all(attempts).await;
    let created = outcomes.iter().filter(|o| o.is_ok()).count();
    assert_eq!(
        created, 3,
        "3 × 3 shards fit under a limit of 10; a fourth would not"
    );
    for outcome in outcomes.iter().filter_map(|o| o.as_ref().err()) {
        assert_eq!(code(outcome), "LimitExceededException");
    }
    cluster.shutdown().await;
    Ok(())
}
