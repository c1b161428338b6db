/* moeflow logits: placeholder until the capability lands. */
#include "cli.h"

#include <stdio.h>

int moe_cmd_logits(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "moeflow logits: not available in this build\n");
    return 2;
}
