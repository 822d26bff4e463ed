// SPDX-License-Identifier: LGPL-2.1-or-later
/* cmd-convert.c: layerimg convert (PLACEHOLDER: not written yet; owned by a helper) */
#include <stdio.h>

#include "cli.h"

int cmd_convert(int argc, char **argv)
{
	(void)argc;
	(void)argv;
	fprintf(stderr, "layerimg convert: not implemented yet\n");
	return CLI_USAGE;
}
