// SPDX-License-Identifier: LGPL-2.1-or-later
/* cmd-check.c: layerimg check (PLACEHOLDER: not written yet; owned by a helper) */
#include <stdio.h>

#include "cli.h"

int cmd_check(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	fprintf(stderr, "layerimg check: not implemented yet\n");
	return CLI_USAGE;
}
