//! The cluster's shared state in etcd (v3), laid out as Patroni lays it out
//! (see PATRONI-COMPAT.md) so Patroni's tools work against a Baton cluster.
//!
//! Every request is bounded by `retry_timeout`: an etcd that accepts a
//! connection and never answers must not stall the HA loop, since a stalled
//! leader loop is exactly what the lease deadline exists to catch.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, GetOptions, LeaseKeepAliveStream, LeaseKeeper,
    PutOptions, Txn, TxnOp, WatchOptions,
};

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use baton_core::cluster::{ClusterView, FailoverKey, LeaseId, Member, StatusKey, SyncKey};
use baton_core::config::DynamicConfig;

use crate::agent::Store;

#[derive(Debug, thiserror::Error)]
pub enum DcsError {
    #[error("etcd request timed out after {0:?}")]
    Timeout(Duration),
    #[error("etcd: {0}")]
    Etcd(#[from] etcd_client::Error),
    #[error("etcd lease {0} has expired")]
    LeaseExpired(i64),
    #[error("malformed value in etcd key {key}: {reason}")]
    Malformed { key: String, reason: String },
}

/// etcd-client reports a lease that etcd no longer knows in two ways: a
/// keep-alive answered with TTL 0 (`LeaseKeepAliveError("lease not found")`,
/// the crate's own words for exactly that case), and a request naming the
/// lease (a put with it) failing with gRPC NotFound, "etcdserver: requested
/// lease not found". Both mean the same: the lease and every key on it are
/// gone, and the agent must get a new one at once.
fn lease_error(e: etcd_client::Error, lease: LeaseId) -> DcsError {
    let gone = match &e {
        etcd_client::Error::LeaseKeepAliveError(m) => m == "lease not found",
        etcd_client::Error::GRpcStatus(s) => {
            s.code() == tonic::Code::NotFound && s.message().contains("lease not found")
        }
        _ => false,
    };
    if gone {
        DcsError::LeaseExpired(lease.0)
    } else {
        DcsError::Etcd(e)
    }
}

/// The etcd client for one cluster prefix. Clones share the connection,
/// the keep-alive stream and the watch's copy of the cluster: they are one
/// agent's (`with_prefix` makes another agent's).
#[derive(Clone)]
pub struct Dcs {
    client: Client,
    prefix: String,
    timeout: Duration,
    /// The lease's keep-alive stream, opened once and kept: a stream per
    /// renewal cost etcd and the agent an HTTP/2 stream's set-up and
    /// tear-down every tick.
    keeper: Arc<Mutex<Option<Keeper>>>,
    /// The cluster as the watch (`watch_changes`) last delivered it;
    /// `None` while the watch is not established.
    mirror: Arc<Mutex<Option<ClusterView>>>,
}

/// An open keep-alive stream and the lease it renews.
struct Keeper {
    lease: LeaseId,
    keeper: LeaseKeeper,
    stream: LeaseKeepAliveStream,
}

impl Dcs {
    /// Connects lazily: an unreachable etcd shows up on the first request.
    pub async fn connect(
        endpoints: &[String],
        prefix: String,
        timeout: Duration,
    ) -> Result<Dcs, DcsError> {
        let opts = ConnectOptions::new()
            .with_connect_timeout(timeout)
            .with_timeout(timeout)
            .with_keep_alive(Duration::from_secs(2), timeout);
        let client = bounded(timeout, async {
            Client::connect(endpoints, Some(opts))
                .await
                .map_err(DcsError::from)
        })
        .await?;
        Ok(Dcs {
            client,
            prefix,
            timeout,
            keeper: Arc::default(),
            mirror: Arc::default(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The same etcd connection for another agent (under its cluster's
    /// prefix), with a keep-alive stream and watch copy of its own: many
    /// agents in one process (`bench/scale`) share one channel, as many
    /// processes would share the etcd cluster.
    pub fn with_prefix(&self, prefix: String) -> Dcs {
        Dcs {
            client: self.client.clone(),
            prefix,
            timeout: self.timeout,
            keeper: Arc::default(),
            mirror: Arc::default(),
        }
    }

    fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    async fn txn(&self, txn: Txn) -> Result<bool, DcsError> {
        let mut kv = self.client.kv_client();
        bounded(self.timeout, async { Ok(kv.txn(txn).await?.succeeded()) }).await
    }

    async fn create_if_absent(
        &self,
        rel: &str,
        value: &str,
        lease: Option<LeaseId>,
    ) -> Result<bool, DcsError> {
        let key = self.key(rel);
        let opts = lease.map(|l| PutOptions::new().with_lease(l.0));
        self.txn(
            Txn::new()
                .when([Compare::create_revision(key.as_str(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key.as_str(), value, opts)]),
        )
        .await
    }

    pub async fn delete_member(&self, name: &str) -> Result<(), DcsError> {
        let mut kv = self.client.kv_client();
        let key = self.key(&format!("members/{name}"));
        bounded(self.timeout, async {
            kv.delete(key, None).await?;
            Ok(())
        })
        .await
    }

    /// The compares that make a transaction the leader's: the leader key
    /// names `me` and hangs on `lease`.
    fn held_by(&self, me: &str, lease: LeaseId) -> [Compare; 2] {
        let leader = self.key("leader");
        [
            Compare::value(leader.as_str(), CompareOp::Equal, me),
            Compare::lease(leader.as_str(), CompareOp::Equal, lease.0),
        ]
    }

    /// A put that only the holder of the leader key on `lease` makes.
    async fn put_as_leader(
        &self,
        rel: &str,
        value: String,
        me: &str,
        lease: LeaseId,
    ) -> Result<bool, DcsError> {
        let key = self.key(rel);
        self.txn(
            Txn::new()
                .when(self.held_by(me, lease))
                .and_then([TxnOp::put(key.as_str(), value, None)]),
        )
        .await
    }

    /// Stores a switchover/failover request unless one is pending.
    pub async fn request_failover(&self, req: &FailoverKey) -> Result<bool, DcsError> {
        let json = serde_json::to_string(req).expect("failover serializes");
        self.create_if_absent("failover", &json, None).await
    }

    /// Replaces the dynamic config only if it is unchanged since `revision`
    /// was read (0: only if absent), so two editors cannot overwrite each other.
    pub async fn cas_config(
        &self,
        config: &DynamicConfig,
        revision: i64,
    ) -> Result<bool, DcsError> {
        let key = self.key("config");
        let json = serde_json::to_string(config).expect("config serializes");
        self.txn(
            Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    revision,
                )])
                .and_then([TxnOp::put(key.as_str(), json, None)]),
        )
        .await
    }

    async fn put(&self, rel: &str, value: String, lease: Option<LeaseId>) -> Result<(), DcsError> {
        let mut kv = self.client.kv_client();
        let key = self.key(rel);
        let opts = lease.map(|l| PutOptions::new().with_lease(l.0));
        bounded(self.timeout, async {
            kv.put(key, value, opts).await?;
            Ok(())
        })
        .await
    }
}

impl Dcs {
    /// Keeps a copy of the whole prefix current by watch, not by polling:
    /// one read, then every change from the revision after it. Calls
    /// `on_view` with the view after the read and after each batch of
    /// changes; returns only on an error (etcd unreachable, the watch
    /// cancelled or compacted), after which the caller starts over.
    pub async fn mirror(&self, mut on_view: impl FnMut(ClusterView)) -> DcsError {
        match self.mirror_once(&mut |view, _| on_view(view)).await {
            Ok(()) => DcsError::Etcd(etcd_client::Error::WatchError("watch ended".into())),
            Err(e) => e,
        }
    }

    /// Every key under the prefix, in one request.
    async fn get_all(&self) -> Result<etcd_client::GetResponse, DcsError> {
        let mut kv = self.client.kv_client();
        let prefix = self.prefix.clone();
        bounded(self.timeout, async {
            Ok(kv
                .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
                .await?)
        })
        .await
    }

    /// Every group of a multi-group cluster, read at once from a `Dcs`
    /// on the scope's prefix (`<namespace>/<scope>/`): the keys under
    /// `<group>/`, where a group is digits alone (Patroni's Citus layout,
    /// which patronictl reads the same way). Empty for a one-group cluster.
    pub async fn load_groups(&self) -> Result<BTreeMap<u32, ClusterView>, DcsError> {
        let resp = self.get_all().await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let mut groups: BTreeMap<u32, Vec<&etcd_client::KeyValue>> = BTreeMap::new();
        for kv in resp.kvs() {
            let Some(rel) = kv.key().strip_prefix(self.prefix.as_bytes()) else {
                continue;
            };
            if let Some(g) = group_of(rel) {
                groups.entry(g).or_default().push(kv);
            }
        }
        Ok(groups
            .into_iter()
            .map(|(g, kvs)| {
                let prefix = format!("{}{g}/", self.prefix);
                let view = ClusterView::from_kvs(
                    &prefix,
                    kvs.iter()
                        .map(|kv| (kv.key(), kv.value(), kv.lease(), kv.mod_revision())),
                    revision,
                );
                (g, view)
            })
            .collect())
    }

    /// `on_view`'s flag: whether the change is one a member acts on at once
    /// rather than on its next tick (`wakes`); the first view always is.
    async fn mirror_once(
        &self,
        on_view: &mut impl FnMut(ClusterView, bool),
    ) -> Result<(), DcsError> {
        type Keys = std::collections::BTreeMap<Vec<u8>, (Vec<u8>, i64, i64)>;
        let view = |keys: &Keys, revision: i64| {
            ClusterView::from_kvs(
                &self.prefix,
                keys.iter()
                    .map(|(k, (v, lease, rev))| (k.as_slice(), v.as_slice(), *lease, *rev)),
                revision,
            )
        };
        let resp = self.get_all().await?;
        let mut revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let mut keys: Keys = resp
            .kvs()
            .iter()
            .map(|kv| {
                (
                    kv.key().to_vec(),
                    (kv.value().to_vec(), kv.lease(), kv.mod_revision()),
                )
            })
            .collect();
        on_view(view(&keys, revision), true);
        let mut w = self.client.watch_client();
        let opts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let prefix = self.prefix.clone();
        let mut stream = bounded(self.timeout, async {
            Ok(w.watch(prefix.as_str(), Some(opts)).await?)
        })
        .await?;
        while let Some(resp) = stream.message().await? {
            if resp.canceled() {
                return Err(DcsError::Etcd(etcd_client::Error::WatchError(format!(
                    "watch cancelled: {} (compacted at {})",
                    resp.cancel_reason(),
                    resp.compact_revision()
                ))));
            }
            if resp.events().is_empty() {
                continue;
            }
            let mut wake = false;
            for e in resp.events() {
                let Some(kv) = e.kv() else { continue };
                wake |= wakes(&self.prefix, kv);
                match e.event_type() {
                    etcd_client::EventType::Put => {
                        keys.insert(
                            kv.key().to_vec(),
                            (kv.value().to_vec(), kv.lease(), kv.mod_revision()),
                        );
                    }
                    etcd_client::EventType::Delete => {
                        keys.remove(kv.key());
                    }
                }
                revision = revision.max(kv.mod_revision());
            }
            on_view(view(&keys, revision), wake);
        }
        Ok(())
    }
}

/// The group a key below a scope's prefix belongs to: its first segment,
/// when that is digits alone and something follows it.
fn group_of(rel: &[u8]) -> Option<u32> {
    let slash = rel.iter().position(|b| *b == b'/')?;
    let (digits, rest) = rel.split_at(slash);
    if digits.is_empty() || rest.len() < 2 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The agent's store (`agent::Store`) is etcd, through these requests.
impl Store for Dcs {
    async fn load(&self) -> Result<ClusterView, DcsError> {
        let resp = self.get_all().await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        Ok(ClusterView::from_kvs(
            &self.prefix,
            resp.kvs()
                .iter()
                .map(|kv| (kv.key(), kv.value(), kv.lease(), kv.mod_revision())),
            revision,
        ))
    }

    async fn grant_lease(&self, ttl: u64) -> Result<LeaseId, DcsError> {
        let mut c = self.client.lease_client();
        bounded(self.timeout, async {
            Ok(LeaseId(c.grant(ttl as i64, None).await?.id()))
        })
        .await
    }

    /// One keep-alive round trip on the lease's open stream (opened if
    /// there is none, or if the open one fails: etcd may have closed it
    /// while idle), whose answer must carry a TTL above zero.
    /// `LeaseExpired` means the lease is gone for good and everything
    /// attached to it has vanished.
    async fn keep_alive(&self, lease: LeaseId) -> Result<(), DcsError> {
        // Out of the slot for the round trip: a renewal that fails or times
        // out drops its stream, since an answer still in flight on it would
        // be read as the next renewal's.
        let open = lock(&self.keeper).take().filter(|k| k.lease == lease);
        let mut c = self.client.lease_client();
        let keeper = bounded(self.timeout, async {
            if let Some(k) = open {
                match renew_on(k).await {
                    Ok(k) => return Ok(k),
                    Err(DcsError::LeaseExpired(id)) => return Err(DcsError::LeaseExpired(id)),
                    Err(e) => tracing::debug!(lease = lease.0, "keep-alive stream: {e}; reopening"),
                }
            }
            let (keeper, stream) = c
                .keep_alive(lease.0)
                .await
                .map_err(|e| lease_error(e, lease))?;
            Ok(Keeper {
                lease,
                keeper,
                stream,
            })
        })
        .await?;
        *lock(&self.keeper) = Some(keeper);
        Ok(())
    }

    fn mirrored(&self) -> Option<ClusterView> {
        lock(&self.mirror).clone()
    }

    async fn revoke(&self, lease: LeaseId) -> Result<(), DcsError> {
        let mut c = self.client.lease_client();
        bounded(self.timeout, async {
            c.revoke(lease.0).await?;
            Ok(())
        })
        .await
    }

    /// Claims the right to bootstrap the cluster (value "" until initdb is
    /// done). The claim hangs on the claimer's lease, so a member that dies
    /// mid-bootstrap does not block the cluster forever; `set_initialize`
    /// makes it permanent.
    async fn take_initialize(&self, lease: LeaseId) -> Result<bool, DcsError> {
        self.create_if_absent("initialize", "", Some(lease)).await
    }

    /// Gives up a bootstrap claim that failed, so another member can try.
    async fn release_initialize(&self) -> Result<bool, DcsError> {
        let key = self.key("initialize");
        self.txn(
            Txn::new()
                .when([Compare::value(key.as_str(), CompareOp::Equal, "")])
                .and_then([TxnOp::delete(key.as_str(), None)]),
        )
        .await
    }

    /// Writes the system identifier into `initialize` when it holds our
    /// bootstrap claim (empty) or is gone (etcd lost its data); never over
    /// another cluster's identifier. `true` also when it already holds ours.
    async fn set_initialize(&self, system_id: &str) -> Result<bool, DcsError> {
        let key = self.key("initialize");
        let claimed = self
            .txn(
                Txn::new()
                    .when([Compare::value(key.as_str(), CompareOp::Equal, "")])
                    .and_then([TxnOp::put(key.as_str(), system_id, None)]),
            )
            .await?;
        if claimed || self.create_if_absent("initialize", system_id, None).await? {
            return Ok(true);
        }
        // Already ours: a retry after an answer that was lost.
        self.txn(Txn::new().when([Compare::value(key.as_str(), CompareOp::Equal, system_id)]))
            .await
    }

    /// Safety rule 3: the leader key is taken only if nobody holds it.
    async fn acquire_leader(&self, name: &str, lease: LeaseId) -> Result<bool, DcsError> {
        self.create_if_absent("leader", name, Some(lease)).await
    }

    /// Re-attaches our own leader key to our current lease, after an agent
    /// restart got us a new lease while the old one still holds the key.
    async fn adopt_leader(&self, name: &str, lease: LeaseId) -> Result<bool, DcsError> {
        let key = self.key("leader");
        self.txn(
            Txn::new()
                .when([Compare::value(key.as_str(), CompareOp::Equal, name)])
                .and_then([TxnOp::put(
                    key.as_str(),
                    name,
                    Some(PutOptions::new().with_lease(lease.0)),
                )]),
        )
        .await
    }

    /// Deletes the leader key only if it is still ours.
    async fn release_leader(&self, name: &str) -> Result<bool, DcsError> {
        let key = self.key("leader");
        self.txn(
            Txn::new()
                .when([Compare::value(key.as_str(), CompareOp::Equal, name)])
                .and_then([TxnOp::delete(key.as_str(), None)]),
        )
        .await
    }

    async fn remove_dead_leader(&self, name: &str, lease: LeaseId) -> Result<bool, DcsError> {
        let key = self.key("leader");
        let removed = self
            .txn(
                Txn::new()
                    .when([
                        Compare::value(key.as_str(), CompareOp::Equal, name),
                        Compare::lease(key.as_str(), CompareOp::Equal, lease.0),
                    ])
                    .and_then([TxnOp::delete(key.as_str(), None)]),
            )
            .await?;
        if removed {
            // The dead agent's member key hangs on the same lease: it goes
            // too, rather than show a running member for another ttl. Best
            // effort: the key is what the election waits on.
            if let Err(e) = self.revoke(lease).await {
                tracing::debug!(lease = lease.0, "revoking the dead leader's lease: {e}");
            }
        }
        Ok(removed)
    }

    async fn put_member(
        &self,
        name: &str,
        member: &Member,
        lease: LeaseId,
    ) -> Result<(), DcsError> {
        let json = serde_json::to_string(member).expect("member serializes");
        self.put(&format!("members/{name}"), json, Some(lease))
            .await
            .map_err(|e| match e {
                DcsError::Etcd(e) => lease_error(e, lease),
                other => other,
            })
    }

    /// Writes the dynamic config only if none is stored yet.
    async fn init_config(&self, config: &DynamicConfig) -> Result<bool, DcsError> {
        let json = serde_json::to_string(config).expect("config serializes");
        self.create_if_absent("config", &json, None).await
    }

    /// `status` is the leader's key: written only while the leader key is
    /// ours on `lease` (a deposed leader's last tick cannot overwrite the
    /// new leader's position and slots). `false`: not written.
    async fn put_status(
        &self,
        me: &str,
        lease: LeaseId,
        status: &StatusKey,
    ) -> Result<bool, DcsError> {
        let json = serde_json::to_string(status).expect("status serializes");
        self.put_as_leader("status", json, me, lease).await
    }

    /// Switchover handover: the leader key moves from `from` to `to`, onto
    /// `to`'s own lease, in one transaction that also clears `failover`. It
    /// fails if `from` no longer holds the key or `to`'s member key is no
    /// longer on that lease (the candidate died meanwhile).
    async fn transfer_leader(
        &self,
        from: &str,
        to: &str,
        to_lease: LeaseId,
    ) -> Result<bool, DcsError> {
        let leader = self.key("leader");
        let member = self.key(&format!("members/{to}"));
        let failover = self.key("failover");
        self.txn(
            Txn::new()
                .when([
                    Compare::value(leader.as_str(), CompareOp::Equal, from),
                    Compare::lease(member.as_str(), CompareOp::Equal, to_lease.0),
                ])
                .and_then([
                    TxnOp::put(
                        leader.as_str(),
                        to,
                        Some(PutOptions::new().with_lease(to_lease.0)),
                    ),
                    TxnOp::delete(failover.as_str(), None),
                ]),
        )
        .await
    }

    async fn clear_failover(&self) -> Result<(), DcsError> {
        let mut kv = self.client.kv_client();
        let key = self.key("failover");
        bounded(self.timeout, async {
            kv.delete(key, None).await?;
            Ok(())
        })
        .await
    }

    /// Reserves timeline `to` for our promotion: only while the leader key
    /// is ours on `lease`, and only over the value we saw (`seen`, `None`:
    /// absent), so two promotions never reserve the same timeline.
    async fn reserve_timeline(
        &self,
        me: &str,
        lease: LeaseId,
        seen: Option<u32>,
        to: u32,
    ) -> Result<bool, DcsError> {
        let key = self.key(baton_core::cluster::TIMELINE_KEY);
        let unchanged = match seen {
            None => Compare::create_revision(key.as_str(), CompareOp::Equal, 0),
            Some(v) => Compare::value(key.as_str(), CompareOp::Equal, v.to_string()),
        };
        let [named, on_lease] = self.held_by(me, lease);
        self.txn(
            Txn::new()
                .when([named, on_lease, unchanged])
                .and_then([TxnOp::put(key.as_str(), to.to_string(), None)]),
        )
        .await
    }

    /// `history`, like `status`, only from the holder of the leader key.
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
        let key = self.key("sync");
        let [named, on_lease] = self.held_by(me, lease);
        let unchanged = Compare::mod_revision(key.as_str(), CompareOp::Equal, seen_revision);
        let op = match sync {
            Some(s) => TxnOp::put(
                key.as_str(),
                serde_json::to_string(s).expect("sync key serializes"),
                None,
            ),
            None => TxnOp::delete(key.as_str(), None),
        };
        self.txn(Txn::new().when([named, on_lease, unchanged]).and_then([op]))
            .await
    }

    async fn put_discarded(&self, d: &baton_core::cluster::DiscardedWal) -> Result<(), DcsError> {
        let key = self.key(&d.key());
        let json = serde_json::to_string(d).expect("discarded record serializes");
        let mut kv = self.client.kv_client();
        bounded(self.timeout, async {
            kv.put(key, json, None).await?;
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
        let key = self.key("failsafe");
        let op = match members {
            Some(m) => TxnOp::put(
                key.as_str(),
                serde_json::to_string(m).expect("failsafe key serializes"),
                None,
            ),
            None => TxnOp::delete(key.as_str(), None),
        };
        self.txn(Txn::new().when(self.held_by(me, lease)).and_then([op]))
            .await
    }

    fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    fn watch_changes(self, wake: Arc<Notify>) -> impl Future<Output = ()> + Send + 'static {
        let dcs = self;
        async move {
            loop {
                let e = dcs
                    .mirror_once(&mut |view, wakes| {
                        *lock(&dcs.mirror) = Some(view);
                        if wakes {
                            wake.notify_one();
                        }
                    })
                    .await;
                // From here until the watch is back, every tick reads etcd.
                *lock(&dcs.mirror) = None;
                if let Err(e) = e {
                    tracing::debug!("etcd watch failed: {e}");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Whether a change to `kv` is one members act on at once rather than on
/// their next tick.
fn wakes(prefix: &str, kv: &etcd_client::KeyValue) -> bool {
    match kv.key_str().ok().and_then(|k| k.strip_prefix(prefix)) {
        Some("leader" | "failover" | "initialize" | "config") => true,
        // A member reporting that the leader's ports refuse: the others
        // check now, not on their next tick.
        Some(k) if k.starts_with("members/") => contains(kv.value(), b"\"baton_leader_refused\""),
        _ => false,
    }
}

/// One renewal on an open stream.
async fn renew_on(mut k: Keeper) -> Result<Keeper, DcsError> {
    let lease = k.lease;
    k.keeper
        .keep_alive()
        .await
        .map_err(|e| lease_error(e, lease))?;
    match k
        .stream
        .message()
        .await
        .map_err(|e| lease_error(e, lease))?
    {
        Some(r) if r.ttl() > 0 => Ok(k),
        Some(_) => Err(DcsError::LeaseExpired(lease.0)),
        None => Err(DcsError::Etcd(etcd_client::Error::LeaseKeepAliveError(
            "keep-alive stream closed by etcd".into(),
        ))),
    }
}

/// A poisoned lock only means a panic elsewhere mid-assignment of a whole
/// value: the value is still one that was stored.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

async fn bounded<T>(
    timeout: Duration,
    fut: impl Future<Output = Result<T, DcsError>>,
) -> Result<T, DcsError> {
    match tokio::time::timeout(timeout, fut).await {
        Ok(r) => r,
        Err(_) => Err(DcsError::Timeout(timeout)),
    }
}

#[cfg(test)]
mod tests {
    use super::group_of;

    #[test]
    fn a_group_is_a_segment_of_digits_with_keys_below_it() {
        assert_eq!(group_of(b"0/leader"), Some(0));
        assert_eq!(group_of(b"12/members/dn1"), Some(12));
        assert_eq!(group_of(b"leader"), None);
        assert_eq!(group_of(b"members/1"), None);
        assert_eq!(group_of(b"1/"), None);
        assert_eq!(group_of(b"/leader"), None);
        assert_eq!(group_of(b"1a/leader"), None);
        assert_eq!(group_of(b"99999999999999/leader"), None);
    }
}
