/* The moeflow command-line tool: one binary, one function per subcommand.
 * Each subcommand lives in server/cmd_<name>.c, parses its own options with
 * getopt_long, prints --help, and returns the process exit status
 * (0 ok, 1 runtime failure, 2 usage error). */
#ifndef MOE_CLI_H
#define MOE_CLI_H

int moe_cmd_generate(int argc, char **argv);
int moe_cmd_tokenize(int argc, char **argv);
int moe_cmd_logits(int argc, char **argv);
int moe_cmd_pack(int argc, char **argv);
int moe_cmd_trace(int argc, char **argv);
int moe_cmd_sim(int argc, char **argv);
int moe_cmd_train_predictor(int argc, char **argv);
int moe_cmd_eval_predictor(int argc, char **argv);
int moe_cmd_replay(int argc, char **argv);
int moe_cmd_bench(int argc, char **argv);
int moe_cmd_serve(int argc, char **argv);

#endif
