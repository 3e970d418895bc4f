// Attention's heads: QKV split and merge, head transposes, the masked softmax and its backward,
// and fused attention for inference (attention.rs holds the CPU twins and the launches).
#include "common.cuh"
#include <mma.h>

// ---- Softmax backward over the last dim, one warp per row: dx = y * (dy - sum(dy * y)) ---------

template <typename T>
__device__ void softmax_bwd(const T *y, const T *dy, T *dx, size_t rows, int d) {
    typedef typename Acc<T>::type A;
    const size_t r = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (r >= rows) return;
    const size_t row = r * d;
    A s = 0;
    for (int i = lane; i < d; i += 32) s += load(y, row + i) * load(dy, row + i);
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
    for (int i = lane; i < d; i += 32) store(dx, row + i, load(y, row + i) * (load(dy, row + i) - s));
}

// ---- Attention layouts, one block per row, V elements at a time (V divides the head size) -----

// The fused QKV projection's output (B*T, 3*H*hd) plus its bias, to q (scaled), k, v stacked as
// (3, B, H, T, hd).
template <typename T, int V>
__device__ void qkv_split(const T *x, const T *bias, T *out, int B, int T_, int H, int hd, double scale) {
    typedef typename Acc<T>::type A;
    const int row = blockIdx.x, b = row / T_, t = row % T_;
    const int w = 3 * H * hd;
    const size_t plane = (size_t)B * H * T_ * hd;
    for (int j = threadIdx.x * V; j < w; j += blockDim.x * V) {
        const int s = j / (H * hd), h = (j / hd) % H, e = j % hd;
        const Pack<T, V> xv = ld<T, V>(x + (size_t)row * w + j), bv = ld<T, V>(bias + j);
        Pack<T, V> o;
#pragma unroll
        for (int k = 0; k < V; ++k) {
            A v = (A)cvt(xv.v[k]) + (A)cvt(bv.v[k]);
            if (s == 0) v *= A(scale);
            o.v[k] = back<T>(v);
        }
        st<T, V>(out + s * plane + (((size_t)b * H + h) * T_ + t) * hd + e, o);
    }
}

// The inverse for gradients: dq (B, H, T, hd) times `scale`, and dk, dv read at rows
// [t_off, t_off + T) of (B, H, tk_total, hd), to (B*T, 3*H*hd).
template <typename T, int V>
__device__ void qkv_merge(const T *dq, const T *dk, const T *dv, T *out, int B, int T_, int H, int hd, int tk_total, int t_off, double scale) {
    typedef typename Acc<T>::type A;
    const int row = blockIdx.x, b = row / T_, t = row % T_;
    const int w = 3 * H * hd;
    for (int j = threadIdx.x * V; j < w; j += blockDim.x * V) {
        const int s = j / (H * hd), h = (j / hd) % H, e = j % hd;
        Pack<T, V> o;
        if (s == 0) {
            const Pack<T, V> q = ld<T, V>(dq + (((size_t)b * H + h) * T_ + t) * hd + e);
#pragma unroll
            for (int k = 0; k < V; ++k) o.v[k] = back<T>((A)cvt(q.v[k]) * A(scale));
        } else {
            o = ld<T, V>((s == 1 ? dk : dv) + (((size_t)b * H + h) * tk_total + t_off + t) * hd + e);
        }
        st<T, V>(out + (size_t)row * w + j, o);
    }
}

// (A, B, C, D) -> (A, C, B, D): heads merged after attention, or split for its backward. One
// block per output row (a, c) of B*D elements.
template <typename T, int V>
__device__ void transpose12(const T *x, T *y, int A_, int B_, int C_, int D_) {
    const int a = blockIdx.x / C_, c = blockIdx.x % C_;
    const int w = B_ * D_;
    for (int j = threadIdx.x * V; j < w; j += blockDim.x * V) {
        const int b = j / D_, d = j % D_;
        st<T, V>(y + (size_t)blockIdx.x * w + j, ld<T, V>(x + (((size_t)a * B_ + b) * C_ + c) * D_ + d));
    }
}

// ---- Softmax over rows of n, with masks: keys j >= valid (padding) are masked, and with a causal
// offset (>= 0) row r, query i = r % tq, sees keys j <= offset + i only. One warp per row. -----

template <typename T>
__device__ void softmax_rows(const T *x, T *y, size_t rows, int n, int tq, int offset, int valid) {
    typedef typename Acc<T>::type A;
    const size_t r = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (r >= rows) return;
    const size_t row = r * n;
    const int last = min(valid - 1, offset < 0 ? n - 1 : min(n - 1, offset + (int)(r % tq)));
    A m = -INFINITY;
    for (int j = lane; j <= last; j += 32) m = max(m, (A)load(x, row + j));
    for (int o = 16; o > 0; o >>= 1) m = max(m, __shfl_xor_sync(0xffffffff, m, o));
    A s = 0;
    for (int j = lane; j <= last; j += 32) s += exp(load(x, row + j) - m);
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
    const A inv = A(1) / s;
    for (int j = lane; j < n; j += 32) store(y, row + j, j <= last ? exp(load(x, row + j) - m) * inv : A(0));
}

// The same for rows of n <= 32 * P * V, the row kept in registers: read once, written once.
template <typename T, int V, int P>
__device__ void softmax_rows_warp(const T *x, T *y, size_t rows, int n, int tq, int offset, int valid) {
    typedef typename Acc<T>::type A;
    const size_t r = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (r >= rows) return;
    const int last = min(valid - 1, offset < 0 ? n - 1 : min(n - 1, offset + (int)(r % tq)));
    Pack<T, V> v[P];
    A m = -INFINITY;
#pragma unroll
    for (int p = 0; p < P; ++p) {
        const int j = (p * 32 + lane) * V;
        if (j < n) {
            v[p] = ld<T, V>(x + r * n + j);
#pragma unroll
            for (int k = 0; k < V; ++k) if (j + k <= last) m = max(m, (A)cvt(v[p].v[k]));
        }
    }
    for (int o = 16; o > 0; o >>= 1) m = max(m, __shfl_xor_sync(0xffffffff, m, o));
    A s = 0;
    A e[P][V];
#pragma unroll
    for (int p = 0; p < P; ++p) {
        const int j = (p * 32 + lane) * V;
#pragma unroll
        for (int k = 0; k < V; ++k) {
            e[p][k] = (j < n && j + k <= last) ? exp((A)cvt(v[p].v[k]) - m) : A(0);
            s += e[p][k];
        }
    }
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
    const A inv = A(1) / s;
#pragma unroll
    for (int p = 0; p < P; ++p) {
        const int j = (p * 32 + lane) * V;
        if (j < n) {
            Pack<T, V> o;
#pragma unroll
            for (int k = 0; k < V; ++k) o.v[k] = back<T>(e[p][k] * inv);
            st<T, V>(y + r * n + j, o);
        }
    }
}

// ---- Attention for inference, fused: from the QKV projection's output x (B*T, 3*H*64) and its
// bias straight to softmax(q k^T) v with the heads merged, (B*T, H*64). It replaces qkv_split,
// two batched matmuls, the softmax and transpose12, and never writes the (T, T) scores to memory.
// One block of 4 warps per (head, sequence). The sequence's keys and values are copied to shared
// memory once (cp.async, all in flight together), then get their bias there, rounded to T as
// qkv_split rounds them; rows from T on are zero. Each warp then takes 16 queries at a time (plus
// bias, times the scale, rounded; the next 16 are loaded while these are computed) into its own
// scratch, computes their scores on tensor cores in fp32, the exact softmax of each whole row
// (keys padded to tk, a multiple of 16 of at most 256, so no online rescaling is needed), writes
// P in T over the scores and computes P v in fp32. Masks as softmax_rows: keys j >= valid, and
// j > offset + i when offset >= 0.

namespace attn {
constexpr int HD = 64, WARPS = 4, LDH = HD + 8, MAXK = 256, PACKS = HD / 8;
}

__device__ __forceinline__ void cp_async16(void *dst, const void *src) {
    const unsigned d = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(d), "l"(src));
}

template <typename T>
__device__ __forceinline__ Pack<T, 8> plus_bias(const Pack<T, 8> &x, const Pack<T, 8> &b, float scale) {
    Pack<T, 8> y;
#pragma unroll
    for (int k = 0; k < 8; ++k) y.v[k] = back<T>((cvt(x.v[k]) + cvt(b.v[k])) * scale);
    return y;
}

template <typename T>
__device__ void attention_fused(const T *x, const T *bias, T *out, int T_, int H, int tk, int offset, int valid, double scale) {
    using namespace nvcuda;
    using namespace attn;
    extern __shared__ __align__(128) unsigned char smem[];
    const int lds = max(tk, HD) + 4;  // stride of the fp32 rows in each warp's scratch
    T *ks = reinterpret_cast<T *>(smem);
    T *vs = ks + tk * LDH;
    float *scratch = reinterpret_cast<float *>(vs + tk * LDH);
    const int h = blockIdx.x, b = blockIdx.y;
    const int D = H * HD, w3 = 3 * D;
    const T *seq = x + (size_t)b * T_ * w3;
    for (int i = threadIdx.x; i < tk * PACKS; i += blockDim.x) {
        const int j = i / PACKS, e = (i % PACKS) * 8;
        if (j < T_) {
            const T *row = seq + (size_t)j * w3 + h * HD + e;
            cp_async16(ks + j * LDH + e, row + D);
            cp_async16(vs + j * LDH + e, row + 2 * D);
        } else {
            Pack<T, 8> z;
#pragma unroll
            for (int k = 0; k < 8; ++k) z.v[k] = back<T>(0.f);
            st<T, 8>(ks + j * LDH + e, z);
            st<T, 8>(vs + j * LDH + e, z);
        }
    }
    asm volatile("cp.async.commit_group;\ncp.async.wait_group 0;\n" ::);
    __syncthreads();
    for (int i = threadIdx.x; i < T_ * PACKS; i += blockDim.x) {
        const int j = i / PACKS, e = (i % PACKS) * 8;
        st<T, 8>(ks + j * LDH + e, plus_bias(ld<T, 8>(ks + j * LDH + e), ld<T, 8>(bias + D + h * HD + e), 1.f));
        st<T, 8>(vs + j * LDH + e, plus_bias(ld<T, 8>(vs + j * LDH + e), ld<T, 8>(bias + 2 * D + h * HD + e), 1.f));
    }
    __syncthreads();
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float *sw = scratch + warp * 16 * lds;
    T *qw = reinterpret_cast<T *>(sw);  // (16, LDH) queries, then (16, 2 * lds) probabilities
    T *pw = reinterpret_cast<T *>(sw);
    // This lane's share of a 16-query tile: 16 rows x 8 packs = 4 packs per lane.
    Pack<T, 8> qb[4], qn[4];
    auto fetch = [&](int r0) {
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const int i = lane + 32 * u, r = i / PACKS, e = (i % PACKS) * 8;
            qb[u] = ld<T, 8>(bias + h * HD + e);
            if (r0 + r < T_) {
                qn[u] = ld<T, 8>(seq + (size_t)(r0 + r) * w3 + h * HD + e);
            } else {
#pragma unroll
                for (int k = 0; k < 8; ++k) qn[u].v[k] = back<T>(0.f), qb[u].v[k] = back<T>(0.f);
            }
        }
    };
    int r0 = warp * 16;
    if (r0 < T_) fetch(r0);
    for (; r0 < T_; r0 += WARPS * 16) {
#pragma unroll
        for (int u = 0; u < 4; ++u) {
            const int i = lane + 32 * u, r = i / PACKS, e = (i % PACKS) * 8;
            st<T, 8>(qw + r * LDH + e, plus_bias(qn[u], qb[u], (float)scale));
        }
        __syncwarp();
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> qa[HD / 16];
#pragma unroll
        for (int kk = 0; kk < HD / 16; ++kk) wmma::load_matrix_sync(qa[kk], qw + kk * 16, LDH);
        __syncwarp();
        if (r0 + WARPS * 16 < T_) fetch(r0 + WARPS * 16);  // in flight during this tile
        // Scores (16, tk) = Q K^T in fp32, two key tiles at a time (independent accumulators).
        for (int n = 0; n < tk; n += 32) {
            const bool two = n + 16 < tk;
            wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc0, acc1;
            wmma::fill_fragment(acc0, 0.f);
            wmma::fill_fragment(acc1, 0.f);
#pragma unroll
            for (int kk = 0; kk < HD / 16; ++kk) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> k0, k1;
                wmma::load_matrix_sync(k0, ks + n * LDH + kk * 16, LDH);
                if (two) wmma::load_matrix_sync(k1, ks + (n + 16) * LDH + kk * 16, LDH);
                wmma::mma_sync(acc0, qa[kk], k0, acc0);
                if (two) wmma::mma_sync(acc1, qa[kk], k1, acc1);
            }
            wmma::store_matrix_sync(sw + n, acc0, lds, wmma::mem_row_major);
            if (two) wmma::store_matrix_sync(sw + n + 16, acc1, lds, wmma::mem_row_major);
        }
        __syncwarp();
        // Each row's softmax, read whole into registers, then written as T over the row's start;
        // ROWS rows at a time, so that their shuffle reductions interleave.
        constexpr int ROWS = 4;
        for (int r = 0; r < 16; r += ROWS) {
            float v[ROWS][MAXK / 32], m[ROWS], sum[ROWS];
#pragma unroll
            for (int q = 0; q < ROWS; ++q) {
                int last = valid - 1;
                if (offset >= 0) last = min(last, offset + r0 + r + q);
                m[q] = -INFINITY;
#pragma unroll
                for (int c = 0; c < MAXK / 32; ++c) {
                    const int j = lane + 32 * c;
                    v[q][c] = (j < tk && j <= last) ? sw[(r + q) * lds + j] : -INFINITY;
                    m[q] = fmaxf(m[q], v[q][c]);
                }
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1)
#pragma unroll
                for (int q = 0; q < ROWS; ++q) m[q] = fmaxf(m[q], __shfl_xor_sync(0xffffffff, m[q], o));
#pragma unroll
            for (int q = 0; q < ROWS; ++q) {
                sum[q] = 0.f;
#pragma unroll
                for (int c = 0; c < MAXK / 32; ++c) {
                    // Masked entries hold -inf: exp gives 0.
                    v[q][c] = __expf(v[q][c] - m[q]);
                    sum[q] += v[q][c];
                }
            }
#pragma unroll
            for (int o = 16; o > 0; o >>= 1)
#pragma unroll
                for (int q = 0; q < ROWS; ++q) sum[q] += __shfl_xor_sync(0xffffffff, sum[q], o);
            __syncwarp();
#pragma unroll
            for (int q = 0; q < ROWS; ++q) {
                const float inv = 1.f / sum[q];
#pragma unroll
                for (int c = 0; c < MAXK / 32; ++c) {
                    const int j = lane + 32 * c;
                    if (j < tk) pw[(r + q) * 2 * lds + j] = back<T>(v[q][c] * inv);
                }
            }
        }
        __syncwarp();
        // (16, 64) = P V in fp32, then rounded and stored with the heads merged.
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> o[HD / 16];
#pragma unroll
        for (int n = 0; n < HD / 16; ++n) wmma::fill_fragment(o[n], 0.f);
        for (int kk = 0; kk < tk; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> pf;
            wmma::load_matrix_sync(pf, pw + kk, 2 * lds);
#pragma unroll
            for (int n = 0; n < HD / 16; ++n) {
                wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> vf;
                wmma::load_matrix_sync(vf, vs + kk * LDH + n * 16, LDH);
                wmma::mma_sync(o[n], pf, vf, o[n]);
            }
        }
        __syncwarp();
#pragma unroll
        for (int n = 0; n < HD / 16; ++n) wmma::store_matrix_sync(sw + n * 16, o[n], lds, wmma::mem_row_major);
        __syncwarp();
        for (int i = lane; i < 16 * PACKS; i += 32) {
            const int r = i / PACKS, e = (i % PACKS) * 8;
            if (r0 + r >= T_) continue;
            Pack<T, 8> p;
#pragma unroll
            for (int k = 0; k < 8; ++k) p.v[k] = back<T>(sw[r * lds + e + k]);
            st<T, 8>(out + ((size_t)b * T_ + r0 + r) * D + h * HD + e, p);
        }
        __syncwarp();
    }
}

#define ATTN(T, S) \
    extern "C" __global__ void __launch_bounds__(128) attention_fused_##S(const T *x, const T *b, T *out, int T_, int H, int tk, int offset, int valid, double scale) { attention_fused<T>(x, b, out, T_, H, tk, offset, valid, scale); }

#define HEADS_VEC(T, S, V, X)                                                                           \
    extern "C" __global__ void qkv_split##X##_##S(const T *x, const T *b, T *out, int B, int T_, int H, int hd, double scale) { qkv_split<T, V>(x, b, out, B, T_, H, hd, scale); } \
    extern "C" __global__ void qkv_merge##X##_##S(const T *dq, const T *dk, const T *dv, T *out, int B, int T_, int H, int hd, int tk, int off, double scale) { qkv_merge<T, V>(dq, dk, dv, out, B, T_, H, hd, tk, off, scale); } \
    extern "C" __global__ void transpose12##X##_##S(const T *x, T *y, int A_, int B_, int C_, int D_) { transpose12<T, V>(x, y, A_, B_, C_, D_); } \
    extern "C" __global__ void softmax_warp##X##_##S(const T *x, T *y, size_t rows, int n, int tq, int offset, int valid) { softmax_rows_warp<T, V, (V > 1 ? 4 : 8)>(x, y, rows, n, tq, offset, valid); }

#define HEADS(T, S)                                                                                    \
    extern "C" __global__ void softmax_bwd_##S(const T *y, const T *dy, T *dx, size_t rows, int d) { softmax_bwd(y, dy, dx, rows, d); } \
    extern "C" __global__ void softmax_rows_##S(const T *x, T *y, size_t rows, int n, int tq, int offset, int valid) { softmax_rows(x, y, rows, n, tq, offset, valid); } \
    HEADS_VEC(T, S, 1, )                                                                               \
    HEADS_VEC(T, S, (16 / sizeof(T)), _v)

HEADS(float, f32)
HEADS(double, f64)
HEADS(__half, f16)
HEADS(__nv_bfloat16, bf16)
ATTN(__half, f16)
ATTN(__nv_bfloat16, bf16)
