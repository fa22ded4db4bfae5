//! The agent's `Peers`: another member's `/patroni`, built by the real
//! API code from that agent's latest snapshot, unless the network between
//! them is cut or that agent is dead or stalled (then the request times
//! out, as reqwest's would).

use std::time::Duration;

use baton::agent::Peers;

use crate::world::Shared;

pub struct SimPeers {
    pub world: Shared,
    pub node: usize,
    pub epoch: u64,
    pub timeout: Duration,
}

impl SimPeers {
    /// The target's handle, if the network and the target let it answer.
    fn reach(&self, api_url: &str) -> Option<baton::agent::AgentHandle<crate::store::SimStore>> {
        let host = api_url.split("://").nth(1)?.split(':').next()?.to_string();
        let w = self.world.lock();
        let t = w.index(&host)?;
        let target = &w.nodes[t];
        let stalled = target
            .stalled_until
            .is_some_and(|s| s > tokio::time::Instant::now());
        let up = !w.nodes[self.node].isolated && !target.isolated && target.agent_alive;
        target.handle.clone().filter(|_| up && !stalled)
    }
}

impl SimPeers {
    /// What a TCP connect to the target's REST and postgres ports gets:
    /// `Some(true)` refused on both (nothing listens: no agent, no
    /// postmaster), `Some(false)` an answer on one, `None` a timeout (the
    /// network between them cut).
    fn refusal(&self, api_url: &str) -> Option<bool> {
        let host = api_url.split("://").nth(1)?.split(':').next()?.to_string();
        let w = self.world.lock();
        let t = w.index(&host)?;
        let target = &w.nodes[t];
        if w.nodes[self.node].isolated || target.isolated {
            return None;
        }
        let no_postmaster = (target.pg.running.is_none() && target.pg.starting.is_none())
            || w.faults.probe_ignores_postgres;
        Some(!target.agent_alive && no_postmaster)
    }
}

impl Peers for SimPeers {
    /// As `HttpPeers::closed`: a connection held to the target's REST
    /// port ends when its agent dies, if the FIN gets through (neither side
    /// cut off then); it stays open while the agent is stalled. A connect
    /// that is refused (no agent) or times out (cut off) ends the call a
    /// second later.
    async fn closed(&self, api_url: &str) {
        self.world.gate(self.node, self.epoch).await;
        let held = (|| {
            let host = api_url.split("://").nth(1)?.split(':').next()?.to_string();
            let w = self.world.lock();
            let t = w.index(&host)?;
            let cut = w.nodes[self.node].isolated || w.nodes[t].isolated;
            (!cut && w.nodes[t].agent_alive).then(|| (t, w.nodes[t].deaths.subscribe()))
        })();
        let Some((t, mut deaths)) = held else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            return;
        };
        if deaths.changed().await.is_ok() {
            let heard = {
                let w = self.world.lock();
                !w.nodes[self.node].isolated && !w.nodes[t].isolated
            };
            if heard {
                self.world.gate(self.node, self.epoch).await;
                return;
            }
        }
        // The FIN was lost: nothing is ever sent on this connection, so it
        // never learns; a new leader ends the wait (the caller's select).
        std::future::pending::<()>().await
    }

    async fn refused(&self, api_url: &str, _pg: (String, u16)) -> bool {
        self.world.gate(self.node, self.epoch).await;
        for round in 0..3 {
            if round > 0 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            match self.refusal(api_url) {
                Some(true) => tokio::time::sleep(Duration::from_millis(1)).await,
                Some(false) => return false,
                None => {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    return false;
                }
            }
        }
        true
    }

    async fn failsafe(&self, api_url: &str, me: &str) -> Result<(), String> {
        self.world.gate(self.node, self.epoch).await;
        match self.reach(api_url) {
            Some(h) => {
                tokio::time::sleep(Duration::from_millis(2)).await;
                h.failsafe_ping(me)
            }
            None => {
                tokio::time::sleep(self.timeout).await;
                Err("timed out".into())
            }
        }
    }

    async fn status(&self, api_url: &str) -> Option<serde_json::Value> {
        self.world.gate(self.node, self.epoch).await;
        let answer = self
            .reach(api_url)
            .map(|h| baton::api::status_json(&h.snapshot()));
        match answer {
            Some(v) => {
                tokio::time::sleep(Duration::from_millis(2)).await;
                Some(v)
            }
            None => {
                tokio::time::sleep(self.timeout).await;
                None
            }
        }
    }
}
