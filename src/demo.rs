//! `baton demo`: a throw-away local cluster (etcd + 3 agents) for a first look.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::local::{ClusterOptions, LocalCluster};

pub async fn run(
    duration: Option<Duration>,
    dir: Option<PathBuf>,
    keep: bool,
) -> anyhow::Result<std::process::ExitCode> {
    let dir = dir.unwrap_or_else(|| {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        std::env::temp_dir().join(format!("baton-demo-{}-{stamp}", std::process::id()))
    });
    let baton = std::env::current_exe().context("locating the baton binary")?;
    println!("Starting a local cluster in {}", dir.display());
    let mut cluster = LocalCluster::create(&dir, &baton, &ClusterOptions::default())?;
    cluster.start_all()?;
    println!("etcd endpoint : {}", cluster.etcd.endpoint);
    println!("scope         : {}", cluster.scope);
    println!(
        "read-write DSN: {}",
        cluster.dsn("target_session_attrs=read-write")
    );
    println!(
        "any tool      : baton list --etcd {} --scope {}",
        cluster.etcd.endpoint, cluster.scope
    );
    for n in &cluster.nodes {
        println!(
            "  {}: postgres 127.0.0.1:{}, REST http://127.0.0.1:{}/patroni, log {}",
            n.name,
            n.pg_port,
            n.api_port,
            n.log_path.display()
        );
    }
    println!();

    let started = Instant::now();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        match cluster.status().await {
            Ok(s) => print!(
                "[{:>4.0} s] {}",
                started.elapsed().as_secs_f64(),
                s.render()
            ),
            Err(e) => println!(
                "[{:>4.0} s] cannot read etcd: {e:#}",
                started.elapsed().as_secs_f64()
            ),
        }
        println!();
        if duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
        let wait = Duration::from_secs(3);
        let wait = duration.map_or(wait, |d| wait.min(d.saturating_sub(started.elapsed())));
        tokio::select! {
            _ = &mut ctrl_c => { println!("Ctrl-C: stopping"); break; }
            _ = tokio::time::sleep(wait) => {}
        }
    }
    let final_state = cluster.status().await.ok().map(|s| s.state);
    println!("Stopping the cluster...");
    tokio::task::block_in_place(|| cluster.shutdown());
    drop(cluster);
    if keep {
        println!("Kept {}", dir.display());
    } else {
        std::fs::remove_dir_all(&dir).ok();
    }
    match final_state {
        Some(s) => println!("Final state: {s}"),
        None => println!("Final state: unknown (etcd unreadable)"),
    }
    Ok(std::process::ExitCode::SUCCESS)
}
