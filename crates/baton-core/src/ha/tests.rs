//! Exact-action tests of `decide`, one per rule.
use std::collections::BTreeMap;

use std::time::{Duration, Instant};

use super::*;
use crate::cluster::{ClusterView, LeaderKey, LeaseId, Member, StatusKey};
use crate::config::{DynamicConfig, Tags};
use crate::instance::Unusable;
use crate::instance::{DataDir, Running};
use crate::lsn::Lsn;

const SYS: &str = "7301000000000000001";

fn member(port: u16) -> Member {
    Member {
        conn_url: format!("postgres://127.0.0.1:{port}/postgres"),
        api_url: format!("http://127.0.0.1:{}/patroni", port + 1000),
        state: "running".into(),
        role: "replica".into(),
        timeline: Some(1),
        ..Member::default()
    }
}

fn cluster(leader: Option<(&str, i64)>) -> ClusterView {
    let mut members = BTreeMap::new();
    members.insert("n1".to_string(), member(5431));
    members.insert("n2".to_string(), member(5432));
    members.insert("n3".to_string(), member(5433));
    ClusterView {
        initialize: Some(SYS.into()),
        config: Some(DynamicConfig::default()),
        leader: leader.map(|(n, l)| LeaderKey {
            name: n.into(),
            lease: LeaseId(l),
        }),
        members,
        ..ClusterView::default()
    }
}

fn running(in_recovery: bool) -> PgStatus {
    PgStatus::Running(Box::new(Running {
        in_recovery,
        system_id: SYS.into(),
        timeline: Some(1),
        wal_lsn: (!in_recovery).then_some(Lsn(100)),
        receive_lsn: None,
        replay_lsn: None,
        receiver_streaming: in_recovery,
        primary_conninfo: String::new(),
        primary_slot_name: String::new(),
        server_version: 150018,
        slots: BTreeMap::new(),
        replication: vec![],
        history: vec![],
    }))
}

fn obs(me: &str, cluster: Option<ClusterView>, data_dir: DataDir, pg: PgStatus) -> Observation {
    let now = Instant::now();
    Observation {
        me: me.into(),
        now,
        cluster,
        lease: Some(LeaseId(7)),
        last_renewal_sent: Some(now),
        data_dir,
        pg,
        job: JobStatus::Idle,
        config: DynamicConfig::default(),
        tags: Tags::default(),
        peers: vec![],
        reinit_requested: false,
        rebuild_allowed: true,
        restart_requested: false,
        not_streaming_for: None,
        absent_slots: Default::default(),
        now_utc: chrono::DateTime::parse_from_rfc3339("2026-11-23T12:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc),
    }
}

fn valid() -> DataDir {
    DataDir::Valid {
        system_id: SYS.into(),
        standby: false,
        timeline: Some(1),
        history: vec![],
        clean_shutdown: false,
        checkpoint: None,
    }
}

fn dir_on(timeline: u32) -> DataDir {
    DataDir::Valid {
        system_id: SYS.into(),
        standby: true,
        timeline: Some(timeline),
        history: (1..timeline)
            .map(|t| (t, Lsn(u64::from(t) * 1000)))
            .collect(),
        clean_shutdown: false,
        checkpoint: None,
    }
}

fn replica_at(timeline: u32, receive: u64) -> PgStatus {
    let mut pg = running(true);
    if let PgStatus::Running(r) = &mut pg {
        r.timeline = Some(timeline);
        r.receive_lsn = Some(Lsn(receive));
        r.replay_lsn = Some(Lsn(receive));
        r.primary_conninfo = "host=127.0.0.1 port=5431 user=replicator application_name=n2".into();
        r.primary_slot_name = "n2".into();
    }
    pg
}

fn peer(name: &str, timeline: u32, position: u64) -> Peer {
    Peer {
        name: name.into(),
        running: true,
        primary: false,
        timeline,
        position,
        nofailover: false,
        priority: 1,
    }
}

#[test]
fn uninitialized_cluster_with_empty_dir_bootstraps() {
    let mut c = cluster(None);
    c.initialize = None;
    let d = decide(&obs("n1", Some(c), DataDir::Empty, PgStatus::Stopped));
    assert_eq!(d.actions, vec![Action::Bootstrap]);
    assert_eq!(d.reason, Reason::Bootstrapping);
}

#[test]
fn bootstrap_in_progress_elsewhere_waits() {
    let mut c = cluster(None);
    c.initialize = Some(String::new());
    let d = decide(&obs("n2", Some(c), DataDir::Empty, PgStatus::Stopped));
    assert_eq!(d.actions, vec![]);
    assert_eq!(d.reason, Reason::WaitingForBootstrap);
}

#[test]
fn empty_dir_clones_from_leader_once_slot_exists() {
    let mut c = cluster(Some(("n1", 1)));
    let d = decide(&obs(
        "n2",
        Some(c.clone()),
        DataDir::Empty,
        PgStatus::Stopped,
    ));
    assert_eq!(d.actions, vec![]);
    assert_eq!(
        d.reason,
        Reason::WaitingForSlot {
            leader: "n1".into()
        }
    );

    c.status = Some(StatusKey {
        optime: Some(1),
        slots: Some([("n2".to_string(), 1)].into()),
        retain_slots: None,
    });
    let d = decide(&obs("n2", Some(c), DataDir::Empty, PgStatus::Stopped));
    assert_eq!(d.actions, vec![Action::Clone { from: "n1".into() }]);
}

#[test]
fn foreign_data_dir_is_never_touched() {
    let dir = DataDir::Valid {
        system_id: "999".into(),
        standby: false,
        timeline: Some(1),
        history: vec![],
        clean_shutdown: false,
        checkpoint: None,
    };
    for pg in [PgStatus::Stopped, running(false), running(true)] {
        let d = decide(&obs("n2", Some(cluster(Some(("n1", 1)))), dir.clone(), pg));
        assert_eq!(d.actions, vec![]);
        assert!(
            matches!(d.reason, Reason::ForeignCluster { .. }),
            "{:?}",
            d.reason
        );
    }
    let d = decide(&obs(
        "n2",
        Some(cluster(None)),
        DataDir::Unusable(Unusable::NotADirectory("/x".into())),
        PgStatus::Stopped,
    ));
    assert_eq!(d.actions, vec![]);
}

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
fn leader_completes_its_bootstrap() {
    let mut c = cluster(Some(("n1", 7)));
    c.initialize = Some(String::new());
    c.config = None;
    c.members.clear();
    let d = decide(&obs("n1", Some(c), valid(), running(false)));
    assert_eq!(
        d.actions,
        vec![
            Action::PublishInitialize(SYS.into()),
            Action::InitConfig,
            Action::PublishStatus
        ]
    );
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
            Action::Promote
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

fn with_optime(mut c: ClusterView, optime: u64) -> ClusterView {
    c.status = Some(StatusKey {
        optime: Some(optime),
        slots: None,
        retain_slots: None,
    });
    c
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
            Action::Promote
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

fn d_actions(o: &Observation) -> Vec<Action> {
    decide(o).actions
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

fn failover_to(c: &str, at: Option<&str>) -> Option<crate::cluster::FailoverKey> {
    Some(crate::cluster::FailoverKey {
        leader: Some("n1".into()),
        member: Some(c.into()),
        scheduled_at: at.map(str::to_string),
    })
}

fn healthy_replicas(mut c: ClusterView) -> ClusterView {
    for (n, m) in c.members.iter_mut() {
        m.replication_state = Some("streaming".into());
        m.xlog_location = Some(100);
        if n == "n1" {
            m.role = "primary".into();
        }
    }
    c
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
        candidate_problem(&c, "n2", 1 << 20).map(|p| p.code()),
        Some("failover_priority_not_positive")
    );
}

/// After etcd lost its data, the leader publishes `initialize` again, and
/// an empty member waits for it instead of bootstrapping a second cluster
/// next to the one that runs (review: "initialize is never re-published").
#[test]
fn initialize_lost_from_etcd_is_republished_not_rebootstrapped() {
    let mut c = cluster(Some(("n1", 7)));
    c.initialize = None;
    c.members.clear();
    let d = decide(&obs("n1", Some(c.clone()), valid(), running(false)));
    assert!(
        d.actions.contains(&Action::PublishInitialize(SYS.into())),
        "{:?}",
        d.actions
    );
    let d = decide(&obs("n2", Some(c), DataDir::Empty, PgStatus::Stopped));
    assert_eq!(d.actions, vec![]);
    assert_eq!(d.reason.code(), "waiting_for_initialize");
}
