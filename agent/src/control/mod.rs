//! The control API over the agent's unix socket: the server side the
//! daemon serves, and the client side the `mesh` commands use.

pub(crate) mod client;
pub(crate) mod server;
