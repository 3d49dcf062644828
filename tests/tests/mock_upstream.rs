//! Light checks of the mock upstream itself, in-process: one answer, one stream read back, one
//! rejected request.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::{Value, json};
use tollgate_e2e::mock_upstream::{self, MockConfig};

async fn mock() -> mock_upstream::MockHandle {
    mock_upstream::spawn(MockConfig {
        api_key: Some("mock-secret".to_owned()),
        addr: None,
    })
    .await
    .unwrap()
}

async fn post(url: &str, body: &Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(url)
        .bearer_auth("mock-secret")
        .json(body)
        .send()
        .await
        .unwrap()
}

#[tokio::test]
async fn non_streaming_openai_answer_echoes_and_counts_words() {
    let mock = mock().await;
    let url = format!("{}/v1/chat/completions", mock.base_url());
    let body = json!({
        "model": "gpt-4.1-mini",
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hello big world [cache=2]"}
        ]
    });
    let resp = post(&url, &body).await;
    assert_eq!(resp.status(), 200);
    let v: Value = resp.json().await.unwrap();
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-4.1-mini");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "Echo: hello big world [cache=2]"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["choices"][0]["logprobs"], Value::Null);
    assert_eq!(v["usage"]["prompt_tokens"], 6);
    assert_eq!(v["usage"]["completion_tokens"], 5);
    assert_eq!(v["usage"]["total_tokens"], 11);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 2);

    let recorded = mock.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].path, "/v1/chat/completions");
    assert_eq!(
        recorded[0].authorization.as_deref(),
        Some("Bearer mock-secret")
    );
    assert_eq!(recorded[0].body, body);
}

#[tokio::test]
async fn deepseek_stream_reads_back_with_reasoning_and_usage_on_the_finish_chunk() {
    let mock = mock().await;
    let url = format!("{}/chat/completions", mock.base_url());
    let resp = post(
        &url,
        &json!({
            "model": "deepseek-v4-flash",
            "messages": [{"role": "user", "content": "hi there"}],
            "stream": true,
            "stream_options": {"include_usage": true}
        }),
    )
    .await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let events: Vec<&str> = text
        .split("\n\n")
        .filter(|e| !e.is_empty())
        .map(|e| e.strip_prefix("data: ").expect("data: framing"))
        .collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let delta = |c: &Value, k: &str| {
        c["choices"][0]["delta"][k]
            .as_str()
            .unwrap_or("")
            .to_owned()
    };
    let content: String = chunks.iter().map(|c| delta(c, "content")).collect();
    let reasoning: String = chunks
        .iter()
        .map(|c| delta(c, "reasoning_content"))
        .collect();
    assert_eq!(content, "Echo: hi there");
    assert_eq!(reasoning, "Thinking about: hi there");
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["usage"]["prompt_tokens"], 2);
    assert_eq!(last["usage"]["completion_tokens"], 3 + 4);
    assert_eq!(
        last["usage"]["completion_tokens_details"]["reasoning_tokens"],
        4
    );
    assert!(
        chunks
            .iter()
            .all(|c| !c["choices"].as_array().unwrap().is_empty())
    );
}

#[tokio::test]
async fn unknown_field_and_bad_key_are_rejected() {
    let mock = mock().await;
    let url = format!("{}/v1/chat/completions", mock.base_url());
    let resp = post(
        &url,
        &json!({
            "model": "gpt-4.1-mini",
            "thinking": {"type": "enabled"},
            "messages": [{"role": "user", "content": "hi"}]
        }),
    )
    .await;
    assert_eq!(resp.status(), 400);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(
        v["error"]["message"],
        "Unrecognized request argument supplied: thinking"
    );
    assert_eq!(v["error"]["type"], "invalid_request_error");

    let resp = reqwest::Client::new()
        .post(&url)
        .bearer_auth("wrong")
        .json(&json!({"model": "gpt-4.1-mini", "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["error"]["code"], "invalid_api_key");
}
