/* moeflow tokenize: placeholder until the capability lands. */
#include "cli.h"

#include <stdio.h>

int moe_cmd_tokenize(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "moeflow tokenize: not available in this build\n");
    return 2;
}
