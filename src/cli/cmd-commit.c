// SPDX-License-Identifier: LGPL-2.1-or-later
/* cmd-commit.c: layerimg commit (PLACEHOLDER: not written yet; owned by a helper) */
#include <stdio.h>

#include "cli.h"

int cmd_commit(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	fprintf(stderr, "layerimg commit: not implemented yet\n");
	return CLI_USAGE;
}
