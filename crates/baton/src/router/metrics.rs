//! The router's counters, shared by every connection task as atomics (a
//! lock per connection event would serialise the fast path), rendered as
//! Prometheus text on `/metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the hold-time histogram, in seconds: a switchover's
/// pause is a few hundred milliseconds, a failover a few seconds.
const HOLD_BUCKETS: [f64; 12] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 30.0,
];

#[derive(Debug, Default)]
pub struct RouteMetrics {
    pub accepted: AtomicU64,
    pub active: AtomicU64,
    pub held: AtomicU64,
    pub refused: AtomicU64,
    /// Closed by the router because their backend stopped being primary.
    pub closed_on_demotion: AtomicU64,
    /// Handed to the kernel after their handshake (`kernel_splice`).
    pub spliced: AtomicU64,
    pub bytes_to_server: AtomicU64,
    pub bytes_to_client: AtomicU64,
    hold_buckets: [AtomicU64; HOLD_BUCKETS.len()],
    hold_count: AtomicU64,
    hold_micros: AtomicU64,
}

impl RouteMetrics {
    /// How long a client waited for a backend (zero when one was ready).
    pub fn observe_hold(&self, d: Duration) {
        let s = d.as_secs_f64();
        for (i, le) in HOLD_BUCKETS.iter().enumerate() {
            if s <= *le {
                self.hold_buckets[i].fetch_add(1, Relaxed);
            }
        }
        self.hold_count.fetch_add(1, Relaxed);
        self.hold_micros.fetch_add(d.as_micros() as u64, Relaxed);
    }

    fn render(&self, out: &mut String, labels: &str) {
        let mut line = |name: &str, value: u64| {
            writeln!(out, "{name}{{{labels}}} {value}").expect("string write");
        };
        line(
            "baton_router_connections_total",
            self.accepted.load(Relaxed),
        );
        line("baton_router_connections_active", self.active.load(Relaxed));
        line("baton_router_connections_held", self.held.load(Relaxed));
        line(
            "baton_router_connections_refused_total",
            self.refused.load(Relaxed),
        );
        line(
            "baton_router_connections_closed_on_demotion_total",
            self.closed_on_demotion.load(Relaxed),
        );
        line(
            "baton_router_connections_spliced_total",
            self.spliced.load(Relaxed),
        );
        line(
            "baton_router_bytes_to_server_total",
            self.bytes_to_server.load(Relaxed),
        );
        line(
            "baton_router_bytes_to_client_total",
            self.bytes_to_client.load(Relaxed),
        );
        for (le, n) in HOLD_BUCKETS.iter().zip(&self.hold_buckets) {
            writeln!(
                out,
                "baton_router_hold_seconds_bucket{{{labels},le=\"{le}\"}} {}",
                n.load(Relaxed)
            )
            .expect("string write");
        }
        let count = self.hold_count.load(Relaxed);
        writeln!(
            out,
            "baton_router_hold_seconds_bucket{{{labels},le=\"+Inf\"}} {count}\n\
             baton_router_hold_seconds_sum{{{labels}}} {}\n\
             baton_router_hold_seconds_count{{{labels}}} {count}",
            self.hold_micros.load(Relaxed) as f64 / 1e6
        )
        .expect("string write");
    }
}

const HELP: &str = "\
# HELP baton_router_connections_total Client connections accepted.
# TYPE baton_router_connections_total counter
# HELP baton_router_connections_active Client connections spliced to a backend now.
# TYPE baton_router_connections_active gauge
# HELP baton_router_connections_held Client connections waiting for a backend now.
# TYPE baton_router_connections_held gauge
# HELP baton_router_connections_refused_total Clients refused (no backend within hold_timeout, or max_connections).
# TYPE baton_router_connections_refused_total counter
# HELP baton_router_connections_closed_on_demotion_total Connections closed because their backend stopped being primary.
# TYPE baton_router_connections_closed_on_demotion_total counter
# HELP baton_router_bytes_to_server_total Bytes forwarded from clients, counted when a connection ends.
# TYPE baton_router_bytes_to_server_total counter
# HELP baton_router_bytes_to_client_total Bytes forwarded to clients, counted when a connection ends.
# TYPE baton_router_bytes_to_client_total counter
# HELP baton_router_hold_seconds How long clients waited for a backend.
# TYPE baton_router_hold_seconds histogram
";

pub fn render(scope: &str, routes: &[(&str, &RouteMetrics)], primary_known: bool) -> String {
    let mut out = String::from(HELP);
    for (route, m) in routes {
        m.render(&mut out, &format!("scope=\"{scope}\",route=\"{route}\""));
    }
    writeln!(
        out,
        "# HELP baton_router_primary_known 1 if the router knows a primary to send writers to.\n\
         # TYPE baton_router_primary_known gauge\n\
         baton_router_primary_known{{scope=\"{scope}\"}} {}",
        primary_known as u8
    )
    .expect("string write");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hold_histogram_is_cumulative() {
        let m = RouteMetrics::default();
        m.observe_hold(Duration::from_millis(3));
        m.observe_hold(Duration::from_millis(300));
        let text = render("demo", &[("read_write", &m)], true);
        assert!(text.contains("le=\"0.001\"} 0"), "{text}");
        assert!(text.contains("le=\"0.005\"} 1"), "{text}");
        assert!(text.contains("le=\"0.5\"} 2"), "{text}");
        assert!(text.contains("le=\"+Inf\"} 2"), "{text}");
        assert!(text
            .contains("baton_router_hold_seconds_sum{scope=\"demo\",route=\"read_write\"} 0.303"));
    }
}
