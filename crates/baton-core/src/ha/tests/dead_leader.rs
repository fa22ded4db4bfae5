//! The process-death fast path: the leader key goes early only on a
//! majority's evidence that both of the leader's ports refuse, and only the
//! leadership those reports were made against.

use super::*;
use crate::cluster::RefusedReport;

fn reported(mut c: ClusterView, by: &str, leader: &str, lease: i64) -> ClusterView {
    c.members.get_mut(by).unwrap().baton_leader_refused = Some(RefusedReport {
        leader: leader.into(),
        lease: LeaseId(lease),
    });
    c
}

fn refused_here(mut o: Observation, lease: i64) -> Observation {
    o.leader_refused = Some(LeaseId(lease));
    o
}

#[test]
fn a_majority_seeing_both_ports_refuse_removes_the_key_of_that_lease() {
    let c = reported(cluster(Some(("n1", 1))), "n3", "n1", 1);
    let o = refused_here(obs("n2", Some(c), dir_on(1), replica_at(1, 100)), 1);
    let d = decide(&o);
    assert_eq!(
        d.actions,
        vec![Action::RemoveDeadLeader {
            name: "n1".into(),
            lease: LeaseId(1)
        }]
    );
    assert_eq!(
        d.reason,
        Reason::LeaderProcessesGone {
            leader: "n1".into(),
            reporters: 2,
            voters: 2
        }
    );
    assert_eq!(d.reason.code(), "leader_processes_gone");
    // Stopped replicas count as much: they too see the leader's ports.
    let c = reported(cluster(Some(("n1", 1))), "n3", "n1", 1);
    let o = refused_here(obs("n2", Some(c), dir_on(1), PgStatus::Stopped), 1);
    assert!(matches!(
        decide(&o).actions[..],
        [Action::RemoveDeadLeader { .. }]
    ));
}

#[test]
fn one_members_refusal_alone_waits_for_the_lease() {
    // n2 alone of two others: not a majority.
    let c = cluster(Some(("n1", 1)));
    let o = refused_here(obs("n2", Some(c), dir_on(1), replica_at(1, 100)), 1);
    let d = decide(&o);
    assert!(
        !d.actions
            .iter()
            .any(|a| matches!(a, Action::RemoveDeadLeader { .. })),
        "{d:?}"
    );
    // Another's report with no refusal seen here this tick: nothing either
    // (each remover must see it itself, now).
    let c = reported(cluster(Some(("n1", 1))), "n3", "n1", 1);
    let d = decide(&obs("n2", Some(c), dir_on(1), replica_at(1, 100)));
    assert!(!d
        .actions
        .iter()
        .any(|a| matches!(a, Action::RemoveDeadLeader { .. })));
}

#[test]
fn reports_about_another_leadership_do_not_count() {
    // n3 reported n1 on lease 1; n1 has since come back on lease 2 (its
    // restarted agent adopted the key): only lease 2's refusals count.
    let c = reported(cluster(Some(("n1", 2))), "n3", "n1", 1);
    let o = refused_here(obs("n2", Some(c), dir_on(1), replica_at(1, 100)), 2);
    assert!(!decide(&o)
        .actions
        .iter()
        .any(|a| matches!(a, Action::RemoveDeadLeader { .. })));
    // A probe made against lease 1 says nothing of lease 2's holder.
    let c = reported(cluster(Some(("n1", 2))), "n3", "n1", 2);
    let o = refused_here(obs("n2", Some(c), dir_on(1), replica_at(1, 100)), 1);
    assert!(!decide(&o)
        .actions
        .iter()
        .any(|a| matches!(a, Action::RemoveDeadLeader { .. })));
}

#[test]
fn neither_the_leader_nor_a_primary_without_the_key_takes_the_fast_path() {
    // The leader's own agent never removes its key this way.
    let c = reported(cluster(Some(("n1", 1))), "n3", "n1", 1);
    let o = refused_here(obs("n1", Some(c), valid(), running(false)), 1);
    assert!(!decide(&o)
        .actions
        .iter()
        .any(|a| matches!(a, Action::RemoveDeadLeader { .. })));
    // A second primary is stopped first (rule 1).
    let c = reported(cluster(Some(("n1", 1))), "n3", "n1", 1);
    let o = refused_here(obs("n2", Some(c), valid(), running(false)), 1);
    assert_eq!(decide(&o).actions, vec![Action::Stop]);
}

#[test]
fn maintenance_mode_holds_the_removal_back() {
    let mut c = reported(cluster(Some(("n1", 1))), "n3", "n1", 1);
    c.config.as_mut().unwrap().pause = true;
    let o = refused_here(obs("n2", Some(c), dir_on(1), replica_at(1, 100)), 1);
    let d = decide(&o);
    assert_eq!(d.actions, vec![]);
    assert!(matches!(d.reason, Reason::Paused { .. }), "{:?}", d.reason);
}

#[test]
fn in_a_two_member_cluster_the_one_other_member_is_the_majority() {
    let mut c = cluster(Some(("n1", 1)));
    c.members.remove("n3");
    let o = refused_here(obs("n2", Some(c), dir_on(1), replica_at(1, 100)), 1);
    assert!(matches!(
        decide(&o).actions[..],
        [Action::RemoveDeadLeader { .. }]
    ));
}
