//! Issue 3 acceptance: automatic failover, fencing, crash restart, rejoin
//! with pg_rewind and the rebuild fallback, on real 3-node clusters.

mod common;

use std::time::{Duration, Instant};

use baton_core::status::ClusterState;
use baton_local::local::ClusterOptions;
use baton_local::workload;
use common::*;
use nix::sys::signal::{kill, Signal};
use tokio_util::sync::CancellationToken;

fn moved_aside_dirs(t: &TestCluster, i: usize) -> Vec<String> {
    let data = &t.c.nodes[i].data_dir;
    let prefix = format!("{}.baton-old-", data.file_name().unwrap().to_string_lossy());
    std::fs::read_dir(data.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_killed_standby_promotes_and_old_leader_rejoins_by_rewind() {
    let mut t = TestCluster::led_by_node1("failover", ClusterOptions::default(), &[]).await;
    let writer = Writer::start(&t, "w", 20).await;
    let cfg = writer.cfg.clone();

    let killed_at = Instant::now();
    kill_node(&mut t, 0);
    let new_leader = wait_new_leader(&t, "node1", Duration::from_secs(30)).await;
    let other = if new_leader == "node2" {
        "node3"
    } else {
        "node2"
    };
    wait_streaming_on_leader_timeline(&t, other, Duration::from_secs(30)).await;

    // Writes through the multi-host DSN succeed again.
    let acked_before = wait_for(
        "writes acknowledged after the failover",
        Duration::from_secs(20),
        || async {
            let w = workload::present_ids(&cfg, "w").await?;
            if w.len() > 20 {
                Ok(w.len())
            } else {
                Err(format!("{} rows", w.len()))
            }
        },
    )
    .await;
    let (log, _) = writer.finish().await;
    assert!(
        log.acked.iter().any(|(_, at)| *at > killed_at),
        "no write acknowledged after the kill"
    );
    assert!(acked_before > 0);

    // The history records the switch.
    let v = t.c.view().await.unwrap();
    let history = baton_core::ha::history_points(&v);
    assert_eq!(history.len(), 1, "{:?}", v.history);
    assert_eq!(history[0].0, 1);

    // The old leader, restarted, rejoins by pg_rewind (not a rebuild) and
    // streams on the new timeline.
    t.c.start_agent(0).unwrap();
    let tl = wait_streaming_on_leader_timeline(&t, "node1", Duration::from_secs(60)).await;
    assert_eq!(tl, 2);
    assert!(
        moved_aside_dirs(&t, 0).is_empty(),
        "node1 was rebuilt, not rewound"
    );
    t.wait_state(ClusterState::Normal, Duration::from_secs(30))
        .await;
    let rows = t.sql(0, "SELECT count(*) FROM w").await.unwrap();
    assert!(rows[0].get::<_, i64>(0) > 0);

    // `baton events` tells the story, member by member, in order.
    let (ok, out, err) = ctl(&t, &["events", "--json"]);
    assert!(ok, "{err}");
    let events: Vec<baton_core::event::Event> = serde_json::from_str(&out).unwrap();
    let of = |m: &str| -> Vec<(String, String)> {
        events
            .iter()
            .filter(|e| e.member == m)
            .map(|e| (e.kind.clone(), e.code.clone()))
            .collect()
    };
    let in_order = |m: &str, want: &[(&str, &str)]| {
        let got = of(m);
        let mut rest = got.iter();
        for w in want {
            assert!(
                rest.any(|(k, c)| (k.as_str(), c.as_str()) == *w),
                "{m}: {w:?} missing or out of order in {got:?}"
            );
        }
    };
    in_order(
        &new_leader,
        &[
            ("decision", "promoting"),
            ("job_started", "promote"),
            ("job_finished", "promote"),
            ("decision", "leader"),
        ],
    );
    // node1's agent was restarted: its log starts there.
    in_order(
        "node1",
        &[
            ("job_started", "rewind"),
            ("job_finished", "rewind"),
            ("decision", "streaming"),
        ],
    );
    let other_codes: Vec<String> = of(other)
        .into_iter()
        .filter(|(k, _)| k == "decision")
        .map(|(_, c)| c)
        .collect();
    let first = other_codes.iter().position(|c| c == "streaming");
    let gap = first.and_then(|f| other_codes[f..].iter().position(|c| c != "streaming"));
    assert!(
        first.zip(gap).is_some_and(|(f, g)| other_codes[f + g..].contains(&"streaming".to_string())),
        "{other}: streaming, then something else when the leader died, then streaming again: {other_codes:?}"
    );
    assert!(
        events.windows(2).all(|w| w[0].at <= w[1].at),
        "merged by time"
    );
    // Its agent and postgres gone, its host up: the others saw both of its
    // ports refuse and removed its key at once, not a lease later.
    assert!(
        events
            .iter()
            .any(|e| e.member != "node1" && e.code == "leader_processes_gone"),
        "no member took the process-death fast path: {:?}",
        events
            .iter()
            .filter(|e| e.kind == "decision")
            .map(|e| (&e.member, &e.code))
            .collect::<Vec<_>>()
    );
}

/// A frozen leader (agent and postgres SIGSTOPped: the host, or its disk,
/// stalls) still has its listening sockets: connections to it time out,
/// they are not refused. The process-death fast path must not take it for
/// dead; its key goes when its lease runs out, and not before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_leader_is_not_taken_for_dead_before_its_lease_runs_out() {
    let t = TestCluster::led_by_node1("frozen", ClusterOptions::default(), &[]).await;
    let agent = Stopped::stop(t.c.nodes[0].agent_pid().unwrap());
    let postgres = Stopped::stop(t.c.nodes[0].postmaster_pid().unwrap() as u32);
    let leader = wait_new_leader(&t, "node1", Duration::from_secs(60)).await;
    for i in [1, 2] {
        let v = http_json(&t.c.nodes[i].api_url("/events")).await.unwrap();
        let events: Vec<baton_core::event::Event> =
            serde_json::from_value(v["events"].clone()).unwrap();
        assert!(
            !events.iter().any(|e| e.code == "leader_processes_gone"),
            "node{} took a frozen leader for dead: {events:#?}",
            i + 1
        );
    }
    // Thawed, the old leader is fenced (its lease is gone) and follows.
    drop(postgres);
    drop(agent);
    wait_streaming_on_leader_timeline(&t, "node1", Duration::from_secs(60)).await;
    assert_eq!(
        t.c.view().await.unwrap().leader_name(),
        Some(leader.as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn standby_with_more_wal_wins() {
    let mut t = TestCluster::led_by_node1("morewal", ClusterOptions::default(), &[]).await;
    // node3 stops receiving WAL while node2 gets more.
    let receiver = make_lag(
        &t,
        2,
        "CREATE TABLE more AS SELECT generate_series(1, 1000) AS x",
        0,
    )
    .await;
    wait_for("node2 ahead of node3", Duration::from_secs(15), || async {
        let v = t.c.view().await.map_err(|e| format!("{e:#}"))?;
        let pos = |n: &str| v.members.get(n).and_then(|m| m.xlog_location).unwrap_or(0);
        if pos("node2") > pos("node3") {
            Ok(())
        } else {
            Err(format!("{} vs {}", pos("node2"), pos("node3")))
        }
    })
    .await;
    kill_node(&mut t, 0);
    let leader = wait_new_leader(&t, "node1", Duration::from_secs(30)).await;
    kill(receiver, Signal::SIGCONT).ok();
    assert_eq!(leader, "node2", "the standby with less WAL won");
    wait_streaming_on_leader_timeline(&t, "node3", Duration::from_secs(60)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nofailover_and_lag_limit_keep_everyone_out() {
    let opts = ClusterOptions {
        extra_toml: "maximum_lag_on_failover = 10000\n".into(),
        ..ClusterOptions::default()
    };
    let mut t =
        TestCluster::led_by_node1("noeligible", opts, &[(1, "[tags]\nnofailover = true\n")]).await;
    let receiver = make_lag(
        &t,
        2,
        "CREATE TABLE big AS SELECT generate_series(1, 20000) AS x",
        10000,
    )
    .await;
    kill_node(&mut t, 0);
    let r = wait_for(
        "both standbys explaining why they stay out",
        Duration::from_secs(30),
        || async {
            let r = reasons(&t).await;
            let n2 = r.get("node2").cloned().unwrap_or_default().0;
            let n3 = r.get("node3").cloned().unwrap_or_default().0;
            if n2 == "tagged_nofailover" && n3 == "lag_exceeds_limit" {
                Ok(r)
            } else {
                Err(format!("{r:?}"))
            }
        },
    )
    .await;
    // Several ticks later still nobody has promoted.
    let start = Instant::now();
    wait_for(
        "three more ticks with no leader",
        Duration::from_secs(20),
        || async {
            let v = t.c.view().await.map_err(|e| format!("{e:#}"))?;
            assert!(
                v.leader.is_none(),
                "someone took the key: {:?} ({r:?})",
                v.leader
            );
            assert!(
                !v.members.values().any(|m| m.role == "primary"),
                "{:?}",
                v.members
            );
            if start.elapsed() > Duration::from_secs(3) {
                Ok(())
            } else {
                Err("waiting".into())
            }
        },
    )
    .await;
    let s = t.c.status().await.unwrap();
    assert_eq!(s.state, ClusterState::Unavailable);
    kill(receiver, Signal::SIGCONT).ok();

    // The operator accepts the lag: manual failover to node3.
    let ep = t.c.etcd.endpoint.clone();
    let out = run_baton(&[
        "failover",
        "--etcd",
        &ep,
        "--scope",
        "demo",
        "--candidate",
        "node3",
        "--force",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("Successfully failed over to node3"));
    wait_streaming_on_leader_timeline(&t, "node2", Duration::from_secs(30)).await;
    assert!(
        t.c.view().await.unwrap().failover.is_none(),
        "failover request left behind"
    );
}

/// A cluster led by node1 whose agents reach etcd each through a relay the
/// test can cut (connections refused), and the relays.
async fn led_by_node1_through_relays(name: &str) -> (TestCluster, Vec<Relay>) {
    let mut t = TestCluster::new(name, ClusterOptions::default());
    let etcd_port = t.c.etcd.port();
    let mut relays = vec![];
    for i in 0..3 {
        let r = Relay::start(etcd_port).await;
        t.c.set_etcd_endpoint(i, &r.endpoint).unwrap();
        relays.push(r);
    }
    t.start_led_by_node1().await;
    (t, relays)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_cut_off_from_etcd_stops_writes_before_anyone_promotes() {
    let (t, relays) = led_by_node1_through_relays("fence").await;
    workload::create_table(
        &workload::read_write_config(&t.c.pg_hosts(), "postgres"),
        "f",
    )
    .await
    .unwrap();

    // One writer per member, straight at it: who accepts writes, and when.
    let stop = CancellationToken::new();
    let writers: Vec<_> =
        t.c.pg_hosts()
            .into_iter()
            .map(|h| {
                let mut cfg = workload::read_write_config(&[h], "postgres");
                cfg.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::Any);
                tokio::spawn(workload::run_writes(
                    cfg,
                    "f".into(),
                    Duration::from_millis(20),
                    stop.clone(),
                ))
            })
            .collect();
    wait_for("writes on node1", Duration::from_secs(10), || async {
        let n = t.sql(0, "SELECT count(*) FROM f").await?[0].get::<_, i64>(0);
        if n > 10 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    })
    .await;

    relays[0].cut();
    let new_leader = wait_new_leader(&t, "node1", Duration::from_secs(30)).await;
    let other = if new_leader == "node2" {
        "node3"
    } else {
        "node2"
    };
    wait_streaming_on_leader_timeline(&t, other, Duration::from_secs(30)).await;
    let new_idx: usize = new_leader
        .trim_start_matches("node")
        .parse::<usize>()
        .unwrap()
        - 1;
    wait_for(
        "writes on the new leader",
        Duration::from_secs(10),
        || async {
            let n = t.sql(new_idx, "SELECT count(*) FROM f").await?[0].get::<_, i64>(0);
            if n > 0 {
                Ok(())
            } else {
                Err("none yet".into())
            }
        },
    )
    .await;
    stop.cancel();
    let logs: Vec<workload::WriteLog> = futures_all(writers).await;
    assert_one_writer_at_a_time(&logs, 0, new_idx);
    // The fenced node reports why it stopped, and its postgres is down.
    assert!(
        t.c.nodes[0].postmaster_pid().is_none(),
        "fenced leader still runs postgres"
    );
    let j = http_json(&t.c.nodes[0].api_url("/patroni")).await.unwrap();
    assert!(
        matches!(
            j["baton"]["reason_code"].as_str(),
            Some("etcd_unreachable" | "etcd_unreachable_fencing")
        ),
        "{j}"
    );
}

/// A leader whose postgres hangs (SIGSTOP on its whole process group) and
/// that is cut from etcd: the agent cannot ask it anything, yet must fence
/// it before the lease expires, since it accepts writes the moment it
/// resumes. SIGQUIT cannot act on a stopped process; the fence's SIGKILL
/// does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_leader_cut_off_from_etcd_is_killed_before_anyone_promotes() {
    let (t, relays) = led_by_node1_through_relays("hungfence").await;
    let pid = t.c.nodes[0].postmaster_pid().expect("node1 runs postgres");
    let group = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::killpg(group, Signal::SIGSTOP).unwrap();
    relays[0].cut();
    let new_leader = wait_new_leader(&t, "node1", Duration::from_secs(30)).await;
    let gone = t.c.nodes[0].postmaster_pid().is_none();
    if !gone {
        // Leave nothing stopped behind for the harness's clean-up.
        let _ = nix::sys::signal::killpg(group, Signal::SIGCONT);
    }
    assert!(
        gone,
        "{new_leader} holds the leader key while node1's hung postmaster {pid} still exists"
    );
    let j = http_json(&t.c.nodes[0].api_url("/patroni")).await.unwrap();
    assert!(
        matches!(
            j["baton"]["reason_code"].as_str(),
            Some("etcd_unreachable" | "etcd_unreachable_fencing")
        ),
        "{j}"
    );
}

async fn futures_all<T>(handles: Vec<tokio::task::JoinHandle<T>>) -> Vec<T> {
    let mut out = vec![];
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_to_leader_hands_over_without_waiting_for_the_lease() {
    let mut t = TestCluster::led_by_node1("sigterm", ClusterOptions::default(), &[]).await;
    t.c.stop_agent(0, Duration::from_secs(30)).unwrap();
    // The agent stopped postgres and deleted its leader key before exiting.
    assert!(t.c.nodes[0].postmaster_pid().is_none());
    let v = t.c.view().await.unwrap();
    assert_ne!(v.leader_name(), Some("node1"), "leader key left behind");
    wait_new_leader(&t, "node1", Duration::from_secs(15)).await;
}

/// A replica that streamed the new leader's timeline after a switchover
/// still reports that timeline once the leader dies and its WAL receiver is
/// gone (the last restartpoint, all SQL shows then, is on the old one), so
/// nobody is stopped as "diverged" on the way to the next failover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_keeps_its_timeline_when_the_leader_dies() {
    let t = TestCluster::led_by_node1("replaytl", ClusterOptions::default(), &[]).await;
    replica_keeps_its_timeline(t).await;
}

/// The same with an operator's pg_hba.conf that has no `local replication`
/// line (the chaos test's): the replay timeline then comes over TCP as the
/// replication user, whom every member must admit anyway. Without it the
/// last restartpoint's timeline stood: a replica two timelines behind its
/// own WAL was elected and promoted "from" that old timeline, and a member
/// rewound against it was left needing WAL nobody had kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_keeps_its_timeline_without_local_replication_in_pg_hba() {
    let mut t = TestCluster::new("replaytlhba", ClusterOptions::default());
    for n in &t.c.nodes {
        let text = std::fs::read_to_string(&n.config_path).unwrap();
        let hba = "pg_hba = [\"local all all trust\", \"host all all 127.0.0.1/32 trust\", \
                   \"host replication all 127.0.0.1/32 trust\"]";
        let text = text.replacen("[postgresql]\n", &format!("[postgresql]\n{hba}\n"), 1);
        std::fs::write(&n.config_path, text).unwrap();
    }
    t.start_led_by_node1().await;
    replica_keeps_its_timeline(t).await;
}

async fn replica_keeps_its_timeline(mut t: TestCluster) {
    let (ok, out, err) = ctl(&t, &["switchover", "--candidate", "node2", "--force"]);
    assert!(ok, "switchover failed: {out} {err}");
    let tl = wait_streaming_on_leader_timeline(&t, "node3", Duration::from_secs(30)).await;
    wait_streaming_on_leader_timeline(&t, "node1", Duration::from_secs(30)).await;
    // WAL on the new timeline past the fork, replayed by both replicas.
    t.sql(1, "CREATE TABLE past_fork AS SELECT 1 AS x")
        .await
        .unwrap();
    let lsn: String = t.sql(1, "SELECT pg_current_wal_lsn()::text").await.unwrap()[0].get(0);
    for i in [0, 2] {
        wait_for(
            "replicas replayed past the fork",
            Duration::from_secs(10),
            || async {
                let q = format!("SELECT pg_last_wal_replay_lsn() >= '{lsn}'::pg_lsn");
                if t.sql(i, &q).await?[0].get::<_, bool>(0) {
                    Ok(())
                } else {
                    Err(format!("node{} behind {lsn}", i + 1))
                }
            },
        )
        .await;
    }
    // node2 dies: its agent stalls (its lease runs out) and postgres is gone.
    let stalled = Stopped::stop(t.c.nodes[1].agent_pid().unwrap());
    t.c.kill_postgres(1);
    let m = wait_for(
        "node3 no longer streaming",
        Duration::from_secs(10),
        || async {
            let v = t.c.view().await.map_err(|e| format!("{e:#}"))?;
            match v.members.get("node3") {
                Some(m) if m.replication_state.as_deref() != Some("streaming") => Ok(m.clone()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(m.timeline, Some(tl), "node3 reports {m:?}");
    drop(stalled);
    kill_node(&mut t, 1);
    let leader = wait_new_leader(&t, "node2", Duration::from_secs(30)).await;
    let other = if leader == "node1" { 2 } else { 0 };
    wait_streaming_on_leader_timeline(&t, &format!("node{}", other + 1), Duration::from_secs(30))
        .await;
    for i in [0, 2] {
        let v = http_json(&t.c.nodes[i].api_url("/events")).await.unwrap();
        let events: Vec<baton_core::event::Event> =
            serde_json::from_value(v["events"].clone()).unwrap();
        assert!(
            !events
                .iter()
                .any(|e| e.code == "diverged" || e.code == "rewind"),
            "node{} was taken for diverged: {events:#?}",
            i + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_postgres_crash_is_restarted_in_place() {
    let t = TestCluster::led_by_node1("pgcrash", ClusterOptions::default(), &[]).await;
    let old = t.c.kill_postgres(0).unwrap();
    wait_for(
        "node1 postgres restarted",
        Duration::from_secs(30),
        || async {
            match t.c.nodes[0].postmaster_pid() {
                Some(p) if p != old => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let s = t
        .wait_state(ClusterState::Normal, Duration::from_secs(30))
        .await;
    assert_eq!(
        s.leader.as_deref(),
        Some("node1"),
        "failed over instead of restarting in place"
    );
    assert!(
        s.members.iter().all(|m| m.timeline == Some(1)),
        "{}",
        s.render()
    );
    assert!(t.c.view().await.unwrap().history.is_none());
    // node1 bootstrapped, so its only start job is the one after the
    // crash. The first start after the crash worked: the dead postmaster's lock
    // files (its PID may linger as a zombie until init reaps it) were
    // cleared, and no start failed and waited for a retry.
    let v = http_json(&t.c.nodes[0].api_url("/events")).await.unwrap();
    let events: Vec<baton_core::event::Event> =
        serde_json::from_value(v["events"].clone()).unwrap();
    let starts: Vec<(&str, &str)> = events
        .iter()
        .filter(|e| e.code == "start")
        .map(|e| (e.kind.as_str(), e.code.as_str()))
        .collect();
    assert!(
        !starts.iter().any(|(k, _)| *k == "job_failed"),
        "a start failed after the crash: {events:#?}"
    );
    assert!(
        starts.iter().any(|(k, _)| *k == "job_finished"),
        "the restart in place after the crash: {starts:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rewind_impossible_rebuilds_with_old_data_moved_aside() {
    let mut t = TestCluster::led_by_node1("rebuild", ClusterOptions::default(), &[]).await;
    t.sql(0, "CREATE TABLE r AS SELECT generate_series(1, 1000) AS x")
        .await
        .unwrap();
    kill_node(&mut t, 0);
    wait_new_leader(&t, "node1", Duration::from_secs(30)).await;
    // Remove node1's WAL: pg_rewind (and its crash recovery) cannot work.
    let wal = t.c.nodes[0].data_dir.join("pg_wal");
    let mut removed = 0;
    for e in std::fs::read_dir(&wal).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.len() == 24 && n.chars().all(|c| c.is_ascii_hexdigit()) {
            std::fs::remove_file(e.path()).unwrap();
            removed += 1;
        }
    }
    assert!(removed > 0);
    t.c.start_agent(0).unwrap();
    wait_streaming_on_leader_timeline(&t, "node1", Duration::from_secs(90)).await;
    let aside = moved_aside_dirs(&t, 0);
    assert_eq!(aside.len(), 1, "old data not moved aside: {aside:?}");
    let kept = t.c.nodes[0].data_dir.parent().unwrap().join(&aside[0]);
    assert!(
        kept.join("PG_VERSION").exists(),
        "moved-aside data dir is not intact"
    );
    let rows = t.sql(0, "SELECT count(*) FROM r").await.unwrap();
    assert_eq!(rows[0].get::<_, i64>(0), 1000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reinit_rebuilds_a_replica_and_control_needs_auth() {
    let auth = "[api.authentication]\nusername = \"admin\"\npassword = \"s3cret\"\n";
    let opts = ClusterOptions {
        extra_toml: auth.into(),
        ..ClusterOptions::default()
    };
    let mut t = TestCluster::new("reinit", opts);
    // Rate-limited (postgresql.basebackup_max_rate), so the 300 MB copy
    // below spans several ticks and its progress can be seen rising.
    let path = &t.c.nodes[1].config_path;
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains("[postgresql]\n"), "{text}");
    let text = text.replace(
        "[postgresql]\n",
        "[postgresql]\nbasebackup_max_rate = \"64M\"\n",
    );
    std::fs::write(path, text).unwrap();
    t.start_led_by_node1().await;
    let client = baton::tls::http_client(Duration::from_secs(10), None).unwrap();
    let url = |i: usize| t.c.nodes[i].api_url("/reinitialize");

    let r = client.post(url(1)).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = client
        .post(url(1))
        .basic_auth("admin", Some("wrong"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = client
        .post(url(1))
        .basic_auth("admin", Some("s3cret"))
        .body("{force: yes")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .starts_with("malformed JSON"),
        "{body}"
    );
    let r = client
        .post(url(0))
        .basic_auth("admin", Some("s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        r.status().as_u16(),
        503,
        "the leader must refuse to reinitialize"
    );

    // A few hundred MB, so the copy takes long enough to report progress.
    let cfg = workload::loopback(t.c.nodes[0].pg_port, Duration::from_secs(10));
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await.unwrap();
    tokio::spawn(conn);
    tokio::time::timeout(
        Duration::from_secs(180),
        client.batch_execute(
            "CREATE TABLE big AS SELECT g, repeat(md5(g::text), 32) AS pad \
               FROM generate_series(1, 300000) g",
        ),
    )
    .await
    .expect("loading 300 MB within 3 minutes")
    .unwrap();
    drop(client);

    // `baton reinit --wait` follows the copy (off a terminal: one line per
    // change) until the member streams again.
    let out = ctl_at(
        &t.c.etcd.endpoint,
        &["reinit", "node2", "--force", "--wait"],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let percents: Vec<u32> = text
        .lines()
        .filter_map(|l| l.strip_prefix("node2: rebuild "))
        .filter_map(|l| l.split('%').next()?.parse().ok())
        .collect();
    let mid: std::collections::BTreeSet<u32> = percents
        .iter()
        .copied()
        .filter(|p| (1..100).contains(p))
        .collect();
    assert!(
        mid.len() >= 2 && percents.windows(2).all(|w| w[0] <= w[1]),
        "progress rising through the copy and never going back: {text}"
    );
    assert_eq!(text.lines().last(), Some("node2: streaming"), "{text}");
    eprintln!("reinit progress seen: {percents:?}");
    wait_for(
        "node2 moved aside and rebuilt",
        Duration::from_secs(60),
        || async {
            if moved_aside_dirs(&t, 1).len() == 1 {
                Ok(())
            } else {
                Err("not yet".into())
            }
        },
    )
    .await;
    wait_streaming_on_leader_timeline(&t, "node2", Duration::from_secs(60)).await;
    t.wait_state(ClusterState::Normal, Duration::from_secs(30))
        .await;

    let out = run_baton(&["history", "--etcd", &t.c.etcd.endpoint, "--scope", "demo"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(" TL"));
}

/// A CA and a server certificate for 127.0.0.1, made with the openssl CLI.
fn make_certs(dir: &std::path::Path) -> (String, String, String) {
    let run = |args: &[&str]| openssl(dir, args);
    self_signed(dir, "ca.key", "ca.pem", "/CN=baton test CA");
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=127.0.0.1",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ]);
    let p = |f: &str| dir.join(f).display().to_string();
    (p("ca.pem"), p("server.pem"), p("server.key"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_api_over_tls_for_clients_elections_and_control() {
    let certs = TestDir::new("certs");
    let (ca, cert, key) = make_certs(&certs.path);
    let opts = ClusterOptions {
        api_toml: format!("certfile = \"{cert}\"\nkeyfile = \"{key}\"\ncafile = \"{ca}\"\n"),
        ..ClusterOptions::default()
    };
    let mut t = TestCluster::led_by_node1("tls", opts, &[]).await;
    let url = t.c.nodes[0]
        .api_url("/primary")
        .replace("http://", "https://");
    let client =
        baton::tls::http_client(Duration::from_secs(5), Some(std::path::Path::new(&ca))).unwrap();
    assert_eq!(
        client.get(&url).send().await.unwrap().status().as_u16(),
        200
    );
    // Without the CA the certificate is not trusted; plain HTTP gets no answer.
    let untrusting = baton::tls::http_client(Duration::from_secs(5), None).unwrap();
    assert!(untrusting.get(&url).send().await.is_err());
    assert!(
        http_status(reqwest::Method::GET, &t.c.nodes[0].api_url("/primary"))
            .await
            .is_err()
    );
    assert!(t.c.view().await.unwrap().members["node2"]
        .api_url
        .starts_with("https://"));

    // Control over HTTPS.
    let ep = t.c.etcd.endpoint.clone();
    let out = run_baton(&[
        "switchover",
        "--etcd",
        &ep,
        "--scope",
        "demo",
        "--cafile",
        &ca,
        "--candidate",
        "node2",
        "--force",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An election asks the peers over HTTPS too.
    wait_streaming_on_leader_timeline(&t, "node1", Duration::from_secs(30)).await;
    kill_node(&mut t, 1);
    wait_new_leader(&t, "node2", Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_of_a_member_gone_past_member_slots_ttl_is_dropped() {
    let opts = ClusterOptions {
        extra_toml: "member_slots_ttl = 3\n".into(),
        ..ClusterOptions::default()
    };
    let mut t = TestCluster::led_by_node1("slots", opts, &[]).await;
    // An operator's own slot is never Baton's to drop.
    t.sql(
        0,
        "SELECT pg_create_physical_replication_slot('backup_tool')",
    )
    .await
    .unwrap();
    assert_eq!(
        leader_slots(&t).await.unwrap(),
        ["backup_tool", "node2", "node3"]
    );

    t.c.stop_agent(2, Duration::from_secs(30)).unwrap();
    let s = t
        .wait_state(ClusterState::Degraded, Duration::from_secs(10))
        .await;
    assert!(
        s.problems
            .iter()
            .any(|p| p.contains("slot node3 is missing")),
        "{:?}",
        s.problems
    );
    wait_for("node3's slot dropped", Duration::from_secs(30), || async {
        let s = leader_slots(&t).await?;
        if s == ["backup_tool", "node2"] {
            Ok(())
        } else {
            Err(format!("{s:?}"))
        }
    })
    .await;
    // Once the leader has published that it no longer keeps the slot, the
    // two remaining members are the whole cluster again.
    wait_for(
        "Normal with two members",
        Duration::from_secs(10),
        || async {
            let s = t.c.status().await.map_err(|e| format!("{e:#}"))?;
            if s.state == ClusterState::Normal && s.members.len() == 2 {
                Ok(())
            } else {
                Err(format!("{:?} {:?}", s.state, s.problems))
            }
        },
    )
    .await;

    // node3 comes back: its slot is created again and it streams.
    t.c.start_agent(2).unwrap();
    t.wait_state(ClusterState::Normal, Duration::from_secs(60))
        .await;
    assert_eq!(
        leader_slots(&t).await.unwrap(),
        ["backup_tool", "node2", "node3"]
    );
}

async fn leader_slots(t: &TestCluster) -> Result<Vec<String>, String> {
    let rows = t
        .sql(
            0,
            "SELECT slot_name::text FROM pg_replication_slots ORDER BY 1",
        )
        .await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

/// A lease etcd no longer knows (it expired while the member was cut off,
/// or etcd lost it) is replaced at once: the agent grants a new one,
/// publishes its member key again, and the cluster is whole and Normal.
/// Revoking the lease is exactly what expiry does to the keys on it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_etcd_forgot_is_replaced_and_the_member_returns() {
    let t = TestCluster::led_by_node1("leaselost", ClusterOptions::default(), &[]).await;
    let dcs = t.dcs().await;
    for victim in ["node2", "node1"] {
        let before = t.c.view().await.unwrap();
        let lease = before.member_leases[victim];
        dcs.revoke(lease).await.unwrap();
        let back = wait_for(
            &format!("{victim} back on a new lease"),
            Duration::from_secs(30),
            || async {
                let v = t.c.view().await.map_err(|e| format!("{e:#}"))?;
                match v.member_leases.get(victim) {
                    Some(l) if *l != lease => Ok(*l),
                    other => Err(format!("{victim}: lease {other:?} (revoked {lease:?})")),
                }
            },
        )
        .await;
        assert_ne!(back, lease);
        let s = t
            .wait_state(ClusterState::Normal, Duration::from_secs(60))
            .await;
        assert_eq!(s.members.len(), 3, "{}", s.render());
        // The leader key vanished with node1's lease. Either node1, still a
        // healthy primary, took the free key again on its new lease, or a
        // replica won it and node1 follows: both are safe. What must hold is
        // that the key hangs on its holder's live lease.
        let v = t.c.view().await.unwrap();
        let key = v.leader.expect("a leader");
        assert_eq!(
            Some(&key.lease),
            v.member_leases.get(&key.name),
            "the leader key is not on {}'s own lease",
            key.name
        );
    }
}

/// etcd lost `initialize` under a running cluster: the leader publishes the
/// same system identifier again, and nobody bootstraps a second cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initialize_lost_from_etcd_is_published_again_by_the_leader() {
    let t = TestCluster::led_by_node1("initlost", ClusterOptions::default(), &[]).await;
    let id = t.c.view().await.unwrap().initialize.expect("initialized");
    let mut etcd = etcd_client::Client::connect([t.c.etcd.endpoint.as_str()], None)
        .await
        .unwrap();
    etcd.delete("/service/demo/initialize", None).await.unwrap();
    let back = wait_for(
        "initialize published again",
        Duration::from_secs(15),
        || async {
            let v = t.c.view().await.map_err(|e| format!("{e:#}"))?;
            v.initialize.ok_or_else(|| "still missing".to_string())
        },
    )
    .await;
    assert_eq!(back, id, "a different system identifier was published");
    let s = t
        .wait_state(ClusterState::Normal, Duration::from_secs(30))
        .await;
    assert_eq!(s.leader.as_deref(), Some("node1"), "{}", s.render());
}

/// Asynchronous mode loses what the old primary had not shipped: that
/// amount is measured when the old primary is rewound (its end of WAL less
/// the fork point), recorded in etcd and shown by `baton history`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_a_failover_discarded_is_measured_at_rewind_and_shown() {
    let mut t = TestCluster::led_by_node1("discarded", ClusterOptions::default(), &[]).await;
    // The leader's WAL senders stop (so nothing more leaves it, not even
    // from socket buffers); it writes ~400 kB more.
    let frozen: Vec<nix::unistd::Pid> = t
        .sql(0, "SELECT pid FROM pg_stat_replication")
        .await
        .unwrap()
        .iter()
        .map(|r| nix::unistd::Pid::from_raw(r.get::<_, i32>(0)))
        .collect();
    assert_eq!(frozen.len(), 2, "two WAL senders");
    for pid in &frozen {
        kill(*pid, Signal::SIGSTOP).unwrap();
    }
    t.sql(
        0,
        "CREATE TABLE unshipped AS SELECT repeat('x', 1000) AS pad FROM generate_series(1, 300)",
    )
    .await
    .unwrap();
    let ahead = wait_for(
        "the leader's WAL ahead of both replicas",
        Duration::from_secs(15),
        || async {
            let v = t.c.view().await.map_err(|e| format!("{e:#}"))?;
            let optime = v.status.as_ref().and_then(|s| s.optime).unwrap_or(0);
            let behind = ["node2", "node3"]
                .iter()
                .filter_map(|n| v.members.get(*n)?.xlog_location)
                .max()
                .unwrap_or(0);
            if optime > behind + 300_000 {
                Ok(optime - behind)
            } else {
                Err(format!("leader at {optime}, replicas at {behind}"))
            }
        },
    )
    .await;
    kill_node(&mut t, 0);
    // A stopped process does not notice its postmaster died: end them.
    for pid in frozen {
        let _ = kill(pid, Signal::SIGKILL);
    }
    wait_new_leader(&t, "node1", Duration::from_secs(30)).await;

    // The old primary comes back and is rewound.
    t.c.start_agent(0).unwrap();
    wait_streaming_on_leader_timeline(&t, "node1", Duration::from_secs(60)).await;
    let v = t.c.view().await.unwrap();
    let d = v
        .discarded
        .iter()
        .find(|d| d.member == "node1")
        .unwrap_or_else(|| panic!("no discarded WAL recorded: {:?}", v.discarded));
    assert_eq!(d.timeline, 1);
    assert!(
        d.bytes >= ahead / 2 && d.end > d.diverged,
        "{d:?}: the leader was {ahead} bytes ahead of the replicas"
    );
    let (ok, out, err) = ctl(&t, &["history"]);
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!("{} B by node1", d.bytes)),
        "baton history does not show it:\n{out}"
    );
    eprintln!("{out}");
}

/// A replica that went past the leader's fork and was stopped at once (the
/// HA loop's `Stop` is an immediate one) holds `standby.signal` and an
/// unclean shutdown. pg_rewind recovers such a target in single-user mode
/// first, which refuses standby mode ("standby mode is not supported by
/// single-user servers"): the rewind must not leave the file there, or
/// every diverged replica is rebuilt in full instead of rewound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_standby_is_rewound_not_rebuilt() {
    let _serial = Serial(one_cluster_at_a_time());
    let dir = TestDir::new("rewind-standby");
    let src = baton_local::local::LocalPostgres::start(&dir.path, "src", "")
        .await
        .unwrap();
    sql_port(src.port, "CREATE ROLE replicator WITH REPLICATION LOGIN")
        .await
        .unwrap();
    // The target: a clone of src, promoted on its own (a second history).
    let port = baton_local::local::free_port();
    let toml = dir.path.join("tgt.toml");
    std::fs::write(
        &toml,
        format!(
            "scope = \"standalone\"\nname = \"tgt\"\n[etcd]\nendpoints = [\"http://127.0.0.1:1\"]\n\
             [api]\nlisten = \"127.0.0.1:1\"\n[postgresql]\ndata_dir = \"{}\"\n\
             listen = \"127.0.0.1:{port}\"\n[postgresql.parameters]\nshared_buffers = \"16MB\"\n",
            dir.path.join("tgt").display()
        ),
    )
    .unwrap();
    let cfg = baton::config::NodeConfig::load(&toml).unwrap();
    let tgt = baton::pg::Instance::new(cfg.postgresql, "tgt".into()).unwrap();
    tgt.basebackup_from("127.0.0.1", src.port).await.unwrap();
    let follow_src = baton::pg::RunAs::Replica {
        host: "127.0.0.1".into(),
        port: src.port,
        slot: String::new(),
    };
    tgt.start(&follow_src).await.unwrap();
    tgt.promote().await.unwrap();
    for (p, q) in [
        (
            port,
            "CREATE TABLE forked AS SELECT generate_series(1, 1000) AS i",
        ),
        (
            src.port,
            "CREATE TABLE kept AS SELECT generate_series(1, 1000) AS i",
        ),
        (src.port, "CHECKPOINT"),
    ] {
        wait_for("a write", Duration::from_secs(10), || async {
            sql_port(p, q).await.map(|_| ())
        })
        .await;
    }
    // Stopped as the HA loop stops a diverged replica: immediately, with
    // the standby marker of its last start.
    tgt.stop(baton::pg::StopMode::Immediate).await.unwrap();
    std::fs::write(dir.path.join("tgt/standby.signal"), "").unwrap();
    let meta = std::fs::metadata(dir.path.join("tgt")).unwrap();
    std::os::unix::fs::chown(
        dir.path.join("tgt/standby.signal"),
        Some(std::os::unix::fs::MetadataExt::uid(&meta)),
        None,
    )
    .unwrap();
    tgt.rewind_from("127.0.0.1", src.port)
        .await
        .unwrap_or_else(|e| panic!("pg_rewind of a crashed standby: {e}"));
    // It follows src again, with src's history.
    tgt.start(&follow_src).await.unwrap();
    wait_for(
        "src's table on the rewound target",
        Duration::from_secs(20),
        || async {
            let r = sql_port(port, "SELECT count(*) FROM kept").await?;
            match r[0].get::<_, i64>(0) {
                1000 => Ok(()),
                n => Err(format!("{n} rows")),
            }
        },
    )
    .await;
    tgt.stop(baton::pg::StopMode::Fast).await.unwrap();
}
