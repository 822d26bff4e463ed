// SPDX-License-Identifier: LGPL-2.1-or-later
/* cmd-map.c: layerimg map (PLACEHOLDER: not written yet; owned by a helper) */
#include <stdio.h>

#include "cli.h"

int cmd_map(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	fprintf(stderr, "layerimg map: not implemented yet\n");
	return CLI_USAGE;
}
