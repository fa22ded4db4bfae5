//! The few PostgreSQL wire-protocol messages the router reads: the
//! client's first packet (SSL or GSS request, cancel, startup) and the
//! server's answers up to ReadyForQuery, so that a server that cannot take
//! the client (shutting down, still starting, in recovery on a writer
//! route) is retried while the client waits instead of handed to it.
//! Everything after that is spliced unread.

use tokio::io::{AsyncRead, AsyncReadExt};

pub const SSL_REQUEST: u32 = 80877103;
pub const GSSENC_REQUEST: u32 = 80877104;
pub const CANCEL_REQUEST: u32 = 80877102;
/// Postgres caps a startup packet at 10000 bytes (MAX_STARTUP_PACKET_LENGTH).
const MAX_STARTUP: usize = 10_000;
/// What the router buffers of a server's answers before ReadyForQuery.
pub const MAX_GREETING: usize = 64 * 1024;

/// The client's first packet, whole (length word included), and its code.
pub async fn read_startup<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<(u32, Vec<u8>)> {
    let mut head = [0u8; 8];
    r.read_exact(&mut head).await?;
    let len = u32::from_be_bytes(head[..4].try_into().expect("4 bytes")) as usize;
    if !(8..=MAX_STARTUP).contains(&len) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("startup packet of {len} bytes"),
        ));
    }
    let code = u32::from_be_bytes(head[4..].try_into().expect("4 bytes"));
    let mut packet = head.to_vec();
    packet.resize(len, 0);
    r.read_exact(&mut packet[8..]).await?;
    Ok((code, packet))
}

/// One server message, whole: type byte, length word, body.
pub async fn read_message<R: AsyncRead + Unpin>(r: &mut R) -> std::io::Result<Vec<u8>> {
    let mut head = [0u8; 5];
    r.read_exact(&mut head).await?;
    let len = u32::from_be_bytes(head[1..].try_into().expect("4 bytes")) as usize;
    if !(4..=MAX_GREETING).contains(&len) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("server message of {len} bytes"),
        ));
    }
    let mut msg = head.to_vec();
    msg.resize(1 + len, 0);
    r.read_exact(&mut msg[5..]).await?;
    Ok(msg)
}

/// Fields of an ErrorResponse body: (code, value) pairs.
fn error_fields(msg: &[u8]) -> impl Iterator<Item = (u8, &[u8])> {
    let mut rest = msg.get(5..).unwrap_or_default();
    std::iter::from_fn(move || {
        let (&code, tail) = rest.split_first()?;
        if code == 0 {
            return None;
        }
        let end = tail.iter().position(|&b| b == 0)?;
        rest = &tail[end + 1..];
        Some((code, &tail[..end]))
    })
}

/// The SQLSTATE of an ErrorResponse.
pub fn sqlstate(msg: &[u8]) -> Option<&[u8]> {
    if msg.first() != Some(&b'E') {
        return None;
    }
    error_fields(msg).find(|(c, _)| *c == b'C').map(|(_, v)| v)
}

/// A server's refusal that another try (on the same or the next backend)
/// may get past: the server is shutting down, starting up, or in recovery
/// without hot standby (class 57P: operator intervention).
pub fn retryable(msg: &[u8]) -> bool {
    matches!(sqlstate(msg), Some(b"57P01" | b"57P02" | b"57P03"))
}

/// AuthenticationOk: the server took the client without a password
/// exchange, so the router can read on to ReadyForQuery unseen.
pub fn is_auth_ok(msg: &[u8]) -> bool {
    msg.len() == 9 && msg[0] == b'R' && msg[5..9] == [0, 0, 0, 0]
}

/// A ParameterStatus `in_hot_standby` (reported by postgres 14 and
/// later): `Some(true)` for a standby, `Some(false)` for a writable server.
fn hot_standby(msg: &[u8]) -> Option<bool> {
    if msg.first() != Some(&b'S') || msg.len() < 5 {
        return None;
    }
    let mut parts = msg[5..].split(|&b| b == 0);
    if parts.next() != Some(b"in_hot_standby") {
        return None;
    }
    match parts.next() {
        Some(b"on") => Some(true),
        Some(b"off") => Some(false),
        _ => None,
    }
}

pub fn says_hot_standby(msg: &[u8]) -> bool {
    hot_standby(msg) == Some(true)
}

/// The server takes writes (`in_hot_standby = off`).
pub fn says_writable(msg: &[u8]) -> bool {
    hot_standby(msg) == Some(false)
}

/// What the router is about to hand the client ends the server's turn:
/// the server will say nothing more until the client speaks, and a client
/// following the protocol says nothing until it has read this. That is
/// the moment a session can be handed to the kernel (`kernel::Splicer`)
/// without anything in flight. True for the SSL answer `S` (the client's
/// TLS hello comes next), for a greeting ending in ReadyForQuery, and for
/// an authentication request (a password, a SASL step, GSS).
pub fn ends_servers_turn(answer: &[u8]) -> bool {
    if answer == b"S" {
        return true;
    }
    let (mut at, mut last) = (0, None);
    while at < answer.len() {
        let Some(len) = answer.get(at + 1..at + 5) else {
            return false;
        };
        let len = u32::from_be_bytes(len.try_into().expect("four bytes")) as usize;
        if len < 4 || at + 1 + len > answer.len() {
            return false;
        }
        last = Some(&answer[at..at + 1 + len]);
        at += 1 + len;
    }
    match last {
        Some(m) if m[0] == b'Z' => true,
        // AuthenticationOk (0) and SASLFinal (12) are followed by more.
        Some(m) if m[0] == b'R' && m.len() >= 9 => !matches!(m[5..9], [0, 0, 0, 0] | [0, 0, 0, 12]),
        _ => false,
    }
}

/// A FATAL ErrorResponse for a client the router cannot serve.
pub fn fatal(sqlstate: &str, message: &str) -> Vec<u8> {
    let mut body = vec![];
    for (code, value) in [
        (b'S', "FATAL"),
        (b'V', "FATAL"),
        (b'C', sqlstate),
        (b'M', message),
    ] {
        body.push(code);
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    let mut msg = vec![b'E'];
    msg.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
    msg.extend_from_slice(&body);
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_is_read_back_and_classed() {
        let e = fatal("57P03", "the database system is shutting down");
        assert_eq!(sqlstate(&e), Some(&b"57P03"[..]));
        assert!(retryable(&e));
        assert!(!retryable(&fatal(
            "28P01",
            "password authentication failed"
        )));
        assert!(!retryable(b"R\0\0\0\x08\0\0\0\0"));
    }

    #[test]
    fn greeting_messages_are_recognised() {
        assert!(is_auth_ok(b"R\0\0\0\x08\0\0\0\0"));
        assert!(!is_auth_ok(b"R\0\0\0\x08\0\0\0\x0a"));
        let standby = b"S\0\0\0\x16in_hot_standby\0on\0";
        assert!(says_hot_standby(standby));
        assert!(!says_hot_standby(b"S\0\0\0\x17in_hot_standby\0off\0"));
        assert!(says_writable(b"S\0\0\0\x17in_hot_standby\0off\0"));
        assert!(!says_writable(standby));
    }

    #[test]
    fn the_end_of_the_servers_turn_is_recognised() {
        let ok = b"R\0\0\0\x08\0\0\0\0";
        let ready = b"Z\0\0\0\x05I";
        let status = b"S\0\0\0\x17in_hot_standby\0off\0";
        assert!(ends_servers_turn(b"S"));
        assert!(!ends_servers_turn(b"N"));
        assert!(ends_servers_turn(&[&ok[..], status, ready].concat()));
        // More is coming after AuthenticationOk, or after a ParameterStatus.
        assert!(!ends_servers_turn(ok));
        assert!(!ends_servers_turn(&[&ok[..], status].concat()));
        // A password or SASL request waits for the client.
        assert!(ends_servers_turn(b"R\0\0\0\x0c\0\0\0\x05salt"));
        assert!(ends_servers_turn(b"R\0\0\0\x17\0\0\0\x0aSCRAM-SHA-256\0\0"));
        assert!(!ends_servers_turn(b"R\0\0\0\x08\0\0\0\x0c"));
        // A cut or malformed message is not an end.
        assert!(!ends_servers_turn(&ready[..4]));
        assert!(!ends_servers_turn(b"Z\0\0\0\x01"));
        assert!(!ends_servers_turn(&fatal("28P01", "no")));
    }

    #[tokio::test]
    async fn packets_are_read_whole_and_bounded() {
        let mut ssl = &[0u8, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f][..];
        let (code, p) = read_startup(&mut ssl).await.unwrap();
        assert_eq!((code, p.len()), (SSL_REQUEST, 8));
        let mut huge = &[0u8, 1, 0, 0, 0, 3, 0, 0][..];
        assert!(read_startup(&mut huge).await.is_err());
        let msg = fatal("57P03", "x");
        let mut r = &msg[..];
        assert_eq!(read_message(&mut r).await.unwrap(), msg);
    }
}
