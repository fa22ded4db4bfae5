//! The HA protocol: a pure function from what one agent observed to what it
//! should do, with a typed reason. No I/O happens here; the agent
//! (`agent.rs`) gathers the [`Observation`] and carries out the [`Action`]s,
//! and their outcome shows up in the next observation.
//!
//! Safety rules (DESIGN.md) enforced here:
//! 1. only the holder of the leader key runs read-write: a primary that sees
//!    another leader demotes, and postgres starts as a primary only after the
//!    key is ours;
//! 2. a leader whose last successful renewal was sent more than
//!    `ttl - safety_margin` ago fences itself at once;
//! 3. the leader key is taken by create-if-absent only (`AcquireLeader`);
//! 7. no action here deletes a data directory.

use std::fmt;
use std::time::{Duration, Instant};

use crate::config::DynamicConfig;
use crate::dcs::{ClusterView, LeaseId};
use crate::pg::{slot_name, DataDir, Running};

/// The local postgres process as the agent found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgStatus {
    Stopped,
    /// A postmaster exists but no query succeeded (starting, or hung).
    Unresponsive,
    Running(Box<Running>),
}

/// A long action running as an owned task; the loop keeps ticking meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Bootstrap,
    Clone,
    Start,
    Stop,
    Promote,
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JobKind::Bootstrap => "bootstrap (initdb)",
            JobKind::Clone => "clone (pg_basebackup)",
            JobKind::Start => "start",
            JobKind::Stop => "stop",
            JobKind::Promote => "promote",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobStatus {
    Idle,
    Running(JobKind),
    /// The last job failed; shown until the next job starts.
    Failed(JobKind, String),
}

/// Everything one tick of the loop knows.
#[derive(Debug, Clone)]
pub struct Observation {
    pub me: String,
    pub now: Instant,
    /// `None` when etcd could not be read this tick.
    pub cluster: Option<ClusterView>,
    /// This agent's current lease, if it has one.
    pub lease: Option<LeaseId>,
    /// When the last *successful* lease renewal was sent.
    pub last_renewal_sent: Option<Instant>,
    pub data_dir: DataDir,
    pub pg: PgStatus,
    pub job: JobStatus,
    /// Configuration in force (etcd's when valid, else the last known).
    pub config: DynamicConfig,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Claim `initialize`, and if won, run the bootstrap job.
    Bootstrap,
    /// Store our system identifier in `initialize` (completes bootstrap).
    PublishInitialize(String),
    /// Store the dynamic config if none is stored yet.
    InitConfig,
    /// Create-if-absent on the leader key with our lease.
    AcquireLeader,
    /// The leader key names us but hangs on an old lease of ours.
    AdoptLeader,
    /// Clone the named member with pg_basebackup (job).
    Clone { from: String },
    /// Start postgres as primary (job).
    StartPrimary,
    /// Start postgres as a replica of the named member (job).
    StartReplica { leader: String },
    /// Re-point a running replica at the named member by reload.
    Follow { leader: String },
    /// Promote the running replica (job).
    Promote,
    /// Stop postgres: `immediate` when fencing.
    Stop { immediate: bool },
    /// Create physical slots for these members on the running primary.
    CreateSlots(Vec<String>),
    /// Write the `status` key (leader only).
    PublishStatus,
}

/// Why the agent did what it did; shown in logs, `baton list` and the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    JobRunning(JobKind),
    EtcdUnreachable,
    EtcdUnreachableFencing { since: Duration },
    DataDirUnusable(String),
    ForeignCluster { ours: String, cluster: String },
    Bootstrapping,
    BootstrapFailed(String),
    WaitingForBootstrap,
    WaitingForLeaderToClone,
    WaitingForSlot { leader: String },
    Cloning { from: String },
    CloneFailed(String),
    Starting,
    StartFailed(String),
    PostgresUnresponsive,
    AcquiringLeader,
    AdoptingLeader,
    Promoting,
    Leader,
    LeaseExpiredFencing { since: Duration },
    DemotingForeignLeader { leader: String },
    Following { leader: String, streaming: bool },
    Repointing { leader: String },
    NoLeader,
    LeaderNotReachable { leader: String },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::JobRunning(k) => write!(f, "{k} in progress"),
            Reason::EtcdUnreachable => write!(f, "etcd unreachable; keeping current state"),
            Reason::EtcdUnreachableFencing { since } => write!(
                f,
                "etcd unreachable and lease not renewed for {:.1} s: demoting (fencing)",
                since.as_secs_f64()
            ),
            Reason::DataDirUnusable(why) => write!(f, "data directory unusable: {why}"),
            Reason::ForeignCluster { ours, cluster } => write!(
                f,
                "data directory belongs to system {ours}, cluster is {cluster}: refusing to touch it"
            ),
            Reason::Bootstrapping => write!(f, "cluster not initialized: bootstrapping it"),
            Reason::BootstrapFailed(e) => write!(f, "bootstrap failed: {e}"),
            Reason::WaitingForBootstrap => {
                write!(f, "another member is bootstrapping the cluster; waiting")
            }
            Reason::WaitingForLeaderToClone => {
                write!(f, "no leader to clone from; waiting")
            }
            Reason::WaitingForSlot { leader } => {
                write!(f, "waiting for {leader} to create our replication slot")
            }
            Reason::Cloning { from } => write!(f, "cloning from {from}"),
            Reason::CloneFailed(e) => write!(f, "clone failed, will retry: {e}"),
            Reason::Starting => write!(f, "starting postgres"),
            Reason::StartFailed(e) => write!(f, "postgres failed to start, will retry: {e}"),
            Reason::PostgresUnresponsive => write!(f, "postgres is not answering queries"),
            Reason::AcquiringLeader => write!(f, "no leader: taking the leader key"),
            Reason::AdoptingLeader => write!(f, "re-attaching my leader key to my new lease"),
            Reason::Promoting => write!(f, "I hold the leader key: promoting"),
            Reason::Leader => write!(f, "I am the leader"),
            Reason::LeaseExpiredFencing { since } => write!(
                f,
                "leader lease not renewed for {:.1} s: demoting (fencing)",
                since.as_secs_f64()
            ),
            Reason::DemotingForeignLeader { leader } => {
                write!(f, "running as primary but {leader} holds the leader key: demoting")
            }
            Reason::Following { leader, streaming: true } => {
                write!(f, "streaming from leader {leader}")
            }
            Reason::Following { leader, streaming: false } => {
                write!(f, "following leader {leader}, not streaming yet")
            }
            Reason::Repointing { leader } => write!(f, "re-pointing replication at new leader {leader}"),
            Reason::NoLeader => write!(f, "no leader in the cluster"),
            Reason::LeaderNotReachable { leader } => {
                write!(f, "leader {leader} has not published its address")
            }
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub actions: Vec<Action>,
    pub reason: Reason,
}

fn decision(actions: Vec<Action>, reason: Reason) -> Decision {
    Decision { actions, reason }
}

/// The HA decision for one tick. Pure: same observation, same decision.
pub fn decide(o: &Observation) -> Decision {
    let running = match &o.pg {
        PgStatus::Running(r) => Some(r.as_ref()),
        _ => None,
    };
    let primary = running.is_some_and(|r| !r.in_recovery);

    // Rule 2 comes before everything, etcd reachable or not: a primary whose
    // lease may be about to expire must stop accepting writes now.
    if primary {
        let since = o
            .last_renewal_sent
            .map(|t| o.now.saturating_duration_since(t))
            .unwrap_or(Duration::MAX);
        if since >= o.config.leader_deadline() {
            let reason = if o.cluster.is_none() {
                Reason::EtcdUnreachableFencing { since }
            } else {
                Reason::LeaseExpiredFencing { since }
            };
            return decision(vec![Action::Stop { immediate: true }], reason);
        }
    }

    if let JobStatus::Running(kind) = o.job {
        return decision(vec![], Reason::JobRunning(kind));
    }

    let Some(cluster) = &o.cluster else {
        return decision(vec![], Reason::EtcdUnreachable);
    };

    let leader = cluster.leader_name();
    let i_lead = leader == Some(o.me.as_str());

    let (system_id, standby_dir) = match &o.data_dir {
        DataDir::Unusable(why) => return decision(vec![], Reason::DataDirUnusable(why.clone())),
        DataDir::Empty => return decide_empty(o, cluster),
        DataDir::Valid { system_id, standby } => (system_id, *standby),
    };

    if let Some(init) = cluster.initialize.as_deref() {
        if !init.is_empty() && init != system_id {
            return decision(
                vec![],
                Reason::ForeignCluster {
                    ours: system_id.clone(),
                    cluster: init.to_string(),
                },
            );
        }
    }
    // An interrupted bootstrap of ours: `initialize` claimed but never
    // completed, and only the winner can have a primary data dir by now.
    let my_unfinished_bootstrap =
        cluster.initialize.as_deref() == Some("") && !standby_dir && leader.is_none();

    if i_lead {
        if let (Some(held), Some(mine)) = (cluster.leader.as_ref().map(|l| l.lease), o.lease) {
            if held != mine {
                return decision(vec![Action::AdoptLeader], Reason::AdoptingLeader);
            }
        }
    }

    let Some(run) = running else {
        if matches!(o.pg, PgStatus::Unresponsive) {
            return decision(vec![], Reason::PostgresUnresponsive);
        }
        let failed = |r: Reason| match &o.job {
            JobStatus::Failed(JobKind::Start, e) => Reason::StartFailed(e.clone()),
            _ => r,
        };
        return match leader {
            Some(_) if i_lead => decision(vec![Action::StartPrimary], failed(Reason::Starting)),
            Some(l) => decision(
                vec![Action::StartReplica {
                    leader: l.to_string(),
                }],
                failed(Reason::Starting),
            ),
            None if my_unfinished_bootstrap => {
                decision(vec![Action::AcquireLeader], Reason::AcquiringLeader)
            }
            None => decision(vec![], Reason::NoLeader),
        };
    };

    if i_lead {
        if run.in_recovery {
            return decision(vec![Action::Promote], Reason::Promoting);
        }
        let mut actions = vec![];
        if cluster.initialize.as_deref() == Some("") {
            actions.push(Action::PublishInitialize(run.system_id.clone()));
        }
        if cluster.config.is_none() && cluster.config_error.is_none() {
            actions.push(Action::InitConfig);
        }
        let missing: Vec<String> = cluster
            .members
            .keys()
            .filter(|m| **m != o.me && !run.slots.contains_key(&slot_name(m)))
            .cloned()
            .collect();
        if !missing.is_empty() {
            actions.push(Action::CreateSlots(missing));
        }
        actions.push(Action::PublishStatus);
        return decision(actions, Reason::Leader);
    }

    match leader {
        Some(l) => {
            if !run.in_recovery {
                return decision(
                    vec![Action::Stop { immediate: false }],
                    Reason::DemotingForeignLeader {
                        leader: l.to_string(),
                    },
                );
            }
            let Some(addr) = cluster.members.get(l).and_then(|m| m.pg_address()) else {
                return decision(
                    vec![],
                    Reason::LeaderNotReachable {
                        leader: l.to_string(),
                    },
                );
            };
            let wanted = crate::pg::RunAs::Replica {
                host: addr.0,
                port: addr.1,
                slot: slot_name(&o.me),
            };
            if !follows(run, &wanted) {
                return decision(
                    vec![Action::Follow {
                        leader: l.to_string(),
                    }],
                    Reason::Repointing {
                        leader: l.to_string(),
                    },
                );
            }
            decision(
                vec![],
                Reason::Following {
                    leader: l.to_string(),
                    streaming: run.receiver_streaming,
                },
            )
        }
        None if !run.in_recovery => decision(vec![Action::AcquireLeader], Reason::AcquiringLeader),
        None => decision(vec![], Reason::NoLeader),
    }
}

/// Whether the running replica's settings already point where `wanted` says.
fn follows(run: &Running, wanted: &crate::pg::RunAs) -> bool {
    let crate::pg::RunAs::Replica { host, port, slot } = wanted else {
        return false;
    };
    let ci = &run.primary_conninfo;
    let has = |k: &str, v: &str| {
        ci.split_whitespace()
            .any(|kv| kv == format!("{k}={v}") || kv == format!("{k}='{v}'"))
    };
    has("host", host) && has("port", &port.to_string()) && run.primary_slot_name == *slot
}

fn decide_empty(o: &Observation, cluster: &ClusterView) -> Decision {
    if matches!(o.job, JobStatus::Failed(JobKind::Bootstrap, _)) && cluster.initialize.is_some() {
        if let JobStatus::Failed(_, e) = &o.job {
            return decision(vec![], Reason::BootstrapFailed(e.clone()));
        }
    }
    match (cluster.initialize.as_deref(), cluster.leader_name()) {
        (None, _) => decision(vec![Action::Bootstrap], Reason::Bootstrapping),
        (Some(_), Some(l)) if l != o.me => {
            let slot = slot_name(&o.me);
            let slot_ready = cluster
                .status
                .as_ref()
                .and_then(|s| s.slots.as_ref())
                .is_some_and(|s| s.contains_key(&slot));
            if !slot_ready {
                return decision(
                    vec![],
                    Reason::WaitingForSlot {
                        leader: l.to_string(),
                    },
                );
            }
            let reason = match &o.job {
                JobStatus::Failed(JobKind::Clone, e) => Reason::CloneFailed(e.clone()),
                _ => Reason::Cloning {
                    from: l.to_string(),
                },
            };
            decision(
                vec![Action::Clone {
                    from: l.to_string(),
                }],
                reason,
            )
        }
        (Some(""), None) => decision(vec![], Reason::WaitingForBootstrap),
        _ => decision(vec![], Reason::WaitingForLeaderToClone),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::dcs::{LeaderKey, Member, StatusKey};
    use crate::lsn::Lsn;

    const SYS: &str = "7301000000000000001";

    fn member(port: u16) -> Member {
        Member {
            conn_url: format!("postgres://127.0.0.1:{port}/postgres"),
            api_url: format!("http://127.0.0.1:{}/patroni", port + 1000),
            state: "running".into(),
            role: "replica".into(),
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
        }
    }

    fn valid() -> DataDir {
        DataDir::Valid {
            system_id: SYS.into(),
            standby: false,
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
            DataDir::Unusable("x".into()),
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
        // No leader, valid standby dir: wait rather than start as primary.
        let dir = DataDir::Valid {
            system_id: SYS.into(),
            standby: true,
        };
        let d = decide(&obs("n2", Some(cluster(None)), dir, PgStatus::Stopped));
        assert_eq!(d.actions, vec![]);
        assert_eq!(d.reason, Reason::NoLeader);
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
            r.primary_conninfo =
                "host=127.0.0.1 port=5431 user=replicator application_name=n2".into();
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
    fn primary_that_is_not_leader_demotes() {
        let d = decide(&obs(
            "n2",
            Some(cluster(Some(("n1", 1)))),
            valid(),
            running(false),
        ));
        assert_eq!(d.actions, vec![Action::Stop { immediate: false }]);
    }

    #[test]
    fn leader_holding_key_promotes_replica() {
        let d = decide(&obs(
            "n1",
            Some(cluster(Some(("n1", 7)))),
            valid(),
            running(true),
        ));
        assert_eq!(d.actions, vec![Action::Promote]);
    }

    #[test]
    fn leader_fences_when_renewal_is_overdue() {
        let mut o = obs("n1", None, valid(), running(false));
        o.last_renewal_sent = Some(o.now - Duration::from_secs(3));
        let d = decide(&o);
        assert_eq!(d.actions, vec![Action::Stop { immediate: true }]);
        assert!(matches!(d.reason, Reason::EtcdUnreachableFencing { .. }));

        // Just inside the deadline (ttl 4 - margin 1 = 3 s): keep running.
        o.last_renewal_sent = Some(o.now - Duration::from_millis(2900));
        let d = decide(&o);
        assert_eq!(d.actions, vec![]);
        assert_eq!(d.reason, Reason::EtcdUnreachable);

        // Overdue and the key is gone: fence too, even mid-job.
        let mut o = obs("n1", Some(cluster(None)), valid(), running(false));
        o.last_renewal_sent = Some(o.now - Duration::from_secs(5));
        o.job = JobStatus::Running(JobKind::Start);
        assert_eq!(decide(&o).actions, vec![Action::Stop { immediate: true }]);
    }

    #[test]
    fn job_in_progress_holds_other_actions() {
        let mut o = obs(
            "n2",
            Some(cluster(Some(("n1", 1)))),
            DataDir::Empty,
            PgStatus::Stopped,
        );
        o.job = JobStatus::Running(JobKind::Clone);
        let d = decide(&o);
        assert_eq!(d.actions, vec![]);
        assert_eq!(d.reason, Reason::JobRunning(JobKind::Clone));
    }
}
