//! Issue 13: a cluster of several groups, each its own HA unit under one
//! scope (Patroni's Citus layout, `<namespace>/<scope>/<group>/`), shaped
//! like OpenTenBase: a coordinator group and a datanode group. After either
//! group's promotion its new leader runs the routing statements on the
//! leader of every group, itself included, as runbook 000 does by hand on
//! every coordinator and datanode.
//!
//! **Stand-in, not OpenTenBase**: both groups run PostgreSQL 15. The node
//! catalog is a table (`pgxc_node`) on each group's primary, `ALTER NODE`
//! is an UPDATE of it, and `pgxc_pool_reload()` is a function that records
//! its calls and, like the real one, refuses to run in a transaction block
//! (here: in a transaction that already wrote, which is what sending the
//! statements as one query would make it).

mod common;

use std::time::Duration;

use baton_core::status::ClusterState;
use baton_local::local::{ClusterOptions, LocalCluster};
use common::*;

const SCOPE: &str = "otb";

/// The catalog stand-in, created on a group's primary (its standby gets
/// it by replication, as a real catalog would).
const CATALOG: &[&str] = &[
    "CREATE TABLE pgxc_node (node_name text PRIMARY KEY, node_host text, node_port int, \
     node_forward_port int)",
    "INSERT INTO pgxc_node VALUES ('cn01', 'nowhere', 0, 0), ('dn01', 'nowhere', 0, 0)",
    "CREATE TABLE pool_reloads (at timestamptz DEFAULT clock_timestamp())",
    "CREATE FUNCTION pgxc_pool_reload() RETURNS boolean LANGUAGE plpgsql AS $$
     BEGIN
       IF txid_current_if_assigned() IS NOT NULL THEN
         RAISE EXCEPTION 'pgxc_pool_reload cannot run inside a transaction block';
       END IF;
       INSERT INTO pool_reloads DEFAULT VALUES;
       RETURN true;
     END $$",
];

/// `[routing]` of a member of the group whose catalog name is `node`.
/// (`ALTER NODE node WITH (HOST=..., PORT=...[, FORWARD=...])`).
fn routing(node: &str, forward: bool) -> String {
    let forward = if forward {
        ", node_forward_port = {forward_port}"
    } else {
        ""
    };
    format!(
        "[routing]\n\
         statements = [\"UPDATE pgxc_node SET node_host = '{{host}}', node_port = {{port}}{forward} WHERE node_name = '{node}'\", \"SELECT pgxc_pool_reload()\"]\n\
         groups = [0, 1]\n\
         retry_interval = 0.5\n\
         check_interval = 2\n"
    )
}

fn group(
    dir: &std::path::Path,
    g: u32,
    prefix: &str,
    etcd: Option<String>,
    forward: bool,
) -> LocalCluster {
    let opts = ClusterOptions {
        scope: SCOPE.into(),
        nodes: 2,
        group: Some(g),
        etcd_endpoint: etcd,
        node_prefix: prefix.into(),
        ..Default::default()
    };
    let sub = dir.join(format!("group{g}"));
    let c = LocalCluster::create(&sub, &baton_bin(), &opts).expect("creating a group");
    let node = if g == 0 { "cn01" } else { "dn01" };
    for (i, n) in c.nodes.iter().enumerate() {
        if forward {
            // OpenTenBase's datanode forward port, a setting of its own.
            let path = &n.config_path;
            let text = std::fs::read_to_string(path).unwrap();
            let anchor = "shared_buffers = \"32MB\"\n";
            assert!(text.contains(anchor), "{}", path.display());
            let port = format!("forward_port = \"{}\"\n", n.pg_port + 1000);
            std::fs::write(path, text.replace(anchor, &(anchor.to_string() + &port))).unwrap();
        }
        c.append_config(i, &routing(node, forward)).unwrap();
    }
    c
}

/// Starts the first node, then the second, and waits for Normal.
async fn start(c: &mut LocalCluster) {
    let first = c.nodes[0].name.clone();
    c.start_agent(0).unwrap();
    wait_for(
        &format!("{first} leading"),
        Duration::from_secs(60),
        || async {
            let s = c.status().await.map_err(|e| format!("{e:#}"))?;
            if s.leader.as_deref() == Some(first.as_str())
                && s.members.iter().any(|m| m.state == "running")
            {
                Ok(())
            } else {
                Err(s.render())
            }
        },
    )
    .await;
    c.start_agent(1).unwrap();
    c.wait_normal(Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
}

/// Kills a group's first node (its leader), agent and postgres together;
/// the port of the second, once it leads.
async fn fail_over(c: &mut LocalCluster) -> u16 {
    let (old, new) = (c.nodes[0].name.clone(), c.nodes[1].name.clone());
    c.kill_agent(0);
    c.kill_postgres(0);
    let leader = c
        .wait_new_leader(&old, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(leader, new);
    c.nodes[1].pg_port
}

/// Waits until a connection through the router at `router` lands on the
/// postgres at `want`.
async fn wait_routed(router: u16, want: u16, what: &str, limit: Duration) {
    wait_for(what, limit, || async {
        let rows = sql_port(router, "SELECT inet_server_port()").await?;
        match rows[0].get::<_, i32>(0) {
            p if p == i32::from(want) => Ok(()),
            p => Err(format!("routed to {p}")),
        }
    })
    .await;
}

/// The leader's port of a group, from etcd.
async fn leader_port(c: &LocalCluster) -> u16 {
    let v = c.view().await.unwrap();
    v.leader_member().and_then(|m| m.pg_address()).unwrap().1
}

/// Where `node` points in the catalog on the postgres at `port`, and how
/// many pool reloads it has seen.
async fn catalog(port: u16, node: &str) -> Result<(String, i32, i64), String> {
    let rows = sql_port(
        port,
        &format!(
            "SELECT node_host, node_port, (SELECT count(*) FROM pool_reloads) \
             FROM pgxc_node WHERE node_name = '{node}'"
        ),
    )
    .await?;
    let r = rows.first().ok_or("no row")?;
    Ok((r.get(0), r.get(1), r.get(2)))
}

/// Waits until the catalog on `port` points `node` at `want`, reloaded at
/// least `reloads` times.
async fn wait_catalog(port: u16, node: &str, want: u16, reloads: i64, what: &str) -> i64 {
    wait_for(what, Duration::from_secs(30), || async {
        match catalog(port, node).await? {
            (h, p, n) if h == "127.0.0.1" && p == want as i32 && n >= reloads => Ok(n),
            other => Err(format!("{other:?}")),
        }
    })
    .await
}

/// The cluster's own tools stand-in: `node`'s data directory, created
/// before Baton runs, with the node catalog stand-in in it.
async fn created_by_the_cluster_tools(
    dir: &std::path::Path,
    node: &baton_local::local::LocalNode,
    catalog: &[&str],
) {
    let work = dir.join(format!("init-{}", node.name));
    std::fs::create_dir_all(&work).unwrap();
    baton_local::local::open_dir(&work).unwrap();
    let pg = baton_local::local::LocalPostgres::start(&work, &node.name, "")
        .await
        .unwrap();
    for sql in catalog {
        sql_port(pg.port, sql).await.unwrap();
    }
    pg.stop().await.unwrap();
    std::fs::rename(&pg.data_dir, &node.data_dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_groups_failover_reroutes_every_groups_leader_opentenbase_standin() {
    let _serial = Serial(one_cluster_at_a_time());
    let dir = TestDir::new("groups");
    let mut cn = group(&dir.path, 0, "cn", None, false);
    let mut dn = group(&dir.path, 1, "dn", Some(cn.etcd.endpoint.clone()), false);
    start(&mut cn).await;
    start(&mut dn).await;

    // Each group is its own HA unit under the scope: `baton list` without
    // a group shows both.
    let etcd = cn.etcd.endpoint.clone();
    let list = |args: &[&str]| {
        let mut all = vec![args[0], "--etcd", &etcd, "--scope", SCOPE];
        all.extend_from_slice(&args[1..]);
        let out = run_baton(&all);
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr)
    };
    let out = list(&["list"]);
    assert!(
        out.contains("Cluster: otb group 0 (")
            && out.contains("Cluster: otb group 1 (")
            && out.contains("cn1")
            && out.contains("dn2")
            && out.matches("state: Normal").count() == 2,
        "{out}"
    );
    let json: serde_json::Value = serde_json::from_str(&list(&["list", "--json"])).unwrap();
    assert_eq!(json["groups"]["1"]["leader"], "dn1", "{json}");
    let one = list(&["list", "--group", "1"]);
    assert!(one.contains("dn1") && !one.contains("cn1"), "{one}");
    // A command about one group says which there are when none is named.
    let out = list(&["history"]);
    assert!(
        out.contains("otb is a multi-group cluster (groups 0, 1): name one with --group N"),
        "{out}"
    );

    // A router of the datanode group reaches that group's primary.
    let router = baton_local::local::LocalRouter::start(
        &dir.path,
        &baton_bin(),
        "router-dn",
        (SCOPE, &etcd),
        "group = 1",
        "",
    )
    .unwrap();
    wait_routed(
        router.rw_port,
        dn.nodes[0].pg_port,
        "the group's router at dn1",
        Duration::from_secs(10),
    )
    .await;

    // patronictl reads the same layout (Patroni's Citus groups).
    let out = patronictl_list(&dir.path, &etcd);
    for (group, member, role) in [
        ("0", "cn1", "Leader"),
        ("0", "cn2", "Replica"),
        ("1", "dn1", "Leader"),
        ("1", "dn2", "Replica"),
    ] {
        assert!(
            out.lines().any(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                cells.len() > 4 && cells[1] == group && cells[2] == member && cells[4] == role
            }),
            "patronictl list shows no {member} ({role}) in group {group}:\n{out}"
        );
    }

    // The catalogs do not exist yet: each leader's routing is pending,
    // and says why, until they are created.
    let (cn_port, dn_port) = (leader_port(&cn).await, leader_port(&dn).await);
    wait_for(
        "routing pending on the missing catalog",
        Duration::from_secs(20),
        || async {
            let out = list(&["list", "--verbose", "--group", "1"]);
            if out.contains("group0:cn1") && out.contains("pending") && out.contains("pgxc_node") {
                Ok(())
            } else {
                Err(out)
            }
        },
    )
    .await;
    for port in [cn_port, dn_port] {
        for sql in CATALOG {
            sql_port(port, sql).await.unwrap();
        }
    }
    // Every group's leader, itself included, learns where each primary is.
    for (port, name) in [(cn_port, "coordinator"), (dn_port, "datanode")] {
        wait_catalog(port, "cn01", cn_port, 1, &format!("{name}: cn01 at cn1")).await;
        wait_catalog(port, "dn01", dn_port, 1, &format!("{name}: dn01 at dn1")).await;
    }
    let reloads_cn = catalog(cn_port, "dn01").await.unwrap().2;

    // The datanode group's primary dies: its standby is promoted, and its
    // routing reaches the coordinator group's leader and itself.
    let dn2 = fail_over(&mut dn).await;
    wait_routed(
        router.rw_port,
        dn2,
        "the group's router at dn2",
        Duration::from_secs(20),
    )
    .await;
    wait_catalog(
        cn_port,
        "dn01",
        dn2,
        reloads_cn + 1,
        "coordinator: dn01 at dn2",
    )
    .await;
    wait_catalog(
        dn2,
        "dn01",
        dn2,
        1,
        "the promoted datanode itself: dn01 at dn2",
    )
    .await;
    // Its status says so (the member key catches up on the next tick).
    wait_for(
        "dn2's routing ok on both group leaders",
        Duration::from_secs(10),
        || async {
            let out = list(&["list", "--verbose", "--group", "1"]);
            let lines: Vec<&str> = out
                .lines()
                .filter(|l| l.trim_start().starts_with("group"))
                .collect();
            if lines.len() == 2 && lines.iter().all(|l| l.contains(" ok ")) {
                Ok(())
            } else {
                Err(out)
            }
        },
    )
    .await;

    // The coordinator group fails over too: its new leader updates the
    // datanode group's new leader (and itself), under its new address.
    let cn2 = fail_over(&mut cn).await;
    wait_catalog(dn2, "cn01", cn2, 1, "datanode: cn01 at cn2").await;
    wait_catalog(cn2, "cn01", cn2, 1, "the promoted coordinator: cn01 at cn2").await;
    // The datanode group's leader re-checks the coordinator group's new
    // leader too: a new leader is a new endpoint.
    wait_for(
        "dn2's routing reaching cn2",
        Duration::from_secs(20),
        || async {
            let out = list(&["list", "--verbose", "--group", "1"]);
            if out
                .lines()
                .any(|l| l.contains("group0:cn2") && l.contains(" ok "))
            {
                Ok(())
            } else {
                Err(out)
            }
        },
    )
    .await;
    let s = dn.status().await.unwrap();
    assert_eq!(s.leader.as_deref(), Some("dn2"));
    assert_ne!(s.state, ClusterState::Unavailable, "{}", s.render());

    // The datanode group's agents first: the etcd they use is cn's.
    dn.shutdown();
    cn.shutdown();
}

/// patronictl from the virtualenv scripts/test makes (`ensure_patroni`),
/// or `$PATRONICTL`.
fn patronictl_list(dir: &std::path::Path, etcd: &str) -> String {
    let bin = std::env::var_os("PATRONICTL")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../target/patroni-venv/bin/patronictl")
        });
    assert!(
        bin.exists(),
        "{} is missing: scripts/test installs patronictl (scripts/lib.sh, ensure_patroni), or set PATRONICTL",
        bin.display()
    );
    let cfg = dir.join("patronictl.yaml");
    let hosts = etcd.trim_start_matches("http://");
    std::fs::write(
        &cfg,
        format!(
            "scope: {SCOPE}\nnamespace: /service/\ncitus:\n  group: 0\n  database: postgres\netcd3:\n  hosts: {hosts}\n"
        ),
    )
    .unwrap();
    let out = std::process::Command::new(&bin)
        .arg("-c")
        .arg(&cfg)
        .arg("list")
        .output()
        .expect("running patronictl");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "patronictl list failed: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

/// OpenTenBase's own commands (stand-in: tests/standins/opentenbase):
/// coordinators and datanodes started with `pg_ctl -Z`, standbys from
/// PostgreSQL 10's recovery.conf, a datanode failover routed to every
/// group, and the killed old primary rejoining by PostgreSQL 10's
/// pg_rewind, which needs it recovered and cleanly stopped first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opentenbase_nodes_fail_over_and_rejoin_by_rewind_standin() {
    let _serial = Serial(one_cluster_at_a_time());
    let dir = TestDir::new("opentenbase");
    let bin = standin_bin(&dir.path, "opentenbase");
    let mut cn = group(&dir.path, 0, "cn", None, false);
    let mut dn = group(&dir.path, 1, "dn", Some(cn.etcd.endpoint.clone()), true);
    set_flavor(
        &cn.nodes,
        "flavor = \"opentenbase\"\nnode_type = \"coordinator\"",
        &bin,
    );
    set_flavor(
        &dn.nodes,
        "flavor = \"opentenbase\"\nnode_type = \"datanode\"",
        &bin,
    );
    for c in [&cn, &dn] {
        created_by_the_cluster_tools(&dir.path, &c.nodes[0], CATALOG).await;
    }
    start(&mut cn).await;
    start(&mut dn).await;
    let standin_log = || std::fs::read_to_string(bin.join("standin.log")).unwrap();
    let log = standin_log();
    assert!(
        log.contains("pg_ctl start -Z coordinator") && log.contains("pg_ctl start -Z datanode"),
        "{log}"
    );
    assert!(!log.contains("refused"), "{log}");
    let dn_port = leader_port(&dn).await;
    let recovery = std::fs::read_to_string(dn.nodes[1].data_dir.join("recovery.conf")).unwrap();
    assert!(
        recovery.contains("standby_mode = 'on'")
            && recovery.contains(&format!("port={dn_port} "))
            && recovery.contains("primary_slot_name = 'dn2'"),
        "{recovery}"
    );
    let cn_port = leader_port(&cn).await;
    for port in [cn_port, dn_port] {
        wait_catalog(port, "dn01", dn_port, 1, "dn01 at dn1").await;
        wait_catalog(port, "cn01", cn_port, 1, "cn01 at cn1").await;
    }
    let reloads = catalog(cn_port, "dn01").await.unwrap().2;

    // The datanode primary dies: its standby is promoted (PostgreSQL 10
    // keeps recovery.done), every group's leader is re-routed.
    let dn2 = fail_over(&mut dn).await;
    assert!(dn.nodes[1].data_dir.join("recovery.done").exists());
    wait_catalog(
        cn_port,
        "dn01",
        dn2,
        reloads + 1,
        "coordinator: dn01 at dn2",
    )
    .await;
    wait_catalog(dn2, "dn01", dn2, 1, "the promoted datanode: dn01 at dn2").await;
    let forward: i32 = sql_port(
        cn_port,
        "SELECT node_forward_port FROM pgxc_node WHERE node_name = 'dn01'",
    )
    .await
    .unwrap()[0]
        .get(0);
    assert_eq!(
        forward,
        i32::from(dn2) + 1000,
        "FORWARD follows the new datanode"
    );

    // The old primary comes back: crashed, so it recovers read-only and
    // stops cleanly before pg_rewind, then streams from dn2.
    dn.start_agent(0).unwrap();
    dn.wait_normal(Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let log = standin_log();
    assert!(
        log.contains("pg_rewind target state: shut down in recovery")
            && log.contains("pg_rewind exit 0"),
        "{log}"
    );
    let parent = dn.nodes[0].data_dir.parent().unwrap();
    let moved_aside: Vec<_> = std::fs::read_dir(parent)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains("baton-old"))
        .collect();
    assert!(
        moved_aside.is_empty(),
        "dn1 was rebuilt, not rewound: {moved_aside:?}"
    );
    let recovery = std::fs::read_to_string(dn.nodes[0].data_dir.join("recovery.conf")).unwrap();
    assert!(recovery.contains(&format!("port={dn2} ")), "{recovery}");

    // A switchover back: the old primary stops cleanly and follows from
    // recovery.conf, the catalogs follow the new one.
    let (old, _) = dn
        .switchover_via_api()
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(old, "dn2");
    let dn1 = dn.nodes[0].pg_port;
    wait_catalog(cn_port, "dn01", dn1, 1, "coordinator: dn01 back at dn1").await;
    dn.wait_normal(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let recovery = std::fs::read_to_string(dn.nodes[1].data_dir.join("recovery.conf")).unwrap();
    assert!(recovery.contains(&format!("port={dn1} ")), "{recovery}");

    // The coordinator primary dies too: the datanode group's leader (dn1
    // again) and the promoted coordinator itself learn where it is.
    let cn2 = fail_over(&mut cn).await;
    wait_catalog(dn1, "cn01", cn2, 1, "datanode: cn01 at cn2").await;
    wait_catalog(cn2, "cn01", cn2, 1, "the promoted coordinator: cn01 at cn2").await;

    dn.shutdown();
    cn.shutdown();
}

/// What an OpenTenBase node answers while its GTM is out of reach (SQLSTATE
/// 08006 from the server itself, on an open session) is told apart from a
/// node that is down or a query that merely failed: the agent then reports
/// `gtm_unreachable` and changes nothing (unit tests of `decide`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gtm_error_is_told_from_a_node_that_is_down() {
    let _serial = Serial(one_cluster_at_a_time());
    let dir = TestDir::new("gtm-error");
    let pg = baton_local::local::LocalPostgres::start(&dir.path, "dn", "")
        .await
        .unwrap();
    let connect = || async {
        let (client, conn) = tokio_postgres::connect(
            &format!(
                "host=127.0.0.1 port={} user=postgres dbname=postgres",
                pg.port
            ),
            tokio_postgres::NoTls,
        )
        .await?;
        tokio::spawn(conn);
        Ok::<_, tokio_postgres::Error>(client)
    };
    let client = connect().await.unwrap();
    let gtm = client
        .batch_execute(
            "DO $$ BEGIN RAISE EXCEPTION 'GTM error, could not obtain global timestamp' \
             USING ERRCODE = '08006'; END $$",
        )
        .await
        .unwrap_err();
    assert!(baton::pg::PgError::Db(gtm).is_gtm_unreachable());
    let other = client.batch_execute("SELECT nonsense").await.unwrap_err();
    assert!(!baton::pg::PgError::Db(other).is_gtm_unreachable());
    pg.stop().await.unwrap();
    let down = connect().await.unwrap_err();
    let down = baton::pg::PgError::Db(down);
    assert!(
        !down.is_gtm_unreachable() && down.is_unreachable(),
        "{down}"
    );
}

/// The coordinators and datanodes of the OpenTenBase-shaped cluster:
/// `(group, catalog name, node_type)`. Group 0 is the GTM's.
const SHAPE: [(u32, &str, &str); 4] = [
    (1, "cn01", "coordinator"),
    (2, "cn02", "coordinator"),
    (3, "dn01", "datanode"),
    (4, "dn02", "datanode"),
];

/// The catalog stand-in of every coordinator and datanode of the shaped
/// cluster: a row per node, and the GTM's entry.
const SHAPE_CATALOG: &[&str] = &[
    "CREATE TABLE pgxc_node (node_name text PRIMARY KEY, node_host text, node_port int, \
     node_forward_port int)",
    "INSERT INTO pgxc_node VALUES ('cn01', 'nowhere', 0, 0), ('cn02', 'nowhere', 0, 0), \
     ('dn01', 'nowhere', 0, 0), ('dn02', 'nowhere', 0, 0)",
    "CREATE TABLE pool_reloads (at timestamptz DEFAULT clock_timestamp())",
    "CREATE FUNCTION pgxc_pool_reload() RETURNS boolean LANGUAGE plpgsql AS $$
     BEGIN
       IF txid_current_if_assigned() IS NOT NULL THEN
         RAISE EXCEPTION 'pgxc_pool_reload cannot run inside a transaction block';
       END IF;
       INSERT INTO pool_reloads DEFAULT VALUES;
       RETURN true;
     END $$",
    "CREATE TABLE pgxc_gtm (node_name text PRIMARY KEY, host text, port int)",
    "INSERT INTO pgxc_gtm VALUES ('gtm', 'nowhere', 0)",
    // A write needs a global timestamp from the GTM the catalog names:
    // asked over its (stand-in) protocol, failing as OpenTenBase does.
    "CREATE TABLE gtm_writes (gts bigint)",
    "CREATE FUNCTION gtm_timestamp() RETURNS bigint LANGUAGE plpgsql AS $$
     DECLARE h text; p int; answer text;
     BEGIN
       SELECT host, port INTO h, p FROM pgxc_gtm WHERE node_name = 'gtm';
       CREATE TEMP TABLE IF NOT EXISTS gtm_answer (l text);
       TRUNCATE gtm_answer;
       EXECUTE format('COPY gtm_answer FROM PROGRAM %L', format('bash -c %L',
         format('exec 3<>/dev/tcp/%s/%s && echo gts >&3 && head -1 <&3', h, p)));
       SELECT l INTO answer FROM gtm_answer LIMIT 1;
       IF answer IS NULL OR answer NOT LIKE 'gts %' THEN
         RAISE EXCEPTION 'GTM error, could not obtain global timestamp' USING ERRCODE = '08006';
       END IF;
       RETURN split_part(answer, ' ', 2)::bigint;
     END $$",
];

/// `initgtm` stand-in: a GTM working directory with its `gtm.conf`,
/// owned by the postgres OS user, as OpenTenBase's tools leave it.
fn initgtm(node: &baton_local::local::LocalNode) {
    std::fs::create_dir_all(&node.data_dir).unwrap();
    let conf = node.data_dir.join("gtm.conf");
    std::fs::write(
        &conf,
        "# made by initgtm\nnodename = 'gtm'\nlisten_addresses = '*'\nport = 6666\n\
         log_min_messages = WARNING\n",
    )
    .unwrap();
    let pg = nix::unistd::User::from_name("postgres").unwrap().unwrap();
    for p in [&node.data_dir, &conf] {
        std::os::unix::fs::chown(p, Some(pg.uid.as_raw()), Some(pg.gid.as_raw())).unwrap();
    }
    std::fs::set_permissions(
        &node.data_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
}

/// Where the GTM catalog (the stand-in for `ALTER GTM NODE gtm WITH
/// (HOST=..., PORT=...)`) on the postgres at `port` points.
async fn gtm_catalog(port: u16) -> Result<(String, i32), String> {
    let rows = sql_port(
        port,
        "SELECT host, port FROM pgxc_gtm WHERE node_name = 'gtm'",
    )
    .await?;
    let r = rows.first().ok_or("no row")?;
    Ok((r.get(0), r.get(1)))
}

async fn wait_gtm_catalog(port: u16, want: u16, what: &str) {
    wait_for(what, Duration::from_secs(30), || async {
        match gtm_catalog(port).await? {
            (h, p) if h == "127.0.0.1" && p == i32::from(want) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

/// `gtm_ctl status` of the GTM at `port`, through the stand-in.
fn gtm_role(bin: &std::path::Path, port: u16) -> String {
    let out = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(bin.join("gtm_ctl"))
        .args(["status", "-Z", "gtm", "-P", &port.to_string()])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The shaped cluster's groups: the GTM pair first, then a primary and a
/// standby per coordinator and datanode, all under one scope and etcd.
fn shaped_cluster(dir: &std::path::Path, bin: &std::path::Path) -> Vec<LocalCluster> {
    let mut groups: Vec<LocalCluster> = vec![];
    let all: Vec<(u32, &str, &str)> = std::iter::once((0, "gtm", "gtm")).chain(SHAPE).collect();
    for (g, name, node_type) in all {
        let opts = ClusterOptions {
            scope: SCOPE.into(),
            nodes: 2,
            group: Some(g),
            etcd_endpoint: groups.first().map(|c| c.etcd.endpoint.clone()),
            node_prefix: name.into(),
            ..Default::default()
        };
        let c = LocalCluster::create(&dir.join(format!("group{g}")), &baton_bin(), &opts)
            .expect("creating a group");
        set_flavor(
            &c.nodes,
            &format!("flavor = \"opentenbase\"\nnode_type = \"{node_type}\""),
            bin,
        );
        for (i, n) in c.nodes.iter().enumerate() {
            let routing = if g == 0 {
                // gtm.conf settings of the node file: PostgreSQL's are no GTM's.
                let text = std::fs::read_to_string(&n.config_path).unwrap();
                let pg = "shared_buffers = \"32MB\"\nmax_connections = 40\n";
                assert!(text.contains(pg), "{}", n.config_path.display());
                std::fs::write(
                    &n.config_path,
                    text.replace(pg, &format!("nodename = \"gtm{}\"\n", i + 1)),
                )
                .unwrap();
                "statements = \"UPDATE pgxc_gtm SET host = '{host}', port = {port} WHERE node_name = 'gtm'\"\n\
                 verify = \"INSERT INTO gtm_writes SELECT gtm_timestamp()\"\n\
                 verify_timeout = 3\n".to_string()
            } else {
                format!(
                    "statements = [\"UPDATE pgxc_node SET node_host = '{{host}}', node_port = {{port}} WHERE node_name = '{name}'\", \"SELECT pgxc_pool_reload()\"]\n"
                )
            };
            c.append_config(
                i,
                &format!(
                    "[routing]\n{routing}groups = [1, 2, 3, 4]\nretry_interval = 0.5\ncheck_interval = 2\n"
                ),
            )
            .unwrap();
        }
        groups.push(c);
    }
    groups
}

/// The leader's postgres port of each coordinator and datanode group.
async fn shape_leaders(groups: &[LocalCluster]) -> Vec<u16> {
    let mut ports = vec![];
    for c in &groups[1..] {
        ports.push(leader_port(c).await);
    }
    ports
}

/// Every coordinator's and datanode's leader catalog names `node` at
/// `want`, reloaded at least `reloads` times (per leader, in order).
async fn wait_everywhere(
    groups: &[LocalCluster],
    node: &str,
    want: u16,
    reloads: &[i64],
    what: &str,
) {
    for (i, port) in shape_leaders(groups).await.into_iter().enumerate() {
        wait_catalog(
            port,
            node,
            want,
            reloads[i],
            &format!("{what} (group {})", i + 1),
        )
        .await;
    }
}

/// Pool reloads seen so far on each coordinator's and datanode's leader.
async fn reloads(groups: &[LocalCluster]) -> Vec<i64> {
    let mut out = vec![];
    for port in shape_leaders(groups).await {
        out.push(catalog(port, "cn01").await.unwrap().2);
    }
    out
}

/// Runbook 000's whole cluster, OpenTenBase-shaped: a GTM group (an active
/// GTM and its standby, run by `gtm_ctl`), two coordinator and two
/// datanode groups with a standby each. A datanode primary dies: its
/// standby is promoted and every coordinator and datanode leader gets `ALTER
/// NODE` + `pgxc_pool_reload()` for it, the coordinator that is down at
/// that moment once it is back; the same for a coordinator; then the
/// active GTM dies: its standby is promoted with `gtm_ctl promote` and every
/// node gets `ALTER GTM NODE`; the promotion is verified by a write
/// through a coordinator, and once the new GTM stops giving timestamps it
/// counts as failed and the GTM is started again. The old active rejoins
/// as a standby (it
/// takes the active's state: nothing to rewind). Then both GTMs go down:
/// with no read-only mode to elect from, only the last leader restarts the
/// GTM group.
///
/// **Stand-ins, not OpenTenBase**: the GTM is `tests/standins/opentenbase/
/// gtm` (files, signals and `gtm_ctl` output of the real one, a line
/// protocol of its own); coordinators and datanodes are PostgreSQL 15
/// behind the `pg_ctl -Z` stand-in, their node catalog a table (`ALTER
/// NODE` an UPDATE of it) and `pgxc_gtm` the GTM's entry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opentenbase_shaped_cluster_routes_every_failover_to_every_node_standin() {
    let _serial = Serial(one_cluster_at_a_time());
    let dir = TestDir::new("otb-shape");
    let bin = standin_bin(&dir.path, "opentenbase");
    let mut groups = shaped_cluster(&dir.path, &bin);
    initgtm(&groups[0].nodes[0]);
    for c in &groups[1..] {
        created_by_the_cluster_tools(&dir.path, &c.nodes[0], SHAPE_CATALOG).await;
    }
    // Each group's first member adopts its directory; the standbys clone.
    for c in groups.iter_mut() {
        c.start_agent(0).unwrap();
        c.start_agent(1).unwrap();
    }
    for c in &groups {
        c.wait_normal(Duration::from_secs(120))
            .await
            .unwrap_or_else(|e| panic!("{e:#}"));
    }
    let gtm1 = groups[0].nodes[0].pg_port;
    let gtm2 = groups[0].nodes[1].pg_port;
    assert_eq!(groups[0].view().await.unwrap().leader_name(), Some("gtm1"));
    assert!(gtm_role(&bin, gtm1).contains("current node [primary]"));
    let standby = gtm_role(&bin, gtm2);
    assert!(standby.contains("current node [standby]"), "{standby}");
    let conf = std::fs::read_to_string(groups[0].nodes[1].data_dir.join("gtm.conf")).unwrap();
    assert!(
        conf.contains("startup = STANDBY")
            && conf.contains(&format!("active_port = {gtm1}"))
            && conf.contains("nodename = 'gtm2'"),
        "{conf}"
    );
    let conf = std::fs::read_to_string(groups[0].nodes[0].data_dir.join("gtm.conf")).unwrap();
    assert!(
        conf.contains("# made by initgtm") && conf.contains("log_min_messages = WARNING"),
        "the operator's lines are kept: {conf}"
    );
    for (i, (_, name, _)) in SHAPE.iter().enumerate() {
        let at = leader_port(&groups[i + 1]).await;
        wait_everywhere(
            &groups,
            name,
            at,
            &[1; 4],
            &format!("{name} at its first leader"),
        )
        .await;
    }
    for port in shape_leaders(&groups).await {
        wait_gtm_catalog(port, gtm1, "every node's catalog names gtm1").await;
    }

    // cn02 is down (both its members); then dn01's primary dies.
    let before = reloads(&groups).await;
    groups[2].kill_agent(0);
    groups[2].kill_agent(1);
    groups[2].kill_postgres(0).expect("cn021's postmaster");
    groups[2].kill_postgres(1).expect("cn022's postmaster");
    let dn01 = fail_over(&mut groups[3]).await;
    // cn01, dn01 (its new primary) and dn02: the groups that are up.
    for i in [0, 2, 3] {
        let port = leader_port(&groups[i + 1]).await;
        wait_catalog(port, "dn01", dn01, before[i] + 1, "dn01 at its new primary").await;
    }
    // cn02 comes back: the new datanode primary's routing reaches it too.
    groups[2].start_agent(0).unwrap();
    groups[2].start_agent(1).unwrap();
    groups[2]
        .wait_normal(Duration::from_secs(90))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let cn02 = leader_port(&groups[2]).await;
    wait_catalog(
        cn02,
        "dn01",
        dn01,
        1,
        "cn02, back, names dn01's new primary",
    )
    .await;

    // A coordinator's primary dies: the same for cn01, everywhere.
    let before = reloads(&groups).await;
    let cn01 = fail_over(&mut groups[1]).await;
    wait_everywhere(
        &groups,
        "cn01",
        cn01,
        &before.iter().map(|r| r + 1).collect::<Vec<_>>(),
        "cn01 at its new primary",
    )
    .await;

    // The active GTM dies with its agent: gtm_ctl promote on the standby,
    // ALTER GTM NODE on every coordinator and datanode.
    groups[0].kill_agent(0);
    groups[0].kill_postgres(0).expect("gtm1's process");
    let leader = groups[0]
        .wait_new_leader("gtm1", Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(leader, "gtm2");
    assert!(gtm_role(&bin, gtm2).contains("current node [primary]"));
    let log = std::fs::read_to_string(bin.join("standin.log")).unwrap();
    assert!(log.contains("gtm_ctl promote -Z gtm -D"), "{log}");
    for port in shape_leaders(&groups).await {
        wait_gtm_catalog(port, gtm2, "every node names gtm2").await;
    }
    // The promotion is verified by a write through a coordinator, which
    // needs gtm2's timestamps (`[routing] verify`).
    let cn01 = leader_port(&groups[1]).await;
    let gtm_writes = || async move {
        sql_port(cn01, "SELECT count(*) FROM gtm_writes")
            .await
            .map(|r| r[0].get::<_, i64>(0))
    };
    let seen = gtm_writes().await.unwrap();
    wait_for(
        "a write through cn01 with gtm2's timestamps",
        Duration::from_secs(20),
        || async {
            match gtm_writes().await? {
                n if n > seen => Ok(()),
                n => Err(format!("{n} writes")),
            }
        },
    )
    .await;
    // gtm2 stops giving timestamps (the stand-in's knob for the broken
    // active once seen after an early promotion): the verification fails,
    // and after verify_timeout the promotion counts as failed: gtm2 is
    // stopped and started again as the active, which mends it here.
    let knob = groups[0].nodes[1].data_dir.join("standin.broken");
    std::fs::write(&knob, "").unwrap();
    let gtm2_dir = groups[0].nodes[1].data_dir.display().to_string();
    wait_for(
        "gtm2 started again after its failed verification",
        Duration::from_secs(30),
        || async {
            let agent = std::fs::read_to_string(&groups[0].nodes[1].log_path).unwrap();
            let started = std::fs::read_to_string(bin.join("standin.log"))
                .unwrap()
                .contains(&format!("gtm_ctl start {gtm2_dir} as ACT"));
            if agent.contains("promotion_not_verified") && started && !knob.exists() {
                Ok(())
            } else {
                Err(format!(
                    "verification failure seen: {}, restarted: {started}",
                    agent.contains("promotion_not_verified")
                ))
            }
        },
    )
    .await;
    let seen = gtm_writes().await.unwrap();
    wait_for(
        "writes through cn01 again",
        Duration::from_secs(20),
        || async {
            match gtm_writes().await? {
                n if n > seen => Ok(()),
                n => Err(format!("{n} writes")),
            }
        },
    )
    .await;
    assert_eq!(groups[0].view().await.unwrap().leader_name(), Some("gtm2"));

    // The old active comes back as a standby of gtm2: no rewind, its
    // state replaced by the active's.
    groups[0].start_agent(0).unwrap();
    groups[0]
        .wait_normal(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    let standby = gtm_role(&bin, gtm1);
    assert!(standby.contains("current node [standby]"), "{standby}");
    assert!(gtm_role(&bin, gtm2).contains("host[gtm1]"));

    // Both GTMs go down. gtm1 comes back first, but gtm2 led last: with no
    // read-only mode to elect from, gtm1 waits for it.
    let gtm = &mut groups[0];
    gtm.kill_agent(0);
    gtm.kill_agent(1);
    gtm.kill_postgres(1).expect("gtm2's process");
    gtm.kill_postgres(0).expect("gtm1's process");
    gtm.start_agent(0).unwrap();
    wait_for(
        "gtm1 waiting for the last leader",
        Duration::from_secs(30),
        || async {
            let v = gtm.view().await.map_err(|e| format!("{e:#}"))?;
            match v
                .members
                .get("gtm1")
                .and_then(|m| m.baton_reason_code.clone())
            {
                Some(code) if code == "waiting_for_last_leader" && v.leader.is_none() => Ok(()),
                other => Err(format!("{other:?}, leader {:?}", v.leader_name())),
            }
        },
    )
    .await;
    assert!(!gtm_role(&bin, gtm1).contains("[primary]"));
    gtm.start_agent(1).unwrap();
    gtm.wait_normal(Duration::from_secs(60))
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert_eq!(gtm.view().await.unwrap().leader_name(), Some("gtm2"));
    assert!(gtm_role(&bin, gtm2).contains("current node [primary]"));
    // Its first start after the kill worked: the gtm.pid a killed GTM
    // leaves (a zombie's, for a while) did not hold it up.
    let log = std::fs::read_to_string(&gtm.nodes[1].log_path).unwrap();
    assert!(!log.contains("start failed"), "{log}");

    // The other groups' agents first: the etcd they use is the GTM group's.
    for c in groups.iter_mut().rev() {
        c.shutdown();
    }
}
