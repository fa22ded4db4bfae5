//! Where clients go: the router's choice of backends, a pure function of the
//! cluster view, so the rules are tested here and `baton router` only moves
//! bytes.
//!
//! Writers go to the leader, and only once its own member key says it runs
//! as a primary, or its server's greeting says writable: during a
//! switchover or failover the key names a candidate that is still
//! promoting, and a client connected there would see a read-only server.
//! Readers go to replicas that stream and replay within
//! the lag limit; a replica that stopped streaming serves older and older
//! data, which is what a read-only pool must not hand out silently.

use std::collections::BTreeMap;

use crate::cluster::{ClusterView, Member};

/// One postgres the router may connect to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Backend {
    pub name: String,
    pub host: String,
    pub port: u16,
}

/// What the read-only pool holds when no replica qualifies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadPolicy {
    /// Bytes of WAL a replica may replay behind the leader (or behind the
    /// freshest member when there is no leader).
    pub max_lag: u64,
    /// With no qualifying replica, send readers to the primary rather than
    /// holding them.
    pub fallback_to_primary: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Routes {
    /// Accepts writes now; `None` while there is no such member (clients
    /// are held).
    pub primary: Option<Backend>,
    /// The leader key's holder while its member key says primary, in any
    /// state: no new clients unless it is also `primary` or `unconfirmed`,
    /// but sessions already there stay. It alone may take writes, so a
    /// state other than "running" is no demotion: handing over in a
    /// switchover (its clean stop ends them and loses nothing), or a
    /// status query that timed out on a busy primary; closing every
    /// session then would break all clients of a primary under load.
    pub leading: Option<Backend>,
    /// The leader when its member key neither confirms nor rules out that
    /// it takes writes: promoting (postgres leaves recovery a tick before
    /// the key says so), or a primary whose status query did not answer
    /// this tick (most often a busy server). The router reads the
    /// server's greeting and hands it new clients only if it says
    /// writable; a server that cannot take them answers with an error
    /// the router retries on.
    pub unconfirmed: Option<Backend>,
    /// The read-only pool, possibly the primary alone (fallback).
    pub readers: Vec<Backend>,
    /// Why each excluded member is out of the read pool, for logs and
    /// the router's `/routes`.
    pub excluded: BTreeMap<String, String>,
}

fn backend(name: &str, m: &Member) -> Option<Backend> {
    let (host, port) = m.pg_address()?;
    Some(Backend {
        name: name.to_string(),
        host,
        port,
    })
}

/// A replica's position as reads see it: what it has replayed.
fn replayed(m: &Member) -> Option<u64> {
    m.replay_lsn.or(m.xlog_location)
}

pub fn routes(view: &ClusterView, policy: ReadPolicy) -> Routes {
    let leader = view.leader_name();
    let primary = leader.and_then(|l| {
        let m = view.members.get(l)?;
        if m.is_running_primary() {
            backend(l, m)
        } else {
            None
        }
    });
    let leading = leader.and_then(|l| {
        let m = view.members.get(l)?;
        if m.role == "primary" {
            backend(l, m)
        } else {
            None
        }
    });
    let unconfirmed = leader.and_then(|l| {
        let m = view.members.get(l)?;
        // "promoting" with either role: postgres leaves recovery before
        // the promote job (pg_ctl promote -w) ends and the key says
        // "running".
        let promoting = m.state == "promoting" || m.role == "replica" && m.state == "running";
        if promoting || m.is_unresponsive_primary() {
            backend(l, m)
        } else {
            None
        }
    });
    let reference = view.leader_optime().or_else(|| {
        view.members
            .iter()
            .filter(|(n, _)| Some(n.as_str()) != leader)
            .filter_map(|(_, m)| replayed(m))
            .max()
    });
    let mut readers = vec![];
    let mut excluded = BTreeMap::new();
    for (name, m) in &view.members {
        if Some(name.as_str()) == leader {
            continue;
        }
        let why = if !m.is_running_replica() {
            Some(format!("{} {}", m.role, m.state))
        } else if m.replication_state.as_deref() != Some("streaming") {
            Some("not streaming".to_string())
        } else if m.tags.noloadbalance {
            Some("tagged noloadbalance".to_string())
        } else {
            match (reference, replayed(m)) {
                (Some(r), Some(p)) if r.saturating_sub(p) > policy.max_lag => {
                    Some(format!("{} bytes behind (limit {})", r - p, policy.max_lag))
                }
                (_, None) => Some("position unknown".to_string()),
                _ => None,
            }
        };
        match (why, backend(name, m)) {
            (None, Some(b)) => readers.push(b),
            (None, None) => {
                excluded.insert(name.clone(), "conn_url unusable".into());
            }
            (Some(w), _) => {
                excluded.insert(name.clone(), w);
            }
        }
    }
    if readers.is_empty() && policy.fallback_to_primary {
        readers.extend(primary.clone());
    }
    Routes {
        primary,
        leading,
        unconfirmed,
        readers,
        excluded,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{LeaderKey, LeaseId};
    use crate::ha::publish::NOT_RESPONDING;

    fn member(role: &str, port: u16, replay: u64, streaming: bool) -> Member {
        Member {
            conn_url: format!("postgres://127.0.0.1:{port}/postgres"),
            state: "running".into(),
            role: role.into(),
            xlog_location: Some(replay),
            replay_lsn: (role == "replica").then_some(replay),
            replication_state: streaming.then(|| "streaming".to_string()),
            ..Member::default()
        }
    }

    fn view(leader: Option<&str>, members: &[(&str, Member)]) -> ClusterView {
        ClusterView {
            leader: leader.map(|l| LeaderKey {
                name: l.into(),
                lease: LeaseId(1),
            }),
            members: members
                .iter()
                .map(|(n, m)| (n.to_string(), m.clone()))
                .collect(),
            ..ClusterView::default()
        }
    }

    const POLICY: ReadPolicy = ReadPolicy {
        max_lag: 1000,
        fallback_to_primary: true,
    };

    #[test]
    fn writers_go_to_the_leader_only_once_it_runs_as_primary() {
        let v = view(
            Some("a"),
            &[
                ("a", member("primary", 1, 5000, false)),
                ("b", member("replica", 2, 4500, true)),
            ],
        );
        let r = routes(&v, POLICY);
        assert_eq!(r.primary.unwrap().port, 1);
        assert_eq!(r.readers.iter().map(|b| b.port).collect::<Vec<_>>(), [2]);

        // The key names b, still promoting: nobody takes writes yet.
        let v = view(
            Some("b"),
            &[
                ("a", member("primary", 1, 5000, false)),
                ("b", member("replica", 2, 5000, false)),
            ],
        );
        let r = routes(&v, POLICY);
        assert_eq!((r.primary, r.unconfirmed.map(|b| b.port)), (None, Some(2)));

        // Out of recovery, the promote job not yet done: still promoting.
        let mut done = member("primary", 2, 5000, false);
        done.state = "promoting".into();
        let v = view(Some("b"), &[("b", done)]);
        let r = routes(&v, POLICY);
        assert_eq!((r.primary, r.unconfirmed.map(|b| b.port)), (None, Some(2)));

        // The leader hands over: no new writers, its sessions drain.
        let mut handing = member("primary", 1, 5000, false);
        handing.state = "switching over".into();
        let v = view(Some("a"), &[("a", handing)]);
        let r = routes(&v, POLICY);
        assert_eq!((r.primary, r.leading.map(|b| b.port)), (None, Some(1)));

        // A status query on the leader failed: its sessions stay, and new
        // clients go there once its greeting says writable; all of it
        // ends once another member holds the key.
        let mut busy = member("primary", 1, 5000, false);
        busy.state = NOT_RESPONDING.into();
        let r = routes(&view(Some("a"), &[("a", busy.clone())]), POLICY);
        assert_eq!(
            (
                r.primary,
                r.leading.map(|b| b.port),
                r.unconfirmed.map(|b| b.port)
            ),
            (None, Some(1), Some(1))
        );
        let r = routes(&view(Some("b"), &[("a", busy)]), POLICY);
        assert_eq!((r.primary, r.leading, r.unconfirmed), (None, None, None));

        // A leader starting its postgres: nobody takes writes yet.
        let mut starting = member("primary", 1, 5000, false);
        starting.state = "starting".into();
        let r = routes(&view(Some("a"), &[("a", starting)]), POLICY);
        assert_eq!(
            (r.primary, r.leading.map(|b| b.port), r.unconfirmed),
            (None, Some(1), None)
        );

        // No leader key: a member still saying primary is not routed to.
        let v = view(None, &[("a", member("primary", 1, 5000, false))]);
        assert_eq!(routes(&v, POLICY).primary, None);
    }

    #[test]
    fn readers_skip_lagging_and_non_streaming_replicas_and_fall_back_by_choice() {
        let mut tagged = member("replica", 5, 5000, true);
        tagged.tags.noloadbalance = true;
        let v = view(
            Some("a"),
            &[
                ("a", member("primary", 1, 5000, false)),
                ("b", member("replica", 2, 3000, true)),
                ("c", member("replica", 3, 5000, false)),
                ("d", tagged),
            ],
        );
        let r = routes(&v, POLICY);
        assert_eq!(r.readers.iter().map(|b| b.port).collect::<Vec<_>>(), [1]);
        assert!(r.excluded["b"].contains("2000 bytes behind"), "{r:?}");
        assert_eq!(r.excluded["c"], "not streaming");
        assert_eq!(r.excluded["d"], "tagged noloadbalance");
        let r = routes(
            &v,
            ReadPolicy {
                fallback_to_primary: false,
                ..POLICY
            },
        );
        assert!(r.readers.is_empty());
    }

    #[test]
    fn without_a_leader_replicas_are_measured_against_the_freshest() {
        let v = view(
            None,
            &[
                ("b", member("replica", 2, 9000, true)),
                ("c", member("replica", 3, 9500, true)),
                ("d", member("replica", 4, 1000, true)),
            ],
        );
        let r = routes(&v, POLICY);
        assert_eq!(r.readers.iter().map(|b| b.port).collect::<Vec<_>>(), [2, 3]);
    }
}
