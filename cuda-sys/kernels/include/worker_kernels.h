/*
 * worker_kernels.h: the C API of the worker's CUDA kernels (cuda-sys). Plain C, no CUDA headers, so
 * bindgen can read it anywhere.
 *
 * Conventions, for every launcher below:
 *  - Every pointer argument is DEVICE memory unless it says "host". Matrices are row-major; shapes
 *    are written [outer, ..., inner] with the last dimension contiguous.
 *  - Weight matrices are stored as GGUF stores them: N rows (output neurons) of K elements (the
 *    input width, GGUF ne0), each row a whole number of quant blocks of that type.
 *  - Each launcher enqueues work on `stream` and returns at once with a status: 0 (WK_OK), a CUDA
 *    runtime error code (> 0, cudaError_t), or a negative WK_ERR_* code for bad arguments. On failure
 *    a message naming the failed call (or condition), file and line is left in wk_last_error() of the
 *    calling thread.
 *  - Launchers never synchronize, allocate or copy to/from the host, so they can be captured into a
 *    CUDA graph; scratch memory is passed in by the caller. Only the "host helpers" at the end
 *    synchronize (they exist for tests and tools).
 *  - Sizes are int (element counts < 2^31 per dimension); offsets are computed in 64 bits inside.
 */
#ifndef WORKER_KERNELS_H
#define WORKER_KERNELS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* A cudaStream_t (or a driver-API CUstream: the same handle). NULL is the legacy default stream. */
typedef void *wk_stream_t;

/* Status codes returned by launchers. Positive values are cudaError_t codes. */
typedef enum wk_status {
    WK_OK = 0,
    /* An argument is out of range, misaligned, or an unsupported combination. */
    WK_ERR_INVALID_ARGUMENT = -1,
    /* The tensor type is not supported by this operation. */
    WK_ERR_UNSUPPORTED_TYPE = -2,
    /* A scratch buffer is smaller than the matching *_bytes query asked for. */
    WK_ERR_SCRATCH_TOO_SMALL = -3
} wk_status;

/* Tensor element types; the values are GGML/GGUF type codes. */
typedef enum wk_dtype {
    WK_TYPE_F32 = 0,
    WK_TYPE_F16 = 1,
    WK_TYPE_Q4_0 = 2,
    WK_TYPE_Q4_1 = 3,
    WK_TYPE_Q5_0 = 6,
    WK_TYPE_Q5_1 = 7,
    WK_TYPE_Q8_0 = 8,
    WK_TYPE_Q4_K = 12,
    WK_TYPE_Q5_K = 13,
    WK_TYPE_Q6_K = 14,
    WK_TYPE_BF16 = 30
} wk_dtype;

/* RoPE pairing. NEOX rotates (x[i], x[i + hd/2]) (Qwen2); NORM rotates (x[2i], x[2i+1]) (llama). */
typedef enum wk_rope_mode { WK_ROPE_NEOX = 0, WK_ROPE_NORM = 1 } wk_rope_mode;

/*
 * Quantized activations ("q8_1"), the right-hand side of wk_matvec_q. Per 32 values one 36-byte
 * block: f16 d (scale = max|x| / 127), f16 s (= d * sum of the 32 quantized values), int8 qs[32]
 * (x ~= d * qs). Blocks are 4-byte aligned. A [T, K] activation is T rows of K/32 blocks.
 */
#define WK_Q8_1_BLOCK_ELEMS 32
#define WK_Q8_1_BLOCK_BYTES 36

/* Block geometry of a type: elements and bytes per block (1 and 4/2/2 for F32/F16/BF16). */
int wk_dtype_info(wk_dtype type, int *block_elems, int *block_bytes);

/* ---- errors ---------------------------------------------------------------------------------- */

/* The last error message of the calling thread ("" if none). Valid until the next failing call on
 * this thread. */
const char *wk_last_error(void);
/* Forget the calling thread's last error message. */
void wk_clear_error(void);
/* A static description of a status code (CUDA's own string for positive codes). */
const char *wk_status_string(int status);

/* ---- activations: quantize, normalize -------------------------------------------------------- */

/* x f32 [T, K] -> q8 [T, K/32] q8_1 blocks. K % 32 == 0. */
int wk_quantize_q8_1(wk_stream_t stream, const float *x, void *q8, int T, int K);

/* out f32 [T, K] = x * rsqrt(mean(x^2) + eps) * w; x f32 [T, K], w f32 [K]. out may equal x. */
int wk_rmsnorm(wk_stream_t stream, const float *x, const float *w, float *out, int T, int K,
               float eps);

/* The same normalization, written straight out as q8_1 blocks q8 [T, K/32]. K % 32 == 0. */
int wk_rmsnorm_quantize_q8_1(wk_stream_t stream, const float *x, const float *w, void *q8, int T,
                             int K, float eps);

/* ---- matrix-vector products (decode) --------------------------------------------------------- */

/*
 * out[t, n] (+)= sum_k W[n, k] * x[t, k] (+ bias[n]) with integer dp4a dot products.
 * W: type in {Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K}, N rows x K, GGUF block layout;
 *    must be 4-byte aligned for Q4_1/Q5_1/Q4_K/Q5_K, 2-byte aligned otherwise.
 * q8: the activations x as q8_1 blocks [T, K/32] (wk_quantize_q8_1 / wk_rmsnorm_quantize_q8_1).
 * bias: f32 [N] or NULL. out: f32 [T, N]. accumulate != 0 adds to out (fused residual add).
 * K must be a multiple of the type's block size. Any T >= 1 (fastest for T <= 8).
 */
int wk_matvec_q(wk_stream_t stream, wk_dtype type, const void *W, const void *q8,
                const float *bias, float *out, int N, int K, int T, int accumulate);

/*
 * One output of wk_matvec_q_multi: W [N, K] of a quantized `type` (as in wk_matvec_q), bias f32
 * [N] or NULL, out f32 [T, N] (row stride N), accumulate as in wk_matvec_q.
 */
typedef struct wk_matvec_part {
    wk_dtype type;
    const void *W;
    const float *bias;
    float *out;
    int N;
    int accumulate;
} wk_matvec_part;
#define WK_MATVEC_MAX_PARTS 4

/*
 * Several quantized matvecs of the same activations in ONE launch, e.g. Q, K and V (each with its
 * own type, bias and output): for each part p, p.out[t, n] (+)= p.W[n, :] . x[t, :] (+ p.bias[n]).
 * parts: HOST array of n_parts (1..WK_MATVEC_MAX_PARTS) descriptors, copied into the launch's
 * parameters (a captured graph keeps them). q8: x as q8_1 blocks [T, K/32]. Outputs must not
 * overlap. Same alignment and K rules as wk_matvec_q.
 */
int wk_matvec_q_multi(wk_stream_t stream, const wk_matvec_part *parts, int n_parts,
                      const void *q8, int K, int T);

/*
 * SwiGLU front of an MLP in ONE launch: out f32 [T, N] = silu(Wg . x) * (Wu . x), where Wg and Wu
 * are [N, K] of the same quantized type and q8 is x as q8_1 blocks [T, K/32]. out may not alias q8.
 */
int wk_matvec_q_swiglu(wk_stream_t stream, wk_dtype type, const void *Wg, const void *Wu,
                       const void *q8, float *out, int N, int K, int T);

/* As wk_matvec_q for type in {F32, F16, BF16} with f32 activations x [T, K]. */
int wk_matvec_f(wk_stream_t stream, wk_dtype type, const void *W, const float *x,
                const float *bias, float *out, int N, int K, int T, int accumulate);

/* ---- dequantize / gather (prompt path, embeddings) ------------------------------------------- */

/*
 * out [N, K] of out_type (F32, F16 or BF16) = dequantized W [N, K] of any type above (including
 * F32/F16/BF16, which makes this a converter, e.g. f32 activations to f16 for cuBLAS).
 */
int wk_dequantize(wk_stream_t stream, wk_dtype type, const void *W, void *out, wk_dtype out_type,
                  int N, int K);

/*
 * Embedding gather: out f32 [T, K] = rows ids[t] of table [V, K] (any type above).
 * ids int32 [T]. An id outside [0, V) yields a row of NaN (the caller must bounds-check ids; NaN
 * makes a missed check visible instead of reading out of bounds).
 */
int wk_get_rows(wk_stream_t stream, wk_dtype type, const void *table, const int32_t *ids,
                float *out, int T, int V, int K);

/* ---- RoPE + paged KV cache ------------------------------------------------------------------- */

/*
 * The paged KV cache of one layer: K and V each f16 [num_blocks, block_size, Hkv, hd]. A sequence's
 * position p lives in physical block block_table[seq * max_blocks_per_seq + p / block_size] at
 * slot p % block_size. f16 halves the cache against f32 and keeps 11 bits of mantissa, plenty for
 * attention inputs; it is what llama.cpp and vLLM use by default.
 *
 * Applies RoPE at positions pos[t] to q f32 [T, Hq, hd] (in place) and k f32 [T, Hkv, hd] (in
 * place too), then writes the rotated k and v f32 [T, Hkv, hd] into the cache at pos[t].
 * theta_i = pos * rope_base^(-2i/hd), i in [0, hd/2), pairs chosen by rope_mode.
 * pos int32 [T]; seq_ids int32 [T] (the sequence of each token, row of block_table) or NULL when
 * all tokens belong to sequence 0; block_table int32 [num_seqs, max_blocks_per_seq].
 * hd even, <= 256.
 */
int wk_rope_kv_write(wk_stream_t stream, float *q, float *k, const float *v, const int32_t *pos,
                     const int32_t *seq_ids, const int32_t *block_table, int max_blocks_per_seq,
                     void *k_cache, void *v_cache, int T, int Hq, int Hkv, int hd, int block_size,
                     float rope_base, wk_rope_mode rope_mode);

/* ---- attention ------------------------------------------------------------------------------- */

/*
 * Decode attention (flash-decoding): one query token for each of S sequences.
 * q f32 [S, Hq, hd]; out f32 [S, Hq, hd]; seq_lens int32 [S]: sequence s attends to its keys at
 * positions [0, seq_lens[s]) (= its query position + 1). Caches and block_table as in
 * wk_rope_kv_write. Query head h uses KV head h / (Hq / Hkv); softmax(scale * q.k) in f32.
 * Keys are split into chunks of WK_ATTN_SPLIT; each (sequence, KV head, chunk) is one thread block
 * that serves all Hq/Hkv query heads of that KV head, and a second kernel merges the chunks.
 * max_ctx: the largest seq_lens value this launch (or captured graph) may see; it sets the grid.
 * scratch: wk_attention_decode_scratch_bytes(S, Hq, hd, max_ctx) bytes, 16-byte aligned.
 * hd in {64, 128, 256}; Hq % Hkv == 0; Hq / Hkv <= 16.
 */
#define WK_ATTN_SPLIT 128
int wk_attention_decode_scratch_bytes(int S, int Hq, int hd, int max_ctx, size_t *bytes);
int wk_attention_decode(wk_stream_t stream, const float *q, const void *k_cache,
                        const void *v_cache, const int32_t *block_table, int max_blocks_per_seq,
                        const int32_t *seq_lens, float *out, void *scratch, size_t scratch_bytes,
                        int S, int Hq, int Hkv, int hd, int block_size, int max_ctx, float scale);

/*
 * wk_attention_decode that also writes its output rows as q8_1 blocks q8_out [S, Hq*hd/32] (the
 * input of the quantized output projection), exactly what wk_quantize_q8_1 of `out` would write:
 * one launch less per layer. q8_out 4-byte aligned.
 */
int wk_attention_decode_q8(wk_stream_t stream, const float *q, const void *k_cache,
                           const void *v_cache, const int32_t *block_table, int max_blocks_per_seq,
                           const int32_t *seq_lens, float *out, void *q8_out, void *scratch,
                           size_t scratch_bytes, int S, int Hq, int Hkv, int hd, int block_size,
                           int max_ctx, float scale);

/*
 * Prefill attention: T query tokens of ONE sequence (row 0 of block_table), causal: query t attends
 * to keys at positions [0, pos[t]] (its own position included), read from the paged cache (so a
 * previously cached prefix is attended too; write this chunk's keys first with wk_rope_kv_write).
 * q f32 [T, Hq, hd]; pos int32 [T]; out f32 [T, Hq, hd]. hd in {64, 128, 256}; Hq % Hkv == 0.
 */
int wk_attention_prefill(wk_stream_t stream, const float *q, const void *k_cache,
                         const void *v_cache, const int32_t *block_table, const int32_t *pos,
                         float *out, int T, int Hq, int Hkv, int hd, int block_size, float scale);

/* ---- element-wise ---------------------------------------------------------------------------- */

/* out [n] = silu(gate) * up, silu(x) = x / (1 + exp(-x)). out may equal gate or up. */
int wk_silu_mul(wk_stream_t stream, const float *gate, const float *up, float *out, int64_t n);
/* out [n] = a + b. out may equal a or b. */
int wk_add(wk_stream_t stream, const float *a, const float *b, float *out, int64_t n);
/* x [T, N] += bias [N]. */
int wk_add_bias(wk_stream_t stream, float *x, const float *bias, int T, int N);

/* ---- sampling -------------------------------------------------------------------------------- */

/* out int32 [T] = index of the largest value of each row of x f32 [T, V]; ties -> smallest index;
 * NaN never wins. */
int wk_argmax(wk_stream_t stream, const float *x, int32_t *out, int T, int V);

/* Repetition penalty on logits f32 [V] in place: for each id in ids int32 [n] (ids must be
 * distinct and in [0, V)): logit /= penalty if logit > 0 else logit *= penalty. */
int wk_repetition_penalty(wk_stream_t stream, float *logits, int V, const int32_t *ids, int n,
                          float penalty);

/* Bytes of CUB radix-sort temporary storage for sorting V (f32 key, int32 value) pairs. */
int wk_sort_temp_bytes(int V, size_t *bytes);
/* Bytes of scratch wk_sample needs for V logits (sorted copies + CUB temp storage). */
int wk_sample_scratch_bytes(int V, size_t *bytes);

/*
 * Sample one token from logits f32 [V] (one row; repetition penalty already applied), llama.cpp
 * order: top-k -> top-p -> min-p -> temperature -> draw, on the fully sorted distribution.
 *  top_k <= 0: off. top_p >= 1: off (probabilities at temperature 1 over the top-k candidates;
 *  keeps the shortest prefix whose mass reaches top_p). min_p <= 0: off (keeps candidates with
 *  p >= min_p * p_max). temperature <= 0: greedy (the largest logit, lowest id on ties).
 *  u: DEVICE pointer to one f32 uniform in [0, 1) (device memory so a captured graph can be replayed
 *  with a fresh draw written before each launch).
 * Outputs (device): out_token int32 [1]; out_logsumexp f32 [1] = log(sum(exp(logits))) of the raw
 * logits (logprob of token i = logits[i] - logsumexp); out_top_ids int32 [n_top] and out_top_logits
 * f32 [n_top]: the n_top largest raw logits, descending (may be NULL when n_top == 0; n_top <= V).
 * scratch: wk_sample_scratch_bytes(V) bytes, 256-byte aligned.
 */
int wk_sample(wk_stream_t stream, const float *logits, int V, void *scratch, size_t scratch_bytes,
              int top_k, float top_p, float min_p, float temperature, const float *u, int n_top,
              int32_t *out_token, float *out_logsumexp, int32_t *out_top_ids,
              float *out_top_logits);

/* ---- host helpers (synchronous; for tests and tools, not for the hot path) -------------------- */

/* Number of visible CUDA devices (0 and a CUDA error code when there is no driver or GPU). */
int wk_device_count(int *count);
int wk_malloc(void **ptr, size_t bytes);
int wk_free(void *ptr);
/* Synchronous copies; src/dst "host" is pageable host memory. */
int wk_memcpy_htod(void *dst_device, const void *src_host, size_t bytes);
int wk_memcpy_dtoh(void *dst_host, const void *src_device, size_t bytes);
int wk_stream_synchronize(wk_stream_t stream);

/* A new non-blocking stream / its destruction (synchronizes the stream first). */
int wk_stream_create(wk_stream_t *stream);
int wk_stream_destroy(wk_stream_t stream);

/*
 * CUDA graph capture, for tests of capturability and for tools: begin capturing `stream` (not the
 * NULL stream) in thread-local mode (an allocation or synchronization on this thread during the
 * capture is an error, as under any strict capture); end it and instantiate the graph into
 * *graph_exec (an opaque cudaGraphExec_t); launch it on a stream; destroy it.
 */
int wk_graph_begin_capture(wk_stream_t stream);
int wk_graph_end_capture(wk_stream_t stream, void **graph_exec);
int wk_graph_launch(void *graph_exec, wk_stream_t stream);
int wk_graph_destroy(void *graph_exec);

#ifdef __cplusplus
}
#endif

#endif /* WORKER_KERNELS_H */
