# The GPU expert tier (only with the CUDA backend), included from
# offload/CMakeLists.txt right after moe_offload.  It is compiled into
# moe_offload itself, because runtime.c (the shared --backend factory) builds
# the CUDA backend and the GPU tier for every command; moe_cuda_tier stays as
# the name tests and benchmarks link.
if(MOEFLOW_HAVE_CUDA AND NOT TARGET moe_cuda_tier)
  target_sources(moe_offload PRIVATE ${PROJECT_SOURCE_DIR}/offload/cuda_tier.c)
  target_link_libraries(moe_offload PUBLIC moe_cuda CUDA::cudart_static)
  moe_module(moe_cuda_tier DEPS moe_offload moe_cuda)
endif()
