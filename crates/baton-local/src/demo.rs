//! `baton demo` (the `baton-demo` binary): a throw-away local cluster
//! (etcd + 3 agents) for a first look, optionally walking through a scenario.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::local::{poll_until, ClusterOptions, LocalCluster};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Scenario {
    /// Kill the leader (agent and postgres), watch a replica take over and
    /// the old leader rejoin by pg_rewind.
    Failover,
    /// A planned switchover under a write workload, with the write pause
    /// and the lost-write count it measured.
    Switchover,
}

/// `baton` is the agent binary the cluster runs.
pub async fn run(
    baton: &std::path::Path,
    duration: Option<Duration>,
    dir: Option<PathBuf>,
    keep: bool,
    scenario: Option<Scenario>,
) -> anyhow::Result<std::process::ExitCode> {
    let dir = dir.unwrap_or_else(|| {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        std::env::temp_dir().join(format!("baton-demo-{}-{stamp}", std::process::id()))
    });
    println!("Starting a local cluster in {}", dir.display());
    let mut cluster = LocalCluster::create(&dir, baton, &ClusterOptions::default())?;
    cluster.start_all()?;
    let router = cluster.start_router("router", "", "")?;
    println!("etcd endpoint : {}", cluster.etcd.endpoint);
    println!("scope         : {}", cluster.scope);
    println!(
        "read-write DSN: postgresql://postgres@127.0.0.1:{}/postgres   (baton router, log {})",
        router.rw_port,
        router.log_path.display()
    );
    println!(
        "read-only DSN : postgresql://postgres@127.0.0.1:{}/postgres   (replicas within 1 MB)",
        router.ro_port
    );
    println!(
        "without router: {}",
        cluster.dsn("target_session_attrs=read-write")
    );
    println!(
        "any tool      : baton list --etcd {} --scope {}",
        cluster.etcd.endpoint, cluster.scope
    );
    println!("dashboard     : {}", cluster.nodes[0].api_url("/ui"));
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

    let outcome = match scenario {
        Some(Scenario::Failover) => failover(&mut cluster).await,
        Some(Scenario::Switchover) => switchover(&cluster, router.rw_port).await,
        None => watch(&cluster, duration).await,
    };
    let final_state = cluster.status().await.ok().map(|s| s.state);
    println!("Stopping the cluster...");
    drop(router);
    tokio::task::block_in_place(|| cluster.shutdown());
    drop(cluster);
    if keep || outcome.is_err() {
        println!("Kept {}", dir.display());
    } else {
        std::fs::remove_dir_all(&dir).ok();
    }
    outcome?;
    match final_state {
        Some(s) => println!("Final state: {s}"),
        None => println!("Final state: unknown (etcd unreadable)"),
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// Prints `baton list` every 3 s until `duration` or Ctrl-C.
async fn watch(cluster: &LocalCluster, duration: Option<Duration>) -> anyhow::Result<()> {
    let started = Instant::now();
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        show(cluster, started).await;
        if duration.is_some_and(|d| started.elapsed() >= d) {
            return Ok(());
        }
        let wait = Duration::from_secs(3);
        let wait = duration.map_or(wait, |d| wait.min(d.saturating_sub(started.elapsed())));
        tokio::select! {
            _ = &mut ctrl_c => { println!("Ctrl-C: stopping"); return Ok(()); }
            _ = tokio::time::sleep(wait) => {}
        }
    }
}

async fn show(cluster: &LocalCluster, started: Instant) {
    match cluster.status().await {
        Ok(s) => print!(
            "[{:>5.1} s] {}",
            started.elapsed().as_secs_f64(),
            s.render()
        ),
        Err(e) => println!(
            "[{:>5.1} s] cannot read etcd: {e:#}",
            started.elapsed().as_secs_f64()
        ),
    }
    println!();
}

async fn failover(c: &mut LocalCluster) -> anyhow::Result<()> {
    let started = Instant::now();
    println!("== 1. Waiting for a Normal cluster");
    c.wait_normal(Duration::from_secs(120)).await?;
    show(c, started).await;

    let leader = c
        .view()
        .await?
        .leader_name()
        .context("no leader")?
        .to_string();
    let li = c
        .nodes
        .iter()
        .position(|n| n.name == leader)
        .context("leader is not ours")?;
    println!("== 2. Killing the leader {leader}: agent and postgres, SIGKILL");
    let killed = Instant::now();
    c.kill_agent(li);
    c.kill_postgres(li);
    let new = c.wait_new_leader(&leader, Duration::from_secs(60)).await?;
    println!(
        "== 3. {new} is the new leader, {:.1} s after the kill (the old lease had to expire)",
        killed.elapsed().as_secs_f64()
    );
    show(c, started).await;

    println!("== 4. Restarting {leader}'s agent: it rewinds and follows {new}");
    let restarted = Instant::now();
    c.start_agent(li)?;
    poll_until(
        "old leader streaming again",
        Duration::from_secs(120),
        || async {
            let v = c.view().await.ok()?;
            let tl = v.leader_member()?.timeline;
            let m = v.members.get(&leader)?;
            (m.replication_state.as_deref() == Some("streaming") && m.timeline == tl).then_some(())
        },
    )
    .await?;
    println!(
        "== 5. {leader} streams from {new} again, {:.1} s after its restart",
        restarted.elapsed().as_secs_f64()
    );
    c.wait_normal(Duration::from_secs(60)).await?;
    show(c, started).await;
    if let Some(h) = c.view().await?.history {
        println!("Timeline history (baton history): {h}");
    }
    Ok(())
}

async fn switchover(c: &LocalCluster, router_port: u16) -> anyhow::Result<()> {
    use crate::workload;
    let started = Instant::now();
    println!("== 1. Waiting for a Normal cluster");
    c.wait_normal(Duration::from_secs(120)).await?;
    show(c, started).await;
    let cfg = workload::read_write_config(&[("127.0.0.1".to_string(), router_port)], "postgres");
    workload::create_table(&cfg, "demo_writes")
        .await
        .map_err(anyhow::Error::msg)?;
    println!("== 2. Writing one row every 10 ms through the router's read-write port");
    let stop = tokio_util::sync::CancellationToken::new();
    let writer = tokio::spawn(workload::run_writes(
        cfg.clone(),
        "demo_writes".into(),
        Duration::from_millis(10),
        stop.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(2)).await;
    println!("== 3. POST /switchover to the leader (baton switchover does the same)");
    let (leader, answer) = c.switchover_via_api().await?;
    println!("   {answer}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let log = writer.await?;
    let present = workload::present_ids(&cfg, "demo_writes")
        .await
        .map_err(anyhow::Error::msg)?;
    let (gap, _) = log.longest_gap();
    println!(
        "== 4. {} writes acknowledged; longest write pause {:.0} ms; acknowledged writes lost: {}",
        log.acked.len(),
        gap.as_secs_f64() * 1000.0,
        log.lost(&present).len()
    );
    c.wait_normal(Duration::from_secs(60)).await?;
    println!("== 5. {leader} follows the new leader, no pg_rewind needed");
    show(c, started).await;
    Ok(())
}
