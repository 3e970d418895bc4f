// The MLP's activations and their derivatives, shared by norm.cu and bias.cu.
// act: 0 quick_gelu x*sigmoid(1.702x), 1 gelu (erf), 2 gelu (tanh), 3 relu.
#pragma once
#include "common.cuh"

__device__ __forceinline__ float sigmoid_(float x) { return 1.f / (1.f + expf(-x)); }
__device__ __forceinline__ double sigmoid_(double x) { return 1.0 / (1.0 + exp(-x)); }

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
