//! An empty data directory: bootstrap the cluster, or clone the leader.

use crate::cluster::ClusterView;
use crate::instance::slot_name;

use super::{decision, Action, Decision, JobKind, JobStatus, Observation, Reason};

pub(super) fn decide_empty(o: &Observation, cluster: &ClusterView) -> Decision {
    if o.staged_initdb.is_some() && cluster.initialize == o.staged_initdb {
        return decision(vec![Action::AdoptInitdb], Reason::AdoptingInitdb);
    }
    // The leader key and nothing to lead, with no bootstrap running (a
    // running job returned earlier): a bootstrap that ended without its
    // data, whose clean-up did not reach etcd. Held, the key keeps every
    // other member waiting for a leader to clone from for as long as our
    // lease lives (seen at 1,000 clusters: `bench/scale`).
    if cluster.leader_name() == Some(o.me.as_str()) {
        return decision(vec![Action::AbandonBootstrap], Reason::LeaderWithoutData);
    }
    // A bootstrap claim on our own lease with no bootstrap running: the
    // claim (or the leader key after it) was taken by a request whose
    // answer was lost, so no job followed. Held, it keeps every member,
    // this one included, waiting for a bootstrap nobody runs (seen at
    // 1,000 clusters).
    if cluster.initialize.as_deref() == Some("")
        && cluster.initialize_lease.is_some()
        && cluster.initialize_lease == o.lease
    {
        return decision(
            vec![Action::AbandonBootstrap],
            Reason::OrphanedBootstrapClaim,
        );
    }
    // Our bootstrap failed while a claim still stands: say so and leave it
    // to whoever holds the claim. Once another member's cluster is
    // initialized, an empty data directory simply clones it.
    if let JobStatus::Failed(JobKind::Bootstrap, e, _) = &o.job {
        if cluster.initialize.as_deref() == Some("") {
            return decision(vec![], Reason::BootstrapFailed(e.clone()));
        }
    }
    match (cluster.initialize.as_deref(), cluster.leader_name()) {
        (None, None) if o.bootstrap_allowed => {
            decision(vec![Action::Bootstrap], Reason::Bootstrapping)
        }
        (None, None) => decision(vec![], Reason::BootstrapNotAllowed),
        // A leader but no `initialize`: etcd lost its data under a running
        // cluster. The leader publishes the key again; bootstrapping now
        // would start a second cluster beside it.
        (None, Some(l)) => decision(
            vec![],
            Reason::WaitingForInitialize {
                leader: l.to_string(),
            },
        ),
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
