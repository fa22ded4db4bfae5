//! What the agent's loop needs from the world, as three traits: the store
//! (etcd), the local instance (postgres) and the peers (their REST status).
//!
//! The loop, its lease bookkeeping, its jobs and their back-off are generic
//! over these, so the simulator (`tests/simulation/`) runs *this* code over
//! an in-memory store with leases, simulated instances and injected faults,
//! on tokio's paused clock. Production uses [`Dcs`], [`LocalPg`] and
//! [`HttpPeers`]. Each method is one step the agent takes; none hides a
//! decision.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use baton_core::cluster::{ClusterView, LeaseId, Member, StatusKey, SyncKey};
use baton_core::config::DynamicConfig;
use baton_core::ha::PgStatus;
use baton_core::instance::{DataDir, Running};
use baton_core::lsn::Lsn;

use crate::config::PgConfig;
use crate::dcs::DcsError;
use crate::pg::{self, FenceLink, FenceOrder, Instance, PgError, RunAs, StopMode};

/// The shared state the agent reads and writes (PATRONI-COMPAT.md layout).
/// Every call is bounded: a store that never answers returns an error.
pub trait Store: Clone + Send + Sync + 'static {
    /// The whole cluster, read from the store (linearizable).
    fn load(&self) -> impl Future<Output = Result<ClusterView, DcsError>> + Send;
    /// The cluster as `watch_changes` last delivered it, without a request:
    /// it may lag behind the store, so the agent decides on it only in a
    /// steady state it re-checks (`Agent::steady_view`). `None` while the
    /// watch is not established.
    fn mirrored(&self) -> Option<ClusterView>;
    fn grant_lease(&self, ttl: u64) -> impl Future<Output = Result<LeaseId, DcsError>> + Send;
    /// `Err(DcsError::LeaseExpired)` when the store no longer knows `lease`.
    fn keep_alive(&self, lease: LeaseId) -> impl Future<Output = Result<(), DcsError>> + Send;
    fn revoke(&self, lease: LeaseId) -> impl Future<Output = Result<(), DcsError>> + Send;
    /// Claims `initialize` on `lease`, create-if-absent.
    fn take_initialize(
        &self,
        lease: LeaseId,
    ) -> impl Future<Output = Result<bool, DcsError>> + Send;
    fn release_initialize(&self) -> impl Future<Output = Result<bool, DcsError>> + Send;
    fn set_initialize(
        &self,
        system_id: &str,
    ) -> impl Future<Output = Result<bool, DcsError>> + Send;
    /// Creates the leader key on `lease` if absent.
    fn acquire_leader(
        &self,
        name: &str,
        lease: LeaseId,
    ) -> impl Future<Output = Result<bool, DcsError>> + Send;
    /// Moves our own leader key onto `lease`.
    fn adopt_leader(
        &self,
        name: &str,
        lease: LeaseId,
    ) -> impl Future<Output = Result<bool, DcsError>> + Send;
    fn release_leader(&self, name: &str) -> impl Future<Output = Result<bool, DcsError>> + Send;
    /// Deletes the leader key if it still names `name` on `lease` (the
    /// process-death fast path: another member's agent and postgres are
    /// gone); whether it did.
    fn remove_dead_leader(
        &self,
        name: &str,
        lease: LeaseId,
    ) -> impl Future<Output = Result<bool, DcsError>> + Send;
    fn put_member(
        &self,
        name: &str,
        member: &Member,
        lease: LeaseId,
    ) -> impl Future<Output = Result<(), DcsError>> + Send;
    fn init_config(
        &self,
        config: &DynamicConfig,
    ) -> impl Future<Output = Result<bool, DcsError>> + Send;
    /// Leader-only keys: written only while the leader key is `me`'s on
    /// `lease`; `false` when it is not.
    fn put_status(
        &self,
        me: &str,
        lease: LeaseId,
        status: &StatusKey,
    ) -> impl Future<Output = Result<bool, DcsError>> + Send;
    /// Moves the leader key from `me` to `to` on `lease` in one transaction,
    /// if the key is still ours and `to`'s member key still on `lease`.
    fn transfer_leader(
        &self,
        me: &str,
        to: &str,
        lease: LeaseId,
    ) -> impl Future<Output = Result<bool, DcsError>> + Send;
    fn clear_failover(&self) -> impl Future<Output = Result<(), DcsError>> + Send;
    /// Reserves timeline `to` while the leader key is ours on `lease` and
    /// the reservation is still `seen`.
    fn reserve_timeline(
        &self,
        me: &str,
        lease: LeaseId,
        seen: Option<u32>,
        to: u32,
    ) -> impl Future<Output = Result<bool, DcsError>> + Send;
    fn put_history(
        &self,
        me: &str,
        lease: LeaseId,
        history: &serde_json::Value,
    ) -> impl Future<Output = Result<bool, DcsError>> + Send;
    /// Writes (or with `None` deletes) the `sync` key while the leader key
    /// is ours on `lease` and `sync` is unchanged since `seen_revision`
    /// (its mod_revision; 0: absent).
    fn put_sync(
        &self,
        me: &str,
        lease: LeaseId,
        seen_revision: i64,
        sync: Option<&SyncKey>,
    ) -> impl Future<Output = Result<bool, DcsError>> + Send;
    /// Writes (or with `None` deletes) the `failsafe` key as the holder of
    /// the leader key on `lease`.
    /// Records WAL a rewind discarded (`baton/discarded/...`).
    fn put_discarded(
        &self,
        d: &baton_core::cluster::DiscardedWal,
    ) -> impl Future<Output = Result<(), DcsError>> + Send;
    fn put_failsafe(
        &self,
        me: &str,
        lease: LeaseId,
        members: Option<&std::collections::BTreeMap<String, String>>,
    ) -> impl Future<Output = Result<bool, DcsError>> + Send;
    fn set_timeout(&mut self, timeout: Duration);
    /// Keeps `mirrored` current and notifies `wake` whenever a key that
    /// changes decisions changes; runs for as long as the agent does (a
    /// task of its own, hence `self`).
    fn watch_changes(self, wake: Arc<Notify>) -> impl Future<Output = ()> + Send + 'static;
}

/// The local instance. Implementations keep one connection between ticks;
/// `disconnect` drops it (before a stop, a restart, a handover).
pub trait Postgres: Send + Sync + 'static {
    /// A postmaster runs for this data directory.
    fn postmaster_running(&self) -> bool;
    /// Resolves when the postmaster that runs now (or the next one to
    /// start) exits: the loop learns of a crash at once, not a tick later.
    fn postmaster_exit(&self) -> impl Future<Output = ()> + Send;
    fn inspect(&self) -> impl Future<Output = DataDir> + Send;
    /// The status query, bounded by `timeout` (connect included).
    fn status(&self, timeout: Duration) -> impl Future<Output = Result<Running, PgError>> + Send;
    fn disconnect(&self);
    /// `(timeline, switch LSN, reason)` per line of timeline `tl`'s history.
    fn timeline_history(
        &self,
        tl: u32,
    ) -> impl Future<Output = Result<Vec<(u32, Lsn, String)>, PgError>> + Send;
    /// Points a running replica at `run_as` without a restart.
    fn follow(&self, run_as: &RunAs) -> impl Future<Output = Result<(), PgError>> + Send;
    fn create_slot(&self, slot: &str) -> impl Future<Output = Result<(), PgError>> + Send;
    /// Drops `slot` if no walsender uses it; whether it did.
    fn drop_inactive_slot(&self, slot: &str) -> impl Future<Output = Result<bool, PgError>> + Send;
    /// Sets `synchronous_standby_names` and reloads (`None`: the node
    /// file's value again); returns once postgres enforces it.
    fn set_sync_standbys(
        &self,
        value: Option<&str>,
        timeout: Duration,
    ) -> impl Future<Output = Result<(), PgError>> + Send;
    /// initdb into a staging directory beside the (empty) data directory;
    /// the new cluster's system identifier.
    fn initdb(&self) -> impl Future<Output = Result<String, PgError>> + Send;
    /// The system identifier of a staged initdb, if one is there.
    fn staged_initdb(&self) -> impl Future<Output = Option<String>> + Send;
    /// A pg_rewind began copying into the data directory and did not
    /// finish (its marker beside the directory).
    fn rewind_incomplete(&self) -> bool;
    /// A promotion was signalled (perhaps by an agent that died since) and
    /// postgres, seen as `pg` now, has not finished it. Forgets one that
    /// finished or can no longer happen.
    fn promotion_pending(&self, pg: &PgStatus) -> bool;
    /// The staged cluster becomes the data directory.
    fn adopt_initdb(&self) -> impl Future<Output = Result<(), PgError>> + Send;
    /// The staged cluster is dropped: it never ran and holds nothing.
    fn discard_initdb(&self) -> impl Future<Output = Result<(), PgError>> + Send;
    /// After initdb: start as primary, create the replication role.
    fn first_start(&self) -> impl Future<Output = Result<(), PgError>> + Send;
    fn start(&self, run_as: &RunAs) -> impl Future<Output = Result<(), PgError>> + Send;
    fn stop(&self, mode: StopMode) -> impl Future<Output = Result<(), PgError>> + Send;
    /// Promotes the replica on timeline `from` onto timeline `to`.
    /// `old_primary_running`: the key came from a primary that still runs
    /// (a switchover), so a system whose promotion demotes it in the same
    /// step (openGauss's `gs_ctl switchover`) must use that and nothing else.
    fn promote(
        &self,
        from: u32,
        to: u32,
        old_primary_running: bool,
    ) -> impl Future<Output = Result<(), PgError>> + Send;
    /// The old primary stays up through a switchover and is demoted by the
    /// candidate's promotion (openGauss), rather than stopped before the key
    /// moves (`agent::handover`).
    fn demoted_by_candidate(&self) -> bool {
        false
    }
    /// Whether the instance runs in recovery now (a fresh query).
    fn in_recovery(&self, timeout: Duration) -> impl Future<Output = Result<bool, PgError>> + Send {
        async move { self.status(timeout).await.map(|r| r.in_recovery) }
    }
    fn basebackup_from(
        &self,
        host: &str,
        port: u16,
    ) -> impl Future<Output = Result<(), PgError>> + Send;
    /// Clones beside the data directory, then swaps; where the old one went.
    fn rebuild_from(
        &self,
        host: &str,
        port: u16,
    ) -> impl Future<Output = Result<PathBuf, PgError>> + Send;
    /// pg_rewind; where the histories diverged and on which timeline, when
    /// there was anything to rewind.
    fn rewind_from(
        &self,
        host: &str,
        port: u16,
    ) -> impl Future<Output = Result<Option<(Lsn, u32)>, PgError>> + Send;
    /// Where the stopped data directory's WAL ends, if that can be read.
    fn end_of_wal(&self) -> impl Future<Output = Option<Lsn>> + Send;
    /// A CHECKPOINT on another member; fails when it is down.
    fn checkpoint_member(
        &self,
        host: &str,
        port: u16,
    ) -> impl Future<Output = Result<(), PgError>> + Send;
    /// A CHECKPOINT on the local instance, on a fresh connection.
    fn checkpoint(&self, timeout: Duration) -> impl Future<Output = Result<(), PgError>> + Send;
    /// After a clean stop: the shutdown checkpoint's location; an error if
    /// the instance did not shut down cleanly.
    fn shutdown_checkpoint(&self) -> impl Future<Output = Result<Lsn, PgError>> + Send;
    /// The clone or rebuild under way, how far it got (none by default).
    fn progress(&self) -> Option<baton_core::instance::Progress> {
        None
    }
    /// How far another member has replayed.
    fn member_replay_lsn(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> impl Future<Output = Result<Option<Lsn>, PgError>> + Send;
    /// How much WAL another member's postgres holds right now (received
    /// or replayed), asked of that postgres itself: an election in
    /// synchronous mode must not trust a position up to a tick old.
    fn member_wal_position(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> impl Future<Output = Result<Option<Lsn>, PgError>> + Send;
    /// Hands the fence process beside postgres (`baton-fence`, rule 8)
    /// what it must enforce, starting one when none answers. `Ok` once it
    /// took the order: only then may the agent rely on it.
    fn order_fence(&self, order: FenceOrder) -> impl Future<Output = Result<(), PgError>> + Send;
    /// The same instance with new settings (a reload).
    fn reconfigured(&self, cfg: PgConfig, name: String) -> Result<Self, PgError>
    where
        Self: Sized;
    /// The cluster's members as the store shows them, every tick: a system
    /// that lists its peers in its own configuration (openGauss's
    /// `replconninfo`) rewrites it, and reloads a running primary, when
    /// they change.
    fn set_members(&self, _cluster: &ClusterView) -> impl Future<Output = ()> + Send {
        std::future::ready(())
    }
}

/// The other members' REST status, for elections.
pub trait Peers: Send + Sync + 'static {
    /// `GET` of a member's `/patroni`; `None` when it does not answer.
    fn status(&self, api_url: &str) -> impl Future<Output = Option<serde_json::Value>> + Send;
    /// `POST /failsafe` from leader `me` to the member at `api_url`: `Ok`
    /// when it confirms following `me`, else why not.
    fn failsafe(&self, api_url: &str, me: &str) -> impl Future<Output = Result<(), String>> + Send;
    /// Whether the member's REST port (from `api_url`) and its postgres
    /// port `pg` both refuse connections (TCP RST), every time over a
    /// short window. A timeout is never a refusal (`ha::dead_leader`).
    fn refused(&self, api_url: &str, pg: (String, u16)) -> impl Future<Output = bool> + Send;
    /// Holds a connection to the member's REST port open and resolves when
    /// the member closes it: its process exited, and the kernel says so at
    /// once. Resolves after a pause when no connection can be made.
    fn closed(&self, api_url: &str) -> impl Future<Output = ()> + Send;
}

/// A status query bounded by `timeout` (connect included).
async fn bounded_status(
    timeout: Duration,
    query: impl Future<Output = Result<Running, PgError>>,
) -> Result<Running, PgError> {
    tokio::time::timeout(timeout, query)
        .await
        .unwrap_or_else(|_| {
            Err(PgError::Timeout {
                what: "status query".into(),
                after: timeout,
            })
        })
}

/// The local postgres through `pg_ctl` and a kept superuser connection.
pub struct LocalPg {
    inst: Instance,
    client: Mutex<Option<Arc<pg::PgClient>>>,
    fence: FenceLink,
    mirroring: pg::MirroringReader,
    /// An OpenTenBase GTM or openGauss: the slots the loop asked for, only
    /// recorded (a GTM keeps xlog for its standbys itself; an openGauss
    /// standby uses none, and an unused slot would keep WAL forever).
    virtual_slots: Mutex<std::collections::BTreeSet<String>>,
    /// openGauss: the system identifier, read once per postmaster from
    /// pg_control (its SQL has no `pg_control_system()`).
    system_id: Mutex<Option<(i32, String)>>,
    /// Set while the replay timeline cannot be had, so the operator is told
    /// once, not every tick.
    replay_unknown: std::sync::atomic::AtomicBool,
}

impl LocalPg {
    pub fn new(cfg: PgConfig, name: String) -> Result<LocalPg, PgError> {
        Ok(LocalPg {
            fence: FenceLink::new(cfg.fence.clone(), cfg.data_dir.clone()),
            inst: Instance::new(cfg, name)?,
            client: Mutex::new(None),
            mirroring: Default::default(),
            virtual_slots: Default::default(),
            system_id: Default::default(),
            replay_unknown: Default::default(),
        })
    }

    /// How much WAL another member holds, asked of it, connect and query
    /// each bounded by `timeout`: replayed only, or the larger of received
    /// and replayed (`received`).
    async fn member_lsn(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
        received: bool,
    ) -> Result<Option<Lsn>, PgError> {
        if self.is_gtm() {
            let s = self.inst.gtm_status_of(host, port, timeout).await?;
            return Ok(Some(s.xlog));
        }
        // 9.2's names and text positions on openGauss.
        let sql = match (self.is_opengauss(), received) {
            (false, false) => "SELECT pg_last_wal_replay_lsn()::text",
            (false, true) => {
                "SELECT GREATEST(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn())::text"
            }
            (true, false) => "SELECT pg_last_xlog_replay_location()::text",
            (true, true) => {
                "SELECT pg_last_xlog_replay_location()::text \
                 UNION ALL SELECT pg_last_xlog_receive_location()::text"
            }
        };
        let c = self.inst.connect_member(host, port, timeout).await?;
        let rows = tokio::time::timeout(timeout, c.query(sql, &[]))
            .await
            .map_err(|_| PgError::Timeout {
                what: format!("{sql} on {host}:{port}"),
                after: timeout,
            })??;
        Ok(rows
            .iter()
            .filter_map(|r| r.get::<_, Option<String>>(0)?.parse::<Lsn>().ok())
            .max())
    }

    fn is_gtm(&self) -> bool {
        self.inst.cfg.flavor.is_gtm()
    }

    fn is_opengauss(&self) -> bool {
        self.inst.cfg.flavor == pg::Flavor::OpenGauss
    }

    /// Slots are only recorded (GTM, openGauss).
    fn virtual_slots(&self) -> bool {
        self.is_gtm() || self.is_opengauss()
    }

    /// The system identifier of the running postmaster's data directory.
    async fn system_id(&self) -> Result<String, PgError> {
        let pid = self.inst.postmaster_pid().unwrap_or(0);
        if let Some((p, id)) = self.system_id.lock().expect("system id lock").clone() {
            if p == pid {
                return Ok(id);
            }
        }
        let cd = self.inst.controldata().await?;
        let id = cd
            .get("Database system identifier")
            .cloned()
            .ok_or_else(|| PgError::Command {
                what: "pg_controldata".into(),
                detail: "no system identifier".into(),
            })?;
        *self.system_id.lock().expect("system id lock") = Some((pid, id.clone()));
        Ok(id)
    }

    /// openGauss's status: its SQL, then, for a standby that does not
    /// stream, its own verdict (`gs_ctl query`).
    async fn opengauss_status(&self, timeout: Duration) -> Result<Running, PgError> {
        let c = self.connection(timeout).await?;
        let query = async {
            let mut r = pg::query_running_opengauss(&c).await?;
            r.system_id = self.system_id().await?;
            r.slots = self
                .virtual_slots
                .lock()
                .expect("slots lock")
                .iter()
                .map(|s| (s.clone(), None))
                .collect();
            if r.in_recovery {
                r.primary_conninfo = self.inst.opengauss_following();
                r.primary_slot_name = baton_core::instance::slot_name(&self.inst.name);
                if !r.receiver_streaming {
                    match self.inst.gs_query(timeout).await {
                        Ok(q) => r.needs_repair = q.needs_build().map(str::to_string),
                        Err(e) => tracing::debug!("gs_ctl query: {e}"),
                    }
                }
            }
            Ok(r)
        };
        bounded_status(timeout, query).await
    }

    /// What a GTM cannot do that the loop may ask of a PostgreSQL server.
    fn not_for_gtm(what: &str) -> PgError {
        PgError::Refused(format!(
            "{what}: not for a GTM group (docs/flavors/opentenbase.md)"
        ))
    }

    fn kept(&self) -> Option<Arc<pg::PgClient>> {
        self.client
            .lock()
            .expect("client lock")
            .clone()
            .filter(|c| !c.is_closed())
    }

    /// The kept connection, made now if there is none.
    async fn connection(&self, timeout: Duration) -> Result<Arc<pg::PgClient>, PgError> {
        if let Some(c) = self.kept() {
            return Ok(c);
        }
        let c = Arc::new(pg::PgClient::new(self.inst.connect(timeout).await?));
        *self.client.lock().expect("client lock") = Some(c.clone());
        Ok(c)
    }

    /// Connection-bound calls that run only right after a successful status
    /// query use the kept connection, or make one within this bound.
    const CONNECT: Duration = Duration::from_secs(5);
}

impl Postgres for LocalPg {
    fn postmaster_running(&self) -> bool {
        self.inst.postmaster_pid().is_some()
    }
    async fn postmaster_exit(&self) {
        self.inst.postmaster_exit().await
    }
    async fn inspect(&self) -> DataDir {
        self.inst.inspect().await
    }
    async fn status(&self, timeout: Duration) -> Result<Running, PgError> {
        if self.is_gtm() {
            let s = self.inst.gtm_status(timeout).await?;
            let slots = self.virtual_slots.lock().expect("slots lock").clone();
            return Ok(self.inst.gtm_running(&s, &slots));
        }
        if self.is_opengauss() {
            return self.opengauss_status(timeout).await;
        }
        let c = self.connection(timeout).await?;
        let flavor = self.inst.cfg.flavor;
        let query = async {
            let mut r = pg::query_running(&c).await?;
            if !r.in_recovery {
                r.segments = pg::query_segments(flavor, &c).await?;
                if flavor == pg::Flavor::Greenplum {
                    self.mirroring.apply(self.inst.local_conn_config(), &mut r);
                }
            } else if !r.receiver_streaming {
                // Without a WAL receiver the SQL timeline is a guess; the
                // instance's own answer replaces it. If it cannot be had
                // (pg_hba.conf admits neither), the guess stands and
                // divergence waits for a ttl without streaming.
                use std::sync::atomic::Ordering::Relaxed;
                match self.inst.replay_position(timeout).await {
                    Ok((tl, lsn)) => {
                        r.timeline = Some(tl);
                        r.timeline_lsn = Some(lsn);
                        self.replay_unknown.store(false, Relaxed);
                    }
                    Err(e) if !self.replay_unknown.swap(true, Relaxed) => tracing::warn!(
                        "replay timeline unknown, reporting the last restartpoint's \
                         (allow `local replication` for the superuser or the replication \
                         user from this member's address in pg_hba.conf): {e}"
                    ),
                    Err(e) => tracing::debug!("replay timeline unknown: {e}"),
                }
            }
            Ok(r)
        };
        bounded_status(timeout, query).await
    }
    fn disconnect(&self) {
        *self.client.lock().expect("client lock") = None;
    }
    async fn timeline_history(&self, tl: u32) -> Result<Vec<(u32, Lsn, String)>, PgError> {
        if self.inst.cfg.flavor.no_timelines() {
            return Ok(vec![]);
        }
        let c = self.connection(Self::CONNECT).await?;
        pg::timeline_history(&c, tl).await
    }
    async fn follow(&self, run_as: &RunAs) -> Result<(), PgError> {
        if self.is_gtm() {
            // A GTM standby follows the active named at its start.
            self.inst.stop(StopMode::Fast).await?;
            return self.inst.start(run_as).await;
        }
        let c = self.connection(Self::CONNECT).await?;
        self.inst.follow(&c, run_as).await
    }
    async fn create_slot(&self, slot: &str) -> Result<(), PgError> {
        if self.virtual_slots() {
            self.virtual_slots
                .lock()
                .expect("slots lock")
                .insert(slot.to_string());
            return Ok(());
        }
        let c = self.connection(Self::CONNECT).await?;
        pg::create_slot(&c, slot).await
    }
    async fn drop_inactive_slot(&self, slot: &str) -> Result<bool, PgError> {
        if self.virtual_slots() {
            return Ok(self.virtual_slots.lock().expect("slots lock").remove(slot));
        }
        let c = self.connection(Self::CONNECT).await?;
        pg::drop_inactive_slot(&c, slot).await
    }
    async fn set_sync_standbys(
        &self,
        value: Option<&str>,
        timeout: Duration,
    ) -> Result<(), PgError> {
        if self.is_gtm() {
            return Err(Self::not_for_gtm("synchronous_mode"));
        }
        if self.is_opengauss() {
            return Err(PgError::Refused(
                "synchronous_mode: not yet for openGauss (docs/flavors/opengauss.md)".into(),
            ));
        }
        let c = self.connection(Self::CONNECT.min(timeout)).await?;
        pg::set_sync_standbys(&c, value, timeout).await
    }
    async fn initdb(&self) -> Result<String, PgError> {
        self.inst.initdb_staged().await
    }
    async fn staged_initdb(&self) -> Option<String> {
        self.inst.staged_system_id().await
    }
    fn rewind_incomplete(&self) -> bool {
        self.inst.rewind_incomplete()
    }
    fn promotion_pending(&self, pg: &PgStatus) -> bool {
        self.inst.promotion_pending(pg)
    }
    async fn adopt_initdb(&self) -> Result<(), PgError> {
        self.inst.adopt_staged()
    }
    async fn discard_initdb(&self) -> Result<(), PgError> {
        self.inst.discard_staged()
    }
    async fn first_start(&self) -> Result<(), PgError> {
        let inst = &self.inst;
        inst.start(&RunAs::Primary).await?;
        let client = inst.connect(Duration::from_secs(10)).await?;
        pg::create_replication_role(&client, &inst.cfg).await?;
        tracing::info!("bootstrap complete");
        Ok(())
    }
    async fn start(&self, run_as: &RunAs) -> Result<(), PgError> {
        self.inst.start(run_as).await
    }
    async fn stop(&self, mode: StopMode) -> Result<(), PgError> {
        self.disconnect();
        self.inst.stop(mode).await
    }
    async fn promote(&self, from: u32, to: u32, old_primary_running: bool) -> Result<(), PgError> {
        self.inst.skip_timelines(from, to)?;
        if self.is_opengauss() && old_primary_running {
            // Zero loss by openGauss's own protocol: the primary demotes
            // itself after sending all it has, then this standby promotes.
            // Never a failover while the old primary may still write.
            self.disconnect();
            self.inst.gs_switchover().await?;
        } else {
            self.inst.promote().await?;
        }
        if self.is_gtm() {
            return Ok(());
        }
        if self.is_opengauss() {
            // A primary lists (and so lets in) every standby in
            // replconninfo; the standby it was listed only its leader.
            let c = self.inst.connect(Duration::from_secs(5)).await?;
            self.inst.follow(&c, &RunAs::Primary).await?;
        }
        // A data directory Baton adopted rather than initdb'd (an existing
        // server, a Greenplum coordinator from gpinitsystem) may lack the
        // replication role its standbys clone and stream with. The
        // promotion stands either way; a failure here shows in their clone.
        let ensure = async {
            let client = self.inst.connect(Duration::from_secs(2)).await?;
            pg::create_replication_role(&client, &self.inst.cfg).await
        };
        if let Err(e) = ensure.await {
            tracing::warn!(
                "could not make sure the replication role {:?} exists: {e}",
                self.inst.cfg.replication.username
            );
        }
        Ok(())
    }
    async fn basebackup_from(&self, host: &str, port: u16) -> Result<(), PgError> {
        self.inst.basebackup_from(host, port).await
    }
    async fn rebuild_from(&self, host: &str, port: u16) -> Result<PathBuf, PgError> {
        self.inst.rebuild_from(host, port).await
    }
    async fn rewind_from(&self, host: &str, port: u16) -> Result<Option<(Lsn, u32)>, PgError> {
        self.inst.rewind_from(host, port).await
    }
    async fn end_of_wal(&self) -> Option<Lsn> {
        self.inst.end_of_wal().await
    }
    async fn checkpoint_member(&self, host: &str, port: u16) -> Result<(), PgError> {
        self.inst.checkpoint_member(host, port).await
    }
    async fn checkpoint(&self, timeout: Duration) -> Result<(), PgError> {
        if self.is_gtm() {
            // The first step of a switchover: refused before anything stops.
            return Err(Self::not_for_gtm(
                "a planned switchover (fail over instead: the standby takes over with the \
                 active's state)",
            ));
        }
        let local = self.inst.connect(timeout).await?;
        local.batch_execute("CHECKPOINT").await?;
        Ok(())
    }
    async fn shutdown_checkpoint(&self) -> Result<Lsn, PgError> {
        if self.is_gtm() {
            return Err(Self::not_for_gtm("a shutdown checkpoint"));
        }
        let cd = self.inst.controldata().await?;
        let state = cd.get("Database cluster state").map(String::as_str);
        if state != Some("shut down") {
            return Err(PgError::Refused(format!(
                "postgres did not shut down cleanly: {state:?}"
            )));
        }
        cd.get("Latest checkpoint location")
            .and_then(|l| l.parse().ok())
            .ok_or_else(|| {
                PgError::Refused("no shutdown checkpoint location in pg_controldata".into())
            })
    }
    fn progress(&self) -> Option<baton_core::instance::Progress> {
        self.inst.progress()
    }
    async fn member_replay_lsn(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<Option<Lsn>, PgError> {
        self.member_lsn(host, port, timeout, false).await
    }
    async fn member_wal_position(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<Option<Lsn>, PgError> {
        self.member_lsn(host, port, timeout, true).await
    }
    async fn order_fence(&self, order: FenceOrder) -> Result<(), PgError> {
        self.fence.send(order).await.map(|_| ())
    }
    async fn set_members(&self, cluster: &ClusterView) {
        if !self.is_opengauss() {
            return;
        }
        let members = cluster
            .members
            .iter()
            .filter_map(|(name, m)| {
                let (host, port) = m.pg_address()?;
                Some(pg::Peer {
                    name: name.clone(),
                    host,
                    port,
                })
            })
            .collect();
        if !self.inst.set_members(members) {
            return;
        }
        // A standby lists its leader first and is re-pointed with it; a
        // running primary must list (and so let in) every standby now.
        let primary = self.inst.postmaster_pid().is_some()
            && !self
                .inst
                .cfg
                .data_dir
                .join(self.inst.cfg.flavor.standby_file())
                .exists();
        if !primary {
            return;
        }
        let reload = async {
            let c = self.connection(Self::CONNECT).await?;
            self.inst.follow(&c, &RunAs::Primary).await
        };
        match reload.await {
            Ok(()) => tracing::info!("replconninfo rewritten for the members now in the cluster"),
            Err(e) => tracing::warn!("could not rewrite replconninfo for the new members: {e}"),
        }
    }
    fn demoted_by_candidate(&self) -> bool {
        self.is_opengauss()
    }
    fn reconfigured(&self, cfg: PgConfig, name: String) -> Result<LocalPg, PgError> {
        Ok(LocalPg {
            fence: FenceLink::new(cfg.fence.clone(), cfg.data_dir.clone()),
            inst: Instance::new(cfg, name)?,
            client: Mutex::new(self.kept()),
            mirroring: self.mirroring.clone(),
            virtual_slots: Mutex::new(self.virtual_slots.lock().expect("slots lock").clone()),
            system_id: Mutex::new(self.system_id.lock().expect("system id lock").clone()),
            replay_unknown: Default::default(),
        })
    }
}

/// Peers over HTTP(S), with the API's CA; control calls carry this
/// member's own API credentials (the cluster shares them, as in Patroni).
pub struct HttpPeers {
    pub client: reqwest::Client,
    pub auth: Option<crate::config::Credentials>,
}

/// How many times, how far apart, a member's two ports must refuse before
/// a probe says so (`Peers::refused`): a process that is restarting has
/// its port back within this window, one that is gone does not.
const REFUSAL_PROBES: u32 = 3;
const REFUSAL_INTERVAL: Duration = Duration::from_millis(50);

/// `host` and `port` of a member's `api_url`.
fn host_port(api_url: &str) -> Option<(String, u16)> {
    let u = reqwest::Url::parse(api_url).ok()?;
    Some((u.host_str()?.to_string(), u.port_or_known_default()?))
}

/// Whether a TCP connection to `host:port` is refused. A timeout, or any
/// other error, is not a refusal: it may be a stalled process or a cut
/// network, behind which a primary may still run.
async fn refuses(host: &str, port: u16) -> bool {
    let connect = tokio::net::TcpStream::connect((host, port));
    match tokio::time::timeout(Duration::from_millis(500), connect).await {
        Ok(Err(e)) => e.kind() == std::io::ErrorKind::ConnectionRefused,
        _ => false,
    }
}

impl Peers for HttpPeers {
    async fn status(&self, api_url: &str) -> Option<serde_json::Value> {
        self.client
            .get(api_url)
            .send()
            .await
            .ok()?
            .json()
            .await
            .ok()
    }

    async fn closed(&self, api_url: &str) {
        use tokio::io::AsyncReadExt;
        if let Some((host, port)) = host_port(api_url) {
            let connect = tokio::net::TcpStream::connect((host.as_str(), port));
            if let Ok(Ok(mut s)) = tokio::time::timeout(Duration::from_secs(1), connect).await {
                // Nothing is ever sent: the read ends only when the other
                // side closes (or resets) the connection.
                let mut buf = [0u8; 16];
                let _ = s.read(&mut buf).await;
                return;
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }

    async fn refused(&self, api_url: &str, pg: (String, u16)) -> bool {
        let Some((host, port)) = host_port(api_url) else {
            return false;
        };
        for round in 0..REFUSAL_PROBES {
            if round > 0 {
                tokio::time::sleep(REFUSAL_INTERVAL).await;
            }
            let (api, postgres) = tokio::join!(refuses(&host, port), refuses(&pg.0, pg.1));
            if !(api && postgres) {
                return false;
            }
        }
        true
    }

    async fn failsafe(&self, api_url: &str, me: &str) -> Result<(), String> {
        let base = api_url.strip_suffix("/patroni").unwrap_or(api_url);
        let mut req = self
            .client
            .post(format!("{base}/failsafe"))
            .json(&serde_json::json!({ "name": me }));
        if let Some(a) = &self.auth {
            req = req.basic_auth(&a.username, a.password.as_deref());
        }
        let resp = req.send().await.map_err(|e| e.to_string())?;
        if resp.status().is_success() {
            Ok(())
        } else {
            let code = resp.status();
            let body = resp.text().await.unwrap_or_default();
            Err(format!("{code}: {}", body.trim()))
        }
    }
}
