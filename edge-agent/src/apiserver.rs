//! The agent's connection to the apiserver, on the protocol the device's operator chose.
//!
//! kube's own client speaks HTTP/1.1, one request on a connection at a time, so an agent
//! holds a connection for its watch and one or two more for its Lease renewals and status
//! writes: about three a device in the apiserver's open files. On HTTP/2 they share one
//! connection, and pings find a connection that died silently (a device whose uplink
//! dropped) without waiting for a request to time out.

use std::time::Duration;

use clap::ValueEnum;
use hyper_timeout::TimeoutConnector;
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use kube::Client;
use kube::client::ConfigExt;
use tower::{BoxError, ServiceBuilder};

/// How often an idle HTTP/2 connection is pinged, and how long a ping may go unanswered
/// before the connection counts as dead. Ten thousand agents at this interval are about
/// 330 pings a second for the apiserver, which it answers without a handler.
const PING_INTERVAL: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// The HTTP protocol the agent speaks to the apiserver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum Protocol {
    /// HTTP/1.1: kube's client, a connection for each request in flight.
    #[default]
    Http1,
    /// HTTP/2 only: the watch and every write on one connection, pinged.
    Http2,
}

/// A client for `config`'s apiserver and credentials on `protocol`.
///
/// The agent paces its own retries (`backoff.rs`: a lost link at most 2 s apart, a 429 from
/// 1 s doubling to 30 s), so kube's retry layer is off on both protocols: on, it retries a
/// 429 up to 15 times from 5 ms within the agent's 30 s deadline, which then counts as no
/// answer (the link down, the watch relisted, the status rewritten: the load it sheds).
pub fn client(mut config: kube::Config, protocol: Protocol) -> Result<Client, kube::Error> {
    config.default_retry = false;
    match protocol {
        Protocol::Http1 => Client::try_from(config),
        Protocol::Http2 => http2_client(config),
    }
}

/// kube's client stack (base URI, credentials, extra headers) over a hyper client that
/// offers only `h2` in TLS and speaks only HTTP/2: an apiserver without it is a connection
/// error, never a silent fallback to a connection per request.
fn http2_client(config: kube::Config) -> Result<Client, kube::Error> {
    if let Some(setting) = unsupported_on_http2(&config) {
        return Err(kube::Error::Service(
            format!("--apiserver-protocol http2 does not support the kubeconfig's {setting}")
                .into(),
        ));
    }
    let mut connector = HttpConnector::new();
    connector.enforce_http(false);
    connector.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config.rustls_client_config()?)
        .https_only()
        .enable_http2()
        .wrap_connector(connector);
    // The connect timeout covers the TLS handshake too: one HTTP/2 connection is made at a
    // time, and every request waits for it, so a handshake that stalls (an uplink lost right
    // after the TCP connect) must not hold the watch, the renewals and the writes with it.
    let mut https = TimeoutConnector::new(https);
    https.set_connect_timeout(config.connect_timeout);
    let hyper: HyperClient<_, kube::client::Body> = HyperClient::builder(TokioExecutor::new())
        // The pings' clock.
        .timer(TokioTimer::new())
        .http2_only(true)
        .http2_keep_alive_interval(PING_INTERVAL)
        .http2_keep_alive_timeout(PING_TIMEOUT)
        .http2_keep_alive_while_idle(true)
        .build(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        // The credentials layer's errors are boxed: the client's must be too.
        .map_err(BoxError::from)
        .service(hyper);
    Ok(Client::new(service, config.default_namespace))
}

/// A kubeconfig setting kube's own client honours that this one does not: a proxy, or a
/// TLS server name other than the URL's host. Refused rather than ignored, so that an
/// operator finds out at start, not from a certificate error or a bypassed proxy.
fn unsupported_on_http2(config: &kube::Config) -> Option<&'static str> {
    if config.proxy_url.is_some() {
        Some("proxy-url")
    } else if config.tls_server_name.is_some() {
        Some("tls-server-name")
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> kube::Config {
        kube::Config::new("https://10.0.0.1:6443".parse().expect("a URL"))
    }

    #[test]
    fn http2_refuses_a_proxy_or_a_server_name_it_would_ignore() {
        let mut proxied = config();
        proxied.proxy_url = Some("http://proxy:3128".parse().expect("a URL"));
        let mut renamed = config();
        renamed.tls_server_name = Some("apiserver.internal".into());
        for c in [proxied, renamed] {
            let Err(e) = client(c, Protocol::Http2) else {
                panic!("a client despite a setting it would ignore");
            };
            assert!(e.to_string().contains("does not support"), "{e}");
        }
        assert_eq!(unsupported_on_http2(&config()), None);
    }
}
