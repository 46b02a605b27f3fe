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
void help_help(void);

/* true when argv holds -h or --help */
int wants_help(int argc, char **argv);
/* prints every run key with default and help, optionally only one section */
void print_keys(const char *section_prefix);

#endif
