//! How the REST API, the signal handlers and (later) the router talk to the
//! agent: typed requests, each answered on its own oneshot when the HA loop
//! has carried it out, and a `watch` of the loop's latest snapshot.
//!
//! The loop owns every decision; a request only tells it what an operator
//! asked for. A request whose reply is dropped (the agent is shutting down)
//! reads as [`AgentGone`], never as a hang.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use super::failsafe::FailsafeShared;
use super::Snapshot;
use crate::config::Credentials;
use crate::dcs::Dcs;

/// What an operator can ask the loop for.
#[derive(Debug)]
pub enum Request {
    /// Re-read the node file; replies with what changed, or why it was refused.
    Reload {
        reply: oneshot::Sender<Result<String, String>>,
    },
    /// Restart postgres in its current role; replies when the restart ended.
    Restart {
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// Rebuild this replica from the leader (decide starts it when it may).
    Reinitialize,
}

/// Totals since the agent started, for `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub rewinds: AtomicU64,
    pub rebuilds: AtomicU64,
    /// Promotions and switchover handovers that completed here.
    pub promotions: AtomicU64,
    pub switchovers: AtomicU64,
    /// Other members' REST status asked for in elections (the election's
    /// fan-out: each candidate asks every other member).
    pub election_asks: AtomicU64,
    /// Ticks that read etcd in full, and ticks that decided on the watch's
    /// copy (`ha::steady`).
    pub views_read: AtomicU64,
    pub views_from_watch: AtomicU64,
    /// The last successful lease renewal's round trip, and the last tick's
    /// duration, in microseconds.
    pub lease_renew_micros: AtomicU64,
    pub loop_micros: AtomicU64,
}

impl Counters {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
    pub fn rewinds(&self) -> u64 {
        self.rewinds.load(Ordering::Relaxed)
    }
    pub fn rebuilds(&self) -> u64 {
        self.rebuilds.load(Ordering::Relaxed)
    }
}

#[derive(Debug, thiserror::Error)]
#[error("the HA loop is not running (agent shutting down)")]
pub struct AgentGone;

/// A cheap, cloneable handle on a running agent. `S` is the agent's store
/// (etcd in production, the simulator's in tests).
#[derive(Clone)]
pub struct AgentHandle<S = Dcs> {
    requests: mpsc::Sender<Request>,
    snapshot: watch::Receiver<Snapshot>,
    counters: Arc<Counters>,
    /// etcd access for the control endpoints (switchover requests, config).
    pub dcs: S,
    /// Credentials the control endpoints require (`api.authentication`).
    pub auth: Option<Credentials>,
    failsafe: Arc<FailsafeShared>,
    routing: crate::hooks::RoutingStatus,
    events: Arc<super::events::EventLog>,
}

/// The loop's side of the handle.
pub(super) struct Inbox {
    pub requests: mpsc::Receiver<Request>,
    pub snapshot: watch::Sender<Snapshot>,
    pub counters: Arc<Counters>,
}

/// Few operators act at once; a full queue makes the caller wait, never drops.
const QUEUE: usize = 16;

pub(super) fn channel<S>(
    initial: Snapshot,
    dcs: S,
    auth: Option<Credentials>,
    failsafe: Arc<FailsafeShared>,
    routing: crate::hooks::RoutingStatus,
    events: Arc<super::events::EventLog>,
) -> (AgentHandle<S>, Inbox) {
    let (req_tx, req_rx) = mpsc::channel(QUEUE);
    let (snap_tx, snap_rx) = watch::channel(initial);
    let counters = Arc::new(Counters::default());
    (
        AgentHandle {
            requests: req_tx,
            snapshot: snap_rx,
            counters: counters.clone(),
            dcs,
            auth,
            failsafe,
            routing,
            events,
        },
        Inbox {
            requests: req_rx,
            snapshot: snap_tx,
            counters,
        },
    )
}

impl<S> AgentHandle<S> {
    /// The same handle with its store swapped for `dcs` (the simulator's
    /// peers hold every agent's handle alike, whatever store it runs on).
    pub fn with_store<T>(&self, dcs: T) -> AgentHandle<T> {
        AgentHandle {
            requests: self.requests.clone(),
            snapshot: self.snapshot.clone(),
            counters: self.counters.clone(),
            dcs,
            auth: self.auth.clone(),
            failsafe: self.failsafe.clone(),
            routing: self.routing.clone(),
            events: self.events.clone(),
        }
    }

    /// The snapshot of the loop's last completed tick.
    pub fn snapshot(&self) -> Snapshot {
        self.snapshot.borrow().clone()
    }

    /// Every snapshot from now on (the hooks follow the member's role).
    pub fn subscribe(&self) -> watch::Receiver<Snapshot> {
        self.snapshot.clone()
    }

    /// The routing endpoints' status, written by the routing task.
    pub fn routing(&self) -> crate::hooks::RoutingStatus {
        self.routing.clone()
    }

    /// This member's event log (`GET /events`).
    pub fn events(&self) -> &super::events::EventLog {
        &self.events
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    async fn ask<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Request,
    ) -> Result<T, AgentGone> {
        let (tx, rx) = oneshot::channel();
        self.requests.send(make(tx)).await.map_err(|_| AgentGone)?;
        rx.await.map_err(|_| AgentGone)
    }

    pub async fn reload(&self) -> Result<Result<String, String>, AgentGone> {
        self.ask(|reply| Request::Reload { reply }).await
    }

    pub async fn restart(&self) -> Result<Result<(), String>, AgentGone> {
        self.ask(|reply| Request::Restart { reply }).await
    }

    /// A leader's `POST /failsafe`: accepted (and remembered: this member
    /// then does not race for the key for `ttl`) unless failsafe mode is
    /// off, this member runs as primary itself, or etcd showed it another
    /// leader.
    pub fn failsafe_ping(&self, leader: &str) -> Result<(), String> {
        let s = self.snapshot();
        if !s.config.failsafe_mode {
            return Err("failsafe mode is off".into());
        }
        let primary = matches!(&s.pg, baton_core::ha::PgStatus::Running(r) if !r.in_recovery);
        if primary && s.name != leader {
            return Err(format!("{} runs as primary itself", s.name));
        }
        if let Some(l) = s.cluster.as_ref().and_then(|c| c.leader_name()) {
            if l != leader {
                return Err(format!("etcd shows {l} as the leader, not {leader}"));
            }
        }
        *self.failsafe.heard.lock().expect("failsafe lock") = Some((super::now(), leader.into()));
        Ok(())
    }

    pub async fn reinitialize(&self) -> Result<(), AgentGone> {
        self.requests
            .send(Request::Reinitialize)
            .await
            .map_err(|_| AgentGone)
    }
}
