//! When a tick may decide on the watch's copy of the cluster instead of
//! reading etcd.
//!
//! A linearizable read every tick is what bounded how many clusters one
//! etcd serves (docs/architecture.md, "Scale"); the watch delivers the same
//! keys, usually sooner. But a watch can lag without saying so: one served
//! by an etcd member cut off from its quorum receives nothing and reports
//! no error. So the copy is used in one state only, where nothing it could
//! hide changes what this member does: a replica **streaming from the
//! leader** that decided to do nothing, whose copy still names that
//! leader (same lease) and asks for no switchover.
//!
//! - Every way the leader key leaves that leader also ends its primary,
//!   and with it this replica's stream: a switchover demotes the old
//!   leader before it hands the key over, a dead or fenced leader's
//!   postgres is gone, and a leader that lost its key stops in its own
//!   tick (the leader always reads etcd). The next tick sees no stream,
//!   is not steady, and reads etcd.
//! - A switchover naming this replica is the leader's to drive; this
//!   member acts only once the key moves to it, which ends the stream too.
//! - Every write a member makes is a compare in etcd, never a
//!   conclusion drawn from the copy.
//! - What remains stale is what a steady replica does not act on (other
//!   members' keys, the dynamic config): the agent reads etcd in full at
//!   least every `FULL_READ_EVERY` anyway.

use std::time::Duration;

use super::{Decision, JobStatus, Observation};
use crate::cluster::{ClusterView, LeaderKey};

/// A steady replica still reads etcd in full this often.
pub const FULL_READ_EVERY: Duration = Duration::from_secs(10);

/// The leader this tick found this member steadily following, if it did.
pub fn steady_under(obs: &Observation, d: &Decision) -> Option<LeaderKey> {
    let c = obs.cluster.as_ref()?;
    let leader = c.leader.as_ref().filter(|l| l.name != obs.me)?;
    let r = obs.pg.running()?;
    let quiet = r.in_recovery
        && r.receiver_streaming
        && d.actions.is_empty()
        && matches!(obs.job, JobStatus::Idle | JobStatus::Done(_))
        && c.failover.is_none();
    quiet.then(|| leader.clone())
}

/// Whether the watch's copy may stand in for a read, for a member that
/// was steady under `steady` on its last tick.
pub fn mirror_suffices(steady: Option<&LeaderKey>, copy: &ClusterView) -> bool {
    steady.is_some_and(|l| copy.leader.as_ref() == Some(l)) && copy.failover.is_none()
}
