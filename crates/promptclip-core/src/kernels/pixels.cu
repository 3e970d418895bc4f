// 8-bit crops to the model's normalised input (pixels.rs holds the CPU twin and the launch).
#include "common.cuh"

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
