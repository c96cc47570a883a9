//! HTTPS on the bridge's listener (`--tls-cert`/`--tls-key`).
//!
//! Tokens travel on that listener (the miner's JWT, the worker token on blob
//! transfers, the status tokens), so an operator whose miner, workers or
//! operators reach the bridge across a network they do not trust serves it
//! over TLS. Plain HTTP stays the default: lotus-miner talks to its workers
//! in plain HTTP on a LAN, and it must be able to reach the bridge the same
//! way unless the operator chose otherwise.
//!
//! Three parts:
//! * [`server_config`] reads the certificate chain and key (PEM) and names
//!   what is wrong with them;
//! * [`TlsListener`] hands axum only connections whose handshake finished:
//!   handshakes run on their own tasks with a deadline and a cap on how many
//!   are pending, so a peer that opens a socket and says nothing (or speaks
//!   plain HTTP) cannot hold up anyone else's connection;
//! * [`pinned_client`] is how the operator commands on the bridge's host
//!   connect: they reach it at 127.0.0.1, which the certificate need not
//!   name, so they trust exactly the certificate the running bridge wrote
//!   into its state directory ([`PINNED_CERT`]) instead of a name.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{ring, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// The file in the state directory that holds the certificate the bridge
/// serves (its first one), for [`pinned_client`].
pub const PINNED_CERT: &str = "api-cert.pem";

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// How many handshakes may be pending at once; connections beyond it are
/// closed at once (a slow-handshake flood cannot grow memory or tasks).
const MAX_PENDING_HANDSHAKES: usize = 256;

/// The bridge's TLS identity: the certificate chain (leaf first) and its key.
pub struct ServerTls {
    pub config: Arc<rustls::ServerConfig>,
    /// The leaf certificate, PEM, as [`PINNED_CERT`] holds it.
    pub leaf_pem: String,
}

/// Reads `--tls-cert` (a PEM chain, the bridge's certificate first) and
/// `--tls-key` (a PEM private key: PKCS#8, PKCS#1 or SEC1).
pub fn server_config(cert: &Path, key: &Path) -> Result<ServerTls> {
    let chain = CertificateDer::pem_file_iter(cert)
        .with_context(|| format!("cannot read the certificate file (--tls-cert) {}", cert.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("the certificate file (--tls-cert) {} is not valid PEM", cert.display()))?;
    let Some(leaf) = chain.first() else {
        bail!("the certificate file (--tls-cert) {} holds no PEM CERTIFICATE", cert.display());
    };
    let leaf_pem = pem_certificate(leaf);
    let key = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("cannot read a PEM private key from the key file (--tls-key) {}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("the TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the certificate (--tls-cert) and key (--tls-key) do not belong together, or the key's type is not supported")?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(ServerTls { config: Arc::new(config), leaf_pem })
}

fn pem_certificate(der: &CertificateDer<'_>) -> String {
    use base64::Engine;
    let text = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
    let mut pem = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in text.as_bytes().chunks(64) {
        pem.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        pem.push('\n');
    }
    pem.push_str("-----END CERTIFICATE-----\n");
    pem
}

/// A listener that yields TLS connections whose handshake is done.
pub struct TlsListener {
    ready: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
}

impl TlsListener {
    /// Starts accepting on `listener`; handshakes run on their own tasks.
    pub fn new(listener: TcpListener, config: Arc<rustls::ServerConfig>) -> io::Result<Self> {
        let local = listener.local_addr()?;
        let (done, ready) = mpsc::channel(64);
        let acceptor = TlsAcceptor::from(config);
        let pending = Arc::new(Semaphore::new(MAX_PENDING_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let (tcp, peer) = tokio::select! {
                    accepted = listener.accept() => match accepted {
                        Ok(accepted) => accepted,
                        Err(err) => {
                            // Out of file descriptors and the like: wait, do not spin.
                            tracing::warn!("accepting a connection failed: {err}");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    },
                    () = done.closed() => return,
                };
                let Ok(permit) = pending.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "{MAX_PENDING_HANDSHAKES} TLS handshakes pending: connection closed");
                    continue;
                };
                let (acceptor, done) = (acceptor.clone(), done.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                        Ok(Ok(stream)) => {
                            let _ = done.send((stream, peer)).await;
                        }
                        // A client speaking plain HTTP to an HTTPS listener ends here.
                        Ok(Err(err)) => {
                            tracing::info!(%peer, "TLS handshake failed (is the client using https://?): {err}")
                        }
                        Err(_) => {
                            tracing::info!(%peer, "TLS handshake not finished within {HANDSHAKE_TIMEOUT:?}: closed")
                        }
                    }
                });
            }
        });
        Ok(TlsListener { ready, local })
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(connection) => connection,
            // The accept loop ended (it never does while the listener is
            // held); nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// An HTTP client that trusts exactly the certificate in `pem_file` (the
/// bridge's [`PINNED_CERT`]), whatever name or address it is reached at.
pub fn pinned_client(pem_file: &Path, timeout: Duration) -> Result<reqwest::Client> {
    let cert = CertificateDer::from_pem_file(pem_file)
        .with_context(|| format!("cannot read the bridge's certificate {}", pem_file.display()))?;
    let provider = ring::default_provider();
    let verifier = Pinned { cert, algorithms: provider.signature_verification_algorithms };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(provider))
        .with_safe_default_protocol_versions()
        .context("the TLS protocol versions")?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(timeout)
        .build()
        .context("building the HTTP client")
}

/// Accepts the one certificate given, still checking that the server holds
/// its key (the handshake signature).
#[derive(Debug)]
struct Pinned {
    cert: CertificateDer<'static>,
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if end_entity.as_ref() == self.cert.as_ref() {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "the server's certificate is not the one in {PINNED_CERT} (another bridge, or a restart with a new certificate)"
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}
