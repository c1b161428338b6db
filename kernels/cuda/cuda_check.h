/* The one check macro for CUDA runtime and cuBLAS calls (internal to kernels/
 * and offload/: includes CUDA headers).
 *
 *   if ((st = MOE_CUDA_CHECK(cudaMalloc(&p, n))) != MOE_OK) goto out_free;
 *
 * A failing call is logged with its statement, file and line, recorded with
 * moe_errorf() and mapped to a moe_status: MOE_ENOMEM for allocation
 * failures (cudaErrorMemoryAllocation, CUBLAS_STATUS_ALLOC_FAILED),
 * MOE_EDEVLOST for sticky errors (the context is poisoned: the CUDA driver
 * itself remembers them process-wide and fails every later call), MOE_EDEVICE
 * otherwise (the call failed, a bad launch configuration or argument, cuBLAS
 * NOT_SUPPORTED, ...; the context stays usable, so a server fails the
 * requests concerned and goes on).  moe_cuda_is_sticky() classifies the
 * errors; a caller that learns of a sticky error after the call's own status
 * (cuBLAS, a stream query) reports it with moe_cuda_lost(). */
#ifndef MOE_CUDA_CHECK_H
#define MOE_CUDA_CHECK_H

#include <cuda_runtime_api.h>

#include "../../common/moe.h"

#ifdef __cplusplus
#include <cublas_v2.h>
extern "C" {
#endif

/* True for errors after which the CUDA context cannot be used again. */
bool moe_cuda_is_sticky(cudaError_t e);
/* For a call whose failure is deliberately ignored (cleanup, a query on an
 * error path, cudaErrorNotReady): clears a non-sticky error so that a later
 * cudaGetLastError() does not report it against another statement.  True when
 * e is sticky: the caller marks its context poisoned (sticky errors are never
 * hidden; the driver keeps returning them). */
bool moe_cuda_drop_error(cudaError_t e);
enum moe_status moe_cuda_check_rt(cudaError_t e, const char *stmt, const char *file, int line);
/* A failure (status st, detail in moe_last_error()) that turned out to come with a sticky error:
 * MOE_EDEVLOST, its detail prefixed to say the context is lost. */
enum moe_status moe_cuda_lost(enum moe_status st);
struct moe_cuda_ctx;
/* A cudaMalloc on c's device that returned e (not cudaSuccess), what naming the allocation: when e
 * is cudaErrorMemoryAllocation, MOE_ENOMEM with nothing recorded (e cleared; *free_b and *total_b
 * the device's memory now, 0 when unknown) for the caller's message naming what to lower; any
 * other error is no size to lower and is recorded as MOE_CUDA_CHECK records it, its name said
 * (MOE_EDEVICE, or MOE_EDEVLOST with c poisoned when sticky). */
enum moe_status moe_cuda_malloc_failed(struct moe_cuda_ctx *c, cudaError_t e, const char *what, size_t *free_b,
                                       size_t *total_b);

#ifdef __cplusplus
enum moe_status moe_cuda_check_blas(cublasStatus_t s, const char *stmt, const char *file, int line);
/* The status's name ("CUBLAS_STATUS_NOT_SUPPORTED"). */
const char *moe_cuda_blas_status_name(cublasStatus_t s);
}
static inline enum moe_status moe_cuda_check_(cudaError_t e, const char *stmt, const char *file,
                                              int line)
{
    return e == cudaSuccess ? MOE_OK : moe_cuda_check_rt(e, stmt, file, line);
}
static inline enum moe_status moe_cuda_check_(cublasStatus_t s, const char *stmt, const char *file,
                                              int line)
{
    return s == CUBLAS_STATUS_SUCCESS ? MOE_OK : moe_cuda_check_blas(s, stmt, file, line);
}
#define MOE_CUDA_CHECK(call) moe_cuda_check_((call), #call, __FILE__, __LINE__)
#else
#define MOE_CUDA_CHECK(call) moe_cuda_check_rt((call), #call, __FILE__, __LINE__)
#endif

#endif
