// Token selection on the device: argmax (greedy), repetition penalty, and the full sampler
// (CUB radix sort of the logits, then one block applying top-k -> top-p -> min-p -> temperature ->
// draw, llama.cpp's order), so only the chosen token id has to come back to the host.
#include <limits.h>

#include <cub/cub.cuh>

#include "common.cuh"

namespace {

constexpr int ARGMAX_THREADS = 1024;
constexpr int SAMPLE_THREADS = 1024;
constexpr size_t SCRATCH_ALIGN = 256;

__device__ __forceinline__ bool better(float v, int i, float bv, int bi) {
    // NaN compares false both ways, so it never replaces a number; ties keep the lower index.
    return v > bv || (v == bv && i < bi);
}

// One block per row of x [T, V]: out[t] = argmax.
__global__ void __launch_bounds__(ARGMAX_THREADS)
    argmax_kernel(const float *__restrict__ x, int32_t *__restrict__ out, int V) {
    __shared__ float sv[32];
    __shared__ int si[32];
    const float *row = x + (size_t)blockIdx.x * V;
    float bv = -INFINITY;
    int bi = INT_MAX;
    // 16-byte loads, four in flight per thread (one SM streams the row: for a 151936-entry
    // decode row the scalar loop was ~60 us of dependent loads). Each thread visits its indices
    // in increasing order, so `better` keeps the lowest index on ties as before.
    int head = 0;
    if (((uintptr_t)row & 15) == 0) {
        const int nv = V / 4;
        const float4 *r4 = (const float4 *)row;
        int j = threadIdx.x;
        for (; j + 3 * (int)blockDim.x < nv; j += 4 * blockDim.x) {
            float4 a[4];
#pragma unroll
            for (int u = 0; u < 4; ++u) a[u] = r4[j + u * blockDim.x];
#pragma unroll
            for (int u = 0; u < 4; ++u) {
                const int i = 4 * (j + u * blockDim.x);
                if (better(a[u].x, i, bv, bi)) { bv = a[u].x; bi = i; }
                if (better(a[u].y, i + 1, bv, bi)) { bv = a[u].y; bi = i + 1; }
                if (better(a[u].z, i + 2, bv, bi)) { bv = a[u].z; bi = i + 2; }
                if (better(a[u].w, i + 3, bv, bi)) { bv = a[u].w; bi = i + 3; }
            }
        }
        for (; j < nv; j += blockDim.x) {
            const float4 a = r4[j];
            const int i = 4 * j;
            if (better(a.x, i, bv, bi)) { bv = a.x; bi = i; }
            if (better(a.y, i + 1, bv, bi)) { bv = a.y; bi = i + 1; }
            if (better(a.z, i + 2, bv, bi)) { bv = a.z; bi = i + 2; }
            if (better(a.w, i + 3, bv, bi)) { bv = a.w; bi = i + 3; }
        }
        head = 4 * nv;
    }
    for (int i = head + threadIdx.x; i < V; i += blockDim.x) {
        const float v = row[i];
        if (better(v, i, bv, bi)) {
            bv = v;
            bi = i;
        }
    }
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (better(ov, oi, bv, bi)) {
            bv = ov;
            bi = oi;
        }
    }
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) {
        sv[warp] = bv;
        si[warp] = bi;
    }
    __syncthreads();
    if (warp == 0) {
        const int nwarps = blockDim.x / 32;
        bv = lane < nwarps ? sv[lane] : -INFINITY;
        bi = lane < nwarps ? si[lane] : INT_MAX;
#pragma unroll
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
            const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
            if (better(ov, oi, bv, bi)) {
                bv = ov;
                bi = oi;
            }
        }
        // Only NaN in the row: no index won; answer 0 rather than an out-of-range id.
        if (lane == 0) out[blockIdx.x] = bi == INT_MAX ? 0 : bi;
    }
}

__global__ void repetition_penalty_kernel(float *logits, const int32_t *__restrict__ ids, int n,
                                          float penalty) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    float *l = logits + ids[i];
    *l = *l > 0.0f ? *l / penalty : *l * penalty;
}

__global__ void iota_kernel(int32_t *out, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = i;
}

using BlockScan = cub::BlockScan<float, SAMPLE_THREADS>;

struct SampleShared {
    typename BlockScan::TempStorage scan;
    float red[32];
    int first;
};

// Smallest i in [0, n) whose inclusive prefix sum of f(0..i) is >= target (or > target when
// `strict`); n - 1 if rounding keeps the total just under the target. Scans tiles of the block
// size and stops at the first tile that crosses. Call from every thread of the block.
template <class F>
__device__ int first_cum_crossing(F f, int n, float target, bool strict, SampleShared &sh) {
    float carry = 0.0f;
    for (int base = 0; base < n; base += SAMPLE_THREADS) {
        const int i = base + (int)threadIdx.x;
        const float x = i < n ? f(i) : 0.0f;
        float incl, tile_total;
        BlockScan(sh.scan).InclusiveSum(x, incl, tile_total);
        const float cum = carry + incl;
        const bool hit = i < n && (strict ? cum > target : cum >= target);
        if (threadIdx.x == 0) sh.first = INT_MAX;
        __syncthreads();
        if (hit) atomicMin(&sh.first, i);
        __syncthreads();
        const int first = sh.first;
        __syncthreads();  // sh.first and sh.scan are reused by the next tile / caller
        if (first != INT_MAX) return first;
        carry += tile_total;
    }
    return n - 1;
}

// Sum of f(i) for i in [0, n) over the block (every thread gets it).
template <class F> __device__ float block_sum_of(F f, int n, SampleShared &sh) {
    float s = 0.0f;
    for (int i = threadIdx.x; i < n; i += SAMPLE_THREADS) s += f(i);
    return wk::block_sum(s, sh.red);
}

// One block. sorted f32 [V] descending logits with their token ids [V] (stable sort: equal
// logits keep ascending ids). Writes the chosen token, the logsumexp of all logits and the top
// n_top (id, logit) pairs.
__global__ void __launch_bounds__(SAMPLE_THREADS)
    sample_kernel(const float *__restrict__ sorted, const int32_t *__restrict__ ids, int V,
                  int top_k, float top_p, float min_p, float temperature,
                  const float *__restrict__ u, int n_top, int32_t *__restrict__ out_token,
                  float *__restrict__ out_lse, int32_t *__restrict__ out_top_ids,
                  float *__restrict__ out_top_logits) {
    __shared__ SampleShared sh;
    const int tid = threadIdx.x;
    const float M = sorted[0];
    for (int i = tid; i < n_top; i += SAMPLE_THREADS) {
        out_top_ids[i] = ids[i];
        out_top_logits[i] = sorted[i];
    }
    if (!(M > -INFINITY)) {  // every logit -inf (or NaN): nothing to normalize
        if (tid == 0) {
            *out_lse = M;
            *out_token = ids[0];
        }
        return;
    }
    auto e1 = [&](int i) { return expf(sorted[i] - M); };  // probabilities at temperature 1
    const float Z = block_sum_of(e1, V, sh);
    if (tid == 0) *out_lse = M + logf(Z);
    if (temperature <= 0.0f) {
        if (tid == 0) *out_token = ids[0];
        return;
    }

    // top-k
    int n = (top_k > 0 && top_k < V) ? top_k : V;
    // top-p on the top-k candidates' renormalized probabilities: keep the shortest prefix whose
    // mass reaches top_p.
    if (top_p < 1.0f) {
        const float Zk = n == V ? Z : block_sum_of(e1, n, sh);
        n = first_cum_crossing(e1, n, top_p * Zk, false, sh) + 1;
    }
    // min-p: keep p_i >= min_p * p_max, i.e. logit_i >= M + log(min_p) (at least one token).
    if (min_p > 0.0f) {
        const float threshold = M + logf(min_p);
        if (tid == 0) sh.first = INT_MAX;
        __syncthreads();
        for (int i = tid; i < n; i += SAMPLE_THREADS)
            if (sorted[i] < threshold) atomicMin(&sh.first, i);
        __syncthreads();
        const int first_out = sh.first;
        __syncthreads();
        if (first_out != INT_MAX) n = first_out > 1 ? first_out : 1;
    }
    // temperature, then draw: the first candidate whose cumulative weight exceeds u * total.
    const float inv_t = 1.0f / temperature;
    auto et = [&](int i) { return expf((sorted[i] - M) * inv_t); };
    const float Zt = block_sum_of(et, n, sh);
    const int pick = first_cum_crossing(et, n, *u * Zt, true, sh);
    if (tid == 0) *out_token = ids[pick];
}

size_t align_up(size_t x) { return (x + SCRATCH_ALIGN - 1) / SCRATCH_ALIGN * SCRATCH_ALIGN; }

}  // namespace

// x f32 [T, V] -> out int32 [T].
extern "C" int wk_argmax(wk_stream_t stream, const float *x, int32_t *out, int T, int V) {
    WK_REQUIRE(x != nullptr && out != nullptr && T >= 0 && V > 0);
    if (T == 0) return WK_OK;
    argmax_kernel<<<T, ARGMAX_THREADS, 0, wk::as_stream(stream)>>>(x, out, V);
    WK_LAUNCH_CHECK("argmax_kernel");
    return WK_OK;
}

// logits f32 [V] in place; ids int32 [n], distinct, in [0, V).
extern "C" int wk_repetition_penalty(wk_stream_t stream, float *logits, int V, const int32_t *ids,
                                     int n, float penalty) {
    WK_REQUIRE(logits != nullptr && V > 0 && n >= 0 && penalty > 0.0f);
    if (n == 0 || penalty == 1.0f) return WK_OK;
    WK_REQUIRE(ids != nullptr);
    repetition_penalty_kernel<<<wk::ceil_div(n, 256), 256, 0, wk::as_stream(stream)>>>(
        logits, ids, n, penalty);
    WK_LAUNCH_CHECK("repetition_penalty_kernel");
    return WK_OK;
}

extern "C" int wk_sort_temp_bytes(int V, size_t *bytes) {
    WK_REQUIRE(bytes != nullptr && V > 0);
    *bytes = 0;
    // A size query only (null temp storage): CUB computes the size and launches nothing.
    WK_CUDA_CHECK(cub::DeviceRadixSort::SortPairsDescending(
        nullptr, *bytes, (const float *)nullptr, (float *)nullptr, (const int32_t *)nullptr,
        (int32_t *)nullptr, V));
    return WK_OK;
}

// Layout: sorted logits f32 [V] | ids in int32 [V] | ids out int32 [V] | CUB temp, each part
// 256-byte aligned.
extern "C" int wk_sample_scratch_bytes(int V, size_t *bytes) {
    WK_REQUIRE(bytes != nullptr && V > 0);
    size_t sort_bytes = 0;
    const int st = wk_sort_temp_bytes(V, &sort_bytes);
    if (st != WK_OK) return st;
    *bytes = 3 * align_up((size_t)V * 4) + align_up(sort_bytes);
    return WK_OK;
}

extern "C" int wk_sample(wk_stream_t stream, const float *logits, int V, void *scratch,
                         size_t scratch_bytes, int top_k, float top_p, float min_p,
                         float temperature, const float *u, int n_top, int32_t *out_token,
                         float *out_logsumexp, int32_t *out_top_ids, float *out_top_logits) {
    WK_REQUIRE(logits != nullptr && V > 0 && scratch != nullptr && u != nullptr);
    WK_REQUIRE(out_token != nullptr && out_logsumexp != nullptr);
    WK_REQUIRE(n_top >= 0 && n_top <= V);
    WK_REQUIRE(n_top == 0 || (out_top_ids != nullptr && out_top_logits != nullptr));
    WK_REQUIRE((uintptr_t)scratch % SCRATCH_ALIGN == 0);
    size_t sort_bytes = 0;
    int st = wk_sort_temp_bytes(V, &sort_bytes);
    if (st != WK_OK) return st;
    const size_t part = align_up((size_t)V * 4);
    if (scratch_bytes < 3 * part + align_up(sort_bytes))
        return wk::set_error(WK_ERR_SCRATCH_TOO_SMALL, "sample scratch", __FILE__, __LINE__);
    uint8_t *base = (uint8_t *)scratch;
    float *sorted = (float *)base;
    int32_t *ids_in = (int32_t *)(base + part);
    int32_t *ids_out = (int32_t *)(base + 2 * part);
    void *sort_tmp = base + 3 * part;
    const cudaStream_t s = wk::as_stream(stream);

    iota_kernel<<<wk::ceil_div(V, 256), 256, 0, s>>>(ids_in, V);
    WK_LAUNCH_CHECK("iota_kernel");
    WK_CUDA_CHECK(cub::DeviceRadixSort::SortPairsDescending(sort_tmp, sort_bytes, logits, sorted,
                                                            ids_in, ids_out, V, 0, 32, s));
    sample_kernel<<<1, SAMPLE_THREADS, 0, s>>>(sorted, ids_out, V, top_k, top_p, min_p,
                                               temperature, u, n_top, out_token, out_logsumexp,
                                               out_top_ids, out_top_logits);
    WK_LAUNCH_CHECK("sample_kernel");
    return WK_OK;
}
