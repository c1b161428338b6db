/* moeflow eval-predictor: placeholder until the capability lands. */
#include "cli.h"

#include <stdio.h>

int moe_cmd_eval_predictor(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "moeflow eval-predictor: not available in this build\n");
    return 2;
}
