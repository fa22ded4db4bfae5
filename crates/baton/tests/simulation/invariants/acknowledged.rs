//! Synchronous mode's promise: no acknowledged commit is ever lost. Every
//! primary's WAL holds the latest commit any primary acknowledged (the
//! driver tracks it from the rule in force and what the standbys hold),
//! and at every moment the leader's `sync` key promises no election that
//! could miss an acknowledgement (`ha::sync::overlaps`).

use baton_core::config::SyncMode;
use baton_core::ha::sync::{overlaps, Electorate, SyncRule};

use crate::world::{Mode, World};

pub fn check(w: &World) -> Option<String> {
    if w.sync == SyncMode::Off {
        return None;
    }
    let key: Option<baton_core::cluster::SyncKey> = w
        .etcd
        .get("sync")
        .and_then(|kv| serde_json::from_str(&kv.value).ok());
    for n in &w.nodes {
        let (Some(Mode::Primary), Some(d)) = (&n.pg.running, &n.pg.data) else {
            continue;
        };
        if let Some(a) = &w.acked {
            if !a.is_prefix_of(d) {
                return Some(format!(
                    "primary {} lacks the acknowledged commit at {a:?}: its WAL is {d:?}",
                    n.name
                ));
            }
        }
        if let Some(key) = key.as_ref().filter(|k| k.leader_is(&n.name)) {
            let rule = SyncRule::parse(&n.pg.sync_standbys);
            if !overlaps(&rule, &Electorate::of(key)) {
                return Some(format!(
                    "the sync key {key:?} promises an election that can miss commits {} acknowledges under {:?}",
                    n.name, n.pg.sync_standbys
                ));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::testing::world_of;
    use crate::world::Wal;

    #[test]
    fn a_primary_without_the_acknowledged_commit_breaks_it() {
        let mut w = world_of(2);
        w.sync = SyncMode::On;
        let wal = |tl: u32, lsn: u64, history: Vec<(u32, u64)>, ids: Vec<(u32, u64)>| Wal {
            timeline: tl,
            lsn,
            history,
            ids,
        };
        w.acked = Some(wal(1, 500, vec![], vec![(1, 1)]));
        w.nodes[1].pg.running = Some(Mode::Primary);
        w.nodes[1].pg.data = Some(wal(2, 900, vec![(1, 500)], vec![(1, 1), (2, 2)]));
        assert_eq!(check(&w), None, "promoted at the acknowledged point");
        w.nodes[1].pg.data = Some(wal(2, 900, vec![(1, 400)], vec![(1, 1), (2, 2)]));
        assert!(check(&w).unwrap().contains("lacks the acknowledged commit"));
    }
}
