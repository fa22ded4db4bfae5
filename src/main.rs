//! The `baton` binary: `agent` (one per PostgreSQL instance), operator
//! commands (`list`), and `demo`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use baton::agent::Agent;
use baton::config::NodeConfig;
use baton::dcs::Dcs;
use baton::status::ClusterStatus;

#[derive(Parser)]
#[command(
    name = "baton",
    version,
    about = "High availability for PostgreSQL, with consensus in etcd"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent for one PostgreSQL instance.
    Agent {
        /// Node configuration file (TOML).
        #[arg(short, long)]
        config: PathBuf,
    },
    /// Show the cluster: overall state and one row per member.
    List {
        #[command(flatten)]
        target: Target,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Run a throw-away local cluster (etcd + 3 agents) and show it.
    Demo {
        /// Stop after this many seconds (default: until Ctrl-C).
        #[arg(long = "for", value_name = "SECONDS")]
        duration: Option<u64>,
        /// Directory for the cluster (default: a new one under /tmp).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Keep the directory afterwards.
        #[arg(long)]
        keep: bool,
    },
}

/// Which cluster an operator command talks to: a node config, or etcd + scope.
#[derive(clap::Args)]
struct Target {
    /// A node configuration file to take etcd endpoints, scope and namespace from.
    #[arg(short, long, conflicts_with_all = ["etcd", "scope"])]
    config: Option<PathBuf>,
    /// etcd endpoint(s), comma separated.
    #[arg(long, value_delimiter = ',')]
    etcd: Vec<String>,
    #[arg(long)]
    scope: Option<String>,
    #[arg(long, default_value = baton::config::DEFAULT_NAMESPACE)]
    namespace: String,
}

impl Target {
    fn resolve(&self) -> anyhow::Result<(Vec<String>, String, String)> {
        if let Some(path) = &self.config {
            let c = NodeConfig::load(path)?;
            let prefix = c.prefix();
            return Ok((c.etcd.endpoints, c.scope, prefix));
        }
        let scope = self
            .scope
            .clone()
            .context("give --config FILE, or --etcd URL and --scope NAME")?;
        if self.etcd.is_empty() {
            anyhow::bail!("give --config FILE, or --etcd URL and --scope NAME");
        }
        let prefix = format!("{}/{scope}/", self.namespace.trim_end_matches('/'));
        Ok((self.etcd.clone(), scope, prefix))
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let rt = tokio::runtime::Runtime::new().expect("tokio runtime");
    let result = rt.block_on(async {
        match cli.command {
            Cmd::Agent { config } => run_agent(config).await,
            Cmd::List { target, json } => list(target, json).await,
            Cmd::Demo {
                duration,
                dir,
                keep,
            } => baton::demo::run(duration.map(Duration::from_secs), dir, keep).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            if let Some(ce) = e.downcast_ref::<baton::config::ConfigError>() {
                eprintln!("error: {ce}");
                return ExitCode::from(2);
            }
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_agent(path: PathBuf) -> anyhow::Result<ExitCode> {
    let cfg = NodeConfig::load(&path)?;
    init_logging();
    let listener = tokio::net::TcpListener::bind(cfg.api.listen)
        .await
        .with_context(|| format!("binding the REST API to {} (api.listen)", cfg.api.listen))?;
    tracing::info!(scope = %cfg.scope, name = %cfg.name, api = %cfg.api.listen, "baton agent starting");
    let agent = Agent::new(cfg).await?;
    let shutdown = CancellationToken::new();
    let api = tokio::spawn(baton::api::serve(
        listener,
        agent.shared(),
        shutdown.clone(),
    ));
    let signals = {
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
            let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
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

async fn list(target: Target, json: bool) -> anyhow::Result<ExitCode> {
    let (endpoints, scope, prefix) = target.resolve()?;
    let dcs = Dcs::connect(&endpoints, prefix, Duration::from_secs(3))
        .await
        .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))?;
    let view = dcs.load().await.with_context(|| {
        format!(
            "reading cluster {scope} from etcd at {}",
            endpoints.join(",")
        )
    })?;
    let max_lag = view
        .config
        .as_ref()
        .map(|c| c.maximum_lag_on_failover)
        .unwrap_or(1 << 20);
    let status = ClusterStatus::from_view(&scope, &view, max_lag);
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.render());
    }
    Ok(ExitCode::SUCCESS)
}
