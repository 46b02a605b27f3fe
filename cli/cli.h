/* Subcommands of `plab`. Each takes argc/argv after the command name and
 * returns the process exit code. */
#ifndef PLAB_CLI_H
#define PLAB_CLI_H

typedef struct {
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);
    void (*help)(void);
} Command;

int cmd_train(int argc, char **argv);
void help_train(void);
int cmd_help(int argc, char **argv);
int cmd_tasks(int argc, char **argv);
void help_tasks(void);
void help_help(void);
int cmd_sweep(int argc, char **argv);
void help_sweep(void);
int cmd_query(int argc, char **argv);
void help_query(void);
int cmd_runs(int argc, char **argv);
void help_runs(void);

/* reads a YAML run config (flat or nested run keys) into cfg; errors name file:line:col */
#include "../core/config.h"
int run_config_load(const char *path, Config *cfg, Err *err);

/* true when argv holds -h or --help */
int wants_help(int argc, char **argv);
/* prints every run key with default and help, optionally only one section */
void print_keys(const char *section_prefix);

/* prints the rows of every statement in `sql` (cli/cmd_query.c);
 * format: table, csv or json; 0, or 1 after an SQL error */
struct sqlite3;
int query_print(struct sqlite3 *db, const char *sql, const char *format);

#endif
