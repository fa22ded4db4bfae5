//! Issue 2 acceptance: bootstrap, replication, status, self-healing and the
//! REST API, on a real 3-node cluster.

mod common;

use std::time::Duration;

use baton_core::status::ClusterState;
use baton_local::local::ClusterOptions;
use common::*;
use reqwest::Method;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_bootstrap_replicate_report_and_heal() {
    let mut t = TestCluster::started("foundation", ClusterOptions::default());
    let status = t
        .wait_state(ClusterState::Normal, Duration::from_secs(90))
        .await;
    let leader = t.leader_index().await.expect("a leader");
    let leader_name = t.c.nodes[leader].name.clone();
    assert_eq!(status.leader.as_deref(), Some(leader_name.as_str()));
    let replicas: Vec<usize> = (0..3).filter(|i| *i != leader).collect();

    // A row written on the leader is readable on both standbys.
    t.sql(leader, "CREATE TABLE t (id int primary key, v text)")
        .await
        .unwrap();
    t.sql(leader, "INSERT INTO t VALUES (1, 'hello')")
        .await
        .unwrap();
    for &r in &replicas {
        let rows = wait_for("replicated row", Duration::from_secs(15), || async {
            let rows = t.sql(r, "SELECT v FROM t WHERE id = 1").await?;
            if rows.is_empty() {
                Err("row not there yet".into())
            } else {
                Ok(rows)
            }
        })
        .await;
        assert_eq!(rows[0].get::<_, String>(0), "hello");
        let ro = t.sql(r, "INSERT INTO t VALUES (2, 'x')").await.unwrap_err();
        assert!(ro.contains("read-only"), "standby accepted a write: {ro}");
    }

    // Each standby streams through its own physical slot on the leader.
    let slots = t
        .sql(
            leader,
            "SELECT slot_name::text, active FROM pg_replication_slots ORDER BY 1",
        )
        .await
        .unwrap();
    let slots: Vec<(String, bool)> = slots.iter().map(|r| (r.get(0), r.get(1))).collect();
    let want: Vec<(String, bool)> = replicas
        .iter()
        .map(|&r| (t.c.nodes[r].name.clone(), true))
        .collect();
    assert_eq!(slots, want);

    // Member keys carry Patroni's fields, LSNs as integers.
    let view = t.c.view().await.unwrap();
    let lm = &view.members[&leader_name];
    assert_eq!(
        (lm.role.as_str(), lm.state.as_str()),
        ("primary", "running")
    );
    assert!(lm.xlog_location.unwrap() > 0);
    assert_eq!(lm.timeline, Some(1));
    let rm = &view.members[&t.c.nodes[replicas[0]].name];
    assert_eq!(rm.role, "replica");
    assert_eq!(rm.replication_state.as_deref(), Some("streaming"));
    assert!(rm.receive_lsn.is_some() && rm.replay_lsn.is_some());
    assert!(!view.initialize.as_deref().unwrap_or("").is_empty());

    // `baton list` and `--json`. Member keys are published once per tick,
    // so right after a clone's WAL switch a replica can show a segment of
    // lag for up to one tick: poll (bounded) rather than sample once.
    let ep = t.c.etcd.endpoint.clone();
    let text = wait_for(
        "baton list showing Normal",
        Duration::from_secs(10),
        || async {
            let out = run_baton(&["list", "--etcd", &ep, "--scope", "demo"]);
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            if text.contains("state: Normal") {
                Ok(text)
            } else {
                Err(text)
            }
        },
    )
    .await;
    for n in &t.c.nodes {
        assert!(text.contains(&format!("| {} ", n.name)), "{text}");
    }
    let json = wait_for(
        "baton list --json showing Normal",
        Duration::from_secs(10),
        || async {
            let out = run_baton(&["list", "--etcd", &ep, "--scope", "demo", "--json"]);
            let json: serde_json::Value =
                serde_json::from_slice(&out.stdout).expect("list --json is JSON");
            if json["state"] == "Normal" {
                Ok(json)
            } else {
                Err(json.to_string())
            }
        },
    )
    .await;
    assert_eq!(json["members"].as_array().unwrap().len(), 3);
    assert_eq!(json["leader"], leader_name.as_str());

    // `--watch` redraws until stopped; off a terminal each frame gets a
    // time line and no colour codes (nor with NO_COLOR on one).
    let mut watch = std::process::Command::new(baton_bin())
        .args(["list", "--etcd", &ep, "--scope", "demo", "--watch", "0.2"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdout = watch.stdout.take().unwrap();
    let frames = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let (mut all, mut buf) = (String::new(), [0u8; 4096]);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while all.matches("state: Normal").count() < 3 && std::time::Instant::now() < deadline {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => all.push_str(&String::from_utf8_lossy(&buf[..n])),
            }
        }
        all
    });
    let frames = tokio::time::timeout(Duration::from_secs(25), frames).await;
    let _ = watch.kill();
    let _ = watch.wait();
    let frames = frames.expect("list --watch kept printing").unwrap();
    assert!(frames.matches("state: Normal").count() >= 3, "{frames}");
    assert!(
        frames.matches("\n--- ").count() + usize::from(frames.starts_with("--- ")) >= 3,
        "{frames}"
    );
    assert!(
        !frames.contains('\x1b'),
        "no colour off a terminal: {frames:?}"
    );

    rest_status_codes(&t, leader, replicas[0]).await;

    // Kill a standby's postgres: the agent learns of the exit at once and
    // restarts it (too fast for a status poll to be sure of catching
    // Degraded in between; the status mapping has its own tests), and its
    // event log says so: Normal again on a new postmaster.
    let victim = replicas[0];
    let events_url = t.c.nodes[victim].api_url("/events");
    let before = http_json(&events_url).await.unwrap()["events"]
        .as_array()
        .and_then(|a| a.iter().filter_map(|e| e["seq"].as_u64()).max())
        .unwrap_or(0);
    let old_pid = t.c.kill_postgres(victim).expect("standby postmaster pid");
    let new_pid = wait_for("postgres restarted", Duration::from_secs(30), || async {
        match t.c.nodes[victim].postmaster_pid() {
            Some(p) if p != old_pid => Ok(p),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    t.wait_state(ClusterState::Normal, Duration::from_secs(30))
        .await;
    assert_eq!(t.c.nodes[victim].postmaster_pid(), Some(new_pid));
    let v = http_json(&format!("{events_url}?after={before}"))
        .await
        .unwrap();
    let after: Vec<(String, String)> = v["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap_or_default().to_string(),
                e["code"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect();
    assert!(
        after.contains(&("job_finished".into(), "start".into())),
        "no restart in the event log after the kill: {after:?}"
    );

    // Restarting an agent does not restart its healthy postgres, on a
    // replica or on the leader, and the leader keeps the leader key.
    for i in [replicas[1], leader] {
        let pid = t.c.nodes[i].postmaster_pid().unwrap();
        t.c.kill_agent(i);
        t.c.start_agent(i).unwrap();
        wait_for(
            "agent back with a fresh tick",
            Duration::from_secs(20),
            || async {
                let j = http_json(&t.c.nodes[i].api_url("/patroni")).await?;
                if j["state"] == "running" {
                    Ok(())
                } else {
                    Err(format!("{j}"))
                }
            },
        )
        .await;
        t.wait_state(ClusterState::Normal, Duration::from_secs(20))
            .await;
        assert_eq!(
            t.c.nodes[i].postmaster_pid(),
            Some(pid),
            "{} restarted postgres",
            t.c.nodes[i].name
        );
    }
    assert_eq!(
        t.leader_index().await,
        Some(leader),
        "leadership moved on an agent restart"
    );
    let history = t.c.view().await.unwrap();
    assert_eq!(history.members.len(), 3);
}

async fn rest_status_codes(t: &TestCluster, leader: usize, replica: usize) {
    let l = &t.c.nodes[leader];
    let r = &t.c.nodes[replica];
    // (path, leader code, replica code)
    let table = [
        ("/", 200, 503),
        ("/primary", 200, 503),
        ("/read-write", 200, 503),
        ("/leader", 200, 503),
        ("/replica", 503, 200),
        ("/replica?lag=16MB", 503, 200),
        ("/replica?replication_state=streaming", 503, 200),
        ("/replica?tag_zone=nowhere", 503, 503),
        ("/read-only", 200, 200),
        ("/health", 200, 200),
        ("/liveness", 200, 200),
        ("/readiness", 200, 200),
        ("/patroni", 200, 200),
        ("/cluster", 200, 200),
        ("/history", 200, 200),
        ("/config", 200, 200),
        ("/metrics", 200, 200),
    ];
    for (path, want_l, want_r) in table {
        for (node, want) in [(l, want_l), (r, want_r)] {
            for m in [Method::GET, Method::HEAD, Method::OPTIONS] {
                if path == "/metrics" && m != Method::GET {
                    continue;
                }
                let got = http_status(m.clone(), &node.api_url(path)).await.unwrap();
                assert_eq!(got, want, "{m} {path} on {}", node.name);
            }
        }
    }
    let j = http_json(&l.api_url("/patroni")).await.unwrap();
    assert_eq!(j["role"], "primary");
    assert_eq!(j["state"], "running");
    assert_eq!(j["patroni"]["scope"], "demo");
    assert!(j["xlog"]["location"].as_u64().is_some(), "{j}");
    assert_eq!(j["replication"].as_array().map(|a| a.len()), Some(2), "{j}");
    let j = http_json(&r.api_url("/patroni")).await.unwrap();
    assert_eq!(j["role"], "replica");
    assert!(j["xlog"]["replayed_location"].as_u64().is_some(), "{j}");
    let c = http_json(&r.api_url("/cluster")).await.unwrap();
    assert_eq!(c["members"].as_array().unwrap().len(), 3);
    let cfg = http_json(&r.api_url("/config")).await.unwrap();
    assert_eq!(cfg["ttl"], 4);
    let metrics = http_text(&l.api_url("/metrics")).await;
    assert!(
        metrics.contains(&format!(
            "patroni_primary{{scope=\"demo\",name=\"{}\"}} 1",
            l.name
        )),
        "{metrics}"
    );
    assert!(metrics.contains("patroni_postgres_running{"), "{metrics}");
    // A streaming replica decides on the etcd watch's copy of the cluster
    // (`ha::steady`); the leader reads etcd every tick.
    let counter = |text: &str, name: &str| -> Option<f64> {
        text.lines()
            .find(|l| l.starts_with(name))?
            .rsplit(' ')
            .next()?
            .parse()
            .ok()
    };
    wait_for(
        "the replica to decide on the watch's copy",
        Duration::from_secs(20),
        || async {
            let m = http_text(&r.api_url("/metrics")).await;
            match counter(&m, "baton_dcs_watch_views_total") {
                Some(n) if n >= 3.0 => Ok(()),
                other => Err(format!("baton_dcs_watch_views_total = {other:?}")),
            }
        },
    )
    .await;
    let m = http_text(&l.api_url("/metrics")).await;
    assert_eq!(
        counter(&m, "baton_dcs_watch_views_total"),
        Some(0.0),
        "the leader decided on the watch's copy: {m}"
    );
    assert!(
        counter(&m, "baton_dcs_full_reads_total").is_some_and(|n| n > 0.0),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_agents_started_together_make_one_cluster() {
    let opts = ClusterOptions {
        nodes: 2,
        scope: "race".into(),
        ..ClusterOptions::default()
    };
    let t = TestCluster::started("race", opts);
    let s = t
        .wait_state(ClusterState::Normal, Duration::from_secs(90))
        .await;
    assert_eq!(s.members.iter().filter(|m| m.role == "leader").count(), 1);
    // One initdb: both data directories carry the same system identifier,
    // the one stored in `initialize`.
    let view = t.c.view().await.unwrap();
    let init = view.initialize.clone().unwrap();
    for i in 0..2 {
        let rows = t
            .sql(i, "SELECT system_identifier::text FROM pg_control_system()")
            .await
            .unwrap();
        assert_eq!(
            rows[0].get::<_, String>(0),
            init,
            "{} has another system id",
            t.c.nodes[i].name
        );
    }
}
