//! The invariants, one per file. `broken` runs the safety ones after every
//! change to the world; `converges` is checked once the faults stop.
//! `single_writer` is the promise; `key_holder` is the rule that keeps it.

pub mod acknowledged;
pub mod converges;
pub mod key_holder;
pub mod single_writer;
pub mod timeline_prefix;

use crate::world::World;

/// The first safety invariant that does not hold now, if any.
pub fn broken(w: &World) -> Option<String> {
    single_writer::check(w)
        .or_else(|| key_holder::check(w))
        .or_else(|| timeline_prefix::check(w))
        .or_else(|| acknowledged::check(w))
}
