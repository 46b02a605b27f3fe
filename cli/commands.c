/* The command table: one line per subcommand. */
#include "cli.h"

static const Command train = {"train", "train one run: plab train key=value ...", cmd_train, help_train};
static const Command help = {"help", "help on a command, the keys or the mixers", cmd_help, help_help};

const Command *const commands[] = {&train, &help};
const int command_count = (int)(sizeof commands / sizeof commands[0]);
