//! `baton agent`: one per PostgreSQL instance. Runs the HA loop
//! (observe → [`decide`] → act) and shares what it saw with the REST API.
//!
//! Tasks it owns:
//! - the HA loop (this module's [`Agent::run`]): critical, it *is* the agent;
//! - an etcd watch that wakes the loop early when the leader, failover,
//!   initialize or config keys change (`lease.rs`): critical;
//! - at most one long job at a time (bootstrap, clone, start, stop, promote;
//!   `jobs.rs`): the loop keeps ticking, renewing its lease, while one runs;
//! - the REST API server (`api.rs`, started by `run.rs`): critical.
//!
//! Files: `observe.rs` (postgres, peers, slots, the member key), `act.rs`
//! (actions), `handover.rs` (switchover), `handle.rs` (how the API talks
//! to the loop), `ports.rs` (the store, instance and peers it is generic
//! over, so the simulator runs this very loop).
//!
//! Time: every instant the loop uses comes from [`now`], tokio's clock, so
//! that under the simulator's paused clock leases, deadlines and back-offs
//! run on virtual time.

mod act;
pub mod events;
mod failsafe;
mod fence;
mod handle;
mod handover;
mod jobs;
mod lease;
mod observe;
pub mod ports;

use fence::{spawn_fence, FenceState, KeyLease, Renewal};
use handle::Inbox;
pub use handle::{AgentGone, AgentHandle, Counters, Request};
use jobs::{Job, JobError};
pub use ports::{HttpPeers, LocalPg, Peers, Postgres, Store};

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::{oneshot, watch, Notify};
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use baton_core::cluster::{ClusterView, LeaseId, Member};
use baton_core::config::DynamicConfig;
use baton_core::instance::DataDir;

use crate::config::NodeConfig;
use crate::dcs::{Dcs, DcsError};
use crate::pg::{FenceOrder, RunAs, StopMode};

use baton_core::ha::{decide, JobKind, JobStatus, Observation, PgStatus};

/// What the last tick saw and decided; read by the REST API.
#[derive(Debug, Clone)]
pub struct Snapshot {
    pub scope: String,
    pub name: String,
    pub member: Member,
    pub pg: PgStatus,
    pub cluster: Option<ClusterView>,
    pub config: DynamicConfig,
    pub reason: String,
    /// `Reason::code()` of the last decision.
    pub reason_code: &'static str,
    pub last_tick: Option<Instant>,
    /// When this leader must have fenced itself unless it renews again (the
    /// last renewal sent, plus `ttl - safety_margin`).
    pub lease_deadline: Option<Instant>,
    pub last_dcs_ok: Option<std::time::SystemTime>,
    /// Holds the leader key on its current lease.
    pub is_leader: bool,
    pub system_id: Option<String>,
    pub pending_job: Option<JobKind>,
    /// The last job's failure, until another job starts.
    pub last_failure: Option<(JobKind, String)>,
}

/// Why an agent could not start, or stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error(transparent)]
    Pg(#[from] crate::pg::PgError),
    #[error(transparent)]
    Dcs(#[from] DcsError),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// A critical task ended; a half-alive agent is worse than a dead one.
    #[error("the {0} ended")]
    TaskEnded(String),
}

/// The loop's clock: tokio's, which the simulator pauses and advances.
pub fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

/// Time since `t` on the loop's clock.
fn since(t: Instant) -> std::time::Duration {
    now().saturating_duration_since(t)
}

/// A warning that repeats every tick is logged every few seconds instead.
#[derive(Debug, Default)]
struct Throttle(Option<Instant>);

impl Throttle {
    const EVERY: std::time::Duration = std::time::Duration::from_secs(5);

    /// Whether to log now; if so, the next one waits `EVERY`.
    fn due(&mut self) -> bool {
        if self.0.is_some_and(|t| since(t) < Self::EVERY) {
            return false;
        }
        self.0 = Some(now());
        true
    }
}

pub struct Agent<S = Dcs, P = LocalPg, H = HttpPeers> {
    cfg: NodeConfig,
    dcs: S,
    inst: Arc<P>,
    peers: Arc<H>,
    lease: Option<LeaseId>,
    lease_ttl: u64,
    /// The last successful renewal of `lease`, and of the lease before it.
    renewal: Option<Renewal>,
    prev_renewal: Option<Renewal>,
    /// The lease the leader key hangs on when it names us, as last seen.
    key_lease: KeyLease,
    /// Since when the fence process has not taken an order.
    fence_down_since: Option<Instant>,
    /// The order the fence process took during this tick: the same order
    /// again in the same tick is not sent (one exchange a tick still
    /// proves the fence alive).
    fence_taken: Option<FenceOrder>,
    fence_warning: Throttle,
    job: Option<Job>,
    /// Outcome of the last job: shown to decide until the next job starts.
    last_job: Option<(JobKind, Result<(), JobError>, Instant)>,
    config: DynamicConfig,
    handle: AgentHandle<S>,
    inbox: Inbox,
    /// The fence timer's deadline and whether it is armed (the failsafe
    /// task moves the deadline too).
    fence: Arc<watch::Sender<FenceState>>,
    /// Failsafe mode: whom the leader asks while etcd is out.
    failsafe_order: watch::Sender<Option<failsafe::FailsafeOrder>>,
    failsafe: Arc<failsafe::FailsafeShared>,
    /// Wakes the loop early: the etcd watch, a finished job.
    wake: Arc<Notify>,
    /// Operator requests the loop has accepted and not yet carried out.
    reload_waiters: Vec<oneshot::Sender<Result<String, String>>>,
    restart_requested: bool,
    restart_waiters: Vec<oneshot::Sender<Result<(), String>>>,
    /// Waiters of the restart job that is running.
    restart_job_waiters: Vec<oneshot::Sender<Result<(), String>>>,
    reinit_requested: bool,
    last_reason: String,
    etcd_throttle: Throttle,
    /// Since when this running replica has not been streaming.
    not_streaming_since: Option<Instant>,
    /// What the instance last said needs repair (`Running::needs_repair`),
    /// kept across the stop until a rewind or rebuild succeeds.
    needs_repair: Option<String>,
    /// The leader the last tick found this member steadily following
    /// (`ha::steady`), and when etcd was last read in full.
    steady: Option<baton_core::cluster::LeaderKey>,
    last_full_read: Option<Instant>,
    /// This tick's finding of the process-death probe (`probe_leader`),
    /// published in the member key for the others to count.
    leader_refused: Option<baton_core::cluster::RefusedReport>,
    /// The REST address of the leader when it is another member, for the
    /// leader link (`spawn_leader_link`).
    leader_api: tokio::sync::watch::Sender<Option<String>>,
    /// Set by the leader link when its connection ended (or could not be
    /// made): the probe runs then even while the WAL receiver still
    /// streams, which it does for a moment after the leader's postmaster
    /// died (its walsender has not noticed yet). Cleared when the leader
    /// answers a probe or changes.
    leader_link_closed: Arc<std::sync::atomic::AtomicBool>,
    /// Leader: since when each of Baton's slots has had no member key.
    slot_absent_since: std::collections::BTreeMap<String, Instant>,
    /// The node file, re-read on `POST /reload` and SIGHUP.
    config_path: Option<std::path::PathBuf>,
    history_cache: Option<(u32, Vec<(u32, baton_core::lsn::Lsn)>)>,
    /// The last status query failed with the GTM error (OpenTenBase).
    gtm_unreachable: bool,
    /// The last status query was answered: the first failure after one is
    /// logged with its cause (a busy or stalled server, a shutdown), while
    /// those during start-up, tick after tick, stay at debug.
    pg_answered: bool,
    /// The `synchronous_standby_names` this primary enforces and its WAL
    /// position when the agent first saw it so (`ha::sync::confirmed`).
    sync_seen: Option<(String, baton_core::lsn::Lsn)>,
}

impl Agent {
    /// The production agent: etcd, the local postgres, peers over HTTP(S).
    pub async fn new(cfg: NodeConfig) -> Result<Agent, AgentError> {
        let inst = LocalPg::new(cfg.postgresql.clone(), cfg.name.clone())?;
        let config = cfg.bootstrap.clone();
        let dcs = Dcs::connect(&cfg.etcd.endpoints, cfg.prefix(), config.retry_timeout()).await?;
        let http = crate::tls::http_client(config.retry_timeout(), cfg.api.cafile.as_deref())?;
        let peers = HttpPeers {
            client: http,
            auth: cfg.api.auth.clone(),
        };
        Ok(Agent::assemble(cfg, dcs, inst, peers))
    }

    /// The client this agent reaches its peers with, for the REST API's
    /// dashboard too: every client holds its own parsed copy of the
    /// system's root certificates.
    pub fn http_client(&self) -> reqwest::Client {
        self.peers.client.clone()
    }
}

/// Wakes the loop the moment postgres exits (a crash, a kill, or a stop
/// of ours), so a crashed primary is restarted in place at once instead of
/// on the next tick.
fn spawn_exit_watch<P: Postgres>(inst: Arc<P>, wake: Arc<Notify>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            inst.postmaster_exit().await;
            wake.notify_one();
        }
    })
}

/// Wakes the loop the moment the leader's agent process exits (the
/// process-death fast path, `ha::dead_leader`): a connection to its REST
/// port is held open, and the kernel closes it when the process dies. The
/// tick then probes both ports; a closed connection alone decides nothing.
fn spawn_leader_link<H: Peers>(
    peers: Arc<H>,
    mut leader: tokio::sync::watch::Receiver<Option<String>>,
    closed: Arc<std::sync::atomic::AtomicBool>,
    wake: Arc<Notify>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let url = leader.borrow_and_update().clone();
            let Some(url) = url else {
                if leader.changed().await.is_err() {
                    return;
                }
                continue;
            };
            tokio::select! {
                _ = peers.closed(&url) => {
                    closed.store(true, std::sync::atomic::Ordering::Relaxed);
                    wake.notify_one();
                }
                r = leader.changed() => if r.is_err() { return },
            }
        }
    })
}

impl<S: Store, P: Postgres, H: Peers> Agent<S, P, H> {
    /// The routing's verification of this promotion has failed for longer
    /// than `[routing] verify_timeout`: why (`Observation::promotion_failed`).
    fn promotion_failed(&self) -> Option<String> {
        let r = self.cfg.hooks.routing.as_ref()?;
        r.verify.as_ref()?;
        let routing = self.handle.routing();
        let st = routing.lock().expect("routing status lock");
        let e = st.get(crate::hooks::VERIFY).filter(|e| !e.is_ok())?;
        let since = chrono::DateTime::parse_from_rfc3339(&e.since).ok()?;
        let failing = (chrono::Utc::now() - since.with_timezone(&chrono::Utc))
            .to_std()
            .ok()?;
        (failing >= r.verify_timeout).then(|| e.error.clone().unwrap_or_default())
    }

    /// An agent over any store, instance and peers (the simulator's too).
    pub fn assemble(cfg: NodeConfig, dcs: S, inst: P, peers: H) -> Agent<S, P, H> {
        let config = cfg.bootstrap.clone();
        let failsafe = Arc::new(failsafe::FailsafeShared::default());
        let routing = crate::hooks::RoutingStatus::default();
        let (handle, inbox) = handle::channel(
            Snapshot {
                scope: cfg.scope.clone(),
                name: cfg.name.clone(),
                member: Member::default(),
                pg: PgStatus::Stopped,
                cluster: None,
                config: config.clone(),
                reason: "starting up".into(),
                reason_code: "starting_up",
                last_tick: None,
                lease_deadline: None,
                last_dcs_ok: None,
                is_leader: false,
                system_id: None,
                pending_job: None,
                last_failure: None,
            },
            dcs.clone(),
            cfg.api.auth.clone(),
            failsafe.clone(),
            routing,
            Arc::new(events::EventLog::new(cfg.name.clone())),
        );
        Agent {
            cfg,
            dcs,
            inst: Arc::new(inst),
            peers: Arc::new(peers),
            lease: None,
            lease_ttl: config.ttl,
            renewal: None,
            prev_renewal: None,
            key_lease: KeyLease::Unknown,
            fence_down_since: None,
            fence_taken: None,
            fence_warning: Throttle::default(),
            job: None,
            last_job: None,
            config,
            handle,
            inbox,
            fence: Arc::new(watch::channel(FenceState::default()).0),
            failsafe_order: watch::channel(None).0,
            failsafe,
            wake: Arc::new(Notify::new()),
            reload_waiters: vec![],
            restart_requested: false,
            restart_waiters: vec![],
            restart_job_waiters: vec![],
            reinit_requested: false,
            last_reason: String::new(),
            etcd_throttle: Throttle::default(),
            config_path: None,
            not_streaming_since: None,
            needs_repair: None,
            steady: None,
            last_full_read: None,
            leader_refused: None,
            leader_api: tokio::sync::watch::channel(None).0,
            leader_link_closed: Default::default(),
            slot_absent_since: Default::default(),
            history_cache: None,
            gtm_unreachable: false,
            pg_answered: false,
            sync_seen: None,
        }
    }

    /// Where the node config came from, for reloads.
    pub fn with_config_path(mut self, path: std::path::PathBuf) -> Self {
        self.config_path = Some(path);
        self
    }

    /// How the API and the signal handlers reach this agent.
    pub fn handle(&self) -> AgentHandle<S> {
        self.handle.clone()
    }

    /// Runs until `shutdown` fires, then stops postgres and gives up the
    /// leader key (DESIGN.md rule 6).
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AgentError> {
        // One span per agent: every line it and its jobs log carries the
        // scope and the member, so several agents can share one log.
        let span = tracing::info_span!("agent", scope = %self.cfg.scope, member = %self.cfg.name);
        self.run_loop(shutdown).instrument(span).await
    }

    async fn run_loop(mut self, shutdown: CancellationToken) -> Result<(), AgentError> {
        let mut watch = tokio::spawn(self.dcs.clone().watch_changes(self.wake.clone()));
        let mut fence = spawn_fence(self.inst.clone(), self.fence.subscribe(), self.wake.clone());
        let mut exits = spawn_exit_watch(self.inst.clone(), self.wake.clone());
        let mut link = spawn_leader_link(
            self.peers.clone(),
            self.leader_api.subscribe(),
            self.leader_link_closed.clone(),
            self.wake.clone(),
        );
        let mut failsafe = failsafe::spawn_failsafe(
            self.peers.clone(),
            self.inst.clone(),
            self.failsafe.clone(),
            self.fence.clone(),
            self.failsafe_order.subscribe(),
        );
        let result = loop {
            let started = now();
            self.tick().await;
            let took = since(started);
            self.inbox.counters.loop_micros.store(
                took.as_micros() as u64,
                std::sync::atomic::Ordering::Relaxed,
            );
            let wait = self.config.loop_wait().saturating_sub(took);
            let wake = self.wake.clone();
            tokio::select! {
                // Shutdown first: a stopping agent must not start new work.
                // Each arm is cancel-safe: a request is either received
                // whole or left in the queue.
                biased;
                _ = shutdown.cancelled() => break Ok(()),
                Some(req) = self.inbox.requests.recv() => self.accept(req),
                _ = wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
                // The watch task never ends by itself: if it did (a panic),
                // the agent is half-alive, and a half-alive agent is worse
                // than a dead one.
                r = &mut watch => break Err(AgentError::TaskEnded(format!("etcd watch task ({r:?})"))),
                r = &mut fence => break Err(AgentError::TaskEnded(format!("fence timer ({r:?})"))),
                r = &mut exits => break Err(AgentError::TaskEnded(format!("postmaster exit watch ({r:?})"))),
                r = &mut link => break Err(AgentError::TaskEnded(format!("leader link ({r:?})"))),
                r = &mut failsafe => break Err(AgentError::TaskEnded(format!("failsafe task ({r:?})"))),
            }
        };
        watch.abort();
        fence.abort();
        exits.abort();
        link.abort();
        failsafe.abort();
        if let Err(e) = &result {
            tracing::error!("{e}; stopping the agent");
        }
        self.shutdown().await;
        result
    }

    /// Takes an operator request; the next tick carries it out.
    fn accept(&mut self, req: Request) {
        match req {
            Request::Reload { reply } => self.reload_waiters.push(reply),
            Request::Restart { reply } => {
                self.restart_requested = true;
                self.restart_waiters.push(reply);
            }
            Request::Reinitialize => self.reinit_requested = true,
        }
    }

    async fn shutdown(&mut self) {
        if self.config.pause {
            tracing::info!("shutting down in maintenance mode: postgres and the leader key are left as they are");
            // The operator runs this cluster by hand now, fence included.
            self.set_fence_armed(false);
            self.order_fence().await;
            return;
        }
        tracing::info!("shutting down: stopping postgres, then releasing the leader key");
        if let Some(job) = self.job.take() {
            job.handle.abort();
        }
        if let Err(e) = self.inst.stop(StopMode::Fast).await {
            tracing::error!("stopping postgres failed: {e}; trying immediate");
            if let Err(e) = self.inst.stop(StopMode::Immediate).await {
                tracing::error!(
                    "immediate stop failed too: {e}; leader key left to expire, \
                     and the fence process to stop postgres at the deadline"
                );
                return;
            }
        }
        if let Err(e) = self.inst.order_fence(FenceOrder::Exit).await {
            tracing::warn!("could not tell the fence process to exit: {e}");
        }
        match self.dcs.release_leader(&self.cfg.name).await {
            Ok(true) => tracing::info!("leader key released"),
            Ok(false) => {}
            Err(e) => {
                tracing::warn!("could not release leader key ({e}); it expires with the lease")
            }
        }
        if let Some(lease) = self.lease {
            let _ = self.dcs.revoke(lease).await;
        }
    }

    /// The watch's copy of the cluster, when this tick may decide on it
    /// (`ha::steady`): etcd answered a renewal that is fresh
    /// (`renewal_fresh`: this tick's, or one sent less than `ttl / 3` ago),
    /// etcd was read in full less than `FULL_READ_EVERY` ago, and the last
    /// tick found this member steadily following the leader the copy
    /// still names.
    fn view_from_watch(&self, tick_started: Instant) -> Option<ClusterView> {
        use baton_core::ha::steady::{mirror_suffices, FULL_READ_EVERY};
        let renewed = self.renewal_fresh(tick_started)
            || self
                .renewal
                .is_some_and(|r| Some(r.lease) == self.lease && r.sent >= tick_started);
        let recent = self
            .last_full_read
            .is_some_and(|t| tick_started.saturating_duration_since(t) < FULL_READ_EVERY);
        if !(renewed && recent && self.steady.is_some()) {
            return None;
        }
        let copy = self.dcs.mirrored()?;
        if !mirror_suffices(self.steady.as_ref(), &copy) {
            return None;
        }
        self.inbox
            .counters
            .views_from_watch
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Some(copy)
    }

    async fn read_etcd(&mut self, tick_started: Instant) -> Result<ClusterView, DcsError> {
        let view = self.dcs.load().await?;
        self.last_full_read = Some(tick_started);
        self.inbox
            .counters
            .views_read
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(view)
    }

    async fn tick(&mut self) {
        if !self.reload_waiters.is_empty() {
            let result = self.reload().await;
            match &result {
                Ok(m) => tracing::info!("reload: {m}"),
                Err(e) => tracing::error!("reload refused: {e}"),
            }
            for w in self.reload_waiters.drain(..) {
                let _ = w.send(result.clone());
            }
        }
        let now = now();
        self.fence_taken = None;
        // A steady replica's lease holds nothing but its member key: while
        // etcd answers quickly it is renewed every `ttl / 3`, not every
        // tick, which spares etcd a third of an idle cluster's messages
        // (docs/architecture.md, "Scale"). Any other tick renews.
        let quiet = self.steady.is_some() && self.renewal_fresh(now);
        if !quiet {
            self.renew_lease().await;
        }
        // The deadline just moved: the fence process hears it before this
        // tick waits on anything else.
        self.order_fence().await;
        // Before reading etcd: a failed job's clean-up (a bootstrap's claim
        // given up) changes keys this tick's view must already show.
        let job = self.poll_job().await;
        let copy = self.view_from_watch(now);
        if quiet && copy.is_none() {
            // No longer steady (the leader changed, say): this tick may
            // elect or act, so on a lease renewed now, as every such tick.
            self.renew_lease().await;
        }
        let read = match copy {
            Some(v) => Ok(v),
            None => self.read_etcd(now).await,
        };
        let cluster = match read {
            Ok(v) => Some(v),
            Err(e) => {
                self.etcd_warning(format_args!(
                    "reading etcd failed: {e}; retrying every tick"
                ));
                None
            }
        };
        if let Some(c) = &cluster {
            self.key_lease = match &c.leader {
                Some(l) if l.name == self.cfg.name => KeyLease::On(l.lease),
                _ => KeyLease::NotMine,
            };
            self.refresh_fence_deadline();
            if let Some(cfg) = &c.config {
                if *cfg != self.config {
                    tracing::info!(
                        ttl = cfg.ttl,
                        loop_wait = cfg.loop_wait,
                        "dynamic config changed"
                    );
                    self.config = cfg.clone();
                    self.dcs.set_timeout(self.config.retry_timeout());
                }
            }
        }
        let (pg, data_dir) = self.observe_postgres().await;
        self.not_streaming_since = match &pg {
            PgStatus::Running(r) if r.in_recovery && !r.receiver_streaming => {
                Some(self.not_streaming_since.unwrap_or(now))
            }
            _ => None,
        };
        match (&pg, &job) {
            (PgStatus::Running(r), _) if r.needs_repair.is_some() => {
                self.needs_repair = r.needs_repair.clone();
            }
            (PgStatus::Running(r), _) if r.receiver_streaming => self.needs_repair = None,
            (_, JobStatus::Done(JobKind::Rewind | JobKind::Rebuild)) => self.needs_repair = None,
            _ => {}
        }
        self.track_absent_slots(cluster.as_ref(), &pg, now);
        self.track_sync_rule(&pg);
        self.update_failsafe_order(cluster.as_ref(), &pg);
        self.refresh_fence_deadline();
        let peers = match (&cluster, &pg) {
            (Some(c), PgStatus::Running(r)) if c.leader.is_none() && r.in_recovery => {
                self.observe_peers(c).await
            }
            // A stopped instance that cannot start without a leader must
            // know whether a peer runs and can be elected (`ha::election`).
            (Some(c), PgStatus::Stopped)
                if c.leader.is_none() && self.cfg.postgresql.flavor.is_gtm() =>
            {
                self.observe_peers(c).await
            }
            _ => vec![],
        };
        self.leader_refused = self.probe_leader(cluster.as_ref(), &pg).await;
        let leader_api = cluster.as_ref().and_then(|c| {
            let l = c.leader_name().filter(|l| *l != self.cfg.name)?;
            Some(c.members.get(l)?.api_url.clone())
        });
        let link_closed = &self.leader_link_closed;
        self.leader_api.send_if_modified(|v| {
            let changed = *v != leader_api;
            if changed {
                link_closed.store(false, std::sync::atomic::Ordering::Relaxed);
            }
            *v = leader_api;
            changed
        });
        let promotion_pending = self.inst.promotion_pending(&pg);
        let staged_initdb = match data_dir {
            DataDir::Empty => self.inst.staged_initdb().await,
            _ => None,
        };
        let obs = Observation {
            me: self.cfg.name.clone(),
            // Read after the tick's I/O, not before: a renewal and a read
            // that each hang for retry_timeout must count against the lease
            // deadline (REVIEW-SAFETY: the sample was stale by up to 2 s).
            now: self::now(),
            cluster: cluster.clone(),
            lease: self.lease,
            last_renewal_sent: self.rule2_renewal_sent(),
            data_dir: data_dir.clone(),
            pg: pg.clone(),
            job: job.clone(),
            config: self.config.clone(),
            tags: self.cfg.tags.clone(),
            peers,
            reinit_requested: self.reinit_requested,
            rebuild_allowed: self.cfg.postgresql.rebuild_on_rewind_failure,
            bootstrap_allowed: self.cfg.postgresql.flavor.runs_initdb(),
            restart_requested: self.restart_requested,
            staged_initdb,
            not_streaming_for: self
                .not_streaming_since
                .map(|t| now.saturating_duration_since(t)),
            absent_slots: self
                .slot_absent_since
                .iter()
                .map(|(s, t)| (s.clone(), now.saturating_duration_since(*t)))
                .collect(),
            rewind_incomplete: self.inst.rewind_incomplete(),
            promotion_pending,
            sync_applied_at: self.sync_seen.as_ref().map(|(_, at)| *at),
            failsafe_confirmed: self.failsafe_confirmed(),
            failsafe_heard: self.failsafe_heard(),
            leader_refused: self.leader_refused.as_ref().map(|r| r.lease),
            gtm_unreachable: self.gtm_unreachable,
            standby_needs_upstream: self.cfg.postgresql.flavor.is_gtm(),
            instance_needs_repair: self.needs_repair.clone(),
            promotion_failed: self.promotion_failed(),
            fence_down_for: self
                .fence_down_since
                .map(|t| now.saturating_duration_since(t)),
            now_utc: chrono::Utc::now(),
        };
        if let Some(c) = &obs.cluster {
            self.inst.set_members(c).await;
        }
        let mut d = decide(&obs);
        self.steady = baton_core::ha::steady::steady_under(&obs, &d);
        // The fence is armed before anything that can make a primary, and
        // must have taken that order: rule 8 holds from the first write.
        let primary = obs.pg.running().is_some_and(|r| !r.in_recovery);
        if d.actions.iter().any(|a| a.may_make_primary(primary)) {
            self.set_fence_armed(true);
            self.order_fence().await;
            if self.fence_down_since.is_some() {
                tracing::warn!(
                    actions = ?d.actions,
                    "the fence process did not take the order: not making a primary"
                );
                d.actions.retain(|a| !a.may_make_primary(primary));
            }
        }
        let reason = d.reason.to_string();
        if reason != self.last_reason {
            let (timeline, lsn) = match &obs.pg {
                PgStatus::Running(r) => (
                    r.timeline,
                    r.wal_lsn
                        .or(r.receive_lsn.max(r.replay_lsn))
                        .map(|l| l.to_string()),
                ),
                _ => (None, None),
            };
            tracing::info!(
                code = d.reason.code(),
                lease = self.lease.map(|l| l.0),
                timeline,
                lsn,
                actions = ?d.actions,
                "{reason}"
            );
            self.handle
                .events()
                .push("decision", d.reason.code(), &reason);
            self.last_reason = reason.clone();
        }
        self.act(&d, &obs).await;

        let pending_job = self.job.as_ref().map(|j| j.kind);
        // As last known, not as this tick's view shows it: with etcd out of
        // reach there is no view, and a primary's start still under way
        // must stay guarded (simulator seed 19568: a slow start disarmed
        // by a failed read landed after the key expired); a key taken
        // in this very tick counts too.
        let key_mine = matches!(self.key_lease, KeyLease::On(_));
        // Until this agent has read etcd it does not know what its
        // predecessor left running (simulator seed 6028: a promotion a
        // killed agent had signalled): it keeps the fence armed.
        let armed =
            baton_core::ha::fence::armed(&pg, &data_dir, pending_job, key_mine, promotion_pending)
                || self.key_lease == KeyLease::Unknown;
        self.set_fence_armed(armed);
        self.order_fence().await;
        let needs_repair = d.reason.needs_repair();
        // The member key says what this tick's view says.
        let i_lead = cluster
            .as_ref()
            .and_then(|c| c.leader_name())
            .is_some_and(|l| l == self.cfg.name);
        let member = self.member_json(&pg, &data_dir, pending_job, needs_repair, i_lead, &d.reason);
        // etcd already holds this very key on this lease: writing it again
        // would cost etcd a disk write and every agent a watch event, each
        // tick, for nothing (the lease, not the write, keeps it alive).
        let unchanged = cluster.as_ref().is_some_and(|c| {
            c.members.get(&self.cfg.name) == Some(&member)
                && c.member_leases.get(&self.cfg.name) == self.lease.as_ref()
        });
        if let (Some(lease), Some(_), false) = (self.lease, &cluster, unchanged) {
            match self.dcs.put_member(&self.cfg.name, &member, lease).await {
                Ok(()) => {}
                // The next tick's renewal replaces the lease and publishes
                // again; no point repeating a put on a lease that is gone.
                Err(DcsError::LeaseExpired(_)) => {
                    tracing::warn!(
                        lease = lease.0,
                        "etcd no longer knows our lease; replacing it"
                    );
                    self.lease = None;
                    self.wake.notify_one();
                }
                Err(e) => self.etcd_warning(format_args!("publishing member key failed: {e}")),
            }
        }
        let is_leader = cluster.as_ref().is_some_and(|c| {
            c.leader
                .as_ref()
                .is_some_and(|l| l.name == self.cfg.name && Some(l.lease) == self.lease)
        });
        let system_id = match &data_dir {
            DataDir::Valid { system_id, .. } => Some(system_id.clone()),
            _ => None,
        };
        let last_failure = match &self.last_job {
            Some((k, Err(e), _)) => Some((*k, e.message.clone())),
            _ => None,
        };
        let config = self.config.clone();
        let lease_deadline = self.fence_deadline();
        self.inbox.snapshot.send_modify(|s| {
            s.member = member;
            s.pg = pg;
            if cluster.is_some() {
                s.last_dcs_ok = Some(std::time::SystemTime::now());
            }
            s.cluster = cluster;
            s.config = config;
            s.reason = reason;
            s.reason_code = d.reason.code();
            s.last_tick = Some(self::now());
            s.lease_deadline = lease_deadline;
            s.is_leader = is_leader;
            s.system_id = system_id;
            s.pending_job = pending_job;
            s.last_failure = last_failure;
        });
    }

    /// Re-reads the node file and applies what can change without a restart
    /// (postgresql.parameters, pg_hba, tags); says what needs a restart.
    async fn reload(&mut self) -> Result<String, String> {
        let Some(path) = &self.config_path else {
            return Err("the agent was not started from a config file".into());
        };
        let new = NodeConfig::load(path).map_err(|e| e.to_string())?;
        let mut needs_restart = vec![];
        let (old_pg, new_pg) = (&self.cfg.postgresql, &new.postgresql);
        if old_pg.data_dir != new_pg.data_dir
            || old_pg.listen != new_pg.listen
            || old_pg.socket_dir != new_pg.socket_dir
        {
            needs_restart.push("postgresql addresses/paths");
        }
        if self.cfg.api.listen != new.api.listen || self.cfg.etcd.endpoints != new.etcd.endpoints {
            needs_restart.push("api/etcd settings");
        }
        self.cfg.postgresql.parameters = new.postgresql.parameters.clone();
        self.cfg.postgresql.pg_hba = new.postgresql.pg_hba.clone();
        self.cfg.tags = new.tags.clone();
        let inst = self
            .inst
            .reconfigured(self.cfg.postgresql.clone(), self.cfg.name.clone())
            .map_err(|e| e.to_string())?;
        self.inst = Arc::new(inst);
        {
            let snap = self.handle.snapshot();
            let run_as = match (&snap.pg, snap.cluster.as_ref()) {
                (PgStatus::Running(r), _) if !r.in_recovery => Some(RunAs::Primary),
                (PgStatus::Running(_), Some(c)) => c
                    .leader_name()
                    .and_then(|l| self.leader_run_as(c, l))
                    .or(Some(RunAs::ReadOnly)),
                _ => None,
            };
            if let Some(run_as) = run_as {
                self.inst.follow(&run_as).await.map_err(|e| e.to_string())?;
            }
        }
        let mut msg = "reloaded postgresql.parameters, pg_hba and tags".to_string();
        if !needs_restart.is_empty() {
            msg.push_str(&format!(
                "; changed {} take effect after an agent restart",
                needs_restart.join(", ")
            ));
        }
        Ok(msg)
    }
}
