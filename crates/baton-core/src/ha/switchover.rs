//! Switchover requests: the checks a candidate must pass (shared with the
//! REST API) and what the leader does about a pending request.

use crate::cluster::ClusterView;
use crate::instance::Running;

use super::{Action, CandidateProblem, Observation, Reason};

/// Why `candidate` cannot take over from the current leader now, if it
/// cannot; the same checks guard the REST API and the leader's loop.
///
/// `leader_live` is the leader's own instance as last read, when the
/// caller is the leader: its WAL position and `pg_stat_replication` are read
/// together, while member keys are written a tick apart, so after a WAL
/// segment switch the keys alone show a caught-up replica a segment behind;
/// and the reading may be a tick older than a key that shows it caught up
/// since (the REST API's check): each side counts its freshest evidence.
pub fn candidate_problem(
    cluster: &ClusterView,
    candidate: &str,
    max_lag: u64,
    leader_live: Option<&Running>,
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
    if m.tags.failover_priority.is_some_and(|p| p <= 0) {
        return Some(CandidateProblem::FailoverPriorityNotPositive(
            candidate.to_string(),
        ));
    }
    if !m.is_running_replica() {
        return Some(CandidateProblem::NotRunningReplica {
            name: candidate.to_string(),
            state: m.state.clone(),
            role: m.role.clone(),
        });
    }
    if m.replication_state.as_deref() != Some("streaming") {
        return Some(CandidateProblem::NotStreaming(candidate.to_string()));
    }
    let sync_mode = cluster
        .config
        .as_ref()
        .is_some_and(|c| !c.synchronous_mode.is_off());
    if sync_mode && !cluster.sync.as_ref().is_some_and(|k| k.lists(candidate)) {
        return Some(CandidateProblem::NotSynchronous(candidate.to_string()));
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
    // The freshest evidence on each side: the leader's own reading (its
    // position and its `pg_stat_replication` row, read together) and the
    // member keys, either of which may be the newer one (the reading is
    // the leader's last tick, a key is written when it changes).
    let live_at = leader_live.and_then(|r| {
        let row = r
            .replication
            .iter()
            .find(|row| row.application_name == candidate)?;
        row.flush_lsn.max(row.replay_lsn).map(|l| l.0)
    });
    let leader_at = leader_live.and_then(|r| r.wal_lsn).map(|l| l.0).max(optime);
    let candidate_at = live_at.max(m.xlog_location);
    if let Some(lag) = leader_at
        .zip(candidate_at)
        .map(|(l, c)| l.saturating_sub(c))
    {
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

/// What the leader does about a pending `failover` key: a switchover to
/// start, schedule or refuse, or a fulfilled manual failover to clear.
pub(super) fn leader_request(
    o: &Observation,
    cluster: &ClusterView,
    actions: &mut Vec<Action>,
) -> Reason {
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
                _ => match candidate_problem(
                    cluster,
                    c,
                    o.config.maximum_lag_on_failover,
                    o.pg.running(),
                ) {
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
    reason
}
