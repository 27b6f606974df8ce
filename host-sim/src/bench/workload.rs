//! The workloads of the fleet benchmark: who asks what, when, of which fleet. Seeded,
//! Poisson arrivals; the same arrivals go to every policy.

use std::path::Path;

use model_sim::ServerParams;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, Exp};

pub const BASE_MODEL: &str = "meta-llama/Llama-3.1-8B-Instruct";

/// One request of a workload.
#[derive(Debug, Clone)]
pub struct Arrival {
    /// Since the start of the run (µs).
    pub at_us: u64,
    pub model: String,
    pub prompt: String,
    pub max_tokens: u32,
    /// The objective header, and the priority it has in the module's configuration.
    pub objective: Option<&'static str>,
    pub priority: i32,
    /// A conversation's (index, turn), for multi-turn workloads: its next turn is sent
    /// after this one's answer and a think time.
    pub session: Option<(usize, usize)>,
    /// The text the server answers with, where a later prompt repeats it (a turn's
    /// answer, in the history of the next): the server caches its blocks.
    pub answer: Option<String>,
    /// The chat messages the client sends, user and assistant in turn and the user's last
    /// (a conversation's history), which the server renders as `prompt`. Empty: one user
    /// message, `prompt`.
    pub messages: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    SharedPrefix,
    ShareGpt,
    MultiLora,
    Overload,
    /// ShareGPT conversations replayed turn by turn: each turn's prompt is the history so
    /// far and the new message, sent after the previous answer and a think time.
    MultiTurn,
}

pub struct Workload {
    pub kind: Kind,
    pub name: &'static str,
    /// The fleet.
    pub servers: Vec<ServerParams>,
    /// Offered loads (requests/s) for the TTFT-against-load plot, and the one the results
    /// table reports.
    pub rates: Vec<f64>,
    pub main_rate: f64,
    /// How long requests arrive for (virtual seconds).
    pub duration_s: f64,
    /// The objectives the module is configured with.
    pub objectives: serde_json::Value,
    /// ShareGPT conversations (prompt, answer tokens), for `sharegpt`.
    conversations: Vec<(String, u32)>,
    /// Whole ShareGPT conversations (user message, answer, answer tokens), for `multi-turn`.
    dialogues: Vec<Vec<(String, String, u32)>>,
}

/// Mean think time between an answer and the next turn (s).
const THINK_S: f64 = 3.0;
/// Turns replayed of one conversation, and the history a prompt may reach (tokens).
const MAX_TURNS: usize = 10;
/// Conversations shorter than this are left out: the workload is about the ones that return.
const MIN_TURNS: usize = 4;
const MAX_HISTORY_TOKENS: u32 = 8_000;

/// The objectives of the `overload` workload.
pub const INTERACTIVE: &str = "interactive";
pub const BATCH: &str = "batch";

impl Workload {
    pub fn names() -> [&'static str; 6] {
        ["shared-prefix", "sharegpt", "multi-lora", "overload", "multi-turn", "multi-turn-mixed"]
    }

    /// The workload `name`; `sharegpt` reads the dataset at `sharegpt`.
    pub fn by_name(name: &str, sharegpt: Option<&Path>, quick: bool) -> Result<Workload, String> {
        let h100 = ServerParams { model: BASE_MODEL.into(), ..ServerParams::h100_llama_8b() };
        let duration_s = if quick { 8.0 } else { 30.0 };
        let mut w = match name {
            // llm-d's benchmark shape scaled to 8 servers: 96 groups × 5 users, a 2,000-token
            // shared context per group, 400-token questions, 64-token answers. The KV cache
            // is scaled down with the contexts (2,000 blocks a server) so that the contexts
            // alone fill 75% of the fleet's cache, as llm-d's 6,000-token contexts did (73%).
            "shared-prefix" => Workload {
                kind: Kind::SharedPrefix,
                name: "shared-prefix",
                servers: vec![ServerParams { num_blocks: 2_000, ..h100.clone() }; 8],
                rates: vec![40.0, 60.0, 80.0, 100.0, 120.0],
                main_rate: 80.0,
                duration_s,
                objectives: serde_json::json!({}),
                conversations: vec![],
                dialogues: vec![],
            },
            "sharegpt" => {
                let path = sharegpt.ok_or("sharegpt: no dataset path (./build.sh bench installs it)")?;
                Workload {
                    kind: Kind::ShareGpt,
                    name: "sharegpt",
                    servers: vec![h100.clone(); 8],
                    rates: vec![60.0, 100.0, 120.0, 140.0, 160.0],
                    // High load: past the fleet's capacity (~150 requests/s).
                    main_rate: 160.0,
                    duration_s,
                    objectives: serde_json::json!({}),
                    conversations: read_sharegpt(path, 20_000)?,
                    dialogues: vec![],
                }
            }
            // Conversations that return (llm-d's multi-turn benchmarks): 9 servers, and in
            // the mixed fleet a third of them half as fast. Rates are new conversations a second.
            "multi-turn" | "multi-turn-mixed" => {
                let path = sharegpt.ok_or("multi-turn: no dataset path (./build.sh bench installs it)")?;
                let mut servers = vec![h100.clone(); 9];
                let (name, rates, main_rate) = if name == "multi-turn" {
                    ("multi-turn", vec![10.0, 20.0, 40.0, 60.0], 40.0)
                } else {
                    for s in servers.iter_mut().take(3) {
                        *s = half_as_fast(s);
                    }
                    ("multi-turn-mixed", vec![10.0, 20.0, 30.0, 40.0], 30.0)
                };
                Workload {
                    kind: Kind::MultiTurn,
                    name,
                    servers,
                    rates,
                    main_rate,
                    duration_s,
                    objectives: serde_json::json!({}),
                    conversations: vec![],
                    dialogues: read_dialogues(path, 5_000)?,
                }
            }
            // 15 adapters, skewed (5 × 12%, 5 × 6%, 5 × 2%), two adapter slots a server.
            "multi-lora" => Workload {
                kind: Kind::MultiLora,
                name: "multi-lora",
                servers: vec![ServerParams { adapters: adapters(), max_loras: 2, ..h100.clone() }; 8],
                rates: vec![40.0, 80.0, 120.0, 160.0],
                main_rate: 120.0,
                duration_s,
                objectives: serde_json::json!({}),
                conversations: vec![],
                dialogues: vec![],
            },
            // Half interactive (priority 0), half batch (sheddable), up to twice capacity.
            "overload" => Workload {
                kind: Kind::Overload,
                name: "overload",
                servers: vec![ServerParams { max_num_seqs: 64, ..h100.clone() }; 4],
                rates: vec![40.0, 80.0, 120.0, 160.0],
                main_rate: 120.0,
                duration_s,
                objectives: serde_json::json!({INTERACTIVE: 0, BATCH: -1}),
                conversations: vec![],
                dialogues: vec![],
            },
            other => return Err(format!("unknown workload {other:?}; workloads: {}", Workload::names().join(", "))),
        };
        if quick {
            w.rates = vec![w.main_rate];
        }
        Ok(w)
    }

    /// The arrivals at `rate` requests/s, from `seed`.
    pub fn arrivals(&self, rate: f64, seed: u64) -> Vec<Arrival> {
        let mut rng = SmallRng::seed_from_u64(seed);
        let gap = Exp::new(rate.max(1e-6)).map_err(|_| ()).ok();
        let mut t = 0.0f64;
        let mut out = Vec::new();
        let contexts: Vec<String> = match self.kind {
            Kind::SharedPrefix => (0..96).map(|g| words(&mut SmallRng::seed_from_u64(1000 + g), 2_000)).collect(),
            _ => vec![],
        };
        let adapters = adapters();
        // ShareGPT conversations in a seeded order, each once (as vLLM's benchmark samples).
        let mut order: Vec<usize> = (0..self.conversations.len().max(self.dialogues.len())).collect();
        rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rng);
        let mut next_conversation = order.into_iter().cycle();
        loop {
            t += gap.as_ref().map_or(1.0, |g| g.sample(&mut rng));
            if t >= self.duration_s {
                return out;
            }
            let at_us = (t * 1e6) as u64;
            let mut a = Arrival {
                at_us,
                model: BASE_MODEL.into(),
                prompt: String::new(),
                max_tokens: 64,
                objective: None,
                priority: 0,
                session: None,
                answer: None,
                messages: Vec::new(),
            };
            match self.kind {
                Kind::SharedPrefix => {
                    let group = rng.gen_range(0..contexts.len());
                    let user = rng.gen_range(0..5);
                    a.prompt = format!("{}\nUser {user}: {}", contexts[group], words(&mut rng, 400));
                }
                Kind::ShareGpt => {
                    let (prompt, answer) = &self.conversations[next_conversation.next().unwrap_or(0)];
                    a.prompt = prompt.clone();
                    a.max_tokens = *answer;
                }
                Kind::MultiLora => {
                    // 5 × 12%, 5 × 6%, 5 × 2%: cumulative 60%, 90%, 100%.
                    let u: f64 = rng.gen();
                    let (tier, within) = if u < 0.6 { (0, u / 0.12) } else if u < 0.9 { (1, (u - 0.6) / 0.06) } else { (2, (u - 0.9) / 0.02) };
                    a.model = adapters[tier * 5 + (within as usize).min(4)].clone();
                    a.prompt = words(&mut rng, 300);
                    a.max_tokens = 128;
                }
                Kind::MultiTurn => {
                    let c = next_conversation.next().unwrap_or(0);
                    a = self.turn(c, 0, at_us);
                }
                Kind::Overload => {
                    let interactive = rng.gen_bool(0.5);
                    a.objective = Some(if interactive { INTERACTIVE } else { BATCH });
                    a.priority = if interactive { 0 } else { -1 };
                    let tokens = rng.gen_range(100..800);
                    a.prompt = words(&mut rng, tokens);
                    a.max_tokens = rng.gen_range(64..256);
                }
            }
            out.push(a);
        }
    }
}

impl Workload {
    /// Turn `turn` of conversation `c`, sent at `at_us`: the history, then the message.
    fn turn(&self, c: usize, turn: usize, at_us: u64) -> Arrival {
        let dialogue = &self.dialogues[c % self.dialogues.len().max(1)];
        // The server's chat template: `User: …` and `Assistant: …`, a line each.
        let mut prompt = String::new();
        let mut messages = Vec::with_capacity(2 * turn + 1);
        for (user, answer, _) in &dialogue[..turn] {
            prompt.push_str(&format!("User: {user}\nAssistant: {answer}\n"));
            messages.extend([user.clone(), answer.clone()]);
        }
        let (user, answer, answer_tokens) = &dialogue[turn];
        prompt.push_str(&format!("User: {user}"));
        messages.push(user.clone());
        Arrival {
            at_us,
            model: BASE_MODEL.into(),
            prompt,
            max_tokens: *answer_tokens,
            objective: None,
            priority: 0,
            session: Some((c, turn)),
            // The next turn's history goes on with `\nAssistant: {answer}`.
            answer: Some(format!("\nAssistant: {answer}")),
            messages,
        }
    }

    /// The turn after `a`, whose answer came at `finished_us` (since the run's start):
    /// after a think time, while the conversation has turns left.
    pub fn follow_up(&self, a: &Arrival, finished_us: u64, seed: u64) -> Option<Arrival> {
        let (c, turn) = a.session?;
        let dialogue = self.dialogues.get(c % self.dialogues.len().max(1))?;
        if turn + 1 >= dialogue.len() {
            return None;
        }
        let mut rng = SmallRng::seed_from_u64(seed ^ ((c as u64) << 20) ^ turn as u64);
        let think = Exp::new(1.0 / THINK_S).map_or(THINK_S, |d| d.sample(&mut rng));
        Some(self.turn(c, turn + 1, finished_us + (think * 1e6) as u64))
    }
}

/// The same server, half as fast: every step and every prefill token takes twice as long.
fn half_as_fast(p: &ServerParams) -> ServerParams {
    ServerParams {
        step_base_us: p.step_base_us * 2,
        step_per_seq_us: p.step_per_seq_us * 2,
        prefill_per_token_us: p.prefill_per_token_us * 2.0,
        decode_per_context_token_ns: p.decode_per_context_token_ns * 2.0,
        ..p.clone()
    }
}

fn adapters() -> Vec<String> {
    (1..=15).map(|i| format!("adapter-{i:02}")).collect()
}

/// Exactly `tokens` tokens of made-up text: words of a space and three letters, each one
/// token to the simulator's tokenizer (4 characters a token, as it assumes).
fn words(rng: &mut SmallRng, tokens: usize) -> String {
    const LETTERS: &[u8] = b"abcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(tokens * 4);
    for _ in 0..tokens {
        out.push(' ');
        for _ in 0..3 {
            out.push(LETTERS[rng.gen_range(0..LETTERS.len())] as char);
        }
    }
    out
}


/// The first `max` conversations of the ShareGPT file that open with a human turn and a
/// model answer: (prompt, answer length in tokens). The packaged file is cut off mid-way:
/// entries are read one at a time and reading stops at the first incomplete one.
fn read_sharegpt(path: &Path, max: usize) -> Result<Vec<(String, u32)>, String> {
    let mut out = Vec::new();
    for_each_entry(path, |turns| {
        if let [(from_user, human), (from_model, gpt), ..] = turns {
            if from_user == "human" && from_model == "gpt" && !human.is_empty() {
                // vLLM's benchmark_serving filter: 4 tokens or more each, prompts up to 1,024
                // tokens, prompt and answer together up to 2,048.
                let prompt_tokens = model_sim::text::tokens_in(human);
                let answer = model_sim::text::tokens_in(gpt);
                if prompt_tokens >= 4 && answer >= 4 && prompt_tokens <= 1024 && prompt_tokens + answer <= 2048 {
                    out.push((human.clone(), answer));
                }
            }
        }
        out.len() < max
    })?;
    if out.is_empty() {
        return Err(format!("{}: no complete conversations", path.display()));
    }
    Ok(out)
}

/// Up to `max` ShareGPT conversations of two turns or more (user, then model, in turn),
/// as many turns each as fit `MAX_TURNS` and `MAX_HISTORY_TOKENS`.
fn read_dialogues(path: &Path, max: usize) -> Result<Vec<Vec<(String, String, u32)>>, String> {
    let mut out = Vec::new();
    for_each_entry(path, |turns| {
        let mut dialogue = Vec::new();
        let mut history = 0u32;
        for pair in turns.chunks_exact(2).take(MAX_TURNS) {
            let [(from_user, user), (from_model, answer)] = pair else { break };
            if from_user != "human" || from_model != "gpt" || user.is_empty() || answer.is_empty() {
                break;
            }
            let (u, a) = (model_sim::text::tokens_in(user), model_sim::text::tokens_in(answer).clamp(4, 1024));
            if history + u + a > MAX_HISTORY_TOKENS {
                break;
            }
            history += u + a;
            dialogue.push((user.clone(), answer.clone(), a));
        }
        if dialogue.len() >= MIN_TURNS {
            out.push(dialogue);
        }
        out.len() < max
    })?;
    if out.is_empty() {
        return Err(format!("{}: no conversations of two turns or more", path.display()));
    }
    Ok(out)
}

/// Each complete entry of the ShareGPT file, as (from, value) turns, until `each` says
/// stop. The packaged file is cut off mid-way: reading stops at the first incomplete one.
fn for_each_entry(path: &Path, mut each: impl FnMut(&[(String, String)]) -> bool) -> Result<(), String> {
    #[derive(serde::Deserialize)]
    struct Entry {
        conversations: Vec<Turn>,
    }
    #[derive(serde::Deserialize)]
    struct Turn {
        from: String,
        value: String,
    }
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut at = bytes.iter().position(|&b| b == b'[').ok_or("sharegpt: not a JSON array")? + 1;
    loop {
        let mut stream = serde_json::Deserializer::from_slice(&bytes[at..]).into_iter::<Entry>();
        let Some(Ok(entry)) = stream.next() else { return Ok(()) };
        at += stream.byte_offset();
        while at < bytes.len() && (bytes[at].is_ascii_whitespace() || bytes[at] == b',') {
            at += 1;
        }
        let turns: Vec<(String, String)> = entry.conversations.into_iter().map(|t| (t.from, t.value)).collect();
        if !each(&turns) {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_turns_prompt_repeats_the_last_one_and_its_answer() {
        let dialogue = |n: usize| (0..n).map(|i| (format!("question {i}"), format!("answer {i}"), 4)).collect();
        let w = Workload {
            kind: Kind::MultiTurn,
            name: "multi-turn",
            servers: Vec::new(),
            rates: Vec::new(),
            main_rate: 1.0,
            duration_s: 1.0,
            objectives: serde_json::Value::Null,
            conversations: Vec::new(),
            dialogues: vec![dialogue(3)],
        };
        let first = w.turn(0, 0, 0);
        let second = w.follow_up(&first, 1_000, 7).unwrap();
        let answered = format!("{}{}", first.prompt, first.answer.as_deref().unwrap());
        assert!(second.prompt.starts_with(&answered), "{:?} then {:?}", answered, second.prompt);
        assert_eq!(second.messages, ["question 0", "answer 0", "question 1"]);
        assert!(second.at_us > 1_000, "after a think time");
        let third = w.follow_up(&second, 2_000, 7).unwrap();
        assert!(w.follow_up(&third, 3_000, 7).is_none(), "three turns, no fourth");
    }

    #[test]
    fn words_are_one_token_each() {
        let text = words(&mut SmallRng::seed_from_u64(1), 2000);
        assert_eq!(model_sim::text::tokens_in(&text), 2000);
    }
}
