//! A network's encodings, both readable by mesh 0.1.
//!
//! - On the wire (postcard), protocol 3 (mesh 0.1) encoded the driver as
//!   an enum index, `Overlay` 0 and `Null` 1, and had no options. The
//!   driver code keeps those values and carries what came later in other
//!   bits (the bridge driver as 2, [`INTERNAL`] and [`ENCRYPTED`] as
//!   flags), so every network an 0.1 agent can build is encoded, and
//!   sealed, byte for byte as before; an 0.1 agent cannot read the others
//!   (a bridge or internal network needs every host on 0.2; an encrypted
//!   one is sent only to agents speaking protocol 2, 0.3 on).
//! - In the data dir (JSON), the driver keeps its name and `internal` and
//!   `encrypted` are optional, so a data dir of 0.1 is read as it is.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{Driver, NetworkSpec};

impl Serialize for NetworkSpec {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if serializer.is_human_readable() {
            ReadableNetworkSpec::from(self.clone()).serialize(serializer)
        } else {
            WireNetworkSpec::from(self.clone()).serialize(serializer)
        }
    }
}

impl<'de> Deserialize<'de> for NetworkSpec {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        if deserializer.is_human_readable() {
            Ok(ReadableNetworkSpec::deserialize(deserializer)?.into())
        } else {
            WireNetworkSpec::deserialize(deserializer)?.try_into().map_err(serde::de::Error::custom)
        }
    }
}

/// [`NetworkSpec`] as the data dir holds it.
#[derive(Serialize, Deserialize)]
struct ReadableNetworkSpec {
    name: String,
    driver: Driver,
    #[serde(default)]
    internal: bool,
    #[serde(default)]
    encrypted: bool,
    vni: u32,
    subnet: Option<Ipv4Net>,
    gateway: Option<Ipv4Addr>,
    mtu: Option<u16>,
    created_ms: u64,
}

impl From<NetworkSpec> for ReadableNetworkSpec {
    fn from(spec: NetworkSpec) -> Self {
        let NetworkSpec { name, driver, internal, encrypted, vni, subnet, gateway, mtu, created_ms } = spec;
        Self { name, driver, internal, encrypted, vni, subnet, gateway, mtu, created_ms }
    }
}

impl From<ReadableNetworkSpec> for NetworkSpec {
    fn from(spec: ReadableNetworkSpec) -> Self {
        let ReadableNetworkSpec { name, driver, internal, encrypted, vni, subnet, gateway, mtu, created_ms } = spec;
        Self { name, driver, internal, encrypted, vni, subnet, gateway, mtu, created_ms }
    }
}

/// The driver code's bit for an internal network.
const INTERNAL: u32 = 1 << 4;
/// The driver code's bit for an encrypted network (overlay only).
const ENCRYPTED: u32 = 1 << 5;
/// The driver code's bits for the driver.
const DRIVER: u32 = INTERNAL - 1;

/// [`NetworkSpec`] as it is encoded: the same fields in the same order,
/// with the driver and the options in one code.
#[derive(Serialize, Deserialize)]
struct WireNetworkSpec {
    name: String,
    driver: u32,
    vni: u32,
    subnet: Option<Ipv4Net>,
    gateway: Option<Ipv4Addr>,
    mtu: Option<u16>,
    created_ms: u64,
}

impl From<NetworkSpec> for WireNetworkSpec {
    fn from(spec: NetworkSpec) -> Self {
        let driver = match spec.driver {
            Driver::Overlay => 0,
            Driver::Null => 1,
            Driver::Bridge => 2,
        };
        Self {
            name: spec.name,
            driver: driver | if spec.internal { INTERNAL } else { 0 } | if spec.encrypted { ENCRYPTED } else { 0 },
            vni: spec.vni,
            subnet: spec.subnet,
            gateway: spec.gateway,
            mtu: spec.mtu,
            created_ms: spec.created_ms,
        }
    }
}

impl TryFrom<WireNetworkSpec> for NetworkSpec {
    type Error = String;

    fn try_from(wire: WireNetworkSpec) -> Result<Self, String> {
        if wire.driver & !(DRIVER | INTERNAL | ENCRYPTED) != 0 {
            return Err(format!("unknown network options {:#x}", wire.driver));
        }
        let driver = match wire.driver & DRIVER {
            0 => Driver::Overlay,
            1 => Driver::Null,
            2 => Driver::Bridge,
            other => return Err(format!("unknown network driver {other}")),
        };
        let encrypted = wire.driver & ENCRYPTED != 0;
        if encrypted && driver != Driver::Overlay {
            return Err(format!("a {} network cannot be encrypted", driver.as_str()));
        }
        Ok(Self {
            name: wire.name,
            driver,
            internal: wire.driver & INTERNAL != 0,
            encrypted,
            vni: wire.vni,
            subnet: wire.subnet,
            gateway: wire.gateway,
            mtu: wire.mtu,
            created_ms: wire.created_ms,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `NetworkSpec` as protocol 3 derived it.
    #[derive(Serialize)]
    enum LegacyDriver {
        Overlay,
        Null,
    }

    #[derive(Serialize)]
    struct LegacySpec {
        name: String,
        driver: LegacyDriver,
        vni: u32,
        subnet: Option<Ipv4Net>,
        gateway: Option<Ipv4Addr>,
        mtu: Option<u16>,
        created_ms: u64,
    }

    #[test]
    fn networks_an_older_agent_can_build_are_encoded_as_it_encodes_them() {
        let subnet: Ipv4Net = "10.1.0.0/24".parse().expect("subnet");
        let overlay = NetworkSpec { mtu: Some(1400), ..NetworkSpec::overlay("dev", 42, subnet, 7) };
        let legacy = LegacySpec {
            name: "dev".into(),
            driver: LegacyDriver::Overlay,
            vni: 42,
            subnet: Some(subnet),
            gateway: subnet.hosts().next(),
            mtu: Some(1400),
            created_ms: 7,
        };
        assert_eq!(postcard::to_allocvec(&overlay).ok(), postcard::to_allocvec(&legacy).ok());
        let null = NetworkSpec { driver: Driver::Null, vni: 0, subnet: None, gateway: None, ..overlay.clone() };
        let legacy_null = LegacySpec { driver: LegacyDriver::Null, vni: 0, subnet: None, gateway: None, ..legacy };
        assert_eq!(postcard::to_allocvec(&null).ok(), postcard::to_allocvec(&legacy_null).ok());
    }

    #[test]
    fn a_data_dir_of_an_older_agent_is_read_and_new_options_are_kept() {
        let old = r#"{"name":"dev","driver":"Overlay","vni":42,"subnet":"10.1.0.0/24","gateway":"10.1.0.1","mtu":null,"created_ms":7}"#;
        let spec: NetworkSpec = serde_json::from_str(old).expect("an 0.1 network");
        assert_eq!(spec, NetworkSpec::overlay("dev", 42, "10.1.0.0/24".parse().expect("subnet"), 7));
        let bridge = NetworkSpec { driver: Driver::Bridge, internal: true, ..spec.clone() };
        let json = serde_json::to_string(&bridge).expect("encodes");
        assert_eq!(serde_json::from_str::<NetworkSpec>(&json).ok(), Some(bridge));
        let encrypted = NetworkSpec { encrypted: true, ..spec };
        let json = serde_json::to_string(&encrypted).expect("encodes");
        assert_eq!(serde_json::from_str::<NetworkSpec>(&json).ok(), Some(encrypted));
    }

    #[test]
    fn drivers_and_options_round_trip_and_unknown_codes_are_refused() {
        let subnet: Ipv4Net = "10.1.0.0/24".parse().expect("subnet");
        let options = [
            (Driver::Bridge, false, false),
            (Driver::Bridge, true, false),
            (Driver::Overlay, true, false),
            (Driver::Overlay, false, true),
            (Driver::Overlay, true, true),
        ];
        for (driver, internal, encrypted) in options {
            let spec = NetworkSpec { driver, internal, encrypted, ..NetworkSpec::overlay("dev", 42, subnet, 7) };
            let bytes = postcard::to_allocvec(&spec).expect("encodes");
            assert_eq!(postcard::from_bytes::<NetworkSpec>(&bytes).ok(), Some(spec));
        }
        let encrypted = NetworkSpec { encrypted: true, ..NetworkSpec::overlay("dev", 42, subnet, 7) };
        assert_eq!(postcard::to_allocvec(&encrypted).expect("encodes")[4], 0x20, "the bit beside INTERNAL");
        let mut unknown = postcard::to_allocvec(&NetworkSpec::overlay("dev", 42, subnet, 7)).expect("encodes");
        // An unknown driver, an unknown option, and an encrypted null or
        // bridge network.
        for code in [3, 0x40, 0x21, 0x22] {
            unknown[4] = code;
            assert!(postcard::from_bytes::<NetworkSpec>(&unknown).is_err(), "code {code:#x}");
        }
    }
}
