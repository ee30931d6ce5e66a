//! The front door over TLS, with the development CA a cluster makes: the
//! AWS SDK for Rust and boto3 over https trusting it, a raw HTTP/2 client
//! that offers no ALPN (as older Java SDKs), a client that does not trust
//! the CA refused, and a certificate replaced on disk presented to the
//! next connections without a restart.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_kinesis::primitives::Blob;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode, TlsContext, TrustStore};
use freshet_e2e::raw_http::kinesis_h2_over;
use freshet_e2e::{create_active_stream, wait_until, Cluster, ClusterOptions};
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, ServerName};

async fn https_cluster() -> anyhow::Result<Cluster> {
    Cluster::start_with(ClusterOptions {
        https: true,
        ..ClusterOptions::default()
    })
    .await
}

/// An SDK client for `endpoint` trusting only the PEM certificates in
/// `trusted` (none: the system's roots).
fn sdk_client(endpoint: &str, trusted: Option<Vec<u8>>) -> anyhow::Result<aws_sdk_kinesis::Client> {
    let mut store = TrustStore::empty().with_native_roots(trusted.is_none());
    if let Some(pem) = trusted {
        store = store.with_pem_certificate(pem);
    }
    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .tls_context(TlsContext::builder().with_trust_store(store).build()?)
        .build_https();
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new("test", "test", None, None, "tls-tests"))
        .http_client(http)
        .build();
    Ok(aws_sdk_kinesis::Client::from_conf(config))
}

/// A TLS connection to the cluster's HTTPS port trusting its CA, offering
/// `alpn` (maybe nothing).
async fn tls_connect(
    cluster: &Cluster,
    alpn: &[&[u8]],
) -> anyhow::Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(cluster.tls_ca())? {
        roots.add(cert?)?;
    }
    let provider = Arc::new(freshet_tls::crypto_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let endpoint = cluster
        .https_endpoint
        .clone()
        .context("no https endpoint")?;
    let port = endpoint.rsplit(':').next().context("a port")?;
    let tcp = tokio::net::TcpStream::connect(format!("127.0.0.1:{port}")).await?;
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    Ok(connector
        .connect(ServerName::try_from("localhost")?, tcp)
        .await?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sdk_writes_and_reads_over_https_with_the_development_ca() -> anyhow::Result<()> {
    let cluster = https_cluster().await?;
    let endpoint = cluster
        .https_endpoint
        .clone()
        .context("no https endpoint")?;
    let client = sdk_client(&endpoint, Some(std::fs::read(cluster.tls_ca())?))?;
    create_active_stream(&client, "encrypted-in-transit", 1).await?;
    let put = client
        .put_record()
        .stream_name("encrypted-in-transit")
        .partition_key("k")
        .data(Blob::new("over tls"))
        .send()
        .await?;
    let records = freshet_e2e::read_shard(&client, "encrypted-in-transit", &put.shard_id).await?;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].data.as_ref(), b"over tls");

    // The plaintext port keeps serving beside it.
    let plain = cluster.kinesis();
    let listed = plain.list_streams().send().await?;
    assert_eq!(listed.stream_names, ["encrypted-in-transit"]);

    // A client that does not trust the development CA is refused.
    let untrusting = sdk_client(&endpoint, None)?;
    let refused = untrusting.list_streams().send().await;
    assert!(
        refused.is_err(),
        "a certificate from an untrusted CA was accepted"
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn http2_without_alpn_and_by_alpn_both_work() -> anyhow::Result<()> {
    let cluster = https_cluster().await?;
    // No ALPN at all, then HTTP/2 from the first bytes (older Java SDKs).
    let bare = tls_connect(&cluster, &[]).await?;
    assert_eq!(bare.get_ref().1.alpn_protocol(), None);
    let answer = kinesis_h2_over(bare, "localhost", "ListStreams", "{}").await?;
    assert_eq!(answer.status, 200, "{}", answer.body);

    // ALPN offering h2 and http/1.1: the server picks h2.
    let negotiated = tls_connect(&cluster, &[b"h2", b"http/1.1"]).await?;
    assert_eq!(negotiated.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let answer = kinesis_h2_over(negotiated, "localhost", "ListStreams", "{}").await?;
    assert_eq!(answer.status, 200, "{}", answer.body);
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replaced_certificate_is_presented_to_new_connections() -> anyhow::Result<()> {
    let cluster = https_cluster().await?;
    let leaf = |stream: &tokio_rustls::client::TlsStream<tokio::net::TcpStream>| {
        stream
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first().cloned())
    };
    let before = leaf(&tls_connect(&cluster, &[b"h2"]).await?).context("a certificate")?;
    // A new server certificate from the same CA, written over the old one.
    let dir = cluster.tls_ca().parent().context("the tls dir")?.to_owned();
    std::fs::remove_file(dir.join("server.pem"))?;
    freshet_tls::ensure_dev_pki(&dir, &["localhost"])?;
    wait_until(Duration::from_secs(10), || async {
        match tls_connect(&cluster, &[b"h2"]).await {
            Ok(stream) => leaf(&stream).is_some_and(|now| now != before),
            Err(_) => false,
        }
    })
    .await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn boto3_speaks_https_with_the_ca_bundle() -> anyhow::Result<()> {
    if std::process::Command::new("python3")
        .args(["-c", "import boto3"])
        .status()
        .map_or(true, |status| !status.success())
    {
        eprintln!("boto3 is not installed: skipped");
        return Ok(());
    }
    let cluster = https_cluster().await?;
    let endpoint = cluster
        .https_endpoint
        .clone()
        .context("no https endpoint")?;
    let script = r#"
import boto3, sys
kinesis = boto3.client("kinesis", endpoint_url=sys.argv[1], region_name="us-east-1",
                       aws_access_key_id="test", aws_secret_access_key="test")
kinesis.create_stream(StreamName="from-boto3", ShardCount=1)
kinesis.get_waiter("stream_exists").wait(StreamName="from-boto3", WaiterConfig={"Delay": 1, "MaxAttempts": 30})
put = kinesis.put_record(StreamName="from-boto3", PartitionKey="k", Data=b"over tls")
assert put["ShardId"] == "shardId-000000000000", put
print("ok")
"#;
    let output = tokio::process::Command::new("python3")
        .args(["-c", script, &endpoint])
        .env("AWS_CA_BUNDLE", cluster.tls_ca())
        .output()
        .await?;
    assert!(
        output.status.success(),
        "boto3 over https failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    cluster.shutdown().await;
    Ok(())
}
