//! The configuration files Baton owns in the data directory, rendered from
//! the node file and rewritten before every start.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use super::{PgError, RunAs};
use crate::config::PgConfig;

pub(super) fn quote_conninfo(v: &str) -> String {
    if !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-/".contains(c))
    {
        v.to_string()
    } else {
        format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
    }
}

pub(super) fn quote_setting(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// The `postgresql.conf` Baton owns. User parameters come first; the
/// settings HA depends on are appended last so they always win.
/// How member `name` connects to `host:port` for replication (the password,
/// when there is one, is added by the caller: in `primary_conninfo`, or
/// through the environment for pg_basebackup).
pub(super) fn replication_conninfo(cfg: &PgConfig, name: &str, host: &str, port: u16) -> String {
    format!(
        "host={} port={port} user={} application_name={} connect_timeout=5",
        quote_conninfo(host),
        quote_conninfo(&cfg.replication.username),
        quote_conninfo(name)
    )
}

pub fn render_postgresql_conf(cfg: &PgConfig, name: &str, run_as: &RunAs) -> String {
    let mut s = String::from(
        "# Written by baton before every start; edits here are overwritten.\n\
         # Set parameters in the node config ([postgresql.parameters]).\n",
    );
    let pg10 = cfg.flavor.recovery_conf();
    let mut params: BTreeMap<&str, String> = BTreeMap::new();
    if pg10 {
        // PostgreSQL 10 counts kept WAL in 16 MB segments: the same 128 MB.
        params.insert("wal_keep_segments", "8".into());
    } else {
        params.insert("wal_keep_size", "'128MB'".into());
    }
    // Each member streams through a slot of its own, and a clone or a
    // rebuild takes a temporary slot and two senders more: at 10 each, a
    // cluster of 11 members could never clone again (`bench replicas`:
    // "all replication slots are in use"). 32 leaves room for about 30
    // members; a sender costs a process only while it runs.
    params.insert("max_wal_senders", "32".into());
    params.insert("max_replication_slots", "32".into());
    params.insert("hot_standby_feedback", "on".into());
    // A replica re-pointed at a new leader retries its connection this often
    // (default 5 s, most of a failover's budget).
    params.insert("wal_retrieve_retry_interval", "'500ms'".into());
    for (k, v) in &cfg.parameters {
        params.insert(k, quote_setting(v));
    }
    params.insert(
        "listen_addresses",
        quote_setting(&cfg.listen.ip().to_string()),
    );
    params.insert("port", cfg.listen.port().to_string());
    params.insert(
        "unix_socket_directories",
        quote_setting(&cfg.socket_dir.display().to_string()),
    );
    params.insert("wal_level", "replica".into());
    params.insert("hot_standby", "on".into());
    params.insert("wal_log_hints", "on".into());
    params.insert("cluster_name", quote_setting(name));
    // PostgreSQL 10 reads these from recovery.conf and refuses them here.
    if !pg10 {
        for (k, v) in recovery_settings(cfg, name, run_as) {
            params.insert(k, v);
        }
    }
    for (k, v) in params {
        writeln!(s, "{k} = {v}").expect("string write");
    }
    s
}

/// Where a standby streams from, as settings (postgresql.conf from
/// PostgreSQL 12 on, recovery.conf before).
fn recovery_settings(cfg: &PgConfig, name: &str, run_as: &RunAs) -> Vec<(&'static str, String)> {
    match run_as {
        RunAs::Primary | RunAs::ReadOnly => vec![
            ("primary_conninfo", "''".into()),
            ("primary_slot_name", "''".into()),
            ("recovery_target_timeline", "'latest'".into()),
        ],
        RunAs::Replica { host, port, slot } => {
            let mut ci = replication_conninfo(cfg, name, host, *port);
            if let Some(pw) = &cfg.replication.password {
                write!(ci, " password={}", quote_conninfo(pw)).expect("string write");
            }
            vec![
                ("primary_conninfo", quote_setting(&ci)),
                ("primary_slot_name", quote_setting(slot)),
                ("recovery_target_timeline", "'latest'".into()),
            ]
        }
    }
}

/// PostgreSQL 10's `recovery.conf` for a standby (a replica, or a
/// read-only start that follows no one).
pub fn render_recovery_conf(cfg: &PgConfig, name: &str, run_as: &RunAs) -> String {
    let mut s = String::from("# Written by baton before every start as a standby.\n");
    s.push_str("standby_mode = 'on'\n");
    for (k, v) in recovery_settings(cfg, name, run_as) {
        if v != "''" {
            writeln!(s, "{k} = {v}").expect("string write");
        }
    }
    s
}

pub fn render_pg_hba(cfg: &PgConfig) -> String {
    let mut s = String::from(
        "# Written by baton; set [postgresql] pg_hba in the node config to replace.\n",
    );
    if !cfg.pg_hba.is_empty() {
        for l in &cfg.pg_hba {
            s.push_str(l);
            s.push('\n');
        }
        return s;
    }
    let repl = &cfg.replication.username;
    // openGauss names the SCRAM method `sha256`.
    let scram = if cfg.flavor == super::Flavor::OpenGauss {
        "sha256"
    } else {
        "scram-sha-256"
    };
    // With passwords configured, any address may connect with scram; without
    // them, only loopback is trusted, which suits one-host clusters only.
    // `all` does not match replication connections: the agent asks its own
    // standby for its replay timeline over one (IDENTIFY_SYSTEM).
    s.push_str("local replication all trust\n");
    if cfg.superuser.password.is_some() && cfg.replication.password.is_some() {
        s.push_str("local all all trust\n");
        writeln!(s, "host replication {repl} all {scram}").expect("w");
        writeln!(s, "host all all all {scram}").expect("w");
    } else {
        s.push_str("local all all trust\n");
        writeln!(s, "host replication {repl} 127.0.0.0/8 trust").expect("w");
        s.push_str("host all all 127.0.0.0/8 trust\n");
        writeln!(s, "host replication {repl} ::1/128 trust").expect("w");
        s.push_str("host all all ::1/128 trust\n");
    }
    s
}

/// Settings the leader keeps in its `postgresql.auto.conf` (`ALTER
/// SYSTEM`) that a copy must not inherit: pg_basebackup and pg_rewind
/// bring the source's file along, and a replica promoted later would
/// enforce the old leader's synchronous standbys (perhaps naming itself,
/// which no commit ever satisfies) until its first leader tick.
const LEADER_ONLY: &[&str] = &["synchronous_standby_names"];

/// Drops [`LEADER_ONLY`] settings from a copied data directory's
/// `postgresql.auto.conf`, in place (owner and mode stay).
pub(super) fn forget_leader_settings(data_dir: &Path) -> Result<(), PgError> {
    let path = data_dir.join("postgresql.auto.conf");
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(PgError::io(format!("reading {}", path.display()), e)),
    };
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| {
            let name = l.split('=').next().unwrap_or("").trim();
            !LEADER_ONLY.iter().any(|k| name.eq_ignore_ascii_case(k))
        })
        .collect();
    if kept.len() == text.lines().count() {
        return Ok(());
    }
    let mut out = kept.join("\n");
    out.push('\n');
    std::fs::write(&path, out).map_err(|e| PgError::io(format!("writing {}", path.display()), e))
}

pub(super) fn write_owned(
    path: &Path,
    contents: &str,
    owner: Option<(u32, u32)>,
) -> Result<(), PgError> {
    let tmp = path.with_extension("baton-tmp");
    std::fs::write(&tmp, contents)
        .map_err(|e| PgError::io(format!("writing {}", tmp.display()), e))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&tmp, Some(uid), Some(gid))
            .map_err(|e| PgError::io(format!("chown {}", tmp.display()), e))?;
    }
    std::fs::rename(&tmp, path)
        .map_err(|e| PgError::io(format!("renaming to {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_forget_the_leaders_synchronous_standbys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("postgresql.auto.conf");
        std::fs::write(
            &path,
            "# Do not edit this file manually!\nwork_mem = '8MB'\nsynchronous_standby_names = 'FIRST 1 (\"n2\")'\n",
        )
        .unwrap();
        forget_leader_settings(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_to_string(&path).unwrap(),
            "# Do not edit this file manually!\nwork_mem = '8MB'\n"
        );
        // No file: nothing to do.
        forget_leader_settings(&dir.path().join("none")).unwrap();
    }

    #[test]
    fn conninfo_values_are_quoted_when_needed() {
        assert_eq!(quote_conninfo("127.0.0.1"), "127.0.0.1");
        assert_eq!(quote_conninfo("a b"), "'a b'");
        assert_eq!(quote_conninfo("it's"), "'it\\'s'");
        assert_eq!(quote_conninfo(""), "''");
    }

    fn pg_config(flavor: &str) -> PgConfig {
        let text = format!(
            "scope = \"demo\"\nname = \"dn1\"\n[etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n\
             [api]\nlisten = \"127.0.0.1:8008\"\n[postgresql]\ndata_dir = \"/d/dn1\"\n\
             listen = \"127.0.0.1:5432\"\n{flavor}\n"
        );
        crate::config::NodeConfig::parse(&text, Path::new("/etc/baton/dn1.toml"), || {
            Ok("/usr/lib/postgresql/15/bin".into())
        })
        .unwrap()
        .postgresql
    }

    #[test]
    fn postgresql_10_standbys_are_configured_in_recovery_conf() {
        let replica = RunAs::Replica {
            host: "10.0.0.1".into(),
            port: 5432,
            slot: "dn1".into(),
        };
        let pg15 = pg_config("");
        let conf = render_postgresql_conf(&pg15, "dn1", &replica);
        assert!(
            conf.contains("primary_conninfo = 'host=10.0.0.1 port=5432"),
            "{conf}"
        );
        assert!(conf.contains("wal_keep_size = '128MB'"), "{conf}");

        let otb = pg_config("flavor = \"opentenbase\"\nnode_type = \"datanode\"");
        let conf = render_postgresql_conf(&otb, "dn1", &replica);
        assert!(!conf.contains("primary_conninfo"), "{conf}");
        assert!(!conf.contains("recovery_target_timeline"), "{conf}");
        assert!(!conf.contains("wal_keep_size"), "{conf}");
        assert!(conf.contains("wal_keep_segments = 8"), "{conf}");
        let rec = render_recovery_conf(&otb, "dn1", &replica);
        assert!(rec.contains("standby_mode = 'on'\n"), "{rec}");
        assert!(
            rec.contains(
                "primary_conninfo = 'host=10.0.0.1 port=5432 user=replicator application_name=dn1"
            ),
            "{rec}"
        );
        assert!(rec.contains("primary_slot_name = 'dn1'\n"), "{rec}");
        assert!(
            rec.contains("recovery_target_timeline = 'latest'\n"),
            "{rec}"
        );
        // Read-only: a standby that follows no one.
        let rec = render_recovery_conf(&otb, "dn1", &RunAs::ReadOnly);
        assert!(rec.contains("standby_mode = 'on'\n"), "{rec}");
        assert!(!rec.contains("primary_conninfo"), "{rec}");
    }
}
