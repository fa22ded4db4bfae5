//! Issue 2: bad input and faults get a clear refusal and lose nothing.

mod common;

use std::path::Path;
use std::time::Duration;

use baton_core::status::ClusterState;
use baton_local::local::ClusterOptions;
use common::*;

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn broken_config_lists_every_problem_and_exits_2() {
    let dir = TestDir::new("badconfig");
    let file = dir.path.join("node.toml");
    let data = dir.path.join("data");
    std::fs::write(
        &file,
        format!(
            r#"scope = "demo"
name = "node 1"
[etcd]
endpoints = []
[api]
listen = "127.0.0.1:99999"
[postgresql]
data_dir = "{}"
listen = "127.0.0.1:5432"
shared_buffers = "1GB"
[bootstrap.dcs]
ttl = 3
"#,
            data.display()
        ),
    )
    .unwrap();
    let out = run_baton(&["agent", "-c", path_str(&file)]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr).replace(path_str(&file), "NODE.toml");
    let expected = "\
error: NODE.toml: 5 problems in configuration
  - name: \"node 1\" must be 1-63 characters of letters, digits, '_', '-' or '.'
  - etcd.endpoints: needs at least one endpoint
  - api.listen: \"127.0.0.1:99999\" is not an IP address with port, like 127.0.0.1:5432
  - postgresql.shared_buffers: unknown key
  - bootstrap.dcs.ttl: a leader must get two renewal attempts before it fences itself: loop_wait + 2 * retry_timeout = 3 s must not exceed ttl - safety_margin = 2 s (raise ttl or lower the others)
";
    assert_eq!(stderr, expected);
    assert!(
        !data.exists(),
        "nothing may be created from a broken config"
    );

    let out = run_baton(&["agent", "-c", "/nonexistent/baton.toml"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.starts_with(
            "error: /nonexistent/baton.toml: 1 problem in configuration\n  - cannot read file:"
        ),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_unreachable_at_start_waits_and_never_initdbs() {
    let opts = ClusterOptions {
        nodes: 1,
        scope: "late".into(),
        start_etcd: false,
        ..ClusterOptions::default()
    };
    let mut t = TestCluster::started("lateetcd", opts);
    let node = &t.c.nodes[0];
    let j = wait_for(
        "agent reporting etcd unreachable",
        Duration::from_secs(20),
        || async {
            let j = http_json(&node.api_url("/patroni")).await?;
            if j["baton"]["reason_code"] == "etcd_unreachable" {
                Ok(j)
            } else {
                Err(format!("{j}"))
            }
        },
    )
    .await;
    assert_eq!(j["state"], "stopped");
    assert!(
        !node.data_dir.exists(),
        "agent touched the data dir without etcd"
    );
    // Liveness holds (the loop runs) while nothing else does.
    assert_eq!(
        http_status(reqwest::Method::GET, &node.api_url("/liveness")).await,
        Ok(200)
    );
    assert_eq!(
        http_status(reqwest::Method::GET, &node.api_url("/health")).await,
        Ok(503)
    );

    t.c.etcd.start().unwrap();
    let s = t
        .wait_state(ClusterState::Normal, Duration::from_secs(60))
        .await;
    assert_eq!(s.leader.as_deref(), Some("node1"));
}

/// Starts node1 of a 2-node cluster, waits for Normal with one member, then
/// prepares node2's data dir with `prepare` and starts node2; returns its
/// member reason once it reports `need repair`.
async fn node2_refuses(name: &str, prepare: impl FnOnce(&Path)) -> (TestCluster, (String, String)) {
    let opts = ClusterOptions {
        nodes: 2,
        scope: name.into(),
        ..ClusterOptions::default()
    };
    let mut t = TestCluster::new(name, opts);
    t.c.start_agent(0).unwrap();
    wait_for("node1 leading", Duration::from_secs(60), || async {
        let s = t.c.status().await.map_err(|e| format!("{e:#}"))?;
        if s.leader.is_some() && s.members.len() == 1 && s.members[0].state == "running" {
            Ok(())
        } else {
            Err(s.render())
        }
    })
    .await;
    prepare(&t.c.nodes[1].data_dir);
    t.c.start_agent(1).unwrap();
    let reason = wait_for(
        "node2 refusing its data dir",
        Duration::from_secs(30),
        || async {
            let v = t.c.view().await.map_err(|e| format!("{e:#}"))?;
            match v.members.get("node2") {
                Some(m) if m.state == "need repair" => Ok((
                    m.baton_reason_code.clone().unwrap_or_default(),
                    m.baton_reason.clone().unwrap_or_default(),
                )),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    (t, reason)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_postgres_data_dir_is_refused_and_kept() {
    let (t, reason) = node2_refuses("notpg", |d| {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("precious.txt"), "keep me").unwrap();
        if is_root() {
            let pg = nix::unistd::User::from_name("postgres").unwrap().unwrap();
            std::os::unix::fs::chown(d, Some(pg.uid.as_raw()), Some(pg.gid.as_raw())).unwrap();
        }
    })
    .await;
    assert_eq!(reason.0, "data_dir_not_postgres", "{}", reason.1);
    let d = &t.c.nodes[1].data_dir;
    assert_eq!(
        std::fs::read_to_string(d.join("precious.txt")).unwrap(),
        "keep me"
    );
    assert_eq!(std::fs::read_dir(d).unwrap().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_owned_by_another_user_is_refused() {
    if !is_root() {
        eprintln!("skipped: only root can hand a directory to another user");
        return;
    }
    let (t, reason) = node2_refuses("owner", |d| {
        std::fs::create_dir_all(d).unwrap();
        let nobody = nix::unistd::User::from_name("nobody").unwrap().unwrap();
        std::os::unix::fs::chown(d, Some(nobody.uid.as_raw()), Some(nobody.gid.as_raw())).unwrap();
    })
    .await;
    assert_eq!(reason.0, "data_dir_wrong_owner", "{}", reason.1);
    assert_eq!(
        std::fs::read_dir(&t.c.nodes[1].data_dir).unwrap().count(),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_dir_of_another_cluster_is_refused() {
    let (t, reason) = node2_refuses("foreign", |d| {
        let bin = baton::config::default_bin_dir().unwrap();
        let mut cmd = std::process::Command::new(bin.join("initdb"));
        cmd.arg("-D").arg(d).arg("--auth=trust");
        if is_root() {
            use std::os::unix::process::CommandExt;
            let pg = nix::unistd::User::from_name("postgres").unwrap().unwrap();
            std::fs::create_dir_all(d).unwrap();
            std::os::unix::fs::chown(d, Some(pg.uid.as_raw()), Some(pg.gid.as_raw())).unwrap();
            cmd.uid(pg.uid.as_raw()).gid(pg.gid.as_raw());
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    })
    .await;
    assert_eq!(reason.0, "foreign_cluster", "{}", reason.1);
    // The operator is told which cluster the data belongs to and which one
    // this is.
    let v = t.c.view().await.unwrap();
    let cluster_id = v.initialize.unwrap();
    assert!(reason.1.contains(&cluster_id), "{}", reason.1);
    // Untouched: not started, no baton config written into it.
    let d = &t.c.nodes[1].data_dir;
    assert!(t.c.nodes[1].postmaster_pid().is_none());
    let conf = std::fs::read_to_string(d.join("postgresql.conf")).unwrap();
    assert!(!conf.contains("Written by baton"));
}

#[test]
fn refuses_to_run_postgres_as_root_or_unknown_user() {
    if !is_root() {
        eprintln!("skipped: the OS-user switch only applies when the agent runs as root");
        return;
    }
    let dir = TestDir::new("osuser");
    for (user, expect) in [
        ("baton-no-such-user", "does not exist"),
        ("root", "must not be root"),
    ] {
        let file = dir.path.join(format!("{user}.toml"));
        std::fs::write(
            &file,
            format!(
                r#"scope = "demo"
name = "n1"
[etcd]
endpoints = ["http://127.0.0.1:1"]
[api]
listen = "127.0.0.1:{}"
[postgresql]
data_dir = "{}/data"
listen = "127.0.0.1:5432"
os_user = "{user}"
"#,
                baton_local::local::free_port(),
                dir.path.display()
            ),
        )
        .unwrap();
        let out = run_baton(&["agent", "-c", path_str(&file)]);
        assert_eq!(out.status.code(), Some(1), "{user}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(stderr.contains(expect), "{user}: {stderr}");
    }
}
