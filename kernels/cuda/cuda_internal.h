/* Internal to the CUDA backend's .cu files: the context layout and helpers. */
#ifndef MOE_CUDA_INTERNAL_H
#define MOE_CUDA_INTERNAL_H

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include "cuda_check.h"
#include "cuda_ops.h"

struct moe_cuda_ctx {
    int device;
    cudaStream_t stream;          /* compute stream (non-blocking) */
    cublasHandle_t blas;
    void *ws;                     /* device workspace */
    size_t ws_bytes;
    void **d_ptrs;                /* device pointer table for grouped GEMM [3 * ptr_cap] */
    int ptr_cap;                  /* entries per operand in d_ptrs */
    enum moe_cuda_gemm_mode gemm_mode;
    int sms;                      /* the device's multiprocessors */
    int attn_splits;              /* moe_cuda_ctx_set_attn_splits: 0 = auto */
    bool attn_split_noted;        /* auto attention could not split for want of workspace: logged */
    bool poisoned;                /* a sticky error was seen */
};

/* Record sticky errors on the context and return the mapped status: MOE_EDEVLOST
 * once the context is poisoned, whatever the call's own status said. */
static inline enum moe_status moe_cuda_ctx_note(struct moe_cuda_ctx *c, enum moe_status st)
{
    if (st != MOE_OK && c) {
        cudaError_t e = cudaPeekAtLastError();
        /* cuBLAS carries its own copy of the runtime, so a fault it met first may not show in
         * our last error: ask the driver through the stream */
        if (!moe_cuda_is_sticky(e)) {
            e = cudaStreamQuery(c->stream);
            /* the query's own answer (cudaErrorNotReady, an old non-sticky error) must not be
             * reported against the next launch's cudaGetLastError() */
            if (moe_cuda_drop_error(e)) c->poisoned = true;
        } else {
            c->poisoned = true;
        }
        if (c->poisoned) st = moe_cuda_lost(st);
    }
    return st;
}

/* CK: check a call inside a function with `enum moe_status st` and label `out`. */
#define CK(c, call)                                                          \
    do {                                                                     \
        st = moe_cuda_ctx_note((c), MOE_CUDA_CHECK(call));                   \
        if (st != MOE_OK) goto out;                                          \
    } while (0)

/* After a kernel launch: configuration errors are reported here, faults at
 * the next synchronising call. */
#define CK_LAUNCH(c) CK(c, cudaGetLastError())

static inline cudaStream_t moe_cuda_stream_of(const struct moe_cuda_ctx *c) { return c->stream; }

static inline unsigned moe_cuda_blocks(size_t n, unsigned threads, unsigned cap)
{
    size_t b = (n + threads - 1) / threads;
    if (b == 0) b = 1;
    return b > cap ? cap : (unsigned)b;
}

#endif
