//! Shared fixture for integration tests: real etcd, real `baton agent`
//! processes and real PostgreSQL 15 on loopback ports, in a temp dir that is
//! kept (and its path printed) when a test fails.
#![allow(dead_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

/// The store trait, so that tests call `Dcs::load` and friends.
#[allow(unused_imports)]
pub use baton::agent::Store as _;
use baton_core::status::{ClusterState, ClusterStatus};
use baton_local::local::{ClusterOptions, LocalCluster};

/// This machine has 2 cores: one cluster at a time per test binary.
static CLUSTER_SLOT: Mutex<()> = Mutex::new(());

/// One test's clusters at a time (2 cores), held for the whole test: in a
/// struct so that no lock guard is held bare across an await.
pub struct Serial(pub MutexGuard<'static, ()>);

pub fn one_cluster_at_a_time() -> MutexGuard<'static, ()> {
    CLUSTER_SLOT.lock().unwrap_or_else(|p| p.into_inner())
}

pub fn baton_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_baton"))
}

/// A temp dir the postgres OS user can traverse; kept when the test panics.
pub struct TestDir {
    dir: Option<tempfile::TempDir>,
    pub path: PathBuf,
}

impl TestDir {
    pub fn new(name: &str) -> TestDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("baton-test-{name}-"))
            .tempdir_in("/tmp")
            .expect("temp dir");
        let path = dir.path().to_path_buf();
        baton_local::local::open_dir(&path).expect("chmod temp dir");
        TestDir {
            dir: Some(dir),
            path,
        }
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(d) = self.dir.take() {
                let p = d.keep();
                eprintln!("test failed: its files are kept in {}", p.display());
            }
        }
    }
}

/// A local cluster plus its directory; dropping it stops every process it started.
pub struct TestCluster {
    pub c: LocalCluster,
    pub dir: TestDir,
    _slot: MutexGuard<'static, ()>,
}

impl TestCluster {
    pub fn new(name: &str, opts: ClusterOptions) -> TestCluster {
        let slot = one_cluster_at_a_time();
        let dir = TestDir::new(name);
        let c =
            LocalCluster::create(&dir.path, &baton_bin(), &opts).expect("creating local cluster");
        TestCluster {
            c,
            dir,
            _slot: slot,
        }
    }

    pub fn started(name: &str, opts: ClusterOptions) -> TestCluster {
        let mut t = Self::new(name, opts);
        t.c.start_all().expect("starting agents");
        t
    }

    /// Waits until `baton list` would show the given state, with every node
    /// listed as a member.
    pub async fn wait_state(&self, want: ClusterState, limit: Duration) -> ClusterStatus {
        let n = self.c.nodes.len();
        wait_for(&format!("cluster state {want:?}"), limit, || async {
            let s = self.c.status().await.map_err(|e| format!("{e:#}"))?;
            if s.state == want && (want != ClusterState::Normal || s.members.len() == n) {
                Ok(s)
            } else {
                Err(format!("{:?}: {:?}\n{}", s.state, s.problems, s.render()))
            }
        })
        .await
    }

    /// A client of the test cluster's etcd prefix, as the agents see it.
    pub async fn dcs(&self) -> baton::dcs::Dcs {
        baton::dcs::Dcs::connect(
            std::slice::from_ref(&self.c.etcd.endpoint),
            "/service/demo/".into(),
            Duration::from_secs(3),
        )
        .await
        .expect("connecting to the test etcd")
    }

    pub fn agent_log(&self, i: usize) -> String {
        std::fs::read_to_string(&self.c.nodes[i].log_path).unwrap_or_default()
    }

    pub async fn leader_index(&self) -> Option<usize> {
        let v = self.c.view().await.ok()?;
        let l = v.leader_name()?.to_string();
        self.c.nodes.iter().position(|n| n.name == l)
    }

    pub async fn sql(&self, i: usize, query: &str) -> Result<Vec<tokio_postgres::Row>, String> {
        sql_port(self.c.nodes[i].pg_port, query).await
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        if std::thread::panicking() {
            for (i, n) in self.c.nodes.iter().enumerate() {
                let log = self.agent_log(i);
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                eprintln!("--- last lines of {} agent log ---", n.name);
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
        self.c.shutdown();
    }
}

pub async fn sql_port(port: u16, query: &str) -> Result<Vec<tokio_postgres::Row>, String> {
    let cfg = baton_local::workload::loopback(port, Duration::from_secs(2));
    let (client, conn) =
        tokio::time::timeout(Duration::from_secs(3), cfg.connect(tokio_postgres::NoTls))
            .await
            .map_err(|_| "connect timed out".to_string())?
            .map_err(|e| pg_error(&e))?;
    tokio::spawn(conn);
    tokio::time::timeout(Duration::from_secs(5), client.query(query, &[]))
        .await
        .map_err(|_| "query timed out".to_string())?
        .map_err(|e| pg_error(&e))
}

/// Runs the openssl CLI in `dir` (certificates for TLS tests).
/// A self-signed certificate and its key, in `dir`, valid two days.
pub fn self_signed(dir: &Path, key: &str, cert: &str, subject: &str) {
    openssl(
        dir,
        &[
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", cert, "-days",
            "2", "-subj", subject,
        ],
    );
}

pub fn openssl(dir: &Path, args: &[&str]) {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Polls `f` until it returns Ok, at most `limit`; panics with the last error.
pub async fn wait_for<T, F, Fut>(what: &str, limit: Duration, f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    match baton_local::local::poll(what, limit, Duration::from_millis(200), f).await {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    }
}

/// HTTP status of `method url`.
pub async fn http_status(method: reqwest::Method, url: &str) -> Result<u16, String> {
    let client =
        baton::tls::http_client(Duration::from_secs(3), None).map_err(|e| e.to_string())?;
    let r = client
        .request(method, url)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    Ok(r.status().as_u16())
}

pub async fn http_json(url: &str) -> Result<serde_json::Value, String> {
    let client =
        baton::tls::http_client(Duration::from_secs(3), None).map_err(|e| e.to_string())?;
    let r = client.get(url).send().await.map_err(|e| e.to_string())?;
    r.json().await.map_err(|e| e.to_string())
}

pub fn run_baton(args: &[&str]) -> std::process::Output {
    std::process::Command::new(baton_bin())
        .args(args)
        .output()
        .expect("running baton")
}

/// Runs an operator command against the test cluster whose etcd is `etcd`
/// (scope `demo`), with the credentials the auth tests configure.
pub fn ctl_at(etcd: &str, args: &[&str]) -> std::process::Output {
    let mut all = vec![
        args[0],
        "--etcd",
        etcd,
        "--scope",
        "demo",
        "--username",
        "admin",
        "--password",
        "s3cret",
    ];
    all.extend_from_slice(&args[1..]);
    run_baton(&all)
}

/// `ctl_at` on `t`: (success, stdout, stderr).
pub fn ctl(t: &TestCluster, args: &[&str]) -> (bool, String, String) {
    let out = ctl_at(&t.c.etcd.endpoint, args);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

pub fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

pub fn pg_error(e: &tokio_postgres::Error) -> String {
    baton::pg::describe(e)
}

/// A TCP relay in front of etcd for one agent: `cut()` drops every
/// connection and refuses new ones, so that agent loses etcd while the
/// others (and postgres replication) carry on.
pub struct Relay {
    pub endpoint: String,
    cut: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    pub async fn start(target_port: u16) -> Relay {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let cut = tokio_util::sync::CancellationToken::new();
        let token = cut.clone();
        let task = tokio::spawn(async move {
            loop {
                let (mut inbound, _) = tokio::select! {
                    _ = token.cancelled() => return,
                    r = listener.accept() => match r { Ok(c) => c, Err(_) => continue },
                };
                let token = token.clone();
                tokio::spawn(async move {
                    let Ok(mut out) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target_port)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = token.cancelled() => {}
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut out) => {}
                    }
                });
            }
        });
        Relay {
            endpoint,
            cut,
            task,
        }
    }

    /// Drops all relayed connections and stops listening (new connects are refused).
    pub fn cut(&self) {
        self.cut.cancel();
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut.cancel();
        self.task.abort();
    }
}

/// Reason of each member's last decision, from its member key: the stable
/// code (what tests compare) and the text (what failure messages show).
pub async fn reasons(t: &TestCluster) -> std::collections::BTreeMap<String, (String, String)> {
    t.c.view()
        .await
        .map(|v| {
            v.members
                .into_iter()
                .map(|(n, m)| {
                    (
                        n,
                        (
                            m.baton_reason_code.unwrap_or_default(),
                            m.baton_reason.unwrap_or_default(),
                        ),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

impl TestCluster {
    /// Starts node1 first so it bootstraps and leads, then the others, each
    /// with its extra TOML from `per_node`; returns once the cluster is Normal.
    pub async fn led_by_node1(
        name: &str,
        opts: ClusterOptions,
        per_node: &[(usize, &str)],
    ) -> TestCluster {
        let mut t = TestCluster::new(name, opts);
        for (i, toml) in per_node {
            t.c.append_config(*i, toml).unwrap();
        }
        t.start_led_by_node1().await;
        t
    }

    /// Starts node1 first so it bootstraps and leads, then the others;
    /// returns once the cluster is Normal.
    pub async fn start_led_by_node1(&mut self) {
        let t = self;
        t.c.start_agent(0).unwrap();
        wait_for("node1 leading", Duration::from_secs(60), || async {
            let s = t.c.status().await.map_err(|e| format!("{e:#}"))?;
            if s.leader.as_deref() == Some("node1")
                && s.members.iter().any(|m| m.state == "running")
            {
                Ok(())
            } else {
                Err(s.render())
            }
        })
        .await;
        for i in 1..t.c.nodes.len() {
            t.c.start_agent(i).unwrap();
        }
        t.wait_state(ClusterState::Normal, Duration::from_secs(90))
            .await;
    }
}

/// Kills a node the hard way: agent and postgres, SIGKILL, together.
pub fn kill_node(t: &mut TestCluster, i: usize) {
    t.c.kill_agent(i);
    t.c.kill_postgres(i);
}

pub async fn wait_new_leader(t: &TestCluster, not: &str, limit: Duration) -> String {
    t.c.wait_new_leader(not, limit)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// Waits until `node` streams from the leader on the leader's timeline.
pub async fn wait_streaming_on_leader_timeline(
    t: &TestCluster,
    node: &str,
    limit: Duration,
) -> u32 {
    wait_for(
        &format!("{node} streaming on the leader's timeline"),
        limit,
        || async {
            let v = t.c.view().await.map_err(|e| format!("{e:#}"))?;
            let leader_tl = v.leader_member().and_then(|m| m.timeline);
            match v.members.get(node) {
                Some(m)
                    if m.replication_state.as_deref() == Some("streaming")
                        && m.timeline.is_some()
                        && m.timeline == leader_tl =>
                {
                    Ok(m.timeline.unwrap())
                }
                other => Err(format!("{other:?}; leader tl {leader_tl:?}")),
            }
        },
    )
    .await
}

pub async fn http_text(url: &str) -> String {
    baton::tls::http_client(Duration::from_secs(5), None)
        .unwrap()
        .get(url)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

/// A gauge from a member's `/metrics`.
pub async fn metric(t: &TestCluster, i: usize, name: &str) -> f64 {
    let text = http_text(&t.c.nodes[i].api_url("/metrics")).await;
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in metrics"))
}

/// Makes member `i` lag: freezes its WAL receiver (SIGSTOP; resume it with
/// SIGCONT on the returned PID), runs `sql` on the leader (member 0), and
/// waits until the leader's published position is more than `bytes` ahead
/// of member `i`'s.
pub async fn make_lag(t: &TestCluster, i: usize, sql: &str, bytes: u64) -> nix::unistd::Pid {
    let rows = t
        .sql(i, "SELECT pid FROM pg_stat_wal_receiver")
        .await
        .unwrap();
    let receiver = nix::unistd::Pid::from_raw(rows[0].get::<_, i32>(0));
    nix::sys::signal::kill(receiver, nix::sys::signal::Signal::SIGSTOP).unwrap();
    t.sql(0, sql).await.unwrap();
    let name = t.c.nodes[i].name.clone();
    wait_for(
        &format!("{name} lagging over {bytes} bytes"),
        Duration::from_secs(15),
        || async {
            let v = t.c.view().await.map_err(|e| format!("{e:#}"))?;
            let optime = v.status.as_ref().and_then(|s| s.optime).unwrap_or(0);
            let pos = v
                .members
                .get(&name)
                .and_then(|m| m.xlog_location)
                .unwrap_or(0);
            if optime > pos + bytes {
                Ok(())
            } else {
                Err(format!("leader at {optime}, {name} at {pos}"))
            }
        },
    )
    .await;
    receiver
}

/// The benchmark workload against the whole cluster (multi-host,
/// read-write), started once `min_rows` writes are in.
pub struct Writer {
    pub cfg: tokio_postgres::Config,
    pub table: String,
    stop: tokio_util::sync::CancellationToken,
    task: tokio::task::JoinHandle<baton_local::workload::WriteLog>,
}

impl Writer {
    pub async fn start(t: &TestCluster, table: &str, min_rows: usize) -> Writer {
        let cfg = baton_local::workload::read_write_config(&t.c.pg_hosts(), "postgres");
        baton_local::workload::create_table(&cfg, table)
            .await
            .unwrap();
        let stop = tokio_util::sync::CancellationToken::new();
        let task = tokio::spawn(baton_local::workload::run_writes(
            cfg.clone(),
            table.to_string(),
            Duration::from_millis(10),
            stop.clone(),
        ));
        wait_for("writes flowing", Duration::from_secs(10), || async {
            let n = baton_local::workload::present_ids(&cfg, table).await?.len();
            if n >= min_rows {
                Ok(())
            } else {
                Err(format!("{n} rows"))
            }
        })
        .await;
        Writer {
            cfg,
            table: table.to_string(),
            stop,
            task,
        }
    }

    /// Stops writing; returns the log and the ids now in the table.
    pub async fn finish(
        self,
    ) -> (
        baton_local::workload::WriteLog,
        std::collections::HashSet<i64>,
    ) {
        self.stop.cancel();
        let log = self.task.await.unwrap();
        let present = baton_local::workload::present_ids(&self.cfg, &self.table)
            .await
            .unwrap();
        (log, present)
    }
}

/// One writer per member, straight at it (not multi-host), each into a
/// table of its own: who accepted writes, and when. Two members' ack
/// periods overlapping is two writable primaries.
pub struct MemberWriters {
    stop: tokio_util::sync::CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<baton_local::workload::WriteLog>>,
}

impl MemberWriters {
    /// Tables `<prefix>1..` are made on the leader; returns once the
    /// current leader's writer has had writes acknowledged.
    pub async fn start(t: &TestCluster, prefix: &str) -> MemberWriters {
        use baton_local::workload;
        let all = workload::read_write_config(&t.c.pg_hosts(), "postgres");
        for i in 1..=t.c.nodes.len() {
            workload::create_table(&all, &format!("{prefix}{i}"))
                .await
                .unwrap();
        }
        let stop = tokio_util::sync::CancellationToken::new();
        let tasks =
            t.c.pg_hosts()
                .into_iter()
                .enumerate()
                .map(|(i, h)| {
                    let mut cfg = workload::read_write_config(&[h], "postgres");
                    cfg.target_session_attrs(tokio_postgres::config::TargetSessionAttrs::Any);
                    tokio::spawn(workload::run_writes(
                        cfg,
                        format!("{prefix}{}", i + 1),
                        Duration::from_millis(10),
                        stop.clone(),
                    ))
                })
                .collect();
        let leader = t.leader_index().await.expect("a leader to write to");
        let table = format!("{prefix}{}", leader + 1);
        wait_for("writes on the leader", Duration::from_secs(10), || async {
            let n = t
                .sql(leader, &format!("SELECT count(*) FROM {table}"))
                .await?[0]
                .get::<_, i64>(0);
            if n > 10 {
                Ok(())
            } else {
                Err(format!("{n} rows"))
            }
        })
        .await;
        MemberWriters { stop, tasks }
    }

    /// Waits (bounded) until member `i` has acknowledged a write.
    pub async fn wait_writes_on(&self, t: &TestCluster, prefix: &str, i: usize) {
        let table = format!("{prefix}{}", i + 1);
        wait_for(
            "writes on the new leader",
            Duration::from_secs(15),
            || async {
                let n =
                    t.sql(i, &format!("SELECT count(*) FROM {table}")).await?[0].get::<_, i64>(0);
                if n > 0 {
                    Ok(())
                } else {
                    Err("none yet".into())
                }
            },
        )
        .await;
    }

    pub async fn finish(self) -> Vec<baton_local::workload::WriteLog> {
        self.stop.cancel();
        let mut logs = vec![];
        for task in self.tasks {
            logs.push(task.await.unwrap());
        }
        logs
    }
}

/// Panics unless member `old`'s last acknowledged write came before member
/// `new`'s first: never two writable primaries.
pub fn assert_one_writer_at_a_time(
    logs: &[baton_local::workload::WriteLog],
    old: usize,
    new: usize,
) {
    let old_last = logs[old]
        .acked
        .last()
        .map(|(_, at)| *at)
        .expect("the old leader acknowledged writes");
    let new_first = logs[new]
        .acked
        .first()
        .map(|(_, at)| *at)
        .expect("the new leader acknowledged writes");
    assert!(
        old_last < new_first,
        "two writable members: node{} acknowledged a write {:?} after node{} started accepting",
        old + 1,
        old_last - new_first,
        new + 1
    );
}

/// What member `i`'s fence process answers (its socket is the default
/// `<data_dir>.fence`), or why it does not.
pub fn fence_of(t: &TestCluster, i: usize) -> Result<baton_fence::Reply, String> {
    use std::io::{BufRead, Write};
    let mut socket = t.c.nodes[i].data_dir.clone().into_os_string();
    socket.push(".fence");
    let mut s = std::os::unix::net::UnixStream::connect(&socket).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok();
    writeln!(s, "{}", baton_fence::Request::Keep).map_err(|e| e.to_string())?;
    let mut line = String::new();
    std::io::BufReader::new(s)
        .read_line(&mut line)
        .map_err(|e| e.to_string())?;
    baton_fence::Reply::parse(&line)
}

/// The fence process's log of member `i`.
pub fn fence_log(t: &TestCluster, i: usize) -> String {
    let mut log = t.c.nodes[i].data_dir.clone().into_os_string();
    log.push(".fence.log");
    std::fs::read_to_string(log).unwrap_or_default()
}

/// SIGSTOPs a process and SIGCONTs it when dropped, so that a failing
/// test leaves nothing stopped behind.
pub struct Stopped(pub nix::unistd::Pid);

impl Stopped {
    pub fn stop(pid: u32) -> Stopped {
        let pid = nix::unistd::Pid::from_raw(pid as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        Stopped(pid)
    }
}

impl Drop for Stopped {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(self.0, nix::sys::signal::Signal::SIGCONT);
    }
}

/// The stand-in's bin directory: its wrappers, plus PostgreSQL's other
/// tools linked beside them.
pub fn standin_bin(dir: &Path, flavor: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/standins")
        .join(flavor);
    let bin = dir.join(format!("{flavor}-bin"));
    std::fs::create_dir_all(&bin).unwrap();
    let real = baton::config::default_bin_dir().expect("PostgreSQL 15 bin dir");
    for e in std::fs::read_dir(&real).unwrap() {
        let e = e.unwrap();
        let to = bin.join(e.file_name());
        std::os::unix::fs::symlink(e.path(), &to).unwrap();
    }
    for e in std::fs::read_dir(&src).unwrap() {
        let e = e.unwrap();
        let to = bin.join(e.file_name());
        let _ = std::fs::remove_file(&to);
        std::fs::copy(e.path(), &to).unwrap();
    }
    std::fs::write(bin.join(".real-bin"), real.display().to_string()).unwrap();
    // The wrappers run as the postgres OS user and log beside themselves.
    std::fs::write(bin.join("standin.log"), "").unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        bin.join("standin.log"),
        std::fs::Permissions::from_mode(0o666),
    )
    .unwrap();
    baton_local::local::open_dir(&bin).unwrap();
    bin
}

/// Puts `flavor` (its `[postgresql]` lines) and the stand-in's bin
/// directory into each node's file.
pub fn set_flavor(nodes: &[baton_local::local::LocalNode], flavor: &str, bin: &Path) {
    for n in nodes {
        let text = std::fs::read_to_string(&n.config_path).unwrap();
        let anchor = "start_timeout = 30\n";
        assert!(text.contains(anchor), "{}", n.config_path.display());
        let text = text.replace(
            anchor,
            &format!("{anchor}{flavor}\nbin_dir = \"{}\"\n", bin.display()),
        );
        std::fs::write(&n.config_path, text).unwrap();
    }
}
