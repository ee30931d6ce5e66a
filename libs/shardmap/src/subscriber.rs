//! Keeps a [`SharedShardMap`] current by streaming membership's change log.

use std::time::Duration;

use freshet_proto::v1::membership_client::MembershipClient;
use freshet_proto::v1::shard_map_event::Event;
use freshet_proto::v1::{ShardMapEvent, SubscribeRequest};
use freshet_server::TracedChannel;
use tokio::sync::mpsc;

use crate::map::{ApplyOutcome, SharedShardMap};

/// The running subscriber; it stops when this is dropped.
pub struct Subscription {
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Subscribes to membership's change log and applies every event to `map`.
/// Resubscribes from the last contiguous version after a gap or a broken
/// stream; membership answers with a snapshot when that is too far behind.
///
/// Every event is also forwarded to `observer` when given (the cache service
/// mirrors changes into Redis this way).
pub fn follow_change_log(
    channel: TracedChannel,
    map: SharedShardMap,
    observer: Option<mpsc::UnboundedSender<ShardMapEvent>>,
) -> Subscription {
    let task = tokio::spawn(async move {
        let mut client = freshet_server::membership_client(channel);
        let mut backoff = Duration::from_millis(50);
        loop {
            let from_version = map.read(|m| m.applied_version());
            match stream_until_gap(&mut client, &map, observer.as_ref(), from_version).await {
                Ok(StreamEnd::Gap { expected, received }) => {
                    tracing::info!(
                        expected,
                        received,
                        "gap in shard-map change stream, resyncing"
                    );
                    backoff = Duration::from_millis(50);
                    continue;
                }
                Ok(StreamEnd::Closed) => tracing::debug!("shard-map change stream closed"),
                Err(status) => {
                    tracing::debug!(code = ?status.code(), message = status.message(), "shard-map subscription failed")
                }
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    });
    Subscription { task }
}

enum StreamEnd {
    Gap { expected: i64, received: i64 },
    Closed,
}

async fn stream_until_gap(
    client: &mut MembershipClient<TracedChannel>,
    map: &SharedShardMap,
    observer: Option<&mpsc::UnboundedSender<ShardMapEvent>>,
    from_version: i64,
) -> Result<StreamEnd, tonic::Status> {
    let mut stream = client
        .subscribe(SubscribeRequest { from_version })
        .await?
        .into_inner();
    while let Some(event) = stream.message().await? {
        if let Some(observer) = observer {
            let _ = observer.send(event.clone());
        }
        match event.event {
            Some(Event::Snapshot(snapshot)) => {
                map.write(|m| {
                    m.replace_with_snapshot(snapshot.entries, snapshot.version);
                    m.replace_consumers(snapshot.consumers);
                });
            }
            Some(Event::Consumer(entry)) => {
                if let ApplyOutcome::Gap { expected, received } =
                    map.write(|m| m.apply_consumer(entry))
                {
                    return Ok(StreamEnd::Gap { expected, received });
                }
            }
            Some(Event::Change(entry)) => {
                if let ApplyOutcome::Gap { expected, received } =
                    map.write(|m| m.apply_change(entry))
                {
                    return Ok(StreamEnd::Gap { expected, received });
                }
            }
            None => {}
        }
    }
    Ok(StreamEnd::Closed)
}
