//! Where a request goes once the edge phases let it through.
//!
//! An origin's upstream runs the route's integration; a PoP's upstream is the
//! backbone link to the API's home origin. The pipeline does not know which.

use std::future::Future;

use http::{Request, Response};

use crate::body::Body;
use crate::context::RequestCtx;
use crate::error::GatewayError;

/// Forwards a routed request and returns the upstream's response head with a streaming body.
///
/// The request's URI is the client's path and query *inside* the stage (the
/// stage prefix and any base path are already removed). Implementations must
/// stream bodies both ways and must stop work promptly when the returned
/// future is dropped (the client went away).
pub trait Upstream: Send + Sync + 'static {
    fn forward(
        &self,
        ctx: &RequestCtx,
        req: Request<Body>,
    ) -> impl Future<Output = Result<Response<Body>, GatewayError>> + Send;
}
