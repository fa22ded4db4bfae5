//! The cluster as etcd holds it, laid out as Patroni lays it out (see
//! PATRONI-COMPAT.md): the leader key and its lease, the members, the
//! status, failover and history keys, parsed from one prefix read. Pure
//! data: the etcd client that reads it lives in the binary crate.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::config::{DynamicConfig, Tags};
use crate::instance::slot_name;
use crate::lsn::Lsn;

/// The fencing token of this agent's claim on etcd: the leader key and the
/// member key are attached to it, so when it expires both vanish at once and
/// another member may take over. Never reuse one after it was reported gone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LeaseId(pub i64);

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
    /// Baton: the stable code of that reason (`Reason::code()`), for tools.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baton_reason_code: Option<String>,
    /// Baton: the leader's routing endpoints (`[routing]`) and whether
    /// each holds this primary yet.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub baton_routing: BTreeMap<String, EndpointStatus>,
    /// Baton: this member's data directory (`baton list --gs-om` shows it
    /// as openGauss's tools do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baton_data_dir: Option<String>,
    /// Baton: a clone or rebuild under way, how far it got.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baton_progress: Option<crate::instance::Progress>,
    /// Baton: how long ago each standby replayed the then-latest commit, in
    /// milliseconds, from `pg_stat_replication.replay_lag` (leader only).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub baton_replay_lag_ms: BTreeMap<String, u64>,
    /// Baton: a Greenplum coordinator's segments (leader only).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub baton_segments: Vec<crate::instance::Segment>,
    /// Baton: why the segments' mirroring could not be read (leader only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baton_mirroring_error: Option<String>,
    /// Baton: this member's probes found both the REST port and the
    /// postgres port of the leader key's holder refusing connections
    /// (the process-death fast path, `ha::dead_leader`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baton_leader_refused: Option<RefusedReport>,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

/// Which leadership a member saw refusing on both ports: the holder of
/// the leader key and the lease it was on. A report counts only for the
/// very key it was made against, never for a later leadership.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RefusedReport {
    pub leader: String,
    pub lease: LeaseId,
}

/// One routing endpoint as the leader last left it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointStatus {
    /// `ok`: holds the current primary; `pending`: not yet, see `error`.
    pub state: String,
    /// `host:port` the endpoint was (or is being) told.
    pub primary: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When it last succeeded, or when it first failed for this primary.
    pub since: String,
    /// Tries for this primary so far.
    pub attempts: u64,
}

impl EndpointStatus {
    pub fn is_ok(&self) -> bool {
        self.state == "ok"
    }
}

fn is_default_tags(t: &Tags) -> bool {
    *t == Tags::default()
}

impl Member {
    /// Postgres runs and accepts writes (Patroni's `primary` + `running`).
    pub fn is_running_primary(&self) -> bool {
        self.role == "primary" && self.state == "running"
    }

    /// A primary whose postmaster runs but did not answer its agent's
    /// last status query: it may take writes (`ha::publish::NOT_RESPONDING`).
    pub fn is_unresponsive_primary(&self) -> bool {
        self.role == "primary" && self.state == crate::ha::publish::NOT_RESPONDING
    }

    /// Postgres runs in recovery.
    pub fn is_running_replica(&self) -> bool {
        self.role == "replica" && self.state == "running"
    }

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
    /// Baton: the leader that wrote it. Outlives the leader key, so that
    /// with no leader the member whose state is the newest is known (a
    /// GTM group cannot elect among read-only members: `ha::election`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub baton_leader: Option<String>,
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

/// `sync`: what the leader promises an election in synchronous mode (see
/// `ha::sync`). Patroni's fields and meaning: `sync_standby` lists the
/// voters (comma-separated), `quorum` how many voters besides itself a
/// candidate must hear from (absent: none, `synchronous_mode: on`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncKey {
    #[serde(default)]
    pub leader: Option<String>,
    #[serde(default)]
    pub sync_standby: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quorum: Option<u32>,
}

impl SyncKey {
    /// The voters, as listed.
    pub fn voters(&self) -> Vec<String> {
        self.sync_standby
            .as_deref()
            .unwrap_or("")
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// Whether `name` is a voter (names compare as postgres compares
    /// standby names: ignoring case).
    pub fn lists(&self, name: &str) -> bool {
        self.voters().iter().any(|v| v.eq_ignore_ascii_case(name))
    }

    pub fn leader_is(&self, name: &str) -> bool {
        self.leader
            .as_deref()
            .is_some_and(|l| l.eq_ignore_ascii_case(name))
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
    /// The lease a bootstrap claim hangs on (`None` once the claim is
    /// permanent): the claimer knows the claim is its own even when the
    /// answer to its request was lost.
    pub initialize_lease: Option<LeaseId>,
    pub config: Option<DynamicConfig>,
    /// Why the stored config was ignored, if it was.
    pub config_error: Option<String>,
    pub leader: Option<LeaderKey>,
    pub members: BTreeMap<String, Member>,
    pub status: Option<StatusKey>,
    pub history: Option<serde_json::Value>,
    pub failover: Option<FailoverKey>,
    /// `sync`, as the last leader in synchronous mode wrote it.
    pub sync: Option<SyncKey>,
    /// mod_revision of `sync`, for compare-and-set (0: absent).
    pub sync_revision: i64,
    /// `failsafe`: the members (name → api_url) a leader in failsafe mode
    /// must hear from to keep running while etcd is out of reach.
    pub failsafe: Option<BTreeMap<String, String>>,
    /// WAL former primaries had past a fork when they were rewound.
    pub discarded: Vec<DiscardedWal>,
    /// The lease each member key hangs on (a switchover hands the leader
    /// key over onto the candidate's lease).
    pub member_leases: BTreeMap<String, LeaseId>,
    /// mod_revision of `config`, for compare-and-set edits (0: absent).
    pub config_revision: i64,
    /// etcd revision this view was read at.
    pub revision: i64,
    /// Baton's `baton/timeline` key: the highest timeline a promotion has
    /// reserved. Every promotion takes a higher one, so no two promotions
    /// share a timeline number, even from the same switch point (postgres
    /// itself could not tell such twins apart).
    pub timeline_reserved: Option<u32>,
}

/// WAL a failover discarded: what a former primary had written past the
/// point where the new leader's timeline forked off, measured when
/// pg_rewind took it back (Baton's `baton/discarded/<timeline>-<member>`).
/// In asynchronous mode it bounds what the failover lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscardedWal {
    pub member: String,
    /// The timeline the member was on, which the new leader left at
    /// `diverged`.
    pub timeline: u32,
    pub diverged: u64,
    /// Where the member's WAL ended.
    pub end: u64,
    pub bytes: u64,
    /// When it was measured (RFC 3339).
    pub at: String,
}

/// Where Baton records [`DiscardedWal`], one key per rewind.
pub const DISCARDED_PREFIX: &str = "baton/discarded/";

impl DiscardedWal {
    /// Its key under the cluster prefix.
    pub fn key(&self) -> String {
        format!("{DISCARDED_PREFIX}{}-{}", self.timeline, self.member)
    }
}

/// Baton's own key (beside Patroni's) holding the last reserved timeline.
pub const TIMELINE_KEY: &str = "baton/timeline";

impl ClusterView {
    /// The timeline a promotion from `current` takes: above every timeline
    /// reserved, published in a member key or recorded in `history`.
    pub fn next_timeline(&self, current: u32) -> u32 {
        let recorded = self
            .history
            .as_ref()
            .and_then(|h| h.as_array())
            .into_iter()
            .flatten()
            .filter_map(|e| e.get(0)?.as_u64())
            .map(|tl| tl as u32 + 1);
        let published = self.members.values().filter_map(|m| m.timeline);
        recorded
            .chain(published)
            .chain(self.timeline_reserved)
            .fold(current, u32::max)
            .saturating_add(1)
    }

    pub fn leader_name(&self) -> Option<&str> {
        self.leader.as_ref().map(|l| l.name.as_str())
    }

    pub fn leader_member(&self) -> Option<&Member> {
        self.leader_name().and_then(|n| self.members.get(n))
    }

    /// Another member whose key says it may still run as primary (role
    /// primary, in any state but stopped: running, handing over,
    /// restarting...): when `me` promotes holding the key, it was handed
    /// over by a live primary (a switchover), since an elected key follows
    /// the old leader's lease and its fencing. Member keys are a tick old,
    /// which errs towards "still running".
    pub fn other_running_primary(&self, me: &str) -> Option<&str> {
        self.members
            .iter()
            .find(|(n, m)| n.as_str() != me && m.role == "primary" && m.state != "stopped")
            .map(|(n, _)| n.as_str())
    }

    /// The leader's last known WAL position: the larger of the `status`
    /// key's optime and the leader's own member key, since either may be a
    /// tick behind the other.
    pub fn leader_optime(&self) -> Option<u64> {
        self.status
            .as_ref()
            .and_then(|s| s.optime)
            .max(self.leader_member().and_then(|m| m.xlog_location))
    }

    /// `maximum_lag_on_failover` of the stored config, or its default when
    /// none is stored (yet) or the stored one is invalid.
    pub fn max_lag(&self) -> u64 {
        self.config
            .as_ref()
            .map_or(DynamicConfig::default().maximum_lag_on_failover, |c| {
                c.maximum_lag_on_failover
            })
    }

    /// Slots Baton manages for this cluster: every current member's but `me`'s,
    /// plus those a previous leader retained.
    pub fn managed_slots(&self, me: &str) -> std::collections::BTreeSet<String> {
        let mine = slot_name(me);
        self.members
            .keys()
            .map(|m| slot_name(m))
            .chain(
                self.status
                    .iter()
                    .flat_map(|s| s.retain_slots.iter().flatten().cloned()),
            )
            .filter(|s| *s != mine)
            .collect()
    }

    /// Maintenance mode as the stored config says.
    pub fn paused(&self) -> bool {
        self.config.as_ref().is_some_and(|c| c.pause)
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
                "initialize" => {
                    view.initialize = Some(text.into_owned());
                    view.initialize_lease = (lease != 0).then_some(LeaseId(lease));
                }
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
                "sync" => {
                    view.sync_revision = mod_revision;
                    view.sync = serde_json::from_str(&text).ok();
                }
                "failsafe" => view.failsafe = serde_json::from_str(&text).ok(),
                TIMELINE_KEY => view.timeline_reserved = text.trim().parse().ok(),
                _ if rel.starts_with(DISCARDED_PREFIX) => {
                    if let Ok(d) = serde_json::from_str(&text) {
                        view.discarded.push(d);
                    }
                }
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

/// The `history` key after promotion to timeline `tl`: exactly the new
/// leader's own timeline history (another leader's timeline with the same
/// number but another switch point must not survive), keeping the time and
/// leader name of entries already stored for the same switch.
pub fn merge_history(
    existing: Option<serde_json::Value>,
    file: &[(u32, Lsn, String)],
    tl: u32,
    me: &str,
    now: chrono::DateTime<chrono::Utc>,
) -> serde_json::Value {
    let stored: Vec<serde_json::Value> = existing
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default();
    let entries = file
        .iter()
        .map(|(t, lsn, reason)| {
            let same = stored.iter().find(|e| {
                e.get(0).and_then(|v| v.as_u64()) == Some(u64::from(*t))
                    && e.get(1).and_then(|v| v.as_u64()) == Some(lsn.0)
            });
            match same {
                Some(e) => e.clone(),
                None => {
                    let newest = *t + 1 == tl;
                    let when =
                        newest.then(|| now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
                    serde_json::json!([t, lsn.0, reason, when, newest.then_some(me)])
                }
            }
        })
        .collect();
    serde_json::Value::Array(entries)
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

    #[test]
    fn history_is_the_new_leaders_own_keeping_known_entries() {
        let now = chrono::DateTime::parse_from_rfc3339("2026-12-01T10:00:00Z")
            .unwrap()
            .with_timezone(&chrono::Utc);
        // Stored: timeline 1 switched at 100 (by n1), and a foreign timeline
        // 2 switched at 500 that our history file does not have.
        let stored = serde_json::json!([
            [
                1,
                100,
                "no recovery target specified",
                "2026-11-30T09:00:00Z",
                "n1"
            ],
            [2, 500, "other", "2026-11-30T09:30:00Z", "n9"]
        ]);
        let file = [
            (1, Lsn(100), "no recovery target specified".to_string()),
            (2, Lsn(700), "no recovery target specified".to_string()),
        ];
        let h = merge_history(Some(stored), &file, 3, "n2", now);
        assert_eq!(
            h,
            serde_json::json!([
                [
                    1,
                    100,
                    "no recovery target specified",
                    "2026-11-30T09:00:00Z",
                    "n1"
                ],
                [
                    2,
                    700,
                    "no recovery target specified",
                    "2026-12-01T10:00:00Z",
                    "n2"
                ]
            ])
        );
        // An older entry unknown to the store gets no time and no leader.
        let h = merge_history(None, &file, 3, "n2", now);
        assert_eq!(
            h[0],
            serde_json::json!([1, 100, "no recovery target specified", null, null])
        );
    }

    #[test]
    fn a_promotion_knows_whether_the_old_primary_still_runs() {
        let mut v = ClusterView::default();
        let m = |role: &str, state: &str| Member {
            role: role.into(),
            state: state.into(),
            ..Member::default()
        };
        v.members.insert("n1".into(), m("primary", "running"));
        v.members.insert("n2".into(), m("replica", "running"));
        // Handed over by n1, still running: a switchover.
        assert_eq!(v.other_running_primary("n2"), Some("n1"));
        // Its handover job under way: still a primary that may write.
        v.members
            .insert("n1".into(), m("primary", "switching over"));
        assert_eq!(v.other_running_primary("n2"), Some("n1"));
        // n1 stopped (or its key gone with its lease): a failover.
        v.members.insert("n1".into(), m("primary", "stopped"));
        assert_eq!(v.other_running_primary("n2"), None);
        v.members.remove("n1");
        assert_eq!(v.other_running_primary("n2"), None);
        // Its own key never counts.
        v.members.insert("n2".into(), m("primary", "running"));
        assert_eq!(v.other_running_primary("n2"), None);
    }

    #[test]
    fn managed_slots_are_members_and_retained_but_not_mine() {
        let mut v = ClusterView::default();
        for n in ["n1", "N-2", "n3"] {
            v.members.insert(n.into(), Member::default());
        }
        v.status = Some(StatusKey {
            retain_slots: Some(vec!["gone".into()]),
            ..StatusKey::default()
        });
        let slots: Vec<String> = v.managed_slots("n1").into_iter().collect();
        assert_eq!(slots, ["gone", "n3", "n_2"]);
    }
}
