/* moeflow bench: placeholder until the capability lands. */
#include "cli.h"

#include <stdio.h>

int moe_cmd_bench(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "moeflow bench: not available in this build\n");
    return 2;
}
