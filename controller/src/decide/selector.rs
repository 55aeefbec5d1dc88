//! Label selectors over devices, parsed once and matched many times. Parsing is where a
//! bad selector is caught and explained; matching then cannot fail.

use std::collections::BTreeMap;

use edgefleet_crds::{DeviceSelector, SelectorOperator};
use thiserror::Error;

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum SelectorError {
    #[error("label key {0:?} is not a qualified name ([prefix/]name, name at most 63 characters)")]
    BadKey(String),
    #[error("label value {value:?} for key {key:?} is not a valid label value")]
    BadValue { key: String, value: String },
    #[error("operator {op:?} on key {key:?} needs at least one value")]
    MissingValues { key: String, op: SelectorOperator },
    #[error("operator {op:?} on key {key:?} takes no values")]
    UnexpectedValues { key: String, op: SelectorOperator },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Requirement {
    Equals(String, String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
    Exists(String),
    DoesNotExist(String),
}

/// A parsed selector. The empty selector matches every device.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selector(Vec<Requirement>);

fn name_part_ok(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn key_ok(key: &str) -> bool {
    match key.split_once('/') {
        Some((prefix, name)) => {
            !prefix.is_empty()
                && prefix.len() <= 253
                && prefix.split('.').all(|l| {
                    !l.is_empty()
                        && l.chars()
                            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
                        && !l.starts_with('-')
                        && !l.ends_with('-')
                })
                && name_part_ok(name)
        }
        None => name_part_ok(key),
    }
}

fn value_ok(v: &str) -> bool {
    v.is_empty() || name_part_ok(v)
}

impl Selector {
    pub fn parse(sel: &DeviceSelector) -> Result<Selector, SelectorError> {
        let mut reqs = Vec::new();
        for (k, v) in &sel.match_labels {
            if !key_ok(k) {
                return Err(SelectorError::BadKey(k.clone()));
            }
            if !value_ok(v) {
                return Err(SelectorError::BadValue {
                    key: k.clone(),
                    value: v.clone(),
                });
            }
            reqs.push(Requirement::Equals(k.clone(), v.clone()));
        }
        for e in &sel.match_expressions {
            if !key_ok(&e.key) {
                return Err(SelectorError::BadKey(e.key.clone()));
            }
            if let Some(v) = e.values.iter().find(|v| !value_ok(v)) {
                return Err(SelectorError::BadValue {
                    key: e.key.clone(),
                    value: v.clone(),
                });
            }
            let key = e.key.clone();
            let op = e.operator;
            let req = match op {
                SelectorOperator::In | SelectorOperator::NotIn if e.values.is_empty() => {
                    return Err(SelectorError::MissingValues { key, op });
                }
                SelectorOperator::Exists | SelectorOperator::DoesNotExist
                    if !e.values.is_empty() =>
                {
                    return Err(SelectorError::UnexpectedValues { key, op });
                }
                SelectorOperator::In => Requirement::In(key, e.values.clone()),
                SelectorOperator::NotIn => Requirement::NotIn(key, e.values.clone()),
                SelectorOperator::Exists => Requirement::Exists(key),
                SelectorOperator::DoesNotExist => Requirement::DoesNotExist(key),
            };
            reqs.push(req);
        }
        Ok(Selector(reqs))
    }

    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|r| match r {
            Requirement::Equals(k, v) => labels.get(k) == Some(v),
            Requirement::In(k, vs) => labels.get(k).is_some_and(|v| vs.contains(v)),
            Requirement::NotIn(k, vs) => labels.get(k).is_none_or(|v| !vs.contains(v)),
            Requirement::Exists(k) => labels.contains_key(k),
            Requirement::DoesNotExist(k) => !labels.contains_key(k),
        })
    }
}

#[cfg(test)]
mod tests {
    use edgefleet_crds::SelectorRequirement;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, operator: SelectorOperator, values: &[&str]) -> SelectorRequirement {
        SelectorRequirement {
            key: key.into(),
            operator,
            values: values.iter().map(|v| v.to_string()).collect(),
        }
    }

    fn sel(ml: &[(&str, &str)], me: Vec<SelectorRequirement>) -> DeviceSelector {
        DeviceSelector {
            match_labels: labels(ml),
            match_expressions: me,
        }
    }

    #[test]
    fn matching_table() {
        use SelectorOperator::*;
        let dev = labels(&[
            ("site", "berlin"),
            ("hardware", "rpi4"),
            ("edgefleet.io/device", "true"),
        ]);
        let cases: Vec<(&str, DeviceSelector, bool)> = vec![
            ("empty selects all", sel(&[], vec![]), true),
            ("label equal", sel(&[("site", "berlin")], vec![]), true),
            ("label differs", sel(&[("site", "munich")], vec![]), false),
            ("label missing", sel(&[("channel", "beta")], vec![]), false),
            (
                "prefixed key",
                sel(&[("edgefleet.io/device", "true")], vec![]),
                true,
            ),
            (
                "in",
                sel(&[], vec![expr("hardware", In, &["nuc", "rpi4"])]),
                true,
            ),
            (
                "in, no match",
                sel(&[], vec![expr("hardware", In, &["nuc"])]),
                false,
            ),
            (
                "in, absent",
                sel(&[], vec![expr("gpu", In, &["yes"])]),
                false,
            ),
            (
                "notin",
                sel(&[], vec![expr("hardware", NotIn, &["nuc"])]),
                true,
            ),
            (
                "notin, absent matches",
                sel(&[], vec![expr("gpu", NotIn, &["yes"])]),
                true,
            ),
            (
                "notin, present",
                sel(&[], vec![expr("hardware", NotIn, &["rpi4"])]),
                false,
            ),
            ("exists", sel(&[], vec![expr("site", Exists, &[])]), true),
            (
                "does not exist",
                sel(&[], vec![expr("site", DoesNotExist, &[])]),
                false,
            ),
            (
                "all must hold",
                sel(&[("site", "berlin")], vec![expr("hardware", In, &["nuc"])]),
                false,
            ),
        ];
        for (name, s, want) in cases {
            let parsed = Selector::parse(&s).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(parsed.matches(&dev), want, "{name}");
        }
    }

    #[test]
    fn parse_errors_explain_themselves() {
        use SelectorOperator::*;
        let cases: Vec<(DeviceSelector, &str)> = vec![
            (sel(&[("bad key!", "x")], vec![]), "label key \"bad key!\""),
            (sel(&[("site", "-x")], vec![]), "label value \"-x\""),
            (
                sel(&[], vec![expr("site", In, &[])]),
                "needs at least one value",
            ),
            (
                sel(&[], vec![expr("site", Exists, &["x"])]),
                "takes no values",
            ),
            (
                sel(&[("Bad.Prefix/x", "y")], vec![]),
                "not a qualified name",
            ),
            (
                sel(&[(&"a".repeat(64), "y")], vec![]),
                "not a qualified name",
            ),
        ];
        for (s, says) in cases {
            let err = Selector::parse(&s).expect_err(says).to_string();
            assert!(err.contains(says), "{err:?} should mention {says:?}");
        }
    }
}
