//! Kernel splicing: once a session's handshake is over, the kernel moves
//! its bytes from one socket to the other and the router's thread is not
//! woken per message at all.
//!
//! Past one client a user-space proxy's cost is the trips through the
//! loopback TCP stack and the wake-ups of its own threads (`pump`): about
//! 24 µs per round trip on 2 cores, 88 % of it in the kernel. With both
//! sockets of a session in a BPF sockhash, an `sk_skb` verdict program
//! run as data arrives on one socket sends it out of the other
//! (`bpf_sk_redirect_hash`), so the proxy's read, write and the wake-up
//! between them are gone.
//!
//! The map is keyed by the receiving socket's addresses and ports (the
//! fields the program can read from `__sk_buff`) and holds the socket to
//! send out of. Data on a socket with no entry (its peer closed, or the
//! pairing failed half-way) is passed to the socket as usual, and the
//! session's user-space pump forwards it: nothing is dropped. The pump
//! still watches both sockets, for the end of the stream.
//!
//! Needs CAP_BPF and CAP_NET_ADMIN (root, or granted to the service);
//! without them `Splicer::new` fails and the router moves bytes itself.
//! IPv4 sessions only: the program reads IPv4 addresses.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use nix::libc;
use tokio::net::TcpStream;

const BPF_MAP_CREATE: u32 = 0;
const BPF_MAP_UPDATE_ELEM: u32 = 2;
const BPF_PROG_LOAD: u32 = 5;
const BPF_PROG_ATTACH: u32 = 8;
const BPF_MAP_TYPE_SOCKHASH: u32 = 18;
const BPF_PROG_TYPE_SK_SKB: u32 = 14;
/// `BPF_SK_SKB_VERDICT` (Linux 5.13): a verdict with no stream parser.
const BPF_SK_SKB_VERDICT: u32 = 38;
const BPF_FUNC_SK_REDIRECT_HASH: i32 = 72;

/// Offsets in `struct __sk_buff` (include/uapi/linux/bpf.h).
const SKB_REMOTE_IP4: i16 = 92;
const SKB_LOCAL_IP4: i16 = 96;
const SKB_REMOTE_PORT: i16 = 132;
const SKB_LOCAL_PORT: i16 = 136;

/// The key of a socket as the program builds it from `__sk_buff`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Key {
    remote_ip4: u32,
    local_ip4: u32,
    /// The remote port as the kernel gives it to the program: in network
    /// order, in the upper half of the word.
    remote_port: u32,
    /// The local port in host order.
    local_port: u32,
}

impl Key {
    fn of(local: SocketAddr, remote: SocketAddr) -> io::Result<Key> {
        let (SocketAddr::V4(l), SocketAddr::V4(r)) = (local, remote) else {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "kernel splicing is for IPv4 sessions",
            ));
        };
        Ok(Key {
            remote_ip4: u32::from_ne_bytes(r.ip().octets()),
            local_ip4: u32::from_ne_bytes(l.ip().octets()),
            remote_port: u32::from(u16::from_ne_bytes(r.port().to_be_bytes())) << 16,
            local_port: u32::from(l.port()),
        })
    }
}

/// `union bpf_attr`, as bytes: each command fills its own fields.
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 128])
    }
    fn u32(mut self, offset: usize, v: u32) -> Attr {
        self.0[offset..offset + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(mut self, offset: usize, v: u64) -> Attr {
        self.0[offset..offset + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

fn bpf(cmd: u32, attr: &mut Attr) -> io::Result<libc::c_long> {
    // SAFETY: the kernel reads `size_of::<Attr>()` bytes of `attr`, and
    // any pointers in it are to buffers that outlive this call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr.0.as_mut_ptr(),
            std::mem::size_of::<Attr>(),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn owned(fd: libc::c_long) -> OwnedFd {
    // SAFETY: a descriptor the kernel just returned, owned by no one else.
    unsafe { OwnedFd::from_raw_fd(fd as RawFd) }
}

/// One eBPF instruction.
fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    u64::from(code)
        | (u64::from((src << 4) | dst) << 8)
        | (u64::from(off as u16) << 16)
        | (u64::from(imm as u32) << 32)
}

/// The verdict program: build the receiving socket's key on the stack,
/// redirect to the socket stored under it, and pass the data to the
/// receiving socket itself when there is none.
fn program(map: RawFd) -> Vec<u64> {
    const MOV64_REG: u8 = 0xbf;
    const MOV64_IMM: u8 = 0xb7;
    const ADD64_IMM: u8 = 0x07;
    const LDX_W: u8 = 0x61;
    const STX_W: u8 = 0x63;
    const LD_IMM64: u8 = 0x18;
    const PSEUDO_MAP_FD: u8 = 1;
    const CALL: u8 = 0x85;
    const JNE_IMM: u8 = 0x55;
    const EXIT: u8 = 0x95;
    const SK_PASS: i32 = 1;
    let (ctx, fp) = (6, 10);
    let mut p = vec![insn(MOV64_REG, ctx, 1, 0, 0)];
    for (i, field) in [
        SKB_REMOTE_IP4,
        SKB_LOCAL_IP4,
        SKB_REMOTE_PORT,
        SKB_LOCAL_PORT,
    ]
    .into_iter()
    .enumerate()
    {
        p.push(insn(LDX_W, 2, ctx, field, 0));
        p.push(insn(STX_W, fp, 2, -16 + 4 * i as i16, 0));
    }
    p.extend([
        insn(LD_IMM64, 2, PSEUDO_MAP_FD, 0, map),
        0,
        insn(MOV64_REG, 3, fp, 0, 0),
        insn(ADD64_IMM, 3, 0, 0, -16),
        insn(MOV64_IMM, 4, 0, 0, 0), // flags 0: out of the stored socket
        insn(MOV64_REG, 1, ctx, 0, 0),
        insn(CALL, 0, 0, 0, BPF_FUNC_SK_REDIRECT_HASH),
        // SK_PASS: redirected. SK_DROP (no entry): pass to this socket.
        insn(JNE_IMM, 0, 0, 1, 0),
        insn(MOV64_IMM, 0, 0, 0, SK_PASS),
        insn(EXIT, 0, 0, 0, 0),
    ]);
    p
}

/// The router's sockhash with the verdict program attached.
pub struct Splicer {
    map: OwnedFd,
    _program: OwnedFd,
    pub watcher: std::sync::Arc<Watcher>,
}

impl Splicer {
    /// Room for `sessions` sessions at once (two sockets each).
    pub fn new(sessions: usize) -> io::Result<Splicer> {
        let entries = u32::try_from(sessions.saturating_mul(2)).unwrap_or(u32::MAX);
        let mut attr = Attr::new()
            .u32(0, BPF_MAP_TYPE_SOCKHASH)
            .u32(4, std::mem::size_of::<Key>() as u32)
            .u32(8, 4) // the value: a socket's descriptor
            .u32(12, entries.max(2));
        let map = owned(bpf(BPF_MAP_CREATE, &mut attr)?);
        let insns = program(map.as_raw_fd());
        let license = c"GPL";
        let mut log = vec![0u8; 4096];
        let mut attr = Attr::new()
            .u32(0, BPF_PROG_TYPE_SK_SKB)
            .u32(4, insns.len() as u32)
            .u64(8, insns.as_ptr() as u64)
            .u64(16, license.as_ptr() as u64)
            .u32(24, 1)
            .u32(28, log.len() as u32)
            .u64(32, log.as_mut_ptr() as u64);
        let prog = match bpf(BPF_PROG_LOAD, &mut attr) {
            Ok(fd) => owned(fd),
            Err(e) => {
                let end = log.iter().position(|&b| b == 0).unwrap_or(0);
                let verifier = String::from_utf8_lossy(&log[..end]);
                return Err(io::Error::new(
                    e.kind(),
                    format!("loading the verdict program: {e} {}", verifier.trim()),
                ));
            }
        };
        let mut attr = Attr::new()
            .u32(0, map.as_raw_fd() as u32)
            .u32(4, prog.as_raw_fd() as u32)
            .u32(8, BPF_SK_SKB_VERDICT);
        bpf(BPF_PROG_ATTACH, &mut attr)?;
        Ok(Splicer {
            map,
            _program: prog,
            watcher: Watcher::start()?,
        })
    }

    /// From now on the kernel moves what arrives on either socket to the
    /// other. Call it only while neither peer may send (a client waiting
    /// for an answer the router has not passed on yet): data that came
    /// before stays queued on its socket until more arrives behind it.
    /// Closing a socket takes it out of the map.
    pub fn pair(&self, client: &TcpStream, server: &TcpStream) -> io::Result<()> {
        let client_key = Key::of(client.local_addr()?, client.peer_addr()?)?;
        let server_key = Key::of(server.local_addr()?, server.peer_addr()?)?;
        // What arrives on the client's socket goes out of the server's, and
        // the other way. Until both entries are in (or if the second
        // fails), data finds no entry and goes to its own socket, where the
        // pump passes it on.
        self.insert(&client_key, server)?;
        self.insert(&server_key, client)
    }

    fn insert(&self, key: &Key, sock: &TcpStream) -> io::Result<()> {
        let fd = sock.as_raw_fd() as u32;
        let mut attr = Attr::new()
            .u32(0, self.map.as_raw_fd() as u32)
            .u64(8, key as *const Key as u64)
            .u64(16, &fd as *const u32 as u64);
        bpf(BPF_MAP_UPDATE_ELEM, &mut attr).map(|_| ())
    }
}

/// Tells a spliced session when either of its sockets sees the end of its
/// stream (or an error), with no wake-up per message: tokio's poller asks
/// for readability, which the kernel signals for every message it
/// redirects, so the sockets leave it and are watched here for
/// `EPOLLRDHUP` alone, by one thread for the whole router.
pub struct Watcher {
    epoll: OwnedFd,
    waiting: std::sync::Mutex<std::collections::HashMap<u64, tokio::sync::oneshot::Sender<()>>>,
    next: std::sync::atomic::AtomicU64,
}

/// Stops watching a session's sockets when dropped (before they close).
pub struct Watch<'a> {
    watcher: &'a Watcher,
    token: u64,
    fds: [RawFd; 2],
}

impl Watcher {
    pub fn start() -> io::Result<std::sync::Arc<Watcher>> {
        // SAFETY: epoll_create1 takes no pointers.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let w = std::sync::Arc::new(Watcher {
            epoll: owned(libc::c_long::from(fd)),
            waiting: Default::default(),
            next: Default::default(),
        });
        let run = w.clone();
        std::thread::Builder::new()
            .name("router-splice".into())
            .spawn(move || run.run())?;
        Ok(w)
    }

    fn run(&self) {
        let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 64];
        loop {
            // SAFETY: the kernel writes at most `events.len()` entries.
            let n = unsafe {
                libc::epoll_wait(
                    self.epoll.as_raw_fd(),
                    events.as_mut_ptr(),
                    events.len() as i32,
                    -1,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                tracing::error!("router: watching spliced sessions: {e}");
                return;
            }
            let mut waiting = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
            for e in &events[..n as usize] {
                let token = e.u64;
                if let Some(tx) = waiting.remove(&token) {
                    let _ = tx.send(());
                }
            }
        }
    }

    /// Resolves when either socket's peer ends its stream or fails.
    pub fn watch(
        &self,
        a: &impl AsRawFd,
        b: &impl AsRawFd,
    ) -> io::Result<(Watch<'_>, tokio::sync::oneshot::Receiver<()>)> {
        let token = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(token, tx);
        let mut watch = Watch {
            watcher: self,
            token,
            fds: [-1, -1],
        };
        for (i, fd) in [a.as_raw_fd(), b.as_raw_fd()].into_iter().enumerate() {
            let mut ev = libc::epoll_event {
                // One event per socket: the end of a stream stays
                // readable, and would wake the thread until the socket
                // closes.
                events: (libc::EPOLLRDHUP | libc::EPOLLHUP | libc::EPOLLERR | libc::EPOLLONESHOT)
                    as u32,
                u64: token,
            };
            // SAFETY: `ev` is read during the call only.
            if unsafe { libc::epoll_ctl(self.epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut ev) }
                < 0
            {
                return Err(io::Error::last_os_error());
            }
            watch.fds[i] = fd;
        }
        Ok((watch, rx))
    }
}

impl Drop for Watch<'_> {
    fn drop(&mut self) {
        for fd in self.fds.into_iter().filter(|&fd| fd >= 0) {
            // SAFETY: the descriptor is still open (the sockets outlive
            // this guard); a null event is allowed for EPOLL_CTL_DEL.
            unsafe {
                libc::epoll_ctl(
                    self.watcher.epoll.as_raw_fd(),
                    libc::EPOLL_CTL_DEL,
                    fd,
                    std::ptr::null_mut(),
                );
            }
        }
        self.watcher
            .waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.token);
    }
}

/// A socket's byte counts: everything it received, and everything written
/// to it (acknowledged by the peer, or still in its send queue).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub received: u64,
    pub written: u64,
}

pub fn counts(s: &impl AsRawFd) -> io::Result<Counts> {
    let fd = s.as_raw_fd();
    // SAFETY: tcp_info is plain data; the kernel fills at most `len` bytes.
    let mut info: libc::tcp_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut queued: libc::c_int = 0;
    // SAFETY: SIOCOUTQ writes one int.
    if unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut queued) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Counts {
        received: info.tcpi_bytes_received,
        written: info.tcpi_bytes_acked + queued.max(0) as u64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key is what the program reads: the remote port in network
    /// order shifted up, the local port in host order.
    #[test]
    fn keys_match_what_the_program_reads() {
        let k = Key::of(
            "127.0.0.1:5432".parse().unwrap(),
            "127.0.0.2:40000".parse().unwrap(),
        )
        .unwrap();
        assert_eq!(k.local_ip4.to_ne_bytes(), [127, 0, 0, 1]);
        assert_eq!(k.remote_ip4.to_ne_bytes(), [127, 0, 0, 2]);
        assert_eq!(k.local_port, 5432);
        assert_eq!(
            (k.remote_port >> 16).to_ne_bytes()[..2],
            40000u16.to_be_bytes()
        );
        assert!(Key::of("[::1]:1".parse().unwrap(), "[::1]:2".parse().unwrap()).is_err());
    }

    #[test]
    fn instructions_are_encoded_as_the_kernel_reads_them() {
        // r2 = *(u32 *)(r6 + 92)
        assert_eq!(insn(0x61, 2, 6, 92, 0), 0x0000_0000_005c_6261);
        // r3 += -16
        assert_eq!(insn(0x07, 3, 0, 0, -16), 0xffff_fff0_0000_0307);
        assert_eq!(program(7).len(), 19);
    }
}
