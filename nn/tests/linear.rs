//! `Linear`'s folding and epilogue helpers against the plain ops they stand for (CPU path).
#![allow(clippy::unwrap_used)]

use candle_core::{DType, Device, Tensor};
use dvd_nn::Linear;
use dvd_nn::fused::{linear_gelu, linear_residual};

fn random(shape: (usize, usize), seed: u32) -> Tensor {
    let n = shape.0 * shape.1;
    let values: Vec<f32> = (0..n)
        .map(|i| {
            let h = (i as u32)
                .wrapping_mul(2_654_435_761)
                .wrapping_add(seed * 97);
            ((h >> 8) % 2001) as f32 / 1000.0 - 1.0
        })
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

fn layer() -> Linear {
    let weight = random((6, 5), 1);
    let bias = random((1, 6), 2).flatten_all().unwrap();
    Linear::new(weight, Some(bias))
}

fn max_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

#[test]
fn scale_outputs_folds_a_per_output_scale_into_weight_and_bias() {
    let linear = layer();
    let scale = Tensor::new(&[0.5f32, -2.0, 0.1, 3.0, 1.0, 0.0], &Device::Cpu).unwrap();
    let x = random((4, 5), 3);
    let folded = linear.scale_outputs(&scale).unwrap();
    let expected = linear.forward(&x).unwrap().broadcast_mul(&scale).unwrap();
    assert!(max_diff(&folded.forward(&x).unwrap(), &expected) < 1e-5);
    // A zero scale zeroes that output entirely; the original layer is unchanged.
    let column = folded.forward(&x).unwrap().narrow(1, 5, 1).unwrap();
    assert_eq!(max_diff(&column, &column.zeros_like().unwrap()), 0.0);
    assert!(max_diff(&linear.forward(&x).unwrap(), &expected) > 0.1);
}

#[test]
fn scale_outputs_keeps_the_weight_dtype() {
    let linear = Linear::new(
        random((6, 5), 1).to_dtype(DType::BF16).unwrap(),
        Some(Tensor::zeros(6, DType::BF16, &Device::Cpu).unwrap()),
    );
    let scale = Tensor::ones(6, DType::BF16, &Device::Cpu).unwrap();
    let folded = linear.scale_outputs(&scale).unwrap();
    assert_eq!(folded.weight().dtype(), DType::BF16);
    assert_eq!(folded.bias().unwrap().dtype(), DType::BF16);
    let same = max_diff(
        &folded.weight().to_dtype(DType::F32).unwrap(),
        &linear.weight().to_dtype(DType::F32).unwrap(),
    );
    assert_eq!(same, 0.0);
}

#[test]
fn epilogue_helpers_match_the_unfused_ops() {
    let linear = layer();
    let x = random((4, 5), 4);
    let residual = random((4, 6), 5);
    let y = linear.forward(&x).unwrap();
    assert!(max_diff(&linear_gelu(&linear, &x).unwrap(), &y.gelu_erf().unwrap()) < 1e-6);
    let summed = linear_residual(&linear, &x, &residual).unwrap();
    assert!(max_diff(&summed, &(&residual + &y).unwrap()) < 1e-6);
}
