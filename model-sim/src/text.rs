//! Token counts for text, the way the simulator charges them: about 4 characters a token,
//! the usual figure for English with Llama-family tokenizers.

pub fn tokens_in(text: &str) -> u32 {
    let chars = text.chars().count() as u32;
    chars.div_ceil(4).max(1)
}

/// The words a simulated answer is made of, one per token.
pub fn token_text(i: u32) -> &'static str {
    const WORDS: [&str; 8] = [" the", " model", " says", " hello", " to", " you", " and", " more"];
    WORDS[(i as usize) % WORDS.len()]
}
