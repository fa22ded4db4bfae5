//! `baton agent`: the HA loop, the REST API and the signal handlers of one
//! agent, started from a node file.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use tokio_util::sync::CancellationToken;

use baton::agent::Agent;
use baton::config::NodeConfig;

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
    let agent = Agent::new(cfg).await?.with_config_path(path.clone());
    let shutdown = CancellationToken::new();
    let api = match &tls {
        Some(acceptor) => {
            let l = baton::tls::TlsListener::new(listener, acceptor.clone())?;
            tokio::spawn(baton::api::serve(l, agent.shared(), shutdown.clone()))
        }
        None => tokio::spawn(baton::api::serve(
            listener,
            agent.shared(),
            shutdown.clone(),
        )),
    };
    let signals = {
        let shutdown = shutdown.clone();
        let shared = agent.shared();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            let mut hup = signal(SignalKind::hangup()).expect("SIGHUP handler");
            loop {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM received"),
                    _ = int.recv() => tracing::info!("SIGINT received"),
                    _ = hup.recv() => {
                        tracing::info!("SIGHUP received: reloading the node config");
                        shared.reload_requested.store(true, std::sync::atomic::Ordering::SeqCst);
                        shared.wake.notify_one();
                        continue;
                    }
                }
                break;
            }
            shutdown.cancel();
        })
    };
    // The HA loop is the agent: when it ends, everything ends.
    let r = agent.run(shutdown.clone()).await;
    shutdown.cancel();
    signals.abort();
    let _ = api.await;
    r.map(|()| ExitCode::SUCCESS)
}
