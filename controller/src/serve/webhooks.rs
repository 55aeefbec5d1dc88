//! The HTTPS server every replica runs on `--webhook-addr`, leader or not: the admission
//! webhook (`/validate`, `admission`) and the device authorizer (`/authorize`,
//! `device_authorizer`), each answering from caches of its own.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
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
        .map(offer_h2)
        .map_err(|e| WebhookError::Tls(cert.to_path_buf(), e.to_string()))
}

/// Serves both webhooks over TLS on `addr` until the process ends; the authorizer decides
/// from `enrolled`.
pub async fn serve(
    client: Client,
    enrolled: device_authorizer::Enrolled,
    addr: SocketAddr,
    cert: PathBuf,
    key_path: PathBuf,
    system_namespace: String,
) -> Result<(), WebhookError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_config(&cert, &key_path)?));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| WebhookError::Bind(addr, e))?;
    let app = admission::router(client, addr)
        .merge(device_authorizer::router(enrolled, system_namespace));
    tracing::info!(%addr, admission = admission::PATH, authorizer = device_authorizer::PATH, "serving the webhooks");
    accept(listener, acceptor, app, Limits::WEBHOOK).await
}

/// What one client may hold of the webhook server. Any pod of the cluster can reach the
/// port, and the apiserver needs it for every device request the authorizer decides: no
/// client may keep a connection, a stream or memory for long.
#[derive(Clone, Copy, Debug)]
struct Limits {
    /// Connections at once; more wait to be accepted.
    connections: usize,
    /// For the TLS handshake, and on HTTP/1.1 for a request's headers.
    handshake: Duration,
    /// A connection's lifetime: then it is closed gracefully (the apiserver opens another),
    /// so that a client which says nothing after its handshake frees its slot.
    max_age: Duration,
    /// For one request, its body read and its answer included.
    request: Duration,
    /// Concurrent streams on one HTTP/2 connection.
    streams: u32,
    /// Requests in progress at once over all connections: with `BODY_LIMIT` a bound on the
    /// memory request bodies take.
    in_flight: usize,
}

impl Limits {
    const WEBHOOK: Limits = Limits {
        connections: 256,
        handshake: Duration::from_secs(10),
        max_age: Duration::from_secs(300),
        request: Duration::from_secs(10),
        streams: 32,
        in_flight: 64,
    };
}

/// The largest request body the server reads. An AdmissionReview carries the object and the
/// one it replaces, a few kilobytes each for edgefleet's; the authorizer sets its own, lower.
const BODY_LIMIT: usize = 1 << 20;

/// The pause after a failed accept.
const ACCEPT_RETRY: Duration = Duration::from_millis(100);

/// Bounds every request in time, and all of them together in number.
fn bounded(app: Router, limits: Limits) -> Router {
    let in_flight = Arc::new(tokio::sync::Semaphore::new(limits.in_flight));
    app.layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(
            move |req, next: axum::middleware::Next| {
                let in_flight = in_flight.clone();
                async move {
                    let run = async {
                        let _permit = in_flight.acquire().await;
                        next.run(req).await
                    };
                    match tokio::time::timeout(limits.request, run).await {
                        Ok(response) => response,
                        Err(_) => axum::response::IntoResponse::into_response((
                            StatusCode::SERVICE_UNAVAILABLE,
                            "the request took too long",
                        )),
                    }
                }
            },
        ))
}

/// Serves `app` over TLS on every connection `listener` accepts, HTTP/2 where the client
/// offers it (ALPN): the apiserver then sends every review over one connection instead of
/// opening one per concurrent request, each with its own TLS handshake, when a thousand
/// devices ask at once. The protocol is the one TLS agreed, never guessed from what the
/// client sends, so a client that stays silent meets a timeout either way.
async fn accept(
    listener: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    app: Router,
    limits: Limits,
) -> ! {
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.connections));
    let app = bounded(app, limits);
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
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let io = TokioIo::new(tls);
            let service = hyper_util::service::TowerToHyperService::new(app);
            if h2 {
                let mut http = http2::Builder::new(TokioExecutor::new());
                http.timer(TokioTimer::new())
                    .max_concurrent_streams(limits.streams)
                    .keep_alive_interval(limits.handshake)
                    .keep_alive_timeout(limits.handshake);
                let conn = http.serve_connection(io, service);
                tokio::pin!(conn);
                for_at_most(conn, |c| c.graceful_shutdown(), limits).await;
            } else {
                let mut http = http1::Builder::new();
                http.timer(TokioTimer::new())
                    .header_read_timeout(limits.handshake);
                let conn = http.serve_connection(io, service);
                tokio::pin!(conn);
                for_at_most(conn, |c| c.graceful_shutdown(), limits).await;
            }
        });
    }
}

/// Offers HTTP/2 and HTTP/1.1 at the TLS handshake (ALPN), HTTP/2 first.
fn offer_h2(mut config: rustls::ServerConfig) -> rustls::ServerConfig {
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}

/// Runs a connection until it ends, or for `max_age`: then it is closed gracefully (its
/// requests in progress may finish within `request`), and then dropped.
async fn for_at_most<C: Future>(mut conn: Pin<&mut C>, close: fn(Pin<&mut C>), limits: Limits) {
    tokio::select! {
        _ = conn.as_mut() => {}
        () = tokio::time::sleep(limits.max_age) => {
            close(conn.as_mut());
            let _ = tokio::time::timeout(limits.request, conn).await;
        }
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
        .map(offer_h2)
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
            ..Limits::WEBHOOK
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
        tokio::time::timeout(Duration::from_secs(10), tls_client(addr, None))
            .await
            .expect("a freed slot accepts");
    }

    /// A TLS connection to `addr` that offers `alpn` (HTTP/2's `h2`, or none: HTTP/1.1).
    async fn tls_client(
        addr: SocketAddr,
        alpn: Option<&[u8]>,
    ) -> tokio_rustls::client::TlsStream<tokio::net::TcpStream> {
        let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut client = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate))
        .with_no_client_auth();
        client.alpn_protocols = alpn.into_iter().map(<[u8]>::to_vec).collect();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client));
        let name = rustls::pki_types::ServerName::try_from("localhost").expect("a name");
        connector.connect(name, tcp).await.expect("a handshake")
    }

    /// A client that completes its handshake and then says nothing, on HTTP/1.1 or on
    /// HTTP/2, loses its connection and its slot too: the server never waits on a client
    /// to learn which protocol it speaks, and closes every connection after `max_age`.
    #[tokio::test]
    async fn a_client_silent_after_its_handshake_loses_its_connection_and_slot() {
        use tokio::io::AsyncReadExt;
        let limits = Limits {
            connections: 2,
            handshake: Duration::from_millis(300),
            max_age: Duration::from_millis(600),
            request: Duration::from_millis(300),
            ..Limits::WEBHOOK
        };
        let addr = webhook_with(limits).await;
        let mut silent = vec![
            tls_client(addr, None).await,
            tls_client(addr, Some(b"h2")).await,
        ];
        assert_eq!(silent[1].get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
        for s in &mut silent {
            let mut buf = vec![0u8; 4096];
            let closed = tokio::time::timeout(Duration::from_secs(10), async {
                // HTTP/2's server speaks first (its SETTINGS); read until the close.
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(_) => {}
                    }
                }
            })
            .await;
            assert!(closed.is_ok(), "the server must close a silent connection");
        }
        tokio::time::timeout(Duration::from_secs(10), tls_client(addr, None))
            .await
            .expect("a freed slot accepts");
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
