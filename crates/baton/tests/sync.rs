//! Synchronous and quorum replication on real 3-node clusters: the leader
//! keeps the `sync` key and `synchronous_standby_names` in agreement at
//! every observation, replaces a lost synchronous standby, and a failover
//! elects only a member holding every acknowledged commit, so none is lost.

mod common;

use std::time::{Duration, Instant};

use baton_core::cluster::SyncKey;
use baton_core::ha::sync::{overlaps, Electorate, SyncRule};
use baton_core::status::ClusterState;
use baton_local::local::ClusterOptions;
use baton_local::workload;
use common::*;

/// The `sync` key and the leader's `synchronous_standby_names`, read as
/// ssn, key, ssn: the key must agree with the rule in force before or
/// after it was read (the leader may change one between the reads).
async fn sync_state(t: &TestCluster) -> Result<(SyncKey, String), String> {
    let leader = t.leader_index().await.ok_or("no leader")?;
    let ssn = || async {
        let rows = t
            .sql(
                leader,
                "SELECT current_setting('synchronous_standby_names')",
            )
            .await?;
        Ok::<String, String>(rows[0].get(0))
    };
    let before = ssn().await?;
    let view = t.c.view().await.map_err(|e| format!("{e:#}"))?;
    let after = ssn().await?;
    let key = view.sync.clone().ok_or("no sync key")?;
    let e = Electorate::of(&key);
    assert!(
        overlaps(&SyncRule::parse(&before), &e) || overlaps(&SyncRule::parse(&after), &e),
        "the sync key {key:?} promises more than postgres enforces ({before:?}, then {after:?})"
    );
    Ok((key, after))
}

/// Waits until the key lists exactly `n` voters, every one of them named
/// in `synchronous_standby_names`; returns the voters.
async fn wait_voters(t: &TestCluster, n: usize, not: &[&str]) -> (SyncKey, Vec<String>) {
    wait_for(
        &format!("{n} synchronous standbys, none of {not:?}"),
        Duration::from_secs(30),
        || async {
            let (key, ssn) = sync_state(t).await?;
            let voters = key.voters();
            let rule = SyncRule::parse(&ssn);
            let named = voters.iter().all(|v| {
                rule.names
                    .as_ref()
                    .is_some_and(|s| s.contains(&v.to_ascii_lowercase()))
            });
            if voters.len() == n && named && !voters.iter().any(|v| not.contains(&v.as_str())) {
                Ok((key, voters))
            } else {
                Err(format!("key {key:?}, synchronous_standby_names {ssn:?}"))
            }
        },
    )
    .await
}

/// The member's health endpoints answer as listed (checked until they do:
/// the snapshot behind them is a tick old).
async fn assert_checks(t: &TestCluster, i: usize, want: &[(&str, u16)]) {
    for (path, code) in want {
        let url = t.c.nodes[i].api_url(path);
        wait_for(
            &format!("{url} answering {code}"),
            Duration::from_secs(10),
            || async {
                let got = http_status(reqwest::Method::OPTIONS, &url).await?;
                if got == *code {
                    Ok(())
                } else {
                    Err(format!("{got}"))
                }
            },
        )
        .await;
    }
}

fn index_of(t: &TestCluster, name: &str) -> usize {
    t.c.nodes.iter().position(|n| n.name == name).unwrap()
}

/// Writes flow, the leader host is killed, a member that the key listed
/// takes over; every acknowledged write is on it.
async fn failover_loses_nothing(t: &mut TestCluster, voters: &[String], table: &str) {
    let writer = Writer::start(t, table, 50).await;
    let cfg = writer.cfg.clone();
    let old = t.leader_index().await.expect("a leader");
    let old_name = t.c.nodes[old].name.clone();
    let killed_at = Instant::now();
    kill_node(t, old);
    let new_leader = wait_new_leader(t, &old_name, Duration::from_secs(30)).await;
    assert!(
        voters.contains(&new_leader),
        "{new_leader} took over, but the sync key listed only {voters:?}"
    );
    let before = workload::present_ids(&cfg, table)
        .await
        .unwrap_or_default()
        .len();
    wait_for(
        "writes acknowledged after the failover",
        Duration::from_secs(30),
        || async {
            let n = workload::present_ids(&cfg, table).await?.len();
            if n > before + 20 {
                Ok(())
            } else {
                Err(format!("{n} rows"))
            }
        },
    )
    .await;
    let (log, present) = writer.finish().await;
    assert!(log.acked.iter().any(|(_, at)| *at > killed_at));
    let lost: Vec<i64> = log
        .acked
        .iter()
        .map(|(id, _)| *id)
        .filter(|id| !present.contains(id))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost in synchronous mode: {:?}",
        lost.len(),
        &lost[..lost.len().min(10)]
    );
    eprintln!(
        "failover to {new_leader}: {} writes acknowledged, none lost, longest gap {:?}",
        log.acked.len(),
        log.longest_gap().0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn synchronous_mode_on_replaces_a_lost_standby_and_fails_over_without_loss() {
    let mut t = TestCluster::led_by_node1("sync_on", ClusterOptions::default(), &[]).await;
    // Switched on in a live cluster, no restart.
    let (ok, _, err) = ctl(&t, &["config", "set", "synchronous_mode=on"]);
    assert!(ok, "{err}");
    let (_, first) = wait_voters(&t, 1, &[]).await;
    let sync_state_of = |rows: Vec<tokio_postgres::Row>| -> Vec<(String, String)> {
        rows.iter().map(|r| (r.get(0), r.get(1))).collect()
    };
    let rows = t
        .sql(
            0,
            "SELECT application_name, sync_state FROM pg_stat_replication ORDER BY 1",
        )
        .await
        .unwrap();
    let states = sync_state_of(rows);
    assert!(
        states.contains(&(first[0].clone(), "sync".to_string())),
        "{states:?}"
    );

    // Patroni's endpoints and metric say who is synchronous.
    let i = index_of(&t, &first[0]);
    let other = 3 - i; // node1 (0) leads; the replicas are 1 and 2
    assert_checks(&t, i, &[("/sync", 200), ("/async", 503), ("/quorum", 503)]).await;
    assert_checks(&t, other, &[("/sync", 503), ("/async", 200)]).await;
    assert_eq!(metric(&t, i, "patroni_sync_standby").await, 1.0);
    assert_eq!(metric(&t, other, "patroni_sync_standby").await, 0.0);

    // The synchronous standby dies: the other replica takes its place.
    let killed = Instant::now();
    kill_node(&mut t, i);
    let (_, second) = wait_voters(&t, 1, &[first[0].as_str()]).await;
    eprintln!(
        "synchronous standby {} replaced by {} in {:?}",
        first[0],
        second[0],
        killed.elapsed()
    );

    // It comes back as an asynchronous replica; the leader's death then
    // promotes the synchronous one, and nothing acknowledged is lost.
    t.c.start_agent(i).unwrap();
    t.wait_state(ClusterState::Normal, Duration::from_secs(60))
        .await;
    let (_, voters) = wait_voters(&t, 1, &[]).await;
    failover_loses_nothing(&mut t, &voters, "w").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quorum_mode_elects_from_enough_voters_and_loses_nothing() {
    let mut t = TestCluster::led_by_node1("sync_quorum", ClusterOptions::default(), &[]).await;
    let (ok, _, err) = ctl(&t, &["config", "set", "synchronous_mode=quorum"]);
    assert!(ok, "{err}");
    let (key, voters) = wait_voters(&t, 2, &[]).await;
    assert_eq!(key.quorum, Some(1), "ANY 1 of 2 voters: hear 1 other");
    for i in [1, 2] {
        assert_checks(&t, i, &[("/quorum", 200), ("/sync", 503), ("/async", 503)]).await;
    }
    let (ok, out, _) = ctl(&t, &["list"]);
    assert!(ok && out.matches("Quorum Standby").count() == 2, "{out}");
    failover_loses_nothing(&mut t, &voters, "wq").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strict_mode_waits_for_a_standby_instead_of_going_asynchronous() {
    let mut t = TestCluster::led_by_node1("sync_strict", ClusterOptions::default(), &[]).await;
    let (ok, _, err) = ctl(
        &t,
        &[
            "config",
            "set",
            "synchronous_mode=on",
            "synchronous_mode_strict=true",
        ],
    );
    assert!(ok, "{err}");
    wait_voters(&t, 1, &[]).await;
    t.sql(0, "CREATE TABLE s (id int)").await.unwrap();

    // Both replicas die: the primary must not acknowledge a commit alone.
    kill_node(&mut t, 1);
    kill_node(&mut t, 2);
    // A killed postmaster's WAL receiver can still flush (and confirm) a
    // moment longer: commit only once no standby is connected at all.
    wait_for("no standby connected", Duration::from_secs(20), || async {
        let rows = t.sql(0, "SELECT count(*) FROM pg_stat_replication").await?;
        match rows[0].get::<_, i64>(0) {
            0 => Ok(()),
            n => Err(format!("{n} walsenders")),
        }
    })
    .await;
    let port = t.c.nodes[0].pg_port;
    // Its own client, with no timeout of its own: the commit may wait long.
    let (client, conn) = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={port} user=postgres dbname=postgres"),
        tokio_postgres::NoTls,
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let commit = tokio::spawn(async move {
        client
            .batch_execute("INSERT INTO s VALUES (1)")
            .await
            .map_err(|e| pg_error(&e))
    });
    wait_for(
        "the commit waiting for a synchronous standby",
        Duration::from_secs(20),
        || async {
            let rows = t
                .sql(
                    0,
                    "SELECT count(*) FROM pg_stat_activity
                      WHERE wait_event = 'SyncRep' AND query LIKE 'INSERT INTO s%'",
                )
                .await?;
            let waiting: i64 = rows[0].get(0);
            if waiting == 1 && !commit.is_finished() {
                Ok(())
            } else {
                Err(format!(
                    "{waiting} waiting, finished: {}",
                    commit.is_finished()
                ))
            }
        },
    )
    .await;
    let (key, ssn) = wait_for(
        "nothing promised, postgres waiting for any standby",
        Duration::from_secs(20),
        || async {
            let (key, ssn) = sync_state(&t).await?;
            if key.voters().is_empty() && SyncRule::parse(&ssn).num >= 1 {
                Ok((key, ssn))
            } else {
                Err(format!("key {key:?}, synchronous_standby_names {ssn:?}"))
            }
        },
    )
    .await;
    eprintln!("with no standby: key {key:?}, synchronous_standby_names {ssn:?}");
    assert!(
        !commit.is_finished(),
        "a commit was acknowledged with no standby"
    );

    // A standby returns: the waiting commit completes.
    t.c.start_agent(1).unwrap();
    let done = tokio::time::timeout(Duration::from_secs(60), commit)
        .await
        .expect("the commit completes once a standby is back")
        .unwrap();
    assert!(done.is_ok(), "{done:?}");
    wait_voters(&t, 1, &[]).await;
}
