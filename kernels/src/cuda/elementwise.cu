// Fused elementwise epilogues and KV-cache writes for dvd on NVIDIA GPUs (bf16, f32 math).
// Each replaces two or three broadcast kernels (and their intermediate tensors) of the generic
// path with one pass over the data; pairs of values move as bf16x2.

#include <cuda_bf16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ float gelu_erf(float x) {
    return 0.5f * x * (1.f + erff(x * 0.70710678118654752f));
}

__device__ __forceinline__ float round_bf16(float x) { return __bfloat162float(__float2bfloat16(x)); }

// Eight bf16 values as floats, and back.
__device__ __forceinline__ void load8(float* f, const bf16* p) {
    uint4 raw = *reinterpret_cast<const uint4*>(p);
    const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        float2 v = __bfloat1622float2(h[i]);
        f[2 * i] = v.x;
        f[2 * i + 1] = v.y;
    }
}
__device__ __forceinline__ void store8(bf16* p, const float* f) {
    uint4 raw;
    __nv_bfloat162* h = reinterpret_cast<__nv_bfloat162*>(&raw);
#pragma unroll
    for (int i = 0; i < 4; ++i) h[i] = __floats2bfloat162_rn(f[2 * i], f[2 * i + 1]);
    *reinterpret_cast<uint4*>(p) = raw;
}

// The epilogues below take one row per block (grid = rows) and eight values per thread step;
// `cols` is a multiple of 8.

// out = y + bias.
extern "C" __global__ void bias_add(const bf16* y, const bf16* bias, bf16* out, int cols) {
    const long base = (long)blockIdx.x * cols;
    for (int c = threadIdx.x * 8; c < cols; c += blockDim.x * 8) {
        float a[8], b[8];
        load8(a, y + base + c);
        load8(b, bias + c);
#pragma unroll
        for (int i = 0; i < 8; ++i) a[i] += b[i];
        store8(out + base + c, a);
    }
}

// out = gelu_erf(y + bias): the rounding of y + bias to bf16 is kept, as the unfused path does.
extern "C" __global__ void bias_gelu(const bf16* y, const bf16* bias, bf16* out, int cols) {
    const long base = (long)blockIdx.x * cols;
    for (int c = threadIdx.x * 8; c < cols; c += blockDim.x * 8) {
        float a[8], b[8];
        load8(a, y + base + c);
        load8(b, bias + c);
#pragma unroll
        for (int i = 0; i < 8; ++i) a[i] = gelu_erf(round_bf16(a[i] + b[i]));
        store8(out + base + c, a);
    }
}

// Qwen3's per-head q/k RMSNorm, RoPE (rotate-half) and the KV-cache write, one pass for a whole
// packed batch. Grid (tokens, heads + kv_heads), head_dim / 2 threads: thread j takes the
// rotate-half pair (j, j + head_dim / 2). Rows of `qkv` are [q heads | k heads | v heads].
// Query heads go to q_out [tokens, heads * head_dim]; key heads (and the matching value heads)
// to slot slots[t] of the pools [kv_heads, pool_slots, head_dim]. The norm output and its
// weighting are rounded to bf16 as the unfused path does; the rotation is computed in f32.
extern "C" __global__ void qk_norm_rope_cache(const bf16* qkv, long qkv_row, int heads, int kv_heads,
                                              int head_dim, const bf16* q_weight, const bf16* k_weight,
                                              float eps, const bf16* cos_table, const bf16* sin_table,
                                              const uint32_t* positions, const uint32_t* slots,
                                              bf16* q_out, bf16* pool_k, bf16* pool_v, long pool_slots) {
    __shared__ float partial[32];
    const int t = blockIdx.x;
    const int hh = blockIdx.y;
    const int half = head_dim / 2;
    const int j = threadIdx.x;
    const bool is_q = hh < heads;
    const int head = is_q ? hh : hh - heads;
    const bf16* row = qkv + (long)t * qkv_row;
    const bf16* src = row + (long)(is_q ? head : heads + head) * head_dim;
    const bf16* w = is_q ? q_weight : k_weight;
    float a = 0.f, b = 0.f;
    if (j < half) {
        a = __bfloat162float(src[j]);
        b = __bfloat162float(src[j + half]);
    }
    float ss = a * a + b * b;
#pragma unroll
    for (int off = 16; off > 0; off /= 2) ss += __shfl_xor_sync(0xffffffff, ss, off);
    const int warps = (blockDim.x + 31) / 32;
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = ss;
    __syncthreads();
    float total = 0.f;
    for (int i = 0; i < warps; ++i) total += partial[i];
    if (j >= half) return;
    const float r = rsqrtf(total / head_dim + eps);
    const float na = round_bf16(round_bf16(a * r) * __bfloat162float(w[j]));
    const float nb = round_bf16(round_bf16(b * r) * __bfloat162float(w[j + half]));
    const long p = positions[t];
    const float c = __bfloat162float(cos_table[p * half + j]);
    const float s = __bfloat162float(sin_table[p * half + j]);
    const bf16 oa = __float2bfloat16(na * c - nb * s);
    const bf16 ob = __float2bfloat16(nb * c + na * s);
    if (is_q) {
        bf16* dst = q_out + (long)t * heads * head_dim + (long)head * head_dim;
        dst[j] = oa;
        dst[j + half] = ob;
    } else {
        const long dst = ((long)head * pool_slots + slots[t]) * head_dim;
        pool_k[dst + j] = oa;
        pool_k[dst + j + half] = ob;
        const bf16* v = row + (long)(heads + kv_heads + head) * head_dim;
        pool_v[dst + j] = v[j];
        pool_v[dst + j + half] = v[j + half];
    }
}

// SwiGLU's gate: out[r, c] = silu(gate_up[r, c]) * gate_up[r, width + c], rows of 2 * width.
// silu and the product are rounded to bf16 as the unfused ops do.
extern "C" __global__ void silu_mul(const bf16* gate_up, bf16* out, long rows, int width) {
    const long pairs = rows * (long)width / 2;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < pairs; i += (long)gridDim.x * blockDim.x) {
        const long e = 2 * i;
        const long r = e / width;
        const int c = (int)(e % width);
        const bf16* row = gate_up + r * 2 * width;
        float2 g = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(row + c));
        float2 u = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(row + width + c));
        float s0 = round_bf16(g.x / (1.f + __expf(-g.x)));
        float s1 = round_bf16(g.y / (1.f + __expf(-g.y)));
        reinterpret_cast<__nv_bfloat162*>(out)[i] = __floats2bfloat162_rn(s0 * u.x, s1 * u.y);
    }
}

// A residual add followed by RMSNorm, one row per block: sum = x + y (bf16), then
// normed = sum / sqrt(mean(sum^2) + eps) * weight, computed in f32 from the rounded sum.
extern "C" __global__ void add_rms_norm(const bf16* x, const bf16* y, const bf16* weight, bf16* sum,
                                        bf16* normed, int cols, float eps) {
    __shared__ float partial[32];
    const long base = (long)blockIdx.x * cols;
    float ss = 0.f;
    for (int c = threadIdx.x * 2; c < cols; c += blockDim.x * 2) {
        float2 a = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(x + base + c));
        float2 b = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(y + base + c));
        __nv_bfloat162 s = __floats2bfloat162_rn(a.x + b.x, a.y + b.y);
        *reinterpret_cast<__nv_bfloat162*>(sum + base + c) = s;
        float2 f = __bfloat1622float2(s);
        ss += f.x * f.x + f.y * f.y;
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2) ss += __shfl_xor_sync(0xffffffff, ss, off);
    if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = ss;
    __syncthreads();
    float total = 0.f;
    for (int i = 0; i < (int)(blockDim.x + 31) / 32; ++i) total += partial[i];
    const float r = rsqrtf(total / cols + eps);
    for (int c = threadIdx.x * 2; c < cols; c += blockDim.x * 2) {
        float2 s = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(sum + base + c));
        float2 w = __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(weight + c));
        *reinterpret_cast<__nv_bfloat162*>(normed + base + c) = __floats2bfloat162_rn(s.x * r * w.x, s.y * r * w.y);
    }
}
