//! Issue 12 acceptance: routing statements bring every endpoint to the new
//! primary (retried while an endpoint is down, re-applied after it
//! restarts), and callbacks run with Patroni's arguments, a hanging one
//! killed at its timeout while the HA loop goes on.

mod common;

use std::time::Duration;

use baton_local::local::{ClusterOptions, LocalPostgres};
use common::*;

/// A stand-in for an OpenTenBase coordinator: a plain postgres with a
/// table playing the node catalog (`pgxc_node`), where the routing
/// statements record the datanode's host and port.
async fn coordinator(dir: &std::path::Path, name: &str) -> LocalPostgres {
    let pg = LocalPostgres::start(dir, name, "").await.unwrap();
    for sql in [
        "CREATE TABLE pgxc_node (node_name text PRIMARY KEY, node_host text, node_port int)",
        "INSERT INTO pgxc_node VALUES ('dn01', 'nowhere', 0)",
    ] {
        sql_port(pg.port, sql).await.unwrap();
    }
    pg
}

async fn catalog(port: u16) -> Result<(String, i32), String> {
    let rows = sql_port(
        port,
        "SELECT node_host, node_port FROM pgxc_node WHERE node_name = 'dn01'",
    )
    .await?;
    Ok((rows[0].get(0), rows[0].get(1)))
}

async fn wait_catalog(port: u16, want: u16, what: &str) {
    wait_for(what, Duration::from_secs(30), || async {
        match catalog(port).await? {
            (h, p) if h == "127.0.0.1" && p == want as i32 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_statements_bring_every_endpoint_to_the_new_primary() {
    let mut t = TestCluster::new("routing", ClusterOptions::default());
    let cn1 = coordinator(&t.dir.path, "cn1").await;
    let cn2 = coordinator(&t.dir.path, "cn2").await;
    // cn2 is down when the cluster comes up.
    cn2.stop().await.unwrap();
    let dsn = |port: u16| format!("host=127.0.0.1 port={port} user=postgres dbname=postgres");
    let routing = format!(
        "[routing]\n\
         statements = \"UPDATE pgxc_node SET node_host = '{{host}}', node_port = {{port}} WHERE node_name = 'dn01'\"\n\
         endpoints = {{ cn1 = \"{}\", cn2 = \"{}\" }}\n\
         retry_interval = 0.5\n\
         check_interval = 1\n",
        dsn(cn1.port),
        dsn(cn2.port)
    );
    for i in 0..3 {
        t.c.append_config(i, &routing).unwrap();
    }
    t.start_led_by_node1().await;
    let ports: Vec<u16> = t.c.nodes.iter().map(|n| n.pg_port).collect();
    let port = |i: usize| ports[i];
    wait_catalog(cn1.port, port(0), "cn1 pointing at node1").await;

    // cn2 is pending, and says why, in `baton list --verbose` and metrics.
    wait_for(
        "cn2 pending with its error",
        Duration::from_secs(10),
        || async {
            let (_, out, err) = ctl(&t, &["list", "--verbose"]);
            let line = out
                .lines()
                .find(|l| l.trim_start().starts_with("cn2"))
                .unwrap_or("");
            if line.contains("pending")
                && line.contains(&format!("127.0.0.1:{}", port(0)))
                && line.contains(':')
            {
                Ok(())
            } else {
                Err(format!("{out}{err}"))
            }
        },
    )
    .await;
    let metrics = http_text(&t.c.nodes[0].api_url("/metrics")).await;
    assert!(
        metrics.contains(
            "baton_routing_endpoint_ok{scope=\"demo\",name=\"node1\",endpoint=\"cn1\"} 1"
        ) && metrics.contains(
            "baton_routing_endpoint_ok{scope=\"demo\",name=\"node1\",endpoint=\"cn2\"} 0"
        ),
        "{metrics}"
    );
    // Issue 14: every metric the Grafana dashboard in docs/ queries is one
    // a live agent exports (this cluster has routing endpoints, so all of
    // them; the leader, so every leader-side series).
    let dashboard = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/grafana/baton.json"),
    )
    .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    let mut used = std::collections::BTreeSet::new();
    for p in dashboard["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("baton_") || word.starts_with("patroni_") {
                    used.insert(word.to_string());
                }
            }
        }
    }
    assert!(used.len() >= 15, "{used:?}");
    let exported: std::collections::BTreeSet<&str> = metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split(['{', ' ']).next())
        .collect();
    let missing: Vec<&String> = used
        .iter()
        .filter(|m| !exported.contains(m.as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries {missing:?}, which no agent exports:\n{metrics}"
    );

    let patroni = http_json(&t.c.nodes[0].api_url("/patroni")).await.unwrap();
    assert_eq!(
        patroni["baton"]["routing"]["cn1"]["state"], "ok",
        "{patroni}"
    );

    // cn2 comes back: it is updated without anyone asking.
    cn2.restart().await.unwrap();
    wait_catalog(cn2.port, port(0), "cn2 pointing at node1 once it is back").await;

    // Failover: both endpoints learn the new primary.
    kill_node(&mut t, 0);
    let new = wait_new_leader(&t, "node1", Duration::from_secs(30)).await;
    let i = t.c.nodes.iter().position(|n| n.name == new).unwrap();
    wait_catalog(cn1.port, port(i), "cn1 pointing at the new leader").await;
    wait_catalog(cn2.port, port(i), "cn2 pointing at the new leader").await;

    // An endpoint that restarts is checked again: a restart that brought
    // back an old catalog (here, edited by hand meanwhile) is corrected.
    sql_port(
        cn1.port,
        "UPDATE pgxc_node SET node_host = 'stale', node_port = 1",
    )
    .await
    .unwrap();
    cn1.stop().await.unwrap();
    cn1.restart().await.unwrap();
    wait_catalog(cn1.port, port(i), "cn1 corrected after its restart").await;
    let (_, out, _) = ctl(&t, &["list", "--verbose"]);
    assert!(
        out.lines()
            .filter(|l| l.trim_start().starts_with("cn"))
            .all(|l| l.contains(" ok ")),
        "{out}"
    );
}

/// The PIDs the hanging hook wrote (its shell and its child), once it has.
async fn hung_pids(dir: &std::path::Path, what: &str) -> Vec<i32> {
    wait_for(what, Duration::from_secs(20), || async {
        let text = std::fs::read_to_string(dir.join("hung.pids")).map_err(|e| e.to_string())?;
        let p: Vec<i32> = text
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        if p.len() == 2 {
            Ok(p)
        } else {
            Err(text)
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_get_patronis_arguments_and_a_hanging_one_is_killed() {
    let mut t = TestCluster::new("callbacks", ClusterOptions::default());
    let dir = t.dir.path.clone();
    let log = dir.join("callbacks.log");
    // on_role_change to primary hangs (with a child), recording its PIDs.
    let script = dir.join("hook.sh");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho \"$1 $2 $3\" >> {log}\n\
             if [ \"$1\" = on_role_change ] && [ \"$2\" = primary ]; then\n\
               sleep 1000 &\n  echo \"$$ $!\" > {dir}/hung.pids\n  wait\nfi\n",
            log = log.display(),
            dir = dir.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let callbacks = format!(
        "[postgresql.callbacks]\non_start = \"{s}\"\non_stop = \"{s}\"\non_role_change = \"{s}\"\ntimeout = 3\n",
        s = script.display()
    );
    for i in 0..3 {
        t.c.append_config(i, &callbacks).unwrap();
    }
    t.start_led_by_node1().await;
    wait_for("on_start callbacks", Duration::from_secs(20), || async {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        if text
            .lines()
            .filter(|l| *l == "on_start replica demo")
            .count()
            >= 2
        {
            Ok(())
        } else {
            Err(text)
        }
    })
    .await;

    let (ok, out, err) = ctl(&t, &["switchover", "--candidate", "node2", "--force"]);
    assert!(ok, "{out}{err}");
    let pids = hung_pids(&dir, "the hanging hook started").await;
    // While it hangs, node2's loop keeps ticking and the cluster settles.
    t.wait_state(
        baton_core::status::ClusterState::Normal,
        Duration::from_secs(30),
    )
    .await;
    assert!(
        metric(&t, 1, "baton_loop_last_tick_age_seconds").await < 2.5,
        "node2's loop stalled behind its hook"
    );
    // Killed at its timeout, with its child.
    wait_for(
        "the hook and its child killed",
        Duration::from_secs(10),
        || async {
            let alive: Vec<i32> = pids
                .iter()
                .copied()
                .filter(|p| std::path::Path::new(&format!("/proc/{p}")).exists())
                .collect();
            if alive.is_empty() {
                Ok(())
            } else {
                Err(format!("still alive: {alive:?}"))
            }
        },
    )
    .await;
    assert!(
        t.agent_log(1).contains("still running after 3s: killed"),
        "{}",
        t.agent_log(1)
    );
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("on_role_change primary demo"), "{text}");
    // node1, demoted: stopped as primary, back as a replica.
    assert!(text.contains("on_stop primary demo"), "{text}");
    assert!(text.contains("on_role_change replica demo"), "{text}");
    // And the cluster still switches over after it.
    std::fs::remove_file(dir.join("hung.pids")).unwrap();
    let (ok, out, err) = ctl(&t, &["switchover", "--candidate", "node1", "--force"]);
    assert!(ok, "{out}{err}");
    wait_new_leader(&t, "node2", Duration::from_secs(30)).await;
    // node1's hook hangs now: stopping its agent stops the hook too.
    let pids = hung_pids(&dir, "node1's hook started").await;
    t.c.stop_agent(0, Duration::from_secs(30)).unwrap();
    // Gone, or dead and not yet reaped (a zombie).
    let alive = |p: &i32| {
        std::fs::read_to_string(format!("/proc/{p}/stat")).is_ok_and(|s| !s.contains(") Z "))
    };
    wait_for(
        "the hook gone with its agent",
        Duration::from_secs(5),
        || async {
            let left: Vec<&i32> = pids.iter().filter(|p| alive(p)).collect();
            if left.is_empty() {
                Ok(())
            } else {
                Err(format!("still running: {left:?}"))
            }
        },
    )
    .await;
}
