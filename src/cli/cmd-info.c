// SPDX-License-Identifier: LGPL-2.1-or-later
/* cmd-info.c: layerimg info (PLACEHOLDER: not written yet; owned by a helper) */
#include <stdio.h>

#include "cli.h"

int cmd_info(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	fprintf(stderr, "layerimg info: not implemented yet\n");
	return CLI_USAGE;
}
