//! Prometheus metrics. Every label value is a bounded `&'static str`: a controller name, a
//! result, an error category, a device state, a reason. Never an object name or error text:
//! the fleet's message hubs are summed over devices, not labelled by device (at 10,000
//! devices a device label would be 10,000 series; `kubectl get edev` shows each one).

use std::time::{Duration, Instant};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReconcileLabels {
    pub controller: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: &'static str,
    pub category: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DeviceStateLabels {
    pub state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HubLinkLabels {
    /// `connected` or `disconnected`: the device hub's leaf connection to the cloud hub.
    pub upstream: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct LostLabels {
    /// `expired`, `full` or `refused` (see `EdgeDevice.status.hub`).
    pub reason: &'static str,
}

/// The fleet's message hubs, summed from what the devices report in their status.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HubTotals {
    pub connected: u64,
    pub disconnected: u64,
    pub backlog_messages: u64,
    pub backlog_bytes: u64,
    /// The longest any device's oldest upstream message has waited.
    pub oldest_minutes: u64,
    pub expired: u64,
    pub full: u64,
    pub refused: u64,
}

impl HubTotals {
    /// Adds one device's hub state.
    pub fn add(&mut self, h: &edgefleet_crds::device::HubStatus) {
        if h.connected {
            self.connected += 1;
        } else {
            self.disconnected += 1;
        }
        self.backlog_messages = self.backlog_messages.saturating_add(h.backlog_messages);
        self.backlog_bytes = self.backlog_bytes.saturating_add(h.backlog_bytes);
        self.oldest_minutes = self.oldest_minutes.max(h.oldest_minutes);
        self.expired = self.expired.saturating_add(h.expired);
        self.full = self.full.saturating_add(h.full);
        self.refused = self.refused.saturating_add(h.refused);
    }
}

#[derive(Debug)]
pub struct Metrics {
    pub reconciles: Family<ReconcileLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<ReconcileLabels, Histogram>,
    pub devices: Family<DeviceStateLabels, Gauge>,
    pub writes_skipped: Family<ReconcileLabels, Counter>,
    /// Device certificates issued with another subject than the device approved.
    pub issued_mismatches: Counter,
    hub_devices: Family<HubLinkLabels, Gauge>,
    hub_backlog_messages: Gauge,
    hub_backlog_bytes: Gauge,
    hub_oldest_minutes: Gauge,
    hub_lost: Family<LostLabels, Gauge>,
    renew_every: Gauge,
    offline_after: Gauge,
    registry: Registry,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("edgefleet_controller");
        let reconciles = Family::<ReconcileLabels, Counter>::default();
        let reconcile_errors = Family::<ErrorLabels, Counter>::default();
        let reconcile_duration = Family::<ReconcileLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0])
        });
        let devices = Family::<DeviceStateLabels, Gauge>::default();
        let writes_skipped = Family::<ReconcileLabels, Counter>::default();
        let issued_mismatches = Counter::default();
        let hub_devices = Family::<HubLinkLabels, Gauge>::default();
        let hub_backlog_messages = Gauge::default();
        let hub_backlog_bytes = Gauge::default();
        let hub_oldest_minutes = Gauge::default();
        let hub_lost = Family::<LostLabels, Gauge>::default();
        let renew_every = Gauge::default();
        let offline_after = Gauge::default();
        registry.register(
            "lease_renew_interval_seconds",
            "How often the fleet's agents are to renew their Leases (stretched with the fleet)",
            renew_every.clone(),
        );
        registry.register(
            "offline_threshold_seconds",
            "How long a device may be silent before it is offline",
            offline_after.clone(),
        );
        registry.register(
            "hub_devices",
            "Devices whose hub reports its link to the cloud hub, by state",
            hub_devices.clone(),
        );
        registry.register(
            "hub_backlog_messages",
            "Upstream messages waiting on devices for the cloud, summed over the fleet",
            hub_backlog_messages.clone(),
        );
        registry.register(
            "hub_backlog_bytes",
            "Bytes of upstream messages waiting on devices, summed over the fleet",
            hub_backlog_bytes.clone(),
        );
        registry.register(
            "hub_oldest_backlog_minutes",
            "How long the oldest upstream message on any device has waited",
            hub_oldest_minutes.clone(),
        );
        registry.register(
            "hub_lost_messages",
            "Upstream messages devices lost since their agents started, by reason",
            hub_lost.clone(),
        );
        registry.register("reconciles", "Reconciles run", reconciles.clone());
        registry.register(
            "reconcile_errors",
            "Reconciles that failed, by category",
            reconcile_errors.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "How long a reconcile took",
            reconcile_duration.clone(),
        );
        registry.register(
            "devices",
            "Devices by state (online, offline, unregistered)",
            devices.clone(),
        );
        registry.register(
            "writes_skipped",
            "Reconciles that wrote nothing because nothing changed",
            writes_skipped.clone(),
        );
        registry.register(
            "issued_certificate_mismatches",
            "Device certificates issued with another subject than the device approved",
            issued_mismatches.clone(),
        );
        Metrics {
            reconciles,
            reconcile_errors,
            reconcile_duration,
            devices,
            writes_skipped,
            issued_mismatches,
            hub_devices,
            hub_backlog_messages,
            hub_backlog_bytes,
            hub_oldest_minutes,
            hub_lost,
            renew_every,
            offline_after,
            registry,
        }
    }
}

impl Metrics {
    /// Counts a reconcile and records its duration when the returned guard drops, so every
    /// exit path of a reconcile is measured.
    pub fn reconcile(&self, controller: &'static str) -> ReconcileTimer<'_> {
        self.reconciles
            .get_or_create(&ReconcileLabels { controller })
            .inc();
        ReconcileTimer {
            metrics: self,
            controller,
            start: Instant::now(),
        }
    }

    pub fn error(&self, controller: &'static str, category: &'static str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                controller,
                category,
            })
            .inc();
    }

    pub fn skipped_write(&self, controller: &'static str) {
        self.writes_skipped
            .get_or_create(&ReconcileLabels { controller })
            .inc();
    }

    pub fn issued_mismatch(&self) {
        self.issued_mismatches.inc();
    }

    pub fn set_devices(&self, state: &'static str, n: i64) {
        self.devices
            .get_or_create(&DeviceStateLabels { state })
            .set(n);
    }

    /// Shows the fleet's renewal interval and offline threshold.
    pub fn set_pace(&self, renew_every: Duration, offline_after: Duration) {
        let gauge = |d: Duration| i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
        self.renew_every.set(gauge(renew_every));
        self.offline_after.set(gauge(offline_after));
    }

    /// Shows the fleet's hubs as `t` sums them.
    pub fn set_hubs(&self, t: &HubTotals) {
        let gauge = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        for (upstream, n) in [("connected", t.connected), ("disconnected", t.disconnected)] {
            self.hub_devices
                .get_or_create(&HubLinkLabels { upstream })
                .set(gauge(n));
        }
        self.hub_backlog_messages.set(gauge(t.backlog_messages));
        self.hub_backlog_bytes.set(gauge(t.backlog_bytes));
        self.hub_oldest_minutes.set(gauge(t.oldest_minutes));
        for (reason, n) in [
            ("expired", t.expired),
            ("full", t.full),
            ("refused", t.refused),
        ] {
            self.hub_lost
                .get_or_create(&LostLabels { reason })
                .set(gauge(n));
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[derive(Debug)]
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    controller: &'static str,
    start: Instant,
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        self.metrics
            .reconcile_duration
            .get_or_create(&ReconcileLabels {
                controller: self.controller,
            })
            .observe(self.start.elapsed().as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconcile_counts_and_times() {
        let m = Metrics::default();
        {
            let _t = m.reconcile("device");
        }
        m.error("device", "device_write");
        m.set_devices("online", 3);
        m.issued_mismatch();
        let text = m.encode();
        assert!(
            text.contains("edgefleet_controller_reconciles_total{controller=\"device\"} 1"),
            "{text}"
        );
        assert!(
            text.contains(
                "edgefleet_controller_reconcile_duration_seconds_count{controller=\"device\"} 1"
            ),
            "{text}"
        );
        assert!(text.contains("edgefleet_controller_reconcile_errors_total{controller=\"device\",category=\"device_write\"} 1"), "{text}");
        assert!(
            text.contains("edgefleet_controller_devices{state=\"online\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("edgefleet_controller_issued_certificate_mismatches_total 1"),
            "{text}"
        );
    }

    /// The fleet's hubs are sums over devices, under bounded labels only.
    #[test]
    fn the_fleets_hubs_are_summed_with_no_device_label() {
        let hub = |connected, backlog, oldest, expired| edgefleet_crds::device::HubStatus {
            connected,
            backlog_messages: backlog,
            backlog_bytes: backlog * 1000,
            oldest_minutes: oldest,
            expired,
            full: 1,
            refused: 0,
        };
        let mut t = HubTotals::default();
        for h in [
            hub(true, 0, 0, 0),
            hub(false, 120, 7, 3),
            hub(false, 30, 2, 0),
        ] {
            t.add(&h);
        }
        let m = Metrics::default();
        m.set_hubs(&t);
        let text = m.encode();
        for line in [
            "edgefleet_controller_hub_devices{upstream=\"connected\"} 1",
            "edgefleet_controller_hub_devices{upstream=\"disconnected\"} 2",
            "edgefleet_controller_hub_backlog_messages 150",
            "edgefleet_controller_hub_backlog_bytes 150000",
            "edgefleet_controller_hub_oldest_backlog_minutes 7",
            "edgefleet_controller_hub_lost_messages{reason=\"expired\"} 3",
            "edgefleet_controller_hub_lost_messages{reason=\"full\"} 3",
            "edgefleet_controller_hub_lost_messages{reason=\"refused\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
        }
    }
}
