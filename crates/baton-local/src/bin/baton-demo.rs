//! `baton-demo` (also run as `baton demo`): a throw-away local cluster of
//! etcd and three agents on free loopback ports, for a first look.
//!
//! It lives outside the product binary so that the harness (cluster set-up,
//! workloads) is never linked into what runs in production.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "baton demo",
    version,
    about = "Run a throw-away local cluster (etcd + 3 agents) and show it"
)]
struct Args {
    /// Stop after this many seconds (default: until Ctrl-C).
    #[arg(long = "for", value_name = "SECONDS")]
    duration: Option<u64>,
    /// Directory for the cluster (default: a new one under /tmp).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Keep the directory afterwards.
    #[arg(long)]
    keep: bool,
    /// Walk through a scenario: `failover` kills the leader and restarts it.
    #[arg(long, value_enum)]
    scenario: Option<baton_local::demo::Scenario>,
    /// The `baton` binary the agents run (default: `baton` beside this one).
    #[arg(long, env = "BATON_BIN")]
    baton: Option<PathBuf>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let baton = match args.baton.map_or_else(beside_me, Ok) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(baton_local::demo::run(
        &baton,
        args.duration.map(Duration::from_secs),
        args.dir,
        args.keep,
        args.scenario,
    ));
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn beside_me() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let baton = me.with_file_name("baton");
    anyhow::ensure!(
        baton.is_file(),
        "no baton binary at {} (build it with `cargo build --bin baton`, or pass --baton)",
        baton.display()
    );
    Ok(baton)
}
