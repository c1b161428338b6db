/* moeflow train-predictor: placeholder until the capability lands. */
#include "cli.h"

#include <stdio.h>

int moe_cmd_train_predictor(int argc, char **argv)
{
    (void)argc;
    (void)argv;
    fprintf(stderr, "moeflow train-predictor: not available in this build\n");
    return 2;
}
