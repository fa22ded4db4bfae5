//! What one tick knows: the local postgres, the job in progress, the peers,
//! the cluster as etcd shows it, and the time.

use std::fmt;
use std::time::{Duration, Instant};

use crate::cluster::{ClusterView, LeaseId};
use crate::config::{DynamicConfig, Tags};
use crate::instance::{DataDir, Running};

/// The local postgres process as the agent found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PgStatus {
    Stopped,
    /// A postmaster exists but no query succeeded (starting, or hung).
    Unresponsive,
    Running(Box<Running>),
}

impl PgStatus {
    pub fn running(&self) -> Option<&Running> {
        match self {
            PgStatus::Running(r) => Some(r),
            _ => None,
        }
    }
}

/// A long action running as an owned task; the loop keeps ticking meanwhile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobKind {
    Bootstrap,
    Clone,
    Start,
    Promote,
    Rewind,
    Rebuild,
    Switchover,
    Restart,
}

impl fmt::Display for JobKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            JobKind::Bootstrap => "bootstrap (initdb)",
            JobKind::Clone => "clone (pg_basebackup)",
            JobKind::Start => "start",
            JobKind::Promote => "promote",
            JobKind::Rewind => "pg_rewind",
            JobKind::Rebuild => "rebuild (move aside + pg_basebackup)",
            JobKind::Switchover => "switchover",
            JobKind::Restart => "restart",
        })
    }
}

impl JobKind {
    /// Stable snake_case name, for the event log and tools.
    pub fn code(self) -> &'static str {
        match self {
            JobKind::Bootstrap => "bootstrap",
            JobKind::Clone => "clone",
            JobKind::Start => "start",
            JobKind::Promote => "promote",
            JobKind::Rewind => "rewind",
            JobKind::Rebuild => "rebuild",
            JobKind::Switchover => "switchover",
            JobKind::Restart => "restart",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobStatus {
    Idle,
    /// A job is running, started this long ago.
    Running(JobKind, Duration),
    /// The last job failed; shown until the next job starts. The flag says
    /// the member it worked against was unreachable: worth retrying, and no
    /// reason to give up on the local data.
    Failed(JobKind, String, bool),
    /// The last job succeeded (until the next job starts).
    Done(JobKind),
}

/// Another member as its REST API answered during an election.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub running: bool,
    pub primary: bool,
    pub timeline: u32,
    /// Highest WAL position it has (written on a primary, received or
    /// replayed on a replica).
    pub position: u64,
    pub nofailover: bool,
    pub priority: i64,
}

impl Peer {
    /// What `/patroni` of another member says about its fitness to lead.
    pub fn from_status(name: String, v: &serde_json::Value) -> Peer {
        let priority = v["tags"]["failover_priority"].as_i64().unwrap_or(1);
        let primary = v["role"] == "primary";
        let x = &v["xlog"];
        let position = if primary {
            x["location"].as_u64()
        } else {
            x["received_location"]
                .as_u64()
                .max(x["replayed_location"].as_u64())
        };
        Peer {
            name,
            running: v["state"] == "running",
            primary,
            timeline: v["timeline"].as_u64().unwrap_or(0) as u32,
            position: position.unwrap_or(0),
            // Patroni: a priority of 0 or less never leads, like nofailover.
            nofailover: v["tags"]["nofailover"].as_bool().unwrap_or(false) || priority <= 0,
            priority,
        }
    }
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
    pub tags: Tags,
    /// Other members' answers, gathered only when there is no leader.
    pub peers: Vec<Peer>,
    /// An operator asked for this member to be rebuilt.
    pub reinit_requested: bool,
    /// Whether a failed rewind may be followed by a rebuild.
    pub rebuild_allowed: bool,
    /// Whether this member may initdb a new cluster (not for a flavor whose
    /// clusters are made by the system's own tool).
    pub bootstrap_allowed: bool,
    /// An operator asked for postgres to be restarted.
    pub restart_requested: bool,
    /// How long this running replica has not been streaming (`None` when it
    /// streams, or is not a running replica).
    pub not_streaming_for: Option<Duration>,
    /// With an empty data directory: the system identifier of a bootstrap's
    /// initdb still staged beside it (see `Action::AdoptInitdb`).
    pub staged_initdb: Option<String>,
    /// Since when the fence process (`baton-fence`, rule 8) has not taken
    /// the agent's orders; `None` while it does. Without it no primary is
    /// started or promoted, and a leader steps down.
    pub fence_down_for: Option<Duration>,
    /// A pg_rewind into this data directory began copying and did not
    /// finish: the directory mixes two histories and must never start;
    /// only a rebuild from the leader repairs it.
    pub rewind_incomplete: bool,
    /// A promotion was signalled to this (still recovering) postgres and
    /// has not been seen to finish, perhaps by an agent that died since:
    /// it can turn read-write at any moment.
    pub promotion_pending: bool,
    /// Leader: Baton's slots on this primary whose member key is gone, and
    /// for how long this agent has seen them so.
    pub absent_slots: std::collections::BTreeMap<String, Duration>,
    /// Leader: this primary's WAL position when the agent first saw the
    /// `synchronous_standby_names` now in force (`ha::sync::confirmed`).
    pub sync_applied_at: Option<crate::lsn::Lsn>,
    /// Leader in failsafe mode: when the last round of `POST /failsafe`
    /// that every member listed in the `failsafe` key confirmed was sent;
    /// it holds off rule 2 like a renewal sent then.
    pub failsafe_confirmed: Option<Instant>,
    /// Replica in failsafe mode: how long ago a leader's `POST /failsafe`
    /// was last accepted here, and whose.
    pub failsafe_heard: Option<(Duration, String)>,
    /// This tick's probes of the leader key's holder found its REST port
    /// and its postgres port both refusing connections (TCP RST, never a
    /// timeout), every time over a short window: the lease that key was on.
    pub leader_refused: Option<LeaseId>,
    /// The postmaster answered, but with "its GTM cannot be reached"
    /// (OpenTenBase: every query needs a global timestamp): the node is up
    /// and nothing about it should change, whatever else looks wrong.
    pub gtm_unreachable: bool,
    /// This instance cannot run without accepting writes unless it follows
    /// a live leader (an OpenTenBase GTM: a standby connects to its active
    /// at start, and there is no read-only mode). With no leader it cannot
    /// start read-only to take part in an election (`election::cold_start`).
    pub standby_needs_upstream: bool,
    /// The instance said it cannot follow its upstream and needs a build
    /// (`Running::needs_repair`), and no rewind or rebuild has succeeded
    /// since: held by the agent across the stop that follows.
    pub instance_needs_repair: Option<String>,
    /// Leader: the routing's verification of this promotion (`[routing]
    /// verify`, e.g. a write through an OpenTenBase coordinator, which needs
    /// the new GTM's timestamps) has failed for longer than its timeout,
    /// and why.
    pub promotion_failed: Option<String>,
    /// Wall-clock time, for scheduled switchovers.
    pub now_utc: chrono::DateTime<chrono::Utc>,
}
