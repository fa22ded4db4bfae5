//! Bootstrap, cloning, foreign data, `initialize`.

use super::*;

#[test]
fn uninitialized_cluster_with_empty_dir_bootstraps() {
    let mut c = cluster(None);
    c.initialize = None;
    let d = decide(&obs("n1", Some(c), DataDir::Empty, PgStatus::Stopped));
    assert_eq!(d.actions, vec![Action::Bootstrap]);
    assert_eq!(d.reason, Reason::Bootstrapping);
}

#[test]
fn a_member_that_may_not_initdb_waits_for_one_with_data() {
    let mut c = cluster(None);
    c.initialize = None;
    let mut o = obs("n1", Some(c), DataDir::Empty, PgStatus::Stopped);
    o.bootstrap_allowed = false;
    let d = decide(&o);
    assert_eq!(d.actions, vec![], "no claim on initialize, no leader key");
    assert_eq!(d.reason, Reason::BootstrapNotAllowed);
    assert_eq!(d.reason.code(), "bootstrap_not_allowed");
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
        baton_leader: None,
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

/// Our bootstrap failed (its fresh data directory moved aside) while another
/// member's cluster got initialized: the empty member clones that one.
#[test]
fn failed_bootstrap_clones_the_cluster_that_won() {
    let mut c = cluster(Some(("n3", 9)));
    c.status = Some(crate::cluster::StatusKey {
        optime: Some(100),
        slots: Some([("n1".to_string(), 0)].into()),
        retain_slots: None,
        baton_leader: None,
    });
    let mut o = obs("n1", Some(c.clone()), DataDir::Empty, PgStatus::Stopped);
    o.job = JobStatus::Failed(JobKind::Bootstrap, "publishing failed".into(), false);
    assert_eq!(
        decide(&o).actions,
        vec![Action::Clone { from: "n3".into() }]
    );
    // While a claim stands, the failure is shown and nothing retried.
    c.initialize = Some(String::new());
    c.leader = None;
    let mut o = obs("n1", Some(c), DataDir::Empty, PgStatus::Stopped);
    o.job = JobStatus::Failed(JobKind::Bootstrap, "initdb failed".into(), false);
    let d = decide(&o);
    assert_eq!(d.actions, vec![]);
    assert_eq!(d.reason.code(), "bootstrap_failed");
}

/// The bootstrapping member published its identifier and died before it
/// took its initdb into place: back with an empty data directory, it finds
/// the staged initdb etcd names and adopts it instead of waiting forever.
#[test]
fn staged_initdb_etcd_names_is_adopted() {
    let mut c = cluster(None);
    c.initialize = Some("7301".into());
    let mut o = obs("n1", Some(c), DataDir::Empty, PgStatus::Stopped);
    o.staged_initdb = Some("7301".into());
    assert_eq!(decide(&o).actions, vec![Action::AdoptInitdb]);
    // Another cluster's identifier: not ours to adopt.
    o.staged_initdb = Some("7302".into());
    assert_ne!(decide(&o).actions, vec![Action::AdoptInitdb]);
}

/// A member that holds the leader key with an empty data directory and no
/// bootstrap running (a bootstrap that ended without its data, its clean-up
/// lost to an etcd timeout) gives the key and any claim up: held, it kept
/// both other members waiting for slots forever (`bench/scale`, 1,000
/// clusters).
#[test]
fn the_leader_key_with_nothing_to_lead_is_given_up() {
    for (init, job) in [
        (Some("7301"), JobStatus::Idle),
        (
            Some(""),
            JobStatus::Failed(JobKind::Bootstrap, "timeout".into(), false),
        ),
        (None, JobStatus::Done(JobKind::Bootstrap)),
    ] {
        let mut c = cluster(Some(("n1", 7)));
        c.initialize = init.map(str::to_string);
        let mut o = obs("n1", Some(c), DataDir::Empty, PgStatus::Stopped);
        o.job = job.clone();
        let d = decide(&o);
        assert_eq!(
            d.actions,
            vec![Action::AbandonBootstrap],
            "{init:?} {job:?}"
        );
        assert_eq!(d.reason.code(), "leader_without_data");
    }
    // While the bootstrap runs, nothing is given up.
    let mut c = cluster(Some(("n1", 7)));
    c.initialize = Some(String::new());
    let mut o = obs("n1", Some(c), DataDir::Empty, PgStatus::Stopped);
    o.job = JobStatus::Running(JobKind::Bootstrap, Duration::from_secs(1));
    assert_eq!(decide(&o).actions, vec![]);
    // A staged initdb etcd names is taken into place instead.
    let mut c = cluster(Some(("n1", 7)));
    c.initialize = Some("7301".into());
    let mut o = obs("n1", Some(c), DataDir::Empty, PgStatus::Stopped);
    o.staged_initdb = Some("7301".into());
    assert_eq!(decide(&o).actions, vec![Action::AdoptInitdb]);
}

/// A bootstrap claim on our own lease with no bootstrap running (the
/// request that took it timed out after it landed, so no job followed) is
/// given up; everyone, the claimer included, waited for it forever
/// (`bench/scale`, 1,000 clusters). Another member's claim is waited for.
#[test]
fn our_own_orphaned_bootstrap_claim_is_given_up() {
    let mut c = cluster(None);
    c.initialize = Some(String::new());
    c.initialize_lease = Some(LeaseId(7));
    let o = obs("n1", Some(c.clone()), DataDir::Empty, PgStatus::Stopped);
    assert_eq!(o.lease, Some(LeaseId(7)));
    let d = decide(&o);
    assert_eq!(d.actions, vec![Action::AbandonBootstrap]);
    assert_eq!(d.reason.code(), "orphaned_bootstrap_claim");
    // Someone else's claim: wait for their bootstrap.
    c.initialize_lease = Some(LeaseId(8));
    let d = decide(&obs(
        "n1",
        Some(c.clone()),
        DataDir::Empty,
        PgStatus::Stopped,
    ));
    assert_eq!(d.actions, vec![]);
    assert_eq!(d.reason, Reason::WaitingForBootstrap);
    // Our claim while our bootstrap runs (holding the key): nothing given up.
    c.initialize_lease = Some(LeaseId(7));
    c.leader = Some(LeaderKey {
        name: "n1".into(),
        lease: LeaseId(7),
    });
    let mut o = obs("n1", Some(c), DataDir::Empty, PgStatus::Stopped);
    o.job = JobStatus::Running(JobKind::Bootstrap, Duration::from_secs(1));
    assert_eq!(decide(&o).actions, vec![]);
}
