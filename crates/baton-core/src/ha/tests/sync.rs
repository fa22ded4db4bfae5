//! Synchronous mode: the leader's steps on the `sync` key and
//! `synchronous_standby_names`, and who may take part in an election.

use super::*;
use crate::cluster::SyncKey;
use crate::config::SyncMode;
use crate::instance::ReplicationRow;

fn sync_config(mode: SyncMode) -> DynamicConfig {
    DynamicConfig {
        synchronous_mode: mode,
        ..DynamicConfig::default()
    }
}

fn key(voters: Option<&str>, quorum: Option<u32>) -> Option<SyncKey> {
    Some(SyncKey {
        leader: Some("n1".into()),
        sync_standby: voters.map(str::to_string),
        quorum,
    })
}

fn row(name: &str, flush: u64) -> ReplicationRow {
    ReplicationRow {
        application_name: name.into(),
        client_addr: None,
        state: "streaming".into(),
        sent_lsn: Some(Lsn(flush)),
        flush_lsn: Some(Lsn(flush)),
        replay_lsn: Some(Lsn(flush)),
        sync_state: "async".into(),
        replay_lag_ms: None,
    }
}

/// The leader n1 in `mode`, its slots in place, with `ssn` in force (seen
/// first at WAL 100), `rows` streaming and the `sync` key `k`.
fn leader(mode: SyncMode, ssn: &str, rows: Vec<ReplicationRow>, k: Option<SyncKey>) -> Observation {
    let mut pg = running(false);
    if let PgStatus::Running(r) = &mut pg {
        r.slots = [("n2".to_string(), None), ("n3".to_string(), None)].into();
        r.synchronous_standby_names = ssn.into();
        r.replication = rows;
    }
    let mut c = cluster(Some(("n1", 7)));
    c.sync = k;
    c.config = Some(sync_config(mode));
    let mut o = obs("n1", Some(c), valid(), pg);
    o.config = sync_config(mode);
    o.sync_applied_at = Some(Lsn(100));
    o
}

fn sync_actions(o: &Observation) -> Vec<Action> {
    d_actions(o)
        .into_iter()
        .filter(|a| matches!(a, Action::WriteSync(_) | Action::SetSyncStandbys(_)))
        .collect()
}

#[test]
fn leader_claims_the_key_then_names_a_standby_then_promises_it() {
    let rows = || vec![row("n2", 100), row("n3", 100)];
    // No key of ours: claim it, promising nothing.
    let o = leader(SyncMode::On, "", rows(), None);
    assert_eq!(
        sync_actions(&o),
        vec![Action::WriteSync(key(None, None))],
        "{:?}",
        decide(&o)
    );
    // Ours, empty: postgres first.
    let o = leader(SyncMode::On, "", rows(), key(None, None));
    assert_eq!(
        sync_actions(&o),
        vec![Action::SetSyncStandbys(Some("FIRST 1 (\"n2\")".into()))]
    );
    // In force, but n2 has not flushed past where it took effect: wait.
    let o = leader(
        SyncMode::On,
        "FIRST 1 (\"n2\")",
        vec![row("n2", 99), row("n3", 100)],
        key(None, None),
    );
    assert_eq!(sync_actions(&o), vec![]);
    // Confirmed: the key may now promise n2.
    let o = leader(SyncMode::On, "FIRST 1 (\"n2\")", rows(), key(None, None));
    assert_eq!(
        sync_actions(&o),
        vec![Action::WriteSync(key(Some("n2"), None))]
    );
    // Steady.
    let o = leader(
        SyncMode::On,
        "FIRST 1 (\"n2\")",
        rows(),
        key(Some("n2"), None),
    );
    assert_eq!(sync_actions(&o), vec![]);
}

#[test]
fn a_lost_sync_standby_is_replaced_without_the_key_promising_it_meanwhile() {
    // n2 is gone; n3 streams. The key cannot name n3 before postgres
    // waits for it, nor postgres drop n2 while the key promises n2.
    let o = leader(
        SyncMode::On,
        "FIRST 1 (\"n2\")",
        vec![row("n3", 100)],
        key(Some("n2"), None),
    );
    assert_eq!(
        sync_actions(&o),
        vec![
            Action::WriteSync(key(None, None)),
            Action::SetSyncStandbys(Some("FIRST 1 (\"n3\")".into()))
        ]
    );
    // Had the key write been refused, the agent stops there; the next
    // tick, with the key empty, changes postgres alone.
    let o = leader(
        SyncMode::On,
        "FIRST 1 (\"n2\")",
        vec![row("n3", 100)],
        key(None, None),
    );
    assert_eq!(
        sync_actions(&o),
        vec![Action::SetSyncStandbys(Some("FIRST 1 (\"n3\")".into()))]
    );
    let o = leader(
        SyncMode::On,
        "FIRST 1 (\"n3\")",
        vec![row("n3", 100)],
        key(None, None),
    );
    assert_eq!(
        sync_actions(&o),
        vec![Action::WriteSync(key(Some("n3"), None))]
    );
}

#[test]
fn nobody_left_goes_asynchronous_unless_strict() {
    let o = leader(SyncMode::On, "FIRST 1 (\"n2\")", vec![], key(None, None));
    assert_eq!(
        sync_actions(&o),
        vec![Action::SetSyncStandbys(Some(String::new()))]
    );
    let mut o = leader(SyncMode::On, "FIRST 1 (\"n2\")", vec![], key(None, None));
    o.config.synchronous_mode_strict = true;
    assert_eq!(
        sync_actions(&o),
        vec![Action::SetSyncStandbys(Some("ANY 1 (*)".into()))]
    );
}

#[test]
fn nosync_members_are_never_named() {
    let mut o = leader(SyncMode::On, "", vec![row("n2", 100)], key(None, None));
    if let Some(c) = &mut o.cluster {
        c.members.get_mut("n2").unwrap().tags.nosync = true;
    }
    assert_eq!(sync_actions(&o), vec![]);
}

#[test]
fn quorum_widens_the_key_before_postgres_and_narrows_it_after() {
    let both = || vec![row("n2", 100), row("n3", 100)];
    // n3 joins ANY 1 (n2): the key first hears two voters, then postgres
    // may accept either.
    let o = leader(
        SyncMode::Quorum,
        "ANY 1 (\"n2\")",
        both(),
        key(Some("n2"), Some(0)),
    );
    assert_eq!(
        sync_actions(&o),
        vec![Action::WriteSync(key(Some("n2,n3"), Some(1)))]
    );
    let o = leader(
        SyncMode::Quorum,
        "ANY 1 (\"n2\")",
        both(),
        key(Some("n2,n3"), Some(1)),
    );
    assert_eq!(
        sync_actions(&o),
        vec![Action::SetSyncStandbys(Some(
            "ANY 1 (\"n2\",\"n3\")".into()
        ))]
    );
    // n3 leaves: postgres first, then (confirmed) the key.
    let o = leader(
        SyncMode::Quorum,
        "ANY 1 (\"n2\",\"n3\")",
        vec![row("n2", 100)],
        key(Some("n2,n3"), Some(1)),
    );
    assert_eq!(
        sync_actions(&o),
        vec![Action::SetSyncStandbys(Some("ANY 1 (\"n2\")".into()))]
    );
    let o = leader(
        SyncMode::Quorum,
        "ANY 1 (\"n2\")",
        vec![row("n2", 100)],
        key(Some("n2,n3"), Some(1)),
    );
    assert_eq!(
        sync_actions(&o),
        vec![Action::WriteSync(key(Some("n2"), Some(0)))]
    );
}

#[test]
fn back_to_asynchronous_resets_postgres_and_drops_the_key() {
    let o = leader(
        SyncMode::Off,
        "FIRST 1 (\"n2\")",
        vec![row("n2", 100)],
        key(Some("n2"), None),
    );
    assert_eq!(
        sync_actions(&o),
        vec![Action::SetSyncStandbys(None), Action::WriteSync(None)]
    );
}

#[test]
fn promotion_in_synchronous_mode_claims_the_key_first() {
    let mut c = cluster(Some(("n2", 7)));
    c.config = Some(sync_config(SyncMode::On));
    let mut o = obs("n2", Some(c), dir_on(1), replica_at(1, 100));
    o.config = sync_config(SyncMode::On);
    let d = decide(&o);
    let claim = d
        .actions
        .iter()
        .position(|a| *a == Action::ClaimSync { strict: false });
    let promote = d
        .actions
        .iter()
        .position(|a| matches!(a, Action::Promote { .. }));
    assert!(
        claim.is_some() && claim < promote,
        "ClaimSync must come before Promote: {:?}",
        d.actions
    );
}

fn election(mode: SyncMode, me: &str, k: Option<SyncKey>, peers: Vec<Peer>) -> Decision {
    let mut c = with_optime(cluster(None), 100);
    c.sync = k;
    c.config = Some(sync_config(mode));
    let mut o = obs(me, Some(c), dir_on(1), replica_at(1, 100));
    o.config = sync_config(mode);
    o.peers = peers;
    decide(&o)
}

#[test]
fn only_a_synchronous_standby_takes_part_in_an_election() {
    // n3 is caught up but asynchronous: it must not promote.
    let d = election(SyncMode::On, "n3", key(Some("n2"), None), vec![]);
    assert_eq!(d.actions, vec![]);
    assert_eq!(d.reason.code(), "not_synchronous");
    // No key at all: no leader ever promised anything (the mode was just
    // switched on): the asynchronous rules apply.
    let d = election(SyncMode::On, "n2", None, vec![]);
    assert_eq!(d.actions, vec![Action::AcquireLeader], "{:?}", d.reason);
    // n2 is synchronous, and does not yield to the asynchronous n3 even
    // though n3 shows more WAL.
    let d = election(
        SyncMode::On,
        "n2",
        key(Some("n2"), None),
        vec![peer("n3", 1, 500)],
    );
    assert_eq!(d.actions, vec![Action::AcquireLeader], "{:?}", d.reason);
    // With the mode off, the caught-up n3 may promote.
    let d = election(SyncMode::Off, "n3", key(Some("n2"), None), vec![]);
    assert_eq!(d.actions, vec![Action::AcquireLeader], "{:?}", d.reason);
}

#[test]
fn quorum_election_hears_enough_voters_first() {
    let k = key(Some("n2,n3"), Some(1));
    let d = election(SyncMode::Quorum, "n2", k.clone(), vec![]);
    assert_eq!(d.actions, vec![]);
    assert_eq!(d.reason.code(), "quorum_not_heard");
    // n3 answers with less WAL: n2 has the latest acknowledged commit.
    let d = election(SyncMode::Quorum, "n2", k.clone(), vec![peer("n3", 1, 50)]);
    assert_eq!(d.actions, vec![Action::AcquireLeader], "{:?}", d.reason);
    // n3 answers with more: n2 yields to it.
    let d = election(SyncMode::Quorum, "n2", k, vec![peer("n3", 1, 500)]);
    assert_eq!(d.actions, vec![]);
    assert_eq!(d.reason.code(), "yielding");
}

#[test]
fn switchover_candidate_must_be_synchronous() {
    let mut c = healthy_replicas(cluster(Some(("n1", 7))));
    c.config = Some(sync_config(SyncMode::On));
    c.sync = key(Some("n2"), None);
    assert_eq!(
        candidate_problem(&c, "n3", 1 << 20, None).map(|p| p.code()),
        Some("not_synchronous")
    );
    assert_eq!(candidate_problem(&c, "n2", 1 << 20, None), None);
}

/// A primary with three standbys under random commits, standby deaths and
/// returns, lagging flushes and configuration changes, the leader taking
/// `leader_step` each tick as the agent would: after every event, every
/// set of voters that can elect (a candidate and `quorum` others) holds
/// the latest acknowledged commit.
#[test]
fn no_acknowledged_commit_is_lost_to_any_election_the_key_allows() {
    use crate::ha::sync::{Electorate, SyncRule};
    use std::collections::{BTreeMap, BTreeSet};

    let standbys = ["n2", "n3", "n4"];
    for seed in 1..=400u64 {
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut flush: BTreeMap<&str, u64> = standbys.iter().map(|s| (*s, 0)).collect();
        let mut alive: BTreeSet<&str> = standbys.iter().copied().collect();
        let (mut wal, mut acked) = (0u64, 0u64);
        let mut ssn = String::new();
        let mut applied_at: Option<u64> = Some(0);
        let mut sync_key: Option<SyncKey> = None;
        let mut config = sync_config(SyncMode::On);
        let mut log: Vec<String> = vec![];
        for step in 0..310 {
            // The last ten steps are quiet ticks with every standby caught
            // up: the leader must settle (no step repeats forever).
            let quiet = step >= 300;
            if quiet {
                for s in &alive {
                    flush.insert(s, wal);
                }
            }
            match if quiet { 9 } else { next(10) } {
                0 => {
                    let s = standbys[next(3) as usize];
                    if !alive.remove(s) {
                        alive.insert(s);
                    }
                    log.push(format!("toggle {s}"));
                }
                1..=3 => {
                    wal += 1;
                    for s in &alive {
                        if next(2) == 0 {
                            flush.insert(s, wal);
                        }
                    }
                    log.push(format!("commit {wal}"));
                }
                4 => {
                    if let Some(s) = alive.iter().nth(next(alive.len().max(1) as u64) as usize) {
                        flush.insert(s, wal);
                    }
                }
                5 => {
                    config.synchronous_mode = if next(2) == 0 {
                        SyncMode::On
                    } else {
                        SyncMode::Quorum
                    };
                    config.synchronous_node_count = 1 + next(3) as u32;
                    config.synchronous_mode_strict = next(3) == 0;
                    log.push(format!("config {config:?}"));
                }
                _ => {
                    // A tick of the leader.
                    if applied_at.is_none() {
                        applied_at = Some(wal);
                    }
                    let rows = alive.iter().map(|s| row(s, flush[s])).collect();
                    let mut o = leader(config.synchronous_mode, &ssn, rows, sync_key.clone());
                    if let Some(c) = &mut o.cluster {
                        c.members.insert("n4".into(), member(5434));
                        c.config = Some(config.clone());
                    }
                    o.config = config.clone();
                    o.sync_applied_at = applied_at.map(Lsn);
                    let actions = sync_actions(&o);
                    assert!(
                        step < 305 || actions.is_empty(),
                        "seed {seed}: the leader does not settle: {actions:?}\n{}",
                        log.join("\n")
                    );
                    for a in actions {
                        log.push(format!("{a:?}"));
                        match a {
                            Action::WriteSync(k) => sync_key = k,
                            Action::SetSyncStandbys(v) => {
                                let v = v.unwrap_or_default();
                                if v != ssn {
                                    ssn = v;
                                    applied_at = None;
                                }
                            }
                            _ => unreachable!(),
                        }
                    }
                }
            }
            // What postgres acknowledged under the rule in force.
            let rule = SyncRule::parse(&ssn);
            let mut held: Vec<u64> = standbys
                .iter()
                .filter(|s| rule.names.as_ref().is_none_or(|n| n.contains(**s)))
                .map(|s| flush[s])
                .collect();
            held.sort_unstable_by(|a, b| b.cmp(a));
            let now_acked = match rule.num {
                0 => wal,
                n => held.get(n as usize - 1).copied().unwrap_or(0),
            };
            acked = acked.max(now_acked);
            // Every election the key allows sees it.
            let Some(k) = &sync_key else { continue };
            let e = Electorate::of(k);
            let voters: Vec<&String> = e.voters.iter().collect();
            for m in 0u32..(1 << voters.len()) {
                if m.count_ones() != e.quorum + 1 {
                    continue;
                }
                let best = (0..voters.len())
                    .filter(|i| m & (1 << i) != 0)
                    .map(|i| flush[voters[i].as_str()])
                    .max()
                    .unwrap_or(0);
                assert!(
                    best >= acked,
                    "seed {seed} step {step}: voters {:?} elect without commit {acked} \
                     (ssn {ssn:?}, key {k:?}, flush {flush:?})\n{}",
                    (0..voters.len())
                        .filter(|i| m & (1 << i) != 0)
                        .map(|i| voters[i])
                        .collect::<Vec<_>>(),
                    log.join("\n")
                );
            }
        }
    }
}
