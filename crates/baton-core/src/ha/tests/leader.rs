//! The leader: slots, status, history, fencing, restarts, promotion.

use super::*;

#[test]
fn leader_keeps_slots_and_status() {
    let d = decide(&obs(
        "n1",
        Some(cluster(Some(("n1", 7)))),
        valid(),
        running(false),
    ));
    assert_eq!(
        d.actions,
        vec![
            Action::CreateSlots(vec!["n2".into(), "n3".into()]),
            Action::PublishStatus
        ]
    );
    assert_eq!(d.reason, Reason::Leader);
}

#[test]
fn slots_of_members_gone_longer_than_member_slots_ttl_are_dropped() {
    let mut pg = running(false);
    if let PgStatus::Running(r) = &mut pg {
        r.slots = [("n2".to_string(), None), ("n3".to_string(), None)].into();
    }
    let mut o = obs("n1", Some(cluster(Some(("n1", 7)))), valid(), pg);
    o.absent_slots = [("old".to_string(), Duration::from_secs(1799))].into();
    assert_eq!(d_actions(&o), vec![Action::PublishStatus]);
    o.absent_slots = [("old".to_string(), Duration::from_secs(1800))].into();
    assert_eq!(
        d_actions(&o),
        vec![Action::DropSlots(vec!["old".into()]), Action::PublishStatus]
    );
}

#[test]
fn restarted_agent_adopts_its_leader_key() {
    let d = decide(&obs(
        "n1",
        Some(cluster(Some(("n1", 3)))),
        valid(),
        running(false),
    ));
    assert_eq!(d.actions, vec![Action::AdoptLeader]);
}

#[test]
fn stopped_postgres_is_started_in_its_role() {
    let c = cluster(Some(("n1", 7)));
    let d = decide(&obs("n1", Some(c.clone()), valid(), PgStatus::Stopped));
    assert_eq!(d.actions, vec![Action::StartPrimary]);
    let d = decide(&obs("n2", Some(c), valid(), PgStatus::Stopped));
    assert_eq!(
        d.actions,
        vec![Action::StartReplica {
            leader: "n1".into()
        }]
    );
}

#[test]
fn nothing_starts_writable_without_the_leader_key() {
    // No leader: start read-only to take part in the election.
    for dir in [dir_on(1), valid()] {
        let d = decide(&obs("n2", Some(cluster(None)), dir, PgStatus::Stopped));
        assert_eq!(d.actions, vec![Action::StartReadOnly]);
        assert_eq!(d.reason, Reason::StartingReadOnly);
    }
    // An interrupted bootstrap takes the key before starting.
    let mut c = cluster(None);
    c.initialize = Some(String::new());
    let d = decide(&obs("n1", Some(c), valid(), PgStatus::Stopped));
    assert_eq!(d.actions, vec![Action::AcquireLeader]);
}

#[test]
fn primary_that_is_not_leader_demotes_at_once() {
    let d = decide(&obs(
        "n2",
        Some(cluster(Some(("n1", 1)))),
        valid(),
        running(false),
    ));
    assert_eq!(d.actions, vec![Action::Stop]);
}

#[test]
fn leader_holding_key_promotes_replica() {
    let d = decide(&obs(
        "n1",
        Some(cluster(Some(("n1", 7)))),
        valid(),
        running(true),
    ));
    assert_eq!(
        d.actions,
        vec![
            Action::CreateSlots(vec!["n2".into(), "n3".into()]),
            Action::Promote { from: 1, to: 2 }
        ]
    );
}

#[test]
fn leader_fences_when_renewal_is_overdue() {
    let mut o = obs("n1", None, valid(), running(false));
    o.last_renewal_sent = Some(o.now - Duration::from_secs(3));
    let d = decide(&o);
    assert_eq!(d.actions, vec![Action::Stop]);
    assert!(matches!(d.reason, Reason::EtcdUnreachableFencing { .. }));

    // Just inside the deadline (ttl 4 - margin 1 = 3 s): keep running.
    o.last_renewal_sent = Some(o.now - Duration::from_millis(2900));
    let d = decide(&o);
    assert_eq!(d.actions, vec![]);
    assert_eq!(d.reason, Reason::EtcdUnreachable);

    // Overdue and the key is gone: fence too, even mid-job.
    let mut o = obs("n1", Some(cluster(None)), valid(), running(false));
    o.last_renewal_sent = Some(o.now - Duration::from_secs(5));
    o.job = JobStatus::Running(JobKind::Start, Duration::ZERO);
    assert_eq!(decide(&o).actions, vec![Action::Stop]);
}

#[test]
fn job_in_progress_holds_other_actions() {
    let mut o = obs(
        "n2",
        Some(cluster(Some(("n1", 1)))),
        DataDir::Empty,
        PgStatus::Stopped,
    );
    o.job = JobStatus::Running(JobKind::Clone, Duration::from_secs(1));
    let d = decide(&o);
    assert_eq!(d.actions, vec![]);
    assert_eq!(d.reason, Reason::JobRunning(JobKind::Clone));
}

#[test]
fn new_leader_publishes_history_once() {
    let mut pg = running(false);
    if let PgStatus::Running(r) = &mut pg {
        r.timeline = Some(2);
        r.slots = [("n1".to_string(), None), ("n3".to_string(), None)].into();
    }
    if let PgStatus::Running(r) = &mut pg {
        r.history = vec![(1, Lsn(1000))];
    }
    let mut c = cluster(Some(("n2", 7)));
    let o = obs("n2", Some(c.clone()), dir_on(2), pg.clone());
    assert_eq!(
        decide(&o).actions,
        vec![Action::PublishHistory, Action::PublishStatus]
    );
    // Another leader's timeline 2 (switch at 800) is replaced by ours.
    c.history = Some(serde_json::json!([[1, 800, "x", null, "n3"]]));
    let o = obs("n2", Some(c.clone()), dir_on(2), pg.clone());
    assert_eq!(
        decide(&o).actions,
        vec![Action::PublishHistory, Action::PublishStatus]
    );
    c.history = Some(serde_json::json!([[1, 1000, "x", null, "n2"]]));
    let o = obs("n2", Some(c), dir_on(2), pg);
    assert_eq!(decide(&o).actions, vec![Action::PublishStatus]);
}

#[test]
fn crashed_leader_restarts_in_place_within_primary_start_timeout() {
    let c = cluster(Some(("n1", 7)));
    let mut o = obs("n1", Some(c), valid(), PgStatus::Stopped);
    assert_eq!(d_actions(&o), vec![Action::StartPrimary]);
    o.job = JobStatus::Running(JobKind::Start, Duration::from_secs(1));
    assert_eq!(d_actions(&o), vec![]);
    o.job = JobStatus::Running(JobKind::Start, Duration::from_secs(3));
    assert_eq!(d_actions(&o), vec![Action::Stop, Action::ReleaseLeader]);
}

/// A primary whose queries hang (SIGSTOPped, stuck on I/O) accepts writes
/// again the moment it resumes: past the deadline it is fenced like a
/// responsive one. A hung standby is left alone.
#[test]
fn unresponsive_primary_is_fenced_at_the_deadline() {
    let mut o = obs("n1", None, valid(), PgStatus::Unresponsive);
    o.last_renewal_sent = Some(o.now - Duration::from_secs(3));
    let d = decide(&o);
    assert_eq!(d.actions, vec![Action::Stop]);
    assert!(matches!(d.reason, Reason::EtcdUnreachableFencing { .. }));

    let mut o = obs("n1", None, dir_on(1), PgStatus::Unresponsive);
    o.last_renewal_sent = Some(o.now - Duration::from_secs(3));
    assert_eq!(decide(&o).actions, vec![]);
}

/// The view still names us leader (its lease expires a moment later) but
/// our renewal is overdue: a stopped leader does not start as primary, a
/// replica holding the key does not promote.
#[test]
fn overdue_lease_starts_or_promotes_no_primary() {
    let mut o = obs(
        "n1",
        Some(cluster(Some(("n1", 7)))),
        valid(),
        PgStatus::Stopped,
    );
    o.last_renewal_sent = Some(o.now - Duration::from_secs(3));
    let d = decide(&o);
    assert_eq!(d.actions, vec![]);
    assert_eq!(d.reason.code(), "lease_overdue");
    // Inside the deadline it starts.
    o.last_renewal_sent = Some(o.now - Duration::from_millis(2900));
    assert_eq!(decide(&o).actions, vec![Action::StartPrimary]);

    let mut o = obs(
        "n1",
        Some(cluster(Some(("n1", 7)))),
        dir_on(1),
        running(true),
    );
    o.last_renewal_sent = Some(o.now - Duration::from_secs(4));
    assert!(!decide(&o)
        .actions
        .iter()
        .any(|a| matches!(a, Action::Promote { .. })));
}

/// Two promotions never share a timeline number: the next one is above
/// every timeline reserved, published in a member key or in `history`.
#[test]
fn promotion_takes_a_timeline_nobody_used() {
    let mut c = cluster(Some(("n1", 7)));
    assert_eq!(c.next_timeline(1), 2);
    // Another member promoted to 4 before and was cut off: its key shows it.
    c.members.get_mut("n3").unwrap().timeline = Some(4);
    assert_eq!(c.next_timeline(3), 5);
    // Its promotion was reserved even though nothing else was published.
    c.members.get_mut("n3").unwrap().timeline = Some(1);
    c.timeline_reserved = Some(6);
    assert_eq!(c.next_timeline(3), 7);
    c.history = Some(serde_json::json!([
        [1, 100, "promoted", null, "n1"],
        [7, 900, "promoted", null, "n2"]
    ]));
    assert_eq!(c.next_timeline(3), 9);
    let d = decide(&obs("n1", Some(c), dir_on(3), replica_at(3, 1000)));
    assert!(
        d.actions.contains(&Action::Promote { from: 3, to: 9 }),
        "{:?}",
        d.actions
    );
}

#[test]
fn no_primary_starts_promotes_or_stays_without_a_fence_process() {
    let down = |o: &mut Observation, secs: u64| o.fence_down_for = Some(Duration::from_secs(secs));
    let fence_reason = |d: &Decision, stepping_down: bool| matches!(d.reason, Reason::FenceUnavailable { stepping_down: s, .. } if s == stepping_down);
    // The leader's stopped postgres is not started as a primary.
    let mut o = obs(
        "n1",
        Some(cluster(Some(("n1", 7)))),
        valid(),
        PgStatus::Stopped,
    );
    down(&mut o, 0);
    let d = decide(&o);
    assert_eq!(d.actions, vec![]);
    assert!(fence_reason(&d, false), "{:?}", d.reason);
    // A leader's replica is not promoted; its slots are still made.
    let mut o = obs("n1", Some(cluster(Some(("n1", 7)))), valid(), running(true));
    down(&mut o, 0);
    let d = decide(&o);
    assert_eq!(
        d.actions,
        vec![Action::CreateSlots(vec!["n2".into(), "n3".into()])]
    );
    // A replica does not take the key in an election.
    let mut o = obs(
        "n2",
        Some(with_optime(cluster(None), 100)),
        dir_on(1),
        replica_at(1, 100),
    );
    down(&mut o, 0);
    let d = decide(&o);
    assert_eq!(d.actions, vec![]);
    assert!(fence_reason(&d, false), "{:?}", d.reason);
    // A running primary keeps going for less than a lease deadline (the
    // agent restarts the fence meanwhile), then steps down.
    let mut o = obs(
        "n1",
        Some(cluster(Some(("n1", 7)))),
        valid(),
        running(false),
    );
    down(&mut o, 2);
    assert!(decide(&o)
        .actions
        .iter()
        .all(|a| !matches!(a, Action::Stop)));
    down(&mut o, 3);
    let d = decide(&o);
    assert_eq!(d.actions, vec![Action::Stop, Action::ReleaseLeader]);
    assert!(fence_reason(&d, true), "{:?}", d.reason);
    // Fencing never waits on the fence process.
    let mut o = obs("n1", None, valid(), running(false));
    o.last_renewal_sent = Some(o.now - Duration::from_secs(3));
    down(&mut o, 10);
    assert_eq!(decide(&o).actions, vec![Action::Stop]);
}

#[test]
fn a_read_write_start_under_way_stops_once_the_key_is_gone() {
    // Simulator seed 23006: the key expired while a slow primary start
    // ran; it came up read-write beside the new leader.
    for leader in [None, Some(("n2", 9))] {
        let mut o = obs("n1", Some(cluster(leader)), valid(), PgStatus::Stopped);
        o.job = JobStatus::Running(JobKind::Start, Duration::from_secs(1));
        let d = decide(&o);
        assert_eq!(d.actions, vec![Action::Stop], "{leader:?}");
        assert_eq!(d.reason.code(), "start_without_key");
    }
    // A bootstrap or a promotion without the key, whatever the directory.
    for job in [JobKind::Bootstrap, JobKind::Promote] {
        let mut o = obs(
            "n1",
            Some(cluster(Some(("n2", 9)))),
            DataDir::Empty,
            PgStatus::Stopped,
        );
        o.job = JobStatus::Running(job, Duration::from_secs(1));
        assert_eq!(decide(&o).actions, vec![Action::Stop], "{job}");
    }
    // With the key, or starting as a standby, it goes on.
    let mut o = obs(
        "n1",
        Some(cluster(Some(("n1", 7)))),
        valid(),
        PgStatus::Stopped,
    );
    o.job = JobStatus::Running(JobKind::Start, Duration::from_secs(1));
    assert_eq!(decide(&o).actions, vec![]);
    let mut o = obs(
        "n1",
        Some(cluster(Some(("n2", 9)))),
        dir_on(1),
        PgStatus::Stopped,
    );
    o.job = JobStatus::Running(JobKind::Start, Duration::from_secs(1));
    assert_eq!(decide(&o).actions, vec![]);
}

#[test]
fn a_pending_promotion_without_the_key_is_stopped() {
    // Simulator seed 6028: an agent killed after signalling a promotion;
    // its successor found a replica and the key gone.
    let mut o = obs(
        "n2",
        Some(cluster(Some(("n3", 9)))),
        dir_on(1),
        replica_at(1, 100),
    );
    o.promotion_pending = true;
    let d = decide(&o);
    assert_eq!(d.actions, vec![Action::Stop]);
    assert_eq!(d.reason.code(), "promotion_without_key");
    let mut o = obs("n2", Some(cluster(None)), dir_on(1), replica_at(1, 100));
    o.promotion_pending = true;
    assert_eq!(decide(&o).actions, vec![Action::Stop]);
}

/// OpenTenBase: a node whose GTM is out of reach fails every query, leader
/// and replicas alike. Nothing changes for it (the leader keeps its key,
/// nobody takes it), the reason says why, and the lease fence still holds.
#[test]
fn a_node_without_its_gtm_waits_and_says_so() {
    let mut o = obs(
        "n1",
        Some(cluster(Some(("n1", 7)))),
        valid(),
        PgStatus::Unresponsive,
    );
    o.gtm_unreachable = true;
    let d = decide(&o);
    assert_eq!(d.actions, vec![]);
    assert_eq!(d.reason, Reason::GtmUnreachable);
    assert_eq!(d.reason.code(), "gtm_unreachable");
    o.gtm_unreachable = false;
    assert_eq!(decide(&o).reason, Reason::PostgresUnresponsive);

    let mut o = obs(
        "n2",
        Some(cluster(Some(("n1", 7)))),
        dir_on(1),
        PgStatus::Unresponsive,
    );
    o.gtm_unreachable = true;
    assert_eq!(decide(&o).actions, vec![]);

    // Rule 2 first: a leader cut off from etcd is fenced all the same.
    let mut o = obs("n1", None, valid(), PgStatus::Unresponsive);
    o.gtm_unreachable = true;
    o.last_renewal_sent = Some(o.now - Duration::from_secs(3));
    assert_eq!(decide(&o).actions, vec![Action::Stop]);
}

/// A promotion the routing could not verify in time (a GTM that gives no
/// timestamps, seen through a coordinator) is a failed one: the leader
/// stops its instance, keeps the key, and starts it again as primary.
#[test]
fn an_unverified_promotion_is_stopped_and_started_again() {
    let mut o = obs(
        "n1",
        Some(cluster(Some(("n1", 7)))),
        valid(),
        running(false),
    );
    o.promotion_failed =
        Some("via group1:cn1: GTM error, could not obtain global timestamp".into());
    let d = decide(&o);
    assert_eq!(d.actions, vec![Action::Stop]);
    assert_eq!(d.reason.code(), "promotion_not_verified");
    assert!(d
        .reason
        .to_string()
        .contains("could not obtain global timestamp"));
    // Stopped, with the key: started again as the primary.
    o.pg = PgStatus::Stopped;
    o.promotion_failed = None;
    assert_eq!(decide(&o).actions, vec![Action::StartPrimary]);
}
