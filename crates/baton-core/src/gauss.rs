//! openGauss's own words for a cluster: the parser of `gs_ctl query` and
//! the `gs_om -t status --detail` layout (runbook 001), so that an
//! openGauss operator reads Baton's view the way they read their tools.
//! Written to the real tools' output formats (openGauss documentation and
//! the runbook), not to a stand-in's.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::cluster::{ClusterView, Member};
use crate::status::ClusterStatus;

/// `gs_ctl query -D <dir>`: the HA state and each sender's and receiver's
/// key/value block. Keys are lower-cased (older builds print `LOCAL_ROLE`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GsQuery {
    pub ha: BTreeMap<String, String>,
    pub senders: Vec<BTreeMap<String, String>>,
    pub receivers: Vec<BTreeMap<String, String>>,
}

impl GsQuery {
    /// `local_role`: `Primary`, `Standby`, `Normal` (single node), `Pending`, ...
    pub fn local_role(&self) -> Option<&str> {
        self.ha.get("local_role").map(String::as_str)
    }

    /// `db_state`: `Normal`, `Need repair`, `Starting`, `Promoting`,
    /// `Demoting`, `Building`, `Catchup`, ...
    pub fn db_state(&self) -> Option<&str> {
        self.ha.get("db_state").map(String::as_str)
    }

    pub fn detail(&self) -> Option<&str> {
        self.ha.get("detail_information").map(String::as_str)
    }

    /// openGauss's verdict that this standby's history cannot follow its
    /// primary and a build is needed: `Need repair` for a WAL, timeline or
    /// system identifier mismatch (its rebuild reasons). Not `Disconnected`
    /// or `Connecting...`: the primary is only out of reach, which a build
    /// would not mend.
    pub fn needs_build(&self) -> Option<&str> {
        if self.db_state() != Some("Need repair") {
            return None;
        }
        self.detail().filter(|d| {
            matches!(
                *d,
                "WAL segment removed" | "Timeline not matched" | "System id not matched"
            )
        })
    }
}

/// Parses `gs_ctl query` output; lines it does not know (the tool's
/// `[time][pid][][gs_ctl]:` banner) are skipped.
pub fn parse_gs_ctl_query(text: &str) -> GsQuery {
    #[derive(PartialEq)]
    enum Section {
        None,
        Ha,
        Senders,
        Receivers,
    }
    let mut q = GsQuery::default();
    let mut section = Section::None;
    let mut block: BTreeMap<String, String> = BTreeMap::new();
    let flush = |section: &Section, block: &mut BTreeMap<String, String>, q: &mut GsQuery| {
        if block.is_empty() {
            return;
        }
        let b = std::mem::take(block);
        match section {
            Section::Ha => q.ha.extend(b),
            Section::Senders => q.senders.push(b),
            Section::Receivers => q.receivers.push(b),
            Section::None => {}
        }
    };
    for line in text.lines() {
        let t = line.trim();
        let heading = t.trim_end_matches(':').trim().to_ascii_lowercase();
        let next = match heading.as_str() {
            "ha state" => Some(Section::Ha),
            "senders info" => Some(Section::Senders),
            "receiver info" | "receivers info" => Some(Section::Receivers),
            _ => None,
        };
        if let Some(s) = next {
            flush(&section, &mut block, &mut q);
            section = s;
            continue;
        }
        if t.is_empty() {
            // Several senders are separated by blank lines.
            if section != Section::Ha {
                flush(&section, &mut block, &mut q);
            }
            continue;
        }
        let Some((k, v)) = t.split_once(':') else {
            continue;
        };
        let key = k.trim().to_ascii_lowercase();
        if section == Section::None || key.contains(' ') || key.contains('[') {
            continue;
        }
        // A new sender or receiver starts with its pid.
        if matches!(key.as_str(), "sender_pid" | "receiver_pid") && block.contains_key(&key) {
            flush(&section, &mut block, &mut q);
        }
        block.insert(key, v.trim().to_string());
    }
    flush(&section, &mut block, &mut q);
    q
}

/// The header and rule `gs_om -t status --detail` prints above the
/// instances, two per line.
const DN_HEADER: &str = "node           node_ip         instance                       state            | node           node_ip         instance                       state";

/// openGauss's role and state words for one member (the `state` column).
pub fn gs_om_state(m: &Member) -> String {
    let streaming = m.replication_state.as_deref() == Some("streaming");
    match (m.role.as_str(), m.state.as_str()) {
        // With the leader key or without it (the dual primary that makes
        // the cluster Unavailable), openGauss words it the same.
        ("primary", "running") => "Primary Normal".into(),
        (_, "running") if streaming => "Standby Normal".into(),
        (_, "running") => "Standby Need repair(Disconnected)".into(),
        (_, "need repair") => "Standby Need repair(WAL)".into(),
        (_, "rewinding") | (_, "creating replica") => "Standby Building".into(),
        (_, "starting") | (_, "restarting") => "Standby Starting".into(),
        // Its postgres did not answer this tick: openGauss's "Unknown".
        ("primary", crate::ha::publish::NOT_RESPONDING) => "Primary Unknown".into(),
        (_, crate::ha::publish::NOT_RESPONDING) => "Standby Unknown".into(),
        (_, "promoting") => "Standby Promoting".into(),
        (_, s) if s.starts_with("switching") => "Primary Demoting".into(),
        _ => "Down Unknown".into(),
    }
}

/// `baton list --gs-om`: the cluster in the layout of `gs_om -t status
/// --detail` (runbook 001). Instances are numbered by member name, with
/// instance ids 6001, 6002, ...; `P`/`S` is the static position openGauss
/// prints (Baton has no static primary: the first member by name is `P`).
pub fn render_gs_om(status: &ClusterStatus, view: &ClusterView) -> String {
    let mut out = String::new();
    writeln!(out, "[   Cluster State   ]").expect("w");
    writeln!(out, "cluster_state   : {}", status.state).expect("w");
    writeln!(out, "redistributing  : No").expect("w");
    writeln!(out, "current_az      : AZ_ALL").expect("w");
    writeln!(out, "[  Datanode State   ]").expect("w");
    writeln!(out, "{DN_HEADER}").expect("w");
    writeln!(out, "{}", "-".repeat(164)).expect("w");
    let cells: Vec<String> = view
        .members
        .iter()
        .enumerate()
        .map(|(i, (name, m))| {
            let (host, _) = m.pg_address().unwrap_or_default();
            let dir = m.baton_data_dir.as_deref().unwrap_or("-");
            format!(
                "{}  {name} {host}  {} {dir} {} {}",
                i + 1,
                6001 + i,
                if i == 0 { "P" } else { "S" },
                gs_om_state(m)
            )
        })
        .collect();
    for pair in cells.chunks(2) {
        writeln!(out, "{}", pair.join(" | ")).expect("w");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{LeaderKey, LeaseId};

    #[test]
    fn gs_ctl_query_of_a_primary_with_a_sender() {
        // openGauss documentation, one-primary-one-standby in Docker.
        let text = "[2020-10-20 13:50:39.163][666][][gs_ctl]: gs_ctl query ,datadir is -D \"/var/lib/opengauss/data\"  
 HA state:           
\tlocal_role                     : Primary
\tstatic_connections             : 1
\tdb_state                       : Normal
\tdetail_information             : Normal

 Senders info:       
\tsender_pid                     : 637
\tlocal_role                     : Primary
\tpeer_role                      : Standby
\tpeer_state                     : Normal
\tstate                          : Streaming
\tsender_sent_location           : 0/5000238
\tsender_flush_location          : 0/5000238
\treceiver_replay_location       : 0/5000238
\tsync_state                     : Sync
\tchannel                        : 172.18.0.10:6439-->172.18.0.11:55440

 Receiver info:      
No information 
";
        let q = parse_gs_ctl_query(text);
        assert_eq!(q.local_role(), Some("Primary"));
        assert_eq!(q.db_state(), Some("Normal"));
        assert_eq!(q.detail(), Some("Normal"));
        assert_eq!(
            q.ha.get("static_connections").map(String::as_str),
            Some("1")
        );
        assert_eq!(q.senders.len(), 1);
        let s = &q.senders[0];
        assert_eq!(s["state"], "Streaming");
        assert_eq!(s["sync_state"], "Sync");
        assert_eq!(s["receiver_replay_location"], "0/5000238");
        assert_eq!(s["channel"], "172.18.0.10:6439-->172.18.0.11:55440");
        assert!(q.receivers.is_empty());
    }

    #[test]
    fn gs_ctl_query_of_a_standby_and_of_an_old_upper_case_build() {
        let text =
            "[2022-08-05 10:24:17.047][17791][][gs_ctl]: gs_ctl query ,datadir is /data/mogdb
 HA state:
\tlocal_role                     : Standby
\tstatic_connections             : 2
\tdb_state                       : Need repair
\tdetail_information             : WAL segment removed

 Senders info:
No information
 Receiver info:
\treceiver_pid                   : 6141
\tpeer_role                      : Primary
\treceiver_received_location     : 0/6000808
\treceiver_replay_location       : 0/6000808
\tchannel                        : 192.168.122.68:44046<--192.168.122.221:25001
";
        let q = parse_gs_ctl_query(text);
        assert_eq!(q.local_role(), Some("Standby"));
        assert_eq!(q.db_state(), Some("Need repair"));
        assert_eq!(q.detail(), Some("WAL segment removed"));
        assert_eq!(q.needs_build(), Some("WAL segment removed"));
        assert!(q.senders.is_empty());
        assert_eq!(q.receivers.len(), 1);
        assert_eq!(q.receivers[0]["receiver_received_location"], "0/6000808");

        let old = " Ha state: \n        LOCAL_ROLE                    : Standby \n        DB_STATE                      : Normal \n Senders info: \n        No information \n";
        let q = parse_gs_ctl_query(old);
        assert_eq!(q.local_role(), Some("Standby"));
        assert_eq!(q.db_state(), Some("Normal"));
    }

    #[test]
    fn only_a_history_mismatch_needs_a_build() {
        let q = |state: &str, detail: &str| {
            parse_gs_ctl_query(&format!(
                " HA state:\n\tlocal_role : Standby\n\tdb_state : {state}\n\tdetail_information : {detail}\n"
            ))
        };
        for detail in [
            "WAL segment removed",
            "Timeline not matched",
            "System id not matched",
        ] {
            assert_eq!(q("Need repair", detail).needs_build(), Some(detail));
        }
        // The primary is down or out of reach: a build would not mend it.
        for detail in ["Disconnected", "Connecting..."] {
            assert_eq!(q("Need repair", detail).needs_build(), None, "{detail}");
        }
        assert_eq!(q("Normal", "Normal").needs_build(), None);
        assert_eq!(q("Building", "WAL segment removed").needs_build(), None);
    }

    fn member(role: &str, state: &str, streaming: bool, host: &str) -> Member {
        Member {
            conn_url: format!("postgres://{host}:26000/postgres"),
            role: role.into(),
            state: state.into(),
            replication_state: streaming.then(|| "streaming".into()),
            baton_data_dir: Some("/opt/openGuass/data/dn".into()),
            ..Member::default()
        }
    }

    fn view(members: Vec<(&str, Member)>, leader: Option<&str>) -> ClusterView {
        let mut v = ClusterView::default();
        for (n, m) in members {
            v.members.insert(n.to_string(), m);
        }
        v.leader = leader.map(|l| LeaderKey {
            name: l.to_string(),
            lease: LeaseId(1),
        });
        v
    }

    /// The runbook's three states, row for row.
    #[test]
    fn gs_om_layout_matches_the_runbook() {
        let head = |state: &str| {
            format!(
                "[   Cluster State   ]\ncluster_state   : {state}\nredistributing  : No\n\
                 current_az      : AZ_ALL\n[  Datanode State   ]\n{DN_HEADER}\n{}\n",
                "-".repeat(164)
            )
        };
        let runbook_rule = "--------------------------------------------------------------------------------------------------------------------------------------------------------------------";
        assert_eq!("-".repeat(164), runbook_rule);
        // (second member's pg role, state, streaming) → cluster state and
        // its state column, as runbook 001 shows them.
        let cases = [
            (("replica", "running", true), "Normal", "Standby Normal"),
            (
                ("primary", "running", false),
                "Unavailable",
                "Primary Normal",
            ),
            (
                ("replica", "need repair", false),
                "Degraded",
                "Standby Need repair(WAL)",
            ),
        ];
        for ((role, state, streaming), cluster, column) in cases {
            let v = view(
                vec![
                    (
                        "cen7-og1-02",
                        member("primary", "running", false, "192.168.229.53"),
                    ),
                    (
                        "cen7-og1-03",
                        member(role, state, streaming, "192.168.229.54"),
                    ),
                ],
                Some("cen7-og1-02"),
            );
            let s = ClusterStatus::from_view("og", &v, 1 << 20);
            assert_eq!(
                render_gs_om(&s, &v),
                head(cluster)
                    + "1  cen7-og1-02 192.168.229.53  6001 /opt/openGuass/data/dn P Primary Normal | \
                       2  cen7-og1-03 192.168.229.54  6002 /opt/openGuass/data/dn S "
                    + column
                    + "\n"
            );
        }
    }
}
