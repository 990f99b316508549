//! The MoE block on the CPU against a plain f64 evaluation of the same maths, and the properties
#![allow(clippy::unwrap_used)] // tests unwrap freely: a failure is the test failing
//! serving relies on: transformers' tie order, lopsided routing, batch invariance.

use candle_core::{DType, Device, Tensor};
use dvd_nn::Linear;
use dvd_nn::moe::{Experts, Moe, group};

/// Deterministic values in [-scale, scale).
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

struct Shape {
    hidden: usize,
    experts: usize,
    width: usize,
    top_k: usize,
}

fn block(s: &Shape, router: Vec<f32>, renormalise: bool, seed: u64) -> Moe {
    let cpu = &Device::Cpu;
    let gate_up = values(s.experts * 2 * s.width * s.hidden, seed, 0.2);
    let down = values(s.experts * s.hidden * s.width, seed + 1, 0.2);
    let experts = Experts::new(
        &Tensor::from_vec(gate_up, (s.experts, 2 * s.width, s.hidden), cpu).unwrap(),
        &Tensor::from_vec(down, (s.experts, s.hidden, s.width), cpu).unwrap(),
    )
    .unwrap();
    let router = Linear::new(
        Tensor::from_vec(router, (s.experts, s.hidden), cpu).unwrap(),
        None,
    );
    Moe::new(router, experts, s.top_k, renormalise).unwrap()
}

fn random_block(s: &Shape, renormalise: bool, seed: u64) -> Moe {
    block(
        s,
        values(s.experts * s.hidden, seed + 7, 0.5),
        renormalise,
        seed,
    )
}

fn rows(t: &Tensor) -> Vec<Vec<f32>> {
    t.to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap()
}

/// The block in f64, token by token: softmax, top-k (ties to the lower index), experts, sum.
fn reference(moe: &Moe, x: &Tensor, renormalise: bool) -> Vec<Vec<f64>> {
    let router = rows(&moe.router_weight().unwrap());
    let gate_up = moe
        .experts()
        .gate_up()
        .stacked()
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    let down = moe
        .experts()
        .down()
        .stacked()
        .unwrap()
        .to_vec3::<f32>()
        .unwrap();
    let width = moe.experts().width();
    let dot = |a: &[f32], b: &[f64]| a.iter().zip(b).map(|(&a, &b)| a as f64 * b).sum::<f64>();
    rows(x)
        .into_iter()
        .map(|row| {
            let row: Vec<f64> = row.iter().map(|&v| v as f64).collect();
            let logits: Vec<f64> = router.iter().map(|r| dot(r, &row)).collect();
            let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            let exps: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
            let total: f64 = exps.iter().sum();
            let mut order: Vec<usize> = (0..exps.len()).collect();
            order.sort_by(|&a, &b| exps[b].total_cmp(&exps[a]).then(a.cmp(&b)));
            let chosen = &order[..moe.top_k()];
            let norm: f64 = if renormalise {
                chosen.iter().map(|&e| exps[e]).sum()
            } else {
                total
            };
            let mut out = vec![0f64; row.len()];
            for &e in chosen {
                let act: Vec<f64> = (0..width)
                    .map(|j| {
                        let g = dot(&gate_up[e][j], &row);
                        let u = dot(&gate_up[e][width + j], &row);
                        g / (1.0 + (-g).exp()) * u
                    })
                    .collect();
                for (o, d) in out.iter_mut().zip(&down[e]) {
                    *o += exps[e] / norm * dot(d, &act);
                }
            }
            out
        })
        .collect()
}

/// max |a - b| / max |b|.
fn relative(a: &[Vec<f32>], b: &[Vec<f64>]) -> f64 {
    let scale = b.iter().flatten().fold(0f64, |m, v| m.max(v.abs()));
    let diff = a
        .iter()
        .flatten()
        .zip(b.iter().flatten())
        .fold(0f64, |m, (&x, y)| m.max((x as f64 - y).abs()));
    diff / scale
}

fn input(tokens: usize, hidden: usize, seed: u64) -> Tensor {
    Tensor::from_vec(
        values(tokens * hidden, seed, 1.0),
        (tokens, hidden),
        &Device::Cpu,
    )
    .unwrap()
}

#[test]
fn block_matches_a_plain_evaluation() {
    // Widths that are not multiples of the kernel's lanes or tiles, both routing modes.
    for (renormalise, hidden, width) in [(true, 40, 24), (false, 37, 13)] {
        let s = Shape {
            hidden,
            experts: 8,
            width,
            top_k: 3,
        };
        let moe = random_block(&s, renormalise, 3);
        let x = input(19, s.hidden, 4);
        let got = rows(&moe.forward(&x).unwrap());
        let err = relative(&got, &reference(&moe, &x, renormalise));
        assert!(err < 1e-6, "relative error {err:e}");
    }
}

#[test]
fn tied_router_scores_go_to_the_lower_expert() {
    let s = Shape {
        hidden: 16,
        experts: 6,
        width: 8,
        top_k: 2,
    };
    // Experts 1, 2 and 4 have the same router row: every token ties them.
    let mut router = values(s.experts * s.hidden, 11, 0.1);
    let shared = values(s.hidden, 12, 2.0);
    for e in [1, 2, 4] {
        router[e * s.hidden..(e + 1) * s.hidden].copy_from_slice(&shared);
    }
    let moe = block(&s, router, false, 13);
    // Inputs along the shared row make the tied experts the most probable.
    let x: Vec<f32> = (0..5)
        .flat_map(|t| shared.iter().map(move |v| v * (1.0 + t as f32)))
        .collect();
    let x = Tensor::from_vec(x, (5, s.hidden), &Device::Cpu).unwrap();
    let routing = moe.route(&x).unwrap();
    for (experts, weights) in routing
        .experts
        .to_vec2::<u32>()
        .unwrap()
        .iter()
        .zip(routing.weights.to_vec2::<f32>().unwrap())
    {
        assert_eq!(experts, &[1, 2]);
        assert_eq!(weights[0].to_bits(), weights[1].to_bits());
    }
    let err = relative(
        &rows(&moe.forward(&x).unwrap()),
        &reference(&moe, &x, false),
    );
    assert!(err < 1e-6, "relative error {err:e}");
}

#[test]
fn one_expert_taking_every_token_and_the_rest_none() {
    let s = Shape {
        hidden: 24,
        experts: 16,
        width: 8,
        top_k: 1,
    };
    // Only expert 11 sees the (positive) inputs.
    let mut router = vec![0f32; s.experts * s.hidden];
    router[11 * s.hidden..12 * s.hidden].fill(1.0);
    let moe = block(&s, router, true, 21);
    let x = input(33, s.hidden, 22).abs().unwrap();
    let routing = moe.route(&x).unwrap();
    let grouping = group(&routing.experts, s.experts).unwrap();
    let mut offsets = vec![0u32; 12];
    offsets.extend([33; 5]);
    assert_eq!(grouping.offsets.to_vec1::<u32>().unwrap(), offsets);
    let err = relative(&rows(&moe.forward(&x).unwrap()), &reference(&moe, &x, true));
    assert!(err < 1e-6, "relative error {err:e}");
}

#[test]
fn a_tokens_output_does_not_depend_on_its_batch() {
    // The Qwen3-30B-A3B routing shape at a small width, and few experts with a hidden width past
    // the kernel's k range, so a token alone and the same token among many take different paths.
    for (s, seed) in [
        (
            Shape {
                hidden: 64,
                experts: 128,
                width: 16,
                top_k: 8,
            },
            31,
        ),
        (
            Shape {
                hidden: 300,
                experts: 16,
                width: 24,
                top_k: 4,
            },
            33,
        ),
    ] {
        let moe = random_block(&s, true, seed);
        let batch = input(41, s.hidden, seed + 1);
        let together = rows(&moe.forward(&batch).unwrap());
        for t in [0, 17, 40] {
            let alone = rows(&moe.forward(&batch.narrow(0, t, 1).unwrap()).unwrap());
            let pair = rows(
                &moe.forward(&batch.narrow(0, t.min(39), 2).unwrap())
                    .unwrap(),
            );
            let scale = alone[0].iter().fold(0f32, |m, v| m.max(v.abs()));
            for other in [&together[t], &pair[t - t.min(39)]] {
                let diff = alone[0]
                    .iter()
                    .zip(other)
                    .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                assert!(diff <= 1e-6 * scale, "token {t}: {diff:e} of {scale:e}");
            }
        }
    }
}

#[test]
fn half_precision_blocks_follow_f32() {
    // Every expert chosen, so rounding the logits cannot change which experts run.
    let s = Shape {
        hidden: 48,
        experts: 4,
        width: 16,
        top_k: 4,
    };
    let moe = random_block(&s, true, 41);
    let x = input(9, s.hidden, 42);
    for (dtype, bound) in [(DType::BF16, 2e-2), (DType::F16, 3e-3)] {
        let cast = |t: &Tensor| t.to_dtype(dtype).unwrap();
        let widen = |t: &Tensor| cast(t).to_dtype(DType::F32).unwrap();
        let experts = Experts::new(
            &cast(&moe.experts().gate_up().stacked().unwrap()),
            &cast(&moe.experts().down().stacked().unwrap()),
        )
        .unwrap();
        let half = Moe::new(
            Linear::new(cast(&moe.router_weight().unwrap()), None),
            experts,
            4,
            true,
        )
        .unwrap();
        // The reference runs on the same rounded weights and inputs.
        let rounded = Moe::new(
            Linear::new(widen(&moe.router_weight().unwrap()), None),
            Experts::new(
                &widen(&moe.experts().gate_up().stacked().unwrap()),
                &widen(&moe.experts().down().stacked().unwrap()),
            )
            .unwrap(),
            4,
            true,
        )
        .unwrap();
        let got = rows(&half.forward(&cast(&x)).unwrap());
        let err = relative(&got, &reference(&rounded, &widen(&x), true));
        assert!(err < bound, "{dtype:?}: relative error {err:e}");
    }
}

#[test]
fn an_empty_batch_gives_an_empty_output() {
    let s = Shape {
        hidden: 8,
        experts: 4,
        width: 4,
        top_k: 2,
    };
    let moe = random_block(&s, false, 51);
    let out = moe
        .forward(&Tensor::zeros((0, 8), DType::F32, &Device::Cpu).unwrap())
        .unwrap();
    assert_eq!(out.dims(), [0, 8]);
}

#[test]
fn mismatched_experts_and_routers_are_refused() {
    let cpu = &Device::Cpu;
    let z = |shape: &[usize]| Tensor::zeros(shape, DType::F32, cpu).unwrap();
    assert!(Experts::new(&z(&[4, 8, 6]), &z(&[4, 6, 5])).is_err());
    assert!(Experts::new(&z(&[4, 8, 6]), &z(&[3, 6, 4])).is_err());
    let experts = Experts::new(&z(&[4, 8, 6]), &z(&[4, 6, 4])).unwrap();
    assert!(Moe::new(Linear::new(z(&[5, 6]), None), experts.clone(), 2, false).is_err());
    assert!(Moe::new(Linear::new(z(&[4, 6]), None), experts.clone(), 5, false).is_err());
    assert!(Moe::new(Linear::new(z(&[4, 6]), None), experts, 4, false).is_ok());
}

#[test]
fn expert_parallel_shares_add_up_to_the_whole_block() {
    let s = Shape {
        hidden: 16,
        experts: 7,
        width: 8,
        top_k: 3,
    };
    let whole = random_block(&s, true, 61);
    let x = Tensor::from_vec(values(9 * 16, 62, 1.0), (9, 16), &Device::Cpu).unwrap();
    let want = whole.forward(&x).unwrap();
    let router = Linear::new(whole.router_weight().unwrap(), None);
    let gate_up = whole.experts().gate_up().stacked().unwrap();
    let down = whole.experts().down().stacked().unwrap();
    // Uneven shares, as `--expert-parallel` gives 7 experts over 3 ranks.
    let mut sum: Option<Tensor> = None;
    for range in [0..3, 3..5, 5..7] {
        let experts = Experts::new(
            &gate_up.narrow(0, range.start, range.len()).unwrap(),
            &down.narrow(0, range.start, range.len()).unwrap(),
        )
        .unwrap();
        let share = Moe::holding(router.clone(), experts, range.start, s.top_k, true)
            .unwrap()
            .forward(&x)
            .unwrap();
        sum = Some(match sum {
            Some(total) => (total + share).unwrap(),
            None => share,
        });
    }
    let diff = (sum.unwrap() - &want)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff <= 1e-6, "{diff}");
    // A share past the router's experts, or of no experts, is refused.
    let two = Experts::new(
        &gate_up.narrow(0, 0, 2).unwrap(),
        &down.narrow(0, 0, 2).unwrap(),
    )
    .unwrap();
    assert!(Moe::holding(router, two, 6, s.top_k, true).is_err());
}
