//! Elections: who may take the key, who yields.

use super::*;

/// The old leader died: its member key is gone with its lease, but the
/// status key it left retains its slot, so the new leader makes that slot
/// before promoting (a standby's slot reserves WAL from before the fork).
#[test]
fn a_promoting_member_first_makes_the_slot_the_dead_leader_retained() {
    let mut c = cluster(Some(("n2", 7)));
    c.members.remove("n1");
    c.status = Some(StatusKey {
        retain_slots: Some(vec!["n1".into(), "n2".into(), "n3".into()]),
        ..StatusKey::default()
    });
    let o = obs("n2", Some(c), dir_on(1), replica_at(1, 1000));
    assert_eq!(
        decide(&o).actions,
        vec![
            Action::CreateSlots(vec!["n3".into(), "n1".into()]),
            Action::Promote { from: 1, to: 2 }
        ]
    );
}

#[test]
fn healthiest_replica_takes_the_key_then_promotes() {
    let c = with_optime(cluster(None), 1000);
    let mut o = obs("n2", Some(c), dir_on(1), replica_at(1, 1000));
    o.peers = vec![peer("n3", 1, 900)];
    let d = decide(&o);
    assert_eq!(d.actions, vec![Action::AcquireLeader]);
    assert_eq!(d.reason, Reason::Candidate);

    // Once the key is ours: the others' slots first, then promote.
    let o = obs(
        "n2",
        Some(cluster(Some(("n2", 7)))),
        dir_on(1),
        replica_at(1, 1000),
    );
    assert_eq!(
        decide(&o).actions,
        vec![
            Action::CreateSlots(vec!["n1".into(), "n3".into()]),
            Action::Promote { from: 1, to: 2 }
        ]
    );
}

#[test]
fn replica_yields_to_more_wal_then_to_priority() {
    let c = with_optime(cluster(None), 1000);
    let mut o = obs("n2", Some(c), dir_on(1), replica_at(1, 900));
    o.peers = vec![peer("n3", 1, 1000)];
    let d = decide(&o);
    assert_eq!(d.actions, vec![]);
    assert!(
        matches!(&d.reason, Reason::Yielding { to, .. } if to == "n3"),
        "{:?}",
        d.reason
    );

    // Same WAL: the higher failover_priority wins; equal: both race.
    o.pg = replica_at(1, 1000);
    o.peers = vec![Peer {
        priority: 2,
        ..peer("n3", 1, 1000)
    }];
    assert!(matches!(decide(&o).reason, Reason::Yielding { .. }));
    o.peers = vec![peer("n3", 1, 1000)];
    assert_eq!(decide(&o).actions, vec![Action::AcquireLeader]);

    // Peers tagged nofailover or not running do not count.
    o.peers = vec![
        Peer {
            nofailover: true,
            ..peer("n3", 1, 5000)
        },
        Peer {
            running: false,
            ..peer("n1", 1, 5000)
        },
    ];
    assert_eq!(decide(&o).actions, vec![Action::AcquireLeader]);
}

#[test]
fn nofailover_and_lag_keep_a_replica_out() {
    let c = with_optime(cluster(None), 10 << 20);
    let mut o = obs("n2", Some(c.clone()), dir_on(1), replica_at(1, 5 << 20));
    let d = decide(&o);
    assert_eq!(d.actions, vec![]);
    assert_eq!(
        d.reason.to_string(),
        "no leader; not a failover candidate: lag 5.0 MiB > maximum_lag_on_failover 1.0 MiB"
    );
    o.pg = replica_at(1, 10 << 20);
    o.tags.nofailover = true;
    let d = decide(&o);
    assert_eq!(d.actions, vec![]);
    assert_eq!(d.reason, Reason::NotEligible(Ineligible::TaggedNofailover));
}

#[test]
fn peer_from_patroni_status() {
    let replica = serde_json::json!({
        "state": "running", "role": "replica", "timeline": 2,
        "xlog": {"received_location": 500, "replayed_location": 400},
        "tags": {"nofailover": true, "failover_priority": 3}
    });
    let p = Peer::from_status("n2".into(), &replica);
    assert_eq!(
        (
            p.running,
            p.primary,
            p.timeline,
            p.position,
            p.nofailover,
            p.priority
        ),
        (true, false, 2, 500, true, 3)
    );
    let primary = serde_json::json!({"state": "running", "role": "primary", "timeline": 3, "xlog": {"location": 900}});
    let p = Peer::from_status("n1".into(), &primary);
    assert_eq!(
        (p.primary, p.position, p.priority, p.nofailover),
        (true, 900, 1, false)
    );
    let p = Peer::from_status("n3".into(), &serde_json::json!({"state": "stopped"}));
    assert!(!p.running && p.position == 0);
}

/// Patroni: a `failover_priority` of 0 or below never takes part in the
/// leader race, like `nofailover`; as a peer it does not count, and a
/// switchover to it is refused.
#[test]
fn failover_priority_zero_or_less_means_never() {
    let c = with_optime(cluster(None), 1000);
    for p in [0, -1] {
        let mut o = obs("n2", Some(c.clone()), dir_on(1), replica_at(1, 1000));
        o.tags.failover_priority = Some(p);
        let d = decide(&o);
        assert_eq!(d.actions, vec![], "priority {p}");
        assert_eq!(d.reason.code(), "failover_priority_not_positive");
    }
    // A peer with priority 0 and more WAL does not make us yield.
    let mut o = obs("n2", Some(c), dir_on(1), replica_at(1, 1000));
    o.peers = vec![Peer {
        priority: 0,
        ..peer("n3", 1, 5000)
    }];
    assert_eq!(decide(&o).actions, vec![Action::AcquireLeader]);
    // Its /patroni status says so too.
    let v = serde_json::json!({"state": "running", "role": "replica", "tags": {"failover_priority": 0}});
    assert!(Peer::from_status("n3".into(), &v).nofailover);
    // And it is no switchover candidate.
    let mut c = cluster(Some(("n1", 1)));
    c.members.get_mut("n2").unwrap().tags.failover_priority = Some(0);
    assert_eq!(
        candidate_problem(&c, "n2", 1 << 20, None).map(|p| p.code()),
        Some("failover_priority_not_positive")
    );
}

/// The lag limit holds against what peers answer now, not only the
/// leader's last published optime: a `nofailover` replica far ahead shows
/// how much a lagging candidate would lose, and a missing status key no
/// longer skips the check.
#[test]
fn lag_counts_against_the_freshest_position_known() {
    let mut o = obs("n2", Some(cluster(None)), dir_on(1), replica_at(1, 1 << 20));
    o.peers = vec![Peer {
        nofailover: true,
        ..peer("n3", 1, 5 << 20)
    }];
    let d = decide(&o);
    assert_eq!(d.actions, vec![]);
    assert_eq!(d.reason.code(), "lag_exceeds_limit", "{}", d.reason);
    // Within the limit of every position known: a candidate.
    o.peers[0].position = (1 << 20) + 100;
    assert_eq!(d_actions(&o), vec![Action::AcquireLeader]);
}
