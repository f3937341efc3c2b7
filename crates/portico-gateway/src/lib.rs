//! Portico's request pipeline, shared by PoPs and origins.
//!
//! Protocol adapters (h1/h2/h3, the backbone) turn what they receive into an
//! `http::Request<Body>` and call [`Gateway::handle`]; the gateway routes it,
//! applies the edge phases and hands it to its [`Upstream`]. Errors from any
//! phase go to one sink, [`GatewayError::to_response`].
#![forbid(unsafe_code)]

pub mod body;
pub mod cache;
pub mod context;
mod cors;
pub mod error;
mod gateway;
pub mod headers;
pub mod keys;
pub mod limits;
pub mod log;
pub mod router;
pub mod throttle;
mod upload;
pub mod upstream;
pub mod workers;

pub use body::{Body, BoxError};
pub use context::{ConnInfo, Principal, PrincipalKind, Protocol, RequestCtx, TlsInfo};
pub use error::{ErrorKind, ErrorSource, GatewayError};
pub use gateway::{Entry, Gateway, GatewaySettings};
pub use router::{Resolved, RoutingTable, ServedModes};
pub use upstream::Upstream;
