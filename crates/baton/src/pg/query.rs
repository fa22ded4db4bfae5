//! SQL against the local instance: the status query the loop observes with,
//! slots, the replication role, timeline history.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use baton_core::instance::{parse_history, ReplicationRow, Running};
use baton_core::lsn::Lsn;

use super::{conf, Instance, PgError};
use crate::config::PgConfig;

impl Instance {
    pub fn local_conn_config(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        c.host_path(&self.cfg.socket_dir)
            .port(self.cfg.listen.port())
            .user(&self.cfg.superuser.username)
            .dbname("postgres")
            .application_name("baton")
            .connect_timeout(Duration::from_secs(2));
        if let Some(pw) = &self.cfg.superuser.password {
            c.password(pw);
        }
        c
    }

    /// The timeline recovery replays on and the furthest position known on
    /// it, from IDENTIFY_SYSTEM over a replication connection to this
    /// instance (what a cascading standby tells its own standbys). SQL
    /// shows the replay timeline only through the WAL receiver; once that
    /// is gone (the leader died) the last restartpoint's timeline can be
    /// minutes old, and a replica already on the new leader's timeline
    /// would look as if its WAL went past the fork, or stand in an election
    /// with a timeline it left long ago.
    ///
    /// Asks over the socket as the superuser (`local replication` in
    /// Baton's pg_hba.conf), then over TCP at the connect address as the
    /// replication user: an operator's pg_hba.conf must admit that user
    /// from the members anyway, or no one could stream from this one. The
    /// way that answered last is tried first.
    pub async fn replay_position(&self, timeout: Duration) -> Result<(u32, Lsn), PgError> {
        let cfg = &self.cfg;
        // (over TCP, target, password)
        let socket = (
            false,
            format!(
                "host={} port={} user={}",
                conf::quote_conninfo(&cfg.socket_dir.to_string_lossy()),
                cfg.listen.port(),
                conf::quote_conninfo(&cfg.superuser.username),
            ),
            &cfg.superuser.password,
        );
        let tcp = (
            true,
            format!(
                "host={} port={} user={}",
                conf::quote_conninfo(&cfg.connect_address.ip().to_string()),
                cfg.connect_address.port(),
                conf::quote_conninfo(&cfg.replication.username),
            ),
            &cfg.replication.password,
        );
        use std::sync::atomic::Ordering::Relaxed;
        let ways = if self.replay_via_tcp.load(Relaxed) {
            [tcp, socket]
        } else {
            [socket, tcp]
        };
        let deadline = tokio::time::Instant::now() + timeout;
        let mut failures = vec![];
        for (over_tcp, target, password) in ways {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.identify_system(&target, password, left).await {
                Ok(p) => {
                    self.replay_via_tcp.store(over_tcp, Relaxed);
                    return Ok(p);
                }
                Err(e) => failures.push(format!("{target}: {e}")),
            }
        }
        Err(PgError::Command {
            what: "IDENTIFY_SYSTEM".into(),
            detail: failures.join("; "),
        })
    }

    async fn identify_system(
        &self,
        target: &str,
        password: &Option<String>,
        timeout: Duration,
    ) -> Result<(u32, Lsn), PgError> {
        let conninfo = format!(
            "{target} dbname=postgres replication=true application_name=baton connect_timeout=2"
        );
        let mut cmd = self.command("psql");
        cmd.args([
            "-X",
            "-A",
            "-t",
            "-q",
            "-d",
            &conninfo,
            "-c",
            "IDENTIFY_SYSTEM",
        ]);
        if let Some(pw) = password {
            cmd.env("PGPASSWORD", pw);
        }
        let out = self.run("IDENTIFY_SYSTEM", cmd, timeout).await?;
        parse_identify_system(&out).ok_or_else(|| PgError::Command {
            what: "IDENTIFY_SYSTEM".into(),
            detail: format!("unexpected output {:?}", out.trim()),
        })
    }

    pub async fn connect(&self, timeout: Duration) -> Result<tokio_postgres::Client, PgError> {
        let cfg = self.local_conn_config();
        let (client, conn) = tokio::time::timeout(timeout, cfg.connect(tokio_postgres::NoTls))
            .await
            .map_err(|_| PgError::ConnectTimeout {
                target: "local postgres".into(),
                after: timeout,
            })??;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(client)
    }
}

/// A kept connection to the local instance with the statements it has
/// prepared: the loop's queries are the same every tick, so each is parsed
/// and planned once per connection, and a tick costs postgres and the
/// agent one round trip (bind, execute) instead of two.
pub struct PgClient {
    client: tokio_postgres::Client,
    prepared: std::sync::Mutex<std::collections::HashMap<&'static str, tokio_postgres::Statement>>,
}

impl PgClient {
    pub fn new(client: tokio_postgres::Client) -> PgClient {
        PgClient {
            client,
            prepared: Default::default(),
        }
    }

    /// `sql`'s statement on this connection, prepared on first use.
    pub async fn prepared(&self, sql: &'static str) -> Result<tokio_postgres::Statement, PgError> {
        if let Some(s) = self.prepared.lock().expect("statements lock").get(sql) {
            return Ok(s.clone());
        }
        let s = self.client.prepare(sql).await?;
        self.prepared
            .lock()
            .expect("statements lock")
            .insert(sql, s.clone());
        Ok(s)
    }

    pub async fn query(&self, sql: &'static str) -> Result<Vec<tokio_postgres::Row>, PgError> {
        Ok(self.client.query(&self.prepared(sql).await?, &[]).await?)
    }

    pub async fn query_one(&self, sql: &'static str) -> Result<tokio_postgres::Row, PgError> {
        Ok(self
            .client
            .query_one(&self.prepared(sql).await?, &[])
            .await?)
    }
}

impl std::ops::Deref for PgClient {
    type Target = tokio_postgres::Client;
    fn deref(&self) -> &tokio_postgres::Client {
        &self.client
    }
}

/// The status queries against a running instance, sent together: a
/// connection pipelines queries issued at once, so the five cost one round
/// trip instead of five, every tick (two on a connection's first tick,
/// which prepares them). Each is valid on a primary and a replica alike
/// (the primary-only functions are guarded by CASE); the first one's
/// `pg_is_in_recovery()` says which answers count, and a promotion between
/// them only makes later answers primary's too.
pub async fn query_running(client: &PgClient) -> Result<Running, PgError> {
    let (row, slots, replica, primary, replication) = tokio::try_join!(
        client.query_one(
            "SELECT pg_is_in_recovery(),
                    (SELECT system_identifier::text FROM pg_control_system()),
                    current_setting('server_version_num')::int,
                    current_setting('primary_conninfo'),
                    current_setting('primary_slot_name'),
                    current_setting('synchronous_standby_names')"
        ),
        // Slots exist on replicas too: a member about to promote creates
        // the others' slots before it does.
        client.query(
            "SELECT slot_name::text, restart_lsn FROM pg_replication_slots WHERE slot_type = 'physical'"
        ),
        // The replay timeline is not exposed directly: the WAL receiver
        // knows it while streaming; otherwise the larger of the last
        // restartpoint's and the minimum recovery point's (pg_rewind sets
        // the latter to the source's timeline), until the agent asks the
        // instance itself (`Instance::replay_position`).
        client.query_one(
            "SELECT pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn(),
                    (SELECT status FROM pg_stat_wal_receiver),
                    (SELECT received_tli FROM pg_stat_wal_receiver),
                    GREATEST((SELECT timeline_id FROM pg_control_checkpoint()),
                             (SELECT min_recovery_end_timeline FROM pg_control_recovery()))"
        ),
        // pg_control_checkpoint() lags a promotion by seconds; the current
        // WAL file name carries the live timeline.
        client.query_one(
            "SELECT CASE WHEN pg_is_in_recovery() THEN NULL ELSE pg_current_wal_lsn() END,
                    CASE WHEN pg_is_in_recovery() THEN NULL
                         ELSE substr(pg_walfile_name(pg_current_wal_lsn()), 1, 8) END"
        ),
        client.query(
            "SELECT application_name, client_addr::text, state, sent_lsn, flush_lsn, replay_lsn, sync_state,
                    (EXTRACT(epoch FROM replay_lag) * 1000)::float8
               FROM pg_stat_replication ORDER BY application_name"
        ),
    )?;
    let in_recovery: bool = row.get(0);
    let mut r = Running {
        in_recovery,
        system_id: row.get(1),
        timeline: None,
        wal_lsn: None,
        receive_lsn: None,
        replay_lsn: None,
        timeline_lsn: None,
        receiver_streaming: false,
        primary_conninfo: row.get(3),
        primary_slot_name: row.get(4),
        server_version: row.get(2),
        slots: BTreeMap::new(),
        replication: vec![],
        history: vec![],
        segments: vec![],
        mirroring_error: None,
        needs_repair: None,
        synchronous_standby_names: row.get(5),
    };
    type PgLsn = tokio_postgres::types::PgLsn;
    let lsn = |l: PgLsn| Lsn(u64::from(l));
    for row in slots {
        r.slots
            .insert(row.get(0), row.get::<_, Option<PgLsn>>(1).map(lsn));
    }
    if in_recovery {
        let row = replica;
        r.receive_lsn = row.get::<_, Option<PgLsn>>(0).map(lsn);
        r.replay_lsn = row.get::<_, Option<PgLsn>>(1).map(lsn);
        r.receiver_streaming = row.get::<_, Option<String>>(2).as_deref() == Some("streaming");
        let tli: Option<i32> = row
            .get::<_, Option<i32>>(3)
            .or(row.get::<_, Option<i32>>(4));
        r.timeline = tli.map(|t| t as u32);
    } else {
        let row = primary;
        let (Some(wal), Some(tli)) = (
            row.get::<_, Option<PgLsn>>(0),
            row.get::<_, Option<String>>(1),
        ) else {
            // A primary never goes back into recovery on a live
            // connection; should it ever look so, this tick knows nothing.
            return Err(PgError::Command {
                what: "status query".into(),
                detail: "a primary without a current WAL position".into(),
            });
        };
        r.wal_lsn = Some(lsn(wal));
        r.timeline = u32::from_str_radix(&tli, 16).ok();
        for row in replication {
            r.replication.push(ReplicationRow {
                application_name: row.get(0),
                client_addr: row.get(1),
                state: row.get::<_, Option<String>>(2).unwrap_or_default(),
                sent_lsn: row.get::<_, Option<PgLsn>>(3).map(lsn),
                flush_lsn: row.get::<_, Option<PgLsn>>(4).map(lsn),
                replay_lsn: row.get::<_, Option<PgLsn>>(5).map(lsn),
                sync_state: row.get::<_, Option<String>>(6).unwrap_or_default(),
                replay_lag_ms: row.get::<_, Option<f64>>(7).map(|ms| ms.max(0.0) as u64),
            });
        }
    }
    Ok(r)
}

/// Timeline history of a primary on timeline `tl`, from its history file:
/// `(timeline, switch LSN, reason)` per line.
pub async fn timeline_history(
    client: &tokio_postgres::Client,
    tl: u32,
) -> Result<Vec<(u32, Lsn, String)>, PgError> {
    let file = format!("pg_wal/{tl:08X}.history");
    let row = client
        .query_one("SELECT pg_read_file($1)", &[&file])
        .await?;
    let text: String = row.get(0);
    Ok(parse_history(&text))
}

/// Creates the replication role at bootstrap.
pub async fn create_replication_role(
    client: &tokio_postgres::Client,
    cfg: &PgConfig,
) -> Result<(), PgError> {
    let user = &cfg.replication.username;
    let ident = format!("\"{}\"", user.replace('"', "\"\""));
    let mut sql = format!("CREATE ROLE {ident} WITH REPLICATION LOGIN");
    if let Some(pw) = &cfg.replication.password {
        write!(sql, " PASSWORD '{}'", pw.replace('\'', "''")).expect("string write");
    }
    let exists = client
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[user])
        .await?
        .is_some();
    if !exists {
        client.batch_execute(&sql).await?;
    }
    Ok(())
}

pub async fn create_slot(client: &tokio_postgres::Client, slot: &str) -> Result<(), PgError> {
    client
        .execute(
            "SELECT pg_create_physical_replication_slot($1, true)
              WHERE NOT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[&slot],
        )
        .await?;
    Ok(())
}

/// Sets `synchronous_standby_names` (`None`: back to the configuration
/// file's value) and reloads. Postgres applies a reload asynchronously;
/// with a value, this waits (up to `timeout`) until a session sees it, so
/// the next observation does not show the old rule as still in force.
pub async fn set_sync_standbys(
    client: &tokio_postgres::Client,
    value: Option<&str>,
    timeout: Duration,
) -> Result<(), PgError> {
    match value {
        Some(v) => {
            client
                .batch_execute(&format!(
                    "ALTER SYSTEM SET synchronous_standby_names = {}",
                    super::conf::quote_setting(v)
                ))
                .await?
        }
        None => {
            client
                .batch_execute("ALTER SYSTEM RESET synchronous_standby_names")
                .await?
        }
    }
    client.execute("SELECT pg_reload_conf()", &[]).await?;
    let Some(want) = value else {
        return Ok(());
    };
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let row = client
            .query_one("SELECT current_setting('synchronous_standby_names')", &[])
            .await?;
        if row.get::<_, String>(0) == want {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(PgError::Timeout {
                what: format!("reload of synchronous_standby_names = {want:?}"),
                after: timeout,
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Drops a slot unless something streams through it right now.
pub async fn drop_inactive_slot(
    client: &tokio_postgres::Client,
    slot: &str,
) -> Result<bool, PgError> {
    let n = client
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
              WHERE slot_name = $1 AND NOT active",
            &[&slot],
        )
        .await?;
    Ok(n > 0)
}

/// `systemid|timeline|xlogpos|dbname`, as `psql -A -t` prints
/// IDENTIFY_SYSTEM's one row.
fn parse_identify_system(out: &str) -> Option<(u32, Lsn)> {
    let line = out.lines().find(|l| !l.trim().is_empty())?;
    let mut fields = line.trim().split('|');
    let _system_id = fields.next()?;
    let timeline = fields.next()?.parse().ok()?;
    let lsn = fields.next()?.parse().ok()?;
    Some((timeline, lsn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identify_system_output_gives_the_timeline_and_position() {
        assert_eq!(
            parse_identify_system("7441234567890123456|2|0/40296B0|\n"),
            Some((2, "0/40296B0".parse().unwrap()))
        );
        assert_eq!(parse_identify_system(""), None);
        assert_eq!(parse_identify_system("7441234567890123456|x|0/1|"), None);
    }
}
