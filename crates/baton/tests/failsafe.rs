//! Failsafe mode on a real 3-node cluster: with etcd frozen (SIGSTOP) and
//! then down (connections refused), the leader keeps acknowledging writes
//! while every member confirms it over REST; with a member down as well it
//! fences itself at its deadline.

mod common;

use std::time::{Duration, Instant};

use baton_core::status::ClusterState;
use baton_local::local::ClusterOptions;
use common::*;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// How long each etcd outage lasts: several leases over (15 s;
/// `BATON_FAILSAFE_OUTAGE_S=40` for the 40 s freeze).
fn outage() -> Duration {
    let secs = std::env::var("BATON_FAILSAFE_OUTAGE_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(15);
    Duration::from_secs(secs)
}

async fn failsafe_cluster(name: &str) -> TestCluster {
    let t = TestCluster::led_by_node1(name, ClusterOptions::default(), &[]).await;
    let (ok, _, err) = ctl(&t, &["config", "set", "failsafe_mode=true"]);
    assert!(ok, "{err}");
    wait_for(
        "the failsafe key listing every member",
        Duration::from_secs(20),
        || async {
            let v = t.c.view().await.map_err(|e| format!("{e:#}"))?;
            match &v.failsafe {
                Some(f) if f.len() == 3 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    t
}

fn etcd_pid(t: &TestCluster) -> Pid {
    Pid::from_raw(t.c.etcd.pid().expect("etcd runs") as i32)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failsafe_leader_keeps_writing_while_etcd_is_frozen_or_down() {
    let mut t = failsafe_cluster("failsafe").await;
    let writer = Writer::start(&t, "w", 50).await;

    // Frozen: every etcd call hangs until it times out.
    let frozen = Instant::now();
    kill(etcd_pid(&t), Signal::SIGSTOP).unwrap();
    tokio::time::sleep(outage()).await;
    kill(etcd_pid(&t), Signal::SIGCONT).unwrap();
    let thawed = Instant::now();
    t.wait_state(ClusterState::Normal, Duration::from_secs(30))
        .await;

    // Down: every etcd call fails at once (connection refused).
    t.c.etcd.stop();
    let down = Instant::now();
    tokio::time::sleep(outage()).await;
    t.c.etcd.start().unwrap();
    let up = Instant::now();
    t.wait_state(ClusterState::Normal, Duration::from_secs(30))
        .await;

    let (log, present) = writer.finish().await;
    let lost = log.lost(&present).len();
    assert_eq!(lost, 0, "acknowledged writes lost");
    for (what, from, to) in [("frozen", frozen, thawed), ("down", down, up)] {
        let during: Vec<Instant> = log
            .acked
            .iter()
            .map(|(_, at)| *at)
            .filter(|at| *at >= from && *at <= to)
            .collect();
        let gap = during
            .windows(2)
            .map(|w| w[1] - w[0])
            .max()
            .unwrap_or(to - from);
        eprintln!(
            "etcd {what} {:.1} s: {} writes acknowledged meanwhile, longest gap {:.3} s",
            (to - from).as_secs_f64(),
            during.len(),
            gap.as_secs_f64()
        );
        assert!(
            during.len() > 100,
            "etcd {what}: only {} writes acknowledged in {:?}",
            during.len(),
            to - from
        );
        // No fencing: the lease deadline (3 s) never passed unconfirmed.
        assert!(
            gap < Duration::from_millis(500),
            "etcd {what}: writes stopped for {gap:?}"
        );
    }
    let v = t.c.view().await.unwrap();
    assert_eq!(v.leader_name(), Some("node1"), "the leader changed");
    assert!(
        baton_core::ha::history_points(&v).is_empty(),
        "a failover happened: {:?}",
        v.history
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failsafe_leader_with_a_member_down_fences_at_its_deadline() {
    let mut t = failsafe_cluster("failsafe_down").await;
    // node3 dies just before etcd freezes: still listed, it cannot confirm.
    kill_node(&mut t, 2);
    kill(etcd_pid(&t), Signal::SIGSTOP).unwrap();
    let frozen = Instant::now();
    wait_for(
        "the leader's postgres fenced",
        Duration::from_secs(15),
        || async {
            match t.sql(0, "SELECT 1").await {
                Ok(_) => Err("node1 still answers".to_string()),
                Err(_) => Ok(()),
            }
        },
    )
    .await;
    eprintln!(
        "fenced {:.1} s after etcd froze",
        frozen.elapsed().as_secs_f64()
    );
    assert!(
        t.agent_log(0).contains("not every member confirmed"),
        "no failsafe refusal logged"
    );
    kill(etcd_pid(&t), Signal::SIGCONT).unwrap();
    t.c.start_agent(2).unwrap();
    t.wait_state(ClusterState::Normal, Duration::from_secs(60))
        .await;
}
