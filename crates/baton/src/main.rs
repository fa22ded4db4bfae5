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
use baton_core::status::ClusterStatus;

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
    /// Print the timeline history: one row per promotion.
    History {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        json: bool,
    },
    /// Rebuild a replica from the leader (its data directory is moved aside).
    Reinit {
        #[command(flatten)]
        target: Target,
        /// The member to rebuild.
        member: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        force: bool,
    },
    /// Planned switchover: zero data loss, a short write pause.
    Switchover {
        #[command(flatten)]
        target: Target,
        /// The current leader (default: whoever leads now).
        #[arg(long)]
        leader: Option<String>,
        /// The member to hand over to (default: the healthiest replica).
        #[arg(long)]
        candidate: Option<String>,
        /// RFC 3339 time with zone, e.g. 2026-11-24T03:00:00+01:00.
        #[arg(long)]
        scheduled_at: Option<String>,
        /// Cancel a scheduled switchover.
        #[arg(long, conflicts_with_all = ["candidate", "scheduled_at"])]
        cancel: bool,
        /// Do not ask for confirmation.
        #[arg(long)]
        force: bool,
    },
    /// Manual failover to a candidate when there is no healthy leader.
    Failover {
        #[command(flatten)]
        target: Target,
        #[arg(long)]
        candidate: String,
        #[arg(long)]
        force: bool,
    },
    /// Maintenance mode on: agents keep reporting but take no automatic action.
    Pause {
        #[command(flatten)]
        target: Target,
    },
    /// Maintenance mode off.
    Resume {
        #[command(flatten)]
        target: Target,
    },
    /// Restart a member's postgres in its current role.
    Restart {
        #[command(flatten)]
        target: Target,
        member: String,
    },
    /// Make every agent re-read its node config (parameters, pg_hba, tags).
    Reload {
        #[command(flatten)]
        target: Target,
    },
    /// Show or change the dynamic config stored in etcd.
    Config {
        #[command(flatten)]
        target: Target,
        #[command(subcommand)]
        action: ConfigCmd,
    },
    /// Run a throw-away local cluster (etcd + 3 agents) and show it: runs
    /// `baton-demo` (built from the source tree, not in the package).
    #[command(disable_help_flag = true)]
    Demo {
        /// `--for SECONDS`, `--dir DIR`, `--keep`, `--scenario failover|switchover`
        /// (`baton demo --help` lists them).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Print a shell completion script (the package installs them).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout, or write one page per command.
    Man {
        /// Write baton.1 and baton-COMMAND.1 into this directory.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ConfigCmd {
    /// Print the dynamic config as JSON.
    Show,
    /// Set keys: `ttl=5`, `postgresql.use_pg_rewind=true`, `pause=null` deletes.
    Set {
        #[arg(required = true, value_name = "KEY=VALUE")]
        pairs: Vec<String>,
    },
    /// Edit in $EDITOR; validated, stored only if nobody changed it meanwhile.
    Edit,
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
    /// Cluster name (the node files' `scope`).
    #[arg(long)]
    scope: Option<String>,
    /// etcd key prefix (the node files' `namespace`).
    #[arg(long, default_value = baton::config::DEFAULT_NAMESPACE)]
    namespace: String,
    /// REST API user for control commands (default: from --config).
    #[arg(long)]
    username: Option<String>,
    /// REST API password (or BATON_API_PASSWORD).
    #[arg(long, env = "BATON_API_PASSWORD", hide_env_values = true)]
    password: Option<String>,
    /// CA (PEM) to trust for agents served over HTTPS (default: from --config).
    #[arg(long)]
    cafile: Option<PathBuf>,
}

impl Target {
    /// Credentials for the agents' control endpoints.
    fn credentials(&self) -> anyhow::Result<Option<(String, String)>> {
        if let Some(u) = &self.username {
            return Ok(Some((u.clone(), self.password.clone().unwrap_or_default())));
        }
        if let Some(path) = &self.config {
            let c = NodeConfig::load(path)?;
            return Ok(c
                .api
                .auth
                .map(|a| (a.username, a.password.unwrap_or_default())));
        }
        Ok(None)
    }

    fn http(&self, timeout: Duration) -> anyhow::Result<reqwest::Client> {
        let cafile = match (&self.cafile, &self.config) {
            (Some(f), _) => Some(f.clone()),
            (None, Some(path)) => NodeConfig::load(path)?.api.cafile,
            (None, None) => None,
        };
        baton::tls::http_client(timeout, cafile.as_deref())
    }

    async fn view(&self) -> anyhow::Result<(String, baton_core::cluster::ClusterView)> {
        let (endpoints, scope, prefix) = self.resolve()?;
        let dcs = Dcs::connect(&endpoints, prefix, Duration::from_secs(3))
            .await
            .with_context(|| format!("connecting to etcd at {}", endpoints.join(",")))?;
        let view = dcs.load().await.with_context(|| {
            format!(
                "reading cluster {scope} from etcd at {}",
                endpoints.join(",")
            )
        })?;
        Ok((scope, view))
    }

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
            Cmd::History { target, json } => history(target, json).await,
            Cmd::Reinit {
                target,
                member,
                force,
            } => reinit(target, member, force).await,
            Cmd::Switchover {
                target,
                leader,
                candidate,
                scheduled_at,
                cancel,
                force,
            } => switchover(target, leader, candidate, scheduled_at, cancel, force).await,
            Cmd::Failover {
                target,
                candidate,
                force,
            } => failover(target, candidate, force).await,
            Cmd::Pause { target } => set_config(target, vec!["pause=true".into()]).await,
            Cmd::Resume { target } => set_config(target, vec!["pause=null".into()]).await,
            Cmd::Restart { target, member } => {
                let (_, view) = target.view().await?;
                control(
                    &target,
                    &view,
                    &member,
                    reqwest::Method::POST,
                    "/restart",
                    None,
                )
                .await
            }
            Cmd::Reload { target } => {
                let (_, view) = target.view().await?;
                let mut code = ExitCode::SUCCESS;
                for m in view.members.keys() {
                    if control(&target, &view, m, reqwest::Method::POST, "/reload", None).await?
                        != ExitCode::SUCCESS
                    {
                        code = ExitCode::FAILURE;
                    }
                }
                Ok(code)
            }
            Cmd::Config { target, action } => match action {
                ConfigCmd::Show => {
                    let (_, view) = target.view().await?;
                    match (&view.config, &view.config_error) {
                        (Some(c), _) => println!("{}", serde_json::to_string_pretty(c)?),
                        (None, Some(e)) => anyhow::bail!("the stored config is invalid: {e}"),
                        (None, None) => {
                            anyhow::bail!("no config stored (cluster not bootstrapped?)")
                        }
                    }
                    Ok(ExitCode::SUCCESS)
                }
                ConfigCmd::Set { pairs } => set_config(target, pairs).await,
                ConfigCmd::Edit => edit_config(target).await,
            },
            Cmd::Demo { args } => demo(args),
            // Generated from the same definitions the parser uses, so they
            // can never drift from the real flags.
            Cmd::Completions { shell } => {
                let mut cmd = <Cli as clap::CommandFactory>::command();
                clap_complete::generate(shell, &mut cmd, "baton", &mut std::io::stdout());
                Ok(ExitCode::SUCCESS)
            }
            Cmd::Man { dir } => {
                man_pages(dir)?;
                Ok(ExitCode::SUCCESS)
            }
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

/// The demo's harness is not linked into the product: hand over to
/// `baton-demo` beside this binary, telling it which agent binary to run.
fn demo(args: Vec<String>) -> anyhow::Result<ExitCode> {
    use std::os::unix::process::CommandExt as _;
    let me = std::env::current_exe().context("locating the baton binary")?;
    let demo = me.with_file_name("baton-demo");
    if !demo.is_file() {
        anyhow::bail!(
            "`baton demo` runs {}, which is not there: it is built from the source tree \
             (scripts/demo, or `cargo build --release -p baton-local`), not shipped in the package",
            demo.display()
        );
    }
    let err = std::process::Command::new(&demo)
        .arg("--baton")
        .arg(&me)
        .args(args)
        .exec();
    Err(anyhow::Error::new(err).context(format!("running {}", demo.display())))
}

/// `baton.1` lists the commands; each command's flags are on its own page
/// (`man baton-switchover`), as git and cargo do.
fn man_pages(dir: Option<PathBuf>) -> anyhow::Result<()> {
    let cmd = <Cli as clap::CommandFactory>::command();
    let Some(dir) = dir else {
        return clap_mangen::Man::new(cmd)
            .render(&mut std::io::stdout())
            .context("writing the man page");
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    clap_mangen::generate_to(cmd, &dir)
        .with_context(|| format!("writing man pages into {}", dir.display()))
}

async fn run_agent(path: PathBuf) -> anyhow::Result<ExitCode> {
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

async fn list(target: Target, json: bool) -> anyhow::Result<ExitCode> {
    let (scope, view) = target.view().await?;
    let status = ClusterStatus::from_view(&scope, &view, view.max_lag());
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", status.render());
    }
    Ok(ExitCode::SUCCESS)
}

async fn history(target: Target, json: bool) -> anyhow::Result<ExitCode> {
    let (_, view) = target.view().await?;
    let h = view.history.unwrap_or(serde_json::json!([]));
    if json {
        println!("{}", serde_json::to_string_pretty(&h)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "{:>3}  {:>12}  {:<28}  {:<26}  New Leader",
        "TL", "LSN", "Reason", "Timestamp"
    );
    for e in h.as_array().into_iter().flatten() {
        let f = |i: usize| e.get(i).cloned().unwrap_or(serde_json::Value::Null);
        let text = |v: serde_json::Value| match v {
            serde_json::Value::String(s) => s,
            serde_json::Value::Null => String::new(),
            other => other.to_string(),
        };
        let lsn = f(1)
            .as_u64()
            .map(|l| baton_core::lsn::Lsn(l).to_string())
            .unwrap_or_default();
        println!(
            "{:>3}  {:>12}  {:<28}  {:<26}  {}",
            text(f(0)),
            lsn,
            text(f(2)),
            text(f(3)),
            text(f(4))
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn reinit(target: Target, member: String, force: bool) -> anyhow::Result<ExitCode> {
    let (_, view) = target.view().await?;
    if !force
        && !confirm(&format!(
            "Rebuild {member} from the leader? Its data directory is moved aside."
        ))?
    {
        eprintln!("aborted");
        return Ok(ExitCode::FAILURE);
    }
    let body = serde_json::json!({"force": true});
    control(
        &target,
        &view,
        &member,
        reqwest::Method::POST,
        "/reinitialize",
        Some(body),
    )
    .await
}

fn confirm(question: &str) -> anyhow::Result<bool> {
    eprint!("{question} [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

/// Calls a control endpoint on `member`'s REST API and reports the answer.
async fn control(
    target: &Target,
    view: &baton_core::cluster::ClusterView,
    member: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<serde_json::Value>,
) -> anyhow::Result<ExitCode> {
    let Some(m) = view.members.get(member) else {
        anyhow::bail!(
            "no member {member:?} (members: {})",
            view.members.keys().cloned().collect::<Vec<_>>().join(", ")
        );
    };
    let base = m.api_url.trim_end_matches("/patroni");
    // Switchovers wait for the outcome; the agent bounds every step.
    let client = target.http(Duration::from_secs(330))?;
    let mut req = client.request(method, format!("{base}{path}"));
    if let Some(b) = body {
        req = req.json(&b);
    }
    if let Some((u, p)) = target.credentials()? {
        req = req.basic_auth(u, Some(p));
    }
    let resp = req
        .send()
        .await
        .with_context(|| format!("calling {base}{path}"))?;
    let (code, text) = baton::tls::read_answer(resp).await;
    if code.is_success() {
        println!("{member}: {text}");
        Ok(ExitCode::SUCCESS)
    } else {
        eprintln!("{member} refused ({code}): {text}");
        Ok(ExitCode::FAILURE)
    }
}

async fn switchover(
    target: Target,
    leader: Option<String>,
    candidate: Option<String>,
    scheduled_at: Option<String>,
    cancel: bool,
    force: bool,
) -> anyhow::Result<ExitCode> {
    let (scope, view) = target.view().await?;
    let Some(current) = view.leader_name().map(str::to_string) else {
        anyhow::bail!("cluster {scope} has no leader: use `baton failover --candidate NAME`");
    };
    if cancel {
        return control(
            &target,
            &view,
            &current,
            reqwest::Method::DELETE,
            "/switchover",
            None,
        )
        .await;
    }
    let leader = leader.unwrap_or_else(|| current.clone());
    if !force {
        let to = candidate.as_deref().unwrap_or("the healthiest replica");
        let when = scheduled_at
            .as_deref()
            .map(|t| format!(" at {t}"))
            .unwrap_or_default();
        if !confirm(&format!("Switch over from {leader} to {to}{when}?"))? {
            eprintln!("aborted");
            return Ok(ExitCode::FAILURE);
        }
    }
    let body =
        serde_json::json!({"leader": leader, "candidate": candidate, "scheduled_at": scheduled_at});
    control(
        &target,
        &view,
        &current,
        reqwest::Method::POST,
        "/switchover",
        Some(body),
    )
    .await
}

async fn failover(target: Target, candidate: String, force: bool) -> anyhow::Result<ExitCode> {
    let (_, view) = target.view().await?;
    if !force && !confirm(&format!("Promote {candidate} by manual failover?"))? {
        eprintln!("aborted");
        return Ok(ExitCode::FAILURE);
    }
    let body = serde_json::json!({"candidate": candidate});
    control(
        &target,
        &view,
        &candidate,
        reqwest::Method::POST,
        "/failover",
        Some(body),
    )
    .await
}

/// Applies `key=value` pairs (values parsed as JSON, else taken as strings;
/// `null` deletes) to the stored config, validated, compare-and-set.
async fn set_config(target: Target, pairs: Vec<String>) -> anyhow::Result<ExitCode> {
    let mut patch = serde_json::json!({});
    for p in &pairs {
        let (k, v) = p
            .split_once('=')
            .with_context(|| format!("{p:?} is not KEY=VALUE"))?;
        let v: serde_json::Value =
            serde_json::from_str(v).unwrap_or_else(|_| serde_json::Value::String(v.to_string()));
        let mut slot = &mut patch;
        let parts: Vec<&str> = k.split('.').collect();
        for part in &parts[..parts.len() - 1] {
            slot = slot
                .as_object_mut()
                .expect("patch levels are objects")
                .entry(part.to_string())
                .or_insert(serde_json::json!({}));
        }
        slot.as_object_mut()
            .expect("patch levels are objects")
            .insert(parts[parts.len() - 1].to_string(), v);
    }
    let (_, view) = target.view().await?;
    let mut current = view
        .config
        .as_ref()
        .map(serde_json::to_value)
        .transpose()?
        .context("no valid config stored to change")?;
    baton_core::config::merge_patch(&mut current, &patch);
    store_config(&target, current, view.config_revision).await
}

async fn store_config(
    target: &Target,
    value: serde_json::Value,
    revision: i64,
) -> anyhow::Result<ExitCode> {
    let cfg: baton_core::config::DynamicConfig =
        serde_json::from_value(value).map_err(|e| anyhow::anyhow!("invalid config: {e}"))?;
    if let Err(e) = cfg.validate() {
        eprintln!("error: invalid config, nothing stored: {e}");
        return Ok(ExitCode::from(2));
    }
    let (endpoints, _, prefix) = target.resolve()?;
    let dcs = Dcs::connect(&endpoints, prefix, Duration::from_secs(3)).await?;
    if !dcs.cas_config(&cfg, revision).await? {
        eprintln!("error: the config changed since it was read (another edit won); nothing stored, try again");
        return Ok(ExitCode::FAILURE);
    }
    println!("{}", serde_json::to_string_pretty(&cfg)?);
    Ok(ExitCode::SUCCESS)
}

async fn edit_config(target: Target) -> anyhow::Result<ExitCode> {
    let (_, view) = target.view().await?;
    let current = view
        .config
        .as_ref()
        .context("no valid config stored to edit")?;
    let file = std::env::temp_dir().join(format!("baton-config-{}.json", std::process::id()));
    std::fs::write(&file, serde_json::to_string_pretty(current)?)?;
    // $EDITOR may carry arguments ("code --wait"): let the shell split it.
    let editor = std::env::var("EDITOR").unwrap_or_else(|_| "vi".into());
    let status = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("baton-config-edit")
        .arg(&file)
        .status()
        .with_context(|| format!("running {editor}"))?;
    let text = std::fs::read_to_string(&file)?;
    let _ = std::fs::remove_file(&file);
    if !status.success() {
        anyhow::bail!("{editor} exited with {status}; nothing stored");
    }
    let value: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("edited config is not JSON ({e}); nothing stored"))?;
    store_config(&target, value, view.config_revision).await
}
