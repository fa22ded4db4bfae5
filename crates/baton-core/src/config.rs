//! The cluster-wide dynamic configuration kept in etcd under `config`
//! (Patroni's names), and member tags. Timing rules are refused, never
//! clamped: a silently adjusted `ttl` is how a cluster ends up failing over
//! on every busy minute.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Member tags, with Patroni's meaning. Unknown tags are kept and published.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Tags {
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nofailover: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub noloadbalance: bool,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub nosync: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failover_priority: Option<i64>,
    #[serde(flatten)]
    pub other: BTreeMap<String, serde_json::Value>,
}

/// Cluster-wide settings stored as JSON in the `config` key (Patroni's names).
/// Unknown fields are kept untouched so Patroni tools can store theirs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DynamicConfig {
    /// Leader lease in whole seconds (etcd leases are whole seconds, min 2).
    pub ttl: u64,
    /// Seconds between HA loop ticks when nothing wakes the loop earlier.
    pub loop_wait: f64,
    /// Seconds any single etcd or postgres request may take.
    pub retry_timeout: f64,
    /// Bytes a replica may lag and still be promoted.
    pub maximum_lag_on_failover: u64,
    /// Baton: seconds before lease expiry by which a leader that could not
    /// renew must already be fencing itself (time for an immediate stop).
    #[serde(default = "default_safety_margin")]
    pub safety_margin: f64,
    /// Seconds a crashed leader's postgres may take to come back in place
    /// before the leader gives up the key and a replica takes over.
    #[serde(default = "default_primary_start_timeout")]
    pub primary_start_timeout: f64,
    /// Seconds the leader keeps the replication slot of a member whose key
    /// is gone (Patroni's `member_slots_ttl`): long enough for a restart or
    /// a short outage to catch up, short enough not to fill the disk.
    #[serde(default = "default_member_slots_ttl")]
    pub member_slots_ttl: f64,
    /// Maintenance mode (Patroni's `pause`): agents report but take no
    /// automatic action.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub pause: bool,
    /// Patroni's `synchronous_mode`: `false`/`off`, `true`/`on`, `quorum`.
    #[serde(default, skip_serializing_if = "SyncMode::is_off")]
    pub synchronous_mode: SyncMode,
    /// How many standbys must confirm each commit (Patroni's
    /// `synchronous_node_count`).
    #[serde(default = "default_sync_node_count")]
    pub synchronous_node_count: u32,
    /// With no synchronous standby left, commits wait (`*`) instead of
    /// the primary silently acknowledging them alone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub synchronous_mode_strict: bool,
    /// Patroni's `failsafe_mode`: with etcd unreachable, the leader keeps
    /// running read-write while every member in the `failsafe` key
    /// confirms over REST that it still follows it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub failsafe_mode: bool,
    #[serde(flatten)]
    pub other: serde_json::Map<String, serde_json::Value>,
}

fn default_safety_margin() -> f64 {
    1.0
}

fn default_sync_node_count() -> u32 {
    1
}

/// Patroni's `synchronous_mode`, stored as `false`, `true` or `"quorum"`
/// (strings `off`/`on` are read too, as Patroni reads them).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SyncMode {
    /// Asynchronous: a failover may lose what the primary had not shipped.
    #[default]
    Off,
    /// `FIRST n (...)`: each commit waits for the `n` named standbys, any
    /// of which may then take over alone.
    On,
    /// `ANY n (...)`: each commit waits for any `n` of the listed standbys;
    /// an election hears enough of them to be sure it sees the latest.
    Quorum,
}

impl SyncMode {
    pub fn is_off(&self) -> bool {
        *self == SyncMode::Off
    }
}

impl Serialize for SyncMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            SyncMode::Off => s.serialize_bool(false),
            SyncMode::On => s.serialize_bool(true),
            SyncMode::Quorum => s.serialize_str("quorum"),
        }
    }
}

impl<'de> Deserialize<'de> for SyncMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::Bool(true) => Ok(SyncMode::On),
            serde_json::Value::Bool(false) | serde_json::Value::Null => Ok(SyncMode::Off),
            serde_json::Value::String(t) => match t.to_ascii_lowercase().as_str() {
                "on" | "true" => Ok(SyncMode::On),
                "off" | "false" => Ok(SyncMode::Off),
                "quorum" => Ok(SyncMode::Quorum),
                other => Err(serde::de::Error::custom(format!(
                    "synchronous_mode: {other:?} is not one of off, on, quorum"
                ))),
            },
            other => Err(serde::de::Error::custom(format!(
                "synchronous_mode: {other} is not one of off, on, quorum"
            ))),
        }
    }
}

/// Seconds as a `Duration`, clamped to `[0, MAX_SECONDS]`: validation has
/// refused anything outside already, and this never panics if it did not
/// run (`Duration::from_secs_f64` panics on huge or negative values).
fn seconds(v: f64) -> Duration {
    Duration::try_from_secs_f64(v.clamp(0.0, MAX_SECONDS)).unwrap_or(Duration::ZERO)
}

/// The longest any duration setting may be: a year. Longer values are
/// surely typos, and they must not reach `Duration` arithmetic that would
/// overflow (a panic in the loop would leave postgres running unfenced).
pub const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// etcd refuses leases longer than this (its `MaxLeaseTTL`), so every grant
/// would fail.
pub const ETCD_MAX_LEASE_TTL: u64 = 9_000_000_000;

fn default_primary_start_timeout() -> f64 {
    3.0
}

fn default_member_slots_ttl() -> f64 {
    1800.0
}

impl Default for DynamicConfig {
    fn default() -> Self {
        DynamicConfig {
            ttl: 4,
            loop_wait: 1.0,
            retry_timeout: 1.0,
            maximum_lag_on_failover: 1 << 20,
            safety_margin: default_safety_margin(),
            primary_start_timeout: default_primary_start_timeout(),
            member_slots_ttl: default_member_slots_ttl(),
            pause: false,
            synchronous_mode: SyncMode::Off,
            synchronous_node_count: default_sync_node_count(),
            synchronous_mode_strict: false,
            failsafe_mode: false,
            other: serde_json::Map::new(),
        }
    }
}

impl DynamicConfig {
    pub fn loop_wait(&self) -> Duration {
        seconds(self.loop_wait)
    }
    pub fn retry_timeout(&self) -> Duration {
        seconds(self.retry_timeout)
    }
    pub fn member_slots_ttl(&self) -> Duration {
        seconds(self.member_slots_ttl)
    }
    pub fn primary_start_timeout(&self) -> Duration {
        seconds(self.primary_start_timeout)
    }
    pub fn ttl(&self) -> Duration {
        Duration::from_secs(self.ttl)
    }
    /// How long after the last *sent* successful renewal a leader may keep
    /// running read-write (safety rule 2 in DESIGN.md).
    pub fn leader_deadline(&self) -> Duration {
        self.ttl().saturating_sub(seconds(self.safety_margin))
    }

    /// Every broken rule, as (key, reason) pairs; empty when valid.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if self.ttl < 2 {
            p.push((
                "ttl",
                format!("{} s is below etcd's minimum lease of 2 s", self.ttl),
            ));
        }
        if self.ttl > ETCD_MAX_LEASE_TTL {
            p.push((
                "ttl",
                format!(
                    "{} s is above etcd's maximum lease of {ETCD_MAX_LEASE_TTL} s",
                    self.ttl
                ),
            ));
        }
        for (key, v) in [
            ("loop_wait", self.loop_wait),
            ("retry_timeout", self.retry_timeout),
            ("safety_margin", self.safety_margin),
        ] {
            if !v.is_finite() || v <= 0.0 {
                p.push((key, format!("{v} must be a positive number of seconds")));
            }
        }
        for (key, v) in [
            ("member_slots_ttl", self.member_slots_ttl),
            ("primary_start_timeout", self.primary_start_timeout),
        ] {
            if !v.is_finite() || v < 0.0 {
                p.push((
                    key,
                    format!("{v} must be zero or a positive number of seconds"),
                ));
            } else if v > MAX_SECONDS {
                p.push((
                    key,
                    format!("{v} s is more than a year ({MAX_SECONDS} s); surely a typo"),
                ));
            }
        }
        if self.synchronous_node_count < 1 {
            p.push((
                "synchronous_node_count",
                "0 must be at least 1 (use synchronous_mode: off for none)".to_string(),
            ));
        }
        if p.is_empty() {
            let budget = self.ttl as f64 - self.safety_margin;
            let need = self.loop_wait + 2.0 * self.retry_timeout;
            if need > budget {
                p.push((
                    "ttl",
                    format!(
                        "a leader must get two renewal attempts before it fences itself: \
                         loop_wait + 2 * retry_timeout = {need} s must not exceed \
                         ttl - safety_margin = {budget} s (raise ttl or lower the others)"
                    ),
                ));
            }
        }
        p
    }

    pub fn validate(&self) -> Result<(), String> {
        let p = self.problems();
        if p.is_empty() {
            Ok(())
        } else {
            Err(p
                .into_iter()
                .map(|(k, r)| format!("{k}: {r}"))
                .collect::<Vec<_>>()
                .join("; "))
        }
    }
}

/// JSON merge patch (RFC 7386): objects merge recursively, `null` deletes.
pub fn merge_patch(target: &mut serde_json::Value, patch: &serde_json::Value) {
    let serde_json::Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = serde_json::Value::Object(serde_json::Map::new());
    }
    let t = target.as_object_mut().expect("made an object above");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(serde_json::Value::Null), v);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn impossible_timing_is_refused_not_adjusted() {
        let mut d = DynamicConfig {
            ttl: 1,
            ..DynamicConfig::default()
        };
        assert_eq!(d.problems()[0].0, "ttl");
        d.ttl = 4;
        assert!(d.problems().is_empty());
        d.retry_timeout = 1.5;
        assert!(d.validate().unwrap_err().contains("two renewal attempts"));
        d.loop_wait = 0.0;
        assert_eq!(d.problems()[0].0, "loop_wait");
    }

    #[test]
    fn dynamic_config_keeps_unknown_patroni_fields() {
        let json = r#"{"ttl":30,"loop_wait":10,"retry_timeout":10,"maximum_lag_on_failover":1048576,"postgresql":{"use_pg_rewind":true}}"#;
        let d: DynamicConfig = serde_json::from_str(json).unwrap();
        assert_eq!(d.ttl, 30);
        assert_eq!(d.safety_margin, 1.0);
        let back = serde_json::to_value(&d).unwrap();
        assert_eq!(back["postgresql"]["use_pg_rewind"], true);
    }

    #[test]
    fn merge_patch_merges_and_deletes() {
        let mut v = serde_json::json!({"ttl": 4, "postgresql": {"a": 1, "b": 2}, "x": 1});
        merge_patch(
            &mut v,
            &serde_json::json!({"ttl": 5, "postgresql": {"a": null, "c": 3}, "x": null}),
        );
        assert_eq!(
            v,
            serde_json::json!({"ttl": 5, "postgresql": {"b": 2, "c": 3}})
        );
    }

    #[test]
    fn values_that_would_overflow_are_refused_and_accessors_never_panic() {
        for (key, d) in [
            (
                "member_slots_ttl",
                DynamicConfig {
                    member_slots_ttl: 1e20,
                    ..DynamicConfig::default()
                },
            ),
            (
                "primary_start_timeout",
                DynamicConfig {
                    primary_start_timeout: 1e20,
                    ..DynamicConfig::default()
                },
            ),
            (
                "ttl",
                DynamicConfig {
                    ttl: 10_000_000_000,
                    ..DynamicConfig::default()
                },
            ),
        ] {
            assert!(
                d.problems().iter().any(|(k, _)| *k == key),
                "{key} accepted: {:?}",
                d.problems()
            );
            // Defence in depth: even unvalidated, no accessor panics.
            let _ = (
                d.member_slots_ttl(),
                d.primary_start_timeout(),
                d.ttl(),
                d.leader_deadline(),
            );
        }
        // The largest accepted values still convert.
        let d = DynamicConfig {
            member_slots_ttl: MAX_SECONDS,
            primary_start_timeout: MAX_SECONDS,
            ..DynamicConfig::default()
        };
        assert!(d.problems().is_empty(), "{:?}", d.problems());
    }
}
