//! The router's file (`baton router -c router.toml`): which cluster, which
//! listeners, how long to hold clients. Problems are reported like the
//! node file's: every one at once, each naming its key.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use crate::config::{parse_toml, read_file, ConfigError, Reader};

#[derive(Debug, Clone, PartialEq)]
pub struct RouterConfig {
    pub scope: String,
    pub namespace: String,
    /// The group of a multi-group cluster whose primary and replicas this
    /// router serves.
    pub group: Option<u32>,
    pub etcd_endpoints: Vec<String>,
    /// `/metrics`, `/routes`, `/health` and the dashboard (`/ui`); none
    /// when unset.
    pub api_listen: Option<SocketAddr>,
    /// `api.cafile`: the CA to trust for the agents' APIs over HTTPS (the
    /// dashboard's calls go to them).
    pub api_cafile: Option<std::path::PathBuf>,
    /// How long a client waits for a backend before it is refused.
    pub hold_timeout: Duration,
    /// One attempt to reach a backend, TCP connect to first answer.
    pub connect_timeout: Duration,
    pub read_write: Listener,
    pub read_only: Option<ReadOnly>,
    /// How long a session that just moved data polls before it sleeps
    /// (`router::pump`); zero: never.
    pub busy_poll: Duration,
    /// Busy polling only while a route has at most this many sessions.
    pub busy_poll_max_sessions: u64,
    /// Threads serving connections, each with a runtime of its own; a new
    /// connection goes to the one serving the fewest.
    pub workers: usize,
    /// Hand busy routes' sessions to the kernel once their handshake is
    /// over (`router::kernel`); needs CAP_BPF and CAP_NET_ADMIN. Unset:
    /// where the kernel allows it.
    pub kernel_splice: Option<bool>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    pub listen: SocketAddr,
    /// Clients beyond this many at once are refused (SQLSTATE 53300).
    pub max_connections: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ReadOnly {
    pub listener: Listener,
    pub max_lag: u64,
    pub fallback_to_primary: bool,
}

const DEFAULT_MAX_CONNECTIONS: usize = 1000;
/// Patroni's `maximum_lag_on_failover` default: 1 MiB of WAL.
const DEFAULT_MAX_LAG: u64 = 1 << 20;

impl RouterConfig {
    pub fn load(path: &Path) -> Result<RouterConfig, ConfigError> {
        Self::parse(&read_file(path)?, path)
    }

    pub fn parse(text: &str, file: &Path) -> Result<RouterConfig, ConfigError> {
        let mut root = parse_toml(text, file)?;
        let mut r = Reader { problems: vec![] };
        let (scope, namespace) = r.scope(&mut root);
        let group = r.group(&mut root);
        let endpoints = r.etcd(&mut root);
        let hold_timeout = r
            .seconds(&mut root, "", "hold_timeout")
            .unwrap_or(Duration::from_secs(30));
        let connect_timeout = r
            .seconds(&mut root, "", "connect_timeout")
            .unwrap_or(Duration::from_secs(2));
        let busy_poll_us: u64 = r.opt(&mut root, "", "busy_poll_us").unwrap_or(200);
        if busy_poll_us > 100_000 {
            r.problem(
                "busy_poll_us",
                format!("{busy_poll_us} µs is a tenth of a second or more of spinning per message; use at most 100000 (0 turns it off)"),
            );
        }
        let busy_poll_max_sessions = r.opt(&mut root, "", "busy_poll_max_sessions").unwrap_or(2);
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let workers: usize = r.opt(&mut root, "", "workers").unwrap_or(cores);
        if workers == 0 || workers > 256 {
            r.problem("workers", format!("{workers}: must be 1 to 256"));
        }
        let kernel_splice = r.opt(&mut root, "", "kernel_splice");
        let mut api = r.table(&mut root, "", "api");
        let api_listen = r.addr(&mut api, "api", "listen");
        let api_cafile: Option<std::path::PathBuf> = r.opt(&mut api, "api", "cafile");
        r.unknown(api, "api");
        let mut rw = r.table(&mut root, "", "read_write");
        let read_write = listener(&mut r, &mut rw, "read_write");
        r.unknown(rw, "read_write");
        let read_only = match root.contains_key("read_only") {
            false => None,
            true => {
                let mut ro = r.table(&mut root, "", "read_only");
                let listener = listener(&mut r, &mut ro, "read_only");
                let max_lag = r
                    .opt::<u64>(&mut ro, "read_only", "max_lag")
                    .unwrap_or(DEFAULT_MAX_LAG);
                let fallback_to_primary = r
                    .opt(&mut ro, "read_only", "fallback_to_primary")
                    .unwrap_or(true);
                r.unknown(ro, "read_only");
                listener.map(|listener| ReadOnly {
                    listener,
                    max_lag,
                    fallback_to_primary,
                })
            }
        };
        r.unknown(root, "");
        let listens: Vec<(&str, SocketAddr)> = [
            ("read_write.listen", read_write.as_ref().map(|l| l.listen)),
            (
                "read_only.listen",
                read_only.as_ref().map(|l| l.listener.listen),
            ),
            ("api.listen", api_listen),
        ]
        .into_iter()
        .filter_map(|(k, a)| Some((k, a?)))
        .collect();
        for (i, (k, a)) in listens.iter().enumerate() {
            if let Some((other, _)) = listens[..i].iter().find(|(_, b)| b == a) {
                r.problem(*k, format!("{a} is already {other}"));
            }
        }
        if !r.problems.is_empty() {
            return Err(ConfigError {
                file: file.to_path_buf(),
                problems: r.problems,
            });
        }
        Ok(RouterConfig {
            scope: scope.expect("checked"),
            namespace,
            group,
            etcd_endpoints: endpoints.expect("checked"),
            api_listen,
            api_cafile,
            hold_timeout,
            connect_timeout,
            read_write: read_write.expect("checked"),
            read_only,
            busy_poll: Duration::from_micros(busy_poll_us),
            busy_poll_max_sessions,
            workers,
            kernel_splice,
        })
    }

    pub fn prefix(&self) -> String {
        crate::config::prefix(&self.namespace, &self.scope, self.group)
    }
}

fn listener(r: &mut Reader, t: &mut toml::Table, prefix: &str) -> Option<Listener> {
    let listen = r.addr(t, prefix, "listen");
    let key = format!("{prefix}.listen");
    if listen.is_none() && !r.problems.iter().any(|p| p.key == key) {
        r.problem(key, "missing (required)");
    }
    let max_connections = r
        .opt::<usize>(t, prefix, "max_connections")
        .unwrap_or(DEFAULT_MAX_CONNECTIONS);
    if max_connections == 0 {
        r.problem(format!("{prefix}.max_connections"), "must be at least 1");
    }
    Some(Listener {
        listen: listen?,
        max_connections,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<RouterConfig, ConfigError> {
        RouterConfig::parse(text, Path::new("/etc/baton/router.toml"))
    }

    const MINIMAL: &str = r#"
scope = "demo"
[etcd]
endpoints = ["http://127.0.0.1:2379"]
[read_write]
listen = "127.0.0.1:5000"
"#;

    #[test]
    fn a_router_serves_one_group_of_a_multi_group_cluster() {
        let c = parse(&MINIMAL.replace("scope = \"demo\"", "scope = \"demo\"\ngroup = 3")).unwrap();
        assert_eq!(c.prefix(), "/service/demo/3/");
        let e = parse(&MINIMAL.replace("scope = \"demo\"", "scope = \"demo\"\ngroup = \"dn\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("group:"), "{e}");
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.prefix(), "/service/demo/");
        assert_eq!(c.hold_timeout, Duration::from_secs(30));
        assert_eq!(c.read_write.max_connections, 1000);
        assert_eq!(c.read_only, None);
        assert_eq!(c.api_listen, None);
        assert_eq!(c.busy_poll, Duration::from_micros(200));
        assert_eq!(c.busy_poll_max_sessions, 2);
        assert_eq!(c.kernel_splice, None);
        assert_eq!(
            parse(&MINIMAL.replace(
                "scope = \"demo\"",
                "scope = \"demo\"\nkernel_splice = false"
            ))
            .unwrap()
            .kernel_splice,
            Some(false)
        );
        let e = parse(&MINIMAL.replace(
            "scope = \"demo\"",
            "scope = \"demo\"\nkernel_splice = \"yes\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("kernel_splice"), "{e}");
        let c = parse(&format!(
            "{MINIMAL}[read_only]\nlisten = \"127.0.0.1:5001\"\nmax_lag = 100\n"
        ))
        .unwrap();
        let ro = c.read_only.unwrap();
        assert_eq!((ro.max_lag, ro.fallback_to_primary), (100, true));
    }

    #[test]
    fn every_problem_names_its_key() {
        let text = r#"
scope = "demo cluster"
hold_timeout = -1
colour = "blue"
[etcd]
endpoints = ["127.0.0.1:2379"]
[read_write]
listen = "127.0.0.1:5000"
max_connections = 0
[read_only]
listen = "127.0.0.1:5000"
max_lag = "lots"
"#;
        let e = parse(text).unwrap_err();
        let keys: Vec<&str> = e.problems.iter().map(|p| p.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "scope",
                "etcd.endpoints",
                "hold_timeout",
                "read_write.max_connections",
                "read_only.max_lag",
                "colour",
                "read_only.listen",
            ],
            "{e}"
        );
        assert!(e
            .to_string()
            .starts_with("/etc/baton/router.toml: 7 problems"));
        let e = parse("scope = \"demo\"\n[etcd]\nendpoints = [\"http://e:2379\"]\n").unwrap_err();
        assert_eq!(e.problems[0].key, "read_write.listen");
    }
}
