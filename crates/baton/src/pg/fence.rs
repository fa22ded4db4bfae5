//! The agent's side of the fence process (`baton-fence`, DESIGN.md rule 8):
//! it starts one when none answers on the socket and hands it what to
//! enforce. The process itself, and why it is separate, is in
//! `crates/baton-fence`.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::UnixStream;
use tokio::sync::Mutex;

use baton_fence::{Reply, Request};

use super::PgError;
use crate::config::FenceConfig;

/// What the agent asks of its fence, on the agent's own clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FenceOrder {
    /// Stop postgres at `deadline` unless a later order moves it.
    Arm { deadline: Instant },
    /// Change nothing; prove the fence is alive.
    Keep,
    /// Guard nothing: postgres is not and cannot become a primary.
    Disarm,
    /// Postgres was stopped on a clean shutdown: the fence exits.
    Exit,
}

/// A whole exchange (start included) takes at most this: the agent's tick
/// waits on it, and it must fit well inside the lease deadline.
const EXCHANGE: Duration = Duration::from_millis(1000);
/// How long a freshly started fence gets to open its socket.
const STARTUP: Duration = Duration::from_millis(700);

type Conn = (BufReader<OwnedReadHalf>, OwnedWriteHalf);

pub struct FenceLink {
    cfg: FenceConfig,
    data_dir: PathBuf,
    conn: Mutex<Option<Conn>>,
}

impl FenceLink {
    pub fn new(cfg: FenceConfig, data_dir: PathBuf) -> FenceLink {
        FenceLink {
            cfg,
            data_dir,
            conn: Mutex::new(None),
        }
    }

    /// Sends `order`, starting a fence first if none answers; what the
    /// fence enforces now.
    pub async fn send(&self, order: FenceOrder) -> Result<Reply, PgError> {
        let req = match order {
            FenceOrder::Arm { deadline } => Request::Arm {
                deadline_ms: baton_fence::instant_to_boottime_ms(deadline),
            },
            FenceOrder::Keep => Request::Keep,
            FenceOrder::Disarm => Request::Disarm,
            FenceOrder::Exit => Request::Exit,
        };
        match tokio::time::timeout(EXCHANGE, self.send_req(req)).await {
            Ok(r) => r,
            Err(_) => {
                *self.conn.lock().await = None;
                Err(PgError::Timeout {
                    what: format!("fence ({})", self.cfg.socket.display()),
                    after: EXCHANGE,
                })
            }
        }
    }

    async fn send_req(&self, req: Request) -> Result<Reply, PgError> {
        let mut conn = self.conn.lock().await;
        // A kept connection may belong to a fence that died since: one
        // retry on a fresh connection (which starts a new fence).
        let mut last = None;
        for _ in 0..2 {
            if conn.is_none() {
                if req == Request::Exit {
                    // Nothing to stop if no fence answers.
                    match UnixStream::connect(&self.cfg.socket).await {
                        Ok(s) => *conn = Some(split(s)),
                        Err(_) => {
                            return Ok(Reply {
                                pid: 0,
                                deadline_ms: None,
                                fired: 0,
                            })
                        }
                    }
                } else {
                    *conn = Some(self.connect_or_start().await?);
                }
            }
            let (r, w) = conn.as_mut().expect("connected above");
            match exchange(r, w, req).await {
                Ok(reply) => return Ok(reply),
                Err(e) => {
                    *conn = None;
                    last = Some(e);
                }
            }
        }
        Err(last.expect("two attempts failed"))
    }

    async fn connect_or_start(&self) -> Result<Conn, PgError> {
        if let Ok(s) = UnixStream::connect(&self.cfg.socket).await {
            return Ok(split(s));
        }
        let binary = self.binary();
        let log_path = log_path(&self.cfg.socket);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(|e| PgError::io(format!("opening {}", log_path.display()), e))?;
        let err = log
            .try_clone()
            .map_err(|e| PgError::io("duplicating the fence log", e))?;
        let mut child = tokio::process::Command::new(&binary)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .arg("--socket")
            .arg(&self.cfg.socket)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err)
            // A process group of its own: a signal to the agent's group
            // (a terminal's Ctrl-C) leaves it alone; systemd's
            // KillMode=process signals the agent only.
            .process_group(0)
            .kill_on_drop(false)
            .spawn()
            .map_err(|e| PgError::Command {
                what: format!("starting the fence {}", binary.display()),
                detail: e.to_string(),
            })?;
        tracing::info!(pid = child.id(), binary = %binary.display(), "started the fence process");
        let started = Instant::now();
        loop {
            if let Ok(s) = UnixStream::connect(&self.cfg.socket).await {
                // Reaped when it exits, so no zombie stays behind while the
                // agent lives; it outlives the agent otherwise.
                tokio::spawn(async move {
                    if let Ok(status) = child.wait().await {
                        tracing::info!("the fence process exited ({status})");
                    }
                });
                return Ok(split(s));
            }
            if let Ok(Some(status)) = child.try_wait() {
                return Err(PgError::Command {
                    what: format!("the fence {}", binary.display()),
                    detail: format!("exited at once ({status}); see {}", log_path.display()),
                });
            }
            if started.elapsed() >= STARTUP {
                let _ = child.start_kill();
                return Err(PgError::Timeout {
                    what: format!("the fence opening {}", self.cfg.socket.display()),
                    after: STARTUP,
                });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// The configured binary, else `baton-fence` beside this executable
    /// (the package installs both in /usr/bin; cargo builds both into one
    /// target directory), else whatever `PATH` finds.
    fn binary(&self) -> PathBuf {
        if let Some(b) = &self.cfg.binary {
            return b.clone();
        }
        std::env::current_exe()
            .ok()
            .and_then(|exe| Some(exe.parent()?.join("baton-fence")))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("baton-fence"))
    }
}

/// Where the fence writes its log: beside its socket.
pub fn log_path(socket: &Path) -> PathBuf {
    let mut s = socket.as_os_str().to_owned();
    s.push(".log");
    s.into()
}

fn split(s: UnixStream) -> Conn {
    let (r, w) = s.into_split();
    (BufReader::new(r), w)
}

async fn exchange(
    r: &mut BufReader<OwnedReadHalf>,
    w: &mut OwnedWriteHalf,
    req: Request,
) -> Result<Reply, PgError> {
    let io = |e| PgError::io("talking to the fence", e);
    w.write_all(format!("{req}\n").as_bytes())
        .await
        .map_err(io)?;
    let mut line = String::new();
    if r.read_line(&mut line).await.map_err(io)? == 0 {
        return Err(PgError::Refused("the fence closed the connection".into()));
    }
    Reply::parse(&line).map_err(|e| PgError::Refused(format!("the fence answered: {e}")))
}
