//! Operator requests: reinit, switchover, pause, manual failover.

use super::*;

#[test]
fn reinit_rebuilds_a_replica_but_never_the_leader() {
    let mut o = obs(
        "n2",
        Some(cluster(Some(("n1", 1)))),
        dir_on(1),
        replica_at(1, 10),
    );
    o.reinit_requested = true;
    assert_eq!(d_actions(&o), vec![Action::Rebuild { from: "n1".into() }]);
    let mut o = obs(
        "n1",
        Some(cluster(Some(("n1", 7)))),
        valid(),
        running(false),
    );
    o.reinit_requested = true;
    assert!(!d_actions(&o)
        .iter()
        .any(|a| matches!(a, Action::Rebuild { .. })));
}

#[test]
fn leader_starts_a_switchover_to_a_healthy_candidate() {
    let mut c = healthy_replicas(cluster(Some(("n1", 7))));
    c.failover = failover_to("n2", None);
    let d = decide(&obs("n1", Some(c.clone()), valid(), running(false)));
    assert!(
        d.actions.contains(&Action::Switchover {
            candidate: "n2".into()
        }),
        "{:?}",
        d.actions
    );
    assert_eq!(d.reason, Reason::SwitchingOver { to: "n2".into() });

    // Scheduled in the future: wait; in the past: go.
    c.failover = failover_to("n2", Some("2026-11-23T13:00:01+01:00"));
    let d = decide(&obs("n1", Some(c.clone()), valid(), running(false)));
    assert!(
        matches!(d.reason, Reason::SwitchoverScheduled { .. }),
        "{:?}",
        d.reason
    );
    assert!(!d
        .actions
        .iter()
        .any(|a| matches!(a, Action::Switchover { .. })));
    c.failover = failover_to("n2", Some("2026-11-23T12:59:59+01:00"));
    let d = decide(&obs("n1", Some(c.clone()), valid(), running(false)));
    assert!(d.actions.contains(&Action::Switchover {
        candidate: "n2".into()
    }));

    // An unhealthy candidate: the request is dropped with the reason.
    c.members.get_mut("n2").unwrap().replication_state = None;
    c.failover = failover_to("n2", None);
    let d = decide(&obs("n1", Some(c), valid(), running(false)));
    assert!(d.actions.contains(&Action::CancelSwitchover));
    assert_eq!(
        d.reason,
        Reason::SwitchoverRefused(CandidateProblem::NotStreaming("n2".into()))
    );
}

#[test]
fn pause_holds_automatic_actions_but_never_fencing() {
    let mut c = cluster(Some(("n1", 7)));
    c.config.as_mut().unwrap().pause = true;
    let d = decide(&obs("n1", Some(c.clone()), valid(), PgStatus::Stopped));
    assert_eq!(d.actions, vec![]);
    assert!(matches!(d.reason, Reason::Paused { .. }));
    let mut o = obs("n1", Some(c.clone()), valid(), running(false));
    o.last_renewal_sent = Some(o.now - Duration::from_secs(4));
    assert_eq!(decide(&o).actions, vec![Action::Stop]);
    // A manual failover still goes through.
    let mut c = with_optime(cluster(None), 100);
    c.config.as_mut().unwrap().pause = true;
    c.failover = Some(crate::cluster::FailoverKey {
        leader: None,
        member: Some("n2".into()),
        scheduled_at: None,
    });
    let o = obs("n2", Some(c), dir_on(1), replica_at(1, 100));
    assert_eq!(d_actions(&o), vec![Action::AcquireLeader]);
}

#[test]
fn manual_failover_names_the_only_candidate() {
    let mut c = with_optime(cluster(None), 10 << 20);
    c.failover = Some(crate::cluster::FailoverKey {
        leader: None,
        member: Some("n3".into()),
        scheduled_at: None,
    });
    // n2 is ahead but not named: it stays out.
    let mut o = obs("n2", Some(c.clone()), dir_on(1), replica_at(1, 10 << 20));
    o.peers = vec![peer("n3", 1, 10)];
    assert_eq!(d_actions(&o), vec![]);
    // n3 lags far beyond the limit but was named by an operator.
    let o = obs("n3", Some(c), dir_on(1), replica_at(1, 10));
    assert_eq!(d_actions(&o), vec![Action::AcquireLeader]);
}

/// Member keys are written a tick apart: right after a WAL segment switch
/// the leader's published position is a segment ahead of a replica's key
/// that has already caught up. The leader's own `pg_stat_replication`, read
/// with its WAL position, is what decides; the keys only when it has no row.
#[test]
fn switchover_lag_is_measured_on_the_leader_not_from_stale_keys() {
    let segment = 16 << 20;
    let mut c = with_optime(healthy_replicas(cluster(Some(("n1", 7)))), 100 + segment);
    c.failover = failover_to("n2", None);
    let mut leader = running(false);
    if let PgStatus::Running(r) = &mut leader {
        r.wal_lsn = Some(Lsn(100 + segment));
        r.replication.push(crate::instance::ReplicationRow {
            application_name: "n2".into(),
            client_addr: None,
            state: "streaming".into(),
            sent_lsn: Some(Lsn(100 + segment)),
            flush_lsn: Some(Lsn(100 + segment)),
            replay_lsn: Some(Lsn(100 + segment)),
            sync_state: "async".into(),
            replay_lag_ms: None,
        });
    }
    let d = decide(&obs("n1", Some(c.clone()), valid(), leader.clone()));
    assert_eq!(d.reason, Reason::SwitchingOver { to: "n2".into() });
    let PgStatus::Running(live) = &leader else {
        unreachable!()
    };
    assert_eq!(candidate_problem(&c, "n2", 1 << 20, Some(live)), None);

    // Really behind on the leader's own view: refused.
    let mut behind = live.clone();
    behind.replication[0].flush_lsn = Some(Lsn(100));
    behind.replication[0].replay_lsn = Some(Lsn(100));
    assert_eq!(
        candidate_problem(&c, "n2", 1 << 20, Some(&behind)).map(|p| p.code()),
        Some("lag_exceeds_limit")
    );
    // A reading a tick older than n2's key, which shows it caught up
    // since (the REST API checks on the leader's last reading): accepted.
    let mut caught_up = c.clone();
    caught_up.members.get_mut("n2").unwrap().xlog_location = Some(100 + segment);
    assert_eq!(
        candidate_problem(&caught_up, "n2", 1 << 20, Some(&behind)),
        None
    );
    // Without a row (another node's API), the keys decide.
    assert_eq!(
        candidate_problem(&c, "n2", 1 << 20, None).map(|p| p.code()),
        Some("lag_exceeds_limit")
    );
}
