//! Never two members that may accept writes at the same virtual time. A
//! primary whose queries hang still counts: it accepts writes the moment
//! it resumes.

use crate::world::{Mode, World};

pub fn check(w: &World) -> Option<String> {
    let writable: Vec<&str> = w
        .nodes
        .iter()
        .filter(|n| n.pg.running == Some(Mode::Primary))
        .map(|n| n.name.as_str())
        .collect();
    (writable.len() > 1).then(|| format!("two members may accept writes: {writable:?}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::world::testing::world_of;

    #[test]
    fn two_running_primaries_break_it_one_does_not() {
        let mut w = world_of(3);
        w.nodes[0].pg.running = Some(Mode::Primary);
        w.nodes[1].pg.running = Some(Mode::Replica(None));
        assert_eq!(check(&w), None);
        w.nodes[1].pg.running = Some(Mode::Primary);
        w.nodes[1].pg.hung = true;
        assert!(check(&w).unwrap().contains("n2"), "a hung primary counts");
    }
}
