//! The timer client against a real timer service: its interval contains the
//! service's clock, and it admits ignorance once the service is gone.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use freshet_timer_client::{TimerClient, TimerClientConfig};

fn wall_micros() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn now_is_an_interval_around_the_timer_clock_until_the_timer_is_gone() -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?.to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(freshet_timer::run(
        freshet_timer::Config {
            observability: freshet_server::ObservabilityFlags::without_metrics(),
            listen: String::new(),
            uncertainty: Duration::from_millis(2),
            internal: freshet_server::InternalTokenFlag {
                internal_token: None,
            },
            auth: freshet_server::AuthFlags::default(),
        },
        listener,
        async move {
            let _ = stopped.await;
        },
    ));
    let client = TimerClient::spawn(
        freshet_server::grpc_channel(&address, &freshet_server::InternalToken::none())?,
        TimerClientConfig {
            poll_interval: Duration::from_millis(50),
            max_unsynced: Duration::from_millis(400),
            drift_ppm: 200,
        },
    );
    let before = wall_micros();
    let now = client.wait_synced(Duration::from_secs(10)).await?;
    let after = wall_micros();
    // The timer runs on this host's clock, so the truth is within [before, after].
    assert!(
        now.earliest_micros <= after && now.latest_micros >= before,
        "{now:?} vs [{before}, {after}]"
    );
    assert!(
        now.latest_micros - now.earliest_micros >= 4_000,
        "the 2 ms uncertainty is included both ways"
    );
    assert!(now.is_surely_before(after + 10_000_000));
    assert!(now.is_surely_after(before - 10_000_000));
    // Deadlines are measured from the earliest possible time.
    let deadline = client.deadline_after(Duration::from_secs(30));
    assert!(deadline >= now.earliest_micros + 30_000_000);

    let _ = stop.send(());
    server.await??;
    freshet_e2e::wait_until(Duration::from_secs(10), || async { client.now().is_none() }).await?;
    assert_eq!(
        client.deadline_after(Duration::from_secs(30)),
        0,
        "no deadline can be promised without a clock"
    );
    Ok(())
}
