//! When to stop generating, and how much text is safe to stream.

use super::params::SamplingParams;

/// Why generation stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopReason {
    /// The model's end-of-sequence token (`<|im_end|>` for InternVL3.5 chat).
    Eos(u32),
    /// One of the request's `stop_token_ids`.
    StopToken(u32),
    /// One of the request's `stop_strings` appeared; the text is cut before it.
    StopString(String),
    /// `max_new_tokens` tokens were generated.
    MaxTokens,
}

/// What one generated token changes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StopUpdate {
    /// Text that is now safe to send: it can no longer become part of a stop string.
    pub text: String,
    /// Set when generation must stop (after sending `text`).
    pub stop: Option<StopReason>,
}

/// Tracks stop conditions over a stream of generated tokens and their text deltas.
///
/// Feed each generated token with the text it completed (from
/// [`IncrementalDecoder::push`](crate::text::IncrementalDecoder::push)). Text that ends with the
/// beginning of a stop string is held back until it either completes the stop string (then it is
/// dropped and generation stops) or stops matching (then it is released), so stop strings that
/// span several tokens are caught and never streamed. A stop or EOS token's own text is not
/// output. When generation ends, pass the decoder's [`finish`](crate::text::IncrementalDecoder::finish)
/// text to [`finish`](Self::finish) for the held-back rest.
#[derive(Debug, Clone)]
pub struct StopChecker {
    eos_token_ids: Vec<u32>,
    stop_token_ids: Vec<u32>,
    stop_strings: Vec<String>,
    max_new_tokens: usize,
    generated: usize,
    /// Text received but not yet released.
    pending: String,
    stopped: Option<StopReason>,
}

impl StopChecker {
    /// A checker for `params` and the model's EOS ids (ignored with `params.ignore_eos`).
    pub fn new(params: &SamplingParams, eos_token_ids: &[u32]) -> Self {
        Self {
            eos_token_ids: if params.ignore_eos {
                Vec::new()
            } else {
                eos_token_ids.to_vec()
            },
            stop_token_ids: params.stop_token_ids.clone(),
            stop_strings: params
                .stop_strings
                .iter()
                .filter(|s| !s.is_empty())
                .cloned()
                .collect(),
            max_new_tokens: params.max_new_tokens,
            generated: 0,
            pending: String::new(),
            stopped: None,
        }
    }

    /// Records one generated `token` whose decoding completed `text`.
    pub fn push(&mut self, token: u32, text: &str) -> StopUpdate {
        if let Some(reason) = &self.stopped {
            return StopUpdate {
                text: String::new(),
                stop: Some(reason.clone()),
            };
        }
        self.generated += 1;
        let token_stop = if self.eos_token_ids.contains(&token) {
            Some(StopReason::Eos(token))
        } else if self.stop_token_ids.contains(&token) {
            Some(StopReason::StopToken(token))
        } else {
            None
        };
        if let Some(reason) = token_stop {
            return self.stop_with(reason, None);
        }
        self.pending.push_str(text);
        if let Some((at, stop)) = self.find_stop_string() {
            return self.stop_with(StopReason::StopString(stop), Some(at));
        }
        if self.generated >= self.max_new_tokens {
            return self.stop_with(StopReason::MaxTokens, None);
        }
        let release = self.pending.len() - self.held_back();
        StopUpdate {
            text: self.pending.drain(..release).collect(),
            stop: None,
        }
    }

    /// Ends the stream: checks `tail` (the decoder's last text) for stop strings and returns
    /// the rest of the text not yet released. Nothing more is released after this.
    pub fn finish(&mut self, tail: &str) -> String {
        if matches!(self.stopped, Some(StopReason::StopString(_))) {
            return String::new();
        }
        self.pending.push_str(tail);
        let text = match self.find_stop_string() {
            Some((at, stop)) => {
                self.stopped = Some(StopReason::StopString(stop));
                self.pending[..at].to_owned()
            }
            None => std::mem::take(&mut self.pending),
        };
        self.pending.clear();
        text
    }

    /// Number of tokens pushed (stop tokens included).
    pub fn generated(&self) -> usize {
        self.generated
    }

    /// Why generation stopped, once it has.
    pub fn stopped(&self) -> Option<&StopReason> {
        self.stopped.as_ref()
    }

    /// Stops: releases the pending text (cut at `cut` when given).
    fn stop_with(&mut self, reason: StopReason, cut: Option<usize>) -> StopUpdate {
        let mut text = std::mem::take(&mut self.pending);
        if let Some(cut) = cut {
            text.truncate(cut);
        }
        self.stopped = Some(reason.clone());
        StopUpdate {
            text,
            stop: Some(reason),
        }
    }

    /// The earliest stop string in the pending text (first listed on a tie).
    fn find_stop_string(&self) -> Option<(usize, String)> {
        self.stop_strings
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()).map(|at| (at, s)))
            .min_by_key(|(at, _)| *at)
            .map(|(at, s)| (at, s.clone()))
    }

    /// Length of the longest pending suffix that is a proper prefix of a stop string.
    fn held_back(&self) -> usize {
        let mut hold = 0;
        for stop in &self.stop_strings {
            for (k, _) in stop.char_indices().skip(1) {
                if k > hold && self.pending.ends_with(&stop[..k]) {
                    hold = k;
                }
            }
        }
        hold
    }
}
