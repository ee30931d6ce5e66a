//! Oversized and degenerate bodies get a clear error while the frontend's
//! memory stays bounded. The frontend runs in this test's process, so the
//! process's peak resident set (reset before the requests) bounds what
//! the frontend used for them. One test in this binary: nothing else runs
//! beside it to blur the measurement.

use anyhow::Context as _;
use freshet_e2e::raw_http::{DEV_AMZ_DATE, DEV_AUTHORIZATION};
use freshet_e2e::{Cluster, ClusterOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: usize = 1024 * 1024;

/// The process's resident set and its peak since the last reset, in bytes.
fn memory() -> anyhow::Result<(usize, usize)> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let field = |name: &str| -> anyhow::Result<usize> {
        let line = status
            .lines()
            .find(|line| line.starts_with(name))
            .with_context(|| format!("{name} in /proc/self/status"))?;
        let kib: usize = line
            .split_whitespace()
            .nth(1)
            .context("a number")?
            .parse()?;
        Ok(kib * 1024)
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// Sends `operation` with a body of `prefix`, then `filler` repeated until
/// the body is `total` bytes long, then `suffix` — streamed, so this test
/// never holds the body. Answers the status and the body of the reply.
async fn stream_body(
    address: &str,
    operation: &str,
    (prefix, filler, suffix): (&str, &str, &str),
    total: usize,
) -> anyhow::Result<(u16, String)> {
    // Whole fillers only, so the body stays well-formed JSON.
    let fill = (total - prefix.len() - suffix.len()) / filler.len() * filler.len();
    let total = prefix.len() + fill + suffix.len();
    let mut stream = TcpStream::connect(address).await?;
    let head = format!(
        "POST / HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\
         Content-Type: application/x-amz-json-1.1\r\nX-Amz-Target: Kinesis_20131202.{operation}\r\n\
         Authorization: {DEV_AUTHORIZATION}\r\nX-Amz-Date: {DEV_AMZ_DATE}\r\nContent-Length: {total}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await?;
    let chunk = filler.repeat(64 * 1024 / filler.len());
    let body_writes = async {
        stream.write_all(prefix.as_bytes()).await?;
        let mut sent = 0;
        while sent < fill {
            let n = (fill - sent).min(chunk.len());
            stream.write_all(&chunk.as_bytes()[..n]).await?;
            sent += n;
        }
        stream.write_all(suffix.as_bytes()).await
    };
    // The server may answer and close before the body is all sent.
    let _ = body_writes.await;
    let mut reply = Vec::new();
    let _ = stream.read_to_end(&mut reply).await;
    let text = String::from_utf8_lossy(&reply).into_owned();
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .with_context(|| format!("no status in {text:?}"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_degenerate_bodies_are_refused_in_bounded_memory() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(ClusterOptions {
        worker_zones: vec!["az-a", "az-b"],
        ..ClusterOptions::default()
    })
    .await?;
    let address = cluster.endpoint.trim_start_matches("http://").to_owned();
    let (before, _) = memory()?;
    // Reset the peak, so VmHWM is what these requests cost at most.
    std::fs::write("/proc/self/clear_refs", "5")?;

    // 64 MiB of PutRecords: refused once its limit (about 14 MiB) is read.
    let (status, body) = stream_body(
        &address,
        "PutRecords",
        (r#"{"StreamName":"s","Records":["#, "{},", "{}]}"),
        64 * MIB,
    )
    .await?;
    assert_eq!(status, 413, "{body}");
    assert!(body.contains("RequestEntityTooLargeException"), "{body}");

    // Just under the limit: ~4.5 million empty records, counted, never
    // kept; refused as more than 500.
    let (status, body) = stream_body(
        &address,
        "PutRecords",
        (r#"{"StreamName":"s","Records":["#, "{},", "{}]}"),
        13 * MIB,
    )
    .await?;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("ValidationException"), "{body}");
    assert!(body.contains("500"), "{body}");

    // Any other operation: 1 MiB.
    let (status, body) = stream_body(
        &address,
        "CreateStream",
        (r#"{"StreamName":"s","ShardCount":1,"Tags":{"#, " ", "}}"),
        2 * MIB,
    )
    .await?;
    assert_eq!(status, 413, "{body}");

    let (_, peak) = memory()?;
    let grown = peak.saturating_sub(before);
    println!("peak resident set grew by {} MiB", grown / MIB);
    assert!(
        grown < 120 * MIB,
        "the frontend's peak memory grew by {} MiB",
        grown / MIB
    );
    // Nothing was created.
    let streams = cluster.kinesis().list_streams().send().await?;
    assert!(streams.stream_names().is_empty());
    cluster.shutdown().await;
    Ok(())
}
