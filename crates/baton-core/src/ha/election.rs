//! Leader election among running replicas (rule 4): compare with every
//! reachable peer, yield to a healthier one, race for the key otherwise.

use std::cmp::Ordering;

use crate::cluster::ClusterView;
use crate::config::Tags;
use crate::instance::Running;

use super::{decision, Action, Decision, Ineligible, Observation, Reason, YieldCause};

/// Leader election among running replicas (rule 4).
pub(super) fn elect(o: &Observation, cluster: &ClusterView, run: &Running) -> Decision {
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
    if o.config.failsafe_mode {
        // A leader cut off from etcd may still run, confirmed by every
        // member; one that confirmed it lately must not race it.
        if let Some((ago, leader)) = &o.failsafe_heard {
            if *ago < o.config.ttl() {
                return decision(
                    vec![],
                    Reason::FailsafeLeaderAlive {
                        leader: leader.clone(),
                    },
                );
            }
        }
        // Nor one the leader never asked: it cannot know of us.
        if cluster
            .failsafe
            .as_ref()
            .is_some_and(|f| !f.contains_key(&o.me))
        {
            return decision(vec![], Reason::NotEligible(Ineligible::NotInFailsafe));
        }
    }
    if o.tags.nofailover {
        return decision(vec![], Reason::NotEligible(Ineligible::TaggedNofailover));
    }
    let my_priority = priority(&o.tags);
    if my_priority <= 0 {
        return decision(
            vec![],
            Reason::NotEligible(Ineligible::FailoverPriorityNotPositive {
                priority: my_priority,
            }),
        );
    }
    if !o.config.synchronous_mode.is_off() {
        if let Err(why) = super::sync::may_elect(o, cluster) {
            return decision(vec![], Reason::NotEligible(why));
        }
    }
    let position = run
        .receive_lsn
        .max(run.replay_lsn)
        .map(|l| l.0)
        .unwrap_or(0);
    // The lag counts against the freshest position known: the last leader's
    // published optime (a tick old at best, absent after etcd lost it) or
    // any peer's as it answered just now, on our timeline or a later one
    // (a replica that never leads, `nofailover`, still shows how far the
    // old primary got).
    let max_lag = o.config.maximum_lag_on_failover;
    let my_tl = run.timeline.unwrap_or(0);
    let freshest = o
        .peers
        .iter()
        .filter(|p| p.running && p.name != o.me && p.timeline >= my_tl)
        .map(|p| p.position)
        .chain(cluster.status.as_ref().and_then(|s| s.optime))
        .max();
    if let Some(optime) = freshest {
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
        if !p.running
            || p.nofailover
            || p.priority <= 0
            || p.name == o.me
            || !super::sync::peer_counts(o, cluster, p)
        {
            continue;
        }
        let them = (p.timeline, p.position, p.priority);
        if them.cmp(&me) == Ordering::Greater {
            let why = if p.primary {
                YieldCause::PeerStillPrimary
            } else if p.timeline > me.0 {
                YieldCause::PeerLaterTimeline {
                    theirs: p.timeline,
                    mine: me.0,
                }
            } else if p.position > position {
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

/// No leader, and a stopped instance that cannot run without one (an
/// OpenTenBase GTM: a standby connects to its active at start and takes
/// its state; there is no read-only mode to take part in an election
/// from). Whoever takes the key starts as the active with the state it
/// has, so the key is only for the member whose state is known to be the
/// newest: the last leader (the `status` key names it), or the one a
/// manual failover names; and never while a peer runs, since a standby
/// that followed the last leader to its end is elected by the running
/// path. A first adoption (no `initialize` yet) has no last leader.
pub(super) fn cold_start(o: &Observation, cluster: &ClusterView) -> Decision {
    if let Some(to) = cluster.failover.as_ref().and_then(|f| f.member.as_deref()) {
        if cluster.members.contains_key(to) {
            let to = if to == o.me { "" } else { to };
            let actions = if to.is_empty() {
                vec![Action::AcquireLeader]
            } else {
                vec![]
            };
            return decision(actions, Reason::ManualFailover { to: to.to_string() });
        }
    }
    if let Some(p) = o.peers.iter().find(|p| p.running && p.name != o.me) {
        return decision(
            vec![],
            Reason::Yielding {
                to: p.name.clone(),
                why: YieldCause::PeerRunning,
            },
        );
    }
    if o.tags.nofailover {
        return decision(vec![], Reason::NotEligible(Ineligible::TaggedNofailover));
    }
    let last = cluster.status.as_ref().and_then(|s| s.baton_leader.clone());
    match last {
        Some(l) if l == o.me => {
            decision(vec![Action::AcquireLeader], Reason::ColdStartAsLastLeader)
        }
        None if cluster.initialize.is_none() => {
            decision(vec![Action::AcquireLeader], Reason::AcquiringLeader)
        }
        last => decision(vec![], Reason::WaitingForLastLeader { last }),
    }
}

/// Patroni's `failover_priority` tag: higher wins ties; default 1; 0 or
/// less never leads.
pub fn priority(tags: &Tags) -> i64 {
    tags.failover_priority.unwrap_or(1)
}
