//! The one error type of the crate, written for the person reading it at a terminal.
//!
//! Transport and server errors are flattened to strings when they happen, so [`LlmError`] is
//! `Clone + PartialEq`: scripted tests can return and compare errors, and retries can keep the
//! last one. [`LlmError::is_retryable`] is the single place that decides what a retry may fix.

use std::time::Duration;

/// Why an LLM call failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum LlmError {
    /// The provider configuration is unusable (a bad URL, a missing API-key variable, a zero
    /// limit) or a scripted test ran out of replies. Never retried.
    #[error("invalid LLM provider config: {0}")]
    Config(String),
    /// The server could not be reached, or dropped the connection before answering.
    #[error("cannot reach the LLM server: {0}")]
    Connect(String),
    /// No complete answer arrived within the request timeout.
    #[error(
        "the LLM server did not answer within {after:?}; check that it is running and not \
         overloaded, or raise `timeout_secs`"
    )]
    Timeout {
        /// The request timeout that expired.
        after: Duration,
    },
    /// The server answered with a non-success HTTP status.
    #[error("the LLM server answered HTTP {status}{}: {body}", status_hint(*.status))]
    Status {
        /// The HTTP status code.
        status: u16,
        /// The start of the response body (at most about 500 characters).
        body: String,
    },
    /// The server answered 200 with something that is not an OpenAI chat completion.
    #[error("the LLM server's answer is not an OpenAI chat completion: {0}")]
    InvalidResponse(String),
    /// Every attempt failed with a retryable error; `last` is the final one.
    #[error("gave up after {attempts} attempt(s); last error: {last}")]
    RetriesExhausted {
        /// HTTP attempts made.
        attempts: u32,
        /// The error of the last attempt.
        last: Box<LlmError>,
    },
}

impl LlmError {
    /// Whether trying the same request again may succeed: connection errors, timeouts,
    /// HTTP 408, 429 and 5xx, and invalid 200 answers (local servers glitch under load).
    pub fn is_retryable(&self) -> bool {
        match self {
            LlmError::Connect(_) | LlmError::Timeout { .. } | LlmError::InvalidResponse(_) => true,
            LlmError::Status { status, .. } => matches!(status, 408 | 429 | 500..=599),
            LlmError::Config(_) | LlmError::RetriesExhausted { .. } => false,
        }
    }

    /// The underlying error: `last` of [`LlmError::RetriesExhausted`], else `self`.
    pub fn root_cause(&self) -> &LlmError {
        match self {
            LlmError::RetriesExhausted { last, .. } => last.root_cause(),
            other => other,
        }
    }
}

/// What to check for the common statuses, appended to [`LlmError::Status`] messages.
fn status_hint(status: u16) -> &'static str {
    match status {
        401 | 403 => " (check the API key: the variable named by `api_key_env`)",
        404 => {
            " (check `base_url`: it must include the API prefix, e.g. http://127.0.0.1:8080/v1; \
             and check the model name)"
        }
        429 => " (rate limited: lower `concurrency` or set `tokens_per_minute`)",
        500..=599 => " (server error)",
        _ => "",
    }
}

/// Maximum number of characters of a response body kept in errors.
const EXCERPT_CHARS: usize = 500;

/// The start of a response body as readable text, for error messages.
pub(crate) fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let text = text.trim();
    if text.is_empty() {
        return "<empty body>".to_owned();
    }
    match text.char_indices().nth(EXCERPT_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_classification() {
        assert!(LlmError::Connect("x".into()).is_retryable());
        assert!(
            LlmError::Timeout {
                after: Duration::from_secs(1)
            }
            .is_retryable()
        );
        assert!(LlmError::InvalidResponse("x".into()).is_retryable());
        for status in [408, 429, 500, 502, 503] {
            assert!(
                LlmError::Status {
                    status,
                    body: String::new()
                }
                .is_retryable(),
                "{status}"
            );
        }
        for status in [400, 401, 404, 422] {
            assert!(
                !LlmError::Status {
                    status,
                    body: String::new()
                }
                .is_retryable(),
                "{status}"
            );
        }
        assert!(!LlmError::Config("x".into()).is_retryable());
        let exhausted = LlmError::RetriesExhausted {
            attempts: 2,
            last: Box::new(LlmError::Connect("refused".into())),
        };
        assert!(!exhausted.is_retryable());
        assert_eq!(exhausted.root_cause(), &LlmError::Connect("refused".into()));
    }

    #[test]
    fn status_message_gives_a_hint() {
        let error = LlmError::Status {
            status: 404,
            body: "not found".into(),
        };
        let message = error.to_string();
        assert!(message.contains("HTTP 404"), "{message}");
        assert!(message.contains("base_url"), "{message}");
        assert!(message.ends_with(": not found"), "{message}");
    }

    #[test]
    fn excerpt_is_bounded_and_utf8_safe() {
        let long = "é".repeat(2 * EXCERPT_CHARS);
        let cut = excerpt(long.as_bytes());
        assert_eq!(cut.chars().count(), EXCERPT_CHARS + 1);
        assert!(cut.ends_with('…'));
        assert_eq!(excerpt(b"  \n"), "<empty body>");
        assert_eq!(excerpt(b"short"), "short");
    }
}
