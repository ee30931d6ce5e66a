//! `Subscribe`: the change log as a stream — what the subscriber is
//! missing (a snapshot when it is new or too far behind, else the missing
//! changes from Postgres), then every change as it commits.

use std::pin::Pin;

use freshet_errors::ErrorCode;
use freshet_proto::prost::Message as _;
use freshet_proto::v1::shard_map_event::Event;
use freshet_proto::v1::{ShardMapEntry, ShardMapEvent, ShardMapSnapshot};

use crate::publish::consumer_entry;
use crate::service::Logged;
use tokio::sync::{broadcast, mpsc};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;

use crate::service::store_error;
use crate::MembershipService;

/// Subscribers further behind than this many versions get a snapshot.
const SNAPSHOT_THRESHOLD: i64 = 1_000;

pub(crate) type EventStream =
    Pin<Box<dyn tokio_stream::Stream<Item = Result<ShardMapEvent, Status>> + Send>>;

impl MembershipService {
    /// The change log from `from_version` on, until the subscriber leaves
    /// or membership shuts down.
    pub(crate) fn subscribe_from(&self, from_version: i64) -> EventStream {
        let from_version = from_version.max(0);
        // Listen before reading Postgres so nothing committed in between is
        // missed; versions already sent are skipped below.
        let mut live = self.inner.changes.subscribe();
        let (sender, receiver) = mpsc::channel::<Result<ShardMapEvent, Status>>(256);
        let service = self.clone();
        self.inner.tasks.spawn(async move {
            let mut last_sent = match service.catch_up(from_version, &sender).await {
                Ok(last) => last,
                Err(status) => {
                    let _ = sender.send(Err(status)).await;
                    return;
                }
            };
            loop {
                let received = tokio::select! {
                    received = live.recv() => received,
                    () = service.inner.closing.cancelled() => return,
                    // The subscriber went away: do not wait for a change to notice.
                    () = sender.closed() => return,
                };
                match received {
                    Ok(committed) if committed.change.version() <= last_sent => {}
                    Ok(committed) => {
                        last_sent = committed.change.version();
                        let event = service.event_of(committed.change);
                        if sender.send(Ok(event)).await.is_err() {
                            return;
                        }
                        service
                            .inner
                            .metrics
                            .change_propagation
                            .observe(committed.at.elapsed().as_secs_f64());
                    }
                    Err(broadcast::error::RecvError::Lagged(skipped)) => {
                        // End the stream; the subscriber resubscribes from its
                        // last applied version and catches up from Postgres.
                        tracing::warn!(skipped, "subscriber lagged behind the change log");
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Box::pin(ReceiverStream::new(receiver))
    }

    /// Sends what a subscriber at `from_version` is missing; returns the
    /// last version sent.
    async fn catch_up(
        &self,
        from_version: i64,
        sender: &mpsc::Sender<Result<ShardMapEvent, Status>>,
    ) -> Result<i64, Status> {
        let store = &self.inner.store;
        let head = store.latest_version().await.map_err(store_error)?;
        if from_version == 0 || head - from_version > SNAPSHOT_THRESHOLD || from_version > head {
            let snapshot = store.snapshot().await.map_err(store_error)?;
            let version = snapshot.version;
            let entries = snapshot
                .entries
                .iter()
                .map(|bytes| decode_entry(bytes).map(|e| self.stamp(e)))
                .collect::<Result<_, _>>()?;
            let consumers = snapshot
                .consumers
                .iter()
                .map(|row| consumer_entry(row, false))
                .collect();
            let event = ShardMapEvent {
                event: Some(Event::Snapshot(ShardMapSnapshot {
                    entries,
                    version,
                    consumers,
                })),
            };
            sender
                .send(Ok(event))
                .await
                .map_err(|_| ErrorCode::Unavailable.status("subscriber left"))?;
            return Ok(version);
        }
        let mut last_sent = from_version;
        loop {
            let changes = store
                .changes_after(last_sent, 500)
                .await
                .map_err(store_error)?;
            if changes.is_empty() {
                return Ok(last_sent);
            }
            for change in changes {
                let logged = Logged::decode(&change).map_err(store_error)?;
                sender
                    .send(Ok(self.event_of(logged)))
                    .await
                    .map_err(|_| ErrorCode::Unavailable.status("subscriber left"))?;
                last_sent = change.version;
            }
        }
    }

    /// A committed change as subscribers receive it (a shard's entry
    /// stamped with how long it may be trusted).
    fn event_of(&self, change: Logged) -> ShardMapEvent {
        let event = match change {
            Logged::Shard(entry) => Event::Change(self.stamp(*entry)),
            Logged::Consumer(entry) => Event::Consumer(entry),
        };
        ShardMapEvent { event: Some(event) }
    }
}

fn decode_entry(bytes: &[u8]) -> Result<ShardMapEntry, Status> {
    ShardMapEntry::decode(bytes)
        .map_err(|error| ErrorCode::Internal.status(format!("corrupt change-log entry: {error}")))
}
