// RoPE on q and k, and the write of k and v into the paged f16 KV cache, in one kernel.
#include "common.cuh"

namespace {

constexpr int ROPE_THREADS = 128;

// grid (Hq + Hkv, T): one block per (head, token), one thread per rotated pair (hd/2 <= 128
// threads); the K-head blocks also store their head's rotated k and v. (One block per token used
// to loop over all heads: a latency-bound decode launch on one SM.) q [T, Hq, hd] and
// k [T, Hkv, hd] rotated in place; rotated k and v [T, Hkv, hd] stored (f16) at position pos[t] of sequence seq_ids[t] in the caches
// [num_blocks, block_size, Hkv, hd].
// The angle is computed exactly as HF transformers (and the CPU backend) do, in f32:
// inv_freq = 1 / base^(2i/hd), theta = float(pos) * inv_freq; sincosf is the accurate version
// (no fast-math), so large positions still rotate correctly.
__global__ void __launch_bounds__(ROPE_THREADS)
    rope_kv_write_kernel(float *q, float *k, const float *__restrict__ v,
                         const int32_t *__restrict__ pos, const int32_t *__restrict__ seq_ids,
                         const int32_t *__restrict__ block_table, int max_blocks_per_seq,
                         __half *__restrict__ k_cache, __half *__restrict__ v_cache, int Hq,
                         int Hkv, int hd, int block_size, float rope_base, int neox) {
    const int t = blockIdx.y;
    const int head = blockIdx.x;
    const int p = pos[t];
    const int seq = seq_ids != nullptr ? seq_ids[t] : 0;
    // A position beyond the sequence's block table would write outside the cache: skip the cache
    // write (the launcher's caller guarantees p < max_blocks_per_seq * block_size).
    const bool in_table = p >= 0 && p / block_size < max_blocks_per_seq;
    const int half = hd / 2;
    const bool is_q = head < Hq;
    const int kh = head - Hq;
    float *vec = is_q ? q + ((size_t)t * Hq + head) * hd : k + ((size_t)t * Hkv + kh) * hd;
    size_t slot = 0;
    if (!is_q && in_table)
        slot = (size_t)block_table[(size_t)seq * max_blocks_per_seq + p / block_size] * block_size +
               p % block_size;
    for (int j = threadIdx.x; j < half; j += blockDim.x) {
        const float inv_freq = 1.0f / powf(rope_base, (float)(2 * j) / (float)hd);
        float sn, cs;
        sincosf((float)p * inv_freq, &sn, &cs);
        const int a = neox ? j : 2 * j;
        const int b = neox ? j + half : 2 * j + 1;
        const float x0 = vec[a], x1 = vec[b];
        const float y0 = x0 * cs - x1 * sn;
        const float y1 = x0 * sn + x1 * cs;
        vec[a] = y0;
        vec[b] = y1;
        if (!is_q && in_table) {
            __half *dst = k_cache + (slot * Hkv + kh) * hd;
            dst[a] = __float2half_rn(y0);
            dst[b] = __float2half_rn(y1);
        }
    }
    if (is_q || !in_table) return;
    const float *vt = v + ((size_t)t * Hkv + kh) * hd;
    __half *vdst = v_cache + (slot * Hkv + kh) * hd;
    for (int i = threadIdx.x; i < hd; i += blockDim.x) vdst[i] = __float2half_rn(vt[i]);
}

}  // namespace

// q f32 [T, Hq, hd], k f32 [T, Hkv, hd] (both rotated in place), v f32 [T, Hkv, hd], pos int32 [T],
// seq_ids int32 [T] or NULL, block_table int32 [num_seqs, max_blocks_per_seq],
// k_cache / v_cache f16 [num_blocks, block_size, Hkv, hd].
extern "C" int wk_rope_kv_write(wk_stream_t stream, float *q, float *k, const float *v,
                                const int32_t *pos, const int32_t *seq_ids,
                                const int32_t *block_table, int max_blocks_per_seq, void *k_cache,
                                void *v_cache, int T, int Hq, int Hkv, int hd, int block_size,
                                float rope_base, wk_rope_mode rope_mode) {
    WK_REQUIRE(q != nullptr && k != nullptr && v != nullptr && pos != nullptr);
    WK_REQUIRE(block_table != nullptr && k_cache != nullptr && v_cache != nullptr);
    WK_REQUIRE(T >= 0 && Hq > 0 && Hkv > 0 && hd > 0 && hd % 2 == 0 && hd <= 256);
    WK_REQUIRE(block_size > 0 && max_blocks_per_seq > 0);
    WK_REQUIRE(rope_base > 0.0f);
    WK_REQUIRE(rope_mode == WK_ROPE_NEOX || rope_mode == WK_ROPE_NORM);
    WK_REQUIRE(T <= 65535);  // gridDim.y
    if (T == 0) return WK_OK;
    const int threads = hd / 2 < 32 ? 32 : (hd / 2 > ROPE_THREADS ? ROPE_THREADS : hd / 2);
    rope_kv_write_kernel<<<dim3(Hq + Hkv, T), threads, 0, wk::as_stream(stream)>>>(
        q, k, v, pos, seq_ids, block_table, max_blocks_per_seq, (__half *)k_cache,
        (__half *)v_cache, Hq, Hkv, hd, block_size, rope_base, rope_mode == WK_ROPE_NEOX);
    WK_LAUNCH_CHECK("rope_kv_write_kernel");
    return WK_OK;
}
