//! `skiff-hub serve`: opens the store, follows Git, serves the API, stops cleanly on
//! SIGTERM or Ctrl-C.

use std::sync::Arc;
use std::time::Duration;

use skiff_proto::keys::SigningKey;
use tracing::{info, warn};

use crate::api::{self, AppState};
use crate::config::HubConfig;
use crate::fleet::{Fleet, token_hash};
use crate::sources::Sources;
use crate::store::Store;
use crate::telemetry::Metrics;

/// Runs the hub until a termination signal.
pub async fn run(config: HubConfig, force_unassign: bool) -> anyhow::Result<()> {
    use anyhow::Context as _;
    let config = Arc::new(config);
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("creating data_dir {}", config.data_dir.display()))?;
    let key_path = config.signing_key.as_ref().expect("checked by config");
    let key = Arc::new(SigningKey::load(key_path)?);
    let admin_token = config.admin_token()?;
    let metrics_token = config.metrics_token()?;
    let viewer_token = config.viewer_token()?;
    let tls = config.tls.as_ref().map(api::tls_config).transpose()?;

    let store = Store::open(&config.data_dir)?;
    let fleet = Arc::new(
        Fleet::load(
            store,
            config.channels.clone(),
            crate::store::HistoryLimit {
                count: config.report_history,
                bytes: config.limits.report_history_bytes,
            },
        )?
        .with_offline_after(config.offline_after)
        .with_maintenance(config.maintenance_windows.clone())
        .with_assignments(key.clone(), config.assignments.clone(), force_unassign)?,
    );
    // The trust root chain: checked as agents check it, and the hub's key must be a signer.
    let mut root_chain = None;
    if let Some(dir) = &config.trust_root {
        let chain = crate::trust::load_chain(dir).map_err(|e| anyhow::anyhow!("trust_root: {e}"))?;
        let (newest, _) = chain.last().expect("a chain has a root");
        crate::trust::check_signer(newest, &key.public_key())
            .map_err(|e| anyhow::anyhow!("trust_root: {e}"))?;
        if let Err(e) = newest.check_fresh(skiff_proto::statement::Timestamp::now()) {
            warn!(error = %e, "The newest trust root has expired: agents accept nothing new until a newer root is served");
        }
        for (channel, role) in crate::trust::needs_more_signers(newest, &key.public_key()) {
            warn!(
                channel,
                threshold = role.threshold,
                "The trust root asks more signatures for this channel than the hub's key gives: agents refuse its bundles until the other signers sign"
            );
        }
        info!(version = newest.version, roots = chain.len(), expires = %newest.expires, "Serving trust root");
        fleet.set_roots(chain.clone());
        root_chain = Some(chain.len());
        let resigned = crate::trust::resign_current(&fleet, &config.channels, &key)?;
        if !resigned.is_empty() {
            info!(channels = ?resigned, "Signed the current bundles again with the hub's key");
        }
    }
    let metrics = Arc::new(Metrics::default());
    let sources = Arc::new(Sources::new(
        config.clone(),
        fleet.clone(),
        key.clone(),
        metrics.clone(),
    ));

    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| api::ServeError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr()?;
    if tls.is_none() && !addr.ip().is_loopback() {
        warn!(address = %addr, "Serving plain HTTP on a non-loopback address (insecure_http); tokens cross the network in clear text");
    }
    info!(
        address = %addr,
        scheme = if tls.is_some() { "https" } else { "http" },
        keyid = %key.public_key().keyid(),
        clusters = fleet.cluster_count(),
        channels = config.channels.len(),
        "Hub listening"
    );

    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let state = Arc::new(AppState {
        fleet: fleet.clone(),
        sources: sources.clone(),
        metrics,
        admin_token_hash: token_hash(&admin_token),
        config: config.clone(),
        shutdown: shutdown_rx.clone(),
        public_keys: vec![key.public_key().to_spki_pem()],
        connections: Default::default(),
        metrics_token_hash: metrics_token.as_deref().map(token_hash),
        downloads: Default::default(),
        deliveries: Default::default(),
        ui: Default::default(),
        viewer_token_hash: viewer_token.as_deref().map(token_hash),
    });
    for c in config.channels.iter().filter(|c| c.targets.is_empty()) {
        warn!(channel = %c.name, "Channel has no targets (no labels, no clusters): it goes to no cluster");
    }
    sources.spawn();

    let flusher = fleet.clone();
    let flusher_root_dir = config.trust_root.clone();
    let flusher_key = key.public_key();
    let mut root_len = root_chain;
    let mut flush_stop = shutdown_rx.clone();
    let flush_task = tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs(10)) => {}
                _ = flush_stop.changed() => break,
            }
            let f = flusher.clone();
            if let Ok(Err(error)) = tokio::task::spawn_blocking(move || f.flush_seen()).await {
                warn!(%error, "Saving last-seen times failed");
            }
            // A newer root dropped into the folder is served without a restart.
            if let Some(dir) = &flusher_root_dir {
                match crate::trust::load_chain(dir) {
                    Ok(chain) if Some(chain.len()) != root_len => {
                        let newest = &chain.last().expect("one").0;
                        if let Err(e) = crate::trust::check_signer(newest, &flusher_key) {
                            warn!(error = %e, "New trust root not served");
                        } else {
                            info!(version = newest.version, "Serving a newer trust root");
                            root_len = Some(chain.len());
                            flusher.set_roots(chain);
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        warn!(error = %e, "Trust root folder unreadable; serving the chain read before")
                    }
                }
            }
            // Assignments that expire are signed again when half their life has passed.
            let f = flusher.clone();
            match tokio::task::spawn_blocking(move || f.renew_assignments()).await {
                Ok(Ok(n)) if n > 0 => info!(renewed = n, "Assignments renewed before they expire"),
                Ok(Err(error)) => warn!(%error, "Renewing assignments failed"),
                _ => {}
            }
        }
    });

    // Rollouts move on as reports arrive and soaks end: looked at twice a second (cheap
    // when nothing moves: one read-locked pass per running rollout).
    let ticker = fleet.clone();
    let mut tick_stop = shutdown_rx.clone();
    let rollout_task = tokio::spawn(async move {
        loop {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = tick_stop.changed() => break,
            }
            let f = ticker.clone();
            if let Ok(Err(error)) = tokio::task::spawn_blocking(move || f.tick_rollouts()).await {
                warn!(%error, "Moving rollouts on failed; trying again");
            }
        }
    });

    let shutdown = async move {
        let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                warn!(error = %e, "No SIGTERM handler; stop with Ctrl-C");
                let _ = tokio::signal::ctrl_c().await;
                let _ = shutdown_tx.send(true);
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        info!("Shutting down: draining in-flight requests");
        let _ = shutdown_tx.send(true);
    };
    api::serve(listener, tls, api::router(state.clone()), state, shutdown).await?;
    let _ = flush_task.await;
    let _ = rollout_task.await;
    fleet.flush_seen()?;
    info!("Hub stopped");
    Ok(())
}
