//! Waiting for the view to change: a long poll for watchers.

use std::time::Duration;

use mesh_membership::records::view::EndpointState;

use super::{Agent, AgentError};
use crate::api::{ChangesBody, ChangesQuery};

/// Longest wait a client may ask for.
const MAX_WAIT: Duration = Duration::from_secs(60);
/// The wait when the client names none.
const DEFAULT_WAIT: Duration = Duration::from_secs(30);

impl Agent {
    /// Answers once the view's generation exceeds `query.after`, or when
    /// the wait runs out (with the current generation).
    pub(crate) async fn changes(&self, query: ChangesQuery) -> Result<ChangesBody, AgentError> {
        let membership = self.require_membership()?;
        let wait = query.timeout_ms.map_or(DEFAULT_WAIT, Duration::from_millis).min(MAX_WAIT);
        let mut views = membership.watch_view();
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let current = views.borrow_and_update().clone();
            let expired = tokio::time::Instant::now() >= deadline;
            if current.generation > query.after || expired {
                let endpoints = query
                    .network
                    .as_deref()
                    .and_then(|name| current.view.network(name))
                    .map(|network| {
                        let active = network.endpoints.iter().filter(|e| e.state == EndpointState::Active);
                        active.map(|e| e.name.clone()).collect()
                    })
                    .unwrap_or_default();
                return Ok(ChangesBody { generation: current.generation, endpoints });
            }
            match tokio::time::timeout_at(deadline, views.changed()).await {
                Ok(Ok(())) | Err(_) => {}
                Ok(Err(_)) => return Err(AgentError::Conflict("the cluster session ended".into())),
            }
        }
    }
}
