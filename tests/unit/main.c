// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * main.c: runs the one Check suite of this binary and prints TAP.
 * Each test-<module>.c defines unit_suite().  CK_FORK=no to debug in gdb.
 */
#include <check.h>
#include <stdlib.h>

#include "fixtures.h"
#include "log.h"

int main(void)
{
	SRunner *sr;
	int failed;

	log_init("test");
	sr = srunner_create(unit_suite());
	srunner_set_tap(sr, "-");
	srunner_run_all(sr, CK_SILENT);
	failed = srunner_ntests_failed(sr);
	srunner_free(sr);
	return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
