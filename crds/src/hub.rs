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

/// The hub's user for the agent itself; modules get users of their own.
pub const AGENT_USER: &str = "edgefleet-agent";

/// How much of the device's disk the hub's store may take by default (MiB): the upstream
/// backlog of a device offline for hours, at a few messages a second.
pub const DEFAULT_STORE_MIB: u32 = 1024;
