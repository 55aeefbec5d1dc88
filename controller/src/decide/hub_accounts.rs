//! The cloud hub's accounts: which devices' hubs may join it as leaf nodes, and what each
//! may send and receive. A device's leaf connection maps to a user by its client
//! certificate's subject (the join's certificate, verified against the cluster's CA); that
//! user may publish only under `edgefleet.dev.<device>.up` and receive only under
//! `edgefleet.dev.<device>.down` and `.inbox` (the cloud stream's acknowledgements of what
//! it forwards), so a device cannot speak for another nor read another's replies. The
//! reader may also receive `_INBOX.>`: the replies of the JetStream API it reads the cloud
//! stream with. Only enrolled
//! devices have a user: a retired device's certificate joins nothing.
//!
//! Pure: the reconcile writes the text into a Secret the cloud hub includes.

use edgefleet_crds::hub::{
    FLEET_ACCOUNT, READER_PASSWORD_ENV, READER_USER, device_inbox, downstream_subjects, leaf_user,
    upstream_subjects,
};
use edgefleet_crds::names::check_dns_label;

/// The accounts block of the cloud hub's config for `devices` (sorted, so that the same
/// fleet always gives the same text and an unchanged fleet writes nothing). A name that
/// is not a DNS label is left out: names are written into the config, and only enrolled
/// devices, whose names are DNS labels, belong there.
pub fn accounts(devices: &[&str]) -> String {
    let mut names: Vec<&str> = devices
        .iter()
        .copied()
        .filter(|d| check_dns_label(d).is_ok())
        .collect();
    names.sort_unstable();
    names.dedup();
    let mut users = String::new();
    for d in names {
        users.push_str(&format!(
            "      {{user: \"{}\", allowed_connection_types: [\"LEAFNODE\"], permissions: {{publish: {{allow: [\"{}\"]}}, subscribe: {{allow: [\"{}\", \"{}.>\"]}}}}}}\n",
            leaf_user(d),
            upstream_subjects(d),
            downstream_subjects(d),
            device_inbox(d),
        ));
    }
    format!(
        "# Written by edgefleet-controller from the enrolled EdgeDevices; edits are overwritten.\n\
         accounts {{\n  {FLEET_ACCOUNT} {{\n    jetstream: enabled\n    users: [\n{users}      \
         {{user: \"{READER_USER}\", password: ${READER_PASSWORD_ENV}, allowed_connection_types: [\"STANDARD\", \"MQTT\"], \
         permissions: {{publish: {{deny: [\"edgefleet.>\"]}}, subscribe: {{allow: [\"edgefleet.dev.*.up.>\", \"edgefleet.dev.*.up\", \"_INBOX.>\"]}}}}}}\n    ]\n  }}\n}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_device_may_send_only_its_own_subjects() {
        let text = accounts(&["edge-2", "edge-1"]);
        let line = |d: &str| {
            text.lines()
                .find(|l| l.contains(&leaf_user(d)))
                .unwrap_or_else(|| panic!("no user for {d}"))
                .to_owned()
        };
        let one = line("edge-1");
        assert!(one.contains("publish: {allow: [\"edgefleet.dev.edge-1.up.>\"]}"));
        assert!(one.contains(
            "subscribe: {allow: [\"edgefleet.dev.edge-1.down.>\", \"edgefleet.dev.edge-1.inbox.>\"]}"
        ));
        assert!(!one.contains("edge-2"));
        assert!(one.contains("allowed_connection_types: [\"LEAFNODE\"]"));
        assert!(text.find("edge-1").expect("edge-1") < text.find("edge-2").expect("edge-2"));
    }

    /// The chart writes the accounts for a fleet of no device before the controller runs
    /// (a nats-server without any user would admit anyone): the same text, pinned in one
    /// file that charts/tests/test_charts.py compares the chart's with.
    #[test]
    fn the_charts_first_accounts_are_the_controllers_for_no_device() {
        assert_eq!(
            accounts(&[]),
            include_str!("../../tests/data/hub-accounts-empty.conf")
        );
    }

    /// A retired device has no user: the cloud hub refuses its certificate.
    #[test]
    fn only_the_devices_given_have_users() {
        let text = accounts(&["edge-1"]);
        assert!(text.contains(&leaf_user("edge-1")));
        assert!(!text.contains("edge-2"));
        assert_eq!(accounts(&["edge-1", "edge-1"]), text, "one user per device");
    }

    /// Names are written into the hub's config: anything but a DNS label stays out.
    #[test]
    fn a_name_that_is_not_a_dns_label_writes_no_config() {
        let text = accounts(&["edge-1\"}, {user: \"x", "Edge", "a.b"]);
        assert_eq!(text, accounts(&[]));
    }

    /// The reader reads only what devices send upstream and can never send as a device
    /// (the rest, such as its reply inboxes, it may publish); its password is never in the
    /// text the controller writes.
    #[test]
    fn the_reader_reads_only_upstream_and_its_password_is_the_hubs() {
        let text = accounts(&[]);
        let reader = text
            .lines()
            .find(|l| l.contains(READER_USER))
            .expect("a reader");
        assert!(reader.contains(&format!("password: ${READER_PASSWORD_ENV}")));
        assert!(reader.contains("publish: {deny: [\"edgefleet.>\"]}"));
        assert!(reader.contains("subscribe: {allow: [\"edgefleet.dev.*.up.>\""));
    }
}
