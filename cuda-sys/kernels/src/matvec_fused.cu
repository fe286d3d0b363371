// Fused decode matvecs, to cut kernel launches per token (decode of a small model is bound by
// launch overhead, not bandwidth):
//  - wk_matvec_q_multi: up to 4 weight matrices (e.g. Q, K, V) over the same q8_1 activations.
//    The rows of all parts form one grid; each warp finds its part and dispatches on its type.
//  - wk_matvec_q_swiglu: silu(gate) * up from two matrices, the two rows read in one loop.
#include "matvec.cuh"

namespace {

using wk::MV_MAX_T;
using wk::MV_ROWS;
using wk::store_result;

// Kernel parameter block of wk_matvec_q_multi (passed by value: lives in the launch parameters).
struct MultiParts {
    wk_matvec_part p[WK_MATVEC_MAX_PARTS];
    int row_start[WK_MATVEC_MAX_PARTS];  // first global row of each part
    int n;                               // parts in use
    int total_rows;
};

template <int TYPE, int NT>
__device__ __forceinline__ void multi_row(const wk_matvec_part &p, int row, const uint8_t *q8,
                                          int K) {
    float acc[NT];
    const uint8_t *wrow = (const uint8_t *)p.W + (size_t)row * wk::row_bytes<TYPE>(K);
    wk::row_dot_q<TYPE, NT>(wrow, q8, K / 32, acc);
    store_result<NT>(acc, p.bias, p.out, row, p.N, p.accumulate);
}

// grid: ceil(total_rows / MV_ROWS) blocks of (32, MV_ROWS); q8 [NT, K/32]; part outputs [NT, N].
template <int NT>
__global__ void __launch_bounds__(32 * MV_ROWS)
    matvec_q_multi_kernel(const MultiParts parts, const uint8_t *__restrict__ q8, int K) {
    const int r = blockIdx.x * MV_ROWS + threadIdx.y;
    if (r >= parts.total_rows) return;  // per warp: no shuffle is left half-joined
    // Select this warp's part with compile-time indices only (a dynamic index into the parameter
    // array would copy it to local memory).
    wk_matvec_part p = parts.p[0];
    int base = 0;
#pragma unroll
    for (int i = 1; i < WK_MATVEC_MAX_PARTS; ++i) {
        if (i < parts.n && r >= parts.row_start[i]) {
            p = parts.p[i];
            base = parts.row_start[i];
        }
    }
    const int row = r - base;
    switch (p.type) {  // warp-uniform branch
        case WK_TYPE_Q4_0: multi_row<WK_TYPE_Q4_0, NT>(p, row, q8, K); break;
        case WK_TYPE_Q4_1: multi_row<WK_TYPE_Q4_1, NT>(p, row, q8, K); break;
        case WK_TYPE_Q5_0: multi_row<WK_TYPE_Q5_0, NT>(p, row, q8, K); break;
        case WK_TYPE_Q5_1: multi_row<WK_TYPE_Q5_1, NT>(p, row, q8, K); break;
        case WK_TYPE_Q8_0: multi_row<WK_TYPE_Q8_0, NT>(p, row, q8, K); break;
        case WK_TYPE_Q4_K: multi_row<WK_TYPE_Q4_K, NT>(p, row, q8, K); break;
        case WK_TYPE_Q5_K: multi_row<WK_TYPE_Q5_K, NT>(p, row, q8, K); break;
        case WK_TYPE_Q6_K: multi_row<WK_TYPE_Q6_K, NT>(p, row, q8, K); break;
        default: break;  // rejected by the launcher
    }
}

// Wg, Wu [N, K] of TYPE; q8 [NT, K/32]; out [NT, N] = silu(Wg . x) * (Wu . x).
template <int TYPE, int NT>
__global__ void __launch_bounds__(32 * MV_ROWS)
    matvec_q_swiglu_kernel(const uint8_t *__restrict__ Wg, const uint8_t *__restrict__ Wu,
                           const uint8_t *__restrict__ q8, float *__restrict__ out, int N, int K) {
    const int row = blockIdx.x * MV_ROWS + threadIdx.y;
    if (row >= N) return;
    const int nchunks = K / 32;
    const size_t rb = wk::row_bytes<TYPE>(K);
    const uint8_t *grow = Wg + (size_t)row * rb;
    const uint8_t *urow = Wu + (size_t)row * rb;
    float g[NT], u[NT];
#pragma unroll
    for (int t = 0; t < NT; ++t) g[t] = u[t] = 0.0f;
    for (int c = threadIdx.x; c < nchunks; c += 32) {
        wk::Chunk<TYPE> wg, wu;  // both rows' loads in flight together
        wg.load(grow, c);
        wu.load(urow, c);
#pragma unroll
        for (int t = 0; t < NT; ++t) {
            const uint8_t *a = q8 + ((size_t)t * nchunks + c) * WK_Q8_1_BLOCK_BYTES;
            g[t] += wg.dot(a);
            u[t] += wu.dot(a);
        }
    }
#pragma unroll
    for (int t = 0; t < NT; ++t) {
        const float gs = wk::warp_sum(g[t]);
        g[t] = gs / (1.0f + expf(-gs)) * wk::warp_sum(u[t]);  // same silu as wk_silu_mul
    }
    store_result<NT>(g, nullptr, out, row, N, 0);
}

// Host-side checks of one quantized weight matrix: a supported type, whole blocks, alignment.
int check_quant_weights(wk_dtype type, const void *W, int K) {
    int blk = 0, bytes = 0;
    const int st = wk_dtype_info(type, &blk, &bytes);
    if (st != WK_OK) return st;
    WK_REQUIRE(blk == 32 || blk == 256);  // F32/F16/BF16 go through wk_matvec_f
    WK_REQUIRE(K % blk == 0);
    // Blocks of 20/24/144/176 bytes are read with 4-byte loads, the others with 2-byte loads.
    const int align = bytes % 4 == 0 ? 4 : 2;
    WK_REQUIRE((uintptr_t)W % align == 0);
    return WK_OK;
}

template <int TYPE>
int launch_swiglu(cudaStream_t s, const void *Wg, const void *Wu, const uint8_t *q8, float *out,
                  int N, int K, int T) {
    const dim3 block(32, MV_ROWS), grid(wk::ceil_div(N, MV_ROWS));
    const size_t q8_row = (size_t)(K / 32) * WK_Q8_1_BLOCK_BYTES;
    const uint8_t *g = (const uint8_t *)Wg, *u = (const uint8_t *)Wu;
    for (int t0 = 0; t0 < T; t0 += MV_MAX_T) {
        const int nt = T - t0 < MV_MAX_T ? T - t0 : MV_MAX_T;
        const uint8_t *xt = q8 + (size_t)t0 * q8_row;
        float *ot = out + (size_t)t0 * N;
#define WK_SWIGLU_CASE(NTV)                                                                 \
    case NTV:                                                                               \
        matvec_q_swiglu_kernel<TYPE, NTV><<<grid, block, 0, s>>>(g, u, xt, ot, N, K); \
        break;
        switch (nt) {
            WK_SWIGLU_CASE(1)
            WK_SWIGLU_CASE(2)
            WK_SWIGLU_CASE(3)
            WK_SWIGLU_CASE(4)
            WK_SWIGLU_CASE(5)
            WK_SWIGLU_CASE(6)
            WK_SWIGLU_CASE(7)
            WK_SWIGLU_CASE(8)
        }
#undef WK_SWIGLU_CASE
        WK_LAUNCH_CHECK("matvec_q_swiglu_kernel");
    }
    return WK_OK;
}

}  // namespace

// parts: host array [n_parts]; q8 [T, K/32] q8_1 -> each parts[i].out f32 [T, parts[i].N].
extern "C" int wk_matvec_q_multi(wk_stream_t stream, const wk_matvec_part *parts, int n_parts,
                                 const void *q8, int K, int T) {
    WK_REQUIRE(parts != nullptr && q8 != nullptr);
    WK_REQUIRE(n_parts >= 1 && n_parts <= WK_MATVEC_MAX_PARTS);
    WK_REQUIRE(K > 0 && K % 32 == 0 && T >= 0);
    WK_REQUIRE((uintptr_t)q8 % 4 == 0);
    MultiParts mp = {};
    long long rows = 0;
    for (int i = 0; i < n_parts; ++i) {
        const wk_matvec_part &p = parts[i];
        WK_REQUIRE(p.W != nullptr && p.out != nullptr && p.N > 0);
        const int st = check_quant_weights(p.type, p.W, K);
        if (st != WK_OK) return st;
        mp.p[i] = p;
        mp.row_start[i] = (int)rows;
        rows += p.N;
    }
    WK_REQUIRE(rows <= 0x7fffffffLL);
    mp.n = n_parts;
    mp.total_rows = (int)rows;
    if (T == 0) return WK_OK;
    const cudaStream_t s = wk::as_stream(stream);
    const dim3 block(32, MV_ROWS), grid(wk::ceil_div(rows, MV_ROWS));
    const size_t q8_row = (size_t)(K / 32) * WK_Q8_1_BLOCK_BYTES;
    for (int t0 = 0; t0 < T; t0 += MV_MAX_T) {
        const int nt = T - t0 < MV_MAX_T ? T - t0 : MV_MAX_T;
        MultiParts g = mp;  // outputs of this group of activation rows
        for (int i = 0; i < n_parts; ++i) g.p[i].out = parts[i].out + (size_t)t0 * parts[i].N;
        const uint8_t *xt = (const uint8_t *)q8 + (size_t)t0 * q8_row;
#define WK_MULTI_CASE(NTV)                                                   \
    case NTV: matvec_q_multi_kernel<NTV><<<grid, block, 0, s>>>(g, xt, K); break;
        switch (nt) {
            WK_MULTI_CASE(1)
            WK_MULTI_CASE(2)
            WK_MULTI_CASE(3)
            WK_MULTI_CASE(4)
            WK_MULTI_CASE(5)
            WK_MULTI_CASE(6)
            WK_MULTI_CASE(7)
            WK_MULTI_CASE(8)
        }
#undef WK_MULTI_CASE
        WK_LAUNCH_CHECK("matvec_q_multi_kernel");
    }
    return WK_OK;
}

// Wg, Wu [N, K] of `type`; q8 [T, K/32] -> out f32 [T, N].
extern "C" int wk_matvec_q_swiglu(wk_stream_t stream, wk_dtype type, const void *Wg,
                                  const void *Wu, const void *q8, float *out, int N, int K,
                                  int T) {
    WK_REQUIRE(Wg != nullptr && Wu != nullptr && q8 != nullptr && out != nullptr);
    WK_REQUIRE(N > 0 && K > 0 && K % 32 == 0 && T >= 0);
    WK_REQUIRE((uintptr_t)q8 % 4 == 0);
    int st = check_quant_weights(type, Wg, K);
    if (st != WK_OK) return st;
    st = check_quant_weights(type, Wu, K);
    if (st != WK_OK) return st;
    if (T == 0) return WK_OK;
    const cudaStream_t s = wk::as_stream(stream);
    const uint8_t *x = (const uint8_t *)q8;
    switch (type) {
        case WK_TYPE_Q4_0: return launch_swiglu<WK_TYPE_Q4_0>(s, Wg, Wu, x, out, N, K, T);
        case WK_TYPE_Q4_1: return launch_swiglu<WK_TYPE_Q4_1>(s, Wg, Wu, x, out, N, K, T);
        case WK_TYPE_Q5_0: return launch_swiglu<WK_TYPE_Q5_0>(s, Wg, Wu, x, out, N, K, T);
        case WK_TYPE_Q5_1: return launch_swiglu<WK_TYPE_Q5_1>(s, Wg, Wu, x, out, N, K, T);
        case WK_TYPE_Q8_0: return launch_swiglu<WK_TYPE_Q8_0>(s, Wg, Wu, x, out, N, K, T);
        case WK_TYPE_Q4_K: return launch_swiglu<WK_TYPE_Q4_K>(s, Wg, Wu, x, out, N, K, T);
        case WK_TYPE_Q5_K: return launch_swiglu<WK_TYPE_Q5_K>(s, Wg, Wu, x, out, N, K, T);
        case WK_TYPE_Q6_K: return launch_swiglu<WK_TYPE_Q6_K>(s, Wg, Wu, x, out, N, K, T);
        default: return WK_UNSUPPORTED();
    }
}
