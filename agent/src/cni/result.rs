//! The result of ADD: the container's interface, its address, its default
//! route (unless the network is internal) and mesh's resolver, in the configuration's version's shape, after what the
//! plugins before mesh-cni in a chain reported.

use serde_json::{json, Value};

use super::error::{CniError, Code};

/// The interface mesh-cni configured.
#[derive(Debug, Clone)]
pub(crate) struct Attached {
    pub(crate) interface: String,
    pub(crate) mac: String,
    /// `IP/PREFIX`.
    pub(crate) address: String,
    /// The container's namespace.
    pub(crate) sandbox: String,
    /// The next hop of its default route (none on an internal network).
    pub(crate) gateway: Option<String>,
}

/// Where the container's resolver is (mesh serves it inside the namespace).
const NAMESERVER: &str = "127.0.0.11";

/// The result for `attached`, appended to `previous` (a chain's
/// `prevResult`) if there is one.
pub(crate) fn result(version: &str, attached: &Attached, previous: Option<&Value>) -> Result<Value, CniError> {
    let invalid = |what: &str| CniError::new(Code::InvalidConfig, "invalid prevResult", what.to_owned());
    let mut out = match previous {
        Some(Value::Object(object)) => Value::Object(object.clone()),
        Some(_) => return Err(invalid("it is not an object")),
        None => json!({}),
    };
    let Some(object) = out.as_object_mut() else { return Err(invalid("it is not an object")) };
    object.insert("cniVersion".into(), json!(version));
    let interfaces = list(object, "interfaces").map_err(invalid)?;
    let index = interfaces.len();
    interfaces.push(json!({ "name": attached.interface, "mac": attached.mac, "sandbox": attached.sandbox }));
    let mut ip = json!({ "address": attached.address, "interface": index });
    if version == "0.4.0" {
        ip["version"] = json!("4");
    }
    if let Some(gateway) = &attached.gateway {
        ip["gateway"] = json!(gateway);
    }
    list(object, "ips").map_err(invalid)?.push(ip);
    let routes = list(object, "routes").map_err(invalid)?;
    if let Some(gateway) = &attached.gateway {
        routes.push(json!({ "dst": "0.0.0.0/0", "gw": gateway }));
    }
    let dns = object.entry("dns").or_insert_with(|| json!({}));
    let Some(dns) = dns.as_object_mut() else { return Err(invalid("`dns` is not an object")) };
    let nameservers = list(dns, "nameservers").map_err(invalid)?;
    if !nameservers.iter().any(|n| n == NAMESERVER) {
        nameservers.insert(0, json!(NAMESERVER));
    }
    Ok(out)
}

/// The list at `key` of `object`, made empty if absent.
fn list<'a>(object: &'a mut serde_json::Map<String, Value>, key: &str) -> Result<&'a mut Vec<Value>, &'static str> {
    match object.entry(key).or_insert_with(|| json!([])) {
        Value::Array(items) => Ok(items),
        _ => Err("a list field is not a list"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attached() -> Attached {
        Attached {
            interface: "eth0".into(),
            mac: "02:6d:0a:00:00:05".into(),
            address: "10.0.0.5/24".into(),
            sandbox: "/run/netns/x".into(),
            gateway: None,
        }
    }

    #[test]
    fn results_follow_the_version_and_the_chain() -> Result<(), CniError> {
        let alone = result("1.0.0", &attached(), None)?;
        assert_eq!(alone["ips"][0], json!({"address": "10.0.0.5/24", "interface": 0}));
        assert_eq!(alone["dns"]["nameservers"], json!(["127.0.0.11"]));
        let old = result("0.4.0", &attached(), None)?;
        assert_eq!(old["ips"][0]["version"], "4");
        let previous = json!({"cniVersion": "1.0.0", "interfaces": [{"name": "lo"}],
            "ips": [{"address": "192.0.2.9/24", "interface": 0}], "dns": {"nameservers": ["192.0.2.53"]}});
        let chained = result("1.0.0", &attached(), Some(&previous))?;
        assert_eq!(chained["interfaces"].as_array().map(Vec::len), Some(2));
        assert_eq!(chained["ips"][1]["interface"], 1);
        assert_eq!(chained["dns"]["nameservers"], json!(["127.0.0.11", "192.0.2.53"]));
        assert!(result("1.0.0", &attached(), Some(&json!([1]))).is_err());
        assert!(result("1.0.0", &attached(), Some(&json!({"ips": 3}))).is_err());
        let routed = Attached { gateway: Some("10.0.0.1".into()), ..attached() };
        let out = result("1.0.0", &routed, None)?;
        assert_eq!(out["ips"][0]["gateway"], "10.0.0.1");
        assert_eq!(out["routes"], json!([{"dst": "0.0.0.0/0", "gw": "10.0.0.1"}]));
        Ok(())
    }
}
