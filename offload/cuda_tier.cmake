# The GPU expert tier (only with the CUDA backend).  Included from
# offload/CMakeLists.txt or, until then, from tests/gpu/CMakeLists.txt.
if(MOEFLOW_HAVE_CUDA AND NOT TARGET moe_cuda_tier)
  moe_module(moe_cuda_tier
    SOURCES ${PROJECT_SOURCE_DIR}/offload/cuda_tier.c
    DEPS moe_offload moe_cuda CUDA::cudart_static)
endif()
