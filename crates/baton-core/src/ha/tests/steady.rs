//! When the watch's copy of the cluster may stand in for a read.

use super::*;
use crate::ha::steady::{mirror_suffices, steady_under};

fn streaming_replica() -> PgStatus {
    replica_at(1, 500)
}

#[test]
fn a_replica_streaming_from_the_leader_with_nothing_to_do_is_steady() {
    let c = cluster(Some(("n1", 1)));
    let o = obs("n2", Some(c.clone()), valid(), streaming_replica());
    let d = decide(&o);
    assert_eq!(d.actions, vec![]);
    let steady = steady_under(&o, &d);
    assert_eq!(
        steady,
        Some(LeaderKey {
            name: "n1".into(),
            lease: LeaseId(1)
        })
    );
    assert!(mirror_suffices(steady.as_ref(), &c));
}

#[test]
fn the_leader_a_replica_not_streaming_or_one_with_work_is_never_steady() {
    let c = cluster(Some(("n1", 1)));
    // The leader itself.
    let o = obs("n1", Some(c.clone()), valid(), running(false));
    assert_eq!(steady_under(&o, &decide(&o)), None);
    // A replica whose stream broke.
    let mut pg = streaming_replica();
    if let PgStatus::Running(r) = &mut pg {
        r.receiver_streaming = false;
    }
    let o = obs("n2", Some(c.clone()), valid(), pg);
    assert_eq!(steady_under(&o, &decide(&o)), None);
    // A replica that must re-point first (decides an action).
    let o = obs("n2", Some(c.clone()), valid(), running(true));
    let d = decide(&o);
    assert!(!d.actions.is_empty());
    assert_eq!(steady_under(&o, &d), None);
    // A job under way.
    let mut o = obs("n2", Some(c.clone()), valid(), streaming_replica());
    o.job = JobStatus::Running(JobKind::Start, Duration::from_secs(1));
    assert_eq!(steady_under(&o, &decide(&o)), None);
    // No leader key.
    let o = obs("n2", Some(cluster(None)), valid(), streaming_replica());
    assert_eq!(steady_under(&o, &decide(&o)), None);
    // A switchover pending.
    let mut c = cluster(Some(("n1", 1)));
    c.failover = Some(crate::cluster::FailoverKey::default());
    let o = obs("n2", Some(c), valid(), streaming_replica());
    assert_eq!(steady_under(&o, &decide(&o)), None);
    // No view at all (etcd unreachable).
    let o = obs("n2", None, valid(), streaming_replica());
    assert_eq!(steady_under(&o, &decide(&o)), None);
}

#[test]
fn a_copy_naming_another_leader_or_lease_or_a_switchover_does_not_suffice() {
    let steady = LeaderKey {
        name: "n1".into(),
        lease: LeaseId(1),
    };
    assert!(!mirror_suffices(None, &cluster(Some(("n1", 1)))));
    assert!(!mirror_suffices(Some(&steady), &cluster(Some(("n3", 1)))));
    assert!(!mirror_suffices(Some(&steady), &cluster(Some(("n1", 2)))));
    assert!(!mirror_suffices(Some(&steady), &cluster(None)));
    let mut c = cluster(Some(("n1", 1)));
    c.failover = Some(crate::cluster::FailoverKey::default());
    assert!(!mirror_suffices(Some(&steady), &c));
}
