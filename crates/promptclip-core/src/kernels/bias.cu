// A matrix multiply's bias, activation and residual in one pass (bias.rs holds the CPU twin and
// the launch).
#include "common.cuh"
#include "activation.cuh"

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

#define BIAS_VEC(T, S, V, X) \
    extern "C" __global__ void bias_act##X##_##S(const T *x, const T *b, const T *r, T *y, int rows, int d, int act) { bias_act<T, V>(x, b, r, y, rows, d, act); }

#define BIAS(T, S)          \
    BIAS_VEC(T, S, 1, )     \
    BIAS_VEC(T, S, (16 / sizeof(T)), _v)

BIAS(float, f32)
BIAS(double, f64)
BIAS(__half, f16)
BIAS(__nv_bfloat16, bf16)
