//! Benchmarks, run through `bench/failover` and `bench/switchover`.
//!
//! Both use the same workload (one numbered INSERT every 10 ms through a
//! multi-host read-write DSN, reconnecting on error) on a 3-node cluster.
//! - failover: the leader is killed with SIGKILL (agent and postgres), then
//!   restarted; reports the longest write gap (RTO), acknowledged writes
//!   lost, and the time until the old node streams again.
//!   Then postgres alone is killed on the leader (postmaster SIGKILL), which
//!   is restarted in place: the longest write gap (`pgcrash`, also alone).
//!   Then the leader's host dies silently (every process of the node
//!   frozen): the longest write gap (`host_death_*`), which waits for the
//!   lease, against the kill above (`process_death_*`), which need not.
//! - footprint: each agent of an idle Normal cluster over 60 s
//!   (`FOOTPRINT_SECONDS`): largest resident set and CPU use.
//! - rejoin: a `DB_GB` (5) database, `CHANGED_PCT` (1) of it rewritten on
//!   the new leader after a failover: the old leader's rejoin by pg_rewind
//!   (and how much it copied) against rebuilding the same member.
//! - switchover: planned switchovers on one cluster; reports the longest
//!   write gap around each and acknowledged writes lost.
//! - sync-cost: pgbench's TPS on the leader of one cluster, asynchronous
//!   and then in each synchronous mode: what waiting for a standby costs.
//!
//! - router: pgbench (select-only and TPC-B-like, 1/8/32 clients) against
//!   the primary directly, through `baton router` and through HAProxy with
//!   the documented config, interleaved; then a client connecting every
//!   10 ms through the router during 5 switchovers.
//!
//! `--sync on|quorum` runs failover and switchover in that synchronous mode.
//! `BENCH_KEEP=1` keeps a good run's directory (logs, data) as a failed one is.

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
    // BENCH_KEEP=1 keeps the logs and data of a good run too.
    if result.is_ok() && std::env::var_os("BENCH_KEEP").is_none() {
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

/// Postgres alone crashes on the leader (postmaster SIGKILL, the agent
/// lives): the longest write gap until it runs again in place, and
/// acknowledged writes lost.
async fn pgcrash_run(baton: &Path, n: usize, sync: Option<&str>) -> anyhow::Result<SwitchResult> {
    let (dir, c) = bench_cluster(baton, &format!("pgcrash-{n}"), sync)?;
    let result = async {
        c.wait_normal(Duration::from_secs(120)).await?;
        let Writes {
            cfg,
            stop,
            writer,
            leader,
            li,
        } = Writes::start(&c).await?;
        let old = c
            .kill_postgres(li)
            .context("the leader has no postmaster")?;
        poll_until(
            "postgres running again on the leader",
            Duration::from_secs(30),
            || async {
                c.nodes[li]
                    .postmaster_pid()
                    .filter(|p| *p != old)
                    .map(|_| ())
            },
        )
        .await?;
        tokio::time::sleep(Duration::from_secs(3)).await;
        stop.cancel();
        let log = writer.await?;
        let present = workload::present_ids(&cfg, "bench")
            .await
            .map_err(anyhow::Error::msg)?;
        let (gap, _) = log.longest_gap();
        let lost = log.lost(&present).len();
        let now = c.view().await?.leader_name().map(str::to_string);
        if now.as_deref() != Some(leader.as_str()) {
            bail!("the crash moved the leader from {leader} to {now:?}: not restarted in place");
        }
        println!(
            "pgcrash run {n}: gap {:.3} s, lost_acked {lost}",
            gap.as_secs_f64()
        );
        Ok(SwitchResult { gap, lost })
    }
    .await;
    teardown(&dir, c, &result);
    result
}

/// The write workload on a Normal cluster, running for 3 s: the leader it
/// found then, by name and index.
struct Writes {
    cfg: tokio_postgres::Config,
    stop: CancellationToken,
    writer: tokio::task::JoinHandle<workload::WriteLog>,
    leader: String,
    li: usize,
}

impl Writes {
    async fn start(c: &LocalCluster) -> anyhow::Result<Writes> {
        let cfg = workload::read_write_config(&c.pg_hosts(), "postgres");
        workload::create_table(&cfg, "bench")
            .await
            .map_err(anyhow::Error::msg)?;
        let stop = CancellationToken::new();
        let writer = tokio::spawn(workload::run_writes(
            cfg.clone(),
            "bench".into(),
            Duration::from_millis(10),
            stop.clone(),
        ));
        tokio::time::sleep(Duration::from_secs(3)).await;
        let leader = c
            .view()
            .await?
            .leader_name()
            .context("no leader")?
            .to_string();
        let li = c
            .nodes
            .iter()
            .position(|x| x.name == leader)
            .context("leader not ours")?;
        Ok(Writes {
            cfg,
            stop,
            writer,
            leader,
            li,
        })
    }
}

/// Every process of node `i`, as a dead host leaves them: its agent, its
/// fence process (found by the data directory on its command line), the
/// postmaster and all its children.
fn node_processes(c: &LocalCluster, i: usize) -> Vec<nix::unistd::Pid> {
    use nix::unistd::Pid;
    let node = &c.nodes[i];
    let mut pids = vec![];
    if let Some(p) = node.agent_pid() {
        pids.push(Pid::from_raw(p as i32));
    }
    let postmaster = node.postmaster_pid();
    pids.extend(postmaster.map(Pid::from_raw));
    let dir = node.data_dir.display().to_string();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // The postmaster's children: its backends and auxiliary processes.
        let stat = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        let ppid = stat
            .rsplit_once(") ")
            .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok());
        if ppid.is_some() && ppid == postmaster {
            pids.push(Pid::from_raw(pid));
            continue;
        }
        let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args: Vec<&[u8]> = cmd.split(|b| *b == 0).collect();
        let fence = args.first().is_some_and(|a| a.ends_with(b"baton-fence"));
        if fence && args.contains(&dir.as_bytes()) {
            pids.push(Pid::from_raw(pid));
        }
    }
    pids
}

/// Silent host death: every process of the leader's node frozen at once
/// (SIGSTOP), so that its ports neither answer nor refuse (the kernel still
/// accepts connections for a stopped process, and they time out), as a
/// host that lost power or its network looks to the others. Nothing takes
/// the process-death fast path: the longest write gap waits for the lease.
/// The frozen processes are then killed where they stand (SIGKILL), never
/// thawed: a thawed old primary is the fence's business, not this bench's.
async fn host_death_run(
    baton: &Path,
    n: usize,
    sync: Option<&str>,
) -> anyhow::Result<SwitchResult> {
    use nix::sys::signal::{kill, Signal};
    let (dir, mut c) = bench_cluster(baton, &format!("hostdeath-{n}"), sync)?;
    let result = async {
        c.wait_normal(Duration::from_secs(120)).await?;
        let Writes {
            cfg,
            stop,
            writer,
            leader,
            li,
        } = Writes::start(&c).await?;
        let frozen = node_processes(&c, li);
        // Agent, fence, postmaster and at least its checkpointer.
        if frozen.len() < 4 {
            bail!("found only {frozen:?} of {leader}'s agent, fence and postgres");
        }
        for p in &frozen {
            let _ = kill(*p, Signal::SIGSTOP);
        }
        // A backend the postmaster forked while the first ones were being
        // stopped: the postmaster is frozen now, so a second pass is all.
        let mut frozen = frozen;
        for p in node_processes(&c, li) {
            if !frozen.contains(&p) {
                let _ = kill(p, Signal::SIGSTOP);
                frozen.push(p);
            }
        }
        let froze = Instant::now();
        let waited = poll_until("a new leader", Duration::from_secs(60), || async {
            let v = c.view().await.ok()?;
            v.leader_name().is_some_and(|l| l != leader).then_some(())
        })
        .await;
        let new_leader_seen = froze.elapsed();
        tokio::time::sleep(Duration::from_secs(2)).await;
        stop.cancel();
        for p in &frozen {
            let _ = kill(*p, Signal::SIGKILL);
        }
        c.kill_agent(li);
        waited?;
        let log = writer.await?;
        let present = workload::present_ids(&cfg, "bench")
            .await
            .map_err(anyhow::Error::msg)?;
        let (gap, _) = log.longest_gap();
        let lost = log.lost(&present).len();
        // Where the gap went: the new leader as etcd showed it (polled
        // every 100 ms) against the client's first write after the freeze,
        // which also pays for attempts stuck on the frozen host.
        let first_write = log
            .acked
            .iter()
            .find(|(_, at)| *at > froze)
            .map(|(_, at)| (*at - froze).as_secs_f64());
        println!(
            "host death run {n}: gap {:.3} s, lost_acked {lost}; new leader seen {:.2} s and first write {} after the freeze",
            gap.as_secs_f64(),
            new_leader_seen.as_secs_f64(),
            first_write.map_or("none".into(), |s| format!("{s:.2} s")),
        );
        Ok(SwitchResult { gap, lost })
    }
    .await;
    teardown(&dir, c, &result);
    result
}

/// The sum over every live agent of the cluster of a counter in `/metrics`.
async fn cluster_counter(c: &LocalCluster, metric: &str) -> anyhow::Result<f64> {
    let http = baton::tls::http_client(Duration::from_secs(5), None)?;
    let mut sum = 0.0;
    for n in &c.nodes {
        if n.agent_pid().is_none() {
            continue;
        }
        let text = http.get(n.api_url("/metrics")).send().await?.text().await?;
        sum += text
            .lines()
            .filter(|l| l.starts_with(metric) && !l.starts_with('#'))
            .find_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .with_context(|| format!("no {metric} in {}'s metrics", n.name))?;
    }
    Ok(sum)
}

/// A leader and `replicas` replicas (real postgres each): the leader's node
/// killed (agent and postgres); the longest write gap, and how many REST
/// status requests the members' elections made (the fan-out).
async fn replicas_run(baton: &Path, n: usize, replicas: usize) -> anyhow::Result<(f64, f64)> {
    let dir = std::env::temp_dir().join(format!("baton-bench-replicas-{n}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let opts = ClusterOptions {
        scope: "bench".into(),
        nodes: replicas + 1,
        ..Default::default()
    };
    let mut c = LocalCluster::create(&dir, baton, &opts)?;
    c.start_all()?;
    let result = async {
        c.wait_normal(Duration::from_secs(300)).await?;
        let Writes {
            cfg: _,
            stop,
            writer,
            leader,
            li,
        } = Writes::start(&c).await?;
        c.kill_agent(li);
        c.kill_postgres(li);
        let asks_before = cluster_counter(&c, "baton_election_peer_requests_total").await?;
        poll_until("a new leader", Duration::from_secs(60), || async {
            let v = c.view().await.ok()?;
            v.leader_name().is_some_and(|l| l != leader).then_some(())
        })
        .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let asks = cluster_counter(&c, "baton_election_peer_requests_total").await? - asks_before;
        stop.cancel();
        let log = writer.await?;
        let (gap, _) = log.longest_gap();
        println!(
            "replicas run {n}: {replicas} replicas, gap {:.3} s, {asks:.0} election requests",
            gap.as_secs_f64()
        );
        Ok((gap.as_secs_f64(), asks))
    }
    .await;
    teardown(&dir, c, &result);
    result
}

/// Resident memory (kB) and CPU time (clock ticks) of a process, from /proc.
/// Resident set (kB), its private part (RssAnon, kB: what one more agent
/// costs; the rest is the binary's and libc's pages, shared by every
/// process that maps them), and CPU ticks so far.
fn proc_usage(pid: u32) -> anyhow::Result<(u64, u64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .with_context(|| format!("no {name} in /proc/{pid}/status"))
    };
    let rss = field("VmRSS:")?;
    let anon = field("RssAnon:")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name (which may hold spaces) in parentheses.
    let rest = stat.rsplit_once(')').context("malformed stat")?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = f.get(11).context("no utime")?.parse::<u64>()?
        + f.get(12).context("no stime")?.parse::<u64>()?;
    Ok((rss, anon, ticks))
}

/// Each agent of an idle, Normal 3-node cluster over `window`: its largest
/// resident set (all, private) and its CPU use.
async fn footprint_run(
    baton: &Path,
    n: usize,
    window: Duration,
) -> anyhow::Result<Vec<(u64, u64, f64)>> {
    let (dir, c) = bench_cluster(baton, &format!("footprint-{n}"), None)?;
    let result = async {
        c.wait_normal(Duration::from_secs(120)).await?;
        // Past start-up: slots made, clones done, the first ticks' work.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let pids: Vec<u32> = c
            .nodes
            .iter()
            .map(|x| x.agent_pid().context("agent not running"))
            .collect::<anyhow::Result<_>>()?;
        let start: Vec<(u64, u64, u64)> = pids
            .iter()
            .map(|p| proc_usage(*p))
            .collect::<anyhow::Result<_>>()?;
        let began = Instant::now();
        let mut peak: Vec<(u64, u64)> = start.iter().map(|s| (s.0, s.1)).collect();
        while began.elapsed() < window {
            tokio::time::sleep(Duration::from_secs(1)).await;
            for (i, p) in pids.iter().enumerate() {
                let u = proc_usage(*p)?;
                peak[i] = (peak[i].0.max(u.0), peak[i].1.max(u.1));
            }
        }
        let secs = began.elapsed().as_secs_f64();
        let mut out = vec![];
        for (i, p) in pids.iter().enumerate() {
            let ticks = proc_usage(*p)?.2 - start[i].2;
            let pct = ticks as f64 / USER_HZ / secs * 100.0;
            println!(
                "footprint run {n}: {} rss {} kB (private {} kB), cpu {pct:.3} %",
                c.nodes[i].name, peak[i].0, peak[i].1
            );
            out.push((peak[i].0, peak[i].1, pct));
        }
        Ok(out)
    }
    .await;
    teardown(&dir, c, &result);
    result
}

fn max(v: &[f64]) -> f64 {
    v.iter().cloned().fold(0.0, f64::max)
}

/// A number from the environment, or `default` when unset.
fn env_or<T: std::str::FromStr>(key: &str, default: T) -> anyhow::Result<T>
where
    T::Err: std::error::Error + Send + Sync + 'static,
{
    match std::env::var(key) {
        Ok(s) => s
            .parse()
            .with_context(|| format!("{key}={s}: not a number")),
        Err(_) => Ok(default),
    }
}

/// `runs` postgres crashes on the leader, a fresh cluster each.
async fn pgcrash_runs(
    baton: &Path,
    runs: usize,
    sync: Option<&str>,
) -> anyhow::Result<Vec<SwitchResult>> {
    let mut crashes = vec![];
    for n in 1..=runs {
        crashes.push(pgcrash_run(baton, n, sync).await?);
    }
    Ok(crashes)
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

async fn sql_at(port: u16, q: &str) -> anyhow::Result<Vec<tokio_postgres::Row>> {
    let cfg = workload::loopback(port, Duration::from_secs(5));
    let (client, conn) = cfg.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(conn);
    Ok(client.query(q, &[]).await?)
}

/// Figures of one rejoin round.
struct RejoinRound {
    rewind: Duration,
    rebuild: Duration,
    copied_mb: f64,
}

/// pg_rewind's "need to copy N MB (total source directory size is M MB)"
/// lines, as the agent logs them, in order: `(N, M)`.
fn rewind_copies(log: &str) -> Vec<(f64, f64)> {
    log.lines()
        .filter_map(|l| {
            let rest = l.split("need to copy ").nth(1)?;
            let n = rest.split_whitespace().next()?.parse().ok()?;
            let m = rest
                .split("size is ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            Some((n, m))
        })
        .collect()
}

/// One cluster with a `db_gb` database (pgbench's tables); each round kills
/// the leader, rewrites `changed_pct` of pgbench_accounts on the new leader
/// (a contiguous key range: those pages and the ones their new versions
/// go to, no others; the old leader checkpoints just before it is killed),
/// starts the old leader's agent and times its rejoin
/// by pg_rewind until it streams on the new timeline, then rebuilds the
/// same member (`baton reinit`) and times that until it streams again.
async fn rejoin_bench(
    baton: &Path,
    runs: usize,
    db_gb: f64,
    changed_pct: f64,
) -> anyhow::Result<(f64, Vec<RejoinRound>)> {
    let (dir, mut c) = bench_cluster(baton, "rejoin", None)?;
    let result = async {
        c.wait_normal(Duration::from_secs(120)).await?;
        let bin_dir = baton::config::default_bin_dir().map_err(anyhow::Error::msg)?;
        let v = c.view().await?;
        let leader = v.leader_name().context("no leader")?.to_string();
        let li = c.nodes.iter().position(|x| x.name == leader).context("leader not ours")?;
        // pgbench scale 1 is about 15 MB with its indexes.
        let scale = ((db_gb * 1024.0 / 15.0).round() as u64).max(1);
        println!("loading pgbench scale {scale} (~{db_gb} GB) into {leader} ...");
        let loaded = Instant::now();
        let out = tokio::process::Command::new(bin_dir.join("pgbench"))
            .args(["-h", "127.0.0.1", "-p", &c.nodes[li].pg_port.to_string(), "-U", "postgres"])
            .args(["-i", "-q", "-s", &scale.to_string(), "postgres"])
            .output()
            .await
            .context("running pgbench -i")?;
        if !out.status.success() {
            bail!("pgbench -i failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let bytes: i64 = sql_at(c.nodes[li].pg_port, "SELECT pg_database_size('postgres')").await?[0].get(0);
        let gb = bytes as f64 / (1u64 << 30) as f64;
        println!("loaded {gb:.2} GB in {:.0} s; waiting for the replicas", loaded.elapsed().as_secs_f64());
        replicas_caught_up(&c, li, "the load", Duration::from_secs(1800)).await?;
        let accounts = scale * 100_000;
        let changed = ((accounts as f64) * changed_pct / 100.0) as u64;
        let mut rounds = vec![];
        for n in 1..=runs {
            let v = c.view().await?;
            let leader = v.leader_name().context("no leader")?.to_string();
            let li = c.nodes.iter().position(|x| x.name == leader).context("leader not ours")?;
            // pg_rewind copies every block the old leader's WAL touched
            // since its last checkpoint before the fork: right after the
            // load that is the whole database. A checkpoint first is the
            // steady state (one runs every checkpoint_timeout) and leaves
            // the rewind with what changed after the failover. The
            // replicas' restartpoints run as often in a steady state; the
            // new leader's slot for the old one reserves WAL from its last
            // restartpoint, and pg_rewind copies all of that WAL.
            sql_at(c.nodes[li].pg_port, "CHECKPOINT").await?;
            replicas_caught_up(&c, li, "the checkpoint", Duration::from_secs(120)).await?;
            for (_, n) in c.nodes.iter().enumerate().filter(|(i, _)| *i != li) {
                sql_at(n.pg_port, "CHECKPOINT").await?;
            }
            c.kill_agent(li);
            c.kill_postgres(li);
            let new = c.wait_new_leader(&leader, Duration::from_secs(60)).await?;
            let ni = c.nodes.iter().position(|x| x.name == new).context("leader not ours")?;
            let port = c.nodes[ni].pg_port;
            poll_until("the new leader writable", Duration::from_secs(60), || async move {
                let rows = sql_at(port, "SELECT NOT pg_is_in_recovery()").await.ok()?;
                rows[0].get::<_, bool>(0).then_some(())
            })
            .await?;
            // A different range each round, so each rewind has its own change.
            let from = (n as u64 - 1) * changed % accounts;
            sql_at(
                port,
                &format!(
                    "UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid > {from} AND aid <= {}",
                    from + changed
                ),
            )
            .await?;
            let copies_before = rewind_copies(&std::fs::read_to_string(&c.nodes[li].log_path)?).len();
            let started = Instant::now();
            c.start_agent(li)?;
            let streaming = |name: String| {
                let c = &c;
                async move {
                    let v = c.view().await.ok()?;
                    let tl = v.leader_member()?.timeline;
                    let m = v.members.get(&name)?;
                    (m.replication_state.as_deref() == Some("streaming") && m.timeline == tl)
                        .then_some(())
                }
            };
            poll_until("the old leader streaming after its rewind", Duration::from_secs(1800), || {
                streaming(leader.clone())
            })
            .await?;
            let rewind = started.elapsed();
            let copies = rewind_copies(&std::fs::read_to_string(&c.nodes[li].log_path)?);
            let Some((copied_mb, total_mb)) = copies.get(copies_before).copied() else {
                bail!("{leader} rejoined without pg_rewind (no \"need to copy\" in its log)");
            };
            let started = Instant::now();
            let out = tokio::process::Command::new(baton)
                .args(["reinit", "--etcd", &c.etcd.endpoint, "--scope", &c.scope, &leader, "--force", "--wait"])
                .output()
                .await
                .context("running baton reinit")?;
            if !out.status.success() {
                bail!("baton reinit failed: {}", String::from_utf8_lossy(&out.stderr));
            }
            poll_until("the rebuilt member streaming", Duration::from_secs(1800), || {
                streaming(leader.clone())
            })
            .await?;
            let rebuild = started.elapsed();
            // The rebuild moved the old data directory aside: a bench
            // has no use for a copy of every round.
            let data = &c.nodes[li].data_dir;
            let prefix = format!("{}.baton-old-", data.file_name().unwrap_or_default().to_string_lossy());
            for e in std::fs::read_dir(data.parent().context("data dir has a parent")?)?.flatten() {
                if e.file_name().to_string_lossy().starts_with(&prefix) {
                    std::fs::remove_dir_all(e.path())?;
                }
            }
            println!(
                "run {n}: {leader} rewind {:.2} s (copied {copied_mb:.0} of {total_mb:.0} MB), rebuild {:.2} s",
                rewind.as_secs_f64(),
                rebuild.as_secs_f64()
            );
            rounds.push(RejoinRound { rewind, rebuild, copied_mb });
        }
        Ok((gb, rounds))
    }
    .await;
    teardown(&dir, c, &result);
    result
}

/// Waits until every member but the leader `li` has replayed the leader's
/// WAL as it stands now (`what` names it in the failure message).
async fn replicas_caught_up(
    c: &LocalCluster,
    li: usize,
    what: &str,
    limit: Duration,
) -> anyhow::Result<()> {
    let target: String =
        sql_at(c.nodes[li].pg_port, "SELECT pg_current_wal_lsn()::text").await?[0].get(0);
    let q = format!("SELECT pg_last_wal_replay_lsn() >= '{target}'::pg_lsn");
    for n in c
        .nodes
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != li)
        .map(|(_, n)| n)
    {
        let (port, q) = (n.pg_port, &q);
        poll_until(
            &format!("{} replayed {what}", n.name),
            limit,
            || async move {
                let rows = sql_at(port, q).await.ok()?;
                rows[0].get::<_, bool>(0).then_some(())
            },
        )
        .await?;
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

/// One pgbench run: TPS and the 99th percentile of transaction latency
/// (ms), from its per-transaction log.
fn pgbench_p99(
    bin_dir: &Path,
    port: u16,
    clients: u32,
    select_only: bool,
    seconds: u32,
    log_dir: &Path,
) -> anyhow::Result<(f64, f64)> {
    let _ = std::fs::remove_dir_all(log_dir);
    std::fs::create_dir_all(log_dir)?;
    let prefix = log_dir.join("tx");
    let mut cmd = std::process::Command::new(bin_dir.join("pgbench"));
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", "postgres"])
        .args([
            "-c",
            &clients.to_string(),
            "-j",
            &clients.min(2).to_string(),
        ])
        .args(["-T", &seconds.to_string(), "-l"])
        .arg(format!("--log-prefix={}", prefix.display()));
    if select_only {
        cmd.arg("-S");
    }
    let out = cmd.arg("postgres").output().context("running pgbench")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!(
            "pgbench on port {port} failed: {text}{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let tps = text
        .lines()
        .find_map(|l| {
            l.strip_prefix("tps = ")?
                .split_whitespace()
                .next()?
                .parse::<f64>()
                .ok()
        })
        .with_context(|| format!("no tps in pgbench output: {text}"))?;
    let mut lat = vec![];
    for f in std::fs::read_dir(log_dir)? {
        let body = std::fs::read_to_string(f?.path())?;
        lat.extend(
            body.lines()
                .filter_map(|l| l.split_whitespace().nth(2)?.parse::<u64>().ok()),
        );
    }
    if lat.is_empty() {
        bail!("pgbench wrote no transaction log in {}", log_dir.display());
    }
    lat.sort_unstable();
    let p99 = lat[(lat.len() * 99 / 100).min(lat.len() - 1)] as f64 / 1000.0;
    Ok((tps, p99))
}

/// The clock ticks of /proc's CPU times, per second (USER_HZ on Linux).
const USER_HZ: f64 = 100.0;

/// A process's CPU time (clock ticks) and its threads' voluntary context
/// switches (each a sleep and a wake-up) so far.
fn proc_cpu_and_sleeps(pid: u32) -> anyhow::Result<(u64, u64)> {
    let ticks = proc_usage(pid)?.2;
    let mut sleeps = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let status = std::fs::read_to_string(t?.path().join("status"))?;
        sleeps += status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .context("no voluntary_ctxt_switches in a thread's status")?;
    }
    Ok((ticks, sleeps))
}

/// One pgbench run, or the medians of several.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    tps: f64,
    p99: f64,
    /// The proxy's CPU time per transaction (zero for direct runs).
    cpu_us: f64,
}

struct RouterFigures {
    /// (target, clients, select_only) → the medians of its runs
    runs: std::collections::BTreeMap<(&'static str, u32, bool), Sample>,
    /// (a, b, clients, select_only) → the median over rounds of a's TPS
    /// over b's in the same round: the drift between rounds (this machine's
    /// speed varies by a third from minute to minute) cancels out, which
    /// it does not in a ratio of medians.
    paired: std::collections::BTreeMap<(&'static str, &'static str, u32, bool), f64>,
    refused: usize,
    max_wait: Duration,
}

async fn router_bench(baton: &Path, rounds: usize) -> anyhow::Result<RouterFigures> {
    let (dir, c) = bench_cluster(baton, "router", None)?;
    let result = async {
        c.wait_normal(Duration::from_secs(120)).await?;
        // BENCH_ROUTER_TOML: extra top-level keys of the router's file
        // (e.g. `busy_poll_us = 0`), to compare its settings here.
        let top = std::env::var("BENCH_ROUTER_TOML").unwrap_or_default();
        let router = c.start_router("router", &top, "")?;
        // BENCH_ROUTER_B_TOML: a second router with other settings, run
        // interleaved with the first, for a comparison free of the drift
        // between runs.
        let router_b = match std::env::var("BENCH_ROUTER_B_TOML") {
            Ok(top) => Some(c.start_router("router-b", &top, "")?),
            Err(_) => None,
        };
        let template = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/haproxy.cfg");
        let haproxy = baton_local::local::LocalHaproxy::start(&c, &template)?;
        let v = c.view().await?;
        let leader = v.leader_member().context("no leader")?;
        let (_, direct) = leader.pg_address().context("leader conn_url")?;
        let bin_dir = baton::config::default_bin_dir().map_err(anyhow::Error::msg)?;
        let init = std::process::Command::new(bin_dir.join("pgbench"))
            .args(["-i", "-s", "4", "-q", "-h", "127.0.0.1", "-p", &direct.to_string()])
            .args(["-U", "postgres", "postgres"])
            .output()?;
        if !init.status.success() {
            bail!("pgbench -i: {}", String::from_utf8_lossy(&init.stderr));
        }
        // HAProxy marks the leader up within a check interval.
        poll_until("HAProxy routing to the leader", Duration::from_secs(10), || async {
            pgbench_p99(&bin_dir, haproxy.rw_port, 1, true, 1, &dir.join("warm")).ok()
        })
        .await?;
        let mut targets = vec![
            ("direct", direct, None),
            ("router", router.rw_port, router.pid()),
            ("haproxy", haproxy.rw_port, haproxy.pid()),
        ];
        if let Some(b) = &router_b {
            targets.push(("router-b", b.rw_port, b.pid()));
        }
        // BENCH_ROUTER_CLIENTS (e.g. `8,32`) and BENCH_ROUTER_SELECT_ONLY=1
        // narrow the grid, for many quick rounds when comparing settings.
        let client_counts: Vec<u32> = match std::env::var("BENCH_ROUTER_CLIENTS") {
            Ok(v) => v
                .split(',')
                .map(|c| c.trim().parse().context("BENCH_ROUTER_CLIENTS: a list of client counts"))
                .collect::<anyhow::Result<_>>()?,
            Err(_) => vec![1, 8, 32],
        };
        let scripts: &[bool] = if std::env::var("BENCH_ROUTER_SELECT_ONLY").is_ok_and(|v| v == "1") {
            &[true]
        } else {
            &[true, false]
        };
        let switchovers: u32 = match std::env::var("BENCH_ROUTER_SWITCHOVERS") {
            Ok(v) => v.trim().parse().context("BENCH_ROUTER_SWITCHOVERS: a count")?,
            Err(_) => 5,
        };
        // Each pgbench run's length.
        const RUN_SECONDS: u32 = 5;
        let mut samples: std::collections::BTreeMap<_, Vec<Sample>> = Default::default();
        for round in 0..rounds {
            for &clients in &client_counts {
                for &select_only in scripts {
                    // Interleaved, and the order rotates each round, so no
                    // target always runs on a warmer cache.
                    for k in 0..targets.len() {
                        let (name, port, pid) = targets[(k + round) % targets.len()];
                        let before = pid.map(proc_cpu_and_sleeps).transpose()?;
                        let (tps, p99) = pgbench_p99(
                            &bin_dir,
                            port,
                            clients,
                            select_only,
                            RUN_SECONDS,
                            &dir.join("log"),
                        )?;
                        // The proxy's own cost per transaction: CPU time and
                        // how often its threads slept and were woken.
                        let (mut cpu_us, mut cost) = (0.0, String::new());
                        if let (Some(a), Some(b)) = (pid.map(proc_cpu_and_sleeps).transpose()?, before) {
                            let tx = tps * f64::from(RUN_SECONDS);
                            cpu_us = (a.0 - b.0) as f64 / USER_HZ * 1e6 / tx;
                            cost = format!(
                                "; proxy {cpu_us:.1} µs cpu, {:.2} wake-ups per transaction",
                                (a.1 - b.1) as f64 / tx
                            );
                        }
                        println!(
                            "round {} {name:>8} clients {clients:>2} {}: tps {tps:.0} p99 {p99:.3} ms{cost}",
                            round + 1,
                            if select_only { "select-only" } else { "tpcb-like  " },
                        );
                        samples
                            .entry((name, clients, select_only))
                            .or_default()
                            .push(Sample { tps, p99, cpu_us });
                    }
                }
            }
        }
        // Ratios within a round cancel the drift between rounds.
        let mut paired = std::collections::BTreeMap::new();
        for &clients in &client_counts {
            for &select_only in scripts {
                for (a, b) in [
                    ("router", "direct"),
                    ("router", "haproxy"),
                    ("router-b", "haproxy"),
                    ("router-b", "router"),
                ] {
                    let (Some(r), Some(h)) = (samples.get(&(a, clients, select_only)), samples.get(&(b, clients, select_only))) else {
                        continue;
                    };
                    let ratio = median(r.iter().zip(h).map(|(r, h)| r.tps / h.tps).collect());
                    println!(
                        "paired {a}/{b} {} {clients:>2} clients: median {ratio:.2} over {} rounds",
                        if select_only { "select-only" } else { "tpcb-like" },
                        r.len()
                    );
                    paired.insert((a, b, clients, select_only), ratio);
                }
            }
        }
        let runs = samples
            .into_iter()
            .map(|(k, v)| {
                let m = Sample {
                    tps: median(v.iter().map(|r| r.tps).collect()),
                    p99: median(v.iter().map(|r| r.p99).collect()),
                    cpu_us: median(v.iter().map(|r| r.cpu_us).collect()),
                };
                (k, m)
            })
            .collect();

        // A client connecting every 10 ms through the router, during 5
        // switchovers: refused connects and the longest wait.
        let stop = CancellationToken::new();
        let connector = {
            let (stop, port) = (stop.clone(), router.rw_port);
            tokio::spawn(async move {
                let (mut refused, mut longest, mut ok) = (0usize, Duration::ZERO, 0usize);
                let deadline = Instant::now() + Duration::from_secs(900);
                while !stop.is_cancelled() && Instant::now() < deadline {
                    let cfg = workload::loopback(port, Duration::from_secs(40));
                    let t = Instant::now();
                    match cfg.connect(tokio_postgres::NoTls).await {
                        Ok((client, conn)) => {
                            if t.elapsed() > Duration::from_millis(100) {
                                println!(
                                    "  a connect waited {:.0} ms ({})",
                                    t.elapsed().as_secs_f64() * 1000.0,
                                    chrono::Utc::now().format("%H:%M:%S%.3f")
                                );
                            }
                            longest = longest.max(t.elapsed());
                            tokio::spawn(conn);
                            match client.simple_query("SELECT 1").await {
                                Ok(_) => ok += 1,
                                Err(e) => {
                                    refused += 1;
                                    eprintln!("query after connect failed: {e}");
                                }
                            }
                        }
                        Err(e) => {
                            refused += 1;
                            eprintln!("connect refused: {e}");
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                (refused, longest, ok)
            })
        };
        for n in 1..=switchovers {
            let (old, _) = c.switchover_via_api().await?;
            let new = c.wait_new_leader(&old, Duration::from_secs(30)).await?;
            c.wait_normal(Duration::from_secs(60)).await?;
            println!(
                "switchover {n}: {old} -> {new} (done {})",
                chrono::Utc::now().format("%H:%M:%S%.3f")
            );
        }
        stop.cancel();
        let (refused, max_wait, ok) = connector.await?;
        println!("connects during the switchovers: {ok} ok, {refused} refused, longest wait {max_wait:?}");
        drop(haproxy);
        drop(router_b);
        drop(router);
        Ok(RouterFigures {
            runs,
            paired,
            refused,
            max_wait,
        })
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
        .context("usage: bench failover|pgcrash|hostdeath|replicas|footprint|rejoin|switchover|sync-cost|router [RUNS] [--sync on|quorum]")?;
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
            let crashes = pgcrash_runs(&baton, runs, sync).await?;
            let gaps: Vec<f64> = crashes.iter().map(|r| r.gap.as_secs_f64()).collect();
            let mut deaths = vec![];
            for n in 1..=runs {
                deaths.push(host_death_run(&baton, n, sync).await?);
            }
            let host: Vec<f64> = deaths.iter().map(|r| r.gap.as_secs_f64()).collect();
            let lost = lost
                + crashes.iter().map(|r| r.lost).sum::<usize>()
                + deaths.iter().map(|r| r.lost).sum::<usize>();
            // The kill of agent and postgres with the host up is the
            // process death (`rto_*`, kept under its old name too).
            println!(
                "RESULT {label}rto_median_s={:.2} rto_max_s={:.2} lost_acked={lost} rejoin_median_s={:.2} pgcrash_gap_median_s={:.3} pgcrash_gap_max_s={:.3} process_death_rto_median_s={:.2} host_death_rto_median_s={:.2} host_death_rto_max_s={:.2}",
                median(rto.clone()),
                max(&rto),
                median(rejoin),
                median(gaps.clone()),
                max(&gaps),
                median(rto.clone()),
                median(host.clone()),
                max(&host)
            );
        }
        "replicas" => {
            let replicas = env_or("REPLICAS", 10)? as usize;
            let mut gaps = vec![];
            let mut asks = vec![];
            for n in 1..=runs {
                let (g, a) = replicas_run(&baton, n, replicas).await?;
                gaps.push(g);
                asks.push(a);
            }
            println!(
                "RESULT replicas={replicas} failover_s={:.2} failover_max_s={:.2} election_requests={:.0}",
                median(gaps.clone()),
                max(&gaps),
                median(asks)
            );
        }
        "hostdeath" => {
            let mut deaths = vec![];
            for n in 1..=runs {
                deaths.push(host_death_run(&baton, n, sync).await?);
            }
            let host: Vec<f64> = deaths.iter().map(|r| r.gap.as_secs_f64()).collect();
            let lost: usize = deaths.iter().map(|r| r.lost).sum();
            println!(
                "RESULT {label}host_death_rto_median_s={:.2} host_death_rto_max_s={:.2} lost_acked={lost}",
                median(host.clone()),
                max(&host)
            );
        }
        "pgcrash" => {
            let crashes = pgcrash_runs(&baton, runs, sync).await?;
            let gaps: Vec<f64> = crashes.iter().map(|r| r.gap.as_secs_f64()).collect();
            let lost: usize = crashes.iter().map(|r| r.lost).sum();
            println!(
                "RESULT {label}pgcrash_gap_median_s={:.3} pgcrash_gap_max_s={:.3} lost_acked={lost}",
                median(gaps.clone()),
                max(&gaps)
            );
        }
        "rejoin" => {
            let db_gb = env_or("DB_GB", 5.0)?;
            let pct = env_or("CHANGED_PCT", 1.0)?;
            let (gb, rounds) = rejoin_bench(&baton, runs, db_gb, pct).await?;
            let rewind: Vec<f64> = rounds.iter().map(|r| r.rewind.as_secs_f64()).collect();
            let rebuild: Vec<f64> = rounds.iter().map(|r| r.rebuild.as_secs_f64()).collect();
            let copied: Vec<f64> = rounds.iter().map(|r| r.copied_mb).collect();
            let (rw, rb) = (median(rewind), median(rebuild));
            println!(
                "RESULT db_gb={gb:.1} changed_pct={pct} rewind_s={rw:.2} rebuild_s={rb:.2} rewind_copied_mb={:.0} rebuild_over_rewind={:.1}",
                median(copied),
                rb / rw
            );
        }
        "footprint" => {
            let window = Duration::from_secs(env_or("FOOTPRINT_SECONDS", 60)?);
            let mut all = vec![];
            for n in 1..=runs {
                all.extend(footprint_run(&baton, n, window).await?);
            }
            let rss: Vec<f64> = all.iter().map(|a| a.0 as f64).collect();
            let anon: Vec<f64> = all.iter().map(|a| a.1 as f64).collect();
            let cpu: Vec<f64> = all.iter().map(|a| a.2).collect();
            println!(
                "RESULT agent_rss_kb={:.0} agent_rss_max_kb={:.0} agent_private_kb={:.0} agent_idle_cpu_pct={:.3} agent_idle_cpu_max_pct={:.3}",
                median(rss.clone()),
                max(&rss),
                median(anon),
                median(cpu.clone()),
                max(&cpu)
            );
        }
        "switchover" => {
            let results = switchovers(&baton, runs, sync).await?;
            let gaps: Vec<f64> = results.iter().map(|r| r.gap.as_secs_f64()).collect();
            let lost: usize = results.iter().map(|r| r.lost).sum();
            println!(
                "RESULT {label}gap_median_s={:.3} gap_max_s={:.3} lost_acked={lost}",
                median(gaps.clone()),
                max(&gaps)
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
        "router" => {
            let f = router_bench(&baton, runs).await?;
            let get = |t: &'static str, c: u32, s: bool| {
                f.runs.get(&(t, c, s)).copied().unwrap_or_default()
            };
            // NaN where a pair did not run (a narrowed grid).
            let ratio = |a: &'static str, b: &'static str, c: u32, s: bool| {
                f.paired.get(&(a, b, c, s)).copied().unwrap_or(f64::NAN)
            };
            for &(_, clients, select_only) in f.runs.keys().filter(|k| k.0 == "direct") {
                let (d, r, h) = (
                    get("direct", clients, select_only),
                    get("router", clients, select_only),
                    get("haproxy", clients, select_only),
                );
                println!(
                    "median {} {clients:>2} clients: direct {:.0} tps, router {:.0}, haproxy {:.0}; paired ratios router/direct {:.2}, router/haproxy {:.2}; p99 ms direct {:.3} router {:.3} haproxy {:.3}; proxy µs cpu per transaction router {:.1} haproxy {:.1}",
                    if select_only { "select-only" } else { "tpcb-like  " },
                    d.tps,
                    r.tps,
                    h.tps,
                    ratio("router", "direct", clients, select_only),
                    ratio("router", "haproxy", clients, select_only),
                    d.p99,
                    r.p99,
                    h.p99,
                    r.cpu_us,
                    h.cpu_us
                );
            }
            let (d1, r1) = (get("direct", 1, true), get("router", 1, true));
            let (r8, h8) = (get("router", 8, true), get("haproxy", 8, true));
            // With a second router (BENCH_ROUTER_B_TOML), its ratios too.
            let b = match f.runs.keys().any(|k| k.0 == "router-b") {
                true => format!(
                    " router_b_vs_haproxy_tps={:.2} router_b_vs_haproxy_tps_32={:.2} router_b_vs_router_tps={:.2}",
                    ratio("router-b", "haproxy", 8, true),
                    ratio("router-b", "haproxy", 32, true),
                    ratio("router-b", "router", 8, true),
                ),
                false => String::new(),
            };
            println!(
                "RESULT router_vs_direct_tps={:.2} router_vs_haproxy_tps={:.2} router_vs_haproxy_tps_32={:.2} router_p99_ms={:.3} direct_p99_ms={:.3} switchover_refused={} switchover_max_wait_s={:.3} router_cpu_us_per_tx={:.1} haproxy_cpu_us_per_tx={:.1}{b}",
                ratio("router", "direct", 1, true),
                ratio("router", "haproxy", 8, true),
                ratio("router", "haproxy", 32, true),
                r1.p99,
                d1.p99,
                f.refused,
                f.max_wait.as_secs_f64(),
                r8.cpu_us,
                h8.cpu_us
            );
        }
        other => bail!("unknown benchmark {other:?}: failover, switchover, sync-cost or router"),
    }
    Ok(())
}
