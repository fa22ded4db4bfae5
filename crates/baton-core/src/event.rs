//! One entry of a member's event log: what it decided and did, in order,
//! so that after a failover an operator reads why each member acted.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Increasing per member since its agent started: `GET /events?after=N`
    /// returns the entries after `N`, which is how `--follow` resumes.
    pub seq: u64,
    /// RFC 3339, milliseconds, UTC.
    pub at: String,
    pub member: String,
    /// `decision` (the reason changed), `job_started`, `job_finished`,
    /// `job_failed` or `action_failed`.
    pub kind: String,
    /// The reason's stable code for a decision; the job's for a job
    /// (`promote`, `rewind`, ...); the action's for a failed action.
    pub code: String,
    pub detail: String,
}
