//! A continuous-batching engine in the manner of vLLM's scheduler, as a step machine.
//!
//! Each `step` admits waiting requests while there are sequence slots, KV blocks and
//! adapter slots; prefills prompts within the batched-token budget (a request's first
//! token comes when its prefill completes); decodes one token for every sequence past
//! prefill; and preempts the newest sequence when the KV cache is full (vLLM's
//! recompute preemption). The step's duration grows with the batch and the prefill work.

use std::collections::VecDeque;

use crate::kv::{Holding, KvCache};
use crate::params::ServerParams;

#[derive(Debug, Clone, PartialEq, Default)]
pub struct Request {
    pub id: u64,
    pub prompt_tokens: u32,
    pub max_tokens: u32,
    /// A LoRA adapter, or `None` for the base model.
    pub adapter: Option<String>,
    /// The chained hashes of the prompt's full KV blocks (`text::prompt_blocks`): what
    /// prefix caching matches. Empty: nothing of it can be found in the cache.
    pub prompt_blocks: Vec<u64>,
    /// The chained hashes of the full blocks the answer completes after the prompt's
    /// (`text::answer_blocks`), cached when the request finishes. Empty: the answer's
    /// text is unknown, and no later prompt could match it.
    pub answer_blocks: Vec<u64>,
}

impl Request {
    /// A request for `prompt`, tokenized and cut into blocks as a server with `block_size`
    /// tokens a block would.
    pub fn for_prompt(id: u64, prompt: &str, max_tokens: u32, adapter: Option<String>, block_size: u32) -> Self {
        let (prompt_tokens, prompt_blocks) = crate::text::prompt_blocks(prompt, block_size);
        Request { id, prompt_tokens, max_tokens, adapter, prompt_blocks, answer_blocks: Vec::new() }
    }

    /// The same request, its answer's text known (what the server will generate, as the
    /// next prompt will repeat it): its blocks stay cached after the request finishes.
    pub fn answering(mut self, prompt: &str, answer: &str, block_size: u32) -> Self {
        self.answer_blocks = crate::text::answer_blocks(prompt, answer, block_size);
        self
    }
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The first output token (time to first token ends here).
    FirstToken { id: u64 },
    /// Each later output token.
    Token { id: u64, index: u32 },
    Finished { id: u64, prompt_tokens: u32, output_tokens: u32 },
}

#[derive(Debug)]
struct Seq {
    req: Request,
    arrival_us: u64,
    prefilled: u32,
    generated: u32,
    kv: Holding,
    first_token_us: Option<u64>,
}

/// Counters and histograms for `/metrics`.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    pub finished: u64,
    pub preemptions: u64,
    /// Prompt tokens looked up in the prefix cache, and found there (vLLM's
    /// `prefix_cache_queries` and `prefix_cache_hits`).
    pub prefix_queries: u64,
    pub prefix_hits: u64,
    pub ttft_s: Histogram,
    pub e2e_s: Histogram,
}

#[derive(Debug, Clone)]
pub struct Histogram {
    pub bounds: &'static [f64],
    pub counts: Vec<u64>,
    pub sum: f64,
    pub count: u64,
}

/// vLLM's TTFT buckets (seconds).
const LATENCY_BOUNDS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];

impl Default for Histogram {
    fn default() -> Self {
        Histogram { bounds: LATENCY_BOUNDS, counts: vec![0; LATENCY_BOUNDS.len()], sum: 0.0, count: 0 }
    }
}

impl Histogram {
    pub fn observe(&mut self, v: f64) {
        for (b, c) in self.bounds.iter().zip(self.counts.iter_mut()) {
            if v <= *b {
                *c += 1;
            }
        }
        self.sum += v;
        self.count += 1;
    }
}

pub struct Engine {
    pub params: ServerParams,
    waiting: VecDeque<Seq>,
    running: Vec<Seq>,
    kv: KvCache,
    /// Resident adapters, most recently used last (at most `max_loras`).
    resident: Vec<String>,
    pub stats: Stats,
}

/// What one step did and how long it took.
#[derive(Debug, Default)]
pub struct Step {
    pub duration_us: u64,
    pub events: Vec<Event>,
}

impl Engine {
    pub fn new(params: ServerParams) -> Self {
        Engine {
            kv: KvCache::new(params.num_blocks),
            params,
            waiting: VecDeque::new(),
            running: Vec::new(),
            resident: Vec::new(),
            stats: Stats::default(),
        }
    }

    pub fn submit(&mut self, req: Request, now_us: u64) {
        self.waiting.push_back(Seq {
            req,
            arrival_us: now_us,
            prefilled: 0,
            generated: 0,
            kv: Holding::default(),
            first_token_us: None,
        });
    }

    pub fn is_idle(&self) -> bool {
        self.waiting.is_empty() && self.running.is_empty()
    }

    pub fn num_waiting(&self) -> usize {
        self.waiting.len()
    }
    pub fn num_running(&self) -> usize {
        self.running.len()
    }
    pub fn kv_usage(&self) -> f64 {
        self.kv.usage()
    }
    /// Distinct adapters of running sequences, and of waiting ones.
    pub fn adapters(&self) -> (Vec<String>, Vec<String>) {
        (distinct(self.running.iter()), distinct(self.waiting.iter()))
    }

    /// Tokens of `prompt_blocks` found in the prefix cache now.
    pub fn cached_tokens(&self, prompt_blocks: &[u64]) -> u32 {
        self.kv.cached_prefix(prompt_blocks) as u32 * self.params.block_size
    }

    /// Prompt tokens still to prefill, for waiting and running sequences (counting what
    /// the prefix cache would save the waiting ones).
    pub fn prefill_backlog(&self) -> u64 {
        let waiting: u64 = self
            .waiting
            .iter()
            .map(|s| u64::from(s.req.prompt_tokens.saturating_sub(self.cached_tokens(&s.req.prompt_blocks))))
            .sum();
        let running: u64 = self.running.iter().map(|s| u64::from(s.req.prompt_tokens - s.prefilled)).sum();
        waiting + running
    }

    /// Whether `adapter` is resident (no load penalty) or a slot is free for it.
    pub fn adapter_ready(&self, adapter: &str) -> bool {
        self.resident.iter().any(|a| a == adapter) || self.resident.len() < self.params.max_loras
    }

    fn blocks_for(&self, tokens: u32) -> u32 {
        tokens.div_ceil(self.params.block_size.max(1))
    }

    /// Runs one step that starts at `now_us`; `None` when there is nothing to do.
    pub fn step(&mut self, now_us: u64) -> Option<Step> {
        if self.is_idle() {
            return None;
        }
        let mut duration = self.params.step_base_us as f64;
        duration += self.admit() as f64;

        // Prefill within the token budget, oldest first.
        let mut budget = self.params.max_batched_tokens;
        let mut prefill_tokens = 0u32;
        for s in self.running.iter_mut() {
            let remaining = s.req.prompt_tokens - s.prefilled;
            if remaining == 0 || budget == 0 {
                continue;
            }
            let chunk = remaining.min(budget);
            s.prefilled += chunk;
            budget -= chunk;
            prefill_tokens += chunk;
        }
        duration += f64::from(prefill_tokens) * self.params.prefill_per_token_us;

        // Decode one token for each sequence past prefill (including the ones whose prefill
        // just ended: that is their first token). Grow KV blocks as needed, preempting.
        let mut decoders: Vec<usize> = (0..self.running.len())
            .filter(|&i| self.running[i].prefilled == self.running[i].req.prompt_tokens)
            .collect();
        let mut preempted = Vec::new();
        for &i in &decoders {
            if preempted.contains(&i) {
                continue;
            }
            let (prompt, generated) = (self.running[i].req.prompt_tokens, self.running[i].generated);
            let need = self.blocks_for(prompt + generated + 1);
            while need > self.running[i].kv.blocks() {
                if self.kv.grow(&mut self.running[i].kv) {
                    continue;
                }
                // Recompute preemption of the newest sequence that is not this one.
                match (0..self.running.len()).rev().find(|&j| j != i && !preempted.contains(&j)) {
                    Some(j) => {
                        self.kv.release(std::mem::take(&mut self.running[j].kv));
                        preempted.push(j);
                        self.stats.preemptions += 1;
                    }
                    None => break,
                }
            }
        }
        decoders.retain(|i| !preempted.contains(i));
        duration += (self.params.step_per_seq_us * decoders.len() as u64) as f64;
        // Decode reads every sequence's KV cache: memory-bound, so it grows with context.
        let context: u64 = decoders
            .iter()
            .map(|&i| u64::from(self.running[i].req.prompt_tokens + self.running[i].generated))
            .sum();
        duration += context as f64 * self.params.decode_per_context_token_ns / 1000.0;
        let end_us = now_us + duration as u64;

        let mut events = Vec::new();
        for &i in &decoders {
            let s = &mut self.running[i];
            s.generated += 1;
            if s.first_token_us.is_none() {
                s.first_token_us = Some(end_us);
                self.stats.ttft_s.observe((end_us - s.arrival_us) as f64 / 1e6);
                events.push(Event::FirstToken { id: s.req.id });
            } else {
                events.push(Event::Token { id: s.req.id, index: s.generated - 1 });
            }
            self.stats.generation_tokens += 1;
        }

        // Retire finished sequences; send preempted ones back to the head of the queue.
        let mut keep = Vec::with_capacity(self.running.len());
        let mut requeue = Vec::new();
        for (i, mut s) in std::mem::take(&mut self.running).into_iter().enumerate() {
            if preempted.contains(&i) {
                requeue.push(s);
            } else if s.generated >= s.req.max_tokens.max(1) {
                // The answer's blocks that are full are cached, as the prompt's are.
                // (Not for a prompt capped to the cache's size: their chain has no start.)
                let full = ((s.req.prompt_tokens + s.generated) / self.params.block_size.max(1)) as usize;
                let capped = self.blocks_for(s.req.prompt_tokens + 1) > self.params.num_blocks;
                let answered = if capped { 0 } else { full.saturating_sub(s.req.prompt_blocks.len()).min(s.req.answer_blocks.len()) };
                self.kv.release_answered(std::mem::take(&mut s.kv), &s.req.answer_blocks[..answered]);
                self.stats.finished += 1;
                self.stats.prompt_tokens += u64::from(s.req.prompt_tokens);
                self.stats.e2e_s.observe((end_us - s.arrival_us) as f64 / 1e6);
                events.push(Event::Finished {
                    id: s.req.id,
                    prompt_tokens: s.req.prompt_tokens,
                    output_tokens: s.generated,
                });
            } else {
                keep.push(s);
            }
        }
        self.running = keep;
        for mut s in requeue.into_iter().rev() {
            s.prefilled = 0; // recompute: the prompt is prefilled again
            self.waiting.push_front(s);
        }
        Some(Step { duration_us: duration as u64, events })
    }

    /// Moves waiting sequences into the batch while slots, blocks and adapter slots allow;
    /// returns the adapter-loading time it cost (µs). Like vLLM, a request whose adapter
    /// cannot get a slot is skipped, and later ones may pass it.
    fn admit(&mut self) -> u64 {
        let mut load_us = 0;
        let mut i = 0;
        while i < self.waiting.len() && self.running.len() < self.params.max_num_seqs {
            let s = &self.waiting[i];
            // A prompt larger than the whole cache is capped rather than wedging the queue
            // (vLLM rejects it up front).
            let need = self.blocks_for(s.req.prompt_tokens + 1).min(self.params.num_blocks);
            if let Some(a) = &s.req.adapter {
                let (running, _) = self.adapters();
                if !running.contains(a) && running.len() >= self.params.max_loras {
                    i += 1;
                    continue;
                }
            }
            let Some((holding, hits)) = self.kv.allocate_prompt(&s.req.prompt_blocks, need) else {
                break; // FIFO on memory: nothing smaller jumps ahead
            };
            if let Some(a) = &s.req.adapter {
                if !self.resident.contains(a) {
                    load_us += self.params.lora_load_us;
                    if self.resident.len() >= self.params.max_loras.max(1) {
                        // Evict the least recently used adapter that is not running.
                        let (running, _) = self.adapters();
                        if let Some(pos) = self.resident.iter().position(|r| !running.contains(r)) {
                            self.resident.remove(pos);
                        }
                    }
                    self.resident.push(a.clone());
                }
            }
            let Some(mut s) = self.waiting.remove(i) else { break };
            // A cached prefix needs no prefill; the last prompt token is always computed.
            let cached = (hits as u32 * self.params.block_size).min(s.req.prompt_tokens.saturating_sub(1));
            self.stats.prefix_queries += u64::from(s.req.prompt_tokens);
            self.stats.prefix_hits += u64::from(cached);
            s.prefilled = cached;
            s.kv = holding;
            self.running.push(s);
        }
        load_us
    }
}

fn distinct<'a>(seqs: impl Iterator<Item = &'a Seq>) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for s in seqs {
        if let Some(a) = &s.req.adapter {
            if !out.contains(a) {
                out.push(a.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(engine: &mut Engine) -> (u64, Vec<(u64, Event)>) {
        let mut now = 0;
        let mut log = Vec::new();
        while let Some(step) = engine.step(now) {
            now += step.duration_us;
            log.extend(step.events.into_iter().map(|e| (now, e)));
        }
        (now, log)
    }

    fn req(id: u64, prompt: u32, out: u32) -> Request {
        Request { id, prompt_tokens: prompt, max_tokens: out, ..Default::default() }
    }

    #[test]
    fn one_request_prefills_then_decodes() {
        let mut e = Engine::new(ServerParams::default());
        e.submit(req(1, 100, 5), 0);
        let (end, log) = run(&mut e);
        let tokens = log.iter().filter(|(_, ev)| !matches!(ev, Event::Finished { .. })).count();
        assert_eq!(tokens, 5);
        assert!(matches!(log[0].1, Event::FirstToken { id: 1 }));
        // First step: base + 100 prompt tokens + one decode; four more decode steps.
        let p = ServerParams::default();
        let first = p.step_base_us + 2000 + p.step_per_seq_us;
        assert_eq!(log[0].0, first);
        assert_eq!(end, first + 4 * (p.step_base_us + p.step_per_seq_us));
        assert!(e.is_idle());
        assert_eq!(e.kv_usage(), 0.0);
        assert_eq!(e.stats.finished, 1);
    }

    #[test]
    fn queue_forms_beyond_max_num_seqs_and_latency_grows_with_batch() {
        let p = ServerParams { max_num_seqs: 2, ..Default::default() };
        let mut e = Engine::new(p);
        for id in 0..5 {
            e.submit(req(id, 10, 3), 0);
        }
        e.step(0);
        assert_eq!((e.num_running(), e.num_waiting()), (2, 3));
        assert!(e.kv_usage() > 0.0);
        let one = {
            let mut solo = Engine::new(ServerParams::default());
            solo.submit(req(9, 10, 3), 0);
            run(&mut solo).0
        };
        let (five, _) = run(&mut e);
        assert!(five > 2 * one, "five requests through two slots take longer: {five} vs {one}");
    }

    #[test]
    fn full_cache_preempts_and_everything_still_finishes() {
        let p = ServerParams { num_blocks: 12, block_size: 4, max_num_seqs: 4, ..Default::default() };
        let mut e = Engine::new(p);
        for id in 0..4 {
            e.submit(req(id, 8, 12), 0);
        }
        let (_, log) = run(&mut e);
        let finished = log.iter().filter(|(_, ev)| matches!(ev, Event::Finished { .. })).count();
        assert_eq!(finished, 4);
        assert!(e.stats.preemptions > 0);
        assert_eq!(e.kv_usage(), 0.0);
    }

    #[test]
    fn the_next_turn_finds_this_ones_answer_cached() {
        let p = ServerParams { block_size: 4, ..Default::default() };
        let prompt = "User: which city is the capital of france, and why";
        let answer = "\nAssistant: paris is, for it has been the seat of the kings and the state";
        let next = format!("{prompt}{answer}\nUser: and spain");
        let answer_tokens = crate::text::tokens_in(answer);
        let cached_after = |with_answer: bool| {
            let mut e = Engine::new(p.clone());
            let mut turn = Request::for_prompt(1, prompt, answer_tokens, None, 4);
            if with_answer {
                turn = turn.answering(prompt, answer, 4);
            }
            let prompt_tokens = turn.prompt_tokens;
            e.submit(turn, 0);
            run(&mut e);
            let next = Request::for_prompt(2, &next, 8, None, 4);
            (e.cached_tokens(&next.prompt_blocks), prompt_tokens)
        };
        let (cached, prompt_tokens) = cached_after(true);
        assert_eq!(cached, (prompt_tokens + answer_tokens) / 4 * 4, "the prompt and the answer, block by block");
        let (cached, _) = cached_after(false);
        assert_eq!(cached, prompt_tokens / 4 * 4, "the prompt's full blocks only");
    }

    #[test]
    fn adapters_wait_for_a_slot_and_others_pass() {
        let p = ServerParams { max_loras: 1, ..Default::default() };
        let mut e = Engine::new(p);
        let lora = |id, a: &str| Request { id, prompt_tokens: 4, max_tokens: 50, adapter: Some(a.into()), ..Default::default() };
        e.submit(lora(1, "a"), 0);
        e.submit(lora(2, "b"), 0);
        e.submit(req(3, 4, 50), 0);
        e.step(0);
        assert_eq!(e.adapters(), (vec!["a".to_string()], vec!["b".to_string()]));
        assert_eq!(e.num_running(), 2, "the base-model request passed the blocked adapter");
    }
}
