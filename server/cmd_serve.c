/* moeflow serve: placeholder until the capability lands. */
#include "cli.h"

#include <stdio.h>

int moe_cmd_serve(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "moeflow serve: not available in this build\n");
    return 2;
}
