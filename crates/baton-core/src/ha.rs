//! The HA protocol: a pure function from what one agent observed to what it
//! should do, with a typed reason. No I/O happens here; the agent
//! (`agent.rs`) gathers the [`Observation`] and carries out the [`Action`]s,
//! and their outcome shows up in the next observation.
//!
//! Safety rules (DESIGN.md) enforced here:
//! 1. only the holder of the leader key runs read-write: a primary that sees
//!    another leader stops at once, and postgres starts as a primary only
//!    after the key is ours;
//! 2. a primary whose last successful renewal was sent more than
//!    `ttl - safety_margin` ago fences itself at once, before anything else;
//! 3. the leader key is taken by create-if-absent only (`AcquireLeader`), and
//!    a replica promotes only once it holds the key;
//! 4. before taking the key a replica compares itself with every reachable
//!    member and yields to a healthier one; never with lag above
//!    `maximum_lag_on_failover`, never when tagged `nofailover`;
//! 5. a member on an older timeline never streams from the leader until
//!    pg_rewind (or a fresh clone) made its history a prefix of the leader's;
//! 7. no action here deletes a data directory (a rebuild moves it aside);
//! 9. replicas keep following the old leader until a new one exists.
//!
//! Member life cycle, as seen from one agent:
//!
//! ```text
//!  empty ──bootstrap/clone──► stopped ──start──► replica ──(key won)──► promote ──► leader
//!                               ▲   │                 │                               │
//!                               │   └─rewind/rebuild◄─┴──diverged / demoted◄──────────┘
//!                               └──────────────── crash / fencing ─────────────────────┘
//! ```

use std::cmp::Ordering;
use std::fmt;
use std::time::{Duration, Instant};

use crate::cluster::{ClusterView, LeaseId};
use crate::config::{DynamicConfig, Tags};
use crate::instance::{slot_name, DataDir, Running};
use crate::lsn::Lsn;

/// The local postgres process as the agent found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgStatus {
    Stopped,
    /// A postmaster exists but no query succeeded (starting, or hung).
    Unresponsive,
    Running(Box<Running>),
}

/// A long action running as an owned task; the loop keeps ticking meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Bootstrap,
    Clone,
    Start,
    Promote,
    Rewind,
    Rebuild,
    Switchover,
    Restart,
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JobKind::Bootstrap => "bootstrap (initdb)",
            JobKind::Clone => "clone (pg_basebackup)",
            JobKind::Start => "start",
            JobKind::Promote => "promote",
            JobKind::Rewind => "pg_rewind",
            JobKind::Rebuild => "rebuild (move aside + pg_basebackup)",
            JobKind::Switchover => "switchover",
            JobKind::Restart => "restart",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobStatus {
    Idle,
    /// A job is running, started this long ago.
    Running(JobKind, Duration),
    /// The last job failed; shown until the next job starts. The flag says
    /// the member it worked against was unreachable: worth retrying, and no
    /// reason to give up on the local data.
    Failed(JobKind, String, bool),
    /// The last job succeeded (until the next job starts).
    Done(JobKind),
}

/// Another member as its REST API answered during an election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub running: bool,
    pub primary: bool,
    pub timeline: u32,
    /// Highest WAL position it has (written on a primary, received or
    /// replayed on a replica).
    pub position: u64,
    pub nofailover: bool,
    pub priority: i64,
}

/// Everything one tick of the loop knows.
#[derive(Debug, Clone)]
pub struct Observation {
    pub me: String,
    pub now: Instant,
    /// `None` when etcd could not be read this tick.
    pub cluster: Option<ClusterView>,
    /// This agent's current lease, if it has one.
    pub lease: Option<LeaseId>,
    /// When the last *successful* lease renewal was sent.
    pub last_renewal_sent: Option<Instant>,
    pub data_dir: DataDir,
    pub pg: PgStatus,
    pub job: JobStatus,
    /// Configuration in force (etcd's when valid, else the last known).
    pub config: DynamicConfig,
    pub tags: Tags,
    /// Other members' answers, gathered only when there is no leader.
    pub peers: Vec<Peer>,
    /// An operator asked for this member to be rebuilt.
    pub reinit_requested: bool,
    /// Whether a failed rewind may be followed by a rebuild.
    pub rebuild_allowed: bool,
    /// An operator asked for postgres to be restarted.
    pub restart_requested: bool,
    /// How long this running replica has not been streaming (`None` when it
    /// streams, or is not a running replica).
    pub not_streaming_for: Option<Duration>,
    /// Leader: Baton's slots on this primary whose member key is gone, and
    /// for how long this agent has seen them so.
    pub absent_slots: std::collections::BTreeMap<String, Duration>,
    /// Wall-clock time, for scheduled switchovers.
    pub now_utc: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Claim `initialize`, then the leader key, then run the bootstrap job.
    Bootstrap,
    /// Store our system identifier in `initialize` (completes bootstrap).
    PublishInitialize(String),
    /// Store the dynamic config if none is stored yet.
    InitConfig,
    /// Create-if-absent on the leader key with our lease.
    AcquireLeader,
    /// The leader key names us but hangs on an old lease of ours.
    AdoptLeader,
    /// Delete the leader key if it is still ours.
    ReleaseLeader,
    /// Clone the named member with pg_basebackup (job).
    Clone { from: String },
    /// Start postgres as primary (job).
    StartPrimary,
    /// Start postgres as a replica of the named member (job).
    StartReplica { leader: String },
    /// Start postgres read-only with no upstream, to take part in an election (job).
    StartReadOnly,
    /// Re-point a running replica at the named member by reload.
    Follow { leader: String },
    /// Promote the running replica (job).
    Promote,
    /// Stop postgres at once (`-m immediate`), aborting any job: used to
    /// fence, to demote, and to stop a diverged replica. Crash recovery (or
    /// pg_rewind's) replays the WAL on the next start.
    Stop,
    /// pg_rewind against the named member (job).
    Rewind { from: String },
    /// Move the data directory aside and clone the named member (job).
    Rebuild { from: String },
    /// Create physical slots for these members on the running primary.
    CreateSlots(Vec<String>),
    /// Drop these (inactive) slots of members gone for `member_slots_ttl`.
    DropSlots(Vec<String>),
    /// Write the `status` key (leader only).
    PublishStatus,
    /// Append this promotion to the `history` key (new leader).
    PublishHistory,
    /// Planned handover to `candidate` (job): checkpoint, clean stop, verify
    /// the candidate replayed the shutdown checkpoint, move the leader key
    /// onto the candidate's lease; on any failure restart as primary.
    Switchover { candidate: String },
    /// Drop the pending `failover` request (refused, or malformed).
    CancelSwitchover,
    /// Restart postgres in its current role (job).
    Restart,
}

/// Actions that change roles or postgres by themselves; maintenance mode
/// (`pause`) holds them back. Fencing (`Stop` of a primary whose lease may
/// be gone) is never held back.
fn automatic(a: &Action) -> bool {
    !matches!(
        a,
        Action::PublishInitialize(_)
            | Action::InitConfig
            | Action::AdoptLeader
            | Action::CreateSlots(_)
            | Action::DropSlots(_)
            | Action::PublishStatus
            | Action::PublishHistory
            | Action::Switchover { .. }
            | Action::CancelSwitchover
            | Action::Restart
            // Only an operator's switchover or manual failover gives the
            // key to a replica while paused; promoting it is theirs too.
            | Action::Promote
    )
}

/// Why the agent did what it did; shown in logs, `baton list` and the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    JobRunning(JobKind),
    EtcdUnreachable,
    EtcdUnreachableFencing {
        since: Duration,
    },
    DataDirUnusable(String),
    ForeignCluster {
        ours: String,
        cluster: String,
    },
    Bootstrapping,
    BootstrapFailed(String),
    WaitingForBootstrap,
    WaitingForLeaderToClone,
    WaitingForSlot {
        leader: String,
    },
    Cloning {
        from: String,
    },
    CloneFailed(String),
    Starting,
    StartFailed(String),
    StartingReadOnly,
    PostgresUnresponsive,
    AcquiringLeader,
    AdoptingLeader,
    Promoting,
    Leader,
    LeaseExpiredFencing {
        since: Duration,
    },
    PrimaryStartTimeout {
        waited: Duration,
    },
    DemotingForeignLeader {
        leader: String,
    },
    Following {
        leader: String,
        streaming: bool,
    },
    Repointing {
        leader: String,
    },
    NoLeader,
    LeaderNotReachable {
        leader: String,
    },
    /// Not taking part in the election, and why.
    NotEligible(String),
    /// Taking part, but another member is healthier.
    Yielding {
        to: String,
        why: String,
    },
    /// Taking part and the healthiest: racing for the key.
    Candidate,
    Diverged {
        leader: String,
    },
    Rewinding {
        from: String,
        timeline: u32,
        leader_timeline: u32,
    },
    RewindFailed {
        error: String,
        rebuilding: bool,
    },
    RewindSourceDown {
        from: String,
        error: String,
    },
    Reinitializing {
        from: String,
    },
    WaitingForLeaderToRebuild,
    SwitchoverScheduled {
        to: String,
        at: String,
    },
    SwitchoverRefused(String),
    SwitchingOver {
        to: String,
    },
    ManualFailover {
        to: String,
    },
    Restarting,
    /// Maintenance mode held these actions back.
    Paused {
        held: Box<Reason>,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::JobRunning(k) => write!(f, "{k} in progress"),
            Reason::EtcdUnreachable => write!(f, "etcd unreachable; keeping current state"),
            Reason::EtcdUnreachableFencing { since } => write!(
                f,
                "etcd unreachable and lease not renewed for {:.1} s: demoting (fencing)",
                since.as_secs_f64()
            ),
            Reason::DataDirUnusable(why) => write!(f, "data directory unusable: {why}"),
            Reason::ForeignCluster { ours, cluster } => write!(
                f,
                "data directory belongs to system {ours}, cluster is {cluster}: refusing to touch it"
            ),
            Reason::Bootstrapping => write!(f, "cluster not initialized: bootstrapping it"),
            Reason::BootstrapFailed(e) => write!(f, "bootstrap failed: {e}"),
            Reason::WaitingForBootstrap => {
                write!(f, "another member is bootstrapping the cluster; waiting")
            }
            Reason::WaitingForLeaderToClone => write!(f, "no leader to clone from; waiting"),
            Reason::WaitingForSlot { leader } => {
                write!(f, "waiting for {leader} to create our replication slot")
            }
            Reason::Cloning { from } => write!(f, "cloning from {from}"),
            Reason::CloneFailed(e) => write!(f, "clone failed, will retry: {e}"),
            Reason::Starting => write!(f, "starting postgres"),
            Reason::StartFailed(e) => write!(f, "postgres failed to start, will retry: {e}"),
            Reason::StartingReadOnly => {
                write!(f, "no leader: starting read-only to take part in the election")
            }
            Reason::PostgresUnresponsive => write!(f, "postgres is not answering queries"),
            Reason::AcquiringLeader => write!(f, "no leader and I run as primary: taking the leader key"),
            Reason::AdoptingLeader => write!(f, "re-attaching my leader key to my new lease"),
            Reason::Promoting => write!(f, "I hold the leader key: promoting"),
            Reason::Leader => write!(f, "I am the leader"),
            Reason::LeaseExpiredFencing { since } => write!(
                f,
                "leader lease not renewed for {:.1} s: demoting (fencing)",
                since.as_secs_f64()
            ),
            Reason::PrimaryStartTimeout { waited } => write!(
                f,
                "postgres did not come back within primary_start_timeout ({:.1} s): \
                 stopping it and releasing the leader key",
                waited.as_secs_f64()
            ),
            Reason::DemotingForeignLeader { leader } => {
                write!(f, "running as primary but {leader} holds the leader key: demoting")
            }
            Reason::Following { leader, streaming: true } => {
                write!(f, "streaming from leader {leader}")
            }
            Reason::Following { leader, streaming: false } => {
                write!(f, "following leader {leader}, not streaming yet")
            }
            Reason::Repointing { leader } => {
                write!(f, "re-pointing replication at new leader {leader}")
            }
            Reason::NoLeader => write!(f, "no leader in the cluster"),
            Reason::LeaderNotReachable { leader } => {
                write!(f, "leader {leader} has not published its address")
            }
            Reason::NotEligible(why) => write!(f, "no leader; not a failover candidate: {why}"),
            Reason::Yielding { to, why } => write!(f, "no leader; yielding to {to}: {why}"),
            Reason::Candidate => {
                write!(f, "no leader; I am the healthiest candidate: taking the leader key")
            }
            Reason::Diverged { leader } => write!(
                f,
                "my WAL went past the point where {leader}'s timeline forked: stopping to rewind"
            ),
            Reason::Rewinding {
                from,
                timeline,
                leader_timeline,
            } => write!(
                f,
                "on timeline {timeline}, leader {from} on {leader_timeline}: pg_rewind before following"
            ),
            Reason::RewindFailed {
                error,
                rebuilding: true,
            } => write!(f, "pg_rewind failed ({error}): rebuilding from the leader"),
            Reason::RewindFailed {
                error,
                rebuilding: false,
            } => write!(
                f,
                "need repair: pg_rewind failed ({error}) and rebuild is not allowed \
                 (postgresql.rebuild_on_rewind_failure)"
            ),
            Reason::RewindSourceDown { from, error } => {
                write!(f, "pg_rewind could not reach {from} ({error}); retrying")
            }
            Reason::Reinitializing { from } => write!(f, "reinitialize requested: rebuilding from {from}"),
            Reason::WaitingForLeaderToRebuild => {
                write!(f, "reinitialize requested: waiting for a leader to clone from")
            }
            Reason::SwitchoverScheduled { to, at } => {
                write!(f, "I am the leader; switchover to {to} scheduled at {at}")
            }
            Reason::SwitchoverRefused(why) => write!(f, "switchover refused: {why}"),
            Reason::SwitchingOver { to } => write!(f, "switching over to {to}"),
            Reason::ManualFailover { to } if to.is_empty() => {
                write!(f, "no leader; manual failover to me: taking the leader key")
            }
            Reason::ManualFailover { to } => {
                write!(f, "no leader; manual failover to {to} requested: not taking part")
            }
            Reason::Restarting => write!(f, "restart requested: restarting postgres"),
            Reason::Paused { held } => write!(f, "paused (maintenance mode); would act: {held}"),
        }
    }
}

impl Reason {
    /// Reasons that leave the member stopped until an operator acts.
    pub fn needs_repair(&self) -> bool {
        matches!(
            self,
            Reason::ForeignCluster { .. }
                | Reason::DataDirUnusable(_)
                | Reason::RewindFailed {
                    rebuilding: false,
                    ..
                }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub actions: Vec<Action>,
    pub reason: Reason,
}

fn decision(actions: Vec<Action>, reason: Reason) -> Decision {
    Decision { actions, reason }
}

/// Timeline switch points from the `history` key: `(timeline, switch LSN)`.
pub fn history_points(cluster: &ClusterView) -> Vec<(u32, u64)> {
    cluster
        .history
        .as_ref()
        .and_then(|h| h.as_array())
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| {
                    let e = e.as_array()?;
                    Some((e.first()?.as_u64()? as u32, e.get(1)?.as_u64()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Why `candidate` cannot take over from the current leader now, if it
/// cannot; the same checks guard the REST API and the leader's loop.
pub fn candidate_problem(cluster: &ClusterView, candidate: &str, max_lag: u64) -> Option<String> {
    let Some(m) = cluster.members.get(candidate) else {
        return Some(format!("no member named {candidate:?}"));
    };
    if cluster.leader_name() == Some(candidate) {
        return Some(format!("{candidate} is already the leader"));
    }
    if m.tags.nofailover {
        return Some(format!("{candidate} is tagged nofailover"));
    }
    if m.state != "running" || m.role != "replica" {
        return Some(format!(
            "{candidate} is {} as {}, not a running replica",
            m.state, m.role
        ));
    }
    if m.replication_state.as_deref() != Some("streaming") {
        return Some(format!("{candidate} is not streaming"));
    }
    let leader = cluster.leader_member();
    let (ltl, optime) = (leader.and_then(|l| l.timeline), cluster.leader_optime());
    if m.timeline != ltl {
        return Some(format!(
            "{candidate} is on timeline {}, the leader on {}",
            m.timeline.unwrap_or(0),
            ltl.unwrap_or(0)
        ));
    }
    if let (Some(o), Some(p)) = (optime, m.xlog_location) {
        let lag = o.saturating_sub(p);
        if lag > max_lag {
            return Some(format!(
                "{candidate} lags {lag} bytes > maximum_lag_on_failover {max_lag}"
            ));
        }
    }
    None
}

/// The HA decision for one tick. Pure: same observation, same decision.
pub fn decide(o: &Observation) -> Decision {
    let d = decide_unpaused(o);
    let paused = o
        .cluster
        .as_ref()
        .and_then(|c| c.config.as_ref())
        .is_some_and(|c| c.pause);
    if !paused {
        return d;
    }
    let fencing = matches!(
        d.reason,
        Reason::LeaseExpiredFencing { .. } | Reason::EtcdUnreachableFencing { .. }
    );
    let operator = matches!(d.reason, Reason::ManualFailover { ref to } if to.is_empty());
    if fencing || operator || !d.actions.iter().any(automatic) {
        return d;
    }
    Decision {
        actions: d.actions.into_iter().filter(|a| !automatic(a)).collect(),
        reason: Reason::Paused {
            held: Box::new(d.reason),
        },
    }
}

fn decide_unpaused(o: &Observation) -> Decision {
    let running = match &o.pg {
        PgStatus::Running(r) => Some(r.as_ref()),
        _ => None,
    };
    let primary = running.is_some_and(|r| !r.in_recovery);

    // Rule 2 comes before everything, etcd reachable or not: a primary whose
    // lease may be about to expire must stop accepting writes now.
    if primary {
        let since = o
            .last_renewal_sent
            .map(|t| o.now.saturating_duration_since(t))
            .unwrap_or(Duration::MAX);
        if since >= o.config.leader_deadline() {
            let reason = if o.cluster.is_none() {
                Reason::EtcdUnreachableFencing { since }
            } else {
                Reason::LeaseExpiredFencing { since }
            };
            return decision(vec![Action::Stop], reason);
        }
    }

    let Some(cluster) = &o.cluster else {
        if let JobStatus::Running(kind, _) = o.job {
            return decision(vec![], Reason::JobRunning(kind));
        }
        return decision(vec![], Reason::EtcdUnreachable);
    };
    let leader = cluster.leader_name();
    let i_lead = leader == Some(o.me.as_str());

    if let JobStatus::Running(kind, elapsed) = o.job {
        // A leader's postgres that does not come back in time is given up,
        // so a replica can take over instead of the cluster waiting.
        let limit = o.config.primary_start_timeout();
        if kind == JobKind::Start && i_lead && elapsed >= limit {
            return decision(
                vec![Action::Stop, Action::ReleaseLeader],
                Reason::PrimaryStartTimeout { waited: elapsed },
            );
        }
        return decision(vec![], Reason::JobRunning(kind));
    }

    let (system_id, standby_dir) = match &o.data_dir {
        DataDir::Unusable(why) => return decision(vec![], Reason::DataDirUnusable(why.clone())),
        DataDir::Empty => return decide_empty(o, cluster),
        DataDir::Valid {
            system_id, standby, ..
        } => (system_id, *standby),
    };

    if let Some(init) = cluster.initialize.as_deref() {
        if !init.is_empty() && init != system_id {
            return decision(
                vec![],
                Reason::ForeignCluster {
                    ours: system_id.clone(),
                    cluster: init.to_string(),
                },
            );
        }
    }

    if i_lead {
        if let (Some(held), Some(mine)) = (cluster.leader.as_ref().map(|l| l.lease), o.lease) {
            if held != mine {
                return decision(vec![Action::AdoptLeader], Reason::AdoptingLeader);
            }
        }
    }

    if o.reinit_requested && !i_lead {
        return match leader {
            Some(l) => decision(
                vec![Action::Rebuild {
                    from: l.to_string(),
                }],
                Reason::Reinitializing {
                    from: l.to_string(),
                },
            ),
            None => decision(vec![], Reason::WaitingForLeaderToRebuild),
        };
    }

    if o.restart_requested && running.is_some() {
        return decision(vec![Action::Restart], Reason::Restarting);
    }

    let Some(run) = running else {
        if matches!(o.pg, PgStatus::Unresponsive) {
            return decision(vec![], Reason::PostgresUnresponsive);
        }
        let failed = |r: Reason| match &o.job {
            JobStatus::Failed(JobKind::Start, e, _) => Reason::StartFailed(e.clone()),
            _ => r,
        };
        return match leader {
            Some(_) if i_lead => decision(vec![Action::StartPrimary], failed(Reason::Starting)),
            Some(l) => decide_stopped_follower(o, cluster, l, failed),
            // An interrupted bootstrap of ours: `initialize` claimed but never
            // completed, and only the winner can have a primary data dir.
            None if cluster.initialize.as_deref() == Some("") && !standby_dir => {
                decision(vec![Action::AcquireLeader], Reason::AcquiringLeader)
            }
            None => decision(
                vec![Action::StartReadOnly],
                failed(Reason::StartingReadOnly),
            ),
        };
    };

    if i_lead {
        let missing: Vec<String> = cluster
            .members
            .keys()
            .filter(|m| **m != o.me && !run.slots.contains_key(&slot_name(m)))
            .cloned()
            .collect();
        if run.in_recovery {
            // Slots first, so the others can stream from us from the start.
            let mut actions = vec![];
            if !missing.is_empty() {
                actions.push(Action::CreateSlots(missing));
            }
            actions.push(Action::Promote);
            return decision(actions, Reason::Promoting);
        }
        let mut actions = vec![];
        if cluster.initialize.as_deref() == Some("") {
            actions.push(Action::PublishInitialize(run.system_id.clone()));
        }
        if cluster.config.is_none() && cluster.config_error.is_none() {
            actions.push(Action::InitConfig);
        }
        if !missing.is_empty() {
            actions.push(Action::CreateSlots(missing));
        }
        let expired: Vec<String> = o
            .absent_slots
            .iter()
            .filter(|(_, gone)| **gone >= o.config.member_slots_ttl())
            .map(|(slot, _)| slot.clone())
            .collect();
        if !expired.is_empty() {
            actions.push(Action::DropSlots(expired));
        }
        if let Some(tl) = run.timeline.filter(|t| *t > 1) {
            let points = history_points(cluster);
            let recorded = points.iter().map(|(t, _)| *t).max();
            let stale = lineage_agrees(tl, &run.history, &points) == Some(false);
            if stale || recorded.is_none_or(|r| r < tl - 1) {
                actions.push(Action::PublishHistory);
            }
        }
        actions.push(Action::PublishStatus);
        let mut reason = Reason::Leader;
        if let Some(f) = &cluster.failover {
            match f.member.as_deref().filter(|m| *m != o.me) {
                // A manual failover to us, fulfilled: clear the request.
                None if f.member.as_deref() == Some(o.me.as_str()) => {
                    actions.push(Action::CancelSwitchover);
                }
                None => {
                    actions.push(Action::CancelSwitchover);
                    reason = Reason::SwitchoverRefused("request names no other candidate".into());
                }
                Some(c) => match f.scheduled() {
                    Some(at) if at > o.now_utc => {
                        reason = Reason::SwitchoverScheduled {
                            to: c.to_string(),
                            at: at.to_rfc3339(),
                        }
                    }
                    _ => match candidate_problem(cluster, c, o.config.maximum_lag_on_failover) {
                        Some(why) => {
                            actions.push(Action::CancelSwitchover);
                            reason = Reason::SwitchoverRefused(why);
                        }
                        None => {
                            actions.push(Action::Switchover {
                                candidate: c.to_string(),
                            });
                            reason = Reason::SwitchingOver { to: c.to_string() };
                        }
                    },
                },
            }
        }
        return decision(actions, reason);
    }

    match leader {
        Some(l) => {
            if !run.in_recovery {
                // Rule 1: another member holds the key; stop writes now.
                return decision(
                    vec![Action::Stop],
                    Reason::DemotingForeignLeader {
                        leader: l.to_string(),
                    },
                );
            }
            if diverged(run, cluster, l, o.not_streaming_for, o.config.ttl()) {
                return decision(
                    vec![Action::Stop],
                    Reason::Diverged {
                        leader: l.to_string(),
                    },
                );
            }
            let Some((host, port)) = cluster.members.get(l).and_then(|m| m.pg_address()) else {
                return decision(
                    vec![],
                    Reason::LeaderNotReachable {
                        leader: l.to_string(),
                    },
                );
            };
            if !follows(run, &host, port, &slot_name(&o.me)) {
                return decision(
                    vec![Action::Follow {
                        leader: l.to_string(),
                    }],
                    Reason::Repointing {
                        leader: l.to_string(),
                    },
                );
            }
            decision(
                vec![],
                Reason::Following {
                    leader: l.to_string(),
                    streaming: run.receiver_streaming,
                },
            )
        }
        None if !run.in_recovery => decision(vec![Action::AcquireLeader], Reason::AcquiringLeader),
        None => elect(o, cluster, run),
    }
}

/// A stopped member with a leader to follow: start, or first rewind (or
/// rebuild) unless its WAL is provably on the leader's lineage (rule 5).
fn decide_stopped_follower(
    o: &Observation,
    cluster: &ClusterView,
    leader: &str,
    failed: impl Fn(Reason) -> Reason,
) -> Decision {
    let from = leader.to_string();
    if let JobStatus::Failed(JobKind::Rewind, e, true) = &o.job {
        // The leader could not be reached: try again, keep the data.
        return decision(
            vec![Action::Rewind { from: from.clone() }],
            Reason::RewindSourceDown {
                from,
                error: e.clone(),
            },
        );
    }
    if let JobStatus::Failed(JobKind::Rewind, e, false) = &o.job {
        let reason = Reason::RewindFailed {
            error: e.clone(),
            rebuilding: o.rebuild_allowed,
        };
        let actions = if o.rebuild_allowed {
            vec![Action::Rebuild { from }]
        } else {
            vec![]
        };
        return decision(actions, reason);
    }
    let DataDir::Valid {
        timeline: Some(mine),
        history,
        ..
    } = &o.data_dir
    else {
        return decision(
            vec![Action::StartReplica { leader: from }],
            failed(Reason::Starting),
        );
    };
    let Some(theirs) = cluster.members.get(leader).and_then(|m| m.timeline) else {
        return decision(vec![], Reason::LeaderNotReachable { leader: from });
    };
    // Where the stopped WAL ends is unknown, so anything but the leader's
    // own timeline with the same history goes through pg_rewind, which is
    // a no-op ("no rewind required") when nothing diverged.
    let same_lineage =
        *mine == theirs && lineage_agrees(*mine, history, &history_points(cluster)) == Some(true);
    let rewound = matches!(o.job, JobStatus::Done(JobKind::Rewind));
    if !same_lineage && !rewound && !clean_prefix(o, *mine, history, theirs, cluster) {
        return decision(
            vec![Action::Rewind { from: from.clone() }],
            Reason::Rewinding {
                from,
                timeline: *mine,
                leader_timeline: theirs,
            },
        );
    }
    decision(
        vec![Action::StartReplica { leader: from }],
        failed(Reason::Starting),
    )
}

/// A cleanly shut-down primary whose shutdown checkpoint lies before the
/// point where the leader's next timeline forked from ours has nothing the
/// leader lacks: the planned-switchover case, which needs no pg_rewind.
fn clean_prefix(
    o: &Observation,
    mine: u32,
    history: &[(u32, Lsn)],
    theirs: u32,
    cluster: &ClusterView,
) -> bool {
    let DataDir::Valid {
        clean_shutdown: true,
        checkpoint: Some(ckpt),
        ..
    } = &o.data_dir
    else {
        return false;
    };
    let points = history_points(cluster);
    mine < theirs
        && lineage_agrees(mine, history, &points) == Some(true)
        && points
            .iter()
            .find(|(t, _)| *t == mine)
            .is_some_and(|(_, switch)| ckpt.0 < *switch)
}

/// Whether the switch points of every timeline before `my_tl` (`mine`,
/// from this node's history file) match the leader's history. `None` when
/// the leader's history does not cover them yet (not published so far).
/// Two promotions can pick the same timeline number; only the switch
/// points tell those timelines apart.
pub fn lineage_agrees(my_tl: u32, mine: &[(u32, Lsn)], theirs: &[(u32, u64)]) -> Option<bool> {
    for t in 1..my_tl {
        let my_switch = mine.iter().find(|(tl, _)| *tl == t).map(|(_, l)| l.0);
        let their_switch = theirs.iter().find(|(tl, _)| *tl == t).map(|(_, l)| *l);
        match (my_switch, their_switch) {
            (Some(a), Some(b)) if a != b => return Some(false),
            (Some(_), Some(_)) => {}
            (_, None) => return None,
            (None, Some(_)) => return None,
        }
    }
    Some(true)
}

/// Whether a running replica can never stream from the leader: its WAL is
/// on a timeline the leader never had, has a different past, or (after it
/// has failed to stream for `grace`) went past the point where the
/// leader's timeline forked from its own. The last test waits because a
/// replica's timeline is only known for sure while it streams: right after
/// it is re-pointed, its receive position may already be on the leader's
/// new timeline while the timeline it reports is still the old one.
fn diverged(
    run: &Running,
    cluster: &ClusterView,
    leader: &str,
    not_streaming_for: Option<Duration>,
    grace: Duration,
) -> bool {
    let (Some(mine), Some(theirs)) = (
        run.timeline,
        cluster.members.get(leader).and_then(|m| m.timeline),
    ) else {
        return false;
    };
    let points = history_points(cluster);
    if mine > theirs {
        return true;
    }
    if lineage_agrees(mine, &run.history, &points) == Some(false) {
        return true;
    }
    if mine == theirs || not_streaming_for.is_none_or(|d| d < grace) {
        return false;
    }
    let position = run
        .receive_lsn
        .max(run.replay_lsn)
        .map(|l| l.0)
        .unwrap_or(0);
    points
        .iter()
        .find(|(tl, _)| *tl == mine)
        .is_some_and(|(_, switch)| position > *switch)
}

/// Leader election among running replicas (rule 4).
fn elect(o: &Observation, cluster: &ClusterView, run: &Running) -> Decision {
    // A manual failover names the one member that may take the key.
    if let Some(to) = cluster.failover.as_ref().and_then(|f| f.member.as_deref()) {
        if cluster.members.contains_key(to) {
            return if to == o.me {
                decision(
                    vec![Action::AcquireLeader],
                    Reason::ManualFailover { to: String::new() },
                )
            } else {
                decision(vec![], Reason::ManualFailover { to: to.to_string() })
            };
        }
    }
    if o.tags.nofailover {
        return decision(vec![], Reason::NotEligible("tagged nofailover".into()));
    }
    let position = run
        .receive_lsn
        .max(run.replay_lsn)
        .map(|l| l.0)
        .unwrap_or(0);
    let max_lag = o.config.maximum_lag_on_failover;
    if let Some(optime) = cluster.status.as_ref().and_then(|s| s.optime) {
        let lag = optime.saturating_sub(position);
        if lag > max_lag {
            return decision(
                vec![],
                Reason::NotEligible(format!(
                    "lag {} > maximum_lag_on_failover {}",
                    human_bytes(lag),
                    human_bytes(max_lag)
                )),
            );
        }
    }
    let me = (run.timeline.unwrap_or(0), position, priority(&o.tags));
    for p in &o.peers {
        if !p.running || p.nofailover || p.name == o.me {
            continue;
        }
        let them = (p.timeline, p.position, p.priority);
        if them.cmp(&me) == Ordering::Greater {
            let why = if p.primary {
                "it still runs as primary".to_string()
            } else if (p.timeline, p.position) > (me.0, me.1) {
                format!("it has more WAL ({} > {})", p.position, position)
            } else {
                format!(
                    "same WAL, higher failover_priority ({} > {})",
                    p.priority, me.2
                )
            };
            return decision(
                vec![],
                Reason::Yielding {
                    to: p.name.clone(),
                    why,
                },
            );
        }
    }
    decision(vec![Action::AcquireLeader], Reason::Candidate)
}

/// Patroni's `failover_priority` tag: higher wins ties; default 1.
pub fn priority(tags: &Tags) -> i64 {
    tags.failover_priority.unwrap_or(1)
}

fn human_bytes(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / (1u64 << 20) as f64)
    } else if b >= 1 << 10 {
        format!("{:.1} KiB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}

/// Whether the running replica's settings already point at `host:port`.
fn follows(run: &Running, host: &str, port: u16, slot: &str) -> bool {
    let ci = &run.primary_conninfo;
    let has = |k: &str, v: &str| {
        ci.split_whitespace()
            .any(|kv| kv == format!("{k}={v}") || kv == format!("{k}='{v}'"))
    };
    has("host", host) && has("port", &port.to_string()) && run.primary_slot_name == slot
}

fn decide_empty(o: &Observation, cluster: &ClusterView) -> Decision {
    if let JobStatus::Failed(JobKind::Bootstrap, e, _) = &o.job {
        if cluster.initialize.is_some() {
            return decision(vec![], Reason::BootstrapFailed(e.clone()));
        }
    }
    match (cluster.initialize.as_deref(), cluster.leader_name()) {
        (None, _) => decision(vec![Action::Bootstrap], Reason::Bootstrapping),
        (Some(_), Some(l)) if l != o.me => {
            let slot = slot_name(&o.me);
            let slot_ready = cluster
                .status
                .as_ref()
                .and_then(|s| s.slots.as_ref())
                .is_some_and(|s| s.contains_key(&slot));
            if !slot_ready {
                return decision(
                    vec![],
                    Reason::WaitingForSlot {
                        leader: l.to_string(),
                    },
                );
            }
            let reason = match &o.job {
                JobStatus::Failed(JobKind::Clone | JobKind::Rebuild, e, _) => {
                    Reason::CloneFailed(e.clone())
                }
                _ => Reason::Cloning {
                    from: l.to_string(),
                },
            };
            decision(
                vec![Action::Clone {
                    from: l.to_string(),
                }],
                reason,
            )
        }
        (Some(""), None) => decision(vec![], Reason::WaitingForBootstrap),
        _ => decision(vec![], Reason::WaitingForLeaderToClone),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::cluster::{LeaderKey, Member, StatusKey};
    use crate::lsn::Lsn;

    const SYS: &str = "7301000000000000001";

    fn member(port: u16) -> Member {
        Member {
            conn_url: format!("postgres://127.0.0.1:{port}/postgres"),
            api_url: format!("http://127.0.0.1:{}/patroni", port + 1000),
            state: "running".into(),
            role: "replica".into(),
            timeline: Some(1),
            ..Member::default()
        }
    }

    fn cluster(leader: Option<(&str, i64)>) -> ClusterView {
        let mut members = BTreeMap::new();
        members.insert("n1".to_string(), member(5431));
        members.insert("n2".to_string(), member(5432));
        members.insert("n3".to_string(), member(5433));
        ClusterView {
            initialize: Some(SYS.into()),
            config: Some(DynamicConfig::default()),
            leader: leader.map(|(n, l)| LeaderKey {
                name: n.into(),
                lease: LeaseId(l),
            }),
            members,
            ..ClusterView::default()
        }
    }

    fn running(in_recovery: bool) -> PgStatus {
        PgStatus::Running(Box::new(Running {
            in_recovery,
            system_id: SYS.into(),
            timeline: Some(1),
            wal_lsn: (!in_recovery).then_some(Lsn(100)),
            receive_lsn: None,
            replay_lsn: None,
            receiver_streaming: in_recovery,
            primary_conninfo: String::new(),
            primary_slot_name: String::new(),
            server_version: 150018,
            slots: BTreeMap::new(),
            replication: vec![],
            history: vec![],
        }))
    }

    fn obs(me: &str, cluster: Option<ClusterView>, data_dir: DataDir, pg: PgStatus) -> Observation {
        let now = Instant::now();
        Observation {
            me: me.into(),
            now,
            cluster,
            lease: Some(LeaseId(7)),
            last_renewal_sent: Some(now),
            data_dir,
            pg,
            job: JobStatus::Idle,
            config: DynamicConfig::default(),
            tags: Tags::default(),
            peers: vec![],
            reinit_requested: false,
            rebuild_allowed: true,
            restart_requested: false,
            not_streaming_for: None,
            absent_slots: Default::default(),
            now_utc: chrono::DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z")
                .unwrap()
                .with_timezone(&chrono::Utc),
        }
    }

    fn valid() -> DataDir {
        DataDir::Valid {
            system_id: SYS.into(),
            standby: false,
            timeline: Some(1),
            history: vec![],
            clean_shutdown: false,
            checkpoint: None,
        }
    }

    fn dir_on(timeline: u32) -> DataDir {
        DataDir::Valid {
            system_id: SYS.into(),
            standby: true,
            timeline: Some(timeline),
            history: (1..timeline)
                .map(|t| (t, Lsn(u64::from(t) * 1000)))
                .collect(),
            clean_shutdown: false,
            checkpoint: None,
        }
    }

    fn replica_at(timeline: u32, receive: u64) -> PgStatus {
        let mut pg = running(true);
        if let PgStatus::Running(r) = &mut pg {
            r.timeline = Some(timeline);
            r.receive_lsn = Some(Lsn(receive));
            r.replay_lsn = Some(Lsn(receive));
            r.primary_conninfo =
                "host=127.0.0.1 port=5431 user=replicator application_name=n2".into();
            r.primary_slot_name = "n2".into();
        }
        pg
    }

    fn peer(name: &str, timeline: u32, position: u64) -> Peer {
        Peer {
            name: name.into(),
            running: true,
            primary: false,
            timeline,
            position,
            nofailover: false,
            priority: 1,
        }
    }

    #[test]
    fn uninitialized_cluster_with_empty_dir_bootstraps() {
        let mut c = cluster(None);
        c.initialize = None;
        let d = decide(&obs("n1", Some(c), DataDir::Empty, PgStatus::Stopped));
        assert_eq!(d.actions, vec![Action::Bootstrap]);
        assert_eq!(d.reason, Reason::Bootstrapping);
    }

    #[test]
    fn bootstrap_in_progress_elsewhere_waits() {
        let mut c = cluster(None);
        c.initialize = Some(String::new());
        let d = decide(&obs("n2", Some(c), DataDir::Empty, PgStatus::Stopped));
        assert_eq!(d.actions, vec![]);
        assert_eq!(d.reason, Reason::WaitingForBootstrap);
    }

    #[test]
    fn empty_dir_clones_from_leader_once_slot_exists() {
        let mut c = cluster(Some(("n1", 1)));
        let d = decide(&obs(
            "n2",
            Some(c.clone()),
            DataDir::Empty,
            PgStatus::Stopped,
        ));
        assert_eq!(d.actions, vec![]);
        assert_eq!(
            d.reason,
            Reason::WaitingForSlot {
                leader: "n1".into()
            }
        );

        c.status = Some(StatusKey {
            optime: Some(1),
            slots: Some([("n2".to_string(), 1)].into()),
            retain_slots: None,
        });
        let d = decide(&obs("n2", Some(c), DataDir::Empty, PgStatus::Stopped));
        assert_eq!(d.actions, vec![Action::Clone { from: "n1".into() }]);
    }

    #[test]
    fn foreign_data_dir_is_never_touched() {
        let dir = DataDir::Valid {
            system_id: "999".into(),
            standby: false,
            timeline: Some(1),
            history: vec![],
            clean_shutdown: false,
            checkpoint: None,
        };
        for pg in [PgStatus::Stopped, running(false), running(true)] {
            let d = decide(&obs("n2", Some(cluster(Some(("n1", 1)))), dir.clone(), pg));
            assert_eq!(d.actions, vec![]);
            assert!(
                matches!(d.reason, Reason::ForeignCluster { .. }),
                "{:?}",
                d.reason
            );
        }
        let d = decide(&obs(
            "n2",
            Some(cluster(None)),
            DataDir::Unusable("x".into()),
            PgStatus::Stopped,
        ));
        assert_eq!(d.actions, vec![]);
    }

    #[test]
    fn leader_keeps_slots_and_status() {
        let d = decide(&obs(
            "n1",
            Some(cluster(Some(("n1", 7)))),
            valid(),
            running(false),
        ));
        assert_eq!(
            d.actions,
            vec![
                Action::CreateSlots(vec!["n2".into(), "n3".into()]),
                Action::PublishStatus
            ]
        );
        assert_eq!(d.reason, Reason::Leader);
    }

    #[test]
    fn leader_completes_its_bootstrap() {
        let mut c = cluster(Some(("n1", 7)));
        c.initialize = Some(String::new());
        c.config = None;
        c.members.clear();
        let d = decide(&obs("n1", Some(c), valid(), running(false)));
        assert_eq!(
            d.actions,
            vec![
                Action::PublishInitialize(SYS.into()),
                Action::InitConfig,
                Action::PublishStatus
            ]
        );
    }

    #[test]
    fn slots_of_members_gone_longer_than_member_slots_ttl_are_dropped() {
        let mut pg = running(false);
        if let PgStatus::Running(r) = &mut pg {
            r.slots = [("n2".to_string(), None), ("n3".to_string(), None)].into();
        }
        let mut o = obs("n1", Some(cluster(Some(("n1", 7)))), valid(), pg);
        o.absent_slots = [("old".to_string(), Duration::from_secs(1799))].into();
        assert_eq!(d_actions(&o), vec![Action::PublishStatus]);
        o.absent_slots = [("old".to_string(), Duration::from_secs(1800))].into();
        assert_eq!(
            d_actions(&o),
            vec![Action::DropSlots(vec!["old".into()]), Action::PublishStatus]
        );
    }

    #[test]
    fn restarted_agent_adopts_its_leader_key() {
        let d = decide(&obs(
            "n1",
            Some(cluster(Some(("n1", 3)))),
            valid(),
            running(false),
        ));
        assert_eq!(d.actions, vec![Action::AdoptLeader]);
    }

    #[test]
    fn stopped_postgres_is_started_in_its_role() {
        let c = cluster(Some(("n1", 7)));
        let d = decide(&obs("n1", Some(c.clone()), valid(), PgStatus::Stopped));
        assert_eq!(d.actions, vec![Action::StartPrimary]);
        let d = decide(&obs("n2", Some(c), valid(), PgStatus::Stopped));
        assert_eq!(
            d.actions,
            vec![Action::StartReplica {
                leader: "n1".into()
            }]
        );
    }

    #[test]
    fn nothing_starts_writable_without_the_leader_key() {
        // No leader: start read-only to take part in the election.
        for dir in [dir_on(1), valid()] {
            let d = decide(&obs("n2", Some(cluster(None)), dir, PgStatus::Stopped));
            assert_eq!(d.actions, vec![Action::StartReadOnly]);
            assert_eq!(d.reason, Reason::StartingReadOnly);
        }
        // An interrupted bootstrap takes the key before starting.
        let mut c = cluster(None);
        c.initialize = Some(String::new());
        let d = decide(&obs("n1", Some(c), valid(), PgStatus::Stopped));
        assert_eq!(d.actions, vec![Action::AcquireLeader]);
    }

    #[test]
    fn replica_repoints_then_follows() {
        let c = cluster(Some(("n1", 1)));
        let d = decide(&obs("n2", Some(c.clone()), valid(), running(true)));
        assert_eq!(
            d.actions,
            vec![Action::Follow {
                leader: "n1".into()
            }]
        );
        let mut pg = running(true);
        if let PgStatus::Running(r) = &mut pg {
            r.primary_conninfo =
                "host=127.0.0.1 port=5431 user=replicator application_name=n2".into();
            r.primary_slot_name = "n2".into();
        }
        let d = decide(&obs("n2", Some(c), valid(), pg));
        assert_eq!(d.actions, vec![]);
        assert_eq!(
            d.reason,
            Reason::Following {
                leader: "n1".into(),
                streaming: true
            }
        );
    }

    #[test]
    fn primary_that_is_not_leader_demotes_at_once() {
        let d = decide(&obs(
            "n2",
            Some(cluster(Some(("n1", 1)))),
            valid(),
            running(false),
        ));
        assert_eq!(d.actions, vec![Action::Stop]);
    }

    #[test]
    fn leader_holding_key_promotes_replica() {
        let d = decide(&obs(
            "n1",
            Some(cluster(Some(("n1", 7)))),
            valid(),
            running(true),
        ));
        assert_eq!(
            d.actions,
            vec![
                Action::CreateSlots(vec!["n2".into(), "n3".into()]),
                Action::Promote
            ]
        );
    }

    #[test]
    fn leader_fences_when_renewal_is_overdue() {
        let mut o = obs("n1", None, valid(), running(false));
        o.last_renewal_sent = Some(o.now - Duration::from_secs(3));
        let d = decide(&o);
        assert_eq!(d.actions, vec![Action::Stop]);
        assert!(matches!(d.reason, Reason::EtcdUnreachableFencing { .. }));

        // Just inside the deadline (ttl 4 - margin 1 = 3 s): keep running.
        o.last_renewal_sent = Some(o.now - Duration::from_millis(2900));
        let d = decide(&o);
        assert_eq!(d.actions, vec![]);
        assert_eq!(d.reason, Reason::EtcdUnreachable);

        // Overdue and the key is gone: fence too, even mid-job.
        let mut o = obs("n1", Some(cluster(None)), valid(), running(false));
        o.last_renewal_sent = Some(o.now - Duration::from_secs(5));
        o.job = JobStatus::Running(JobKind::Start, Duration::ZERO);
        assert_eq!(decide(&o).actions, vec![Action::Stop]);
    }

    #[test]
    fn job_in_progress_holds_other_actions() {
        let mut o = obs(
            "n2",
            Some(cluster(Some(("n1", 1)))),
            DataDir::Empty,
            PgStatus::Stopped,
        );
        o.job = JobStatus::Running(JobKind::Clone, Duration::from_secs(1));
        let d = decide(&o);
        assert_eq!(d.actions, vec![]);
        assert_eq!(d.reason, Reason::JobRunning(JobKind::Clone));
    }

    fn with_optime(mut c: ClusterView, optime: u64) -> ClusterView {
        c.status = Some(StatusKey {
            optime: Some(optime),
            slots: None,
            retain_slots: None,
        });
        c
    }

    #[test]
    fn healthiest_replica_takes_the_key_then_promotes() {
        let c = with_optime(cluster(None), 1000);
        let mut o = obs("n2", Some(c), dir_on(1), replica_at(1, 1000));
        o.peers = vec![peer("n3", 1, 900)];
        let d = decide(&o);
        assert_eq!(d.actions, vec![Action::AcquireLeader]);
        assert_eq!(d.reason, Reason::Candidate);

        // Once the key is ours: the others' slots first, then promote.
        let o = obs(
            "n2",
            Some(cluster(Some(("n2", 7)))),
            dir_on(1),
            replica_at(1, 1000),
        );
        assert_eq!(
            decide(&o).actions,
            vec![
                Action::CreateSlots(vec!["n1".into(), "n3".into()]),
                Action::Promote
            ]
        );
    }

    #[test]
    fn replica_yields_to_more_wal_then_to_priority() {
        let c = with_optime(cluster(None), 1000);
        let mut o = obs("n2", Some(c), dir_on(1), replica_at(1, 900));
        o.peers = vec![peer("n3", 1, 1000)];
        let d = decide(&o);
        assert_eq!(d.actions, vec![]);
        assert!(
            matches!(&d.reason, Reason::Yielding { to, .. } if to == "n3"),
            "{:?}",
            d.reason
        );

        // Same WAL: the higher failover_priority wins; equal: both race.
        o.pg = replica_at(1, 1000);
        o.peers = vec![Peer {
            priority: 2,
            ..peer("n3", 1, 1000)
        }];
        assert!(matches!(decide(&o).reason, Reason::Yielding { .. }));
        o.peers = vec![peer("n3", 1, 1000)];
        assert_eq!(decide(&o).actions, vec![Action::AcquireLeader]);

        // Peers tagged nofailover or not running do not count.
        o.peers = vec![
            Peer {
                nofailover: true,
                ..peer("n3", 1, 5000)
            },
            Peer {
                running: false,
                ..peer("n1", 1, 5000)
            },
        ];
        assert_eq!(decide(&o).actions, vec![Action::AcquireLeader]);
    }

    #[test]
    fn nofailover_and_lag_keep_a_replica_out() {
        let c = with_optime(cluster(None), 10 << 20);
        let mut o = obs("n2", Some(c.clone()), dir_on(1), replica_at(1, 5 << 20));
        let d = decide(&o);
        assert_eq!(d.actions, vec![]);
        assert_eq!(
            d.reason.to_string(),
            "no leader; not a failover candidate: lag 5.0 MiB > maximum_lag_on_failover 1.0 MiB"
        );
        o.pg = replica_at(1, 10 << 20);
        o.tags.nofailover = true;
        let d = decide(&o);
        assert_eq!(d.actions, vec![]);
        assert_eq!(d.reason, Reason::NotEligible("tagged nofailover".into()));
    }

    #[test]
    fn old_primary_on_older_timeline_rewinds_before_following() {
        let mut c = cluster(Some(("n2", 1)));
        c.members.get_mut("n2").unwrap().timeline = Some(2);
        let mut o = obs("n1", Some(c), dir_on(1), PgStatus::Stopped);
        let d = decide(&o);
        assert_eq!(d.actions, vec![Action::Rewind { from: "n2".into() }]);

        // pg_rewind done ("no rewind required" leaves the timeline): start.
        o.job = JobStatus::Done(JobKind::Rewind);
        assert_eq!(
            d_actions(&o),
            vec![Action::StartReplica {
                leader: "n2".into()
            }]
        );

        // pg_rewind failed: rebuild when allowed, else need repair.
        o.job = JobStatus::Failed(JobKind::Rewind, "WAL missing".into(), false);
        assert_eq!(d_actions(&o), vec![Action::Rebuild { from: "n2".into() }]);
        // The leader unreachable is no reason to rebuild: retry the rewind.
        o.job = JobStatus::Failed(JobKind::Rewind, "connection refused".into(), true);
        assert_eq!(d_actions(&o), vec![Action::Rewind { from: "n2".into() }]);
        o.job = JobStatus::Failed(JobKind::Rewind, "WAL missing".into(), false);
        o.rebuild_allowed = false;
        let d = decide(&o);
        assert_eq!(d.actions, vec![]);
        assert!(d.reason.needs_repair());

        // Same timeline as the leader, same history: just start.
        o.data_dir = dir_on(2);
        o.job = JobStatus::Idle;
        let c = o.cluster.as_mut().unwrap();
        c.history = Some(serde_json::json!([[1, 1000, "x", null, "n2"]]));
        assert_eq!(
            d_actions(&o),
            vec![Action::StartReplica {
                leader: "n2".into()
            }]
        );

        // Same timeline number, another switch point: another lineage.
        o.cluster.as_mut().unwrap().history = Some(serde_json::json!([[1, 1500, "x", null, "n2"]]));
        assert_eq!(d_actions(&o), vec![Action::Rewind { from: "n2".into() }]);
    }

    fn d_actions(o: &Observation) -> Vec<Action> {
        decide(o).actions
    }

    #[test]
    fn replica_past_the_fork_point_stops_to_rewind() {
        let mut c = cluster(Some(("n1", 1)));
        c.members.get_mut("n1").unwrap().timeline = Some(2);
        c.history = Some(serde_json::json!([[
            1,
            1000,
            "no recovery target specified",
            null,
            "n1"
        ]]));
        let mut o = obs("n2", Some(c.clone()), dir_on(1), replica_at(1, 1200));
        // Not yet: right after re-pointing, the reported timeline may lag.
        o.not_streaming_for = Some(Duration::from_secs(1));
        assert_eq!(decide(&o).actions, vec![]);
        o.not_streaming_for = Some(Duration::from_secs(4));
        let d = decide(&o);
        assert_eq!(d.actions, vec![Action::Stop]);
        assert_eq!(
            d.reason,
            Reason::Diverged {
                leader: "n1".into()
            }
        );
        // Behind the fork point: it can simply follow the new timeline.
        let o = obs("n2", Some(c), dir_on(1), replica_at(1, 900));
        assert_eq!(decide(&o).actions, vec![]);
    }

    #[test]
    fn replica_with_another_past_on_the_same_timeline_number_stops() {
        let mut c = cluster(Some(("n1", 1)));
        c.members.get_mut("n1").unwrap().timeline = Some(2);
        c.history = Some(serde_json::json!([[1, 1000, "x", null, "n1"]]));
        let mut pg = replica_at(2, 1200);
        if let PgStatus::Running(r) = &mut pg {
            r.history = vec![(1, Lsn(900))];
        }
        let d = decide(&obs("n2", Some(c.clone()), dir_on(2), pg.clone()));
        assert_eq!(d.actions, vec![Action::Stop]);
        if let PgStatus::Running(r) = &mut pg {
            r.history = vec![(1, Lsn(1000))];
        }
        assert_eq!(decide(&obs("n2", Some(c), dir_on(2), pg)).actions, vec![]);
    }

    #[test]
    fn lineage_comparison() {
        let theirs = [(1, 100), (2, 200)];
        assert_eq!(
            lineage_agrees(3, &[(1, Lsn(100)), (2, Lsn(200))], &theirs),
            Some(true)
        );
        assert_eq!(
            lineage_agrees(3, &[(1, Lsn(100)), (2, Lsn(250))], &theirs),
            Some(false)
        );
        assert_eq!(lineage_agrees(1, &[], &[]), Some(true));
        assert_eq!(lineage_agrees(2, &[(1, Lsn(100))], &[]), None);
    }

    #[test]
    fn new_leader_publishes_history_once() {
        let mut pg = running(false);
        if let PgStatus::Running(r) = &mut pg {
            r.timeline = Some(2);
            r.slots = [("n1".to_string(), None), ("n3".to_string(), None)].into();
        }
        if let PgStatus::Running(r) = &mut pg {
            r.history = vec![(1, Lsn(1000))];
        }
        let mut c = cluster(Some(("n2", 7)));
        let o = obs("n2", Some(c.clone()), dir_on(2), pg.clone());
        assert_eq!(
            decide(&o).actions,
            vec![Action::PublishHistory, Action::PublishStatus]
        );
        // Another leader's timeline 2 (switch at 800) is replaced by ours.
        c.history = Some(serde_json::json!([[1, 800, "x", null, "n3"]]));
        let o = obs("n2", Some(c.clone()), dir_on(2), pg.clone());
        assert_eq!(
            decide(&o).actions,
            vec![Action::PublishHistory, Action::PublishStatus]
        );
        c.history = Some(serde_json::json!([[1, 1000, "x", null, "n2"]]));
        let o = obs("n2", Some(c), dir_on(2), pg);
        assert_eq!(decide(&o).actions, vec![Action::PublishStatus]);
    }

    #[test]
    fn crashed_leader_restarts_in_place_within_primary_start_timeout() {
        let c = cluster(Some(("n1", 7)));
        let mut o = obs("n1", Some(c), valid(), PgStatus::Stopped);
        assert_eq!(d_actions(&o), vec![Action::StartPrimary]);
        o.job = JobStatus::Running(JobKind::Start, Duration::from_secs(1));
        assert_eq!(d_actions(&o), vec![]);
        o.job = JobStatus::Running(JobKind::Start, Duration::from_secs(3));
        assert_eq!(d_actions(&o), vec![Action::Stop, Action::ReleaseLeader]);
    }

    #[test]
    fn reinit_rebuilds_a_replica_but_never_the_leader() {
        let mut o = obs(
            "n2",
            Some(cluster(Some(("n1", 1)))),
            dir_on(1),
            replica_at(1, 10),
        );
        o.reinit_requested = true;
        assert_eq!(d_actions(&o), vec![Action::Rebuild { from: "n1".into() }]);
        let mut o = obs(
            "n1",
            Some(cluster(Some(("n1", 7)))),
            valid(),
            running(false),
        );
        o.reinit_requested = true;
        assert!(!d_actions(&o)
            .iter()
            .any(|a| matches!(a, Action::Rebuild { .. })));
    }

    fn failover_to(c: &str, at: Option<&str>) -> Option<crate::cluster::FailoverKey> {
        Some(crate::cluster::FailoverKey {
            leader: Some("n1".into()),
            member: Some(c.into()),
            scheduled_at: at.map(str::to_string),
        })
    }

    fn healthy_replicas(mut c: ClusterView) -> ClusterView {
        for (n, m) in c.members.iter_mut() {
            m.replication_state = Some("streaming".into());
            m.xlog_location = Some(100);
            if n == "n1" {
                m.role = "primary".into();
            }
        }
        c
    }

    #[test]
    fn leader_starts_a_switchover_to_a_healthy_candidate() {
        let mut c = healthy_replicas(cluster(Some(("n1", 7))));
        c.failover = failover_to("n2", None);
        let d = decide(&obs("n1", Some(c.clone()), valid(), running(false)));
        assert!(
            d.actions.contains(&Action::Switchover {
                candidate: "n2".into()
            }),
            "{:?}",
            d.actions
        );
        assert_eq!(d.reason, Reason::SwitchingOver { to: "n2".into() });

        // Scheduled in the future: wait; in the past: go.
        c.failover = failover_to("n2", Some("2026-11-23T13:00:01+01:00"));
        let d = decide(&obs("n1", Some(c.clone()), valid(), running(false)));
        assert!(
            matches!(d.reason, Reason::SwitchoverScheduled { .. }),
            "{:?}",
            d.reason
        );
        assert!(!d
            .actions
            .iter()
            .any(|a| matches!(a, Action::Switchover { .. })));
        c.failover = failover_to("n2", Some("2026-11-23T12:59:59+01:00"));
        let d = decide(&obs("n1", Some(c.clone()), valid(), running(false)));
        assert!(d.actions.contains(&Action::Switchover {
            candidate: "n2".into()
        }));

        // An unhealthy candidate: the request is dropped with the reason.
        c.members.get_mut("n2").unwrap().replication_state = None;
        c.failover = failover_to("n2", None);
        let d = decide(&obs("n1", Some(c), valid(), running(false)));
        assert!(d.actions.contains(&Action::CancelSwitchover));
        assert_eq!(
            d.reason,
            Reason::SwitchoverRefused("n2 is not streaming".into())
        );
    }

    #[test]
    fn cleanly_stopped_old_leader_follows_without_rewind() {
        let mut c = cluster(Some(("n2", 1)));
        c.members.get_mut("n2").unwrap().timeline = Some(2);
        c.history = Some(serde_json::json!([[1, 5000, "x", null, "n2"]]));
        let dir = |ckpt: u64, clean: bool| DataDir::Valid {
            system_id: SYS.into(),
            standby: false,
            timeline: Some(1),
            history: vec![],
            clean_shutdown: clean,
            checkpoint: Some(Lsn(ckpt)),
        };
        let o = obs("n1", Some(c.clone()), dir(4900, true), PgStatus::Stopped);
        assert_eq!(
            d_actions(&o),
            vec![Action::StartReplica {
                leader: "n2".into()
            }]
        );
        // Checkpoint at or past the switch, or not a clean shutdown: rewind.
        let o = obs("n1", Some(c.clone()), dir(5000, true), PgStatus::Stopped);
        assert_eq!(d_actions(&o), vec![Action::Rewind { from: "n2".into() }]);
        let o = obs("n1", Some(c), dir(4900, false), PgStatus::Stopped);
        assert_eq!(d_actions(&o), vec![Action::Rewind { from: "n2".into() }]);
    }

    #[test]
    fn pause_holds_automatic_actions_but_never_fencing() {
        let mut c = cluster(Some(("n1", 7)));
        c.config.as_mut().unwrap().pause = true;
        let d = decide(&obs("n1", Some(c.clone()), valid(), PgStatus::Stopped));
        assert_eq!(d.actions, vec![]);
        assert!(matches!(d.reason, Reason::Paused { .. }));
        let mut o = obs("n1", Some(c.clone()), valid(), running(false));
        o.last_renewal_sent = Some(o.now - Duration::from_secs(4));
        assert_eq!(decide(&o).actions, vec![Action::Stop]);
        // A manual failover still goes through.
        let mut c = with_optime(cluster(None), 100);
        c.config.as_mut().unwrap().pause = true;
        c.failover = Some(crate::cluster::FailoverKey {
            leader: None,
            member: Some("n2".into()),
            scheduled_at: None,
        });
        let o = obs("n2", Some(c), dir_on(1), replica_at(1, 100));
        assert_eq!(d_actions(&o), vec![Action::AcquireLeader]);
    }

    #[test]
    fn manual_failover_names_the_only_candidate() {
        let mut c = with_optime(cluster(None), 10 << 20);
        c.failover = Some(crate::cluster::FailoverKey {
            leader: None,
            member: Some("n3".into()),
            scheduled_at: None,
        });
        // n2 is ahead but not named: it stays out.
        let mut o = obs("n2", Some(c.clone()), dir_on(1), replica_at(1, 10 << 20));
        o.peers = vec![peer("n3", 1, 10)];
        assert_eq!(d_actions(&o), vec![]);
        // n3 lags far beyond the limit but was named by an operator.
        let o = obs("n3", Some(c), dir_on(1), replica_at(1, 10));
        assert_eq!(d_actions(&o), vec![Action::AcquireLeader]);
    }
}
