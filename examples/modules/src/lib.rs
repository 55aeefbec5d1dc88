//! What the three sample modules share: the reading they pass along, their settings from
//! the environment (set by the EdgeModule), the UDP hop between them on the device, and a
//! clean stop on SIGTERM.
//!
//! The pipeline on one device: `sensor` -> UDP 127.0.0.1:7101 -> `filter` -> UDP
//! 127.0.0.1:7102 -> `ml-model`. Modules run on the device's network, so the loopback
//! address is the device's own. Each one logs JSON lines on stdout.

use std::net::{SocketAddr, UdpSocket};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// One temperature reading on its way through the pipeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Reading {
    pub sensor: String,
    pub seq: u64,
    pub celsius: f64,
    /// Set by `filter`: the moving average the reading belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smoothed: Option<f64>,
}

/// A setting from the environment, or its default; a value that does not parse stops the
/// module with a message that names the variable.
pub fn setting<T: FromStr>(name: &str, default: T) -> T
where
    T::Err: std::fmt::Display,
{
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|e| {
            eprintln!("{name}={v:?} is not valid: {e}");
            std::process::exit(2)
        }),
        Err(_) => default,
    }
}

/// Logs one JSON line.
pub fn log(value: serde_json::Value) {
    println!("{value}");
}

/// Set once SIGTERM or SIGINT arrives. As PID 1 of its container, a module gets no default
/// signal handling, so without this kubelet would wait out the grace period on every stop.
#[derive(Debug, Clone)]
pub struct Stop(Arc<AtomicBool>);

impl Stop {
    pub fn on_signals() -> Stop {
        let flag = Arc::new(AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
            if let Err(e) = signal_hook::flag::register(sig, flag.clone()) {
                eprintln!("cannot handle signal {sig}: {e}");
                std::process::exit(1);
            }
        }
        Stop(flag)
    }

    pub fn requested(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// A UDP socket listening for readings; reads time out so that a stop is noticed.
pub fn listen(addr: SocketAddr) -> UdpSocket {
    let socket = UdpSocket::bind(addr).unwrap_or_else(|e| {
        eprintln!("cannot listen on {addr}: {e}");
        std::process::exit(1)
    });
    // A timeout of zero would be refused; this one is fixed and valid.
    let _ = socket.set_read_timeout(Some(Duration::from_millis(500)));
    socket
}

/// Receives the next reading; `None` on a timeout or a datagram that is no reading (which
/// is logged and skipped).
pub fn receive(socket: &UdpSocket) -> Option<Reading> {
    let mut buf = [0u8; 2048];
    let n = socket.recv(&mut buf).ok()?;
    match serde_json::from_slice(&buf[..n]) {
        Ok(r) => Some(r),
        Err(e) => {
            log(serde_json::json!({"event": "skipped", "reason": e.to_string()}));
            None
        }
    }
}

/// Sends a reading on; a missing receiver (not started yet) only loses this reading.
pub fn send(socket: &UdpSocket, to: SocketAddr, reading: &Reading) {
    if let Ok(bytes) = serde_json::to_vec(reading) {
        let _ = socket.send_to(&bytes, to);
    }
}

/// An unbound sender socket.
pub fn sender() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").unwrap_or_else(|e| {
        eprintln!("cannot open a UDP socket: {e}");
        std::process::exit(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_round_trip_and_skip_what_is_not_a_reading() {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        rx.set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let to = rx.local_addr().expect("addr");
        let tx = sender();
        let r = Reading {
            sensor: "s".into(),
            seq: 7,
            celsius: 21.5,
            smoothed: None,
        };
        tx.send_to(b"not json", to).expect("send");
        send(&tx, to, &r);
        assert_eq!(receive(&rx), None);
        assert_eq!(receive(&rx), Some(r));
    }
}
