//! `OpenAiClient` against `MockServer` on loopback: replies, retries, timeouts, JSON mode,
//! limits and accounting.

use std::sync::Arc;
use std::time::{Duration, Instant};

use agentd_llm::testing::{MockReply, MockServer};
use agentd_llm::{
    ChatRequest, JsonMode, LlmClient, LlmError, Message, OpenAiClient, Price, ProviderConfig,
    ResponseFormat, Usage, count_prompt_tokens, estimate_tokens,
};
use serde_json::json;

/// A config for `server` with fast retries.
fn config(server: &MockServer) -> ProviderConfig {
    let mut config = ProviderConfig::new(server.base_url(), "mock-model");
    config.name = "mock".to_owned();
    config.backoff_base_ms = 1;
    config.backoff_max_ms = 5;
    config.timeout_secs = 10.0;
    config
}

fn client(config: ProviderConfig) -> OpenAiClient {
    OpenAiClient::new(config).unwrap()
}

fn ask(text: &str) -> ChatRequest {
    ChatRequest::new(vec![Message::system("You are terse."), Message::user(text)])
}

#[tokio::test]
async fn happy_path_uses_server_usage_and_prices_it() {
    let server = MockServer::sequence(vec![MockReply::TextWithUsage(
        "Paris".into(),
        Usage::new(1000, 500),
    )]);
    let mut config = config(&server);
    config.price = Some(Price {
        prompt_per_million_usd: 1.0,
        completion_per_million_usd: 2.0,
    });
    let client = client(config);
    assert_eq!((client.provider(), client.model()), ("mock", "mock-model"));

    let response = client
        .chat(
            &ask("Capital of France?")
                .with_max_tokens(16)
                .with_temperature(0.0),
        )
        .await
        .unwrap();
    assert_eq!(response.content, "Paris");
    assert_eq!(response.model, "mock-model");
    assert_eq!(response.usage, Usage::new(1000, 500));
    assert!(!response.usage_estimated);
    assert_eq!(response.finish_reason.as_deref(), Some("stop"));
    assert_eq!(response.attempts, 1);
    assert!(
        (response.cost_usd - 0.002).abs() < 1e-12,
        "{}",
        response.cost_usd
    );
    assert!(response.latency > Duration::ZERO);

    let body = &server.bodies()[0];
    assert_eq!(body["model"], "mock-model");
    assert_eq!(
        body["messages"][1],
        json!({"role": "user", "content": "Capital of France?"})
    );
    assert_eq!(body["max_tokens"], 16);
    assert_eq!(body["temperature"], 0.0);
    assert!(body.get("response_format").is_none());
    assert_eq!(server.received()[0].header("authorization"), None);
}

#[tokio::test]
async fn missing_usage_is_estimated_with_the_token_counter() {
    let server = MockServer::with(|_| MockReply::TextWithoutUsage("abcdefgh".into()));
    let request = ask("abcd");
    let response = client(config(&server)).chat(&request).await.unwrap();
    assert!(response.usage_estimated);
    assert_eq!(
        response.usage.prompt_tokens,
        count_prompt_tokens(&estimate_tokens, &request.messages)
    );
    assert_eq!(response.usage.completion_tokens, 2);
    assert_eq!(response.cost_usd, 0.0);

    let words = Arc::new(|text: &str| text.split_whitespace().count() as u32 * 100);
    let response = client(config(&server))
        .with_token_counter(words)
        .chat(&request)
        .await
        .unwrap();
    assert_eq!(response.usage.completion_tokens, 100);
}

#[tokio::test]
async fn request_model_overrides_the_default() {
    let server = MockServer::fixed("ok", Duration::ZERO);
    let response = client(config(&server))
        .chat(&ask("hi").with_model("other"))
        .await
        .unwrap();
    assert_eq!(response.model, "other");
    assert_eq!(server.bodies()[0]["model"], "other");
}

#[tokio::test]
async fn server_errors_are_retried_until_success() {
    let server = MockServer::sequence(vec![
        MockReply::Status(500),
        MockReply::Status(502),
        MockReply::text("ok"),
    ]);
    let response = client(config(&server)).chat(&ask("hi")).await.unwrap();
    assert_eq!(response.content, "ok");
    assert_eq!(response.attempts, 3);
    assert_eq!(server.requests(), 3);
}

#[tokio::test]
async fn persistent_server_errors_exhaust_retries() {
    let server = MockServer::with(|_| MockReply::Status(500));
    let mut config = config(&server);
    config.max_retries = 2;
    let error = client(config).chat(&ask("hi")).await.unwrap_err();
    let LlmError::RetriesExhausted { attempts, last } = &error else {
        panic!("{error:?}")
    };
    assert_eq!(*attempts, 3);
    assert!(
        matches!(**last, LlmError::Status { status: 500, .. }),
        "{last:?}"
    );
    assert_eq!(server.requests(), 3);
    assert!(error.to_string().contains("HTTP 500"), "{error}");
}

#[tokio::test]
async fn client_errors_fail_at_once_with_the_body() {
    let server = MockServer::sequence(vec![
        MockReply::Error {
            status: 400,
            body: r#"{"error":"context length exceeded"}"#.into(),
            retry_after: None,
        },
        MockReply::text("never reached"),
    ]);
    let error = client(config(&server)).chat(&ask("hi")).await.unwrap_err();
    assert_eq!(
        error,
        LlmError::Status {
            status: 400,
            body: r#"{"error":"context length exceeded"}"#.into()
        }
    );
    assert_eq!(server.requests(), 1);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let server = MockServer::sequence(vec![MockReply::retry_after(429, 1), MockReply::text("ok")]);
    let started = Instant::now();
    let response = client(config(&server)).chat(&ask("hi")).await.unwrap();
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    assert!(
        response.latency >= Duration::from_millis(900),
        "{:?}",
        response.latency
    );
    assert_eq!(response.attempts, 2);
}

#[tokio::test]
async fn garbage_answers_are_invalid_and_retried() {
    let server = MockServer::sequence(vec![MockReply::Garbage, MockReply::text("ok")]);
    let response = client(config(&server)).chat(&ask("hi")).await.unwrap();
    assert_eq!((response.content.as_str(), response.attempts), ("ok", 2));

    let server = MockServer::with(|_| MockReply::Garbage);
    let mut config = config(&server);
    config.max_retries = 1;
    let error = client(config).chat(&ask("hi")).await.unwrap_err();
    assert!(
        matches!(&error, LlmError::RetriesExhausted { attempts: 2, .. }),
        "{error:?}"
    );
    let LlmError::InvalidResponse(message) = error.root_cause() else {
        panic!("{error:?}")
    };
    assert!(
        message.contains("not JSON") && message.contains("/v1/chat/completions"),
        "{message}"
    );
}

#[tokio::test]
async fn hanging_server_times_out() {
    let server = MockServer::with(|_| MockReply::Hang);
    let mut config = config(&server);
    config.timeout_secs = 0.3;
    config.max_retries = 1;
    let started = Instant::now();
    let error = client(config).chat(&ask("hi")).await.unwrap_err();
    assert!(
        started.elapsed() >= Duration::from_millis(600),
        "two attempts of 0.3 s: {:?}",
        started.elapsed()
    );
    let LlmError::RetriesExhausted { attempts: 2, last } = &error else {
        panic!("{error:?}")
    };
    assert_eq!(
        **last,
        LlmError::Timeout {
            after: Duration::from_millis(300)
        }
    );
    assert!(error.to_string().contains("timeout_secs"), "{error}");
}

#[tokio::test]
async fn closed_connections_are_retried() {
    let server = MockServer::sequence(vec![MockReply::Close, MockReply::text("ok")]);
    let response = client(config(&server)).chat(&ask("hi")).await.unwrap();
    assert_eq!((response.content.as_str(), response.attempts), ("ok", 2));
}

#[tokio::test]
async fn unreachable_server_is_a_connect_error_naming_the_url() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut config = ProviderConfig::new(format!("http://127.0.0.1:{port}/v1"), "m");
    config.max_retries = 1;
    config.backoff_base_ms = 1;
    let error = OpenAiClient::new(config)
        .unwrap()
        .chat(&ask("hi"))
        .await
        .unwrap_err();
    let LlmError::Connect(message) = error.root_cause() else {
        panic!("{error:?}")
    };
    assert!(
        message.contains(&format!("127.0.0.1:{port}/v1/chat/completions")),
        "{message}"
    );
    assert!(matches!(
        error,
        LlmError::RetriesExhausted { attempts: 2, .. }
    ));
}

#[tokio::test]
async fn json_schema_reaches_the_server() {
    let server = MockServer::fixed("{}", Duration::ZERO);
    let schema = json!({"type": "object", "properties": {"answer": {"type": "string"}}});
    let request = ask("hi").with_json_schema("answer", schema.clone());
    client(config(&server)).chat(&request).await.unwrap();
    client(config(&server))
        .chat(&ask("hi").with_response_format(ResponseFormat::JsonObject))
        .await
        .unwrap();
    let bodies = server.bodies();
    assert_eq!(
        bodies[0]["response_format"],
        json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": schema, "strict": true}})
    );
    assert_eq!(bodies[1]["response_format"], json!({"type": "json_object"}));
}

#[tokio::test]
async fn json_mode_off_never_sends_response_format() {
    let server = MockServer::fixed("{}", Duration::ZERO);
    let mut config = config(&server);
    config.json_mode = JsonMode::Off;
    client(config)
        .chat(&ask("hi").with_response_format(ResponseFormat::JsonObject))
        .await
        .unwrap();
    assert!(server.bodies()[0].get("response_format").is_none());
}

#[tokio::test]
async fn rejected_response_format_is_dropped_and_remembered() {
    let server = MockServer::with(|request| {
        if request.body.get("response_format").is_some() {
            MockReply::Error {
                status: 400,
                body: r#"{"error":{"message":"'response_format' of type 'json_schema' is not supported"}}"#.into(),
                retry_after: None,
            }
        } else {
            MockReply::text("{\"answer\": \"ok\"}")
        }
    });
    let client = client(config(&server));
    let request = ask("hi").with_json_schema("answer", json!({"type": "object"}));
    let response = client.chat(&request).await.unwrap();
    assert_eq!(response.attempts, 2);
    // A clone shares what was learnt about the server.
    let response = client.clone().chat(&request).await.unwrap();
    assert_eq!(response.attempts, 1);
    let bodies = server.bodies();
    assert_eq!(bodies.len(), 3);
    assert!(bodies[0].get("response_format").is_some());
    assert!(bodies[1].get("response_format").is_none());
    assert!(bodies[2].get("response_format").is_none());
}

#[tokio::test]
async fn concurrency_limit_bounds_requests_in_flight() {
    let server = MockServer::fixed("ok", Duration::from_millis(300));
    let mut config = config(&server);
    config.concurrency = 2;
    let client = client(config);
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..6 {
        let client = client.clone();
        calls.spawn(async move { client.chat(&ask(&format!("question {i}"))).await });
    }
    while let Some(outcome) = calls.join_next().await {
        assert_eq!(outcome.unwrap().unwrap().content, "ok");
    }
    assert_eq!(server.requests(), 6);
    assert_eq!(
        server.max_in_flight(),
        2,
        "at most 2 in flight, and the 2 slots were used"
    );
}

#[tokio::test]
async fn cancelled_calls_release_their_slot() {
    let server = MockServer::sequence(vec![MockReply::Hang, MockReply::text("ok")]);
    let mut config = config(&server);
    config.concurrency = 1;
    let client = client(config);
    let cancelled =
        tokio::time::timeout(Duration::from_millis(200), client.chat(&ask("first"))).await;
    assert!(cancelled.is_err(), "the hanging call must still be pending");
    let response = tokio::time::timeout(Duration::from_secs(5), client.chat(&ask("second")))
        .await
        .expect("the slot of the cancelled call must be free")
        .unwrap();
    assert_eq!(response.content, "ok");
}

#[tokio::test]
async fn tokens_per_minute_delays_calls_over_budget() {
    let server = MockServer::with(|_| MockReply::TextWithUsage("ok".into(), Usage::new(50, 10)));
    let mut config = config(&server);
    config.tokens_per_minute = Some(600); // 10 tokens per second
    let client = client(config);
    let started = Instant::now();
    // The prompt of `ask("hi")` is estimated at 14 tokens; each answer uses 60.
    client.chat(&ask("hi").with_max_tokens(540)).await.unwrap(); // reserves 554, settles to 60: 540 left
    client.chat(&ask("hi").with_max_tokens(100)).await.unwrap(); // reserves 114, settles to 60: 480 left
    client.chat(&ask("hi").with_max_tokens(476)).await.unwrap(); // reserves 490, 10 short: waits ≈1 s
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn api_key_is_sent_as_bearer() {
    let server = MockServer::fixed("ok", Duration::ZERO);
    client(config(&server))
        .with_api_key("sk-test")
        .chat(&ask("hi"))
        .await
        .unwrap();
    assert_eq!(
        server.received()[0].header("Authorization"),
        Some("Bearer sk-test")
    );
}

#[tokio::test]
async fn missing_api_key_variable_is_a_config_error_naming_it() {
    let mut config = ProviderConfig::new("http://127.0.0.1:9/v1", "m");
    config.api_key_env = Some("AGENTD_LLM_TEST_KEY_THAT_IS_NOT_SET".to_owned());
    let error = OpenAiClient::new(config).unwrap_err();
    let LlmError::Config(message) = &error else {
        panic!("{error:?}")
    };
    assert!(
        message.contains("AGENTD_LLM_TEST_KEY_THAT_IS_NOT_SET"),
        "{message}"
    );
    assert!(!error.is_retryable());
}
