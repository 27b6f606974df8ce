//! The simulator's tokenizer: a token is a run of at most 4 characters that does not cross
//! a word boundary (whitespace starts a new token). About 4 characters a token, the usual
//! figure for English with Llama-family tokenizers, and, like a real tokenizer, blind to
//! how the router cuts the text: the router's 64-character blocks do not line up with
//! the server's 16-token blocks, so prefix matching stays an estimate.

use std::hash::{DefaultHasher, Hash, Hasher};

/// The tokens of `text`, as slices of it.
pub fn tokens(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut end = 0;
        for (n, (i, c)) in rest.char_indices().enumerate() {
            if n == 4 || (n > 0 && c.is_whitespace()) {
                break;
            }
            end = i + c.len_utf8();
        }
        let (token, tail) = rest.split_at(end);
        rest = tail;
        Some(token)
    })
}

pub fn tokens_in(text: &str) -> u32 {
    (tokens(text).count() as u32).max(1)
}

/// The token count and the chained hash of every full block of `block_size` tokens: the
/// keys of vLLM's prefix cache.
pub fn prompt_blocks(text: &str, block_size: u32) -> (u32, Vec<u64>) {
    let block_size = block_size.max(1) as usize;
    let mut hashes = Vec::new();
    let mut hasher = DefaultHasher::new();
    let mut count = 0usize;
    for token in tokens(text) {
        token.hash(&mut hasher);
        count += 1;
        if count.is_multiple_of(block_size) {
            let h = hasher.finish();
            hashes.push(h);
            hasher = DefaultHasher::new();
            h.hash(&mut hasher);
        }
    }
    ((count as u32).max(1), hashes)
}

/// The chained hashes of the full blocks an answer completes: the blocks of `prompt`
/// followed by `answer` that lie past the prompt's own full blocks. vLLM V1 caches a
/// sequence's generated blocks too, so a conversation's next turn, whose prompt repeats
/// this one and its answer, finds them.
pub fn answer_blocks(prompt: &str, answer: &str, block_size: u32) -> Vec<u64> {
    let prompt_full = tokens(prompt).count() / block_size.max(1) as usize;
    let (_, mut blocks) = prompt_blocks(&format!("{prompt}{answer}"), block_size);
    blocks.drain(..prompt_full.min(blocks.len()));
    blocks
}

/// The prompt an OpenAI-style body asks to complete, as the simulator sees it: chat
/// messages' contents in order, one a line, or the completion `prompt`.
pub fn prompt_of(body: &serde_json::Value) -> String {
    match body["messages"].as_array() {
        Some(messages) => {
            let parts: Vec<&str> = messages.iter().map(|m| m["content"].as_str().unwrap_or_default()).collect();
            parts.join("\n")
        }
        None => body["prompt"].as_str().unwrap_or_default().to_string(),
    }
}

/// The words a simulated answer is made of, one per token.
pub fn token_text(i: u32) -> &'static str {
    const WORDS: [&str; 8] = [" the", " model", " says", " hello", " to", " you", " and", " more"];
    WORDS[(i as usize) % WORDS.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_split_words_and_long_runs() {
        let t: Vec<&str> = tokens("hello world, a").collect();
        assert_eq!(t, vec!["hell", "o", " wor", "ld,", " a"]);
        assert_eq!(tokens_in(""), 1);
    }

    #[test]
    fn shared_prefixes_share_leading_blocks() {
        let base = "You are a careful assistant. ".repeat(20);
        let (_, a) = prompt_blocks(&(base.clone() + &"What is the capital of France? ".repeat(5)), 16);
        let (_, b) = prompt_blocks(&(base + &"Tell me a story about a dragon and a knight. ".repeat(5)), 16);
        let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
        assert!(common >= 9 && common < a.len().max(b.len()), "{common} of {} / {}", a.len(), b.len());
    }
}
