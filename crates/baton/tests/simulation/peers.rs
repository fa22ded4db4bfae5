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

impl Peers for SimPeers {
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
