//! What the controller keeps of a device's Lease: its last renewal, for presence, and the
//! registry's fingerprint and the renewal interval written, to know its objects are in
//! place. Nothing else of a Lease is
//! read, and at 10,000 devices the rest is most of the cache: the fingerprint alone, kept
//! in the Lease's annotations map, took a map node of some 540 bytes a device.

use std::borrow::Cow;
use std::time::Duration;

use edgefleet_crds::identity::REGISTRATION_ANNOTATION;
use edgefleet_crds::renewal::renew_every;
use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Resource;

use crate::decide::device_rbac::FINGERPRINT_LEN;
use crate::k8s::watches::keep_name_only;

/// A Lease as the controller's cache holds it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeptLease {
    /// Name, namespace, uid and resourceVersion: what the cache and its watch need.
    metadata: ObjectMeta,
    /// When the agent last renewed it (`spec.renewTime`), though no later than when the
    /// controller saw the renewal: the device sets the time, and one in the future would
    /// otherwise keep it online for as long as it liked after it went silent.
    pub renewed: Option<MicroTime>,
    /// The registry's fingerprint (`REGISTRATION_ANNOTATION`), when it wrote one.
    pub registration: Option<String>,
    /// The renewal interval written on it (`RENEW_EVERY_ANNOTATION`), if a valid one.
    pub renew_every: Option<Duration>,
}

impl KeptLease {
    /// Keeps what the controller reads of `lease`. The device may write its own Lease's
    /// annotations: a fingerprint of another length than the registry's is none it wrote
    /// (the registry writes the Lease again), and is not kept, whatever its size.
    pub fn keep(mut lease: Lease) -> KeptLease {
        let registration = lease
            .metadata
            .annotations
            .as_mut()
            .and_then(|a| a.remove(REGISTRATION_ANNOTATION))
            .filter(|f| f.len() == FINGERPRINT_LEN);
        let renew_every = renew_every(lease.metadata.annotations.as_ref());
        let seen = jiff::Timestamp::now();
        let renewed = lease
            .spec
            .take()
            .and_then(|s| s.renew_time)
            .map(|t| MicroTime(t.0.min(seen)));
        keep_name_only(&mut lease);
        KeptLease {
            metadata: lease.metadata,
            renewed,
            registration,
            renew_every,
        }
    }
}

impl Resource for KeptLease {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        Lease::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        Lease::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        Lease::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        Lease::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::coordination::v1::LeaseSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    use super::*;

    /// The renewal, the fingerprint and what identifies the object are kept; the holder,
    /// the durations, other annotations, labels, owners and managedFields are not.
    #[test]
    fn a_lease_keeps_its_renewal_and_fingerprint_and_little_else() {
        let renewed = MicroTime("2026-12-05T06:00:00Z".parse().expect("time"));
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some("edgefleet-device-edge-1".into()),
                namespace: Some("edgefleet-system".into()),
                uid: Some("uid-1".into()),
                resource_version: Some("42".into()),
                annotations: Some(BTreeMap::from([
                    (
                        REGISTRATION_ANNOTATION.to_owned(),
                        "0123456789abcdef".to_owned(),
                    ),
                    ("other".to_owned(), "x".repeat(1000)),
                ])),
                labels: Some(BTreeMap::from([("a".to_owned(), "b".to_owned())])),
                owner_references: Some(vec![OwnerReference::default()]),
                managed_fields: Some(vec![Default::default()]),
                ..Default::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: Some("edge-1".into()),
                lease_duration_seconds: Some(40),
                renew_time: Some(renewed.clone()),
                ..Default::default()
            }),
        };
        let kept = KeptLease::keep(lease);
        assert_eq!(kept.renewed, Some(renewed));
        assert_eq!(kept.registration.as_deref(), Some("0123456789abcdef"));
        assert_eq!(
            kept.metadata,
            ObjectMeta {
                name: Some("edgefleet-device-edge-1".into()),
                namespace: Some("edgefleet-system".into()),
                uid: Some("uid-1".into()),
                resource_version: Some("42".into()),
                ..Default::default()
            }
        );
        assert_eq!(KeptLease::keep(Lease::default()), KeptLease::default());
    }

    /// A device that fills its Lease's fingerprint annotation (its own Lease: it may) puts
    /// none of it in the controller's cache.
    #[test]
    fn a_devices_oversized_fingerprint_is_not_kept() {
        let lease = |fingerprint: String| Lease {
            metadata: ObjectMeta {
                annotations: Some(BTreeMap::from([(
                    REGISTRATION_ANNOTATION.to_owned(),
                    fingerprint,
                )])),
                ..Default::default()
            },
            ..Default::default()
        };
        assert_eq!(
            KeptLease::keep(lease("a".repeat(256 * 1024))).registration,
            None
        );
        let fits = "0".repeat(FINGERPRINT_LEN);
        assert_eq!(
            KeptLease::keep(lease(fits.clone())).registration,
            Some(fits)
        );
    }
}
