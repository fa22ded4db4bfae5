//! The HA protocol: a pure function from what one agent observed to what it
//! should do, with a typed reason. No I/O happens here; the agent
//! (`baton::agent`) gathers the [`Observation`] and carries out the [`Action`]s,
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
//! 8. no primary starts, promotes or stays without a live fence process
//!    (`fence::gate`), which stops it when the agent cannot;
//! 9. replicas keep following the old leader until a new one exists.
//!
//! One concern per file: `observation.rs` (what a tick knows), `action.rs`
//! (what it may do), `pause.rs` (maintenance mode over the result),
//! `bootstrap.rs` (empty data directory), `dead_leader.rs` (the
//! process-death fast path), `leader.rs`, `follower.rs`
//! (replicas and lineage), `election.rs`, `switchover.rs`, `reason.rs`
//! (typed reasons and their codes), `publish.rs` (the member key's role and
//! state), `steady.rs` (when the watch's copy of etcd will do); the order
//! in which the rules take precedence is `decide_unpaused` below.
//! Exact-action tests: `tests/`, by concern.
//!
//! Member life cycle, as seen from one agent:
//!
//! ```text
//!  empty ──bootstrap/clone──► stopped ──start──► replica ──(key won)──► promote ──► leader
//!                               ▲   │                 │                               │
//!                               │   └─rewind/rebuild◄─┴──diverged / demoted◄──────────┘
//!                               └──────────────── crash / fencing ─────────────────────┘
//! ```

mod action;
mod bootstrap;
mod dead_leader;
mod election;
pub mod fence;
mod follower;
mod leader;
mod observation;
mod pause;
pub mod publish;
mod reason;
pub mod steady;
mod switchover;
pub mod sync;

use std::time::Duration;

use crate::instance::DataDir;

pub use action::{Action, Decision};
pub use election::priority;
pub use follower::{history_points, lineage_agrees};
pub use observation::{JobKind, JobStatus, Observation, Peer, PgStatus};
pub use pause::decide;
pub use reason::{CandidateProblem, Ineligible, Reason, YieldCause};
pub use switchover::candidate_problem;

use action::decision;

/// The decision before maintenance mode is applied: the rules, then rule 8
/// (no primary without a live fence process) over their outcome.
pub(super) fn decide_unpaused(o: &Observation) -> Decision {
    fence::gate(o, decide_rules(o))
}

/// The rules in the order they take precedence, each concern in its own
/// module.
fn decide_rules(o: &Observation) -> Decision {
    let running = o.pg.running();
    let primary = running.is_some_and(|r| !r.in_recovery);
    // A postmaster that does not answer may be a primary that accepts writes
    // the moment it resumes, unless its data directory says standby.
    let may_be_primary = matches!(o.pg, PgStatus::Unresponsive)
        && !matches!(o.data_dir, DataDir::Valid { standby: true, .. });

    // Failsafe mode: every member confirming, over REST, that it follows
    // this leader holds off rule 2 like a renewal sent then.
    let failsafe = o.failsafe_confirmed.filter(|_| o.config.failsafe_mode);
    let since = o
        .last_renewal_sent
        .max(failsafe)
        .map(|t| o.now.saturating_duration_since(t))
        .unwrap_or(Duration::MAX);
    let lease_overdue = since >= o.config.leader_deadline();

    // Rule 2 comes before everything, etcd reachable or not: a primary whose
    // lease may be about to expire must stop accepting writes now.
    if (primary || may_be_primary) && lease_overdue {
        let reason = if o.cluster.is_none() {
            Reason::EtcdUnreachableFencing { since }
        } else {
            Reason::LeaseExpiredFencing { since }
        };
        return decision(vec![Action::Stop], reason);
    }

    let Some(cluster) = &o.cluster else {
        if let JobStatus::Running(kind, _) = o.job {
            return decision(vec![], Reason::JobRunning(kind));
        }
        if primary {
            if let Some(t) = failsafe {
                let ago = o.now.saturating_duration_since(t);
                return decision(vec![], Reason::FailsafeHolding { confirmed: ago });
            }
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
        // Rule 1 for a start already under way: one that comes up
        // read-write (no standby.signal) must still hold the key when it
        // does; stopped now, it never accepts a write without it.
        // A bootstrap or a promotion without the key is stopped whatever
        // the directory says (simulator seed 23651: a bootstrap's agent
        // stalled past its lease, then started the primary).
        let read_write_dir = matches!(o.data_dir, DataDir::Valid { standby: false, .. });
        let makes_primary = match kind {
            JobKind::Bootstrap | JobKind::Promote => true,
            JobKind::Start | JobKind::Restart => read_write_dir,
            _ => false,
        };
        if makes_primary && !i_lead {
            return decision(
                vec![Action::Stop],
                Reason::StartWithoutKey {
                    leader: leader.map(str::to_string),
                },
            );
        }
        return decision(vec![], Reason::JobRunning(kind));
    }

    // The process-death fast path (`dead_leader.rs`). Not for a primary
    // without the key: rule 1 stops it first.
    if !primary && !i_lead {
        if let Some(d) = dead_leader::decide(o, cluster) {
            return d;
        }
    }

    let (system_id, standby_dir) = match &o.data_dir {
        DataDir::Unusable(why) => return decision(vec![], Reason::DataDirUnusable(why.clone())),
        DataDir::Empty => return bootstrap::decide_empty(o, cluster),
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

    // Rule 2 for what would make a primary: the view can show our key on a
    // lease that expires a moment later (read just before the renewal that
    // failed). Nothing is started or promoted read-write on it.
    if i_lead && lease_overdue {
        return decision(vec![], Reason::LeaseOverdue { since });
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
            let reason = if o.gtm_unreachable {
                Reason::GtmUnreachable
            } else {
                Reason::PostgresUnresponsive
            };
            return decision(vec![], reason);
        }
        // A half-copied data directory never starts, in any role: it would
        // replay a history that is neither its own nor the leader's.
        if o.rewind_incomplete {
            return match leader {
                Some(_) if i_lead => decision(
                    vec![Action::ReleaseLeader],
                    Reason::RewindIncomplete {
                        from: None,
                        rebuilding: false,
                    },
                ),
                Some(l) if o.rebuild_allowed => decision(
                    vec![Action::Rebuild {
                        from: l.to_string(),
                    }],
                    Reason::RewindIncomplete {
                        from: Some(l.to_string()),
                        rebuilding: true,
                    },
                ),
                from => decision(
                    vec![],
                    Reason::RewindIncomplete {
                        from: from.map(str::to_string),
                        rebuilding: false,
                    },
                ),
            };
        }
        let failed = |r: Reason| match &o.job {
            JobStatus::Failed(JobKind::Start, e, _) => Reason::StartFailed(e.clone()),
            _ => r,
        };
        return match leader {
            Some(_) if i_lead => decision(vec![Action::StartPrimary], failed(Reason::Starting)),
            Some(l) => follower::decide_stopped(o, cluster, l, failed),
            // An interrupted bootstrap of ours: `initialize` claimed but never
            // completed, and only the winner can have a primary data dir.
            None if cluster.initialize.as_deref() == Some("") && !standby_dir => {
                decision(vec![Action::AcquireLeader], Reason::AcquiringLeader)
            }
            None if o.standby_needs_upstream => election::cold_start(o, cluster),
            None => decision(
                vec![Action::StartReadOnly],
                failed(Reason::StartingReadOnly),
            ),
        };
    };

    // A promotion that a dead agent signalled can still complete: unless
    // the key is ours, it must not (rule 1).
    if o.promotion_pending && !i_lead && run.in_recovery {
        return decision(vec![Action::Stop], Reason::PromotionWithoutKey);
    }

    if i_lead {
        return leader::decide_running(o, cluster, run);
    }

    match leader {
        Some(l) => follower::decide_running(o, cluster, run, l),
        None if !run.in_recovery => decision(vec![Action::AcquireLeader], Reason::AcquiringLeader),
        None => election::elect(o, cluster, run),
    }
}

#[cfg(test)]
mod tests;
