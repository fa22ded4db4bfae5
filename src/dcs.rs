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
    Client, Compare, CompareOp, ConnectOptions, GetOptions, PutOptions, Txn, TxnOp, WatchOptions,
    WatchStream,
};
use serde::{Deserialize, Serialize};

use crate::config::{DynamicConfig, Tags};

/// The fencing token of this agent's claim on etcd: the leader key and the
/// member key are attached to it, so when it expires both vanish at once and
/// another member may take over. Never reuse one after it was reported gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaseId(pub i64);

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

/// `members/<name>`: Patroni's member JSON plus Baton's own fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Member {
    pub conn_url: String,
    pub api_url: String,
    pub state: String,
    pub role: String,
    #[serde(default)]
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub xlog_location: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receive_lsn: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_lsn: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replication_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<u32>,
    #[serde(default, skip_serializing_if = "is_default_tags")]
    pub tags: Tags,
    /// Baton: the one-line reason of this member's last HA decision.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baton_reason: Option<String>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

fn is_default_tags(t: &Tags) -> bool {
    *t == Tags::default()
}

impl Member {
    /// `host:port` of postgres, parsed back out of `conn_url`.
    pub fn pg_address(&self) -> Option<(String, u16)> {
        let rest = self.conn_url.strip_prefix("postgres://")?;
        let hostport = rest.split(['/', '?']).next()?;
        let hostport = hostport.rsplit('@').next()?;
        let (host, port) = hostport.rsplit_once(':')?;
        Some((
            host.trim_matches(['[', ']']).to_string(),
            port.parse().ok()?,
        ))
    }
}

/// `status`: the leader's last WAL position and its slots.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusKey {
    #[serde(default)]
    pub optime: Option<u64>,
    #[serde(default)]
    pub slots: Option<BTreeMap<String, u64>>,
    #[serde(default)]
    pub retain_slots: Option<Vec<String>>,
}

/// `failover`: a requested switchover (`leader` set) or manual failover.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailoverKey {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub leader: Option<String>,
    /// The candidate (Patroni calls the field `member`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub member: Option<String>,
    /// RFC 3339 time with zone; absent means now.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_at: Option<String>,
}

impl FailoverKey {
    /// The scheduled time, if any and well-formed.
    pub fn scheduled(&self) -> Option<chrono::DateTime<chrono::Utc>> {
        let s = self.scheduled_at.as_deref()?;
        chrono::DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&chrono::Utc))
    }
}

/// `leader`: who holds it, and on which lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaderKey {
    pub name: String,
    pub lease: LeaseId,
}

/// Everything under the cluster prefix, read in one request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterView {
    /// `None`: nobody has claimed bootstrap; `Some("")`: bootstrap in progress.
    pub initialize: Option<String>,
    pub config: Option<DynamicConfig>,
    /// Why the stored config was ignored, if it was.
    pub config_error: Option<String>,
    pub leader: Option<LeaderKey>,
    pub members: BTreeMap<String, Member>,
    pub status: Option<StatusKey>,
    pub history: Option<serde_json::Value>,
    pub failover: Option<FailoverKey>,
    /// The lease each member key hangs on (a switchover hands the leader
    /// key over onto the candidate's lease).
    pub member_leases: BTreeMap<String, LeaseId>,
    /// mod_revision of `config`, for compare-and-set edits (0: absent).
    pub config_revision: i64,
    /// etcd revision this view was read at.
    pub revision: i64,
}

impl ClusterView {
    pub fn leader_name(&self) -> Option<&str> {
        self.leader.as_ref().map(|l| l.name.as_str())
    }

    pub fn leader_member(&self) -> Option<&Member> {
        self.leader_name().and_then(|n| self.members.get(n))
    }

    /// Parses the key-values of a prefix read. Malformed member entries are
    /// skipped (one broken member must not blind the whole cluster), but a
    /// malformed config is reported so an operator sees why it is ignored.
    pub fn from_kvs<'a>(
        prefix: &str,
        kvs: impl IntoIterator<Item = (&'a [u8], &'a [u8], i64, i64)>,
        revision: i64,
    ) -> ClusterView {
        let mut view = ClusterView {
            revision,
            ..ClusterView::default()
        };
        for (key, value, lease, mod_revision) in kvs {
            let Ok(key) = std::str::from_utf8(key) else {
                continue;
            };
            let Some(rel) = key.strip_prefix(prefix) else {
                continue;
            };
            let text = String::from_utf8_lossy(value);
            match rel {
                "initialize" => view.initialize = Some(text.into_owned()),
                "leader" => {
                    view.leader = Some(LeaderKey {
                        name: text.into_owned(),
                        lease: LeaseId(lease),
                    })
                }
                "config" => {
                    view.config_revision = mod_revision;
                    match serde_json::from_str::<DynamicConfig>(&text) {
                        Ok(c) => match c.validate() {
                            Ok(()) => view.config = Some(c),
                            Err(e) => view.config_error = Some(e),
                        },
                        Err(e) => view.config_error = Some(e.to_string()),
                    }
                }
                "status" => view.status = serde_json::from_str(&text).ok(),
                "history" => view.history = serde_json::from_str(&text).ok(),
                "failover" => view.failover = serde_json::from_str(&text).ok(),
                _ => {
                    if let Some(name) = rel.strip_prefix("members/") {
                        if let Ok(m) = serde_json::from_str::<Member>(&text) {
                            view.members.insert(name.to_string(), m);
                            view.member_leases.insert(name.to_string(), LeaseId(lease));
                        }
                    }
                }
            }
        }
        view
    }
}

/// The etcd client for one cluster prefix.
#[derive(Clone)]
pub struct Dcs {
    client: Client,
    prefix: String,
    timeout: Duration,
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
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    fn key(&self, rel: &str) -> String {
        format!("{}{rel}", self.prefix)
    }

    pub async fn load(&self) -> Result<ClusterView, DcsError> {
        let mut kv = self.client.kv_client();
        let prefix = self.prefix.clone();
        let resp = bounded(self.timeout, async {
            Ok(kv
                .get(prefix.as_str(), Some(GetOptions::new().with_prefix()))
                .await?)
        })
        .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        Ok(ClusterView::from_kvs(
            &self.prefix,
            resp.kvs()
                .iter()
                .map(|kv| (kv.key(), kv.value(), kv.lease(), kv.mod_revision())),
            revision,
        ))
    }

    pub async fn grant_lease(&self, ttl: u64) -> Result<LeaseId, DcsError> {
        let mut c = self.client.lease_client();
        bounded(self.timeout, async {
            Ok(LeaseId(c.grant(ttl as i64, None).await?.id()))
        })
        .await
    }

    /// One keep-alive round trip. `LeaseExpired` means the lease is gone for
    /// good and everything attached to it has vanished.
    pub async fn keep_alive(&self, lease: LeaseId) -> Result<(), DcsError> {
        let mut c = self.client.lease_client();
        bounded(self.timeout, async {
            let (mut keeper, mut stream) = c.keep_alive(lease.0).await?;
            keeper.keep_alive().await?;
            match stream.message().await? {
                Some(r) if r.ttl() > 0 => Ok(()),
                _ => Err(DcsError::LeaseExpired(lease.0)),
            }
        })
        .await
    }

    pub async fn revoke(&self, lease: LeaseId) -> Result<(), DcsError> {
        let mut c = self.client.lease_client();
        bounded(self.timeout, async {
            c.revoke(lease.0).await?;
            Ok(())
        })
        .await
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

    /// Claims the right to bootstrap the cluster (value "" until initdb is
    /// done). The claim hangs on the claimer's lease, so a member that dies
    /// mid-bootstrap does not block the cluster forever; `set_initialize`
    /// makes it permanent.
    pub async fn take_initialize(&self, lease: LeaseId) -> Result<bool, DcsError> {
        self.create_if_absent("initialize", "", Some(lease)).await
    }

    /// Gives up a bootstrap claim that failed, so another member can try.
    pub async fn release_initialize(&self) -> Result<bool, DcsError> {
        let key = self.key("initialize");
        self.txn(
            Txn::new()
                .when([Compare::value(key.as_str(), CompareOp::Equal, "")])
                .and_then([TxnOp::delete(key.as_str(), None)]),
        )
        .await
    }

    pub async fn set_initialize(&self, system_id: &str) -> Result<bool, DcsError> {
        let key = self.key("initialize");
        self.txn(
            Txn::new()
                .when([Compare::value(key.as_str(), CompareOp::Equal, "")])
                .and_then([TxnOp::put(key.as_str(), system_id, None)]),
        )
        .await
    }

    /// Safety rule 3: the leader key is taken only if nobody holds it.
    pub async fn acquire_leader(&self, name: &str, lease: LeaseId) -> Result<bool, DcsError> {
        self.create_if_absent("leader", name, Some(lease)).await
    }

    /// Re-attaches our own leader key to our current lease, after an agent
    /// restart got us a new lease while the old one still holds the key.
    pub async fn adopt_leader(&self, name: &str, lease: LeaseId) -> Result<bool, DcsError> {
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
    pub async fn release_leader(&self, name: &str) -> Result<bool, DcsError> {
        let key = self.key("leader");
        self.txn(
            Txn::new()
                .when([Compare::value(key.as_str(), CompareOp::Equal, name)])
                .and_then([TxnOp::delete(key.as_str(), None)]),
        )
        .await
    }

    pub async fn put_member(
        &self,
        name: &str,
        member: &Member,
        lease: LeaseId,
    ) -> Result<(), DcsError> {
        let json = serde_json::to_string(member).expect("member serializes");
        self.put(&format!("members/{name}"), json, Some(lease))
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

    /// Writes the dynamic config only if none is stored yet.
    pub async fn init_config(&self, config: &DynamicConfig) -> Result<bool, DcsError> {
        let json = serde_json::to_string(config).expect("config serializes");
        self.create_if_absent("config", &json, None).await
    }

    pub async fn put_status(&self, status: &StatusKey) -> Result<(), DcsError> {
        let json = serde_json::to_string(status).expect("status serializes");
        self.put("status", json, None).await
    }

    /// Switchover handover: the leader key moves from `from` to `to`, onto
    /// `to`'s own lease, in one transaction that also clears `failover`. It
    /// fails if `from` no longer holds the key or `to`'s member key is no
    /// longer on that lease (the candidate died meanwhile).
    pub async fn transfer_leader(
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

    /// Stores a switchover/failover request unless one is pending.
    pub async fn request_failover(&self, req: &FailoverKey) -> Result<bool, DcsError> {
        let json = serde_json::to_string(req).expect("failover serializes");
        self.create_if_absent("failover", &json, None).await
    }

    pub async fn clear_failover(&self) -> Result<(), DcsError> {
        let mut kv = self.client.kv_client();
        let key = self.key("failover");
        bounded(self.timeout, async {
            kv.delete(key, None).await?;
            Ok(())
        })
        .await
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

    pub async fn put_history(&self, history: &serde_json::Value) -> Result<(), DcsError> {
        self.put("history", history.to_string(), None).await
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

    /// A watch on the whole prefix; the agent uses it to wake its loop early.
    pub async fn watch(&self) -> Result<WatchStream, DcsError> {
        let mut w = self.client.watch_client();
        let prefix = self.prefix.clone();
        bounded(self.timeout, async {
            Ok(w.watch(prefix, Some(WatchOptions::new().with_prefix()))
                .await?)
        })
        .await
    }
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
    use super::*;

    #[test]
    fn view_parses_patroni_layout() {
        let p = "/service/demo/";
        let member = r#"{"conn_url":"postgres://127.0.0.1:5433/postgres","api_url":"http://127.0.0.1:8009/patroni","state":"running","role":"replica","version":"0.1.0","xlog_location":100,"timeline":1,"tags":{"nofailover":true}}"#;
        let kvs: Vec<(String, String, i64)> = vec![
            (format!("{p}initialize"), "7301".into(), 0),
            (format!("{p}leader"), "node1".into(), 42),
            (format!("{p}members/node2"), member.into(), 43),
            (format!("{p}members/broken"), "{not json".into(), 44),
            (
                format!("{p}config"),
                r#"{"ttl":4,"loop_wait":1,"retry_timeout":1,"maximum_lag_on_failover":1048576}"#
                    .into(),
                0,
            ),
            ("/service/other/leader".into(), "x".into(), 0),
        ];
        let view = ClusterView::from_kvs(
            p,
            kvs.iter()
                .map(|(k, v, l)| (k.as_bytes(), v.as_bytes(), *l, 3)),
            7,
        );
        assert_eq!(view.initialize.as_deref(), Some("7301"));
        assert_eq!(
            view.leader,
            Some(LeaderKey {
                name: "node1".into(),
                lease: LeaseId(42)
            })
        );
        assert_eq!(view.members.len(), 1);
        let m = &view.members["node2"];
        assert!(m.tags.nofailover);
        assert_eq!(m.pg_address(), Some(("127.0.0.1".into(), 5433)));
        assert_eq!(view.config.as_ref().unwrap().ttl, 4);
        assert_eq!(view.revision, 7);
    }

    #[test]
    fn invalid_stored_config_is_reported_not_used() {
        let p = "/service/demo/";
        let key = format!("{p}config");
        let bad = r#"{"ttl":2,"loop_wait":1,"retry_timeout":1,"maximum_lag_on_failover":1}"#;
        let view = ClusterView::from_kvs(p, [(key.as_bytes(), bad.as_bytes(), 0, 1)], 1);
        assert!(view.config.is_none());
        assert!(view.config_error.unwrap().contains("two renewal attempts"));
    }

    #[test]
    fn member_json_uses_patroni_field_names() {
        let m = Member {
            conn_url: "postgres://127.0.0.1:5432/postgres".into(),
            api_url: "http://127.0.0.1:8008/patroni".into(),
            state: "running".into(),
            role: "primary".into(),
            version: "0.1.0".into(),
            xlog_location: Some(5),
            timeline: Some(1),
            ..Member::default()
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["xlog_location"], 5);
        assert_eq!(v["role"], "primary");
        assert!(v.get("tags").is_none());
        assert!(v.get("receive_lsn").is_none());
    }
}
