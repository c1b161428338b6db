/* moeflow sim: placeholder until the capability lands. */
#include "cli.h"

#include <stdio.h>

int moe_cmd_sim(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "moeflow sim: not available in this build\n");
    return 2;
}
