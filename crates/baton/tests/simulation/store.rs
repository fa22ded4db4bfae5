//! The agent's `Store` over the simulated etcd: the same transactions as
//! `baton::dcs::Dcs` (create-if-absent, compare value, compare lease), the
//! same errors (a dead lease is "requested lease not found"), every call
//! passing through the node's link to etcd.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use baton::agent::Store;
use baton::dcs::DcsError;
use baton_core::cluster::{ClusterView, LeaseId, Member, StatusKey, SyncKey};
use baton_core::config::DynamicConfig;

use crate::world::{Link, Mode, Shared, World};

#[derive(Clone)]
pub struct SimStore {
    pub world: Shared,
    pub node: usize,
    pub epoch: u64,
    pub timeout: Duration,
}

fn lease_not_found() -> DcsError {
    DcsError::Etcd(etcd_client::Error::GRpcStatus(tonic::Status::not_found(
        "etcdserver: requested lease not found",
    )))
}

impl SimStore {
    /// One request: through the stall gate and the link, then `op` on the
    /// store (with leases expired first), answered or not as the link says.
    async fn call<T>(
        &self,
        op: impl FnOnce(&mut World) -> Result<T, DcsError>,
    ) -> Result<T, DcsError> {
        self.world.gate(self.node, self.epoch).await;
        let (link, latency) = {
            let mut w = self.world.lock();
            let l = w.rng.ms(0, 4);
            (w.nodes[self.node].store_link, l)
        };
        match link {
            Link::Up | Link::LoseAnswers => {
                tokio::time::sleep(latency).await;
                self.world.gate(self.node, self.epoch).await;
                let r = {
                    let mut w = self.world.lock();
                    w.expire();
                    let r = op(&mut w);
                    w.deliver_watches();
                    w.check();
                    r
                };
                // The link may have changed meanwhile; what it is now decides.
                if self.world.lock().nodes[self.node].store_link == Link::LoseAnswers {
                    tokio::time::sleep(self.timeout).await;
                    return Err(DcsError::Timeout(self.timeout));
                }
                r
            }
            Link::Hang => {
                tokio::time::sleep(self.timeout).await;
                Err(DcsError::Timeout(self.timeout))
            }
            Link::Refuse => {
                tokio::time::sleep(latency).await;
                Err(DcsError::Timeout(Duration::ZERO))
            }
        }
    }

    fn alive(w: &World, lease: LeaseId) -> Result<(), DcsError> {
        if w.etcd.lease_alive(lease.0, Instant::now()) {
            Ok(())
        } else {
            Err(lease_not_found())
        }
    }

    /// `Dcs::put_as_leader`: a put guarded by the leader key on `lease`.
    async fn put_as_leader(
        &self,
        rel: &'static str,
        value: String,
        me: &str,
        lease: LeaseId,
    ) -> Result<bool, DcsError> {
        let me = me.to_string();
        self.call(move |w| {
            let ours = Self::held_by(w, &me, lease);
            if ours {
                w.etcd.put(rel, &value, 0);
            }
            Ok(ours)
        })
        .await
    }

    /// `Dcs::held_by`: the leader key names `me` and hangs on `lease`.
    fn held_by(w: &World, me: &str, lease: LeaseId) -> bool {
        w.etcd
            .get("leader")
            .is_some_and(|kv| kv.value == me && kv.lease == lease.0)
    }

    fn create_if_absent(
        w: &mut World,
        rel: &str,
        value: &str,
        lease: Option<LeaseId>,
    ) -> Result<bool, DcsError> {
        if let Some(l) = lease {
            Self::alive(w, l)?;
        }
        if w.etcd.get(rel).is_some() {
            return Ok(false);
        }
        w.etcd.put(rel, value, lease.map(|l| l.0).unwrap_or(0));
        Ok(true)
    }
}

thread_local! {
    /// Leader keys the process-death fast path removed on this thread (a
    /// seed runs on its caller's thread): the test that it is exercised.
    pub static FAST_PATH_REMOVALS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// Watch copies handed to an agent that were behind etcd, and ticks
    /// the agents still running at a seed's end decided on a copy.
    pub static STALE_COPIES_OFFERED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    pub static COPIES_USED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

impl Store for SimStore {
    async fn load(&self) -> Result<ClusterView, DcsError> {
        self.call(|w| Ok(w.etcd.view())).await
    }
    async fn grant_lease(&self, ttl: u64) -> Result<LeaseId, DcsError> {
        self.call(move |w| {
            w.etcd.next_lease += 1;
            let id = w.etcd.next_lease;
            let ttl = Duration::from_secs(ttl);
            w.etcd.leases.insert(id, (Instant::now() + ttl, ttl));
            Ok(LeaseId(id))
        })
        .await
    }
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), DcsError> {
        self.call(move |w| {
            if !w.etcd.lease_alive(lease.0, Instant::now()) {
                return Err(DcsError::LeaseExpired(lease.0));
            }
            let l = w.etcd.leases.get_mut(&lease.0).expect("alive");
            l.0 = Instant::now() + l.1;
            Ok(())
        })
        .await
    }
    async fn revoke(&self, lease: LeaseId) -> Result<(), DcsError> {
        self.call(move |w| {
            w.etcd.leases.remove(&lease.0);
            let leader_gone = w.etcd.get("leader").is_some_and(|kv| kv.lease == lease.0);
            w.etcd.keys.retain(|_, kv| kv.lease != lease.0);
            w.etcd.revision += 1;
            if leader_gone {
                w.notify_watchers();
            }
            Ok(())
        })
        .await
    }
    async fn take_initialize(&self, lease: LeaseId) -> Result<bool, DcsError> {
        self.call(move |w| {
            let r = Self::create_if_absent(w, "initialize", "", Some(lease));
            w.notify_watchers();
            r
        })
        .await
    }
    async fn release_initialize(&self) -> Result<bool, DcsError> {
        self.call(|w| {
            if w.etcd
                .get("initialize")
                .is_some_and(|kv| kv.value.is_empty())
            {
                w.etcd.delete("initialize");
                w.notify_watchers();
                return Ok(true);
            }
            Ok(false)
        })
        .await
    }
    async fn set_initialize(&self, system_id: &str) -> Result<bool, DcsError> {
        let id = system_id.to_string();
        self.call(
            move |w| match w.etcd.get("initialize").map(|kv| kv.value.clone()) {
                Some(v) if v.is_empty() => {
                    w.etcd.put("initialize", &id, 0);
                    Ok(true)
                }
                Some(v) => Ok(v == id),
                None => Self::create_if_absent(w, "initialize", &id, None),
            },
        )
        .await
    }
    async fn acquire_leader(&self, name: &str, lease: LeaseId) -> Result<bool, DcsError> {
        let name = name.to_string();
        self.call(move |w| {
            let won = Self::create_if_absent(w, "leader", &name, Some(lease))?;
            if won {
                w.event(format!("{name} acquired the leader key"));
                w.notify_watchers();
            }
            Ok(won)
        })
        .await
    }
    async fn adopt_leader(&self, name: &str, lease: LeaseId) -> Result<bool, DcsError> {
        let name = name.to_string();
        self.call(move |w| {
            if w.etcd.get("leader").is_some_and(|kv| kv.value == name) {
                Self::alive(w, lease)?;
                w.etcd.put("leader", &name, lease.0);
                w.notify_watchers();
                return Ok(true);
            }
            Ok(false)
        })
        .await
    }
    async fn release_leader(&self, name: &str) -> Result<bool, DcsError> {
        let name = name.to_string();
        self.call(move |w| {
            if w.etcd.get("leader").is_some_and(|kv| kv.value == name) {
                w.etcd.delete("leader");
                w.event(format!("{name} released the leader key"));
                w.notify_watchers();
                return Ok(true);
            }
            Ok(false)
        })
        .await
    }
    async fn remove_dead_leader(&self, name: &str, lease: LeaseId) -> Result<bool, DcsError> {
        let name = name.to_string();
        let removed = self
            .call(move |w| {
                if w.etcd
                    .get("leader")
                    .is_some_and(|kv| kv.value == name && kv.lease == lease.0)
                {
                    // The rule's premise, checked against the truth: no
                    // postgres of that member runs, or starts, as primary.
                    if let Some(i) = w.nodes.iter().position(|n| n.name == name) {
                        let pg = &w.nodes[i].pg;
                        let primary = pg.running == Some(Mode::Primary)
                            || matches!(pg.starting, Some((_, Mode::Primary)));
                        if primary {
                            w.violation = Some(format!(
                                "the process-death fast path removed the key of {name}, \
                                 whose postgres runs as primary"
                            ));
                        }
                    }
                    FAST_PATH_REMOVALS.with(|c| c.set(c.get() + 1));
                    w.etcd.delete("leader");
                    w.event(format!(
                        "the leader key of {name} removed: its processes are gone"
                    ));
                    w.notify_watchers();
                    return Ok(true);
                }
                Ok(false)
            })
            .await?;
        if removed {
            let _ = self.revoke(lease).await;
        }
        Ok(removed)
    }
    async fn put_member(
        &self,
        name: &str,
        member: &Member,
        lease: LeaseId,
    ) -> Result<(), DcsError> {
        let key = format!("members/{name}");
        let json = serde_json::to_string(member).expect("member serializes");
        self.call(move |w| {
            Self::alive(w, lease).map_err(|_| DcsError::LeaseExpired(lease.0))?;
            w.etcd.put(&key, &json, lease.0);
            // As the real watch: a report of the leader's ports refusing
            // wakes the others.
            if json.contains("\"baton_leader_refused\"") {
                w.notify_watchers();
            }
            Ok(())
        })
        .await
    }
    async fn init_config(&self, config: &DynamicConfig) -> Result<bool, DcsError> {
        let json = serde_json::to_string(config).expect("config serializes");
        self.call(move |w| {
            let r = Self::create_if_absent(w, "config", &json, None);
            w.notify_watchers();
            r
        })
        .await
    }
    async fn put_status(
        &self,
        me: &str,
        lease: LeaseId,
        status: &StatusKey,
    ) -> Result<bool, DcsError> {
        let json = serde_json::to_string(status).expect("status serializes");
        self.put_as_leader("status", json, me, lease).await
    }
    async fn transfer_leader(&self, me: &str, to: &str, lease: LeaseId) -> Result<bool, DcsError> {
        let (me, to) = (me.to_string(), to.to_string());
        self.call(move |w| {
            let ours = w.etcd.get("leader").is_some_and(|kv| kv.value == me);
            let theirs = w
                .etcd
                .get(&format!("members/{to}"))
                .is_some_and(|kv| kv.lease == lease.0);
            if !(ours && theirs) {
                return Ok(false);
            }
            w.etcd.put("leader", &to, lease.0);
            w.etcd.delete("failover");
            w.notify_watchers();
            Ok(true)
        })
        .await
    }
    async fn clear_failover(&self) -> Result<(), DcsError> {
        self.call(|w| {
            w.etcd.delete("failover");
            Ok(())
        })
        .await
    }
    async fn reserve_timeline(
        &self,
        me: &str,
        lease: LeaseId,
        seen: Option<u32>,
        to: u32,
    ) -> Result<bool, DcsError> {
        let me = me.to_string();
        self.call(move |w| {
            let ours = Self::held_by(w, &me, lease);
            let now = w
                .etcd
                .get(baton_core::cluster::TIMELINE_KEY)
                .and_then(|kv| kv.value.parse().ok());
            if !ours || now != seen {
                return Ok(false);
            }
            w.etcd
                .put(baton_core::cluster::TIMELINE_KEY, &to.to_string(), 0);
            Ok(true)
        })
        .await
    }
    async fn put_history(
        &self,
        me: &str,
        lease: LeaseId,
        history: &serde_json::Value,
    ) -> Result<bool, DcsError> {
        self.put_as_leader("history", history.to_string(), me, lease)
            .await
    }
    async fn put_sync(
        &self,
        me: &str,
        lease: LeaseId,
        seen_revision: i64,
        sync: Option<&SyncKey>,
    ) -> Result<bool, DcsError> {
        let me = me.to_string();
        let json = sync.map(|s| serde_json::to_string(s).expect("sync key serializes"));
        self.call(move |w| {
            let now = w.etcd.get("sync").map_or(0, |kv| kv.mod_revision);
            if !Self::held_by(w, &me, lease) || now != seen_revision {
                return Ok(false);
            }
            match &json {
                Some(j) => w.etcd.put("sync", j, 0),
                None => {
                    w.etcd.delete("sync");
                }
            }
            Ok(true)
        })
        .await
    }
    async fn put_discarded(&self, d: &baton_core::cluster::DiscardedWal) -> Result<(), DcsError> {
        let key = d.key();
        let json = serde_json::to_string(d).expect("discarded record serializes");
        self.call(move |w| {
            w.etcd.put(&key, &json, 0);
            Ok(())
        })
        .await
    }
    async fn put_failsafe(
        &self,
        me: &str,
        lease: LeaseId,
        members: Option<&std::collections::BTreeMap<String, String>>,
    ) -> Result<bool, DcsError> {
        let me = me.to_string();
        let json = members.map(|m| serde_json::to_string(m).expect("failsafe key serializes"));
        self.call(move |w| {
            if !Self::held_by(w, &me, lease) {
                return Ok(false);
            }
            match &json {
                Some(j) => w.etcd.put("failsafe", j, 0),
                None => {
                    w.etcd.delete("failsafe");
                }
            }
            Ok(true)
        })
        .await
    }
    fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }
    fn mirrored(&self) -> Option<ClusterView> {
        let w = self.world.lock();
        let n = &w.nodes[self.node];
        let copy = (n.epoch == self.epoch).then(|| n.mirror.clone()).flatten();
        if copy.as_ref().is_some_and(|c| c.revision != w.etcd.revision) {
            STALE_COPIES_OFFERED.with(|c| c.set(c.get() + 1));
        }
        copy
    }
    async fn watch_changes(self, wake: Arc<Notify>) {
        {
            let mut w = self.world.lock();
            if w.nodes[self.node].epoch == self.epoch {
                // The watch starts with a read, as the real one does.
                let view = w.etcd.view();
                let n = &mut w.nodes[self.node];
                n.wake = Some(wake);
                n.mirror = Some(view);
            }
        }
        std::future::pending::<()>().await
    }
}
