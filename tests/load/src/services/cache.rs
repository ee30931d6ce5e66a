//! The shard-map cache: GetStreamShards for a stream it holds (answered
//! from Redis) and for names no stream has (each a miss: Redis, then
//! Postgres, then an empty hash written to Redis).

use std::sync::Arc;

use freshet_proto::v1::{CacheSource, GetStreamShardsRequest};

use crate::driver::{Done, Failure, FnScenario};
use crate::grpc;
use crate::report::Heading;
use crate::setup::{self, Cleanups, Context, Prepared};

#[derive(Debug, clap::Subcommand)]
pub enum Scenario {
    /// The shards of a stream made for the run (answered from Redis once
    /// the first call filled it).
    Hit {
        /// Shards of the stream (entries per answer).
        #[arg(long, default_value_t = 4)]
        shards: u32,
    },
    /// A new stream name on every call: a Redis miss and a Postgres read
    /// each (the empty answer is kept in Redis for the cache's key TTL).
    Miss,
}

fn source_note(source: i32) -> &'static str {
    match CacheSource::try_from(source) {
        Ok(CacheSource::Redis) => "answered from Redis",
        Ok(CacheSource::Database) => "answered from Postgres",
        _ => "answered from an unnamed source",
    }
}

pub async fn prepare(
    context: &Context,
    scenario: Scenario,
    cleanups: &mut Cleanups,
) -> anyhow::Result<Prepared> {
    let target = context.target_or(&context.addresses.cache_addr).to_owned();
    let clients: Vec<_> = grpc::channels(&target, &context.token, context.connections)?
        .into_iter()
        .map(grpc::cache)
        .collect();
    let account = context.account(0);
    let region = context.region.clone();
    let timeout = context.timeout;
    let (name, setup, hit) = match scenario {
        Scenario::Hit { shards } => {
            let name = context.stream_name("cache");
            setup::create_streams(
                context,
                cleanups,
                &account,
                std::slice::from_ref(&name),
                shards,
            )
            .await?;
            let line = format!("stream {name} with {shards} shards in account {account}");
            (name, vec![line], true)
        }
        Scenario::Miss => {
            let prefix = context.stream_name("missing");
            let line = format!("names {prefix}-N, none of which exists (empty answers expire from Redis after the cache's key TTL)");
            (prefix, vec![line], false)
        }
    };
    let scenario = FnScenario(move |seq: u64| {
        let mut client = clients[seq as usize % clients.len()].clone();
        let request = GetStreamShardsRequest {
            account_id: account.clone(),
            stream_name: if hit {
                name.clone()
            } else {
                format!("{name}-{seq}")
            },
            region: region.clone(),
        };
        async move {
            let answer = client
                .get_stream_shards(grpc::request(request, timeout))
                .await
                .map_err(grpc::failure)?
                .into_inner();
            if hit && answer.entries.is_empty() {
                return Err(Failure::new(
                    "empty answer",
                    "the cache found no shard of the stream",
                ));
            }
            if !hit && !answer.entries.is_empty() {
                return Err(Failure::new(
                    "unexpected entries",
                    "a made-up stream name has shards",
                ));
            }
            Ok(Done::items(answer.entries.len() as u64).note(source_note(answer.source), 1))
        }
    });
    Ok(Prepared {
        scenario: Arc::new(scenario),
        heading: Heading {
            service: "cache".into(),
            scenario: if hit { "hit" } else { "miss" }.into(),
            target,
            items_are: "entries".into(),
            setup,
        },
        max_concurrency: None,
        keep_alive: None,
    })
}
