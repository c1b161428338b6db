/* Faults put into a live `moeflow serve` with LD_PRELOAD, for test_serve_faults.py; each is off unless
 * its variable is set:
 *   MOEFLOW_TEST_GRPC_GATE=PATH  the gRPC thread waits while PATH exists, each time before it polls its
 *                                completion queue: the scheduler's events for its calls pile up until the
 *                                test removes PATH (a generation that ends meanwhile is seen whole, at once);
 *   MOEFLOW_TEST_GRPC_GATE_AT_SEND=N  with MOEFLOW_TEST_GRPC_GATE: the gate is made (PATH created) here as
 *                                the gRPC thread starts sending the server's Nth message, so that the thread
 *                                holds at its next poll whatever the timing: the events after that message
 *                                pile up until the test removes PATH;
 *   MOEFLOW_TEST_FAIL_DUMPS=NAME json_dumps of a JSON object whose "object" member is NAME fails, as it does
 *                                out of memory (NAME chat.completion: the reply of a non-streamed chat
 *                                completion cannot be written out). */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <grpc/grpc.h>
#include <jansson.h>

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

grpc_call_error grpc_call_start_batch(grpc_call *call, const grpc_op *ops, size_t nops, void *tag, void *reserved)
{
    static grpc_call_error (*start)(grpc_call *, const grpc_op *, size_t, void *, void *);
    static long sends; /* the gRPC thread's alone */
    if (!start)
        *(void **)&start = dlsym(RTLD_NEXT, "grpc_call_start_batch");
    const char *gate = getenv("MOEFLOW_TEST_GRPC_GATE"), *at = getenv("MOEFLOW_TEST_GRPC_GATE_AT_SEND");
    for (size_t i = 0; gate && at && i < nops; i++)
        if (ops[i].op == GRPC_OP_SEND_MESSAGE && ++sends == strtol(at, NULL, 10)) {
            FILE *f = fopen(gate, "w");
            if (f)
                fclose(f);
        }
    return start(call, ops, nops, tag, reserved);
}

char *json_dumps(const json_t *json, size_t flags)
{
    static char *(*dumps)(const json_t *, size_t);
    if (!dumps)
        *(void **)&dumps = dlsym(RTLD_NEXT, "json_dumps");
    const char *fail = getenv("MOEFLOW_TEST_FAIL_DUMPS");
    const char *name = json_is_object(json) ? json_string_value(json_object_get(json, "object")) : NULL;
    if (fail && name && !strcmp(name, fail))
        return NULL;
    return dumps(json, flags);
}
