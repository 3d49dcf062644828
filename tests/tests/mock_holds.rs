//! The mock's holds over HTTP, as the Python suite uses them: a held answer waits until
//! `POST /_mock/holds/NAME/release`, `GET /_mock/holds/NAME` shows it waiting, and a stream held
//! after its first chunk sends that chunk first.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use tollgate_e2e::mock_upstream::{self, MockConfig};

async fn hold_status(base: &str, name: &str) -> Value {
    reqwest::get(format!("{base}/_mock/holds/{name}"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Polls the hold's status until `waiting` is `n` (bounded: about 10 s).
async fn until_waiting(base: &str, name: &str, n: u64) {
    for _ in 0..1000 {
        if hold_status(base, name).await["waiting"] == n {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    panic!("hold {name} never had {n} waiting");
}

async fn release(base: &str, name: &str) {
    let resp = reqwest::Client::new()
        .post(format!("{base}/_mock/holds/{name}/release"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 204);
}

#[tokio::test]
async fn a_held_answer_waits_for_its_release() {
    let mock = mock_upstream::spawn(MockConfig::default()).await.unwrap();
    let base = mock.base_url();
    assert_eq!(
        hold_status(&base, "h1").await,
        json!({"arrived": 0, "waiting": 0, "released": false})
    );
    let call = tokio::spawn({
        let url = format!("{base}/v1/chat/completions");
        async move {
            reqwest::Client::new()
                .post(url)
                .json(&json!({"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "hi [hold=h1]"}]}))
                .send()
                .await
                .unwrap()
        }
    });
    until_waiting(&base, "h1", 1).await;
    assert!(!call.is_finished(), "answered before its release");
    assert_eq!(mock.requests().len(), 1, "recorded while held");
    release(&base, "h1").await;
    let resp = call.await.unwrap();
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "Echo: hi [hold=h1]");
    assert_eq!(
        hold_status(&base, "h1").await,
        json!({"arrived": 1, "waiting": 0, "released": true})
    );
}

#[tokio::test]
async fn a_stream_held_after_its_first_chunk_sends_it_first() {
    let mock = mock_upstream::spawn(MockConfig::default()).await.unwrap();
    let base = mock.base_url();
    let mut resp = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .json(&json!({
            "model": "gpt-4.1-mini",
            "stream": true,
            "messages": [{"role": "user", "content": "one two [hold_after_first=h2]"}]
        }))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.unwrap().unwrap();
    let first = std::str::from_utf8(&first).unwrap();
    assert!(first.starts_with("data: {"), "{first}");
    until_waiting(&base, "h2", 1).await;
    release(&base, "h2").await;
    let mut rest = String::new();
    while let Some(chunk) = resp.chunk().await.unwrap() {
        rest.push_str(std::str::from_utf8(&chunk).unwrap());
    }
    assert!(rest.ends_with("data: [DONE]\n\n"), "{rest}");
}
