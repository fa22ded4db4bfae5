//! TLS for the REST API (optional: `api.certfile` + `api.keyfile`), and the
//! one HTTP client every part of Baton uses to call agents, which trusts
//! `api.cafile` in addition to the system roots.
//!
//! rustls runs on the `ring` provider: it builds in seconds, where the
//! default provider pulls a slow C build onto every machine.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Once};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

static PROVIDER: Once = Once::new();

/// Installs the process-wide rustls provider; safe to call many times.
pub fn init() {
    PROVIDER.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// A TLS file or client that could not be set up; the message names the
/// file (and the config key) that is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

/// An HTTP(S) client for agents' REST APIs.
pub fn http_client(timeout: Duration, cafile: Option<&Path>) -> Result<reqwest::Client, TlsError> {
    init();
    let mut b = reqwest::Client::builder().timeout(timeout);
    if let Some(path) = cafile {
        let pem = std::fs::read(path)
            .map_err(|e| TlsError(format!("reading cafile {}: {e}", path.display())))?;
        for cert in reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| TlsError(format!("cafile {}: {e}", path.display())))?
        {
            b = b.tls_certs_merge([cert]);
        }
    }
    b.build()
        .map_err(|e| TlsError(format!("building the HTTP client: {e}")))
}

/// An agent's answer to a control request: its status and the text of its
/// `message` (success) or `error` (refusal) field.
pub async fn read_answer(resp: reqwest::Response) -> (reqwest::StatusCode, String) {
    let code = resp.status();
    let body: serde_json::Value = resp.json().await.unwrap_or_default();
    let mut text = body["message"]
        .as_str()
        .or(body["error"].as_str())
        .unwrap_or("")
        .to_string();
    // A refusal's stable code, for the operator's scripts and for searching
    // the docs: `... [lag_exceeds_limit]`.
    if let Some(c) = body["code"].as_str() {
        text = format!("{text} [{c}]");
    }
    (code, text)
}

/// Builds the server side from PEM files, naming the file that is wrong.
pub fn acceptor(certfile: &Path, keyfile: &Path) -> Result<TlsAcceptor, TlsError> {
    init();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(certfile)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| TlsError(format!("api.certfile {}: {e}", certfile.display())))?;
    if certs.is_empty() {
        return Err(TlsError(format!(
            "api.certfile {}: no certificate found",
            certfile.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(keyfile)
        .map_err(|e| TlsError(format!("api.keyfile {}: {e}", keyfile.display())))?;
    let config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| TlsError(format!("api.certfile/keyfile: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// A listener whose connections are TLS streams. Handshakes run in their
/// own tasks (bounded by 10 s), so one slow client cannot hold up accepts.
pub struct TlsListener {
    local: SocketAddr,
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(listener: TcpListener, acceptor: TlsAcceptor) -> std::io::Result<TlsListener> {
        let local = listener.local_addr()?;
        let (tx, rx) = mpsc::channel(64);
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, addr)) = listener.accept().await else {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                tokio::spawn(async move {
                    match tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
                    {
                        Ok(Ok(tls)) => {
                            let _ = tx.send((tls, addr)).await;
                        }
                        Ok(Err(e)) => tracing::debug!(%addr, "TLS handshake failed: {e}"),
                        Err(_) => tracing::debug!(%addr, "TLS handshake timed out"),
                    }
                });
            }
        });
        Ok(TlsListener { local, rx, task })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(c) => c,
            // The accept task only ends when the listener is dropped.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}
