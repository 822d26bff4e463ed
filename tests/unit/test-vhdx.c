#include "fixtures.h"
START_TEST(placeholder) { ck_assert(0); }
END_TEST
Suite *unit_suite(void) { Suite *s = suite_create("ph"); TCase *tc = tcase_create("ph"); tcase_add_test(tc, placeholder); suite_add_tcase(s, tc); return s; }
