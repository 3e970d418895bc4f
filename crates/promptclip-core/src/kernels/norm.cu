// Normalisation and activations (norm.rs holds their CPU twins and launches).
#include "common.cuh"
#include "activation.cuh"

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

#define NORM_VEC(T, S, V, X) \
    extern "C" __global__ void layer_norm_warp##X##_##S(const T *x, const T *g, const T *b, T *y, size_t rows, int d, double eps) { layer_norm_fwd_warp<T, V, 8>(x, g, b, y, rows, d, eps); }

#define NORM(T, S)                                                                                     \
    extern "C" __global__ void layer_norm_fwd_##S(const T *x, const T *g, const T *b, T *y, int d, double eps) { layer_norm_fwd(x, g, b, y, d, eps); } \
    extern "C" __global__ void layer_norm_bwd_##S(const T *x, const T *g, const T *dy, T *dx, int d, double eps) { layer_norm_bwd(x, g, dy, dx, d, eps); } \
    extern "C" __global__ void activation_fwd_##S(const T *h, T *y, size_t n, int act) { activation_fwd(h, y, n, act); } \
    extern "C" __global__ void activation_bwd_##S(const T *h, const T *dy, T *dh, size_t n, int act) { activation_bwd(h, dy, dh, n, act); } \
    NORM_VEC(T, S, 1, )                                                                                \
    NORM_VEC(T, S, (16 / sizeof(T)), _v)

NORM(float, f32)
NORM(double, f64)
NORM(__half, f16)
NORM(__nv_bfloat16, bf16)
