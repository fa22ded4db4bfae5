//! Control endpoints (authenticated): switchover, failover, restart, reload,
//! reinitialize, config edits. Refusals carry Patroni's status codes and a
//! stable `code`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use baton_core::ha::PgStatus;

use super::{authorize, json_body, ok, Api, ApiError};
use crate::agent::{AgentHandle, Store as _};

/// `POST /failsafe` (`{"name": leader, ...}`, Patroni's body): a leader
/// running without etcd asks whether this member still follows it.
pub(super) async fn failsafe(
    State(state): State<Api>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let body = json_body(&body)?;
    let Some(leader) = body.get("name").and_then(Value::as_str) else {
        return Err(ApiError::BadRequest(
            "\"name\" (the leader's member name) is required".into(),
        ));
    };
    match state.failsafe_ping(leader) {
        Ok(()) => Ok(ok("Accepted")),
        Err(why) => Err(ApiError::Conflict(why)),
    }
}

/// `POST /reinitialize` (`{"force": true}` optional): rebuild this replica
/// from the leader; the old data directory is moved aside, not deleted.
pub(super) async fn reinitialize(
    State(state): State<Api>,
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

pub(super) fn string_field(
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

pub(super) fn required_field(
    body: &serde_json::Map<String, Value>,
    key: &str,
) -> Result<String, ApiError> {
    string_field(body, key)?.ok_or_else(|| ApiError::BadRequest(format!("\"{key}\" is required")))
}

/// A fresh view of the cluster (not the last tick's), for control requests.
pub(super) async fn fresh_view(
    state: &AgentHandle,
) -> Result<baton_core::cluster::ClusterView, ApiError> {
    state
        .dcs
        .load()
        .await
        .map_err(|e| ApiError::Unavailable(format!("etcd not reachable: {e}")))
}

/// How long a control request waits for its outcome. The steps it waits on
/// are bounded themselves; this only guards against a wedged cluster.
pub(super) const OUTCOME_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

/// `POST /switchover` `{"leader", "candidate"?, "scheduled_at"?}`: 200 when
/// done, 202 when scheduled, 400/412/503 with the reason.
pub(super) async fn switchover(
    State(state): State<Api>,
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
    // On the leader, its own last reading measures the lag (see
    // `candidate_problem`); elsewhere the member keys do.
    let snap = state.snapshot();
    let live = snap.pg.running().filter(|_| snap.is_leader);
    let candidate = match candidate {
        Some(c) => {
            if let Some(why) = baton_core::ha::candidate_problem(&view, &c, lag, live) {
                return Err(ApiError::Precondition(
                    why.code(),
                    format!("candidate refused: {why}"),
                ));
            }
            c
        }
        None => best_candidate(&view, lag, live)?,
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
pub(super) fn best_candidate(
    view: &baton_core::cluster::ClusterView,
    lag: u64,
    live: Option<&baton_core::instance::Running>,
) -> Result<String, ApiError> {
    let mut refusals = vec![];
    let mut best: Option<(u64, String)> = None;
    for (name, m) in &view.members {
        if Some(name.as_str()) == view.leader_name() {
            continue;
        }
        match baton_core::ha::candidate_problem(view, name, lag, live) {
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
pub(super) async fn wait_for_leader(
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
            && view.leader_member().is_some_and(|m| m.is_running_primary());
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
pub(super) async fn wait_for_handover(
    state: &AgentHandle,
    old: &str,
    candidate: &str,
) -> Result<Response, ApiError> {
    let done = format!("Successfully switched over to {candidate}");
    wait_for_leader(state, candidate, done, |view| {
        let resumed = view.failover.is_none()
            && view.leader_name() == Some(old)
            && view.leader_member().is_some_and(|m| m.is_running_primary());
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
pub(super) async fn cancel_switchover(
    State(state): State<Api>,
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
pub(super) async fn failover(
    State(state): State<Api>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let body = json_body(&body)?;
    let candidate = required_field(&body, "candidate")?;
    let view = fresh_view(&state).await?;
    if let Some(l) = view.leader_member().filter(|m| m.is_running_primary()) {
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
        Some(m) if !m.is_running_replica() => {
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
pub(super) async fn restart(
    State(state): State<Api>,
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
pub(super) async fn reload(
    State(state): State<Api>,
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
pub(super) async fn store_config(
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
pub(super) async fn patch_config(
    State(state): State<Api>,
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
pub(super) async fn put_config(
    State(state): State<Api>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    authorize(&state, &headers)?;
    let new = json_body(&body)?;
    let view = fresh_view(&state).await?;
    store_config(&state, view.config_revision, Value::Object(new)).await
}
