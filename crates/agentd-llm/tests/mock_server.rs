//! `MockServer` itself: routes, keep-alive, recording and raw HTTP handling.

use std::time::Duration;

use agentd_llm::testing::{MockReply, MockServer};
use agentd_llm::{ChatRequest, LlmClient, Message, OpenAiClient, ProviderConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Sends raw HTTP and reads until the server closes the connection.
async fn raw_exchange(server: &MockServer, request: &str) -> String {
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_string(&mut response))
        .await
        .unwrap()
        .unwrap();
    response
}

#[tokio::test]
async fn health_models_and_unknown_routes() {
    let server = MockServer::fixed("ok", Duration::ZERO);
    let health = raw_exchange(
        &server,
        "GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(health.starts_with("HTTP/1.1 200 OK\r\n"), "{health}");
    let models = raw_exchange(
        &server,
        "GET /v1/models HTTP/1.1\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(models.contains("\"id\":\"mock-model\""), "{models}");
    let missing = raw_exchange(
        &server,
        "GET /v2/nothing HTTP/1.1\r\nconnection: close\r\n\r\n",
    )
    .await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    assert_eq!(server.requests(), 0, "only chat requests are counted");
}

#[tokio::test]
async fn several_requests_share_one_connection() {
    let server = MockServer::fixed("ok", Duration::ZERO);
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}]}"#;
    let one = format!(
        "POST /v1/chat/completions HTTP/1.1\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let last = format!(
        "POST /v1/chat/completions?x=1 HTTP/1.1\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let response = raw_exchange(&server, &format!("{one}{one}{last}")).await;
    assert_eq!(response.matches("HTTP/1.1 200 OK").count(), 3, "{response}");
    assert_eq!(server.requests(), 3);
    assert_eq!(server.connections(), 1);
    assert_eq!(server.received()[2].path, "/v1/chat/completions");
    assert_eq!(server.received()[0].last_user_message(), Some("hi"));
}

#[tokio::test]
async fn client_reuses_its_connection() {
    let server = MockServer::fixed("ok", Duration::ZERO);
    let client = OpenAiClient::new(ProviderConfig::new(server.base_url(), "m")).unwrap();
    for _ in 0..5 {
        client
            .chat(&ChatRequest::new(vec![Message::user("hi")]))
            .await
            .unwrap();
    }
    assert_eq!(server.requests(), 5);
    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn behaviour_sees_requests_and_recording_can_be_turned_off() {
    let server = MockServer::with(|request| {
        MockReply::text(format!(
            "#{}: {}",
            request.seq,
            request.last_user_message().unwrap_or("?")
        ))
    });
    let client = OpenAiClient::new(ProviderConfig::new(server.base_url(), "m")).unwrap();
    let answer = client
        .chat(&ChatRequest::new(vec![Message::user("ping")]))
        .await
        .unwrap();
    assert_eq!(answer.content, "#0: ping");
    assert!(!answer.usage_estimated, "Text replies carry usage");
    server.set_recording(false);
    let answer = client
        .chat(&ChatRequest::new(vec![Message::user("pong")]))
        .await
        .unwrap();
    assert_eq!(answer.content, "#1: pong");
    assert_eq!(server.bodies().len(), 1);
    assert_eq!(server.requests(), 2);
}

#[tokio::test]
async fn exhausted_sequence_answers_500_saying_so() {
    let server = MockServer::sequence(vec![]);
    let body = "{}";
    let response = raw_exchange(
        &server,
        &format!("POST /v1/chat/completions HTTP/1.1\r\ncontent-length: 2\r\nconnection: close\r\n\r\n{body}"),
    )
    .await;
    assert!(response.starts_with("HTTP/1.1 500"), "{response}");
    assert!(response.contains("used up"), "{response}");
}

#[tokio::test]
async fn dropping_the_server_closes_hanging_connections() {
    let server = MockServer::with(|_| MockReply::Hang);
    let mut stream = TcpStream::connect(server.addr()).await.unwrap();
    stream
        .write_all(b"POST /v1/chat/completions HTTP/1.1\r\ncontent-length: 0\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(server.requests(), 1);
    drop(server);
    let mut rest = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut rest)).await;
    assert!(
        read.is_ok(),
        "the connection must be closed when the server is dropped"
    );
    assert!(rest.is_empty());
}
