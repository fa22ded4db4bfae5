//! The write workload used by the failover/switchover benchmarks, the demo
//! scenarios and the tests: one numbered INSERT at a fixed interval through
//! a multi-host connection (`target_session_attrs=read-write`), reconnecting
//! on error, never reusing the id of a failed attempt, recording every
//! acknowledged id with the time it was acknowledged.

use std::time::{Duration, Instant};

use tokio_postgres::config::TargetSessionAttrs;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, Default)]
pub struct WriteLog {
    /// (id, when the commit was acknowledged)
    pub acked: Vec<(i64, Instant)>,
    pub failed_attempts: u64,
}

impl WriteLog {
    /// Longest time between two consecutive acknowledgements (the client's
    /// view of the outage), and the ack time where it ended.
    pub fn longest_gap(&self) -> (Duration, Option<Instant>) {
        self.acked
            .windows(2)
            .map(|w| (w[1].1 - w[0].1, Some(w[1].1)))
            .max_by_key(|(d, _)| *d)
            .unwrap_or((Duration::ZERO, None))
    }

    /// Acknowledged ids missing from `present` (ids found in the table).
    pub fn lost(&self, present: &std::collections::HashSet<i64>) -> Vec<i64> {
        self.acked
            .iter()
            .map(|(id, _)| *id)
            .filter(|id| !present.contains(id))
            .collect()
    }
}

/// A client config for one postgres (or router) on 127.0.0.1, as the
/// `postgres` superuser.
pub fn loopback(port: u16, connect_timeout: Duration) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    c.host("127.0.0.1")
        .port(port)
        .user("postgres")
        .dbname("postgres")
        .connect_timeout(connect_timeout);
    c
}

/// A client config for all `hosts` that only settles on a read-write one.
pub fn read_write_config(hosts: &[(String, u16)], user: &str) -> tokio_postgres::Config {
    let mut c = tokio_postgres::Config::new();
    for (h, p) in hosts {
        c.host(h).port(*p);
    }
    c.user(user)
        .dbname("postgres")
        .connect_timeout(Duration::from_millis(500))
        .target_session_attrs(TargetSessionAttrs::ReadWrite);
    c
}

pub async fn create_table(cfg: &tokio_postgres::Config, table: &str) -> Result<(), String> {
    let (client, conn) = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| baton::pg::describe(&e))?;
    tokio::spawn(conn);
    client
        .batch_execute(&format!("CREATE TABLE IF NOT EXISTS {table} (id bigint PRIMARY KEY, at timestamptz DEFAULT now())"))
        .await
        .map_err(|e| baton::pg::describe(&e))
}

/// Writes until `stop` fires. Each INSERT is bounded by one second and
/// each host's connection start-up by the config's `connect_timeout`, so a
/// primary that hangs is counted as an outage, not waited out.
pub async fn run_writes(
    cfg: tokio_postgres::Config,
    table: String,
    interval: Duration,
    stop: CancellationToken,
) -> WriteLog {
    let mut log = WriteLog::default();
    let mut client: Option<tokio_postgres::Client> = None;
    let mut next_id: i64 = 1;
    let sql = format!("INSERT INTO {table} (id) VALUES ($1)");
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = connect_per_host(&cfg).await;
            if client.is_none() {
                log.failed_attempts += 1;
                continue;
            }
        }
        let id = next_id;
        next_id += 1;
        let c = client.as_ref().expect("connected above");
        match tokio::time::timeout(Duration::from_secs(1), c.execute(&sql, &[&id])).await {
            Ok(Ok(_)) => log.acked.push((id, Instant::now())),
            _ => {
                log.failed_attempts += 1;
                client = None;
            }
        }
    }
    log
}

/// Connects to the first of `cfg`'s hosts that suits it, as libpq does:
/// `connect_timeout` bounds each host's whole start-up. tokio-postgres
/// bounds only the socket's connect, and the kernel of a frozen host still
/// completes that, so one attempt waited on it until an outer timeout and
/// never reached the hosts after it (a write gap that measured the client).
async fn connect_per_host(cfg: &tokio_postgres::Config) -> Option<tokio_postgres::Client> {
    use tokio_postgres::config::Host;
    let per_host = cfg
        .get_connect_timeout()
        .copied()
        .unwrap_or(Duration::from_secs(1));
    let ports = cfg.get_ports();
    for (i, host) in cfg.get_hosts().iter().enumerate() {
        let mut one = tokio_postgres::Config::new();
        match host {
            Host::Tcp(h) => one.host(h),
            Host::Unix(p) => one.host_path(p),
        };
        one.port(ports.get(i).or(ports.first()).copied().unwrap_or(5432))
            .user(cfg.get_user().unwrap_or("postgres"))
            .dbname(cfg.get_dbname().unwrap_or("postgres"))
            .connect_timeout(per_host)
            .target_session_attrs(cfg.get_target_session_attrs());
        if let Some(pw) = cfg.get_password() {
            one.password(pw);
        }
        if let Ok(Ok((c, conn))) =
            tokio::time::timeout(per_host, one.connect(tokio_postgres::NoTls)).await
        {
            tokio::spawn(conn);
            return Some(c);
        }
    }
    None
}

/// All ids present in `table`, read from the current read-write member.
pub async fn present_ids(
    cfg: &tokio_postgres::Config,
    table: &str,
) -> Result<std::collections::HashSet<i64>, String> {
    let (client, conn) = cfg
        .connect(tokio_postgres::NoTls)
        .await
        .map_err(|e| baton::pg::describe(&e))?;
    tokio::spawn(conn);
    let rows = client
        .query(&format!("SELECT id FROM {table}"), &[])
        .await
        .map_err(|e| baton::pg::describe(&e))?;
    Ok(rows.iter().map(|r| r.get::<_, i64>(0)).collect())
}
