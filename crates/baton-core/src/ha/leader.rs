//! The leader's own tick once postgres runs.

use crate::cluster::ClusterView;
use crate::instance::{slot_name, Running};

use super::follower::history_points;
use super::{decision, switchover, Action, Decision, Observation, Reason};

/// The leader, running: primary after promotion, publishing status,
/// history and slots, and serving switchover requests.
pub(super) fn decide_running(o: &Observation, cluster: &ClusterView, run: &Running) -> Decision {
    let missing: Vec<String> = cluster
        .members
        .keys()
        .filter(|m| **m != o.me && !run.slots.contains_key(&slot_name(m)))
        .cloned()
        .collect();
    if run.in_recovery {
        // Slots first, so the others can stream from us from the start;
        // also those the last leader retained (its own among them): a
        // leader that died has no member key any more, yet it rejoins by
        // streaming from the fork point. A slot made now, on a standby,
        // reserves WAL from its last restartpoint, before that point; made
        // after the promotion it would reserve from then on only, and a
        // busy new leader recycles the segment the old one needs (seen in
        // bench/rejoin: "requested WAL segment has already been removed").
        let mut create = missing;
        for slot in cluster.managed_slots(&o.me) {
            if !run.slots.contains_key(&slot) && !create.iter().any(|m| slot_name(m) == slot) {
                create.push(slot);
            }
        }
        let mut actions = vec![];
        if !create.is_empty() {
            actions.push(Action::CreateSlots(create));
        }
        let from = run.timeline.unwrap_or(1);
        if !o.config.synchronous_mode.is_off() {
            actions.push(Action::ClaimSync {
                strict: o.config.synchronous_mode_strict,
            });
        }
        actions.push(Action::Promote {
            from,
            to: cluster.next_timeline(from),
        });
        return decision(actions, Reason::Promoting);
    }
    if let Some(e) = &o.promotion_failed {
        return decision(vec![Action::Stop], Reason::PromotionNotVerified(e.clone()));
    }
    let mut actions = vec![];
    // Completes our bootstrap, and restores the key if etcd lost its data:
    // without it an empty member would bootstrap a second cluster.
    if matches!(cluster.initialize.as_deref(), None | Some("")) {
        actions.push(Action::PublishInitialize(run.system_id.clone()));
    }
    if cluster.config.is_none() && cluster.config_error.is_none() {
        actions.push(Action::InitConfig);
    }
    if !missing.is_empty() {
        actions.push(Action::CreateSlots(missing));
    }
    let expired: Vec<String> = o
        .absent_slots
        .iter()
        .filter(|(_, gone)| **gone >= o.config.member_slots_ttl())
        .map(|(slot, _)| slot.clone())
        .collect();
    if !expired.is_empty() {
        actions.push(Action::DropSlots(expired));
    }
    if run.timeline.is_some_and(|t| t > 1) {
        // Exactly our history file's switch points: skipped timelines leave
        // gaps, so "recorded up to tl - 1" is no test of being up to date.
        let points = history_points(cluster);
        let mine: Vec<(u32, u64)> = run.history.iter().map(|(t, l)| (*t, l.0)).collect();
        if points != mine {
            actions.push(Action::PublishHistory);
        }
    }
    actions.extend(super::sync::leader_step(o, cluster, run));
    let failsafe = o.config.failsafe_mode.then(|| {
        cluster
            .members
            .iter()
            .map(|(n, m)| (n.clone(), m.api_url.clone()))
            .collect()
    });
    if failsafe != cluster.failsafe {
        actions.push(Action::PublishFailsafe(failsafe));
    }
    actions.push(Action::PublishStatus);
    let reason = switchover::leader_request(o, cluster, &mut actions);
    decision(actions, reason)
}
