//! Only the member holding the leader key, on a lease etcd still holds, may
//! accept writes (rule 1, with rule 2's deadline falling before the lease
//! expires). Stronger than `single_writer`: a primary left running after its
//! key expired breaks it before anyone else has promoted.

use tokio::time::Instant;

use crate::world::{Mode, World};

pub fn check(w: &World) -> Option<String> {
    let key = w.etcd.get("leader");
    for n in &w.nodes {
        if n.pg.running != Some(Mode::Primary) {
            continue;
        }
        let holds = key.is_some_and(|kv| kv.value == n.name);
        let live = key.is_some_and(|kv| w.etcd.lease_alive(kv.lease, Instant::now()));
        if !(holds && live) {
            return Some(format!(
                "{} may accept writes without the leader key on a live lease (key: {:?})",
                n.name,
                key.map(|kv| (&kv.value, kv.lease, live))
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::world::testing::world_of;

    #[test]
    fn a_primary_needs_the_key_on_a_live_lease() {
        let mut w = world_of(3);
        w.nodes[0].pg.running = Some(Mode::Primary);
        assert!(check(&w).is_some(), "no key at all");
        w.etcd.leases.insert(
            7,
            (
                Instant::now() + Duration::from_secs(4),
                Duration::from_secs(4),
            ),
        );
        w.etcd.put("leader", "n1", 7);
        assert_eq!(check(&w), None);
        w.etcd.put("leader", "n2", 7);
        assert!(check(&w).unwrap().contains("n1"), "someone else's key");
        w.etcd.put("leader", "n1", 7);
        w.etcd
            .leases
            .insert(7, (Instant::now(), Duration::from_secs(4)));
        assert!(check(&w).is_some(), "the lease expired");
    }
}
