//! The floor: a bare pass-through HTTP/1.1 proxy on hyper. It forwards method, path, headers and
//! body to the upstream over pooled keep-alive connections and streams the answer back,
//! frame for frame, parsing nothing. Whatever the gateway costs above it is the price of its
//! own work (parsing, auth, limits, billing, the ledger).

use std::{convert::Infallible, net::SocketAddr};

use http::{Request, Response, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty, combinators::BoxBody};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo},
};
use tokio::net::TcpListener;

type Body = BoxBody<bytes::Bytes, hyper::Error>;

/// Serves the proxy on `listener`, forwarding to `upstream`, until the task is dropped.
pub async fn serve(listener: TcpListener, upstream: SocketAddr) {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let client: Client<HttpConnector, Incoming> =
        Client::builder(TokioExecutor::new()).build(connector);
    let authority = upstream.to_string();
    loop {
        let Ok((tcp, _)) = listener.accept().await else {
            continue;
        };
        let _ = tcp.set_nodelay(true);
        let client = client.clone();
        let authority = authority.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| forward(client.clone(), authority.clone(), req));
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), service)
                .await;
        });
    }
}

/// Binds `addr` and serves the proxy on a task of the current runtime.
pub async fn spawn(
    addr: SocketAddr,
    upstream: SocketAddr,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    Ok((addr, tokio::spawn(serve(listener, upstream))))
}

async fn forward(
    client: Client<HttpConnector, Incoming>,
    authority: String,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let (mut parts, body) = req.into_parts();
    let path = parts
        .uri
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_owned();
    let uri = Uri::builder()
        .scheme("http")
        .authority(authority.as_str())
        .path_and_query(path)
        .build();
    let Ok(uri) = uri else {
        return Ok(bad_gateway());
    };
    parts.uri = uri;
    // Hop-by-hop: the upstream connection is the pool's, not the client's.
    parts.headers.remove(header::CONNECTION);
    match client.request(Request::from_parts(parts, body)).await {
        Ok(response) => Ok(response.map(BodyExt::boxed)),
        Err(_) => Ok(bad_gateway()),
    }
}

fn bad_gateway() -> Response<Body> {
    let mut response = Response::new(
        Empty::new()
            .map_err(|never: Infallible| match never {})
            .boxed(),
    );
    *response.status_mut() = StatusCode::BAD_GATEWAY;
    response
}
