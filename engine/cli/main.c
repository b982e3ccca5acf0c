/*
 * kimi-engine: dispatch `kimi-engine NAME ARGS...` to a subcommand.
 *
 * Owns:   the command table (rows from commands.h) and `help`.
 * Never:  parses a command's own flags.  A first argument starting with
 *         '-' (or none at all) means `serve`, as `vllm serve` is the only
 *         thing most people run.
 */

#include <stdio.h>
#include <string.h>

#include "commands.h"


static const kimi_cmd_t  kimi_cmds[] = {
    KIMI_COMMANDS
    { NULL, NULL, NULL }
};


static int
kimi_cmd_help(const char *prog)
{
    const kimi_cmd_t  *c;

    printf("usage: %s COMMAND [OPTIONS]\n"
           "       %s [serve OPTIONS]      (a first option means serve)\n\n"
           "commands:\n", prog, prog);

    for (c = kimi_cmds; c->name != NULL; c++) {
        printf("  %-12s %s\n", c->name, c->help);
    }

    printf("  %-12s %s\n\n"
           "`%s COMMAND --help` lists a command's options.\n",
           "help", "this list", prog);

    return 0;
}


int
main(int argc, char **argv)
{
    const char        *prog = "kimi-engine";
    const kimi_cmd_t  *c;

    if (argc < 2 || argv[1][0] == '-') {
        if (argc >= 2 && (strcmp(argv[1], "-h") == 0
                          || strcmp(argv[1], "--help") == 0))
        {
            return kimi_cmd_help(prog);
        }
        /* argv[0] stands in for the command name */
        return kimi_cmd_serve(argc, argv);
    }

    if (strcmp(argv[1], "help") == 0) {
        if (argc >= 3) {
            for (c = kimi_cmds; c->name != NULL; c++) {
                if (strcmp(c->name, argv[2]) == 0) {
                    char  *args[] = { argv[2], (char *) "--help", NULL };
                    return c->run(2, args);
                }
            }
        }
        return kimi_cmd_help(prog);
    }

    for (c = kimi_cmds; c->name != NULL; c++) {
        if (strcmp(c->name, argv[1]) == 0) {
            return c->run(argc - 1, argv + 1);
        }
    }

    fprintf(stderr, "%s: unknown command \"%s\" (try `%s help`)\n", prog,
            argv[1], prog);

    return 2;
}
