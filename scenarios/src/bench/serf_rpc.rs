//! A client of a Serf agent's RPC (msgpack over TCP), opened inside the
//! agent's network namespace. Watching 50 hosts through the `serf` CLI
//! (a Go program started per look) took both cores and starved the agents
//! being measured; one connection per host costs a few microseconds a look,
//! as mesh's control socket does.

use std::io::{BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context};
use rmpv::Value;

/// The RPC address the benchmarks give every Serf agent.
pub(super) const RPC_PORT: u16 = 7373;

/// One open RPC session with one agent.
pub(super) struct SerfRpc {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    seq: u64,
}

impl SerfRpc {
    /// Connects to the agent in the namespace at `netns` and shakes hands.
    pub(super) fn connect(netns: &Path) -> anyhow::Result<Self> {
        let rpc = SocketAddr::from((Ipv4Addr::LOCALHOST, RPC_PORT));
        let stream = mesh_netdev::netns::run_in(netns, move || {
            let io = |source| mesh_netdev::NetdevError::Io { what: "serf rpc", path: rpc.to_string().into(), source };
            let stream = TcpStream::connect_timeout(&rpc, Duration::from_secs(2)).map_err(io)?;
            stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(io)?;
            stream.set_nodelay(true).map_err(io)?;
            Ok(stream)
        })?;
        let reader = BufReader::new(stream.try_clone()?);
        let mut client = Self { writer: stream, reader, seq: 0 };
        client.call("handshake", Some(map(vec![("Version", Value::from(1))])))?;
        Ok(client)
    }

    /// Names and statuses of the members the agent lists.
    pub(super) fn members(&mut self) -> anyhow::Result<Vec<(String, String)>> {
        self.call("members", None)?;
        let body = rmpv::decode::read_value(&mut self.reader).context("serf members body")?;
        let members = field(&body, "Members").and_then(Value::as_array).context("no Members in serf's answer")?;
        members
            .iter()
            .map(|member| {
                let text = |key| field(member, key).and_then(Value::as_str).map(str::to_owned);
                Ok((text("Name").context("member without Name")?, text("Status").context("member without Status")?))
            })
            .collect()
    }

    /// Sends a request (header, then `body` if any) and reads the response
    /// header, failing on the error it carries.
    fn call(&mut self, command: &str, body: Option<Value>) -> anyhow::Result<()> {
        let seq = self.seq;
        self.seq += 1;
        let header = map(vec![("Command", Value::from(command)), ("Seq", Value::from(seq))]);
        let mut request = Vec::new();
        rmpv::encode::write_value(&mut request, &header)?;
        if let Some(body) = body {
            rmpv::encode::write_value(&mut request, &body)?;
        }
        self.writer.write_all(&request)?;
        let response = rmpv::decode::read_value(&mut self.reader).with_context(|| format!("serf {command} answer"))?;
        if field(&response, "Seq").and_then(Value::as_u64) != Some(seq) {
            bail!("serf answered {response} to request {seq}");
        }
        match field(&response, "Error").and_then(Value::as_str) {
            Some("") | None => Ok(()),
            Some(error) => bail!("serf {command}: {error}"),
        }
    }
}

/// A msgpack map with string keys.
fn map(entries: Vec<(&str, Value)>) -> Value {
    Value::Map(entries.into_iter().map(|(key, value)| (Value::from(key), value)).collect())
}

/// The value under string `key` of a msgpack map.
fn field<'a>(value: &'a Value, key: &str) -> Option<&'a Value> {
    value.as_map()?.iter().find(|(k, _)| k.as_str() == Some(key)).map(|(_, v)| v)
}
