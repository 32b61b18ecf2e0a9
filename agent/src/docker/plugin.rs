//! The plugin socket: Docker's plugin protocol (HTTP `POST /Call` with a
//! JSON body) dispatched to the [`Driver`]. A failed call answers
//! `{"Err": "..."}`; an unknown call answers 404, which Docker takes as
//! "not implemented".

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::net::UnixListener;
use tokio_util::sync::CancellationToken;

use super::driver::{CallError, Driver};
use super::protocol::{self as proto, ErrorAnswer};

/// Serves the plugin protocol on `listener` until `shutdown`.
pub(crate) async fn serve(listener: UnixListener, driver: Arc<Driver>, shutdown: CancellationToken) {
    let router = axum::Router::new().fallback(call).with_state(driver);
    let served = axum::serve(listener, router).with_graceful_shutdown(async move { shutdown.cancelled().await }).await;
    if let Err(error) = served {
        tracing::error!(%error, "the Docker plugin socket failed");
    }
}

async fn call(State(driver): State<Arc<Driver>>, method: Method, uri: Uri, body: Bytes) -> Response {
    if method != Method::POST {
        return answer(StatusCode::METHOD_NOT_ALLOWED, &ErrorAnswer { err: "the plugin protocol is POST only".into() });
    }
    let name = uri.path().trim_start_matches('/');
    tracing::debug!(call = %name, "Docker plugin call");
    let result = dispatch(&driver, name, &body).await;
    match result {
        Some(Ok(json)) => answer(StatusCode::OK, &json),
        Some(Err(CallError(err))) => {
            tracing::info!(call = %name, error = %err, "Docker plugin call refused");
            answer(StatusCode::INTERNAL_SERVER_ERROR, &ErrorAnswer { err })
        }
        None => answer(StatusCode::NOT_FOUND, &ErrorAnswer { err: format!("mesh does not implement {name}") }),
    }
}

/// Runs call `name`; `None` if there is no such call.
async fn dispatch(driver: &Arc<Driver>, name: &str, body: &[u8]) -> Option<Result<serde_json::Value, CallError>> {
    use proto::*;
    let result = match name {
        "Plugin.Activate" => json(Activated { implements: vec!["NetworkDriver", "IpamDriver"] }),
        // A plain engine keeps no store for global-scope networks: each
        // engine holds its own record (the agent keeps them the same).
        "NetworkDriver.GetCapabilities" => json(Capabilities { scope: "local", connectivity_scope: "global" }),
        "IpamDriver.GetCapabilities" => {
            json(IpamCapabilities { requires_mac_address: false, requires_request_replay: false })
        }
        "IpamDriver.GetDefaultAddressSpaces" => {
            json(AddressSpaces { local_default_address_space: "mesh", global_default_address_space: "mesh" })
        }
        "IpamDriver.RequestPool" => with(body, |r| driver.request_pool(r)),
        "IpamDriver.ReleasePool" => with(body, |r| driver.release_pool(r)),
        "IpamDriver.RequestAddress" => with_async(body, |r| driver.request_address(r)).await,
        "IpamDriver.ReleaseAddress" => with(body, |r| driver.release_address(r)),
        "NetworkDriver.CreateNetwork" => with(body, |r| driver.create_network(r)),
        "NetworkDriver.DeleteNetwork" => with_async(body, |r| driver.delete_network(r)).await,
        "NetworkDriver.CreateEndpoint" => with_async(body, |r| driver.create_endpoint(r)).await,
        "NetworkDriver.EndpointOperInfo" => with(body, |r| driver.endpoint_info(r)),
        "NetworkDriver.DeleteEndpoint" => with_async(body, |r| driver.delete_endpoint(r)).await,
        "NetworkDriver.Join" => with_async(body, |r| driver.join(r)).await,
        "NetworkDriver.Leave" => with_async(body, |r| driver.leave(r)).await,
        "NetworkDriver.ProgramExternalConnectivity" | "NetworkDriver.RevokeExternalConnectivity" => {
            with(body, |r| driver.acknowledge(r))
        }
        // Discovery events carry nothing mesh needs: membership is its own.
        "NetworkDriver.DiscoverNew" | "NetworkDriver.DiscoverDelete" => json(Empty {}),
        _ => return None,
    };
    Some(result)
}

/// Decodes the body as `R` and runs `f` on it.
fn with<R: DeserializeOwned, T: Serialize>(
    body: &[u8],
    f: impl FnOnce(R) -> Result<T, CallError>,
) -> Result<serde_json::Value, CallError> {
    decode(body).and_then(f).and_then(json)
}

/// Decodes the body as `R` and runs the async `f` on it.
async fn with_async<R: DeserializeOwned, T: Serialize, F: std::future::Future<Output = Result<T, CallError>>>(
    body: &[u8],
    f: impl FnOnce(R) -> F,
) -> Result<serde_json::Value, CallError> {
    f(decode(body)?).await.and_then(json)
}

fn decode<R: DeserializeOwned>(body: &[u8]) -> Result<R, CallError> {
    serde_json::from_slice(body).map_err(|e| CallError(format!("malformed request: {e}")))
}

fn json<T: Serialize>(value: T) -> Result<serde_json::Value, CallError> {
    serde_json::to_value(value).map_err(|e| CallError(e.to_string()))
}

fn answer<T: Serialize>(status: StatusCode, body: &T) -> Response {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    (status, [(header::CONTENT_TYPE, proto::CONTENT_TYPE)], bytes).into_response()
}
