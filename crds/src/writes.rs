//! How edgefleet's controller and agent write to the apiserver: the parameters of every
//! apply and patch, in one place.
//!
//! Both skip the apiserver's field validation (`fieldValidation=Ignore`). Unset, the
//! apiserver warns of unknown fields, and to find them it parses every request a second
//! time, strictly: for a server-side apply that is a second YAML parse of the patch, 3 % of
//! its CPU while a fleet enrols (a profile at 3,000 hollow devices). edgefleet writes only
//! what it serializes from the types the CRDs are generated from, so there is nothing to
//! find, and its client never reads the warnings anyway. An unknown field (a newer writer
//! against older CRDs) is dropped either way: the apiserver prunes what its schema lacks.

use kube::api::PatchParams;

/// A server-side apply under `manager`, forcing ownership: the writer is the only one of
/// the fields it applies.
pub fn apply(manager: &str) -> PatchParams {
    PatchParams::apply(manager).force().validation_ignore()
}

/// A merge patch recorded under `manager`.
pub fn patch(manager: &str) -> PatchParams {
    PatchParams {
        field_manager: Some(manager.to_owned()),
        ..PatchParams::default()
    }
    .validation_ignore()
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::api::ValidationDirective;

    #[test]
    fn every_write_skips_the_strict_second_parse() {
        let applied = apply("edgefleet-controller");
        assert!(applied.force);
        assert_eq!(
            applied.field_manager.as_deref(),
            Some("edgefleet-controller")
        );
        let patched = patch("edgefleet-agent");
        assert!(!patched.force);
        assert_eq!(patched.field_manager.as_deref(), Some("edgefleet-agent"));
        for p in [applied, patched] {
            assert!(matches!(
                p.field_validation,
                Some(ValidationDirective::Ignore)
            ));
        }
    }
}
