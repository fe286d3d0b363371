// Causal GQA attention over the paged f16 KV cache (layout: see wk_rope_kv_write).
//  - decode: one query per sequence, flash-decoding. Keys are cut into chunks of WK_ATTN_SPLIT; one
//    block per (KV head, chunk, sequence) reads each key/value once for all Hq/Hkv query heads that
//    share it and writes an unnormalized partial result (acc, max, sum); a second kernel merges the
//    chunks of each (sequence, query head). Long contexts thus spread over many blocks.
//  - prefill: one block per (query head, token) with an online softmax over its keys.
// All softmax math is f32 with the running max subtracted before exp.
#include "common.cuh"

namespace {

constexpr int ATT_THREADS = 128;
constexpr int ATT_WARPS = ATT_THREADS / 32;
constexpr int ATT_SPLIT = WK_ATTN_SPLIT;
constexpr int ATT_MAX_GROUP = 16;  // query heads per KV head

// Loads the PER_LANE = HD/32 consecutive f16 values of lane `lane` of a cache row into f32.
template <int HD>
__device__ __forceinline__ void load_row_part(const __half *row, int lane, float (&out)[HD / 32]) {
    const __half2 *p = (const __half2 *)(row + lane * (HD / 32));
#pragma unroll
    for (int e = 0; e < HD / 64; ++e) {
        const float2 f = __half22float2(p[e]);
        out[2 * e] = f.x;
        out[2 * e + 1] = f.y;
    }
}

// Physical cache slot of position p of a sequence with block table row `table`.
__device__ __forceinline__ size_t cache_slot(const int32_t *table, int p, int block_size) {
    return (size_t)table[p / block_size] * block_size + p % block_size;
}

// grid (Hkv, max_splits, S), block ATT_THREADS (= ATT_SPLIT).
// q f32 [S, Hq, HD]; caches f16 [blocks, block_size, Hkv, HD]; block_table int32 [S, mbps];
// seq_lens int32 [S]. Outputs for (seq, query head h, split): part_acc f32 [S, Hq, max_splits, HD]
// = sum_j exp(s_j - m) v_j, part_ml f32 [S, Hq, max_splits, 2] = (m, sum_j exp(s_j - m)).
// Work split: scores with one thread per key (its K row read once as 16-byte vectors, the G query
// vectors broadcast from shared memory: no cross-lane reductions); P.V with one thread per head
// dimension holding all G accumulators, over 1/GROUPS of the keys.
template <int HD>
__global__ void __launch_bounds__(ATT_THREADS)
    attn_decode_split_kernel(const float *__restrict__ q, const __half *__restrict__ k_cache,
                             const __half *__restrict__ v_cache,
                             const int32_t *__restrict__ block_table, int mbps,
                             const int32_t *__restrict__ seq_lens, float *__restrict__ part_acc,
                             float *__restrict__ part_ml, int Hq, int Hkv, int block_size,
                             int max_splits, float scale) {
    static_assert(ATT_SPLIT == ATT_THREADS, "one key per thread in the score phase");
    static_assert(HD % 8 == 0, "K rows are read 8 halves at a time");
    // P.V: each thread owns PV_VEC consecutive dimensions of one key group (8-byte V loads);
    // TPR threads cover a V row, GROUPS groups take every GROUPS-th key and are summed at the
    // end in a fixed order. (One scalar f16 load per thread and key, 64 dependent rounds for a
    // full chunk, used to make this the slowest decode kernel.)
    constexpr int PV_VEC = 4;
    constexpr int TPR = HD / PV_VEC;
    static_assert(TPR <= ATT_THREADS && ATT_THREADS % TPR == 0, "whole V rows per group");
    constexpr int GROUPS = ATT_THREADS / TPR;
    __shared__ float q_s[ATT_MAX_GROUP][HD];
    __shared__ float p_s[ATT_MAX_GROUP][ATT_SPLIT];
    __shared__ size_t slot_s[ATT_SPLIT];
    __shared__ float m_s[ATT_MAX_GROUP], l_s[ATT_MAX_GROUP];
    // P.V partial sums of groups 1.. (group 0 adds them up); a dummy 1-element array otherwise.
    __shared__ float red_s[GROUPS > 1 ? GROUPS - 1 : 1][ATT_MAX_GROUP][GROUPS > 1 ? HD : 1];

    const int kvh = blockIdx.x, split = blockIdx.y, seq = blockIdx.z;
    const int G = Hq / Hkv;
    const int start = split * ATT_SPLIT;
    const int n = min(ATT_SPLIT, seq_lens[seq] - start);
    if (n <= 0) return;  // beyond this sequence's length: the merge never reads this split
    const int tid = threadIdx.x, lane = tid % 32, warp = tid / 32;
    const int32_t *table = block_table + (size_t)seq * mbps;

    for (int i = tid; i < G * HD; i += ATT_THREADS) {
        const int g = i / HD, d = i % HD;
        q_s[g][d] = q[((size_t)seq * Hq + kvh * G + g) * HD + d] * scale;
    }
    if (tid < n) slot_s[tid] = cache_slot(table, start + tid, block_size);
    __syncthreads();

    // Scores of key `tid` against the G query heads.
    if (tid < n) {
        const uint4 *kp = (const uint4 *)(k_cache + (slot_s[tid] * Hkv + kvh) * HD);
        float s[ATT_MAX_GROUP];
#pragma unroll
        for (int g = 0; g < ATT_MAX_GROUP; ++g) s[g] = 0.0f;
#pragma unroll 4
        for (int c = 0; c < HD / 8; ++c) {
            const uint4 raw = kp[c];
            const __half2 *h2 = (const __half2 *)&raw;
            float kf[8];
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const float2 f = __half22float2(h2[e]);
                kf[2 * e] = f.x;
                kf[2 * e + 1] = f.y;
            }
#pragma unroll
            for (int g = 0; g < ATT_MAX_GROUP; ++g) {
                if (g < G) {
#pragma unroll
                    for (int e = 0; e < 8; ++e) s[g] = fmaf(q_s[g][c * 8 + e], kf[e], s[g]);
                }
            }
        }
#pragma unroll
        for (int g = 0; g < ATT_MAX_GROUP; ++g)
            if (g < G) p_s[g][tid] = s[g];
    }
    __syncthreads();

    // Softmax statistics of this chunk, one warp per query head; p_s becomes exp(s - m).
    for (int g = warp; g < G; g += ATT_WARPS) {
        float m = -INFINITY;
        for (int j = lane; j < n; j += 32) m = fmaxf(m, p_s[g][j]);
        m = wk::warp_max(m);
        float l = 0.0f;
        for (int j = lane; j < n; j += 32) {
            const float e = expf(p_s[g][j] - m);
            p_s[g][j] = e;
            l += e;
        }
        l = wk::warp_sum(l);
        if (lane == 0) {
            m_s[g] = m;
            l_s[g] = l;
        }
    }
    __syncthreads();

    // P.V: a group's TPR threads read one V row as consecutive 8-byte pieces (coalesced); the
    // p_s reads are broadcasts within a group.
    const int grp = tid / TPR;
    const int d0 = (tid % TPR) * PV_VEC;
    float acc[PV_VEC][ATT_MAX_GROUP];
#pragma unroll
    for (int r = 0; r < PV_VEC; ++r)
#pragma unroll
        for (int g = 0; g < ATT_MAX_GROUP; ++g) acc[r][g] = 0.0f;
#pragma unroll 4
    for (int j = grp; j < n; j += GROUPS) {
        const uint2 raw = *(const uint2 *)(v_cache + (slot_s[j] * Hkv + kvh) * HD + d0);
        const float2 v01 = __half22float2(*(const __half2 *)&raw.x);
        const float2 v23 = __half22float2(*(const __half2 *)&raw.y);
        const float v[PV_VEC] = {v01.x, v01.y, v23.x, v23.y};
#pragma unroll
        for (int g = 0; g < ATT_MAX_GROUP; ++g) {
            if (g < G) {
                const float pj = p_s[g][j];
#pragma unroll
                for (int r = 0; r < PV_VEC; ++r) acc[r][g] = fmaf(pj, v[r], acc[r][g]);
            }
        }
    }
    if constexpr (GROUPS > 1) {
        if (grp > 0) {
#pragma unroll
            for (int g = 0; g < ATT_MAX_GROUP; ++g)
                if (g < G)
#pragma unroll
                    for (int r = 0; r < PV_VEC; ++r) red_s[grp - 1][g][d0 + r] = acc[r][g];
        }
        __syncthreads();
        if (grp == 0) {
            for (int o = 1; o < GROUPS; ++o) {
#pragma unroll
                for (int g = 0; g < ATT_MAX_GROUP; ++g)
                    if (g < G)
#pragma unroll
                        for (int r = 0; r < PV_VEC; ++r) acc[r][g] += red_s[o - 1][g][d0 + r];
            }
        }
    }
    if (grp == 0) {
#pragma unroll
        for (int g = 0; g < ATT_MAX_GROUP; ++g) {
            if (g < G) {
                const size_t part = ((size_t)seq * Hq + kvh * G + g) * max_splits + split;
                float4 o4;
                o4.x = acc[0][g];
                o4.y = acc[1][g];
                o4.z = acc[2][g];
                o4.w = acc[3][g];
                *(float4 *)(part_acc + part * HD + d0) = o4;
            }
        }
    }
    if (tid < G) {
        const size_t part = ((size_t)seq * Hq + kvh * G + tid) * max_splits + split;
        part_ml[2 * part] = m_s[tid];
        part_ml[2 * part + 1] = l_s[tid];
    }
}

// grid (Hq, S), block HD threads: out f32 [S, Hq, HD] = merge of the used splits; when q8 is not
// NULL the rows are also written as q8_1 blocks q8 [S, Hq*HD/32] (each warp quantizes its 32
// values exactly as wk_quantize_q8_1 does), the input of the output projection.
template <int HD>
__global__ void __launch_bounds__(HD)
    attn_decode_merge_kernel(const float *__restrict__ part_acc, const float *__restrict__ part_ml,
                             const int32_t *__restrict__ seq_lens, float *__restrict__ out,
                             uint8_t *__restrict__ q8, int Hq, int max_splits) {
    const int h = blockIdx.x, seq = blockIdx.y, d = threadIdx.x;
    const int len = seq_lens[seq];
    int nsplit = (len + ATT_SPLIT - 1) / ATT_SPLIT;
    nsplit = nsplit < max_splits ? nsplit : max_splits;
    float *o = out + ((size_t)seq * Hq + h) * HD;
    float val = 0.0f;  // no keys at all: defined output rather than 0/0
    if (nsplit > 0) {
        const size_t base = ((size_t)seq * Hq + h) * max_splits;
        float m = -INFINITY;
        for (int s = 0; s < nsplit; ++s) m = fmaxf(m, part_ml[2 * (base + s)]);
        float num = 0.0f, den = 0.0f;
        for (int s = 0; s < nsplit; ++s) {
            const float w = expf(part_ml[2 * (base + s)] - m);
            den = fmaf(w, part_ml[2 * (base + s) + 1], den);
            num = fmaf(w, part_acc[(base + s) * HD + d], num);
        }
        val = num / den;
    }
    o[d] = val;
    if (q8 == nullptr) return;  // uniform over the grid
    const int lane = d % 32;
    const float amax = wk::warp_max(fabsf(val));
    const float dq = amax / 127.0f;
    const int qv = amax == 0.0f ? 0 : __float2int_rn(val / dq);
    const int qsum = wk::warp_sum_int(qv);
    const size_t blk_index = ((size_t)seq * Hq * HD + (size_t)h * HD + d) / 32;
    uint8_t *blk = q8 + blk_index * WK_Q8_1_BLOCK_BYTES;
    blk[4 + lane] = (uint8_t)(int8_t)qv;
    if (lane == 0) {
        ((__half *)blk)[0] = __float2half_rn(dq);
        ((__half *)blk)[1] = __float2half_rn(dq * (float)qsum);
    }
}

// grid (Hq, T), block ATT_THREADS: query t of head h over keys [0, pos[t]] of sequence 0.
// Each warp runs an online softmax over every ATT_WARPS-th key, then the warps are merged.
template <int HD>
__global__ void __launch_bounds__(ATT_THREADS)
    attn_prefill_kernel(const float *__restrict__ q, const __half *__restrict__ k_cache,
                        const __half *__restrict__ v_cache, const int32_t *__restrict__ block_table,
                        const int32_t *__restrict__ pos, float *__restrict__ out, int Hq, int Hkv,
                        int block_size, float scale) {
    constexpr int PER_LANE = HD / 32;
    __shared__ float m_w[ATT_WARPS], l_w[ATT_WARPS];
    __shared__ float acc_w[ATT_WARPS][HD];

    const int h = blockIdx.x, t = blockIdx.y;
    const int kvh = h / (Hq / Hkv);
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int nk = pos[t] + 1;

    float qv[PER_LANE], acc[PER_LANE];
    const float *qrow = q + ((size_t)t * Hq + h) * HD + lane * PER_LANE;
#pragma unroll
    for (int e = 0; e < PER_LANE; ++e) {
        qv[e] = qrow[e] * scale;
        acc[e] = 0.0f;
    }
    float m = -INFINITY, l = 0.0f;
    for (int j = warp; j < nk; j += ATT_WARPS) {
        const size_t row = (cache_slot(block_table, j, block_size) * Hkv + kvh) * HD;
        float kf[PER_LANE], vf[PER_LANE];
        load_row_part<HD>(k_cache + row, lane, kf);
        float s = 0.0f;
#pragma unroll
        for (int e = 0; e < PER_LANE; ++e) s = fmaf(qv[e], kf[e], s);
        s = wk::warp_sum(s);
        load_row_part<HD>(v_cache + row, lane, vf);
        const float m_new = fmaxf(m, s);
        const float corr = expf(m - m_new);  // 0 on the first key (m = -inf)
        const float p = expf(s - m_new);
        l = fmaf(l, corr, p);
#pragma unroll
        for (int e = 0; e < PER_LANE; ++e) acc[e] = fmaf(acc[e], corr, p * vf[e]);
        m = m_new;
    }
    if (lane == 0) {
        m_w[warp] = m;
        l_w[warp] = l;
    }
#pragma unroll
    for (int e = 0; e < PER_LANE; ++e) acc_w[warp][lane * PER_LANE + e] = acc[e];
    __syncthreads();

    for (int d = threadIdx.x; d < HD; d += ATT_THREADS) {
        float mm = -INFINITY;
#pragma unroll
        for (int w = 0; w < ATT_WARPS; ++w) mm = fmaxf(mm, m_w[w]);
        float num = 0.0f, den = 0.0f;
#pragma unroll
        for (int w = 0; w < ATT_WARPS; ++w) {
            if (m_w[w] == -INFINITY) continue;  // this warp saw no key
            const float c = expf(m_w[w] - mm);
            den = fmaf(c, l_w[w], den);
            num = fmaf(c, acc_w[w][d], num);
        }
        out[((size_t)t * Hq + h) * HD + d] = den > 0.0f ? num / den : 0.0f;
    }
}

size_t decode_splits(int max_ctx) { return (size_t)((max_ctx + ATT_SPLIT - 1) / ATT_SPLIT); }

size_t decode_acc_floats(int S, int Hq, int hd, int max_ctx) {
    return (size_t)S * Hq * decode_splits(max_ctx) * hd;
}

template <int HD>
int launch_decode(cudaStream_t s, const float *q, const __half *kc, const __half *vc,
                  const int32_t *block_table, int mbps, const int32_t *seq_lens, float *out,
                  uint8_t *q8, float *part_acc, float *part_ml, int S, int Hq, int Hkv,
                  int block_size, int max_ctx, float scale) {
    const int max_splits = (int)decode_splits(max_ctx);
    const dim3 grid(Hkv, max_splits, S);
    attn_decode_split_kernel<HD><<<grid, ATT_THREADS, 0, s>>>(q, kc, vc, block_table, mbps,
                                                              seq_lens, part_acc, part_ml, Hq, Hkv,
                                                              block_size, max_splits, scale);
    WK_LAUNCH_CHECK("attn_decode_split_kernel");
    attn_decode_merge_kernel<HD><<<dim3(Hq, S), HD, 0, s>>>(part_acc, part_ml, seq_lens, out, q8,
                                                            Hq, max_splits);
    WK_LAUNCH_CHECK("attn_decode_merge_kernel");
    return WK_OK;
}

template <int HD>
int launch_prefill(cudaStream_t s, const float *q, const __half *kc, const __half *vc,
                   const int32_t *block_table, const int32_t *pos, float *out, int T, int Hq,
                   int Hkv, int block_size, float scale) {
    attn_prefill_kernel<HD><<<dim3(Hq, T), ATT_THREADS, 0, s>>>(q, kc, vc, block_table, pos, out,
                                                                Hq, Hkv, block_size, scale);
    WK_LAUNCH_CHECK("attn_prefill_kernel");
    return WK_OK;
}

}  // namespace

extern "C" int wk_attention_decode_scratch_bytes(int S, int Hq, int hd, int max_ctx,
                                                 size_t *bytes) {
    WK_REQUIRE(bytes != nullptr && S >= 0 && Hq > 0 && hd > 0 && max_ctx > 0);
    const size_t acc = decode_acc_floats(S, Hq, hd, max_ctx);
    const size_t ml = (size_t)S * Hq * decode_splits(max_ctx) * 2;
    *bytes = (acc + ml) * sizeof(float);
    return WK_OK;
}

// q f32 [S, Hq, hd] -> out f32 [S, Hq, hd]; scratch: part_acc f32 [S, Hq, splits, hd] then
// part_ml f32 [S, Hq, splits, 2].
namespace {
int attention_decode_impl(wk_stream_t stream, const float *q, const void *k_cache,
                          const void *v_cache, const int32_t *block_table, int max_blocks_per_seq,
                          const int32_t *seq_lens, float *out, uint8_t *q8, void *scratch,
                          size_t scratch_bytes, int S, int Hq, int Hkv, int hd, int block_size,
                          int max_ctx, float scale) {
    WK_REQUIRE(q != nullptr && k_cache != nullptr && v_cache != nullptr && out != nullptr);
    WK_REQUIRE(block_table != nullptr && seq_lens != nullptr && scratch != nullptr);
    WK_REQUIRE(S >= 0 && Hq > 0 && Hkv > 0 && Hq % Hkv == 0 && Hq / Hkv <= ATT_MAX_GROUP);
    WK_REQUIRE(block_size > 0 && max_blocks_per_seq > 0 && max_ctx > 0);
    WK_REQUIRE(max_ctx <= max_blocks_per_seq * block_size);
    WK_REQUIRE((uintptr_t)scratch % 16 == 0);
    if (S == 0) return WK_OK;
    size_t need = 0;
    const int st = wk_attention_decode_scratch_bytes(S, Hq, hd, max_ctx, &need);
    if (st != WK_OK) return st;
    if (scratch_bytes < need)
        return wk::set_error(WK_ERR_SCRATCH_TOO_SMALL, "attention decode scratch", __FILE__,
                             __LINE__);
    float *part_acc = (float *)scratch;
    float *part_ml = part_acc + decode_acc_floats(S, Hq, hd, max_ctx);
    const cudaStream_t s = wk::as_stream(stream);
    const __half *kc = (const __half *)k_cache, *vc = (const __half *)v_cache;
    switch (hd) {
        case 64:
            return launch_decode<64>(s, q, kc, vc, block_table, max_blocks_per_seq, seq_lens, out, q8,
                                     part_acc, part_ml, S, Hq, Hkv, block_size, max_ctx, scale);
        case 128:
            return launch_decode<128>(s, q, kc, vc, block_table, max_blocks_per_seq, seq_lens,
                                      out, q8, part_acc, part_ml, S, Hq, Hkv, block_size, max_ctx,
                                      scale);
        case 256:
            return launch_decode<256>(s, q, kc, vc, block_table, max_blocks_per_seq, seq_lens,
                                      out, q8, part_acc, part_ml, S, Hq, Hkv, block_size, max_ctx,
                                      scale);
        default: WK_REQUIRE(hd == 64 || hd == 128 || hd == 256);
    }
    return WK_OK;
}
}  // namespace

extern "C" int wk_attention_decode(wk_stream_t stream, const float *q, const void *k_cache,
                                   const void *v_cache, const int32_t *block_table,
                                   int max_blocks_per_seq, const int32_t *seq_lens, float *out,
                                   void *scratch, size_t scratch_bytes, int S, int Hq, int Hkv,
                                   int hd, int block_size, int max_ctx, float scale) {
    return attention_decode_impl(stream, q, k_cache, v_cache, block_table, max_blocks_per_seq,
                                 seq_lens, out, nullptr, scratch, scratch_bytes, S, Hq, Hkv, hd,
                                 block_size, max_ctx, scale);
}

extern "C" int wk_attention_decode_q8(wk_stream_t stream, const float *q, const void *k_cache,
                                      const void *v_cache, const int32_t *block_table,
                                      int max_blocks_per_seq, const int32_t *seq_lens, float *out,
                                      void *q8_out, void *scratch, size_t scratch_bytes, int S,
                                      int Hq, int Hkv, int hd, int block_size, int max_ctx,
                                      float scale) {
    WK_REQUIRE(q8_out != nullptr && (uintptr_t)q8_out % 4 == 0);
    return attention_decode_impl(stream, q, k_cache, v_cache, block_table, max_blocks_per_seq,
                                 seq_lens, out, (uint8_t *)q8_out, scratch, scratch_bytes, S, Hq,
                                 Hkv, hd, block_size, max_ctx, scale);
}

// q f32 [T, Hq, hd], pos int32 [T] -> out f32 [T, Hq, hd] (sequence 0 of block_table).
extern "C" int wk_attention_prefill(wk_stream_t stream, const float *q, const void *k_cache,
                                    const void *v_cache, const int32_t *block_table,
                                    const int32_t *pos, float *out, int T, int Hq, int Hkv, int hd,
                                    int block_size, float scale) {
    WK_REQUIRE(q != nullptr && k_cache != nullptr && v_cache != nullptr && out != nullptr);
    WK_REQUIRE(block_table != nullptr && pos != nullptr);
    WK_REQUIRE(T >= 0 && Hq > 0 && Hkv > 0 && Hq % Hkv == 0 && block_size > 0);
    WK_REQUIRE(T <= 65535);  // gridDim.y
    if (T == 0) return WK_OK;
    const cudaStream_t s = wk::as_stream(stream);
    const __half *kc = (const __half *)k_cache, *vc = (const __half *)v_cache;
    switch (hd) {
        case 64:
            return launch_prefill<64>(s, q, kc, vc, block_table, pos, out, T, Hq, Hkv, block_size,
                                      scale);
        case 128:
            return launch_prefill<128>(s, q, kc, vc, block_table, pos, out, T, Hq, Hkv,
                                       block_size, scale);
        case 256:
            return launch_prefill<256>(s, q, kc, vc, block_table, pos, out, T, Hq, Hkv,
                                       block_size, scale);
        default: WK_REQUIRE(hd == 64 || hd == 128 || hd == 256);
    }
    return WK_OK;
}
