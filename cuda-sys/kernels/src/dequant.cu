// Dequantization of whole matrices (prompt path: weights to f16 for cuBLAS; also f32 -> f16
// conversion of activations) and the embedding gather (get_rows).
#include "quants.cuh"

namespace {

constexpr int DQ_THREADS = 256;

template <int OUT> __device__ __forceinline__ void store_as(void *out, size_t i, float v);
template <> __device__ __forceinline__ void store_as<WK_TYPE_F32>(void *out, size_t i, float v) {
    ((float *)out)[i] = v;
}
template <> __device__ __forceinline__ void store_as<WK_TYPE_F16>(void *out, size_t i, float v) {
    ((__half *)out)[i] = __float2half_rn(v);
}
template <> __device__ __forceinline__ void store_as<WK_TYPE_BF16>(void *out, size_t i, float v) {
    ((__nv_bfloat16 *)out)[i] = __float2bfloat16_rn(v);
}

// One block per row n of W [N, K]: out [N, K] of OUT. Consecutive threads write consecutive
// elements (coalesced stores); the block headers they share come from L1.
template <int TYPE, int OUT>
__global__ void __launch_bounds__(DQ_THREADS)
    dequantize_kernel(const uint8_t *__restrict__ W, void *__restrict__ out, int K) {
    const size_t n = blockIdx.x;
    const uint8_t *row = W + n * wk::row_bytes<TYPE>(K);
    for (int k = threadIdx.x; k < K; k += blockDim.x)
        store_as<OUT>(out, n * (size_t)K + k, wk::dequant_elem<TYPE>(row, k));
}

// One block per token t: out [T, K] f32 = table row ids[t] (NaN row for an out-of-range id).
template <int TYPE>
__global__ void __launch_bounds__(DQ_THREADS)
    get_rows_kernel(const uint8_t *__restrict__ table, const int32_t *__restrict__ ids,
                    float *__restrict__ out, int V, int K) {
    const int id = ids[blockIdx.x];
    float *o = out + (size_t)blockIdx.x * K;
    if (id < 0 || id >= V) {
        for (int k = threadIdx.x; k < K; k += blockDim.x) o[k] = __int_as_float(0x7fc00000);
        return;
    }
    const uint8_t *row = table + (size_t)id * wk::row_bytes<TYPE>(K);
    for (int k = threadIdx.x; k < K; k += blockDim.x) o[k] = wk::dequant_elem<TYPE>(row, k);
}

template <int TYPE>
int check_layout(const void *W, int K) {
    WK_REQUIRE(K % wk::QType<TYPE>::BLK == 0);
    WK_REQUIRE((uintptr_t)W % wk::QType<TYPE>::ALIGN == 0);
    return WK_OK;
}

template <int TYPE>
int dequantize_typed(cudaStream_t s, const void *W, void *out, wk_dtype out_type, int N, int K) {
    const int st = check_layout<TYPE>(W, K);
    if (st != WK_OK) return st;
    const uint8_t *w = (const uint8_t *)W;
    switch (out_type) {
        case WK_TYPE_F32:
            dequantize_kernel<TYPE, WK_TYPE_F32><<<N, DQ_THREADS, 0, s>>>(w, out, K);
            break;
        case WK_TYPE_F16:
            dequantize_kernel<TYPE, WK_TYPE_F16><<<N, DQ_THREADS, 0, s>>>(w, out, K);
            break;
        case WK_TYPE_BF16:
            dequantize_kernel<TYPE, WK_TYPE_BF16><<<N, DQ_THREADS, 0, s>>>(w, out, K);
            break;
        default: return WK_UNSUPPORTED();
    }
    WK_LAUNCH_CHECK("dequantize_kernel");
    return WK_OK;
}

template <int TYPE>
int get_rows_typed(cudaStream_t s, const void *table, const int32_t *ids, float *out, int T, int V,
                   int K) {
    const int st = check_layout<TYPE>(table, K);
    if (st != WK_OK) return st;
    get_rows_kernel<TYPE><<<T, DQ_THREADS, 0, s>>>((const uint8_t *)table, ids, out, V, K);
    WK_LAUNCH_CHECK("get_rows_kernel");
    return WK_OK;
}

}  // namespace

// Expands to `case TYPE: return FN<TYPE>(ARGS...);` for every supported storage type.
#define WK_ALL_TYPES(FN, ...)                                                  \
    case WK_TYPE_F32: return FN<WK_TYPE_F32>(__VA_ARGS__);                     \
    case WK_TYPE_F16: return FN<WK_TYPE_F16>(__VA_ARGS__);                     \
    case WK_TYPE_BF16: return FN<WK_TYPE_BF16>(__VA_ARGS__);                   \
    case WK_TYPE_Q4_0: return FN<WK_TYPE_Q4_0>(__VA_ARGS__);                   \
    case WK_TYPE_Q4_1: return FN<WK_TYPE_Q4_1>(__VA_ARGS__);                   \
    case WK_TYPE_Q5_0: return FN<WK_TYPE_Q5_0>(__VA_ARGS__);                   \
    case WK_TYPE_Q5_1: return FN<WK_TYPE_Q5_1>(__VA_ARGS__);                   \
    case WK_TYPE_Q8_0: return FN<WK_TYPE_Q8_0>(__VA_ARGS__);                   \
    case WK_TYPE_Q4_K: return FN<WK_TYPE_Q4_K>(__VA_ARGS__);                   \
    case WK_TYPE_Q5_K: return FN<WK_TYPE_Q5_K>(__VA_ARGS__);                   \
    case WK_TYPE_Q6_K: return FN<WK_TYPE_Q6_K>(__VA_ARGS__);

// W [N, K] of `type` -> out [N, K] of out_type (F32, F16 or BF16).
extern "C" int wk_dequantize(wk_stream_t stream, wk_dtype type, const void *W, void *out,
                             wk_dtype out_type, int N, int K) {
    WK_REQUIRE(W != nullptr && out != nullptr);
    WK_REQUIRE(N >= 0 && K > 0);
    if (N == 0) return WK_OK;
    const cudaStream_t s = wk::as_stream(stream);
    switch (type) {
        WK_ALL_TYPES(dequantize_typed, s, W, out, out_type, N, K)
        default: return WK_UNSUPPORTED();
    }
}

// table [V, K] of `type`, ids int32 [T] -> out f32 [T, K].
extern "C" int wk_get_rows(wk_stream_t stream, wk_dtype type, const void *table,
                           const int32_t *ids, float *out, int T, int V, int K) {
    WK_REQUIRE(table != nullptr && ids != nullptr && out != nullptr);
    WK_REQUIRE(T >= 0 && V > 0 && K > 0);
    if (T == 0) return WK_OK;
    const cudaStream_t s = wk::as_stream(stream);
    switch (type) {
        WK_ALL_TYPES(get_rows_typed, s, table, ids, out, T, V, K)
        default: return WK_UNSUPPORTED();
    }
}
