//! Soak benchmark (run through `bench/soak`): a 3-node cluster left idle at
//! default settings for a while, normally with the machine kept busy by the
//! script. Counts leader changes (there must be none) and fencing events.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use baton_core::status::ClusterState;
use baton_local::local::{ClusterOptions, LocalCluster};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let secs: u64 = std::env::args()
        .nth(1)
        .map(|s| s.parse())
        .transpose()?
        .unwrap_or(600);
    let baton =
        PathBuf::from(std::env::var("BATON_BIN").context("BATON_BIN must name the baton binary")?);
    let dir = std::env::temp_dir().join(format!("baton-bench-soak-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut c = LocalCluster::create(
        &dir,
        &baton,
        &ClusterOptions {
            scope: "soak".into(),
            ..Default::default()
        },
    )?;
    c.start_all()?;
    let start = Instant::now();
    loop {
        if let Ok(s) = c.status().await {
            if s.state == ClusterState::Normal && s.members.len() == 3 {
                break;
            }
        }
        anyhow::ensure!(
            start.elapsed() < Duration::from_secs(120),
            "cluster not Normal after 120 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let first = c.view().await?.leader_name().map(str::to_string);
    println!("soak: cluster Normal, leader {first:?}; watching for {secs} s");
    let mut leader = first.clone();
    let mut changes = 0;
    let mut not_normal_samples = 0;
    let mut samples = 0;
    let began = Instant::now();
    while began.elapsed() < Duration::from_secs(secs) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let Ok(v) = c.view().await else { continue };
        samples += 1;
        let now = v.leader_name().map(str::to_string);
        if now != leader {
            changes += 1;
            println!(
                "[{:>5.1} s] leader changed: {leader:?} -> {now:?}",
                began.elapsed().as_secs_f64()
            );
            leader = now;
        }
        let s = baton_core::status::ClusterStatus::from_view("soak", &v, 1 << 20);
        if s.state != ClusterState::Normal {
            not_normal_samples += 1;
        }
    }
    let history = c
        .view()
        .await?
        .history
        .map(|h| h.as_array().map(|a| a.len()).unwrap_or(0))
        .unwrap_or(0);
    tokio::task::block_in_place(|| c.shutdown());
    drop(c);
    let _ = std::fs::remove_dir_all(&dir);
    println!(
        "RESULT soak_s={secs} leader_changes={changes} promotions={history} not_normal_samples={not_normal_samples}/{samples}"
    );
    Ok(())
}
