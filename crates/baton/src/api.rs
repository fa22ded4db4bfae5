//! Each agent's REST API, with Patroni's endpoints and status-code semantics
//! (PATRONI-COMPAT.md): health checks answer 200 when the condition holds and
//! 503 otherwise; GET carries the member status JSON, HEAD and OPTIONS only
//! the code, which is what HAProxy's `option httpchk OPTIONS /primary` uses.
//!
//! Answers come from the snapshot of the last HA tick (at most `loop_wait`
//! old), so a slow or hung postgres never makes a health check hang.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::UNIX_EPOCH;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::agent::{AgentGone, AgentHandle, Snapshot};
use baton_core::ha::PgStatus;
use baton_core::status::ClusterStatus;

/// Serves until `shutdown` fires. Takes a bound listener so callers (and
/// tests) choose the port.
pub async fn serve<L>(
    listener: L,
    state: AgentHandle,
    shutdown: CancellationToken,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let any = MethodFilter::GET
        .or(MethodFilter::HEAD)
        .or(MethodFilter::OPTIONS);
    let app = Router::new()
        .route("/", on(any, |s, m, q| check(s, m, q, Check::Primary)))
        .route(
            "/primary",
            on(any, |s, m, q| check(s, m, q, Check::Primary)),
        )
        .route("/master", on(any, |s, m, q| check(s, m, q, Check::Primary)))
        .route(
            "/read-write",
            on(any, |s, m, q| check(s, m, q, Check::Primary)),
        )
        .route("/leader", on(any, |s, m, q| check(s, m, q, Check::Leader)))
        .route(
            "/replica",
            on(any, |s, m, q| check(s, m, q, Check::Replica)),
        )
        .route("/async", on(any, |s, m, q| check(s, m, q, Check::Replica)))
        .route("/sync", on(any, |s, m, q| check(s, m, q, Check::Sync)))
        .route(
            "/read-only",
            on(any, |s, m, q| check(s, m, q, Check::ReadOnly)),
        )
        .route("/health", on(any, |s, m, q| check(s, m, q, Check::Health)))
        .route(
            "/liveness",
            on(any, |s, m, q| check(s, m, q, Check::Liveness)),
        )
        .route(
            "/readiness",
            on(any, |s, m, q| check(s, m, q, Check::Readiness)),
        )
        .route("/patroni", on(any, |s, m, q| check(s, m, q, Check::Always)))
        .route("/cluster", on(any, cluster))
        .route("/history", on(any, history))
        .route(
            "/config",
            on(any, config).patch(patch_config).put(put_config),
        )
        .route(
            "/switchover",
            axum::routing::post(switchover).delete(cancel_switchover),
        )
        .route("/failover", axum::routing::post(failover))
        .route("/restart", axum::routing::post(restart))
        .route("/reload", axum::routing::post(reload))
        .route("/metrics", on(any, metrics))
        .route("/reinitialize", axum::routing::post(reinitialize))
        .with_state(state);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Refusals of control requests, each with Patroni's status code.
#[derive(Debug)]
enum ApiError {
    Unauthorized,
    BadRequest(String),
    /// A precondition does not hold (unhealthy candidate, leader mismatch):
    /// a stable code (Patroni has none; tools branch on this) and the text.
    Precondition(&'static str, String),
    NotFound(String),
    /// A concurrent edit won (compare-and-set failed).
    Conflict(String),
    Unavailable(String),
}

impl From<AgentGone> for ApiError {
    fn from(e: AgentGone) -> Self {
        ApiError::Unavailable(e.to_string())
    }
}

fn ok(message: impl Into<String>) -> Response {
    (StatusCode::OK, Json(json!({"message": message.into()}))).into_response()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match self {
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Basic realm=\"baton\"")],
                Json(json!({"error": "authentication required"})),
            )
                .into_response(),
            ApiError::BadRequest(e) => {
                (StatusCode::BAD_REQUEST, Json(json!({"error": e}))).into_response()
            }
            ApiError::Precondition(code, e) => (
                StatusCode::PRECONDITION_FAILED,
                Json(json!({"error": e, "code": code})),
            )
                .into_response(),
            ApiError::NotFound(e) => {
                (StatusCode::NOT_FOUND, Json(json!({"error": e}))).into_response()
            }
            ApiError::Conflict(e) => {
                (StatusCode::CONFLICT, Json(json!({"error": e}))).into_response()
            }
            ApiError::Unavailable(e) => {
                (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"error": e}))).into_response()
            }
        }
    }
}

/// Unless the request carries the configured basic-auth credentials.
fn authorize(state: &AgentHandle, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(want) = &state.auth else {
        return Ok(());
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Basic "))
        .and_then(|b| {
            base64::engine::general_purpose::STANDARD
                .decode(b.trim())
                .ok()
        })
        .and_then(|raw| String::from_utf8(raw).ok());
    let expected = format!(
        "{}:{}",
        want.username,
        want.password.as_deref().unwrap_or("")
    );
    if given.as_deref() == Some(expected.as_str()) {
        Ok(())
    } else {
        Err(ApiError::Unauthorized)
    }
}

/// Parses an optional JSON object body, naming what is wrong otherwise.
fn json_body(body: &Bytes) -> Result<serde_json::Map<String, Value>, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(ApiError::BadRequest(format!(
            "expected a JSON object, got {other}"
        ))),
        Err(e) => Err(ApiError::BadRequest(format!("malformed JSON: {e}"))),
    }
}

/// `POST /reinitialize` (`{"force": true}` optional): rebuild this replica
/// from the leader; the old data directory is moved aside, not deleted.
async fn reinitialize(
    State(state): State<AgentHandle>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let body = json_body(&body)?;
    if let Some(f) = body.get("force") {
        if !f.is_boolean() {
            return Err(ApiError::BadRequest(format!(
                "\"force\" must be true or false, got {f}"
            )));
        }
    }
    let s = state.snapshot();
    if s.is_leader {
        return Err(ApiError::Unavailable(
            "cannot reinitialize: I am the leader".into(),
        ));
    }
    if s.cluster.as_ref().and_then(|c| c.leader.as_ref()).is_none() {
        return Err(ApiError::Unavailable(
            "cannot reinitialize: the cluster has no leader to clone from".into(),
        ));
    }
    state.reinitialize().await?;
    Ok((
        StatusCode::OK,
        Json(json!({"message": "reinitialize scheduled"})),
    )
        .into_response())
}

fn string_field(
    body: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<Option<String>, ApiError> {
    match body.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s.clone())),
        Some(other) => Err(ApiError::BadRequest(format!(
            "\"{key}\" must be a non-empty string, got {other}"
        ))),
    }
}

fn required_field(body: &serde_json::Map<String, Value>, key: &str) -> Result<String, ApiError> {
    string_field(body, key)?.ok_or_else(|| ApiError::BadRequest(format!("\"{key}\" is required")))
}

/// A fresh view of the cluster (not the last tick's), for control requests.
async fn fresh_view(state: &AgentHandle) -> Result<baton_core::cluster::ClusterView, ApiError> {
    state
        .dcs
        .load()
        .await
        .map_err(|e| ApiError::Unavailable(format!("etcd not reachable: {e}")))
}

/// How long a control request waits for its outcome. The steps it waits on
/// are bounded themselves; this only guards against a wedged cluster.
const OUTCOME_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

/// `POST /switchover` `{"leader", "candidate"?, "scheduled_at"?}`: 200 when
/// done, 202 when scheduled, 400/412/503 with the reason.
async fn switchover(
    State(state): State<AgentHandle>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let body = json_body(&body)?;
    let leader = required_field(&body, "leader")?;
    let candidate = string_field(&body, "candidate")?;
    let scheduled_at = string_field(&body, "scheduled_at")?;
    let view = fresh_view(&state).await?;
    let Some(actual) = view.leader_name() else {
        return Err(ApiError::Unavailable(
            "the cluster has no leader: use failover".into(),
        ));
    };
    if actual != leader {
        return Err(ApiError::Precondition(
            "leader_mismatch",
            format!("leader name does not match: the leader is {actual}, not {leader}"),
        ));
    }
    let lag = view.max_lag();
    let candidate = match candidate {
        Some(c) => {
            if let Some(why) = baton_core::ha::candidate_problem(&view, &c, lag) {
                return Err(ApiError::Precondition(
                    why.code(),
                    format!("candidate refused: {why}"),
                ));
            }
            c
        }
        None => best_candidate(&view, lag)?,
    };
    let when = match &scheduled_at {
        None => None,
        Some(t) => {
            let at = chrono::DateTime::parse_from_rfc3339(t).map_err(|e| {
                ApiError::BadRequest(format!(
                    "scheduled_at {t:?} is not an RFC 3339 time with zone: {e}"
                ))
            })?;
            Some(at.with_timezone(&chrono::Utc)).filter(|at| *at > chrono::Utc::now())
        }
    };
    let req = baton_core::cluster::FailoverKey {
        leader: Some(leader.clone()),
        member: Some(candidate.clone()),
        scheduled_at: when.map(|t| t.to_rfc3339()),
    };
    let stored = state
        .dcs
        .request_failover(&req)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?;
    if !stored {
        return Err(ApiError::Unavailable(
            "a switchover or failover is already pending (cancel it first)".into(),
        ));
    }
    if let Some(at) = when {
        return Ok((StatusCode::ACCEPTED, Json(json!({"message": format!("Switchover to {candidate} scheduled at {}", at.to_rfc3339())}))).into_response());
    }
    wait_for_handover(&state, &leader, &candidate).await
}

/// The eligible replica with the most WAL.
fn best_candidate(view: &baton_core::cluster::ClusterView, lag: u64) -> Result<String, ApiError> {
    let mut refusals = vec![];
    let mut best: Option<(u64, String)> = None;
    for (name, m) in &view.members {
        if Some(name.as_str()) == view.leader_name() {
            continue;
        }
        match baton_core::ha::candidate_problem(view, name, lag) {
            Some(why) => refusals.push(why.to_string()),
            None => {
                let pos = m.xlog_location.unwrap_or(0);
                if best.as_ref().is_none_or(|(p, _)| pos > *p) {
                    best = Some((pos, name.clone()));
                }
            }
        }
    }
    best.map(|(_, n)| n).ok_or_else(|| {
        ApiError::Precondition(
            "no_eligible_candidate",
            format!("no eligible candidate: {}", refusals.join("; ")),
        )
    })
}

/// Waits until `candidate` leads, running as primary (200 with `done`), or
/// `failed` says the request is over without it (503 with its reason).
/// Bounded by OUTCOME_LIMIT; the steps it waits on are bounded themselves.
async fn wait_for_leader(
    state: &AgentHandle,
    candidate: &str,
    done: String,
    failed: impl Fn(&baton_core::cluster::ClusterView) -> Option<String>,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    loop {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let Ok(view) = state.dcs.load().await else {
            continue;
        };
        let leads = view.leader_name() == Some(candidate)
            && view
                .leader_member()
                .is_some_and(|m| m.role == "primary" && m.state == "running");
        if leads {
            return Ok(ok(done));
        }
        if let Some(why) = failed(&view) {
            return Err(ApiError::Unavailable(why));
        }
        if started.elapsed() > OUTCOME_LIMIT {
            return Err(ApiError::Unavailable(format!(
                "{candidate} does not lead after {} s; `baton list` shows where it is",
                OUTCOME_LIMIT.as_secs()
            )));
        }
    }
}

/// A switchover is over without the candidate once the request is gone and
/// the old leader runs as primary again; its reason says why.
async fn wait_for_handover(
    state: &AgentHandle,
    old: &str,
    candidate: &str,
) -> Result<Response, ApiError> {
    let done = format!("Successfully switched over to {candidate}");
    wait_for_leader(state, candidate, done, |view| {
        let resumed = view.failover.is_none()
            && view.leader_name() == Some(old)
            && view
                .leader_member()
                .is_some_and(|m| m.role == "primary" && m.state == "running");
        resumed.then(|| {
            let snap = state.snapshot();
            let why = match (&snap.last_failure, snap.name == old) {
                (Some((_, e)), true) => e.clone(),
                _ => view
                    .leader_member()
                    .and_then(|m| m.baton_reason.clone())
                    .unwrap_or_default(),
            };
            format!("Switchover failed, {old} resumed as leader: {why}")
        })
    })
    .await
}

/// `DELETE /switchover`: cancels a scheduled switchover.
async fn cancel_switchover(
    State(state): State<AgentHandle>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let view = fresh_view(&state).await?;
    match view.failover {
        Some(f) if f.scheduled_at.is_some() => {
            state
                .dcs
                .clear_failover()
                .await
                .map_err(|e| ApiError::Unavailable(e.to_string()))?;
            Ok(ok(format!(
                "scheduled switchover to {} cancelled",
                f.member.unwrap_or_default()
            )))
        }
        Some(_) => Err(ApiError::Precondition(
            "switchover_running",
            "the pending switchover is not scheduled: it is already running".into(),
        )),
        None => Err(ApiError::NotFound("no switchover is scheduled".into())),
    }
}

/// `POST /failover` `{"candidate"}`: manual promotion when there is no
/// healthy leader.
async fn failover(
    State(state): State<AgentHandle>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let body = json_body(&body)?;
    let candidate = required_field(&body, "candidate")?;
    let view = fresh_view(&state).await?;
    if let Some(l) = view
        .leader_member()
        .filter(|m| m.role == "primary" && m.state == "running")
    {
        let _ = l;
        return Err(ApiError::Precondition(
            "leader_healthy",
            format!(
                "the leader {} is healthy: use switchover",
                view.leader_name().unwrap_or_default()
            ),
        ));
    }
    match view.members.get(&candidate) {
        None => {
            return Err(ApiError::Precondition(
                "no_such_member",
                format!("no member named {candidate:?}"),
            ))
        }
        Some(m) if m.state != "running" || m.role != "replica" => {
            return Err(ApiError::Precondition(
                "not_running_replica",
                format!(
                    "{candidate} is {} as {}, not a running replica",
                    m.state, m.role
                ),
            ))
        }
        Some(_) => {}
    }
    let req = baton_core::cluster::FailoverKey {
        leader: None,
        member: Some(candidate.clone()),
        scheduled_at: None,
    };
    if !state
        .dcs
        .request_failover(&req)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
    {
        return Err(ApiError::Unavailable(
            "a switchover or failover is already pending".into(),
        ));
    }
    let done = format!("Successfully failed over to {candidate}");
    let result = wait_for_leader(&state, &candidate, done, |_| None).await;
    if result.is_err() {
        let _ = state.dcs.clear_failover().await;
    }
    result
}

/// `POST /restart`: restart postgres in its current role, and wait for it.
async fn restart(
    State(state): State<AgentHandle>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let before = state.snapshot();
    if !matches!(before.pg, PgStatus::Running(_)) {
        return Err(ApiError::Unavailable(
            "postgres is not running; the agent starts it when it should run".into(),
        ));
    }
    match tokio::time::timeout(OUTCOME_LIMIT, state.restart()).await {
        Ok(Ok(Ok(()))) => Ok(ok("restarted")),
        Ok(Ok(Err(e))) => Err(ApiError::Unavailable(format!("restart failed: {e}"))),
        Ok(Err(gone)) => Err(gone.into()),
        Err(_) => Err(ApiError::Unavailable(
            "restart still running; `baton list` shows where it is".into(),
        )),
    }
}

/// `POST /reload`: re-read the node config file's reloadable settings
/// (postgresql.parameters, pg_hba, tags), rewrite postgres' files, reload.
async fn reload(
    State(state): State<AgentHandle>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    match tokio::time::timeout(std::time::Duration::from_secs(30), state.reload()).await {
        Ok(Ok(Ok(msg))) => Ok(ok(msg)),
        Ok(Ok(Err(e))) => Err(ApiError::BadRequest(e)),
        Ok(Err(gone)) => Err(gone.into()),
        Err(_) => Err(ApiError::Unavailable(
            "reload not carried out by the HA loop within 30 s".into(),
        )),
    }
}

/// Validates and stores a new dynamic config with compare-and-set.
async fn store_config(
    state: &AgentHandle,
    revision: i64,
    value: Value,
) -> Result<Response, ApiError> {
    let cfg: baton_core::config::DynamicConfig = serde_json::from_value(value)
        .map_err(|e| ApiError::BadRequest(format!("invalid config: {e}")))?;
    cfg.validate()
        .map_err(|e| ApiError::BadRequest(format!("invalid config: {e}")))?;
    if !state
        .dcs
        .cas_config(&cfg, revision)
        .await
        .map_err(|e| ApiError::Unavailable(e.to_string()))?
    {
        return Err(ApiError::Conflict(
            "the config changed since it was read; read it again and retry".into(),
        ));
    }
    Ok((
        StatusCode::OK,
        Json(serde_json::to_value(&cfg).unwrap_or_default()),
    )
        .into_response())
}

/// `PATCH /config`: merge (a `null` deletes the key), validate, store.
async fn patch_config(
    State(state): State<AgentHandle>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let patch = json_body(&body)?;
    let view = fresh_view(&state).await?;
    let mut current = view
        .config
        .as_ref()
        .map(|c| serde_json::to_value(c).unwrap_or_default())
        .unwrap_or(json!({}));
    baton_core::config::merge_patch(&mut current, &Value::Object(patch));
    store_config(&state, view.config_revision, current).await
}

/// `PUT /config`: replace, validate, store.
async fn put_config(
    State(state): State<AgentHandle>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let new = json_body(&body)?;
    let view = fresh_view(&state).await?;
    store_config(&state, view.config_revision, Value::Object(new)).await
}

#[derive(Debug, Clone, Copy)]
enum Check {
    Primary,
    Leader,
    Replica,
    Sync,
    ReadOnly,
    Health,
    Liveness,
    Readiness,
    Always,
}

fn snapshot(state: &AgentHandle) -> Snapshot {
    state.snapshot()
}

fn is_running_primary(s: &Snapshot) -> bool {
    matches!(&s.pg, PgStatus::Running(r) if !r.in_recovery)
}

/// Bytes this member is behind the leader's last published position.
fn lag(s: &Snapshot) -> Option<u64> {
    let c = s.cluster.as_ref()?;
    Some(c.leader_optime()?.saturating_sub(s.member.xlog_location?))
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

fn replica_ok(s: &Snapshot, q: &HashMap<String, String>, default_lag: Option<u64>) -> bool {
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

fn status_json(s: &Snapshot) -> Value {
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

fn reply(method: &Method, ok: bool, body: Value) -> Response {
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

async fn check(
    State(state): State<AgentHandle>,
    method: Method,
    Query(q): Query<HashMap<String, String>>,
    which: Check,
) -> Response {
    let s = snapshot(&state);
    let max_lag = s.config.maximum_lag_on_failover;
    let ok = match which {
        Check::Primary => s.is_leader && is_running_primary(&s),
        Check::Leader => s.is_leader,
        Check::Replica => replica_ok(&s, &q, None),
        // Synchronous replication is not implemented yet: nobody is a sync standby.
        Check::Sync => false,
        Check::ReadOnly => (s.is_leader && is_running_primary(&s)) || replica_ok(&s, &q, None),
        Check::Health => matches!(s.pg, PgStatus::Running(_)),
        Check::Liveness => s.last_tick.is_some_and(|t| t.elapsed() < s.config.ttl()),
        Check::Readiness => {
            (s.is_leader && is_running_primary(&s)) || replica_ok(&s, &q, Some(max_lag))
        }
        Check::Always => true,
    };
    reply(&method, ok, status_json(&s))
}

async fn cluster(State(state): State<AgentHandle>, method: Method) -> Response {
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

async fn history(State(state): State<AgentHandle>, method: Method) -> Response {
    let s = snapshot(&state);
    let h = s
        .cluster
        .as_ref()
        .and_then(|c| c.history.clone())
        .unwrap_or(json!([]));
    reply(&method, true, h)
}

async fn config(State(state): State<AgentHandle>, method: Method) -> Response {
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

async fn metrics(State(state): State<AgentHandle>) -> Response {
    let s = snapshot(&state);
    let labels = format!("scope=\"{}\",name=\"{}\"", s.scope, s.name);
    let mut out = String::new();
    let mut gauge = |name: &str, help: &str, value: f64| {
        writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{labels}}} {value}"
        )
        .expect("string write");
    };
    let running = matches!(s.pg, PgStatus::Running(_));
    let primary = s.is_leader && is_running_primary(&s);
    let replica = matches!(&s.pg, PgStatus::Running(r) if r.in_recovery);
    gauge(
        "patroni_postgres_running",
        "Value is 1 if Postgres is running, 0 otherwise.",
        running as u8 as f64,
    );
    gauge(
        "patroni_primary",
        "Value is 1 if this node is the leader, 0 otherwise.",
        primary as u8 as f64,
    );
    gauge(
        "patroni_replica",
        "Value is 1 if this node is a replica, 0 otherwise.",
        replica as u8 as f64,
    );
    gauge(
        "patroni_standby_leader",
        "Value is 1 if this node is the standby_leader, 0 otherwise.",
        0.0,
    );
    gauge(
        "patroni_sync_standby",
        "Value is 1 if this node is a sync standby replica, 0 otherwise.",
        0.0,
    );
    gauge(
        "patroni_cluster_unlocked",
        "Value is 1 if the cluster is unlocked, 0 if locked.",
        s.cluster.as_ref().is_some_and(|c| c.leader.is_none()) as u8 as f64,
    );
    gauge(
        "patroni_is_paused",
        "Value is 1 if auto failover is disabled, 0 otherwise.",
        s.config.pause as u8 as f64,
    );
    if let PgStatus::Running(r) = &s.pg {
        gauge(
            "patroni_postgres_server_version",
            "Version of Postgres (if running), 0 otherwise.",
            r.server_version as f64,
        );
        gauge(
            "patroni_postgres_timeline",
            "Postgres timeline of this node (if running), 0 otherwise.",
            r.timeline.unwrap_or(0) as f64,
        );
        gauge(
            "patroni_xlog_location",
            "Current location of the Postgres transaction log, 0 if this node is not the leader.",
            r.wal_lsn.map(|l| l.0).unwrap_or(0) as f64,
        );
        gauge(
            "patroni_xlog_received_location",
            "Current location of the received Postgres transaction log, 0 if this node is not a replica.",
            r.receive_lsn.map(|l| l.0).unwrap_or(0) as f64,
        );
        gauge(
            "patroni_xlog_replayed_location",
            "Current location of the replayed Postgres transaction log, 0 if this node is not a replica.",
            r.replay_lsn.map(|l| l.0).unwrap_or(0) as f64,
        );
    }
    if let Some(t) = s.last_dcs_ok {
        gauge(
            "patroni_dcs_last_seen",
            "Epoch timestamp when DCS was last contacted successfully by Patroni.",
            t.duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0) as f64,
        );
    }
    let tick_age = s
        .last_tick
        .map(|t| t.elapsed().as_secs_f64())
        .unwrap_or(-1.0);
    gauge(
        "baton_loop_last_tick_age_seconds",
        "Seconds since the HA loop last completed a tick (-1: never).",
        tick_age,
    );
    gauge(
        "baton_rewinds_total",
        "pg_rewind runs started by this agent since it started.",
        state.counters().rewinds() as f64,
    );
    gauge(
        "baton_rebuilds_total",
        "Rebuilds (data moved aside, cloned again) since the agent started.",
        state.counters().rebuilds() as f64,
    );
    gauge(
        "baton_job_running",
        "Value is 1 while a long job (bootstrap, clone, start, ...) runs.",
        s.pending_job.is_some() as u8 as f64,
    );
    (
        StatusCode::OK,
        [("content-type", "text/plain; version=0.0.4")],
        out,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn lag_sizes_parse_like_patroni() {
        assert_eq!(parse_size("100"), Some(100));
        assert_eq!(parse_size("16MB"), Some(16 << 20));
        assert_eq!(parse_size("1kB"), Some(1024));
        assert_eq!(parse_size("2 GB"), Some(2 << 30));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size("5 parsecs"), None);
    }
}
