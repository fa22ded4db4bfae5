//! Health checks and read-only views with Patroni's semantics: 200 when the
//! condition holds, 503 otherwise; GET carries the member status JSON.

use std::collections::HashMap;
use std::time::{Instant, UNIX_EPOCH};

use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use baton_core::config::SyncMode;
use baton_core::ha::PgStatus;
use baton_core::status::ClusterStatus;

use super::Api;
use crate::agent::{AgentHandle, Snapshot};

#[derive(Debug, Clone, Copy)]
pub(super) enum Check {
    Primary,
    Leader,
    Replica,
    Sync,
    Quorum,
    Async,
    ReadOnly,
    Health,
    Liveness,
    Readiness,
    Always,
}

pub(super) fn snapshot(state: &AgentHandle) -> Snapshot {
    state.snapshot()
}

pub(super) fn is_running_primary(s: &Snapshot) -> bool {
    matches!(&s.pg, PgStatus::Running(r) if !r.in_recovery)
}

/// Bytes this member is behind the leader's last published position.
pub(super) fn lag(s: &Snapshot) -> Option<u64> {
    let c = s.cluster.as_ref()?;
    Some(c.leader_optime()?.saturating_sub(s.member.xlog_location?))
}

/// The synchronous mode in which the leader's `sync` key lists this
/// member as a standby that holds every acknowledged commit, if it does.
pub(super) fn sync_listed(s: &Snapshot) -> Option<SyncMode> {
    let mode = s.config.synchronous_mode;
    let c = s.cluster.as_ref()?;
    let key = c.sync.as_ref()?;
    let leader = c.leader_name()?;
    (!mode.is_off() && key.leader_is(leader) && key.lists(&s.name)).then_some(mode)
}

/// Patroni's size syntax for `?lag=`: bytes, or a number with kB/MB/GB/TB.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().ok()?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1 << 10,
        "mb" | "m" => 1 << 20,
        "gb" | "g" => 1 << 30,
        "tb" | "t" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(mult)
}

pub(super) fn replica_ok(
    s: &Snapshot,
    q: &HashMap<String, String>,
    default_lag: Option<u64>,
) -> bool {
    let PgStatus::Running(r) = &s.pg else {
        return false;
    };
    if !r.in_recovery || s.member.tags.noloadbalance {
        return false;
    }
    let max_lag = q.get("lag").and_then(|l| parse_size(l)).or(default_lag);
    if let Some(max) = max_lag {
        if lag(s).is_none_or(|l| l > max) {
            return false;
        }
    }
    if let Some(want) = q.get("replication_state") {
        if s.member.replication_state.as_deref() != Some(want.as_str()) {
            return false;
        }
    }
    let tags = serde_json::to_value(&s.member.tags).unwrap_or_default();
    q.iter()
        .filter_map(|(k, v)| Some((k.strip_prefix("tag_")?, v)))
        .all(|(k, v)| {
            // Patroni compares the tag's text: `?tag_nofailover=true` matches `true`.
            tags.get(k).is_some_and(|t| match t {
                Value::String(s) => s == v,
                other => serde_json::from_str::<Value>(v).is_ok_and(|parsed| parsed == *other),
            })
        })
}

/// The `/patroni` body for a snapshot (also what the simulator's peers
/// answer, so elections there read what they read here).
pub fn status_json(s: &Snapshot) -> Value {
    let mut v = json!({
        "state": s.member.state,
        "role": s.member.role,
        "patroni": {"version": env!("CARGO_PKG_VERSION"), "scope": s.scope, "name": s.name},
        "cluster_unlocked": s.cluster.as_ref().is_some_and(|c| c.leader.is_none()),
        "baton": {
            "reason": s.reason,
            "reason_code": s.reason_code,
            "job": s.pending_job.map(|j| j.to_string()),
        },
    });
    if let Some(t) = s.last_dcs_ok {
        v["dcs_last_seen"] = json!(t
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0));
    }
    if let Some(id) = &s.system_id {
        v["database_system_identifier"] = json!(id);
    }
    if !s.member.tags.eq(&Default::default()) {
        v["tags"] = serde_json::to_value(&s.member.tags).unwrap_or_default();
    }
    if !s.member.baton_routing.is_empty() {
        v["baton"]["routing"] = serde_json::to_value(&s.member.baton_routing).unwrap_or_default();
    }
    if let PgStatus::Running(r) = &s.pg {
        v["server_version"] = json!(r.server_version);
        v["timeline"] = json!(r.timeline);
        if r.in_recovery {
            v["xlog"] = json!({
                "received_location": r.receive_lsn.map(|l| l.0),
                "replayed_location": r.replay_lsn.map(|l| l.0),
                "paused": false,
            });
            v["replication_state"] = json!(s.member.replication_state);
        } else {
            v["xlog"] = json!({"location": r.wal_lsn.map(|l| l.0)});
            v["replication"] = json!(r
                .replication
                .iter()
                .map(|row| json!({
                    "application_name": row.application_name,
                    "client_addr": row.client_addr,
                    "state": row.state,
                    "sync_state": row.sync_state,
                    "sent_lsn": row.sent_lsn.map(|l| l.to_string()),
                    "flush_lsn": row.flush_lsn.map(|l| l.to_string()),
                    "replay_lsn": row.replay_lsn.map(|l| l.to_string()),
                }))
                .collect::<Vec<_>>());
        }
    }
    v
}

pub(super) fn reply(method: &Method, ok: bool, body: Value) -> Response {
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    if *method == Method::OPTIONS || *method == Method::HEAD {
        code.into_response()
    } else {
        (code, Json(body)).into_response()
    }
}

pub(super) async fn check(
    State(state): State<Api>,
    method: Method,
    Query(q): Query<HashMap<String, String>>,
    which: Check,
) -> Response {
    let s = snapshot(&state);
    let ok = holds(&s, &q, which, Instant::now());
    reply(&method, ok, status_json(&s))
}

/// Whether `which` holds for the snapshot at `now`. The snapshot is the
/// last tick's; a loop that has stalled must not keep answering 200 to a
/// load balancer: leadership counts only until the lease deadline the last
/// renewal set (as Patroni checks its lease), health only while the loop
/// ticks (within `ttl`).
fn holds(s: &Snapshot, q: &HashMap<String, String>, which: Check, now: Instant) -> bool {
    let ticking = s
        .last_tick
        .is_some_and(|t| now.saturating_duration_since(t) < s.config.ttl());
    let holds_key = s.is_leader && s.lease_deadline.is_some_and(|d| now < d);
    // As Patroni answers: the key's holder is the primary while its
    // postgres is one, also when this tick's status query did not answer
    // (its member key says "primary", "not responding"). It alone may take
    // writes; a load balancer that marked it down for a slow query would
    // only cut its sessions, and the fence still stops it at the deadline.
    let leading = holds_key
        && (is_running_primary(s)
            || matches!(s.pg, PgStatus::Unresponsive) && s.member.role == "primary");
    let max_lag = s.config.maximum_lag_on_failover;
    match which {
        Check::Primary => leading,
        Check::Leader => holds_key,
        Check::Replica => replica_ok(s, q, None),
        Check::Sync => replica_ok(s, q, None) && sync_listed(s) == Some(SyncMode::On),
        Check::Quorum => replica_ok(s, q, None) && sync_listed(s) == Some(SyncMode::Quorum),
        Check::Async => replica_ok(s, q, None) && sync_listed(s).is_none(),
        Check::ReadOnly => leading || replica_ok(s, q, None),
        Check::Health => ticking && matches!(s.pg, PgStatus::Running(_)),
        Check::Liveness => ticking,
        Check::Readiness => leading || replica_ok(s, q, Some(max_lag)),
        Check::Always => true,
    }
}

pub(super) async fn cluster(State(state): State<Api>, method: Method) -> Response {
    let s = snapshot(&state);
    let Some(view) = &s.cluster else {
        return reply(&method, false, json!({"error": "etcd not reachable"}));
    };
    let st = ClusterStatus::from_view(&s.scope, view, s.config.maximum_lag_on_failover);
    let body = json!({
        "scope": st.scope,
        "state": st.state,
        "problems": st.problems,
        "members": st.members,
        "pause": view.paused(),
    });
    reply(&method, true, body)
}

pub(super) async fn history(State(state): State<Api>, method: Method) -> Response {
    let s = snapshot(&state);
    let h = s
        .cluster
        .as_ref()
        .and_then(|c| c.history.clone())
        .unwrap_or(json!([]));
    reply(&method, true, h)
}

/// `GET /events[?after=N][&last=K]`: this member's event log, oldest first
/// (with `last`, only the K latest); a bad number is a 400 with the reason,
/// not an empty list.
pub(super) async fn events(
    State(state): State<Api>,
    method: Method,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let after = match q.get("after").map(|v| v.parse::<u64>()) {
        None => 0,
        Some(Ok(n)) => n,
        Some(Err(_)) => return (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "after: expected the seq of an event (a non-negative integer)"})),
        )
            .into_response(),
    };
    let mut events = state.events().after(after);
    match q.get("last").map(|v| v.parse::<usize>()) {
        None => {}
        Some(Ok(n)) => {
            let drop = events.len().saturating_sub(n);
            events.drain(..drop);
        }
        Some(Err(_)) => {
            return (
                StatusCode::BAD_REQUEST,
                Json(
                    json!({"error": "last: expected a number of events (a non-negative integer)"}),
                ),
            )
                .into_response()
        }
    }
    reply(
        &method,
        true,
        json!({ "member": snapshot(&state).name, "events": events }),
    )
}

pub(super) async fn config(State(state): State<Api>, method: Method) -> Response {
    let s = snapshot(&state);
    match s.cluster.as_ref().and_then(|c| c.config.as_ref()) {
        Some(c) => reply(&method, true, serde_json::to_value(c).unwrap_or_default()),
        None => reply(
            &method,
            false,
            json!({"error": "no valid config stored in etcd"}),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use baton_core::cluster::Member;
    use baton_core::config::DynamicConfig;
    use std::time::Duration;

    fn leader_snapshot(now: Instant) -> Snapshot {
        Snapshot {
            scope: "demo".into(),
            name: "n1".into(),
            member: Member::default(),
            pg: PgStatus::Running(Box::default()),
            cluster: None,
            config: DynamicConfig::default(),
            reason: String::new(),
            reason_code: "leader",
            last_tick: Some(now),
            lease_deadline: Some(now + Duration::from_secs(3)),
            last_dcs_ok: None,
            is_leader: true,
            system_id: None,
            pending_job: None,
            last_failure: None,
        }
    }

    #[test]
    fn a_stalled_loop_stops_answering_primary_and_health() {
        let t0 = Instant::now();
        let s = leader_snapshot(t0);
        let q = HashMap::new();
        for which in [
            Check::Primary,
            Check::Leader,
            Check::Health,
            Check::ReadOnly,
        ] {
            assert!(holds(&s, &q, which, t0), "{which:?} right after a tick");
        }
        // The loop stalled: past the lease deadline the snapshot's "leader"
        // means nothing, and past ttl postgres' health is unknown.
        let late = t0 + Duration::from_secs(3);
        for which in [
            Check::Primary,
            Check::Leader,
            Check::ReadOnly,
            Check::Readiness,
        ] {
            assert!(
                !holds(&s, &q, which, late),
                "{which:?} past the lease deadline"
            );
        }
        assert!(holds(&s, &q, Check::Health, late), "ttl not yet over");
        let later = t0 + DynamicConfig::default().ttl();
        assert!(!holds(&s, &q, Check::Health, later));
        assert!(!holds(&s, &q, Check::Liveness, later));
        assert!(holds(&s, &q, Check::Always, later));
    }

    /// A busy primary's status query timed out: load balancers keep it
    /// (it holds the key and may take writes), health says postgres did
    /// not answer. A standby's data directory, or no key, is no primary.
    #[test]
    fn a_leader_whose_status_query_timed_out_stays_primary() {
        let t0 = Instant::now();
        let mut s = leader_snapshot(t0);
        s.pg = PgStatus::Unresponsive;
        s.member.role = "primary".into();
        let q = HashMap::new();
        assert!(holds(&s, &q, Check::Primary, t0));
        assert!(holds(&s, &q, Check::ReadOnly, t0));
        assert!(!holds(&s, &q, Check::Health, t0));
        assert!(!holds(&s, &q, Check::Primary, t0 + Duration::from_secs(3)));
        s.member.role = "replica".into();
        assert!(!holds(&s, &q, Check::Primary, t0));
        s.member.role = "primary".into();
        s.is_leader = false;
        assert!(!holds(&s, &q, Check::Primary, t0));
    }
}
