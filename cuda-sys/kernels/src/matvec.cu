// Matrix-vector products for decode: out[t, n] (+)= W[n, :] . x[t, :] (+ bias[n]).
// Quantized weights use integer dp4a dot products against q8_1 activations; F32/F16/BF16 weights
// use f32 FMA. One warp per weight row, MV_ROWS rows per block; each lane takes whole 32-value
// chunks of the row, so the weights are read once for all T (<= 8 per launch) activation rows.
#include "matvec.cuh"

namespace {

using wk::MV_MAX_T;
using wk::MV_ROWS;
using wk::store_result;

// W: N rows of K elements of TYPE; q8: [NT, K/32] q8_1 blocks; out: [NT, N] (row stride N).
template <int TYPE, int NT>
__global__ void __launch_bounds__(32 * MV_ROWS)
    matvec_q_kernel(const uint8_t *__restrict__ W, const uint8_t *__restrict__ q8,
                    const float *__restrict__ bias, float *out, int N, int K, int accumulate) {
    const int row = blockIdx.x * MV_ROWS + threadIdx.y;
    if (row >= N) return;  // the whole warp leaves together: no shuffle is left half-joined
    float acc[NT];
    wk::row_dot_q<TYPE, NT>(W + (size_t)row * wk::row_bytes<TYPE>(K), q8, K / 32, acc);
    store_result<NT>(acc, bias, out, row, N, accumulate);
}

// Rows of at least this many 32-value chunks use one thread block per row (matvec_q_wide_kernel).
constexpr int WIDE_MIN_CHUNKS = 128;
constexpr int WIDE_WARPS = 4;

// As matvec_q_kernel for long rows (e.g. the MLP down projection, K = 4864): one block of
// WIDE_WARPS warps per row, its chunks dealt round-robin over all 128 threads, then the warp sums
// added in a fixed order. One warp per row left 5 dependent rounds of loads per lane and only
// ~7 warps per SM for N = 896 rows.
template <int TYPE, int NT>
__global__ void __launch_bounds__(32 * WIDE_WARPS)
    matvec_q_wide_kernel(const uint8_t *__restrict__ W, const uint8_t *__restrict__ q8,
                         const float *__restrict__ bias, float *out, int N, int K,
                         int accumulate) {
    __shared__ float red[WIDE_WARPS][NT];
    const int row = blockIdx.x;
    const int nchunks = K / 32;
    const uint8_t *wrow = W + (size_t)row * wk::row_bytes<TYPE>(K);
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
    for (int c = threadIdx.x; c < nchunks; c += 32 * WIDE_WARPS) {
        wk::Chunk<TYPE> w;
        w.load(wrow, c);
#pragma unroll
        for (int t = 0; t < NT; ++t)
            acc[t] += w.dot(q8 + ((size_t)t * nchunks + c) * WK_Q8_1_BLOCK_BYTES);
    }
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        acc[t] = wk::warp_sum(acc[t]);
        if (lane == 0) red[warp][t] = acc[t];
    }
    __syncthreads();
    if (warp != 0) return;
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        float v = red[0][t];
#pragma unroll
        for (int w = 1; w < WIDE_WARPS; ++w) v += red[w][t];
        acc[t] = v;
    }
    store_result<NT>(acc, bias, out, row, N, accumulate);  // lane = threadIdx.x in warp 0
}

// W: N rows of K f32/f16/bf16; x: [NT, K] f32; out: [NT, N].
template <int TYPE, int NT>
__global__ void __launch_bounds__(32 * MV_ROWS)
    matvec_f_kernel(const uint8_t *__restrict__ W, const float *__restrict__ x,
                    const float *__restrict__ bias, float *out, int N, int K, int accumulate) {
    const int row = blockIdx.x * MV_ROWS + threadIdx.y;
    if (row >= N) return;
    const uint8_t *wrow = W + (size_t)row * wk::row_bytes<TYPE>(K);
    float acc[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[t] = 0.0f;
    for (int k = threadIdx.x; k < K; k += 32) {  // consecutive lanes read consecutive weights
        const float w = wk::dequant_elem<TYPE>(wrow, k);
#pragma unroll
        for (int t = 0; t < NT; ++t) acc[t] = fmaf(w, x[(size_t)t * K + k], acc[t]);
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) acc[t] = wk::warp_sum(acc[t]);
    store_result<NT>(acc, bias, out, row, N, accumulate);
}

// Launches one kernel per group of <= 8 activation rows. `x` is the q8_1 activation (bytes) for
// the quantized path or the f32 activation for the float path; `x_row_bytes` is its row stride.
template <int TYPE, bool QUANT>
int launch_matvec(cudaStream_t stream, const void *W, const void *x, size_t x_row_bytes,
                  const float *bias, float *out, int N, int K, int T, int accumulate) {
    const dim3 block(32, MV_ROWS);
    const dim3 grid(wk::ceil_div(N, MV_ROWS));
    const uint8_t *w = (const uint8_t *)W;
    for (int t0 = 0; t0 < T; t0 += MV_MAX_T) {
        const int nt = T - t0 < MV_MAX_T ? T - t0 : MV_MAX_T;
        const uint8_t *xt = (const uint8_t *)x + (size_t)t0 * x_row_bytes;
        float *ot = out + (size_t)t0 * N;
#define WK_MV_CASE(NTV)                                                                        \
    case NTV:                                                                                  \
        if constexpr (QUANT) {                                                                 \
            if (K / 32 >= WIDE_MIN_CHUNKS)                                                     \
                matvec_q_wide_kernel<TYPE, NTV><<<N, 32 * WIDE_WARPS, 0, stream>>>(            \
                    w, xt, bias, ot, N, K, accumulate);                                        \
            else                                                                               \
                matvec_q_kernel<TYPE, NTV><<<grid, block, 0, stream>>>(w, xt, bias, ot, N, K,  \
                                                                       accumulate);            \
        } else                                                                                 \
            matvec_f_kernel<TYPE, NTV><<<grid, block, 0, stream>>>(w, (const float *)xt, bias, \
                                                                   ot, N, K, accumulate);      \
        break;
        switch (nt) {
            WK_MV_CASE(1)
            WK_MV_CASE(2)
            WK_MV_CASE(3)
            WK_MV_CASE(4)
            WK_MV_CASE(5)
            WK_MV_CASE(6)
            WK_MV_CASE(7)
            WK_MV_CASE(8)
        }
#undef WK_MV_CASE
        WK_LAUNCH_CHECK("matvec kernel");
    }
    return WK_OK;
}

template <int TYPE>
int check_weights(const void *W, int K) {
    WK_REQUIRE(K % wk::QType<TYPE>::BLK == 0);
    WK_REQUIRE((uintptr_t)W % wk::QType<TYPE>::ALIGN == 0);
    return WK_OK;
}

template <int TYPE>
int matvec_q_typed(cudaStream_t s, const void *W, const void *q8, const float *bias, float *out,
                   int N, int K, int T, int acc) {
    const int st = check_weights<TYPE>(W, K);
    if (st != WK_OK) return st;
    const size_t q8_row = (size_t)(K / 32) * WK_Q8_1_BLOCK_BYTES;
    return launch_matvec<TYPE, true>(s, W, q8, q8_row, bias, out, N, K, T, acc);
}

template <int TYPE>
int matvec_f_typed(cudaStream_t s, const void *W, const float *x, const float *bias, float *out,
                   int N, int K, int T, int acc) {
    const int st = check_weights<TYPE>(W, K);
    if (st != WK_OK) return st;
    return launch_matvec<TYPE, false>(s, W, x, (size_t)K * sizeof(float), bias, out, N, K, T,
                                      acc);
}

}  // namespace

// W [N, K] of `type` (quantized), q8 [T, K/32] q8_1 blocks, bias [N] or NULL -> out f32 [T, N].
extern "C" int wk_matvec_q(wk_stream_t stream, wk_dtype type, const void *W, const void *q8,
                           const float *bias, float *out, int N, int K, int T, int accumulate) {
    WK_REQUIRE(W != nullptr && q8 != nullptr && out != nullptr);
    WK_REQUIRE(N > 0 && K > 0 && K % 32 == 0 && T >= 0);
    WK_REQUIRE((uintptr_t)q8 % 4 == 0);
    if (T == 0) return WK_OK;
    const cudaStream_t s = wk::as_stream(stream);
    switch (type) {
        case WK_TYPE_Q4_0: return matvec_q_typed<WK_TYPE_Q4_0>(s, W, q8, bias, out, N, K, T, accumulate);
        case WK_TYPE_Q4_1: return matvec_q_typed<WK_TYPE_Q4_1>(s, W, q8, bias, out, N, K, T, accumulate);
        case WK_TYPE_Q5_0: return matvec_q_typed<WK_TYPE_Q5_0>(s, W, q8, bias, out, N, K, T, accumulate);
        case WK_TYPE_Q5_1: return matvec_q_typed<WK_TYPE_Q5_1>(s, W, q8, bias, out, N, K, T, accumulate);
        case WK_TYPE_Q8_0: return matvec_q_typed<WK_TYPE_Q8_0>(s, W, q8, bias, out, N, K, T, accumulate);
        case WK_TYPE_Q4_K: return matvec_q_typed<WK_TYPE_Q4_K>(s, W, q8, bias, out, N, K, T, accumulate);
        case WK_TYPE_Q5_K: return matvec_q_typed<WK_TYPE_Q5_K>(s, W, q8, bias, out, N, K, T, accumulate);
        case WK_TYPE_Q6_K: return matvec_q_typed<WK_TYPE_Q6_K>(s, W, q8, bias, out, N, K, T, accumulate);
        default: return WK_UNSUPPORTED();
    }
}

// W [N, K] of F32/F16/BF16, x f32 [T, K], bias [N] or NULL -> out f32 [T, N].
extern "C" int wk_matvec_f(wk_stream_t stream, wk_dtype type, const void *W, const float *x,
                           const float *bias, float *out, int N, int K, int T, int accumulate) {
    WK_REQUIRE(W != nullptr && x != nullptr && out != nullptr);
    WK_REQUIRE(N > 0 && K > 0 && T >= 0);
    if (T == 0) return WK_OK;
    const cudaStream_t s = wk::as_stream(stream);
    switch (type) {
        case WK_TYPE_F32: return matvec_f_typed<WK_TYPE_F32>(s, W, x, bias, out, N, K, T, accumulate);
        case WK_TYPE_F16: return matvec_f_typed<WK_TYPE_F16>(s, W, x, bias, out, N, K, T, accumulate);
        case WK_TYPE_BF16: return matvec_f_typed<WK_TYPE_BF16>(s, W, x, bias, out, N, K, T, accumulate);
        default: return WK_UNSUPPORTED();
    }
}
