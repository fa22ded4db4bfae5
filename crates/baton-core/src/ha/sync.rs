//! Synchronous replication: what postgres enforces
//! (`synchronous_standby_names`), what the `sync` key promises an
//! election, and the one step at a time that takes both to what the
//! configuration asks for without the key ever promising more than
//! postgres enforced for every acknowledged commit.
//!
//! Two sets are in play (Patroni's model, `QuorumStateResolver`):
//! - the *rule*: each commit waits for `num` standbys out of `names`;
//! - the *electorate* (the `sync` key): a candidate listed in `voters`
//!   that hears from `quorum` other voters, and has at least their WAL, may
//!   promote.
//!
//! They are safe together when every set of standbys that can acknowledge
//! a commit overlaps every set that can elect ([`overlaps`]). A new rule
//! only covers commits made after it took effect, so the electorate moves
//! on to one that relies on a new rule only once that rule is *confirmed*:
//! `num` of its standbys flushed past where the primary's WAL was when the
//! agent first saw the rule in force. Until then the old electorate, safe
//! with the old rule, stands.

use std::collections::BTreeSet;

use crate::cluster::{ClusterView, SyncKey};
use crate::config::SyncMode;
use crate::instance::Running;
use crate::lsn::Lsn;

use super::{Action, Ineligible, Observation, Peer};

/// What `synchronous_standby_names` makes postgres enforce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncRule {
    /// How many standbys confirm each commit (0: asynchronous).
    pub num: u32,
    /// Which ones may (lower case, as postgres compares them); `None`:
    /// any standby (`*`, or a value Baton cannot read, taken as the most
    /// permissive so nothing is promised on it).
    pub names: Option<BTreeSet<String>>,
    /// `FIRST` (priority) rather than `ANY`. Either way a commit is on
    /// `num` of `names`, which is all the safety argument needs.
    pub first: bool,
}

impl SyncRule {
    pub fn none() -> SyncRule {
        SyncRule {
            num: 0,
            names: Some(BTreeSet::new()),
            first: true,
        }
    }

    fn any_standby() -> SyncRule {
        SyncRule {
            num: 1,
            names: None,
            first: false,
        }
    }

    /// Parses postgres's grammar: `''`, `a, b` (FIRST 1), `[FIRST|ANY] n
    /// (a, "B", ...)`, `*` as a name.
    pub fn parse(ssn: &str) -> SyncRule {
        let t = ssn.trim();
        if t.is_empty() {
            return SyncRule::none();
        }
        let (first, rest) = match t.split_once(char::is_whitespace) {
            Some((w, rest)) if w.eq_ignore_ascii_case("any") => (false, rest.trim()),
            Some((w, rest)) if w.eq_ignore_ascii_case("first") => (true, rest.trim()),
            _ => (true, t),
        };
        let (num, list) = match rest.split_once('(') {
            Some((n, list)) => {
                let Ok(num) = n.trim().parse::<u32>() else {
                    return SyncRule::any_standby();
                };
                let Some(list) = list.trim_end().strip_suffix(')') else {
                    return SyncRule::any_standby();
                };
                (num, list)
            }
            None => (1, rest),
        };
        let mut names = BTreeSet::new();
        for n in list.split(',') {
            let n = n.trim().trim_matches('"');
            if n == "*" {
                return SyncRule {
                    num,
                    names: None,
                    first,
                };
            }
            if !n.is_empty() {
                names.insert(n.to_ascii_lowercase());
            }
        }
        SyncRule {
            num,
            names: Some(names),
            first,
        }
    }

    /// The `synchronous_standby_names` value (names double-quoted).
    pub fn render(&self) -> String {
        if self.num == 0 {
            return String::new();
        }
        let list = match &self.names {
            None => "*".to_string(),
            Some(n) => n
                .iter()
                .map(|n| format!("\"{}\"", n.replace('"', "")))
                .collect::<Vec<_>>()
                .join(","),
        };
        let word = if self.first { "FIRST" } else { "ANY" };
        format!("{word} {} ({list})", self.num)
    }
}

/// What the `sync` key lets an election do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Electorate {
    /// Lower-case voter names.
    pub voters: BTreeSet<String>,
    /// Voters besides itself a candidate must hear from.
    pub quorum: u32,
}

impl Electorate {
    pub fn of(key: &SyncKey) -> Electorate {
        Electorate {
            voters: key
                .voters()
                .iter()
                .map(|v| v.to_ascii_lowercase())
                .collect(),
            quorum: key.quorum.unwrap_or(0),
        }
    }

    /// Patroni writes no `quorum` in `on` mode; a quorum above 0 is always
    /// written, whatever the mode, or the key would promise more.
    fn quorum_field(&self, mode: SyncMode) -> Option<u32> {
        let show = !self.voters.is_empty() && (mode == SyncMode::Quorum || self.quorum > 0);
        show.then_some(self.quorum)
    }

    /// The key for this electorate, naming members as they spell themselves.
    fn key(&self, leader: &str, cluster: &ClusterView, mode: SyncMode) -> SyncKey {
        let spelled: Vec<String> = self
            .voters
            .iter()
            .map(|v| {
                cluster
                    .members
                    .keys()
                    .find(|m| m.eq_ignore_ascii_case(v))
                    .cloned()
                    .unwrap_or_else(|| v.clone())
            })
            .collect();
        SyncKey {
            leader: Some(leader.to_string()),
            sync_standby: (!spelled.is_empty()).then(|| spelled.join(",")),
            quorum: self.quorum_field(mode),
        }
    }
}

/// Whether every set of standbys that can acknowledge a commit under
/// `rule` meets every set that can elect under `e` (a candidate and
/// `e.quorum` other voters): then the election sees the latest commit.
pub fn overlaps(rule: &SyncRule, e: &Electorate) -> bool {
    if e.voters.is_empty() {
        return true; // promises nothing
    }
    let Some(names) = &rule.names else {
        return false;
    };
    if rule.num == 0 {
        return false;
    }
    let outside = e.voters.difference(names).count() as u32;
    let electors = e.quorum + 1;
    // The fewest electors that must be standbys in `names`; the acks can
    // avoid them only if enough other standbys in `names` remain.
    let forced_in = electors.saturating_sub(outside).min(names.len() as u32);
    (names.len() as u32 - forced_in) < rule.num
}

/// Whether `rule` now covers every acknowledged commit: `num` of its
/// standbys flushed past `since` (the primary's WAL when the rule was
/// first seen in force).
pub fn confirmed(rule: &SyncRule, run: &Running, since: Option<Lsn>) -> bool {
    if rule.num == 0 {
        return true;
    }
    let Some(since) = since else {
        return false;
    };
    let n = run
        .replication
        .iter()
        .filter(|r| r.state == "streaming" && r.flush_lsn.is_some_and(|f| f >= since))
        .filter(|r| {
            rule.names
                .as_ref()
                .is_none_or(|n| n.contains(&r.application_name.to_ascii_lowercase()))
        })
        .count();
    n as u32 >= rule.num
}

/// The rule and electorate the configuration asks for, from the members
/// streaming from this primary now.
fn target(o: &Observation, cluster: &ClusterView, run: &Running) -> (SyncRule, Electorate) {
    let current = SyncRule::parse(&run.synchronous_standby_names);
    let mut healthy: Vec<(bool, Lsn, String)> = run
        .replication
        .iter()
        .filter(|r| r.state == "streaming")
        .filter_map(|r| {
            let (name, m) = cluster
                .members
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(&r.application_name))?;
            if name.eq_ignore_ascii_case(&o.me) || m.tags.nosync {
                return None;
            }
            let lower = name.to_ascii_lowercase();
            let kept = current.names.as_ref().is_some_and(|n| n.contains(&lower));
            Some((kept, r.flush_lsn.unwrap_or_default(), lower))
        })
        .collect();
    // Stay with the standbys already synchronous, then the most advanced.
    healthy.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2)));
    healthy.dedup_by(|a, b| a.2 == b.2);
    let wanted = o.config.synchronous_node_count.max(1) as usize;
    let quorum = o.config.synchronous_mode == SyncMode::Quorum;
    let picked: BTreeSet<String> = healthy
        .into_iter()
        .take(if quorum { usize::MAX } else { wanted })
        .map(|h| h.2)
        .collect();
    if picked.is_empty() {
        let rule = if o.config.synchronous_mode_strict {
            SyncRule::any_standby()
        } else {
            SyncRule::none()
        };
        return (rule, Electorate::default());
    }
    let num = picked.len().min(wanted) as u32;
    let e = Electorate {
        quorum: picked.len() as u32 - num,
        voters: picked.clone(),
    };
    let rule = SyncRule {
        num,
        names: Some(picked),
        first: !quorum,
    };
    (rule, e)
}

/// The leader's next step towards the configured synchronous state: at
/// most one change, to the key or to postgres, each safe on its own.
pub(super) fn leader_step(o: &Observation, cluster: &ClusterView, run: &Running) -> Vec<Action> {
    let mine = cluster.sync.as_ref().filter(|k| k.leader_is(&o.me));
    let mode = o.config.synchronous_mode;
    if mode == SyncMode::Off {
        // Back to asynchronous: postgres's own setting (the node file's
        // parameter, if any) returns, and the key promises nothing more.
        return match (&cluster.sync, mine) {
            (_, Some(_)) => vec![Action::SetSyncStandbys(None), Action::WriteSync(None)],
            (Some(_), None) => vec![Action::WriteSync(None)],
            (None, None) => vec![],
        };
    }
    let Some(key) = mine else {
        // Another leader's promise says nothing of our commits: claim the
        // key, promising nothing until a rule of ours is confirmed.
        return vec![Action::WriteSync(Some(
            Electorate::default().key(&o.me, cluster, mode),
        ))];
    };
    let rule = SyncRule::parse(&run.synchronous_standby_names);
    let now = Electorate::of(key);
    let (rule_to, e_to) = target(o, cluster, run);
    let ok = confirmed(&rule, run, o.sync_applied_at);
    if e_to != now && (e_to.voters.is_empty() || (ok && overlaps(&rule, &e_to))) {
        return vec![Action::WriteSync(Some(e_to.key(&o.me, cluster, mode)))];
    }
    if rule_to != rule && overlaps(&rule_to, &now) {
        return vec![Action::SetSyncStandbys(Some(rule_to.render()))];
    }
    if rule_to != rule && !now.voters.is_empty() {
        // Neither can move first: promise nothing for a moment, then the
        // new rule is safe (the agent skips it if the key write fails).
        return vec![
            Action::WriteSync(Some(Electorate::default().key(&o.me, cluster, mode))),
            Action::SetSyncStandbys(Some(rule_to.render())),
        ];
    }
    if key.quorum != now.quorum_field(mode) {
        // Same promise, written in the other mode's form.
        return vec![Action::WriteSync(Some(now.key(&o.me, cluster, mode)))];
    }
    vec![]
}

/// Whether this replica may take part in an election in synchronous mode:
/// listed in the `sync` key (or the leader it names, which wrote every
/// commit), and in quorum mode having heard from enough other voters.
/// With no key at all, no leader ever promised anything (a leader claims
/// the key before it names a standby, and a new one before it promotes:
/// the mode was just switched on, or the first leader died before its
/// first tick), so the asynchronous rules apply, as in Patroni.
pub(super) fn may_elect(o: &Observation, cluster: &ClusterView) -> Result<(), Ineligible> {
    let Some(key) = &cluster.sync else {
        return Ok(());
    };
    if key.leader_is(&o.me) {
        return Ok(());
    }
    if !key.lists(&o.me) {
        return Err(Ineligible::NotSynchronous);
    }
    let needed = key.quorum.unwrap_or(0);
    let heard = o
        .peers
        .iter()
        .filter(|p| p.running && !p.name.eq_ignore_ascii_case(&o.me) && key.lists(&p.name))
        .count() as u32;
    if heard < needed {
        return Err(Ineligible::QuorumNotHeard { heard, needed });
    }
    Ok(())
}

/// Whether a peer counts in the election: in synchronous mode only those
/// that may hold every acknowledged commit; a caught-up asynchronous
/// replica must not make a synchronous one yield to it forever.
pub(super) fn peer_counts(o: &Observation, cluster: &ClusterView, p: &Peer) -> bool {
    if o.config.synchronous_mode == SyncMode::Off {
        return true;
    }
    cluster
        .sync
        .as_ref()
        .is_none_or(|k| k.lists(&p.name) || k.leader_is(&p.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    fn e(voters: &[&str], quorum: u32) -> Electorate {
        Electorate {
            voters: set(voters),
            quorum,
        }
    }

    #[test]
    fn parses_postgres_grammar() {
        assert_eq!(SyncRule::parse(""), SyncRule::none());
        let r = SyncRule::parse("ANY 2 (a, \"B\", c)");
        assert_eq!((r.num, r.first), (2, false));
        assert_eq!(r.names, Some(set(&["a", "b", "c"])));
        let r = SyncRule::parse("a, b");
        assert_eq!((r.num, r.first, r.names), (1, true, Some(set(&["a", "b"]))));
        let r = SyncRule::parse("FIRST 1 (*)");
        assert_eq!((r.num, r.names), (1, None));
        let r = SyncRule::parse("2 (x,y)");
        assert_eq!((r.num, r.first), (2, true));
        // Unreadable: the most permissive reading, so nothing is promised.
        assert_eq!(SyncRule::parse("ANY two (a)").names, None);
        let rule = SyncRule::parse("ANY 2 (a,b,c)");
        assert_eq!(SyncRule::parse(&rule.render()), rule);
    }

    /// Every pair of an acknowledging set and an electing set is checked
    /// by brute force against `overlaps`, over all small configurations.
    #[test]
    fn overlap_is_exactly_the_brute_force_answer() {
        let all = ["a", "b", "c", "d"];
        let subsets: Vec<BTreeSet<String>> = (0u32..16)
            .map(|m| {
                all.iter()
                    .enumerate()
                    .filter(|(i, _)| m & (1 << i) != 0)
                    .map(|(_, n)| n.to_string())
                    .collect()
            })
            .collect();
        for s in &subsets {
            for v in &subsets {
                for num in 0..=s.len() as u32 {
                    for quorum in 0..v.len() as u32 {
                        let rule = SyncRule {
                            num,
                            names: Some(s.clone()),
                            first: false,
                        };
                        let el = Electorate {
                            voters: v.clone(),
                            quorum,
                        };
                        let acks: Vec<_> = subsets
                            .iter()
                            .filter(|a| a.len() as u32 == num && a.is_subset(s))
                            .collect();
                        let electors: Vec<_> = subsets
                            .iter()
                            .filter(|x| x.len() as u32 == quorum + 1 && x.is_subset(v))
                            .collect();
                        let brute = v.is_empty()
                            || (num > 0
                                && acks
                                    .iter()
                                    .all(|a| electors.iter().all(|x| !a.is_disjoint(x))));
                        assert_eq!(
                            overlaps(&rule, &el),
                            brute,
                            "rule {num} of {s:?}, electorate {quorum}+1 of {v:?}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn any_standby_promises_nothing() {
        assert!(!overlaps(&SyncRule::any_standby(), &e(&["a"], 0)));
        assert!(overlaps(&SyncRule::any_standby(), &e(&[], 0)));
        assert!(!overlaps(&SyncRule::none(), &e(&["a"], 0)));
    }
}
