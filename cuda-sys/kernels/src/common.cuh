// Shared helpers of all kernel files: error reporting, launch checks, warp reductions, f16/bf16
// loads. Every launcher returns an int status (see worker_kernels.h) and, on failure, leaves a
// message in the calling thread's last-error buffer (wk_last_error()).
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "worker_kernels.h"

namespace wk {

// Record "file:line: what: description" as the calling thread's last error; returns `code` so a
// launcher can `return set_error(...)`.
int set_error(int code, const char *what, const char *file, int line);

}  // namespace wk

// Checks a CUDA runtime call; on failure records the call text, file and line and returns the code.
#define WK_CUDA_CHECK(call)                                                       \
    do {                                                                          \
        cudaError_t wk_err_ = (call);                                             \
        if (wk_err_ != cudaSuccess) {                                             \
            return wk::set_error((int)wk_err_, #call, __FILE__, __LINE__);        \
        }                                                                         \
    } while (0)

// After a <<<...>>> launch: a bad configuration (grid, shared memory, no kernel image for this GPU)
// only shows up in cudaGetLastError. Allowed during stream capture.
#define WK_LAUNCH_CHECK(what)                                                      \
    do {                                                                           \
        cudaError_t wk_err_ = cudaGetLastError();                                  \
        if (wk_err_ != cudaSuccess) {                                              \
            return wk::set_error((int)wk_err_, "launch of " what, __FILE__, __LINE__); \
        }                                                                          \
    } while (0)

// Argument validation in launchers: returns WK_ERR_INVALID_ARGUMENT naming the failed condition.
#define WK_REQUIRE(cond)                                                                        \
    do {                                                                                        \
        if (!(cond)) {                                                                          \
            return wk::set_error(WK_ERR_INVALID_ARGUMENT, "invalid argument: " #cond, __FILE__, \
                                 __LINE__);                                                     \
        }                                                                                       \
    } while (0)

#define WK_UNSUPPORTED()                                                                 \
    wk::set_error(WK_ERR_UNSUPPORTED_TYPE, "unsupported tensor type for this operation", \
                  __FILE__, __LINE__)

namespace wk {

constexpr int WARP = 32;

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ int warp_sum_int(int v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over a whole thread block (blockDim.x a multiple of 32, <= 1024). All threads get the result.
// `shared` must hold 32 floats; the function synchronizes, so call it from every thread.
__device__ __forceinline__ float block_sum(float v, float *shared) {
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    const int nwarps = blockDim.x / WARP;
    v = warp_sum(v);
    __syncthreads();  // `shared` may still be read by a previous call
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < nwarps ? shared[lane] : 0.0f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float *shared) {
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    const int nwarps = blockDim.x / WARP;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < nwarps ? shared[lane] : -INFINITY;
    return warp_max(v);
}

// f16 / bf16 stored as raw 16-bit words (GGUF blocks are byte arrays, not CUDA vector types).
__device__ __forceinline__ float f16_bits_to_float(uint16_t bits) {
    return __half2float(__ushort_as_half(bits));
}
__device__ __forceinline__ float bf16_bits_to_float(uint16_t bits) {
    return __uint_as_float(((uint32_t)bits) << 16);
}
__device__ __forceinline__ float load_f16(const uint8_t *p) {  // p 2-byte aligned
    return f16_bits_to_float(*(const uint16_t *)p);
}

// 32-bit little-endian word from a 2-byte aligned address: Q5_0, Q8_0 and Q6_K blocks are only
// 2-byte aligned, and a misaligned 4-byte load faults on the GPU.
__device__ __forceinline__ uint32_t load_u32_a2(const uint8_t *p) {
    const uint16_t *h = (const uint16_t *)p;
    return (uint32_t)h[0] | ((uint32_t)h[1] << 16);
}
__device__ __forceinline__ uint32_t load_u32_a4(const uint8_t *p) { return *(const uint32_t *)p; }

inline unsigned int ceil_div(long long a, long long b) { return (unsigned int)((a + b - 1) / b); }

inline cudaStream_t as_stream(wk_stream_t s) { return (cudaStream_t)s; }

}  // namespace wk
