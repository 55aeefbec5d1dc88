//! `EdgeDevice.spec.rollouts`: for each deployment with a staged rollout, the revision its
//! planner moved the device to. A staged change gives every device of the fleet an entry,
//! and the controller's cache holds every device; a `BTreeMap` of one entry allocates a
//! node of eleven (some 540 bytes a device, 5 MB at 10,000). So the entries are a sorted
//! list, which has a device's one or two entries in a few dozen bytes and reads and writes
//! as the same JSON object.

use std::fmt;

use schemars::JsonSchema;
use serde::de::{MapAccess, Visitor};
use serde::ser::SerializeMap;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::device::{MAX_TARGETING, REVISION_MAX};

/// The entries, sorted by deployment (`namespace/name`), one each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Rollouts(Vec<(String, String)>);

impl Rollouts {
    /// No entries; `const`, so that a reader can have a `static` of none.
    pub const fn new() -> Self {
        Rollouts(Vec::new())
    }

    /// The revision `deployment` moved the device to, if it did.
    pub fn get(&self, deployment: &str) -> Option<&str> {
        self.0
            .binary_search_by(|(k, _)| k.as_str().cmp(deployment))
            .ok()
            .map(|i| self.0[i].1.as_str())
    }

    /// `(deployment, revision)` in deployment order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// A later entry for the same deployment wins, as it would in a map.
impl FromIterator<(String, String)> for Rollouts {
    fn from_iter<I: IntoIterator<Item = (String, String)>>(entries: I) -> Self {
        let mut entries: Vec<_> = entries.into_iter().collect();
        // Stable: entries of one deployment stay in the order given.
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        entries.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        entries.shrink_to_fit();
        Rollouts(entries)
    }
}

impl Serialize for Rollouts {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in &self.0 {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

impl<'de> Deserialize<'de> for Rollouts {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> Visitor<'de> for Entries {
            type Value = Rollouts;

            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a map of deployments to revisions")
            }

            fn visit_map<M: MapAccess<'de>>(self, mut m: M) -> Result<Rollouts, M::Error> {
                let mut entries = Vec::with_capacity(m.size_hint().unwrap_or(0).min(MAX_TARGETING));
                while let Some(entry) = m.next_entry()? {
                    entries.push(entry);
                }
                Ok(entries.into_iter().collect())
            }
        }
        d.deserialize_map(Entries)
    }
}

/// An object of revisions: one entry for each deployment that can target the device, at
/// most, each no longer than a revision.
impl JsonSchema for Rollouts {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "Rollouts".into()
    }

    fn inline_schema() -> bool {
        true
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "object",
            "maxProperties": MAX_TARGETING,
            "additionalProperties": {"type": "string", "maxLength": REVISION_MAX}
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(r: &Rollouts) -> Vec<(&str, &str)> {
        r.iter().collect()
    }

    #[test]
    fn entries_read_back_sorted_and_found_by_deployment() {
        let r: Rollouts = serde_json::from_str(r#"{"team-b/web":"bbbb","team-a/api":"aaaa"}"#)
            .expect("a map of strings");
        assert_eq!(
            entries(&r),
            [("team-a/api", "aaaa"), ("team-b/web", "bbbb")]
        );
        assert_eq!(r.get("team-b/web"), Some("bbbb"));
        assert_eq!(r.get("team-c/x"), None);
        assert_eq!(
            serde_json::to_string(&r).expect("serializes"),
            r#"{"team-a/api":"aaaa","team-b/web":"bbbb"}"#
        );
    }

    #[test]
    fn a_repeated_deployment_keeps_its_last_revision() {
        let r: Rollouts = [("a/x", "1"), ("b/y", "2"), ("a/x", "3"), ("a/x", "4")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert_eq!(entries(&r), [("a/x", "4"), ("b/y", "2")]);
    }

    #[test]
    fn absent_and_empty_are_no_entries() {
        #[derive(Deserialize)]
        struct Spec {
            #[serde(default)]
            rollouts: Rollouts,
        }
        let absent: Spec = serde_json::from_str("{}").expect("no rollouts");
        let empty: Spec = serde_json::from_str(r#"{"rollouts":{}}"#).expect("empty");
        assert!(absent.rollouts.is_empty() && empty.rollouts.is_empty());
        assert!(serde_json::from_str::<Rollouts>(r#"["a/x"]"#).is_err());
    }

    /// The CRD carries the bounds, so that no writer can grow a device's entries (and every
    /// cached copy of them) past one a deployment that can target it.
    #[test]
    fn the_schema_bounds_entries_and_revisions() {
        use kube::CustomResourceExt;
        let crd = crate::EdgeDevice::crd();
        let v = serde_json::to_value(&crd.spec.versions[0].schema).expect("schema");
        let rollouts = &v["openAPIV3Schema"]["properties"]["spec"]["properties"]["rollouts"];
        assert_eq!(rollouts["maxProperties"], MAX_TARGETING);
        assert_eq!(rollouts["additionalProperties"]["maxLength"], REVISION_MAX);
    }
}
