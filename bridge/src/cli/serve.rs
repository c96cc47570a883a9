//! `sealfarm-bridge run`: open the state directory, wire the parts together
//! (call store, blobs, piece inbox, miner client, broker link, worker API,
//! operators' API), register with the miner and serve its calls until
//! SIGTERM/Ctrl-C; and the background loops alongside (results, dead
//! letters, lease events and expiry, pruning the call store).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use sealfarm_runtime::broker::{self, BrokerLink};
use sealfarm_runtime::shutdown::{self, Shutdown};
use sealfarm_schemas::topology;

use super::RunArgs;
use crate::blobs::{self, BlobApi, Blobs};
use crate::calls::leases::Leases;
use crate::calls::store::CallStore;
use crate::calls::upgrade;
use crate::calls::Calls;
use crate::miner::api_info::MinerApiInfo;
use crate::miner::client::Miner;
use crate::miner::pieces::PieceInbox;
use crate::miner::storage::StoragePath;
use crate::miner::worker_api::{self, Api};
use crate::ops::dead_letters::DeadLetters;
use crate::ops::metrics::Metrics;
use crate::ops::queues::QueueWatch;
use crate::ops::snapshot::StatusSource;
use crate::ops::{self, Ops, Tokens};
use crate::workers::Farm;

pub(super) async fn run(args: RunArgs) -> Result<()> {
    let info = MinerApiInfo::parse(&args.miner_api_info)?;
    let storage = args
        .storage
        .iter()
        .map(|p| StoragePath::open(p).with_context(|| format!("cannot use storage path {}", p.display())))
        .collect::<Result<Vec<_>>>()?;
    let advertised = advertised_address(&args.listen, &info).await?;
    let tls = match (&args.tls_cert, &args.tls_key) {
        (Some(cert), Some(key)) => Some(crate::tls::server_config(cert, key)?),
        _ => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let state_dir = args.state_dir.unwrap_or_else(|| {
        std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| ".".into()).join(".sealfarm/bridge")
    });
    let store = CallStore::open(&state_dir)?;
    let mut tokens = Tokens::load_or_create(&state_dir)?;
    if let Some(token) = &args.worker_token {
        tokens.worker = token.clone();
    }
    let blobs = Arc::new(Blobs::open(&state_dir, args.max_request_size)?);
    let (trigger, shutdown) = shutdown::channel();
    let miner = Arc::new(Miner::new(
        info.clone(),
        storage,
        format!("{scheme}://{advertised}"),
        store.clone(),
        args.miner_timeout,
    ));
    let (bridge_id, first_start) = bridge_id(args.bridge_id.as_deref(), &state_dir, &miner, &shutdown).await?;
    let pieces =
        Arc::new(PieceInbox::new(&miner.storage[0].path, &bridge_id).context("cannot prepare the piece inbox")?);
    let broker_config = args.broker.config()?;
    let link = Arc::new(BrokerLink::new(
        broker_config.clone(),
        format!("sealfarm-bridge {bridge_id}"),
        broker::Role::Bridge(Some(bridge_id.clone())),
    ));
    link.get().await.with_context(|| format!("cannot reach RabbitMQ at {}", broker_config.redacted()))?;
    let metrics = Arc::new(Metrics::for_miner(Some(&bridge_id)));
    let users = crate::senders::WorkerUsers {
        bridge_user: link.user().to_string(),
        rule: args.worker_user_rule.clone(),
        bound: args.worker_users.iter().cloned().collect(),
    };
    let senders = Arc::new(
        crate::senders::Senders::new(
            users,
            &tokens.attempt_key,
            args.worker_networks.clone(),
            metrics.refused_messages.clone(),
        )
        .for_bridge(&bridge_id),
    );
    let calls = Arc::new(Calls {
        store,
        blobs: blobs.clone(),
        link: link.clone(),
        miner: miner.clone(),
        shutdown: shutdown.clone(),
        bridge_id: bridge_id.clone(),
        ticket_window: args.pc1_ticket_window,
        max_attempts: args.max_attempts,
        farm: Arc::new(Farm::new(args.lease_timeout)),
        shared_storage: miner.storage.iter().map(|p| p.meta.id.clone()).collect(),
        metrics: metrics.clone(),
        senders,
        return_failures: Default::default(),
        pieces: pieces.clone(),
        large_returns: tokio::sync::Semaphore::new(1),
        shares: crate::calls::shares::Shares::new(args.fair_share),
        tasks: tokio_util::task::TaskTracker::new(),
    });
    let ops = Arc::new(Ops {
        calls: calls.clone(),
        status: StatusSource {
            hostname: sealfarm_runtime::hostname(),
            started_at_ms: sealfarm_schemas::messages::now_ms(),
            lease_timeout: args.lease_timeout,
            queues: QueueWatch::new(&broker_config.urls[0], args.rabbitmq_management.as_deref()),
        },
        tokens: tokens.clone(),
        dead_letters: DeadLetters::new(),
        metrics,
        metrics_access: crate::ops::MetricsAccess {
            token: args.metrics_token,
            own_address: args.metrics_listen.is_some(),
        },
        metrics_text: Default::default(),
    });
    let leases = Leases::new(calls.clone(), args.lease_timeout)?;
    let api = Arc::new(Api {
        session: uuid::Uuid::new_v4(),
        hostname: sealfarm_runtime::hostname(),
        calls: calls.clone(),
        miner: miner.clone(),
        pieces: pieces.clone(),
        limits: args.max_concurrent.clone(),
        files_token: args.files_token.clone(),
        max_request_size: args.max_request_size,
        large_requests: tokio::sync::Semaphore::new(1),
        // A file server that stops sending fails the fetch: no answer or no
        // bytes for a minute (a whole sealed file may take hours: no total).
        files_client: reqwest::Client::builder()
            .connect_timeout(std::time::Duration::from_secs(10))
            .read_timeout(sealfarm_runtime::retry::STALL)
            .build()
            .context("building the HTTP client for workers' file servers")?,
    });
    let blob_api = Arc::new(BlobApi {
        blobs,
        worker_token: tokens.worker.clone(),
        admin_token: tokens.admin.clone(),
        pieces: pieces.clone(),
    });
    eprintln!("sealfarm-bridge {bridge_id}");
    eprintln!("  miner        {}", info.url);
    eprintln!("  listen       {} (advertised as {scheme}://{advertised})", args.listen);
    eprintln!("  broker       {}", broker_config.redacted());
    eprintln!(
        "  queues       {}, {}, {}",
        topology::bridge_results_queue(&bridge_id),
        topology::bridge_events_queue(&bridge_id),
        topology::bridge_dead_queue(&bridge_id)
    );
    eprintln!("  state dir    {}", state_dir.display());
    eprintln!(
        "  leases       {} without a sign of life, then dispatched again",
        humantime::format_duration(args.lease_timeout)
    );
    eprintln!("  retention    returned calls kept {}", humantime::format_duration(args.retain_returned));
    match args.fair_share {
        Some(n) if n > 0 => {
            eprintln!("  fair share   at most {n} of this miner's tasks unclaimed per stage queue; the rest wait here")
        }
        _ => eprintln!(
            "  fair share   none: every task goes to its queue at once (--fair-share N when miners share the farm)"
        ),
    }
    for path in &miner.storage {
        eprintln!("  storage      {} ({})", path.path.display(), path.meta.id);
    }
    // Where the operator commands on this host find the bridge.
    let local = if args.listen.ip().is_unspecified() {
        SocketAddr::new(std::net::Ipv4Addr::LOCALHOST.into(), args.listen.port())
    } else {
        args.listen
    };
    let api_file = state_dir.join("api");
    // The certificate first, so an operator command that reads an https://
    // `api` file finds the certificate to trust beside it.
    let pinned = state_dir.join(crate::tls::PINNED_CERT);
    match &tls {
        Some(tls) => std::fs::write(&pinned, &tls.leaf_pem),
        None => std::fs::remove_file(&pinned).or_else(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Ok(())
            } else {
                Err(e)
            }
        }),
    }
    .with_context(|| format!("cannot write {}", pinned.display()))?;
    std::fs::write(&api_file, format!("{scheme}://{local}\n"))
        .with_context(|| format!("cannot write {}", api_file.display()))?;
    eprintln!("  dashboard    {scheme}://{local}/dashboard (sealfarm-bridge dashboard prints the link with its token)");
    match args.metrics_listen {
        Some(address) => eprintln!("  metrics      http://{address}/metrics"),
        None => eprintln!("  metrics      {scheme}://{local}/metrics"),
    }
    if args.metrics_token {
        eprintln!("               (with the read token: Authorization: Bearer <token-read>)");
    }
    eprintln!(
        "  workers      sealfarm-worker run --bridge {bridge_id}={scheme}://{advertised}{} --worker-token <{}> (C1 outputs and C2 inputs, up to {} bytes)",
        if tls.is_some() { " --bridge-ca <your CA>" } else { "" },
        if args.worker_token.is_some() { "SEALFARM_WORKER_TOKEN".to_string() } else { state_dir.join("token-worker").display().to_string() },
        args.max_request_size
    );

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let mut server_shutdown = shutdown.clone();
    if let Some(address) = args.metrics_listen {
        let listener = tokio::net::TcpListener::bind(address)
            .await
            .with_context(|| format!("cannot listen on {address} (--metrics-listen)"))?;
        let app = ops::metrics_router(ops.clone());
        let mut stop = shutdown.clone();
        tokio::spawn(async move {
            axum::serve(listener, app).with_graceful_shutdown(async move { stop.wait().await }).await
        });
    }
    let app = worker_api::router(api).merge(ops::router(ops)).merge(blobs::router(blob_api));
    let server = match tls {
        Some(tls) => {
            let listener = crate::tls::TlsListener::new(listener, tls.config)?;
            tokio::spawn(async move {
                axum::serve(listener, app).with_graceful_shutdown(async move { server_shutdown.wait().await }).await
            })
        }
        None => tokio::spawn(async move {
            axum::serve(listener, app).with_graceful_shutdown(async move { server_shutdown.wait().await }).await
        }),
    };
    trigger.on_signals();

    miner.check_version(&shutdown).await?;
    miner.actor_address(&shutdown).await?;
    miner.attach_storage().await?;
    calls.redeliver_pending().await?;
    let tasks = calls.tasks.clone();
    tasks.spawn(calls.clone().consume_results(topology::bridge_results_queue(&bridge_id), shutdown.clone()));
    tasks.spawn(calls.clone().consume_dead_letters(topology::bridge_dead_queue(&bridge_id), shutdown.clone()));
    tasks.spawn(leases.clone().consume_events(topology::bridge_events_queue(&bridge_id), shutdown.clone()));
    if let Some(upgraded_at_ms) = upgrade::note(&state_dir, first_start, &calls)? {
        tasks.spawn(upgrade::drain(calls.clone(), leases.clone(), state_dir.clone(), upgraded_at_ms));
    }
    tasks.spawn(leases.clone().expire());
    tasks.spawn(prune_returned(calls.clone(), args.retain_returned));
    tasks.spawn(calls.clone().release_held());
    let session = miner.connect().await?;
    let keeper = {
        let miner = miner.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move { miner.keep_registered(session, shutdown).await })
    };
    let _ = server.await;
    keeper.abort();
    // Consumers, loops and deliveries stop at their next safe point (a
    // delivery waiting to retry stops; its call is delivered at the next start).
    tasks.close();
    if tokio::time::timeout(STOP_GRACE, tasks.wait()).await.is_err() {
        tracing::warn!(left = tasks.len(), "tasks still running at stop; stopping anyway");
    }
    // The marks written without a flush (dispatched, claimed, returned) are
    // on disk before a clean stop ends.
    if let Err(err) = calls.store.flush() {
        tracing::error!(error = %format!("{err:#}"), "cannot flush the call store at stop");
    }
    link.close().await;
    Ok(())
}

/// How long a clean stop waits for the bridge's tasks (a Return on its way
/// to the miner, a result being stored) before it flushes and ends.
const STOP_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Removes calls returned longer than `retain` ago, at start and hourly (a
/// quarter of a shorter retention); then, when the store grew by a quarter
/// since it was last looked at, rewrites it if its live records are a
/// small part of it (sled does not give the space of removed records back).
async fn prune_returned(calls: Arc<Calls>, retain: std::time::Duration) {
    let mut looked_at_size = 0u64;
    loop {
        let store = calls.store.clone();
        match tokio::task::spawn_blocking(move || store.prune(retain)).await {
            Ok(Ok(0)) => {}
            Ok(Ok(removed)) => tracing::info!(removed, "calls returned long ago removed from the call store"),
            Ok(Err(err)) => tracing::warn!(error = %format!("{err:#}"), "cannot prune the call store"),
            Err(err) => tracing::warn!(error = %err, "cannot prune the call store"),
        }
        let on_disk = calls.store.disk_bytes();
        if on_disk > 16 << 20 && on_disk > looked_at_size + looked_at_size / 4 {
            let store = calls.store.clone();
            let started = std::time::Instant::now();
            match tokio::task::spawn_blocking(move || store.compact()).await {
                Ok(Ok(Some((before, after)))) => {
                    let took_ms = started.elapsed().as_millis() as u64;
                    tracing::info!(before_mib = before >> 20, after_mib = after >> 20, took_ms, "call store rewritten");
                    looked_at_size = after;
                }
                Ok(Ok(None)) => looked_at_size = on_disk,
                Ok(Err(err)) => tracing::error!(error = %format!("{err:#}"), "cannot rewrite the call store"),
                Err(err) => tracing::error!(error = %err, "cannot rewrite the call store"),
            }
        }
        // Hourly; more often for a short retention.
        let every = (retain / 4).clamp(std::time::Duration::from_secs(1), std::time::Duration::from_secs(3600));
        if calls.shutdown.wait_for(every).await {
            return;
        }
    }
}

/// The file in the state directory that keeps the bridge's id.
const BRIDGE_ID_FILE: &str = "bridge-id";

/// This bridge's id and whether this is the first start that knows it: the
/// id the state directory keeps (`--bridge-id` must agree), else
/// `--bridge-id`, else the miner's actor address (asked until the miner
/// answers); kept in `bridge-id` from the first start on.
async fn bridge_id(
    given: Option<&str>,
    state_dir: &Path,
    miner: &Miner,
    shutdown: &Shutdown,
) -> Result<(String, bool)> {
    let file = state_dir.join(BRIDGE_ID_FILE);
    let kept = match std::fs::read_to_string(&file) {
        Ok(text) => Some(text.trim().to_string()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", file.display())),
    };
    let check = |id: &str, source: &str| {
        sealfarm_schemas::messages::check_bridge_id(id).map_err(|e| anyhow::anyhow!("{source}: {e}"))
    };
    match (kept, given) {
        (Some(kept), Some(given)) if kept != given => anyhow::bail!(
            "--bridge-id {given}: the state directory {} belongs to bridge {kept} (its calls' results come to \
             sealfarm.bridge.{kept}.results); start with --bridge-id {kept}, or give a bridge of another id its own \
             --state-dir",
            state_dir.display()
        ),
        (Some(kept), _) => {
            check(&kept, &file.display().to_string())?;
            Ok((kept, false))
        }
        (None, given) => {
            let id = match given {
                Some(given) => given.to_string(),
                None => miner.actor_address(shutdown).await?,
            };
            check(&id, if given.is_some() { "--bridge-id" } else { "the miner's actor address" })?;
            sealfarm_runtime::partial_file::write_whole(
                &file.with_extension("partial"),
                &file,
                format!("{id}\n").as_bytes(),
            )
            .with_context(|| format!("cannot write {}", file.display()))?;
            Ok((id, true))
        }
    }
}

/// The address the miner reaches the bridge at: the listen address, or, when
/// that is unspecified (0.0.0.0), this host's address on the route to the miner.
async fn advertised_address(listen: &SocketAddr, miner: &MinerApiInfo) -> Result<SocketAddr> {
    if !listen.ip().is_unspecified() {
        return Ok(*listen);
    }
    let stream = tokio::net::TcpStream::connect(&miner.address)
        .await
        .with_context(|| format!("cannot reach the miner at {} to find this host's address", miner.address))?;
    Ok(SocketAddr::new(stream.local_addr()?.ip(), listen.port()))
}
