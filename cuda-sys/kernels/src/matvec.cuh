// Pieces shared by the matvec kernels (matvec.cu, matvec_fused.cu): the per-row dp4a dot product
// and the epilogue that writes one value per activation row.
#pragma once

#include "quants.cuh"

namespace wk {

constexpr int MV_ROWS = 4;   // warps (= weight rows) per block
constexpr int MV_MAX_T = 8;  // activation rows per launch; more are done in groups of 8

// Writes lane t's column: out[t, row] (+)= acc[t] + bias[row]. Selecting acc[lane] through an
// unrolled loop keeps acc in registers (a dynamic index would spill it to local memory).
template <int NT>
__device__ __forceinline__ void store_result(const float (&acc)[NT], const float *bias, float *out,
                                             int row, int N, int accumulate) {
    const int lane = threadIdx.x;
    if (lane >= NT) return;
    float v = 0.0f;
#pragma unroll
    for (int t = 0; t < NT; ++t)
        if (t == lane) v = acc[t];
    if (bias != nullptr) v += bias[row];
    float *o = out + (size_t)lane * N + row;
    *o = accumulate ? *o + v : v;
}

// acc[t] = W row . x_t for the NT activation rows of q8 [NT, nchunks] (q8_1), summed over the
// warp (every lane gets the totals). Lane l takes the 32-value chunks l, l + 32, ...
template <int TYPE, int NT>
__device__ __forceinline__ void row_dot_q(const uint8_t *wrow, const uint8_t *q8, int nchunks,
                                          float (&acc)[NT]) {
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
    for (int c = threadIdx.x; c < nchunks; c += 32) {
        Chunk<TYPE> w;
        w.load(wrow, c);
#pragma unroll
        for (int t = 0; t < NT; ++t)
            acc[t] += w.dot(q8 + ((size_t)t * nchunks + c) * WK_Q8_1_BLOCK_BYTES);
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[t] = warp_sum(acc[t]);
}

}  // namespace wk
