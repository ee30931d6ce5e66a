//! The timer: `Now()` reads, the call every service makes to know what
//! time it is.

use std::sync::Arc;

use freshet_proto::v1::NowRequest;

use crate::driver::{Done, FnScenario};
use crate::grpc;
use crate::report::Heading;
use crate::setup::{Context, Prepared};

pub fn prepare(context: &Context) -> anyhow::Result<Prepared> {
    let target = context.target_or(&context.addresses.timer_addr).to_owned();
    let clients: Vec<_> = grpc::channels(&target, &context.token, context.connections)?
        .into_iter()
        .map(grpc::timer)
        .collect();
    let timeout = context.timeout;
    let scenario = FnScenario(move |seq: u64| {
        let mut client = clients[seq as usize % clients.len()].clone();
        async move {
            client
                .now(grpc::request(NowRequest {}, timeout))
                .await
                .map_err(grpc::failure)?;
            Ok(Done::items(1))
        }
    });
    Ok(Prepared {
        scenario: Arc::new(scenario),
        heading: Heading {
            service: "timer".into(),
            scenario: "now".into(),
            target,
            items_are: "readings".into(),
            setup: vec![format!("{} connection(s)", context.connections)],
        },
        max_concurrency: None,
        keep_alive: None,
    })
}
