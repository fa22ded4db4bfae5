//! The operator's dashboard at `/ui`: one page whose HTML, script and
//! style are compiled into the binary, so it works on a machine without
//! internet and needs no build step. The page polls `/ui/state` (one
//! round trip per refresh, whatever the number of members) and acts
//! through the same control endpoints `baton` uses, with the API's
//! authentication; nothing here decides anything.
//!
//! Restart and reinitialize are per-member endpoints: a browser may only
//! talk to the agent that served the page, so `/ui/members/{name}/{action}`
//! hands the request (credentials included) to that member's API.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Serialize;
use serde_json::{json, Value};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use baton_core::event::Event;
use baton_core::status::ClusterStatus;

use crate::agent::AgentHandle;

const INDEX: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");
const STYLE: &str = include_str!("ui/style.css");

/// Five minutes at the default `loop_wait` of one second.
const LAG_SAMPLES: usize = 300;
/// How many of the cluster's latest events the page shows.
const EVENTS: usize = 100;
/// A member that does not answer within this is left out of one refresh.
const PEER_TIMEOUT: Duration = Duration::from_secs(1);

/// Only this origin's scripts and styles, no frames: the page must not load
/// anything from elsewhere, and a member name can never become markup.
const CSP: &str = "default-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

#[derive(Clone)]
struct Ui {
    agent: AgentHandle,
    http: reqwest::Client,
    lag: Arc<LagHistory>,
}

/// The dashboard's routes; `http` reaches the other members' APIs.
pub(super) fn routes(
    agent: AgentHandle,
    http: reqwest::Client,
    shutdown: CancellationToken,
) -> Router {
    let lag = Arc::new(LagHistory::default());
    tokio::spawn(record_lag(agent.clone(), lag.clone(), shutdown));
    Router::new()
        .route("/ui/state", get(state))
        .route("/ui/members/{name}/{action}", post(forward))
        .with_state(Ui { agent, http, lag })
        .merge(assets())
}

/// The page itself: the same wherever it is served.
fn assets() -> Router {
    Router::new()
        .route(
            "/ui",
            get(|| async { page("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/ui/",
            get(|| async { page("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { page("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/ui/style.css",
            get(|| async { page("text/css; charset=utf-8", STYLE) }),
        )
}

/// What the page calls, which a router hands to an agent.
const PROXIED: &[&str] = &[
    "/ui/state",
    "/ui/members/",
    "/switchover",
    "/failover",
    "/config",
];

/// The dashboard where there is no agent (`baton router`): the page from
/// here, its calls handed to the members' APIs, the leader's first
/// (`agents`: base URLs in that order). The next member is tried only when
/// one cannot be reached at all, so no request is ever carried out twice.
pub(crate) fn proxy(http: reqwest::Client, agents: watch::Receiver<Vec<String>>) -> Router {
    let relay = move |req: axum::extract::Request| {
        let (http, agents) = (http.clone(), agents.clone());
        async move { relay(http, agents, req).await }
    };
    assets().fallback(relay)
}

async fn relay(
    http: reqwest::Client,
    agents: watch::Receiver<Vec<String>>,
    req: axum::extract::Request,
) -> Response {
    let err = |code: StatusCode, e: String| (code, Json(json!({"error": e}))).into_response();
    let path = req.uri().path().to_string();
    if !PROXIED
        .iter()
        .any(|p| path == *p || (p.ends_with('/') && path.starts_with(p)))
    {
        return err(StatusCode::NOT_FOUND, format!("no such endpoint: {path}"));
    }
    let query = req
        .uri()
        .query()
        .map(|q| format!("?{q}"))
        .unwrap_or_default();
    let method = reqwest::Method::from_bytes(req.method().as_str().as_bytes())
        .unwrap_or(reqwest::Method::GET);
    let headers = req.headers().clone();
    let body = match axum::body::to_bytes(req.into_body(), 1 << 20).await {
        Ok(b) => b,
        Err(e) => return err(StatusCode::BAD_REQUEST, format!("reading the request: {e}")),
    };
    let bases = agents.borrow().clone();
    if bases.is_empty() {
        return err(
            StatusCode::SERVICE_UNAVAILABLE,
            "no member of the cluster is known yet (etcd not read)".into(),
        );
    }
    let mut failures = vec![];
    for base in bases {
        let mut r = http
            .request(method.clone(), format!("{base}{path}{query}"))
            .timeout(Duration::from_secs(330))
            .body(body.clone());
        for h in [header::AUTHORIZATION, header::CONTENT_TYPE] {
            if let Some(v) = headers.get(&h) {
                r = r.header(h, v);
            }
        }
        r = r.header("x-requested-with", "baton-ui");
        match r.send().await {
            Ok(resp) => {
                let code =
                    StatusCode::from_u16(resp.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
                let text = resp.text().await.unwrap_or_default();
                let v: Value = serde_json::from_str(&text).unwrap_or(json!({"message": text}));
                return (code, Json(v)).into_response();
            }
            Err(e) if e.is_connect() => failures.push(format!("{base}: {e}")),
            Err(e) => return err(StatusCode::BAD_GATEWAY, format!("{base}: {e}")),
        }
    }
    err(
        StatusCode::BAD_GATEWAY,
        format!("no member's API could be reached: {}", failures.join("; ")),
    )
}

/// Base URLs of the members' APIs, the leader's first.
pub(crate) fn agent_bases(view: &baton_core::cluster::ClusterView) -> Vec<String> {
    let leader = view.leader_name();
    let mut v: Vec<(bool, String)> = view
        .members
        .iter()
        .map(|(n, m)| {
            (
                Some(n.as_str()) != leader,
                m.api_url.trim_end_matches("/patroni").to_string(),
            )
        })
        .collect();
    v.sort();
    v.into_iter().map(|(_, b)| b).collect()
}

fn page(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
            (
                header::CONTENT_SECURITY_POLICY,
                HeaderValue::from_static(CSP),
            ),
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response()
}

/// Replication lag of every member, one sample per HA tick.
#[derive(Default)]
pub struct LagHistory {
    samples: Mutex<VecDeque<LagSample>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LagSample {
    /// Unix time in milliseconds.
    pub at: u64,
    /// Bytes behind the leader, per member that reported a position.
    pub lag: BTreeMap<String, u64>,
}

impl LagHistory {
    fn push(&self, s: LagSample) {
        let mut g = self.samples.lock().expect("lag history lock");
        if g.len() == LAG_SAMPLES {
            g.pop_front();
        }
        g.push_back(s);
    }

    fn all(&self) -> Vec<LagSample> {
        self.samples
            .lock()
            .expect("lag history lock")
            .iter()
            .cloned()
            .collect()
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Samples each new snapshot until the API shuts down, so the chart shows
/// the last minutes as soon as the page opens.
async fn record_lag(agent: AgentHandle, lag: Arc<LagHistory>, shutdown: CancellationToken) {
    let mut rx = agent.subscribe();
    loop {
        tokio::select! {
            r = rx.changed() => if r.is_err() { return },
            _ = shutdown.cancelled() => return,
        }
        let sample = {
            let s = rx.borrow_and_update();
            let Some(view) = &s.cluster else { continue };
            let st = ClusterStatus::from_view(&s.scope, view, s.config.maximum_lag_on_failover);
            LagSample {
                at: unix_ms(),
                lag: st
                    .members
                    .iter()
                    .filter_map(|m| Some((m.name.clone(), m.lag?)))
                    .collect(),
            }
        };
        lag.push(sample);
    }
}

/// Everything the page shows, in one answer: the cluster as this member
/// sees it, the timeline history, the lag samples and the latest events of
/// every member that answers.
async fn state(State(ui): State<Ui>) -> Response {
    let s = ui.agent.snapshot();
    let Some(view) = &s.cluster else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"member": s.name, "error": "etcd not reachable from this member"})),
        )
            .into_response();
    };
    let cluster = ClusterStatus::from_view(&s.scope, view, s.config.maximum_lag_on_failover);
    let mut fetches = tokio::task::JoinSet::new();
    for (name, m) in &view.members {
        if *name == s.name {
            continue;
        }
        let (http, url, name) = (ui.http.clone(), m.api_url.clone(), name.clone());
        fetches.spawn(async move {
            let got = tokio::time::timeout(
                PEER_TIMEOUT,
                super::client::member_events(&http, &url, 0, Some(EVENTS)),
            )
            .await;
            match got {
                Ok(Ok(ev)) => Ok(ev),
                Ok(Err(e)) => Err(format!("{name}: {e:#}")),
                Err(_) => Err(format!("{name}: no answer in {PEER_TIMEOUT:?}")),
            }
        });
    }
    let mut events = ui.agent.events().after(0);
    let mut unreachable = vec![];
    while let Some(r) = fetches.join_next().await {
        match r {
            Ok(Ok(ev)) => events.extend(ev),
            Ok(Err(e)) => unreachable.push(e),
            Err(e) => unreachable.push(e.to_string()),
        }
    }
    latest(&mut events, EVENTS);
    let history = view.history.clone().unwrap_or(json!([]));
    let progress: BTreeMap<&String, _> = view
        .members
        .iter()
        .filter_map(|(n, m)| Some((n, m.baton_progress.as_ref()?)))
        .collect();
    Json(json!({
        "member": s.name,
        "cluster": cluster,
        "history": history,
        "lag": ui.lag.all(),
        "progress": progress,
        "events": events,
        "events_missing": unreachable,
        "auth": ui.agent.auth.is_some(),
    }))
    .into_response()
}

/// Keeps the `n` latest events of all members, oldest first (RFC 3339
/// times in UTC with milliseconds sort as text).
fn latest(events: &mut Vec<Event>, n: usize) {
    events.sort_by(|a, b| (&a.at, &a.member, a.seq).cmp(&(&b.at, &b.member, b.seq)));
    let drop = events.len().saturating_sub(n);
    events.drain(..drop);
}

/// Per-member actions the page offers, and the endpoint each maps to.
const MEMBER_ACTIONS: &[&str] = &["restart", "reinitialize"];

/// Hands a per-member action to that member's API, with the caller's
/// credentials, and returns its answer unchanged.
async fn forward(
    State(ui): State<Ui>,
    Path((name, action)): Path<(String, String)>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let err = |code: StatusCode, e: String| (code, Json(json!({"error": e}))).into_response();
    if !MEMBER_ACTIONS.contains(&action.as_str()) {
        return err(
            StatusCode::NOT_FOUND,
            format!(
                "no member action {action:?} (actions: {})",
                MEMBER_ACTIONS.join(", ")
            ),
        );
    }
    let s = ui.agent.snapshot();
    let Some(m) = s.cluster.as_ref().and_then(|c| c.members.get(&name)) else {
        return err(StatusCode::NOT_FOUND, format!("no member {name:?}"));
    };
    let base = m.api_url.trim_end_matches("/patroni");
    let mut req = ui
        .http
        .post(format!("{base}/{action}"))
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-requested-with", "baton-ui")
        .timeout(Duration::from_secs(330))
        .body(body);
    if let Some(a) = headers.get(header::AUTHORIZATION) {
        req = req.header(header::AUTHORIZATION, a);
    }
    match req.send().await {
        Ok(r) => {
            let code = StatusCode::from_u16(r.status().as_u16()).unwrap_or(StatusCode::BAD_GATEWAY);
            let text = r.text().await.unwrap_or_default();
            let v: Value = serde_json::from_str(&text).unwrap_or(json!({"message": text}));
            (code, Json(v)).into_response()
        }
        Err(e) => err(
            StatusCode::BAD_GATEWAY,
            format!("{name}'s API at {base} did not answer: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(member: &str, seq: u64, at: &str) -> Event {
        Event {
            seq,
            at: at.into(),
            member: member.into(),
            kind: "decision".into(),
            code: "leader".into(),
            detail: String::new(),
        }
    }

    #[test]
    fn the_latest_events_of_all_members_in_time_order() {
        let mut e = vec![
            ev("n2", 1, "2026-12-02T00:00:01.000Z"),
            ev("n1", 7, "2026-12-02T00:00:03.000Z"),
            ev("n1", 6, "2026-12-02T00:00:00.500Z"),
            ev("n3", 2, "2026-12-02T00:00:02.000Z"),
        ];
        latest(&mut e, 3);
        let order: Vec<_> = e.iter().map(|e| (e.member.as_str(), e.seq)).collect();
        assert_eq!(order, [("n2", 1), ("n3", 2), ("n1", 7)]);
    }

    #[test]
    fn the_lag_history_keeps_the_last_minutes() {
        let h = LagHistory::default();
        for i in 0..LAG_SAMPLES as u64 + 10 {
            h.push(LagSample {
                at: i,
                lag: BTreeMap::new(),
            });
        }
        let all = h.all();
        assert_eq!(all.len(), LAG_SAMPLES);
        assert_eq!(all[0].at, 10);
    }

    #[test]
    fn the_page_loads_nothing_from_elsewhere() {
        for (name, text) in [
            ("index.html", INDEX),
            ("app.js", SCRIPT),
            ("style.css", STYLE),
        ] {
            for bad in [
                "src=\"http",
                "href=\"http",
                "url(",
                "@import",
                "fetch(\"http",
                "//cdn",
            ] {
                assert!(!text.contains(bad), "{name} loads from elsewhere: {bad}");
            }
        }
        assert!(INDEX.contains("\"/ui/app.js\"") && INDEX.contains("\"/ui/style.css\""));
    }
}
