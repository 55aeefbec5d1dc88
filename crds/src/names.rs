//! Name and reference checks shared by the controller (reporting bad input on the object)
//! and the agent (refusing a desired state it cannot apply). The CRD schemas carry the
//! same rules as patterns where an RE2 pattern can express them.

use thiserror::Error;

/// A module name must be a DNS label: it becomes part of a pod name and a file name on the
/// device, so it can never contain a path separator or `..`.
pub const DNS_LABEL_PATTERN: &str = "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$";
/// An environment variable name.
pub const ENV_NAME_PATTERN: &str = "^[A-Za-z_][A-Za-z0-9_]*$";
/// A config file name: one path component, delivered under the module's config directory.
pub const FILE_NAME_PATTERN: &str = "^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$";
/// An image reference: `[registry[:port]/]path[:tag][@sha256:digest]`, lower-case path.
pub const IMAGE_PATTERN: &str = "^([a-zA-Z0-9][a-zA-Z0-9.-]*(:[0-9]{1,5})?/)?[a-z0-9]+([._-][a-z0-9]+)*(/[a-z0-9]+([._-][a-z0-9]+)*)*(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(@sha256:[a-f0-9]{64})?$";

#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum NameError {
    #[error(
        "{0:?} is not a DNS label (lower-case letters, digits and '-', at most 63, starting and ending alphanumeric)"
    )]
    NotDnsLabel(String),
    #[error("{0:?} is not a valid image reference")]
    BadImage(String),
    #[error("{0:?} is not a valid environment variable name")]
    BadEnvName(String),
    #[error("{0:?} is not a valid config file name (one path component, no leading dot)")]
    BadFileName(String),
}

fn alnum_lower(c: char) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

pub fn check_dns_label(s: &str) -> Result<(), NameError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars().all(|c| alnum_lower(c) || c == '-')
        && s.starts_with(alnum_lower)
        && s.ends_with(alnum_lower);
    ok.then_some(())
        .ok_or_else(|| NameError::NotDnsLabel(s.to_owned()))
}

pub fn check_env_name(s: &str) -> Result<(), NameError> {
    let ok = s.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_')
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    ok.then_some(())
        .ok_or_else(|| NameError::BadEnvName(s.to_owned()))
}

pub fn check_file_name(s: &str) -> Result<(), NameError> {
    let ok = !s.is_empty()
        && s.len() <= 128
        && s.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    ok.then_some(())
        .ok_or_else(|| NameError::BadFileName(s.to_owned()))
}

/// Checks an image reference by the same grammar as [`IMAGE_PATTERN`].
pub fn check_image(s: &str) -> Result<(), NameError> {
    let bad = || NameError::BadImage(s.to_owned());
    let (rest, digest) = match s.split_once("@sha256:") {
        Some((r, d)) => (r, Some(d)),
        None => (s, None),
    };
    if let Some(d) = digest
        && (d.len() != 64
            || !d
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)))
    {
        return Err(bad());
    }
    // A tag follows the last ':' that comes after the last '/'.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag {
        let ok = !t.is_empty()
            && t.len() <= 128
            && t.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
        if !ok {
            return Err(bad());
        }
    }
    let mut parts: Vec<&str> = name.split('/').collect();
    // The first part is a registry host when it has a '.', a ':' or is "localhost".
    if parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost") {
        let host = parts.remove(0);
        let (h, port) = host
            .split_once(':')
            .map_or((host, None), |(h, p)| (h, Some(p)));
        let host_ok = h.starts_with(|c: char| c.is_ascii_alphanumeric())
            && h.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-'));
        let port_ok = port
            .is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.chars().all(|c| c.is_ascii_digit()));
        if !host_ok || !port_ok {
            return Err(bad());
        }
    }
    let component_ok = |p: &str| {
        !p.is_empty()
            && p.split(['.', '_', '-'])
                .all(|seg| !seg.is_empty() && seg.chars().all(alnum_lower))
            && !p.contains("..")
    };
    if parts.is_empty() || !parts.iter().all(|p| component_ok(p)) {
        return Err(bad());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_labels() {
        for ok in ["a", "sensor", "ml-model", "x1", &"a".repeat(63)] {
            assert_eq!(check_dns_label(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "-a",
            "a-",
            "A",
            "a_b",
            "a.b",
            "../etc",
            "a/b",
            &"a".repeat(64),
        ] {
            assert!(check_dns_label(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn images() {
        for ok in [
            "busybox",
            "busybox:1.36",
            "localhost/edgefleet/sensor:v1",
            "registry.example:5000/team/app:1.0-rc_1",
            "k8s.gcr.io/pause:3.2",
            &format!("app@sha256:{}", "a".repeat(64)),
        ] {
            assert_eq!(check_image(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "a//b",
            "a/../b",
            "app@sha256:1234",
            "host:99999999/app",
            "has space",
        ] {
            assert!(check_image(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_and_file_names() {
        assert!(check_env_name("RUST_LOG").is_ok());
        assert!(check_env_name("_x1").is_ok());
        assert!(check_env_name("1X").is_err());
        assert!(check_env_name("A-B").is_err());
        assert!(check_file_name("app.toml").is_ok());
        assert!(check_file_name(".hidden").is_err());
        assert!(check_file_name("../x").is_err());
        assert!(check_file_name("a/b").is_err());
    }
}
