//! Choosing the next token from logits: greedy, or sampling with temperature, top-k, top-p,
//! min-p and a repetition penalty, seeded for reproducibility. The order of the filters is
//! Hugging Face's: repetition penalty, temperature, top-k, top-p, min-p.

use crate::error::Result;

#[derive(Clone, Debug, PartialEq)]
pub struct SamplingParams {
    /// 0 means greedy (argmax).
    pub temperature: f32,
    /// 0 means no top-k filter.
    pub top_k: usize,
    /// 1 means no nucleus filter.
    pub top_p: f32,
    /// 0 means no min-p filter.
    pub min_p: f32,
    /// 1 means no penalty (CTRL-style: positive logits divided, negative multiplied).
    pub repetition_penalty: f32,
    pub seed: u64,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams { temperature: 0.0, top_k: 0, top_p: 1.0, min_p: 0.0, repetition_penalty: 1.0, seed: 0 }
    }
}

impl SamplingParams {
    pub fn validate(&self) -> Result<()> {
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            crate::bail!(InvalidArgument, "temperature must be a finite number >= 0, got {}", self.temperature);
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            crate::bail!(InvalidArgument, "top_p must be in (0, 1], got {}", self.top_p);
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            crate::bail!(InvalidArgument, "min_p must be in [0, 1], got {}", self.min_p);
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            crate::bail!(InvalidArgument, "repetition_penalty must be a finite number > 0, got {}", self.repetition_penalty);
        }
        Ok(())
    }
}

/// A small, fast, seedable generator (PCG-XSH-RR 64/32): the same seed gives the same text
/// on every platform, the browser included.
#[derive(Clone, Debug)]
struct Pcg32 {
    state: u64,
}

impl Pcg32 {
    fn new(seed: u64) -> Self {
        let mut g = Pcg32 { state: 0 };
        g.next_u32();
        g.state = g.state.wrapping_add(seed);
        g.next_u32();
        g
    }
    fn next_u32(&mut self) -> u32 {
        let old = self.state;
        self.state = old.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let xorshifted = (((old >> 18) ^ old) >> 27) as u32;
        xorshifted.rotate_right((old >> 59) as u32)
    }
    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u32() as f64) / 4294967296.0
    }
}

pub struct Sampler {
    params: SamplingParams,
    rng: Pcg32,
}

impl Sampler {
    pub fn new(params: SamplingParams) -> Result<Self> {
        params.validate()?;
        let rng = Pcg32::new(params.seed);
        Ok(Sampler { params, rng })
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Picks a token from `logits` (modified in place), given the tokens seen so far.
    pub fn sample(&mut self, logits: &mut [f32], history: &[u32]) -> u32 {
        let mut seen = Vec::new();
        if self.params.repetition_penalty != 1.0 {
            seen = history.to_vec();
            seen.sort_unstable();
            seen.dedup();
        }
        self.sample_distinct(logits, &seen)
    }

    /// `sample` given the distinct tokens seen so far (in any order), which a generation
    /// keeps as it goes instead of sorting its history every token.
    pub fn sample_distinct(&mut self, logits: &mut [f32], seen: &[u32]) -> u32 {
        let p = &self.params;
        if p.repetition_penalty != 1.0 {
            for &t in seen {
                if let Some(l) = logits.get_mut(t as usize) {
                    *l = if *l > 0.0 { *l / p.repetition_penalty } else { *l * p.repetition_penalty };
                }
            }
        }
        if p.temperature == 0.0 {
            return argmax(logits);
        }
        // Candidates sorted by logit, best first; NaN logits are never chosen. Scaled in f64:
        // an f32 logit over the smallest positive f32 temperature stays finite there, so a tiny
        // temperature converges on greedy instead of overflowing to inf - inf = NaN.
        let temperature = p.temperature as f64;
        let mut cand: Vec<(u32, f64)> = logits.iter().enumerate().filter(|(_, l)| !l.is_nan()).map(|(i, &l)| (i as u32, l as f64 / temperature)).collect();
        if cand.is_empty() {
            return 0;
        }
        cand.sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        if p.top_k > 0 && p.top_k < cand.len() {
            cand.truncate(p.top_k);
        }
        let max = cand[0].1;
        // An infinite best logit takes all the mass, shared by the logits equal to it.
        let mut probs: Vec<f64> = cand.iter().map(|c| if c.1 == max { 1.0 } else { (c.1 - max).exp() }).collect();
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|q| *q /= total);
        if p.top_p < 1.0 {
            let mut acc = 0.0;
            let mut keep = probs.len();
            for (i, q) in probs.iter().enumerate() {
                acc += q;
                if acc >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
            probs.truncate(keep);
        }
        if p.min_p > 0.0 {
            let floor = probs[0] * p.min_p as f64;
            let keep = probs.iter().take_while(|&&q| q >= floor).count().max(1);
            probs.truncate(keep);
        }
        let total: f64 = probs.iter().sum();
        let mut r = self.rng.next_f64() * total;
        for (i, q) in probs.iter().enumerate() {
            r -= q;
            if r < 0.0 {
                return cand[i].0;
            }
        }
        cand[probs.len() - 1].0
    }
}

/// Index of the largest logit (the first on ties, as numpy and torch do); NaNs are skipped.
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &v) in logits.iter().enumerate() {
        if v > best_v {
            best_v = v;
            best = i;
        }
    }
    best as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tiny temperature converges on greedy, and an infinite logit takes all the mass (before,
    /// logits / temperature overflowed and the draw fell through to the least likely token).
    #[test]
    fn tiny_temperatures_and_infinite_logits_pick_the_best_token() {
        for temperature in [f32::MIN_POSITIVE, 1e-40, 1e-30, 1e-8] {
            for seed in 0..20 {
                let mut s = Sampler::new(SamplingParams { temperature, seed, ..Default::default() }).unwrap();
                assert_eq!(s.sample(&mut [1.0, 30.0, -5.0, 29.9, f32::NEG_INFINITY], &[]), 1, "temperature {temperature}");
            }
        }
        for seed in 0..20 {
            let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_p: 0.9, seed, ..Default::default() }).unwrap();
            assert_eq!(s.sample(&mut [1.0, f32::INFINITY, 3.0, f32::NAN], &[]), 1);
            let two = s.sample(&mut [f32::INFINITY, 0.0, f32::INFINITY], &[]);
            assert!(two == 0 || two == 2, "{two}");
        }
    }

    #[test]
    fn greedy_is_argmax_and_seeds_repeat() {
        let mut s = Sampler::new(SamplingParams::default()).unwrap();
        assert_eq!(s.sample(&mut [0.1, 3.0, 2.0, 3.0], &[]), 1);
        let params = SamplingParams { temperature: 1.0, seed: 42, ..Default::default() };
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let run = |p: SamplingParams| {
            let mut s = Sampler::new(p).unwrap();
            (0..20).map(|_| s.sample(&mut logits.clone(), &[])).collect::<Vec<_>>()
        };
        assert_eq!(run(params.clone()), run(params.clone()));
        assert_ne!(run(params.clone()), run(SamplingParams { seed: 43, ..params }));
    }

    #[test]
    fn filters_restrict_the_candidates() {
        let logits = [5.0f32, 4.0, 1.0, 0.0, -1.0];
        for seed in 0..50 {
            let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_k: 2, seed, ..Default::default() }).unwrap();
            assert!(s.sample(&mut logits.clone(), &[]) < 2);
            let mut s = Sampler::new(SamplingParams { temperature: 1.0, top_p: 0.5, seed, ..Default::default() }).unwrap();
            assert_eq!(s.sample(&mut logits.clone(), &[]), 0);
            let mut s = Sampler::new(SamplingParams { temperature: 1.0, min_p: 0.2, seed, ..Default::default() }).unwrap();
            assert!(s.sample(&mut logits.clone(), &[]) < 2);
        }
        // A strong repetition penalty moves greedy off a seen token.
        let mut s = Sampler::new(SamplingParams { repetition_penalty: 10.0, ..Default::default() }).unwrap();
        assert_eq!(s.sample(&mut logits.clone(), &[0]), 1);
    }

    #[test]
    fn nonsense_values_are_rejected() {
        for p in [
            SamplingParams { temperature: -1.0, ..Default::default() },
            SamplingParams { temperature: f32::NAN, ..Default::default() },
            SamplingParams { top_p: 0.0, ..Default::default() },
            SamplingParams { top_p: 1.5, ..Default::default() },
            SamplingParams { min_p: -0.1, ..Default::default() },
            SamplingParams { repetition_penalty: 0.0, ..Default::default() },
        ] {
            assert!(Sampler::new(p).is_err());
        }
    }
}
