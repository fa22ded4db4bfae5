//! Moves bytes both ways between a client and its backend, counting them
//! as they pass (live `/metrics`, not only at close).
//!
//! One task serves both directions with non-blocking reads: whichever
//! socket has data is drained into the other. With busy polling on, a
//! connection that just moved data keeps polling, yielding to other tasks
//! between polls, for `spin` before it sleeps in the poller: on a virtual
//! machine every sleep-and-wake costs tens to hundreds of microseconds
//! (HAProxy's `busy-polling` exists for the same reason), which a
//! request/response protocol pays twice per round trip. Only while few
//! sessions are open (`Spin::max_sessions`): with many, the CPUs do not
//! idle between messages, so there is no wake-up to save and spinning
//! would take CPU from postgres.

use std::io::ErrorKind::WouldBlock;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

const BUF: usize = 16 * 1024;

/// Writes all of `data` to `to`, waiting for room when the socket is full.
async fn write_all(to: &TcpStream, mut data: &[u8]) -> std::io::Result<()> {
    while !data.is_empty() {
        match to.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == WouldBlock => to.writable().await?,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads what is there now: `Some(0)` at end of stream, `None` if nothing.
///
/// A read that did not fill the buffer drained the socket, so its
/// readiness is cleared right away (an error of `WouldBlock` from inside
/// `try_io` does that, and only if no new event came in meanwhile): the
/// next poll waits for data instead of paying a read that would only say
/// "nothing yet", a third of the system calls per message otherwise.
fn read_now(from: &TcpStream, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    use std::io::Read as _;
    let mut got = None;
    let r = from.try_io(tokio::io::Interest::READABLE, || {
        let n = (&*socket2::SockRef::from(from)).read(buf)?;
        got = Some(n);
        if n > 0 && n < buf.len() {
            Err(WouldBlock.into())
        } else {
            Ok(n)
        }
    });
    match r {
        Ok(n) => Ok(Some(n)),
        Err(e) if e.kind() == WouldBlock => Ok(got),
        Err(e) => Err(e),
    }
}

/// When a connection polls instead of sleeping.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spin {
    /// How long after the last byte moved; zero: never.
    pub spin: Duration,
    /// Only while at most this many sessions are open on the route.
    pub max_sessions: u64,
}

/// Until either side ends the stream or fails; `open` counts the route's
/// sessions.
pub async fn pump(
    client: &TcpStream,
    server: &TcpStream,
    to_server: &AtomicU64,
    to_client: &AtomicU64,
    spin: Spin,
    open: &AtomicU64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; BUF];
    let mut moved_at = Instant::now();
    loop {
        let mut moved = false;
        for (from, to, count) in [(client, server, to_server), (server, client, to_client)] {
            match read_now(from, &mut buf)? {
                Some(0) => return Ok(()),
                Some(n) => {
                    write_all(to, &buf[..n]).await?;
                    count.fetch_add(n as u64, Relaxed);
                    moved = true;
                }
                None => {}
            }
        }
        if moved {
            moved_at = Instant::now();
            continue;
        }
        if moved_at.elapsed() < spin.spin && open.load(Relaxed) <= spin.max_sessions {
            tokio::task::yield_now().await;
            continue;
        }
        tokio::select! {
            r = client.readable() => r?,
            r = server.readable() => r?,
        }
    }
}
