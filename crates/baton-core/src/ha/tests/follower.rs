//! Replicas and lineage: re-pointing, rewinds, the prefix rule.

use super::*;

#[test]
fn replica_repoints_then_follows() {
    let c = cluster(Some(("n1", 1)));
    let d = decide(&obs("n2", Some(c.clone()), valid(), running(true)));
    assert_eq!(
        d.actions,
        vec![Action::Follow {
            leader: "n1".into()
        }]
    );
    let mut pg = running(true);
    if let PgStatus::Running(r) = &mut pg {
        r.primary_conninfo = "host=127.0.0.1 port=5431 user=replicator application_name=n2".into();
        r.primary_slot_name = "n2".into();
    }
    let d = decide(&obs("n2", Some(c), valid(), pg));
    assert_eq!(d.actions, vec![]);
    assert_eq!(
        d.reason,
        Reason::Following {
            leader: "n1".into(),
            streaming: true
        }
    );
}

#[test]
fn old_primary_on_older_timeline_rewinds_before_following() {
    let mut c = cluster(Some(("n2", 1)));
    c.members.get_mut("n2").unwrap().timeline = Some(2);
    let mut o = obs("n1", Some(c), dir_on(1), PgStatus::Stopped);
    let d = decide(&o);
    assert_eq!(d.actions, vec![Action::Rewind { from: "n2".into() }]);

    // pg_rewind done ("no rewind required" leaves the timeline): start.
    o.job = JobStatus::Done(JobKind::Rewind);
    assert_eq!(
        d_actions(&o),
        vec![Action::StartReplica {
            leader: "n2".into()
        }]
    );

    // pg_rewind failed: rebuild when allowed, else need repair.
    o.job = JobStatus::Failed(JobKind::Rewind, "WAL missing".into(), false);
    assert_eq!(d_actions(&o), vec![Action::Rebuild { from: "n2".into() }]);
    // The leader unreachable is no reason to rebuild: retry the rewind.
    o.job = JobStatus::Failed(JobKind::Rewind, "connection refused".into(), true);
    assert_eq!(d_actions(&o), vec![Action::Rewind { from: "n2".into() }]);
    o.job = JobStatus::Failed(JobKind::Rewind, "WAL missing".into(), false);
    o.rebuild_allowed = false;
    let d = decide(&o);
    assert_eq!(d.actions, vec![]);
    assert!(d.reason.needs_repair());

    // Same timeline as the leader, same history: just start.
    o.data_dir = dir_on(2);
    o.job = JobStatus::Idle;
    let c = o.cluster.as_mut().unwrap();
    c.history = Some(serde_json::json!([[1, 1000, "x", null, "n2"]]));
    assert_eq!(
        d_actions(&o),
        vec![Action::StartReplica {
            leader: "n2".into()
        }]
    );

    // Same timeline number, another switch point: another lineage.
    o.cluster.as_mut().unwrap().history = Some(serde_json::json!([[1, 1500, "x", null, "n2"]]));
    assert_eq!(d_actions(&o), vec![Action::Rewind { from: "n2".into() }]);
}

#[test]
fn replica_past_the_fork_point_stops_to_rewind() {
    let mut c = cluster(Some(("n1", 1)));
    c.members.get_mut("n1").unwrap().timeline = Some(2);
    c.history = Some(serde_json::json!([[
        1,
        1000,
        "no recovery target specified",
        null,
        "n1"
    ]]));
    let mut o = obs("n2", Some(c.clone()), dir_on(1), replica_at(1, 1200));
    // Not yet: right after re-pointing, the reported timeline may lag.
    o.not_streaming_for = Some(Duration::from_secs(1));
    assert_eq!(decide(&o).actions, vec![]);
    o.not_streaming_for = Some(Duration::from_secs(4));
    let d = decide(&o);
    assert_eq!(d.actions, vec![Action::Stop]);
    assert_eq!(
        d.reason,
        Reason::Diverged {
            leader: "n1".into()
        }
    );
    // Behind the fork point: it can simply follow the new timeline.
    let o = obs("n2", Some(c), dir_on(1), replica_at(1, 900));
    assert_eq!(decide(&o).actions, vec![]);
}

/// Replay still on timeline 1 short of the fork while the WAL received is
/// already the leader's timeline 2: the instance's own replay position
/// (IDENTIFY_SYSTEM) is what counts, not the receive position.
#[test]
fn a_replica_replaying_short_of_the_fork_is_not_diverged_by_what_it_received() {
    let mut c = cluster(Some(("n1", 1)));
    c.members.get_mut("n1").unwrap().timeline = Some(2);
    c.history = Some(serde_json::json!([[1, 1000, "x", null, "n1"]]));
    let mut pg = replica_at(1, 1200);
    if let PgStatus::Running(r) = &mut pg {
        r.replay_lsn = Some(Lsn(950));
        r.timeline_lsn = Some(Lsn(950));
    }
    let mut o = obs("n2", Some(c), dir_on(1), pg);
    o.not_streaming_for = Some(Duration::from_secs(4));
    assert_eq!(decide(&o).actions, vec![]);
    // Replayed past the fork on timeline 1: that WAL is not the leader's.
    if let PgStatus::Running(r) = &mut o.pg {
        r.timeline_lsn = Some(Lsn(1100));
    }
    assert_eq!(decide(&o).actions, vec![Action::Stop]);
}

/// A promotion onto a reserved timeline skips numbers: a replica left on
/// timeline 2 when the leader went 1 -> 3 is on no timeline of the leader's
/// line, whatever its position, and rewinds once it has failed to stream.
#[test]
fn replica_on_a_skipped_timeline_stops_to_rewind() {
    let mut c = cluster(Some(("n1", 1)));
    c.members.get_mut("n1").unwrap().timeline = Some(3);
    c.history = Some(serde_json::json!([[1, 1000, "promoted", null, "n1"]]));
    let mut o = obs("n2", Some(c), dir_on(2), replica_at(2, 900));
    o.not_streaming_for = Some(Duration::from_secs(1));
    assert_eq!(decide(&o).actions, vec![]);
    o.not_streaming_for = Some(Duration::from_secs(4));
    let d = decide(&o);
    assert_eq!(d.actions, vec![Action::Stop]);
    assert_eq!(d.reason.code(), "diverged");
}

#[test]
fn replica_with_another_past_on_the_same_timeline_number_stops() {
    let mut c = cluster(Some(("n1", 1)));
    c.members.get_mut("n1").unwrap().timeline = Some(2);
    c.history = Some(serde_json::json!([[1, 1000, "x", null, "n1"]]));
    let mut pg = replica_at(2, 1200);
    if let PgStatus::Running(r) = &mut pg {
        r.history = vec![(1, Lsn(900))];
    }
    let d = decide(&obs("n2", Some(c.clone()), dir_on(2), pg.clone()));
    assert_eq!(d.actions, vec![Action::Stop]);
    if let PgStatus::Running(r) = &mut pg {
        r.history = vec![(1, Lsn(1000))];
    }
    assert_eq!(decide(&obs("n2", Some(c), dir_on(2), pg)).actions, vec![]);
}

#[test]
fn lineage_comparison() {
    let theirs = [(1, 100), (2, 200)];
    assert_eq!(
        lineage_agrees(3, &[(1, Lsn(100)), (2, Lsn(200))], &theirs),
        Some(true)
    );
    assert_eq!(
        lineage_agrees(3, &[(1, Lsn(100)), (2, Lsn(250))], &theirs),
        Some(false)
    );
    assert_eq!(lineage_agrees(1, &[], &[]), Some(true));
    assert_eq!(lineage_agrees(2, &[(1, Lsn(100))], &[]), None);
}

#[test]
fn cleanly_stopped_old_leader_follows_without_rewind() {
    let mut c = cluster(Some(("n2", 1)));
    c.members.get_mut("n2").unwrap().timeline = Some(2);
    c.history = Some(serde_json::json!([[1, 5000, "x", null, "n2"]]));
    let dir = |ckpt: u64, clean: bool| DataDir::Valid {
        system_id: SYS.into(),
        standby: false,
        timeline: Some(1),
        history: vec![],
        clean_shutdown: clean,
        checkpoint: Some(Lsn(ckpt)),
    };
    let o = obs("n1", Some(c.clone()), dir(4900, true), PgStatus::Stopped);
    assert_eq!(
        d_actions(&o),
        vec![Action::StartReplica {
            leader: "n2".into()
        }]
    );
    // Checkpoint at or past the switch, or not a clean shutdown: rewind.
    let o = obs("n1", Some(c.clone()), dir(5000, true), PgStatus::Stopped);
    assert_eq!(d_actions(&o), vec![Action::Rewind { from: "n2".into() }]);
    let o = obs("n1", Some(c), dir(4900, false), PgStatus::Stopped);
    assert_eq!(d_actions(&o), vec![Action::Rewind { from: "n2".into() }]);
}

/// Right after a switchover the new leader's member key still shows its
/// old timeline for up to a tick, while a replica that streams from it is
/// already on the new one. Streaming from the leader proves its WAL is the
/// leader's: that is no divergence. (Found by the switchover test: the old
/// leader, restarted as a replica, stopped to rewind for nothing.)
#[test]
fn a_replica_streaming_from_the_leader_is_not_ahead_of_its_stale_timeline() {
    let c = cluster(Some(("n1", 1)));
    assert_eq!(c.members["n1"].timeline, Some(1));
    let o = obs("n2", Some(c.clone()), dir_on(2), replica_at(2, 1200));
    let d = decide(&o);
    assert_eq!(d.actions, vec![], "{:?}", d.reason);
    assert_eq!(d.reason.code(), "streaming");
    // Not streaming from it: a replica on a timeline the leader never had
    // has diverged.
    let mut pg = replica_at(2, 1200);
    if let PgStatus::Running(r) = &mut pg {
        r.receiver_streaming = false;
    }
    let d = decide(&obs("n2", Some(c), dir_on(2), pg));
    assert_eq!(d.actions, vec![Action::Stop]);
    assert_eq!(d.reason.code(), "diverged");
}

#[test]
fn a_half_copied_data_directory_never_starts_and_is_rebuilt_from_the_leader() {
    // No leader: it does not start read-only to stand in an election.
    let mut o = obs("n2", Some(cluster(None)), dir_on(1), PgStatus::Stopped);
    o.rewind_incomplete = true;
    let d = decide(&o);
    assert_eq!(d.actions, vec![]);
    assert_eq!(
        d.reason,
        Reason::RewindIncomplete {
            from: None,
            rebuilding: false
        }
    );
    assert!(d.reason.needs_repair());
    // A leader: rebuild from it, never a start.
    o.cluster = Some(cluster(Some(("n1", 3))));
    let d = decide(&o);
    assert_eq!(d.actions, vec![Action::Rebuild { from: "n1".into() }]);
    // Rebuild not allowed: it waits for the operator.
    o.rebuild_allowed = false;
    let d = decide(&o);
    assert_eq!(d.actions, vec![]);
    assert_eq!(d.reason.code(), "rewind_incomplete");
}

/// A system without timelines Baton can read (openGauss) judges lineage
/// itself: a standby it says needs repair is stopped and built from the
/// leader, and only then started again.
#[test]
fn a_replica_the_system_says_needs_repair_is_stopped_then_built() {
    let c = cluster(Some(("n1", 1)));
    let no_timeline = DataDir::Valid {
        system_id: SYS.into(),
        standby: true,
        timeline: None,
        history: vec![],
        clean_shutdown: false,
        checkpoint: None,
    };
    let mut pg = replica_at(1, 500);
    if let PgStatus::Running(r) = &mut pg {
        r.timeline = None;
        r.receiver_streaming = false;
        r.needs_repair = Some("WAL segment removed".into());
    }
    let d = decide(&obs("n2", Some(c.clone()), no_timeline.clone(), pg));
    assert_eq!(d.actions, vec![Action::Stop]);
    assert_eq!(d.reason.code(), "instance_needs_repair");
    assert!(d.reason.to_string().contains("WAL segment removed"));

    // Stopped, with what the agent kept of it: built, not started as is.
    let mut o = obs("n2", Some(c), no_timeline, PgStatus::Stopped);
    o.instance_needs_repair = Some("WAL segment removed".into());
    let d = decide(&o);
    assert_eq!(d.actions, vec![Action::Rewind { from: "n1".into() }]);
    assert_eq!(d.reason.code(), "repairing");
    // The build done: started as a standby of the leader.
    o.job = JobStatus::Done(JobKind::Rewind);
    assert_eq!(
        decide(&o).actions,
        vec![Action::StartReplica {
            leader: "n1".into()
        }]
    );
    // A failed build falls back to a rebuild, as a failed pg_rewind does.
    o.job = JobStatus::Failed(JobKind::Rewind, "gs_ctl build failed".into(), false);
    assert_eq!(
        decide(&o).actions,
        vec![Action::Rebuild { from: "n1".into() }]
    );
    // Without the verdict, a member with no timelines starts as a standby
    // (the system refuses to stream what diverged, and says so).
    o.job = JobStatus::Idle;
    o.instance_needs_repair = None;
    assert_eq!(
        decide(&o).actions,
        vec![Action::StartReplica {
            leader: "n1".into()
        }]
    );
}
