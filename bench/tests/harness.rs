//! The benchmark's own pieces, in-process on port 0: the upstream answers JSON and streams, the
//! floor proxy passes both through unchanged, and every load phase counts what it sent.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{net::SocketAddr, time::Duration};

use tollgate_bench::{
    client::{Connection, Endpoint, Shape},
    load, proxy, upstream,
};

fn endpoint(name: &str, addr: SocketAddr) -> Endpoint {
    Endpoint {
        name: name.into(),
        addr,
        authorization: None,
        path: "/v1/chat/completions".into(),
        model: upstream::MODEL.into(),
        hold_path: format!("{}v1/chat/completions", upstream::HOLD_PREFIX),
        hold_model: upstream::MODEL.into(),
    }
}

async fn start() -> (Endpoint, Endpoint) {
    let local = SocketAddr::from(([127, 0, 0, 1], 0));
    let (up, _) = upstream::spawn(local, Duration::from_secs(600))
        .await
        .unwrap();
    let (px, _) = proxy::spawn(local, up).await.unwrap();
    (endpoint("direct", up), endpoint("proxy", px))
}

async fn body_of(endpoint: &Endpoint, shape: Shape) -> String {
    use http_body_util::BodyExt;
    let tcp = tokio::net::TcpStream::connect(endpoint.addr).await.unwrap();
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(conn);
    let response = sender
        .send_request(endpoint.request(shape, false))
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

#[tokio::test]
async fn the_proxy_passes_json_and_streams_through_unchanged() {
    let (direct, proxy) = start().await;
    for shape in [Shape::Json, Shape::Stream] {
        let straight = body_of(&direct, shape).await;
        assert_eq!(body_of(&proxy, shape).await, straight);
    }
    let json: serde_json::Value =
        serde_json::from_str(&body_of(&direct, Shape::Json).await).unwrap();
    assert_eq!(json["usage"]["total_tokens"], 29);
    let stream = body_of(&direct, Shape::Stream).await;
    assert!(stream.starts_with("data: {"));
    assert!(stream.ends_with("data: [DONE]\n\n"));
    assert_eq!(stream.matches("data: ").count(), upstream::WORDS.len() + 3);
}

#[tokio::test]
async fn every_phase_counts_its_requests() {
    let (direct, proxy) = start().await;
    let both = [direct.clone(), proxy.clone()];
    for shape in [Shape::Json, Shape::Stream] {
        let results = load::sequential(&both, shape, 2, 10, Duration::from_secs(30))
            .await
            .unwrap();
        for r in &results {
            assert_eq!((r.ok, r.errors), (10, 0), "{}", r.name);
            assert_eq!(r.total.len(), 10);
            assert!(r.first_data.max() <= r.total.max());
        }
    }
    let saturated = load::saturate(&proxy, Shape::Stream, 4, Duration::from_secs(30), 40)
        .await
        .unwrap();
    assert_eq!((saturated.ok, saturated.errors), (40, 0));
    let paced = load::fixed_rate(
        &proxy,
        Shape::Json,
        200,
        Duration::from_millis(100),
        4,
        std::process::id(),
    )
    .await
    .unwrap();
    assert_eq!((paced.ok, paced.errors), (20, 0));
    assert!(paced.cpu_seconds >= 0.0);
}

#[tokio::test]
async fn held_streams_stay_open_until_released() {
    let (direct, proxy) = start().await;
    // A held stream has sent its first token and no more until the release.
    let mut connection = Connection::open(proxy.addr).await.unwrap();
    let open = connection
        .start(proxy.request(Shape::Stream, true))
        .await
        .unwrap();
    let mut finishing = tokio::spawn(open.finish());
    // Were it not held, the rest of the stream would follow within microseconds.
    let early = tokio::time::timeout(Duration::from_millis(300), &mut finishing).await;
    assert!(early.is_err(), "the stream ended before it was released");
    load::release(direct.addr).await.unwrap();
    finishing.await.unwrap().unwrap();

    let held = load::hold(
        &proxy,
        20,
        8,
        std::process::id(),
        direct.addr,
        Duration::from_secs(30),
    )
    .await
    .unwrap();
    assert_eq!((held.held, held.finished, held.errors), (20, 20, 0));
    assert!(held.rss_held_kib > 0);
}
