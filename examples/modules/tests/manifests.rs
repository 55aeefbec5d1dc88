//! What `examples/` asks for fits the sample modules: the routes connect the outputs each
//! module publishes to the inputs the next one reads, a Berlin device (base plus layer)
//! ends up with the same pipeline as a Jetson, and nothing asks for the device's network,
//! which the team's grant no longer gives. The modules read the variables the agent sets.

use std::collections::BTreeMap;
use std::path::Path;

use edgefleet_crds::route::{Destination, Route};
use edgefleet_crds::{EdgeDeployment, EdgeGrant, EdgeModule, hub};
use edgefleet_examples::{ANOMALIES, INPUT, READINGS, SMOOTHED};
use serde::de::DeserializeOwned;

/// The documents of one of `examples/`'s files.
fn example<T: DeserializeOwned>(file: &str) -> Vec<T> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|doc| T::deserialize(doc).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
        .collect()
}

/// Each module's routes in a deployment, as `output -> destination` strings.
fn routes(d: &EdgeDeployment) -> BTreeMap<String, Vec<String>> {
    d.spec
        .modules
        .iter()
        .map(|m| (m.name.clone(), m.routes.iter().map(describe).collect()))
        .collect()
}

fn describe(r: &Route) -> String {
    match r
        .check()
        .unwrap_or_else(|e| panic!("a route that does not check: {e}"))
    {
        Destination::Input { module, input } => format!("{} -> {module}.{input}", r.output),
        Destination::Upstream(name) => format!("{} -> upstream {name}", r.output),
    }
}

fn deployment(file: &str) -> EdgeDeployment {
    example::<EdgeDeployment>(file).remove(0)
}

/// The pipeline the modules implement, output and input names as they publish and read.
fn pipeline() -> BTreeMap<String, Vec<String>> {
    BTreeMap::from([
        (
            "sensor".into(),
            vec![format!("{READINGS} -> filter.{INPUT}")],
        ),
        (
            "filter".into(),
            vec![format!("{SMOOTHED} -> ml-model.{INPUT}")],
        ),
        (
            "ml-model".into(),
            vec![format!("{ANOMALIES} -> upstream anomalies")],
        ),
    ])
}

#[test]
fn a_jetson_and_a_berlin_device_get_the_whole_pipeline() {
    assert_eq!(routes(&deployment("hardware-jetson.yaml")), pipeline());
    // On a Berlin device the layer's modules replace the base's of the same name.
    let mut berlin = routes(&deployment("base.yaml"));
    berlin.extend(routes(&deployment("site-berlin.yaml")));
    assert_eq!(berlin, pipeline());
}

/// A route may only name a module its own deployment runs (admission refuses it otherwise).
#[test]
fn every_route_stays_within_its_deployment() {
    for file in ["base.yaml", "site-berlin.yaml", "hardware-jetson.yaml"] {
        let d = deployment(file);
        for m in &d.spec.modules {
            for r in &m.routes {
                if let Ok(Destination::Input { module, .. }) = r.check() {
                    assert!(
                        d.spec.modules.iter().any(|n| n.name == module),
                        "{file}: {} routes to {module}, which it does not run",
                        m.name
                    );
                }
            }
        }
    }
}

/// The modules reach the hub through the device's address, so the grant need not, and
/// does not, give them the device's network.
#[test]
fn no_module_asks_for_what_the_grant_does_not_give() {
    let grant = example::<EdgeGrant>("platform/grant.yaml").remove(0);
    assert!(!grant.spec.host_network && !grant.spec.host_devices);
    for m in example::<EdgeModule>("modules.yaml") {
        assert!(
            !m.spec.host_network,
            "{:?} asks for hostNetwork",
            m.metadata.name
        );
        assert!(m.spec.devices.is_empty());
        assert!(
            grant
                .spec
                .images
                .iter()
                .any(|p| m.spec.image.starts_with(p.as_str())),
            "{} is not an image the grant allows",
            m.spec.image
        );
    }
}

#[test]
fn the_modules_read_the_variables_the_agent_sets() {
    use edgefleet_examples::hub::env;
    assert_eq!(env::HOST, hub::env::HOST);
    assert_eq!(env::MQTT_PORT, hub::env::MQTT_PORT);
    assert_eq!(env::CREDENTIALS, hub::env::CREDENTIALS);
    assert_eq!(env::OUTPUTS, hub::env::OUTPUTS);
    assert_eq!(env::INPUTS, hub::env::INPUTS);
    assert_eq!(env::NAMESPACE, hub::env::NAMESPACE);
    assert_eq!(env::MODULE, hub::env::MODULE);
}
