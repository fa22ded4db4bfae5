//! The node file's hooks: `[postgresql.callbacks]` (Patroni's place and
//! names) and `[routing]`, the statements a new leader runs on every
//! endpoint that must learn where the primary is.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::config::Reader;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct HooksConfig {
    pub callbacks: Callbacks,
    pub routing: Option<Routing>,
}

/// Commands run through `sh -c` with the action, role and scope appended
/// as arguments (Patroni's `on_start`, `on_stop`, `on_role_change`).
#[derive(Debug, Clone, PartialEq)]
pub struct Callbacks {
    pub on_start: Option<String>,
    pub on_stop: Option<String>,
    pub on_role_change: Option<String>,
    /// A callback still running after this is killed, with its children.
    pub timeout: Duration,
}

impl Default for Callbacks {
    fn default() -> Self {
        Callbacks {
            on_start: None,
            on_stop: None,
            on_role_change: None,
            timeout: Duration::from_secs(30),
        }
    }
}

/// `[routing]`: after this member becomes the leader, `statements` (with
/// `{host}`, `{port}`, `{name}`, `{scope}` replaced by the new primary's)
/// run on each endpoint until they succeed, and again whenever the
/// endpoint has restarted since.
#[derive(Debug, Clone, PartialEq)]
pub struct Routing {
    /// Each runs as a query of its own, in its own transaction: some
    /// statements refuse to run in a transaction block (OpenTenBase's
    /// `pgxc_pool_reload()`), and several statements in one query are one.
    pub statements: Vec<String>,
    /// Name → libpq connection string (key=value or URL).
    pub endpoints: BTreeMap<String, String>,
    /// In a multi-group cluster, the groups whose current leaders are
    /// endpoints too (`group<N>:<member>`), found in etcd: after a
    /// datanode group's failover every coordinator and datanode primary,
    /// the new one included, must learn where it is (OpenTenBase).
    pub groups: Vec<u32>,
    /// The database the group leaders are reached in, as the superuser.
    pub database: String,
    /// Between tries at an endpoint that failed.
    pub retry_interval: Duration,
    /// Between checks that an updated endpoint has not restarted.
    pub check_interval: Duration,
    /// One try: connect, run, read back.
    pub timeout: Duration,
    /// A statement that proves the new primary serves (for a GTM: a write
    /// through a coordinator, which needs a global timestamp), run on the
    /// first endpoint (by name) that holds the new primary, at every check.
    pub verify: Option<String>,
    /// Failing for this long, the promotion counts as failed: the leader
    /// stops its instance and starts it again (docs/routing.md).
    pub verify_timeout: Duration,
}

/// What a statement may name of the new primary; `{forward_port}` is its
/// `postgresql.parameters.forward_port` (OpenTenBase's `ALTER NODE ...
/// FORWARD=`), which must then be set.
pub const PLACEHOLDERS: [&str; 5] = ["{host}", "{port}", "{name}", "{scope}", "{forward_port}"];

/// Reads `postgresql.callbacks` out of `pg` and `routing` out of `root`.
pub(crate) fn read(r: &mut Reader, pg: &mut toml::Table, root: &mut toml::Table) -> HooksConfig {
    let p = "postgresql.callbacks";
    let mut cb = r.table(pg, "postgresql", "callbacks");
    let mut command = |r: &mut Reader, key: &str| {
        let c: Option<String> = r.opt(&mut cb, p, key);
        if c.as_deref().is_some_and(|c| c.trim().is_empty()) {
            r.problem(format!("{p}.{key}"), "is empty; leave it out instead");
        }
        c
    };
    let on_start = command(r, "on_start");
    let on_stop = command(r, "on_stop");
    let on_role_change = command(r, "on_role_change");
    let timeout = r
        .seconds(&mut cb, p, "timeout")
        .unwrap_or(Callbacks::default().timeout);
    r.unknown(cb, p);
    let callbacks = Callbacks {
        on_start,
        on_stop,
        on_role_change,
        timeout,
    };
    let routing = root.contains_key("routing").then(|| {
        let mut t = r.table(root, "", "routing");
        let routing = read_routing(r, &mut t);
        r.unknown(t, "routing");
        routing
    });
    HooksConfig {
        callbacks,
        routing: routing.flatten(),
    }
}

fn read_routing(r: &mut Reader, t: &mut toml::Table) -> Option<Routing> {
    let p = "routing";
    let statements: Option<Vec<String>> = match t.remove("statements") {
        None => {
            r.problem("routing.statements", "missing (required)");
            None
        }
        Some(toml::Value::String(s)) => Some(vec![s]),
        Some(toml::Value::Array(a)) => {
            let mut list = vec![];
            for v in a {
                match v {
                    toml::Value::String(s) => list.push(s),
                    other => r.problem(
                        "routing.statements",
                        format!("{other} is not a string: give a statement or a list of them"),
                    ),
                }
            }
            if list.is_empty() {
                r.problem("routing.statements", "is an empty list");
            }
            Some(list)
        }
        Some(other) => {
            r.problem(
                "routing.statements",
                format!("{other} is not a string: give a statement or a list of them"),
            );
            None
        }
    };
    for s in statements.iter().flatten() {
        if s.trim().is_empty() {
            r.problem("routing.statements", "has an empty statement");
        }
        let mut rest = s.as_str();
        while let Some(i) = rest.find('{') {
            let tail = &rest[i..];
            match PLACEHOLDERS.iter().find(|ph| tail.starts_with(**ph)) {
                Some(ph) => rest = &tail[ph.len()..],
                None => {
                    let word: String = tail.chars().take_while(|c| *c != '}').collect();
                    r.problem(
                        "routing.statements",
                        format!(
                            "unknown placeholder {word}}}; known: {}",
                            PLACEHOLDERS.join(", ")
                        ),
                    );
                    break;
                }
            }
        }
    }
    let endpoints: Option<BTreeMap<String, String>> = r.opt(t, p, "endpoints");
    for (name, dsn) in endpoints.iter().flatten() {
        if let Err(e) = dsn.parse::<tokio_postgres::Config>() {
            r.problem(
                format!("routing.endpoints.{name}"),
                format!("not a libpq connection string: {e}"),
            );
        }
    }
    let groups: Option<Vec<i64>> = r.opt(t, p, "groups");
    let mut group_numbers = vec![];
    for g in groups.iter().flatten() {
        match u32::try_from(*g) {
            Ok(n) if i64::from(n) <= crate::config::MAX_GROUP => group_numbers.push(n),
            _ => r.problem(
                "routing.groups",
                format!(
                    "{g} is not a group: groups are numbers from 0 to {}",
                    crate::config::MAX_GROUP
                ),
            ),
        }
    }
    group_numbers.sort_unstable();
    group_numbers.dedup();
    if endpoints.as_ref().is_none_or(|e| e.is_empty())
        && groups.as_ref().is_none_or(|g| g.is_empty())
    {
        r.problem(
            "routing",
            "needs at least one endpoint (routing.endpoints) or group (routing.groups)",
        );
    }
    let database: String = r.opt(t, p, "database").unwrap_or_else(|| "postgres".into());
    let retry_interval = r
        .seconds(t, p, "retry_interval")
        .unwrap_or(Duration::from_secs(2));
    let check_interval = r
        .seconds(t, p, "check_interval")
        .unwrap_or(Duration::from_secs(10));
    let timeout = r
        .seconds(t, p, "timeout")
        .unwrap_or(Duration::from_secs(10));
    let verify: Option<String> = r.opt(t, p, "verify");
    if verify.as_deref().is_some_and(|v| v.trim().is_empty()) {
        r.problem("routing.verify", "is empty; leave it out instead");
    }
    let verify_timeout = r
        .seconds(t, p, "verify_timeout")
        .unwrap_or(Duration::from_secs(30));
    Some(Routing {
        statements: statements?,
        endpoints: endpoints.unwrap_or_default(),
        groups: group_numbers,
        database,
        retry_interval,
        check_interval,
        timeout,
        verify,
        verify_timeout,
    })
}

/// `statement` with each placeholder replaced by its value.
pub fn render(statement: &str, values: &[(&str, &str)]) -> String {
    values
        .iter()
        .fold(statement.to_string(), |s, (k, v)| s.replace(k, v))
}
