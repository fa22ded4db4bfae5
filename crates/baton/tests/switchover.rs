//! Issue 4 acceptance: planned switchover with zero loss, refusals,
//! scheduling, abort, pause, config editing, control-endpoint auth.

mod common;

use std::time::Duration;

use baton_core::status::ClusterState;
use baton_local::local::ClusterOptions;
use common::*;
use nix::sys::signal::{kill, Signal};

const AUTH: &str = "[api.authentication]\nusername = \"admin\"\npassword = \"s3cret\"\n";

/// Waits until `member`'s published position is within the lag limit of
/// the leader's real WAL position. A switchover's pre-checks compare the
/// leader's own position with the candidate's member key, a tick old:
/// right after the clones, whose WAL switches move the leader a segment
/// each, the candidate can look 16 or 32 MiB behind for that tick (and
/// the leader's published optime is as old, so comparing with it can look
/// in step when it is not).
async fn wait_published_near_leader(t: &TestCluster, member: &str) {
    wait_for(
        &format!("{member}'s published position near the leader's"),
        Duration::from_secs(10),
        || async {
            let leader: String = t.sql(0, "SELECT pg_current_wal_lsn()::text").await?[0].get(0);
            let leader: baton_core::lsn::Lsn =
                leader.parse().map_err(|e| format!("{leader}: {e:?}"))?;
            let v = t.c.view().await.map_err(|e| format!("{e:#}"))?;
            let published = v
                .members
                .get(member)
                .and_then(|m| m.receive_lsn.max(m.replay_lsn).or(m.xlog_location));
            match published {
                Some(p) if leader.0.saturating_sub(p) <= 1 << 20 => Ok(()),
                other => Err(format!("leader at {leader}, {member} published {other:?}")),
            }
        },
    )
    .await;
}

async fn started(name: &str, per_node: &[(usize, &str)]) -> TestCluster {
    let opts = ClusterOptions {
        extra_toml: AUTH.into(),
        ..ClusterOptions::default()
    };
    TestCluster::led_by_node1(name, opts, per_node).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_under_writes_loses_nothing_and_needs_no_rewind() {
    let t = started("switchover", &[]).await;
    let writer = Writer::start(&t, "s", 50).await;

    let (ok, out, err) = ctl(&t, &["switchover", "--candidate", "node2", "--force"]);
    assert!(ok, "switchover failed: {out} {err}");
    assert!(out.contains("Successfully switched over to node2"), "{out}");
    wait_for("writes on node2", Duration::from_secs(10), || async {
        let n = t.sql(1, "SELECT count(*) FROM s").await?[0].get::<_, i64>(0);
        let before = 50;
        if n > before {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    })
    .await;
    // Let writes run on the new leader, then stop and count.
    let at = t.sql(1, "SELECT count(*) FROM s").await.unwrap()[0].get::<_, i64>(0);
    wait_for("more writes on node2", Duration::from_secs(10), || async {
        let n = t.sql(1, "SELECT count(*) FROM s").await?[0].get::<_, i64>(0);
        if n > at + 20 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    })
    .await;
    let (log, present) = writer.finish().await;
    assert_eq!(
        log.lost(&present),
        Vec::<i64>::new(),
        "acknowledged writes lost"
    );

    // The old leader streams from the new one, and it never ran pg_rewind.
    wait_for(
        "node1 streaming from node2",
        Duration::from_secs(30),
        || async {
            let v = t.c.view().await.map_err(|e| format!("{e:#}"))?;
            let m = v.members.get("node1").ok_or("no node1")?;
            let tl = v.leader_member().and_then(|l| l.timeline);
            if v.leader_name() == Some("node2")
                && m.replication_state.as_deref() == Some("streaming")
                && m.timeline == tl
            {
                Ok(())
            } else {
                Err(format!("{m:?}"))
            }
        },
    )
    .await;
    t.wait_state(ClusterState::Normal, Duration::from_secs(30))
        .await;
    // Neither the old leader nor the third member needed pg_rewind or a
    // rebuild: both were on the new leader's lineage all along.
    for i in [0, 2] {
        assert_eq!(
            metric(&t, i, "baton_rewinds_total").await,
            0.0,
            "node{} rewound",
            i + 1
        );
        assert_eq!(
            metric(&t, i, "baton_rebuilds_total").await,
            0.0,
            "node{} rebuilt",
            i + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn switchover_refusals_say_which_check_failed() {
    let t = started("swrefuse", &[(2, "[tags]\nnofailover = true\n")]).await;
    let (ok, _, err) = ctl(&t, &["switchover", "--candidate", "node3", "--force"]);
    assert!(!ok);
    assert!(
        err.contains("412") && err.contains("[tagged_nofailover]"),
        "{err}"
    );

    // A lagging candidate: freeze node2's WAL receiver and write 2 MB.
    let sql =
        "CREATE TABLE lag AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 20000) g";
    let receiver = make_lag(&t, 1, sql, 1 << 20).await;
    let (ok, _, err) = ctl(&t, &["switchover", "--candidate", "node2", "--force"]);
    kill(receiver, Signal::SIGCONT).unwrap();
    assert!(!ok);
    assert!(
        err.contains("412") && err.contains("[lag_exceeds_limit]"),
        "{err}"
    );
    let (ok, _, err) = ctl(&t, &["switchover", "--leader", "node2", "--force"]);
    assert!(!ok);
    assert!(err.contains("[leader_mismatch]"), "{err}");
    assert_eq!(t.leader_index().await, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_switchover_runs_at_its_time_or_is_cancelled() {
    let t = started("swsched", &[]).await;
    wait_published_near_leader(&t, "node3").await;
    let far = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let (ok, out, err) = ctl(
        &t,
        &[
            "switchover",
            "--candidate",
            "node3",
            "--scheduled-at",
            &far,
            "--force",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("scheduled"), "{out}");
    let list = ctl(&t, &["list"]).1;
    assert!(list.contains("Switchover: to node3 at"), "{list}");
    let (ok, out, err) = ctl(&t, &["switchover", "--cancel"]);
    assert!(ok, "{err}");
    assert!(out.contains("cancelled"), "{out}");
    assert!(t.c.view().await.unwrap().failover.is_none());
    let (ok, _, err) = ctl(&t, &["switchover", "--cancel"]);
    assert!(!ok && err.contains("404"), "{err}");

    let soon = (chrono::Utc::now() + chrono::Duration::seconds(3)).to_rfc3339();
    let (ok, _, err) = ctl(
        &t,
        &[
            "switchover",
            "--candidate",
            "node3",
            "--scheduled-at",
            &soon,
            "--force",
        ],
    );
    assert!(ok, "{err}");
    wait_for(
        "node3 leading after the scheduled time",
        Duration::from_secs(30),
        || async {
            let v = t.c.view().await.map_err(|e| format!("{e:#}"))?;
            let lm = v.leader_member().ok_or("no leader")?;
            if v.leader_name() == Some("node3") && lm.is_running_primary() {
                Ok(())
            } else {
                Err(format!("{:?}", v.leader_name()))
            }
        },
    )
    .await;
    assert!(chrono::Utc::now() >= chrono::DateTime::parse_from_rfc3339(&soon).unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn candidate_killed_mid_switchover_aborts_and_the_old_leader_resumes() {
    let mut t = started("swabort", &[]).await;
    t.sql(0, "CREATE TABLE keep (x int)").await.unwrap();
    t.sql(0, "INSERT INTO keep SELECT generate_series(1, 100)")
        .await
        .unwrap();
    wait_for("node2 has the rows", Duration::from_secs(10), || async {
        let n = t.sql(1, "SELECT count(*) FROM keep").await?[0].get::<_, i64>(0);
        if n == 100 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    })
    .await;
    // The pre-checks read the member keys, which are up to a tick old: wait
    // until node2's published position has caught up too (a base backup of
    // node3 can move the leader a whole WAL segment ahead meanwhile).
    wait_published_near_leader(&t, "node2").await;
    // Pause node2's replay so the handover cannot finish before the kill;
    // it still passes the pre-checks (running, streaming, no lag yet).
    // (SIGSTOP of the startup process could freeze it holding a lock that
    // the agent's status query then waits on.)
    t.sql(1, "SELECT pg_wal_replay_pause()").await.unwrap();
    let ep = t.c.etcd.endpoint.clone();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let cli = std::thread::spawn(move || {
        let out = ctl_at(&ep, &["switchover", "--candidate", "node2", "--force"]);
        let _ = done_tx.send(String::from_utf8_lossy(&out.stderr).into_owned());
        out
    });
    wait_for("node1 switching over", Duration::from_secs(15), || async {
        if let Ok(stderr) = done_rx.try_recv() {
            panic!("the switchover ended before node1 started it: {stderr}");
        }
        let v = t.c.view().await.map_err(|e| format!("{e:#}"))?;
        match v.members.get("node1") {
            Some(m) if m.state == "switching over" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    // Kill the candidate outright: agent and postmaster.
    t.c.kill_agent(1);
    t.c.kill_postgres(1);
    let out = cli.join().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("Switchover failed, node1 resumed as leader"),
        "{err}"
    );
    assert_eq!(t.leader_index().await, Some(0));
    let n = t.sql(0, "SELECT count(*) FROM keep").await.unwrap()[0].get::<_, i64>(0);
    assert_eq!(n, 100, "rows lost");
    t.sql(0, "INSERT INTO keep VALUES (101)").await.unwrap();
    // node2 comes back and the cluster is whole again.
    t.c.start_agent(1).unwrap();
    t.wait_state(ClusterState::Normal, Duration::from_secs(60))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_holds_automatic_actions_and_resume_restores_them() {
    let t = started("pause", &[]).await;
    let (ok, _, err) = ctl(&t, &["pause"]);
    assert!(ok, "{err}");
    let list = ctl(&t, &["list"]).1;
    assert!(list.contains("Maintenance mode: on"), "{list}");
    // What Patroni's tools read (`patronictl pause --wait` polls /cluster).
    wait_pause_reported(&t, true).await;
    t.c.kill_postgres(0).unwrap();
    let r = wait_for(
        "node1 holding back in pause",
        Duration::from_secs(15),
        || async {
            let r = reasons(&t).await;
            let (code, text) = r.get("node1").cloned().unwrap_or_default();
            if code == "paused" {
                Ok(text)
            } else {
                Err(format!("{r:?}"))
            }
        },
    )
    .await;
    assert!(r.contains("starting postgres"), "{r}");
    // Several ticks later: no restart, no failover.
    let t0 = std::time::Instant::now();
    wait_for("ticks in pause", Duration::from_secs(15), || async {
        assert!(
            t.c.nodes[0].postmaster_pid().is_none(),
            "postgres restarted in pause"
        );
        let v = t.c.view().await.map_err(|e| format!("{e:#}"))?;
        assert_eq!(v.leader_name(), Some("node1"), "leadership moved in pause");
        if t0.elapsed() > Duration::from_secs(6) {
            Ok(())
        } else {
            Err("waiting".into())
        }
    })
    .await;
    let (ok, _, err) = ctl(&t, &["resume"]);
    assert!(ok, "{err}");
    wait_for(
        "node1 postgres back after resume",
        Duration::from_secs(30),
        || async {
            t.c.nodes[0]
                .postmaster_pid()
                .map(|_| ())
                .ok_or_else(|| "not yet".to_string())
        },
    )
    .await;
    let s = t
        .wait_state(ClusterState::Normal, Duration::from_secs(30))
        .await;
    assert_eq!(s.leader.as_deref(), Some("node1"));
    wait_pause_reported(&t, false).await;
}

/// Every agent's `/cluster` and `patroni_is_paused` say `paused`.
async fn wait_pause_reported(t: &TestCluster, paused: bool) {
    wait_for(
        &format!("/cluster and /metrics reporting pause={paused}"),
        Duration::from_secs(10),
        || async {
            for i in 0..t.c.nodes.len() {
                let c = http_json(&t.c.nodes[i].api_url("/cluster")).await?;
                let m = metric(t, i, "patroni_is_paused").await;
                if c["pause"] != paused || m != paused as u8 as f64 {
                    return Err(format!(
                        "node{}: /cluster pause {}, patroni_is_paused {m}",
                        i + 1,
                        c["pause"]
                    ));
                }
            }
            Ok(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_edits_are_validated_and_compare_and_set() {
    let t = started("config", &[]).await;
    let (ok, out, err) = ctl(&t, &["config", "set", "maximum_lag_on_failover=2097152"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("\"maximum_lag_on_failover\": 2097152"),
        "{out}"
    );
    let (ok, _, err) = ctl(&t, &["config", "set", "ttl=2"]);
    assert!(!ok);
    assert!(err.contains("two renewal attempts"), "{err}");
    assert_eq!(
        t.c.view().await.unwrap().config.unwrap().ttl,
        4,
        "invalid config stored"
    );

    // `config edit` through $EDITOR: valid edits are stored, invalid ones not.
    let ep = t.c.etcd.endpoint.clone();
    let edit = |name: &str, sed: &str| {
        let script = t.dir.path.join(name);
        std::fs::write(&script, format!("#!/bin/sh\nsed -i '{sed}' \"$1\"\n")).unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        std::process::Command::new(baton_bin())
            .args(["config", "--etcd", &ep, "--scope", "demo", "edit"])
            .env("EDITOR", &script)
            .output()
            .unwrap()
    };
    let out = edit(
        "good.sh",
        r#"s/"maximum_lag_on_failover": 2097152/"maximum_lag_on_failover": 65536/"#,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        t.c.view()
            .await
            .unwrap()
            .config
            .unwrap()
            .maximum_lag_on_failover,
        65536
    );
    let out = edit("bad.sh", r#"s/"ttl": 4/"ttl": 1/"#);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("nothing stored"));
    assert_eq!(t.c.view().await.unwrap().config.unwrap().ttl, 4);

    // REST: PATCH with a stale revision loses; PATCH/PUT validate; 401/400.
    let dcs = t.dcs().await;
    let v = dcs.load().await.unwrap();
    let stale = v.config_revision;
    let mut c1 = v.config.clone().unwrap();
    c1.maximum_lag_on_failover = 3 << 20;
    assert!(
        dcs.cas_config(&c1, stale).await.unwrap(),
        "first editor wins"
    );
    let mut c2 = v.config.clone().unwrap();
    c2.maximum_lag_on_failover = 4 << 20;
    assert!(
        !dcs.cas_config(&c2, stale).await.unwrap(),
        "second editor must lose"
    );
    assert_eq!(
        dcs.load()
            .await
            .unwrap()
            .config
            .unwrap()
            .maximum_lag_on_failover,
        3 << 20
    );

    let client = baton::tls::http_client(Duration::from_secs(10), None).unwrap();
    let url = t.c.nodes[1].api_url("/config");
    let r = client
        .patch(&url)
        .json(&serde_json::json!({"ttl": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = client
        .patch(&url)
        .basic_auth("admin", Some("s3cret"))
        .body("{\"ttl\": ")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = client
        .patch(&url)
        .basic_auth("admin", Some("s3cret"))
        .json(&serde_json::json!({"ttl": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = client
        .patch(&url)
        .basic_auth("admin", Some("s3cret"))
        .json(&serde_json::json!({"ttl": 6, "loop_wait": 2}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let got: serde_json::Value = r.json().await.unwrap();
    assert_eq!(
        (got["ttl"].as_u64(), got["loop_wait"].as_f64()),
        (Some(6), Some(2.0))
    );
    for path in [
        "/switchover",
        "/failover",
        "/restart",
        "/reload",
        "/reinitialize",
    ] {
        let r = client
            .post(t.c.nodes[0].api_url(path))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 401, "{path} without credentials");
    }
    let r = client
        .post(t.c.nodes[0].api_url("/switchover"))
        .basic_auth("admin", Some("s3cret"))
        .body("[1,2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r = client
        .post(t.c.nodes[0].api_url("/switchover"))
        .basic_auth("admin", Some("s3cret"))
        .json(&serde_json::json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_and_reload_through_the_cli() {
    let t = started("restart", &[]).await;
    let old = t.c.nodes[1].postmaster_pid().unwrap();
    let (ok, out, err) = ctl(&t, &["restart", "node2"]);
    assert!(ok, "{out} {err}");
    assert!(out.contains("restarted"), "{out}");
    let new = t.c.nodes[1].postmaster_pid().unwrap();
    assert_ne!(old, new, "postgres was not restarted");
    t.wait_state(ClusterState::Normal, Duration::from_secs(30))
        .await;

    // A parameter added to node1's file takes effect on `baton reload`.
    let path = &t.c.nodes[0].config_path;
    let text = std::fs::read_to_string(path).unwrap();
    std::fs::write(
        path,
        text.replace(
            "max_connections = 40",
            "max_connections = 40\nwork_mem = \"8MB\"",
        ),
    )
    .unwrap();
    let (ok, out, err) = ctl(&t, &["reload"]);
    assert!(ok, "{out} {err}");
    let wm = wait_for("work_mem reloaded", Duration::from_secs(10), || async {
        let v: String = t.sql(0, "SHOW work_mem").await?[0].get(0);
        if v == "8MB" {
            Ok(v)
        } else {
            Err(v)
        }
    })
    .await;
    assert_eq!(wm, "8MB");
    assert!(t.c.nodes[0].postmaster_pid().is_some());

    // A broken file is refused with the config error, and nothing changes.
    std::fs::write(path, "scope = ").unwrap();
    let (ok, _, err) = ctl(&t, &["reload"]);
    assert!(!ok);
    assert!(err.contains("TOML syntax"), "{err}");
    let v: String = t.sql(0, "SHOW work_mem").await.unwrap()[0].get(0);
    assert_eq!(v, "8MB");
}
