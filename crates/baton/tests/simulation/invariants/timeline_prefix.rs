//! No member streams WAL that is not a prefix of the leader's: WAL flows
//! only along the leader's history. A replica that takes WAL from a primary
//! that lost the leader key (not fenced in time) breaks it as soon as the
//! new leader's timeline forks below what the replica received.

use crate::world::World;

pub fn check(w: &World) -> Option<String> {
    let l = w.leader()?;
    let leader_wal = w.nodes[l].pg.data.as_ref()?;
    for r in 0..w.nodes.len() {
        let Some(u) = w.streaming_from(r) else {
            continue;
        };
        let wal = w.nodes[r].pg.data.as_ref()?;
        if !wal.is_prefix_of(leader_wal) {
            return Some(format!(
                "{} streams from {} WAL {wal:?} that is not a prefix of leader {}'s {leader_wal:?}",
                w.nodes[r].name, w.nodes[u].name, w.nodes[l].name
            ));
        }
    }
    None
}
