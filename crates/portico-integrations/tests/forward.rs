//! Requests through a gateway to a backend on port 0: what the backend gets
//! of what the client sent.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::BodyExt;
use portico_config::Definitions;
use portico_gateway::{
    Body, ConnInfo, Entry, Gateway, GatewaySettings, Protocol, ServedModes, body,
};
use portico_integrations::{BackendClient, ClientSettings, DnsSettings, Integrations, Resolver};

/// An HTTP/1.1 backend on port 0 answering each request with its method, a
/// space and its body.
async fn echo_backend() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((conn, _)) = listener.accept().await {
            let service = hyper::service::service_fn(
                |req: http::Request<hyper::body::Incoming>| async move {
                    let method = req.method().clone();
                    let body = req.into_body().collect().await?.to_bytes();
                    let mut echo = format!("{method} ").into_bytes();
                    echo.extend_from_slice(&body);
                    Ok::<_, hyper::Error>(http::Response::new(http_body_util::Full::new(
                        Bytes::from(echo),
                    )))
                },
            );
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(conn), service),
            );
        }
    });
    addr
}

/// A gateway serving the API `api` (host `api.test`, stage `prod`) of
/// `routes` to `backend` (the stage variable `backend`).
fn gateway(backend: SocketAddr, routes: &str) -> Gateway<Integrations> {
    let text = format!(
        "[[apis]]\nname = \"api\"\nendpoint = \"regional\"\nregion = \"r\"\nhosts = [\"api.test\"]\n\
         {routes}\n\
         [[apis.stages]]\nname = \"prod\"\nvariables = {{ backend = \"{backend}\" }}\n"
    );
    let definitions =
        Definitions::from_toml_str(&text, "test.toml").unwrap_or_else(|e| panic!("{e}"));
    let resolver = Resolver::new(&DnsSettings {
        nameservers: Some(Vec::new()),
        use_hosts_file: true,
        cache_size: 16,
    })
    .expect("resolver");
    let client = BackendClient::new(&ClientSettings::default(), resolver).expect("client");
    let settings = GatewaySettings {
        node_id: "test".into(),
        max_body_bytes: 1 << 20,
        max_header_bytes: 1 << 20,
        upstream_read_timeout: Duration::from_secs(60),
        upload_timeout: Duration::from_secs(60),
    };
    Gateway::new(settings, Arc::new(definitions), Integrations::new(client))
}

fn conn() -> Arc<ConnInfo> {
    Arc::new(ConnInfo {
        client_addr: "127.0.0.1:50000".parse().expect("addr"),
        local_addr: "127.0.0.1:8080".parse().expect("addr"),
        tls: None,
        protocol: Protocol::Http1,
        default_api: None,
    })
}

/// Sends `req` through `gateway`; the status and body of its answer.
async fn send(gateway: &Gateway<Integrations>, req: http::Request<Body>) -> (u16, String) {
    let resp = gateway
        .handle(req, &conn(), Entry::Public(ServedModes::REGIONAL))
        .await;
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// A body of unknown length, as a chunked HTTP/1.1 body or an HTTP/2 one
/// without `content-length` arrives.
fn streamed(chunks: &'static [&'static str]) -> Body {
    let frames = chunks.iter().map(|c| {
        Ok::<_, portico_gateway::BoxError>(http_body::Frame::data(Bytes::from_static(c.as_bytes())))
    });
    body::boxed(http_body_util::StreamBody::new(futures_util::stream::iter(
        frames,
    )))
}

#[tokio::test]
async fn a_streamed_body_mapped_to_a_get_reaches_the_backend() {
    let backend = echo_backend().await;
    let gateway = gateway(
        backend,
        "[[apis.routes]]\nmethod = \"POST\"\npath = \"/search\"\n\
         [apis.routes.integration]\ntype = \"http\"\nmethod = \"GET\"\n\
         uri = \"http://${stageVariables.backend}/search\"\npass_request_body = true\n",
    );
    let req = http::Request::post("/prod/search")
        .header("host", "api.test")
        .header("transfer-encoding", "chunked")
        .body(streamed(&["{\"q\":", "\"cats\"}"]))
        .expect("request");
    assert_eq!(
        send(&gateway, req).await,
        (200, "GET {\"q\":\"cats\"}".to_owned())
    );
}

#[tokio::test]
async fn a_backend_uri_too_long_for_a_uri_is_414() {
    let backend = echo_backend().await;
    let gateway = gateway(
        backend,
        "[[apis.routes]]\nmethod = \"GET\"\npath = \"/proxy\"\n\
         integration = { type = \"http_proxy\", uri = \"http://${stageVariables.backend}/a/longer/path/than/the/route/s\" }\n\
         [[apis.routes]]\nmethod = \"GET\"\npath = \"/mapped\"\n\
         [apis.routes.integration]\ntype = \"http\"\n\
         uri = \"http://${stageVariables.backend}/m\"\n\
         [apis.routes.integration.request_parameters]\n\
         \"integration.request.querystring.q\" = \"method.request.header.x-q\"\n",
    );
    let too_long = "{\"message\":\"Request-URI Too Long\"}".to_owned();
    // The client's query: under the limit as the client sent it, over it
    // behind the backend's scheme and authority.
    let query = "q".repeat(65_500);
    let req = http::Request::get(format!("/prod/proxy?{query}"))
        .header("host", "api.test")
        .body(body::empty())
        .expect("request");
    assert_eq!(send(&gateway, req).await, (414, too_long.clone()));
    // A header mapped into the query: three bytes a space once encoded.
    let req = http::Request::get("/prod/mapped")
        .header("host", "api.test")
        .header("x-q", format!("a{}b", " ".repeat(30_000)))
        .body(body::empty())
        .expect("request");
    assert_eq!(send(&gateway, req).await, (414, too_long));
    // Short values still go through.
    let req = http::Request::get("/prod/proxy?q=1")
        .header("host", "api.test")
        .body(body::empty())
        .expect("request");
    assert_eq!(send(&gateway, req).await, (200, "GET ".to_owned()));
}
