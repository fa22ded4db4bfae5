//! Failsafe mode: the leader's `failsafe` key, confirmations that hold off
//! rule 2 while etcd is out, and replicas that do not race a leader that
//! confirmed with them.

use super::*;

fn failsafe_config() -> DynamicConfig {
    DynamicConfig {
        failsafe_mode: true,
        ..DynamicConfig::default()
    }
}

#[test]
fn leader_publishes_every_member_in_the_failsafe_key() {
    let mut pg = running(false);
    if let PgStatus::Running(r) = &mut pg {
        r.slots = [("n2".to_string(), None), ("n3".to_string(), None)].into();
    }
    let mut o = obs("n1", Some(cluster(Some(("n1", 7)))), valid(), pg.clone());
    o.config = failsafe_config();
    let want: std::collections::BTreeMap<String, String> = ["n1", "n2", "n3"]
        .iter()
        .map(|n| {
            (
                n.to_string(),
                o.cluster.as_ref().unwrap().members[*n].api_url.clone(),
            )
        })
        .collect();
    assert!(d_actions(&o).contains(&Action::PublishFailsafe(Some(want.clone()))));
    // Written: nothing more to do.
    o.cluster.as_mut().unwrap().failsafe = Some(want);
    assert!(!d_actions(&o)
        .iter()
        .any(|a| matches!(a, Action::PublishFailsafe(_))));
    // Mode off: the key goes.
    o.config = DynamicConfig::default();
    assert!(d_actions(&o).contains(&Action::PublishFailsafe(None)));
}

#[test]
fn confirmations_hold_off_the_fence_only_in_failsafe_mode() {
    let mut o = obs("n1", None, valid(), running(false));
    o.last_renewal_sent = Some(o.now - Duration::from_secs(5));
    o.failsafe_confirmed = Some(o.now - Duration::from_millis(500));
    // Not in failsafe mode: the confirmation counts for nothing.
    let d = decide(&o);
    assert_eq!(d.actions, vec![Action::Stop]);
    o.config = failsafe_config();
    let d = decide(&o);
    assert_eq!(d.actions, vec![]);
    assert_eq!(d.reason.code(), "failsafe_holding");
    // A confirmation as old as the deadline fences like a renewal.
    o.failsafe_confirmed = Some(o.now - o.config.leader_deadline());
    assert_eq!(d_actions(&o), vec![Action::Stop]);
}

#[test]
fn a_replica_that_confirmed_lately_does_not_race() {
    let mut o = obs("n2", Some(cluster(None)), dir_on(1), replica_at(1, 100));
    o.config = failsafe_config();
    o.failsafe_heard = Some((Duration::from_secs(1), "n1".into()));
    let d = decide(&o);
    assert_eq!(d.actions, vec![]);
    assert_eq!(d.reason.code(), "failsafe_leader_alive");
    // A ttl later, the leader has fenced itself: the race is open.
    o.failsafe_heard = Some((o.config.ttl(), "n1".into()));
    assert_eq!(d_actions(&o), vec![Action::AcquireLeader]);
    // Without failsafe mode the ping means nothing.
    o.failsafe_heard = Some((Duration::from_secs(1), "n1".into()));
    o.config = DynamicConfig::default();
    assert_eq!(d_actions(&o), vec![Action::AcquireLeader]);
}

#[test]
fn a_member_the_failsafe_key_does_not_list_never_races() {
    let mut c = cluster(None);
    c.failsafe = Some([("n1".to_string(), "http://x".to_string())].into());
    let mut o = obs("n2", Some(c), dir_on(1), replica_at(1, 100));
    o.config = failsafe_config();
    let d = decide(&o);
    assert_eq!(d.actions, vec![]);
    assert_eq!(d.reason.code(), "not_in_failsafe");
}
