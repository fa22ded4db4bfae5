//! Issue 13: the PostgreSQL-derived systems, each run by the same HA loop
//! through its flavor's commands. No registry here has these systems, so
//! these tests run against **stand-ins** over real PostgreSQL 15
//! (tests/standins/*/README.md says what each imitates): they check Baton's
//! sequencing, parsing and catalog changes, not the systems themselves.

mod common;

use std::path::Path;
use std::time::Duration;

use baton_local::local::{ClusterOptions, LocalPostgres};
use common::*;

/// The `gpinitsystem` stand-in: a coordinator data directory at `data_dir`
/// (served on `port` once Baton starts it) whose catalog lists itself as
/// dbid 1 and four segments.
async fn gpinitsystem(dir: &Path, bin: &Path, data_dir: &Path, port: u16) {
    let work = dir.join("gpinit");
    std::fs::create_dir_all(&work).unwrap();
    baton_local::local::open_dir(&work).unwrap();
    let pg = LocalPostgres::start(&work, "coord", "").await.unwrap();
    catalog_sql(
        bin,
        pg.port,
        &[
            format!("port={port}"),
            format!("datadir={}", data_dir.display()),
        ],
    );
    pg.stop().await.unwrap();
    std::fs::rename(&pg.data_dir, data_dir).unwrap();
    let conf = data_dir.join("internal.auto.conf");
    std::fs::write(&conf, "gp_dbid = 1\n").unwrap();
    let meta = std::fs::metadata(data_dir).unwrap();
    use std::os::unix::fs::MetadataExt;
    std::os::unix::fs::chown(&conf, Some(meta.uid()), Some(meta.gid())).unwrap();
}

/// Runs the stand-in's `catalog.sql` on the postgres at `port`, with psql
/// variables (`name=value`).
fn catalog_sql(bin: &Path, port: u16, vars: &[String]) {
    let mut cmd = std::process::Command::new(bin.join("psql"));
    cmd.args([
        "-X",
        "-q",
        "-v",
        "ON_ERROR_STOP=1",
        "-h",
        "127.0.0.1",
        "-U",
        "postgres",
    ])
    .args(["-d", "postgres", "-p", &port.to_string()]);
    for v in vars {
        cmd.arg("-v").arg(v);
    }
    let out = cmd.arg("-f").arg(bin.join("catalog.sql")).output().unwrap();
    assert!(
        out.status.success(),
        "catalog.sql: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `(dbid, role, port, datadir)` of the coordinator rows (content -1).
async fn coordinators(port: u16) -> Result<Vec<CoordinatorRow>, String> {
    let rows = sql_port(
        port,
        "SELECT dbid, role::text, port, datadir FROM gp_segment_configuration \
         WHERE content = -1 ORDER BY dbid",
    )
    .await?;
    Ok(rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect())
}

type CoordinatorRow = (i16, String, i32, String);

/// Waits until the catalog at `port` lists exactly `want` as coordinators
/// (a real coordinator changes it as part of a promotion; the stand-in's
/// pg_ctl right after).
async fn wait_coordinators(port: u16, want: Vec<CoordinatorRow>, what: &str) {
    wait_for(what, Duration::from_secs(10), || async {
        match coordinators(port).await? {
            rows if rows == want => Ok(()),
            rows => Err(format!("{rows:?}")),
        }
    })
    .await;
}

async fn wait_leader(t: &TestCluster, i: usize) {
    wait_for(
        &format!("node{} leads", i + 1),
        Duration::from_secs(60),
        || async {
            match t.leader_index().await {
                Some(l) if l == i => Ok(()),
                other => Err(format!("leader {other:?}")),
            }
        },
    )
    .await;
}

async fn wait_rows(t: &TestCluster, i: usize, n: i64, what: &str) {
    wait_for(what, Duration::from_secs(20), || async {
        let r = t.sql(i, "SELECT count(*) FROM t").await?;
        match r[0].get::<_, i64>(0) {
            c if c == n => Ok(()),
            c => Err(format!("{c} rows")),
        }
    })
    .await;
}

fn gp_dbid(data_dir: &Path) -> String {
    std::fs::read_to_string(data_dir.join("internal.auto.conf")).unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn greenplum_standin_coordinator_failover_fencing_rejoin_and_switchover() {
    let mut t = TestCluster::new(
        "greenplum",
        ClusterOptions {
            nodes: 2,
            ..ClusterOptions::default()
        },
    );
    let bin = standin_bin(&t.dir.path, "greenplum");
    set_flavor(&t.c.nodes, "flavor = \"greenplum\"", &bin);
    let (p1, p2) = (t.c.nodes[0].pg_port, t.c.nodes[1].pg_port);
    let (d1, d2) = (t.c.nodes[0].data_dir.clone(), t.c.nodes[1].data_dir.clone());
    let d1s = d1.display().to_string();
    let d2s = d2.display().to_string();

    // Baton adopts the coordinator gpinitsystem made; the standby's empty
    // directory (its agent started at the same time, and never running
    // initdb) is cloned, after its registration in the catalog.
    gpinitsystem(&t.dir.path, &bin, &d1, p1).await;
    t.c.start_agent(1).unwrap();
    t.c.start_agent(0).unwrap();
    wait_leader(&t, 0).await;
    t.c.wait_normal(Duration::from_secs(90)).await.unwrap();
    wait_coordinators(
        p1,
        vec![
            (1, "p".into(), p1 as i32, d1s.clone()),
            (6, "m".into(), p2 as i32, d2s.clone()),
        ],
        "the standby coordinator registered under the next dbid",
    )
    .await;
    assert_eq!(
        gp_dbid(&d2),
        "gp_dbid = 6\n",
        "its data directory carries it"
    );

    // baton list shows the segments as Greenplum's catalog has them.
    wait_for(
        "baton list shows the segments",
        Duration::from_secs(20),
        || async {
            let (ok, out, err) = ctl(&t, &["list"]);
            let want = [
                "Segments (gp_segment_configuration",
                "sdw1:6000",
                "Primary   Primary    Up      Synced",
                "sdw2:6001",
                "Mirror    Primary    Down    Not in sync",
            ];
            if ok && want.iter().all(|w| out.contains(w)) {
                Ok(())
            } else {
                Err(format!("{out}{err}"))
            }
        },
    )
    .await;
    // And each segment primary's replication to its mirror, read from
    // gp_stat_replication beside the HA loop.
    let mirroring = [
        "Segment mirroring (gp_stat_replication):",
        "        0  streaming   0/C0001A8     0/C0001A8     0/C000170     sync    none",
        "        1  -           -             -             -             -       walread",
    ];
    wait_for(
        "baton list shows the segments' mirroring",
        Duration::from_secs(30),
        || async {
            let (ok, out, err) = ctl(&t, &["list"]);
            if ok && mirroring.iter().all(|w| out.contains(w)) {
                Ok(())
            } else {
                Err(format!("{out}{err}"))
            }
        },
    )
    .await;
    // The same view in openGauss's gs_om layout, data directories included.
    let (ok, out, err) = ctl(&t, &["list", "--gs-om"]);
    assert!(ok, "{err}");
    let row = format!(
        "1  node1 127.0.0.1  6001 {d1s} P Primary Normal | 2  node2 127.0.0.1  6002 {d2s} S Standby Normal\n"
    );
    assert!(
        out.contains("cluster_state   : Normal\n") && out.ends_with(&row),
        "{out}"
    );
    let (ok, out, _) = ctl(&t, &["list", "--json"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["segments"].as_array().map(Vec::len), Some(4), "{out}");
    assert_eq!(v["segments"][0]["mirror"]["sync_state"], "sync", "{out}");
    assert_eq!(v["segments"][2]["mirror"]["sync_error"], "walread", "{out}");

    // A segment that stops answering makes the dispatched read hang: it is
    // cancelled and reported, and the HA loop never waits for it (the
    // failover below runs while every read hangs, on both coordinators).
    t.sql(
        0,
        "ALTER DATABASE postgres SET gp_standin.segment_delay = '600'",
    )
    .await
    .unwrap();
    wait_for(
        "baton list says the mirroring read was cancelled",
        Duration::from_secs(40),
        || async {
            let (ok, out, err) = ctl(&t, &["list"]);
            let want = "Segment mirroring (gp_stat_replication): not read: postgres: \
                        canceling statement due to statement timeout";
            if ok && out.contains(want) && !out.contains("walread") {
                Ok(())
            } else {
                Err(format!("{out}{err}"))
            }
        },
    )
    .await;

    for q in [
        "CREATE TABLE t (id int)",
        "INSERT INTO t SELECT generate_series(1, 100)",
    ] {
        t.sql(0, q).await.unwrap();
    }
    wait_rows(&t, 1, 100, "the standby replays the table").await;

    // The coordinator's host dies: agent and postgres gone at once.
    t.c.kill_agent(0);
    t.c.kill_postgres(0).expect("node1's postmaster");
    wait_leader(&t, 1).await;
    wait_for("node2 accepts writes", Duration::from_secs(30), || async {
        t.sql(1, "INSERT INTO t VALUES (101)").await.map(|_| ())
    })
    .await;
    wait_coordinators(
        p2,
        vec![(6, "p".to_string(), p2 as i32, d2s.clone())],
        "the promotion makes node2 the coordinator in the catalog",
    )
    .await;

    // The old coordinator comes back: it must never answer as a
    // dispatcher (read-write) again; it is rewound and registered anew.
    t.c.start_agent(0).unwrap();
    let samples = std::sync::atomic::AtomicUsize::new(0);
    wait_for(
        "node1 streams from node2 again",
        Duration::from_secs(90),
        || {
            let (t, samples) = (&t, &samples);
            async move {
                if let Ok(r) = t.sql(0, "SELECT pg_is_in_recovery()").await {
                    samples.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    assert!(
                        r[0].get::<_, bool>(0),
                        "the old coordinator runs read-write beside the new one: split brain"
                    );
                }
                let s = t.c.status().await.map_err(|e| e.to_string())?;
                match s.members.iter().find(|m| m.name == "node1") {
                    Some(m) if m.state == "streaming" => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            }
        },
    )
    .await;
    assert!(samples.into_inner() > 0, "node1 was never seen running");
    wait_coordinators(
        p2,
        vec![
            (6, "p".into(), p2 as i32, d2s.clone()),
            (7, "m".into(), p1 as i32, d1s.clone()),
        ],
        "the old coordinator the standby now, under a new dbid",
    )
    .await;
    assert_eq!(gp_dbid(&d1), "gp_dbid = 7\n");
    wait_rows(
        &t,
        0,
        101,
        "node1 replays the write made after the failover",
    )
    .await;
    let log = std::fs::read_to_string(bin.join("standin.log")).unwrap();
    assert!(
        log.contains("pg_rewind utility=yes"),
        "the old coordinator was rewound in utility mode:\n{log}"
    );
    assert!(!log.contains("utility=no"), "{log}");
    t.c.wait_normal(Duration::from_secs(60)).await.unwrap();

    // A planned switchover back: the old coordinator (node2) stops cleanly,
    // node1 promotes, and node2 registers again as the standby before it
    // streams, under the next dbid.
    let (old, _) = t.c.switchover_via_api().await.unwrap();
    assert_eq!(old, "node2");
    t.c.wait_new_leader("node2", Duration::from_secs(30))
        .await
        .unwrap();
    t.c.wait_normal(Duration::from_secs(60)).await.unwrap();
    wait_coordinators(
        p1,
        vec![
            (7, "p".to_string(), p1 as i32, d1s.clone()),
            (8, "m".to_string(), p2 as i32, d2s.clone()),
        ],
        "the catalog after the switchover",
    )
    .await;
    assert_eq!(gp_dbid(&d2), "gp_dbid = 8\n");
    t.sql(0, "INSERT INTO t VALUES (102)").await.unwrap();

    // The segment answers again: the next read shows the mirroring.
    t.sql(0, "ALTER DATABASE postgres RESET gp_standin.segment_delay")
        .await
        .unwrap();
    wait_for(
        "baton list shows the mirroring again",
        Duration::from_secs(30),
        || async {
            let (ok, out, err) = ctl(&t, &["list"]);
            if ok && mirroring.iter().all(|w| out.contains(w)) && !out.contains("not read") {
                Ok(())
            } else {
                Err(format!("{out}{err}"))
            }
        },
    )
    .await;
}

/// The `gs_initdb` stand-in: an openGauss instance's data directory at
/// `data_dir`, with the 9.2-era SQL Baton reads (catalog.sql).
async fn gs_initdb(dir: &Path, bin: &Path, data_dir: &Path) {
    let work = dir.join("gs_initdb");
    std::fs::create_dir_all(&work).unwrap();
    baton_local::local::open_dir(&work).unwrap();
    let pg = LocalPostgres::start(&work, "dn", "").await.unwrap();
    catalog_sql(bin, pg.port, &[]);
    pg.stop().await.unwrap();
    std::fs::rename(&pg.data_dir, data_dir).unwrap();
}

/// `baton list --gs-om` of the cluster: its cluster state and its rows.
fn gs_om(t: &TestCluster) -> String {
    let (ok, out, err) = ctl(t, &["list", "--gs-om"]);
    assert!(ok, "{err}");
    out
}

/// Runbook 001 with Baton doing each step: openGauss's own commands
/// (`gs_ctl start -M`, `gs_ctl failover`, `gs_ctl build`, `gs_basebackup`)
/// run in order, replication configured by `replconninfo`, and `baton list
/// --gs-om` in `gs_om -t status --detail`'s layout. The primary dies with
/// writes its standby never received: the standby is promoted, the old
/// primary comes back as a standby, openGauss says it needs repair, and it
/// is built incrementally and follows; then a switchover back.
///
/// **Stand-in, not openGauss**: PostgreSQL 15 behind `gs_ctl`,
/// `gs_basebackup` and the 9.2-era SQL of tests/standins/opengauss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opengauss_standin_failover_build_switchover_and_gs_om() {
    let mut t = TestCluster::new(
        "opengauss",
        ClusterOptions {
            nodes: 2,
            // The standby is elected although it lacks the WAL the paused
            // receiver never got (below).
            extra_toml: "maximum_lag_on_failover = 1073741824\n".into(),
            ..ClusterOptions::default()
        },
    );
    let bin = standin_bin(&t.dir.path, "opengauss");
    set_flavor(&t.c.nodes, "flavor = \"opengauss\"", &bin);
    let (p1, p2) = (t.c.nodes[0].pg_port, t.c.nodes[1].pg_port);
    let (d1, d2) = (t.c.nodes[0].data_dir.clone(), t.c.nodes[1].data_dir.clone());
    gs_initdb(&t.dir.path, &bin, &d1).await;
    t.c.start_agent(0).unwrap();
    t.c.start_agent(1).unwrap();
    wait_leader(&t, 0).await;
    t.c.wait_normal(Duration::from_secs(90)).await.unwrap();
    let log = || std::fs::read_to_string(bin.join("standin.log")).unwrap();
    // node1 adopted: started as a standby (read-only, no upstream), then
    // promoted under the key with gs_ctl failover; node2 cloned with
    // gs_basebackup and started as a standby.
    let l = log();
    for want in [
        format!("gs_ctl start -D {} -w -t 30 -M standby", d1.display()),
        format!("gs_ctl failover -D {}", d1.display()),
        format!("gs_basebackup -D {} -h 127.0.0.1 -p {p1}", d2.display()),
        format!("gs_ctl start -D {} -w -t 30 -M standby", d2.display()),
    ] {
        assert!(l.contains(&want), "{want}:\n{l}");
    }
    // Each lists the other in replconninfo (HA port = data port + 1).
    let conf = |d: &Path| std::fs::read_to_string(d.join("postgresql.conf")).unwrap();
    assert!(
        conf(&d1).contains(&format!(
            "replconninfo1 = 'localhost=127.0.0.1 localport={} remotehost=127.0.0.1 remoteport={}'",
            p1 + 1,
            p2 + 1
        )),
        "{}",
        conf(&d1)
    );
    assert!(
        conf(&d2).contains(&format!("remoteport={}'", p1 + 1)),
        "{}",
        conf(&d2)
    );
    // gs_om's layout, as runbook 001 shows a healthy pair.
    wait_for("gs_om shows Normal", Duration::from_secs(20), || async {
        let out = gs_om(&t);
        let row = format!(
            "1  node1 127.0.0.1  6001 {} P Primary Normal | 2  node2 127.0.0.1  6002 {} S Standby Normal\n",
            d1.display(),
            d2.display()
        );
        if out.contains("cluster_state   : Normal\n") && out.ends_with(&row) {
            Ok(())
        } else {
            Err(out)
        }
    })
    .await;

    for q in [
        "CREATE TABLE t (id int)",
        "INSERT INTO t SELECT generate_series(1, 100)",
    ] {
        t.sql(0, q).await.unwrap();
    }
    wait_rows(&t, 1, 100, "the standby replays the table").await;

    // The standby stops receiving (its WAL receiver paused), the primary
    // commits more than the sockets between them hold, and dies with it:
    // some of those commits exist only there.
    let receiver: i32 = t
        .sql(1, "SELECT pid FROM pg_catalog.pg_stat_wal_receiver")
        .await
        .unwrap()[0]
        .get(0);
    let paused = Stopped::stop(receiver as u32);
    t.sql(0, "INSERT INTO t SELECT generate_series(1000, 400000)")
        .await
        .unwrap();
    t.c.kill_agent(0);
    t.c.kill_postgres(0).expect("node1's postmaster");
    drop(paused);
    wait_leader(&t, 1).await;
    wait_for("node2 accepts writes", Duration::from_secs(30), || async {
        t.sql(1, "INSERT INTO t VALUES (-1)").await.map(|_| ())
    })
    .await;
    assert!(
        log().contains(&format!("gs_ctl failover -D {}", d2.display())),
        "{}",
        log()
    );
    // Runbook 001 after a failover with the old primary down (once its
    // member key, which still says primary, has gone with its lease).
    wait_for("gs_om shows Degraded", Duration::from_secs(20), || async {
        let out = gs_om(&t);
        if out.contains("cluster_state   : Degraded\n")
            && out.contains("node2 127.0.0.1  6001")
            && out.contains("Primary Normal")
        {
            Ok(())
        } else {
            Err(out)
        }
    })
    .await;

    // The old primary comes back: as a standby (never read-write without
    // the key), openGauss finds its WAL diverged ("Need repair"), Baton
    // builds it incrementally, and it follows node2.
    t.c.start_agent(0).unwrap();
    wait_for(
        "node1 streams from node2 again",
        Duration::from_secs(90),
        || async {
            if let Ok(r) = t.sql(0, "SELECT pg_is_in_recovery()").await {
                assert!(r[0].get::<_, bool>(0), "node1 runs read-write: split brain");
            }
            let s = t.c.status().await.map_err(|e| e.to_string())?;
            match s.members.iter().find(|m| m.name == "node1") {
                Some(m) if m.state == "streaming" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let l = log();
    assert!(
        l.contains(&format!("gs_ctl build -D {}", d1.display()))
            && l.contains("-b incremental")
            && l.contains("build incremental from 127.0.0.1")
            && l.contains(" exit 0"),
        "{l}"
    );
    let moved_aside: Vec<_> = std::fs::read_dir(d1.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("node1.baton-old")
        })
        .collect();
    assert!(
        moved_aside.is_empty(),
        "node1 was rebuilt, not built incrementally: {moved_aside:?}"
    );
    let agent = t.agent_log(0);
    assert!(
        agent.contains("instance_needs_repair") && agent.contains("WAL segment removed"),
        "node1 was built because openGauss said so: {agent}"
    );
    // node1 now has node2's history: node2's write, and of its own
    // commits after the pause only what node2 had received.
    wait_for(
        "node1 has node2's history",
        Duration::from_secs(20),
        || async {
            let count = "SELECT count(*), count(*) FILTER (WHERE id = -1) FROM t";
            let (a, b) = (t.sql(0, count).await?, t.sql(1, count).await?);
            let row = |r: &[tokio_postgres::Row]| (r[0].get::<_, i64>(0), r[0].get::<_, i64>(1));
            match (row(&a), row(&b)) {
                (x, y) if x == y && x.1 == 1 => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    t.c.wait_normal(Duration::from_secs(60)).await.unwrap();

    // A switchover back, openGauss's way (runbook 001): the key moves to
    // node1 while node2 still runs, node1 runs `gs_ctl switchover`, which
    // demotes node2 in place (no stop by Baton, no build) and promotes
    // node1; writes go on at node1.
    let before = log();
    // Never two primaries: sampled new-then-old (the old one is demoted
    // before the new one promotes, so a true overlap is all this finds).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sampler = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut both = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let primary = |port| async move {
                    matches!(sql_port(port, "SELECT pg_is_in_recovery()").await,
                             Ok(r) if !r[0].get::<_, bool>(0))
                };
                if primary(p1).await && primary(p2).await {
                    both += 1;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            both
        })
    };
    let (old, _) = t.c.switchover_via_api().await.unwrap();
    assert_eq!(old, "node2");
    t.c.wait_new_leader("node2", Duration::from_secs(30))
        .await
        .unwrap();
    t.c.wait_normal(Duration::from_secs(60)).await.unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    assert_eq!(
        sampler.await.unwrap(),
        0,
        "node1 and node2 both primary during the switchover"
    );
    let during = log()[before.len()..].to_string();
    assert!(
        during.contains(&format!("gs_ctl switchover -D {}", d1.display()))
            && during.contains(&format!(
                "switchover: {} demoted, {} promoted",
                d2.display(),
                d1.display()
            )),
        "{during}"
    );
    assert!(
        !during.contains(&format!("gs_ctl stop -D {}", d2.display()))
            && !during.contains("gs_ctl failover")
            && !during.contains("gs_ctl build"),
        "{during}"
    );
    t.sql(0, "INSERT INTO t VALUES (-2)").await.unwrap();
    wait_for(
        "gs_om shows Normal again",
        Duration::from_secs(20),
        || async {
            let out = gs_om(&t);
            if out.contains("cluster_state   : Normal\n") && out.contains("P Primary Normal | 2") {
                Ok(())
            } else {
                Err(out)
            }
        },
    )
    .await;
}
