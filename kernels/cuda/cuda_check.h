/* The one check macro for CUDA runtime and cuBLAS calls (internal to kernels/
 * and offload/: includes CUDA headers).
 *
 *   if ((st = MOE_CUDA_CHECK(cudaMalloc(&p, n))) != MOE_OK) goto out_free;
 *
 * A failing call is logged with its statement, file and line, recorded with
 * moe_errorf() and mapped to a moe_status: MOE_ENOMEM for allocation
 * failures, MOE_EDEVICE otherwise.  Sticky errors (the context is poisoned)
 * are remembered process-wide by the CUDA driver itself; moe_cuda_is_sticky()
 * classifies them so callers can turn readiness off and exit. */
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

#ifdef __cplusplus
enum moe_status moe_cuda_check_blas(cublasStatus_t s, const char *stmt, const char *file, int line);
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
