// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * main.c: layerimg, the qemu-img of L0-L9 layer chains.
 *
 *   layerimg COMMAND [options] ARGS...
 *
 * Each command lives in cmd-COMMAND.c and is built on the same core
 * library as the daemon: no format code of its own.
 */
#include <stdio.h>
#include <string.h>

#include "cli.h"
#include "config.h"
#include "log.h"

struct command {
	const char *name;
	int (*fn)(int argc, char **argv);
	const char *summary;
};

static const struct command commands[] = {
	{ "info", cmd_info, "show a chain: layers, sizes, parents, partitions" },
	{ "check", cmd_check, "check one image file's structure" },
	{ "create", cmd_create, "create a base or differencing layer, or a disk "
				"from a DeviceLayoutOEM.xml" },
	{ "commit", cmd_commit, "merge a top layer into its parent" },
	{ "convert", cmd_convert, "flatten a chain into one standalone image" },
	{ "map", cmd_map, "show which layer provides each extent" },
	{ "rebase", cmd_rebase, "rewrite a layer's parent reference" },
};

static void usage(FILE *f)
{
	fprintf(f, "Usage: layerimg COMMAND [options] ARGS...\n"
		   "       layerimg COMMAND --help\n\nCommands:\n");
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
		fprintf(f, "  %-8s %s\n", commands[i].name, commands[i].summary);
	fprintf(f, "\nqemu-img's options mean the same here: -f FMT (the input's "
		   "format), -F, -b,\n-o, -p, -q, -U, --output=json|human, "
		   "sizes like 1.5G.\n"
		   "Exit status: 0 success, 1 failure, 2 usage error or unreadable "
		   "input;\ncheck: 0 clean, 1 not checked, 2 corruptions, 3 leaks, "
		   "63 no checker.\n"
		   "See layerimg(1).\n");
}

int main(int argc, char **argv)
{
	static char prefix[64];

	log_init("layerimg");
	log_set_sink(cli_log_sink);
	if (argc < 2) {
		cli_error("no command given");
		return cli_try_help();
	}
	if (!strcmp(argv[1], "-h") || !strcmp(argv[1], "--help") ||
	    !strcmp(argv[1], "help")) {
		usage(stdout);
		return CLI_OK;
	}
	if (!strcmp(argv[1], "-V") || !strcmp(argv[1], "--version")) {
		printf("layerimg %s\n", PACKAGE_VERSION);
		return CLI_OK;
	}
	for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++) {
		if (strcmp(argv[1], commands[i].name))
			continue;
		/* getopt prints its complaints after argv[0]: give it the
		 * prefix every other message of the command has */
		snprintf(prefix, sizeof(prefix), "layerimg: %s", argv[1]);
		argv[1] = prefix;
		cli_set_command(commands[i].name);
		return commands[i].fn(argc - 1, argv + 1);
	}
	cli_error("unknown command '%s'", argv[1]);
	return cli_try_help();
}
