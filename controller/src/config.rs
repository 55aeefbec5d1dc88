//! The controller's configuration: one clap struct with environment fallbacks, parsed once
//! in `main` and passed down.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use edgefleet_crds::duration;
use edgefleet_crds::identity::SYSTEM_NAMESPACE;

#[derive(Parser, Debug, Clone)]
#[command(
    name = "edgefleet-controller",
    version,
    about = "edgefleet's controller"
)]
pub struct Config {
    /// A device whose Lease was not renewed for this long is offline.
    #[arg(long, env = "EDGEFLEET_OFFLINE_THRESHOLD", default_value = "40s", value_parser = duration::parse_seconds)]
    pub offline_threshold: Duration,

    /// How often the agents renew their Leases (the chart gives both sides its
    /// `agent.leaseInterval`). The controller stretches it, and the offline threshold with
    /// it, in whole multiples, once the fleet would renew more often than
    /// `--renewal-budget` a second (`decide::renewal_pace`).
    #[arg(long, env = "EDGEFLEET_LEASE_INTERVAL", default_value = "10s", value_parser = duration::parse)]
    pub lease_interval: Duration,

    /// Lease renewals a second the whole fleet may send: 100, at 10,000 devices, is a
    /// renewal every 100 s and an offline threshold ten times `--offline-threshold`.
    #[arg(long, env = "EDGEFLEET_RENEWAL_BUDGET", default_value = "100", value_parser = parse_budget)]
    pub renewal_budget: f64,

    /// Where /healthz, /readyz and /metrics are served.
    #[arg(long, env = "EDGEFLEET_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,

    /// The namespace of device Leases, per-device Roles and the leader Lease.
    #[arg(long, env = "EDGEFLEET_NAMESPACE", default_value = SYSTEM_NAMESPACE)]
    pub namespace: String,

    /// Take part in leader election, so that of several replicas only one writes.
    #[arg(long, env = "EDGEFLEET_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,

    /// This replica's identity in the leader Lease (the pod name in a cluster).
    #[arg(long, env = "POD_NAME", default_value_t = default_identity())]
    pub identity: String,

    /// How long a leader's Lease lasts without renewal before another replica takes over.
    #[arg(long, env = "EDGEFLEET_LEASE_DURATION", default_value = "15s", value_parser = duration::parse_seconds)]
    pub lease_duration: Duration,

    /// Reconciles in flight at once, per controller. Bounds the apiserver connections and
    /// the memory they hold when thousands of devices register or change at once; most of a
    /// reconcile's time is the apiserver's answer, so 32 registered 10,000 devices in half
    /// the time 8 did, at a peak of 94 MiB (controller/README.md, "Scaling model").
    #[arg(long, env = "EDGEFLEET_CONCURRENCY", default_value_t = 32,
          value_parser = clap::value_parser!(u16).range(1..=256))]
    pub concurrency: u16,

    /// Where every replica serves the admission webhook (HTTPS); unset, it is not served.
    #[arg(long, env = "EDGEFLEET_WEBHOOK_ADDR")]
    pub webhook_addr: Option<SocketAddr>,

    /// The webhook's certificate (PEM), the one its ValidatingWebhookConfiguration trusts.
    #[arg(
        long,
        env = "EDGEFLEET_WEBHOOK_CERT",
        default_value = "/etc/edgefleet/webhook/tls.crt"
    )]
    pub webhook_cert: std::path::PathBuf,

    /// The webhook certificate's private key (PEM).
    #[arg(
        long,
        env = "EDGEFLEET_WEBHOOK_KEY",
        default_value = "/etc/edgefleet/webhook/tls.key"
    )]
    pub webhook_key: std::path::PathBuf,

    /// How devices' agents are authorized. `rbac`: the registry gives each device a
    /// ClusterRole, a Role and their bindings. `webhook`: it gives them none, and the
    /// apiserver asks the device authorizer this controller serves at `/authorize` on
    /// `--webhook-addr` (its authorization configuration must name it); its cost per request
    /// does not grow with the fleet, RBAC's does.
    #[arg(long, env = "EDGEFLEET_DEVICE_AUTHORIZATION", value_enum, default_value_t = DeviceAuthorization::Rbac)]
    pub device_authorization: DeviceAuthorization,

    /// Keep the cloud hub's accounts (one user per enrolled device) in the Secret the hub
    /// includes. The chart turns it on with the hub.
    #[arg(long, env = "EDGEFLEET_CLOUD_HUB", default_value_t = false, action = clap::ArgAction::Set)]
    pub cloud_hub: bool,

    /// Log filter (tracing's EnvFilter syntax).
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    pub log: String,

    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Who authorizes a device's agent (`--device-authorization`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceAuthorization {
    Rbac,
    Webhook,
}

impl Config {
    /// What makes this configuration unusable, said before anything starts.
    pub fn problem(&self) -> Option<&'static str> {
        (self.device_authorization == DeviceAuthorization::Webhook && self.webhook_addr.is_none())
            .then_some(
                "--device-authorization webhook needs --webhook-addr: the device authorizer is \
                 served there, and without it no device would be authorized",
            )
    }

    /// Whether `/readyz` waits for the device authorizer to have listed the enrolled
    /// devices. Only when the apiserver asks it about every device request: until then it
    /// refuses them all, and a Service must not send it reviews. With RBAC nothing asks.
    pub fn readiness_waits_for_authorizer(&self) -> bool {
        self.device_authorization == DeviceAuthorization::Webhook
    }
}

#[derive(clap::Subcommand, Debug, Clone)]
pub enum Command {
    /// Run beside the cloud hub: reload it when the accounts file changes.
    HubReloader(crate::hub_reloader::ReloaderArgs),
}

/// A renewal budget: a positive number of renewals a second, at most a million.
fn parse_budget(s: &str) -> Result<f64, String> {
    let budget: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is no number of renewals a second"))?;
    if budget.is_finite() && budget > 0.0 && budget <= 1e6 {
        Ok(budget)
    } else {
        Err(format!(
            "a renewal budget is more than 0 and at most 1000000 renewals a second, not {s}"
        ))
    }
}

fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("{}-{}", host.trim(), std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_env_fallbacks() {
        let c = Config::try_parse_from(["edgefleet-controller"]).expect("defaults parse");
        assert_eq!(c.offline_threshold, Duration::from_secs(40));
        assert_eq!(c.namespace, "edgefleet-system");
        assert!(c.leader_election);
        assert_eq!(c.concurrency, 32);
        assert!(Config::try_parse_from(["edgefleet-controller", "--concurrency", "0"]).is_err());
        assert_eq!(c.lease_interval, Duration::from_secs(10));
        assert_eq!(c.renewal_budget, 100.0);
        for bad in ["0", "-1", "NaN", "inf", "1e7", "lots"] {
            let args = ["edgefleet-controller", "--renewal-budget", bad];
            assert!(Config::try_parse_from(args).is_err(), "{bad}");
        }
        assert!(
            Config::try_parse_from(["edgefleet-controller", "--lease-interval", "0s"]).is_err()
        );
        let args = ["edgefleet-controller", "--renewal-budget", "0.1"];
        let c = Config::try_parse_from(args).expect("a budget under one a second");
        assert_eq!(c.renewal_budget, 0.1);
        let c = Config::try_parse_from([
            "edgefleet-controller",
            "--offline-threshold",
            "1m",
            "--leader-election",
            "false",
        ])
        .expect("flags parse");
        assert_eq!(c.offline_threshold, Duration::from_secs(60));
        assert!(!c.leader_election);
        assert_eq!(c.device_authorization, DeviceAuthorization::Rbac);
    }

    #[test]
    fn the_device_authorizer_needs_the_webhook_server() {
        let parse = |args: &[&str]| {
            Config::try_parse_from([&["edgefleet-controller"], args].concat()).expect("parses")
        };
        assert!(
            parse(&["--device-authorization", "webhook"])
                .problem()
                .is_some()
        );
        let served = parse(&[
            "--device-authorization",
            "webhook",
            "--webhook-addr",
            "127.0.0.1:9443",
        ]);
        assert_eq!(served.problem(), None);
        assert_eq!(parse(&[]).problem(), None);
    }

    #[test]
    fn readiness_waits_for_the_authorizer_only_when_it_authorizes() {
        let parse = |args: &[&str]| {
            Config::try_parse_from(
                [
                    &["edgefleet-controller", "--webhook-addr", "127.0.0.1:9443"],
                    args,
                ]
                .concat(),
            )
            .expect("parses")
        };
        assert!(parse(&["--device-authorization", "webhook"]).readiness_waits_for_authorizer());
        assert!(!parse(&["--device-authorization", "rbac"]).readiness_waits_for_authorizer());
        assert!(!parse(&[]).readiness_waits_for_authorizer());
    }
}
