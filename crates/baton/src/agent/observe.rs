//! What one tick sees: the local postgres, the peers' REST status, the
//! leader's slot bookkeeping; and what it publishes about itself.

use std::time::Instant;

use baton_core::cluster::{ClusterView, Member, RefusedReport};
use baton_core::ha::{publish, JobKind, Peer, PgStatus, Reason};
use baton_core::instance::{slot_name, DataDir};

use super::{Agent, Peers, Postgres, Store};

impl<S: Store, P: Postgres, H: Peers> Agent<S, P, H> {
    pub(super) async fn observe_postgres(&mut self) -> (PgStatus, DataDir) {
        self.gtm_unreachable = false;
        if !self.inst.postmaster_running() {
            self.pg_answered = false;
            self.inst.disconnect();
            // A rewind or rebuild while stopped can bring back the same
            // timeline number with another past: read it again next start.
            self.history_cache = None;
            return (PgStatus::Stopped, self.inst.inspect().await);
        }
        match self.inst.status(self.config.retry_timeout()).await {
            Ok(mut r) => {
                self.pg_answered = true;
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
            Err(e) => {
                if std::mem::take(&mut self.pg_answered) {
                    tracing::info!("postgres stopped answering the status query: {e}");
                } else {
                    tracing::debug!("status query failed: {e}");
                }
                self.gtm_unreachable =
                    self.cfg.postgresql.flavor.has_gtm() && e.is_gtm_unreachable();
                self.inst.disconnect();
                (PgStatus::Unresponsive, self.inst.inspect().await)
            }
        }
    }

    /// Asks every other member's REST API for its WAL position, concurrently,
    /// each bounded by the client's `retry_timeout`. Unreachable members are
    /// left out: they cannot promote either without reaching etcd.
    pub(super) async fn observe_peers(&self, cluster: &ClusterView) -> Vec<Peer> {
        let mut asks = tokio::task::JoinSet::new();
        for (name, m) in &cluster.members {
            if *name == self.cfg.name {
                continue;
            }
            self.inbox
                .counters
                .election_asks
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let peers = self.peers.clone();
            let name = name.clone();
            let url = m.api_url.clone();
            asks.spawn(async move {
                let v = peers.status(&url).await?;
                Some(Peer::from_status(name, &v))
            });
        }
        let mut peers: Vec<Peer> = asks.join_all().await.into_iter().flatten().collect();
        peers.sort_by(|a, b| a.name.cmp(&b.name));
        if !self.config.synchronous_mode.is_off() {
            self.freshen_voters(cluster, &mut peers).await;
        }
        peers
    }

    /// The process-death fast path (`ha::dead_leader`): while this member
    /// does not stream from the leader (a replica that does knows its
    /// postgres is up), or once the leader link has closed, whether the
    /// leader key's holder refuses on both its REST and its postgres port.
    /// Costs nothing while streaming from a leader whose agent lives.
    pub(super) async fn probe_leader(
        &self,
        cluster: Option<&ClusterView>,
        pg: &PgStatus,
    ) -> Option<RefusedReport> {
        let leader = cluster?.leader.as_ref()?;
        if leader.name == self.cfg.name {
            return None;
        }
        use std::sync::atomic::Ordering::Relaxed;
        let link_closed = self.leader_link_closed.load(Relaxed);
        match pg {
            PgStatus::Running(r) if !r.in_recovery => return None,
            PgStatus::Running(r) if r.receiver_streaming && !link_closed => return None,
            _ => {}
        }
        let m = cluster?.members.get(&leader.name)?;
        let pg_at = m.pg_address()?;
        let refused = self.peers.refused(&m.api_url, pg_at).await;
        if !refused {
            self.leader_link_closed.store(false, Relaxed);
        }
        refused.then(|| RefusedReport {
            leader: leader.name.clone(),
            lease: leader.lease,
        })
    }

    /// Synchronous mode: a voter's REST answer is its last tick's, and the
    /// acknowledged commit may have reached it since; its own postgres is
    /// asked instead, and a voter whose postgres does not answer is not
    /// heard at all (a hung one could hold the latest commit).
    async fn freshen_voters(&self, cluster: &ClusterView, peers: &mut [Peer]) {
        let Some(key) = &cluster.sync else {
            return;
        };
        let mut asks = tokio::task::JoinSet::new();
        for (i, p) in peers.iter().enumerate() {
            if !(key.lists(&p.name) || key.leader_is(&p.name)) {
                continue;
            }
            let Some((host, port)) = cluster.members.get(&p.name).and_then(|m| m.pg_address())
            else {
                continue;
            };
            let (inst, timeout) = (self.inst.clone(), self.config.retry_timeout());
            asks.spawn(async move { (i, inst.member_wal_position(&host, port, timeout).await) });
        }
        for (i, answer) in asks.join_all().await {
            match answer {
                Ok(Some(at)) => peers[i].position = at.0,
                // A primary (no WAL receiver): its REST answer stands.
                Ok(None) => {}
                Err(_) => peers[i].running = false,
            }
        }
    }

    /// On the leader's primary: which of Baton's slots (those of members it
    /// has seen, kept in `status.retain_slots`) have no member key now, and
    /// since when. A new leader starts counting afresh, which only delays a
    /// drop; operators' own slots are never counted.
    pub(super) fn track_absent_slots(
        &mut self,
        cluster: Option<&ClusterView>,
        pg: &PgStatus,
        now: Instant,
    ) {
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

    /// Remembers where this primary's WAL was when its current
    /// `synchronous_standby_names` was first seen in force: a rule covers
    /// the commits before that point only once its standbys flushed past
    /// it. A restarted agent starts counting afresh, which only delays.
    pub(super) fn track_sync_rule(&mut self, pg: &PgStatus) {
        let Some(run) = pg.running().filter(|r| !r.in_recovery) else {
            self.sync_seen = None;
            return;
        };
        let (Some(at), ssn) = (run.wal_lsn, &run.synchronous_standby_names) else {
            return;
        };
        if self.sync_seen.as_ref().is_none_or(|(s, _)| s != ssn) {
            self.sync_seen = Some((ssn.clone(), at));
        }
    }

    /// The running instance's timeline history, read once per timeline.
    pub(super) async fn history_of(
        &mut self,
        timeline: Option<u32>,
    ) -> Vec<(u32, baton_core::lsn::Lsn)> {
        let Some(tl) = timeline.filter(|t| *t > 1) else {
            return vec![];
        };
        if let Some((cached, h)) = &self.history_cache {
            if *cached == tl {
                return h.clone();
            }
        }
        match self.inst.timeline_history(tl).await {
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

    pub(super) fn member_json(
        &self,
        pg: &PgStatus,
        data_dir: &DataDir,
        job: Option<JobKind>,
        needs_repair: bool,
        i_lead: bool,
        reason: &Reason,
    ) -> Member {
        let pgc = &self.cfg.postgresql;
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
            // A copy under a short lock: the routing task never holds it
            // across I/O, so the loop never waits on an endpoint.
            baton_routing: self
                .handle
                .routing()
                .lock()
                .expect("routing status lock")
                .clone(),
            baton_data_dir: Some(pgc.data_dir.display().to_string()),
            baton_progress: self.inst.progress(),
            baton_replay_lag_ms: match pg {
                PgStatus::Running(r) if i_lead => r
                    .replication
                    .iter()
                    .filter_map(|row| Some((row.application_name.clone(), row.replay_lag_ms?)))
                    .collect(),
                _ => Default::default(),
            },
            baton_segments: match pg {
                PgStatus::Running(r) if i_lead => r.segments.clone(),
                _ => vec![],
            },
            baton_mirroring_error: match pg {
                PgStatus::Running(r) if i_lead => r.mirroring_error.clone(),
                _ => None,
            },
            baton_leader_refused: self.leader_refused.clone(),
            ..Member::default()
        };
        publish::fill_member(&mut m, pg, data_dir, job, needs_repair, i_lead);
        m
    }
}
