//! Service discovery for mesh: a DNS server that answers endpoint names,
//! aliases, `NAME.NETWORK[.mesh.]`, `NODE.node.mesh.` and PTR records from a
//! name table the agent keeps in step with the replicated view, and forwards
//! every other name to the upstream resolvers. It takes plain name-table
//! types and knows nothing of membership.
//!
//! - [`table`]: the names, and what a name means for a given sandbox;
//! - [`answer`]: one packet in, one answer out (no sockets);
//! - [`forward`]: the upstream resolvers;
//! - [`server`]: the UDP and TCP listeners, one pair per sandbox.

pub mod answer;
pub mod forward;
pub mod server;
pub mod table;

pub use forward::OWN_ADDRESS;
pub use hickory_proto::op::ResponseCode;
pub use server::{bind, Observer, Resolver, Sockets, Source};
pub use table::{Endpoint, NameTable, Node, Scope};
