//! Service discovery for mesh: a DNS server that answers endpoint names,
//! aliases, `NAME.NETWORK[.mesh.]`, `NODE.node.mesh.` and PTR records from a
//! name table the agent keeps in step with the replicated view, and forwards
//! every other name to the upstream resolvers. It takes plain name-table
//! types and knows nothing of membership.
//!
//! Nothing is served yet: the server arrives with the service-discovery work,
//! once endpoints exist to be named.
