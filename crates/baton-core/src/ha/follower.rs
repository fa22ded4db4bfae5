//! Replicas and their lineage (rule 5): follow the leader only when this
//! member's history is a prefix of the leader's; otherwise rewind or rebuild.

use std::time::Duration;

use crate::cluster::ClusterView;
use crate::instance::{slot_name, DataDir, Running};
use crate::lsn::Lsn;

use super::{decision, Action, Decision, JobKind, JobStatus, Observation, Reason};

/// A running replica with a leader: stop if it is a primary (rule 1) or
/// can never stream from the leader; else re-point, or follow.
pub(super) fn decide_running(
    o: &Observation,
    cluster: &ClusterView,
    run: &Running,
    l: &str,
) -> Decision {
    if !run.in_recovery {
        // Rule 1: another member holds the key; stop writes now.
        return decision(
            vec![Action::Stop],
            Reason::DemotingForeignLeader {
                leader: l.to_string(),
            },
        );
    }
    // The system's own lineage verdict, for those whose timelines Baton
    // cannot read (openGauss): it cannot stream what it needs.
    if let Some(detail) = &run.needs_repair {
        return decision(
            vec![Action::Stop],
            Reason::InstanceNeedsRepair {
                leader: l.to_string(),
                detail: detail.clone(),
            },
        );
    }
    let address = cluster.members.get(l).and_then(|m| m.pg_address());
    let points_at_leader = address
        .as_ref()
        .is_some_and(|(host, port)| follows(run, host, *port, &slot_name(&o.me)));
    let streams_from_leader = points_at_leader && run.receiver_streaming;
    if diverged(
        run,
        cluster,
        l,
        streams_from_leader,
        o.not_streaming_for,
        o.config.ttl(),
    ) {
        return decision(
            vec![Action::Stop],
            Reason::Diverged {
                leader: l.to_string(),
            },
        );
    }
    if address.is_none() {
        return decision(
            vec![],
            Reason::LeaderNotReachable {
                leader: l.to_string(),
            },
        );
    }
    if !points_at_leader {
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

/// A stopped member with a leader to follow: start, or first rewind (or
/// rebuild) unless its WAL is provably on the leader's lineage (rule 5).
pub(super) fn decide_stopped(
    o: &Observation,
    cluster: &ClusterView,
    leader: &str,
    failed: impl Fn(Reason) -> Reason,
) -> Decision {
    let from = leader.to_string();
    if let JobStatus::Failed(JobKind::Rewind, e, true) = &o.job {
        // The leader could not be reached: try again, keep the data.
        return decision(
            vec![Action::Rewind { from: from.clone() }],
            Reason::RewindSourceDown {
                from,
                error: e.clone(),
            },
        );
    }
    if let JobStatus::Failed(JobKind::Rewind, e, false) = &o.job {
        let reason = Reason::RewindFailed {
            error: e.clone(),
            rebuilding: o.rebuild_allowed,
        };
        let actions = if o.rebuild_allowed {
            vec![Action::Rebuild { from }]
        } else {
            vec![]
        };
        return decision(actions, reason);
    }
    if let Some(detail) = &o.instance_needs_repair {
        if !matches!(o.job, JobStatus::Done(JobKind::Rewind | JobKind::Rebuild)) {
            return decision(
                vec![Action::Rewind { from: from.clone() }],
                Reason::Repairing {
                    from,
                    detail: detail.clone(),
                },
            );
        }
    }
    let DataDir::Valid {
        timeline: Some(mine),
        history,
        ..
    } = &o.data_dir
    else {
        return decision(
            vec![Action::StartReplica { leader: from }],
            failed(Reason::Starting),
        );
    };
    let Some(theirs) = cluster.members.get(leader).and_then(|m| m.timeline) else {
        return decision(vec![], Reason::LeaderNotReachable { leader: from });
    };
    // Where the stopped WAL ends is unknown, so anything but the leader's
    // own timeline with the same history goes through pg_rewind, which is
    // a no-op ("no rewind required") when nothing diverged.
    let same_lineage =
        *mine == theirs && lineage_agrees(*mine, history, &history_points(cluster)) == Some(true);
    let rewound = matches!(o.job, JobStatus::Done(JobKind::Rewind));
    if !same_lineage && !rewound && !clean_prefix(o, *mine, history, theirs, cluster) {
        return decision(
            vec![Action::Rewind { from: from.clone() }],
            Reason::Rewinding {
                from,
                timeline: *mine,
                leader_timeline: theirs,
            },
        );
    }
    decision(
        vec![Action::StartReplica { leader: from }],
        failed(Reason::Starting),
    )
}

/// A cleanly shut-down primary whose shutdown checkpoint lies before the
/// point where the leader's next timeline forked from ours has nothing the
/// leader lacks: the planned-switchover case, which needs no pg_rewind.
pub(super) fn clean_prefix(
    o: &Observation,
    mine: u32,
    history: &[(u32, Lsn)],
    theirs: u32,
    cluster: &ClusterView,
) -> bool {
    let DataDir::Valid {
        clean_shutdown: true,
        checkpoint: Some(ckpt),
        ..
    } = &o.data_dir
    else {
        return false;
    };
    let points = history_points(cluster);
    mine < theirs
        && lineage_agrees(mine, history, &points) == Some(true)
        && points
            .iter()
            .find(|(t, _)| *t == mine)
            .is_some_and(|(_, switch)| ckpt.0 < *switch)
}

/// Whether the switch points of every timeline before `my_tl` (`mine`,
/// from this node's history file) match the leader's history. `None` when
/// the leader's history does not cover them yet (not published so far).
/// Two promotions can pick the same timeline number; only the switch
/// points tell those timelines apart.
pub fn lineage_agrees(my_tl: u32, mine: &[(u32, Lsn)], theirs: &[(u32, u64)]) -> Option<bool> {
    for t in 1..my_tl {
        let my_switch = mine.iter().find(|(tl, _)| *tl == t).map(|(_, l)| l.0);
        let their_switch = theirs.iter().find(|(tl, _)| *tl == t).map(|(_, l)| *l);
        match (my_switch, their_switch) {
            (Some(a), Some(b)) if a != b => return Some(false),
            (Some(_), Some(_)) => {}
            (_, None) => return None,
            (None, Some(_)) => return None,
        }
    }
    Some(true)
}

/// Whether a running replica can never stream from the leader: its WAL is
/// on a timeline the leader never had, has a different past, or (after it
/// has failed to stream for `grace`) went past the point where the
/// leader's timeline forked from its own. The last test waits because a
/// replica's timeline is only known for sure while it streams or when the
/// instance reported its replay timeline itself: right after it is
/// re-pointed, its receive position may already be on the leader's new
/// timeline while the timeline it reports is still the old one.
pub(super) fn diverged(
    run: &Running,
    cluster: &ClusterView,
    leader: &str,
    streams_from_leader: bool,
    not_streaming_for: Option<Duration>,
    grace: Duration,
) -> bool {
    let (Some(mine), Some(theirs)) = (
        run.timeline,
        cluster.members.get(leader).and_then(|m| m.timeline),
    ) else {
        return false;
    };
    let points = history_points(cluster);
    // A timeline the leader never had, unless we stream from the leader:
    // then its member key (up to a tick old) still shows the timeline it
    // had before it promoted, and our WAL is in fact its WAL.
    if mine > theirs && !streams_from_leader {
        return true;
    }
    if lineage_agrees(mine, &run.history, &points) == Some(false) {
        return true;
    }
    if mine == theirs || not_streaming_for.is_none_or(|d| d < grace) {
        return false;
    }
    let position = run
        .timeline_lsn
        .or(run.receive_lsn.max(run.replay_lsn))
        .map(|l| l.0)
        .unwrap_or(0);
    // An older timeline the leader's history does not list was never on the
    // leader's line (a promotion onto a reserved, higher number skipped
    // it); one it lists is ours only up to its switch point.
    match points.iter().find(|(tl, _)| *tl == mine) {
        Some((_, switch)) => position > *switch,
        None => mine < theirs,
    }
}

/// Timeline switch points from the `history` key: `(timeline, switch LSN)`.
pub fn history_points(cluster: &ClusterView) -> Vec<(u32, u64)> {
    cluster
        .history
        .as_ref()
        .and_then(|h| h.as_array())
        .map(|entries| {
            entries
                .iter()
                .filter_map(|e| {
                    let e = e.as_array()?;
                    Some((e.first()?.as_u64()? as u32, e.get(1)?.as_u64()?))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the running replica's settings already point at `host:port`.
pub(super) fn follows(run: &Running, host: &str, port: u16, slot: &str) -> bool {
    let ci = &run.primary_conninfo;
    let has = |k: &str, v: &str| {
        ci.split_whitespace()
            .any(|kv| kv == format!("{k}={v}") || kv == format!("{k}='{v}'"))
    };
    has("host", host) && has("port", &port.to_string()) && run.primary_slot_name == slot
}
