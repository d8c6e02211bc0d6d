//! The tokens an answer says it used: the `usage` object of OpenAI-compatible and
//! Anthropic answers, read to settle a call's token estimate
//! ([`EndpointBuilder::token_limiter`](super::EndpointBuilder::token_limiter)).

use serde::Deserialize;

use crate::limiter::RateLimiter;

/// A `usage` object, with the fields of both families; absent ones are `None`.
#[derive(Debug, Default, Deserialize)]
struct UsageFields {
    total_tokens: Option<u64>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    cache_read_input_tokens: Option<u64>,
}

/// A JSON document whose `usage` is at the top (OpenAI-compatible answers and chunks,
/// Anthropic answers and `message_delta` events) or under `message` (Anthropic's
/// `message_start` event). Every other field is skipped without being kept.
#[derive(Deserialize)]
struct Document {
    usage: Option<UsageFields>,
    message: Option<Message>,
}

#[derive(Deserialize)]
struct Message {
    usage: Option<UsageFields>,
}

/// What the `usage` objects of one answer said so far; a stream's events may each say
/// a part (Anthropic's input tokens at the start, its output count as it grows).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Usage {
    total: Option<u64>,
    input: Option<u64>,
    output: Option<u64>,
}

impl Usage {
    /// Reads the `usage` of one JSON document (an answer's body, an event's data).
    /// Returns whether it had one. A document that is not JSON, or has no `usage`,
    /// changes nothing; the cheap check for the word comes first, so the events that
    /// carry text only are not parsed.
    pub(crate) fn read(&mut self, json: &[u8]) -> bool {
        if !contains(json, b"\"usage\"") {
            return false;
        }
        let Ok(document) = serde_json::from_slice::<Document>(json) else {
            return false;
        };
        let Some(fields) = document
            .usage
            .or_else(|| document.message.and_then(|message| message.usage))
        else {
            return false;
        };
        if let Some(total) = fields.total_tokens {
            self.total = Some(total);
        }
        // Counts only grow along a stream: the largest seen is the latest.
        let input = [
            fields.prompt_tokens,
            fields.input_tokens.map(|input| {
                input
                    + fields.cache_creation_input_tokens.unwrap_or(0)
                    + fields.cache_read_input_tokens.unwrap_or(0)
            }),
        ]
        .into_iter()
        .flatten()
        .max();
        let output = fields.completion_tokens.or(fields.output_tokens);
        if input.is_some() {
            self.input = self.input.max(input);
        }
        if output.is_some() {
            self.output = self.output.max(output);
        }
        true
    }

    /// The tokens used: the total the answer gave, or its input and output added; `None`
    /// when no `usage` said anything.
    pub(crate) fn tokens(&self) -> Option<u64> {
        self.total.or(match (self.input, self.output) {
            (None, None) => None,
            (input, output) => Some(input.unwrap_or(0) + output.unwrap_or(0)),
        })
    }
}

/// A call's tokens to settle with the token limiter once its answer is read: what it
/// took, and what the answer's `usage` said. Settles when dropped, so a stream
/// settles however it ends (its last event, an error, a close, a drop).
pub(crate) struct Settle {
    limiter: RateLimiter,
    taken: u32,
    usage: Usage,
}

impl Settle {
    pub(crate) fn new(limiter: RateLimiter, taken: u32) -> Self {
        Settle {
            limiter,
            taken,
            usage: Usage::default(),
        }
    }

    /// Reads the `usage` of an answer's body or of an event's data, if it has one.
    pub(crate) fn read(&mut self, json: &[u8]) {
        self.usage.read(json);
    }
}

impl Drop for Settle {
    fn drop(&mut self) {
        // No `usage`: the estimate stands.
        if let Some(used) = self.usage.tokens() {
            let used = u32::try_from(used).unwrap_or(u32::MAX);
            self.limiter.settle(self.taken, used);
        }
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack
        .windows(needle.len())
        .any(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::Usage;

    fn tokens(documents: &[&str]) -> Option<u64> {
        let mut usage = Usage::default();
        for document in documents {
            usage.read(document.as_bytes());
        }
        usage.tokens()
    }

    #[test]
    fn openai_answers_and_final_chunks_give_their_total() {
        let answer = r#"{"id":"x","choices":[{"message":{"content":"hi"}}],
            "usage":{"prompt_tokens":12,"completion_tokens":30,"total_tokens":42}}"#;
        assert_eq!(tokens(&[answer]), Some(42));
        // A stream with `stream_options.include_usage`: `usage` is null until the end.
        let chunks = [
            r#"{"choices":[{"delta":{"content":"a"}}],"usage":null}"#,
            r#"{"choices":[{"delta":{"content":"b"}}],"usage":null}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}"#,
        ];
        assert_eq!(tokens(&chunks), Some(7));
        // Without a total, input and output are added.
        assert_eq!(
            tokens(&[r#"{"usage":{"prompt_tokens":5,"completion_tokens":2}}"#]),
            Some(7)
        );
    }

    #[test]
    fn anthropic_streams_add_the_start_input_to_the_last_output_count() {
        let events = [
            r#"{"type":"message_start","message":{"id":"m","usage":{"input_tokens":25,"cache_read_input_tokens":5,"output_tokens":1}}}"#,
            r#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"usage"}}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":15}}"#,
        ];
        assert_eq!(tokens(&events), Some(25 + 5 + 15));
        let answer = r#"{"content":[{"type":"text","text":"hi"}],"usage":{"input_tokens":10,"output_tokens":3}}"#;
        assert_eq!(tokens(&[answer]), Some(13));
    }

    #[test]
    fn text_without_usage_and_broken_json_say_nothing() {
        assert_eq!(tokens(&[]), None);
        assert_eq!(tokens(&[r#"{"choices":[]}"#, "[DONE]", "not json"]), None);
        // The word inside a string is not a `usage` object.
        assert_eq!(tokens(&[r#"{"text":"the \"usage\" of words"}"#]), None);
        assert_eq!(tokens(&[r#"{"usage": 3}"#, r#"{"usage":{"#]), None);
        assert_eq!(tokens(&[r#"{"usage":null}"#]), None);
    }
}
