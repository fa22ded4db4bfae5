//! What a member publishes about itself in its member key (Patroni's
//! `role`, `state` and WAL fields), derived from what the agent observed.
//! Pure, so the table of roles and states is tested here and the
//! simulator publishes exactly what the agent does.

use crate::cluster::Member;
use crate::instance::DataDir;

use super::{JobKind, PgStatus};

/// Fills `role`, `state`, `timeline` and the WAL positions of `m`. `i_lead`:
/// this member holds the leader key (it stays `primary` while postgres is
/// down and restarting in place).
/// The state of a leader handing over; the router drains it (`route`).
pub const SWITCHING_OVER: &str = "switching over";

/// The state of a member whose postmaster runs but did not answer this
/// tick's status query (Patroni's word for a postgres that does not
/// respond). Most often a busy server whose query took longer than
/// `retry_timeout`, sometimes one in crash recovery or hung: a primary
/// stays "primary", since it may take writes the moment it answers, and
/// load balancers keep sending writers there (it is the only member that
/// may take them; `route`, the REST `/primary` check).
pub const NOT_RESPONDING: &str = "not responding";

pub fn fill_member(
    m: &mut Member,
    pg: &PgStatus,
    data_dir: &DataDir,
    job: Option<JobKind>,
    needs_repair: bool,
    i_lead: bool,
) {
    m.role = match (pg, data_dir) {
        (PgStatus::Running(r), _) if !r.in_recovery => "primary",
        (PgStatus::Running(_), _) => "replica",
        (_, DataDir::Empty) => "uninitialized",
        // A postmaster that does not answer is a standby if its data
        // directory says so, whatever key this member holds.
        (PgStatus::Unresponsive, DataDir::Valid { standby: true, .. }) => "replica",
        _ if i_lead => "primary",
        _ => "replica",
    }
    .to_string();
    m.state = match (job, pg) {
        (Some(JobKind::Bootstrap), _) => "initializing new cluster",
        (Some(JobKind::Clone), _) => "creating replica",
        (Some(JobKind::Promote), _) => "promoting",
        (Some(JobKind::Rewind), _) => "rewinding",
        (Some(JobKind::Rebuild), _) => "creating replica",
        (Some(JobKind::Switchover), _) => SWITCHING_OVER,
        (Some(JobKind::Restart), _) => "restarting",
        (_, PgStatus::Running(_)) => "running",
        (Some(JobKind::Start), _) => "starting",
        (_, PgStatus::Unresponsive) => NOT_RESPONDING,
        _ if needs_repair => "need repair",
        _ => "stopped",
    }
    .to_string();
    if let PgStatus::Running(r) = pg {
        m.timeline = r.timeline;
        if r.in_recovery {
            m.receive_lsn = r.receive_lsn.map(|l| l.0);
            m.replay_lsn = r.replay_lsn.map(|l| l.0);
            m.xlog_location = r.receive_lsn.max(r.replay_lsn).map(|l| l.0);
            m.replication_state = Some(
                if r.receiver_streaming {
                    "streaming"
                } else {
                    "in archive recovery"
                }
                .into(),
            );
        } else {
            m.xlog_location = r.wal_lsn.map(|l| l.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::instance::Running;
    use crate::lsn::Lsn;

    fn running(in_recovery: bool, streaming: bool) -> PgStatus {
        PgStatus::Running(Box::new(Running {
            in_recovery,
            system_id: "1".into(),
            timeline: Some(3),
            wal_lsn: (!in_recovery).then_some(Lsn(900)),
            receive_lsn: in_recovery.then_some(Lsn(800)),
            replay_lsn: in_recovery.then_some(Lsn(700)),
            receiver_streaming: streaming,
            ..Running::default()
        }))
    }

    fn valid() -> DataDir {
        DataDir::Valid {
            system_id: "1".into(),
            standby: false,
            timeline: Some(3),
            history: vec![],
            clean_shutdown: true,
            checkpoint: None,
        }
    }

    fn fill(pg: &PgStatus, dd: &DataDir, job: Option<JobKind>, repair: bool, lead: bool) -> Member {
        let mut m = Member::default();
        fill_member(&mut m, pg, dd, job, repair, lead);
        m
    }

    #[test]
    fn roles_and_states_follow_patroni() {
        let m = fill(&running(false, false), &valid(), None, false, true);
        assert_eq!((m.role.as_str(), m.state.as_str()), ("primary", "running"));
        assert_eq!((m.xlog_location, m.timeline), (Some(900), Some(3)));
        assert_eq!(m.replication_state, None);

        let m = fill(&running(true, true), &valid(), None, false, false);
        assert_eq!((m.role.as_str(), m.state.as_str()), ("replica", "running"));
        assert_eq!(m.replication_state.as_deref(), Some("streaming"));
        assert_eq!(
            (m.receive_lsn, m.replay_lsn, m.xlog_location),
            (Some(800), Some(700), Some(800))
        );

        let m = fill(&running(true, false), &valid(), None, false, false);
        assert_eq!(m.replication_state.as_deref(), Some("in archive recovery"));

        let m = fill(
            &PgStatus::Stopped,
            &DataDir::Empty,
            Some(JobKind::Clone),
            false,
            false,
        );
        assert_eq!(
            (m.role.as_str(), m.state.as_str()),
            ("uninitialized", "creating replica")
        );

        // The leader whose postgres is down stays primary while it restarts.
        let m = fill(
            &PgStatus::Stopped,
            &valid(),
            Some(JobKind::Start),
            false,
            true,
        );
        assert_eq!((m.role.as_str(), m.state.as_str()), ("primary", "starting"));

        let m = fill(&PgStatus::Stopped, &valid(), None, true, false);
        assert_eq!(
            (m.role.as_str(), m.state.as_str()),
            ("replica", "need repair")
        );
        let m = fill(&PgStatus::Stopped, &valid(), None, false, false);
        assert_eq!(m.state, "stopped");
        // A postmaster that does not answer: a primary's data directory
        // keeps the leader "primary", a standby's says "replica".
        let m = fill(&PgStatus::Unresponsive, &valid(), None, false, true);
        assert_eq!(
            (m.role.as_str(), m.state.as_str()),
            ("primary", NOT_RESPONDING)
        );
        let standby = DataDir::Valid {
            system_id: "1".into(),
            standby: true,
            timeline: Some(3),
            history: vec![],
            clean_shutdown: false,
            checkpoint: None,
        };
        let m = fill(&PgStatus::Unresponsive, &standby, None, false, true);
        assert_eq!(
            (m.role.as_str(), m.state.as_str()),
            ("replica", NOT_RESPONDING)
        );
        let m = fill(&PgStatus::Unresponsive, &valid(), None, false, false);
        assert_eq!(
            (m.role.as_str(), m.state.as_str()),
            ("replica", NOT_RESPONDING)
        );
        let m = fill(
            &running(false, false),
            &valid(),
            Some(JobKind::Switchover),
            false,
            true,
        );
        assert_eq!(m.state, "switching over");
    }
}
