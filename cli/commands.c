/* The command table: one line per subcommand. */
#include "cli.h"

static const Command train = {"train", "train one run: plab train key=value ...", cmd_train, help_train};
static const Command tasks = {"tasks", "list tasks; sample or summarise their data", cmd_tasks, help_tasks};
static const Command sweep = {"sweep", "run a YAML sweep into the results database", cmd_sweep, help_sweep};
static const Command query = {"query", "ask the results database in SQL", cmd_query, help_query};
static const Command runs = {"runs", "list the runs of a sweep with status", cmd_runs, help_runs};
static const Command help = {"help", "help on a command, the keys or the mixers", cmd_help, help_help};

const Command *const commands[] = {&train, &tasks, &sweep, &query, &runs, &help};
const int command_count = (int)(sizeof commands / sizeof commands[0]);
