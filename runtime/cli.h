/* cli — the `kiln` subcommands. Each lives in its own file (cmd_<name>.c) and is listed once in
 * main.c's table; each prints its own --help and returns the process exit status. */
#ifndef KILN_CLI_H
#define KILN_CLI_H

int cmd_tokenize(int argc, char **argv);
int cmd_run(int argc, char **argv);
int cmd_inspect(int argc, char **argv);
int cmd_chat_template(int argc, char **argv);

#endif
