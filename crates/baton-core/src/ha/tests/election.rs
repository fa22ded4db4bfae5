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

/// A stopped GTM (no read-only mode: a standby needs a live active) with
/// no leader: the key is only for the member whose state is the newest.
fn gtm_cold(me: &str, last: Option<&str>) -> Observation {
    let mut c = cluster(None);
    c.status = Some(StatusKey {
        baton_leader: last.map(str::to_string),
        ..StatusKey::default()
    });
    let mut o = obs(me, Some(c), dir_on(1), PgStatus::Stopped);
    o.standby_needs_upstream = true;
    o
}

#[test]
fn a_gtm_group_with_no_leader_restarts_from_the_last_leader_only() {
    // Never started read-only: there is no such thing for a GTM.
    let d = decide(&gtm_cold("n1", Some("n1")));
    assert_eq!(d.actions, vec![Action::AcquireLeader]);
    assert_eq!(d.reason, Reason::ColdStartAsLastLeader);

    let d = decide(&gtm_cold("n2", Some("n1")));
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert_eq!(
        d.reason,
        Reason::WaitingForLastLeader {
            last: Some("n1".into())
        }
    );
    assert!(d.reason.to_string().contains("baton failover --candidate"));

    // Not recorded, in a cluster that exists: nobody guesses.
    let d = decide(&gtm_cold("n2", None));
    assert!(d.actions.is_empty());
    assert_eq!(d.reason.code(), "waiting_for_last_leader");

    // A manual failover names who may take it.
    let mut o = gtm_cold("n2", Some("n1"));
    o.cluster.as_mut().unwrap().failover = Some(crate::cluster::FailoverKey {
        member: Some("n2".into()),
        ..Default::default()
    });
    assert_eq!(d_actions(&o), vec![Action::AcquireLeader]);
    let mut o = gtm_cold("n1", Some("n1"));
    o.cluster.as_mut().unwrap().failover = Some(crate::cluster::FailoverKey {
        member: Some("n2".into()),
        ..Default::default()
    });
    assert!(d_actions(&o).is_empty(), "only the member named");
}

#[test]
fn a_stopped_gtm_never_races_a_running_standby() {
    // The standby followed the last leader to its end: the running path
    // elects it; the old leader, back and stopped, waits.
    let mut o = gtm_cold("n1", Some("n1"));
    o.peers = vec![peer("n2", 1, 500)];
    let d = decide(&o);
    assert!(d.actions.is_empty(), "{:?}", d.actions);
    assert_eq!(
        d.reason,
        Reason::Yielding {
            to: "n2".into(),
            why: YieldCause::PeerRunning
        }
    );
    // A peer that does not run does not hold it back.
    o.peers[0].running = false;
    assert_eq!(d_actions(&o), vec![Action::AcquireLeader]);
}

#[test]
fn the_first_gtm_adoption_takes_the_key() {
    // No `initialize` yet: no cluster, no last leader; whoever has a
    // working directory adopts it (the other clones, being empty).
    let mut o = gtm_cold("n1", None);
    let c = o.cluster.as_mut().unwrap();
    c.initialize = None;
    c.status = None;
    assert_eq!(d_actions(&o), vec![Action::AcquireLeader]);
    // A PostgreSQL member in the same spot starts read-only instead.
    o.standby_needs_upstream = false;
    assert_eq!(d_actions(&o), vec![Action::StartReadOnly]);
}

#[test]
fn the_leader_status_key_names_its_writer() {
    // What the cold start relies on outlives the leader key (not leased)
    // and stays Patroni-compatible (an extra field).
    let json = serde_json::to_string(&StatusKey {
        optime: Some(5),
        baton_leader: Some("n1".into()),
        ..StatusKey::default()
    })
    .unwrap();
    assert!(json.contains("\"baton_leader\":\"n1\""), "{json}");
    let back: StatusKey =
        serde_json::from_str(r#"{"optime":5,"slots":{},"retain_slots":[]}"#).unwrap();
    assert_eq!(back.baton_leader, None);
}
