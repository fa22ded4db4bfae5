//! The agent's lease: renewed every tick (a steady replica's every
//! `ttl / 3` while etcd answers quickly) and replaced when etcd no longer
//! knows it.

use baton_core::cluster::LeaseId;

use super::{now, Agent, Peers, Postgres, Renewal, Store};
use crate::dcs::DcsError;

impl<S: Store, P: Postgres, H: Peers> Agent<S, P, H> {
    /// Keeps our lease alive, granting a new one when it is gone. The time
    /// recorded is when the request was *sent*: etcd counts the TTL from
    /// when it received it, which is later, so this errs on the safe side.
    pub(super) async fn renew_lease(&mut self) {
        if self.lease.is_some() && self.lease_ttl != self.config.ttl {
            // A ttl change takes effect with a fresh lease; the leader key is
            // re-attached to it by AdoptLeader on this very tick.
            self.lease = None;
        }
        if let Some(lease) = self.lease {
            let sent = now();
            match self.dcs.keep_alive(lease).await {
                Ok(()) => {
                    self.inbox.counters.lease_renew_micros.store(
                        super::since(sent).as_micros() as u64,
                        std::sync::atomic::Ordering::Relaxed,
                    );
                    self.renewed(lease, sent);
                    return;
                }
                // Gone for good (expired while we were cut off, or etcd lost
                // it): everything on it has vanished. Replace it now, not on
                // the next tick, so the member key is back at once.
                Err(DcsError::LeaseExpired(_)) => {
                    tracing::warn!(
                        lease = lease.0,
                        "etcd no longer knows our lease; requesting a new one"
                    );
                    self.lease = None;
                }
                Err(e) => {
                    self.etcd_warning(format_args!("lease renewal failed: {e}"));
                    return;
                }
            }
        }
        let sent = now();
        match self.dcs.grant_lease(self.config.ttl).await {
            Ok(l) => {
                tracing::info!(lease = l.0, ttl = self.config.ttl, "granted new lease");
                self.lease = Some(l);
                self.lease_ttl = self.config.ttl;
                // A grant starts the new lease's TTL like a renewal does.
                // It renews no leader key held on an older lease: decide
                // moves such a key over (AdoptLeader), and until then the
                // fence keeps the old lease's deadline (`fence_deadline`).
                self.renewed(l, sent);
            }
            Err(e) => self.etcd_warning(format_args!("cannot get an etcd lease: {e}")),
        }
    }

    /// A renewal of `lease` sent at `sent` succeeded: the fence deadline
    /// moves on if the leader key hangs on that lease. The last renewal of
    /// the lease it replaced is kept: a key still on that one expires with
    /// it, whatever the new lease does.
    fn renewed(&mut self, lease: LeaseId, sent: std::time::Instant) {
        if self.renewal.is_some_and(|r| r.lease != lease) {
            self.prev_renewal = self.renewal;
        }
        let ttl = std::time::Duration::from_secs(self.lease_ttl);
        let margin = std::time::Duration::from_secs_f64(self.config.safety_margin.max(0.0));
        self.renewal = Some(Renewal {
            lease,
            sent,
            deadline: sent + ttl.saturating_sub(margin),
            round_trip: super::since(sent),
        });
        self.refresh_fence_deadline();
    }

    /// Whether a steady replica may skip this tick's renewal: etcd answered
    /// a renewal of our lease sent less than `ttl / 3` before `at`, within
    /// `ttl / 8`. At the defaults it skips every other tick (renewed every
    /// 2 s of a 4 s lease), which leaves about half the lease for the
    /// next renewal to arrive; a slow etcd (overloaded, say) gets one
    /// every tick, as the lease's slack is what a slow answer eats into.
    pub(super) fn renewal_fresh(&self, at: std::time::Instant) -> bool {
        let ttl = std::time::Duration::from_secs(self.lease_ttl);
        self.renewal.is_some_and(|r| {
            Some(r.lease) == self.lease
                && at.saturating_duration_since(r.sent) < ttl / 3
                && r.round_trip < ttl / 8
        })
    }

    /// etcd trouble repeats every tick; say so every few seconds, not every tick.
    pub(super) fn etcd_warning(&mut self, msg: std::fmt::Arguments<'_>) {
        if self.etcd_throttle.due() {
            tracing::warn!(endpoints = ?self.cfg.etcd.endpoints, "{msg}");
        }
    }
}
