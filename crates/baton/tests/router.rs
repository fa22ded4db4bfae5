//! Issue 12 acceptance: `baton router` sends writers to the primary and
//! readers to fresh replicas, holds clients through switchovers and
//! failovers instead of refusing them, and closes writer connections whose
//! backend stops being the primary.

mod common;

use std::time::{Duration, Instant};

use baton_local::local::{ClusterOptions, LocalEtcd, LocalPostgres, LocalRouter};
use common::*;

/// One client through the router: connect (waiting as long as the router
/// holds), run `sql`, and say how long the connect took.
async fn through(port: u16, sql: &str) -> Result<(Vec<tokio_postgres::Row>, Duration), String> {
    let cfg = baton_local::workload::loopback(port, Duration::from_secs(40));
    let t = Instant::now();
    let (client, conn) = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| pg_error(&e))?;
    let waited = t.elapsed();
    tokio::spawn(conn);
    let rows = client.query(sql, &[]).await.map_err(|e| pg_error(&e))?;
    Ok((rows, waited))
}

async fn connect(port: u16) -> tokio_postgres::Client {
    let (client, conn) = baton_local::workload::loopback(port, Duration::from_secs(10))
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to port {port}: {}", pg_error(&e)));
    tokio::spawn(conn);
    client
}

/// A counter from the router's `/metrics` (route label included in `name`).
async fn router_metric(r: &LocalRouter, series: &str) -> f64 {
    let text = http_text(&r.api_url("/metrics")).await;
    text.lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in router metrics:\n{text}"))
}

/// etcd, one postgres with TLS on (no member keys yet: the test writes
/// them), and a router for scope `rt` with `top` and `read_only` keys.
/// Fields drop in order: the router first, the directory last (bind them
/// the other way round when taking the struct apart).
struct OnePostgres {
    router: LocalRouter,
    pg: LocalPostgres,
    etcd: LocalEtcd,
    dir: TestDir,
}

impl OnePostgres {
    async fn start(name: &str, top: &str, read_only: &str) -> OnePostgres {
        let dir = TestDir::new(name);
        let mut etcd = LocalEtcd::planned(&dir.path);
        etcd.start().unwrap();
        let pg = LocalPostgres::start(&dir.path, "pg1", &tls_parameters(&dir.path))
            .await
            .unwrap();
        let router = LocalRouter::start(
            &dir.path,
            &baton_bin(),
            "router",
            ("rt", &etcd.endpoint),
            top,
            read_only,
        )
        .unwrap();
        OnePostgres {
            router,
            pg,
            etcd,
            dir,
        }
    }
}

/// `[postgresql.parameters]` lines turning TLS on with a self-signed
/// certificate the postgres OS user owns, made in `dir`.
fn tls_parameters(dir: &std::path::Path) -> String {
    self_signed(dir, "server.key", "server.crt", "/CN=127.0.0.1");
    let postgres = nix::unistd::User::from_name("postgres").unwrap().unwrap();
    for f in ["server.key", "server.crt"] {
        let p = dir.join(f);
        nix::unistd::chown(&p, Some(postgres.uid), Some(postgres.gid)).unwrap();
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
    }
    format!(
        "ssl = \"on\"\nssl_cert_file = \"{}\"\nssl_key_file = \"{}\"",
        dir.join("server.crt").display(),
        dir.join("server.key").display()
    )
}

/// psql with `sslmode=require` through `port` reaches a server that sees
/// its session encrypted.
fn assert_tls_end_to_end(port: u16) {
    let psql = baton::config::default_bin_dir().unwrap().join("psql");
    let out = std::process::Command::new(&psql)
        .arg(format!(
            "host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=require"
        ))
        .args([
            "-Atc",
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        ])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "t",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Writes the keys an agent would, for a member no agent runs.
async fn put_member(etcd: &str, name: &str, port: u16, role: &str) {
    put_member_in(etcd, name, port, role, "running").await
}

async fn put_member_in(etcd: &str, name: &str, port: u16, role: &str, state: &str) {
    let mut c = etcd_client::Client::connect([etcd], None).await.unwrap();
    let member = serde_json::json!({
        "conn_url": format!("postgres://127.0.0.1:{port}/postgres"),
        "api_url": "http://127.0.0.1:1/patroni",
        "state": state,
        "role": role,
        "xlog_location": 1000,
    });
    c.put(
        format!("/service/rt/members/{name}"),
        member.to_string(),
        None,
    )
    .await
    .unwrap();
}

/// Until the router's `/routes` satisfies `check`, for up to 10 s.
async fn wait_for_routes(
    router: &LocalRouter,
    what: &str,
    check: impl Fn(&serde_json::Value) -> bool,
) {
    wait_for(what, Duration::from_secs(10), || async {
        let routes = http_json(&router.api_url("/routes")).await?;
        if check(&routes) {
            Ok(())
        } else {
            Err(format!("{routes}"))
        }
    })
    .await;
}

async fn put_leader(etcd: &str, name: &str) {
    let mut c = etcd_client::Client::connect([etcd], None).await.unwrap();
    c.put("/service/rt/leader", name, None).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The slot serialises test binaries' clusters, across awaits on purpose;
// each test has a runtime of its own, so no task here waits for it.
#[allow(clippy::await_holding_lock)]
async fn router_holds_clients_until_a_primary_and_closes_writers_on_demotion() {
    let _slot = one_cluster_at_a_time();
    // Bound in this order, so they drop the other way round.
    let OnePostgres {
        dir,
        mut etcd,
        pg,
        router,
    } = OnePostgres::start("router-hold", "hold_timeout = 20", "max_connections = 1").await;

    // No leader yet: a client is held, not refused.
    let held = tokio::spawn(through(router.rw_port, "SELECT inet_server_port()"));
    let held_series = "baton_router_connections_held{scope=\"rt\",route=\"read_write\"}";
    wait_for("the client held", Duration::from_secs(10), || async {
        match router_metric(&router, held_series).await {
            1.0 => Ok(()),
            n => Err(format!("{n} held")),
        }
    })
    .await;
    put_member(&etcd.endpoint, "pg1", pg.port, "primary").await;
    put_leader(&etcd.endpoint, "pg1").await;
    let (rows, waited) = tokio::time::timeout(Duration::from_secs(10), held)
        .await
        .expect("the held client connects once a primary is known")
        .unwrap()
        .unwrap();
    assert_eq!(rows[0].get::<_, i32>(0), pg.port as i32);
    assert!(waited > Duration::from_millis(1), "{waited:?}");
    assert_eq!(router_metric(&router, held_series).await, 0.0);

    // A leader still promoting by its member key, whose postgres already
    // takes writes (it says so in its greeting): writers get it at once.
    put_member_in(&etcd.endpoint, "pg1", pg.port, "replica", "promoting").await;
    wait_for_routes(&router, "writers sent to the promoting leader", |r| {
        r["primary"].is_null() && r["unconfirmed"]["name"] == "pg1"
    })
    .await;
    let (rows, _) = through(router.rw_port, "SELECT pg_is_in_recovery()")
        .await
        .unwrap();
    assert!(!rows[0].get::<_, bool>(0));
    put_member(&etcd.endpoint, "pg1", pg.port, "primary").await;

    // TLS is passed through: the session is encrypted end to end.
    assert_tls_end_to_end(router.rw_port);

    // The read-only route takes one session at a time here
    // (max_connections = 1; readers fall back to the primary): a second
    // client is refused at once, with SQLSTATE 53300.
    let reader = connect(router.ro_port).await;
    reader.simple_query("SELECT 1").await.unwrap();
    let err = through(router.ro_port, "SELECT 1").await.unwrap_err();
    assert!(
        err.contains("53300") && err.contains("max_connections"),
        "{err}"
    );
    drop(reader);

    // The leader's agent could not query its postgres for a tick (busy,
    // its status query timed out) and says "not responding": it still
    // holds the key, so its open sessions stay, and a new client gets it
    // as soon as its greeting says writable.
    let client = connect(router.rw_port).await;
    client.simple_query("SELECT 1").await.unwrap();
    put_member_in(&etcd.endpoint, "pg1", pg.port, "primary", "not responding").await;
    wait_for_routes(
        &router,
        "the router seeing the leader not responding",
        |r| {
            r["primary"].is_null()
                && r["leading"]["name"] == "pg1"
                && r["unconfirmed"]["name"] == "pg1"
        },
    )
    .await;
    client
        .simple_query("SELECT 1")
        .await
        .expect("a session on the leader survives its agent's failed status query");
    let (rows, _) = tokio::time::timeout(
        Duration::from_secs(5),
        through(router.rw_port, "SELECT pg_is_in_recovery()"),
    )
    .await
    .expect("a new writer reaches a leader whose status query failed, without waiting")
    .unwrap();
    assert!(!rows[0].get::<_, bool>(0));
    // Starting (a restart in place): sessions stay, new clients wait.
    put_member_in(&etcd.endpoint, "pg1", pg.port, "primary", "starting").await;
    wait_for_routes(&router, "the router seeing the leader starting", |r| {
        r["primary"].is_null() && r["leading"]["name"] == "pg1" && r["unconfirmed"].is_null()
    })
    .await;
    client.simple_query("SELECT 1").await.unwrap();
    put_member(&etcd.endpoint, "pg1", pg.port, "primary").await;

    // An open writer session is closed when its backend stops being the
    // primary (here the key moves to a member that is not up yet), though
    // postgres itself keeps running.
    put_leader(&etcd.endpoint, "pg2").await;
    wait_for(
        "the writer session closed",
        Duration::from_secs(5),
        || async {
            match client.simple_query("SELECT 1").await {
                Err(e) => Ok(e),
                Ok(_) => Err("the session still answers".to_string()),
            }
        },
    )
    .await;
    assert!(pg.postmaster_pid().is_some(), "postgres kept running");
    assert_eq!(
        router_metric(
            &router,
            "baton_router_connections_closed_on_demotion_total{scope=\"rt\",route=\"read_write\"}"
        )
        .await,
        1.0
    );

    // With no primary for longer than hold_timeout, the client is told why.
    put_leader(&etcd.endpoint, "nobody").await;
    drop(router);
    let router = LocalRouter::start(
        &dir.path,
        &baton_bin(),
        "router-short",
        ("rt", &etcd.endpoint),
        "hold_timeout = 1",
        "",
    )
    .unwrap();
    let err = through(router.rw_port, "SELECT 1").await.unwrap_err();
    assert!(
        err.contains("57P03") && err.contains("within hold_timeout") && err.contains("no primary"),
        "{err}"
    );
    assert_eq!(
        router_metric(
            &router,
            "baton_router_connections_refused_total{scope=\"rt\",route=\"read_write\"}"
        )
        .await,
        1.0
    );
    drop(pg);
    etcd.stop();
}

/// A client through the router that reconnects after every failure, as an
/// application would, recording every acknowledged id and every failed
/// connect with its error.
struct RouterWriter {
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<(Vec<i64>, Vec<String>)>,
}

impl RouterWriter {
    fn start(port: u16, table: &'static str) -> RouterWriter {
        let stop = tokio_util::sync::CancellationToken::new();
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let (mut acked, mut refused) = (vec![], vec![]);
            let mut client: Option<tokio_postgres::Client> = None;
            let mut id = 0i64;
            let sql = format!("INSERT INTO {table} (id) VALUES ($1)");
            let deadline = Instant::now() + Duration::from_secs(600);
            while !s.is_cancelled() && Instant::now() < deadline {
                if client.as_ref().is_none_or(|c| c.is_closed()) {
                    let cfg = baton_local::workload::loopback(port, Duration::from_secs(40));
                    match cfg.connect(tokio_postgres::NoTls).await {
                        Ok((c, conn)) => {
                            tokio::spawn(conn);
                            client = Some(c);
                        }
                        Err(e) => {
                            refused.push(pg_error(&e));
                            tokio::time::sleep(Duration::from_millis(10)).await;
                            continue;
                        }
                    }
                }
                id += 1;
                let c = client.as_ref().expect("connected above");
                match tokio::time::timeout(Duration::from_secs(5), c.execute(&sql, &[&id])).await {
                    Ok(Ok(_)) => acked.push(id),
                    _ => client = None,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (acked, refused)
        });
        RouterWriter { stop, task }
    }

    async fn finish(self) -> (Vec<i64>, Vec<String>) {
        self.stop.cancel();
        self.task.await.unwrap()
    }
}

/// New connections every 10 ms, each running one query: how many were
/// refused and the longest connect.
struct Connector {
    stop: tokio_util::sync::CancellationToken,
    ok: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<(Vec<String>, Duration)>,
}

impl Connector {
    fn start(port: u16) -> Connector {
        let stop = tokio_util::sync::CancellationToken::new();
        let ok = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (s, n) = (stop.clone(), ok.clone());
        let task = tokio::spawn(async move {
            let (mut refused, mut longest) = (vec![], Duration::ZERO);
            let deadline = Instant::now() + Duration::from_secs(600);
            while !s.is_cancelled() && Instant::now() < deadline {
                match through(port, "SELECT 1").await {
                    Ok((_, waited)) => {
                        n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        longest = longest.max(waited);
                    }
                    Err(e) => refused.push(e),
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (refused, longest)
        });
        Connector { stop, ok, task }
    }

    fn connects(&self) -> usize {
        self.ok.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Waits until `more` connects beyond `from` have succeeded.
    async fn wait_connects(&self, from: usize, more: usize) {
        wait_for(
            "connects through the router",
            Duration::from_secs(20),
            || async {
                let n = self.connects();
                if n >= from + more {
                    Ok(())
                } else {
                    Err(format!("{n} connects"))
                }
            },
        )
        .await;
    }

    async fn finish(self) -> (usize, Vec<String>, Duration) {
        self.stop.cancel();
        let n = self.connects();
        let (refused, longest) = self.task.await.unwrap();
        (n, refused, longest)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_the_router_survive_switchover_and_failover() {
    // Synchronous mode: the failover below must lose no acknowledged write
    // either, so every acknowledged id can be asked of the final leader.
    let opts = ClusterOptions {
        extra_toml: "synchronous_mode = true\n".into(),
        ..ClusterOptions::default()
    };
    let mut t = TestCluster::led_by_node1("router-writes", opts, &[]).await;
    let router = t.c.start_router("router", "", "").unwrap();
    t.sql(0, "CREATE TABLE rw (id bigint PRIMARY KEY)")
        .await
        .unwrap();
    let writer = RouterWriter::start(router.rw_port, "rw");
    wait_for(
        "writes through the router",
        Duration::from_secs(10),
        || async {
            let n = t.sql(0, "SELECT count(*) FROM rw").await?[0].get::<_, i64>(0);
            if n > 20 {
                Ok(())
            } else {
                Err(format!("{n} rows"))
            }
        },
    )
    .await;

    // Switchover to the synchronous standby (the only candidate synchronous
    // mode allows): no connection attempt refused, through the whole pause.
    let sync = wait_for("a synchronous standby", Duration::from_secs(20), || async {
        let v = t.c.view().await.map_err(|e| format!("{e:#}"))?;
        match v
            .sync
            .as_ref()
            .filter(|k| k.leader_is("node1"))
            .map(|k| k.voters())
        {
            Some(v) if v.len() == 1 => Ok(v[0].clone()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let c = t.c.nodes.iter().position(|n| n.name == sync).unwrap();
    let connector = Connector::start(router.rw_port);
    connector.wait_connects(0, 5).await;
    let (ok, out, err) = ctl(&t, &["switchover", "--candidate", &sync, "--force"]);
    assert!(ok, "switchover failed: {out} {err}");
    let at = t.sql(c, "SELECT count(*) FROM rw").await.unwrap()[0].get::<_, i64>(0);
    wait_for(
        "writes on the candidate",
        Duration::from_secs(20),
        || async {
            let n = t.sql(c, "SELECT count(*) FROM rw").await?[0].get::<_, i64>(0);
            if n > at + 20 {
                Ok(())
            } else {
                Err(format!("{n} rows on {sync}"))
            }
        },
    )
    .await;
    connector.wait_connects(connector.connects(), 10).await;
    let (connects, refused, longest) = connector.finish().await;
    assert_eq!(
        refused,
        Vec::<String>::new(),
        "connects refused during the switchover"
    );
    eprintln!("switchover: {connects} connects, longest wait {longest:?}");

    // Failover: the leader's host dies; writers come back on the next one.
    // Until the new leader's sync key names a standby, no other member may
    // hold its acknowledged commits and synchronous mode rightly lets none
    // take over; the host dies once one could.
    wait_for(
        "the new leader's synchronous standby in the sync key",
        Duration::from_secs(20),
        || async {
            let v = t.c.view().await.map_err(|e| format!("{e:#}"))?;
            match v.sync.as_ref().filter(|k| k.leader_is(&sync)) {
                Some(k) if !k.voters().is_empty() => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    let before = t.sql(c, "SELECT count(*) FROM rw").await.unwrap()[0].get::<_, i64>(0);
    kill_node(&mut t, c);
    let new = wait_new_leader(&t, &sync, Duration::from_secs(30)).await;
    let i = t.c.nodes.iter().position(|n| n.name == new).unwrap();
    wait_for(
        "writes on the new leader",
        Duration::from_secs(30),
        || async {
            let n = t.sql(i, "SELECT count(*) FROM rw").await?[0].get::<_, i64>(0);
            if n > before + 20 {
                Ok(())
            } else {
                Err(format!("{n} rows, {before} before the failover"))
            }
        },
    )
    .await;
    let (acked, _failed_connects) = writer.finish().await;
    let present: std::collections::HashSet<i64> = t
        .sql(i, "SELECT id FROM rw")
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let lost: Vec<i64> = acked
        .iter()
        .filter(|id| !present.contains(id))
        .copied()
        .collect();
    assert!(acked.len() > 40, "{} acknowledged", acked.len());
    assert_eq!(
        lost,
        Vec::<i64>::new(),
        "acknowledged writes missing on {new}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_are_spread_over_fresh_replicas_only() {
    let t = TestCluster::led_by_node1("router-readers", ClusterOptions::default(), &[]).await;
    let router =
        t.c.start_router("router", "", "max_lag = 65536\nfallback_to_primary = false")
            .unwrap();
    let port_of = |i: usize| t.c.nodes[i].pg_port as i32;
    let readers = |n: usize| {
        let port = router.ro_port;
        async move {
            let mut seen = std::collections::BTreeMap::new();
            for _ in 0..n {
                let (rows, _) = through(port, "SELECT inet_server_port()").await?;
                *seen.entry(rows[0].get::<_, i32>(0)).or_insert(0) += 1;
            }
            Ok::<_, String>(seen)
        }
    };
    wait_for(
        "both replicas in the read pool",
        Duration::from_secs(10),
        || async {
            let seen = readers(6).await?;
            if seen.get(&port_of(1)) == Some(&3) && seen.get(&port_of(2)) == Some(&3) {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await;

    // node3 lags past the limit: its WAL receiver frozen, 1 MB written.
    let sql =
        "CREATE TABLE lag AS SELECT g, repeat('x', 100) AS pad FROM generate_series(1, 10000) g";
    let receiver = make_lag(&t, 2, sql, 1 << 20).await;
    wait_for(
        "node3 out of the read pool",
        Duration::from_secs(10),
        || async {
            let seen = readers(4).await?;
            if seen.keys().eq([&port_of(1)]) {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await;
    nix::sys::signal::kill(receiver, nix::sys::signal::Signal::SIGCONT).unwrap();
    wait_for(
        "node3 back in the read pool",
        Duration::from_secs(20),
        || async {
            let seen = readers(4).await?;
            if seen.len() == 2 {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await;

    // node2's postgres dies: it stops streaming and leaves the pool until
    // its agent has it streaming again. Its agent restarts it within a
    // fraction of a second, too fast to watch it leave; in maintenance
    // mode it stays down until resumed.
    let (ok, _, err) = ctl(&t, &["pause"]);
    assert!(ok, "{err}");
    wait_for(
        "node2's agent in pause",
        Duration::from_secs(10),
        || async {
            let m = metric(&t, 1, "patroni_is_paused").await;
            if m == 1.0 {
                Ok(())
            } else {
                Err(format!("patroni_is_paused {m}"))
            }
        },
    )
    .await;
    t.c.kill_postgres(1);
    wait_for_routes(&router, "node2 out of the read pool", |r| {
        let readers = r["readers"].as_array().cloned().unwrap_or_default();
        readers.len() == 1 && readers[0]["name"] == "node3"
    })
    .await;
    let seen = readers(3).await.unwrap();
    assert!(seen.keys().eq([&port_of(2)]), "{seen:?}");
    assert!(
        !seen.contains_key(&port_of(0)),
        "a reader went to the primary"
    );
    let (ok, _, err) = ctl(&t, &["resume"]);
    assert!(ok, "{err}");
    wait_for(
        "node2 back in the read pool",
        Duration::from_secs(30),
        || async {
            let seen = readers(4).await?;
            if seen.contains_key(&port_of(1)) {
                Ok(())
            } else {
                Err(format!("{seen:?}"))
            }
        },
    )
    .await;
    t.wait_state(
        baton_core::status::ClusterState::Normal,
        Duration::from_secs(60),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn haproxy_routes_writes_to_the_new_leader_after_a_switchover() {
    let t = TestCluster::led_by_node1("haproxy", ClusterOptions::default(), &[]).await;
    let template =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/haproxy.cfg");
    let haproxy = baton_local::local::LocalHaproxy::start(&t.c, &template).unwrap();
    let port = |i: usize| t.c.nodes[i].pg_port as i32;
    let writes_land_on = |want: i32| {
        let rw = haproxy.rw_port;
        async move {
            let cfg = baton_local::workload::loopback(rw, Duration::from_secs(2));
            let (client, conn) =
                tokio::time::timeout(Duration::from_secs(3), cfg.connect(tokio_postgres::NoTls))
                    .await
                    .map_err(|_| "connect timed out".to_string())?
                    .map_err(|e| pg_error(&e))?;
            tokio::spawn(conn);
            let row = client
                .query_one(
                    "INSERT INTO ha (at) VALUES (now()) RETURNING inet_server_port()",
                    &[],
                )
                .await
                .map_err(|e| pg_error(&e))?;
            match row.get::<_, i32>(0) {
                p if p == want => Ok(()),
                p => Err(format!("the write landed on port {p}")),
            }
        }
    };
    t.sql(0, "CREATE TABLE ha (at timestamptz)").await.unwrap();
    wait_for(
        "HAProxy sending writes to node1",
        Duration::from_secs(10),
        || writes_land_on(port(0)),
    )
    .await;
    let (ok, out, err) = ctl(&t, &["switchover", "--candidate", "node2", "--force"]);
    assert!(ok, "{out}{err}");
    wait_for(
        "HAProxy sending writes to node2",
        Duration::from_secs(10),
        || writes_land_on(port(1)),
    )
    .await;
    // Readers go to replicas only: node1 (now one) and node3.
    wait_for(
        "HAProxy reading from replicas",
        Duration::from_secs(10),
        || async {
            let (rows, _) = through(
                haproxy.ro_port,
                "SELECT inet_server_port(), pg_is_in_recovery()",
            )
            .await?;
            if rows[0].get::<_, bool>(1) {
                Ok(())
            } else {
                Err(format!(
                    "read on the primary, port {}",
                    rows[0].get::<_, i32>(0)
                ))
            }
        },
    )
    .await;
    // node2's agent's own postgres sessions stop answering, and so does
    // its postmaster (SIGSTOP, of backends while idle, so they hold no
    // lock): its status query times out, a new connection too, and the
    // member says "not responding". It still holds the key and may take
    // writes, so /primary stays 200 (as Patroni answers) and HAProxy
    // keeps its sessions.
    // A session on node2 (until HAProxy's checks mark node1 down, it may
    // still send writers there).
    let session = wait_for("a session on node2", Duration::from_secs(10), || async {
        let c = connect(haproxy.rw_port).await;
        let row = c
            .query_one("SELECT inet_server_port()", &[])
            .await
            .map_err(|e| pg_error(&e))?;
        match row.get::<_, i32>(0) {
            p if p == port(1) => Ok(c),
            p => Err(format!("on port {p}")),
        }
    })
    .await;
    let stopped = stop_agent_sessions(&t, 1).await;
    let url = t.c.nodes[1].api_url("/primary");
    let http = baton::tls::http_client(Duration::from_secs(3), None).unwrap();
    let (code, body) = wait_for(
        "node2's agent seeing its postgres not answer",
        Duration::from_secs(15),
        || async {
            let r = http.get(&url).send().await.map_err(|e| e.to_string())?;
            let code = r.status().as_u16();
            let body: serde_json::Value = r.json().await.map_err(|e| e.to_string())?;
            match body["state"].as_str() {
                Some("running") => Err("still running".to_string()),
                _ => Ok((code, body)),
            }
        },
    )
    .await;
    drop(stopped);
    assert_eq!(
        (code, body["state"].as_str()),
        (200, Some("not responding")),
        "{body}"
    );
    assert_eq!(body["role"], "primary", "{body}");
    wait_for("node2 answering again", Duration::from_secs(15), || async {
        match http_json(&url).await?["state"].as_str() {
            Some("running") => Ok(()),
            s => Err(format!("{s:?}")),
        }
    })
    .await;
    session
        .simple_query("SELECT 1")
        .await
        .expect("HAProxy kept the session on the leader whose status query timed out");
}

/// Backends stopped by `stop_agent_sessions`, continued when dropped (a
/// failed assertion included), so none is left behind stopped.
struct Stopped(Vec<nix::unistd::Pid>);

impl Drop for Stopped {
    fn drop(&mut self) {
        for &p in &self.0 {
            let _ = nix::sys::signal::kill(p, nix::sys::signal::Signal::SIGCONT);
        }
    }
}

/// SIGSTOPs the idle backends of node `i`'s agent (application_name
/// `baton`) and the postmaster, so its status queries hang, on its
/// connection and on a new one. Only idle backends: one stopped inside a
/// query could hold a lock the whole server waits on.
async fn stop_agent_sessions(t: &TestCluster, i: usize) -> Stopped {
    use nix::sys::signal::{kill, Signal};
    wait_for(
        "the agent's postgres sessions stopped while idle",
        Duration::from_secs(10),
        || async {
            let rows = t
                .sql(
                    i,
                    "SELECT pid FROM pg_stat_activity \
                     WHERE application_name = 'baton' AND backend_type = 'client backend' \
                     AND pid <> pg_backend_pid()",
                )
                .await?;
            let pids: Vec<_> = rows
                .iter()
                .map(|r| nix::unistd::Pid::from_raw(r.get::<_, i32>(0)))
                .collect();
            if pids.is_empty() {
                return Err("no agent session".to_string());
            }
            for &p in &pids {
                kill(p, Signal::SIGSTOP).map_err(|e| e.to_string())?;
            }
            let mut pids = Stopped(pids);
            let busy = t
                .sql(
                    i,
                    &format!(
                        "SELECT count(*) FROM pg_stat_activity WHERE state <> 'idle' AND pid IN ({})",
                        pids.0.iter().map(|p| p.to_string()).collect::<Vec<_>>().join(",")
                    ),
                )
                .await?[0]
                .get::<_, i64>(0);
            if busy == 0 {
                let postmaster = t.c.nodes[i].postmaster_pid().ok_or("no postmaster")?;
                let postmaster = nix::unistd::Pid::from_raw(postmaster);
                kill(postmaster, Signal::SIGSTOP).map_err(|e| e.to_string())?;
                pids.0.push(postmaster);
                return Ok(pids);
            }
            Err(format!("{busy} of them inside a query"))
        },
    )
    .await
}

/// `kernel_splice = true`: past the handshake the kernel moves a session's
/// bytes. Big answers and big queries arrive whole both ways, the server's
/// last message before it closes a session reaches the client (the router
/// waits for the kernel's queue before closing), the byte counters add
/// the spliced bytes up at the end, and a writer is still closed when its
/// backend stops being the primary; TLS sessions are spliced encrypted.
/// While the route has at most `busy_poll_max_sessions` sessions, a new one
/// stays with the router (busy-polled). Runs as root, as the tests do
/// (loading the program needs CAP_BPF and CAP_NET_ADMIN).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[allow(clippy::await_holding_lock)]
async fn kernel_spliced_sessions_carry_everything_and_end_cleanly() {
    let _slot = one_cluster_at_a_time();
    let OnePostgres {
        dir,
        etcd,
        pg,
        router,
    } = OnePostgres::start(
        "router-splice",
        "kernel_splice = true\nbusy_poll_max_sessions = 1",
        "",
    )
    .await;
    put_member(&etcd.endpoint, "pg1", pg.port, "primary").await;
    put_leader(&etcd.endpoint, "pg1").await;
    let spliced = "baton_router_connections_spliced_total{scope=\"rt\",route=\"read_write\"}";
    let to_client = "baton_router_bytes_to_client_total{scope=\"rt\",route=\"read_write\"}";
    let to_server = "baton_router_bytes_to_server_total{scope=\"rt\",route=\"read_write\"}";

    // The first session is alone on the route: busy-polled, not spliced.
    let lone = connect(router.rw_port).await;
    lone.simple_query("SELECT 1").await.unwrap();
    assert_eq!(router_metric(&router, spliced).await, 0.0);

    let (client, conn) = baton_local::workload::loopback(router.rw_port, Duration::from_secs(10))
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting through the router: {}", pg_error(&e)));
    let conn = tokio::spawn(conn);
    assert_eq!(
        router_metric(&router, spliced).await,
        1.0,
        "the session was not handed to the kernel; router log:\n{}",
        std::fs::read_to_string(dir.path.join("router.log")).unwrap_or_default()
    );
    // 20 MB to the client, 4 MB to the server, each checked whole.
    let rows = client
        .query(
            "SELECT i, repeat(md5(i::text), 32) FROM generate_series(1, 20000) i",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), 20000);
    for (n, r) in rows.iter().enumerate() {
        assert_eq!(r.get::<_, i32>(0), n as i32 + 1);
        assert_eq!(r.get::<_, &str>(1).len(), 1024);
    }
    let big: String = (0..4 << 20)
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let row = client
        .query_one("SELECT length($1::text), md5($1::text)", &[&big])
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), big.len() as i32);
    let direct = connect(pg.port).await;
    let expected: String = direct
        .query_one("SELECT md5($1::text)", &[&big])
        .await
        .unwrap()
        .get(0);
    assert_eq!(row.get::<_, String>(1), expected);

    // The server ends the session: its FATAL message arrives before the
    // end of the stream.
    let pid: i32 = client
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    direct
        .execute("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the spliced session ends when its backend is terminated")
        .unwrap();
    let e = ended.expect_err("the session ends with the server's error");
    assert_eq!(
        e.code(),
        Some(&tokio_postgres::error::SqlState::ADMIN_SHUTDOWN),
        "not the server's FATAL message: {e}"
    );
    wait_for(
        "the spliced bytes counted",
        Duration::from_secs(10),
        || async {
            let (c, s) = (
                router_metric(&router, to_client).await,
                router_metric(&router, to_server).await,
            );
            if c > 20e6 && s > 4e6 {
                Ok(())
            } else {
                Err(format!("{c} bytes to the client, {s} to the server"))
            }
        },
    )
    .await;

    // A client that reads nothing while the server sends 16 MB and then
    // ends the session: the kernel holds what the client has not taken
    // yet when the router sees the server's end of stream, and all of it
    // still arrives, the FATAL last.
    let (rows, last) = slow_reader_of_a_closing_server(router.rw_port, &direct).await;
    assert_eq!(router_metric(&router, spliced).await, 2.0);
    // 16 rows of 1 MB, and pg_terminate_backend's own `t`.
    assert_eq!(rows, 17, "rows before the end of the stream");
    assert_eq!(
        wire_sqlstate(&last).as_deref(),
        Some("57P01"),
        "the last message is not the server's FATAL: {:?}",
        String::from_utf8_lossy(&last)
    );

    // TLS: paired before the server's `S` reaches the client, so the
    // handshake and the session go through the kernel.
    assert_tls_end_to_end(router.rw_port);
    assert_eq!(router_metric(&router, spliced).await, 3.0);

    // A spliced writer is closed when its backend stops being the primary.
    let client = connect(router.rw_port).await;
    client.simple_query("SELECT 1").await.unwrap();
    assert_eq!(router_metric(&router, spliced).await, 4.0);
    put_leader(&etcd.endpoint, "elsewhere").await;
    wait_for(
        "the spliced writer closed",
        Duration::from_secs(10),
        || async {
            match client.simple_query("SELECT 1").await {
                Ok(_) => Err("still open".to_string()),
                Err(_) => Ok(()),
            }
        },
    )
    .await;
    let closed =
        "baton_router_connections_closed_on_demotion_total{scope=\"rt\",route=\"read_write\"}";
    // With the lone busy-polled session.
    wait_for(
        "both writers counted closed",
        Duration::from_secs(10),
        || async {
            match router_metric(&router, closed).await {
                2.0 => Ok(()),
                n => Err(format!("{n} closed")),
            }
        },
    )
    .await;
    assert!(lone.simple_query("SELECT 1").await.is_err());
}

/// Speaks the protocol by hand through `port`: starts a session, asks for
/// 16 rows of 1 MB and then the session's own end, reads nothing until
/// the server process is gone (`direct` checks), then reads to the end of
/// the stream. The number of rows and the last message.
async fn slow_reader_of_a_closing_server(
    port: u16,
    direct: &tokio_postgres::Client,
) -> (usize, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn message(s: &mut tokio::net::TcpStream) -> Option<Vec<u8>> {
        let mut head = [0u8; 5];
        s.read_exact(&mut head).await.ok()?;
        let len = u32::from_be_bytes(head[1..5].try_into().unwrap()) as usize;
        let mut msg = head.to_vec();
        msg.resize(1 + len, 0);
        s.read_exact(&mut msg[5..]).await.ok()?;
        Some(msg)
    }
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let body = b"\0\x03\0\0user\0postgres\0database\0postgres\0\0";
    let mut startup = ((body.len() + 4) as u32).to_be_bytes().to_vec();
    startup.extend_from_slice(body);
    s.write_all(&startup).await.unwrap();
    let mut pid = None;
    loop {
        let m = message(&mut s).await.expect("the greeting");
        match m[0] {
            b'K' => pid = Some(i32::from_be_bytes(m[5..9].try_into().unwrap())),
            b'Z' => break,
            b'E' => panic!("refused: {:?}", String::from_utf8_lossy(&m)),
            _ => {}
        }
    }
    let pid = pid.expect("BackendKeyData in the greeting");
    let sql = b"SELECT repeat('x', 1048576) FROM generate_series(1, 16); SELECT pg_terminate_backend(pg_backend_pid())\0";
    let mut q = vec![b'Q'];
    q.extend_from_slice(&((sql.len() + 4) as u32).to_be_bytes());
    q.extend_from_slice(sql);
    s.write_all(&q).await.unwrap();
    wait_for(
        "the server process gone",
        Duration::from_secs(20),
        || async {
            let n: i64 = direct
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE pid = $1",
                    &[&pid],
                )
                .await
                .map_err(|e| pg_error(&e))?
                .get(0);
            if n == 0 {
                Ok(())
            } else {
                Err(format!("backend {pid} still there"))
            }
        },
    )
    .await;
    let (mut rows, mut last) = (0, vec![]);
    let read_all = async {
        while let Some(m) = message(&mut s).await {
            if m[0] == b'D' {
                rows += 1;
            }
            last = m;
        }
    };
    tokio::time::timeout(Duration::from_secs(20), read_all)
        .await
        .expect("the stream ends");
    (rows, last)
}

/// The SQLSTATE of an ErrorResponse.
fn wire_sqlstate(msg: &[u8]) -> Option<String> {
    if msg.first() != Some(&b'E') {
        return None;
    }
    msg[5..]
        .split(|&b| b == 0)
        .find_map(|f| f.strip_prefix(b"C"))
        .map(|c| String::from_utf8_lossy(c).into_owned())
}
