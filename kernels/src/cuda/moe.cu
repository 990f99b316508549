// Mixture-of-experts kernels for dvd on NVIDIA GPUs (sm_80+): routing, grouping of the
// (token, expert) pairs by expert, the row permutation, the grouped expert GEMM and the weighted
// un-permute. Every kernel is instantiated for bf16, f16 and f32 (`_bf16`, `_f16`, `_f32`);
// arithmetic is f32. Data-dependent sizes (how many rows each expert has) stay in device
// memory: grids are sized from upper bounds on the host and CTAs without work return, so the
// whole block runs on the stream with no host sync.
//
// Determinism: no atomic decides an order or a sum. The grouping is a stable counting sort
// (shared-memory atomics only count); every output value is reduced by one thread or one warp
// in a fixed order, so the same inputs give the same bits.
//
// Memory safety for malformed index inputs: expert ids, token ids, slots and row offsets are
// clamped to their ranges before use, so no kernel reads or writes out of bounds whatever the
// index tensors hold (the values our own kernels produce are always in range).

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

typedef __nv_bfloat16 bf16;
typedef __half f16;

#define FULL_MASK 0xffffffffu

// ---------------------------------------------------------------------------------------------
// Element conversions.

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(bf16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float to_float(f16 v) { return __half2float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ bf16 from_float<bf16>(float v) { return __float2bfloat16_rn(v); }
template <>
__device__ __forceinline__ f16 from_float<f16>(float v) { return __float2half_rn(v); }

// `v` rounded to T's precision (the identity for f32).
template <typename T>
__device__ __forceinline__ float round_to(float v) { return to_float(from_float<T>(v)); }

// 16 bytes of T (4 f32 or 8 bf16/f16 values) as floats; `p` is 16-byte aligned.
template <typename T>
struct Vec16;
template <>
struct Vec16<float> {
    static constexpr int N = 4;
    __device__ __forceinline__ static void load(float* f, const float* p) {
        const float4 v = __ldg(reinterpret_cast<const float4*>(p));
        f[0] = v.x;
        f[1] = v.y;
        f[2] = v.z;
        f[3] = v.w;
    }
};
template <>
struct Vec16<bf16> {
    static constexpr int N = 8;
    __device__ __forceinline__ static void load(float* f, const bf16* p) {
        const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
        const __nv_bfloat162* h = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float2 v = __bfloat1622float2(h[i]);
            f[2 * i] = v.x;
            f[2 * i + 1] = v.y;
        }
    }
};
template <>
struct Vec16<f16> {
    static constexpr int N = 8;
    __device__ __forceinline__ static void load(float* f, const f16* p) {
        const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p));
        const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const float2 v = __half22float2(h[i]);
            f[2 * i] = v.x;
            f[2 * i + 1] = v.y;
        }
    }
};

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(FULL_MASK, v, off);
    return v;
}

// ---------------------------------------------------------------------------------------------
// Routing: one warp (one CTA of 32 threads) per token, the token's E probabilities in dynamic
// shared memory (E floats).
//
// probs = softmax(f32(logits)) (max-subtracted, exp, sum, divide); the K chosen in descending
// probability, equal probabilities by lower expert index (torch.topk's order); weights are the
// chosen probabilities, divided by their f32 sum (in the order chosen) when `renormalise`.
// Selection keys: a chosen expert becomes CHOSEN, a NaN probability ranks as -1 (below every
// real one), so each round picks an expert not chosen before and every id is < E.

#define ROUTE_CHOSEN -2.0f

// Whether (a, ai) ranks before (b, bi): higher value, then lower index.
__device__ __forceinline__ bool ranks_before(float a, int ai, float b, int bi) {
    return a > b || (a == b && ai < bi);
}

template <typename T>
__device__ void moe_route(const T* __restrict__ logits, float* __restrict__ weights,
                          uint32_t* __restrict__ experts, int E, int K, int renormalise) {
    extern __shared__ float probs[];
    const int lane = threadIdx.x;
    const long t = blockIdx.x;
    const T* row = logits + t * E;

    float mx = -INFINITY;
    for (int e = lane; e < E; e += 32) {
        const float v = to_float(row[e]);
        probs[e] = v;
        mx = fmaxf(mx, v);
    }
#pragma unroll
    for (int off = 16; off > 0; off /= 2) mx = fmaxf(mx, __shfl_xor_sync(FULL_MASK, mx, off));
    float sum = 0.f;
    for (int e = lane; e < E; e += 32) {
        const float p = expf(probs[e] - mx);
        probs[e] = p;
        sum += p;
    }
    sum = warp_sum(sum);
    for (int e = lane; e < E; e += 32) probs[e] = __fdiv_rn(probs[e], sum);
    __syncwarp();

    float* w_out = weights + t * K;
    uint32_t* e_out = experts + t * K;
    float chosen_sum = 0.f;
    for (int k = 0; k < K; ++k) {
        float best = -INFINITY;
        int best_e = 0x7fffffff;
        for (int e = lane; e < E; e += 32) {
            float v = probs[e];
            if (isnan(v)) v = -1.f;
            if (ranks_before(v, e, best, best_e)) {
                best = v;
                best_e = e;
            }
        }
#pragma unroll
        for (int off = 16; off > 0; off /= 2) {
            const float ov = __shfl_xor_sync(FULL_MASK, best, off);
            const int oe = __shfl_xor_sync(FULL_MASK, best_e, off);
            if (ranks_before(ov, oe, best, best_e)) {
                best = ov;
                best_e = oe;
            }
        }
        // Every lane now holds the same (best, best_e), best_e < E.
        const float p = probs[best_e];
        chosen_sum = __fadd_rn(chosen_sum, p);
        __syncwarp();
        if (lane == 0) {
            w_out[k] = p;
            e_out[k] = (uint32_t)best_e;
            probs[best_e] = ROUTE_CHOSEN;
        }
        __syncwarp();
    }
    if (renormalise && lane == 0) {
        for (int k = 0; k < K; ++k) w_out[k] = __fdiv_rn(w_out[k], chosen_sum);
    }
}

// ---------------------------------------------------------------------------------------------
// Grouping: a stable counting sort of the n = T * K pairs p = t * K + k by expert, in one CTA of
// GROUP_THREADS threads (dynamic shared memory: E counters).
//   1. counts per expert (shared atomics: the counts do not depend on their order);
//   2. warp 0 scans them: offsets[e] = pairs of experts < e, offsets[E] = n;
//   3. the pairs, in increasing p, GROUP_THREADS at a time staged in shared memory: warp 0 takes
//      32 at a time; a pair's row is its expert's running start plus the number of lower lanes
//      with the same expert (__match_any_sync), and the highest such lane advances the start.
// So within an expert the rows follow increasing p: sources[r] = the token of row r, slots[p] =
// the row of pair p. Expert ids >= E are clamped to E - 1 (never produced by moe_route).

#define GROUP_THREADS 1024

extern "C" __global__ void __launch_bounds__(GROUP_THREADS)
    moe_group(const uint32_t* __restrict__ experts, int n, int K, int E, uint32_t* __restrict__ offsets,
              uint32_t* __restrict__ sources, uint32_t* __restrict__ slots) {
    extern __shared__ uint32_t start[];  // counts, then each expert's next free row
    __shared__ uint32_t chunk[GROUP_THREADS];
    const int tid = threadIdx.x;
    const int lane = tid % 32;
    const uint32_t last = (uint32_t)(E - 1);

    for (int e = tid; e < E; e += GROUP_THREADS) start[e] = 0;
    __syncthreads();
    for (int p = tid; p < n; p += GROUP_THREADS) atomicAdd(&start[min(experts[p], last)], 1u);
    __syncthreads();
    if (tid < 32) {
        const int seg = (E + 31) / 32;
        const int lo = min(E, lane * seg);
        const int hi = min(E, lo + seg);
        uint32_t local = 0;
        for (int e = lo; e < hi; ++e) local += start[e];
        uint32_t incl = local;
#pragma unroll
        for (int d = 1; d < 32; d *= 2) {
            const uint32_t v = __shfl_up_sync(FULL_MASK, incl, d);
            if (lane >= d) incl += v;
        }
        uint32_t running = incl - local;
        for (int e = lo; e < hi; ++e) {
            const uint32_t c = start[e];
            start[e] = running;
            offsets[e] = running;
            running += c;
        }
        if (lane == 0) offsets[E] = (uint32_t)n;
    }
    __syncthreads();
    for (int base = 0; base < n; base += GROUP_THREADS) {
        if (base + tid < n) chunk[tid] = min(experts[base + tid], last);
        __syncthreads();
        if (tid < 32) {
            const int count = min(GROUP_THREADS, n - base);
            for (int s = 0; s < count; s += 32) {
                const int i = s + lane;
                const bool valid = i < count;
                const uint32_t e = valid ? chunk[i] : 0xffffffffu;  // never a real expert
                const uint32_t peers = __match_any_sync(FULL_MASK, e);
                if (valid) {
                    const uint32_t r = start[e] + __popc(peers & ((1u << lane) - 1u));
                    const int p = base + i;
                    sources[r] = (uint32_t)(p / K);
                    slots[p] = r;
                }
                __syncwarp();
                if (valid && (peers >> lane) == 1u) start[e] += __popc(peers);  // highest peer
                __syncwarp();
            }
        }
        __syncthreads();
    }
}

// ---------------------------------------------------------------------------------------------
// Permutation: out[r] = x[sources[r]], one CTA per row; 16-byte copies when the row size and
// both rows allow, else element by element. Sources >= T are clamped to T - 1.

template <typename T>
__device__ void moe_permute(const T* __restrict__ x, const uint32_t* __restrict__ sources,
                            T* __restrict__ out, int T_rows, int H) {
    const long r = blockIdx.x;
    const long src = min(sources[r], (uint32_t)(T_rows - 1));
    const T* in = x + src * H;
    T* dst = out + r * H;
    const bool wide = ((long)H * sizeof(T)) % 16 == 0 &&
                      ((reinterpret_cast<uintptr_t>(in) | reinterpret_cast<uintptr_t>(dst)) % 16) == 0;
    if (wide) {
        const int chunks = (int)((long)H * sizeof(T) / 16);
        const uint4* s = reinterpret_cast<const uint4*>(in);
        uint4* d = reinterpret_cast<uint4*>(dst);
        for (int c = threadIdx.x; c < chunks; c += blockDim.x) d[c] = s[c];
    } else {
        for (int c = threadIdx.x; c < H; c += blockDim.x) dst[c] = in[c];
    }
}

// ---------------------------------------------------------------------------------------------
// Weighted un-permute: out[t] = sum over the token's K pairs, in choice order (k = 0 .. K-1, as
// transformers' default grouped_mm experts sum them), of round_T(round_T(weights[t, k]) *
// y[slots[t * K + k]]): the weight and each product rounded to T (transformers multiplies in the
// model dtype), the sum accumulated in f32 from 0 and rounded to T once. One CTA per token, so a
// token's output depends on no other token. K <= COMBINE_MAX_K; slots >= R are clamped.

#define COMBINE_MAX_K 64

template <typename T>
__device__ void moe_combine(const T* __restrict__ y, const uint32_t* __restrict__ slots,
                            const float* __restrict__ weights, T* __restrict__ out, int R, int K,
                            int H) {
    __shared__ uint32_t s_row[COMBINE_MAX_K];
    __shared__ float s_w[COMBINE_MAX_K];
    const long t = blockIdx.x;
    if (threadIdx.x < K) {
        const int k = threadIdx.x;
        s_row[k] = min(slots[t * K + k], (uint32_t)(R - 1));
        s_w[k] = round_to<T>(weights[t * K + k]);
    }
    __syncthreads();
    for (int h = threadIdx.x; h < H; h += blockDim.x) {
        float acc = 0.f;
        for (int k = 0; k < K; ++k) {
            acc = __fadd_rn(acc, round_to<T>(__fmul_rn(s_w[k], to_float(y[(long)s_row[k] * H + h]))));
        }
        out[t * H + h] = from_float<T>(acc);
    }
}

// ---------------------------------------------------------------------------------------------
// Grouped GEMM: out[r, n] = sum_k x[r, k] * w[e(r), n, k] for x [R, Kd], w [E, N, Kd], out
// [R, N], where expert e owns rows offsets[e] .. offsets[e + 1]. f32 accumulation, the result
// rounded to T. Three kernels share the work split below:
//   grouped_gemv_*     (decode: few rows per expert; all dtypes) a CTA takes up to GEMV_ROWS
//                      rows of one expert and GEMV_WARPS * GEMV_NR rows of its weights, which it
//                      streams once with 16-byte loads, each warp GEMV_NR weight rows at a time;
//   grouped_gemm_tc_*  (bf16, f16) 64 x 64 output tiles on tensor cores (mma.sync m16n8k16,
//                      f32 accumulate), cp.async double buffering;
//   grouped_gemm_simt_* (any dtype and shape) 64 x 64 output tiles, f32 FMAs.
// The first two need Kd and N multiples of 8 and 16-byte aligned x and w (the host checks).
//
// Work split: with units of U rows, expert e has ceil(rows_e / U) units, numbered expert by
// expert; CTA blockIdx.x takes unit blockIdx.x (and blockIdx.y a slice of N). The units number
// at most ceil(R / U) + min(E, R), the grid the host launches; CTAs past the last unit return
// at once, and experts without rows have no units, so their weights are never read.

struct Unit {
    int expert;  // -1: no such unit
    int row0;    // first row of the unit
    int rows;    // 1 .. U rows
};

// Rows of expert e, clamped so that 0 <= lo <= hi <= total whatever `offsets` holds.
__device__ __forceinline__ void expert_rows(const uint32_t* __restrict__ offsets, int e, int total,
                                            int* lo, int* hi) {
    const uint32_t a = min(offsets[e], (uint32_t)total);
    const uint32_t b = min(max(offsets[e + 1], a), (uint32_t)total);
    *lo = (int)a;
    *hi = (int)b;
}

// The unit `unit` of the split above. Every thread of the CTA must call it (it synchronises);
// all get the same answer. blockDim.x is a multiple of 32.
__device__ Unit locate_unit(const uint32_t* __restrict__ offsets, int E, int total, int rows_per_unit,
                            int unit) {
    __shared__ int s_warp[32];
    __shared__ int s_expert;
    __shared__ int s_first;
    const int lane = threadIdx.x % 32;
    const int warp = threadIdx.x / 32;
    const int warps = blockDim.x / 32;
    if (threadIdx.x == 0) {
        s_expert = -1;
        s_first = 0;
    }
    __syncthreads();
    int carry = 0;  // units of the experts before this chunk of experts
    for (int base = 0; base < E; base += blockDim.x) {
        const int e = base + threadIdx.x;
        int units = 0;
        if (e < E) {
            int lo, hi;
            expert_rows(offsets, e, total, &lo, &hi);
            units = (hi - lo + rows_per_unit - 1) / rows_per_unit;
        }
        int incl = units;
#pragma unroll
        for (int d = 1; d < 32; d *= 2) {
            const int v = __shfl_up_sync(FULL_MASK, incl, d);
            if (lane >= d) incl += v;
        }
        if (lane == 31) s_warp[warp] = incl;
        __syncthreads();
        int before = carry;
        int chunk_total = 0;
        for (int w = 0; w < warps; ++w) {
            if (w < warp) before += s_warp[w];
            chunk_total += s_warp[w];
        }
        const int first = before + incl - units;
        if (units > 0 && unit >= first && unit < first + units) {
            s_expert = e;
            s_first = first;
        }
        carry += chunk_total;
        __syncthreads();
        if (s_expert >= 0 || carry > unit) break;  // the same in every thread
    }
    Unit u;
    u.expert = s_expert;
    u.row0 = 0;
    u.rows = 0;
    if (u.expert >= 0) {
        int lo, hi;
        expert_rows(offsets, u.expert, total, &lo, &hi);
        u.row0 = lo + (unit - s_first) * rows_per_unit;
        u.rows = min(rows_per_unit, hi - u.row0);
    }
    return u;
}

// --- grouped_gemv: GEMV_WARPS warps, each GEMV_NR weight rows; up to GEMV_ROWS x rows (the
// rows share every weight load). Lane l reads 16 bytes at k = (i * 32 + l) * V of each of its
// weight rows: a warp reads 512 contiguous bytes of a row per step. The per-lane partial sums
// are reduced across the warp (a fixed butterfly), so the order is fixed.

#define GEMV_ROWS 8
#define GEMV_NR 4
#define GEMV_WARPS 4

template <typename T>
__device__ void grouped_gemv(const T* __restrict__ x, const T* __restrict__ w,
                             const uint32_t* __restrict__ offsets, T* __restrict__ out, int R, int N,
                             int Kd, int E) {
    static_assert(GEMV_NR * GEMV_ROWS <= 32, "one lane writes each output of a warp");
    constexpr int V = Vec16<T>::N;
    const Unit u = locate_unit(offsets, E, R, GEMV_ROWS, blockIdx.x);
    if (u.expert < 0) return;
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int n0 = blockIdx.y * (GEMV_WARPS * GEMV_NR) + warp * GEMV_NR;
    const int nr = min(GEMV_NR, N - n0);  // weight rows of this warp
    if (nr <= 0) return;
    const T* wrow = w + ((long)u.expert * N + n0) * Kd;
    const T* xrow = x + (long)u.row0 * Kd;

    float acc[GEMV_NR][GEMV_ROWS];
#pragma unroll
    for (int j = 0; j < GEMV_NR; ++j)
#pragma unroll
        for (int i = 0; i < GEMV_ROWS; ++i) acc[j][i] = 0.f;

#pragma unroll 2
    for (int k = lane * V; k < Kd; k += 32 * V) {
        float wv[GEMV_NR][V];
#pragma unroll
        for (int j = 0; j < GEMV_NR; ++j) {
            if (j < nr) Vec16<T>::load(wv[j], wrow + (long)j * Kd + k);
        }
#pragma unroll
        for (int i = 0; i < GEMV_ROWS; ++i) {
            if (i < u.rows) {
                float xv[V];
                Vec16<T>::load(xv, xrow + (long)i * Kd + k);
#pragma unroll
                for (int j = 0; j < GEMV_NR; ++j) {
                    if (j < nr) {
#pragma unroll
                        for (int v = 0; v < V; ++v) acc[j][i] = fmaf(wv[j][v], xv[v], acc[j][i]);
                    }
                }
            }
        }
    }
#pragma unroll
    for (int j = 0; j < GEMV_NR; ++j) {
#pragma unroll
        for (int i = 0; i < GEMV_ROWS; ++i) {
            if (j < nr && i < u.rows) {
                const float s = warp_sum(acc[j][i]);
                if (lane == j * GEMV_ROWS + i) out[(long)(u.row0 + i) * N + n0 + j] = from_float<T>(s);
            }
        }
    }
}

// --- grouped_gemm_tc: 4 warps in 2 x 2, each a 32 x 32 block of the 64 x 64 tile (2 m16 x 4
// n8 fragments); k in steps of 32 through shared memory (rows padded by 8 values, so the 8 row
// addresses of an ldmatrix hit distinct banks), two stages in flight. Fragment layouts as in
// attention.cu: A (x rows, k contiguous) by ldmatrix.x4 of [m0 + lane % 16][k0 + lane / 16 * 8];
// B (weight rows n, k contiguous = the "col" operand) by ldmatrix.x4 giving both k16 steps of an
// n8 tile; C: c0, c1 at (g, 2 * tig), c2, c3 at (g + 8, 2 * tig).

#define TC_BM 64
#define TC_BN 64
#define TC_BK 32
#define TC_PAD 8
#define TC_THREADS 128

template <typename T>
struct Mma;
template <>
struct Mma<bf16> {
    __device__ __forceinline__ static void run(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    __device__ __forceinline__ static void store2(bf16* p, float lo, float hi) {
        *reinterpret_cast<__nv_bfloat162*>(p) = __floats2bfloat162_rn(lo, hi);
    }
};
template <>
struct Mma<f16> {
    __device__ __forceinline__ static void run(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
        asm volatile(
            "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
            "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
            : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
            : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
    }
    __device__ __forceinline__ static void store2(f16* p, float lo, float hi) {
        *reinterpret_cast<__half2*>(p) = __floats2half2_rn(lo, hi);
    }
};

__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* smem) {
    const uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
    const uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
    const int bytes = valid ? 16 : 0;  // 0: the 16 bytes are zero-filled, nothing is read
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Starts copying k values [k0, k0 + TC_BK) of `rows` rows (of Kd values each, from `src`) into
// `tile`; rows >= `rows` and k >= Kd are zero-filled (their source address is src's first value,
// never read). Kd is a multiple of 8, so a 16-byte chunk is wholly inside or outside.
template <typename T>
__device__ __forceinline__ void tc_load_tile(T (*tile)[TC_BK + TC_PAD], const T* src, int rows, int Kd,
                                             int k0) {
    constexpr int CHUNKS = TC_BK / 8;
    for (int idx = threadIdx.x; idx < TC_BM * CHUNKS; idx += TC_THREADS) {
        const int r = idx / CHUNKS;
        const int c = (idx % CHUNKS) * 8;
        const bool ok = r < rows && k0 + c < Kd;
        cp_async_16(&tile[r][c], src + (ok ? (long)r * Kd + k0 + c : 0), ok);
    }
}

template <typename T>
__device__ void grouped_gemm_tc(const T* __restrict__ x, const T* __restrict__ w,
                                const uint32_t* __restrict__ offsets, T* __restrict__ out, int R, int N,
                                int Kd, int E) {
    static_assert(TC_BM == TC_BN, "tc_load_tile loads TC_BM rows of either operand");
    __shared__ __align__(16) T As[2][TC_BM][TC_BK + TC_PAD];
    __shared__ __align__(16) T Bs[2][TC_BN][TC_BK + TC_PAD];
    const Unit u = locate_unit(offsets, E, R, TC_BM, blockIdx.x);
    if (u.expert < 0) return;
    const int n0 = blockIdx.y * TC_BN;
    const int n_rows = min(TC_BN, N - n0);
    const T* xa = x + (long)u.row0 * Kd;
    const T* wb = w + ((long)u.expert * N + n0) * Kd;
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int wm = (warp / 2) * 32;  // the warp's rows and columns in the tile
    const int wn = (warp % 2) * 32;
    const int g = lane / 4;
    const int tig = lane % 4;
    const int mat = lane / 8;
    const int mr = lane % 8;

    float acc[2][4][4];
#pragma unroll
    for (int mi = 0; mi < 2; ++mi)
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
#pragma unroll
            for (int c = 0; c < 4; ++c) acc[mi][ni][c] = 0.f;

    const int k_tiles = (Kd + TC_BK - 1) / TC_BK;
    tc_load_tile<T>(As[0], xa, u.rows, Kd, 0);
    tc_load_tile<T>(Bs[0], wb, n_rows, Kd, 0);
    cp_async_commit();
    for (int kt = 0; kt < k_tiles; ++kt) {
        const int stage = kt & 1;
        if (kt + 1 < k_tiles) {
            tc_load_tile<T>(As[stage ^ 1], xa, u.rows, Kd, (kt + 1) * TC_BK);
            tc_load_tile<T>(Bs[stage ^ 1], wb, n_rows, Kd, (kt + 1) * TC_BK);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        // B fragments of both k16 steps for each n8 tile: matrices (step 0, k lo), (step 0, k hi),
        // (step 1, k lo), (step 1, k hi) of the tile's 8 weight rows.
        uint32_t bfrag[4][4];
#pragma unroll
        for (int ni = 0; ni < 4; ++ni)
            ldmatrix_x4(bfrag[ni], &Bs[stage][wn + ni * 8 + mr][(mat >> 1) * 16 + (mat & 1) * 8]);
#pragma unroll
        for (int ks = 0; ks < 2; ++ks) {
            uint32_t afrag[2][4];
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)
                ldmatrix_x4(afrag[mi], &As[stage][wm + mi * 16 + (lane % 16)][ks * 16 + (lane / 16) * 8]);
#pragma unroll
            for (int mi = 0; mi < 2; ++mi)
#pragma unroll
                for (int ni = 0; ni < 4; ++ni)
                    Mma<T>::run(acc[mi][ni], afrag[mi], bfrag[ni][2 * ks], bfrag[ni][2 * ks + 1]);
        }
        __syncthreads();
    }
    // N is a multiple of 8 and col even, so col < N implies col + 1 < N.
#pragma unroll
    for (int mi = 0; mi < 2; ++mi) {
        const int ra = wm + mi * 16 + g;
        const int rb = ra + 8;
#pragma unroll
        for (int ni = 0; ni < 4; ++ni) {
            const int col = wn + ni * 8 + tig * 2;
            if (col >= n_rows) continue;
            if (ra < u.rows)
                Mma<T>::store2(out + (long)(u.row0 + ra) * N + n0 + col, acc[mi][ni][0], acc[mi][ni][1]);
            if (rb < u.rows)
                Mma<T>::store2(out + (long)(u.row0 + rb) * N + n0 + col, acc[mi][ni][2], acc[mi][ni][3]);
        }
    }
}

// --- grouped_gemm_simt: 256 threads, a 16 x 16 grid of 4 x 4 outputs each; k in steps of
// SIMT_BK through shared memory as f32 (zero past the rows, columns and Kd). Any shape, any
// alignment.

#define SIMT_BM 64
#define SIMT_BN 64
#define SIMT_BK 16
#define SIMT_THREADS 256

template <typename T>
__device__ void grouped_gemm_simt(const T* __restrict__ x, const T* __restrict__ w,
                                  const uint32_t* __restrict__ offsets, T* __restrict__ out, int R, int N,
                                  int Kd, int E) {
    __shared__ float As[SIMT_BK][SIMT_BM + 4];  // [k][row]
    __shared__ float Bs[SIMT_BK][SIMT_BN + 4];  // [k][weight row]
    const Unit u = locate_unit(offsets, E, R, SIMT_BM, blockIdx.x);
    if (u.expert < 0) return;
    const int n0 = blockIdx.y * SIMT_BN;
    const int n_rows = min(SIMT_BN, N - n0);
    const T* xa = x + (long)u.row0 * Kd;
    const T* wb = w + ((long)u.expert * N + n0) * Kd;
    const int tx = threadIdx.x % 16;  // columns tx * 4 ..
    const int ty = threadIdx.x / 16;  // rows ty * 4 ..
    float acc[4][4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
        for (int j = 0; j < 4; ++j) acc[i][j] = 0.f;

    for (int k0 = 0; k0 < Kd; k0 += SIMT_BK) {
        for (int idx = threadIdx.x; idx < SIMT_BM * SIMT_BK; idx += SIMT_THREADS) {
            const int r = idx / SIMT_BK;
            const int kk = idx % SIMT_BK;
            const bool ok = r < u.rows && k0 + kk < Kd;
            As[kk][r] = ok ? to_float(xa[(long)r * Kd + k0 + kk]) : 0.f;
        }
        for (int idx = threadIdx.x; idx < SIMT_BN * SIMT_BK; idx += SIMT_THREADS) {
            const int n = idx / SIMT_BK;
            const int kk = idx % SIMT_BK;
            const bool ok = n < n_rows && k0 + kk < Kd;
            Bs[kk][n] = ok ? to_float(wb[(long)n * Kd + k0 + kk]) : 0.f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < SIMT_BK; ++kk) {
            float a[4], b[4];
#pragma unroll
            for (int i = 0; i < 4; ++i) a[i] = As[kk][ty * 4 + i];
#pragma unroll
            for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx * 4 + j];
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
        }
        __syncthreads();
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int r = ty * 4 + i;
        if (r >= u.rows) continue;
#pragma unroll
        for (int j = 0; j < 4; ++j) {
            const int n = tx * 4 + j;
            if (n < n_rows) out[(long)(u.row0 + r) * N + n0 + n] = from_float<T>(acc[i][j]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Entry points. Launch shapes (kernels/src/moe.rs mirrors them):
//   moe_route_*         grid T, 32 threads, E * 4 bytes of dynamic shared memory
//   moe_group           grid 1, GROUP_THREADS threads, E * 4 bytes of dynamic shared memory
//   moe_permute_*       grid R, any multiple of 32 threads
//   moe_combine_*       grid T, at least K threads (multiple of 32)
//   grouped_gemv_*      grid (ceil(R / GEMV_ROWS) + min(E, R), ceil(N / 16)), 128 threads
//   grouped_gemm_tc_*   grid (ceil(R / 64) + min(E, R), ceil(N / 64)), TC_THREADS threads
//   grouped_gemm_simt_* grid (ceil(R / 64) + min(E, R), ceil(N / 64)), SIMT_THREADS threads

#define MOE_ENTRIES(NAME, T)                                                                          \
    extern "C" __global__ void __launch_bounds__(32)                                                  \
        moe_route_##NAME(const T* logits, float* weights, uint32_t* experts, int E, int K, int renormalise) { \
        moe_route<T>(logits, weights, experts, E, K, renormalise);                                   \
    }                                                                                                 \
    extern "C" __global__ void moe_permute_##NAME(const T* x, const uint32_t* sources, T* out, int T_rows, \
                                                  int H) {                                            \
        moe_permute<T>(x, sources, out, T_rows, H);                                                   \
    }                                                                                                 \
    extern "C" __global__ void moe_combine_##NAME(const T* y, const uint32_t* slots, const float* weights, \
                                                  T* out, int R, int K, int H) {                      \
        moe_combine<T>(y, slots, weights, out, R, K, H);                                              \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(GEMV_WARPS * 32)                                     \
        grouped_gemv_##NAME(const T* x, const T* w, const uint32_t* offsets, T* out, int R, int N, int Kd, \
                            int E) {                                                                  \
        grouped_gemv<T>(x, w, offsets, out, R, N, Kd, E);                                             \
    }                                                                                                 \
    extern "C" __global__ void __launch_bounds__(SIMT_THREADS)                                        \
        grouped_gemm_simt_##NAME(const T* x, const T* w, const uint32_t* offsets, T* out, int R, int N, \
                                 int Kd, int E) {                                                     \
        grouped_gemm_simt<T>(x, w, offsets, out, R, N, Kd, E);                                        \
    }

MOE_ENTRIES(bf16, bf16)
MOE_ENTRIES(f16, f16)
MOE_ENTRIES(f32, float)

#define TC_ENTRY(NAME, T)                                                                             \
    extern "C" __global__ void __launch_bounds__(TC_THREADS)                                          \
        grouped_gemm_tc_##NAME(const T* x, const T* w, const uint32_t* offsets, T* out, int R, int N, \
                               int Kd, int E) {                                                       \
        grouped_gemm_tc<T>(x, w, offsets, out, R, N, Kd, E);                                          \
    }

TC_ENTRY(bf16, bf16)
TC_ENTRY(f16, f16)
