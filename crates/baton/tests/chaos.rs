//! Chaos on a real network (issue 10): three hosts and etcd, each in a
//! network namespace this test creates, joined by a bridge in a fifth;
//! faults drop packets (nftables DROP rules inside a host), freeze etcd,
//! stall or kill the leader's agent, or kill the whole leader host, under
//! a writer per host and a multi-host writer at ~100 writes/s each.
//!
//! After each fault: never two hosts acknowledging writes at once, the
//! cluster Normal again within 30 s of healing, and the acknowledged writes
//! missing from the final leader counted (replication is asynchronous, so
//! an old primary's last acks before its fence can be lost: reported, not
//! hidden).
//!
//! CI runs every scenario once. `BATON_CHAOS_RUNS=5 cargo test -p baton
//! --test chaos -- --nocapture` runs each five times and prints the table;
//! `BATON_CHAOS_ONLY=agent_stalled,etcd_frozen` picks scenarios;
//! `BATON_CHAOS_SYNC=on` (or `quorum`) runs them in that synchronous mode,
//! where any acknowledged write missing from the final leader fails the run.
//!
//! Needs root (network namespaces) and `ip`, `nft`: `scripts/test`
//! installs iproute2 and nftables. The test re-runs itself inside the
//! client namespace, from where it reaches every host as a client would.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use baton_core::status::{ClusterState, ClusterStatus};
use baton_local::workload::{self, WriteLog};
use common::TestDir;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio_util::sync::CancellationToken;

const INNER: &str = "BATON_CHAOS_INNER";
const NET: &str = "10.77.0";
const ETCD_IP: &str = "10.77.0.10";
const CLIENT_IP: &str = "10.77.0.20";
const HOSTS: usize = 3;

fn host_ip(i: usize) -> String {
    format!("{NET}.{}", 11 + i)
}

fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd.output().map_err(|e| format!("{cmd:?}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{cmd:?}: {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> Result<String, String> {
    run(Command::new("ip").args(args))
}

/// The namespaces: `<p>sw` (the bridge), `<p>e` (etcd), `<p>h1..3`, `<p>cl`.
struct Net {
    prefix: String,
}

impl Net {
    fn ns(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    fn host(&self, i: usize) -> String {
        self.ns(&format!("h{}", i + 1))
    }

    fn names(&self) -> Vec<String> {
        let mut v = vec![self.ns("sw"), self.ns("e"), self.ns("cl")];
        v.extend((0..HOSTS).map(|i| self.host(i)));
        v
    }

    fn create() -> Result<Net, String> {
        let net = Net {
            prefix: format!("bc{}", std::process::id() % 100_000),
        };
        let sw = net.ns("sw");
        let made = (|| {
            ip(&["netns", "add", &sw])?;
            ip(&["-n", &sw, "link", "set", "lo", "up"])?;
            ip(&["-n", &sw, "link", "add", "br0", "type", "bridge"])?;
            ip(&["-n", &sw, "link", "set", "br0", "up"])?;
            let mut members = vec![
                (net.ns("e"), ETCD_IP.to_string()),
                (net.ns("cl"), CLIENT_IP.to_string()),
            ];
            members.extend((0..HOSTS).map(|i| (net.host(i), host_ip(i))));
            for (k, (ns, addr)) in members.iter().enumerate() {
                let port = format!("p{k}");
                ip(&["netns", "add", ns])?;
                ip(&["-n", ns, "link", "set", "lo", "up"])?;
                ip(&[
                    "-n", &sw, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", ns,
                ])?;
                ip(&["-n", &sw, "link", "set", &port, "master", "br0", "up"])?;
                ip(&[
                    "-n",
                    ns,
                    "addr",
                    "add",
                    &format!("{addr}/24"),
                    "dev",
                    "eth0",
                ])?;
                ip(&["-n", ns, "link", "set", "eth0", "up"])?;
            }
            Ok(())
        })();
        made.map(|()| net)
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in self.names() {
            let _ = ip(&["netns", "del", &ns]);
        }
    }
}

/// The outer test: makes the network, runs itself inside `<p>cl`.
#[test]
fn chaos_scenarios_never_leave_two_writable_primaries() {
    if std::env::var_os(INNER).is_some() {
        return inner();
    }
    assert!(
        nix::unistd::geteuid().is_root(),
        "the chaos tests need root: they create network namespaces (scripts/test runs as root in CI)"
    );
    for tool in ["ip", "nft"] {
        assert!(
            Command::new(tool).arg("-V").output().is_ok(),
            "`{tool}` is missing: scripts/test installs iproute2 and nftables"
        );
    }
    let _slot = common::one_cluster_at_a_time();
    let net = Net::create().unwrap_or_else(|e| panic!("creating the namespaces: {e}"));
    let status = Command::new("ip")
        .args(["netns", "exec", &net.ns("cl")])
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "chaos_scenarios_never_leave_two_writable_primaries",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(INNER, &net.prefix)
        .status()
        .expect("running the scenarios inside the client namespace");
    drop(net);
    assert!(
        status.success(),
        "the scenarios failed ({status}); see above"
    );
}

fn inner() {
    let prefix = std::env::var(INNER).unwrap();
    let net = Net { prefix };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let result = rt.block_on(scenarios(&net));
    // The namespaces are the outer test's to delete.
    std::mem::forget(net);
    result.unwrap_or_else(|e| panic!("{e}"));
}

struct Cluster {
    dir: TestDir,
    etcd: Option<Child>,
    agents: Vec<Option<Child>>,
    configs: Vec<PathBuf>,
    data_dirs: Vec<PathBuf>,
    dcs: baton::dcs::Dcs,
}

impl Cluster {
    async fn start(net: &Net) -> Cluster {
        let dir = TestDir::new("chaos");
        let etcd_dir = dir.path.join("etcd");
        std::fs::create_dir_all(&etcd_dir).unwrap();
        let url = format!("http://{ETCD_IP}:2379");
        let etcd = Command::new("ip")
            .args(["netns", "exec", &net.ns("e"), "etcd", "--name=chaos"])
            .arg(format!("--data-dir={}", etcd_dir.display()))
            .arg(format!("--listen-client-urls={url}"))
            .arg(format!("--advertise-client-urls={url}"))
            .args([
                "--listen-peer-urls=http://127.0.0.1:2380",
                "--initial-advertise-peer-urls=http://127.0.0.1:2380",
                "--initial-cluster=chaos=http://127.0.0.1:2380",
            ])
            .stdin(Stdio::null())
            .stdout(log_file(&dir.path, "etcd.log"))
            .stderr(log_file(&dir.path, "etcd.log"))
            .spawn()
            .expect("starting etcd in its namespace");
        let dcs = common::wait_for("etcd", Duration::from_secs(20), || async {
            baton::dcs::Dcs::connect(
                std::slice::from_ref(&url),
                "/service/chaos/".into(),
                Duration::from_secs(1),
            )
            .await
            .map_err(|e| e.to_string())
        })
        .await;
        let mut configs = vec![];
        let mut data_dirs = vec![];
        for i in 0..HOSTS {
            let name = format!("h{}", i + 1);
            let data = dir.path.join(&name);
            let cfg = dir.path.join(format!("{name}.toml"));
            std::fs::write(
                &cfg,
                format!(
                    r#"scope = "chaos"
name = "{name}"

[etcd]
endpoints = ["{url}"]

[api]
listen = "{ip}:8008"

[postgresql]
data_dir = "{data}"
listen = "{ip}:5432"
start_timeout = 30
pg_hba = ["local all all trust", "host all all {NET}.0/24 trust", "host replication all {NET}.0/24 trust"]

[postgresql.parameters]
shared_buffers = "32MB"
max_connections = 40

[bootstrap.dcs]
ttl = 4
loop_wait = 1
retry_timeout = 1
synchronous_mode = {sync}
"#,
                    ip = host_ip(i),
                    data = data.display(),
                    sync = sync_mode().map_or("false".to_string(), |m| format!("{m:?}")),
                ),
            )
            .unwrap();
            configs.push(cfg);
            data_dirs.push(data);
        }
        let mut c = Cluster {
            dir,
            etcd: Some(etcd),
            agents: (0..HOSTS).map(|_| None).collect(),
            configs,
            data_dirs,
            dcs,
        };
        c.start_agent(net, 0);
        c.wait_leader_not(None, Duration::from_secs(60)).await;
        for i in 1..HOSTS {
            c.start_agent(net, i);
        }
        c.wait_normal(Duration::from_secs(90)).await;
        c
    }

    fn start_agent(&mut self, net: &Net, i: usize) {
        let log = format!("h{}.agent.log", i + 1);
        let child = Command::new("ip")
            .args(["netns", "exec", &net.host(i)])
            .arg(common::baton_bin())
            .arg("agent")
            .arg("-c")
            .arg(&self.configs[i])
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log_file(&self.dir.path, &log))
            .stderr(log_file(&self.dir.path, &log))
            .spawn()
            .expect("starting an agent in its namespace");
        self.agents[i] = Some(child);
    }

    fn agent_pid(&self, i: usize) -> Pid {
        Pid::from_raw(self.agents[i].as_ref().expect("agent runs").id() as i32)
    }

    fn kill_agent(&mut self, i: usize) {
        if let Some(mut c) = self.agents[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn postmaster(&self, i: usize) -> Option<i32> {
        baton::pg::read_postmaster_pid(&self.data_dirs[i])
    }

    async fn status(&self) -> Result<ClusterStatus, String> {
        use baton::agent::Store as _;
        let v = self.dcs.load().await.map_err(|e| e.to_string())?;
        Ok(ClusterStatus::from_view("chaos", &v, v.max_lag()))
    }

    async fn wait_normal(&self, limit: Duration) -> ClusterStatus {
        common::wait_for("the cluster Normal with every host", limit, || async {
            let s = self.status().await?;
            if s.state == ClusterState::Normal && s.members.len() == HOSTS {
                Ok(s)
            } else {
                Err(s.render())
            }
        })
        .await
    }

    /// The index of a leader running as primary, other than `not`.
    async fn wait_leader_not(&self, not: Option<usize>, limit: Duration) -> usize {
        use baton::agent::Store as _;
        common::wait_for("a leader running as primary", limit, || async {
            let v = self.dcs.load().await.map_err(|e| e.to_string())?;
            let leader = v
                .leader_name()
                .and_then(|l| l.strip_prefix('h'))
                .and_then(|n| n.parse::<usize>().ok())
                .map(|n| n - 1);
            let running = v.leader_member().is_some_and(|m| m.is_running_primary());
            match leader {
                Some(l) if Some(l) != not && running => Ok(l),
                _ => Err(format!("leader {:?}", v.leader_name())),
            }
        })
        .await
    }

    fn stop(&mut self) {
        for i in 0..HOSTS {
            if let Some(c) = &self.agents[i] {
                let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGCONT);
                let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
            }
        }
        for i in 0..HOSTS {
            if let Some(mut c) = self.agents[i].take() {
                let until = Instant::now() + Duration::from_secs(20);
                while c.try_wait().ok().flatten().is_none() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(50));
                }
                let _ = c.kill();
                let _ = c.wait();
            }
            if let Some(pid) = self.postmaster(i) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGQUIT);
            }
        }
        if let Some(mut e) = self.etcd.take() {
            let _ = kill(Pid::from_raw(e.id() as i32), Signal::SIGCONT);
            let _ = e.kill();
            let _ = e.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn log_file(dir: &Path, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join(name))
        .unwrap()
}

/// nftables rules in host `i`'s namespace dropping every packet to and
/// from `addrs`: the host sees a silent network, not refused connections.
fn drop_traffic(net: &Net, i: usize, addrs: &[String]) {
    let ns = net.host(i);
    let set = addrs.join(", ");
    let rules = format!(
        "table inet chaos {{\n\
           chain out {{ type filter hook output priority 0; ip daddr {{ {set} }} drop; }}\n\
           chain in {{ type filter hook input priority 0; ip saddr {{ {set} }} drop; }}\n\
         }}\n"
    );
    let mut child = Command::new("ip")
        .args(["netns", "exec", &ns, "nft", "-f", "-"])
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(rules.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "nft rules in {ns}");
}

fn heal_traffic(net: &Net, i: usize) {
    let _ = run(Command::new("ip").args([
        "netns",
        "exec",
        &net.host(i),
        "nft",
        "delete",
        "table",
        "inet",
        "chaos",
    ]));
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Scenario {
    CutFromEtcd,
    Isolated,
    EtcdFrozen,
    AgentStalled,
    AgentKilled,
    HostKilled,
}

impl Scenario {
    const ALL: [Scenario; 6] = [
        Scenario::CutFromEtcd,
        Scenario::Isolated,
        Scenario::EtcdFrozen,
        Scenario::AgentStalled,
        Scenario::AgentKilled,
        Scenario::HostKilled,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::CutFromEtcd => "leader_cut_from_etcd",
            Scenario::Isolated => "leader_isolated",
            Scenario::EtcdFrozen => "etcd_frozen",
            Scenario::AgentStalled => "agent_stalled",
            Scenario::AgentKilled => "agent_killed",
            Scenario::HostKilled => "host_killed",
        }
    }

    /// How long the fault lasts before it is healed.
    fn hold(self) -> Duration {
        match self {
            Scenario::EtcdFrozen => Duration::from_secs(40),
            // ttl + 10 s.
            Scenario::AgentStalled => Duration::from_secs(14),
            _ => Duration::from_secs(15),
        }
    }
}

/// One run's figures, in seconds unless named otherwise.
struct Figures {
    takeover_s: Option<f64>,
    dual_writable_s: f64,
    old_acks_after_takeover: usize,
    lost_acked: usize,
    client_max_gap_s: f64,
    heal_to_normal_s: f64,
}

/// `BATON_CHAOS_SYNC`: the synchronous mode to run in, if any.
fn sync_mode() -> Option<String> {
    std::env::var("BATON_CHAOS_SYNC")
        .ok()
        .filter(|m| matches!(m.as_str(), "on" | "quorum"))
}

async fn scenarios(net: &Net) -> Result<(), String> {
    let runs: usize = std::env::var("BATON_CHAOS_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let only = std::env::var("BATON_CHAOS_ONLY").unwrap_or_default();
    let chosen: Vec<Scenario> = Scenario::ALL
        .into_iter()
        .filter(|s| only.is_empty() || only.split(',').any(|o| o == s.name()))
        .collect();
    let mut c = Cluster::start(net).await;
    let mut table = vec![];
    let mut failures = vec![];
    for run in 1..=runs {
        for &s in &chosen {
            let f = one(net, &mut c, s, run).await;
            eprintln!(
                "chaos {} run {run}: takeover {} dual-writable {:.3} s, old acks after takeover {}, lost acked {}, client max gap {:.2} s, heal->Normal {:.1} s",
                s.name(),
                f.takeover_s.map_or("-".into(), |t| format!("{t:.2} s")),
                f.dual_writable_s,
                f.old_acks_after_takeover,
                f.lost_acked,
                f.client_max_gap_s,
                f.heal_to_normal_s
            );
            if f.dual_writable_s > 0.0 || f.old_acks_after_takeover > 0 {
                failures.push(format!(
                    "{} run {run}: two writable primaries for {:.3} s ({} acks by the old one after the takeover)",
                    s.name(),
                    f.dual_writable_s,
                    f.old_acks_after_takeover
                ));
            }
            if sync_mode().is_some() && f.lost_acked > 0 {
                failures.push(format!(
                    "{} run {run}: {} acknowledged writes lost in synchronous mode",
                    s.name(),
                    f.lost_acked
                ));
            }
            if f.heal_to_normal_s > 30.0 {
                failures.push(format!(
                    "{} run {run}: Normal only {:.1} s after healing",
                    s.name(),
                    f.heal_to_normal_s
                ));
            }
            table.push((s, f));
        }
    }
    print_table(&chosen, &table);
    c.stop();
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

fn print_table(chosen: &[Scenario], table: &[(Scenario, Figures)]) {
    let med = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    };
    let max = |v: Vec<f64>| v.into_iter().fold(0.0, f64::max);
    eprintln!("| scenario | runs | takeover median/max s | dual-writable max s | old acks after takeover (max) | lost acked (median/max) | client max gap median/max s | heal→Normal median/max s |");
    eprintln!("|---|---|---|---|---|---|---|---|");
    for s in chosen {
        let rows: Vec<&Figures> = table
            .iter()
            .filter(|(k, _)| k == s)
            .map(|(_, f)| f)
            .collect();
        let takeovers: Vec<f64> = rows.iter().filter_map(|f| f.takeover_s).collect();
        let lost: Vec<f64> = rows.iter().map(|f| f.lost_acked as f64).collect();
        eprintln!(
            "| {} | {} | {} | {:.3} | {} | {:.0}/{:.0} | {:.2}/{:.2} | {:.1}/{:.1} |",
            s.name(),
            rows.len(),
            if takeovers.is_empty() {
                "-".to_string()
            } else {
                format!("{:.2}/{:.2}", med(takeovers.clone()), max(takeovers))
            },
            max(rows.iter().map(|f| f.dual_writable_s).collect()),
            rows.iter()
                .map(|f| f.old_acks_after_takeover)
                .max()
                .unwrap_or(0),
            med(lost.clone()),
            max(lost),
            med(rows.iter().map(|f| f.client_max_gap_s).collect()),
            max(rows.iter().map(|f| f.client_max_gap_s).collect()),
            med(rows.iter().map(|f| f.heal_to_normal_s).collect()),
            max(rows.iter().map(|f| f.heal_to_normal_s).collect()),
        );
    }
    let all: Vec<String> = chosen
        .iter()
        .map(|s| {
            let dual = table
                .iter()
                .filter(|(k, _)| k == s)
                .map(|(_, f)| f.dual_writable_s)
                .fold(0.0, f64::max);
            format!("{}_dual_writable_max_s={dual:.3}", s.name())
        })
        .collect();
    let lost: usize = table.iter().map(|(_, f)| f.lost_acked).sum();
    eprintln!(
        "RESULT sync={} {} lost_acked_total={lost}",
        sync_mode().unwrap_or_else(|| "off".into()),
        all.join(" ")
    );
}

/// One fault on the current leader, with writers running throughout.
async fn one(net: &Net, c: &mut Cluster, s: Scenario, run: usize) -> Figures {
    let leader = c.wait_leader_not(None, Duration::from_secs(30)).await;
    let tables: Vec<String> = (0..HOSTS)
        .map(|i| format!("c{run}_{}_h{}", s.name(), i + 1))
        .collect();
    let multi_table = format!("c{run}_{}_m", s.name());
    let hosts: Vec<(String, u16)> = (0..HOSTS).map(|i| (host_ip(i), 5432)).collect();
    let all = workload::read_write_config(&hosts, "postgres");
    for t in tables.iter().chain([&multi_table]) {
        workload::create_table(&all, t).await.unwrap();
    }
    let stop = CancellationToken::new();
    let mut writers = vec![];
    for (i, t) in tables.iter().enumerate() {
        let mut cfg = workload::read_write_config(&hosts[i..=i], "postgres");
        cfg.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::Any);
        writers.push(tokio::spawn(workload::run_writes(
            cfg,
            t.clone(),
            Duration::from_millis(10),
            stop.clone(),
        )));
    }
    let multi = tokio::spawn(workload::run_writes(
        all.clone(),
        multi_table.clone(),
        Duration::from_millis(10),
        stop.clone(),
    ));
    // Writes flowing on the leader before the fault.
    common::wait_for("writes on the leader", Duration::from_secs(10), || async {
        let n = present(&hosts[leader], &tables[leader]).await?.len();
        if n > 20 {
            Ok(())
        } else {
            Err(format!("{n}"))
        }
    })
    .await;

    let fault_at = Instant::now();
    let others: Vec<String> = (0..HOSTS).filter(|&i| i != leader).map(host_ip).collect();
    let mut stalled = None;
    match s {
        Scenario::CutFromEtcd => drop_traffic(net, leader, &[ETCD_IP.to_string()]),
        Scenario::Isolated => {
            let mut cut = others.clone();
            cut.push(ETCD_IP.to_string());
            drop_traffic(net, leader, &cut);
        }
        Scenario::EtcdFrozen => {
            let pid = Pid::from_raw(c.etcd.as_ref().unwrap().id() as i32);
            kill(pid, Signal::SIGSTOP).unwrap();
            stalled = Some(pid);
        }
        Scenario::AgentStalled => {
            let pid = c.agent_pid(leader);
            kill(pid, Signal::SIGSTOP).unwrap();
            stalled = Some(pid);
        }
        Scenario::AgentKilled => c.kill_agent(leader),
        Scenario::HostKilled => {
            c.kill_agent(leader);
            if let Some(pid) = c.postmaster(leader) {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
        }
    }
    // Hold the fault (a bounded wait on the clock: the fault's length is
    // what the scenario is).
    tokio::time::sleep(s.hold()).await;
    let healed_at = Instant::now();
    match s {
        Scenario::CutFromEtcd | Scenario::Isolated => heal_traffic(net, leader),
        Scenario::EtcdFrozen | Scenario::AgentStalled => {
            kill(stalled.unwrap(), Signal::SIGCONT).unwrap();
        }
        Scenario::AgentKilled | Scenario::HostKilled => c.start_agent(net, leader),
    }
    let normal = c.wait_normal(Duration::from_secs(90)).await;
    let heal_to_normal_s = healed_at.elapsed().as_secs_f64();
    let final_leader = c.wait_leader_not(None, Duration::from_secs(10)).await;
    // A second of writes on the final leader, then stop.
    common::wait_for("writes after healing", Duration::from_secs(15), || async {
        let n = present(&hosts[final_leader], &multi_table).await?.len();
        if n > 0 {
            Ok(())
        } else {
            Err(normal.render())
        }
    })
    .await;
    stop.cancel();
    let mut logs: Vec<WriteLog> = vec![];
    for w in writers {
        logs.push(w.await.unwrap());
    }
    let multi_log = multi.await.unwrap();

    // Who acknowledged after the fault, and when each started and stopped.
    let after = |l: &WriteLog| -> Vec<Instant> {
        l.acked
            .iter()
            .map(|(_, t)| *t)
            .filter(|t| *t > fault_at)
            .collect()
    };
    let old_acks = after(&logs[leader]);
    let new_first = (0..HOSTS)
        .filter(|&i| i != leader)
        .filter_map(|i| after(&logs[i]).first().copied())
        .min();
    let (takeover_s, dual_writable_s, old_acks_after_takeover) = match new_first {
        Some(n) => {
            let old_last = old_acks.last().copied();
            let dual = old_last.map_or(0.0, |o| o.saturating_duration_since(n).as_secs_f64());
            (
                Some(n.duration_since(fault_at).as_secs_f64()),
                dual,
                old_acks.iter().filter(|t| **t > n).count(),
            )
        }
        None => (None, 0.0, 0),
    };
    let mut lost_acked = 0;
    for (t, l) in tables.iter().zip(&logs).chain([(&multi_table, &multi_log)]) {
        let there = present(&hosts[final_leader], t).await.unwrap_or_default();
        lost_acked += l.acked.iter().filter(|(id, _)| !there.contains(id)).count();
    }
    let gaps: Vec<Duration> = multi_log
        .acked
        .windows(2)
        .filter(|w| w[1].1 > fault_at)
        .map(|w| w[1].1 - w[0].1)
        .collect();
    Figures {
        takeover_s,
        dual_writable_s,
        old_acks_after_takeover,
        lost_acked,
        client_max_gap_s: gaps.into_iter().max().unwrap_or_default().as_secs_f64(),
        heal_to_normal_s,
    }
}

async fn present(host: &(String, u16), table: &str) -> Result<BTreeSet<i64>, String> {
    let mut cfg = workload::read_write_config(std::slice::from_ref(host), "postgres");
    cfg.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::Any);
    Ok(workload::present_ids(&cfg, table)
        .await?
        .into_iter()
        .collect())
}
