/* CUDA context: device selection, compute stream, cuBLAS handle, workspace,
 * error mapping and memory helpers. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"

extern "C" bool moe_cuda_is_sticky(cudaError_t e)
{
    switch (e) {
    case cudaErrorIllegalAddress:
    case cudaErrorLaunchFailure:
    case cudaErrorHardwareStackError:
    case cudaErrorIllegalInstruction:
    case cudaErrorMisalignedAddress:
    case cudaErrorInvalidAddressSpace:
    case cudaErrorInvalidPc:
    case cudaErrorLaunchTimeout:
    case cudaErrorECCUncorrectable:
    case cudaErrorAssert:
    case cudaErrorContextIsDestroyed:
    case cudaErrorUnknown:
        return true;
    default:
        return false;
    }
}

extern "C" bool moe_cuda_drop_error(cudaError_t e)
{
    if (e == cudaSuccess) return false;
    if (moe_cuda_is_sticky(e)) return true;
    (void)cudaGetLastError();
    return false;
}

extern "C" enum moe_status moe_cuda_check_rt(cudaError_t e, const char *stmt, const char *file,
                                             int line)
{
    if (e == cudaSuccess) return MOE_OK;
    bool sticky = moe_cuda_is_sticky(e);
    enum moe_status st = e == cudaErrorMemoryAllocation ? MOE_ENOMEM : sticky ? MOE_EDEVLOST : MOE_EDEVICE;
    MOE_ERR("%s:%d: %s failed: %s (%s)%s", file, line, stmt, cudaGetErrorName(e),
            cudaGetErrorString(e),
            sticky ? "; sticky error: the CUDA context is unusable, the process must restart" : "");
    if (!sticky) (void)cudaGetLastError(); /* clear a non-sticky error so it is not re-reported */
    return moe_errorf(st, "%s:%d: %s: %s (%s)%s", file, line, stmt, cudaGetErrorName(e), cudaGetErrorString(e),
                      sticky ? " (sticky device error; restart the process)" : "");
}

extern "C" enum moe_status moe_cuda_malloc_failed(struct moe_cuda_ctx *c, cudaError_t e, const char *what,
                                                  size_t *free_b, size_t *total_b)
{
    *free_b = *total_b = 0;
    if (e != cudaErrorMemoryAllocation) {
        char stmt[256];
        snprintf(stmt, sizeof(stmt), "cudaMalloc (%s)", what);
        return moe_cuda_ctx_note(c, moe_cuda_check_rt(e, stmt, __FILE__, __LINE__));
    }
    (void)cudaGetLastError();
    if (moe_cuda_drop_error(cudaMemGetInfo(free_b, total_b)) && c) c->poisoned = true;
    return MOE_ENOMEM;
}

extern "C" enum moe_status moe_cuda_lost(enum moe_status st)
{
    if (st == MOE_EDEVLOST) return st;
    return moe_error_prefix(MOE_EDEVLOST, "sticky device error, the CUDA context is unusable (restart the "
                            "process)");
}

extern "C" const char *moe_cuda_blas_status_name(cublasStatus_t s)
{
    switch (s) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_ARCH_MISMATCH: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case CUBLAS_STATUS_MAPPING_ERROR: return "CUBLAS_STATUS_MAPPING_ERROR";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_INTERNAL_ERROR: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    case CUBLAS_STATUS_LICENSE_ERROR: return "CUBLAS_STATUS_LICENSE_ERROR";
    }
    return "unknown cuBLAS status";
}

extern "C" enum moe_status moe_cuda_check_blas(cublasStatus_t s, const char *stmt, const char *file,
                                               int line)
{
    if (s == CUBLAS_STATUS_SUCCESS) return MOE_OK;
    /* NOT_SUPPORTED too is a device operation that failed (the request's fault it is not: a server
     * answers it as an internal error); a caller with a fallback checks for it itself (gemm_grouped) */
    enum moe_status st = s == CUBLAS_STATUS_ALLOC_FAILED ? MOE_ENOMEM : MOE_EDEVICE;
    MOE_ERR("%s:%d: %s failed: %s", file, line, stmt, moe_cuda_blas_status_name(s));
    return moe_errorf(st, "%s:%d: %s: %s", file, line, stmt, moe_cuda_blas_status_name(s));
}

extern "C" int moe_cuda_device_count(void)
{
    int n = 0;
    if (cudaGetDeviceCount(&n) != cudaSuccess) {
        (void)cudaGetLastError();
        return 0;
    }
    return n;
}

extern "C" struct moe_cuda_ctx *moe_cuda_ctx_create(const struct moe_cuda_params *p)
{
    enum moe_status st = MOE_OK;
    int n = moe_cuda_device_count();
    struct moe_cuda_ctx *c;
    size_t ws = p && p->workspace_bytes ? p->workspace_bytes : (size_t)64 << 20, fr, tot;
    int dev = p ? p->device : 0;
    cudaError_t e;

    if (dev < 0 || dev >= n) {
        moe_errorf(MOE_EDEVICE, "CUDA device %d requested but %d device(s) are visible (set device "
                   "to 0..%d or check CUDA_VISIBLE_DEVICES)", dev, n, n - 1);
        return NULL;
    }
    c = (struct moe_cuda_ctx *)calloc(1, sizeof(*c));
    if (!c) {
        moe_errorf(MOE_ENOMEM, "CUDA context: out of host memory");
        return NULL;
    }
    c->device = dev;
    c->gemm_mode = p ? p->gemm_mode : MOE_CUDA_GEMM_INVARIANT;
    c->ptr_cap = 1024;
    CK(c, cudaSetDevice(dev));
    CK(c, cudaDeviceGetAttribute(&c->sms, cudaDevAttrMultiProcessorCount, dev));
    CK(c, cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    CK(c, cublasCreate(&c->blas));
    CK(c, cublasSetStream(c->blas, c->stream));
    CK(c, cublasSetMathMode(c->blas, CUBLAS_DEFAULT_MATH));
    if ((e = cudaMalloc(&c->ws, ws)) != cudaSuccess) {
        c->ws = NULL;
        if ((st = moe_cuda_malloc_failed(c, e, "CUDA workspace", &fr, &tot)) == MOE_ENOMEM)
            st = moe_errorf(MOE_ENOMEM, "CUDA workspace: cannot allocate %zu MiB on device %d (%zu MiB "
                            "free of %zu MiB): lower workspace_bytes or the GPU-tier capacity",
                            ws >> 20, dev, fr >> 20, tot >> 20);
        goto out;
    }
    c->ws_bytes = ws;
    if ((e = cudaMalloc((void **)&c->d_ptrs, 3 * (size_t)c->ptr_cap * sizeof(void *))) != cudaSuccess) {
        c->d_ptrs = NULL;
        if ((st = moe_cuda_malloc_failed(c, e, "GEMM pointer table", &fr, &tot)) == MOE_ENOMEM)
            st = moe_errorf(MOE_ENOMEM, "CUDA context: cannot allocate the GEMM pointer table on device %d (%zu MiB "
                            "free of %zu MiB)", dev, fr >> 20, tot >> 20);
        goto out;
    }
out:
    if (st != MOE_OK) {
        char msg[1024];
        snprintf(msg, sizeof(msg), "%s", moe_last_error());
        moe_cuda_ctx_destroy(c);
        moe_errorf(st, "%s", msg);
        return NULL;
    }
    return c;
}

extern "C" void moe_cuda_ctx_destroy(struct moe_cuda_ctx *c)
{
    if (!c) return;
    moe_cuda_ctx_bind_teardown(c); /* may run on another thread than create */
    if (c->stream && !c->poisoned) (void)cudaStreamSynchronize(c->stream);
    if (c->d_ptrs) cudaFree(c->d_ptrs);
    if (c->ws) cudaFree(c->ws);
    if (c->blas) cublasDestroy(c->blas);
    if (c->stream) cudaStreamDestroy(c->stream);
    (void)cudaGetLastError();
    free(c);
}

extern "C" void *moe_cuda_ctx_stream(const struct moe_cuda_ctx *c) { return (void *)c->stream; }
extern "C" int moe_cuda_ctx_device(const struct moe_cuda_ctx *c) { return c->device; }
extern "C" bool moe_cuda_ctx_poisoned(const struct moe_cuda_ctx *c) { return c->poisoned; }
extern "C" void moe_cuda_ctx_mark_poisoned(struct moe_cuda_ctx *c) { c->poisoned = true; }
extern "C" enum moe_cuda_gemm_mode moe_cuda_ctx_gemm_mode(const struct moe_cuda_ctx *c)
{
    return c->gemm_mode;
}

extern "C" enum moe_status moe_cuda_ctx_bind(struct moe_cuda_ctx *c)
{
    enum moe_status st = MOE_OK;
    int cur = -1;
    cudaError_t e = cudaGetDevice(&cur);
    if (e == cudaSuccess && cur == c->device) return MOE_OK;
    if (moe_cuda_drop_error(e)) c->poisoned = true;
    CK(c, cudaSetDevice(c->device));
out:
    return st;
}

extern "C" void moe_cuda_ctx_bind_teardown(struct moe_cuda_ctx *c)
{
    int cur = -1;
    cudaError_t e = cudaGetDevice(&cur);
    if (e == cudaSuccess && cur == c->device) return;
    if (moe_cuda_drop_error(e)) c->poisoned = true;
    if (moe_cuda_drop_error(cudaSetDevice(c->device))) c->poisoned = true;
}

extern "C" enum moe_status moe_cuda_ctx_sync(struct moe_cuda_ctx *c)
{
    enum moe_status st = MOE_OK;
    CK(c, cudaStreamSynchronize(c->stream));
out:
    return st;
}

extern "C" enum moe_status moe_cuda_alloc(struct moe_cuda_ctx *c, void **d_ptr, size_t bytes,
                                          const char *what)
{
    *d_ptr = NULL;
    if (bytes == 0) bytes = 1;
    cudaError_t e = cudaMalloc(d_ptr, bytes);
    if (e == cudaSuccess) return MOE_OK;
    *d_ptr = NULL;
    size_t fr, tot;
    enum moe_status st = moe_cuda_malloc_failed(c, e, what, &fr, &tot);
    if (st != MOE_ENOMEM) return st;
    return moe_errorf(MOE_ENOMEM, "%s: cannot allocate %zu MiB on CUDA device %d (%zu MiB free of "
                      "%zu MiB)", what, bytes >> 20, c->device, fr >> 20, tot >> 20);
}

extern "C" void moe_cuda_free(struct moe_cuda_ctx *c, void *d_ptr)
{
    if (d_ptr && moe_cuda_drop_error(cudaFree(d_ptr)) && c) c->poisoned = true;
}

extern "C" enum moe_status moe_cuda_memset(struct moe_cuda_ctx *c, void *d_ptr, int byte, size_t bytes)
{
    enum moe_status st = MOE_OK;
    CK(c, cudaMemsetAsync(d_ptr, byte, bytes, c->stream));
out:
    return st;
}

extern "C" enum moe_status moe_cuda_h2d(struct moe_cuda_ctx *c, void *d_dst, const void *h_src,
                                        size_t bytes)
{
    enum moe_status st = MOE_OK;
    CK(c, cudaMemcpyAsync(d_dst, h_src, bytes, cudaMemcpyHostToDevice, c->stream));
out:
    return st;
}

extern "C" enum moe_status moe_cuda_d2h(struct moe_cuda_ctx *c, void *h_dst, const void *d_src,
                                        size_t bytes)
{
    enum moe_status st = MOE_OK;
    CK(c, cudaMemcpyAsync(h_dst, d_src, bytes, cudaMemcpyDeviceToHost, c->stream));
out:
    return st;
}

extern "C" enum moe_status moe_cuda_d2d(struct moe_cuda_ctx *c, void *d_dst, const void *d_src,
                                        size_t bytes)
{
    enum moe_status st = MOE_OK;
    CK(c, cudaMemcpyAsync(d_dst, d_src, bytes, cudaMemcpyDeviceToDevice, c->stream));
out:
    return st;
}

extern "C" enum moe_status moe_cuda_mem_info(struct moe_cuda_ctx *c, size_t *free_bytes, size_t *total_bytes)
{
    enum moe_status st = MOE_OK;
    *free_bytes = *total_bytes = 0;
    CK(c, cudaMemGetInfo(free_bytes, total_bytes));
out:
    return st;
}

extern "C" enum moe_status moe_cuda_host_alloc(void **h_ptr, size_t bytes, bool *pinned)
{
    if (bytes == 0) bytes = 1;
    *pinned = false;
    if (cudaHostAlloc(h_ptr, bytes, cudaHostAllocPortable) == cudaSuccess) {
        *pinned = true;
        return MOE_OK;
    }
    (void)cudaGetLastError();
    MOE_WARN("cannot pin %zu MiB of host memory; using pageable memory (copies will not overlap)",
             bytes >> 20);
    *h_ptr = malloc(bytes);
    if (!*h_ptr)
        return moe_errorf(MOE_ENOMEM, "cannot allocate %zu MiB of host memory", bytes >> 20);
    return MOE_OK;
}

extern "C" void moe_cuda_host_free(void *h_ptr, bool pinned)
{
    if (!h_ptr) return;
    if (pinned) (void)moe_cuda_drop_error(cudaFreeHost(h_ptr));
    else free(h_ptr);
}
