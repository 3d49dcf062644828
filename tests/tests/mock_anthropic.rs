//! Light checks of the mock's Anthropic flavour over HTTP: the headers it demands, its error
//! body, the message object and the named-event stream framing.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use tollgate_e2e::mock_upstream::{self, MockConfig, signature};

async fn mock() -> mock_upstream::MockHandle {
    mock_upstream::spawn(MockConfig {
        api_key: Some("mock-secret".to_owned()),
        addr: None,
    })
    .await
    .unwrap()
}

async fn post(
    mock: &mock_upstream::MockHandle,
    headers: &[(&str, &str)],
    body: &Value,
) -> reqwest::Response {
    let mut request = reqwest::Client::new()
        .post(format!("{}/v1/messages", mock.base_url()))
        .json(body);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    request.send().await.unwrap()
}

const GOOD: [(&str, &str); 2] = [
    ("x-api-key", "mock-secret"),
    ("anthropic-version", "2023-06-01"),
];

fn request(text: &str) -> Value {
    json!({"model": "claude-sonnet-4-5", "max_tokens": 100,
           "system": "be brief",
           "messages": [{"role": "user", "content": text}]})
}

#[tokio::test]
async fn headers_are_demanded_and_errors_have_anthropics_shape() {
    let mock = mock().await;
    let resp = post(&mock, &[("x-api-key", "wrong"), GOOD[1]], &request("hi")).await;
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["type"], "error");
    assert_eq!(v["error"]["type"], "authentication_error");
    assert!(v["request_id"].as_str().unwrap().starts_with("req_"));

    let resp = post(&mock, &GOOD[..1], &request("hi")).await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["error"]["message"],
        "anthropic-version: header is required"
    );

    let resp = post(&mock, &GOOD, &request("hi [status=529]")).await;
    assert_eq!(resp.status(), 529);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["type"], "overloaded_error");

    let recorded = mock.requests();
    assert_eq!(recorded.len(), 3);
    assert_eq!(recorded[0].headers["x-api-key"], "wrong");
    assert_eq!(recorded[2].headers["anthropic-version"], "2023-06-01");
}

#[tokio::test]
async fn a_message_with_thinking_and_cache_usage() {
    let mock = mock().await;
    let mut body = request("hello big world [cache=2] [cache_write=1]");
    body["max_tokens"] = json!(4000);
    body["thinking"] = json!({"type": "enabled", "budget_tokens": 1024});
    let resp = post(&mock, &GOOD, &body).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("msg_"));
    assert_eq!(v["type"], "message");
    let thinking = "Thinking about: hello big world [cache=2] [cache_write=1]";
    assert_eq!(
        v["content"],
        json!([
            {"type": "thinking", "thinking": thinking, "signature": signature(thinking)},
            {"type": "text", "text": "Echo: hello big world [cache=2] [cache_write=1]"}
        ])
    );
    assert_eq!(v["stop_reason"], "end_turn");
    // 2 system words + 5 user words = 7 prompt tokens: 2 read, 1 written, 4 plain.
    assert_eq!(v["usage"]["input_tokens"], 4);
    assert_eq!(v["usage"]["cache_read_input_tokens"], 2);
    assert_eq!(v["usage"]["cache_creation_input_tokens"], 1);
    assert_eq!(v["usage"]["output_tokens"], 6 + 7);
    assert_eq!(v["usage"]["output_tokens_details"]["thinking_tokens"], 7);
}

#[tokio::test]
async fn streams_are_named_events_without_done() {
    let mock = mock().await;
    let mut body = request("one two");
    body["stream"] = json!(true);
    let resp = post(&mock, &GOOD, &body).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let events: Vec<(&str, Value)> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| {
            let (name, data) = e.split_once('\n').unwrap();
            (
                name.strip_prefix("event: ").unwrap(),
                serde_json::from_str(data.strip_prefix("data: ").unwrap()).unwrap(),
            )
        })
        .collect();
    let names: Vec<&str> = events.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        [
            "message_start",
            "content_block_start",
            "ping",
            "content_block_delta",
            "content_block_delta",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop"
        ]
    );
    assert!(events.iter().all(|(n, d)| d["type"] == *n));
    assert_eq!(events[0].1["message"]["usage"]["input_tokens"], 4);
    assert_eq!(events[7].1["delta"]["stop_reason"], "end_turn");
    assert_eq!(events[7].1["usage"], json!({"output_tokens": 3}));
    assert!(!text.contains("[DONE]"));
}
