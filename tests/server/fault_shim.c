/* Faults put into a live `moeflow serve` with LD_PRELOAD, for test_serve_faults.py; each is off unless
 * its variable is set:
 *   MOEFLOW_TEST_GRPC_GATE=PATH  the gRPC thread waits while PATH exists, each time before it polls its
 *                                completion queue: the scheduler's events for its calls pile up until the
 *                                test removes PATH (a generation that ends meanwhile is seen whole, at once). */
#include <dlfcn.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

#include <grpc/grpc.h>

grpc_event grpc_completion_queue_next(grpc_completion_queue *cq, gpr_timespec deadline, void *reserved)
{
    static grpc_event (*next)(grpc_completion_queue *, gpr_timespec, void *);
    if (!next)
        *(void **)&next = dlsym(RTLD_NEXT, "grpc_completion_queue_next");
    const char *gate = getenv("MOEFLOW_TEST_GRPC_GATE");
    while (gate && access(gate, F_OK) == 0)
        nanosleep(&(struct timespec){ 0, 5000000 }, NULL);
    return next(cq, deadline, reserved);
}
