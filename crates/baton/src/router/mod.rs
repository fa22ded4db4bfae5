//! `baton router`: clients connect to one address and reach the primary
//! (read-write listener) or a fresh replica (read-only listener), across
//! switchovers and failovers, with no agent on the router's host.
//!
//! - It follows etcd by watch (`Dcs::mirror`) and derives its backends
//!   with `baton_core::route::routes`, a pure function of the view.
//! - A client arriving while there is no backend (a switchover's pause, a
//!   failover) is held, not refused, up to `hold_timeout`; so is one whose
//!   backend answers that it is shutting down or still starting (the
//!   member key can be a tick behind postgres), or, on the writer route,
//!   that it is a hot standby. The router reads the server's greeting up
//!   to ReadyForQuery for that, when the server asks no password; past
//!   the greeting it moves bytes unread (`pump`), or with `kernel_splice`
//!   lets the kernel move them (`kernel`).
//! - A writer connection whose backend stops being the primary (another
//!   member or none holds the key, or its member key says neither primary
//!   nor promoting) is closed at once: its client sees one broken
//!   connection, never a session on a demoted server. While the backend
//!   holds the key and says primary in any state (`Routes::leading`) its
//!   sessions run on: a leader handing over in a switchover (new clients
//!   wait; its clean stop ends the sessions and loses nothing), or one
//!   whose agent missed a status query under load.
//! - A client is handed a server's greeting only if that server is still
//!   the route's backend once it greeted; otherwise the router tries again
//!   and the client never sees the session.
//! - A leader still promoting (its member key a tick behind postgres), or
//!   one whose status query did not answer (`Routes::unconfirmed`), is
//!   tried too, and given the client only if its greeting says it is
//!   writable (`in_hot_standby = off`): the leader key names it and
//!   postgres says it takes writes, which is all the member key would say.
//! - TLS is passed through: the client's SSLRequest goes to the server and
//!   the TLS session is between them (the router then cannot read the
//!   greeting, so a refusal inside TLS reaches the client).
//!
//! Several routers may run side by side: they keep no state but etcd's.

pub mod config;
mod kernel;
mod metrics;
mod pump;
mod wire;

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use baton_core::route::{routes, Backend, ReadPolicy, Routes};

pub use config::RouterConfig;
use metrics::RouteMetrics;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    ReadWrite,
    ReadOnly,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::ReadWrite => "read_write",
            Kind::ReadOnly => "read_only",
        }
    }
}

/// What every connection task shares.
struct Shared {
    cfg: RouterConfig,
    routes: watch::Receiver<Routes>,
    /// The members' API base URLs, the leader's first (the dashboard).
    agents: watch::Receiver<Vec<String>>,
    rw: RouteMetrics,
    ro: RouteMetrics,
    /// Round-robin position over the read pool.
    next_reader: AtomicUsize,
    /// Set unless `kernel_splice = false`, if the kernel let us load the
    /// program.
    splicer: Option<kernel::Splicer>,
}

impl Shared {
    fn metrics(&self, kind: Kind) -> &RouteMetrics {
        match kind {
            Kind::ReadWrite => &self.rw,
            Kind::ReadOnly => &self.ro,
        }
    }

    /// Pairs the session's sockets in the kernel if splicing is on, the
    /// route is busy, and `answer`, about to go to the client, ends the
    /// server's turn (so nothing is in flight either way). What each
    /// socket had moved by then, to know later when the kernel has passed
    /// everything on.
    ///
    /// While a route has at most `busy_poll_max_sessions` sessions, they
    /// stay with the router, which busy-polls them: for a lone client a
    /// thread that never sleeps answers sooner than the kernel's worker,
    /// woken per message (1.2 × the direct rate against 0.8 at 1 client).
    /// Past that the CPUs are busy anyway and splicing saves them work.
    fn hand_to_kernel(
        &self,
        kind: Kind,
        client: &TcpStream,
        server: &TcpStream,
        answer: &[u8],
    ) -> Option<Spliced<'_>> {
        let splicer = self.splicer.as_ref()?;
        let busy_polled = !self.cfg.busy_poll.is_zero()
            && self.metrics(kind).active.load(Relaxed) < self.cfg.busy_poll_max_sessions;
        if busy_polled || !wire::ends_servers_turn(answer) {
            return None;
        }
        let at_pairing = (kernel::counts(client), kernel::counts(server));
        let (Ok(client_at), Ok(server_at)) = at_pairing else {
            return None;
        };
        match splicer.pair(client, server) {
            Ok(()) => Some(Spliced {
                client_at,
                server_at,
                answer: answer.len() as u64,
                watcher: &splicer.watcher,
            }),
            Err(e) => {
                tracing::debug!("kernel splicing refused for a session: {e}");
                None
            }
        }
    }

    fn limit(&self, kind: Kind) -> usize {
        match kind {
            Kind::ReadWrite => self.cfg.read_write.max_connections,
            Kind::ReadOnly => self
                .cfg
                .read_only
                .as_ref()
                .map_or(0, |r| r.listener.max_connections),
        }
    }

    /// The backend to try, and whether the server must prove itself
    /// writable in its greeting (its key does not confirm it).
    fn pick(&self, kind: Kind, routes: &Routes) -> Option<(Backend, bool)> {
        match kind {
            Kind::ReadWrite => match (&routes.primary, &routes.unconfirmed) {
                (Some(b), _) => Some((b.clone(), false)),
                (None, Some(b)) => Some((b.clone(), true)),
                (None, None) => None,
            },
            Kind::ReadOnly if routes.readers.is_empty() => None,
            Kind::ReadOnly => {
                let i = self.next_reader.fetch_add(1, Relaxed) % routes.readers.len();
                Some((routes.readers[i].clone(), false))
            }
        }
    }
}

/// Runs until `shutdown`; binding a listener or reaching etcd's client
/// set-up fails at once, naming the key of the address.
pub async fn run(cfg: RouterConfig, shutdown: CancellationToken) -> anyhow::Result<()> {
    let workers = cfg.workers;
    let bind =
        |addr, key: &'static str| listener(addr).with_context(|| format!("binding {addr} ({key})"));
    let rw = bind(cfg.read_write.listen, "read_write.listen")?;
    let ro = match &cfg.read_only {
        Some(r) => Some(bind(r.listener.listen, "read_only.listen")?),
        None => None,
    };
    let api = match cfg.api_listen {
        Some(a) => Some((
            TcpListener::bind(a)
                .await
                .with_context(|| format!("binding {a} (api.listen)"))?,
            // The dashboard's calls go to the agents' APIs.
            crate::tls::http_client(Duration::from_secs(5), cfg.api_cafile.as_deref())
                .context("the client for the agents' APIs (api.cafile)")?,
        )),
        None => None,
    };
    let dcs = crate::dcs::Dcs::connect(&cfg.etcd_endpoints, cfg.prefix(), cfg.connect_timeout)
        .await
        .context("connecting to etcd (etcd.endpoints)")?;
    let policy = cfg.read_only.as_ref().map_or(
        ReadPolicy {
            max_lag: 0,
            fallback_to_primary: true,
        },
        |r| ReadPolicy {
            max_lag: r.max_lag,
            fallback_to_primary: r.fallback_to_primary,
        },
    );
    let (tx, rx) = watch::channel(Routes::default());
    let (agents_tx, agents) = watch::channel(vec![]);
    tokio::spawn(follow(dcs, policy, tx, agents_tx));
    tracing::info!(
        scope = %cfg.scope,
        read_write = %cfg.read_write.listen,
        read_only = ?cfg.read_only.as_ref().map(|r| r.listener.listen),
        "baton router starting"
    );
    let splicer = match cfg.kernel_splice {
        Some(false) => None,
        asked => {
            let sessions = cfg.read_write.max_connections
                + cfg
                    .read_only
                    .as_ref()
                    .map_or(0, |r| r.listener.max_connections);
            match kernel::Splicer::new(sessions) {
                Ok(s) => {
                    tracing::info!("kernel splicing on: sessions are handed to the kernel after their handshake");
                    Some(s)
                }
                Err(e) if asked == Some(true) => {
                    tracing::warn!("kernel_splice: {e}; the router moves the bytes itself (it needs CAP_BPF and CAP_NET_ADMIN)");
                    None
                }
                Err(e) => {
                    tracing::info!("kernel splicing not available ({e}; it needs CAP_BPF and CAP_NET_ADMIN): the router moves the bytes itself");
                    None
                }
            }
        }
    };
    let shared = Arc::new(Shared {
        cfg,
        routes: rx,
        agents,
        rw: RouteMetrics::default(),
        ro: RouteMetrics::default(),
        next_reader: AtomicUsize::new(0),
        splicer,
    });
    if let Some((l, http)) = api {
        tokio::spawn(serve_api(l, http, shared.clone(), shutdown.clone()));
    }
    // One thread per worker, each with a runtime of its own: a connection
    // lives on one thread, and no wake-up of its crosses threads. Each
    // accepted connection goes to the worker serving the fewest: left to
    // the kernel (SO_REUSEPORT hashes the addresses), 8 clients landed 5:3
    // or 6:2 about two times in three, and the busier thread set the pace
    // for all of them.
    let mut workers_tx = vec![];
    let load: Arc<[AtomicUsize]> = (0..workers).map(|_| AtomicUsize::new(0)).collect();
    for i in 0..workers {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        workers_tx.push(tx);
        let shared = shared.clone();
        let load = load.clone();
        std::thread::Builder::new()
            .name(format!("router-{i}"))
            .spawn(move || worker(i, rx, load, shared))
            .context("starting a router worker thread")?;
    }
    let workers = Workers {
        tx: workers_tx,
        load,
        next: AtomicUsize::new(0),
    };
    let workers = Arc::new(workers);
    for (l, kind) in std::iter::once((rw, Kind::ReadWrite)).chain(ro.map(|l| (l, Kind::ReadOnly))) {
        let l =
            TcpListener::from_std(l).with_context(|| format!("listening ({})", kind.label()))?;
        tokio::spawn(accept(l, kind, workers.clone()));
    }
    shutdown.cancelled().await;
    Ok(())
}

fn listener(addr: std::net::SocketAddr) -> std::io::Result<std::net::TcpListener> {
    let s = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    s.set_reuse_address(true)?;
    // A new router on this host can bind the same port while the old one
    // still serves (a restart without refusing anyone).
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(1024)?;
    Ok(s.into())
}

/// The worker threads, as the acceptors see them.
struct Workers {
    tx: Vec<tokio::sync::mpsc::UnboundedSender<(std::net::TcpStream, Kind)>>,
    /// Connections each worker serves now.
    load: Arc<[AtomicUsize]>,
    /// Where the search for the least busy starts, so that ties rotate.
    next: AtomicUsize,
}

impl Workers {
    /// The worker serving the fewest connections.
    fn least_busy(&self) -> usize {
        let n = self.load.len();
        let start = self.next.fetch_add(1, Relaxed) % n;
        (0..n)
            .map(|k| (start + k) % n)
            .min_by_key(|&i| self.load[i].load(Relaxed))
            .unwrap_or(0)
    }
}

/// A worker thread: serves the connections handed to it until the
/// process ends.
fn worker(
    i: usize,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(std::net::TcpStream, Kind)>,
    load: Arc<[AtomicUsize]>,
    shared: Arc<Shared>,
) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("router worker: starting its runtime: {e}");
            return;
        }
    };
    rt.block_on(async move {
        while let Some((client, kind)) = rx.recv().await {
            let client = match TcpStream::from_std(client) {
                Ok(c) => c,
                Err(e) => {
                    load[i].fetch_sub(1, Relaxed);
                    tracing::warn!(route = kind.label(), "router worker: {e}");
                    continue;
                }
            };
            let shared = shared.clone();
            let load = load.clone();
            tokio::spawn(async move {
                let peer = client.peer_addr().ok();
                if let Err(e) = serve(client, kind, &shared).await {
                    tracing::debug!(?peer, route = kind.label(), "connection ended: {e}");
                }
                load[i].fetch_sub(1, Relaxed);
            });
        }
    });
}

/// Keeps `tx` at the routes etcd implies, restarting the mirror after an
/// error. While etcd is out of reach the last routes stay: a primary cut
/// off from etcd fences itself at its lease deadline, so clients sent to
/// it meanwhile reach no writable server after that deadline either.
async fn follow(
    dcs: crate::dcs::Dcs,
    policy: ReadPolicy,
    tx: watch::Sender<Routes>,
    agents: watch::Sender<Vec<String>>,
) {
    loop {
        let e = dcs
            .mirror(|view| {
                let bases = crate::api::ui::agent_bases(&view);
                agents.send_if_modified(|old| {
                    let changed = *old != bases;
                    if changed {
                        *old = bases;
                    }
                    changed
                });
                let new = routes(&view, policy);
                tx.send_if_modified(|old| {
                    if *old == new {
                        return false;
                    }
                    tracing::info!(
                        primary = ?new.primary.as_ref().map(|b| &b.name),
                        readers = ?new.readers.iter().map(|b| &b.name).collect::<Vec<_>>(),
                        excluded = ?new.excluded,
                        "routes changed"
                    );
                    *old = new;
                    true
                });
            })
            .await;
        tracing::warn!("following etcd: {e}; keeping the last routes, retrying in 1 s");
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Accepts a route's clients and hands each to the least busy worker.
async fn accept(listener: TcpListener, kind: Kind, workers: Arc<Workers>) {
    loop {
        match listener.accept().await {
            Ok((client, _)) => {
                // Off this runtime's poller, onto the worker's.
                let client = match client.into_std() {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(route = kind.label(), "accept: {e}");
                        continue;
                    }
                };
                let i = workers.least_busy();
                workers.load[i].fetch_add(1, Relaxed);
                if workers.tx[i].send((client, kind)).is_err() {
                    workers.load[i].fetch_sub(1, Relaxed);
                    tracing::error!(route = kind.label(), "router worker {i} has stopped");
                }
            }
            Err(e) => {
                // Out of file descriptors, mostly: back off instead of spinning.
                tracing::warn!(route = kind.label(), "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Low latency both ways (the protocol is request/response: Nagle would
/// hold each small message for an ACK) and keepalives, so a peer that
/// vanished without a FIN does not pin a connection forever.
fn tune(s: &TcpStream) {
    let _ = s.set_nodelay(true);
    let ka = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(30))
        .with_interval(Duration::from_secs(10));
    let _ = socket2::SockRef::from(s).set_tcp_keepalive(&ka);
}

/// Decrements a gauge when the connection's phase ends, however it ends.
struct Gauge<'a>(&'a std::sync::atomic::AtomicU64);

impl<'a> Gauge<'a> {
    fn up(g: &'a std::sync::atomic::AtomicU64) -> Gauge<'a> {
        g.fetch_add(1, Relaxed);
        Gauge(g)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Relaxed);
    }
}

/// What the client asked first, still to be sent to a backend.
enum Hello {
    /// An SSLRequest not yet answered.
    Ssl(Vec<u8>),
    /// A startup packet (the client chose plaintext).
    Plain(Vec<u8>),
}

/// The outcome of one try at a backend.
enum Attempt {
    /// Connected and greeted: hand the client what the server said (the
    /// SSL answer or the greeting), then splice.
    Ready(TcpStream, Vec<u8>),
    /// This backend cannot take the client now; wait and try again.
    Retry(String),
}

async fn serve(mut client: TcpStream, kind: Kind, shared: &Shared) -> anyhow::Result<()> {
    let m = shared.metrics(kind);
    m.accepted.fetch_add(1, Relaxed);
    tune(&client);
    let hold = shared.cfg.hold_timeout;
    let (mut code, mut packet) = tokio::time::timeout(hold, wire::read_startup(&mut client))
        .await
        .context("no startup packet")??;
    if code == wire::GSSENC_REQUEST {
        // GSS encryption is not passed through; libpq then tries SSL or
        // plaintext on the same connection.
        client.write_all(b"N").await?;
        (code, packet) = tokio::time::timeout(hold, wire::read_startup(&mut client))
            .await
            .context("no startup packet")??;
    }
    if code == wire::CANCEL_REQUEST {
        return cancel(kind, shared, &packet).await;
    }
    let open = m.active.load(Relaxed) + m.held.load(Relaxed);
    if open >= shared.limit(kind) as u64 {
        m.refused.fetch_add(1, Relaxed);
        let msg = format!(
            "baton router: {} connections open on the {} route (max_connections)",
            open,
            kind.label()
        );
        return refuse(client, hello(code, packet), "53300", &msg).await;
    }
    let mut hello = hello(code, packet);
    let held = Gauge::up(&m.held);
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + hold;
    let mut rx = shared.routes.clone();
    let mut last_problem;
    let mut pause = Duration::ZERO;
    let (upstream, backend, spliced) = loop {
        let backend = {
            let routes = rx.borrow_and_update();
            shared.pick(kind, &routes)
        };
        if let Some((b, verify)) = backend {
            match attempt(&mut client, &b, kind, verify, &mut hello, shared).await? {
                // The routes may have moved while the server greeted: the
                // client has seen nothing yet, so try again rather than
                // hand it a session the next line would close.
                Attempt::Ready(up, to_client) if still_routed(kind, &rx, &b) => {
                    let spliced = shared.hand_to_kernel(kind, &client, &up, &to_client);
                    client.write_all(&to_client).await?;
                    break (up, b, spliced);
                }
                Attempt::Ready(..) => last_problem = format!("{}: no longer the primary", b.name),
                Attempt::Retry(why) => {
                    last_problem = format!("{}: {why}", b.name);
                    pause = retry_pause(started.elapsed(), pause);
                    tokio::select! {
                        _ = rx.changed() => {}
                        _ = tokio::time::sleep(pause) => {}
                        _ = tokio::time::sleep_until(deadline) => {}
                    }
                }
            }
        } else {
            last_problem = match kind {
                Kind::ReadWrite => "no primary".into(),
                Kind::ReadOnly => "no replica within the lag limit".into(),
            };
            tokio::select! {
                _ = rx.changed() => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
        if tokio::time::Instant::now() >= deadline {
            drop(held);
            m.refused.fetch_add(1, Relaxed);
            m.observe_hold(started.elapsed());
            let msg = format!(
                "baton router: no backend for the {} route within hold_timeout ({} s): {last_problem}",
                kind.label(),
                hold.as_secs_f64()
            );
            tracing::warn!("{msg}");
            return refuse(client, hello, "57P03", &msg).await;
        }
    };
    drop(held);
    m.observe_hold(started.elapsed());
    let _active = Gauge::up(&m.active);
    let spin = pump::Spin {
        spin: shared.cfg.busy_poll,
        max_sessions: shared.cfg.busy_poll_max_sessions,
    };
    splice(client, upstream, kind, backend, rx, m, spin, spliced).await
}

/// How long a held client waits before trying a backend that could not
/// take it, if the routes do not change first. Quick at first: a promoting
/// leader takes writes within a fraction of a second of refusing them.
/// Then doubling up to a second: a server in crash recovery refuses for
/// minutes, and a thousand held clients retrying every 20 ms would fork
/// fifty thousand postgres processes a second on it.
fn retry_pause(held: Duration, last: Duration) -> Duration {
    const QUICK: Duration = Duration::from_millis(20);
    const QUICK_FOR: Duration = Duration::from_millis(500);
    const MAX: Duration = Duration::from_secs(1);
    if held < QUICK_FOR {
        QUICK
    } else {
        (last * 2).clamp(QUICK, MAX)
    }
}

/// A writer's backend is still the primary (readers keep theirs).
fn still_routed(kind: Kind, rx: &watch::Receiver<Routes>, b: &Backend) -> bool {
    let r = rx.borrow();
    kind == Kind::ReadOnly || r.primary.as_ref() == Some(b) || r.unconfirmed.as_ref() == Some(b)
}

fn hello(code: u32, packet: Vec<u8>) -> Hello {
    if code == wire::SSL_REQUEST {
        Hello::Ssl(packet)
    } else {
        Hello::Plain(packet)
    }
}

/// One try: connect, settle SSL, send the startup packet and read the
/// server's greeting. Errors are the client's side failing (it went away);
/// the backend's failures are `Retry`.
async fn attempt(
    client: &mut TcpStream,
    b: &Backend,
    kind: Kind,
    verify: bool,
    hello: &mut Hello,
    shared: &Shared,
) -> anyhow::Result<Attempt> {
    let limit = shared.cfg.connect_timeout;
    let mut up =
        match tokio::time::timeout(limit, TcpStream::connect((b.host.as_str(), b.port))).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Ok(Attempt::Retry(format!("connect: {e}"))),
            Err(_) => return Ok(Attempt::Retry("connect timed out".into())),
        };
    tune(&up);
    if let Hello::Ssl(req) = hello {
        let mut answer = [0u8; 1];
        let asked = async {
            up.write_all(req).await?;
            up.read_exact(&mut answer).await
        };
        match tokio::time::timeout(limit, asked).await {
            // Inside TLS the greeting cannot be read: an unconfirmed
            // server gets TLS clients once its member key says it runs as
            // primary.
            Ok(Ok(_)) if answer[0] == b'S' && verify => {
                return Ok(Attempt::Retry(
                    "not confirmed writable yet (TLS client)".into(),
                ))
            }
            Ok(Ok(_)) if answer[0] == b'S' => return Ok(Attempt::Ready(up, b"S".to_vec())),
            Ok(Ok(_)) if answer[0] == b'N' => {
                client.write_all(b"N").await?;
                let (_, startup) =
                    tokio::time::timeout(shared.cfg.hold_timeout, wire::read_startup(client))
                        .await
                        .context("no startup packet after SSL was declined")??;
                *hello = Hello::Plain(startup);
            }
            Ok(Ok(_)) => return Ok(Attempt::Retry(format!("SSL answer {:?}", answer[0]))),
            Ok(Err(e)) => return Ok(Attempt::Retry(format!("SSL request: {e}"))),
            Err(_) => return Ok(Attempt::Retry("no answer to the SSL request".into())),
        }
    }
    let Hello::Plain(startup) = hello else {
        unreachable!("an SSL request was answered or returned above")
    };
    match tokio::time::timeout(limit, greet(&mut up, startup, kind, verify)).await {
        Ok(Ok(Ok(greeting))) => Ok(Attempt::Ready(up, greeting)),
        Ok(Ok(Err(why))) => Ok(Attempt::Retry(why)),
        Ok(Err(e)) => Ok(Attempt::Retry(format!("greeting: {e}"))),
        Err(_) => Ok(Attempt::Retry("no greeting in time".into())),
    }
}

/// Sends the startup packet and reads what the server says before the
/// client has to speak: `Err` when the server cannot take the client now.
/// With `verify`, the greeting must show the server writable
/// (`in_hot_standby = off`), or the client is not handed to it.
async fn greet(
    up: &mut TcpStream,
    startup: &[u8],
    kind: Kind,
    verify: bool,
) -> std::io::Result<Result<Vec<u8>, String>> {
    up.write_all(startup).await?;
    let first = wire::read_message(up).await?;
    if wire::retryable(&first) {
        let state = wire::sqlstate(&first).unwrap_or_default();
        return Ok(Err(format!(
            "server refused with SQLSTATE {}",
            String::from_utf8_lossy(state)
        )));
    }
    if verify && !wire::is_auth_ok(&first) {
        return Ok(Err("not confirmed writable yet (the server asks for a password before it says whether it is writable)".into()));
    }
    if kind == Kind::ReadOnly || !wire::is_auth_ok(&first) {
        return Ok(Ok(first));
    }
    // No password asked: read on to ReadyForQuery, so a standby is caught
    // before the client sees anything.
    let mut greeting = first;
    let mut writable = false;
    loop {
        let msg = wire::read_message(up).await?;
        if wire::says_hot_standby(&msg) {
            return Ok(Err("server is a hot standby".into()));
        }
        writable |= wire::says_writable(&msg);
        if wire::retryable(&msg) {
            return Ok(Err("server refused after authentication".into()));
        }
        greeting.extend_from_slice(&msg);
        if matches!(msg[0], b'Z' | b'E') || greeting.len() > wire::MAX_GREETING {
            if verify && !writable {
                return Ok(Err(
                    "not confirmed writable yet (its greeting does not say writable)".into(),
                ));
            }
            return Ok(Ok(greeting));
        }
    }
}

async fn refuse(
    mut client: TcpStream,
    hello: Hello,
    sqlstate: &str,
    msg: &str,
) -> anyhow::Result<()> {
    if let Hello::Ssl(_) = hello {
        // The client waits for an SSL answer; decline, take its startup
        // packet, then answer that with the error.
        client.write_all(b"N").await?;
        let _ = tokio::time::timeout(Duration::from_secs(1), wire::read_startup(&mut client)).await;
    }
    client.write_all(&wire::fatal(sqlstate, msg)).await?;
    client.shutdown().await?;
    Ok(())
}

/// A CancelRequest goes wherever the session may be: the primary, or on
/// the reader route every reader (a key that matches no backend is
/// ignored by postgres).
async fn cancel(kind: Kind, shared: &Shared, packet: &[u8]) -> anyhow::Result<()> {
    let targets: Vec<Backend> = {
        let r = shared.routes.borrow();
        match kind {
            Kind::ReadWrite => r.primary.iter().cloned().collect(),
            Kind::ReadOnly => r.readers.clone(),
        }
    };
    for b in targets {
        let send = async {
            let mut s = TcpStream::connect((b.host.as_str(), b.port)).await?;
            s.write_all(packet).await?;
            s.shutdown().await
        };
        let _ = tokio::time::timeout(shared.cfg.connect_timeout, send).await;
    }
    Ok(())
}

/// A session the kernel moves the bytes of: each socket's counts when it
/// was paired, and the length of the server's answer the router passed on
/// itself after that.
struct Spliced<'a> {
    client_at: kernel::Counts,
    server_at: kernel::Counts,
    answer: u64,
    watcher: &'a kernel::Watcher,
}

impl Spliced<'_> {
    /// Bytes received from the client and from the server since pairing,
    /// and whether all of them have been written to the other side.
    fn progress(
        &self,
        client: &std::net::TcpStream,
        up: &std::net::TcpStream,
    ) -> std::io::Result<(u64, u64, bool)> {
        let (c, s) = (kernel::counts(client)?, kernel::counts(up)?);
        let from_client = c.received.saturating_sub(self.client_at.received);
        let from_server = s.received.saturating_sub(self.server_at.received);
        let done = s.written.saturating_sub(self.server_at.written) >= from_client
            && c.written.saturating_sub(self.client_at.written) >= from_server + self.answer;
        Ok((from_client, from_server, done))
    }

    /// Once one side has ended its stream: the kernel may still hold bytes
    /// for the other (they wait in a queue for a kernel worker), which
    /// closing the socket would drop, e.g. the server's last error message
    /// before it closed. Waits while they keep moving.
    async fn drain(&self, client: &std::net::TcpStream, up: &std::net::TcpStream) {
        const STALL: Duration = Duration::from_secs(2);
        let mut last = None;
        let mut moved_at = Instant::now();
        loop {
            let Ok((a, b, done)) = self.progress(client, up) else {
                return;
            };
            if done {
                return;
            }
            if last != Some((a, b)) {
                (last, moved_at) = (Some((a, b)), Instant::now());
            } else if moved_at.elapsed() > STALL {
                tracing::debug!("closing a spliced session with bytes still queued in the kernel");
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

#[allow(clippy::too_many_arguments)]
async fn splice(
    client: TcpStream,
    up: TcpStream,
    kind: Kind,
    backend: Backend,
    mut rx: watch::Receiver<Routes>,
    m: &RouteMetrics,
    spin: pump::Spin,
    spliced: Option<Spliced<'_>>,
) -> anyhow::Result<()> {
    let demoted = async {
        if kind == Kind::ReadOnly {
            return std::future::pending().await;
        }
        loop {
            {
                let r = rx.borrow_and_update();
                let ours = [&r.leading, &r.unconfirmed]
                    .iter()
                    .any(|b| b.as_ref() == Some(&backend));
                if !ours {
                    return;
                }
            }
            if rx.changed().await.is_err() {
                return std::future::pending().await;
            }
        }
    };
    let closed_on_demotion = || {
        m.closed_on_demotion.fetch_add(1, Relaxed);
        tracing::info!(backend = %backend.name, "closing a writer connection: its backend is no longer the primary");
    };
    let Some(spliced) = spliced else {
        tokio::select! {
            r = pump::pump(&client, &up, &m.bytes_to_server, &m.bytes_to_client, spin, &m.active) => r?,
            _ = demoted => closed_on_demotion(),
        }
        return Ok(());
    };
    // The kernel moves the bytes. The sockets leave tokio's poller, which
    // would wake this thread for each message the kernel moves, and are
    // watched for the end of either stream only. Byte counts come from the
    // sockets at the end, since the router no longer sees the bytes pass.
    m.spliced.fetch_add(1, Relaxed);
    let (client, up) = (client.into_std()?, up.into_std()?);
    let (watch, ended) = spliced.watcher.watch(&client, &up)?;
    let stream_ended = tokio::select! {
        _ = ended => true,
        _ = demoted => {
            closed_on_demotion();
            false
        }
    };
    if stream_ended {
        spliced.drain(&client, &up).await;
    }
    drop(watch);
    if let Ok((a, b, _)) = spliced.progress(&client, &up) {
        m.bytes_to_server.fetch_add(a, Relaxed);
        m.bytes_to_client.fetch_add(b, Relaxed);
    }
    Ok(())
}

async fn serve_api(
    listener: TcpListener,
    http: reqwest::Client,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    use axum::http::StatusCode;
    use axum::routing::get;
    let metrics = {
        let s = shared.clone();
        move || async move {
            let known = s.routes.borrow().primary.is_some();
            metrics::render(
                &s.cfg.scope,
                &[
                    (Kind::ReadWrite.label(), &s.rw),
                    (Kind::ReadOnly.label(), &s.ro),
                ],
                known,
            )
        }
    };
    let routes = {
        let s = shared.clone();
        move || async move { axum::Json(s.routes.borrow().clone()) }
    };
    let health = {
        let s = shared.clone();
        move || async move {
            if s.routes.borrow().primary.is_some() {
                (StatusCode::OK, "primary known\n")
            } else {
                (StatusCode::SERVICE_UNAVAILABLE, "no primary known\n")
            }
        }
    };
    let app = axum::Router::new()
        .route("/metrics", get(metrics))
        .route("/routes", get(routes))
        .route("/health", get(health))
        .merge(crate::api::ui::proxy(http, shared.agents.clone()));
    if let Err(e) = axum::serve(listener, app.into_make_service())
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
    {
        tracing::error!("router API: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Quick retries through a promotion's half second, then backing off
    /// to one a second, so held clients do not storm a recovering server.
    #[test]
    fn held_clients_retry_quickly_then_back_off() {
        let ms = Duration::from_millis;
        let mut pause = Duration::ZERO;
        let mut held = Duration::ZERO;
        let mut tries = 0;
        while held < ms(500) {
            pause = retry_pause(held, pause);
            assert_eq!(pause, ms(20));
            held += pause;
            tries += 1;
        }
        assert_eq!(tries, 25);
        let mut pauses = vec![];
        for _ in 0..8 {
            pause = retry_pause(held, pause);
            held += pause;
            pauses.push(pause.as_millis());
        }
        assert_eq!(pauses, [40, 80, 160, 320, 640, 1000, 1000, 1000]);
    }
}
