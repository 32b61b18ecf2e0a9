//! Names mesh does not hold go to the upstream resolvers, through
//! hickory-resolver: a cap on queries in flight, a short timeout, and
//! SERVFAIL when every upstream fails.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, Query, ResponseCode};
use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::{DnsError, NetError};
use hickory_resolver::TokioResolver;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::answer::respond;

/// Most forwarded queries in flight for the whole agent (Docker's
/// embedded resolver allows 1,024 too).
pub const MAX_IN_FLIGHT: usize = 1024;
/// How long one upstream has to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// The addresses mesh's own resolvers listen on: never an upstream (a
/// query forwarded there would come back to mesh).
pub const OWN_ADDRESS: std::net::Ipv4Addr = std::net::Ipv4Addr::new(127, 0, 0, 11);

/// The upstream resolvers.
pub struct Forwarder {
    resolver: Option<TokioResolver>,
    permits: Arc<Semaphore>,
}

impl Forwarder {
    /// A forwarder to `upstreams` (none: every forwarded name fails).
    /// Upstreams that are mesh's own address are dropped.
    pub fn new(upstreams: &[SocketAddr]) -> Self {
        let servers: Vec<NameServerConfig> = upstreams
            .iter()
            .filter(|upstream| upstream.ip() != OWN_ADDRESS)
            .map(|upstream| {
                let connection = |mut config: ConnectionConfig| {
                    config.port = upstream.port();
                    config
                };
                NameServerConfig::new(
                    upstream.ip(),
                    true,
                    vec![connection(ConnectionConfig::udp()), connection(ConnectionConfig::tcp())],
                )
            })
            .collect();
        let resolver = (!servers.is_empty())
            .then(|| {
                let mut options = ResolverOpts::default();
                options.timeout = UPSTREAM_TIMEOUT;
                options.attempts = 1;
                options.use_hosts_file = ResolveHosts::Never;
                options.ndots = 0;
                options.cache_size = 4096;
                options.try_tcp_on_error = true;
                let config = ResolverConfig::from_parts(None, Vec::new(), servers);
                let mut builder = TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
                *builder.options_mut() = options;
                builder.build()
            })
            .and_then(|built| built.map_err(|error| tracing::warn!(%error, "no upstream resolver")).ok());
        Self { resolver, permits: Arc::new(Semaphore::new(MAX_IN_FLIGHT)) }
    }

    /// A place among the queries in flight, if one is free.
    pub fn permit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// The upstreams' answer to `query`, as a response to `request`.
    pub async fn forward(&self, request: &Message, query: &Query) -> Message {
        let Some(resolver) = &self.resolver else { return respond(request, ResponseCode::ServFail) };
        let mut name = query.name().clone();
        name.set_fqdn(true);
        match resolver.lookup(name, query.query_type()).await {
            Ok(lookup) => {
                let mut response = respond(request, ResponseCode::NoError);
                response.add_answers(lookup.answers().iter().cloned());
                response
            }
            Err(NetError::Dns(DnsError::NoRecordsFound(none))) => {
                let mut response = respond(request, none.response_code);
                if let Some(soa) = none.soa {
                    response.add_authority(soa.into_record_of_rdata());
                }
                response
            }
            Err(error) => {
                tracing::debug!(%error, name = %query.name(), "upstream resolvers failed");
                respond(request, ResponseCode::ServFail)
            }
        }
    }
}
