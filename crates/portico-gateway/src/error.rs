//! The gateway's one error type and the one place errors become responses.
//!
//! Phases never write error responses themselves: they return a
//! [`GatewayError`], and [`GatewayError::to_response`] maps its kind to a
//! status and an API Gateway style JSON body with an exhaustive `match` (no
//! catch-all arm), so a new kind cannot silently become a 500.

use std::time::Duration;

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{Body, BoxError, full};

/// What went wrong, as far as the client's answer is concerned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErrorKind {
    /// The request could not be understood (bad path encoding, bad Host, ...).
    BadRequest,
    /// A required credential was missing or wrong.
    Forbidden,
    /// No API, stage or route matches.
    NotFound,
    /// The path matches a route, but not for this method.
    MethodNotAllowed { allow: String },
    /// The request body exceeds the payload limit.
    PayloadTooLarge,
    /// The request header section exceeds its limit.
    HeaderTooLarge,
    /// The client stopped sending its request body (`[limits] upload_timeout_ms`).
    RequestTimeout,
    /// The backend URI the request's values render is longer than a URI
    /// can be sent.
    UriTooLong,
    /// A throttle refused the request.
    TooManyRequests { retry_after: Duration },
    /// A usage plan quota is spent.
    LimitExceeded { retry_after: Duration },
    /// The request arrived in TLS early data and is not safe to replay.
    TooEarly,
    /// The backend (or the origin behind the backbone) answered badly or not at all.
    BadGateway,
    /// No upstream is reachable right now.
    ServiceUnavailable,
    /// The integration did not answer within its timeout.
    GatewayTimeout,
    /// A bug or an impossible state inside Portico.
    Internal,
}

impl ErrorKind {
    /// A short stable name for logs.
    pub fn as_str(&self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "bad_request",
            ErrorKind::Forbidden => "forbidden",
            ErrorKind::NotFound => "not_found",
            ErrorKind::MethodNotAllowed { .. } => "method_not_allowed",
            ErrorKind::PayloadTooLarge => "payload_too_large",
            ErrorKind::HeaderTooLarge => "header_too_large",
            ErrorKind::RequestTimeout => "request_timeout",
            ErrorKind::UriTooLong => "uri_too_long",
            ErrorKind::TooManyRequests { .. } => "too_many_requests",
            ErrorKind::LimitExceeded { .. } => "limit_exceeded",
            ErrorKind::TooEarly => "too_early",
            ErrorKind::BadGateway => "bad_gateway",
            ErrorKind::ServiceUnavailable => "service_unavailable",
            ErrorKind::GatewayTimeout => "gateway_timeout",
            ErrorKind::Internal => "internal",
        }
    }
}

/// Who caused the error: decides log level and is logged with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorSource {
    Client,
    Backbone,
    Integration,
    Internal,
}

impl ErrorSource {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorSource::Client => "client",
            ErrorSource::Backbone => "backbone",
            ErrorSource::Integration => "integration",
            ErrorSource::Internal => "internal",
        }
    }
}

/// An error on its way to becoming a client response.
#[derive(Debug, thiserror::Error)]
#[error("{} ({}){}", kind.as_str(), source_of.as_str(), cause.as_ref().map(|c| format!(": {c}")).unwrap_or_default())]
pub struct GatewayError {
    pub kind: ErrorKind,
    pub source_of: ErrorSource,
    pub cause: Option<BoxError>,
    /// Headers the response carries besides those of its kind (`RateLimit` on a 429).
    pub headers: Vec<(http::HeaderName, HeaderValue)>,
}

impl GatewayError {
    pub fn new(kind: ErrorKind, source_of: ErrorSource) -> Self {
        Self {
            kind,
            source_of,
            cause: None,
            headers: Vec::new(),
        }
    }

    pub fn client(kind: ErrorKind) -> Self {
        Self::new(kind, ErrorSource::Client)
    }

    pub fn with_header(mut self, name: http::HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn with_cause(mut self, cause: impl Into<BoxError>) -> Self {
        self.cause = Some(cause.into());
        self
    }

    /// Status and the client-facing message for this error.
    pub fn status_and_message(&self) -> (StatusCode, &'static str) {
        match &self.kind {
            ErrorKind::BadRequest => (StatusCode::BAD_REQUEST, "Bad Request"),
            ErrorKind::Forbidden => (StatusCode::FORBIDDEN, "Forbidden"),
            ErrorKind::NotFound => (StatusCode::NOT_FOUND, "Not Found"),
            ErrorKind::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed")
            }
            ErrorKind::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "Request Too Long"),
            ErrorKind::HeaderTooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "Request Header Fields Too Large",
            ),
            ErrorKind::UriTooLong => (StatusCode::URI_TOO_LONG, "Request-URI Too Long"),
            ErrorKind::RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "Request Timeout"),
            ErrorKind::TooManyRequests { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, "Too Many Requests")
            }
            ErrorKind::LimitExceeded { .. } => (StatusCode::TOO_MANY_REQUESTS, "Limit Exceeded"),
            ErrorKind::TooEarly => (
                StatusCode::from_u16(425).unwrap_or(StatusCode::BAD_REQUEST),
                "Too Early",
            ),
            ErrorKind::BadGateway => (StatusCode::BAD_GATEWAY, "Bad Gateway"),
            ErrorKind::ServiceUnavailable => {
                (StatusCode::SERVICE_UNAVAILABLE, "Service Unavailable")
            }
            ErrorKind::GatewayTimeout => {
                (StatusCode::GATEWAY_TIMEOUT, "Endpoint request timed out")
            }
            ErrorKind::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "Internal server error"),
        }
    }

    /// Builds the client response: JSON `{"message": ...}` plus the headers the kind calls for.
    pub fn to_response(&self) -> Response<Body> {
        let (status, message) = self.status_and_message();
        let mut resp = Response::new(full(format!("{{\"message\":\"{message}\"}}")));
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            "x-amzn-errortype",
            HeaderValue::from_static(error_type(&self.kind)),
        );
        match &self.kind {
            ErrorKind::MethodNotAllowed { allow } => {
                if let Ok(v) = HeaderValue::from_str(allow) {
                    headers.insert(header::ALLOW, v);
                }
            }
            ErrorKind::TooManyRequests { retry_after }
            | ErrorKind::LimitExceeded { retry_after } => {
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            }
            ErrorKind::BadRequest
            | ErrorKind::Forbidden
            | ErrorKind::NotFound
            | ErrorKind::PayloadTooLarge
            | ErrorKind::HeaderTooLarge
            | ErrorKind::UriTooLong
            | ErrorKind::RequestTimeout
            | ErrorKind::TooEarly
            | ErrorKind::BadGateway
            | ErrorKind::ServiceUnavailable
            | ErrorKind::GatewayTimeout
            | ErrorKind::Internal => {}
        }
        for (name, value) in &self.headers {
            headers.insert(name, value.clone());
        }
        resp
    }
}

/// API Gateway's `x-amzn-ErrorType` value for each kind.
fn error_type(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::BadRequest => "BadRequestException",
        ErrorKind::Forbidden => "ForbiddenException",
        ErrorKind::NotFound => "NotFoundException",
        ErrorKind::MethodNotAllowed { .. } => "MethodNotAllowedException",
        ErrorKind::PayloadTooLarge => "RequestTooLongException",
        ErrorKind::HeaderTooLarge => "RequestHeaderFieldsTooLargeException",
        ErrorKind::UriTooLong => "RequestUriTooLongException",
        ErrorKind::RequestTimeout => "RequestTimeoutException",
        ErrorKind::TooManyRequests { .. } => "TooManyRequestsException",
        ErrorKind::LimitExceeded { .. } => "LimitExceededException",
        ErrorKind::TooEarly => "TooEarlyException",
        ErrorKind::BadGateway => "BadGatewayException",
        ErrorKind::ServiceUnavailable => "ServiceUnavailableException",
        ErrorKind::GatewayTimeout => "IntegrationTimeoutException",
        ErrorKind::Internal => "InternalServerErrorException",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn render(kind: ErrorKind) -> (u16, String, http::HeaderMap) {
        let resp = GatewayError::client(kind).to_response();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await.unwrap().to_bytes();
        (
            parts.status.as_u16(),
            String::from_utf8(body.to_vec()).unwrap(),
            parts.headers,
        )
    }

    #[tokio::test]
    async fn every_kind_maps_to_its_status_and_body() {
        let second = Duration::from_millis(1500);
        let cases = [
            (ErrorKind::BadRequest, 400, "Bad Request"),
            (ErrorKind::Forbidden, 403, "Forbidden"),
            (ErrorKind::NotFound, 404, "Not Found"),
            (
                ErrorKind::MethodNotAllowed {
                    allow: "GET".into(),
                },
                405,
                "Method Not Allowed",
            ),
            (ErrorKind::PayloadTooLarge, 413, "Request Too Long"),
            (
                ErrorKind::HeaderTooLarge,
                431,
                "Request Header Fields Too Large",
            ),
            (ErrorKind::UriTooLong, 414, "Request-URI Too Long"),
            (ErrorKind::RequestTimeout, 408, "Request Timeout"),
            (
                ErrorKind::TooManyRequests {
                    retry_after: second,
                },
                429,
                "Too Many Requests",
            ),
            (
                ErrorKind::LimitExceeded {
                    retry_after: second,
                },
                429,
                "Limit Exceeded",
            ),
            (ErrorKind::TooEarly, 425, "Too Early"),
            (ErrorKind::BadGateway, 502, "Bad Gateway"),
            (ErrorKind::ServiceUnavailable, 503, "Service Unavailable"),
            (ErrorKind::GatewayTimeout, 504, "Endpoint request timed out"),
            (ErrorKind::Internal, 500, "Internal server error"),
        ];
        for (kind, status, message) in cases {
            let (got_status, body, headers) = render(kind.clone()).await;
            assert_eq!(got_status, status, "{kind:?}");
            assert_eq!(body, format!("{{\"message\":\"{message}\"}}"), "{kind:?}");
            assert_eq!(headers["content-type"], "application/json");
        }
    }

    #[tokio::test]
    async fn kinds_add_their_headers() {
        let (_, _, headers) = render(ErrorKind::MethodNotAllowed {
            allow: "GET, POST".into(),
        })
        .await;
        assert_eq!(headers["allow"], "GET, POST");
        let (_, _, headers) = render(ErrorKind::TooManyRequests {
            retry_after: Duration::from_millis(1500),
        })
        .await;
        assert_eq!(headers["retry-after"], "2");
        assert_eq!(headers["x-amzn-errortype"], "TooManyRequestsException");
    }
}
