//! Local token counting, for when the server reports no usage and for rate-limit reservations.
//!
//! The default is a deliberate estimate (about four characters per token), cheap and
//! tokenizer-free; callers with a real tokenizer plug it in as a [`TokenCounter`].

use std::sync::Arc;

use crate::Message;

/// Counts the tokens of a text. Shared by clients; must be cheap and thread-safe.
pub type TokenCounter = Arc<dyn Fn(&str) -> u32 + Send + Sync>;

/// Tokens added per message for the role framing of chat templates (OpenAI's rule of thumb).
pub const TOKENS_PER_MESSAGE: u32 = 3;
/// Tokens added once per prompt for priming the assistant's reply.
pub const TOKENS_PER_REPLY: u32 = 3;

/// The default estimate: characters / 4, rounded up (`""` → 0, `"abcde"` → 2).
///
/// Good to about ±30% for English with BPE tokenizers; worse for code and other scripts.
pub fn estimate_tokens(text: &str) -> u32 {
    u32::try_from(text.chars().count().div_ceil(4)).unwrap_or(u32::MAX)
}

/// [`estimate_tokens`] as a [`TokenCounter`].
pub fn default_token_counter() -> TokenCounter {
    Arc::new(estimate_tokens)
}

/// Prompt tokens of `messages`: each content counted by `counter`, plus
/// [`TOKENS_PER_MESSAGE`] per message and [`TOKENS_PER_REPLY`] once.
pub fn count_prompt_tokens(counter: &dyn Fn(&str) -> u32, messages: &[Message]) -> u32 {
    messages.iter().fold(TOKENS_PER_REPLY, |sum, message| {
        sum.saturating_add(counter(&message.content))
            .saturating_add(TOKENS_PER_MESSAGE)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_rounds_up() {
        assert_eq!(estimate_tokens(""), 0);
        assert_eq!(estimate_tokens("abcd"), 1);
        assert_eq!(estimate_tokens("abcde"), 2);
        assert_eq!(estimate_tokens("éééé"), 1, "counts characters, not bytes");
    }

    #[test]
    fn prompt_count_adds_framing() {
        let messages = [Message::system("abcd"), Message::user("abcdefgh")];
        assert_eq!(
            count_prompt_tokens(&estimate_tokens, &messages),
            3 + (1 + 3) + (2 + 3)
        );
        let words = |text: &str| text.split_whitespace().count() as u32;
        assert_eq!(
            count_prompt_tokens(&words, &[Message::user("a b c")]),
            3 + 3 + 3
        );
    }
}
