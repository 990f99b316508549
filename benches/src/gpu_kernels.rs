//! Where a GPU layer's time goes (`dvd bench gpu --kernels`): each kernel of the GPU paths
//! alone at InternVL3.5-8B shapes on random data, with its achieved TFLOP/s or GB/s.

use std::time::Instant;

use anyhow::Result;
use candle_core::{DType, Device, Tensor};
use dvd_kernels::{
    AttentionDims, Epilogue, HeadView, PagedBounds, PagedRow, PagedTables, add_rms_norm,
    flash_attention, linear_epilogue, paged_attention, silu_mul, uninit_bf16,
};
use serde::Serialize;

use crate::stats::median;

/// One kernel's timing.
#[derive(Debug, Clone, Serialize)]
pub struct KernelPoint {
    /// What ran, with its shape.
    pub what: String,
    /// Median milliseconds.
    pub ms: f64,
    /// Useful TFLOP/s (matrix work) or GB/s moved (memory-bound work).
    pub rate: f64,
    /// "TFLOP/s" or "GB/s".
    pub unit: &'static str,
}

fn time(device: &Device, reps: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..3 {
        f()?;
    }
    device.synchronize()?;
    let mut samples = Vec::new();
    for _ in 0..7 {
        let started = Instant::now();
        for _ in 0..reps {
            f()?;
        }
        device.synchronize()?;
        samples.push(started.elapsed().as_secs_f64() * 1e3 / reps as f64);
    }
    Ok(median(&samples))
}

fn randn(device: &Device, shape: impl Into<candle_core::Shape>) -> Result<Tensor> {
    Ok((Tensor::randn(0f32, 1.0, shape, device)? * 0.1)?.to_dtype(DType::BF16)?)
}

fn point(what: &str, ms: f64, amount: f64, unit: &'static str) -> KernelPoint {
    KernelPoint {
        what: what.to_string(),
        ms,
        rate: amount / (ms / 1e3) / 1e12 * if unit == "GB/s" { 1e3 } else { 1.0 },
        unit,
    }
}

/// Times every kernel of the GPU paths at InternVL3.5-8B shapes.
pub fn run(device: &Device) -> Result<Vec<KernelPoint>> {
    let mut out = Vec::new();
    // Vision: 32 tiles x 1025 tokens, width 1024, 16 heads of 64, MLP 4096.
    let (tiles, n, d, heads, hd) = (32usize, 1025usize, 1024usize, 16usize, 64usize);
    let rows = tiles * n;
    let x = randn(device, (rows, d))?;
    let w_qkv = randn(device, (3 * d, d))?;
    let ms = time(device, 5, || {
        x.matmul(&w_qkv.t()?)?;
        Ok(())
    })?;
    out.push(point(
        "vision qkv matmul [32800x1024]x[1024x3072]",
        ms,
        2.0 * (rows * d * 3 * d) as f64,
        "TFLOP/s",
    ));
    let w_fc1 = randn(device, (4 * d, d))?;
    let ms = time(device, 5, || {
        x.matmul(&w_fc1.t()?)?;
        Ok(())
    })?;
    out.push(point(
        "vision fc1 matmul [32800x1024]x[1024x4096]",
        ms,
        2.0 * (rows * d * 4 * d) as f64,
        "TFLOP/s",
    ));
    let b = randn(device, 4 * d)?;
    let ms = time(device, 5, || {
        linear_epilogue(&x, &w_fc1, &b, Epilogue::BiasGelu, None)?;
        Ok(())
    })?;
    out.push(point(
        "vision fc1 + bias + GELU epilogue (cuBLASLt) [32800x1024]x[1024x4096]",
        ms,
        2.0 * (rows * d * 4 * d) as f64,
        "TFLOP/s",
    ));
    let h = randn(device, (rows, 4 * d))?;
    let w_fc2 = randn(device, (d, 4 * d))?;
    let b2 = randn(device, d)?;
    let ms = time(device, 5, || {
        linear_epilogue(&h, &w_fc2, &b2, Epilogue::Bias, Some(&x))?;
        Ok(())
    })?;
    out.push(point(
        "vision fc2 + bias + residual epilogue (cuBLASLt) [32800x4096]x[4096x1024]",
        ms,
        2.0 * (rows * d * 4 * d) as f64,
        "TFLOP/s",
    ));
    let qkv = randn(device, (tiles, n, 3 * d))?;
    // SAFETY: flash attention below writes every row of every head before it is timed again;
    // nothing reads `o`.
    #[allow(unsafe_code)]
    let o = unsafe { uninit_bf16(device, (tiles, n, d)) }?;
    let dims = AttentionDims {
        batch: tiles,
        q_len: n,
        kv_len: n,
        heads,
        kv_heads: heads,
        head_dim: hd,
    };
    let ms = time(device, 5, || {
        flash_attention(
            HeadView::columns(&qkv, n, 3 * d, 0, hd),
            HeadView::columns(&qkv, n, 3 * d, d, hd),
            HeadView::columns(&qkv, n, 3 * d, 2 * d, hd),
            HeadView::packed(&o, n, heads, hd),
            dims,
            0.125,
            false,
        )?;
        Ok(())
    })?;
    out.push(point(
        "vision flash attention 32 tiles x 16 heads x 1025 x 64",
        ms,
        4.0 * (tiles * heads * n * n * hd) as f64,
        "TFLOP/s",
    ));

    // Language (Qwen3-8B): 32 heads of 128, 8 kv heads, hidden 4096, MLP 12288.
    let (lh, lkv, ld, hidden, inter) = (32usize, 8usize, 128usize, 4096usize, 12288usize);
    let t = 1900usize;
    let q = randn(device, (t, lh * ld))?;
    let k = randn(device, (lkv, t, ld))?;
    let v = randn(device, (lkv, t, ld))?;
    // SAFETY: as above: written whole by the attention below, never read.
    #[allow(unsafe_code)]
    let o = unsafe { uninit_bf16(device, (t, lh * ld)) }?;
    let dims = AttentionDims {
        batch: 1,
        q_len: t,
        kv_len: t,
        heads: lh,
        kv_heads: lkv,
        head_dim: ld,
    };
    let kv_view = |x| HeadView {
        tensor: x,
        offset: 0,
        batch_stride: 0,
        row_stride: ld,
        head_stride: t * ld,
    };
    let ms = time(device, 5, || {
        flash_attention(
            HeadView::packed(&q, t, lh, ld),
            kv_view(&k),
            kv_view(&v),
            HeadView::packed(&o, t, lh, ld),
            dims,
            0.088,
            true,
        )?;
        Ok(())
    })?;
    out.push(point(
        "prefill causal flash attention 1900 x 32 heads (8 kv) x 128",
        ms,
        2.0 * (lh * t * t * ld) as f64,
        "TFLOP/s",
    ));
    let xs = randn(device, (t, hidden))?;
    let w_gu = randn(device, (2 * inter, hidden))?;
    let ms = time(device, 3, || {
        xs.matmul(&w_gu.t()?)?;
        Ok(())
    })?;
    out.push(point(
        "prefill gate_up matmul [1900x4096]x[4096x24576]",
        ms,
        2.0 * (t * hidden * 2 * inter) as f64,
        "TFLOP/s",
    ));
    let gu = randn(device, (t, 2 * inter))?;
    let ms = time(device, 5, || {
        silu_mul(&gu)?;
        Ok(())
    })?;
    out.push(point(
        "prefill silu*mul [1900x24576]",
        ms,
        (t * 3 * inter * 2) as f64,
        "GB/s",
    ));
    let y = randn(device, (t, hidden))?;
    let wn = randn(device, hidden)?;
    let ms = time(device, 10, || {
        add_rms_norm(&xs, &y, &wn, 1e-6)?;
        Ok(())
    })?;
    out.push(point(
        "prefill add+rms_norm [1900x4096]",
        ms,
        (t * hidden * 4 * 2) as f64,
        "GB/s",
    ));

    // Decode: one row per sequence over 2048 cached positions in 16-position blocks.
    for batch in [1usize, 32] {
        let ctx = 2048usize;
        let blocks_per = ctx / 16;
        let slots = batch * ctx;
        let pool_k = randn(device, (lkv, slots, ld))?;
        let pool_v = randn(device, (lkv, slots, ld))?;
        let block_ids: Vec<u32> = (0..(batch * blocks_per) as u32).collect();
        let blocks: Vec<&[u32]> = block_ids.chunks(blocks_per).collect();
        let queries: Vec<PagedRow> = (0..batch as u32)
            .map(|s| PagedRow {
                row: s,
                sequence: s,
                position: (ctx - 1) as u32,
            })
            .collect();
        let bounds = PagedBounds {
            rows: batch,
            pool_slots: slots,
        };
        let tables = PagedTables::new(&blocks, 16, &queries, bounds)?.upload(device)?;
        let q = randn(device, (batch, lh * ld))?;
        // SAFETY: as above: every row is one query row of the paged kernel, written whole.
        #[allow(unsafe_code)]
        let o = unsafe { uninit_bf16(device, (batch, lh * ld)) }?;
        let ms = time(device, 20, || {
            paged_attention(&q, &pool_k, &pool_v, &tables, &o, lh, 0.088)?;
            Ok(())
        })?;
        out.push(point(
            &format!("decode paged attention batch {batch} x 2048 positions (32 heads, 8 kv, 128)"),
            ms,
            (batch * ctx * lkv * ld * 2 * 2) as f64,
            "GB/s",
        ));
        let xr = randn(device, (batch, hidden))?;
        let wd = randn(device, (2 * inter, hidden))?;
        let ms = time(device, 20, || {
            xr.matmul(&wd.t()?)?;
            Ok(())
        })?;
        out.push(point(
            &format!("decode gate_up matmul batch {batch} [{batch}x4096]x[4096x24576]"),
            ms,
            (2 * inter * hidden * 2) as f64,
            "GB/s",
        ));
    }
    // The other batch-1 decode matmuls (weight bytes / time): how far each is from the copy
    // bandwidth, and the cost of one step's small kernels.
    let x1 = randn(device, (1, hidden))?;
    for (name, outputs, inputs) in [
        ("qkv", (lh + 2 * lkv) * ld, hidden),
        ("o", hidden, lh * ld),
        ("down", hidden, inter),
        ("lm_head", 151_936, hidden),
    ] {
        let w = randn(device, (outputs, inputs))?;
        let xi = if inputs == hidden {
            x1.clone()
        } else {
            randn(device, (1, inputs))?
        };
        let ms = time(device, 20, || {
            xi.matmul(&w.t()?)?;
            Ok(())
        })?;
        out.push(point(
            &format!("decode {name} matmul batch 1 [1x{inputs}]x[{inputs}x{outputs}]"),
            ms,
            (outputs * inputs * 2) as f64,
            "GB/s",
        ));
    }
    let gu1 = randn(device, (1, 2 * inter))?;
    let wn1 = randn(device, hidden)?;
    let ms = time(device, 50, || {
        silu_mul(&gu1)?;
        add_rms_norm(&x1, &x1, &wn1, 1e-6)?;
        Ok(())
    })?;
    out.push(point(
        "decode silu*mul + add+rms_norm batch 1 (two small kernels)",
        ms,
        ((3 * inter + 4 * hidden) * 2) as f64,
        "GB/s",
    ));
    // Launch overhead: a tiny elementwise op.
    let tiny = randn(device, (1, hidden))?;
    let ms = time(device, 200, || {
        (&tiny + &tiny)?;
        Ok(())
    })?;
    out.push(point(
        "tiny add [1x4096] (launch overhead)",
        ms,
        (hidden * 6) as f64,
        "GB/s",
    ));
    Ok(out)
}
