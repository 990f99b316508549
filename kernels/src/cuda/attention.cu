// Attention kernels for dvd on NVIDIA GPUs (sm_80+), bf16 in and out, f32 accumulation.
//
// flash_attention_*: FlashAttention-2 style forward over strided q/k/v (so q, k and v can be read
// in place from a fused qkv projection), non-causal (vision) or causal with the queries at the
// end of the keys (prefill after cached positions), grouped-query heads. Tensor cores through
// mma.sync m16n8k16; a CTA of 4 warps takes 64 query rows, each warp 16, and streams the keys in
// tiles (64 keys for head_dim 64, 32 for 128) through shared memory, double-buffered with
// cp.async, with the online softmax kept in registers.
//
// paged_decode_*: one query row per token against keys held in blocks of a paged KV pool
// ([kv_heads, slots, D] per layer, block tables per sequence). A CTA takes one token, one kv
// head and one split of the keys; the group's query heads share each key load. With several
// splits, partial results go to a workspace and paged_combine merges them.

#include <cuda_bf16.h>
#include <stdint.h>

#define LOG2E 1.4426950408889634f
#define NEG_BIG -1.0e30f

typedef __nv_bfloat16 bf16;

__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
    __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
    return *reinterpret_cast<uint32_t*>(&v);
}

__device__ __forceinline__ void mma_bf16_16816(float* c, const uint32_t* a, uint32_t b0, uint32_t b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
        "{%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t* r, const void* smem) {
    uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t* r, const void* smem) {
    uint32_t addr = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(addr));
}

#define PAD 8

__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
    uint32_t dst = static_cast<uint32_t>(__cvta_generic_to_shared(smem));
    int bytes = valid ? 16 : 0;  // 0: fill the 16 bytes with zeros
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(bytes));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N>
__device__ __forceinline__ void cp_async_wait() { asm volatile("cp.async.wait_group %0;\n" ::"n"(N)); }

// Starts copying rows [row0, row0 + ROWS) of a [rows, D] strided matrix into smem (zeros past
// `rows`; the source address of a missing row is row 0's, never read).
template <int D, int ROWS>
__device__ __forceinline__ void load_tile_async(bf16 (*tile)[D + PAD], const bf16* base,
                                                long row_stride, int row0, int rows) {
    constexpr int CHUNKS = D / 8;
    for (int idx = threadIdx.x; idx < ROWS * CHUNKS; idx += blockDim.x) {
        int r = idx / CHUNKS;
        int c = idx % CHUNKS;
        bool ok = row0 + r < rows;
        const bf16* src = base + (ok ? (long)(row0 + r) * row_stride : 0) + c * 8;
        cp_async_16(&tile[r][c * 8], src, ok);
    }
}

// BR query rows per CTA (16 per warp, so BR / 16 warps); BC keys per tile; two tiles of K and V
// in flight (cp.async double buffering), so the next tile's copy overlaps this tile's math.
// smem: 2 stages x (K, V) x BC x (D + PAD) bf16. Every CTA streams its head's whole K and V
// from L2, so a larger BR means proportionally less L2 traffic.
template <int D, int BC, int BR>
__device__ void flash_attention(const bf16* __restrict__ q, const bf16* __restrict__ k,
                                const bf16* __restrict__ v, bf16* __restrict__ o, int lq, int lk,
                                int heads, int kv_heads, long q_b, long q_r, long q_h, long k_b,
                                long k_r, long k_h, long v_b, long v_r, long v_h, long o_b,
                                long o_r, long o_h, float scale, int causal) {
    typedef bf16 Row[D + PAD];
    static_assert(4 * BC >= BR, "the Q tile is staged through the K/V buffers");
    __shared__ __align__(16) bf16 smem[4 * BC * (D + PAD)];
    Row* rows = reinterpret_cast<Row*>(smem);  // stage s: K rows [2s*BC, ...), V rows [(2s+1)*BC, ...)

    const int qblock = blockIdx.x;
    const int head = blockIdx.y;
    const int batch = blockIdx.z;
    const int kv_head = head / (heads / kv_heads);
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int g = lane / 4;
    const int tig = lane % 4;
    const int q0 = qblock * BR;

    const bf16* qb = q + batch * q_b + head * q_h;
    const bf16* kb = k + batch * k_b + kv_head * k_h;
    const bf16* vb = v + batch * v_b + kv_head * v_h;

    // Query fragments (A operand, row-major 16 x 16 per k-step) through smem.
    load_tile_async<D, BR>(rows, qb, q_r, q0, lq);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    uint32_t qf[D / 16][4];
    const int wr = warp * 16;
#pragma unroll
    for (int kk = 0; kk < D / 16; ++kk) {
        int c = kk * 16 + tig * 2;
        qf[kk][0] = *reinterpret_cast<const uint32_t*>(&rows[wr + g][c]);
        qf[kk][1] = *reinterpret_cast<const uint32_t*>(&rows[wr + g + 8][c]);
        qf[kk][2] = *reinterpret_cast<const uint32_t*>(&rows[wr + g][c + 8]);
        qf[kk][3] = *reinterpret_cast<const uint32_t*>(&rows[wr + g + 8][c + 8]);
    }
    __syncthreads();

    float oacc[D / 8][4];
#pragma unroll
    for (int i = 0; i < D / 8; ++i) oacc[i][0] = oacc[i][1] = oacc[i][2] = oacc[i][3] = 0.f;
    float m0 = NEG_BIG, m1 = NEG_BIG, l0 = 0.f, l1 = 0.f;
    const float sl2 = scale * LOG2E;
    const int offset = lk - lq;  // query i sees keys <= i + offset when causal
    const int row_a = q0 + wr + g;
    const int row_b = row_a + 8;

    int key_end = lk;
    if (causal) {
        int last = min(q0 + BR - 1, lq - 1) + offset + 1;
        key_end = min(lk, max(last, 0));
    }
    const int tiles = (key_end + BC - 1) / BC;
    if (tiles > 0) {
        load_tile_async<D, BC>(rows, kb, k_r, 0, lk);
        load_tile_async<D, BC>(rows + BC, vb, v_r, 0, lk);
        cp_async_commit();
    }
    for (int jt = 0; jt < tiles; ++jt) {
        const int stage = jt & 1;
        if (jt + 1 < tiles) {
            const int next = stage ^ 1;
            load_tile_async<D, BC>(rows + 2 * next * BC, kb, k_r, (jt + 1) * BC, lk);
            load_tile_async<D, BC>(rows + (2 * next + 1) * BC, vb, v_r, (jt + 1) * BC, lk);
            cp_async_commit();
            cp_async_wait<1>();
        } else {
            cp_async_wait<0>();
        }
        __syncthreads();
        const Row* ks = rows + 2 * stage * BC;
        const Row* vs = rows + (2 * stage + 1) * BC;
        const int j0 = jt * BC;

        // S = Q K^T. One ldmatrix.x4 gives the B fragments of two k-steps: matrices (kk, lo),
        // (kk, hi), (kk + 1, lo), (kk + 1, hi) of the n-tile's 8 key rows.
        float s[BC / 8][4];
        const int mat = lane / 8;
        const int mr = lane % 8;
#pragma unroll
        for (int nt = 0; nt < BC / 8; ++nt) {
            s[nt][0] = s[nt][1] = s[nt][2] = s[nt][3] = 0.f;
#pragma unroll
            for (int kk = 0; kk < D / 16; kk += 2) {
                uint32_t kf[4];
                ldmatrix_x4(kf, &ks[nt * 8 + mr][(kk + (mat >> 1)) * 16 + (mat & 1) * 8]);
                mma_bf16_16816(s[nt], qf[kk], kf[0], kf[1]);
                mma_bf16_16816(s[nt], qf[kk + 1], kf[2], kf[3]);
            }
        }
        // Scale into the log2 domain; mask only tiles that reach past the keys or, causal,
        // past this warp's first row's diagonal (the condition is uniform across the warp).
        const bool masked = j0 + BC > lk || (causal && j0 + BC - 1 > q0 + wr + offset);
        float mx0 = NEG_BIG, mx1 = NEG_BIG;
#pragma unroll
        for (int nt = 0; nt < BC / 8; ++nt) {
#pragma unroll
            for (int e = 0; e < 4; ++e) s[nt][e] *= sl2;
        }
        if (masked) {
#pragma unroll
            for (int nt = 0; nt < BC / 8; ++nt) {
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    int col = j0 + nt * 8 + tig * 2 + (e & 1);
                    int row = (e < 2) ? row_a : row_b;
                    if (col >= lk || (causal && col > row + offset)) s[nt][e] = -INFINITY;
                }
            }
        }
#pragma unroll
        for (int nt = 0; nt < BC / 8; ++nt) {
            mx0 = fmaxf(mx0, fmaxf(s[nt][0], s[nt][1]));
            mx1 = fmaxf(mx1, fmaxf(s[nt][2], s[nt][3]));
        }
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffff, mx0, 1));
        mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffff, mx0, 2));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffff, mx1, 1));
        mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffff, mx1, 2));
        float mn0 = fmaxf(m0, mx0), mn1 = fmaxf(m1, mx1);
        float a0 = exp2f(m0 - mn0), a1 = exp2f(m1 - mn1);
        m0 = mn0;
        m1 = mn1;
        float rs0 = 0.f, rs1 = 0.f;
#pragma unroll
        for (int nt = 0; nt < BC / 8; ++nt) {
            s[nt][0] = exp2f(s[nt][0] - mn0);
            s[nt][1] = exp2f(s[nt][1] - mn0);
            s[nt][2] = exp2f(s[nt][2] - mn1);
            s[nt][3] = exp2f(s[nt][3] - mn1);
            rs0 += s[nt][0] + s[nt][1];
            rs1 += s[nt][2] + s[nt][3];
        }
        l0 = l0 * a0 + rs0;
        l1 = l1 * a1 + rs1;
#pragma unroll
        for (int dt = 0; dt < D / 8; ++dt) {
            oacc[dt][0] *= a0;
            oacc[dt][1] *= a0;
            oacc[dt][2] *= a1;
            oacc[dt][3] *= a1;
        }
        // O += P V: P's accumulator layout is the A operand's layout two n-tiles at a time.
#pragma unroll
        for (int kk = 0; kk < BC / 16; ++kk) {
            uint32_t pf[4];
            pf[0] = pack_bf16x2(s[2 * kk][0], s[2 * kk][1]);
            pf[1] = pack_bf16x2(s[2 * kk][2], s[2 * kk][3]);
            pf[2] = pack_bf16x2(s[2 * kk + 1][0], s[2 * kk + 1][1]);
            pf[3] = pack_bf16x2(s[2 * kk + 1][2], s[2 * kk + 1][3]);
#pragma unroll
            for (int dt = 0; dt < D / 8; dt += 2) {
                uint32_t vf[4];
                ldmatrix_x4_trans(vf, &vs[kk * 16 + (mat & 1) * 8 + mr][(dt + (mat >> 1)) * 8]);
                mma_bf16_16816(oacc[dt], pf, vf[0], vf[1]);
                mma_bf16_16816(oacc[dt + 1], pf, vf[2], vf[3]);
            }
        }
        __syncthreads();
    }

    l0 += __shfl_xor_sync(0xffffffff, l0, 1);
    l0 += __shfl_xor_sync(0xffffffff, l0, 2);
    l1 += __shfl_xor_sync(0xffffffff, l1, 1);
    l1 += __shfl_xor_sync(0xffffffff, l1, 2);
    float inv0 = l0 > 0.f ? 1.f / l0 : 0.f;
    float inv1 = l1 > 0.f ? 1.f / l1 : 0.f;
    bf16* ob = o + batch * o_b + head * o_h;
#pragma unroll
    for (int dt = 0; dt < D / 8; ++dt) {
        int c = dt * 8 + tig * 2;
        if (row_a < lq) {
            *reinterpret_cast<uint32_t*>(ob + (long)row_a * o_r + c) =
                pack_bf16x2(oacc[dt][0] * inv0, oacc[dt][1] * inv0);
        }
        if (row_b < lq) {
            *reinterpret_cast<uint32_t*>(ob + (long)row_b * o_r + c) =
                pack_bf16x2(oacc[dt][2] * inv1, oacc[dt][3] * inv1);
        }
    }
}

// ROWS query rows per CTA (ROWS * 2 threads); MINB: CTAs per SM the register budget must allow
// (both at 16 warps per SM for D = 64; 12 for D = 128). dvd-kernels' launch.rs mirrors ROWS.
#define FLASH_ENTRY(D, BC, ROWS, MINB)                                                          \
    extern "C" __global__ void __launch_bounds__(ROWS * 2, MINB) flash_attention_d##D(          \
        const bf16* q, const bf16* k, const bf16* v, bf16* o, int lq, int lk, int heads,        \
        int kv_heads, long q_b, long q_r, long q_h, long k_b, long k_r, long k_h, long v_b,     \
        long v_r, long v_h, long o_b, long o_r, long o_h, float scale, int causal) {            \
        flash_attention<D, BC, ROWS>(q, k, v, o, lq, lk, heads, kv_heads, q_b, q_r, q_h, k_b,   \
                                     k_r, k_h, v_b, v_r, v_h, o_b, o_r, o_h, scale, causal);    \
    }
FLASH_ENTRY(64, 64, 128, 2)
FLASH_ENTRY(128, 32, 64, 3)

// ---------------------------------------------------------------------------------------------
// Paged attention for single query rows.

template <int D>
__device__ __forceinline__ void load_row_part(float* dst, const bf16* src) {
    // D / 8 consecutive values (16-byte loads).
    constexpr int N = D / 8;
#pragma unroll
    for (int c = 0; c < N / 8; ++c) {
        uint4 raw = *reinterpret_cast<const uint4*>(src + c * 8);
        const __nv_bfloat162* pairs = reinterpret_cast<const __nv_bfloat162*>(&raw);
#pragma unroll
        for (int p = 0; p < 4; ++p) {
            float2 f = __bfloat1622float2(pairs[p]);
            dst[c * 8 + 2 * p] = f.x;
            dst[c * 8 + 2 * p + 1] = f.y;
        }
    }
}

// Grid (tokens, kv_heads, splits), 128 threads. Token t (index tokens[t] into q/out) belongs to
// sequence seq_of[t] and sees keys 0..=pos_of[t]. Keys of split s: [s * per_split, ...).
template <int D, int G>
__device__ void paged_decode(const bf16* __restrict__ q, long q_row, const bf16* __restrict__ pool_k,
                             const bf16* __restrict__ pool_v, long pool_slots,
                             const uint32_t* __restrict__ tables, int max_blocks, int block_size,
                             const uint32_t* __restrict__ token_rows, const uint32_t* __restrict__ seq_of,
                             const uint32_t* __restrict__ pos_of, bf16* __restrict__ out, long out_row,
                             float* __restrict__ ws_acc, float* __restrict__ ws_ml, int splits,
                             int per_split, float scale) {
    constexpr int N = D / 8;  // values per lane
    __shared__ float sm_acc[4][G][D];
    __shared__ float sm_m[4][G];
    __shared__ float sm_l[4][G];

    const int t = blockIdx.x;
    const int kvh = blockIdx.y;
    const int split = blockIdx.z;
    const int warp = threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    const int grp = lane / 8;
    const int sub = lane % 8;
    const uint32_t row = token_rows[t];
    const uint32_t seq = seq_of[t];
    const int keys = (int)pos_of[t] + 1;
    const int begin = split * per_split;
    const int end = min(keys, begin + per_split);
    const int heads = gridDim.y * G;
    const float sl2 = scale * LOG2E;

    float qr[G][N];
#pragma unroll
    for (int h = 0; h < G; ++h) {
        load_row_part<D>(qr[h], q + (long)row * q_row + (long)(kvh * G + h) * D + sub * N);
    }
    float m[G], l[G], acc[G][N];
#pragma unroll
    for (int h = 0; h < G; ++h) {
        m[h] = NEG_BIG;
        l[h] = 0.f;
#pragma unroll
        for (int i = 0; i < N; ++i) acc[h][i] = 0.f;
    }
    const uint32_t* table = tables + (long)seq * max_blocks;
    const long head_base = (long)kvh * pool_slots;
    // Each lane group takes two keys per step (j and j + 16) so twice the loads are in flight.
    // The loop bound is uniform across the warp (the shuffles need every lane); a key past the
    // end contributes nothing.
    for (int j0 = begin + warp * 4; j0 < end; j0 += 32) {
        float kr[2][N], vr[2][N];
        bool valid[2];
#pragma unroll
        for (int u = 0; u < 2; ++u) {
            const int j = j0 + grp + 16 * u;
            valid[u] = j < end;
            if (valid[u]) {
                long slot = (long)table[j / block_size] * block_size + j % block_size;
                load_row_part<D>(kr[u], pool_k + (head_base + slot) * D + sub * N);
                load_row_part<D>(vr[u], pool_v + (head_base + slot) * D + sub * N);
            } else {
#pragma unroll
                for (int i = 0; i < N; ++i) kr[u][i] = vr[u][i] = 0.f;
            }
        }
#pragma unroll
        for (int h = 0; h < G; ++h) {
            float sc[2];
#pragma unroll
            for (int u = 0; u < 2; ++u) {
                float dot = 0.f;
#pragma unroll
                for (int i = 0; i < N; ++i) dot += qr[h][i] * kr[u][i];
                dot += __shfl_xor_sync(0xffffffff, dot, 1);
                dot += __shfl_xor_sync(0xffffffff, dot, 2);
                dot += __shfl_xor_sync(0xffffffff, dot, 4);
                sc[u] = valid[u] ? dot * sl2 : -INFINITY;
            }
            float mn = fmaxf(m[h], fmaxf(sc[0], sc[1]));
            float a = exp2f(m[h] - mn);
            float p0 = exp2f(sc[0] - mn), p1 = exp2f(sc[1] - mn);
            m[h] = mn;
            l[h] = l[h] * a + p0 + p1;
#pragma unroll
            for (int i = 0; i < N; ++i) acc[h][i] = acc[h][i] * a + p0 * vr[0][i] + p1 * vr[1][i];
        }
    }
    // Merge the four key groups of the warp (lanes sub, sub + 8, sub + 16, sub + 24).
#pragma unroll
    for (int off = 8; off <= 16; off *= 2) {
#pragma unroll
        for (int h = 0; h < G; ++h) {
            float mo = __shfl_xor_sync(0xffffffff, m[h], off);
            float lo = __shfl_xor_sync(0xffffffff, l[h], off);
            float mn = fmaxf(m[h], mo);
            float a = exp2f(m[h] - mn), b = exp2f(mo - mn);
            l[h] = l[h] * a + lo * b;
            m[h] = mn;
#pragma unroll
            for (int i = 0; i < N; ++i) {
                float ao = __shfl_xor_sync(0xffffffff, acc[h][i], off);
                acc[h][i] = acc[h][i] * a + ao * b;
            }
        }
    }
    if (grp == 0) {
#pragma unroll
        for (int h = 0; h < G; ++h) {
#pragma unroll
            for (int i = 0; i < N; ++i) sm_acc[warp][h][sub * N + i] = acc[h][i];
            if (sub == 0) {
                sm_m[warp][h] = m[h];
                sm_l[warp][h] = l[h];
            }
        }
    }
    __syncthreads();
    for (int e = threadIdx.x; e < G * D; e += blockDim.x) {
        int h = e / D, d = e % D;
        float mt = NEG_BIG;
#pragma unroll
        for (int w = 0; w < 4; ++w) mt = fmaxf(mt, sm_m[w][h]);
        float num = 0.f, den = 0.f;
#pragma unroll
        for (int w = 0; w < 4; ++w) {
            float f = exp2f(sm_m[w][h] - mt);
            num += sm_acc[w][h][d] * f;
            den += sm_l[w][h] * f;
        }
        int head = kvh * G + h;
        if (splits == 1) {
            out[(long)row * out_row + (long)head * D + d] = __float2bfloat16(den > 0.f ? num / den : 0.f);
        } else {
            long base = ((long)t * heads + head) * splits + split;
            ws_acc[base * D + d] = num;
            if (d == 0) {
                ws_ml[base * 2] = mt;
                ws_ml[base * 2 + 1] = den;
            }
        }
    }
}

#define PAGED_ENTRY(D, G)                                                                       \
    extern "C" __global__ void __launch_bounds__(128) paged_decode_d##D##_g##G(                 \
        const bf16* q, long q_row, const bf16* pool_k, const bf16* pool_v, long pool_slots,     \
        const uint32_t* tables, int max_blocks, int block_size, const uint32_t* token_rows,     \
        const uint32_t* seq_of, const uint32_t* pos_of, bf16* out, long out_row,                \
        float* ws_acc, float* ws_ml, int splits, int per_split, float scale) {                  \
        paged_decode<D, G>(q, q_row, pool_k, pool_v, pool_slots, tables, max_blocks,            \
                           block_size, token_rows, seq_of, pos_of, out, out_row, ws_acc, ws_ml, \
                           splits, per_split, scale);                                           \
    }
PAGED_ENTRY(64, 1)
PAGED_ENTRY(64, 2)
PAGED_ENTRY(64, 4)
PAGED_ENTRY(64, 8)
PAGED_ENTRY(128, 1)
PAGED_ENTRY(128, 2)
PAGED_ENTRY(128, 4)
PAGED_ENTRY(128, 8)

// Grid (tokens, heads), D threads: merges the splits of paged_decode.
extern "C" __global__ void paged_combine(const float* ws_acc, const float* ws_ml,
                                         const uint32_t* token_rows, bf16* out, long out_row,
                                         int head_dim, int splits) {
    const int t = blockIdx.x;
    const int head = blockIdx.y;
    const int heads = gridDim.y;
    const long base = ((long)t * heads + head) * splits;
    float mt = NEG_BIG;
    for (int s = 0; s < splits; ++s) mt = fmaxf(mt, ws_ml[(base + s) * 2]);
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
        float num = 0.f, den = 0.f;
        for (int s = 0; s < splits; ++s) {
            float f = exp2f(ws_ml[(base + s) * 2] - mt);
            num += ws_acc[(base + s) * head_dim + d] * f;
            den += ws_ml[(base + s) * 2 + 1] * f;
        }
        out[(long)token_rows[t] * out_row + (long)head * head_dim + d] =
            __float2bfloat16(den > 0.f ? num / den : 0.f);
    }
}
