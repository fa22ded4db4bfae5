//! `bench/scale` (not a test of the default suite: `#[ignore]`, and it needs
//! the etcd cluster the script starts): many clusters of three **real agent
//! loops** over the simulated postgres (`instance.rs`) and peers, all in this
//! process, against a **real etcd** (`BATON_SCALE_ETCD`), on real time. It
//! measures what the agents cost etcd (requests, puts, fsyncs, CPU, from
//! etcd's own `/metrics`) and how long a failover of one cluster takes
//! alone and with the others running. The simulated instances are only a
//! stand-in for postgres: what is measured is the agents' and etcd's side.

use std::collections::BTreeMap;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use baton::agent::Agent;
use baton::dcs::Dcs;
use baton_core::config::SyncMode;

use crate::driver::{crash_pg, node_config, physics, Faults, NODES};
use crate::instance::SimPg;
use crate::peers::SimPeers;
use crate::world::{Mode, Shared, World};

fn env_num(key: &str, default: u64) -> u64 {
    match std::env::var(key) {
        Ok(s) => s
            .parse()
            .unwrap_or_else(|_| panic!("{key}={s}: not a number")),
        Err(_) => default,
    }
}

/// One cluster: its world (three simulated instances) and its agents.
struct Cluster {
    world: Shared,
    dcs: Dcs,
    tasks: Vec<Option<JoinHandle<Result<(), baton::agent::AgentError>>>>,
    physics: JoinHandle<()>,
}

impl Cluster {
    fn new(base: &Dcs, n: usize, writes: bool) -> Cluster {
        let mut w = World::new(NODES, n as u64 + 1, Faults::default(), SyncMode::Off);
        w.writes = writes;
        w.least_steps = true;
        let world = Shared(std::sync::Arc::new(std::sync::Mutex::new(w)));
        // WAL moves, promotions land, fences act: the driver's physics on
        // real time, every 100 ms; every 10 ms in the measured cluster,
        // whose failover time should not move by where a step fell.
        let every = Duration::from_millis(if n == 0 { 10 } else { 100 });
        let w = world.clone();
        let physics = tokio::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let mut w = w.lock();
                physics(&mut w);
                // The invariants read the in-memory etcd this run does not
                // use; the simulator proper checks them.
                w.violation = None;
                if w.log.len() > 1000 {
                    w.log.drain(..500);
                }
            }
        });
        let mut c = Cluster {
            world,
            dcs: base.with_prefix(format!("/service/scale-{n}/")),
            tasks: (0..NODES).map(|_| None).collect(),
            physics,
        };
        for i in 0..NODES {
            c.start(i);
        }
        c
    }

    fn start(&mut self, i: usize) {
        let epoch = {
            let mut w = self.world.lock();
            let n = &mut w.nodes[i];
            n.epoch += 1;
            n.agent_alive = true;
            n.epoch
        };
        let cfg = node_config(i, SyncMode::Off);
        let timeout = cfg.bootstrap.retry_timeout();
        let pg = SimPg {
            world: self.world.clone(),
            node: i,
            epoch,
        };
        let peers = SimPeers {
            world: self.world.clone(),
            node: i,
            epoch,
            timeout,
        };
        // Its own handle on the shared connection: its own keep-alive
        // stream and watch, as a separate process would have.
        let dcs = self.dcs.with_prefix(self.dcs.prefix().to_string());
        let agent = Agent::assemble(cfg, dcs, pg, peers);
        // The peers read the handle's snapshot only, never its store.
        let store = crate::store::SimStore {
            world: self.world.clone(),
            node: i,
            epoch,
            timeout,
        };
        self.world.lock().nodes[i].handle = Some(agent.handle().with_store(store));
        self.tasks[i] = Some(tokio::spawn(agent.run(CancellationToken::new())));
    }

    /// Agent and postgres of node `i` gone, as a killed host's processes.
    fn kill(&mut self, i: usize) {
        if let Some(t) = self.tasks[i].take() {
            t.abort();
        }
        let mut w = self.world.lock();
        w.nodes[i].agent_died();
        w.nodes[i].fence = None;
        crash_pg(&mut w, i);
    }

    /// The primary, if one runs with both others streaming from it.
    fn normal(&self) -> Option<usize> {
        let w = self.world.lock();
        let p = (0..NODES).find(|i| w.nodes[*i].pg.running == Some(Mode::Primary))?;
        (0..NODES)
            .filter(|i| *i != p)
            .all(|i| w.streaming_from(i) == Some(p))
            .then_some(p)
    }

    fn primary_other_than(&self, old: usize) -> Option<usize> {
        let w = self.world.lock();
        (0..NODES).find(|i| *i != old && w.nodes[*i].pg.running == Some(Mode::Primary))
    }

    fn stop(self) {
        for t in self.tasks.into_iter().flatten() {
            t.abort();
        }
        self.physics.abort();
    }
}

async fn wait_normal(clusters: &[Cluster], limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let behind = clusters.iter().filter(|c| c.normal().is_none()).count();
        if behind == 0 {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{behind} of {} clusters not Normal after {limit:?}",
            clusters.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Kills cluster `c`'s primary node and times until another member runs
/// as primary; then brings the node back and waits for Normal again.
async fn failover(c: &mut Cluster) -> f64 {
    let old = c.normal().expect("a Normal cluster to fail over");
    let killed = Instant::now();
    c.kill(old);
    let limit = Duration::from_secs(60);
    while c.primary_other_than(old).is_none() {
        assert!(
            killed.elapsed() < limit,
            "no new primary {limit:?} after the kill"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let took = killed.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    c.start(old);
    wait_normal(std::slice::from_ref(c), Duration::from_secs(60)).await;
    took
}

/// Sums of etcd's counters over its members' `/metrics`.
async fn etcd_counters(
    http: &reqwest::Client,
    endpoints: &[String],
) -> BTreeMap<&'static str, f64> {
    let wanted = [
        // Messages, not RPCs: a keep-alive on an open stream is one
        // message and no finished RPC.
        ("grpc_server_msg_received_total", "requests"),
        ("etcd_mvcc_put_total", "puts"),
        ("etcd_mvcc_txn_total", "txns"),
        ("etcd_disk_wal_fsync_duration_seconds_count", "fsyncs"),
        ("process_cpu_seconds_total", "cpu"),
        // Applied by every member: divided by their number below. No agent
        // revokes a lease while its cluster runs, so these are expiries.
        ("etcd_debugging_lease_revoked_total", "revoked"),
    ];
    let mut sums: BTreeMap<&'static str, f64> = BTreeMap::new();
    for e in endpoints {
        let text = http
            .get(format!("{e}/metrics"))
            .send()
            .await
            .and_then(|r| r.error_for_status())
            .unwrap_or_else(|err| panic!("etcd metrics of {e}: {err}"))
            .text()
            .await
            .expect("etcd metrics body");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = match line.rsplit_once(' ') {
                Some((n, v)) => (n.split('{').next().unwrap_or(n), v),
                None => continue,
            };
            if let Some((_, key)) = wanted.iter().find(|(m, _)| *m == name) {
                *sums.entry(key).or_default() += value.parse::<f64>().unwrap_or(0.0);
            }
        }
    }
    sums
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

#[test]
#[ignore = "bench/scale runs it against the etcd cluster it starts"]
fn scale() {
    let endpoints: Vec<String> = std::env::var("BATON_SCALE_ETCD")
        .expect("BATON_SCALE_ETCD: the etcd client URLs, comma-separated")
        .split(',')
        .map(str::to_string)
        .collect();
    let clusters = env_num("BATON_SCALE_CLUSTERS", 1000) as usize;
    let window = env_num("BATON_SCALE_SECONDS", 30);
    let failovers = env_num("BATON_SCALE_FAILOVERS", 5) as usize;
    // Idle by default, as most of a fleet is: a primary that takes no
    // writes changes no member key. `BATON_SCALE_WRITES=1`: every primary
    // writes, so every member key changes every tick.
    let writes = env_num("BATON_SCALE_WRITES", 0) == 1;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let base = Dcs::connect(&endpoints, "/service/scale/".into(), Duration::from_secs(1))
            .await
            .expect("etcd");
        let http = baton::tls::http_client(Duration::from_secs(5), None).expect("http client");

        // One cluster alone first.
        let mut all = vec![Cluster::new(&base, 0, writes)];
        wait_normal(&all, Duration::from_secs(60)).await;
        let mut alone = vec![];
        for _ in 0..failovers {
            alone.push(failover(&mut all[0]).await);
        }
        eprintln!("alone: failovers {alone:?}");

        // Then the others, in batches, as a fleet is rolled out.
        let members = endpoints.len() as f64;
        let expired = |a: &BTreeMap<&str, f64>, b: &BTreeMap<&str, f64>| {
            (b.get("revoked").unwrap_or(&0.0) - a.get("revoked").unwrap_or(&0.0)) / members
        };
        let rollout = etcd_counters(&http, &endpoints).await;
        let started = Instant::now();
        for n in 1..clusters {
            all.push(Cluster::new(&base, n, writes));
            if n % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        // The fleet need not be all Normal to be measured: how many are,
        // and why the others are not, is part of the result.
        let limit = Duration::from_secs(env_num("BATON_SCALE_CONVERGE_SECONDS", 300));
        let normal = loop {
            let normal = all.iter().filter(|c| c.normal().is_some()).count();
            if normal == all.len() || started.elapsed() >= limit {
                break normal;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        let converge = started.elapsed().as_secs_f64();
        eprintln!(
            "{normal} of {clusters} clusters Normal {converge:.1} s after the first of the others started"
        );
        for (n, c) in all.iter().enumerate().filter(|(_, c)| c.normal().is_none()).take(3) {
            let w = c.world.lock();
            let why: Vec<String> = w
                .nodes
                .iter()
                .map(|node| {
                    let reason = node.handle.as_ref().map(|h| h.snapshot().reason);
                    format!("{}: {:?} {reason:?}", node.name, node.pg.running)
                })
                .collect();
            eprintln!("cluster {n} not Normal: {why:?}");
        }
        assert!(all[0].normal().is_some(), "the measured cluster is not Normal");

        // Steady state: what the idle fleet costs etcd.
        let before = etcd_counters(&http, &endpoints).await;
        // Leases that expired while the fleet came up: each is a member
        // key gone and granted again, which is more load on etcd.
        let expired_rollout = expired(&rollout, &before);
        let t0 = Instant::now();
        tokio::time::sleep(Duration::from_secs(window)).await;
        let after = etcd_counters(&http, &endpoints).await;
        let secs = t0.elapsed().as_secs_f64();
        let rate = |k: &str| (after.get(k).unwrap_or(&0.0) - before.get(k).unwrap_or(&0.0)) / secs;
        let expired_steady = expired(&before, &after);
        // Every member applies every put: per member, the cluster's rate.
        let (requests, puts, txns, fsyncs, cpu) = (
            rate("requests"),
            rate("puts") / members,
            rate("txns") / members,
            rate("fsyncs"),
            rate("cpu") * 100.0,
        );
        eprintln!(
            "idle fleet over {secs:.0} s: {requests:.0} requests/s, {puts:.1} puts/s, \
             {txns:.1} txns/s, {fsyncs:.1} fsyncs/s (all members), etcd CPU {cpu:.0} % of a core (all members); \
             leases expired: {expired_rollout:.0} during roll-out, {expired_steady:.0} while idle"
        );

        let mut loaded = vec![];
        for _ in 0..failovers {
            loaded.push(failover(&mut all[0]).await);
        }
        eprintln!("loaded: failovers {loaded:?}");
        for c in all {
            c.stop();
        }
        let (alone, loaded) = (median(alone), median(loaded));
        println!(
            "RESULT clusters={clusters} normal={normal} writes={writes} etcd_requests_per_s={requests:.0} etcd_puts_per_s={puts:.1} \
             etcd_txns_per_s={txns:.1} etcd_fsyncs_per_s={fsyncs:.1} etcd_cpu_pct={cpu:.0} \
             failover_s_loaded={loaded:.2} failover_s_alone={alone:.2} loaded_over_alone={:.2} \
             converge_s={converge:.0} leases_expired_rollout={expired_rollout:.0} leases_expired_idle={expired_steady:.0}",
            loaded / alone
        );
    });
}
