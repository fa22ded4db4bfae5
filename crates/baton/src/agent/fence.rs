//! The fence timer (DESIGN.md rule 2 as a deadline, not a check): a task of
//! its own that stops postgres immediately the moment the lease deadline
//! passes while it is armed, wherever the loop is: a tick that waits on a
//! hanging etcd and then on a hanging postgres can outlast the deadline
//! several times over. The loop arms it (`baton_core::ha::fence::armed`)
//! and moves the deadline on with every renewal; decide's own rule 2 stays
//! as the second line.
//!
//! It lives and dies with the agent; a fence that outlives a stalled or
//! killed agent is rule 8's separate process, not this.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use super::{now, Postgres};
use crate::pg::StopMode;

/// What the timer guards: fence at `deadline` if `armed` then.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FenceState {
    pub deadline: Option<Instant>,
    pub armed: bool,
}

/// While past the deadline and armed, postgres is stopped again this often
/// (a start already under way when the timer fired can bring it back).
const REFENCE: Duration = Duration::from_millis(50);

pub(super) fn spawn_fence<P: Postgres>(
    inst: Arc<P>,
    mut state: watch::Receiver<FenceState>,
    wake: Arc<Notify>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let s = *state.borrow_and_update();
            let due = match s {
                FenceState {
                    armed: true,
                    deadline: Some(d),
                } => d,
                // Not armed: nothing to guard until the loop says otherwise.
                _ => {
                    if state.changed().await.is_err() {
                        return;
                    }
                    continue;
                }
            };
            if due > now() {
                tokio::select! {
                    _ = tokio::time::sleep_until(tokio::time::Instant::from_std(due)) => {}
                    r = state.changed() => {
                        if r.is_err() {
                            return;
                        }
                        continue;
                    }
                }
            }
            // Still armed at a deadline that no renewal moved?
            if *state.borrow() != s {
                continue;
            }
            if inst.postmaster_running() {
                match inst.stop(StopMode::Immediate).await {
                    Ok(()) => tracing::warn!(
                        "fence: lease deadline passed without a renewal; postgres stopped immediately"
                    ),
                    Err(e) => tracing::error!("fence: stopping postgres failed: {e}"),
                }
                wake.notify_one();
            }
            tokio::select! {
                _ = tokio::time::sleep(REFENCE) => {}
                r = state.changed() => {
                    if r.is_err() {
                        return;
                    }
                }
            }
        }
    })
}
