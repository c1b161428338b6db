/* moeflow generate: placeholder until the capability lands. */
#include "cli.h"

#include <stdio.h>

int moe_cmd_generate(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "moeflow generate: not available in this build\n");
    return 2;
}
