//! Running the control plane: one active at a time. Each instance takes a
//! Postgres-held lock before it acts (`freshet_metastore::ActiveLock`); a
//! second one on the same database stands by, not serving, until the first
//! stops, and one whose lock's session ends stops acting and stands by again.

use super::*;

/// Where the control plane serves its metrics unless told otherwise.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9154";

/// Why the control plane stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Token(#[from] freshet_server::BadInternalToken),
    #[error("master key: {0}")]
    MasterKey(#[from] sealing::SealingError),
    #[error("secure mode (FRESHET_AUTH=sigv4) needs a master key: set FRESHET_MASTER_KEY_FILE or FRESHET_MASTER_KEY (32 random bytes, base64)")]
    DevelopmentMasterKey,
    #[error("bootstrap key: {0}")]
    Bootstrap(#[from] identities::BootstrapError),
    #[error(transparent)]
    Metastore(#[from] MetastoreError),
    /// The listener's own address could not be read.
    #[error("read the bound address: {0}")]
    Address(#[source] std::io::Error),
    #[error(transparent)]
    BadAddress(#[from] freshet_server::BadAddress),
    #[error(transparent)]
    Serve(#[from] freshet_server::ServeError),
    #[error(transparent)]
    Metrics(std::io::Error),
}

/// How often a standby control plane tries to take the active lock, and
/// an active one checks it still holds it.
const ACTIVE_LOCK_INTERVAL: Duration = Duration::from_secs(1);

/// Waits until this control plane holds the active lock (`None` if
/// `shutdown` came first).
async fn become_active(
    database_url: &str,
    shutdown: &mut (impl Future<Output = ()> + Unpin),
) -> Option<ActiveLock> {
    let mut said = false;
    loop {
        match ActiveLock::try_acquire(database_url, ActiveRole::ControlPlane).await {
            Ok(Some(lock)) => {
                if said {
                    tracing::info!("took over as the active control plane");
                }
                return Some(lock);
            }
            Ok(None) if !said => {
                tracing::info!("another control plane is active: standing by");
                said = true;
            }
            Ok(None) => {}
            Err(error) => tracing::warn!("cannot take the active lock: {error}"),
        }
        tokio::select! {
            () = &mut *shutdown => return None,
            () = tokio::time::sleep(ACTIVE_LOCK_INTERVAL) => {}
        }
    }
}

/// Resolves once `lock` is no longer surely held.
async fn until_lock_lost(lock: &mut ActiveLock) {
    loop {
        tokio::time::sleep(ACTIVE_LOCK_INTERVAL).await;
        let held = tokio::time::timeout(Duration::from_secs(5), lock.is_held()).await;
        if !matches!(held, Ok(true)) {
            tracing::error!("the control plane's active lock is lost: it stops acting");
            return;
        }
    }
}

/// Serves the control plane on `listener` until `shutdown` resolves —
/// while it is the active one: a second control plane on the same
/// database stands by (not serving) until the first stops, and one whose
/// lock's session ends stops acting and stands by again.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let token = config.internal.token_for(config.auth.mode)?;
    let secure = config.auth.mode == freshet_server::AuthMode::Sigv4;
    let master = sealing::MasterKey::load(
        config.master_key_file.as_deref(),
        config.master_key.as_deref(),
    )?;
    if master.is_development() {
        if secure {
            return Err(RunError::DevelopmentMasterKey);
        }
        tracing::warn!(
            "no master key configured: secrets are sealed under the well-known development key"
        );
    }
    let master = Arc::new(master);
    let address = listener.local_addr().map_err(RunError::Address)?;
    let mut listener = Some(listener);
    let mut shutdown = Box::pin(shutdown);
    // Active until the lock is lost, then standing by again (its port
    // closed) until it is taken again.
    loop {
        let Some(mut lock) = become_active(&config.database.url, &mut shutdown).await else {
            return Ok(());
        };
        let listener = match listener.take() {
            Some(listener) => listener,
            None => TcpListener::bind(address)
                .await
                .map_err(RunError::Address)?,
        };
        let lost = AtomicBool::new(false);
        let stop = async {
            tokio::select! {
                () = &mut shutdown => {}
                () = until_lock_lost(&mut lock) => lost.store(true, Ordering::Release),
            }
        };
        // The lock is let go only once the service has drained and its
        // tasks have stopped, so a standby never acts beside them.
        serve_while_active(&config, &token, master.clone(), listener, stop).await?;
        drop(lock);
        if !lost.load(Ordering::Acquire) {
            return Ok(());
        }
        tracing::warn!("the control plane stopped acting: standing by again");
    }
}

/// Builds the control plane and serves it on `listener` until `stop`
/// resolves (a shutdown, or the active lock lost): interrupted updates and
/// moves are recovered first, as after any restart.
async fn serve_while_active(
    config: &Config,
    token: &freshet_server::InternalToken,
    master: Arc<sealing::MasterKey>,
    listener: TcpListener,
    stop: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let metrics = freshet_server::Metrics::bind(&config.observability, DEFAULT_METRICS_ADDR)
        .await
        .map_err(RunError::Metrics)?;
    let pool = freshet_metastore::connect_url_and_migrate(&config.database.url, 10).await?;
    let identities = identities::IdentityService::new(
        MetaStore::new(pool.clone()),
        master,
        config.admin.token()?,
        config.auth.mode,
    );
    identities.bootstrap(&config.bootstrap).await?;
    let mut service = ControlPlaneService::new(
        MetaStore::new(pool),
        freshet_server::grpc_channel(&config.membership.addr, token)?,
        config.shard_limit,
        config.scaler.clone(),
        config.api_rate_limits,
        token,
    );
    service.consumer_transition = Duration::from_millis(config.consumer_transition_ms);
    service.on_demand_stream_limit = config.on_demand_stream_limit;
    service.retention_hour_ms = config.retention.millis();
    // Before serving, so no new update can be mistaken for an interrupted
    // one. Membership may not answer yet: a few tries, then serve anyway.
    for attempt in 1..=10 {
        let recovered = async {
            service.recover_interrupted_updates().await?;
            service.reopen_abandoned_moves().await
        };
        match recovered.await {
            Ok(()) => break,
            Err(error) => {
                tracing::warn!(
                    attempt,
                    "recovering interrupted updates failed to {error:#}"
                );
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
    service
        .tasks
        .spawn_loop(scaler::run_scaler(service.clone()));
    service
        .tasks
        .spawn_loop(consumers::run_consumer_transitions(service.clone()));
    serve(service, identities, token, listener, metrics, stop).await
}

/// Serves an already-built service.
pub async fn serve(
    service: ControlPlaneService,
    identities: identities::IdentityService,
    token: &freshet_server::InternalToken,
    listener: TcpListener,
    metrics: freshet_server::Metrics,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let addr = listener.local_addr().map_err(RunError::Address)?;
    tracing::info!(%addr, "control plane serving grpc");
    service.metrics.register_in(metrics.registry());
    service.subscription_claims.register_in(metrics.registry());
    let tasks = service.tasks.clone();
    let router = freshet_server::grpc_server(token, &metrics)
        .timeout(Duration::from_secs(30))
        .add_service(
            ControlPlaneServer::new(service)
                .max_encoding_message_size(freshet_server::CONTROL_PLANE_MESSAGE_LIMIT)
                .max_decoding_message_size(freshet_server::CONTROL_PLANE_MESSAGE_LIMIT),
        )
        .add_service(IdentitiesServer::new(identities));
    let served = freshet_server::serve_grpc(
        router,
        "freshet.v1.ControlPlane",
        listener,
        metrics,
        shutdown,
    )
    .await;
    tasks.stop(freshet_server::TASK_STOP_DEADLINE).await;
    Ok(served?)
}
