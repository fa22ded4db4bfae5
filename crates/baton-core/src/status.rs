//! The cluster as an operator sees it: one overall state (Normal / Degraded /
//! Unavailable, as openGauss's `gs_om -t status` shows it) and one row per
//! member. Computed from etcd alone, so `baton list`, the `/cluster` endpoint
//! and any agent agree on it.

use std::fmt;

use serde::Serialize;

use crate::cluster::ClusterView;
use crate::config::{SyncMode, Tags};
use crate::lsn::Lsn;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum ClusterState {
    /// One leader running read-write; every member running and streaming
    /// within the lag limit.
    Normal,
    /// A leader, but some member is down, not streaming, lagging, or needs repair.
    Degraded,
    /// No leader, or more than one member running read-write.
    Unavailable,
}

impl fmt::Display for ClusterState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ClusterState::Normal => "Normal",
            ClusterState::Degraded => "Degraded",
            ClusterState::Unavailable => "Unavailable",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MemberRow {
    pub name: String,
    pub host: String,
    pub port: u16,
    /// `leader`, `sync_standby` or `replica` (Patroni's /cluster values).
    pub role: String,
    /// running, streaming, starting, stopped, cloning, bootstrapping, need repair, ...
    pub state: String,
    pub timeline: Option<u32>,
    pub receive_lsn: Option<String>,
    pub replay_lsn: Option<String>,
    /// Bytes behind the leader's last known WAL position.
    pub lag: Option<u64>,
    /// How far behind in time, from the leader's `pg_stat_replication`
    /// (`replay_lag`); zero for a replica with no byte lag once postgres
    /// stops measuring an idle standby.
    pub lag_ms: Option<u64>,
    pub api_url: String,
    pub tags: Tags,
    pub reason: Option<String>,
    /// The stable code of `reason` (`Reason::code()`).
    pub reason_code: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ClusterStatus {
    pub scope: String,
    pub state: ClusterState,
    /// Why the state is not Normal, one line each.
    pub problems: Vec<String>,
    pub leader: Option<String>,
    pub members: Vec<MemberRow>,
    pub system_identifier: Option<String>,
    /// Maintenance mode: agents take no automatic action.
    pub paused: bool,
    /// A pending switchover: "to <member>" plus " at <time>" when scheduled.
    pub switchover: Option<String>,
}

impl ClusterStatus {
    pub fn from_view(scope: &str, view: &ClusterView, max_lag: u64) -> ClusterStatus {
        let leader = view.leader_name().map(str::to_string);
        let leader_member = view.leader_member();
        let leader_optime = view.leader_optime();
        let leader_tl = leader_member.and_then(|m| m.timeline);
        let mut problems = vec![];
        let mut degraded = vec![];
        let mut members = vec![];

        let sync_mode = view
            .config
            .as_ref()
            .map(|c| c.synchronous_mode)
            .unwrap_or_default();
        // Only the current leader's promise names synchronous standbys.
        let sync = view
            .sync
            .as_ref()
            .filter(|k| !sync_mode.is_off() && leader.as_deref().is_some_and(|l| k.leader_is(l)));
        if !sync_mode.is_off() && leader.is_some() && sync.is_none_or(|k| k.voters().is_empty()) {
            degraded.push(
                "synchronous mode, but no synchronous standby yet: if the leader failed now, \
                 no member could take over without losing commits"
                    .to_string(),
            );
        }
        for (name, m) in &view.members {
            let is_leader = leader.as_deref() == Some(name.as_str());
            let role = match sync {
                _ if is_leader => "leader",
                Some(k) if k.lists(name) && sync_mode == SyncMode::Quorum => "quorum_standby",
                Some(k) if k.lists(name) => "sync_standby",
                _ => "replica",
            };
            let (host, port) = m.pg_address().unwrap_or_default();
            let streaming = m.replication_state.as_deref() == Some("streaming");
            let state = match m.state.as_str() {
                "running" if m.role == "replica" && streaming => "streaming",
                "creating replica" => "cloning",
                "initializing new cluster" => "bootstrapping",
                s => s,
            }
            .to_string();
            // A copy under way shows how far it got: `cloning 43%`. A
            // rebuild copies beside a postgres that still runs.
            let state = match &m.baton_progress {
                Some(p) if p.job == "rebuild" => format!("rebuilding {}%", p.percent),
                Some(p) if p.job == "rewind" => format!("rewinding {}%", p.percent),
                Some(p) => format!("cloning {}%", p.percent),
                None => state,
            };
            let lag = if is_leader {
                Some(0)
            } else {
                match (leader_optime, m.xlog_location) {
                    (Some(l), Some(me)) => Some(l.saturating_sub(me)),
                    _ => None,
                }
            };
            if is_leader {
                if m.is_unresponsive_primary() {
                    // It may well take writes (a busy server whose status
                    // query timed out): writes are not known to be down.
                    degraded.push(format!(
                        "leader {name}'s postgres did not answer its status query"
                    ));
                } else if !m.is_running_primary() {
                    problems.push(format!(
                        "leader {name} is {} as {}, not running as primary",
                        m.state, m.role
                    ));
                }
            } else if m.state != "running" {
                degraded.push(format!("{name} is {}", state));
            } else if m.role == "primary" {
                // Counted below as a second writable member.
            } else if !streaming {
                degraded.push(format!("{name} is not streaming"));
            } else if lag.is_some_and(|l| l > max_lag) {
                degraded.push(format!(
                    "{name} lags {} bytes (limit {max_lag})",
                    lag.unwrap_or(0)
                ));
            } else if leader_tl.is_some() && m.timeline.is_some() && m.timeline != leader_tl {
                degraded.push(format!(
                    "{name} is on timeline {}, leader on {}",
                    m.timeline.unwrap_or(0),
                    leader_tl.unwrap_or(0)
                ));
            }
            members.push(MemberRow {
                name: name.clone(),
                host,
                port,
                role: role.into(),
                state,
                timeline: m.timeline,
                receive_lsn: m.receive_lsn.map(|l| Lsn(l).to_string()),
                replay_lsn: m.replay_lsn.map(|l| Lsn(l).to_string()),
                lag_ms: if is_leader {
                    None
                } else {
                    leader_member
                        .and_then(|l| l.baton_replay_lag_ms.get(name).copied())
                        .or(lag.filter(|l| *l == 0))
                },
                lag,
                api_url: m.api_url.clone(),
                tags: m.tags.clone(),
                reason: m.baton_reason.clone(),
                reason_code: m.baton_reason_code.clone(),
            });
        }

        let writable: Vec<&str> = view
            .members
            .iter()
            .filter(|(_, m)| m.is_running_primary())
            .map(|(n, _)| n.as_str())
            .collect();
        if writable.len() > 1 {
            problems.push(format!(
                "more than one member running read-write: {}",
                writable.join(", ")
            ));
        }
        match &leader {
            None => problems.push("no leader".into()),
            Some(l) if leader_member.is_none() => {
                problems.push(format!("leader {l} has no member key"))
            }
            _ => {}
        }
        // The leader keeps a slot for every member it has seen (listed in
        // retain_slots; older leaders published only `slots`); such a slot
        // with no member key is a member whose agent is gone.
        let status = view.status.as_ref();
        let managed: Option<Vec<String>> =
            status.and_then(|s| s.retain_slots.clone()).or_else(|| {
                status
                    .and_then(|s| s.slots.as_ref())
                    .map(|m| m.keys().cloned().collect())
            });
        if let Some(slots) = managed {
            for slot in &slots {
                let known = view
                    .members
                    .keys()
                    .any(|m| crate::instance::slot_name(m) == *slot);
                if !known {
                    degraded.push(format!("member with slot {slot} is missing (agent down?)"));
                }
            }
        }
        let state = if !problems.is_empty() {
            ClusterState::Unavailable
        } else if !degraded.is_empty() {
            ClusterState::Degraded
        } else {
            ClusterState::Normal
        };
        problems.extend(degraded);
        ClusterStatus {
            scope: scope.to_string(),
            state,
            problems,
            leader,
            members,
            system_identifier: view.initialize.clone().filter(|s| !s.is_empty()),
            paused: view.config.as_ref().is_some_and(|c| c.pause),
            switchover: view.failover.as_ref().map(|f| {
                let to = f
                    .member
                    .clone()
                    .unwrap_or_else(|| "the healthiest replica".into());
                match &f.scheduled_at {
                    Some(at) => format!("to {to} at {at}"),
                    None => format!("to {to} (in progress)"),
                }
            }),
        }
    }

    /// The table `baton list` prints.
    pub fn render(&self) -> String {
        let mut out = format!(
            "Cluster: {} ({}) state: {}\n",
            self.scope,
            self.system_identifier.as_deref().unwrap_or("uninitialized"),
            self.state
        );
        if self.paused {
            out.push_str("  Maintenance mode: on (no automatic failover, restart or repair)\n");
        }
        if let Some(sw) = &self.switchover {
            out.push_str(&format!("  Switchover: {sw}\n"));
        }
        for p in &self.problems {
            out.push_str(&format!("  ! {p}\n"));
        }
        let header = [
            "Member",
            "Host",
            "Role",
            "State",
            "TL",
            "Receive LSN",
            "Replay LSN",
            "Lag (B)",
            "Tags",
            "Reason",
        ];
        let rows: Vec<[String; 10]> = self
            .members
            .iter()
            .map(|m| {
                let tags = serde_json::to_value(&m.tags)
                    .ok()
                    .and_then(|v| v.as_object().cloned())
                    .map(|o| {
                        o.iter()
                            .map(|(k, v)| format!("{k}: {v}"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    })
                    .unwrap_or_default();
                [
                    m.name.clone(),
                    format!("{}:{}", m.host, m.port),
                    match m.role.as_str() {
                        "leader" => "Leader",
                        "sync_standby" => "Sync Standby",
                        "quorum_standby" => "Quorum Standby",
                        _ => "Replica",
                    }
                    .to_string(),
                    m.state.clone(),
                    m.timeline.map(|t| t.to_string()).unwrap_or_default(),
                    m.receive_lsn.clone().unwrap_or_default(),
                    m.replay_lsn.clone().unwrap_or_default(),
                    m.lag
                        .map(|l| l.to_string())
                        .unwrap_or_else(|| "unknown".into()),
                    tags,
                    m.reason.clone().unwrap_or_default(),
                ]
            })
            .collect();
        let mut widths = header.map(str::len);
        for r in &rows {
            for (w, c) in widths.iter_mut().zip(r) {
                *w = (*w).max(c.len());
            }
        }
        let line = |cells: &[String]| {
            let mut l = String::from("|");
            for (c, w) in cells.iter().zip(widths) {
                l.push_str(&format!(" {c:<w$} |"));
            }
            l.push('\n');
            l
        };
        let sep = {
            let mut l = String::from("+");
            for w in widths {
                l.push_str(&"-".repeat(w + 2));
                l.push('+');
            }
            l.push('\n');
            l
        };
        out.push_str(&sep);
        out.push_str(&line(&header.map(String::from)));
        out.push_str(&sep);
        for r in &rows {
            out.push_str(&line(r));
        }
        out.push_str(&sep);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{LeaderKey, LeaseId, Member, StatusKey};

    fn m(port: u16, role: &str, state: &str, xlog: u64, streaming: bool) -> Member {
        Member {
            conn_url: format!("postgres://127.0.0.1:{port}/postgres"),
            api_url: format!("http://127.0.0.1:{}/patroni", port + 1),
            state: state.into(),
            role: role.into(),
            xlog_location: Some(xlog),
            receive_lsn: (role == "replica").then_some(xlog),
            replay_lsn: (role == "replica").then_some(xlog),
            replication_state: streaming.then(|| "streaming".into()),
            timeline: Some(1),
            ..Member::default()
        }
    }

    fn view() -> ClusterView {
        let mut v = ClusterView {
            initialize: Some("7300".into()),
            leader: Some(LeaderKey {
                name: "n1".into(),
                lease: LeaseId(1),
            }),
            status: Some(StatusKey {
                optime: Some(1000),
                slots: Some([("n2".to_string(), 0), ("n3".to_string(), 0)].into()),
                retain_slots: None,
                baton_leader: None,
            }),
            ..ClusterView::default()
        };
        v.members
            .insert("n1".into(), m(5001, "primary", "running", 1000, false));
        v.members
            .insert("n2".into(), m(5002, "replica", "running", 1000, true));
        v.members
            .insert("n3".into(), m(5003, "replica", "running", 900, true));
        v
    }

    #[test]
    fn healthy_cluster_is_normal() {
        let s = ClusterStatus::from_view("demo", &view(), 1 << 20);
        assert_eq!(s.state, ClusterState::Normal, "{:?}", s.problems);
        assert_eq!(s.members[0].role, "leader");
        assert_eq!(s.members[1].state, "streaming");
        assert_eq!(s.members[2].lag, Some(100));
    }

    #[test]
    fn synchronous_standbys_show_their_role_and_none_degrades() {
        use crate::cluster::SyncKey;
        use crate::config::{DynamicConfig, SyncMode};
        let mut v = view();
        v.config = Some(DynamicConfig {
            synchronous_mode: SyncMode::On,
            ..DynamicConfig::default()
        });
        let s = ClusterStatus::from_view("demo", &v, 1 << 20);
        assert_eq!(s.state, ClusterState::Degraded);
        assert!(
            s.problems[0].contains("no synchronous standby"),
            "{:?}",
            s.problems
        );

        v.sync = Some(SyncKey {
            leader: Some("n1".into()),
            sync_standby: Some("n2".into()),
            quorum: None,
        });
        let s = ClusterStatus::from_view("demo", &v, 1 << 20);
        assert_eq!(s.state, ClusterState::Normal, "{:?}", s.problems);
        let roles: Vec<&str> = s.members.iter().map(|m| m.role.as_str()).collect();
        assert_eq!(roles, ["leader", "sync_standby", "replica"]);
        assert!(s.render().contains("Sync Standby"));

        v.config.as_mut().unwrap().synchronous_mode = SyncMode::Quorum;
        let s = ClusterStatus::from_view("demo", &v, 1 << 20);
        assert_eq!(s.members[1].role, "quorum_standby");
        assert!(s.render().contains("Quorum Standby"));

        // Another leader's promise names nobody for this one.
        v.sync.as_mut().unwrap().leader = Some("n3".into());
        let s = ClusterStatus::from_view("demo", &v, 1 << 20);
        assert_eq!(s.members[1].role, "replica");
        assert_eq!(s.state, ClusterState::Degraded);
    }

    /// A leader's status query that timed out is no outage: the cluster
    /// is Degraded, with the reason; a leader that is starting is one.
    #[test]
    fn a_leader_not_answering_degrades() {
        use crate::ha::publish::NOT_RESPONDING;
        let mut v = view();
        v.members.get_mut("n1").unwrap().state = NOT_RESPONDING.into();
        let s = ClusterStatus::from_view("demo", &v, 1 << 20);
        assert_eq!(s.state, ClusterState::Degraded, "{:?}", s.problems);
        assert!(s.problems[0].contains("did not answer"), "{:?}", s.problems);
        v.members.get_mut("n1").unwrap().state = "starting".into();
        let s = ClusterStatus::from_view("demo", &v, 1 << 20);
        assert_eq!(s.state, ClusterState::Unavailable, "{:?}", s.problems);
    }

    #[test]
    fn stopped_lagging_or_missing_member_degrades() {
        let mut v = view();
        v.members.get_mut("n2").unwrap().state = "stopped".into();
        let s = ClusterStatus::from_view("demo", &v, 1 << 20);
        assert_eq!(s.state, ClusterState::Degraded);
        assert_eq!(s.problems, vec!["n2 is stopped"]);

        let s = ClusterStatus::from_view("demo", &view(), 50);
        assert_eq!(s.state, ClusterState::Degraded);
        assert_eq!(s.problems, vec!["n3 lags 100 bytes (limit 50)"]);

        let mut v = view();
        v.members.remove("n3");
        let s = ClusterStatus::from_view("demo", &v, 1 << 20);
        assert_eq!(s.state, ClusterState::Degraded);
        assert_eq!(
            s.problems,
            vec!["member with slot n3 is missing (agent down?)"]
        );
    }

    #[test]
    fn no_leader_or_two_primaries_is_unavailable() {
        let mut v = view();
        v.leader = None;
        let s = ClusterStatus::from_view("demo", &v, 1 << 20);
        assert_eq!(s.state, ClusterState::Unavailable);
        assert_eq!(s.problems, vec!["no leader"]);

        let mut v = view();
        let n2 = v.members.get_mut("n2").unwrap();
        n2.role = "primary".into();
        n2.replication_state = None;
        let s = ClusterStatus::from_view("demo", &v, 1 << 20);
        assert_eq!(s.state, ClusterState::Unavailable);
        assert_eq!(
            s.problems,
            vec!["more than one member running read-write: n1, n2"]
        );
    }

    #[test]
    fn table_has_one_row_per_member() {
        let s = ClusterStatus::from_view("demo", &view(), 1 << 20);
        let t = s.render();
        assert!(t.starts_with("Cluster: demo (7300) state: Normal\n"), "{t}");
        assert_eq!(t.lines().filter(|l| l.starts_with("| n")).count(), 3, "{t}");
        assert!(t.contains("| n1     | 127.0.0.1:5001 | Leader "), "{t}");
    }
}
