//! The process-death fast path: when the leader's host is up but its agent
//! and its postgres are both gone, nothing there can accept a write, and
//! waiting for the lease (ttl) only keeps the cluster without a primary.
//!
//! The evidence is a refused connection (TCP RST) on both the leader's REST
//! port and its postgres port, every time over a short window, as seen by a
//! majority of the members other than the leader. A refusal means no socket
//! listens on that port: the kernel of a live host answers for a process
//! that is gone. A stalled process (SIGSTOP, swapping, a hung disk) still
//! has its listening socket, so its connections are accepted and then time
//! out: never a refusal. A dead host or a partition answers nothing: a
//! timeout again. Neither takes this path; they wait for the lease.
//!
//! Why both ports: postgres alone refusing happens while a live agent
//! restarts it in place (it is about to accept writes again, as leader);
//! the REST port alone refusing happens while postgres runs on without its
//! agent (it accepts writes until fenced). Only when both refuse is nothing
//! on that host accepting, or about to accept, writes. The agent binds its
//! REST port before its loop starts and stops when its REST API dies, so a
//! refused REST port means no agent loop for that member runs.
//!
//! Why the key's lease: a report counts only against the very leadership it
//! was made of. An agent that restarts on that host and adopts the key puts
//! it on a new lease, so the removal (compare-and-delete on name and lease)
//! cannot remove the key a live agent holds.
//!
//! What is still not covered: a postmaster killed alone leaves backends
//! that exit once they notice, within a statement; a commit one of them was
//! writing when the postmaster died can still be acknowledged to its client
//! (with asynchronous replication, as after any failover, that commit may
//! be lost). Synchronous replication does not acknowledge it: the
//! walsenders died with the postmaster.

use crate::cluster::ClusterView;

use super::{decision, Action, Decision, Observation, Reason};

/// `Some` when this member should remove the leader key now: its own probe
/// this tick and those of a majority of the other members agree.
pub(super) fn decide(o: &Observation, cluster: &ClusterView) -> Option<Decision> {
    let leader = cluster.leader.as_ref()?;
    if leader.name == o.me || o.leader_refused != Some(leader.lease) {
        return None;
    }
    let voters = cluster
        .members
        .keys()
        .filter(|m| **m != leader.name)
        .chain((!cluster.members.contains_key(&o.me)).then_some(&o.me))
        .count();
    let reporters = cluster
        .members
        .iter()
        .filter(|(name, m)| {
            **name != leader.name
                && **name != o.me
                && m.baton_leader_refused
                    .as_ref()
                    .is_some_and(|r| r.leader == leader.name && r.lease == leader.lease)
        })
        .count()
        + 1;
    if reporters * 2 <= voters {
        return None;
    }
    Some(decision(
        vec![Action::RemoveDeadLeader {
            name: leader.name.clone(),
            lease: leader.lease,
        }],
        Reason::LeaderProcessesGone {
            leader: leader.name.clone(),
            reporters,
            voters,
        },
    ))
}
