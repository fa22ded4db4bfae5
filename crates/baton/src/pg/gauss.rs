//! openGauss (runbook 001): a PostgreSQL 9.2 descendant with its own HA
//! commands and words. What differs, all behind [`Instance`]'s methods so
//! that the HA loop stays the same:
//! - the role is chosen at start, `gs_ctl start -M primary | standby`, not
//!   by a signal file (Baton still writes `standby.signal` as its own
//!   record of the role: openGauss ignores it);
//! - replication is configured by `replconninfoN` entries in
//!   postgresql.conf, one per peer (`localhost= localport= remotehost=
//!   remoteport=`, the ports being HA ports: the data port + 1 in gs_om's
//!   layout). The primary listens and authenticates standbys by them, so
//!   every member lists every other one, the leader first on a standby
//!   (the agent hands the members over each tick, `Instance::set_members`);
//! - promotion is `gs_ctl failover`; rejoining a diverged member is
//!   openGauss's own incremental build, `gs_ctl build -b incremental`, and
//!   a rebuild is `gs_basebackup` into a new directory (the old one moved
//!   aside, rule 7), never `gs_ctl build -b full` over the data;
//! - openGauss keeps no timelines Baton can use (it fails over by term):
//!   the status reports none, so Baton's timeline lineage checks do not
//!   apply, and whether a standby can follow is openGauss's own verdict:
//!   `gs_ctl query` saying `db_state: Need repair` (`detail_information`:
//!   "WAL segment removed", "Timeline not matched", ...) makes Baton build
//!   it (`Running::needs_repair`);
//! - the SQL is 9.2's: `pg_current_xlog_location()`,
//!   `pg_last_xlog_*_location()`, `pg_stat_get_wal_receiver()`,
//!   `pg_stat_replication.sender_sent_location`, positions as text;
//! - a standby keeps WAL for its peers by `wal_keep_segments` only: Baton
//!   creates no replication slots (an unused physical slot would keep WAL
//!   forever), it records the names the HA loop asks for.
//!
//! - a planned switchover is openGauss's own `gs_ctl switchover`, run by
//!   the candidate once the key is handed to it while the old primary
//!   still runs (`agent::handover`): the primary demotes itself in place.
//!
//! Not yet: synchronous mode.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;
use std::time::Duration;

use baton_core::gauss::{parse_gs_ctl_query, GsQuery};
use baton_core::instance::{ReplicationRow, Running};
use baton_core::lsn::Lsn;

use super::conf::{quote_setting, write_owned};
use super::{Instance, PgError, RunAs};
use crate::config::PgConfig;

/// gs_om's layout: a member's HA (replication) port is its data port + 1.
pub const HA_PORT_OFFSET: u16 = 1;

/// Another member, as a `replconninfo` entry names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub name: String,
    pub host: String,
    pub port: u16,
}

/// openGauss's `postgresql.conf`: the node file's parameters, then the
/// settings HA depends on, in 9.2's names, and a `replconninfoN` per
/// peer: on a standby the leader first (it follows the first primary it
/// finds), none on a read-only start that must follow no one.
pub fn render_opengauss_conf(cfg: &PgConfig, name: &str, run_as: &RunAs, peers: &[Peer]) -> String {
    let mut s = String::from(
        "# Written by baton before every start; edits here are overwritten.\n\
         # Set parameters in the node config ([postgresql.parameters]).\n",
    );
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    // 16 MB segments: 512 MB kept for standbys that fall behind, since
    // there are no slots to keep it for them.
    params.insert("wal_keep_segments".into(), "32".into());
    params.insert("max_wal_senders".into(), "32".into());
    params.insert("max_replication_slots".into(), "32".into());
    params.insert("hot_standby_feedback".into(), "on".into());
    for (k, v) in &cfg.parameters {
        params.insert(k.clone(), quote_setting(v));
    }
    params.insert(
        "listen_addresses".into(),
        quote_setting(&cfg.listen.ip().to_string()),
    );
    params.insert("port".into(), cfg.listen.port().to_string());
    params.insert(
        "unix_socket_directory".into(),
        quote_setting(&cfg.socket_dir.display().to_string()),
    );
    params.insert("wal_level".into(), "hot_standby".into());
    params.insert("hot_standby".into(), "on".into());
    // The name a standby's WAL receiver gives the primary
    // (pg_stat_replication.application_name): the member's.
    params.insert("application_name".into(), quote_setting(name));
    let mine = (cfg.connect_address.ip().to_string(), cfg.listen.port());
    let mut ordered: Vec<(String, u16)> = vec![];
    match run_as {
        RunAs::ReadOnly => {}
        RunAs::Replica { host, port, .. } => {
            ordered.push((host.clone(), *port));
            for p in peers {
                if p.name != name && (p.host.as_str(), p.port) != (host.as_str(), *port) {
                    ordered.push((p.host.clone(), p.port));
                }
            }
        }
        RunAs::Primary => {
            for p in peers.iter().filter(|p| p.name != name) {
                ordered.push((p.host.clone(), p.port));
            }
        }
    }
    for (i, (host, port)) in ordered.iter().enumerate() {
        params.insert(
            format!("replconninfo{}", i + 1),
            quote_setting(&format!(
                "localhost={} localport={} remotehost={host} remoteport={}",
                mine.0,
                mine.1 + HA_PORT_OFFSET,
                port + HA_PORT_OFFSET
            )),
        );
    }
    for (k, v) in params {
        writeln!(s, "{k} = {v}").expect("string write");
    }
    s
}

/// The member a `replconninfo1` entry of `conf` (as Baton wrote it) points
/// at, as `host=... port=...` with the data port, for the HA rules to
/// compare with the leader's address.
pub fn first_peer(conf: &str) -> Option<(String, u16)> {
    let line = conf
        .lines()
        .find(|l| l.trim_start().starts_with("replconninfo1 "))?;
    let value = line.split_once('=')?.1.trim().trim_matches('\'');
    let field = |k: &str| {
        value
            .split_whitespace()
            .find_map(|kv| kv.strip_prefix(&format!("{k}=")))
            .map(str::to_string)
    };
    let port: u16 = field("remoteport")?.parse().ok()?;
    Some((field("remotehost")?, port.checked_sub(HA_PORT_OFFSET)?))
}

/// Positions arrive as text (`X/X`) in 9.2's functions.
fn lsn(v: Option<String>) -> Option<Lsn> {
    v.and_then(|t| t.trim().parse().ok())
}

/// The status query in openGauss's SQL, the same facts as
/// [`super::query_running`], pipelined the same way.
pub async fn query_running_opengauss(client: &super::PgClient) -> Result<Running, PgError> {
    let (row, slots, replica, replication) = tokio::try_join!(
        client.query_one(
            "SELECT pg_is_in_recovery(),
                    current_setting('server_version_num')::int,
                    current_setting('synchronous_standby_names'),
                    CASE WHEN pg_is_in_recovery() THEN NULL
                         ELSE pg_current_xlog_location()::text END"
        ),
        client.query(
            "SELECT slot_name::text, restart_lsn::text FROM pg_replication_slots \
             WHERE slot_type = 'physical'"
        ),
        client.query_one(
            "SELECT pg_last_xlog_receive_location()::text, pg_last_xlog_replay_location()::text,
                    (SELECT lower(state) FROM pg_stat_get_wal_receiver()
                      WHERE receiver_pid IS NOT NULL LIMIT 1)"
        ),
        client.query(
            "SELECT application_name, client_addr::text, state, sender_sent_location::text,
                    receiver_flush_location::text, receiver_replay_location::text, sync_state
               FROM pg_stat_replication ORDER BY application_name"
        ),
    )?;
    let in_recovery: bool = row.get(0);
    let mut r = Running {
        in_recovery,
        server_version: row.get(1),
        synchronous_standby_names: row.get(2),
        ..Running::default()
    };
    for row in slots {
        r.slots.insert(row.get(0), lsn(row.get(1)));
    }
    if in_recovery {
        r.receive_lsn = lsn(replica.get(0));
        r.replay_lsn = lsn(replica.get(1));
        r.receiver_streaming = matches!(
            replica.get::<_, Option<String>>(2).as_deref(),
            Some("streaming" | "normal" | "catchup")
        );
    } else {
        r.wal_lsn = Some(lsn(row.get(3)).ok_or_else(|| PgError::Command {
            what: "status query".into(),
            detail: "a primary without a current xlog position".into(),
        })?);
        for row in replication {
            r.replication.push(ReplicationRow {
                application_name: row.get(0),
                client_addr: row.get(1),
                state: row
                    .get::<_, Option<String>>(2)
                    .unwrap_or_default()
                    .to_ascii_lowercase(),
                sent_lsn: lsn(row.get(3)),
                flush_lsn: lsn(row.get(4)),
                replay_lsn: lsn(row.get(5)),
                sync_state: row
                    .get::<_, Option<String>>(6)
                    .unwrap_or_default()
                    .to_ascii_lowercase(),
                replay_lag_ms: None,
            });
        }
    }
    Ok(r)
}

impl Instance {
    /// The members `replconninfo` lists; whether that changed what a
    /// running instance should have (the caller rewrites and reloads).
    pub fn set_members(&self, peers: Vec<Peer>) -> bool {
        let mut m = self.members.lock().expect("members lock");
        if *m == peers {
            return false;
        }
        *m = peers;
        true
    }

    pub(super) fn opengauss_conf(&self, run_as: &RunAs) -> String {
        let peers = self.members.lock().expect("members lock").clone();
        render_opengauss_conf(&self.cfg, &self.name, run_as, &peers)
    }

    /// `gs_ctl ACTION -D <dir> -w -t <start_timeout>`.
    fn gs_ctl(&self, action: &str) -> tokio::process::Command {
        self.control("gs_ctl", action, &[])
    }

    /// `gs_ctl start -M primary | standby`: the role is the start's.
    pub(super) async fn gs_start(&self, run_as: &RunAs) -> Result<(), PgError> {
        let mode = match run_as {
            RunAs::Primary => "primary",
            RunAs::Replica { .. } | RunAs::ReadOnly => "standby",
        };
        let mut cmd = self.gs_ctl("start");
        cmd.args(["-M", mode]).arg("-l").arg(&self.cfg.log_file);
        self.run("gs_ctl start", cmd, self.pg_ctl_limit())
            .await
            .map_err(|e| self.with_log_tail(e))?;
        Ok(())
    }

    /// `gs_ctl failover`: openGauss's promotion of a standby.
    pub(super) async fn gs_failover(&self) -> Result<(), PgError> {
        self.run(
            "gs_ctl failover",
            self.gs_ctl("failover"),
            self.pg_ctl_limit(),
        )
        .await
        .map(|_| ())
    }

    /// `gs_ctl switchover` on this standby: openGauss's planned, no-loss
    /// role swap (runbook 001). The primary it streams from stops taking
    /// writes, sends the rest of its WAL and becomes a standby; then this
    /// one promotes.
    pub async fn gs_switchover(&self) -> Result<(), PgError> {
        let mut cmd = self.gs_ctl("switchover");
        cmd.args(["-m", "fast"]);
        self.run("gs_ctl switchover", cmd, self.pg_ctl_limit())
            .await
            .map(|_| ())
    }

    /// `gs_ctl query`: openGauss's own view of this instance's HA state.
    pub async fn gs_query(&self, timeout: Duration) -> Result<GsQuery, PgError> {
        let mut cmd = self.command("gs_ctl");
        cmd.arg("query").arg("-D").arg(&self.cfg.data_dir);
        let out = self.run("gs_ctl query", cmd, timeout).await?;
        Ok(parse_gs_ctl_query(&out))
    }

    /// openGauss's incremental build of this (stopped) member from
    /// `host:port`: its xlog is compared with the source's and only what
    /// differs is copied (`gs_rewind`). It finds the source through
    /// `replconninfo`, so the configuration names it first; `-q`: Baton
    /// starts the instance itself afterwards.
    pub(super) async fn gs_build_incremental(&self, host: &str, port: u16) -> Result<(), PgError> {
        let run_as = RunAs::Replica {
            host: host.to_string(),
            port,
            slot: String::new(),
        };
        write_owned(
            &self.cfg.data_dir.join("postgresql.conf"),
            &self.opengauss_conf(&run_as),
            self.owner,
        )?;
        let mut cmd = self.gs_ctl("build");
        cmd.args(["-b", "incremental", "-q"]);
        let limit = self.cfg.start_timeout.saturating_mul(4);
        self.run("gs_ctl build -b incremental", cmd, limit)
            .await
            .map(|_| ())
    }

    /// `gs_basebackup`'s arguments for a clone of `host:port` into
    /// `target` (9.2's options: no connection string).
    pub(super) fn gs_basebackup_args(&self, host: &str, port: u16, target: &Path) -> Vec<String> {
        vec![
            "-D".into(),
            target.display().to_string(),
            "-h".into(),
            host.into(),
            "-p".into(),
            port.to_string(),
            "-U".into(),
            self.cfg.replication.username.clone(),
            "-X".into(),
            "stream".into(),
            "-c".into(),
            "fast".into(),
            "-P".into(),
            "-v".into(),
        ]
    }

    /// Where this openGauss member's configuration points: the first
    /// `replconninfo` entry Baton wrote.
    pub fn opengauss_following(&self) -> String {
        std::fs::read_to_string(self.cfg.data_dir.join("postgresql.conf"))
            .ok()
            .and_then(|c| first_peer(&c))
            .map(|(h, p)| format!("host={h} port={p}"))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PgConfig {
        let text =
            "scope = \"og\"\nname = \"dn2\"\n[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n\
                    [api]\nlisten = \"127.0.0.1:8008\"\n[postgresql]\ndata_dir = \"/d/dn\"\n\
                    listen = \"10.0.0.2:26000\"\nflavor = \"opengauss\"\n\
                    [postgresql.parameters]\nmax_connections = \"200\"\n";
        crate::config::NodeConfig::parse(text, Path::new("/etc/baton/dn2.toml"), || {
            Ok("/opt/og/bin".into())
        })
        .unwrap()
        .postgresql
    }

    fn peers() -> Vec<Peer> {
        ["dn1", "dn2", "dn3"]
            .iter()
            .enumerate()
            .map(|(i, n)| Peer {
                name: n.to_string(),
                host: format!("10.0.0.{}", i + 1),
                port: 26000,
            })
            .collect()
    }

    #[test]
    fn every_member_is_a_replconninfo_entry_the_leader_first_on_a_standby() {
        let c = cfg();
        let standby = RunAs::Replica {
            host: "10.0.0.3".into(),
            port: 26000,
            slot: "dn2".into(),
        };
        let text = render_opengauss_conf(&c, "dn2", &standby, &peers());
        assert!(
            text.contains(
                "replconninfo1 = 'localhost=10.0.0.2 localport=26001 remotehost=10.0.0.3 remoteport=26001'"
            ),
            "{text}"
        );
        assert!(text.contains("replconninfo2 = 'localhost=10.0.0.2 localport=26001 remotehost=10.0.0.1 remoteport=26001'"), "{text}");
        assert!(!text.contains("replconninfo3"), "{text}");
        assert_eq!(first_peer(&text), Some(("10.0.0.3".into(), 26000)));
        // 9.2's names, none of PostgreSQL 12+'s.
        for want in [
            "unix_socket_directory = ",
            "wal_level = hot_standby",
            "wal_keep_segments = 32",
            "application_name = 'dn2'",
            "max_connections = '200'",
        ] {
            assert!(text.contains(want), "{want}: {text}");
        }
        for never in [
            "primary_conninfo",
            "wal_keep_size",
            "unix_socket_directories",
            "cluster_name",
        ] {
            assert!(!text.contains(never), "{never}: {text}");
        }
        // The primary lists every peer; a read-only start follows no one.
        let primary = render_opengauss_conf(&c, "dn2", &RunAs::Primary, &peers());
        assert_eq!(primary.matches("replconninfo").count(), 2, "{primary}");
        let alone = render_opengauss_conf(&c, "dn2", &RunAs::ReadOnly, &peers());
        assert!(!alone.contains("replconninfo"), "{alone}");
        assert_eq!(first_peer(&alone), None);
    }
}
