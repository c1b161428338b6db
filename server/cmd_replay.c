/* moeflow replay: placeholder until the capability lands. */
#include "cli.h"

#include <stdio.h>

int moe_cmd_replay(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "moeflow replay: not available in this build\n");
    return 2;
}
