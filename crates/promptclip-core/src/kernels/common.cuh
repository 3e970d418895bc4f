// What every family's kernels share: element loads and stores with float (double for double)
// accumulation, 16-byte packs, and a block-wide sum. Every kernel reads and writes contiguous
// row-major buffers.
#pragma once
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
