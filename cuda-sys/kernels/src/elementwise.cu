// Element-wise kernels: SwiGLU activation, residual add, bias add.
#include "common.cuh"

namespace {

constexpr int EW_THREADS = 256;
// Grid-stride loops with a capped grid: any n (int64) in one launch.
constexpr unsigned int EW_MAX_BLOCKS = 65535;

unsigned int ew_blocks(int64_t n) {
    const unsigned int b = wk::ceil_div(n, EW_THREADS);
    return b < EW_MAX_BLOCKS ? b : EW_MAX_BLOCKS;
}

// out = silu(gate) * up. Plain expf (no fast-math) so results match the CPU backend closely.
__global__ void silu_mul_kernel(const float *gate, const float *up, float *out, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x) {
        const float g = gate[i];
        out[i] = g / (1.0f + expf(-g)) * up[i];
    }
}

__global__ void add_kernel(const float *a, const float *b, float *out, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        out[i] = a[i] + b[i];
}

// x [T, N] += bias [N].
__global__ void add_bias_kernel(float *x, const float *__restrict__ bias, int N, int64_t n) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n;
         i += (int64_t)gridDim.x * blockDim.x)
        x[i] += bias[i % N];
}

}  // namespace

// gate, up, out f32 [n] (e.g. [T, F]); out may alias gate or up.
extern "C" int wk_silu_mul(wk_stream_t stream, const float *gate, const float *up, float *out,
                           int64_t n) {
    WK_REQUIRE(gate != nullptr && up != nullptr && out != nullptr && n >= 0);
    if (n == 0) return WK_OK;
    silu_mul_kernel<<<ew_blocks(n), EW_THREADS, 0, wk::as_stream(stream)>>>(gate, up, out, n);
    WK_LAUNCH_CHECK("silu_mul_kernel");
    return WK_OK;
}

// a, b, out f32 [n]; out may alias a or b.
extern "C" int wk_add(wk_stream_t stream, const float *a, const float *b, float *out, int64_t n) {
    WK_REQUIRE(a != nullptr && b != nullptr && out != nullptr && n >= 0);
    if (n == 0) return WK_OK;
    add_kernel<<<ew_blocks(n), EW_THREADS, 0, wk::as_stream(stream)>>>(a, b, out, n);
    WK_LAUNCH_CHECK("add_kernel");
    return WK_OK;
}

// x f32 [T, N] += bias f32 [N].
extern "C" int wk_add_bias(wk_stream_t stream, float *x, const float *bias, int T, int N) {
    WK_REQUIRE(x != nullptr && bias != nullptr && T >= 0 && N > 0);
    const int64_t n = (int64_t)T * N;
    if (n == 0) return WK_OK;
    add_bias_kernel<<<ew_blocks(n), EW_THREADS, 0, wk::as_stream(stream)>>>(x, bias, N, n);
    WK_LAUNCH_CHECK("add_bias_kernel");
    return WK_OK;
}
