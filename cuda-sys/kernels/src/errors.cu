// Error reporting (the thread-local last-error buffer), type geometry and the synchronous host
// helpers used by tests and tools.
#include <stdio.h>
#include <string.h>

#include "common.cuh"

namespace {
// One buffer per host thread: the inference thread that owns the GPU reads its own errors, and a
// test thread can never see another's message.
thread_local char g_last_error[512] = {0};
}  // namespace

namespace wk {
int set_error(int code, const char *what, const char *file, int line) {
    const char *desc = wk_status_string(code);
    snprintf(g_last_error, sizeof g_last_error, "%s:%d: %s: %s (status %d)", file, line, what, desc,
             code);
    return code;
}
}  // namespace wk

extern "C" const char *wk_last_error(void) { return g_last_error; }

extern "C" void wk_clear_error(void) { g_last_error[0] = '\0'; }

extern "C" const char *wk_status_string(int status) {
    switch (status) {
        case WK_OK: return "ok";
        case WK_ERR_INVALID_ARGUMENT: return "invalid argument";
        case WK_ERR_UNSUPPORTED_TYPE: return "unsupported tensor type";
        case WK_ERR_SCRATCH_TOO_SMALL: return "scratch buffer too small";
        default: break;
    }
    if (status > 0) return cudaGetErrorString((cudaError_t)status);
    return "unknown worker-kernels status";
}

extern "C" int wk_dtype_info(wk_dtype type, int *block_elems, int *block_bytes) {
    WK_REQUIRE(block_elems != nullptr && block_bytes != nullptr);
    int e = 0, b = 0;
    switch (type) {
        case WK_TYPE_F32: e = 1; b = 4; break;
        case WK_TYPE_F16: e = 1; b = 2; break;
        case WK_TYPE_BF16: e = 1; b = 2; break;
        case WK_TYPE_Q4_0: e = 32; b = 18; break;
        case WK_TYPE_Q4_1: e = 32; b = 20; break;
        case WK_TYPE_Q5_0: e = 32; b = 22; break;
        case WK_TYPE_Q5_1: e = 32; b = 24; break;
        case WK_TYPE_Q8_0: e = 32; b = 34; break;
        case WK_TYPE_Q4_K: e = 256; b = 144; break;
        case WK_TYPE_Q5_K: e = 256; b = 176; break;
        case WK_TYPE_Q6_K: e = 256; b = 210; break;
        default: return WK_UNSUPPORTED();
    }
    *block_elems = e;
    *block_bytes = b;
    return WK_OK;
}

extern "C" int wk_device_count(int *count) {
    WK_REQUIRE(count != nullptr);
    *count = 0;
    WK_CUDA_CHECK(cudaGetDeviceCount(count));
    return WK_OK;
}

extern "C" int wk_malloc(void **ptr, size_t bytes) {
    WK_REQUIRE(ptr != nullptr);
    WK_CUDA_CHECK(cudaMalloc(ptr, bytes));
    return WK_OK;
}

extern "C" int wk_free(void *ptr) {
    WK_CUDA_CHECK(cudaFree(ptr));
    return WK_OK;
}

extern "C" int wk_memcpy_htod(void *dst_device, const void *src_host, size_t bytes) {
    WK_CUDA_CHECK(cudaMemcpy(dst_device, src_host, bytes, cudaMemcpyHostToDevice));
    return WK_OK;
}

extern "C" int wk_memcpy_dtoh(void *dst_host, const void *src_device, size_t bytes) {
    WK_CUDA_CHECK(cudaMemcpy(dst_host, src_device, bytes, cudaMemcpyDeviceToHost));
    return WK_OK;
}

extern "C" int wk_stream_synchronize(wk_stream_t stream) {
    WK_CUDA_CHECK(cudaStreamSynchronize(wk::as_stream(stream)));
    return WK_OK;
}
