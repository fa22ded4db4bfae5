//! `baton agent`: the HA loop, the REST API and the signal handlers of one
//! agent, started from a node file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use baton::agent::Agent;
use baton::config::NodeConfig;

/// `RUST_LOG` as `target=level` pairs and a bare default level (`info`
/// when unset). Not `EnvFilter`: its span and field directives need a
/// regex engine, which would make up a tenth of every agent's resident
/// code for a feature an agent's log does not need.
fn init_logging() {
    use tracing_subscriber::filter::Targets;
    use tracing_subscriber::prelude::*;
    let default = Targets::new().with_default(tracing::Level::INFO);
    let filter = match std::env::var("RUST_LOG") {
        Ok(s) if !s.trim().is_empty() => s.parse::<Targets>().unwrap_or_else(|e| {
            eprintln!("RUST_LOG={s:?}: {e} (expected e.g. \"info\" or \"info,baton=debug\"); logging at info");
            default
        }),
        _ => default,
    };
    tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_target(false)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr())),
        )
        .with(filter)
        .init();
}

pub async fn agent(path: PathBuf) -> anyhow::Result<ExitCode> {
    let cfg = NodeConfig::load(&path)?;
    init_logging();
    let tls = match &cfg.api.tls {
        Some((cert, key)) => Some(baton::tls::acceptor(cert, key)?),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(cfg.api.listen)
        .await
        .with_context(|| format!("binding the REST API to {} (api.listen)", cfg.api.listen))?;
    tracing::info!(scope = %cfg.scope, name = %cfg.name, api = %cfg.api.listen, "baton agent starting");
    let hooks_cfg = cfg.clone();
    let agent = Agent::new(cfg).await?.with_config_path(path.clone());
    baton::hooks::spawn(&hooks_cfg, &agent.handle());
    let shutdown = CancellationToken::new();
    let http = agent.http_client();
    let api = match &tls {
        Some(acceptor) => {
            let l = baton::tls::TlsListener::new(listener, acceptor.clone())?;
            tokio::spawn(baton::api::serve(l, agent.handle(), http, shutdown.clone()))
        }
        None => tokio::spawn(baton::api::serve(
            listener,
            agent.handle(),
            http,
            shutdown.clone(),
        )),
    };
    // Signal handlers are installed before the loop starts, so a failure
    // to install one is an error at start-up, not a panic in a task.
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    let signals = {
        let shutdown = shutdown.clone();
        let handle = agent.handle();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                    _ = hup.recv() => {
                        tracing::info!("SIGHUP received: reloading the node config");
                        // The loop logs the outcome; nobody waits for it here.
                        let handle = handle.clone();
                        tokio::spawn(async move { handle.reload().await });
                        continue;
                    }
                }
                break;
            }
            shutdown.cancel();
        })
    };
    // The REST API is a critical task: if it dies, the agent stops cleanly
    // (postgres stopped, leader key released) rather than run on half-alive
    // with no health checks for load balancers and no elections answered.
    let api_died = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let r = api.await;
            if shutdown.is_cancelled() {
                return false;
            }
            tracing::error!("the REST API task ended ({r:?}): stopping the agent");
            shutdown.cancel();
            true
        })
    };
    // The HA loop is the agent: when it ends, everything ends.
    let r = agent.run(shutdown.clone()).await;
    shutdown.cancel();
    signals.abort();
    let api_died = api_died.await.unwrap_or(true);
    r?;
    Ok(if api_died {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// `baton router`: until SIGTERM or SIGINT.
pub async fn router(path: PathBuf) -> anyhow::Result<ExitCode> {
    let cfg = baton::router::RouterConfig::load(&path)?;
    init_logging();
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    let shutdown = CancellationToken::new();
    let router = tokio::spawn(baton::router::run(cfg, shutdown.clone()));
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received: the router stops"),
        _ = int.recv() => tracing::info!("SIGINT received: the router stops"),
        r = router => {
            r.context("the router task")??;
            return Ok(ExitCode::FAILURE);
        }
    }
    shutdown.cancel();
    Ok(ExitCode::SUCCESS)
}
