//! What a decision asks the agent to do, and the decision itself.

use super::Reason;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Claim `initialize`, then the leader key, then run the bootstrap job.
    Bootstrap,
    /// Store our system identifier in `initialize` (completes bootstrap).
    PublishInitialize(String),
    /// Store the dynamic config if none is stored yet.
    InitConfig,
    /// Create-if-absent on the leader key with our lease.
    AcquireLeader,
    /// The leader key names us but hangs on an old lease of ours.
    AdoptLeader,
    /// Delete the leader key if it is still ours.
    ReleaseLeader,
    /// Give up a bootstrap that left nothing behind: the leader key if it
    /// is still ours, and `initialize` if it still holds a claim.
    AbandonBootstrap,
    /// Delete the leader key if it still names `name` on `lease`, and
    /// revoke that lease: its holder's agent and postgres are both gone
    /// (`ha::dead_leader`).
    RemoveDeadLeader {
        name: String,
        lease: crate::cluster::LeaseId,
    },
    /// Clone the named member with pg_basebackup (job).
    Clone { from: String },
    /// Start postgres as primary (job).
    StartPrimary,
    /// Start postgres as a replica of the named member (job).
    StartReplica { leader: String },
    /// Start postgres read-only with no upstream, to take part in an election (job).
    StartReadOnly,
    /// Re-point a running replica at the named member by reload.
    Follow { leader: String },
    /// Move the staged initdb into the empty data directory: etcd holds its
    /// identifier, so it is the cluster (its bootstrap died after publishing).
    AdoptInitdb,
    /// Promote the running replica from timeline `from` onto `to` (job),
    /// after reserving `to` in etcd.
    Promote { from: u32, to: u32 },
    /// Stop postgres at once (`-m immediate`), aborting any job: used to
    /// fence, to demote, and to stop a diverged replica. Crash recovery (or
    /// pg_rewind's) replays the WAL on the next start.
    Stop,
    /// pg_rewind against the named member (job).
    Rewind { from: String },
    /// Move the data directory aside and clone the named member (job).
    Rebuild { from: String },
    /// Create physical slots for these members on the running primary.
    CreateSlots(Vec<String>),
    /// Drop these (inactive) slots of members gone for `member_slots_ttl`.
    DropSlots(Vec<String>),
    /// Write the `status` key (leader only).
    PublishStatus,
    /// Append this promotion to the `history` key (new leader).
    PublishHistory,
    /// Planned handover to `candidate` (job): checkpoint, clean stop, verify
    /// the candidate replayed the shutdown checkpoint, move the leader key
    /// onto the candidate's lease; on any failure restart as primary.
    Switchover { candidate: String },
    /// Drop the pending `failover` request (refused, or malformed).
    CancelSwitchover,
    /// Restart postgres in its current role (job).
    Restart,
    /// Write the `sync` key (compare-and-set on its revision, as the
    /// holder of the leader key), or delete it (`None`).
    WriteSync(Option<crate::cluster::SyncKey>),
    /// Set `synchronous_standby_names` on the running primary and reload
    /// (`None`: back to the node file's own value).
    SetSyncStandbys(Option<String>),
    /// Before promoting in synchronous mode: the `sync` key names this
    /// member as leader and promises no standby yet, so no replica that
    /// lacks our future commits can be elected; postgres's own rule is
    /// reset (in strict mode to any standby, `*`, from the first commit).
    /// The actions after it are not carried out if it fails.
    ClaimSync { strict: bool },
    /// Write the `failsafe` key (members and their api_url), or delete it.
    PublishFailsafe(Option<std::collections::BTreeMap<String, String>>),
}

impl Action {
    /// Whether carrying this out can leave postgres running read-write
    /// here: the fence must be armed before, and none of these happen
    /// without one (rule 8).
    pub fn may_make_primary(&self, pg_is_primary: bool) -> bool {
        match self {
            Action::Bootstrap
            | Action::AcquireLeader
            | Action::StartPrimary
            | Action::Promote { .. } => true,
            Action::Restart => pg_is_primary,
            _ => false,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub actions: Vec<Action>,
    pub reason: Reason,
}

pub(super) fn decision(actions: Vec<Action>, reason: Reason) -> Decision {
    Decision { actions, reason }
}
