/* moeflow pack: placeholder until the capability lands. */
#include "cli.h"

#include <stdio.h>

int moe_cmd_pack(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "moeflow pack: not available in this build\n");
    return 2;
}
