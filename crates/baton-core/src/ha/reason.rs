//! Why the agent did what it did: one typed reason per decision, with a
//! stable `code()` that logs, the member key (`baton_reason_code`), the
//! REST API and `baton list --json` publish beside the human text. Tools and
//! tests match codes; the text may be reworded.

use std::fmt;
use std::time::Duration;

use super::JobKind;
use crate::instance::Unusable;

/// Why a replica does not take part in an election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ineligible {
    TaggedNofailover,
    /// Patroni: `failover_priority` of 0 or below means never leader.
    FailoverPriorityNotPositive {
        priority: i64,
    },
    /// Behind the leader's last published position by more than
    /// `maximum_lag_on_failover`.
    LagExceedsLimit {
        lag: u64,
        limit: u64,
    },
    /// Synchronous mode: the `sync` key does not list this member, so it
    /// may lack commits the old primary acknowledged.
    NotSynchronous,
    /// Quorum mode: fewer voters answered than it takes to be sure some
    /// answer holds the latest acknowledged commit.
    QuorumNotHeard {
        heard: u32,
        needed: u32,
    },
    /// Failsafe mode: the `failsafe` key does not list this member, so a
    /// leader running without etcd never asked it.
    NotInFailsafe,
}

impl Ineligible {
    pub fn code(&self) -> &'static str {
        match self {
            Ineligible::TaggedNofailover => "tagged_nofailover",
            Ineligible::FailoverPriorityNotPositive { .. } => "failover_priority_not_positive",
            Ineligible::LagExceedsLimit { .. } => "lag_exceeds_limit",
            Ineligible::NotSynchronous => "not_synchronous",
            Ineligible::QuorumNotHeard { .. } => "quorum_not_heard",
            Ineligible::NotInFailsafe => "not_in_failsafe",
        }
    }
}

impl fmt::Display for Ineligible {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ineligible::TaggedNofailover => write!(f, "tagged nofailover"),
            Ineligible::FailoverPriorityNotPositive { priority } => {
                write!(
                    f,
                    "failover_priority is {priority} (0 or less: never leader)"
                )
            }
            Ineligible::LagExceedsLimit { lag, limit } => write!(
                f,
                "lag {} > maximum_lag_on_failover {}",
                human_bytes(*lag),
                human_bytes(*limit)
            ),
            Ineligible::NotSynchronous => write!(
                f,
                "synchronous mode and the sync key does not list me: I may lack acknowledged commits"
            ),
            Ineligible::QuorumNotHeard { heard, needed } => write!(
                f,
                "quorum mode: heard from {heard} other voters, {needed} needed to be sure of the latest commit"
            ),
            Ineligible::NotInFailsafe => write!(
                f,
                "failsafe mode and the failsafe key does not list me: a leader without etcd would not know of me"
            ),
        }
    }
}

/// Why a replica leaves the election to a healthier peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum YieldCause {
    PeerStillPrimary,
    /// It runs (as a standby of the last leader) and can be elected; a
    /// member that cannot run without a leader never races it.
    PeerRunning,
    /// Its WAL is on a later timeline: positions on different timelines
    /// do not compare.
    PeerLaterTimeline {
        theirs: u32,
        mine: u32,
    },
    PeerHasMoreWal {
        theirs: u64,
        mine: u64,
    },
    PeerHigherPriority {
        theirs: i64,
        mine: i64,
    },
}

impl YieldCause {
    pub fn code(&self) -> &'static str {
        match self {
            YieldCause::PeerStillPrimary => "peer_still_primary",
            YieldCause::PeerRunning => "peer_running",
            YieldCause::PeerLaterTimeline { .. } => "peer_later_timeline",
            YieldCause::PeerHasMoreWal { .. } => "peer_has_more_wal",
            YieldCause::PeerHigherPriority { .. } => "peer_higher_priority",
        }
    }
}

impl fmt::Display for YieldCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            YieldCause::PeerStillPrimary => write!(f, "it still runs as primary"),
            YieldCause::PeerRunning => write!(f, "it runs and can be elected"),
            YieldCause::PeerLaterTimeline { theirs, mine } => {
                write!(f, "it is on a later timeline ({theirs} > {mine})")
            }
            YieldCause::PeerHasMoreWal { theirs, mine } => {
                write!(f, "it has more WAL ({theirs} > {mine})")
            }
            YieldCause::PeerHigherPriority { theirs, mine } => {
                write!(f, "same WAL, higher failover_priority ({theirs} > {mine})")
            }
        }
    }
}

/// Why a member cannot take over from the current leader now: the checks a
/// switchover candidate must pass, shared by the REST API and the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CandidateProblem {
    NoSuchMember(String),
    AlreadyLeader(String),
    TaggedNofailover(String),
    FailoverPriorityNotPositive(String),
    NotRunningReplica {
        name: String,
        state: String,
        role: String,
    },
    NotStreaming(String),
    OtherTimeline {
        name: String,
        timeline: u32,
        leader_timeline: u32,
    },
    LagExceedsLimit {
        name: String,
        lag: u64,
        limit: u64,
    },
    /// Synchronous mode: the candidate is not a synchronous standby.
    NotSynchronous(String),
    /// A switchover request that names no candidate other than the leader.
    NoOtherCandidate,
}

impl CandidateProblem {
    pub fn code(&self) -> &'static str {
        match self {
            CandidateProblem::NoSuchMember(_) => "no_such_member",
            CandidateProblem::AlreadyLeader(_) => "already_leader",
            CandidateProblem::TaggedNofailover(_) => "tagged_nofailover",
            CandidateProblem::FailoverPriorityNotPositive(_) => "failover_priority_not_positive",
            CandidateProblem::NotRunningReplica { .. } => "not_running_replica",
            CandidateProblem::NotStreaming(_) => "not_streaming",
            CandidateProblem::OtherTimeline { .. } => "other_timeline",
            CandidateProblem::LagExceedsLimit { .. } => "lag_exceeds_limit",
            CandidateProblem::NotSynchronous(_) => "not_synchronous",
            CandidateProblem::NoOtherCandidate => "no_other_candidate",
        }
    }
}

impl fmt::Display for CandidateProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CandidateProblem::NoSuchMember(n) => write!(f, "no member named {n:?}"),
            CandidateProblem::AlreadyLeader(n) => write!(f, "{n} is already the leader"),
            CandidateProblem::TaggedNofailover(n) => write!(f, "{n} is tagged nofailover"),
            CandidateProblem::FailoverPriorityNotPositive(n) => {
                write!(f, "{n} has failover_priority 0 or less (never leader)")
            }
            CandidateProblem::NotRunningReplica { name, state, role } => {
                write!(f, "{name} is {state} as {role}, not a running replica")
            }
            CandidateProblem::NotStreaming(n) => write!(f, "{n} is not streaming"),
            CandidateProblem::OtherTimeline {
                name,
                timeline,
                leader_timeline,
            } => write!(
                f,
                "{name} is on timeline {timeline}, the leader on {leader_timeline}"
            ),
            CandidateProblem::LagExceedsLimit { name, lag, limit } => {
                write!(
                    f,
                    "{name} lags {lag} bytes > maximum_lag_on_failover {limit}"
                )
            }
            CandidateProblem::NotSynchronous(n) => write!(
                f,
                "synchronous mode: {n} is not a synchronous standby (see the sync key)"
            ),
            CandidateProblem::NoOtherCandidate => write!(f, "request names no other candidate"),
        }
    }
}

fn human_bytes(b: u64) -> String {
    if b >= 1 << 20 {
        format!("{:.1} MiB", b as f64 / (1 << 20) as f64)
    } else if b >= 1 << 10 {
        format!("{:.1} KiB", b as f64 / (1 << 10) as f64)
    } else {
        format!("{b} B")
    }
}

/// Why the agent did what it did; shown in logs, `baton list` and the API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reason {
    JobRunning(JobKind),
    EtcdUnreachable,
    /// etcd unreachable, and the leader runs on in failsafe mode: every
    /// member confirmed following it this long ago.
    FailsafeHolding {
        confirmed: Duration,
    },
    /// Failsafe mode: a leader that etcd may not show confirmed with us
    /// lately; racing for the key could make a second primary.
    FailsafeLeaderAlive {
        leader: String,
    },
    EtcdUnreachableFencing {
        since: Duration,
    },
    DataDirUnusable(Unusable),
    ForeignCluster {
        ours: String,
        cluster: String,
    },
    Bootstrapping,
    /// The staged initdb is the cluster etcd names: taking it into place.
    AdoptingInitdb,
    BootstrapFailed(String),
    WaitingForBootstrap,
    /// An empty data directory in a cluster nobody initialized yet, and
    /// this member may not run initdb (a flavor whose clusters are created
    /// by the system's own tool, e.g. Greenplum's gpinitsystem).
    BootstrapNotAllowed,
    WaitingForInitialize {
        leader: String,
    },
    WaitingForLeaderToClone,
    /// The leader key is ours, the data directory empty, no bootstrap runs.
    LeaderWithoutData,
    /// A bootstrap claim on our lease, and no bootstrap running.
    OrphanedBootstrapClaim,
    WaitingForSlot {
        leader: String,
    },
    Cloning {
        from: String,
    },
    CloneFailed(String),
    Starting,
    StartFailed(String),
    StartingReadOnly,
    /// No leader, and an instance that cannot run without one (an
    /// OpenTenBase GTM): the key is for the last leader, whose state is
    /// the newest (the `status` key names it; `None`: not known).
    WaitingForLastLeader {
        last: Option<String>,
    },
    /// No leader: this member led last, so its state is the newest.
    ColdStartAsLastLeader,
    PostgresUnresponsive,
    /// OpenTenBase: postgres answers, but no query runs without its GTM.
    GtmUnreachable,
    AcquiringLeader,
    AdoptingLeader,
    Promoting,
    Leader,
    LeaseExpiredFencing {
        since: Duration,
    },
    /// The leader key names us but our renewal is past the deadline: no
    /// primary is started or promoted on a lease that may be gone.
    LeaseOverdue {
        since: Duration,
    },
    /// The fence process has not answered for `down`: no primary starts
    /// or promotes here; a leader with a running primary steps down once
    /// that lasts a whole lease deadline (`stepping_down`).
    FenceUnavailable {
        down: Duration,
        stepping_down: bool,
    },
    PrimaryStartTimeout {
        waited: Duration,
    },
    DemotingForeignLeader {
        leader: String,
    },
    /// A promotion signalled earlier is still pending here and the key is
    /// not ours: postgres is stopped before it can turn read-write.
    PromotionWithoutKey,
    /// A start (or restart) read-write is under way, and the leader key no
    /// longer names us: it is stopped before it can accept a write.
    StartWithoutKey {
        leader: Option<String>,
    },
    Following {
        leader: String,
        streaming: bool,
    },
    Repointing {
        leader: String,
    },
    NoLeader,
    LeaderNotReachable {
        leader: String,
    },
    /// The process-death fast path: `reporters` of the `voters` members
    /// other than the leader saw its REST and postgres ports both refuse
    /// connections; the key is removed so that an election need not wait
    /// for the lease (`ha::dead_leader`).
    LeaderProcessesGone {
        leader: String,
        reporters: usize,
        voters: usize,
    },
    /// Not taking part in the election, and why.
    NotEligible(Ineligible),
    /// Taking part, but another member is healthier.
    Yielding {
        to: String,
        why: YieldCause,
    },
    /// Taking part and the healthiest: racing for the key.
    Candidate,
    Diverged {
        leader: String,
    },
    Rewinding {
        from: String,
        timeline: u32,
        leader_timeline: u32,
    },
    /// The instance itself says it cannot follow the leader and needs a
    /// build (openGauss: `Need repair`, with its detail).
    InstanceNeedsRepair {
        leader: String,
        detail: String,
    },
    /// The promotion was not verified in time (`[routing] verify`): the
    /// instance is stopped and started again as the primary.
    PromotionNotVerified(String),
    /// Building from the leader what the instance said needs repair.
    Repairing {
        from: String,
        detail: String,
    },
    RewindFailed {
        error: String,
        rebuilding: bool,
    },
    /// A pg_rewind that began copying never finished: postgres is not
    /// started on this directory; it is rebuilt from `from` when allowed.
    RewindIncomplete {
        from: Option<String>,
        rebuilding: bool,
    },
    RewindSourceDown {
        from: String,
        error: String,
    },
    Reinitializing {
        from: String,
    },
    WaitingForLeaderToRebuild,
    SwitchoverScheduled {
        to: String,
        at: String,
    },
    SwitchoverRefused(CandidateProblem),
    SwitchingOver {
        to: String,
    },
    ManualFailover {
        to: String,
    },
    Restarting,
    /// Maintenance mode held these actions back.
    Paused {
        held: Box<Reason>,
    },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::JobRunning(k) => write!(f, "{k} in progress"),
            Reason::EtcdUnreachable => write!(f, "etcd unreachable; keeping current state"),
            Reason::FailsafeHolding { confirmed } => write!(
                f,
                "etcd unreachable; failsafe mode: every member confirmed following me {:.1} s ago",
                confirmed.as_secs_f64()
            ),
            Reason::FailsafeLeaderAlive { leader } => write!(
                f,
                "failsafe mode: leader {leader} confirmed with me within ttl; not racing it"
            ),
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
            Reason::BootstrapNotAllowed => write!(
                f,
                "empty data directory, and this flavor never runs initdb (its own tool creates \
                 the cluster): waiting for a member with a data directory to lead, to clone it"
            ),
            Reason::WaitingForLeaderToClone => write!(f, "no leader to clone from; waiting"),
            Reason::WaitingForLastLeader { last } => write!(
                f,
                "no leader, and this instance cannot start without one to follow (a GTM \
                 standby needs a live active): waiting for the last leader ({}) to take the key, \
                 or for a manual failover naming a member (baton failover --candidate)",
                last.as_deref().unwrap_or("not recorded")
            ),
            Reason::ColdStartAsLastLeader => write!(
                f,
                "no leader, and this member led last (its state is the newest): taking the key"
            ),
            Reason::OrphanedBootstrapClaim => write!(
                f,
                "the bootstrap claim in etcd is ours but no bootstrap runs (an answer from etcd \
                 was lost): giving it up, so that a bootstrap can start again"
            ),
            Reason::LeaderWithoutData => write!(
                f,
                "holding the leader key with an empty data directory and no bootstrap under way: \
                 giving it (and a bootstrap claim) up, so that a member with data, or a new \
                 bootstrap, can lead"
            ),
            Reason::AdoptingInitdb => write!(
                f,
                "the cluster etcd names is the initdb staged here by an interrupted bootstrap: taking it into place"
            ),
            Reason::WaitingForInitialize { leader } => write!(
                f,
                "leader {leader} has not published the cluster's system identifier (initialize) yet; waiting"
            ),
            Reason::WaitingForSlot { leader } => {
                write!(f, "waiting for {leader} to create our replication slot")
            }
            Reason::Cloning { from } => write!(f, "cloning from {from}"),
            Reason::CloneFailed(e) => write!(f, "clone failed, will retry: {e}"),
            Reason::Starting => write!(f, "starting postgres"),
            Reason::StartFailed(e) => write!(f, "postgres failed to start, will retry: {e}"),
            Reason::StartingReadOnly => {
                write!(f, "no leader: starting read-only to take part in the election")
            }
            Reason::PostgresUnresponsive => write!(f, "postgres is not answering queries"),
            Reason::GtmUnreachable => write!(
                f,
                "postgres is up but cannot reach its GTM: every query fails (GTM error); waiting for the GTM"
            ),
            Reason::AcquiringLeader => write!(f, "no leader and I run as primary: taking the leader key"),
            Reason::AdoptingLeader => write!(f, "re-attaching my leader key to my new lease"),
            Reason::Promoting => write!(f, "I hold the leader key: promoting"),
            Reason::Leader => write!(f, "I am the leader"),
            Reason::LeaseExpiredFencing { since } => write!(
                f,
                "leader lease not renewed for {:.1} s: demoting (fencing)",
                since.as_secs_f64()
            ),
            Reason::LeaseOverdue { since } => write!(
                f,
                "lease not renewed for {:.1} s: not starting or promoting a primary until it is",
                since.as_secs_f64()
            ),
            Reason::FenceUnavailable {
                down,
                stepping_down,
            } => write!(
                f,
                "the fence process (baton-fence) has not answered for {:.1} s: {}",
                down.as_secs_f64(),
                if *stepping_down {
                    "stepping down, a primary must not run without it"
                } else {
                    "not starting or promoting a primary until it does"
                }
            ),
            Reason::PrimaryStartTimeout { waited } => write!(
                f,
                "postgres did not come back within primary_start_timeout ({:.1} s): \
                 stopping it and releasing the leader key",
                waited.as_secs_f64()
            ),
            Reason::PromotionWithoutKey => write!(
                f,
                "a promotion signalled earlier is still pending and the leader key is not ours: stopping postgres"
            ),
            Reason::StartWithoutKey { leader } => write!(
                f,
                "the leader key is {}: stopping the read-write start under way",
                match leader {
                    Some(l) => format!("{l}'s now"),
                    None => "gone".to_string(),
                }
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
            Reason::Repointing { leader } => {
                write!(f, "re-pointing replication at new leader {leader}")
            }
            Reason::NoLeader => write!(f, "no leader in the cluster"),
            Reason::LeaderNotReachable { leader } => {
                write!(f, "leader {leader} has not published its address")
            }
            Reason::LeaderProcessesGone {
                leader,
                reporters,
                voters,
            } => write!(
                f,
                "leader {leader}: its REST API and postgres both refuse connections \
                 ({reporters} of {voters} other members see it): removing its key without \
                 waiting for the lease"
            ),
            Reason::NotEligible(why) => write!(f, "no leader; not a failover candidate: {why}"),
            Reason::Yielding { to, why } => write!(f, "no leader; yielding to {to}: {why}"),
            Reason::Candidate => {
                write!(f, "no leader; I am the healthiest candidate: taking the leader key")
            }
            Reason::Diverged { leader } => write!(
                f,
                "my WAL went past the point where {leader}'s timeline forked: stopping to rewind"
            ),
            Reason::InstanceNeedsRepair { leader, detail } => write!(
                f,
                "postgres says it cannot follow leader {leader} and needs repair ({detail}): \
                 stopping it to build it from the leader"
            ),
            Reason::PromotionNotVerified(e) => write!(
                f,
                "this primary does not serve ({e}): a failed promotion, stopping it to start it \
                 again"
            ),
            Reason::Repairing { from, detail } => write!(
                f,
                "building from {from} what postgres said needs repair ({detail})"
            ),
            Reason::Rewinding {
                from,
                timeline,
                leader_timeline,
            } => write!(
                f,
                "on timeline {timeline}, leader {from} on {leader_timeline}: pg_rewind before following"
            ),
            Reason::RewindFailed {
                error,
                rebuilding: true,
            } => write!(f, "pg_rewind failed ({error}): rebuilding from the leader"),
            Reason::RewindIncomplete {
                from: Some(from),
                rebuilding: true,
            } => write!(
                f,
                "an interrupted pg_rewind left the data directory half-copied: rebuilding from {from}"
            ),
            Reason::RewindIncomplete { from, .. } => write!(
                f,
                "need repair: an interrupted pg_rewind left the data directory half-copied; {}",
                match from {
                    Some(_) => "rebuild is not allowed (postgresql.rebuild_on_rewind_failure): run baton reinit",
                    None => "waiting for a leader to rebuild from; postgres is not started on it",
                }
            ),
            Reason::RewindFailed {
                error,
                rebuilding: false,
            } => write!(
                f,
                "need repair: pg_rewind failed ({error}) and rebuild is not allowed \
                 (postgresql.rebuild_on_rewind_failure)"
            ),
            Reason::RewindSourceDown { from, error } => {
                write!(f, "pg_rewind could not reach {from} ({error}); retrying")
            }
            Reason::Reinitializing { from } => write!(f, "reinitialize requested: rebuilding from {from}"),
            Reason::WaitingForLeaderToRebuild => {
                write!(f, "reinitialize requested: waiting for a leader to clone from")
            }
            Reason::SwitchoverScheduled { to, at } => {
                write!(f, "I am the leader; switchover to {to} scheduled at {at}")
            }
            Reason::SwitchoverRefused(why) => write!(f, "switchover refused: {why}"),
            Reason::SwitchingOver { to } => write!(f, "switching over to {to}"),
            Reason::ManualFailover { to } if to.is_empty() => {
                write!(f, "no leader; manual failover to me: taking the leader key")
            }
            Reason::ManualFailover { to } => {
                write!(f, "no leader; manual failover to {to} requested: not taking part")
            }
            Reason::Restarting => write!(f, "restart requested: restarting postgres"),
            Reason::Paused { held } => write!(f, "paused (maintenance mode); would act: {held}"),
        }
    }
}

impl Reason {
    /// Stable, machine-readable name of this reason (snake_case). Published
    /// beside the text; never reworded once released.
    pub fn code(&self) -> &'static str {
        match self {
            Reason::JobRunning(_) => "job_running",
            Reason::EtcdUnreachable => "etcd_unreachable",
            Reason::FailsafeHolding { .. } => "failsafe_holding",
            Reason::FailsafeLeaderAlive { .. } => "failsafe_leader_alive",
            Reason::EtcdUnreachableFencing { .. } => "etcd_unreachable_fencing",
            Reason::DataDirUnusable(u) => u.code(),
            Reason::ForeignCluster { .. } => "foreign_cluster",
            Reason::Bootstrapping => "bootstrapping",
            Reason::BootstrapFailed(_) => "bootstrap_failed",
            Reason::WaitingForBootstrap => "waiting_for_bootstrap",
            Reason::BootstrapNotAllowed => "bootstrap_not_allowed",
            Reason::WaitingForInitialize { .. } => "waiting_for_initialize",
            Reason::WaitingForLeaderToClone => "waiting_for_leader_to_clone",
            Reason::WaitingForLastLeader { .. } => "waiting_for_last_leader",
            Reason::ColdStartAsLastLeader => "cold_start_as_last_leader",
            Reason::LeaderWithoutData => "leader_without_data",
            Reason::OrphanedBootstrapClaim => "orphaned_bootstrap_claim",
            Reason::AdoptingInitdb => "adopting_initdb",
            Reason::WaitingForSlot { .. } => "waiting_for_slot",
            Reason::Cloning { .. } => "cloning",
            Reason::CloneFailed(_) => "clone_failed",
            Reason::Starting => "starting",
            Reason::StartFailed(_) => "start_failed",
            Reason::StartingReadOnly => "starting_read_only",
            Reason::PostgresUnresponsive => "postgres_unresponsive",
            Reason::GtmUnreachable => "gtm_unreachable",
            Reason::AcquiringLeader => "acquiring_leader",
            Reason::AdoptingLeader => "adopting_leader",
            Reason::Promoting => "promoting",
            Reason::Leader => "leader",
            Reason::LeaseExpiredFencing { .. } => "lease_expired_fencing",
            Reason::LeaseOverdue { .. } => "lease_overdue",
            Reason::FenceUnavailable { .. } => "fence_unavailable",
            Reason::PrimaryStartTimeout { .. } => "primary_start_timeout",
            Reason::DemotingForeignLeader { .. } => "demoting_foreign_leader",
            Reason::StartWithoutKey { .. } => "start_without_key",
            Reason::PromotionWithoutKey => "promotion_without_key",
            Reason::Following {
                streaming: true, ..
            } => "streaming",
            Reason::Following {
                streaming: false, ..
            } => "following_not_streaming",
            Reason::Repointing { .. } => "repointing",
            Reason::NoLeader => "no_leader",
            Reason::LeaderNotReachable { .. } => "leader_not_reachable",
            Reason::LeaderProcessesGone { .. } => "leader_processes_gone",
            Reason::NotEligible(why) => why.code(),
            Reason::Yielding { .. } => "yielding",
            Reason::Candidate => "candidate",
            Reason::Diverged { .. } => "diverged",
            Reason::Rewinding { .. } => "rewinding",
            Reason::InstanceNeedsRepair { .. } => "instance_needs_repair",
            Reason::Repairing { .. } => "repairing",
            Reason::PromotionNotVerified(_) => "promotion_not_verified",
            Reason::RewindFailed {
                rebuilding: true, ..
            } => "rewind_failed_rebuilding",
            Reason::RewindIncomplete {
                rebuilding: true, ..
            } => "rewind_incomplete_rebuilding",
            Reason::RewindIncomplete { .. } => "rewind_incomplete",
            Reason::RewindFailed {
                rebuilding: false, ..
            } => "rewind_failed_need_repair",
            Reason::RewindSourceDown { .. } => "rewind_source_down",
            Reason::Reinitializing { .. } => "reinitializing",
            Reason::WaitingForLeaderToRebuild => "waiting_for_leader_to_rebuild",
            Reason::SwitchoverScheduled { .. } => "switchover_scheduled",
            Reason::SwitchoverRefused(_) => "switchover_refused",
            Reason::SwitchingOver { .. } => "switching_over",
            Reason::ManualFailover { to } if to.is_empty() => "manual_failover_to_me",
            Reason::ManualFailover { .. } => "manual_failover_to_other",
            Reason::Restarting => "restarting",
            Reason::Paused { .. } => "paused",
        }
    }

    /// Reasons that leave the member stopped until an operator acts.
    pub fn needs_repair(&self) -> bool {
        matches!(
            self,
            Reason::ForeignCluster { .. }
                | Reason::DataDirUnusable(_)
                | Reason::RewindFailed {
                    rebuilding: false,
                    ..
                }
                | Reason::RewindIncomplete {
                    rebuilding: false,
                    ..
                }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_their_text_and_carry_a_code() {
        let lag = CandidateProblem::LagExceedsLimit {
            name: "n2".into(),
            lag: 2 << 20,
            limit: 1 << 20,
        };
        assert_eq!(lag.code(), "lag_exceeds_limit");
        assert_eq!(
            lag.to_string(),
            "n2 lags 2097152 bytes > maximum_lag_on_failover 1048576"
        );
        let r = Reason::NotEligible(Ineligible::LagExceedsLimit {
            lag: 3 << 20,
            limit: 1 << 20,
        });
        assert_eq!(r.code(), "lag_exceeds_limit");
        assert_eq!(
            r.to_string(),
            "no leader; not a failover candidate: lag 3.0 MiB > maximum_lag_on_failover 1.0 MiB"
        );
        let y = Reason::Yielding {
            to: "n3".into(),
            why: YieldCause::PeerHasMoreWal { theirs: 9, mine: 5 },
        };
        assert_eq!(
            (y.code(), y.to_string().as_str()),
            (
                "yielding",
                "no leader; yielding to n3: it has more WAL (9 > 5)"
            )
        );
        let y = Reason::Yielding {
            to: "n2".into(),
            why: YieldCause::PeerLaterTimeline { theirs: 4, mine: 3 },
        };
        assert_eq!(
            y.to_string(),
            "no leader; yielding to n2: it is on a later timeline (4 > 3)"
        );
        let u = Reason::DataDirUnusable(Unusable::NotADirectory("/d".into()));
        assert_eq!(u.code(), "data_dir_not_a_directory");
        assert!(u.needs_repair());
    }

    #[test]
    fn codes_are_snake_case() {
        let reasons = [
            Reason::Leader,
            Reason::Following {
                leader: "a".into(),
                streaming: false,
            },
            Reason::RewindFailed {
                error: "x".into(),
                rebuilding: false,
            },
            Reason::ManualFailover { to: String::new() },
            Reason::SwitchoverRefused(CandidateProblem::NoOtherCandidate),
            Reason::Paused {
                held: Box::new(Reason::Starting),
            },
        ];
        for r in reasons {
            let c = r.code();
            assert!(
                !c.is_empty() && c.chars().all(|ch| ch.is_ascii_lowercase() || ch == '_'),
                "{c:?} for {r}"
            );
        }
    }
}
