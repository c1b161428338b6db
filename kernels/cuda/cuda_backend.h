/* The CUDA backend behind the backend seam (kernels/backend.h): the same op
 * table as the CPU reference backend, on one CUDA stream.  Matrix weights are
 * BF16 (weight_dtype), activations F32, buffers are device memory.  The
 * default GEMM mode keeps activations in F32 (HF parity within 5e-2 on the
 * bundled model); the cuBLAS modes round them to BF16 for speed (measured by
 * CPU emulation on the bundled model: logits up to 0.26 from HF, same greedy
 * tokens). */
#ifndef MOE_CUDA_BACKEND_H
#define MOE_CUDA_BACKEND_H

#include "../backend.h"
#include "cuda_ops.h"

#ifdef __cplusplus
extern "C" {
#endif

struct moe_backend_cuda_params {
    int device;                         /* CUDA device ordinal */
    size_t workspace_bytes;             /* GEMM scratch (0 = 64 MiB): bounds rows per linear/moe_experts call */
    enum moe_cuda_gemm_mode gemm_mode;  /* INVARIANT (default: F32 activations, batch-invariant),
                                           LOOP or GROUPED (cuBLAS, BF16 activations, faster) */
};

/* NULL with moe_last_error() set: no device (message says so), or the
 * workspace does not fit (names workspace_bytes). */
struct moe_backend *moe_backend_cuda_create(const struct moe_backend_cuda_params *p);
/* The CUDA context of a backend made by moe_backend_cuda_create (the GPU
 * expert tier shares its device and orders its copies against its stream). */
struct moe_cuda_ctx *moe_backend_cuda_ctx(const struct moe_backend *be);
/* True when be is the CUDA backend and a sticky device error poisoned it: the
 * server fails the requests in flight, turns readiness off and exits non-zero. */
bool moe_backend_cuda_poisoned(const struct moe_backend *be);

#ifdef __cplusplus
}
#endif
#endif
