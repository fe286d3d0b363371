// Error reporting (the thread-local last-error buffer), type geometry and the synchronous host
// helpers used by tests and tools (memory, streams, graph capture).
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

extern "C" int wk_stream_create(wk_stream_t *stream) {
    WK_REQUIRE(stream != nullptr);
    cudaStream_t s = nullptr;
    WK_CUDA_CHECK(cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking));
    *stream = (wk_stream_t)s;
    return WK_OK;
}

extern "C" int wk_stream_destroy(wk_stream_t stream) {
    WK_REQUIRE(stream != nullptr);
    WK_CUDA_CHECK(cudaStreamSynchronize(wk::as_stream(stream)));
    WK_CUDA_CHECK(cudaStreamDestroy(wk::as_stream(stream)));
    return WK_OK;
}

extern "C" int wk_graph_begin_capture(wk_stream_t stream) {
    WK_REQUIRE(stream != nullptr);  // the legacy NULL stream cannot be captured
    WK_CUDA_CHECK(cudaStreamBeginCapture(wk::as_stream(stream), cudaStreamCaptureModeThreadLocal));
    return WK_OK;
}

extern "C" int wk_graph_end_capture(wk_stream_t stream, void **graph_exec) {
    WK_REQUIRE(stream != nullptr && graph_exec != nullptr);
    *graph_exec = nullptr;
    cudaGraph_t graph = nullptr;
    WK_CUDA_CHECK(cudaStreamEndCapture(wk::as_stream(stream), &graph));
    cudaGraphExec_t exec = nullptr;
    const cudaError_t inst = cudaGraphInstantiate(&exec, graph, 0);
    // The graph itself is no longer needed once instantiated (or if instantiation failed).
    const cudaError_t destroyed = cudaGraphDestroy(graph);
    if (inst != cudaSuccess)
        return wk::set_error((int)inst, "cudaGraphInstantiate(&exec, graph, 0)", __FILE__, __LINE__);
    if (destroyed != cudaSuccess) {
        (void)cudaGraphExecDestroy(exec);  // the destroy error is the one to report
        return wk::set_error((int)destroyed, "cudaGraphDestroy(graph)", __FILE__, __LINE__);
    }
    *graph_exec = (void *)exec;
    return WK_OK;
}

extern "C" int wk_graph_launch(void *graph_exec, wk_stream_t stream) {
    WK_REQUIRE(graph_exec != nullptr);
    WK_CUDA_CHECK(cudaGraphLaunch((cudaGraphExec_t)graph_exec, wk::as_stream(stream)));
    return WK_OK;
}

extern "C" int wk_graph_destroy(void *graph_exec) {
    WK_REQUIRE(graph_exec != nullptr);
    WK_CUDA_CHECK(cudaGraphExecDestroy((cudaGraphExec_t)graph_exec));
    return WK_OK;
}
