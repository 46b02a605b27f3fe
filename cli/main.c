/* plab: Parallax Lab command line. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

extern const Command *const commands[];
extern const int command_count;

static void usage(void) {
    printf("plab: train attention mechanisms on synthetic tasks and ask which learns what.\n\n"
           "usage: plab COMMAND [args]\n\ncommands:\n");
    for (int i = 0; i < command_count; i++)
        printf("  %-8s %s\n", commands[i]->name, commands[i]->summary);
    printf("\n`plab help COMMAND` or `plab COMMAND --help` explains one command;\n"
           "`plab help train` lists every run key with its default.\n");
}

int main(int argc, char **argv) {
    if (argc < 2 || !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h")) {
        usage();
        return argc < 2 ? 2 : 0;
    }
    for (int i = 0; i < command_count; i++)
        if (!strcmp(argv[1], commands[i]->name)) {
            if (wants_help(argc - 2, argv + 2)) {
                commands[i]->help();
                return 0;
            }
            return commands[i]->run(argc - 2, argv + 2);
        }
    fprintf(stderr, "plab: unknown command '%s'\n", argv[1]);
    for (int i = 0; i < command_count; i++)
        if (!strncmp(argv[1], commands[i]->name, 2))
            fprintf(stderr, "did you mean 'plab %s'?\n", commands[i]->name);
    fprintf(stderr, "run `plab --help` for the list of commands\n");
    return 2;
}
