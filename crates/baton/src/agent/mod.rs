//! `baton agent`: one per PostgreSQL instance. Runs the HA loop
//! (observe → [`decide`] → act) and shares what it saw with the REST API.
//!
//! Tasks it owns:
//! - the HA loop (this module's [`Agent::run`]): critical, it *is* the agent;
//! - an etcd watch that wakes the loop early when the leader, failover,
//!   initialize or config keys change;
//! - at most one long job at a time (bootstrap, clone, start, stop, promote):
//!   the loop keeps ticking, renewing its lease, while a job runs;
//! - the REST API server (`api.rs`).

mod handle;

use handle::Inbox;
pub use handle::{AgentGone, AgentHandle, Counters, Request};

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{oneshot, Notify};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use baton_core::cluster::{ClusterView, LeaseId, Member, StatusKey};
use baton_core::config::DynamicConfig;
use baton_core::instance::{slot_name, DataDir};

use crate::config::NodeConfig;
use crate::dcs::{Dcs, DcsError};
use crate::pg::{self, Instance, RunAs, StopMode};
use baton_core::ha::{
    decide, publish, Action, Decision, JobKind, JobStatus, Observation, Peer, PgStatus, Reason,
};

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
    pub last_dcs_ok: Option<std::time::SystemTime>,
    /// Holds the leader key on its current lease.
    pub is_leader: bool,
    pub system_id: Option<String>,
    pub pending_job: Option<JobKind>,
    /// The last job's failure, until another job starts.
    pub last_failure: Option<(JobKind, String)>,
}

struct Job {
    kind: JobKind,
    started: Instant,
    handle: JoinHandle<Result<(), JobError>>,
}

/// Why a job failed, and whether the member it worked against was simply
/// unreachable (then the job is retried instead of escalated).
#[derive(Debug, Clone)]
struct JobError {
    message: String,
    source_down: bool,
}

impl From<String> for JobError {
    fn from(message: String) -> Self {
        JobError {
            message,
            source_down: false,
        }
    }
}

impl std::fmt::Display for JobError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

pub struct Agent {
    cfg: NodeConfig,
    dcs: Dcs,
    inst: Arc<Instance>,
    lease: Option<LeaseId>,
    lease_ttl: u64,
    last_renewal_sent: Option<Instant>,
    job: Option<Job>,
    /// Outcome of the last job: shown to decide until the next job starts.
    last_job: Option<(JobKind, Result<(), JobError>, Instant)>,
    http: reqwest::Client,
    client: Option<tokio_postgres::Client>,
    config: DynamicConfig,
    handle: AgentHandle,
    inbox: Inbox,
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
    last_etcd_warning: Option<Instant>,
    /// Since when this running replica has not been streaming.
    not_streaming_since: Option<Instant>,
    /// Leader: since when each of Baton's slots has had no member key.
    slot_absent_since: std::collections::BTreeMap<String, Instant>,
    /// The node file, re-read on `POST /reload` and SIGHUP.
    config_path: Option<std::path::PathBuf>,
    history_cache: Option<(u32, Vec<(u32, baton_core::lsn::Lsn)>)>,
}

/// After a failed job, the same job is not retried for this long.
const JOB_RETRY_BACKOFF: Duration = Duration::from_secs(5);

impl Agent {
    pub async fn new(cfg: NodeConfig) -> anyhow::Result<Agent> {
        let inst = Instance::new(cfg.postgresql.clone(), cfg.name.clone())?;
        let config = cfg.bootstrap.clone();
        let dcs = Dcs::connect(&cfg.etcd.endpoints, cfg.prefix(), config.retry_timeout()).await?;
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
                last_dcs_ok: None,
                is_leader: false,
                system_id: None,
                pending_job: None,
                last_failure: None,
            },
            dcs.clone(),
            cfg.api.auth.clone(),
        );
        let http = crate::tls::http_client(config.retry_timeout(), cfg.api.cafile.as_deref())?;
        Ok(Agent {
            cfg,
            dcs,
            inst: Arc::new(inst),
            lease: None,
            lease_ttl: config.ttl,
            last_renewal_sent: None,
            job: None,
            last_job: None,
            http,
            client: None,
            config,
            handle,
            inbox,
            wake: Arc::new(Notify::new()),
            reload_waiters: vec![],
            restart_requested: false,
            restart_waiters: vec![],
            restart_job_waiters: vec![],
            reinit_requested: false,
            last_reason: String::new(),
            last_etcd_warning: None,
            config_path: None,
            not_streaming_since: None,
            slot_absent_since: Default::default(),
            history_cache: None,
        })
    }

    /// Where the node config came from, for reloads.
    pub fn with_config_path(mut self, path: std::path::PathBuf) -> Agent {
        self.config_path = Some(path);
        self
    }

    /// How the API and the signal handlers reach this agent.
    pub fn handle(&self) -> AgentHandle {
        self.handle.clone()
    }

    /// Runs until `shutdown` fires, then stops postgres and gives up the
    /// leader key (DESIGN.md rule 6).
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        // One span per agent: every line it and its jobs log carries the
        // scope and the member, so several agents can share one log.
        let span = tracing::info_span!("agent", scope = %self.cfg.scope, member = %self.cfg.name);
        self.run_loop(shutdown).instrument(span).await
    }

    async fn run_loop(mut self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let mut watch = spawn_watch(self.dcs.clone(), self.wake.clone());
        let result = loop {
            let started = Instant::now();
            self.tick().await;
            let wait = self.config.loop_wait().saturating_sub(started.elapsed());
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
                r = &mut watch => break Err(anyhow::anyhow!("the etcd watch task ended: {r:?}")),
            }
        };
        watch.abort();
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
            return;
        }
        tracing::info!("shutting down: stopping postgres, then releasing the leader key");
        if let Some(job) = self.job.take() {
            job.handle.abort();
        }
        self.client = None;
        if let Err(e) = self.inst.stop(StopMode::Fast).await {
            tracing::error!("stopping postgres failed: {e}; trying immediate");
            if let Err(e) = self.inst.stop(StopMode::Immediate).await {
                tracing::error!("immediate stop failed too: {e}; leader key left to expire");
                return;
            }
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
        let now = Instant::now();
        self.renew_lease().await;
        let cluster = match self.dcs.load().await {
            Ok(v) => Some(v),
            Err(e) => {
                self.etcd_warning(format_args!(
                    "reading etcd failed: {e}; retrying every tick"
                ));
                None
            }
        };
        if let Some(c) = &cluster {
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
        let job = self.poll_job().await;
        let (pg, data_dir) = self.observe_postgres().await;
        self.not_streaming_since = match &pg {
            PgStatus::Running(r) if r.in_recovery && !r.receiver_streaming => {
                Some(self.not_streaming_since.unwrap_or(now))
            }
            _ => None,
        };
        self.track_absent_slots(cluster.as_ref(), &pg, now);
        let peers = match (&cluster, &pg) {
            (Some(c), PgStatus::Running(r)) if c.leader.is_none() && r.in_recovery => {
                self.observe_peers(c).await
            }
            _ => vec![],
        };
        let obs = Observation {
            me: self.cfg.name.clone(),
            now,
            cluster: cluster.clone(),
            lease: self.lease,
            last_renewal_sent: self.last_renewal_sent,
            data_dir: data_dir.clone(),
            pg: pg.clone(),
            job: job.clone(),
            config: self.config.clone(),
            tags: self.cfg.tags.clone(),
            peers,
            reinit_requested: self.reinit_requested,
            rebuild_allowed: self.cfg.postgresql.rebuild_on_rewind_failure,
            restart_requested: self.restart_requested,
            not_streaming_for: self
                .not_streaming_since
                .map(|t| now.saturating_duration_since(t)),
            absent_slots: self
                .slot_absent_since
                .iter()
                .map(|(s, t)| (s.clone(), now.saturating_duration_since(*t)))
                .collect(),
            now_utc: chrono::Utc::now(),
        };
        let d = decide(&obs);
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
            self.last_reason = reason.clone();
        }
        self.act(&d, &obs).await;

        let pending_job = self.job.as_ref().map(|j| j.kind);
        let needs_repair = d.reason.needs_repair();
        let member = self.member_json(
            &pg,
            &data_dir,
            pending_job,
            needs_repair,
            &cluster,
            &d.reason,
        );
        if let (Some(lease), Some(_)) = (self.lease, &cluster) {
            if let Err(e) = self.dcs.put_member(&self.cfg.name, &member, lease).await {
                tracing::warn!("publishing member key failed: {e}");
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
            s.last_tick = Some(Instant::now());
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
        let inst = Instance::new(self.cfg.postgresql.clone(), self.cfg.name.clone())
            .map_err(|e| e.to_string())?;
        self.inst = Arc::new(inst);
        if let Some(client) = &self.client {
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
                self.inst
                    .follow(client, &run_as)
                    .await
                    .map_err(|e| e.to_string())?;
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

    /// Keeps our lease alive, granting a new one when it is gone. The time
    /// recorded is when the request was *sent*: etcd counts the TTL from
    /// when it received it, which is later, so this errs on the safe side.
    async fn renew_lease(&mut self) {
        if self.lease.is_some() && self.lease_ttl != self.config.ttl {
            // A ttl change takes effect with a fresh lease; the leader key is
            // re-attached to it by AdoptLeader on this very tick.
            self.lease = None;
        }
        let sent = Instant::now();
        match self.lease {
            Some(lease) => match self.dcs.keep_alive(lease).await {
                Ok(()) => self.last_renewal_sent = Some(sent),
                Err(DcsError::LeaseExpired(_)) => {
                    tracing::warn!(lease = lease.0, "lease expired; requesting a new one");
                    self.lease = None;
                }
                Err(e) => self.etcd_warning(format_args!("lease renewal failed: {e}")),
            },
            None => match self.dcs.grant_lease(self.config.ttl).await {
                Ok(l) => {
                    tracing::info!(lease = l.0, ttl = self.config.ttl, "granted new lease");
                    self.lease = Some(l);
                    self.lease_ttl = self.config.ttl;
                    // A grant starts the new lease's TTL like a renewal does.
                    // It renews no leader key held on an older lease: decide
                    // moves such a key over (AdoptLeader) before relying on it.
                    self.last_renewal_sent = Some(sent);
                }
                Err(e) => self.etcd_warning(format_args!("cannot get an etcd lease: {e}")),
            },
        }
    }

    /// etcd trouble repeats every tick; say so every few seconds, not every tick.
    fn etcd_warning(&mut self, msg: std::fmt::Arguments<'_>) {
        if self
            .last_etcd_warning
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(5))
        {
            tracing::warn!(endpoints = ?self.cfg.etcd.endpoints, "{msg}");
            self.last_etcd_warning = Some(Instant::now());
        }
    }

    async fn poll_job(&mut self) -> JobStatus {
        if let Some(job) = &self.job {
            if !job.handle.is_finished() {
                return JobStatus::Running(job.kind, job.started.elapsed());
            }
            let job = self.job.take().expect("checked");
            let result = match job.handle.await {
                Ok(r) => r,
                Err(e) => Err(JobError::from(format!("job panicked or was aborted: {e}"))),
            };
            match &result {
                Ok(()) => tracing::info!(
                    "{} finished in {:.1} s",
                    job.kind,
                    job.started.elapsed().as_secs_f64()
                ),
                Err(e) => tracing::error!("{} failed: {e}", job.kind),
            }
            if result.is_err() && job.kind == JobKind::Bootstrap {
                self.undo_bootstrap_claim().await;
            }
            if job.kind == JobKind::Restart {
                let outcome = result.as_ref().map_err(|e| e.message.clone()).copied();
                for w in self.restart_job_waiters.drain(..) {
                    let _ = w.send(outcome.clone());
                }
            }
            self.last_job = Some((job.kind, result, Instant::now()));
        }
        match &self.last_job {
            Some((k, Err(e), _)) => JobStatus::Failed(*k, e.message.clone(), e.source_down),
            Some((k, Ok(()), _)) => JobStatus::Done(*k),
            None => JobStatus::Idle,
        }
    }

    /// After a failed bootstrap, let another member try, unless initdb
    /// completed here (then this node retries starting it).
    async fn undo_bootstrap_claim(&mut self) {
        let _ = self.dcs.release_leader(&self.cfg.name).await;
        if self.inst.inspect().await == DataDir::Empty {
            let _ = self.dcs.release_initialize().await;
        }
    }

    async fn observe_postgres(&mut self) -> (PgStatus, DataDir) {
        if self.inst.postmaster_pid().is_none() {
            self.client = None;
            return (PgStatus::Stopped, self.inst.inspect().await);
        }
        let timeout = self.config.retry_timeout();
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = self.inst.connect(timeout).await.ok();
        }
        let Some(client) = &self.client else {
            return (PgStatus::Unresponsive, self.inst.inspect().await);
        };
        match tokio::time::timeout(timeout, pg::query_running(client)).await {
            Ok(Ok(mut r)) => {
                r.history = self.history_of(r.timeline).await;
                let dir = DataDir::Valid {
                    system_id: r.system_id.clone(),
                    standby: r.in_recovery,
                    timeline: r.timeline,
                    history: r.history.clone(),
                    clean_shutdown: false,
                    checkpoint: None,
                };
                (PgStatus::Running(Box::new(r)), dir)
            }
            Ok(Err(e)) => {
                tracing::debug!("status query failed: {e}");
                self.client = None;
                (PgStatus::Unresponsive, self.inst.inspect().await)
            }
            Err(_) => {
                self.client = None;
                (PgStatus::Unresponsive, self.inst.inspect().await)
            }
        }
    }

    /// Asks every other member's REST API for its WAL position, concurrently,
    /// each bounded by the client's `retry_timeout`. Unreachable members are
    /// left out: they cannot promote either without reaching etcd.
    async fn observe_peers(&self, cluster: &ClusterView) -> Vec<Peer> {
        let mut asks = tokio::task::JoinSet::new();
        for (name, m) in &cluster.members {
            if *name == self.cfg.name {
                continue;
            }
            let http = self.http.clone();
            let name = name.clone();
            let url = m.api_url.clone();
            asks.spawn(async move {
                let v: serde_json::Value = http.get(&url).send().await.ok()?.json().await.ok()?;
                Some(Peer::from_status(name, &v))
            });
        }
        let mut peers: Vec<Peer> = asks.join_all().await.into_iter().flatten().collect();
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        peers
    }

    /// On the leader's primary: which of Baton's slots (those of members it
    /// has seen, kept in `status.retain_slots`) have no member key now, and
    /// since when. A new leader starts counting afresh, which only delays a
    /// drop; operators' own slots are never counted.
    fn track_absent_slots(&mut self, cluster: Option<&ClusterView>, pg: &PgStatus, now: Instant) {
        let (Some(c), PgStatus::Running(run)) = (cluster, pg) else {
            return;
        };
        if run.in_recovery || c.leader_name() != Some(self.cfg.name.as_str()) {
            self.slot_absent_since.clear();
            return;
        }
        let managed = c.managed_slots(&self.cfg.name);
        let present: std::collections::BTreeSet<String> =
            c.members.keys().map(|m| slot_name(m)).collect();
        self.slot_absent_since.retain(|s, _| {
            managed.contains(s) && !present.contains(s) && run.slots.contains_key(s)
        });
        for s in &managed {
            if !present.contains(s) && run.slots.contains_key(s) {
                self.slot_absent_since.entry(s.clone()).or_insert(now);
            }
        }
    }

    /// The running instance's timeline history, read once per timeline.
    async fn history_of(&mut self, timeline: Option<u32>) -> Vec<(u32, baton_core::lsn::Lsn)> {
        let Some(tl) = timeline.filter(|t| *t > 1) else {
            return vec![];
        };
        if let Some((cached, h)) = &self.history_cache {
            if *cached == tl {
                return h.clone();
            }
        }
        let Some(client) = &self.client else {
            return vec![];
        };
        match pg::timeline_history(client, tl).await {
            Ok(h) => {
                let h: Vec<_> = h.into_iter().map(|(t, l, _)| (t, l)).collect();
                self.history_cache = Some((tl, h.clone()));
                h
            }
            Err(e) => {
                tracing::debug!("reading history of timeline {tl}: {e}");
                vec![]
            }
        }
    }

    fn spawn_job<F, E>(&mut self, kind: JobKind, fut: F)
    where
        F: std::future::Future<Output = Result<(), E>> + Send + 'static,
        E: Into<JobError>,
    {
        if self.job.is_some() {
            return;
        }
        if let Some((k, Err(_), at)) = &self.last_job {
            if *k == kind && at.elapsed() < JOB_RETRY_BACKOFF {
                return;
            }
        }
        tracing::info!("starting job: {kind}");
        let wake = self.wake.clone();
        let handle = tokio::spawn(
            async move {
                let r = fut.await.map_err(Into::into);
                wake.notify_one();
                r
            }
            .instrument(tracing::info_span!("job", kind = %kind)),
        );
        self.job = Some(Job {
            kind,
            started: Instant::now(),
            handle,
        });
    }

    fn member_pg_address(&self, obs: &Observation, member: &str) -> anyhow::Result<(String, u16)> {
        obs.cluster
            .as_ref()
            .and_then(|c| c.members.get(member))
            .and_then(|m| m.pg_address())
            .ok_or_else(|| anyhow::anyhow!("member {member} has no usable conn_url"))
    }

    fn leader_run_as(&self, cluster: &ClusterView, leader: &str) -> Option<RunAs> {
        let (host, port) = cluster.members.get(leader)?.pg_address()?;
        Some(RunAs::Replica {
            host,
            port,
            slot: slot_name(&self.cfg.name),
        })
    }

    async fn act(&mut self, d: &Decision, obs: &Observation) {
        for action in &d.actions {
            if let Err(e) = self.act_one(action, obs).await {
                tracing::warn!(?action, "action failed: {e}");
            }
        }
    }

    async fn act_one(&mut self, action: &Action, obs: &Observation) -> anyhow::Result<()> {
        let me = self.cfg.name.clone();
        match action {
            Action::Bootstrap => {
                let Some(lease) = self.lease else {
                    return Ok(());
                };
                if !self.dcs.take_initialize(lease).await? {
                    return Ok(());
                }
                tracing::info!("won the initialize key: bootstrapping a new cluster");
                // Rule 1: hold the leader key before anything runs read-write.
                if !self.dcs.acquire_leader(&me, lease).await? {
                    self.dcs.release_initialize().await?;
                    return Ok(());
                }
                let inst = self.inst.clone();
                self.spawn_job(JobKind::Bootstrap, async move {
                    bootstrap(&inst).await.map_err(|e| e.to_string())
                });
            }
            Action::Switchover { candidate } => {
                let cluster = obs.cluster.as_ref().expect("decided with a cluster view");
                let (host, port) = self.member_pg_address(obs, candidate)?;
                let Some(lease) = cluster.member_leases.get(candidate).copied() else {
                    anyhow::bail!("candidate {candidate} has no member lease");
                };
                let (inst, dcs, cand) = (self.inst.clone(), self.dcs.clone(), candidate.clone());
                let limit = self.config.ttl();
                self.client = None;
                self.spawn_job(JobKind::Switchover, async move {
                    let h = Handover {
                        me,
                        candidate: cand,
                        host,
                        port,
                        lease,
                        limit,
                    };
                    switchover(&inst, &dcs, &h).await
                });
            }
            Action::CancelSwitchover => {
                self.dcs.clear_failover().await?;
                tracing::warn!("switchover request dropped: {}", self.last_reason);
            }
            Action::Restart => {
                self.restart_requested = false;
                let cluster = obs.cluster.as_ref();
                let run_as = match cluster.and_then(|c| c.leader_name()) {
                    Some(l) if l == me => RunAs::Primary,
                    Some(l) => match cluster.and_then(|c| self.leader_run_as(c, l)) {
                        Some(r) => r,
                        None => RunAs::ReadOnly,
                    },
                    None => RunAs::ReadOnly,
                };
                let inst = self.inst.clone();
                self.client = None;
                self.spawn_job(JobKind::Restart, async move {
                    inst.stop(StopMode::Fast).await.map_err(|e| e.to_string())?;
                    inst.start(&run_as).await.map_err(|e| e.to_string())
                });
                let waiters = std::mem::take(&mut self.restart_waiters);
                if self
                    .job
                    .as_ref()
                    .is_some_and(|j| j.kind == JobKind::Restart)
                {
                    self.restart_job_waiters.extend(waiters);
                } else {
                    for w in waiters {
                        let _ = w.send(Err("another job is running; try again".into()));
                    }
                }
            }
            Action::ReleaseLeader => {
                if self.dcs.release_leader(&me).await? {
                    tracing::warn!("released the leader key");
                }
            }
            Action::StartReadOnly => {
                let inst = self.inst.clone();
                self.spawn_job(JobKind::Start, async move {
                    inst.start(&RunAs::ReadOnly)
                        .await
                        .map_err(|e| e.to_string())
                });
            }
            Action::Rewind { from } => {
                let (host, port) = self.member_pg_address(obs, from)?;
                let inst = self.inst.clone();
                self.inbox.counters.rewinds.fetch_add(1, Ordering::Relaxed);
                self.spawn_job(JobKind::Rewind, async move {
                    // Checkpointing the source first also tells whether it
                    // is reachable at all: if not, retry; never rebuild.
                    inst.checkpoint_member(&host, port)
                        .await
                        .map_err(|e| JobError {
                            message: format!("{host}:{port}: {e}"),
                            source_down: true,
                        })?;
                    tracing::info!("running pg_rewind against {host}:{port}");
                    if let Err(e) = inst.rewind_from(&host, port).await {
                        // pg_rewind fails the same way when its source went
                        // away mid-run: then the failure is the source's, to
                        // retry, not a reason to rebuild.
                        let source_down = inst.checkpoint_member(&host, port).await.is_err();
                        return Err(JobError {
                            message: e.to_string(),
                            source_down,
                        });
                    }
                    Ok(())
                });
            }
            Action::Rebuild { from } => {
                let (host, port) = self.member_pg_address(obs, from)?;
                let inst = self.inst.clone();
                self.reinit_requested = false;
                self.inbox.counters.rebuilds.fetch_add(1, Ordering::Relaxed);
                self.spawn_job(JobKind::Rebuild, async move {
                    tracing::info!(
                        "rebuilding from {host}:{port}: cloning next to the data directory"
                    );
                    let aside = inst
                        .rebuild_from(&host, port)
                        .await
                        .map_err(|e| e.to_string())?;
                    tracing::warn!("old data directory moved aside to {}", aside.display());
                    Ok::<(), String>(())
                });
            }
            Action::PublishHistory => {
                let (PgStatus::Running(run), Some(client)) = (&obs.pg, &self.client) else {
                    return Ok(());
                };
                let Some(tl) = run.timeline else {
                    return Ok(());
                };
                let file = pg::timeline_history(client, tl).await?;
                let existing = obs.cluster.as_ref().and_then(|c| c.history.clone());
                let history = baton_core::cluster::merge_history(
                    existing,
                    &file,
                    tl,
                    &me,
                    chrono::Utc::now(),
                );
                self.dcs.put_history(&history).await?;
                tracing::info!(timeline = tl, "history updated");
            }
            Action::PublishInitialize(id) => {
                if self.dcs.set_initialize(id).await? {
                    tracing::info!(system_id = %id, "cluster initialized");
                }
            }
            Action::InitConfig => {
                self.dcs.init_config(&self.cfg.bootstrap).await?;
            }
            Action::AcquireLeader => {
                let Some(lease) = self.lease else {
                    return Ok(());
                };
                if self.dcs.acquire_leader(&me, lease).await? {
                    tracing::info!(lease = lease.0, "acquired the leader key");
                    self.wake.notify_one();
                }
            }
            Action::AdoptLeader => {
                let Some(lease) = self.lease else {
                    return Ok(());
                };
                if self.dcs.adopt_leader(&me, lease).await? {
                    tracing::info!(lease = lease.0, "leader key re-attached to my lease");
                    self.wake.notify_one();
                }
            }
            Action::Clone { from } => {
                let cluster = obs.cluster.as_ref().expect("decided with a cluster view");
                let Some((host, port)) = cluster.members.get(from).and_then(|m| m.pg_address())
                else {
                    anyhow::bail!("leader {from} has no conn_url");
                };
                let inst = self.inst.clone();
                self.spawn_job(JobKind::Clone, async move {
                    tracing::info!("cloning from {host}:{port} with pg_basebackup");
                    inst.basebackup_from(&host, port)
                        .await
                        .map_err(|e| e.to_string())
                });
            }
            Action::StartPrimary => {
                let inst = self.inst.clone();
                self.spawn_job(JobKind::Start, async move {
                    inst.start(&RunAs::Primary).await.map_err(|e| e.to_string())
                });
            }
            Action::StartReplica { leader } => {
                let cluster = obs.cluster.as_ref().expect("decided with a cluster view");
                let Some(run_as) = self.leader_run_as(cluster, leader) else {
                    anyhow::bail!("leader {leader} has no conn_url");
                };
                let inst = self.inst.clone();
                self.spawn_job(JobKind::Start, async move {
                    inst.start(&run_as).await.map_err(|e| e.to_string())
                });
            }
            Action::Follow { leader } => {
                let cluster = obs.cluster.as_ref().expect("decided with a cluster view");
                let Some(run_as) = self.leader_run_as(cluster, leader) else {
                    anyhow::bail!("leader {leader} has no conn_url");
                };
                let Some(client) = &self.client else {
                    return Ok(());
                };
                self.inst.follow(client, &run_as).await?;
            }
            Action::Promote => {
                let inst = self.inst.clone();
                // postgres removes standby.signal itself when promoting (and
                // fails if it is gone already); the next start rewrites the
                // configuration for a primary anyway.
                self.spawn_job(JobKind::Promote, async move {
                    inst.promote().await.map_err(|e| e.to_string())
                });
            }
            Action::Stop => {
                // Fencing is not queued behind a job: it happens now.
                if let Some(job) = self.job.take() {
                    job.handle.abort();
                }
                self.client = None;
                self.inst.stop(StopMode::Immediate).await?;
                tracing::warn!("postgres stopped immediately: {}", self.last_reason);
            }
            Action::CreateSlots(members) => {
                let Some(client) = &self.client else {
                    return Ok(());
                };
                for m in members {
                    let slot = slot_name(m);
                    pg::create_slot(client, &slot).await?;
                    tracing::info!("created replication slot {slot} for {m}");
                }
            }
            Action::DropSlots(slots) => {
                let Some(client) = &self.client else {
                    return Ok(());
                };
                for slot in slots {
                    if pg::drop_inactive_slot(client, slot).await? {
                        tracing::warn!(
                            "dropped replication slot {slot}: its member has been gone for member_slots_ttl ({} s)",
                            self.config.member_slots_ttl
                        );
                        self.slot_absent_since.remove(slot);
                    }
                }
            }
            Action::PublishStatus => {
                let PgStatus::Running(run) = &obs.pg else {
                    return Ok(());
                };
                let mut slots: std::collections::BTreeMap<String, u64> = run
                    .slots
                    .iter()
                    .map(|(k, v)| (k.clone(), v.map(|l| l.0).unwrap_or(0)))
                    .collect();
                // Slots created earlier in this same tick count as well.
                for m in obs.cluster.iter().flat_map(|c| c.members.keys()) {
                    if *m != me {
                        slots.entry(slot_name(m)).or_insert(0);
                    }
                }
                // Baton's slots that still exist (or are about to): what a
                // future leader must keep, and the only ones it may drop.
                let retain: Vec<String> = obs
                    .cluster
                    .as_ref()
                    .map(|c| c.managed_slots(&me))
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|s| slots.contains_key(s))
                    .collect();
                let status = StatusKey {
                    optime: run.wal_lsn.map(|l| l.0),
                    slots: Some(slots),
                    retain_slots: Some(retain),
                };
                self.dcs.put_status(&status).await?;
            }
        }
        Ok(())
    }

    fn member_json(
        &self,
        pg: &PgStatus,
        data_dir: &DataDir,
        job: Option<JobKind>,
        needs_repair: bool,
        cluster: &Option<ClusterView>,
        reason: &Reason,
    ) -> Member {
        let pgc = &self.cfg.postgresql;
        let i_lead = cluster
            .as_ref()
            .and_then(|c| c.leader_name())
            .is_some_and(|l| l == self.cfg.name);
        let mut m = Member {
            conn_url: format!("postgres://{}/postgres", pgc.connect_address),
            api_url: format!(
                "{}://{}/patroni",
                self.cfg.api.scheme(),
                self.cfg.api.connect_address
            ),
            version: env!("CARGO_PKG_VERSION").to_string(),
            tags: self.cfg.tags.clone(),
            baton_reason: Some(reason.to_string()),
            baton_reason_code: Some(reason.code().to_string()),
            ..Member::default()
        };
        publish::fill_member(&mut m, pg, data_dir, job, needs_repair, i_lead);
        m
    }
}

/// A planned handover from `me` to `candidate`, whose postgres listens on
/// `host:port` and whose member key hangs on `lease`; `limit` bounds the
/// wait for the candidate to replay our shutdown checkpoint.
struct Handover {
    me: String,
    candidate: String,
    host: String,
    port: u16,
    lease: LeaseId,
    limit: Duration,
}

/// Runs the handover; on failure the old leader, which still holds the
/// key, starts again as primary and nothing is lost.
async fn switchover(inst: &Instance, dcs: &Dcs, h: &Handover) -> Result<(), String> {
    let result = handover(inst, dcs, h).await;
    if let Err(e) = &result {
        tracing::error!(
            "switchover to {} aborted: {e}; resuming as primary",
            h.candidate
        );
        if let Err(ce) = dcs.clear_failover().await {
            tracing::warn!("could not clear the failover request: {ce}");
        }
        if inst.postmaster_pid().is_none() {
            inst.start(&RunAs::Primary)
                .await
                .map_err(|se| format!("{e}; restarting as primary failed too: {se}"))?;
        }
    }
    result
}

async fn handover(inst: &Instance, dcs: &Dcs, h: &Handover) -> Result<(), String> {
    let Handover {
        me,
        candidate,
        host,
        port,
        lease,
        limit,
    } = h;
    let (port, lease, limit) = (*port, *lease, *limit);
    let err = |what: &str, e: &dyn std::fmt::Display| format!("{what}: {e}");
    // A checkpoint while writes still flow makes the shutdown checkpoint short.
    let local = inst
        .connect(limit)
        .await
        .map_err(|e| err("connecting locally", &e))?;
    local
        .batch_execute("CHECKPOINT")
        .await
        .map_err(|e| err("CHECKPOINT", &pg::describe(&e)))?;
    drop(local);
    let paused_at = Instant::now();
    // Fast shutdown: walsenders send everything up to and including the
    // shutdown checkpoint before the postmaster exits.
    inst.stop(StopMode::Fast)
        .await
        .map_err(|e| err("stopping postgres", &e))?;
    let cd = inst
        .controldata()
        .await
        .map_err(|e| err("pg_controldata", &e))?;
    if cd.get("Database cluster state").map(String::as_str) != Some("shut down") {
        return Err(format!(
            "postgres did not shut down cleanly: {:?}",
            cd.get("Database cluster state")
        ));
    }
    let ckpt: baton_core::lsn::Lsn = cd
        .get("Latest checkpoint location")
        .and_then(|l| l.parse().ok())
        .ok_or("no shutdown checkpoint location in pg_controldata")?;
    // Zero loss, verified: the candidate must have replayed past it.
    let deadline = Instant::now() + limit;
    let mut last;
    loop {
        match inst
            .connect_member(host, port, Duration::from_secs(1))
            .await
        {
            Ok(c) => match c.query_one("SELECT pg_last_wal_replay_lsn()", &[]).await {
                Ok(row) => {
                    let replayed = row
                        .get::<_, Option<tokio_postgres::types::PgLsn>>(0)
                        .map(|l| baton_core::lsn::Lsn(u64::from(l)));
                    if replayed.is_some_and(|r| r > ckpt) {
                        break;
                    }
                    last = format!("replayed {replayed:?}, shutdown checkpoint at {ckpt}");
                }
                Err(e) => last = pg::describe(&e),
            },
            Err(e) => last = e.to_string(),
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{candidate} did not replay the shutdown checkpoint within {limit:?} ({last})"
            ));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    if !dcs
        .transfer_leader(me, candidate, lease)
        .await
        .map_err(|e| err("handing over the leader key", &e))?
    {
        return Err(format!(
            "could not hand the leader key to {candidate} (its lease changed: did it die?)"
        ));
    }
    tracing::info!(
        "leader key handed to {candidate} {} ms after writes stopped; it promotes now",
        paused_at.elapsed().as_millis()
    );
    Ok(())
}

/// initdb, configure, start, create the replication role.
async fn bootstrap(inst: &Instance) -> Result<(), pg::PgError> {
    tracing::info!("running initdb in {}", inst.cfg.data_dir.display());
    inst.initdb().await?;
    inst.start(&RunAs::Primary).await?;
    let client = inst.connect(Duration::from_secs(10)).await?;
    pg::create_replication_role(&client, &inst.cfg).await?;
    tracing::info!("bootstrap complete");
    Ok(())
}

/// Wakes the loop when a key that changes decisions changes. Member keys are
/// rewritten every tick by every member, so they do not wake anyone.
fn spawn_watch(dcs: Dcs, wake: Arc<Notify>) -> JoinHandle<()> {
    tokio::spawn(async move {
        let prefix = dcs.prefix().to_string();
        loop {
            match dcs.watch().await {
                Ok(mut stream) => {
                    while let Ok(Some(resp)) = stream.message().await {
                        let relevant = resp.events().iter().any(|e| {
                            e.kv().and_then(|kv| kv.key_str().ok()).is_some_and(|k| {
                                matches!(
                                    k.strip_prefix(prefix.as_str()),
                                    Some("leader" | "failover" | "initialize" | "config")
                                )
                            })
                        });
                        if relevant {
                            wake.notify_one();
                        }
                    }
                }
                Err(e) => tracing::debug!("etcd watch failed: {e}"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    })
}
