// Fused kernels of promptclip's CLIP blocks, for candle's CUDA backend (src/kernels/mod.rs holds
// the CPU twins and the launch code; tests compare the two). Every kernel reads and writes
// contiguous row-major buffers; arithmetic is in float (double for double inputs).
#include <cuda_fp16.h>
#include <cuda_bf16.h>
#include <stdint.h>
#include <mma.h>

template <typename T> struct Acc { typedef float type; };
template <> struct Acc<double> { typedef double type; };

__device__ __forceinline__ float load(const float *p, size_t i) { return p[i]; }
__device__ __forceinline__ double load(const double *p, size_t i) { return p[i]; }
__device__ __forceinline__ float load(const __half *p, size_t i) { return __half2float(p[i]); }
__device__ __forceinline__ float load(const __nv_bfloat16 *p, size_t i) { return __bfloat162float(p[i]); }
__device__ __forceinline__ void store(float *p, size_t i, float v) { p[i] = v; }
__device__ __forceinline__ void store(double *p, size_t i, double v) { p[i] = v; }
__device__ __forceinline__ void store(__half *p, size_t i, float v) { p[i] = __float2half(v); }
__device__ __forceinline__ void store(__nv_bfloat16 *p, size_t i, float v) { p[i] = __float2bfloat16(v); }

__device__ __forceinline__ float cvt(float x) { return x; }
__device__ __forceinline__ double cvt(double x) { return x; }
__device__ __forceinline__ float cvt(__half x) { return __half2float(x); }
__device__ __forceinline__ float cvt(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T back(float v);
template <> __device__ __forceinline__ float back<float>(float v) { return v; }
template <> __device__ __forceinline__ __half back<__half>(float v) { return __float2half(v); }
template <> __device__ __forceinline__ __nv_bfloat16 back<__nv_bfloat16>(float v) { return __float2bfloat16(v); }
template <typename T> __device__ __forceinline__ T back(double v) { return (T)v; }

// V consecutive elements moved as one access: 16 bytes when the launcher has checked that every
// pointer and row length allows it, else V = 1.
template <typename T, int V> struct alignas(sizeof(T) * V) Pack { T v[V]; };
template <typename T, int V> __device__ __forceinline__ Pack<T, V> ld(const T *p) { return *reinterpret_cast<const Pack<T, V> *>(p); }
template <typename T, int V> __device__ __forceinline__ void st(T *p, const Pack<T, V> &x) { *reinterpret_cast<Pack<T, V> *>(p) = x; }

__device__ __forceinline__ float sigmoid_(float x) { return 1.f / (1.f + expf(-x)); }
__device__ __forceinline__ double sigmoid_(double x) { return 1.0 / (1.0 + exp(-x)); }

// Sum over the block; every thread gets the total. blockDim.x is a multiple of 32, at most 1024.
template <typename A>
__device__ __forceinline__ A block_sum(A v) {
    __shared__ A partial[32];
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, warps = blockDim.x / 32;
    __syncthreads();  // partial[] may still be read by a previous call
    if (lane == 0) partial[warp] = v;
    __syncthreads();
    v = lane < warps ? partial[lane] : A(0);
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}

// ---- LayerNorm over the last dim, one block per row: two-pass mean and variance ----------------

// Mean and 1 / sqrt(var + eps) of the row of d elements at x + row, over the block (two passes).
template <typename T, typename A>
__device__ __forceinline__ void block_row_stats(const T *x, size_t row, int d, double eps, A &mean, A &rstd) {
    A s = 0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) s += load(x, row + i);
    mean = block_sum(s) / d;
    A s2 = 0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) { A c = load(x, row + i) - mean; s2 += c * c; }
    rstd = A(1) / sqrt(block_sum(s2) / d + A(eps));
}

template <typename T>
__device__ void layer_norm_fwd(const T *x, const T *gamma, const T *beta, T *y, int d, double eps) {
    typedef typename Acc<T>::type A;
    const size_t row = (size_t)blockIdx.x * d;
    A mean, rstd;
    block_row_stats(x, row, d, eps, mean, rstd);
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        store(y, row + i, (load(x, row + i) - mean) * rstd * load(gamma, i) + load(beta, i));
}

// The same for rows of d <= 32 * P * V elements, one warp per row: each lane keeps its P packs of
// V in registers, so the row is read once and written once.
template <typename T, int V, int P>
__device__ void layer_norm_fwd_warp(const T *x, const T *gamma, const T *beta, T *y, size_t rows, int d, double eps) {
    typedef typename Acc<T>::type A;
    const size_t r = (size_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (r >= rows) return;
    const T *xr = x + r * d;
    Pack<T, V> v[P];
    A s = 0;
#pragma unroll
    for (int p = 0; p < P; ++p) {
        const int j = (p * 32 + lane) * V;
        if (j < d) {
            v[p] = ld<T, V>(xr + j);
#pragma unroll
            for (int k = 0; k < V; ++k) s += (A)cvt(v[p].v[k]);
        }
    }
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffff, s, o);
    const A mean = s / d;
    A s2 = 0;
#pragma unroll
    for (int p = 0; p < P; ++p) {
        const int j = (p * 32 + lane) * V;
        if (j < d) {
#pragma unroll
            for (int k = 0; k < V; ++k) { const A c = (A)cvt(v[p].v[k]) - mean; s2 += c * c; }
        }
    }
    for (int o = 16; o > 0; o >>= 1) s2 += __shfl_xor_sync(0xffffffff, s2, o);
    const A rstd = A(1) / sqrt(s2 / d + A(eps));
#pragma unroll
    for (int p = 0; p < P; ++p) {
        const int j = (p * 32 + lane) * V;
        if (j < d) {
            const Pack<T, V> gv = ld<T, V>(gamma + j), bv = ld<T, V>(beta + j);
            Pack<T, V> o;
#pragma unroll
            for (int k = 0; k < V; ++k) o.v[k] = back<T>(((A)cvt(v[p].v[k]) - mean) * rstd * (A)cvt(gv.v[k]) + (A)cvt(bv.v[k]));
            st<T, V>(y + r * d + j, o);
        }
    }
}

// dx = rstd * (g - mean(g) - xhat * mean(g * xhat)),  g = dy * gamma,  statistics recomputed from x.
template <typename T>
__device__ void layer_norm_bwd(const T *x, const T *gamma, const T *dy, T *dx, int d, double eps) {
    typedef typename Acc<T>::type A;
    const size_t row = (size_t)blockIdx.x * d;
    A mean, rstd;
    block_row_stats(x, row, d, eps, mean, rstd);
    A sg = 0, sgx = 0;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        const A g = load(dy, row + i) * load(gamma, i);
        sg += g;
        sgx += g * (load(x, row + i) - mean) * rstd;
    }
    const A mg = block_sum(sg) / d;
    const A mgx = block_sum(sgx) / d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        const A xhat = (load(x, row + i) - mean) * rstd;
        const A g = load(dy, row + i) * load(gamma, i);
        store(dx, row + i, rstd * (g - mg - xhat * mgx));
    }
}

// ---- Activations, elementwise ----------------------------------------------------------------
// act: 0 quick_gelu x*sigmoid(1.702x), 1 gelu (erf), 2 gelu (tanh), 3 relu.

template <typename A>
__device__ __forceinline__ A act_fwd(A h, int act) {
    switch (act) {
        case 0: return h * sigmoid_(A(1.702) * h);
        case 1: return A(0.5) * h * (A(1) + erf(h * A(0.70710678118654752440)));
        case 2: { A t = tanh(A(0.79788456080286535588) * (h + A(0.044715) * h * h * h)); return A(0.5) * h * (A(1) + t); }
        default: return h > A(0) ? h : A(0);
    }
}

template <typename A>
__device__ __forceinline__ A act_grad(A h, int act) {
    switch (act) {
        case 0: { A s = sigmoid_(A(1.702) * h); return s + A(1.702) * h * s * (A(1) - s); }
        case 1: return A(0.5) * (A(1) + erf(h * A(0.70710678118654752440))) + h * exp(A(-0.5) * h * h) * A(0.39894228040143267794);
        case 2: {
            const A k = A(0.79788456080286535588);
            A t = tanh(k * (h + A(0.044715) * h * h * h));
            return A(0.5) * (A(1) + t) + A(0.5) * h * (A(1) - t * t) * k * (A(1) + A(3) * A(0.044715) * h * h);
        }
        default: return h > A(0) ? A(1) : A(0);
    }
}

template <typename T>
__device__ void activation_fwd(const T *h, T *y, size_t n, int act) {
    typedef typename Acc<T>::type A;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)blockDim.x * gridDim.x)
        store(y, i, act_fwd<A>(load(h, i), act));
}

template <typename T>
__device__ void activation_bwd(const T *h, const T *dy, T *dh, size_t n, int act) {
    typedef typename Acc<T>::type A;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)blockDim.x * gridDim.x)
        store(dh, i, load(dy, i) * act_grad<A>(load(h, i), act));
}

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

// ---- Bias, activation and residual after a matmul, one pass: y = act(x + b) (+ r) -------------
// x and r are (rows, d) row-major, b is (d); act -1 means none; r may be null. Threads run along
// the row V elements at a time (each keeps its bias in registers), blocks along rows.

template <typename T, int V>
__device__ void bias_act(const T *x, const T *b, const T *r, T *y, int rows, int d, int act) {
    typedef typename Acc<T>::type A;
    const int col = (blockIdx.x * blockDim.x + threadIdx.x) * V;
    if (col >= d) return;
    const Pack<T, V> bias = ld<T, V>(b + col);
    for (int row = blockIdx.y; row < rows; row += gridDim.y) {
        const size_t i = (size_t)row * d + col;
        const Pack<T, V> xv = ld<T, V>(x + i);
        Pack<T, V> rv, out;
        if (r != nullptr) rv = ld<T, V>(r + i);
#pragma unroll
        for (int k = 0; k < V; ++k) {
            A v = (A)cvt(xv.v[k]) + (A)cvt(bias.v[k]);
            if (act >= 0) v = act_fwd<A>(v, act);
            if (r != nullptr) v += (A)cvt(rv.v[k]);
            out.v[k] = back<T>(v);
        }
        st<T, V>(y + i, out);
    }
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

// Keys (or values) of sequences that share a prefix, as attention reads them: each sequence's
// group prefix kp (G, H, Tp, hd) then its own ks (N, H, Ts, hd), then zero rows up to Tt, to
// (N, H, Tt, hd). One block per (n, h).
template <typename T, int V>
__device__ void gather_cat(const T *kp, const T *ks, T *out, int per_group, int H, int Tp, int Ts, int Tt, int hd) {
    typedef typename Acc<T>::type A;
    const int n = blockIdx.x / H, h = blockIdx.x % H, g = n / per_group;
    const int w = Tt * hd;
    for (int j = threadIdx.x * V; j < w; j += blockDim.x * V) {
        const int t = j / hd, e = j % hd;
        if (t >= Tp + Ts) {
            Pack<T, V> z;
#pragma unroll
            for (int k = 0; k < V; ++k) z.v[k] = back<T>(A(0));
            st<T, V>(out + (size_t)blockIdx.x * w + j, z);
            continue;
        }
        const T *src = t < Tp ? kp + (((size_t)g * H + h) * Tp + t) * hd + e : ks + (((size_t)n * H + h) * Ts + (t - Tp)) * hd + e;
        st<T, V>(out + (size_t)blockIdx.x * w + j, ld<T, V>(src));
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

// ---- Gradients of keys and values shared by a group: x (G*K, H, Tt, hd); the first Tp rows of
// each head summed over the K sequences of each group, to (G, H, Tp, hd). One block per output
// row (g, h, t): 32 threads along hd, 16 along K, summed in a fixed order (deterministic). --------

template <typename T>
__device__ void group_prefix_sum(const T *x, T *out, int G, int K, int H, int Tt, int Tp, int hd) {
    typedef typename Acc<T>::type A;
    __shared__ A part[16][32];
    const int row = blockIdx.x, t = row % Tp, h = (row / Tp) % H, g = row / (Tp * H);
    const size_t stride = (size_t)H * Tt * hd;
    const T *base = x + (size_t)g * K * stride + ((size_t)h * Tt + t) * hd;
    for (int e0 = 0; e0 < hd; e0 += 32) {
        const int e = e0 + threadIdx.x;
        A s = 0;
        if (e < hd)
            for (int k = threadIdx.y; k < K; k += 16) s += load(base, (size_t)k * stride + e);
        part[threadIdx.y][threadIdx.x] = s;
        __syncthreads();
        if (threadIdx.y == 0 && e < hd) {
            A total = 0;
            for (int y = 0; y < 16; ++y) total += part[y][threadIdx.x];
            store(out, (size_t)row * hd + e, total);
        }
        __syncthreads();
    }
}

// ---- Rows placed at given indices of a zeroed output: out[idx[i]] = src[i] (unique indices) ---

template <typename T>
__device__ void scatter_rows(const T *src, const uint32_t *idx, T *out, size_t rows, int d) {
    const size_t n = rows * d;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)blockDim.x * gridDim.x)
        out[(size_t)idx[i / d] * d + i % d] = src[i];
}

// ---- 8-bit HWC crops (N, S, S, 3) to normalised CHW floats (N, 3, S, S) -----------------------

extern "C" __global__ void normalize_pixels(const uint8_t *x, float *y, int n, int s, float m0, float m1, float m2, float s0, float s1, float s2) {
    const size_t total = (size_t)n * 3 * s * s;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < total; i += (size_t)blockDim.x * gridDim.x) {
        size_t r = i;
        const int px = r % ((size_t)s * s); r /= (size_t)s * s;
        const int c = r % 3; r /= 3;
        const size_t img = r;
        // As transformers: x / 255 rounded to float, then (x - mean) / std in float.
        const float v = (float)((double)x[(img * s * s + px) * 3 + c] * (1.0 / 255.0));
        const float mean = c == 0 ? m0 : (c == 1 ? m1 : m2);
        const float sd = c == 0 ? s0 : (c == 1 ? s1 : s2);
        y[i] = (v - mean) / sd;
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

#define VEC(T, S, V, X)                                                                                 \
    extern "C" __global__ void bias_act##X##_##S(const T *x, const T *b, const T *r, T *y, int rows, int d, int act) { bias_act<T, V>(x, b, r, y, rows, d, act); } \
    extern "C" __global__ void qkv_split##X##_##S(const T *x, const T *b, T *out, int B, int T_, int H, int hd, double scale) { qkv_split<T, V>(x, b, out, B, T_, H, hd, scale); } \
    extern "C" __global__ void qkv_merge##X##_##S(const T *dq, const T *dk, const T *dv, T *out, int B, int T_, int H, int hd, int tk, int off, double scale) { qkv_merge<T, V>(dq, dk, dv, out, B, T_, H, hd, tk, off, scale); } \
    extern "C" __global__ void transpose12##X##_##S(const T *x, T *y, int A_, int B_, int C_, int D_) { transpose12<T, V>(x, y, A_, B_, C_, D_); } \
    extern "C" __global__ void gather_cat##X##_##S(const T *kp, const T *ks, T *out, int per_group, int H, int Tp, int Ts, int Tt, int hd) { gather_cat<T, V>(kp, ks, out, per_group, H, Tp, Ts, Tt, hd); } \
    extern "C" __global__ void layer_norm_warp##X##_##S(const T *x, const T *g, const T *b, T *y, size_t rows, int d, double eps) { layer_norm_fwd_warp<T, V, 8>(x, g, b, y, rows, d, eps); } \
    extern "C" __global__ void softmax_warp##X##_##S(const T *x, T *y, size_t rows, int n, int tq, int offset, int valid) { softmax_rows_warp<T, V, (V > 1 ? 4 : 8)>(x, y, rows, n, tq, offset, valid); }

#define OPS(T, S)                                                                                      \
    extern "C" __global__ void layer_norm_fwd_##S(const T *x, const T *g, const T *b, T *y, int d, double eps) { layer_norm_fwd(x, g, b, y, d, eps); } \
    extern "C" __global__ void layer_norm_bwd_##S(const T *x, const T *g, const T *dy, T *dx, int d, double eps) { layer_norm_bwd(x, g, dy, dx, d, eps); } \
    extern "C" __global__ void activation_fwd_##S(const T *h, T *y, size_t n, int act) { activation_fwd(h, y, n, act); } \
    extern "C" __global__ void activation_bwd_##S(const T *h, const T *dy, T *dh, size_t n, int act) { activation_bwd(h, dy, dh, n, act); } \
    extern "C" __global__ void softmax_bwd_##S(const T *y, const T *dy, T *dx, size_t rows, int d) { softmax_bwd(y, dy, dx, rows, d); } \
    extern "C" __global__ void softmax_rows_##S(const T *x, T *y, size_t rows, int n, int tq, int offset, int valid) { softmax_rows(x, y, rows, n, tq, offset, valid); } \
    extern "C" __global__ void group_prefix_sum_##S(const T *x, T *out, int G, int K, int H, int Tt, int Tp, int hd) { group_prefix_sum(x, out, G, K, H, Tt, Tp, hd); } \
    extern "C" __global__ void scatter_rows_##S(const T *src, const uint32_t *idx, T *out, size_t rows, int d) { scatter_rows(src, idx, out, rows, d); } \
    VEC(T, S, 1, )                                                                                     \
    VEC(T, S, (16 / sizeof(T)), _v)

OPS(float, f32)
OPS(double, f64)
OPS(__half, f16)
OPS(__nv_bfloat16, bf16)
ATTN(__half, f16)
ATTN(__nv_bfloat16, bf16)
