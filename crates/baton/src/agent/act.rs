//! Carries out the actions `decide` returned; long ones become jobs.

use std::sync::atomic::Ordering;

use baton_core::cluster::{ClusterView, StatusKey, SyncKey};
use baton_core::ha::{Action, Decision, JobKind, Observation, PgStatus};
use baton_core::instance::slot_name;

use super::handover::{switchover, Handover};
use super::jobs::JobError;
use super::{Agent, Peers, Postgres, Store};
use crate::dcs::DcsError;
use crate::pg::{PgError, RunAs, StopMode};

/// Why an action failed; the loop logs it and decides again next tick.
#[derive(Debug, thiserror::Error)]
pub(super) enum ActError {
    #[error(transparent)]
    Dcs(#[from] DcsError),
    #[error(transparent)]
    Pg(#[from] PgError),
    /// The view lacks what the action needs (a member's address, its lease).
    #[error("{0}")]
    Missing(String),
}

impl<S: Store, P: Postgres, H: Peers> Agent<S, P, H> {
    pub(super) fn member_pg_address(
        &self,
        obs: &Observation,
        member: &str,
    ) -> Result<(String, u16), ActError> {
        obs.cluster
            .as_ref()
            .and_then(|c| c.members.get(member))
            .and_then(|m| m.pg_address())
            .ok_or_else(|| ActError::Missing(format!("member {member} has no usable conn_url")))
    }

    pub(super) fn leader_run_as(&self, cluster: &ClusterView, leader: &str) -> Option<RunAs> {
        let (host, port) = cluster.members.get(leader)?.pg_address()?;
        Some(RunAs::Replica {
            host,
            port,
            slot: slot_name(&self.cfg.name),
        })
    }

    pub(super) async fn act(&mut self, d: &Decision, obs: &Observation) {
        for action in &d.actions {
            if let Err(e) = self.act_one(action, obs).await {
                tracing::warn!(?action, "action failed: {e}");
                self.handle.events().push(
                    "action_failed",
                    &action_code(action),
                    format!("{action:?}: {e}"),
                );
                if matches!(action, Action::ClaimSync { .. } | Action::WriteSync(_)) {
                    // What follows relies on the key as written: a
                    // promotion on another leader's promise, or a rule
                    // that the old promise does not cover.
                    break;
                }
            }
        }
    }

    pub(super) async fn act_one(
        &mut self,
        action: &Action,
        obs: &Observation,
    ) -> Result<(), ActError> {
        let me = self.cfg.name.clone();
        match action {
            Action::Bootstrap => {
                let Some(lease) = self.lease else {
                    return Ok(());
                };
                // Claim nothing that no job would follow: a claim and a
                // leader key held with no bootstrap running stop everyone.
                if !self.may_spawn(JobKind::Bootstrap) {
                    return Ok(());
                }
                if !self.dcs.take_initialize(lease).await? {
                    return Ok(());
                }
                tracing::info!("won the initialize key: bootstrapping a new cluster");
                // Rule 1: hold the leader key before anything runs read-write.
                if !self.dcs.acquire_leader(&me, lease).await? {
                    self.dcs.release_initialize().await?;
                    return Ok(());
                }
                self.key_on(lease);
                let (inst, dcs) = (self.inst.clone(), self.dcs.clone());
                self.spawn_job(JobKind::Bootstrap, async move {
                    let id = inst.initdb().await.map_err(|e| e.to_string())?;
                    // initdb runs beside the data directory, which takes the
                    // new cluster only once its identifier is in etcd: a
                    // member that dies before that leaves an empty data
                    // directory (and clones whichever cluster won), never an
                    // orphaned cluster of its own.
                    if !publish_initialize(&dcs, &id).await? {
                        // Another cluster won meanwhile. Ours never ran and
                        // holds nothing; the member then clones the winner.
                        inst.discard_initdb().await.map_err(|e| e.to_string())?;
                        return Err(format!(
                            "cluster initialized by another member while bootstrapping {id}; discarded ours"
                        ));
                    }
                    inst.adopt_initdb().await.map_err(|e| e.to_string())?;
                    // Rule 1: the leader key, taken before initdb, may have
                    // expired while etcd was out of reach; then the loop starts
                    // this cluster read-only and elects a leader as usual.
                    let view = dcs.load().await.map_err(|e| e.to_string())?;
                    if view.leader_name() != Some(me.as_str()) {
                        return Err(format!(
                            "cluster {id} initialized, but the leader key is no longer ours: not starting it as primary"
                        ));
                    }
                    tracing::info!(system_id = %id, "cluster initialized");
                    inst.first_start().await.map_err(|e| e.to_string())
                });
            }
            Action::AdoptInitdb => {
                self.inst.adopt_initdb().await?;
                tracing::info!("staged initdb taken into place as the data directory");
                self.wake.notify_one();
            }
            Action::Switchover { candidate } => {
                let cluster = obs.cluster.as_ref().expect("decided with a cluster view");
                let (host, port) = self.member_pg_address(obs, candidate)?;
                let Some(lease) = cluster.member_leases.get(candidate).copied() else {
                    return Err(ActError::Missing(format!(
                        "candidate {candidate} has no member lease"
                    )));
                };
                let (inst, dcs, cand) = (self.inst.clone(), self.dcs.clone(), candidate.clone());
                let limit = self.config.ttl();
                self.inst.disconnect();
                self.spawn_job(JobKind::Switchover, async move {
                    let h = Handover {
                        me,
                        candidate: cand,
                        host,
                        port,
                        lease,
                        limit,
                    };
                    switchover(&*inst, &dcs, &h).await
                });
            }
            Action::WriteSync(key) => {
                let (Some(lease), Some(c)) = (self.lease, obs.cluster.as_ref()) else {
                    return Ok(());
                };
                if self
                    .dcs
                    .put_sync(&me, lease, c.sync_revision, key.as_ref())
                    .await?
                {
                    tracing::info!(sync = ?key, "sync key written");
                    // The next step (a confirmation, a rule) may be due now.
                    self.wake.notify_one();
                } else {
                    return Err(ActError::Missing(
                        "the sync key changed meanwhile, or the leader key is not ours".into(),
                    ));
                }
            }
            Action::SetSyncStandbys(value) => {
                self.inst
                    .set_sync_standbys(value.as_deref(), self.config.retry_timeout())
                    .await?;
                tracing::info!(
                    "synchronous_standby_names = {:?}",
                    value.as_deref().unwrap_or("(the node file's value)")
                );
                self.wake.notify_one();
            }
            Action::ClaimSync { strict } => {
                let (Some(lease), Some(c)) = (self.lease, obs.cluster.as_ref()) else {
                    return Err(ActError::Missing("no lease or no view of etcd".into()));
                };
                let key = SyncKey {
                    leader: Some(me.clone()),
                    sync_standby: None,
                    quorum: None,
                };
                if !self
                    .dcs
                    .put_sync(&me, lease, c.sync_revision, Some(&key))
                    .await?
                {
                    return Err(ActError::Missing(
                        "the sync key changed meanwhile, or the leader key is not ours: not promoting"
                            .into(),
                    ));
                }
                // Whatever this standby's own file says (a rule of its
                // own past as primary) does not hold for the new primary:
                // in strict mode it waits for a standby from its first
                // commit (any: none is promised to elections yet); else it
                // runs asynchronous until its first leader tick names one.
                let rule = if *strict { "ANY 1 (*)" } else { "" };
                self.inst
                    .set_sync_standbys(Some(rule), self.config.retry_timeout())
                    .await?;
            }
            Action::PublishFailsafe(members) => {
                let Some(lease) = self.lease else {
                    return Ok(());
                };
                if !self.dcs.put_failsafe(&me, lease, members.as_ref()).await? {
                    tracing::info!("failsafe key not written: the leader key is not ours");
                }
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
                self.inst.disconnect();
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
            Action::AbandonBootstrap => {
                if self.dcs.release_leader(&me).await? {
                    tracing::warn!("released the leader key: nothing here to lead");
                }
                if self.dcs.release_initialize().await? {
                    tracing::warn!("gave up the bootstrap claim");
                }
            }
            Action::RemoveDeadLeader { name, lease } => {
                if self.dcs.remove_dead_leader(name, *lease).await? {
                    tracing::warn!(
                        leader = %name,
                        lease = lease.0,
                        "removed the leader key: its agent and postgres are gone"
                    );
                    // The election starts now, not on the next tick.
                    self.wake.notify_one();
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
                let (inst, dcs) = (self.inst.clone(), self.dcs.clone());
                self.inbox.counters.rewinds.fetch_add(1, Ordering::Relaxed);
                self.spawn_job(JobKind::Rewind, async move {
                    // Read before pg_rewind takes it back: how far this
                    // member's own WAL went.
                    let end = inst.end_of_wal().await;
                    // Checkpointing the source first also tells whether it
                    // is reachable at all: if not, retry; never rebuild.
                    inst.checkpoint_member(&host, port)
                        .await
                        .map_err(|e| JobError {
                            message: format!("{host}:{port}: {e}"),
                            source_down: true,
                        })?;
                    tracing::info!("running pg_rewind against {host}:{port}");
                    let diverged = match inst.rewind_from(&host, port).await {
                        Ok(d) => d,
                        Err(e) => {
                            // pg_rewind fails the same way when its source
                            // went away mid-run: then the failure is the
                            // source's, to retry, not a reason to rebuild.
                            let source_down = inst.checkpoint_member(&host, port).await.is_err();
                            return Err(JobError {
                                message: e.to_string(),
                                source_down,
                            });
                        }
                    };
                    if let (Some(end), Some((at, timeline))) = (end, diverged) {
                        let d = baton_core::cluster::DiscardedWal {
                            member: me.clone(),
                            timeline,
                            diverged: at.0,
                            end: end.0,
                            bytes: end.0.saturating_sub(at.0),
                            at: chrono::Utc::now()
                                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                        };
                        tracing::warn!(
                            bytes = d.bytes,
                            "pg_rewind discarded {} bytes of WAL this member had written past {at} \
                             (timeline {timeline}), up to {end}",
                            d.bytes
                        );
                        if let Err(e) = dcs.put_discarded(&d).await {
                            tracing::warn!("could not record the discarded WAL in etcd: {e}");
                        }
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
                let PgStatus::Running(run) = &obs.pg else {
                    return Ok(());
                };
                let Some(tl) = run.timeline else {
                    return Ok(());
                };
                let file = self.inst.timeline_history(tl).await?;
                let existing = obs.cluster.as_ref().and_then(|c| c.history.clone());
                let history = baton_core::cluster::merge_history(
                    existing,
                    &file,
                    tl,
                    &me,
                    chrono::Utc::now(),
                );
                let Some(lease) = self.lease else {
                    return Ok(());
                };
                if self.dcs.put_history(&me, lease, &history).await? {
                    tracing::info!(timeline = tl, "history updated");
                } else {
                    tracing::warn!("history not written: the leader key is no longer ours");
                }
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
                    self.key_on(lease);
                    tracing::info!(lease = lease.0, "acquired the leader key");
                    self.wake.notify_one();
                }
            }
            Action::AdoptLeader => {
                let Some(lease) = self.lease else {
                    return Ok(());
                };
                if self.dcs.adopt_leader(&me, lease).await? {
                    self.key_on(lease);
                    tracing::info!(lease = lease.0, "leader key re-attached to my lease");
                    self.wake.notify_one();
                }
            }
            Action::Clone { from } => {
                let cluster = obs.cluster.as_ref().expect("decided with a cluster view");
                let Some((host, port)) = cluster.members.get(from).and_then(|m| m.pg_address())
                else {
                    return Err(ActError::Missing(format!("leader {from} has no conn_url")));
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
                    return Err(ActError::Missing(format!(
                        "leader {leader} has no conn_url"
                    )));
                };
                let inst = self.inst.clone();
                self.spawn_job(JobKind::Start, async move {
                    inst.start(&run_as).await.map_err(|e| e.to_string())
                });
            }
            Action::Follow { leader } => {
                let cluster = obs.cluster.as_ref().expect("decided with a cluster view");
                let Some(run_as) = self.leader_run_as(cluster, leader) else {
                    return Err(ActError::Missing(format!(
                        "leader {leader} has no conn_url"
                    )));
                };
                self.inst.follow(&run_as).await?;
            }
            Action::Promote { from, to } => {
                let (Some(lease), Some(cluster)) = (self.lease, obs.cluster.as_ref()) else {
                    return Ok(());
                };
                let seen = cluster.timeline_reserved;
                if !self.dcs.reserve_timeline(&me, lease, seen, *to).await? {
                    tracing::warn!(
                        timeline = to,
                        "could not reserve timeline {to} (the leader key or the reservation changed); not promoting"
                    );
                    return Ok(());
                }
                let (from, to) = (*from, *to);
                let inst = self.inst.clone();
                let old_primary = cluster.other_running_primary(&me).map(str::to_string);
                if let Some(p) = old_primary
                    .as_ref()
                    .filter(|_| self.inst.demoted_by_candidate())
                {
                    tracing::info!(
                        "{p} still runs as primary: promoting by switching over with it"
                    );
                }
                // postgres removes standby.signal itself when promoting (and
                // fails if it is gone already); the next start rewrites the
                // configuration for a primary anyway.
                self.spawn_job(JobKind::Promote, async move {
                    inst.promote(from, to, old_primary.is_some())
                        .await
                        .map_err(|e| e.to_string())
                });
            }
            Action::Stop => {
                // Fencing is not queued behind a job: it happens now.
                if let Some(job) = self.job.take() {
                    job.handle.abort();
                }
                self.inst.stop(StopMode::Immediate).await?;
                tracing::warn!("postgres stopped immediately: {}", self.last_reason);
            }
            Action::CreateSlots(members) => {
                for m in members {
                    let slot = slot_name(m);
                    self.inst.create_slot(&slot).await?;
                    tracing::info!("created replication slot {slot} for {m}");
                }
            }
            Action::DropSlots(slots) => {
                for slot in slots {
                    if self.inst.drop_inactive_slot(slot).await? {
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
                let mut retain: Vec<String> = obs
                    .cluster
                    .as_ref()
                    .map(|c| c.managed_slots(&me))
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|s| slots.contains_key(s))
                    .collect();
                // And one for this leader: whoever promotes next makes it
                // before promoting, so that this member, should it die,
                // finds its WAL from the fork point kept when it rejoins.
                retain.push(slot_name(&me));
                retain.sort();
                let status = StatusKey {
                    optime: run.wal_lsn.map(|l| l.0),
                    slots: Some(slots),
                    retain_slots: Some(retain),
                    baton_leader: Some(me.clone()),
                };
                let Some(lease) = self.lease else {
                    return Ok(());
                };
                // Unchanged since etcd last showed it: no write (an idle
                // leader would otherwise cost etcd a disk write a tick).
                if obs.cluster.as_ref().and_then(|c| c.status.as_ref()) == Some(&status) {
                    return Ok(());
                }
                if !self.dcs.put_status(&me, lease, &status).await? {
                    tracing::warn!("status not written: the leader key is no longer ours");
                }
            }
        }
        Ok(())
    }
}

/// The action's variant name in snake_case (`CreateSlots` →
/// `create_slots`), the event log's code for a failed action.
fn action_code(a: &Action) -> String {
    let mut out = String::new();
    for c in format!("{a:?}")
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric())
    {
        if c.is_ascii_uppercase() && !out.is_empty() {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// Publishes a fresh cluster's system identifier: `false` only when etcd
/// definitely holds another one. An error says nothing (the write may have
/// landed and its answer got lost), so it is retried, for at most
/// `PUBLISH_LIMIT`, then the job fails with the data directory kept.
async fn publish_initialize(dcs: &impl Store, id: &str) -> Result<bool, String> {
    const PUBLISH_LIMIT: std::time::Duration = std::time::Duration::from_secs(600);
    let deadline = super::now() + PUBLISH_LIMIT;
    loop {
        match dcs.set_initialize(id).await {
            Ok(won) => return Ok(won),
            Err(e) if super::now() >= deadline => {
                return Err(format!("publishing system identifier {id}: {e}"))
            }
            Err(e) => {
                tracing::warn!("publishing system identifier {id}: {e}; retrying");
                tokio::time::sleep(std::time::Duration::from_secs(1)).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_actions_are_coded_by_their_variant() {
        assert_eq!(
            action_code(&Action::CreateSlots(vec!["n2".into()])),
            "create_slots"
        );
        assert_eq!(action_code(&Action::Stop), "stop");
    }
}
