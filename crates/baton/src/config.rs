//! Node configuration (one TOML file per agent) and the cluster-wide dynamic
//! configuration kept in etcd under `config`.
//!
//! The node file is read field by field so that *every* problem is reported
//! at once, each with the file, the key and what is wrong; a configuration
//! that only exists after validation is the only kind the agent ever sees.
//! Timing rules are refused, never clamped: a silently adjusted `ttl` is how
//! a cluster ends up failing over on every busy minute.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

use baton_core::config::{DynamicConfig, Tags};

/// Patroni's default namespace; tools like patronictl assume it.
pub const DEFAULT_NAMESPACE: &str = "/service";

#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// Cluster name; all members of one cluster share it.
    pub scope: String,
    /// This member's name, unique in the cluster.
    pub name: String,
    pub namespace: String,
    /// `group`: which HA group of a multi-group cluster this member
    /// belongs to (Patroni's Citus layout, `<namespace>/<scope>/<group>/`);
    /// `None` for a cluster of one group.
    pub group: Option<u32>,
    pub etcd: EtcdConfig,
    pub api: ApiConfig,
    pub postgresql: PgConfig,
    /// Dynamic configuration written to etcd when this node bootstraps the cluster.
    pub bootstrap: DynamicConfig,
    pub tags: Tags,
    /// `[postgresql.callbacks]` and `[routing]`.
    pub hooks: crate::hooks::HooksConfig,
}

#[derive(Debug, Clone)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct ApiConfig {
    pub listen: SocketAddr,
    /// Address other members and tools use to reach this API.
    pub connect_address: SocketAddr,
    /// Basic-auth credentials required by the control endpoints (POST,
    /// PATCH, PUT, DELETE). Without them those endpoints are open, as in
    /// Patroni: bind the API to a trusted network then.
    pub auth: Option<Credentials>,
    /// Serve HTTPS with this certificate chain and key (PEM); both or neither.
    pub tls: Option<(PathBuf, PathBuf)>,
    /// Extra CA (PEM) trusted when calling other members' APIs over HTTPS.
    pub cafile: Option<PathBuf>,
}

impl ApiConfig {
    pub fn scheme(&self) -> &'static str {
        if self.tls.is_some() {
            "https"
        } else {
            "http"
        }
    }
}

#[derive(Debug, Clone)]
pub struct PgConfig {
    pub data_dir: PathBuf,
    pub listen: SocketAddr,
    /// Address other members use to reach this postgres (replication, clients).
    pub connect_address: SocketAddr,
    pub bin_dir: PathBuf,
    /// Which system this is (`postgresql.flavor`): the commands Baton runs.
    pub flavor: crate::pg::Flavor,
    /// OS user that owns the data directory and runs postgres when the agent is root.
    pub os_user: String,
    pub socket_dir: PathBuf,
    pub log_file: PathBuf,
    pub superuser: Credentials,
    pub replication: Credentials,
    /// Extra `postgresql.conf` parameters; Baton's own required ones win.
    pub parameters: BTreeMap<String, String>,
    /// Complete `pg_hba.conf` lines; when empty Baton writes its default.
    pub pg_hba: Vec<String>,
    /// How long to wait for postgres to start, stop or clone before calling it failed.
    pub start_timeout: Duration,
    /// After a failed pg_rewind, move the data directory aside and clone
    /// the leader instead of staying down in `need repair`.
    pub rebuild_on_rewind_failure: bool,
    /// `postgresql.basebackup_max_rate`: pg_basebackup's `--max-rate` for
    /// clones and rebuilds (e.g. `100M`), so rebuilding one member does not
    /// take all of the leader's disk and network. `None`: unlimited.
    pub basebackup_max_rate: Option<String>,
    /// The fence process beside this postgres (`[fence]`, DESIGN.md rule 8).
    pub fence: FenceConfig,
}

/// `[fence]`: the `baton-fence` process that stops this postgres when the
/// leader's lease deadline passes and the agent cannot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FenceConfig {
    /// `None`: `baton-fence` beside the running `baton`, else on `PATH`.
    pub binary: Option<PathBuf>,
    /// Unix socket the agent and its fence talk over (default
    /// `<data_dir>.fence`); its log is `<socket>.log`.
    pub socket: PathBuf,
}

/// The longest unix socket path Linux takes (`sun_path` holds 108 bytes
/// with the terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Option<String>,
}

/// One problem in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub key: String,
    pub reason: String,
}

/// All problems found in one file; `Display` lists them one per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        write!(
            f,
            "{}: {} problem{} in configuration",
            self.file.display(),
            n,
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            if p.key.is_empty() {
                write!(f, "\n  - {}", p.reason)?;
            } else {
                write!(f, "\n  - {}: {}", p.key, p.reason)?;
            }
        }
        Ok(())
    }
}

/// Reads typed fields out of a TOML table, remembering every problem instead
/// of stopping at the first, and reporting keys nobody asked for as unknown.
pub(crate) struct Reader {
    pub(crate) problems: Vec<Problem>,
}

impl Reader {
    /// Which cluster a file is about: `scope` and `namespace`, shared by
    /// agents' and routers' files.
    pub(crate) fn scope(&mut self, root: &mut toml::Table) -> (Option<String>, String) {
        let scope: Option<String> = self.req(root, "", "scope");
        self.identifier("scope", &scope);
        let namespace: String = self
            .opt(root, "", "namespace")
            .unwrap_or_else(|| DEFAULT_NAMESPACE.to_string());
        if !namespace.starts_with('/') || namespace.ends_with('/') && namespace.len() > 1 {
            self.problem(
                "namespace",
                format!("{namespace:?} must start with '/' and not end with '/'"),
            );
        }
        (scope, namespace)
    }

    /// `group`: a multi-group cluster's group number (Patroni's Citus
    /// layout keeps each group's keys under `<scope>/<group>/`, and its
    /// tools recognise a group by digits alone).
    pub(crate) fn group(&mut self, root: &mut toml::Table) -> Option<u32> {
        let group: Option<i64> = self.opt(root, "", "group");
        match group {
            Some(g) if (0..=MAX_GROUP).contains(&g) => Some(g as u32),
            Some(g) => {
                self.problem(
                    "group",
                    format!("{g} is out of range: a group is a number from 0 to {MAX_GROUP}"),
                );
                None
            }
            None => None,
        }
    }

    /// `[etcd] endpoints`.
    pub(crate) fn etcd(&mut self, root: &mut toml::Table) -> Option<Vec<String>> {
        let mut etcd = self.table(root, "", "etcd");
        let endpoints: Option<Vec<String>> = self.req(&mut etcd, "etcd", "endpoints");
        if let Some(eps) = &endpoints {
            if eps.is_empty() {
                self.problem("etcd.endpoints", "needs at least one endpoint");
            }
            for ep in eps {
                if !(ep.starts_with("http://") || ep.starts_with("https://")) {
                    self.problem(
                        "etcd.endpoints",
                        format!("{ep:?} must be a URL like http://127.0.0.1:2379"),
                    );
                }
            }
        }
        self.unknown(etcd, "etcd");
        endpoints
    }

    fn identifier(&mut self, key: &str, v: &Option<String>) {
        if let Some(v) = v {
            if !is_identifier(v) {
                self.problem(
                    key,
                    format!("{v:?} must be 1-63 characters of letters, digits, '_', '-' or '.'"),
                );
            }
        }
    }
    pub(crate) fn problem(&mut self, key: impl Into<String>, reason: impl Into<String>) {
        self.problems.push(Problem {
            key: key.into(),
            reason: reason.into(),
        });
    }

    pub(crate) fn opt<T: DeserializeOwned>(
        &mut self,
        table: &mut toml::Table,
        prefix: &str,
        key: &str,
    ) -> Option<T> {
        let value = table.remove(key)?;
        match T::deserialize(value) {
            Ok(v) => Some(v),
            Err(e) => {
                self.problem(join(prefix, key), e.message().to_string());
                None
            }
        }
    }

    pub(crate) fn req<T: DeserializeOwned>(
        &mut self,
        table: &mut toml::Table,
        prefix: &str,
        key: &str,
    ) -> Option<T> {
        if !table.contains_key(key) {
            self.problem(join(prefix, key), "missing (required)");
            return None;
        }
        self.opt(table, prefix, key)
    }

    pub(crate) fn table(
        &mut self,
        table: &mut toml::Table,
        prefix: &str,
        key: &str,
    ) -> toml::Table {
        match table.remove(key) {
            None => toml::Table::new(),
            Some(toml::Value::Table(t)) => t,
            Some(other) => {
                self.problem(
                    join(prefix, key),
                    format!("expected a table, found {}", other.type_str()),
                );
                toml::Table::new()
            }
        }
    }

    pub(crate) fn unknown(&mut self, table: toml::Table, prefix: &str) {
        for key in table.keys() {
            self.problem(join(prefix, key), "unknown key");
        }
    }

    pub(crate) fn addr(
        &mut self,
        table: &mut toml::Table,
        prefix: &str,
        key: &str,
    ) -> Option<SocketAddr> {
        let s: String = self.opt(table, prefix, key)?;
        match s.parse() {
            Ok(a) => Some(a),
            Err(_) => {
                self.problem(
                    join(prefix, key),
                    format!("{s:?} is not an IP address with port, like 127.0.0.1:5432"),
                );
                None
            }
        }
    }

    pub(crate) fn seconds(
        &mut self,
        table: &mut toml::Table,
        prefix: &str,
        key: &str,
    ) -> Option<Duration> {
        let v: f64 = self.opt(table, prefix, key)?;
        if v.is_finite() && v > 0.0 && v <= baton_core::config::MAX_SECONDS {
            Some(Duration::from_secs_f64(v))
        } else if v > baton_core::config::MAX_SECONDS {
            self.problem(
                join(prefix, key),
                format!("{v} s is more than a year; surely a typo"),
            );
            None
        } else {
            self.problem(
                join(prefix, key),
                format!("{v} must be a positive number of seconds"),
            );
            None
        }
    }

    fn credentials(
        &mut self,
        auth: &mut toml::Table,
        key: &str,
        default_user: &str,
    ) -> Credentials {
        let prefix = "postgresql.authentication";
        let mut t = self.table(auth, prefix, key);
        let p = join(prefix, key);
        let username = self
            .opt(&mut t, &p, "username")
            .unwrap_or_else(|| default_user.to_string());
        let password = self.opt(&mut t, &p, "password");
        self.unknown(t, &p);
        Credentials { username, password }
    }
}

/// The largest `group` number accepted.
pub const MAX_GROUP: i64 = 999_999;

/// Prefix of every etcd key of cluster `scope` (of its `group`, in a
/// multi-group cluster), with a trailing slash.
pub fn prefix(namespace: &str, scope: &str, group: Option<u32>) -> String {
    match group {
        Some(g) => format!("{}/{scope}/{g}/", namespace.trim_end_matches('/')),
        None => format!("{}/{scope}/", namespace.trim_end_matches('/')),
    }
}

/// The file's TOML, or a problem naming the line of the syntax error.
pub(crate) fn parse_toml(text: &str, file: &Path) -> Result<toml::Table, ConfigError> {
    text.parse().map_err(|e: toml::de::Error| {
        let line = e
            .span()
            .map(|s| format!("line {}: ", text[..s.start].lines().count().max(1)))
            .unwrap_or_default();
        ConfigError {
            file: file.to_path_buf(),
            problems: vec![Problem {
                key: String::new(),
                reason: format!("{line}TOML syntax: {}", e.message()),
            }],
        }
    })
}

/// Reads a config file, or says which file could not be read.
pub(crate) fn read_file(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|e| ConfigError {
        file: path.to_path_buf(),
        problems: vec![Problem {
            key: String::new(),
            reason: format!("cannot read file: {e}"),
        }],
    })
}

fn join(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

pub(crate) fn is_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
}

impl NodeConfig {
    pub fn load(path: &Path) -> Result<NodeConfig, ConfigError> {
        let text = read_file(path)?;
        Self::parse(&text, path, default_bin_dir)
    }

    /// Parses and validates; `bin_dir` supplies the default PostgreSQL bin dir
    /// (injected so tests do not depend on `pg_config`).
    pub fn parse(
        text: &str,
        file: &Path,
        bin_dir: impl FnOnce() -> Result<PathBuf, String>,
    ) -> Result<NodeConfig, ConfigError> {
        let fail = |problems| ConfigError {
            file: file.to_path_buf(),
            problems,
        };
        let mut root = parse_toml(text, file)?;
        let mut r = Reader { problems: vec![] };

        let (scope, namespace) = r.scope(&mut root);
        let group = r.group(&mut root);
        let name: Option<String> = r.req(&mut root, "", "name");
        r.identifier("name", &name);
        let endpoints = r.etcd(&mut root);

        let mut api = r.table(&mut root, "", "api");
        let api_listen = r.addr(&mut api, "api", "listen");
        if api_listen.is_none() && !r.problems.iter().any(|p| p.key == "api.listen") {
            r.problem("api.listen", "missing (required)");
        }
        let api_connect = r.addr(&mut api, "api", "connect_address");
        let api_auth = match api.remove("authentication") {
            None => None,
            Some(v) => {
                let mut t = match v {
                    toml::Value::Table(t) => t,
                    other => {
                        r.problem(
                            "api.authentication",
                            format!("expected a table, found {}", other.type_str()),
                        );
                        toml::Table::new()
                    }
                };
                let username: Option<String> = r.req(&mut t, "api.authentication", "username");
                let password: Option<String> = r.req(&mut t, "api.authentication", "password");
                r.unknown(t, "api.authentication");
                username.map(|username| Credentials { username, password })
            }
        };
        let certfile: Option<PathBuf> = r.opt(&mut api, "api", "certfile");
        let keyfile: Option<PathBuf> = r.opt(&mut api, "api", "keyfile");
        let cafile: Option<PathBuf> = r.opt(&mut api, "api", "cafile");
        for (key, f) in [
            ("api.certfile", &certfile),
            ("api.keyfile", &keyfile),
            ("api.cafile", &cafile),
        ] {
            if let Some(f) = f {
                if let Err(e) = std::fs::metadata(f) {
                    r.problem(key, format!("{}: {e}", f.display()));
                }
            }
        }
        let tls = match (certfile, keyfile) {
            (Some(c), Some(k)) => Some((c, k)),
            (None, None) => None,
            (Some(_), None) => {
                r.problem("api.keyfile", "missing: api.certfile needs api.keyfile");
                None
            }
            (None, Some(_)) => {
                r.problem("api.certfile", "missing: api.keyfile needs api.certfile");
                None
            }
        };
        r.unknown(api, "api");

        let mut pg = r.table(&mut root, "", "postgresql");
        let p = "postgresql";
        let data_dir: Option<PathBuf> = r.req(&mut pg, p, "data_dir");
        if let Some(d) = &data_dir {
            if !d.is_absolute() {
                r.problem(
                    "postgresql.data_dir",
                    format!("{} must be an absolute path", d.display()),
                );
            }
        }
        let pg_listen = r.addr(&mut pg, p, "listen");
        if pg_listen.is_none() && !r.problems.iter().any(|p| p.key == "postgresql.listen") {
            r.problem("postgresql.listen", "missing (required)");
        }
        let pg_connect = r.addr(&mut pg, p, "connect_address");
        let bin_dir_cfg: Option<PathBuf> = r.opt(&mut pg, p, "bin_dir");
        let flavor_name: Option<String> = r.opt(&mut pg, p, "flavor");
        let node_type: Option<String> = r.opt(&mut pg, p, "node_type");
        let flavor = crate::pg::Flavor::parse(
            flavor_name.as_deref().unwrap_or("postgresql"),
            node_type.as_deref(),
        )
        .unwrap_or_else(|(key, e)| {
            r.problem(format!("postgresql.{key}"), e);
            crate::pg::Flavor::default()
        });
        let os_user: String = r
            .opt(&mut pg, p, "os_user")
            .unwrap_or_else(|| "postgres".into());
        let socket_dir: Option<PathBuf> = r.opt(&mut pg, p, "socket_dir");
        let log_file: Option<PathBuf> = r.opt(&mut pg, p, "log_file");
        let start_timeout = r
            .seconds(&mut pg, p, "start_timeout")
            .unwrap_or(Duration::from_secs(60));
        let basebackup_max_rate =
            r.opt::<String>(&mut pg, p, "basebackup_max_rate")
                .and_then(|v| match check_max_rate(&v) {
                    Ok(()) => Some(v),
                    Err(e) => {
                        r.problem("postgresql.basebackup_max_rate", e);
                        None
                    }
                });
        let raw_params: Option<toml::Table> = r.opt(&mut pg, p, "parameters");
        let mut parameters = BTreeMap::new();
        for (k, v) in raw_params.unwrap_or_default() {
            let s = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Float(f) => f.to_string(),
                toml::Value::Boolean(b) => if b { "on" } else { "off" }.to_string(),
                other => {
                    r.problem(
                        format!("postgresql.parameters.{k}"),
                        format!(
                            "expected a string, number or boolean, found {}",
                            other.type_str()
                        ),
                    );
                    continue;
                }
            };
            parameters.insert(k, s);
        }
        let pg_hba: Vec<String> = r.opt(&mut pg, p, "pg_hba").unwrap_or_default();
        let rebuild_on_rewind_failure = r
            .opt(&mut pg, p, "rebuild_on_rewind_failure")
            .unwrap_or(true);
        let hooks = crate::hooks::config::read(&mut r, &mut pg, &mut root);
        if !parameters.contains_key("forward_port")
            && hooks
                .routing
                .iter()
                .flat_map(|r| &r.statements)
                .any(|s| s.contains("{forward_port}"))
        {
            r.problem(
                "routing.statements",
                "use {forward_port}, but postgresql.parameters has no forward_port",
            );
        }
        if group.is_none() && hooks.routing.as_ref().is_some_and(|r| !r.groups.is_empty()) {
            r.problem(
                "routing.groups",
                "names groups of a multi-group cluster, but this member has no `group`",
            );
        }
        let mut auth = r.table(&mut pg, p, "authentication");
        let superuser = r.credentials(&mut auth, "superuser", "postgres");
        let replication = r.credentials(&mut auth, "replication", "replicator");
        r.unknown(auth, "postgresql.authentication");
        r.unknown(pg, p);

        let mut fence = r.table(&mut root, "", "fence");
        let fence_binary: Option<PathBuf> = r.opt(&mut fence, "fence", "binary");
        let fence_socket: Option<PathBuf> = r.opt(&mut fence, "fence", "socket");
        r.unknown(fence, "fence");
        let fence_socket = fence_socket.or_else(|| {
            data_dir.as_ref().map(|d| {
                let mut s = d.clone().into_os_string();
                s.push(".fence");
                PathBuf::from(s)
            })
        });
        if let Some(s) = &fence_socket {
            let len = s.as_os_str().len();
            if len > MAX_SOCKET_PATH {
                r.problem(
                    "fence.socket",
                    format!(
                        "{} is {len} bytes, above the {MAX_SOCKET_PATH} a unix socket path may have; \
                         set a shorter fence.socket",
                        s.display()
                    ),
                );
            }
        }

        let mut boot = r.table(&mut root, "", "bootstrap");
        let dcs_table = r.table(&mut boot, "bootstrap", "dcs");
        r.unknown(boot, "bootstrap");
        let bootstrap =
            match DynamicConfig::deserialize(toml::Value::Table(merge_defaults(dcs_table))) {
                Ok(d) => {
                    for (key, reason) in d.problems() {
                        r.problem(format!("bootstrap.dcs.{key}"), reason);
                    }
                    d
                }
                Err(e) => {
                    r.problem("bootstrap.dcs", e.message().to_string());
                    DynamicConfig::default()
                }
            };

        let tags: Tags = r.opt(&mut root, "", "tags").unwrap_or_default();
        r.unknown(root, "");

        let bin_dir = match bin_dir_cfg {
            Some(b) => Some(b),
            None => match bin_dir() {
                Ok(b) => Some(b),
                Err(e) => {
                    r.problem("postgresql.bin_dir", format!("not set and {e}"));
                    None
                }
            },
        };

        if !r.problems.is_empty() {
            return Err(fail(r.problems));
        }
        // Every `None` above recorded a problem, so these unwraps cannot fail.
        let data_dir = data_dir.expect("checked");
        let pg_listen = pg_listen.expect("checked");
        let api_listen = api_listen.expect("checked");
        let name = name.expect("checked");
        // Not inside the data dir: pg_rewind and pg_basebackup choke on the
        // socket file. A private sibling keeps `local ... trust` private.
        let socket_dir = socket_dir.unwrap_or_else(|| {
            let mut s = data_dir.clone().into_os_string();
            s.push(".sock");
            PathBuf::from(s)
        });
        let log_file = log_file.unwrap_or_else(|| {
            let mut s = data_dir.clone().into_os_string();
            s.push(".log");
            PathBuf::from(s)
        });
        Ok(NodeConfig {
            scope: scope.expect("checked"),
            name,
            namespace,
            group,
            etcd: EtcdConfig {
                endpoints: endpoints.expect("checked"),
            },
            api: ApiConfig {
                listen: api_listen,
                connect_address: api_connect.unwrap_or(api_listen),
                auth: api_auth,
                tls,
                cafile,
            },
            postgresql: PgConfig {
                data_dir,
                listen: pg_listen,
                connect_address: pg_connect.unwrap_or(pg_listen),
                bin_dir: bin_dir.expect("checked"),
                flavor,
                os_user,
                socket_dir,
                log_file,
                superuser,
                replication,
                parameters,
                pg_hba,
                start_timeout,
                rebuild_on_rewind_failure,
                basebackup_max_rate,
                fence: FenceConfig {
                    binary: fence_binary,
                    socket: fence_socket.expect("set whenever data_dir is"),
                },
            },
            bootstrap,
            tags,
            hooks,
        })
    }

    /// Prefix of every etcd key of this cluster, with a trailing slash.
    pub fn prefix(&self) -> String {
        prefix(&self.namespace, &self.scope, self.group)
    }
}

fn merge_defaults(mut t: toml::Table) -> toml::Table {
    let d = DynamicConfig::default();
    t.entry("ttl").or_insert(toml::Value::Integer(d.ttl as i64));
    t.entry("loop_wait")
        .or_insert(toml::Value::Float(d.loop_wait));
    t.entry("retry_timeout")
        .or_insert(toml::Value::Float(d.retry_timeout));
    t.entry("maximum_lag_on_failover")
        .or_insert(toml::Value::Integer(d.maximum_lag_on_failover as i64));
    t
}

/// pg_basebackup's `--max-rate` syntax and bounds (32 kB/s to 1 GB/s):
/// a number of kB, or a number with `k` or `M`; refused here rather than by
/// the first rebuild, long after the file was written.
fn check_max_rate(v: &str) -> Result<(), String> {
    let (num, unit_kb) = match v.strip_suffix('M') {
        Some(n) => (n, 1024),
        None => (v.strip_suffix('k').unwrap_or(v), 1),
    };
    let kb = num
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(unit_kb))
        .ok_or_else(|| {
            format!("{v:?} is not a rate like \"100M\", \"512k\" or \"65536\" (kB/s)")
        })?;
    if !(32..=1024 * 1024).contains(&kb) {
        return Err(format!(
            "{v:?} is outside what pg_basebackup takes: 32k to 1024M"
        ));
    }
    Ok(())
}

/// `pg_config --bindir`, the default location of initdb, pg_ctl, pg_basebackup.
pub fn default_bin_dir() -> Result<PathBuf, String> {
    let out = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
        .map_err(|e| format!("`pg_config --bindir` could not run ({e}); set it explicitly"))?;
    if !out.status.success() {
        return Err("`pg_config --bindir` failed; set it explicitly".into());
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    // Debian's /usr/bin/pg_config reports /usr/bin, which holds only wrappers;
    // the server binaries live in /usr/lib/postgresql/<major>/bin.
    if dir.join("pg_ctl").exists() && dir.join("initdb").exists() {
        return Ok(dir);
    }
    let version = std::process::Command::new("pg_config")
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
        .unwrap_or_default();
    let major = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').next())
        .unwrap_or("15");
    let debian = PathBuf::from(format!("/usr/lib/postgresql/{major}/bin"));
    if debian.join("pg_ctl").exists() {
        Ok(debian)
    } else {
        Err(format!(
            "no pg_ctl in {} or {}; set it explicitly",
            dir.display(),
            debian.display()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
        NodeConfig::parse(text, Path::new("/etc/baton/node1.toml"), || {
            Ok(PathBuf::from("/usr/lib/postgresql/15/bin"))
        })
    }

    const MINIMAL: &str = r#"
scope = "demo"
name = "node1"
[etcd]
endpoints = ["http://127.0.0.1:2379"]
[api]
listen = "127.0.0.1:8008"
[postgresql]
data_dir = "/var/lib/baton/node1"
listen = "127.0.0.1:5432"
"#;

    #[test]
    fn a_group_puts_the_keys_under_its_number_and_routing_may_name_groups() {
        let c = parse(&MINIMAL.replace("name = \"node1\"", "name = \"node1\"\ngroup = 2")).unwrap();
        assert_eq!(c.group, Some(2));
        assert_eq!(c.prefix(), "/service/demo/2/");

        let routing = "\n[routing]\nstatements = [\"ALTER NODE dn01 WITH (HOST='{host}', PORT={port})\", \"SELECT pgxc_pool_reload()\"]\ngroups = [1, 0, 1]\n";
        let c =
            parse(&(MINIMAL.replace("name = \"node1\"", "name = \"node1\"\ngroup = 1") + routing))
                .unwrap();
        let r = c.hooks.routing.unwrap();
        assert_eq!(r.statements.len(), 2);
        assert_eq!(r.groups, vec![0, 1]);
        assert!(r.endpoints.is_empty());
        assert_eq!(r.database, "postgres");

        // Groups need the member to be in a group; a group is a number.
        let e = parse(&(MINIMAL.to_string() + routing))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("routing.groups: names groups of a multi-group cluster"),
            "{e}"
        );
        let e = parse(&MINIMAL.replace("name = \"node1\"", "name = \"node1\"\ngroup = -1"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("group: -1 is out of range"), "{e}");
        let e = parse(&(MINIMAL.to_string() + "\n[routing]\nstatements = \"SELECT 1\"\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("routing: needs at least one endpoint"), "{e}");
        let e = parse(
            &(MINIMAL.to_string()
                + "\n[routing]\nstatements = [1]\nendpoints = { a = \"host=x\" }\n"),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("routing.statements: 1 is not a string"), "{e}");
        let e = parse(&(MINIMAL.to_string() + "\n[routing]\nstatements = [\"SELECT '{hots}'\"]\nendpoints = { a = \"host=x\" }\n"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown placeholder {hots}"), "{e}");
        let forward = "\n[routing]\nstatements = \"ALTER NODE dn01 WITH (FORWARD={forward_port})\"\nendpoints = { a = \"host=x\" }\n";
        let e = parse(&(MINIMAL.to_string() + forward))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("postgresql.parameters has no forward_port"),
            "{e}"
        );
        let with_port =
            MINIMAL.to_string() + "[postgresql.parameters]\nforward_port = \"6001\"\n" + forward;
        parse(&with_port).unwrap();
    }

    #[test]
    fn routing_may_verify_the_promotion() {
        let base = "\n[routing]\nstatements = \"SELECT 1\"\nendpoints = { a = \"host=x\" }\n";
        let r = parse(&(MINIMAL.to_string() + base))
            .unwrap()
            .hooks
            .routing
            .unwrap();
        assert_eq!(
            (r.verify, r.verify_timeout),
            (None, Duration::from_secs(30))
        );
        let c = parse(
            &(MINIMAL.to_string()
                + base
                + "verify = \"INSERT INTO baton_gtm_check SELECT now()\"\nverify_timeout = 5\n"),
        )
        .unwrap();
        let r = c.hooks.routing.unwrap();
        assert_eq!(
            r.verify.as_deref(),
            Some("INSERT INTO baton_gtm_check SELECT now()")
        );
        assert_eq!(r.verify_timeout, Duration::from_secs(5));
        for (bad, says) in [
            ("verify = \" \"\n", "routing.verify: is empty"),
            (
                "verify = \"SELECT 1\"\nverify_timeout = -1\n",
                "routing.verify_timeout",
            ),
        ] {
            let e = parse(&(MINIMAL.to_string() + base + bad))
                .unwrap_err()
                .to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn minimal_config_gets_documented_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.namespace, "/service");
        assert_eq!(c.prefix(), "/service/demo/");
        assert_eq!(c.api.connect_address, c.api.listen);
        assert_eq!(c.postgresql.connect_address.to_string(), "127.0.0.1:5432");
        assert_eq!(c.postgresql.os_user, "postgres");
        assert_eq!(
            c.postgresql.socket_dir,
            PathBuf::from("/var/lib/baton/node1.sock")
        );
        assert_eq!(
            c.postgresql.log_file,
            PathBuf::from("/var/lib/baton/node1.log")
        );
        assert_eq!(c.postgresql.superuser.username, "postgres");
        assert_eq!(c.postgresql.replication.username, "replicator");
        assert_eq!(c.bootstrap, DynamicConfig::default());
        assert_eq!(c.tags, Tags::default());
        assert_eq!(
            c.postgresql.fence,
            FenceConfig {
                binary: None,
                socket: PathBuf::from("/var/lib/baton/node1.fence"),
            }
        );
    }

    #[test]
    fn a_fence_socket_path_too_long_for_unix_sockets_is_refused() {
        let long = format!("/{}", "d".repeat(110));
        let text = format!("{MINIMAL}\n[fence]\nsocket = \"{long}\"\nbinary = \"/opt/fence\"\n");
        let e = parse(&text).unwrap_err();
        let p = e
            .problems
            .iter()
            .find(|p| p.key == "fence.socket")
            .expect("fence.socket named");
        assert!(
            p.reason.contains("111 bytes, above the 107"),
            "{}",
            p.reason
        );
        let ok = format!("{MINIMAL}\n[fence]\nbinary = \"/opt/fence\"\n");
        let c = parse(&ok).unwrap();
        assert_eq!(c.postgresql.fence.binary, Some(PathBuf::from("/opt/fence")));
    }

    #[test]
    fn the_flavor_is_named_and_an_unknown_one_refused() {
        assert_eq!(
            parse(MINIMAL).unwrap().postgresql.flavor,
            crate::pg::Flavor::Postgresql
        );
        let with = |f: &str| {
            MINIMAL.replace(
                "listen = \"127.0.0.1:5432\"",
                &format!("listen = \"127.0.0.1:5432\"\nflavor = \"{f}\""),
            )
        };
        let c = parse(&with("greenplum")).unwrap();
        assert_eq!(c.postgresql.flavor, crate::pg::Flavor::Greenplum);
        let c = parse(&with("opentenbase\"\nnode_type = \"coordinator")).unwrap();
        assert_eq!(
            c.postgresql.flavor,
            crate::pg::Flavor::OpenTenBase(crate::pg::NodeType::Coordinator)
        );
        let e = parse(&with("opentenbase")).unwrap_err();
        assert_eq!(e.problems[0].key, "postgresql.node_type", "{e}");
        let c = parse(&with("opengauss")).unwrap();
        assert_eq!(c.postgresql.flavor, crate::pg::Flavor::OpenGauss);
        let e = parse(&with("db2")).unwrap_err();
        assert_eq!(e.problems[0].key, "postgresql.flavor", "{e}");
        assert!(e.problems[0].reason.contains("unknown flavor"), "{e}");
    }

    #[test]
    fn the_basebackup_rate_limit_is_checked_like_pg_basebackup_would() {
        let with = |v: &str| {
            MINIMAL.replace(
                "listen = \"127.0.0.1:5432\"",
                &format!("listen = \"127.0.0.1:5432\"\nbasebackup_max_rate = \"{v}\""),
            )
        };
        assert_eq!(parse(MINIMAL).unwrap().postgresql.basebackup_max_rate, None);
        for ok in ["100M", "512k", "65536", "32k", "1024M"] {
            let c = parse(&with(ok)).unwrap();
            assert_eq!(c.postgresql.basebackup_max_rate.as_deref(), Some(ok));
        }
        for (bad, says) in [
            ("fast", "is not a rate"),
            ("10G", "is not a rate"),
            ("16k", "outside"),
            ("2048M", "outside"),
            ("-5", "is not a rate"),
        ] {
            let e = parse(&with(bad)).unwrap_err();
            assert_eq!(e.problems[0].key, "postgresql.basebackup_max_rate", "{e}");
            assert!(e.problems[0].reason.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn a_start_timeout_that_would_overflow_is_refused() {
        let text = MINIMAL.replace(
            "listen = \"127.0.0.1:5432\"",
            "listen = \"127.0.0.1:5432\"\nstart_timeout = 1e20",
        );
        let err = parse(&text).unwrap_err();
        assert_eq!(err.problems[0].key, "postgresql.start_timeout", "{err}");
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = r#"
scope = "demo"
colour = "blue"
[etcd]
endpoints = ["127.0.0.1:2379"]
[api]
listen = "localhost"
[postgresql]
data_dir = "relative/dir"
listen = 5432
[postgresql.authentication.superuser]
user = "x"
[bootstrap.dcs]
ttl = 3
loop_wait = 1
retry_timeout = 1
"#;
        let err = parse(text).unwrap_err();
        let text_err = err.to_string();
        assert!(
            text_err.starts_with("/etc/baton/node1.toml: "),
            "{text_err}"
        );
        let keys: Vec<&str> = err.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "name",
                "etcd.endpoints",
                "api.listen",
                "postgresql.data_dir",
                "postgresql.listen",
                "postgresql.authentication.superuser.user",
                "bootstrap.dcs.ttl",
                "colour",
            ]
        );
    }

    #[test]
    fn syntax_error_names_the_line() {
        let err = parse("scope = \"demo\"\nname = \n").unwrap_err();
        assert_eq!(err.problems.len(), 1);
        assert!(
            err.problems[0].reason.starts_with("line 2: TOML syntax"),
            "{:?}",
            err.problems
        );
    }

    #[test]
    fn tags_parse_with_known_and_custom_fields() {
        let text =
            format!("{MINIMAL}\n[tags]\nnofailover = true\nfailover_priority = 2\nzone = \"a\"\n");
        let c = parse(&text).unwrap();
        assert!(c.tags.nofailover);
        assert_eq!(c.tags.failover_priority, Some(2));
        assert_eq!(c.tags.other["zone"], "a");
    }

    #[test]
    fn example_configs_in_the_repo_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let mut seen = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                if path.file_name().is_some_and(|n| n == "router.toml") {
                    crate::router::RouterConfig::parse(&text, &path)
                        .unwrap_or_else(|e| panic!("{e}"));
                } else {
                    NodeConfig::parse(&text, &path, || Ok(PathBuf::from("/usr/bin")))
                        .unwrap_or_else(|e| panic!("{e}"));
                }
                seen += 1;
            }
        }
        assert!(seen >= 1, "no example configs found in {}", dir.display());
    }
}
