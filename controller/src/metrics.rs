//! Prometheus metrics. Every label value is a bounded `&'static str`: a controller name, a
//! result, an error category, a device state. Never an object name or error text.

use std::time::Instant;

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

#[derive(Debug)]
pub struct Metrics {
    pub reconciles: Family<ReconcileLabels, Counter>,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub reconcile_duration: Family<ReconcileLabels, Histogram>,
    pub devices: Family<DeviceStateLabels, Gauge>,
    pub writes_skipped: Family<ReconcileLabels, Counter>,
    /// Device certificates issued with another subject than the device approved.
    pub issued_mismatches: Counter,
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
}
