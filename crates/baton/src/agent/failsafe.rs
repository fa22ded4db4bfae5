//! Failsafe mode (Patroni's `failsafe_mode`): while etcd cannot be
//! reached, for any reason, the leader keeps running read-write if and only
//! if every member in the `failsafe` key confirms over REST
//! (`POST /failsafe`) that it still follows this leader and sees no other.
//! A member that confirmed does not race for the key for `ttl` after, so
//! the leader's extended deadline (the confirmation's send time plus
//! `ttl - safety_margin`) always ends before anyone who confirmed may race.
//!
//! The confirmations run in a task of their own, every [`PING`], not in the
//! loop: a tick that waits on a frozen etcd twice for `retry_timeout` would
//! confirm too late. The task moves the fence deadlines (the in-agent timer
//! and the fence process) itself; the loop only says whom to ask, and
//! counts a confirmation like a renewal in rule 2.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::JoinHandle;

use baton_core::cluster::ClusterView;
use baton_core::ha::PgStatus;

use super::fence::FenceState;
use super::{now, since, Agent, Peers, Postgres, Store};
use crate::pg::FenceOrder;

/// How often a leader whose renewals are late asks for confirmations.
const PING: Duration = Duration::from_millis(500);

/// What the loop, the confirmation task and the API share.
#[derive(Debug, Default)]
pub struct FailsafeShared {
    /// Replica: the last `POST /failsafe` accepted here (when, from whom).
    pub heard: Mutex<Option<(Instant, String)>>,
    /// Leader: send time of the last round every listed member confirmed.
    pub confirmed: Mutex<Option<Instant>>,
}

/// Whom the leader asks, and what it needs to know to decide when to.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct FailsafeOrder {
    pub me: String,
    /// Every other member (name, api_url) that must confirm.
    pub members: Vec<(String, String)>,
    /// When the last successful renewal was sent: confirmations are
    /// needed only once renewals run late.
    pub renewal_sent: Option<Instant>,
    pub loop_wait: Duration,
    pub timeout: Duration,
    /// How long a confirmation holds off the fence (ttl - safety_margin).
    pub holds_for: Duration,
}

impl<S: Store, P: Postgres, H: Peers> Agent<S, P, H> {
    /// Whom the leader must hear from while etcd is out, from this tick's
    /// view: every member in the view or the `failsafe` key. Kept while
    /// etcd cannot be read, or shows no leader at all; dropped once this
    /// member is not a leader running as primary in failsafe mode.
    pub(super) fn update_failsafe_order(&mut self, cluster: Option<&ClusterView>, pg: &PgStatus) {
        let primary = pg.running().is_some_and(|r| !r.in_recovery);
        let me = self.cfg.name.clone();
        let renewal_sent = self.renewal.map(|r| r.sent);
        let (loop_wait, timeout, holds_for) = (
            self.config.loop_wait(),
            self.config.retry_timeout(),
            self.config.leader_deadline(),
        );
        // etcd back with our key expired meanwhile: the confirmations
        // still hold (no confirming member races), and this tick takes
        // the key again.
        let holding = self.failsafe_order.borrow().is_some();
        let order = match cluster {
            _ if !(self.config.failsafe_mode && primary) => None,
            Some(c) if c.leader_name() == Some(me.as_str()) || (c.leader.is_none() && holding) => {
                let mut members: std::collections::BTreeMap<String, String> = c
                    .members
                    .iter()
                    .map(|(n, m)| (n.clone(), m.api_url.clone()))
                    .collect();
                members.extend(c.failsafe.clone().unwrap_or_default());
                members.remove(&me);
                Some(FailsafeOrder {
                    me,
                    members: members.into_iter().collect(),
                    renewal_sent,
                    loop_wait,
                    timeout,
                    holds_for,
                })
            }
            Some(_) => None,
            None => self
                .failsafe_order
                .borrow()
                .clone()
                .map(|o| FailsafeOrder { renewal_sent, ..o }),
        };
        if order.is_none() {
            *self.failsafe.confirmed.lock().expect("failsafe lock") = None;
        }
        self.failsafe_order
            .send_if_modified(|o| std::mem::replace(o, order.clone()) != order);
    }

    /// The confirmation to count as a renewal: only while an order stands.
    pub(super) fn failsafe_confirmed(&self) -> Option<Instant> {
        self.failsafe_order.borrow().as_ref()?;
        *self.failsafe.confirmed.lock().expect("failsafe lock")
    }

    pub(super) fn failsafe_heard(&self) -> Option<(Duration, String)> {
        let heard = self.failsafe.heard.lock().expect("failsafe lock").clone();
        heard.map(|(t, l)| (since(t), l))
    }
}

/// The confirmation task: while an order stands and renewals run late,
/// asks every member each [`PING`]; a round all of them confirm moves both
/// fences' deadline to its send time plus `holds_for`.
pub(super) fn spawn_failsafe<P: Postgres, H: Peers>(
    peers: Arc<H>,
    inst: Arc<P>,
    shared: Arc<FailsafeShared>,
    fence: Arc<watch::Sender<FenceState>>,
    mut orders: watch::Receiver<Option<FailsafeOrder>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let order = orders.borrow_and_update().clone();
            let Some(o) = order else {
                if orders.changed().await.is_err() {
                    return;
                }
                continue;
            };
            let late = o.renewal_sent.is_none_or(|t| since(t) > o.loop_wait + PING);
            if late {
                let sent = now();
                let mut asks = tokio::task::JoinSet::new();
                for (name, url) in o.members.iter().cloned() {
                    let (peers, me, limit) = (peers.clone(), o.me.clone(), o.timeout);
                    asks.spawn(async move {
                        let r = tokio::time::timeout(limit, peers.failsafe(&url, &me)).await;
                        (name, r.unwrap_or_else(|_| Err("timed out".into())))
                    });
                }
                let answers = asks.join_all().await;
                let refused: Vec<String> = answers
                    .iter()
                    .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("{n}: {e}")))
                    .collect();
                // A deadline that passed stays passed: the fence may have
                // fired already, and a member may have decided to race
                // while this round was under way.
                let alive = fence.borrow().deadline.is_some_and(|d| now() < d);
                if refused.is_empty() && alive {
                    *shared.confirmed.lock().expect("failsafe lock") = Some(sent);
                    let deadline = sent + o.holds_for;
                    let moved = fence.send_if_modified(|f| {
                        let later =
                            f.armed && f.deadline.is_some_and(|d| now() < d && d < deadline);
                        if later {
                            f.deadline = Some(deadline);
                        }
                        later
                    });
                    if moved {
                        if let Err(e) = inst.order_fence(FenceOrder::Arm { deadline }).await {
                            tracing::warn!(
                                "failsafe: the fence process did not take the new deadline: {e}"
                            );
                        }
                    }
                    tracing::debug!(
                        members = o.members.len(),
                        "failsafe: every member confirmed"
                    );
                } else if !refused.is_empty() {
                    tracing::warn!(
                        "failsafe: not every member confirmed ({}); the lease deadline stands",
                        refused.join("; ")
                    );
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(PING) => {}
                r = orders.changed() => {
                    if r.is_err() {
                        return;
                    }
                }
            }
        }
    })
}
