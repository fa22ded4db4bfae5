//! `/metrics`: Prometheus text with Patroni's `patroni_*` names plus Baton's
//! `baton_*`, labelled with scope and member.

use std::fmt::Write as _;
use std::time::UNIX_EPOCH;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use baton_core::config::SyncMode;
use baton_core::ha::PgStatus;

use super::health::{is_running_primary, snapshot, sync_listed};
use super::Api;

pub(super) async fn metrics(State(state): State<Api>) -> Response {
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
        (replica && sync_listed(&s) == Some(SyncMode::On)) as u8 as f64,
    );
    gauge(
        "patroni_quorum_standby",
        "Value is 1 if this node is a quorum standby replica, 0 otherwise.",
        (replica && sync_listed(&s) == Some(SyncMode::Quorum)) as u8 as f64,
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
    let c = state.counters();
    let get = crate::agent::Counters::get;
    gauge(
        "baton_promotions_total",
        "Promotions of this member (failovers and switchovers onto it) since the agent started.",
        get(&c.promotions) as f64,
    );
    gauge(
        "baton_switchovers_total",
        "Switchovers this member handed over as leader since the agent started.",
        get(&c.switchovers) as f64,
    );
    gauge(
        "baton_election_peer_requests_total",
        "Other members' REST status asked for in elections since the agent started.",
        get(&c.election_asks) as f64,
    );
    gauge(
        "baton_dcs_full_reads_total",
        "Ticks that read the cluster from etcd since the agent started.",
        get(&c.views_read) as f64,
    );
    gauge(
        "baton_dcs_watch_views_total",
        "Ticks that decided on the etcd watch's copy of the cluster (a steady replica) since the agent started.",
        get(&c.views_from_watch) as f64,
    );
    gauge(
        "baton_lease_renew_seconds",
        "Round trip of the last successful lease renewal.",
        get(&c.lease_renew_micros) as f64 / 1e6,
    );
    gauge(
        "baton_loop_duration_seconds",
        "How long the HA loop's last tick took.",
        get(&c.loop_micros) as f64 / 1e6,
    );
    // As `baton list` computes them: the cluster's state (one series per
    // state, 1 for the current one) and this member's lag behind the leader.
    let cluster_state = s
        .cluster
        .as_ref()
        .map(|view| baton_core::status::ClusterStatus::from_view(&s.scope, view, view.max_lag()));
    if let Some(st) = &cluster_state {
        if let Some(lag) = st
            .members
            .iter()
            .find(|m| m.name == s.name)
            .and_then(|m| m.lag)
        {
            gauge(
                "baton_replication_lag_bytes",
                "Bytes this member is behind the leader's last published WAL position.",
                lag as f64,
            );
        }
    }
    gauge(
        "baton_job_running",
        "Value is 1 while a long job (bootstrap, clone, start, ...) runs.",
        s.pending_job.is_some() as u8 as f64,
    );
    if !s.member.baton_routing.is_empty() {
        writeln!(
            out,
            "# HELP baton_routing_endpoint_ok 1 if the routing endpoint holds this primary, 0 while pending.\n\
             # TYPE baton_routing_endpoint_ok gauge"
        )
        .expect("string write");
        for (name, e) in &s.member.baton_routing {
            writeln!(
                out,
                "baton_routing_endpoint_ok{{{labels},endpoint=\"{name}\"}} {}",
                e.is_ok() as u8
            )
            .expect("string write");
        }
    }
    if let Some(st) = &cluster_state {
        writeln!(
            out,
            "# HELP baton_cluster_state 1 for the cluster's state as baton list shows it, 0 for the others.\n\
             # TYPE baton_cluster_state gauge"
        )
        .expect("string write");
        for name in ["Normal", "Degraded", "Unavailable"] {
            writeln!(
                out,
                "baton_cluster_state{{{labels},state=\"{name}\"}} {}",
                (st.state.to_string() == name) as u8
            )
            .expect("string write");
        }
    }
    (
        StatusCode::OK,
        [("content-type", "text/plain; version=0.0.4")],
        out,
    )
        .into_response()
}
