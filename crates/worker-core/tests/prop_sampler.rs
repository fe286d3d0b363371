//! Property tests of the reference sampler: whatever the logits and parameters, the token comes
//! from the candidates that top-k, top-p and min-p leave, greedy is argmax, a zero draw picks
//! the most likely candidate, the draw is deterministic, and non-finite logits or odd
//! parameters never panic or return an id outside the vocabulary.

use proptest::prelude::*;
use worker_core::sampling::{SamplingParams, argmax, sample_from_logits, sample_host};

fn logits() -> impl Strategy<Value = Vec<f32>> {
    // Coarse values so ties happen.
    proptest::collection::vec((-40i32..40).prop_map(|x| x as f32 * 0.5), 1..48)
}

fn params(n: usize) -> impl Strategy<Value = SamplingParams> {
    (
        prop_oneof![Just(0.0f32), 1e-3f32..2.0],
        prop_oneof![Just(0usize), 1..n + 2],
        prop_oneof![Just(1.0f32), 0.0f32..1.0],
        prop_oneof![Just(0.0f32), 0.0f32..1.0],
    )
        .prop_map(|(temperature, top_k, top_p, min_p)| SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p,
            ..Default::default()
        })
}

/// Ids ordered as the sampler ranks them: logit descending, then id ascending.
fn ranking(l: &[f32]) -> Vec<u32> {
    let mut ids: Vec<u32> = (0..l.len() as u32).collect();
    ids.sort_by(|&a, &b| l[b as usize].total_cmp(&l[a as usize]).then(a.cmp(&b)));
    ids
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    #[test]
    fn token_survives_every_filter(
        (l, p) in logits().prop_flat_map(|l| { let n = l.len(); (Just(l), params(n)) }),
        u in 0.0f32..1.0,
    ) {
        let t = sample_from_logits(&l, &p, u);
        prop_assert!((t as usize) < l.len());
        prop_assert_eq!(t, sample_from_logits(&l, &p, u), "same draw, same token");
        if p.is_greedy() {
            prop_assert_eq!(t as usize, argmax(&l));
            return Ok(());
        }
        let rank = ranking(&l).iter().position(|&x| x == t).unwrap();
        let order = ranking(&l);
        // top-k: among the k best.
        if p.top_k > 0 {
            prop_assert!(rank < p.top_k, "rank {} with top_k {}", rank, p.top_k);
        }
        // top-p: the better candidates (within top-k) had not reached top_p mass yet.
        let k = if p.top_k > 0 { p.top_k.min(l.len()) } else { l.len() };
        if p.top_p < 1.0 && rank > 0 {
            let max = l[order[0] as usize];
            let e: Vec<f64> = order[..k].iter().map(|&i| ((l[i as usize] - max) as f64).exp()).collect();
            let total: f64 = e.iter().sum();
            let before: f64 = e[..rank].iter().sum::<f64>() / total;
            prop_assert!(before < p.top_p as f64 + 1e-5, "mass before {} >= top_p {}", before, p.top_p);
        }
        // min-p: at least min_p times as likely as the best (or the best itself).
        if p.min_p > 0.0 && rank > 0 {
            let best = l[order[0] as usize];
            prop_assert!(l[t as usize] >= best + p.min_p.ln() - 1e-5);
        }
        // A zero draw takes the most likely candidate.
        prop_assert_eq!(sample_from_logits(&l, &p, 0.0), order[0]);
    }

    #[test]
    fn non_finite_logits_and_penalties_never_panic(
        l in proptest::collection::vec(
            prop_oneof![
                4 => -50.0f32..50.0,
                1 => Just(f32::NEG_INFINITY),
                1 => Just(f32::INFINITY),
                1 => Just(f32::NAN),
                1 => Just(f32::MAX),
                1 => Just(f32::MIN),
            ],
            1..32,
        ),
        temperature in prop_oneof![Just(0.0f32), Just(1e-30f32), 0.0f32..2.0],
        top_k in 0usize..40,
        top_p in 0.0f32..=1.0,
        min_p in 0.0f32..=1.0,
        repetition_penalty in prop_oneof![Just(1.0f32), 1e-3f32..2.0],
        presence_penalty in -2.0f32..2.0,
        frequency_penalty in -2.0f32..2.0,
        history in proptest::collection::vec(0u32..64, 0..80),
        u in prop_oneof![Just(0.0f32), Just(0.999_999_9f32), 0.0f32..1.0],
        logprobs in proptest::option::of(0usize..25),
    ) {
        let p = SamplingParams {
            temperature,
            top_k,
            top_p,
            min_p,
            repetition_penalty,
            presence_penalty,
            frequency_penalty,
            ..Default::default()
        };
        let (t, lp) = sample_host(&l, &p, &history, u, logprobs);
        prop_assert!((t as usize) < l.len());
        if let (Some(n), Some(lp)) = (logprobs, lp) {
            prop_assert_eq!(lp.token, t);
            prop_assert_eq!(lp.top.len(), n.min(l.len()));
        }
    }
}
