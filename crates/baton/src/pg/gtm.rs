//! An OpenTenBase GTM (global transaction manager) as a member of its own
//! HA group (`postgresql.node_type = "gtm"`). The GTM is no PostgreSQL
//! server: it runs from a working directory holding `gtm.conf` and
//! `gtm.pid`, is driven by `gtm_ctl` and speaks no SQL. What differs, all
//! behind [`Instance`]'s methods so that the HA loop stays the same:
//! - the role is `startup = ACT | STANDBY` in `gtm.conf` (a standby also
//!   names `active_host`, `active_port`), not a signal file; Baton owns
//!   those keys and `listen_addresses`, `port`, and keeps every other line;
//! - a standby cannot start without a live active: it connects at start
//!   and takes the active's state (gxid, timestamps, sequences) whatever it
//!   had, so a former active rejoins by starting as a standby: there is
//!   nothing to rewind, and no read-only start with no upstream either
//!   (the HA rules know: `Observation::standby_needs_upstream`);
//! - `gtm_ctl promote` only signals: the active is confirmed by `gtm_ctl
//!   status` saying `current node [primary]`;
//! - status, positions and standbys come from `gtm_ctl status`
//!   (`baton_core::gtm`); a GTM has no system identifier, so its group's
//!   `initialize` key holds [`GTM_SYSTEM_ID`];
//! - fencing reads `gtm.pid` (`baton_fence::PID_FILES`).
//!
//! Routing after a GTM promotion (`ALTER GTM NODE ... WITH (HOST, PORT)` on
//! every coordinator and datanode) is `[routing]` with `groups`, as for
//! the other groups (docs/flavors.md).

use std::path::PathBuf;
use std::time::{Duration, Instant};

use baton_core::gtm::{parse_status, GtmStatus};
use baton_core::instance::{DataDir, Unusable};

use super::conf::write_owned;
use super::{Instance, PgError, RunAs};
use crate::config::PgConfig;

/// What a GTM group's `initialize` key holds: a GTM has no identifier of
/// its own, and a standby takes its active's state whatever it held, so
/// a directory from another cluster cannot mix into this one.
pub const GTM_SYSTEM_ID: &str = "opentenbase-gtm";

/// The `gtm.conf` settings Baton writes; every other line is kept.
const OWNED: [&str; 5] = [
    "listen_addresses",
    "port",
    "startup",
    "active_host",
    "active_port",
];

const CONF: &str = "gtm.conf";

/// `gtm.conf` for `run_as`: the lines of `old` that set nothing Baton
/// owns or the node file sets (`postgresql.parameters`), then those.
pub fn render_gtm_conf(old: &str, cfg: &PgConfig, run_as: &RunAs) -> String {
    let key = |line: &str| -> Option<String> {
        let l = line.split('#').next()?.trim();
        let k = l.split(['=', ' ', '\t']).next()?.trim();
        (!k.is_empty()).then(|| k.to_ascii_lowercase())
    };
    let mut out: String = old
        .lines()
        .filter(|l| {
            key(l).is_none_or(|k| !OWNED.contains(&k.as_str()) && !cfg.parameters.contains_key(&k))
        })
        .filter(|l| *l != "# Baton: the settings below are rewritten before every start")
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str("# Baton: the settings below are rewritten before every start\n");
    for (k, v) in &cfg.parameters {
        out.push_str(&format!("{k} = {}\n", quote(v)));
    }
    out.push_str(&format!(
        "listen_addresses = {}\nport = {}\n",
        quote(&cfg.listen.ip().to_string()),
        cfg.listen.port()
    ));
    match run_as {
        RunAs::Replica { host, port, .. } => out.push_str(&format!(
            "startup = STANDBY\nactive_host = {}\nactive_port = {port}\n",
            quote(host)
        )),
        RunAs::Primary | RunAs::ReadOnly => out.push_str("startup = ACT\n"),
    }
    out
}

fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\'', "''"))
}

/// The `key = value` settings of a `gtm.conf` (the last one wins, as the
/// GTM reads it: `gtm_ctl promote` appends `startup = ACT`).
fn settings(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter_map(|l| {
            let (k, v) = l.split('#').next()?.split_once('=')?;
            Some((
                k.trim().to_ascii_lowercase(),
                v.trim().trim_matches(['\'', '"']).to_string(),
            ))
        })
        .collect()
}

impl Instance {
    fn gtm_conf_path(&self) -> PathBuf {
        self.cfg.data_dir.join(CONF)
    }

    /// `gtm_ctl ACTION -Z gtm -D <dir>`; never killed with our handle, as
    /// for pg_ctl.
    fn gtm_ctl(&self, action: &str) -> tokio::process::Command {
        let mut cmd = self.command("gtm_ctl");
        cmd.arg(action)
            .args(["-Z", "gtm", "-D"])
            .arg(&self.cfg.data_dir);
        cmd.kill_on_drop(false);
        cmd
    }

    /// A non-empty working directory: a GTM's when it has `gtm.conf`.
    pub(super) fn gtm_inspect(&self) -> DataDir {
        let Ok(text) = std::fs::read_to_string(self.gtm_conf_path()) else {
            return DataDir::Unusable(Unusable::NotGtm(self.cfg.data_dir.clone()));
        };
        DataDir::Valid {
            system_id: GTM_SYSTEM_ID.into(),
            standby: settings(&text)
                .get("startup")
                .is_some_and(|s| s.eq_ignore_ascii_case("standby")),
            // No timelines: a former active rejoins by starting as a
            // standby, which takes the active's state (no rewind).
            timeline: None,
            history: vec![],
            clean_shutdown: false,
            checkpoint: None,
        }
    }

    pub(super) async fn gtm_start(&self, run_as: &RunAs) -> Result<(), PgError> {
        if *run_as == RunAs::ReadOnly {
            return Err(PgError::Refused(
                "a GTM has no read-only mode: a standby starts only with a live active to \
                 follow"
                    .into(),
            ));
        }
        self.prepare_log_file()?;
        self.clear_stale_gtm_pid()?;
        let old = std::fs::read_to_string(self.gtm_conf_path()).unwrap_or_default();
        write_owned(
            &self.gtm_conf_path(),
            &render_gtm_conf(&old, &self.cfg, run_as),
            self.owner,
        )?;
        let mut cmd = self.control("gtm_ctl", "start", &["-Z", "gtm"]);
        cmd.arg("-l").arg(&self.cfg.log_file);
        self.run("gtm_ctl start", cmd, self.pg_ctl_limit())
            .await
            .map_err(|e| self.with_log_tail(e))?;
        Ok(())
    }

    /// A killed GTM leaves `gtm.pid` behind, and the GTM refuses to start
    /// while the PID in it exists, which a zombie does until it is reaped
    /// (slow on some hosts: `clear_stale_lock` has the same for postgres).
    /// The file goes once it names no live process.
    fn clear_stale_gtm_pid(&self) -> Result<(), PgError> {
        let path = self.cfg.data_dir.join("gtm.pid");
        if !path.exists() || self.postmaster_pid().is_some() {
            return Ok(());
        }
        match std::fs::remove_file(&path) {
            Ok(()) => {
                tracing::info!(member = %self.name, "removed gtm.pid of a GTM that is gone");
                Ok(())
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(PgError::Io {
                what: format!("removing stale {}", path.display()),
                source: e,
            }),
        }
    }

    /// `gtm_ctl promote` sends a signal and returns: done once the GTM
    /// itself says it is the active one.
    pub(super) async fn gtm_promote(&self) -> Result<(), PgError> {
        self.run(
            "gtm_ctl promote",
            self.gtm_ctl("promote"),
            Duration::from_secs(10),
        )
        .await?;
        let deadline = Instant::now() + self.cfg.start_timeout;
        loop {
            let last = match self.gtm_status(Duration::from_secs(2)).await {
                Ok(s) if s.primary => return Ok(()),
                Ok(_) => "still a standby".to_string(),
                Err(e) => e.to_string(),
            };
            if Instant::now() >= deadline {
                return Err(PgError::Command {
                    what: "GTM promotion".into(),
                    detail: format!("not active after {:?}: {last}", self.cfg.start_timeout),
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// This member's GTM, as `gtm_ctl status` with its directory shows it.
    pub async fn gtm_status(&self, timeout: Duration) -> Result<GtmStatus, PgError> {
        let cmd = self.gtm_ctl("status");
        let host = self.cfg.listen.ip().to_string();
        self.status_of(
            cmd_target(cmd, &host, self.cfg.listen.port(), timeout),
            timeout,
        )
        .await
    }

    /// Another member's GTM, asked over the network.
    pub async fn gtm_status_of(
        &self,
        host: &str,
        port: u16,
        timeout: Duration,
    ) -> Result<GtmStatus, PgError> {
        let mut cmd = self.command("gtm_ctl");
        cmd.args(["status", "-Z", "gtm"]);
        self.status_of(cmd_target(cmd, host, port, timeout), timeout)
            .await
    }

    async fn status_of(
        &self,
        cmd: tokio::process::Command,
        timeout: Duration,
    ) -> Result<GtmStatus, PgError> {
        let out = self.run("gtm_ctl status", cmd, timeout).await?;
        parse_status(&out).ok_or_else(|| PgError::Command {
            what: "gtm_ctl status".into(),
            detail: format!("no running GTM in its answer: {}", out.trim()),
        })
    }

    /// A new standby's working directory: its `gtm.conf`, following
    /// `host:port`. Nothing is copied; the standby takes the active's state
    /// when it starts.
    pub(super) fn gtm_clone(&self, host: &str, port: u16) -> Result<(), PgError> {
        self.prepare_dir(&self.cfg.data_dir)?;
        let run_as = RunAs::Replica {
            host: host.into(),
            port,
            slot: String::new(),
        };
        let old = std::fs::read_to_string(self.gtm_conf_path()).unwrap_or_default();
        write_owned(
            &self.gtm_conf_path(),
            &render_gtm_conf(&old, &self.cfg, &run_as),
            self.owner,
        )?;
        tracing::info!(member = %self.name, "GTM standby configured to follow {host}:{port}; it takes the active's state when it starts");
        Ok(())
    }

    /// A rebuild keeps the operator's `gtm.conf` lines (its node name,
    /// log and xlog settings) from the directory moved aside.
    pub(super) fn gtm_keep_conf(&self, aside: &std::path::Path) -> Result<(), PgError> {
        match std::fs::read_to_string(aside.join(CONF)) {
            Ok(text) => write_owned(&self.gtm_conf_path(), &text, self.owner),
            Err(_) => Ok(()),
        }
    }

    /// What the HA loop reads of a running GTM: its role, its xlog
    /// position (written on the active, received on a standby), the
    /// standbys an active reports, and the active a standby follows.
    /// `slots` are the names the loop asked for (`create_slot`): a GTM
    /// keeps xlog for its standbys itself, so they are only recorded.
    pub fn gtm_running(
        &self,
        s: &GtmStatus,
        slots: &std::collections::BTreeSet<String>,
    ) -> baton_core::instance::Running {
        use baton_core::instance::{slot_name, ReplicationRow, Running};
        Running {
            in_recovery: !s.primary,
            system_id: GTM_SYSTEM_ID.into(),
            wal_lsn: s.primary.then_some(s.xlog),
            receive_lsn: (!s.primary).then_some(s.xlog),
            replay_lsn: (!s.primary).then_some(s.xlog),
            // A standby runs only once it reached its active, and follows it.
            receiver_streaming: !s.primary,
            primary_conninfo: if s.primary {
                String::new()
            } else {
                self.gtm_following()
            },
            primary_slot_name: if s.primary {
                String::new()
            } else {
                slot_name(&self.name)
            },
            slots: slots.iter().map(|n| (n.clone(), None)).collect(),
            replication: s
                .standbys
                .iter()
                .map(|b| ReplicationRow {
                    application_name: b.name.clone(),
                    client_addr: None,
                    state: "streaming".into(),
                    sent_lsn: Some(b.xlog),
                    flush_lsn: Some(b.xlog),
                    replay_lsn: Some(b.xlog),
                    sync_state: if b.sync { "sync" } else { "async" }.into(),
                    replay_lag_ms: None,
                })
                .collect(),
            ..Running::default()
        }
    }

    /// The active this GTM's `gtm.conf` follows, as a conninfo the HA
    /// rules compare with the leader's address.
    pub fn gtm_following(&self) -> String {
        let s = std::fs::read_to_string(self.gtm_conf_path())
            .map(|t| settings(&t))
            .unwrap_or_default();
        match (s.get("active_host"), s.get("active_port")) {
            (Some(h), Some(p)) => format!("host={h} port={p}"),
            _ => String::new(),
        }
    }
}

/// `-H host -P port -t secs` of a `gtm_ctl status` call.
fn cmd_target(
    mut cmd: tokio::process::Command,
    host: &str,
    port: u16,
    timeout: Duration,
) -> tokio::process::Command {
    cmd.arg("-H")
        .arg(host)
        .arg("-P")
        .arg(port.to_string())
        .args(["-t", &timeout.as_secs().max(1).to_string()]);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> PgConfig {
        let text = "scope = \"otb\"\nname = \"gtm1\"\ngroup = 0\n\
                    [etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n\
                    [api]\nlisten = \"127.0.0.1:8008\"\n[postgresql]\ndata_dir = \"/d/gtm\"\n\
                    listen = \"127.0.0.1:6001\"\nflavor = \"opentenbase\"\nnode_type = \"gtm\"\n\
                    [postgresql.parameters]\nnodename = \"gtm\"\n";
        crate::config::NodeConfig::parse(text, std::path::Path::new("/etc/baton/gtm1.toml"), || {
            Ok("/opt/otb/bin".into())
        })
        .unwrap()
        .postgresql
    }

    #[test]
    fn gtm_conf_keeps_the_operators_lines_and_owns_the_role() {
        let initgtm = "nodename = 'gtm'\t# set by initgtm\nport = 6666\nlog_file = 'gtm.log'\n\
                       startup = ACT\nstartup = ACT\n";
        let c = cfg();
        let standby = RunAs::Replica {
            host: "10.0.0.1".into(),
            port: 7777,
            slot: String::new(),
        };
        let text = render_gtm_conf(initgtm, &c, &standby);
        assert!(text.contains("log_file = 'gtm.log'\n"), "{text}");
        assert!(!text.contains("6666"), "{text}");
        assert_eq!(text.matches("nodename").count(), 1, "{text}");
        let s = settings(&text);
        assert_eq!(s["startup"], "STANDBY");
        assert_eq!(s["active_host"], "10.0.0.1");
        assert_eq!(s["active_port"], "7777");
        assert_eq!(s["port"], c.listen.port().to_string());
        // Rendered again (the next start), as the active: nothing piles up.
        let again = render_gtm_conf(&text, &c, &RunAs::Primary);
        let s = settings(&again);
        assert_eq!(s["startup"], "ACT");
        assert!(!s.contains_key("active_host"), "{again}");
        assert_eq!(again.matches("# Baton").count(), 1, "{again}");
        assert_eq!(render_gtm_conf(&again, &c, &RunAs::Primary), again);
    }
}
