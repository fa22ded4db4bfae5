//! When the agent's fence timer must be armed: whenever postgres is, or may
//! become, a primary. The loop checks the lease deadline once per tick, but a
//! tick that waits on a hanging etcd and a hanging postgres can take several
//! `retry_timeout`s; the timer fires at the deadline itself (rule 2), wherever
//! the loop is.

use crate::instance::DataDir;

use super::action::decision;
use super::{Action, Decision, JobKind, Observation, PgStatus, Reason};

/// Whether the fence timer guards this member now. `job` is the job running,
/// `i_lead` whether the leader key names this member, `promotion_pending`
/// whether a promotion signalled earlier (by this agent or a dead one) may
/// still turn it read-write.
pub fn armed(
    pg: &PgStatus,
    data_dir: &DataDir,
    job: Option<JobKind>,
    i_lead: bool,
    promotion_pending: bool,
) -> bool {
    let standby_dir = matches!(data_dir, DataDir::Valid { standby: true, .. });
    let may_be_primary = match pg {
        PgStatus::Running(r) => !r.in_recovery,
        PgStatus::Unresponsive => !standby_dir,
        PgStatus::Stopped => false,
    };
    let job_may_make_one = match job {
        Some(JobKind::Bootstrap | JobKind::Promote | JobKind::Switchover) => true,
        Some(JobKind::Start | JobKind::Restart) => i_lead || !standby_dir,
        Some(JobKind::Clone | JobKind::Rewind | JobKind::Rebuild) | None => false,
    };
    may_be_primary || job_may_make_one || promotion_pending
}

/// Rule 8 over a decision: while the fence process does not answer, nothing
/// that can make a primary happens here, and a leader whose primary runs
/// steps down once the fence has been gone for a whole lease deadline
/// (the agent restarts the fence every tick; only one it cannot start lasts
/// that long). Fencing itself (`Stop`) always goes through.
pub(super) fn gate(o: &Observation, d: Decision) -> Decision {
    let Some(down) = o.fence_down_for else {
        return d;
    };
    let primary = o.pg.running().is_some_and(|r| !r.in_recovery);
    let i_lead = o
        .cluster
        .as_ref()
        .and_then(|c| c.leader_name())
        .is_some_and(|l| l == o.me);
    if primary && i_lead && down >= o.config.leader_deadline() {
        return decision(
            vec![Action::Stop, Action::ReleaseLeader],
            Reason::FenceUnavailable {
                down,
                stepping_down: true,
            },
        );
    }
    if !d.actions.iter().any(|a| a.may_make_primary(primary)) {
        return d;
    }
    decision(
        d.actions
            .into_iter()
            .filter(|a| !a.may_make_primary(primary))
            .collect(),
        Reason::FenceUnavailable {
            down,
            stepping_down: false,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::Running;

    fn dir(standby: bool) -> DataDir {
        DataDir::Valid {
            system_id: "1".into(),
            standby,
            timeline: Some(1),
            history: vec![],
            clean_shutdown: false,
            checkpoint: None,
        }
    }

    fn running(in_recovery: bool) -> PgStatus {
        PgStatus::Running(Box::new(Running {
            in_recovery,
            ..Running::default()
        }))
    }

    #[test]
    fn armed_for_primaries_and_what_may_become_one() {
        assert!(armed(&running(false), &dir(false), None, true, false));
        assert!(!armed(&running(true), &dir(true), None, false, false));
        // A hung postmaster counts unless its data directory says standby.
        assert!(armed(
            &PgStatus::Unresponsive,
            &dir(false),
            None,
            false,
            false
        ));
        assert!(!armed(
            &PgStatus::Unresponsive,
            &dir(true),
            None,
            false,
            false
        ));
        // Jobs that can end with a primary.
        for job in [JobKind::Bootstrap, JobKind::Promote, JobKind::Switchover] {
            assert!(
                armed(&running(true), &dir(true), Some(job), false, false),
                "{job}"
            );
        }
        assert!(armed(
            &PgStatus::Stopped,
            &dir(true),
            Some(JobKind::Start),
            true,
            false
        ));
        assert!(!armed(
            &PgStatus::Stopped,
            &dir(true),
            Some(JobKind::Start),
            false,
            false
        ));
        assert!(!armed(
            &PgStatus::Stopped,
            &DataDir::Empty,
            Some(JobKind::Clone),
            false,
            false
        ));
        assert!(!armed(&PgStatus::Stopped, &dir(false), None, true, false));
        // A replica with a promotion signalled and not seen to finish.
        assert!(armed(&running(true), &dir(true), None, false, true));
    }
}
