//! The fence timer (DESIGN.md rule 2 as a deadline, not a check): a task of
//! its own that stops postgres immediately the moment the lease deadline
//! passes while it is armed, wherever the loop is: a tick that waits on a
//! hanging etcd and then on a hanging postgres can outlast the deadline
//! several times over. The loop arms it (`baton_core::ha::fence::armed`)
//! and moves the deadline on with every renewal; decide's own rule 2 stays
//! as the second line.
//!
//! It lives and dies with the agent. Rule 8's fence, which outlives a
//! stalled or killed agent, is the `baton-fence` process: the agent hands
//! it the same state after every renewal and every decision
//! ([`Agent::order_fence`]), and it enforces the deadline by itself.
//!
//! Both follow the lease the leader key hangs on ([`Agent::fence_deadline`]):
//! a new lease granted while the key is still on the old one moves nothing,
//! since the key expires with the old lease.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use baton_core::cluster::LeaseId;

use super::{now, since, Agent, Peers, Postgres, Store};
use crate::pg::{FenceOrder, StopMode};

/// What the timer guards: fence at `deadline` if `armed` then.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FenceState {
    /// `None`: not known (the key hangs on a lease of an earlier agent);
    /// the timer waits, the fence process keeps the deadline it has.
    pub deadline: Option<Instant>,
    pub armed: bool,
}

impl Default for FenceState {
    /// Armed until the first tick has looked at postgres: an agent that
    /// restarts beside a running primary must not lift the deadline its
    /// predecessor left with the fence process.
    fn default() -> FenceState {
        FenceState {
            deadline: None,
            armed: true,
        }
    }
}

/// Where the leader key hangs, as far as this agent knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyLease {
    /// etcd not read yet since the agent started.
    Unknown,
    /// The key does not name this member.
    NotMine,
    /// It names this member, on this lease.
    On(LeaseId),
}

/// One successful renewal (or grant) of a lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Renewal {
    pub lease: LeaseId,
    /// When the request was sent.
    pub sent: Instant,
    /// `sent` plus the lease's own TTL less the safety margin.
    pub deadline: Instant,
    /// How long etcd took to answer it.
    pub round_trip: std::time::Duration,
}

impl<S: Store, P: Postgres, H: Peers> Agent<S, P, H> {
    /// The renewal the leader key's expiry follows: the current lease's,
    /// unless the key still hangs on the lease it replaced. `None` when the
    /// key hangs on a lease this agent never renewed (its predecessor's).
    fn key_renewal(&self) -> Option<Renewal> {
        match (self.key_lease, self.renewal) {
            // Not read yet: the key may hang on a predecessor's lease.
            (KeyLease::Unknown, _) => None,
            (KeyLease::On(k), Some(r)) if k != r.lease => {
                self.prev_renewal.filter(|p| p.lease == k)
            }
            (_, r) => r,
        }
    }

    /// When the fence must have stopped a primary here (see [`FenceState`]):
    /// the key's lease deadline, or later while every member confirms
    /// following us in failsafe mode.
    pub(super) fn fence_deadline(&self) -> Option<Instant> {
        let lease = self.key_renewal().map(|r| r.deadline)?;
        let failsafe = self
            .failsafe_confirmed()
            .map(|t| t + self.config.leader_deadline());
        Some(lease.max(failsafe.unwrap_or(lease)))
    }

    /// The renewal decide's rule 2 counts from: the key's lease's; a key
    /// on an unknown lease is moved over by AdoptLeader on this tick, and
    /// until then the fence process holds the predecessor's deadline.
    pub(super) fn rule2_renewal_sent(&self) -> Option<Instant> {
        self.key_renewal().or(self.renewal).map(|r| r.sent)
    }

    /// The leader key now hangs on `lease`, ours: the fence follows it.
    pub(super) fn key_on(&mut self, lease: LeaseId) {
        self.key_lease = KeyLease::On(lease);
        self.refresh_fence_deadline();
    }

    pub(super) fn refresh_fence_deadline(&mut self) {
        let deadline = self.fence_deadline();
        self.fence
            .send_if_modified(|f| std::mem::replace(&mut f.deadline, deadline) != deadline);
    }

    pub(super) fn set_fence_armed(&mut self, armed: bool) {
        self.refresh_fence_deadline();
        self.fence
            .send_if_modified(|f| std::mem::replace(&mut f.armed, armed) != armed);
    }

    /// Hands the fence process what the timer guards; notes since when it
    /// has not taken an order (decide refuses primaries meanwhile).
    pub(super) async fn order_fence(&mut self) {
        let order = match *self.fence.borrow() {
            FenceState { armed: false, .. } => FenceOrder::Disarm,
            FenceState {
                armed: true,
                deadline: Some(deadline),
            } => FenceOrder::Arm { deadline },
            FenceState { deadline: None, .. } => FenceOrder::Keep,
        };
        if self.fence_taken == Some(order) {
            return;
        }
        match self.inst.order_fence(order).await {
            Ok(()) => {
                self.fence_taken = Some(order);
                if let Some(t) = self.fence_down_since.take() {
                    tracing::info!(
                        "the fence process answers again after {:.1} s",
                        since(t).as_secs_f64()
                    );
                }
            }
            Err(e) => {
                // It may have taken it and lost the answer: resend anything.
                self.fence_taken = None;
                self.fence_down_since.get_or_insert_with(now);
                if self.fence_warning.due() {
                    tracing::error!(
                        "the fence process does not take orders: {e}; \
                         no primary runs here without it"
                    );
                }
            }
        }
    }
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
