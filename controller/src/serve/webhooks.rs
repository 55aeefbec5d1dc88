//! The HTTPS server every replica runs on `--webhook-addr`, leader or not: the admission
//! webhook (`/validate`, `admission`) and the device authorizer (`/authorize`,
//! `device_authorizer`), each answering from caches of its own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use kube::Client;
use thiserror::Error;

use crate::serve::{admission, device_authorizer};

#[derive(Debug, Error)]
pub enum WebhookError {
    #[error("cannot read the webhook's {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the webhook's certificate or key {0} is not usable: {1}")]
    Tls(PathBuf, String),
    #[error("cannot serve the webhook on {0}: {1}")]
    Bind(SocketAddr, #[source] std::io::Error),
}

fn tls_config(cert: &Path, key_path: &Path) -> Result<rustls::ServerConfig, WebhookError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let read = |what, path: &Path| {
        std::fs::read(path).map_err(|source| WebhookError::Read {
            what,
            path: path.to_path_buf(),
            source,
        })
    };
    let certs = CertificateDer::pem_slice_iter(&read("certificate", cert)?)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| WebhookError::Tls(cert.to_path_buf(), e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(&read("key", key_path)?)
        .map_err(|e| WebhookError::Tls(key_path.to_path_buf(), e.to_string()))?;
    rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| WebhookError::Tls(cert.to_path_buf(), e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map(|mut config| {
            config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
            config
        })
        .map_err(|e| WebhookError::Tls(cert.to_path_buf(), e.to_string()))
}

/// Serves both webhooks over TLS on `addr` until the process ends.
pub async fn serve(
    client: Client,
    addr: SocketAddr,
    cert: PathBuf,
    key_path: PathBuf,
    system_namespace: String,
) -> Result<(), WebhookError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&cert, &key_path)?));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| WebhookError::Bind(addr, e))?;
    let app = admission::router(client.clone(), addr)
        .merge(device_authorizer::router(client, system_namespace));
    tracing::info!(%addr, admission = admission::PATH, authorizer = device_authorizer::PATH, "serving the webhooks");
    accept(listener, acceptor, app, Limits::WEBHOOK).await
}

/// How many connections the webhook holds at once, and how long a client may take for its
/// TLS handshake and for a request's headers.
#[derive(Clone, Copy, Debug)]
struct Limits {
    connections: usize,
    handshake: Duration,
}

impl Limits {
    /// The apiserver opens a few connections; more wait to be accepted.
    const WEBHOOK: Limits = Limits {
        connections: 256,
        handshake: Duration::from_secs(10),
    };
}

/// The pause after a failed accept.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Serves `app` over TLS on every connection `listener` accepts, HTTP/2 where the client
/// offers it (ALPN): the apiserver then sends every review over one connection instead of
/// opening one per concurrent request, each with its own TLS handshake, when a thousand
/// devices ask at once. Any pod of the cluster can reach the webhook's port: connections
/// are bounded in number, and a client that stalls its handshake or (on HTTP/1.1) its
/// request's headers loses its connection.
async fn accept(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
    limits: Limits,
) -> ! {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.connections));
    loop {
        let slot = slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        let tcp = match listener.accept().await {
            Ok((tcp, _)) => {
                // A response goes out in several small TLS records; with Nagle's algorithm
                // the last waits for the client's delayed ACK (40 ms) on every review.
                let _ = tcp.set_nodelay(true);
                tcp
            }
            Err(e) => {
                // Out of file descriptors, for one: wait instead of spinning on the error.
                tracing::warn!(error = %e, "cannot accept a webhook connection");
                tokio::time::sleep(ACCEPT_RETRY).await;
                continue;
            }
        };
        let (acceptor, app) = (acceptor.clone(), app.clone());
        tokio::spawn(async move {
            let _slot = slot;
            let Ok(Ok(tls)) = tokio::time::timeout(limits.handshake, acceptor.accept(tcp)).await
            else {
                return;
            };
            let service = hyper_util::service::TowerToHyperService::new(app);
            let mut http = Builder::new(TokioExecutor::new());
            http.http1()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.handshake);
            http.http2().timer(TokioTimer::new());
            let _ = http
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A webhook server on the loopback with a throwaway certificate and `limits`.
    async fn webhook_with(limits: Limits) -> SocketAddr {
        let key = rcgen::KeyPair::generate().expect("a key");
        let cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .expect("params")
            .self_signed(&key)
            .expect("a certificate");
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).expect("a key"),
        )
        .expect("a TLS config");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a port");
        let addr = listener.local_addr().expect("an address");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        tokio::spawn(accept(listener, acceptor, Router::new(), limits));
        addr
    }

    /// A client that opens connections and never says anything (slowloris) neither keeps
    /// them nor keeps the webhook's connection slots: the apiserver still gets in.
    #[tokio::test]
    async fn a_client_that_stalls_its_handshake_loses_its_connection_and_slot() {
        use tokio::io::AsyncReadExt;
        let limits = Limits {
            connections: 2,
            handshake: Duration::from_millis(300),
        };
        let addr = webhook_with(limits).await;
        let mut stalled = Vec::new();
        for _ in 0..limits.connections {
            stalled.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        }
        for s in &mut stalled {
            let mut buf = [0u8; 1];
            let read = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf))
                .await
                .expect("the server must close a stalled connection");
            assert!(matches!(read, Ok(0) | Err(_)), "closed, not answered");
        }
        // Both slots are free again: a real TLS client completes its handshake.
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate))
        .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("a name");
        tokio::time::timeout(Duration::from_secs(10), connector.connect(name, tcp))
            .await
            .expect("a freed slot accepts")
            .expect("a handshake");
    }

    /// The test's client trusts the throwaway certificate whatever it is.
    #[derive(Debug)]
    struct AnyCertificate;

    impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
        fn verify_server_cert(
            &self,
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &[rustls::pki_types::CertificateDer<'_>],
            _: &rustls::pki_types::ServerName<'_>,
            _: &[u8],
            _: rustls::pki_types::UnixTime,
        ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        }
        fn verify_tls12_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn verify_tls13_signature(
            &self,
            _: &[u8],
            _: &rustls::pki_types::CertificateDer<'_>,
            _: &rustls::DigitallySignedStruct,
        ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
            Ok(rustls::client::danger::HandshakeSignatureValid::assertion())
        }
        fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
            rustls::crypto::ring::default_provider()
                .signature_verification_algorithms
                .supported_schemes()
        }
    }
}
