//! The agent's connection to the apiserver, on the protocol the device's operator chose.
//!
//! kube's own client speaks HTTP/1.1, one request on a connection at a time, so an agent
//! holds a connection for its watch and one or two more for its Lease renewals and status
//! writes: about three a device in the apiserver's open files. On HTTP/2 they share one
//! connection, and pings find a connection that died silently (a device whose uplink
//! dropped) without waiting for a request to time out.

use std::time::Duration;

use clap::ValueEnum;
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
pub fn client(config: kube::Config, protocol: Protocol) -> Result<Client, kube::Error> {
    match protocol {
        Protocol::Http1 => Client::try_from(config),
        Protocol::Http2 => http2_client(config),
    }
}

/// kube's client stack (base URI, credentials, extra headers) over a hyper client that
/// offers only `h2` in TLS and speaks only HTTP/2: an apiserver without it is a connection
/// error, never a silent fallback to a connection per request.
fn http2_client(config: kube::Config) -> Result<Client, kube::Error> {
    let mut connector = HttpConnector::new();
    connector.enforce_http(false);
    connector.set_connect_timeout(config.connect_timeout);
    connector.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config.rustls_client_config()?)
        .https_only()
        .enable_http2()
        .wrap_connector(connector);
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
