//! Exact-action tests of `decide`, one per rule, by concern; the fixtures
//! live here.

mod bootstrap;
mod dead_leader;
mod election;
mod failsafe;
mod follower;
mod leader;
mod operator;
mod steady;
mod sync;
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
        receiver_streaming: in_recovery,
        server_version: 150018,
        ..Running::default()
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
        bootstrap_allowed: true,
        restart_requested: false,
        not_streaming_for: None,
        staged_initdb: None,
        fence_down_for: None,
        rewind_incomplete: false,
        promotion_pending: false,
        absent_slots: Default::default(),
        sync_applied_at: None,
        failsafe_confirmed: None,
        failsafe_heard: None,
        leader_refused: None,
        gtm_unreachable: false,
        standby_needs_upstream: false,
        instance_needs_repair: None,
        promotion_failed: None,
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

fn with_optime(mut c: ClusterView, optime: u64) -> ClusterView {
    c.status = Some(StatusKey {
        optime: Some(optime),
        slots: None,
        retain_slots: None,
        baton_leader: None,
    });
    c
}

fn d_actions(o: &Observation) -> Vec<Action> {
    decide(o).actions
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
