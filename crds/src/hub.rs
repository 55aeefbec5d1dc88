//! The message hub on each device (nats-server with JetStream and an MQTT listener): the
//! names and ports the agent writes into its static pod and config, and that modules,
//! tests and docs refer to. One definition, shared.

/// The hub's static pod (and container) name on every device.
pub const HUB_NAME: &str = "edgefleet-hub";

/// MQTT 3.1.1, for modules (what device code speaks).
pub const MQTT_PORT: u16 = 1883;

/// NATS's own protocol, for the agent and for modules that speak NATS.
pub const NATS_PORT: u16 = 4222;

/// The hub's monitoring endpoint (`/healthz`, `/jsz`), on the device's loopback only.
pub const MONITOR_PORT: u16 = 8222;

/// The hub's user for the agent itself (its router); modules get users of their own.
pub const AGENT_USER: &str = "edgefleet-agent";

/// The agent's user in the hub's system account, for asking the hub to reload its users.
pub const AGENT_SYSTEM_USER: &str = "edgefleet-agent-system";

/// A module's user on its device's hub: its key, `namespace/name`.
pub fn module_user(namespace: &str, module: &str) -> String {
    crate::device::module_key(namespace, module)
}

/// The first tokens of every module's subjects on its device's hub.
pub const MODULE_SUBJECTS: &str = "edgefleet.mod";

/// The device stream that keeps modules' outputs until their routes have carried them.
pub const OUTPUTS_STREAM: &str = "OUTPUTS";

/// The subjects a module publishes its outputs on: `edgefleet.mod.<ns>.<module>.out.<output>`
/// (MQTT: `edgefleet/mod/<ns>/<module>/out/<output>`). Only that module may publish there.
pub fn module_outputs(namespace: &str, module: &str) -> String {
    format!("{MODULE_SUBJECTS}.{namespace}.{module}.out")
}

/// The subjects a module reads its inputs from: `edgefleet.mod.<ns>.<module>.in.<input>`.
/// Only that module may subscribe there; only the device's router publishes there.
pub fn module_inputs(namespace: &str, module: &str) -> String {
    format!("{MODULE_SUBJECTS}.{namespace}.{module}.in")
}

/// The stream that keeps upstream messages: on a device, those not yet in the cloud; in the
/// cloud, every device's (with their message ids, so nothing is kept twice).
pub const UPSTREAM_STREAM: &str = "UPSTREAM";

/// The subjects of the cloud's stream: every device's upstream messages.
pub const FLEET_UPSTREAM_SUBJECTS: &str = "edgefleet.dev.*.up.>";

/// An upstream route's identity on the device, `edgefleet.up.<namespace>.<name>`, local to
/// the device (nothing crosses the leaf on it); the subject of its held lane, as of the
/// store before it had lanes.
pub fn stored_upstream(namespace: &str, name: &str) -> String {
    format!("{STORED_UPSTREAM_PREFIX}.{namespace}.{name}")
}

/// The device stream's subjects are this prefix and a `>`.
pub const STORED_UPSTREAM_PREFIX: &str = "edgefleet.up";

/// The two lanes of the device's upstream store, each forwarded on its own and in order:
/// live messages (stored while the cloud is reachable and the live lane keeps up) do not
/// wait behind a backlog held while the device was offline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Live,
    Held,
}

impl Lane {
    pub const ALL: [Lane; 2] = [Lane::Live, Lane::Held];

    /// The lane's token in the stored subject, and its forwarder's name.
    pub fn token(self) -> &'static str {
        match self {
            Lane::Live => "live",
            Lane::Held => "held",
        }
    }

    /// The stored subjects the lane's forwarder reads: one filter each, which nats-server
    /// serves faster than several (a backlog drained at about half the rate through two).
    /// The store is a work queue, whose consumers may not overlap: the live lane's subjects
    /// have five tokens (`edgefleet.up.live.<ns>.<name>`), the held lane's four, those of
    /// the store before lanes (`edgefleet.up.<ns>.<name>`), which it keeps draining.
    pub fn filters(self) -> Vec<String> {
        match self {
            Lane::Live => vec![format!("{STORED_UPSTREAM_PREFIX}.{}.*.*", self.token())],
            Lane::Held => vec![format!("{STORED_UPSTREAM_PREFIX}.*.*")],
        }
    }
}

/// Where the router stores a message of the upstream route `<namespace>/<name>` in `lane`:
/// `edgefleet.up.live.<namespace>.<name>`, or the route's own subject when held.
pub fn stored_in_lane(lane: Lane, namespace: &str, name: &str) -> String {
    match lane {
        Lane::Live => format!(
            "{STORED_UPSTREAM_PREFIX}.{}.{namespace}.{name}",
            lane.token()
        ),
        Lane::Held => stored_upstream(namespace, name),
    }
}

/// The cloud subject of a message stored under `stored` on `device`,
/// `edgefleet.dev.<device>.up.<namespace>.<name>` whatever its lane; `None` for any other
/// stored subject.
pub fn forwarded_subject(device: &str, stored: &str) -> Option<String> {
    let rest = stored
        .strip_prefix(STORED_UPSTREAM_PREFIX)?
        .strip_prefix('.')?;
    let tokens: Vec<&str> = rest.split('.').collect();
    let route = match tokens.as_slice() {
        [lane, ns, name] if *lane == Lane::Live.token() => [*ns, *name],
        [ns, name] => [*ns, *name],
        _ => return None,
    };
    if route.iter().any(|t| t.is_empty()) {
        return None;
    }
    Some(format!(
        "{}.up.{}.{}",
        device_subject(device),
        route[0],
        route[1]
    ))
}

/// The reply subjects of a device's forwarder (`edgefleet.dev.<device>.inbox.>`): the
/// cloud's acknowledgements come back under them, and a device receives no one else's.
pub fn device_inbox(device: &str) -> String {
    format!("{}.inbox", device_subject(device))
}

/// How long a device keeps an upstream message the cloud has not taken, by default (IoT
/// Edge's default too).
pub const DEFAULT_UPSTREAM_TTL_SECS: u64 = 7200;

/// The most a device's upstream store holds by default (MiB), within the hub's store.
pub const DEFAULT_UPSTREAM_MIB: u32 = 512;

/// How much of the hub's store the outputs stream takes at most (MiB; an eighth of a smaller
/// store): outputs wait there only until the router carries them, a short while unless the
/// agent is down.
pub const OUTPUTS_MIB: u32 = 64;

/// How long the cloud remembers a message id: a message the device sends again after a lost
/// acknowledgement (at most the device's TTL later) is not kept twice.
pub const DUPLICATE_WINDOW_SECS: u64 = DEFAULT_UPSTREAM_TTL_SECS;

/// What a module finds in its environment about the hub; the credentials are a directory
/// mounted read-only (files `username` and `password`), never a variable: a mirror pod
/// shows its env to anyone who may read pods.
pub mod env {
    /// The device's address, where the hub listens (the module's own network namespace
    /// reaches the host only through it).
    pub const HOST: &str = "EDGEFLEET_HUB_HOST";
    pub const MQTT_PORT: &str = "EDGEFLEET_HUB_MQTT_PORT";
    pub const NATS_PORT: &str = "EDGEFLEET_HUB_NATS_PORT";
    pub const CREDENTIALS: &str = "EDGEFLEET_HUB_CREDENTIALS";
    /// The MQTT topic prefix of the module's outputs (`.../out`; append `/<output>`).
    pub const OUTPUTS: &str = "EDGEFLEET_HUB_OUTPUTS";
    /// The MQTT topic prefix of the module's inputs (`.../in`; append `/<input>`).
    pub const INPUTS: &str = "EDGEFLEET_HUB_INPUTS";
    pub const DEVICE: &str = "EDGEFLEET_DEVICE";
    pub const NAMESPACE: &str = "EDGEFLEET_NAMESPACE";
    pub const MODULE: &str = "EDGEFLEET_MODULE";
}

/// Where a module's hub credentials are mounted in its container.
pub const CREDENTIALS_MOUNT: &str = "/var/run/edgefleet/hub";

/// MQTT's spelling of a NATS subject.
pub fn mqtt_topic(subject: &str) -> String {
    subject.replace('.', "/")
}

/// How much of the device's disk the hub's store may take by default (MiB): the upstream
/// backlog of a device offline for hours, at a few messages a second.
pub const DEFAULT_STORE_MIB: u32 = 1024;

/// The cloud hub's port for devices' leaf connections (NATS's default for leaf nodes).
pub const LEAF_PORT: u16 = 7422;

/// The Secret the controller writes the cloud hub's accounts into (one user per enrolled
/// device), in the system namespace, and its key.
pub const ACCOUNTS_SECRET: &str = "edgefleet-hub-accounts";
pub const ACCOUNTS_KEY: &str = "accounts.conf";

/// The cloud hub's account of devices (and of those who read what they send).
pub const FLEET_ACCOUNT: &str = "FLEET";

/// The cloud hub's user for reading what devices send; its password comes from the hub's
/// environment (a Secret the chart makes), never from the accounts the controller writes.
pub const READER_USER: &str = "edgefleet-reader";
pub const READER_PASSWORD_ENV: &str = "EDGEFLEET_READER_PASSWORD";

/// The first tokens of every subject a device's messages carry: `edgefleet.dev.<device>`.
/// MQTT clients write it with `/` (`edgefleet/dev/<device>/...`).
pub fn device_subject(device: &str) -> String {
    format!("edgefleet.dev.{device}")
}

/// The subjects of messages a device sends to the cloud: `edgefleet.dev.<device>.up.>`.
pub fn upstream_subjects(device: &str) -> String {
    format!("{}.up.>", device_subject(device))
}

/// The subjects of messages the cloud sends to a device: `edgefleet.dev.<device>.down.>`.
pub fn downstream_subjects(device: &str) -> String {
    format!("{}.down.>", device_subject(device))
}

/// The user a device's leaf connection maps to on the cloud hub: its client certificate's
/// subject (the one the join gets signed), as NATS matches a distinguished name.
pub fn leaf_user(device: &str) -> String {
    format!(
        "CN={}{device},O={}",
        crate::identity::DEVICE_USER_PREFIX,
        crate::identity::DEVICES_GROUP
    )
}

/// The longest upstream URL accepted.
pub const MAX_UPSTREAM_URL: usize = 263;

/// Checks the cloud hub's address a device dials: `tls://HOST:PORT`, with a host of
/// letters, digits, `.`, `-` (or an IPv6 address in brackets). It is written into the
/// hub's config, so nothing else may get through (no quote, no newline, no second URL).
pub fn check_upstream_url(url: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("tls://")
        .ok_or_else(|| format!("{url:?}: the cloud hub's URL must start with tls://"))?;
    if url.len() > MAX_UPSTREAM_URL {
        return Err(format!(
            "the cloud hub's URL is longer than {MAX_UPSTREAM_URL} characters"
        ));
    }
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| format!("{url:?}: the cloud hub's URL needs a port"))?;
    let host_ok = !host.is_empty()
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-.[]:".contains(&b));
    if !host_ok {
        return Err(format!("{url:?}: not a host name or address"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("{url:?}: not a port number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_leaf_user_is_its_certificate_subject() {
        assert_eq!(
            leaf_user("edge-1"),
            "CN=edgefleet:device:edge-1,O=edgefleet:devices"
        );
        assert_eq!(upstream_subjects("edge-1"), "edgefleet.dev.edge-1.up.>");
    }

    /// Both lanes and the store before lanes reach the same cloud subject; nothing else
    /// stored is sent anywhere.
    #[test]
    fn every_lane_forwards_to_the_routes_one_cloud_subject() {
        let cloud = Some("edgefleet.dev.edge-1.up.team-a.alerts".to_owned());
        for lane in Lane::ALL {
            let stored = stored_in_lane(lane, "team-a", "alerts");
            assert_eq!(forwarded_subject("edge-1", &stored), cloud);
        }
        assert_eq!(
            forwarded_subject("edge-1", &stored_upstream("team-a", "alerts")),
            cloud
        );
        // A namespace named like a lane is a namespace in the four-token form.
        assert_eq!(
            forwarded_subject("edge-1", "edgefleet.up.live.alerts").as_deref(),
            Some("edgefleet.dev.edge-1.up.live.alerts")
        );
        for other in [
            "edgefleet.upx.a.b",
            "edgefleet.up.a",
            "edgefleet.up.other.a.b",
            "edgefleet.up.live.a.b.c",
            "edgefleet.up..b",
        ] {
            assert_eq!(forwarded_subject("edge-1", other), None, "{other}");
        }
        assert_eq!(Lane::Live.filters(), ["edgefleet.up.live.*.*"]);
        assert_eq!(Lane::Held.filters(), ["edgefleet.up.*.*"]);
    }

    /// The URL lands in the hub's config file: a quote or a newline would let whoever sets
    /// it write config of their own.
    #[test]
    fn an_upstream_url_cannot_smuggle_config() {
        for good in [
            "tls://10.77.0.2:7422",
            "tls://hub.example.com:443",
            "tls://[fd00::1]:7422",
        ] {
            assert_eq!(check_upstream_url(good), Ok(()), "{good}");
        }
        for bad in [
            "nats://hub:4222",
            "tls://hub",
            "tls://:7422",
            "tls://hub:0",
            "tls://hub:99999",
            "tls://hub\"\nlisten: 0.0.0.0:1:7422",
            "tls://hub 7422:7422",
            "tls://a,tls://b:7422",
        ] {
            assert!(check_upstream_url(bad).is_err(), "{bad:?}");
        }
        let long = format!("tls://{}:7422", "a".repeat(300));
        assert!(check_upstream_url(&long).is_err());
    }
}
