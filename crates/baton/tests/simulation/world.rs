//! The simulated world the real agents run in: an in-memory etcd (keys with
//! revisions, leases that expire on tokio's paused clock), one simulated
//! postgres per node, the network links between them, and a seeded RNG.
//! One mutex guards it all; no call holds it across an await.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use baton::agent::AgentHandle;
use baton_core::cluster::ClusterView;

use crate::store::SimStore;

pub const PREFIX: &str = "/service/sim/";
pub const PG_PORT: u16 = 5432;

/// Node `i`'s address (a string only: nothing listens anywhere).
pub fn host_of(i: usize) -> String {
    format!("127.0.1.{}", i + 1)
}

/// xorshift64*: a seeded generator, so a failing seed replays exactly.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
    pub fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
}

/// WAL as the simulator tracks it: where it ends and the timelines before.
#[derive(Clone, Debug, PartialEq)]
pub struct Wal {
    pub timeline: u32,
    pub lsn: u64,
    /// (timeline, switch LSN) for every timeline before `timeline`.
    pub history: Vec<(u32, u64)>,
    /// Which promotion (or bootstrap) made each timeline of this WAL, as
    /// (timeline, id): what postgres cannot see (two promotions from the
    /// same point to the same timeline number look alike) and its WAL's
    /// prev-links can.
    pub ids: Vec<(u32, u64)>,
}

impl Wal {
    /// initdb's system identifier: one per bootstrap.
    pub fn system_id(&self) -> String {
        let boot = self.ids.first().map(|(_, id)| *id).unwrap_or(0);
        format!("{}", 7_300_000_000_000_000_000u64 + boot)
    }

    /// Whether this WAL is a prefix of `other`'s (could stream from it).
    pub fn is_prefix_of(&self, other: &Wal) -> bool {
        let shared = self.timeline.min(other.timeline);
        let upto = |w: &Wal| -> Vec<(u32, u64)> {
            w.ids
                .iter()
                .filter(|(t, _)| *t <= shared)
                .copied()
                .collect()
        };
        if upto(self) != upto(other) {
            return false;
        }
        for t in 1..shared {
            let a = self.history.iter().find(|(tl, _)| *tl == t);
            let b = other.history.iter().find(|(tl, _)| *tl == t);
            if a != b {
                return false;
            }
        }
        if self.timeline == other.timeline {
            return self.lsn <= other.lsn;
        }
        if self.timeline > other.timeline {
            return false;
        }
        other
            .history
            .iter()
            .find(|(tl, _)| *tl == self.timeline)
            .is_some_and(|(_, switch)| self.lsn <= *switch)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum Mode {
    Primary,
    /// Recovery, streaming from `(host, port, slot)` if set.
    Replica(Option<(String, u16, String)>),
}

/// One simulated postgres.
#[derive(Debug, Default)]
pub struct Pg {
    /// `None`: an empty data directory.
    pub data: Option<Wal>,
    /// A bootstrap's initdb beside the data directory, not yet adopted.
    pub staging: Option<Wal>,
    pub running: Option<Mode>,
    /// `standby.signal`: set by a start in recovery, gone after promotion.
    pub standby: bool,
    /// A postmaster in startup (recovery): it exists, a stop kills it, it
    /// accepts nothing until its start completes (then, in that mode),
    /// whether or not the agent that started it still lives.
    pub starting: Option<(Instant, Mode)>,
    /// Queries hang (a SIGSTOPped postmaster, a full disk).
    pub hung: bool,
    pub slots: BTreeSet<String>,
    /// `synchronous_standby_names` as set (kept across restarts, as
    /// `ALTER SYSTEM` keeps it).
    pub sync_standbys: String,
    /// A promotion signalled and not yet done (when, onto which timeline);
    /// a stop cancels it.
    pub promote_at: Option<(Instant, u32)>,
    /// Shut down cleanly as a primary: where its shutdown checkpoint is.
    pub clean_checkpoint: Option<u64>,
    /// A rewind began copying and did not finish: the data is half-copied.
    pub rewind_incomplete: bool,
}

/// How a link to etcd behaves.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Link {
    Up,
    /// Requests never answer: the caller's timeout ends them.
    Hang,
    /// Requests fail at once (connection refused).
    Refuse,
    /// Requests are carried out, answers are lost.
    LoseAnswers,
}

pub struct Node {
    pub name: String,
    pub pg: Pg,
    pub store_link: Link,
    /// Cut from the other members: REST and replication both.
    pub isolated: bool,
    /// The running agent incarnation; calls of an older one never return.
    pub epoch: u64,
    pub agent_alive: bool,
    /// Counts the agent's deaths: the kernel then closes the connections
    /// peers hold to its REST port (`Peers::closed`).
    pub deaths: tokio::sync::watch::Sender<u64>,
    /// The agent is not scheduled until then (its next call waits).
    pub stalled_until: Option<Instant>,
    /// The `baton-fence` process beside postgres, if one runs: it survives
    /// its agent, never stalls with it, and dies with the host.
    pub fence: Option<SimFence>,
    pub handle: Option<AgentHandle<SimStore>>,
    /// The watch of the current agent, notified on leader/config changes.
    pub wake: Option<Arc<Notify>>,
    /// The copy of etcd that watch keeps (`Store::mirrored`): behind while
    /// the node's etcd link is not up, or while `watch_stale` holds (a
    /// watch served by an etcd member cut off from its quorum, which
    /// delivers nothing and reports nothing, while renewals still pass).
    pub mirror: Option<ClusterView>,
    pub watch_stale: bool,
}

/// What a running fence process enforces.
#[derive(Clone, Copy, Debug, Default)]
pub struct SimFence {
    /// Stop postgres once this passes; `None`: guarding nothing.
    pub deadline: Option<Instant>,
}

#[derive(Clone, Debug)]
pub struct Kv {
    pub value: String,
    pub lease: i64,
    pub mod_revision: i64,
}

/// etcd's data model, as much of it as Baton uses.
#[derive(Default)]
pub struct Etcd {
    pub keys: BTreeMap<String, Kv>,
    /// Lease id -> (expiry, granted TTL).
    pub leases: BTreeMap<i64, (Instant, Duration)>,
    pub revision: i64,
    pub next_lease: i64,
}

impl Etcd {
    pub fn get(&self, rel: &str) -> Option<&Kv> {
        self.keys.get(&format!("{PREFIX}{rel}"))
    }
    pub fn put(&mut self, rel: &str, value: &str, lease: i64) {
        self.revision += 1;
        self.keys.insert(
            format!("{PREFIX}{rel}"),
            Kv {
                value: value.to_string(),
                lease,
                mod_revision: self.revision,
            },
        );
    }
    pub fn delete(&mut self, rel: &str) -> bool {
        let gone = self.keys.remove(&format!("{PREFIX}{rel}")).is_some();
        if gone {
            self.revision += 1;
        }
        gone
    }
    pub fn lease_alive(&self, id: i64, now: Instant) -> bool {
        self.leases.get(&id).is_some_and(|(e, _)| *e > now)
    }
    pub fn view(&self) -> ClusterView {
        ClusterView::from_kvs(
            PREFIX,
            self.keys
                .iter()
                .map(|(k, kv)| (k.as_bytes(), kv.value.as_bytes(), kv.lease, kv.mod_revision)),
            self.revision,
        )
    }
}

pub struct World {
    pub rng: Rng,
    /// A benchmark's world: every postgres step takes its least time, so
    /// runs differ only in what is measured (`step_ms`).
    pub least_steps: bool,
    /// The last timeline id handed out (bootstrap, promotions).
    pub last_id: u64,
    pub etcd: Etcd,
    pub nodes: Vec<Node>,
    pub start: Instant,
    pub log: Vec<String>,
    /// The first broken invariant, with the time it broke.
    pub violation: Option<String>,
    /// Kinds of faults this run injects.
    pub faults: crate::driver::Faults,
    /// The agents' `synchronous_mode`.
    pub sync: baton_core::config::SyncMode,
    /// In synchronous mode: the latest commit a primary acknowledged, as
    /// the WAL up to it (`invariants::acknowledged`).
    pub acked: Option<Wal>,
    /// Primaries take writes (their WAL grows at random): every run but
    /// `bench/scale`'s idle fleet.
    pub writes: bool,
}

impl World {
    /// How long a postgres step takes: `lo..=hi` ms, or `lo` with
    /// `least_steps`.
    pub fn step_ms(&mut self, lo: u64, hi: u64) -> Duration {
        if self.least_steps {
            Duration::from_millis(lo)
        } else {
            self.rng.ms(lo, hi)
        }
    }

    /// `nodes` nodes with empty data directories, nothing running.
    pub fn new(
        nodes: usize,
        seed: u64,
        faults: crate::driver::Faults,
        sync: baton_core::config::SyncMode,
    ) -> World {
        World {
            rng: Rng::new(seed),
            least_steps: false,
            last_id: 0,
            etcd: Etcd::default(),
            nodes: (0..nodes).map(Node::new).collect(),
            start: Instant::now(),
            log: vec![],
            violation: None,
            faults,
            sync,
            acked: None,
            writes: true,
        }
    }

    pub fn ms(&self) -> u128 {
        Instant::now().duration_since(self.start).as_millis()
    }

    pub fn event(&mut self, what: impl std::fmt::Display) {
        let line = format!("{:>7} ms  {what}", self.ms());
        self.log.push(line);
    }

    pub fn index(&self, host: &str) -> Option<usize> {
        (0..self.nodes.len()).find(|i| host_of(*i) == host)
    }

    /// Expires leases and the keys on them, as etcd does; the watchers of
    /// the leader and initialize keys are told.
    pub fn expire(&mut self) {
        let now = Instant::now();
        let dead: Vec<i64> = self
            .etcd
            .leases
            .iter()
            .filter(|(_, (e, _))| *e <= now)
            .map(|(l, _)| *l)
            .collect();
        if dead.is_empty() {
            return;
        }
        for l in &dead {
            self.etcd.leases.remove(l);
        }
        let before = self.etcd.keys.len();
        let leader_gone = self
            .etcd
            .get("leader")
            .is_some_and(|kv| dead.contains(&kv.lease));
        self.etcd.keys.retain(|_, kv| !dead.contains(&kv.lease));
        if self.etcd.keys.len() != before {
            self.etcd.revision += 1;
            self.deliver_watches();
        }
        if leader_gone {
            self.event("leader key expired");
            self.notify_watchers();
        }
    }

    /// Brings every live watch's copy up to date, except those behind a
    /// link that is not up or a stale watch.
    pub fn deliver_watches(&mut self) {
        let revision = self.etcd.revision;
        let mut view = None;
        for n in &mut self.nodes {
            let behind = n.mirror.as_ref().is_some_and(|m| m.revision != revision);
            if n.wake.is_some() && n.store_link == Link::Up && !n.watch_stale && behind {
                n.mirror = Some(view.get_or_insert_with(|| self.etcd.view()).clone());
            }
        }
    }

    pub fn notify_watchers(&self) {
        for n in &self.nodes {
            if n.store_link == Link::Up {
                if let Some(w) = &n.wake {
                    w.notify_one();
                }
            }
        }
    }

    /// Whether node `i` streams now: its upstream runs as primary, the link
    /// is up, and its WAL is a prefix of the upstream's.
    pub fn streaming_from(&self, i: usize) -> Option<usize> {
        let n = &self.nodes[i];
        let Some(Mode::Replica(Some((host, _, _)))) = &n.pg.running else {
            return None;
        };
        let u = self.index(host)?;
        let up = &self.nodes[u];
        if n.isolated || up.isolated || up.pg.running != Some(Mode::Primary) || up.pg.hung {
            return None;
        }
        match (&n.pg.data, &up.pg.data) {
            (Some(a), Some(b)) if a.is_prefix_of(b) => Some(u),
            _ => None,
        }
    }

    /// The member holding the leader key, if any.
    pub fn leader(&self) -> Option<usize> {
        let name = &self.etcd.get("leader")?.value;
        self.nodes.iter().position(|n| n.name == *name)
    }

    /// Checks every invariant; the first failure is kept.
    pub fn check(&mut self) {
        if self.violation.is_some() {
            return;
        }
        if let Some(v) = crate::invariants::broken(self) {
            let line = format!("at {} ms: {v}", self.ms());
            self.event(format!("VIOLATION {v}"));
            self.violation = Some(line);
        }
    }
}

/// The world, shared by the driver and every simulated part.
#[derive(Clone)]
pub struct Shared(pub Arc<Mutex<World>>);

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, World> {
        self.0.lock().expect("world lock")
    }

    /// Waits while node `i`'s agent is stalled; then whether the calling
    /// incarnation (`epoch`) is still the live one. A dead incarnation's
    /// calls never return, as a killed process's would not.
    pub async fn gate(&self, i: usize, epoch: u64) {
        loop {
            let (until, current) = {
                let w = self.lock();
                (w.nodes[i].stalled_until, w.nodes[i].epoch == epoch)
            };
            if !current {
                std::future::pending::<()>().await;
            }
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t).await,
                _ => return,
            }
        }
    }
}

impl Node {
    /// SIGKILL of the agent: no clean shutdown; the calls of this
    /// incarnation in flight, and those of its jobs, never return.
    pub fn agent_died(&mut self) {
        self.epoch += 1;
        self.agent_alive = false;
        self.handle = None;
        self.wake = None;
        self.mirror = None;
        self.deaths.send_modify(|d| *d += 1);
    }

    pub fn new(i: usize) -> Node {
        Node {
            name: format!("n{}", i + 1),
            pg: Pg::default(),
            store_link: Link::Up,
            isolated: false,
            epoch: 0,
            agent_alive: false,
            deaths: tokio::sync::watch::Sender::new(0),
            stalled_until: None,
            fence: None,
            handle: None,
            wake: None,
            mirror: None,
            watch_stale: false,
        }
    }
}

#[cfg(test)]
pub mod testing {
    use super::*;

    /// A world of `n` nodes with nothing running, for the invariants' tests.
    pub fn world_of(n: usize) -> World {
        World::new(n, 1, Default::default(), Default::default())
    }
}
