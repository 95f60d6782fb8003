//! [`MockServer`]: an OpenAI-compatible HTTP server on loopback, for tests and benchmarks.
//!
//! Hand-written HTTP/1.1 on a tokio `TcpListener` (request line, headers, `Content-Length`
//! body; several requests per connection), so it costs nothing to start and has no
//! dependencies. A behaviour closure turns each chat request into a [`MockReply`]: text,
//! an error status, garbage, a hang or a dropped connection. The server records what it
//! receives and how many requests were in flight at once.
//!
//! Routes: `POST /v1/chat/completions` (also `/chat/completions`), `GET /health` → 200,
//! `GET /v1/models` → the served model; anything else → 404.
//!
//! ```
//! use agentd_llm::testing::{MockReply, MockServer};
//! use agentd_llm::{ChatRequest, LlmClient, Message, OpenAiClient, ProviderConfig};
//! # tokio::runtime::Runtime::new().unwrap().block_on(async {
//! let server = MockServer::sequence(vec![MockReply::Status(503), MockReply::text("hello")]);
//! let mut config = ProviderConfig::new(server.base_url(), "mock-model");
//! config.backoff_base_ms = 1;
//! let client = OpenAiClient::new(config).unwrap();
//! let response = client.chat(&ChatRequest::new(vec![Message::user("hi")])).await.unwrap();
//! assert_eq!((response.content.as_str(), response.attempts), ("hello", 2));
//! assert_eq!(server.bodies()[1]["messages"][0]["content"], "hi");
//! # });
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::{JoinHandle, JoinSet};

use crate::tokens::{count_prompt_tokens, estimate_tokens};
use crate::{Message, Usage};

/// What the server does with one chat request.
#[derive(Debug, Clone, PartialEq)]
pub enum MockReply {
    /// 200 with a chat completion of this content; usage estimated with
    /// [`crate::estimate_tokens`] (prompt counted like [`crate::count_prompt_tokens`]).
    Text(String),
    /// 200 with a chat completion of this content and exactly this usage.
    TextWithUsage(String, Usage),
    /// 200 with a chat completion of this content and no `usage` field.
    TextWithoutUsage(String),
    /// This status with an OpenAI-style JSON error body.
    Status(u16),
    /// This status with this body and, when given, a `Retry-After` header.
    Error {
        /// HTTP status code.
        status: u16,
        /// Response body, sent as is.
        body: String,
        /// Value of the `Retry-After` header.
        retry_after: Option<String>,
    },
    /// 200 with a body that is not JSON.
    Garbage,
    /// Never answer (until the client gives up or the server is dropped).
    Hang,
    /// Close the connection without answering.
    Close,
    /// Wait, then do the inner reply.
    Delayed(Duration, Box<MockReply>),
}

impl MockReply {
    /// [`MockReply::Text`].
    pub fn text(content: impl Into<String>) -> Self {
        MockReply::Text(content.into())
    }

    /// `status` (e.g. 429 or 503) with `Retry-After: seconds`.
    pub fn retry_after(status: u16, seconds: u64) -> Self {
        MockReply::Error {
            status,
            body: error_body(status, "mock: slow down").to_string(),
            retry_after: Some(seconds.to_string()),
        }
    }

    /// This reply after `latency`.
    pub fn after(self, latency: Duration) -> Self {
        if latency.is_zero() {
            self
        } else {
            MockReply::Delayed(latency, Box::new(self))
        }
    }
}

/// A request the server received.
#[derive(Debug, Clone, PartialEq)]
pub struct MockRequest {
    /// Position among the chat requests this server received, from 0.
    pub seq: usize,
    /// HTTP method.
    pub method: String,
    /// Request path, without the query string.
    pub path: String,
    /// Headers, names lowercased, in order.
    pub headers: Vec<(String, String)>,
    /// The body parsed as JSON (`Null` when it is not JSON).
    pub body: Value,
}

impl MockRequest {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    /// The content of the last `user` message, if any.
    pub fn last_user_message(&self) -> Option<&str> {
        self.body["messages"]
            .as_array()?
            .iter()
            .rev()
            .find(|message| message["role"] == "user")?["content"]
            .as_str()
    }
}

type Behavior = Box<dyn Fn(&MockRequest) -> MockReply + Send + Sync>;

/// An OpenAI-compatible server on `127.0.0.1`, stopped (connections included) when dropped.
///
/// Constructors must be called inside a tokio runtime: the server runs as tasks on it.
///
/// # Panics
///
/// Constructors panic if no loopback port can be bound.
pub struct MockServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept_loop: JoinHandle<()>,
}

struct Shared {
    behavior: Behavior,
    model: String,
    requests: AtomicUsize,
    connections: AtomicUsize,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    recording: AtomicBool,
    received: Mutex<Vec<MockRequest>>,
}

impl MockServer {
    /// A server whose `behavior` decides the reply to each chat request.
    pub fn with(behavior: impl Fn(&MockRequest) -> MockReply + Send + Sync + 'static) -> Self {
        let listener = std::net::TcpListener::bind(("127.0.0.1", 0))
            .and_then(|listener| listener.set_nonblocking(true).map(|()| listener))
            .and_then(TcpListener::from_std)
            .expect("MockServer: cannot listen on 127.0.0.1");
        let addr = listener
            .local_addr()
            .expect("MockServer: a bound listener has an address");
        let shared = Arc::new(Shared {
            behavior: Box::new(behavior),
            model: "mock-model".to_owned(),
            requests: AtomicUsize::new(0),
            connections: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            recording: AtomicBool::new(true),
            received: Mutex::new(Vec::new()),
        });
        let accept_loop = tokio::spawn(accept_loop(listener, shared.clone()));
        MockServer {
            addr,
            shared,
            accept_loop,
        }
    }

    /// A server answering every chat request with `content` after `latency`.
    pub fn fixed(content: impl Into<String>, latency: Duration) -> Self {
        let reply = MockReply::Text(content.into()).after(latency);
        MockServer::with(move |_| reply.clone())
    }

    /// A server giving `replies` in order, one per chat request. Requests beyond the list get
    /// HTTP 500 with a body saying the sequence is used up.
    pub fn sequence(replies: Vec<MockReply>) -> Self {
        MockServer::with(move |request| {
            replies
                .get(request.seq)
                .cloned()
                .unwrap_or_else(|| MockReply::Error {
                    status: 500,
                    body: error_body(
                        500,
                        &format!(
                            "MockServer: the sequence of {} replies is used up",
                            replies.len()
                        ),
                    )
                    .to_string(),
                    retry_after: None,
                })
        })
    }

    /// The base URL to configure clients with: `http://127.0.0.1:PORT/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Chat requests received so far (health and model queries not included).
    pub fn requests(&self) -> usize {
        self.shared.requests.load(Ordering::SeqCst)
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.shared.connections.load(Ordering::SeqCst)
    }

    /// The most chat requests ever being handled at once.
    pub fn max_in_flight(&self) -> usize {
        self.shared.max_in_flight.load(Ordering::SeqCst)
    }

    /// The chat requests received, in arrival order (while recording).
    pub fn received(&self) -> Vec<MockRequest> {
        self.shared
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The JSON bodies of the chat requests received, in arrival order (while recording).
    pub fn bodies(&self) -> Vec<Value> {
        self.received()
            .into_iter()
            .map(|request| request.body)
            .collect()
    }

    /// Turns recording of requests on (the default) or off (for long benchmarks).
    pub fn set_recording(&self, recording: bool) {
        self.shared.recording.store(recording, Ordering::SeqCst);
    }
}

impl Drop for MockServer {
    fn drop(&mut self) {
        // The accept loop owns the connection tasks: aborting it drops (and aborts) them all.
        self.accept_loop.abort();
    }
}

impl std::fmt::Debug for MockServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MockServer")
            .field("addr", &self.addr)
            .field("requests", &self.requests())
            .finish_non_exhaustive()
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => {
                    shared.connections.fetch_add(1, Ordering::SeqCst);
                    let _ = stream.set_nodelay(true);
                    connections.spawn(serve_connection(stream, shared.clone()));
                }
                // Out of file descriptors, typically: let connections finish, then go on.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// Longest request line or header line accepted, and most header lines.
const MAX_LINE: u64 = 16 * 1024;
const MAX_HEADERS: usize = 100;
/// Largest request body accepted.
const MAX_BODY: usize = 64 * 1024 * 1024;

struct RawRequest {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

async fn serve_connection(stream: TcpStream, shared: Arc<Shared>) {
    let (reader, mut writer) = stream.into_split();
    let mut reader = BufReader::new(reader);
    // Any I/O error or malformed request ends the connection, which is all a client can expect.
    while let Ok(Some(request)) = read_request(&mut reader).await {
        let close = request
            .headers
            .iter()
            .any(|(name, value)| name == "connection" && value.eq_ignore_ascii_case("close"));
        let Some(response) = respond(&shared, request).await else {
            return; // MockReply::Close
        };
        if writer.write_all(&response).await.is_err() || close {
            return;
        }
    }
}

async fn read_request<R: AsyncBufRead + Unpin>(
    reader: &mut R,
) -> std::io::Result<Option<RawRequest>> {
    let invalid =
        |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_owned());
    let mut line = String::new();
    if reader.take(MAX_LINE).read_line(&mut line).await? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(invalid("bad request line"));
    };
    let method = method.to_owned();
    let path = target.split('?').next().unwrap_or(target).to_owned();
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.take(MAX_LINE).read_line(&mut line).await? == 0 {
            return Err(invalid("connection closed inside the headers"));
        }
        let header = line.trim_end();
        if header.is_empty() {
            break;
        }
        let (name, value) = header
            .split_once(':')
            .ok_or_else(|| invalid("bad header"))?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
        if headers.len() > MAX_HEADERS {
            return Err(invalid("too many headers"));
        }
    }
    let length = match headers.iter().find(|(name, _)| name == "content-length") {
        Some((_, value)) => value
            .parse::<usize>()
            .map_err(|_| invalid("bad content-length"))?,
        None => 0,
    };
    if length > MAX_BODY {
        return Err(invalid("body too large"));
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).await?;
    Ok(Some(RawRequest {
        method,
        path,
        headers,
        body,
    }))
}

/// The bytes to answer `request` with; `None` to close the connection instead.
async fn respond(shared: &Shared, request: RawRequest) -> Option<Vec<u8>> {
    let route = (request.method.as_str(), request.path.as_str());
    match route {
        ("POST", "/v1/chat/completions" | "/chat/completions") => {}
        ("GET", "/health") => return Some(http_response(200, &json!({"status": "ok"}), None)),
        ("GET", "/v1/models" | "/models") => {
            let models = json!({"object": "list", "data": [{"id": shared.model, "object": "model", "owned_by": "agentd"}]});
            return Some(http_response(200, &models, None));
        }
        (method, path) => {
            let body = error_body(404, &format!("MockServer: no route for {method} {path}"));
            return Some(http_response(404, &body, None));
        }
    }

    let request = MockRequest {
        seq: shared.requests.fetch_add(1, Ordering::SeqCst),
        method: request.method,
        path: request.path,
        headers: request.headers,
        body: serde_json::from_slice(&request.body).unwrap_or(Value::Null),
    };
    let _in_flight = InFlight::enter(shared);
    let mut reply = (shared.behavior)(&request);
    if shared.recording.load(Ordering::SeqCst) {
        shared
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(request.clone());
    }
    loop {
        let (status, body, retry_after) = match reply {
            MockReply::Delayed(latency, inner) => {
                tokio::time::sleep(latency).await;
                reply = *inner;
                continue;
            }
            MockReply::Text(content) => {
                let messages: Vec<Message> =
                    serde_json::from_value(request.body["messages"].clone()).unwrap_or_default();
                let usage = Usage {
                    prompt_tokens: count_prompt_tokens(&estimate_tokens, &messages),
                    completion_tokens: estimate_tokens(&content),
                };
                (
                    200,
                    completion(shared, &request, &content, Some(usage)).to_string(),
                    None,
                )
            }
            MockReply::TextWithUsage(content, usage) => (
                200,
                completion(shared, &request, &content, Some(usage)).to_string(),
                None,
            ),
            MockReply::TextWithoutUsage(content) => (
                200,
                completion(shared, &request, &content, None).to_string(),
                None,
            ),
            MockReply::Status(status) => {
                (status, error_body(status, "mock error").to_string(), None)
            }
            MockReply::Error {
                status,
                body,
                retry_after,
            } => (status, body, retry_after),
            MockReply::Garbage => (
                200,
                "<html>502 Bad Gateway</html>\u{0}\u{1}not json".to_owned(),
                None,
            ),
            MockReply::Hang => std::future::pending().await,
            MockReply::Close => return None,
        };
        return Some(raw_response(
            status,
            body.as_bytes(),
            retry_after.as_deref(),
        ));
    }
}

/// Counts a chat request as in flight while alive.
struct InFlight<'a>(&'a Shared);

impl<'a> InFlight<'a> {
    fn enter(shared: &'a Shared) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.max_in_flight.fetch_max(now, Ordering::SeqCst);
        InFlight(shared)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

fn completion(
    shared: &Shared,
    request: &MockRequest,
    content: &str,
    usage: Option<Usage>,
) -> Value {
    let model = request.body["model"].as_str().unwrap_or(&shared.model);
    let mut body = json!({
        "id": format!("chatcmpl-mock-{}", request.seq),
        "object": "chat.completion",
        "created": 0,
        "model": model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": content},
            "finish_reason": "stop",
        }],
    });
    if let Some(usage) = usage {
        body["usage"] = json!({
            "prompt_tokens": usage.prompt_tokens,
            "completion_tokens": usage.completion_tokens,
            "total_tokens": usage.total(),
        });
    }
    body
}

fn error_body(status: u16, message: &str) -> Value {
    json!({"error": {"message": message, "type": "mock_error", "code": status}})
}

fn http_response(status: u16, body: &Value, retry_after: Option<&str>) -> Vec<u8> {
    raw_response(status, body.to_string().as_bytes(), retry_after)
}

fn raw_response(status: u16, body: &[u8], retry_after: Option<&str>) -> Vec<u8> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        404 => "Not Found",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    };
    let content_type = if body.first() == Some(&b'{') {
        "application/json"
    } else {
        "text/html"
    };
    let mut head = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: {content_type}\r\ncontent-length: {}\r\n",
        body.len()
    );
    if let Some(retry_after) = retry_after {
        head.push_str(&format!("retry-after: {retry_after}\r\n"));
    }
    head.push_str("\r\n");
    let mut response = head.into_bytes();
    response.extend_from_slice(body);
    response
}
