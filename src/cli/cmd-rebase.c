// SPDX-License-Identifier: LGPL-2.1-or-later
/* cmd-rebase.c: layerimg rebase (PLACEHOLDER: not written yet; owned by a helper) */
#include <stdio.h>

#include "cli.h"

int cmd_rebase(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	fprintf(stderr, "layerimg rebase: not implemented yet\n");
	return CLI_USAGE;
}
