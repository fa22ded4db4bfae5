//! Which PostgreSQL-derived system the instance is, and what differs for
//! it. A flavor changes the commands Baton runs and what it reads, never
//! the HA loop (DESIGN.md): every difference lives behind [`Instance`]'s
//! methods, which the agent calls the same way for all of them.
//!
//! Greenplum (a coordinator and its standby coordinator; the segments keep
//! Greenplum's own mirroring and FTS, Baton only reports them):
//! - the catalog (`gp_segment_configuration`) must list a standby
//!   coordinator before it streams: Baton registers this member with
//!   `gp_add_master_standby(host, address, datadir, port)` on the
//!   coordinator, in utility mode, before a clone (whose
//!   `pg_basebackup --target-gp-dbid` needs the dbid) and before every
//!   start as a standby (a rewound or switched-over old coordinator lost
//!   its row when the standby was promoted), and writes the dbid into the
//!   data directory's `internal.auto.conf`;
//! - `pg_rewind` of a coordinator connects with `options='-c gp_role=utility'`:
//!   without it, it was seen copying a segment's files;
//! - a plain `pg_ctl promote` of the standby updates the catalog itself
//!   (what `gpactivatestandby` relies on), so promotion is PostgreSQL's;
//! - Baton never initdb's a coordinator: `gpinitsystem` creates the
//!   cluster, segments included, and Baton adopts its data directory;
//! - the leader reads the segments from `gp_segment_configuration` for
//!   `baton list`.
//!
//! OpenTenBase (a coordinator or a datanode of one group, PostgreSQL 10
//! underneath; docs/flavors.md):
//! - its `pg_ctl start` refuses to run without `-Z coordinator` or `-Z
//!   datanode` (which it hands to the postmaster as `--coordinator` /
//!   `--datanode`); stop and promote take none;
//! - a standby is configured in `recovery.conf` (`standby_mode = 'on'`,
//!   `primary_conninfo`, `primary_slot_name`, `recovery_target_timeline`),
//!   and those names are not settings of postgresql.conf, where PostgreSQL
//!   10 refuses them; WAL kept for standbys is `wal_keep_segments`;
//! - PostgreSQL 10's `pg_rewind` refuses a target that was not shut down
//!   cleanly (it runs no crash recovery itself), so Baton first lets the
//!   old primary recover read-only and stops it ("shut down in recovery");
//! - Baton never initdb's a node: the cluster's tools create it (with its
//!   node name, GTM and pooler settings), and Baton adopts the data
//!   directory; routing after a promotion is `[routing]` (docs/routing.md).

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use baton_core::instance::{Running, Segment, SegmentMirror};
use baton_core::lsn::Lsn;

use super::conf::write_owned;
use super::{Instance, PgError};

/// `postgresql.flavor` in the node file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Flavor {
    #[default]
    Postgresql,
    Greenplum,
    /// An OpenTenBase coordinator or datanode (`postgresql.node_type`).
    OpenTenBase(NodeType),
    /// openGauss (`gs_ctl`, `replconninfo`, 9.2's SQL: `pg/gauss.rs`).
    OpenGauss,
}

/// What an OpenTenBase node is: its `pg_ctl -Z` word, or its GTM (run
/// by `gtm_ctl`, no PostgreSQL server: `pg/gtm.rs`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeType {
    Coordinator,
    Datanode,
    Gtm,
}

impl NodeType {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeType::Coordinator => "coordinator",
            NodeType::Datanode => "datanode",
            NodeType::Gtm => "gtm",
        }
    }
}

const FLAVORS: &str = "\"postgresql\", \"greenplum\", \"opentenbase\" or \"opengauss\"";

impl Flavor {
    /// The node file's `flavor` and `node_type`; the error names the key
    /// and says what is accepted.
    pub fn parse(s: &str, node_type: Option<&str>) -> Result<Flavor, (&'static str, String)> {
        let node_type = match node_type {
            None => None,
            Some("coordinator") => Some(NodeType::Coordinator),
            Some("datanode") => Some(NodeType::Datanode),
            Some("gtm") => Some(NodeType::Gtm),
            Some(other) => {
                return Err((
                    "node_type",
                    format!("{other:?}: expected \"coordinator\", \"datanode\" or \"gtm\""),
                ))
            }
        };
        let flavor = match s {
            "postgresql" => Flavor::Postgresql,
            "greenplum" => Flavor::Greenplum,
            "opentenbase" => match node_type {
                Some(t) => return Ok(Flavor::OpenTenBase(t)),
                None => {
                    return Err((
                        "node_type",
                        "missing: flavor \"opentenbase\" needs \"coordinator\", \"datanode\" \
                         (its pg_ctl start -Z) or \"gtm\""
                            .into(),
                    ))
                }
            },
            "opengauss" => Flavor::OpenGauss,
            other => {
                return Err((
                    "flavor",
                    format!("unknown flavor {other:?}: expected {FLAVORS}"),
                ))
            }
        };
        if node_type.is_some() {
            return Err((
                "node_type",
                format!("is for flavor \"opentenbase\" only, not {s:?}"),
            ));
        }
        Ok(flavor)
    }

    /// Whether Baton may create a new cluster of this flavor with initdb.
    pub fn runs_initdb(self) -> bool {
        self == Flavor::Postgresql
    }

    /// PostgreSQL 10 underneath: `recovery.conf`, `wal_keep_segments`, a
    /// pg_rewind that needs a cleanly stopped target.
    pub fn recovery_conf(self) -> bool {
        matches!(self, Flavor::OpenTenBase(_))
    }

    /// Every query needs a GTM's global timestamp (an OpenTenBase
    /// coordinator or datanode).
    pub fn has_gtm(self) -> bool {
        matches!(
            self,
            Flavor::OpenTenBase(NodeType::Coordinator | NodeType::Datanode)
        )
    }

    /// An OpenTenBase GTM: `gtm_ctl`, `gtm.conf`, no SQL (`pg/gtm.rs`).
    pub fn is_gtm(self) -> bool {
        self == Flavor::OpenTenBase(NodeType::Gtm)
    }

    /// Keeps no timelines Baton can follow; the instance itself says
    /// when it needs a build (openGauss: `pg/gauss.rs`).
    pub fn no_timelines(self) -> bool {
        matches!(self, Flavor::OpenGauss) || self.is_gtm()
    }

    /// The file whose presence makes postgres start as a standby (for
    /// openGauss, which takes the role from `gs_ctl start -M`, Baton's own
    /// record of it).
    pub fn standby_file(self) -> &'static str {
        if self.recovery_conf() {
            "recovery.conf"
        } else {
            "standby.signal"
        }
    }
}

/// Greenplum's session option for a connection to one instance alone,
/// without dispatching to the segments.
const UTILITY: &str = "-c gp_role=utility";

/// Where Greenplum keeps an instance's dbid (read at start; gpinitsystem
/// and `pg_basebackup --target-gp-dbid` write it).
const INTERNAL_CONF: &str = "internal.auto.conf";

impl Instance {
    /// Extra words for pg_rewind's `--source-server`.
    pub(super) fn rewind_source_options(&self) -> &'static str {
        match self.cfg.flavor {
            Flavor::Postgresql | Flavor::OpenTenBase(_) | Flavor::OpenGauss => "",
            Flavor::Greenplum => " options='-c gp_role=utility'",
        }
    }

    /// Refuses what this flavor never lets Baton do to an empty directory.
    pub(super) fn check_initdb_allowed(&self) -> Result<(), PgError> {
        match self.cfg.flavor {
            Flavor::Postgresql => Ok(()),
            Flavor::Greenplum => Err(PgError::Refused(format!(
                "postgresql.flavor = \"greenplum\": a coordinator is created by gpinitsystem \
                 (with its segments), never by baton; point postgresql.data_dir at the \
                 coordinator's data directory ({} is empty)",
                self.cfg.data_dir.display()
            ))),
            Flavor::OpenGauss => Err(PgError::Refused(format!(
                "postgresql.flavor = \"opengauss\": an instance is created by openGauss's own \
                 tools (gs_install, gs_initdb), never by baton; point postgresql.data_dir at its \
                 data directory ({} is empty)",
                self.cfg.data_dir.display()
            ))),
            Flavor::OpenTenBase(t) => Err(PgError::Refused(format!(
                "postgresql.flavor = \"opentenbase\": a {} is created by the cluster's own tools \
                 (with its node name, GTM and pooler settings), never by baton; point \
                 postgresql.data_dir at its data directory ({} is empty)",
                t.as_str(),
                self.cfg.data_dir.display()
            ))),
        }
    }

    /// Arguments `pg_ctl start` needs for this flavor.
    pub(super) fn start_args(&self) -> Vec<&'static str> {
        match self.cfg.flavor {
            Flavor::OpenTenBase(t) => vec!["-Z", t.as_str()],
            Flavor::Postgresql | Flavor::Greenplum | Flavor::OpenGauss => vec![],
        }
    }

    /// Before pg_rewind: PostgreSQL 10's refuses a target that was not shut
    /// down cleanly, so a crashed old primary first recovers, read-only and
    /// following no one, and is stopped again ("shut down in recovery").
    /// PostgreSQL 13+ does this itself.
    pub(super) async fn prepare_rewind_target(&self) -> Result<(), PgError> {
        if !self.cfg.flavor.recovery_conf() {
            return Ok(());
        }
        let cd = self.controldata().await?;
        let state = cd
            .get("Database cluster state")
            .map(String::as_str)
            .unwrap_or("");
        if matches!(state, "shut down" | "shut down in recovery") {
            return Ok(());
        }
        tracing::info!(member = %self.name, "data directory {state:?}: recovering it read-only before pg_rewind (PostgreSQL 10's needs a clean shutdown)");
        self.start(&super::RunAs::ReadOnly).await?;
        self.stop(super::StopMode::Fast).await
    }

    /// Runs `sql` with the flavor's `psql` on `host:port` in utility mode;
    /// the unaligned, tuples-only output.
    async fn utility_sql(&self, host: &str, port: u16, sql: &str) -> Result<String, PgError> {
        let mut cmd = self.command("psql");
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .arg("-h")
            .arg(host)
            .arg("-p")
            .arg(port.to_string())
            .arg("-U")
            .arg(&self.cfg.superuser.username)
            .args(["-d", "postgres", "-c", sql])
            .env("PGOPTIONS", UTILITY)
            .env("PGCONNECT_TIMEOUT", "5")
            .stdout(Stdio::piped());
        if let Some(pw) = &self.cfg.superuser.password {
            cmd.env("PGPASSWORD", pw);
        }
        self.run("psql (utility mode)", cmd, Duration::from_secs(30))
            .await
    }

    /// Makes the catalog of the coordinator at `host:port` list this
    /// member as the standby coordinator; its dbid. Idempotent: a row that
    /// already names this host, port and data directory is kept.
    pub(super) async fn register_standby(&self, host: &str, port: u16) -> Result<i16, PgError> {
        let me = self.cfg.connect_address;
        let datadir = self.cfg.data_dir.display().to_string();
        let rows = self
            .utility_sql(
                host,
                port,
                "SELECT dbid, hostname, address, port, datadir FROM gp_segment_configuration \
                 WHERE content = -1 AND role = 'm'",
            )
            .await?;
        if let Some(row) = rows.lines().find(|l| !l.trim().is_empty()) {
            let f: Vec<&str> = row.split('|').collect();
            let [dbid, hostname, address, p, dir] = f[..] else {
                return Err(PgError::Command {
                    what: "reading gp_segment_configuration".into(),
                    detail: format!("unexpected row {row:?}"),
                });
            };
            let ours = p == me.port().to_string()
                && dir == datadir
                && (address == me.ip().to_string() || hostname == me.ip().to_string());
            if ours {
                return dbid.parse().map_err(|_| PgError::Command {
                    what: "reading gp_segment_configuration".into(),
                    detail: format!("dbid {dbid:?} is not a number"),
                });
            }
            return Err(PgError::Refused(format!(
                "the coordinator's catalog already lists a standby coordinator (dbid {dbid}, \
                 {address}:{p} {dir}); Greenplum has one standby coordinator: remove that one \
                 (gpinitstandby -r) before this member can stream"
            )));
        }
        let ip = me.ip().to_string();
        let sql = format!(
            "SELECT gp_add_master_standby({}, {}, {}, {})",
            sql_literal(&ip),
            sql_literal(&ip),
            sql_literal(&datadir),
            me.port()
        );
        let out = self.utility_sql(host, port, &sql).await?;
        let dbid = out.trim().parse().map_err(|_| PgError::Command {
            what: "gp_add_master_standby".into(),
            detail: format!("returned {:?}, not a dbid", out.trim()),
        })?;
        tracing::info!(member = %self.name, dbid, "registered as the standby coordinator on {host}:{port}");
        Ok(dbid)
    }

    /// The dbid recorded in the data directory, if any.
    pub(super) fn local_dbid(&self) -> Option<i16> {
        let text = std::fs::read_to_string(self.cfg.data_dir.join(INTERNAL_CONF)).ok()?;
        text.lines().find_map(|l| {
            let (k, v) = l.split_once('=')?;
            (k.trim() == "gp_dbid").then(|| v.trim().trim_matches('\'').parse().ok())?
        })
    }

    /// Before this member starts as a standby of `host:port`: Greenplum
    /// needs it in the catalog, under the dbid its data directory carries.
    pub(super) async fn prepare_standby_start(&self, host: &str, port: u16) -> Result<(), PgError> {
        if self.cfg.flavor != Flavor::Greenplum {
            return Ok(());
        }
        let dbid = self.register_standby(host, port).await?;
        if self.local_dbid() != Some(dbid) {
            write_owned(
                &self.cfg.data_dir.join(INTERNAL_CONF),
                &format!("gp_dbid = {dbid}\n"),
                self.owner,
            )?;
        }
        Ok(())
    }

    /// Arguments pg_basebackup needs for this flavor when cloning from
    /// `host:port` (Greenplum: the dbid the catalog gave this member).
    pub(super) async fn basebackup_args(
        &self,
        host: &str,
        port: u16,
    ) -> Result<Vec<String>, PgError> {
        match self.cfg.flavor {
            Flavor::Postgresql | Flavor::OpenTenBase(_) | Flavor::OpenGauss => Ok(vec![]),
            Flavor::Greenplum => {
                let dbid = self.register_standby(host, port).await?;
                Ok(vec!["--target-gp-dbid".into(), dbid.to_string()])
            }
        }
    }
}

/// The segments as the coordinator's catalog shows them (Greenplum only;
/// empty for other flavors).
pub async fn query_segments(
    flavor: Flavor,
    client: &super::PgClient,
) -> Result<Vec<Segment>, PgError> {
    if flavor != Flavor::Greenplum {
        return Ok(vec![]);
    }
    let rows = client
        .query(
            "SELECT dbid::int, content::int, role::text, preferred_role::text, mode::text, \
                    status::text, hostname, port \
               FROM gp_segment_configuration WHERE content >= 0 ORDER BY content, role DESC",
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| Segment {
            dbid: r.get(0),
            content: r.get(1),
            role: r.get(2),
            preferred_role: r.get(3),
            mode: r.get(4),
            status: r.get(5),
            hostname: r.get(6),
            port: r.get(7),
            mirror: None,
        })
        .collect())
}

/// How often a Greenplum coordinator's leader reads its segments'
/// mirroring, and how long one read may take. `gp_stat_replication`
/// dispatches to every segment: a segment host that does not answer holds
/// the query until Greenplum's own connect timeout (minutes). So the read
/// runs beside the HA tick, never in it, on a connection of its own, at
/// most this often, cancelled by the server after `MIRRORING_TIMEOUT`.
const MIRRORING_EVERY: Duration = Duration::from_secs(10);
const MIRRORING_TIMEOUT: Duration = Duration::from_secs(5);

type MirroringRead = Result<BTreeMap<i32, SegmentMirror>, String>;

/// The last `gp_stat_replication` read, refreshed in the background.
#[derive(Default, Clone)]
pub struct MirroringReader {
    state: Arc<Mutex<MirroringState>>,
}

#[derive(Default)]
struct MirroringState {
    started: Option<Instant>,
    running: bool,
    last: Option<MirroringRead>,
}

impl MirroringReader {
    /// Puts the last read into `r` (each primary segment's `mirror`, or
    /// `mirroring_error`), and starts the next one when it is due. Never
    /// waits: the HA tick calls this.
    pub fn apply(&self, local: tokio_postgres::Config, r: &mut Running) {
        let mut st = self.state.lock().expect("mirroring lock");
        let due = !st.running && st.started.is_none_or(|t| t.elapsed() >= MIRRORING_EVERY);
        if due {
            st.running = true;
            st.started = Some(Instant::now());
            let state = self.state.clone();
            tokio::spawn(async move {
                // The server cancels the query; this bound covers a
                // connection that stops answering altogether.
                let bound = MIRRORING_TIMEOUT + Duration::from_secs(2);
                let read = tokio::time::timeout(bound, read_mirroring(local))
                    .await
                    .unwrap_or_else(|_| Err(format!("no answer in {} s", bound.as_secs())));
                if let Err(e) = &read {
                    tracing::warn!("reading the segments' mirroring (gp_stat_replication): {e}");
                }
                let mut st = state.lock().expect("mirroring lock");
                st.running = false;
                st.last = Some(read);
            });
        }
        match &st.last {
            None => {}
            Some(Err(e)) => r.mirroring_error = Some(e.clone()),
            Some(Ok(rows)) => {
                for s in r.segments.iter_mut().filter(|s| s.role == "p") {
                    s.mirror = rows.get(&s.content).cloned();
                }
            }
        }
    }
}

/// One read of the segments' replication to their mirrors, on a
/// connection of its own whose statements the server cancels after
/// `MIRRORING_TIMEOUT`.
async fn read_mirroring(mut cfg: tokio_postgres::Config) -> MirroringRead {
    cfg.options(format!(
        "-c statement_timeout={}",
        MIRRORING_TIMEOUT.as_millis()
    ))
    .application_name("baton mirroring");
    let (client, conn) = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| PgError::from(e).to_string())?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let rows = client
        .query(
            "SELECT gp_segment_id::int, state, sent_lsn::text, flush_lsn::text, \
                    replay_lsn::text, sync_state, sync_error \
               FROM gp_stat_replication WHERE gp_segment_id >= 0",
            &[],
        )
        .await
        .map_err(|e| PgError::from(e).to_string())?;
    let lsn = |v: Option<String>| v.and_then(|t| t.parse::<Lsn>().ok());
    Ok(rows
        .iter()
        .map(|r| {
            (
                r.get::<_, i32>(0),
                SegmentMirror {
                    state: r.get(1),
                    sent_lsn: lsn(r.get(2)),
                    flush_lsn: lsn(r.get(3)),
                    replay_lsn: lsn(r.get(4)),
                    sync_state: r.get(5),
                    sync_error: r.get(6),
                },
            )
        })
        .collect())
}

fn sql_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flavors_parse_with_a_clear_refusal() {
        assert_eq!(Flavor::parse("postgresql", None), Ok(Flavor::Postgresql));
        assert_eq!(Flavor::parse("greenplum", None), Ok(Flavor::Greenplum));
        assert_eq!(
            Flavor::parse("opentenbase", Some("datanode")),
            Ok(Flavor::OpenTenBase(NodeType::Datanode))
        );
        let (key, e) = Flavor::parse("opentenbase", None).unwrap_err();
        assert_eq!(key, "node_type");
        assert!(e.contains("needs \"coordinator\", \"datanode\""), "{e}");
        assert_eq!(
            Flavor::parse("opentenbase", Some("gtm")),
            Ok(Flavor::OpenTenBase(NodeType::Gtm))
        );
        let (key, e) = Flavor::parse("opentenbase", Some("gtm_proxy")).unwrap_err();
        assert_eq!(key, "node_type");
        assert!(e.contains("\"gtm_proxy\""), "{e}");
        let (key, _) = Flavor::parse("postgresql", Some("datanode")).unwrap_err();
        assert_eq!(key, "node_type");
        assert_eq!(Flavor::parse("opengauss", None), Ok(Flavor::OpenGauss));
        let (_, e) = Flavor::parse("oracle", None).unwrap_err();
        assert!(e.contains("unknown flavor \"oracle\""), "{e}");
        assert_eq!(sql_literal("it's"), "'it''s'");
    }
}
