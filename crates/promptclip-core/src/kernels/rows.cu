// Rows moved between sequences for the text tower's shared prefix: gathered after a group's
// prefix, a prefix's gradients summed over its group, rows scattered (rows.rs holds the CPU
// twins and the launches).
#include "common.cuh"

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

#define ROWS_VEC(T, S, V, X) \
    extern "C" __global__ void gather_cat##X##_##S(const T *kp, const T *ks, T *out, int per_group, int H, int Tp, int Ts, int Tt, int hd) { gather_cat<T, V>(kp, ks, out, per_group, H, Tp, Ts, Tt, hd); }

#define ROWS(T, S)                                                                                     \
    extern "C" __global__ void group_prefix_sum_##S(const T *x, T *out, int G, int K, int H, int Tt, int Tp, int hd) { group_prefix_sum(x, out, G, K, H, Tt, Tp, hd); } \
    extern "C" __global__ void scatter_rows_##S(const T *src, const uint32_t *idx, T *out, size_t rows, int d) { scatter_rows(src, idx, out, rows, d); } \
    ROWS_VEC(T, S, 1, )                                                                                \
    ROWS_VEC(T, S, (16 / sizeof(T)), _v)

ROWS(float, f32)
ROWS(double, f64)
ROWS(__half, f16)
ROWS(__nv_bfloat16, bf16)
