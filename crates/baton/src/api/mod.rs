//! Each agent's REST API, with Patroni's endpoints and status-code semantics
//! (PATRONI-COMPAT.md): health checks answer 200 when the condition holds and
//! 503 otherwise; GET carries the member status JSON, HEAD and OPTIONS only
//! the code, which is what HAProxy's `option httpchk OPTIONS /primary` uses.
//!
//! Answers come from the snapshot of the last HA tick (at most `loop_wait`
//! old), so a slow or hung postgres never makes a health check hang.

use axum::body::Bytes;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{on, MethodFilter};
use axum::{Json, Router};
use base64::Engine as _;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

pub mod client;
mod control;
mod health;
mod metrics;
pub(crate) mod ui;

pub use health::{parse_size, status_json};

use control::{
    cancel_switchover, failover, failsafe, patch_config, put_config, reinitialize, reload, restart,
    switchover,
};
use health::{check, cluster, config, events, history, Check};
use metrics::metrics;

use crate::agent::{AgentGone, AgentHandle};

/// The handlers' state. Every route keeps a copy for each of its methods,
/// so it is one pointer, not the handle with its etcd client (a clone of
/// the handle per route and method was a quarter of an agent's heap).
type Api = std::sync::Arc<AgentHandle>;

/// Patroni's health endpoints and what each checks (`/master` is Patroni's
/// old name for `/primary`, still used by older HAProxy configs).
const HEALTH_ROUTES: &[(&str, Check)] = &[
    ("/", Check::Primary),
    ("/primary", Check::Primary),
    ("/master", Check::Primary),
    ("/read-write", Check::Primary),
    ("/leader", Check::Leader),
    ("/replica", Check::Replica),
    ("/async", Check::Async),
    ("/asynchronous", Check::Async),
    ("/sync", Check::Sync),
    ("/synchronous", Check::Sync),
    ("/quorum", Check::Quorum),
    ("/read-only", Check::ReadOnly),
    ("/health", Check::Health),
    ("/liveness", Check::Liveness),
    ("/readiness", Check::Readiness),
    ("/patroni", Check::Always),
];

/// Serves until `shutdown` fires. Takes a bound listener so callers (and
/// tests) choose the port; `http` reaches the other members' APIs (the
/// dashboard gathers their events and hands them per-member actions).
pub async fn serve<L>(
    listener: L,
    state: AgentHandle,
    http: reqwest::Client,
    shutdown: CancellationToken,
) -> std::io::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    let any = MethodFilter::GET
        .or(MethodFilter::HEAD)
        .or(MethodFilter::OPTIONS);
    let mut app = Router::new();
    for (path, which) in HEALTH_ROUTES {
        app = app.route(path, on(any, move |s, m, q| check(s, m, q, *which)));
    }
    let app = app
        .route("/cluster", on(any, cluster))
        .route("/history", on(any, history))
        .route("/events", on(any, events))
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
        .route("/failsafe", axum::routing::post(failsafe))
        .with_state(Api::new(state.clone()))
        .merge(ui::routes(state, http, shutdown.clone()));
    // A make-service clones the router per connection as one pointer;
    // serving the router itself copies its whole route table into every
    // connection (axum's `Service<IncomingStream>` for `Router`), which
    // peers' pooled connections then keep for as long as they stay open.
    axum::serve(listener, app.into_make_service())
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Refusals of control requests, each with Patroni's status code.
#[derive(Debug)]
enum ApiError {
    /// `challenge`: ask for credentials (`WWW-Authenticate`), unless the
    /// dashboard called (a browser would open its own login prompt).
    Unauthorized {
        challenge: bool,
    },
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
            ApiError::Unauthorized { challenge } => {
                let body =
                    Json(json!({"error": "authentication required", "code": "unauthorized"}));
                if challenge {
                    (
                        StatusCode::UNAUTHORIZED,
                        [(header::WWW_AUTHENTICATE, "Basic realm=\"baton\"")],
                        body,
                    )
                        .into_response()
                } else {
                    (StatusCode::UNAUTHORIZED, body).into_response()
                }
            }
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
        Err(ApiError::Unauthorized {
            challenge: !headers.contains_key("x-requested-with"),
        })
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

#[cfg(test)]
mod tests {
    use super::health::parse_size;

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
