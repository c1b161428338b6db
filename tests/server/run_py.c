/* Runs a Python integration test with the system interpreter (which has
 * python3-grpcio): run_py SCRIPT ARGS...  Skips (77) when the interpreter,
 * grpcio, protoc or the gRPC Python plugin is missing. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define PY "/usr/bin/python3"

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: run_py SCRIPT [ARGS...]\n");
        return 1;
    }
    if (access(PY, X_OK) != 0 || access("/usr/bin/grpc_python_plugin", X_OK) != 0) {
        fprintf(stderr, "skip: %s or /usr/bin/grpc_python_plugin missing\n", PY);
        return 77;
    }
    char **av = calloc((size_t)argc + 2, sizeof(*av));
    if (!av)
        return 1;
    av[0] = PY;
    for (int i = 1; i < argc; i++)
        av[i] = argv[i];
    execv(PY, av);
    perror("execv " PY);
    return 1;
}
