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

pub mod publish;
mod reason;

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

impl Peer {
    /// What `/patroni` of another member says about its fitness to lead.
    pub fn from_status(name: String, v: &serde_json::Value) -> Peer {
        let primary = v["role"] == "primary";
        let x = &v["xlog"];
        let position = if primary {
            x["location"].as_u64()
        } else {
            x["received_location"]
                .as_u64()
                .max(x["replayed_location"].as_u64())
        };
        Peer {
            name,
            running: v["state"] == "running",
            primary,
            timeline: v["timeline"].as_u64().unwrap_or(0) as u32,
            position: position.unwrap_or(0),
            nofailover: v["tags"]["nofailover"].as_bool().unwrap_or(false),
            priority: v["tags"]["failover_priority"].as_i64().unwrap_or(1),
        }
    }
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

pub use reason::{CandidateProblem, Ineligible, Reason, YieldCause};

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
pub fn candidate_problem(
    cluster: &ClusterView,
    candidate: &str,
    max_lag: u64,
) -> Option<CandidateProblem> {
    let Some(m) = cluster.members.get(candidate) else {
        return Some(CandidateProblem::NoSuchMember(candidate.to_string()));
    };
    if cluster.leader_name() == Some(candidate) {
        return Some(CandidateProblem::AlreadyLeader(candidate.to_string()));
    }
    if m.tags.nofailover {
        return Some(CandidateProblem::TaggedNofailover(candidate.to_string()));
    }
    if m.state != "running" || m.role != "replica" {
        return Some(CandidateProblem::NotRunningReplica {
            name: candidate.to_string(),
            state: m.state.clone(),
            role: m.role.clone(),
        });
    }
    if m.replication_state.as_deref() != Some("streaming") {
        return Some(CandidateProblem::NotStreaming(candidate.to_string()));
    }
    let leader = cluster.leader_member();
    let (ltl, optime) = (leader.and_then(|l| l.timeline), cluster.leader_optime());
    if m.timeline != ltl {
        return Some(CandidateProblem::OtherTimeline {
            name: candidate.to_string(),
            timeline: m.timeline.unwrap_or(0),
            leader_timeline: ltl.unwrap_or(0),
        });
    }
    if let (Some(o), Some(p)) = (optime, m.xlog_location) {
        let lag = o.saturating_sub(p);
        if lag > max_lag {
            return Some(CandidateProblem::LagExceedsLimit {
                name: candidate.to_string(),
                lag,
                limit: max_lag,
            });
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
                    reason = Reason::SwitchoverRefused(CandidateProblem::NoOtherCandidate);
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
        return decision(vec![], Reason::NotEligible(Ineligible::TaggedNofailover));
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
                Reason::NotEligible(Ineligible::LagExceedsLimit {
                    lag,
                    limit: max_lag,
                }),
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
                YieldCause::PeerStillPrimary
            } else if (p.timeline, p.position) > (me.0, me.1) {
                YieldCause::PeerHasMoreWal {
                    theirs: p.position,
                    mine: position,
                }
            } else {
                YieldCause::PeerHigherPriority {
                    theirs: p.priority,
                    mine: me.2,
                }
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
mod tests;
