//! Benchmarks, run through `bench/failover` and `bench/switchover`.
//!
//! Both use the same workload (one numbered INSERT every 10 ms through a
//! multi-host read-write DSN, reconnecting on error) on a 3-node cluster.
//! - failover: the leader is killed with SIGKILL (agent and postgres), then
//!   restarted; reports the longest write gap (RTO), acknowledged writes
//!   lost, and the time until the old node streams again.
//! - switchover: planned switchovers on one cluster; reports the longest
//!   write gap around each and acknowledged writes lost.
//! - sync-cost: pgbench's TPS on the leader of one cluster, asynchronous
//!   and then in each synchronous mode: what waiting for a standby costs.
//!
//! `--sync on|quorum` runs failover and switchover in that synchronous mode.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use baton_local::local::{poll_until, ClusterOptions, LocalCluster};
use baton_local::workload;
use tokio_util::sync::CancellationToken;

struct RunResult {
    rto: Duration,
    lost: usize,
    rejoin: Duration,
}

/// A fresh 3-node cluster at default settings (in `sync` mode, if given)
/// in its own directory.
fn bench_cluster(
    baton: &Path,
    name: &str,
    sync: Option<&str>,
) -> anyhow::Result<(PathBuf, LocalCluster)> {
    let dir = std::env::temp_dir().join(format!("baton-bench-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = ClusterOptions {
        scope: "bench".into(),
        extra_toml: sync
            .map(|m| format!("synchronous_mode = \"{m}\""))
            .unwrap_or_default(),
        ..Default::default()
    };
    let mut c = LocalCluster::create(&dir, baton, &opts)?;
    c.start_all()?;
    Ok((dir, c))
}

/// Stops the cluster; keeps its directory when the run failed.
fn teardown<T>(dir: &Path, mut c: LocalCluster, result: &anyhow::Result<T>) {
    tokio::task::block_in_place(|| c.shutdown());
    drop(c);
    if result.is_ok() {
        let _ = std::fs::remove_dir_all(dir);
    } else {
        eprintln!("kept {} for inspection", dir.display());
    }
}

async fn one_run(baton: &Path, n: usize, sync: Option<&str>) -> anyhow::Result<RunResult> {
    let (dir, mut c) = bench_cluster(baton, &format!("failover-{n}"), sync)?;
    let result = async {
        c.wait_normal(Duration::from_secs(120)).await?;
        let cfg = workload::read_write_config(&c.pg_hosts(), "postgres");
        workload::create_table(&cfg, "bench").await.map_err(anyhow::Error::msg)?;
        let stop = CancellationToken::new();
        let writer = tokio::spawn(workload::run_writes(cfg.clone(), "bench".into(), Duration::from_millis(10), stop.clone()));
        tokio::time::sleep(Duration::from_secs(3)).await;

        let v = c.view().await?;
        let leader = v.leader_name().context("no leader")?.to_string();
        let li = c.nodes.iter().position(|x| x.name == leader).context("leader not ours")?;
        let killed = Instant::now();
        c.kill_agent(li);
        c.kill_postgres(li);
        // Writes resume on the new leader; let them run a little longer.
        let probe = workload::read_write_config(&c.pg_hosts(), "postgres");
        poll_until("writes after the kill", Duration::from_secs(60), || async {
            let v = c.view().await.ok()?;
            (v.leader_name().is_some_and(|l| l != leader)).then_some(())
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let restarted = Instant::now();
        c.start_agent(li)?;
        poll_until("old leader streaming again", Duration::from_secs(120), || async {
            let v = c.view().await.ok()?;
            let tl = v.leader_member()?.timeline;
            let m = v.members.get(&leader)?;
            (m.replication_state.as_deref() == Some("streaming") && m.timeline == tl).then_some(())
        })
        .await?;
        let rejoin = restarted.elapsed();
        stop.cancel();
        let log = writer.await?;
        let present = workload::present_ids(&probe, "bench").await.map_err(anyhow::Error::msg)?;
        let (rto, _) = log.longest_gap();
        let lost = log.lost(&present).len();
        let after = log.acked.iter().filter(|(_, at)| *at > killed).count();
        println!(
            "run {n}: rto {:.2} s, lost_acked {lost}, rejoin {:.2} s ({} acked, {after} after the kill)",
            rto.as_secs_f64(),
            rejoin.as_secs_f64(),
            log.acked.len()
        );
        Ok(RunResult { rto, lost, rejoin })
    }
    .await;
    teardown(&dir, c, &result);
    result
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

struct SwitchResult {
    gap: Duration,
    lost: usize,
}

async fn switchovers(
    baton: &Path,
    runs: usize,
    sync: Option<&str>,
) -> anyhow::Result<Vec<SwitchResult>> {
    let (dir, c) = bench_cluster(baton, "switchover", sync)?;
    let result = async {
        c.wait_normal(Duration::from_secs(120)).await?;
        let cfg = workload::read_write_config(&c.pg_hosts(), "postgres");
        let mut results = vec![];
        for n in 1..=runs {
            c.wait_normal(Duration::from_secs(120)).await?;
            // A table per run: ids restart at 1 with every writer.
            let table = format!("bench_{n}");
            workload::create_table(&cfg, &table)
                .await
                .map_err(anyhow::Error::msg)?;
            let stop = CancellationToken::new();
            let writer = tokio::spawn(workload::run_writes(
                cfg.clone(),
                table.clone(),
                Duration::from_millis(10),
                stop.clone(),
            ));
            tokio::time::sleep(Duration::from_secs(2)).await;
            let (leader, answer) = c
                .switchover_via_api()
                .await
                .with_context(|| format!("switchover {n}"))?;
            tokio::time::sleep(Duration::from_secs(2)).await;
            stop.cancel();
            let log = writer.await?;
            let present = workload::present_ids(&cfg, &table)
                .await
                .map_err(anyhow::Error::msg)?;
            let (gap, _) = log.longest_gap();
            let lost = log.lost(&present).len();
            if log.acked.len() < 200 {
                bail!(
                    "run {n}: only {} writes acknowledged in 4 s: the workload is broken",
                    log.acked.len()
                );
            }
            println!(
                "run {n}: {leader} -> {}: write gap {:.3} s, lost_acked {lost} ({} acked)",
                answer.trim_start_matches("Successfully switched over to "),
                gap.as_secs_f64(),
                log.acked.len()
            );
            results.push(SwitchResult { gap, lost });
        }
        Ok(results)
    }
    .await;
    teardown(&dir, c, &result);
    result
}

/// pgbench against `port` for `seconds` (the tpcb-like script) with
/// `clients`, after `pgbench -i` made its tables: (TPS, mean latency ms).
fn pgbench(bin_dir: &Path, port: u16, clients: u32, seconds: u32) -> anyhow::Result<(f64, f64)> {
    let out = std::process::Command::new(bin_dir.join("pgbench"))
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            "2",
            "-T",
            &seconds.to_string(),
        ])
        .arg("postgres")
        .output()
        .context("running pgbench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let field = |prefix: &str| {
        text.lines().find_map(|l| {
            let rest = l.strip_prefix(prefix)?;
            rest.split_whitespace().next()?.parse::<f64>().ok()
        })
    };
    let tps = field("tps = ").with_context(|| format!("no tps in pgbench output: {text}"))?;
    let latency = field("latency average = ")
        .with_context(|| format!("no latency in pgbench output: {text}"))?;
    Ok((tps, latency))
}

/// Switches the live cluster's `synchronous_mode`, as `baton config set`
/// does (compare-and-set on the stored config).
async fn set_sync_mode(c: &LocalCluster, mode: &str) -> anyhow::Result<()> {
    let dcs = baton::dcs::Dcs::connect(
        std::slice::from_ref(&c.etcd.endpoint),
        format!("/service/{}/", c.scope),
        Duration::from_secs(2),
    )
    .await?;
    let v = baton::agent::Store::load(&dcs).await?;
    let mut cfg = v.config.context("no valid config stored")?;
    cfg.synchronous_mode = serde_json::from_value(serde_json::json!(mode))?;
    if !dcs.cas_config(&cfg, v.config_revision).await? {
        bail!("the config changed while setting synchronous_mode");
    }
    Ok(())
}

/// TPS asynchronous, then with `synchronous_mode` on and quorum, on one
/// cluster (the mode switched live, as an operator would).
async fn sync_cost(baton: &Path, runs: usize) -> anyhow::Result<Vec<(String, f64, f64)>> {
    let (dir, c) = bench_cluster(baton, "sync-cost", None)?;
    let result = async {
        c.wait_normal(Duration::from_secs(120)).await?;
        let v = c.view().await?;
        let leader = v.leader_name().context("no leader")?.to_string();
        let node = c
            .nodes
            .iter()
            .find(|n| n.name == leader)
            .context("leader not ours")?;
        let bin_dir = baton::config::default_bin_dir().map_err(anyhow::Error::msg)?;
        let init = std::process::Command::new(bin_dir.join("pgbench"))
            .args([
                "-i",
                "-s",
                "4",
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                &node.pg_port.to_string(),
            ])
            .args(["-U", "postgres", "postgres"])
            .output()?;
        if !init.status.success() {
            bail!("pgbench -i: {}", String::from_utf8_lossy(&init.stderr));
        }
        let mut results = vec![];
        for mode in ["off", "on", "quorum"] {
            set_sync_mode(&c, mode).await?;
            poll_until(
                &format!("synchronous_mode {mode} in force"),
                Duration::from_secs(30),
                || async {
                    let v = c.view().await.ok()?;
                    let voters = v
                        .sync
                        .as_ref()
                        .filter(|k| k.leader_is(&leader))
                        .map(|k| k.voters().len())
                        .unwrap_or(0);
                    let want = match mode {
                        "off" => 0,
                        "on" => 1,
                        _ => 2,
                    };
                    (voters == want && (mode != "off" || v.sync.is_none())).then_some(())
                },
            )
            .await?;
            // A warm-up run first, not counted; then 4 clients for
            // throughput and 1 for the latency of a lone commit.
            pgbench(&bin_dir, node.pg_port, 4, 3)?;
            let (mut tps, mut lat) = (vec![], vec![]);
            for _ in 0..runs {
                tps.push(pgbench(&bin_dir, node.pg_port, 4, 10)?.0);
                lat.push(pgbench(&bin_dir, node.pg_port, 1, 5)?.1);
            }
            let (t, l) = (median(tps.clone()), median(lat.clone()));
            println!(
                "synchronous_mode {mode}: tps {tps:.0?} (median {t:.0}), one-client latency ms {lat:.2?} (median {l:.2})"
            );
            results.push((mode.to_string(), t, l));
        }
        Ok(results)
    }
    .await;
    teardown(&dir, c, &result);
    result
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let sync = match args.iter().position(|a| a == "--sync") {
        Some(i) => {
            let m = args
                .get(i + 1)
                .cloned()
                .context("--sync needs on or quorum")?;
            if !matches!(m.as_str(), "on" | "quorum") {
                bail!("--sync {m:?}: on or quorum");
            }
            args.drain(i..=i + 1);
            Some(m)
        }
        None => None,
    };
    let sync = sync.as_deref();
    let mode = args
        .first()
        .cloned()
        .context("usage: bench failover|switchover|sync-cost [RUNS] [--sync on|quorum]")?;
    let runs: usize = args.get(1).map(|s| s.parse()).transpose()?.unwrap_or(5);
    let label = sync.map(|m| format!("sync={m} ")).unwrap_or_default();
    let baton =
        PathBuf::from(std::env::var("BATON_BIN").context("BATON_BIN must name the baton binary")?);
    match mode.as_str() {
        "failover" => {
            let mut results = vec![];
            for n in 1..=runs {
                results.push(one_run(&baton, n, sync).await?);
            }
            let rto: Vec<f64> = results.iter().map(|r| r.rto.as_secs_f64()).collect();
            let rejoin: Vec<f64> = results.iter().map(|r| r.rejoin.as_secs_f64()).collect();
            let lost: usize = results.iter().map(|r| r.lost).sum();
            println!(
                "RESULT {label}rto_median_s={:.2} rto_max_s={:.2} lost_acked={lost} rejoin_median_s={:.2}",
                median(rto.clone()),
                rto.iter().cloned().fold(0.0, f64::max),
                median(rejoin)
            );
        }
        "switchover" => {
            let results = switchovers(&baton, runs, sync).await?;
            let gaps: Vec<f64> = results.iter().map(|r| r.gap.as_secs_f64()).collect();
            let lost: usize = results.iter().map(|r| r.lost).sum();
            println!(
                "RESULT {label}gap_median_s={:.3} gap_max_s={:.3} lost_acked={lost}",
                median(gaps.clone()),
                gaps.iter().cloned().fold(0.0, f64::max)
            );
        }
        "sync-cost" => {
            let r = sync_cost(&baton, runs).await?;
            let get = |m: &str| {
                r.iter()
                    .find(|(k, _, _)| k == m)
                    .map_or((0.0, 0.0), |(_, t, l)| (*t, *l))
            };
            let (off, on, quorum) = (get("off"), get("on"), get("quorum"));
            println!(
                "RESULT tps_async={:.0} tps_sync_on={:.0} tps_sync_quorum={:.0} \
                 latency_ms_async={:.2} latency_ms_sync_on={:.2} latency_ms_sync_quorum={:.2}",
                off.0, on.0, quorum.0, off.1, on.1, quorum.1
            );
        }
        other => bail!("unknown benchmark {other:?}: failover, switchover or sync-cost"),
    }
    Ok(())
}
