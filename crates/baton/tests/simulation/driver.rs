//! One seed: three real agents (`baton::agent::Agent` over the simulated
//! store, instances and peers) on a current-thread tokio runtime with a
//! paused clock, so the run is deterministic and a minute of cluster life
//! takes milliseconds. The driver moves WAL (writes on primaries, streaming
//! to replicas), lands signalled promotions, injects faults for a while,
//! heals everything, and waits for the cluster to converge. The safety
//! invariants are checked after every change to the world.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use baton::agent::Agent;
use baton::config::NodeConfig;
use baton_core::config::SyncMode;
use baton_core::ha::sync::SyncRule;

use crate::instance::SimPg;
use crate::peers::SimPeers;
use crate::store::SimStore;
use crate::world::{host_of, Link, Mode, Shared, Wal, World, PG_PORT};

pub const NODES: usize = 3;

thread_local! {
    /// When the running seed began, for the log's virtual timestamps.
    pub static START: std::cell::Cell<Option<Instant>> = const { std::cell::Cell::new(None) };
}

/// Which faults a run injects.
#[derive(Clone, Copy, Debug, Default)]
pub struct Faults {
    /// Whole nodes killed (agent and postgres) and restarted.
    pub node_kills: bool,
    /// An agent killed while its postgres runs on, restarted after a
    /// while. Its fence process (rule 8) stops that postgres meanwhile.
    pub agent_kills: bool,
    /// Postgres killed under a live agent.
    pub pg_kills: bool,
    /// A node's link to etcd hangs, refuses, or loses answers.
    pub store_links: bool,
    /// A node cut from the other members (REST and replication).
    pub isolation: bool,
    /// etcd unreachable for everyone at once.
    pub store_outage: bool,
    /// A postgres whose queries hang for a while.
    pub pg_hangs: bool,
    /// Some steps (start, stop, promote, clone, rewind) take seconds.
    pub slow_steps: bool,
    /// An agent not scheduled for longer than ttl while its postgres runs.
    /// Rule 8 of DESIGN.md (the fence process) is what makes it safe.
    pub stalls: bool,
    /// A node's etcd watch stops delivering while its requests still pass.
    pub stale_watches: bool,
    /// Not a fault: the fence processes take orders but never act, to show
    /// what rule 8 is for.
    pub fence_processes_off: bool,
    /// Not a fault: the fast path's probe believes a refused REST port
    /// alone (an agent gone, its postgres perhaps running on), to show why
    /// `ha::dead_leader` asks for both ports.
    pub probe_ignores_postgres: bool,
}

impl Faults {
    /// Every fault the simulator has.
    pub fn all() -> Faults {
        Faults {
            node_kills: true,
            agent_kills: true,
            pg_kills: true,
            store_links: true,
            isolation: true,
            store_outage: true,
            pg_hangs: true,
            slow_steps: true,
            stalls: true,
            stale_watches: true,
            fence_processes_off: false,
            probe_ignores_postgres: false,
        }
    }
}

/// How long a run injects faults, and how long it then waits for
/// convergence, in virtual seconds.
#[derive(Clone, Copy, Debug)]
pub struct Plan {
    pub fault_secs: u64,
    pub calm_secs: u64,
    /// The cluster's `synchronous_mode` (bootstrap configuration).
    pub sync: SyncMode,
}

pub(crate) fn node_config(i: usize, sync: SyncMode) -> NodeConfig {
    let host = host_of(i);
    let text = format!(
        r#"scope = "sim"
name = "n{n}"

[etcd]
endpoints = ["http://127.0.0.1:2379"]

[api]
listen = "{host}:8008"

[postgresql]
data_dir = "/sim/n{n}/data"
listen = "{host}:{PG_PORT}"
bin_dir = "/sim/bin"

[bootstrap.dcs]
ttl = 4
loop_wait = 1
retry_timeout = 1
synchronous_mode = {mode}
"#,
        n = i + 1,
        mode = serde_json::to_string(&sync).expect("a mode serializes"),
    );
    NodeConfig::parse(&text, std::path::Path::new("sim.toml"), || {
        Ok("/sim/bin".into())
    })
    .unwrap_or_else(|e| panic!("simulator node config: {e}"))
}

struct Agents {
    tasks: Vec<Option<JoinHandle<Result<(), baton::agent::AgentError>>>>,
    /// Killed agents and when they come back.
    restarts: Vec<(Instant, usize)>,
}

impl Agents {
    fn start(&mut self, world: &Shared, i: usize) {
        let epoch = {
            let mut w = world.lock();
            let n = &mut w.nodes[i];
            n.epoch += 1;
            n.agent_alive = true;
            n.stalled_until = None;
            n.epoch
        };
        let sync = world.lock().sync;
        let cfg = node_config(i, sync);
        let timeout = cfg.bootstrap.retry_timeout();
        let store = SimStore {
            world: world.clone(),
            node: i,
            epoch,
            timeout,
        };
        let pg = SimPg {
            world: world.clone(),
            node: i,
            epoch,
        };
        let peers = SimPeers {
            world: world.clone(),
            node: i,
            epoch,
            timeout,
        };
        let agent = Agent::assemble(cfg, store, pg, peers);
        world.lock().nodes[i].handle = Some(agent.handle());
        self.tasks[i] = Some(tokio::spawn(agent.run(CancellationToken::new())));
    }

    /// SIGKILL of the agent (`Node::agent_died`).
    fn kill(&mut self, w: &mut World, i: usize) {
        if let Some(t) = self.tasks[i].take() {
            t.abort();
        }
        w.nodes[i].agent_died();
    }
}

/// Postgres dies: no shutdown checkpoint, a pending promotion is lost.
pub(crate) fn crash_pg(w: &mut World, i: usize) {
    let pg = &mut w.nodes[i].pg;
    pg.running = None;
    pg.starting = None;
    pg.promote_at = None;
    pg.hung = false;
    pg.clean_checkpoint = None;
}

/// What the driver does to the world each step, besides faults.
pub(crate) fn physics(w: &mut World) {
    let now = Instant::now();
    // The fence processes first: they act at their deadline whatever their
    // agents do, SIGQUIT as an immediate stop.
    for i in 0..w.nodes.len() {
        let due = w.nodes[i]
            .fence
            .and_then(|f| f.deadline)
            .is_some_and(|d| d <= now);
        // A postmaster still in startup has its postmaster.pid too.
        let pg = &w.nodes[i].pg;
        let postmaster = pg.running.is_some() || pg.starting.is_some();
        if due && postmaster && !w.faults.fence_processes_off {
            crash_pg(w, i);
            let name = w.nodes[i].name.clone();
            w.event(format!(
                "FENCE {name}: lease deadline passed, postgres stopped"
            ));
            w.check();
        }
    }
    w.expire();
    for i in 0..w.nodes.len() {
        let pg = &mut w.nodes[i].pg;
        if let Some((_, mode)) = pg.starting.take_if(|(t, _)| *t <= now) {
            pg.standby = mode != Mode::Primary;
            pg.running = Some(mode.clone());
            pg.clean_checkpoint = None;
            let name = w.nodes[i].name.clone();
            w.event(format!("{name} started as {mode:?}"));
            w.check();
        }
    }
    for i in 0..w.nodes.len() {
        let name = w.nodes[i].name.clone();
        let id = w.last_id + 1;
        let pg = &mut w.nodes[i].pg;
        if let Some((_, to)) = pg.promote_at.filter(|(t, _)| *t <= now) {
            pg.promote_at = None;
            if let (Some(Mode::Replica(_)), Some(d)) = (&pg.running, &mut pg.data) {
                d.history.push((d.timeline, d.lsn));
                d.timeline = to;
                d.ids.push((to, id));
                w.last_id = id;
                pg.running = Some(Mode::Primary);
                pg.standby = false;
                let line = format!("{name} promoted to timeline {}", d.timeline);
                w.event(line);
                w.check();
            }
        }
    }
    if w.writes && w.rng.chance(30) {
        for i in 0..w.nodes.len() {
            let add = 1 + w.rng.below(50);
            let pg = &mut w.nodes[i].pg;
            if pg.running == Some(Mode::Primary) && !pg.hung {
                if let Some(d) = &mut pg.data {
                    d.lsn += add;
                }
            }
        }
    }
    for r in 0..w.nodes.len() {
        let Some(u) = w.streaming_from(r) else {
            continue;
        };
        if !w.rng.chance(60) {
            continue;
        }
        let step = 1 + w.rng.below(200);
        let src = w.nodes[u].pg.data.clone().expect("a primary has data");
        let d = w.nodes[r].pg.data.as_mut().expect("a replica has data");
        let to = (d.lsn + step).min(src.lsn).max(d.lsn);
        // Past the point where the upstream's timeline forked from ours,
        // we are on its timeline.
        let switch = src
            .history
            .iter()
            .find(|(t, _)| *t == d.timeline)
            .map(|(_, l)| *l);
        if d.timeline == src.timeline || switch.is_some_and(|s| to > s) {
            d.timeline = src.timeline;
            d.history = src.history.clone();
            d.ids = src.ids.clone();
        }
        d.lsn = if d.timeline == src.timeline {
            to
        } else {
            to.min(switch.unwrap_or(to))
        };
    }
    acknowledge(w);
    w.check();
}

/// In synchronous mode, what the primary the `sync` key names may have
/// acknowledged by now: every commit its rule (`synchronous_standby_names`
/// as the agent set it) is satisfied for, by standbys streaming from it on
/// its history; with no rule, everything it wrote.
fn acknowledge(w: &mut World) {
    if w.sync == SyncMode::Off {
        return;
    }
    // The promise starts once the primary's claim is in the `sync` key:
    // before that it acknowledges as in asynchronous mode.
    let claimed: Option<baton_core::cluster::SyncKey> = w
        .etcd
        .get("sync")
        .and_then(|kv| serde_json::from_str(&kv.value).ok());
    for p in 0..w.nodes.len() {
        if !claimed
            .as_ref()
            .is_some_and(|k| k.leader_is(&w.nodes[p].name))
        {
            continue;
        }
        let pg = &w.nodes[p].pg;
        let (Some(Mode::Primary), Some(d), false) = (&pg.running, &pg.data, pg.hung) else {
            continue;
        };
        let rule = SyncRule::parse(&pg.sync_standbys);
        let at = if rule.num == 0 {
            Some(d.lsn)
        } else {
            let mut held: Vec<u64> = (0..w.nodes.len())
                .filter(|r| w.streaming_from(*r) == Some(p))
                .filter(|r| {
                    let name = w.nodes[*r].name.to_ascii_lowercase();
                    rule.names.as_ref().is_none_or(|n| n.contains(&name))
                })
                .filter_map(|r| w.nodes[r].pg.data.as_ref())
                .filter(|rd| rd.is_prefix_of(d))
                .map(|rd| rd.lsn)
                .collect();
            held.sort_unstable_by(|a, b| b.cmp(a));
            held.get(rule.num as usize - 1).copied()
        };
        let Some(at) = at else { continue };
        let mut a = Wal {
            lsn: at.min(d.lsn),
            ..d.clone()
        };
        // Nothing past a timeline's start is nothing on it: the WAL up to
        // there belongs to the timeline it forked from.
        while let Some(&(parent, switch)) = a.history.last() {
            if a.lsn > switch {
                break;
            }
            a.history.pop();
            a.ids.retain(|(t, _)| *t <= parent);
            a.timeline = parent;
        }
        match &w.acked {
            Some(prev) if a.is_prefix_of(prev) => {}
            Some(prev) if !prev.is_prefix_of(&a) => {
                let (name, prev) = (w.nodes[p].name.clone(), prev.clone());
                w.violation.get_or_insert(format!(
                    "at {} ms: {name} acknowledged a commit at {a:?} on another history than the one acknowledged before, {prev:?}",
                    w.ms()
                ));
                return;
            }
            _ => w.acked = Some(a),
        }
    }
}

fn fault(w: &mut World, agents: &mut Agents) {
    let f = w.faults;
    let i = w.rng.below(NODES as u64) as usize;
    let now = Instant::now();
    let name = w.nodes[i].name.clone();
    match w.rng.below(10) {
        0 if f.node_kills && w.nodes[i].agent_alive => {
            agents.kill(w, i);
            crash_pg(w, i);
            w.nodes[i].fence = None;
            let back = now + w.rng.ms(1000, 20_000);
            agents.restarts.push((back, i));
            w.event(format!("KILL node {name}"));
        }
        1 if f.agent_kills && w.nodes[i].agent_alive => {
            agents.kill(w, i);
            let back = now + w.rng.ms(100, 15_000);
            agents.restarts.push((back, i));
            w.event(format!("KILL agent {name}"));
        }
        2 if f.pg_kills && w.nodes[i].pg.running.is_some() => {
            crash_pg(w, i);
            w.event(format!("KILL postgres {name}"));
        }
        3 if f.store_links => {
            let link = match (w.nodes[i].store_link, w.rng.below(3)) {
                (Link::Up, 0) => Link::Hang,
                (Link::Up, 1) => Link::Refuse,
                (Link::Up, _) => Link::LoseAnswers,
                _ => Link::Up,
            };
            w.nodes[i].store_link = link;
            w.event(format!("etcd link of {name}: {link:?}"));
        }
        4 if f.isolation => {
            let cut = !w.nodes[i].isolated;
            w.nodes[i].isolated = cut;
            w.event(format!(
                "{} {name}",
                if cut { "ISOLATE" } else { "RECONNECT" }
            ));
        }
        5 if f.store_outage => {
            let down = w.nodes.iter().all(|n| n.store_link == Link::Up);
            for n in &mut w.nodes {
                n.store_link = if down { Link::Hang } else { Link::Up };
            }
            w.event(if down { "etcd OUTAGE" } else { "etcd back" });
        }
        6 if f.pg_hangs && w.nodes[i].pg.running.is_some() => {
            let hung = !w.nodes[i].pg.hung;
            w.nodes[i].pg.hung = hung;
            w.event(format!(
                "postgres of {name} {}",
                if hung { "HANGS" } else { "resumes" }
            ));
        }
        7 if f.stalls && w.nodes[i].agent_alive => {
            let until = now + w.rng.ms(5000, 12_000);
            w.nodes[i].stalled_until = Some(until);
            w.event(format!("STALL agent {name}"));
        }
        8 if f.stale_watches => {
            let stale = !w.nodes[i].watch_stale;
            w.nodes[i].watch_stale = stale;
            w.event(format!(
                "etcd watch of {name} {}",
                if stale {
                    "goes STALE"
                } else {
                    "delivers again"
                }
            ));
        }
        _ => {}
    }
    w.check();
}

/// Ends every fault: links up, nothing isolated, hung or stalled, killed
/// agents back.
fn heal(w: &mut World, agents: &mut Agents) {
    for n in &mut w.nodes {
        n.store_link = Link::Up;
        n.isolated = false;
        n.pg.hung = false;
        n.stalled_until = None;
        n.watch_stale = false;
    }
    w.deliver_watches();
    for (t, _) in agents.restarts.iter_mut() {
        *t = Instant::now();
    }
    w.event("faults stop");
}

/// The end of a seed: the first broken invariant, or no convergence.
#[derive(Debug)]
pub struct Failure {
    pub what: String,
    pub log: Vec<String>,
}

pub fn run(seed: u64, faults: Faults, plan: Plan) -> Result<(), Failure> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let world = Shared(Arc::new(Mutex::new(World::new(
            NODES, seed, faults, plan.sync,
        ))));
        let mut agents = Agents {
            tasks: (0..NODES).map(|_| None).collect(),
            restarts: vec![],
        };
        for i in 0..NODES {
            agents.start(&world, i);
        }
        let start = Instant::now();
        START.with(|s| s.set(Some(start)));
        let fault_end = start + Duration::from_secs(plan.fault_secs);
        let calm_end = fault_end + Duration::from_secs(plan.calm_secs);
        let mut healed = false;
        let outcome = loop {
            let step = world.lock().rng.ms(10, 100);
            tokio::time::sleep(step).await;
            let now = Instant::now();
            let due: Vec<usize> = {
                let (due, later): (Vec<_>, Vec<_>) =
                    agents.restarts.drain(..).partition(|(t, _)| *t <= now);
                agents.restarts = later;
                due.into_iter().map(|(_, i)| i).collect()
            };
            for i in due {
                world.lock().event(format!("RESTART agent n{}", i + 1));
                agents.start(&world, i);
            }
            let mut w = world.lock();
            physics(&mut w);
            if now < fault_end {
                if w.rng.chance(2) {
                    fault(&mut w, &mut agents);
                }
            } else if !healed {
                heal(&mut w, &mut agents);
                healed = true;
            } else if crate::invariants::converges::check(&w).is_ok() {
                break Ok(());
            }
            if let Some(v) = w.violation.clone() {
                break Err(Failure {
                    what: v,
                    log: w.log.clone(),
                });
            }
            if now >= calm_end {
                let why = crate::invariants::converges::check(&w).unwrap_err();
                break Err(Failure {
                    what: format!(
                        "no convergence {} s after the faults stopped: {why}",
                        plan.calm_secs
                    ),
                    log: w.log.clone(),
                });
            }
        };
        for t in agents.tasks.iter_mut().flatten() {
            t.abort();
        }
        for n in &world.lock().nodes {
            if let Some(h) = &n.handle {
                let used = baton::agent::Counters::get(&h.counters().views_from_watch);
                crate::store::COPIES_USED.with(|c| c.set(c.get() + used));
            }
        }
        outcome
    })
}
