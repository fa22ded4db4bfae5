//! The `baton` binary: parses the command line and dispatches. `run` is the
//! agent (one per PostgreSQL instance); `ctl` holds the operator commands.

mod ctl;
mod run;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

use ctl::Target;

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
    /// Route clients to the primary (read-write) and to fresh replicas
    /// (read-only), holding them through switchovers and failovers.
    Router {
        /// Router configuration file (TOML).
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
        /// Also show the leader's routing endpoints and whether each holds it.
        #[arg(short, long)]
        verbose: bool,
        /// Print the layout of openGauss's `gs_om -t status --detail`.
        #[arg(long, conflicts_with = "json")]
        gs_om: bool,
        /// Redraw every SECS seconds (default 2) until interrupted.
        #[arg(short = 'W', long, value_name = "SECS", num_args = 0..=1, default_missing_value = "2")]
        watch: Option<f64>,
    },
    /// Every member's event log merged by time: decisions whose reason
    /// changed, jobs started, finished and failed.
    Events {
        #[command(flatten)]
        target: Target,
        /// Print JSON (an array; one object per line with --follow).
        #[arg(long)]
        json: bool,
        /// Keep printing new events until interrupted.
        #[arg(short, long)]
        follow: bool,
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
        /// Show the copy's progress until the member streams again.
        #[arg(long)]
        wait: bool,
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The agent's work is a tick a second plus a few small requests: one
    // thread serves it with no cross-thread wake-ups (the idle CPU and the
    // memory of worker threads were most of its footprint). The router
    // splices bytes for many clients and gets a worker per core.
    let rt = match &cli.command {
        Cmd::Agent { .. } => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build(),
        _ => tokio::runtime::Runtime::new(),
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Cmd::Agent { config } => run::agent(config).await,
            Cmd::Router { config } => run::router(config).await,
            Cmd::List {
                target,
                json,
                verbose,
                gs_om,
                watch,
            } => ctl::show::list(target, json, verbose, gs_om, watch).await,
            Cmd::History { target, json } => ctl::show::history(target, json).await,
            Cmd::Events {
                target,
                json,
                follow,
            } => ctl::show::events(target, json, follow).await,
            Cmd::Reinit {
                target,
                member,
                force,
                wait,
            } => ctl::ops::reinit(target, member, force, wait).await,
            Cmd::Switchover {
                target,
                leader,
                candidate,
                scheduled_at,
                cancel,
                force,
            } => ctl::ops::switchover(target, leader, candidate, scheduled_at, cancel, force).await,
            Cmd::Failover {
                target,
                candidate,
                force,
            } => ctl::ops::failover(target, candidate, force).await,
            Cmd::Pause { target } => ctl::config::set(target, vec!["pause=true".into()]).await,
            Cmd::Resume { target } => ctl::config::set(target, vec!["pause=null".into()]).await,
            Cmd::Restart { target, member } => ctl::ops::restart(target, member).await,
            Cmd::Reload { target } => ctl::ops::reload(target).await,
            Cmd::Config { target, action } => match action {
                ConfigCmd::Show => ctl::config::show(target).await,
                ConfigCmd::Set { pairs } => ctl::config::set(target, pairs).await,
                ConfigCmd::Edit => ctl::config::edit(target).await,
            },
            Cmd::Demo { args } => ctl::tools::demo(args),
            Cmd::Completions { shell } => {
                ctl::tools::completions(Cli::command(), shell);
                Ok(ExitCode::SUCCESS)
            }
            Cmd::Man { dir } => {
                ctl::tools::man_pages(Cli::command(), dir)?;
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
