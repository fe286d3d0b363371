// RMS normalization and q8_1 activation quantization (optionally fused: normalize + quantize in one
// pass, the input of the next dp4a matvec).
#include "common.cuh"

namespace {

constexpr int NORM_THREADS = 256;

// One block per row t of x [T, K]: out [T, K] = x * rsqrt(mean(x^2) + eps) * w.
__global__ void __launch_bounds__(NORM_THREADS)
    rmsnorm_kernel(const float *x, const float *__restrict__ w, float *out, int K,
                   float eps) {
    __shared__ float red[32];
    const float *xr = x + (size_t)blockIdx.x * K;
    float *orow = out + (size_t)blockIdx.x * K;
    float ss = 0.0f;
    for (int k = threadIdx.x; k < K; k += blockDim.x) ss += xr[k] * xr[k];
    ss = wk::block_sum(ss, red);
    const float r = rsqrtf(ss / (float)K + eps);
    for (int k = threadIdx.x; k < K; k += blockDim.x) orow[k] = xr[k] * r * w[k];
}

// Warps (= q8_1 blocks of 32 values) per thread block of the quantize kernels.
constexpr int QUANT_WARPS = 4;

// grid (ceil(K/32 / QUANT_WARPS), T), QUANT_WARPS warps: optionally RMS-normalizes (NORM) then
// quantizes to q8_1 blocks q8 [T, K/32]. Each warp quantizes one 32-value block (lane l owns
// value l), so a row is spread over many thread blocks instead of looping in one (a decode row of
// K = 4864 used to take 19 dependent rounds on one SM). With NORM every thread block computes the
// row's sum of squares itself (the same reduction in each, so the same scale everywhere).
template <bool NORM>
__global__ void __launch_bounds__(QUANT_WARPS * 32)
    quantize_q8_1_kernel(const float *__restrict__ x, const float *__restrict__ w,
                         uint8_t *__restrict__ q8, int K, float eps) {
    __shared__ float red[32];
    const float *xr = x + (size_t)blockIdx.y * K;
    const int nblocks = K / 32;
    uint8_t *qrow = q8 + (size_t)blockIdx.y * nblocks * WK_Q8_1_BLOCK_BYTES;
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int b = blockIdx.x * QUANT_WARPS + warp;
    // This warp's value, loaded before the (NORM) reduction so both loads are in flight together.
    const float xv = b < nblocks ? xr[b * 32 + lane] : 0.0f;
    const float wv = NORM && b < nblocks ? w[b * 32 + lane] : 0.0f;
    float r = 1.0f;
    if (NORM) {
        float ss = 0.0f;
#pragma unroll 4
        for (int k = threadIdx.x; k < K; k += blockDim.x) ss += xr[k] * xr[k];
        ss = wk::block_sum(ss, red);
        r = rsqrtf(ss / (float)K + eps);
    }
    if (b >= nblocks) return;  // whole warps only: no shuffle is left half-joined
    const float v = NORM ? xv * r * wv : xv;
    const float amax = wk::warp_max(fabsf(v));
    const float d = amax / 127.0f;
    const int q = amax == 0.0f ? 0 : __float2int_rn(v / d);
    const int qsum = wk::warp_sum_int(q);
    uint8_t *blk = qrow + (size_t)b * WK_Q8_1_BLOCK_BYTES;
    blk[4 + lane] = (uint8_t)(int8_t)q;
    if (lane == 0) {
        // s = d * sum(q): exactly the sum the matvec's integer dot product sees.
        ((__half *)blk)[0] = __float2half_rn(d);
        ((__half *)blk)[1] = __float2half_rn(d * (float)qsum);
    }
}

// Launch shape of the quantize kernels for T rows of K values.
dim3 quant_grid(int T, int K) { return dim3(wk::ceil_div(K / 32, QUANT_WARPS), T); }

}  // namespace

// x f32 [T, K], w f32 [K] -> out f32 [T, K] (may alias x: each element is read before written by
// the same thread after the block-wide reduction).
extern "C" int wk_rmsnorm(wk_stream_t stream, const float *x, const float *w, float *out, int T,
                          int K, float eps) {
    WK_REQUIRE(x != nullptr && w != nullptr && out != nullptr);
    WK_REQUIRE(T >= 0 && K > 0);
    if (T == 0) return WK_OK;
    rmsnorm_kernel<<<T, NORM_THREADS, 0, wk::as_stream(stream)>>>(x, w, out, K, eps);
    WK_LAUNCH_CHECK("rmsnorm_kernel");
    return WK_OK;
}

// x f32 [T, K] -> q8 [T, K/32] blocks of 36 bytes.
extern "C" int wk_quantize_q8_1(wk_stream_t stream, const float *x, void *q8, int T, int K) {
    WK_REQUIRE(x != nullptr && q8 != nullptr);
    WK_REQUIRE(T >= 0 && K > 0 && K % 32 == 0);
    WK_REQUIRE((uintptr_t)q8 % 4 == 0);
    WK_REQUIRE(T <= 65535);  // gridDim.y
    if (T == 0) return WK_OK;
    quantize_q8_1_kernel<false><<<quant_grid(T, K), QUANT_WARPS * 32, 0, wk::as_stream(stream)>>>(
        x, nullptr, (uint8_t *)q8, K, 0.0f);
    WK_LAUNCH_CHECK("quantize_q8_1_kernel<false>");
    return WK_OK;
}

// x f32 [T, K], w f32 [K] -> q8 [T, K/32] of rmsnorm(x) * w.
extern "C" int wk_rmsnorm_quantize_q8_1(wk_stream_t stream, const float *x, const float *w,
                                        void *q8, int T, int K, float eps) {
    WK_REQUIRE(x != nullptr && w != nullptr && q8 != nullptr);
    WK_REQUIRE(T >= 0 && K > 0 && K % 32 == 0);
    WK_REQUIRE((uintptr_t)q8 % 4 == 0);
    WK_REQUIRE(T <= 65535);  // gridDim.y
    if (T == 0) return WK_OK;
    quantize_q8_1_kernel<true><<<quant_grid(T, K), QUANT_WARPS * 32, 0, wk::as_stream(stream)>>>(
        x, w, (uint8_t *)q8, K, eps);
    WK_LAUNCH_CHECK("quantize_q8_1_kernel<true>");
    return WK_OK;
}
