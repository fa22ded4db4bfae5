//! Maintenance mode: the decision is made as usual, then every automatic
//! action is held back, except fencing and an operator's own requests.

use super::{decide_unpaused, Action, Decision, Observation, Reason};

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
            | Action::Promote { .. }
    )
}
