// SPDX-License-Identifier: LGPL-2.1-or-later
/* cmd-create.c: layerimg create (PLACEHOLDER: not written yet; owned by a helper) */
#include <stdio.h>

#include "cli.h"

int cmd_create(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	fprintf(stderr, "layerimg create: not implemented yet\n");
	return CLI_USAGE;
}
