/* moeflow trace: placeholder until the capability lands. */
#include "cli.h"

#include <stdio.h>

int moe_cmd_trace(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "moeflow trace: not available in this build\n");
    return 2;
}
