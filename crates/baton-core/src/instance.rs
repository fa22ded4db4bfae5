//! What the local instance is, as the agent observed it: the data
//! directory's facts, the running server's state, and the parsers of the
//! files and tool outputs they come from. Pure data; the code that reads
//! them from disk and from postgres lives in the binary crate.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use crate::lsn::Lsn;

/// What the data directory holds, as far as the agent may act on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DataDir {
    /// Missing or empty: free to initdb or clone into.
    Empty,
    /// A PostgreSQL data directory of the given cluster, with the timeline
    /// of its last checkpoint (or the live one when running).
    Valid {
        system_id: String,
        standby: bool,
        timeline: Option<u32>,
        /// Switch points of earlier timelines, from `pg_wal/<tl>.history`.
        history: Vec<(u32, Lsn)>,
        /// Shut down cleanly as a primary: its WAL ends with the shutdown
        /// checkpoint at `checkpoint` (known only when stopped).
        clean_shutdown: bool,
        checkpoint: Option<Lsn>,
    },
    /// Something the agent must not touch, and why.
    Unusable(Unusable),
}

/// Why a data directory is left alone: each leaves the member in `need
/// repair` until an operator acts, and nothing is deleted or overwritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unusable {
    Unreadable {
        path: PathBuf,
        error: String,
    },
    NotADirectory(PathBuf),
    /// Owned by another OS user than `postgresql.os_user`.
    WrongOwner {
        path: PathBuf,
        owner_uid: u32,
        user: String,
        uid: u32,
    },
    /// Not empty, and not a PostgreSQL data directory.
    NotPostgres(PathBuf),
    /// Not empty, and no GTM's working directory (no `gtm.conf`).
    NotGtm(PathBuf),
    NoSystemIdentifier,
    Controldata(String),
}

impl Unusable {
    pub fn code(&self) -> &'static str {
        match self {
            Unusable::Unreadable { .. } => "data_dir_unreadable",
            Unusable::NotADirectory(_) => "data_dir_not_a_directory",
            Unusable::WrongOwner { .. } => "data_dir_wrong_owner",
            Unusable::NotPostgres(_) => "data_dir_not_postgres",
            Unusable::NotGtm(_) => "data_dir_not_gtm",
            Unusable::NoSystemIdentifier => "data_dir_no_system_identifier",
            Unusable::Controldata(_) => "pg_controldata_failed",
        }
    }
}

impl fmt::Display for Unusable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Unusable::Unreadable { path, error } => {
                write!(f, "cannot read {}: {error}", path.display())
            }
            Unusable::NotADirectory(p) => write!(f, "{} is not a directory", p.display()),
            Unusable::WrongOwner {
                path,
                owner_uid,
                user,
                uid,
            } => write!(
                f,
                "{} is owned by uid {owner_uid}, not by {user} (uid {uid}); refusing to touch it",
                path.display()
            ),
            Unusable::NotPostgres(p) => write!(
                f,
                "{} is not empty and is not a PostgreSQL data directory (no PG_VERSION or \
                 global/pg_control); refusing to touch it",
                p.display()
            ),
            Unusable::NotGtm(p) => write!(
                f,
                "{} is not empty and is not a GTM's working directory (no gtm.conf); refusing \
                 to touch it",
                p.display()
            ),
            Unusable::NoSystemIdentifier => write!(f, "pg_controldata shows no system identifier"),
            Unusable::Controldata(e) => write!(f, "pg_controldata: {e}"),
        }
    }
}

/// The running instance, as one query showed it. `Default` is "nothing
/// known yet", which fixtures fill in field by field.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Running {
    pub in_recovery: bool,
    pub system_id: String,
    pub timeline: Option<u32>,
    /// Primary: current write LSN.
    pub wal_lsn: Option<Lsn>,
    pub receive_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    /// Replica: the furthest position known to be on `timeline`, when the
    /// instance said so itself (IDENTIFY_SYSTEM): received WAL may be on
    /// another timeline than the one replay is on.
    pub timeline_lsn: Option<Lsn>,
    /// Replica: whether the WAL receiver is streaming, and from where.
    pub receiver_streaming: bool,
    pub primary_conninfo: String,
    pub primary_slot_name: String,
    pub server_version: i32,
    /// Primary: physical replication slots and their restart LSN.
    pub slots: BTreeMap<String, Option<Lsn>>,
    /// Primary: connected standbys by application_name.
    pub replication: Vec<ReplicationRow>,
    /// `synchronous_standby_names` in force.
    pub synchronous_standby_names: String,
    /// Switch points of the timelines before `timeline` (filled by the agent
    /// from the history file, cached per timeline).
    pub history: Vec<(u32, Lsn)>,
    /// Greenplum coordinator (primary): the segments its catalog lists.
    pub segments: Vec<Segment>,
    /// The instance's own verdict that it cannot follow its upstream and
    /// needs a build, with its reason (openGauss's `gs_ctl query`:
    /// `db_state: Need repair`, `detail_information`). `None` for systems
    /// whose lineage Baton checks itself (timelines).
    pub needs_repair: Option<String>,
    /// Greenplum coordinator: why the segments' mirroring could not be
    /// read (`gp_stat_replication` dispatches to every segment, and a
    /// segment that does not answer must not stall the HA loop).
    pub mirroring_error: Option<String>,
}

/// One Greenplum segment instance, as `gp_segment_configuration` shows it:
/// Greenplum's own mirroring (FTS) manages these; Baton only reports them.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Segment {
    pub dbid: i32,
    pub content: i32,
    /// `p` primary, `m` mirror (now); `preferred_role` is what it was set up as.
    pub role: String,
    pub preferred_role: String,
    /// `s` in sync with its pair, `n` not in sync.
    pub mode: String,
    /// `u` up, `d` down.
    pub status: String,
    pub hostname: String,
    pub port: i32,
    /// A primary's replication to its mirror (`gp_stat_replication`),
    /// as last read; `None` for mirrors and before the first read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mirror: Option<SegmentMirror>,
}

/// One segment primary's WAL replication to its mirror, as
/// `gp_stat_replication` shows it: no sender state and no positions while
/// the mirror is not connected; `sync_error` says why (`walread`), `none`
/// when there is none.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SegmentMirror {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sent_lsn: Option<Lsn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_lsn: Option<Lsn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_lsn: Option<Lsn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_state: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_error: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReplicationRow {
    pub application_name: String,
    pub client_addr: Option<String>,
    pub state: String,
    pub sent_lsn: Option<Lsn>,
    pub flush_lsn: Option<Lsn>,
    pub replay_lsn: Option<Lsn>,
    pub sync_state: String,
    /// `replay_lag` in milliseconds: how long ago the standby replayed what
    /// was then the latest commit (NULL in postgres once it idles caught up).
    pub replay_lag_ms: Option<u64>,
}

/// A long copy under way (clone, rebuild), as `baton list` and the member
/// key show it.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Progress {
    /// `clone`, `rebuild` or `rewind`.
    pub job: String,
    pub done_bytes: u64,
    pub total_bytes: u64,
    pub percent: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_bytes_per_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_s: Option<u64>,
}

/// The `--progress` line of pg_basebackup (`  4567/123456 kB (3%), 0/1
/// tablespace ...`) and of pg_rewind (`  4567/123456 kB (3%) copied`):
/// kB done, kB in all, percent.
pub fn parse_copy_progress(line: &str) -> Option<(u64, u64, u8)> {
    let (counts, rest) = line.split_once(" kB (")?;
    let (done, total) = counts.trim().rsplit(' ').next()?.split_once('/')?;
    let pct = rest.split_once("%)")?.0;
    Some((
        done.parse().ok()?,
        total.parse().ok()?,
        pct.trim().parse().ok()?,
    ))
}

/// Physical slot name for a member: Patroni's rule (lower case, `[a-z0-9_]`).
pub fn slot_name(member: &str) -> String {
    member
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// `<timeline>.history`: one `(parent timeline, switch LSN, reason)` per line.
pub fn parse_history(text: &str) -> Vec<(u32, Lsn, String)> {
    text.lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let tl = f.next()?.trim().parse().ok()?;
            let lsn = f.next()?.trim().parse().ok()?;
            let reason = f.next().unwrap_or("").trim().to_string();
            Some((tl, lsn, reason))
        })
        .collect()
}

/// `pg_controldata` output as key/value pairs.
pub fn parse_controldata(out: &str) -> BTreeMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn history_file_parses() {
        let h = parse_history("1\t0/3000148\tno recovery target specified\n\n2\t0/5000000\tx\n");
        assert_eq!(
            h,
            vec![
                (
                    1,
                    Lsn(0x300_0148),
                    "no recovery target specified".to_string()
                ),
                (2, Lsn(0x500_0000), "x".to_string())
            ]
        );
    }

    #[test]
    fn copy_progress_lines_parse() {
        assert_eq!(
            parse_copy_progress("  120/2048 kB (5%) copied"),
            Some((120, 2048, 5))
        );
        assert_eq!(
            parse_copy_progress("  4567/123456 kB (3%), 0/1 tablespace (...a/base/1/1259)"),
            Some((4567, 123456, 3))
        );
        assert_eq!(
            parse_copy_progress("123456/123456 kB (100%), 1/1 tablespace"),
            Some((123456, 123456, 100))
        );
        assert_eq!(
            parse_copy_progress("pg_basebackup: write-ahead log end point: 0/2000100"),
            None
        );
    }

    #[test]
    fn slot_names_follow_patroni() {
        assert_eq!(slot_name("Node-1.a"), "node_1_a");
        assert_eq!(slot_name("node2"), "node2");
    }

    #[test]
    fn controldata_parses_key_values() {
        let out = "pg_control version number:            1300\n\
                   Database system identifier:           7301234567890123456\n\
                   Database cluster state:               shut down in recovery\n\
                   Latest checkpoint location:           0/3000060\n";
        let cd = parse_controldata(out);
        assert_eq!(cd["Database system identifier"], "7301234567890123456");
        assert_eq!(cd["Database cluster state"], "shut down in recovery");
        assert_eq!(cd["Latest checkpoint location"], "0/3000060");
    }
}
