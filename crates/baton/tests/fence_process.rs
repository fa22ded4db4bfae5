//! DESIGN.md rule 8 on real clusters: the `baton-fence` process stops a
//! leader's postgres when its agent cannot (stalled, killed), the agent
//! restarts a fence that died, and no primary runs without one.

mod common;

use std::time::Duration;

use baton_core::status::ClusterState;
use baton_local::local::ClusterOptions;
use common::*;

/// Waits until node1's postgres is gone and a new leader holds the key,
/// then checks that their write periods do not overlap and that the fence
/// process, not the agent, stopped it.
async fn fenced_by_the_process(t: &TestCluster, writers: MemberWriters, prefix: &str) -> usize {
    let new_leader = wait_new_leader(t, "node1", Duration::from_secs(30)).await;
    let new: usize = new_leader
        .trim_start_matches("node")
        .parse::<usize>()
        .unwrap()
        - 1;
    writers.wait_writes_on(t, prefix, new).await;
    let logs = writers.finish().await;
    assert!(
        t.c.nodes[0].postmaster_pid().is_none(),
        "node1's postgres still runs beside the new leader {new_leader}"
    );
    assert_one_writer_at_a_time(&logs, 0, new);
    let log = fence_log(t, 0);
    assert!(
        log.contains("without a refresh from the agent: postmaster"),
        "the fence process did not say it stopped postgres:\n{log}"
    );
    new
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_leader_agent_is_fenced_by_the_fence_process() {
    let t = TestCluster::led_by_node1("stall", ClusterOptions::default(), &[]).await;
    let writers = MemberWriters::start(&t, "s").await;
    let agent = t.c.nodes[0].agent_pid().expect("node1's agent runs");
    let stalled = Stopped::stop(agent);
    fenced_by_the_process(&t, writers, "s").await;
    // Resumed, the old leader's agent finds its lease gone and rejoins.
    drop(stalled);
    t.wait_state(ClusterState::Normal, Duration::from_secs(60))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_agent_leaves_the_fence_to_stop_postgres() {
    let mut t = TestCluster::led_by_node1("agentkill", ClusterOptions::default(), &[]).await;
    let writers = MemberWriters::start(&t, "k").await;
    t.c.kill_agent(0);
    fenced_by_the_process(&t, writers, "k").await;
    t.c.start_agent(0).unwrap();
    t.wait_state(ClusterState::Normal, Duration::from_secs(60))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_fence_is_restarted_and_the_leader_keeps_its_key() {
    let t = TestCluster::led_by_node1("fencekill", ClusterOptions::default(), &[]).await;
    let first = wait_for("node1's fence armed", Duration::from_secs(10), || async {
        fence_of(&t, 0).and_then(|r| match r.deadline_ms {
            Some(_) => Ok(r),
            None => Err(format!("not armed: {r:?}")),
        })
    })
    .await;
    // Replicas have one too, guarding nothing.
    for i in 1..3 {
        let r = fence_of(&t, i).unwrap();
        assert_eq!(r.deadline_ms, None, "node{}'s fence is armed", i + 1);
    }
    let pid = nix::unistd::Pid::from_raw(first.pid as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
    let second = wait_for("a new fence for node1", Duration::from_secs(10), || async {
        fence_of(&t, 0).and_then(|r| match r.deadline_ms {
            Some(_) if r.pid != first.pid => Ok(r),
            _ => Err(format!("{r:?}")),
        })
    })
    .await;
    assert_ne!(second.pid, first.pid);
    let s = t
        .wait_state(ClusterState::Normal, Duration::from_secs(10))
        .await;
    assert_eq!(s.leader.as_deref(), Some("node1"), "{}", s.render());
    assert!(
        t.agent_log(0).contains("started the fence process"),
        "{}",
        t.agent_log(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_primary_starts_without_a_fence_process() {
    // `false` starts and exits at once: a fence that never answers.
    let opts = ClusterOptions {
        nodes: 1,
        extra_toml: "[fence]\nbinary = \"/bin/false\"\n".into(),
        ..ClusterOptions::default()
    };
    let mut t = TestCluster::new("nofence", opts);
    t.c.start_agent(0).unwrap();
    let reasons = wait_for("the fence refusal", Duration::from_secs(30), || async {
        let r = reasons(&t).await;
        match r.get("node1") {
            Some((code, _)) if code == "fence_unavailable" => Ok(r),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    assert!(
        reasons["node1"].1.contains("baton-fence"),
        "{:?}",
        reasons["node1"]
    );
    assert!(t.c.nodes[0].postmaster_pid().is_none(), "postgres runs");
    let s = t.c.status().await.unwrap();
    assert_eq!(s.leader, None, "{}", s.render());
    let log = t.agent_log(0);
    assert!(
        log.contains("the fence process does not take orders"),
        "{log}"
    );
}
