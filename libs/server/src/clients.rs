//! The gRPC clients of every Freshet service, made in one place: each
//! lazily connected and traced, with its message limits and deadlines.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use freshet_proto::v1::control_plane_client::ControlPlaneClient;
use freshet_proto::v1::membership_client::MembershipClient;
use freshet_proto::v1::shard_map_cache_client::ShardMapCacheClient;
use freshet_proto::v1::storage_client::StorageClient;
use freshet_proto::v1::timer_client::TimerClient;
use tonic::transport::{Channel, Endpoint};

use crate::internal_auth::{AdminToken, InternalToken, OutgoingCall};
use crate::traced_channel::TracedChannel;

/// Largest message between a frontend or worker and a storage worker: a
/// 10 MiB PutRecords append or GetRecords answer, plus framing, with room.
pub const STORAGE_MESSAGE_LIMIT: usize = 64 * 1024 * 1024;
/// Largest answer from the control plane (a DescribeStream of many shards).
pub const CONTROL_PLANE_MESSAGE_LIMIT: usize = 64 * 1024 * 1024;
/// Largest shard-map message (a snapshot of every shard of every stream).
pub const SHARD_MAP_MESSAGE_LIMIT: usize = 256 * 1024 * 1024;
/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// An address no gRPC channel can be made for.
#[derive(Debug, thiserror::Error)]
#[error("bad grpc address {address}: {source}")]
pub struct BadAddress {
    pub address: String,
    #[source]
    pub source: tonic::transport::Error,
}

/// A lazily connected, traced channel to `address` (`host:port` or a URL)
/// whose calls present `token`.
pub fn grpc_channel(address: &str, token: &InternalToken) -> Result<TracedChannel, BadAddress> {
    Ok(TracedChannel::new(
        lazy_channel(address)?,
        OutgoingCall::new(token),
        address,
    ))
}

/// As [`grpc_channel`], for an operator's admin calls: they present the
/// admin token as well.
pub fn admin_channel(
    address: &str,
    token: &InternalToken,
    admin: &AdminToken,
) -> Result<TracedChannel, BadAddress> {
    Ok(TracedChannel::new(
        lazy_channel(address)?,
        OutgoingCall::new(token).with_admin(admin),
        address,
    ))
}

/// Flow-control windows of a connection carrying long-lived streams
/// (`Storage.Follow`): each stream may hold this much unread, and the
/// connection as a whole never stops one stream for another's unread data.
const FOLLOW_STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const FOLLOW_CONNECTION_WINDOW: u32 = (1 << 31) - 1;

fn lazy_channel(address: &str) -> Result<Channel, BadAddress> {
    lazy_channel_with(address, false)
}

/// A lazily connected channel; `for_streams`: with the windows of a
/// connection for long-lived streams, whose readers may stall one by one.
fn lazy_channel_with(address: &str, for_streams: bool) -> Result<Channel, BadAddress> {
    let url = if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    };
    let endpoint = Endpoint::from_shared(url)
        .map_err(|source| BadAddress {
            address: address.to_owned(),
            source,
        })?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let endpoint = if for_streams {
        endpoint
            .http2_adaptive_window(false)
            .initial_stream_window_size(FOLLOW_STREAM_WINDOW)
            .initial_connection_window_size(FOLLOW_CONNECTION_WINDOW)
    } else {
        endpoint
    };
    Ok(endpoint.connect_lazy())
}

/// A storage worker's client.
pub fn storage_client(
    address: &str,
    token: &InternalToken,
) -> Result<StorageClient<TracedChannel>, BadAddress> {
    Ok(StorageClient::new(grpc_channel(address, token)?)
        .max_decoding_message_size(STORAGE_MESSAGE_LIMIT)
        .max_encoding_message_size(STORAGE_MESSAGE_LIMIT))
}

/// Membership's client (its change log may arrive as one large snapshot).
pub fn membership_client(channel: TracedChannel) -> MembershipClient<TracedChannel> {
    MembershipClient::new(channel).max_decoding_message_size(SHARD_MAP_MESSAGE_LIMIT)
}

/// The control plane's client.
pub fn control_plane_client(channel: TracedChannel) -> ControlPlaneClient<TracedChannel> {
    ControlPlaneClient::new(channel).max_decoding_message_size(CONTROL_PLANE_MESSAGE_LIMIT)
}

/// The shard-map cache's client.
pub fn cache_client(channel: TracedChannel) -> ShardMapCacheClient<TracedChannel> {
    ShardMapCacheClient::new(channel).max_decoding_message_size(SHARD_MAP_MESSAGE_LIMIT)
}

/// The timer service's client.
pub fn timer_client(channel: TracedChannel) -> TimerClient<TracedChannel> {
    TimerClient::new(channel)
}

/// A request that gives up after `timeout` (the server sees the deadline
/// too, as `grpc-timeout`).
pub fn request_with_deadline<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// Storage-worker clients by address, each made once so its connection is
/// reused by every caller.
pub struct StorageClients {
    token: InternalToken,
    clients: Mutex<HashMap<String, StorageClient<TracedChannel>>>,
    /// Connections for long-lived `Follow` streams, kept apart from those
    /// of appends and reads: a subscriber that stops reading must never
    /// hold up anyone's acknowledgement.
    for_streams: bool,
}

impl StorageClients {
    /// Clients whose calls present `token`.
    pub fn new(token: &InternalToken) -> StorageClients {
        StorageClients {
            token: token.clone(),
            clients: Mutex::default(),
            for_streams: false,
        }
    }

    /// Clients for `Storage.Follow` streams only: on connections of their
    /// own, whose flow control stops a stream whose reader stalls (at
    /// 2 MiB unread) but never the connection.
    pub fn for_streams(token: &InternalToken) -> StorageClients {
        StorageClients {
            for_streams: true,
            ..StorageClients::new(token)
        }
    }

    /// The client of the worker at `address`.
    pub fn get(&self, address: &str) -> Result<StorageClient<TracedChannel>, BadAddress> {
        let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(address) {
            return Ok(client.clone());
        }
        let channel = TracedChannel::new(
            lazy_channel_with(address, self.for_streams)?,
            OutgoingCall::new(&self.token),
            address,
        );
        let client = StorageClient::new(channel)
            .max_decoding_message_size(STORAGE_MESSAGE_LIMIT)
            .max_encoding_message_size(STORAGE_MESSAGE_LIMIT);
        clients.insert(address.to_owned(), client.clone());
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_storage_client_is_made_once_per_address() {
        let clients = StorageClients::new(&InternalToken::none());
        clients.get("127.0.0.1:1").expect("client");
        clients.get("127.0.0.1:1").expect("client");
        clients.get("127.0.0.1:2").expect("client");
        assert_eq!(clients.clients.lock().expect("lock").len(), 2);
    }

    #[tokio::test]
    async fn a_malformed_address_is_an_error_naming_it() {
        let error = grpc_channel("not a host:port", &InternalToken::none()).expect_err("refused");
        assert!(error.to_string().contains("not a host:port"), "{error}");
    }
}
