// SPDX-License-Identifier: LGPL-2.1-or-later
/* test-raw.c: the raw/ISO driver and image opening by content. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "fixtures.h"
#include "img.h"
#include "log.h"

START_TEST(raw_opens_and_maps)
{
	uint8_t data[8192];
	struct img_extent e;
	struct img *img;
	char *p;

	fx_fill_random(data, sizeof(data), 42);
	p = fx_write_file("a.img", data, sizeof(data));
	ck_assert_int_eq(img_open(p, NULL, false, &img), 0);
	ck_assert_str_eq(img->drv->name, "raw");
	ck_assert_str_eq(img->subtype, "raw");
	ck_assert_uint_eq(img->size, sizeof(data));
	ck_assert_uint_eq(img->sector_size, 512);
	ck_assert_int_eq(img_map(img, 100, 1000, &e), 0);
	ck_assert_int_eq(e.type, IMG_EXT_DATA);
	ck_assert_uint_eq(e.host_off, 100);
	ck_assert_uint_eq(e.len, 1000);
	ck_assert_int_eq(e.fd, img->fd);
	/* clamped to the end, and out of range refused */
	ck_assert_int_eq(img_map(img, 8000, 1000, &e), 0);
	ck_assert_uint_eq(e.len, 192);
	ck_assert_int_eq(img_map(img, 8192, 1, &e), -EINVAL);
	ck_assert_int_eq(img_map(img, 0, 0, &e), -EINVAL);
	ck_assert_ptr_null(img->drv->parent);
	img_unref(img);
	free(p);
}
END_TEST

START_TEST(iso_is_read_only_raw)
{
	uint8_t *data = calloc(1, 40960);
	struct img *img;
	char *p;

	memcpy(data + 0x8001, "CD001", 5);
	p = fx_write_file("cd.iso", data, 40960);
	ck_assert_ptr_eq(img_probe_file(p), img_driver_find("raw"));
	ck_assert_int_eq(img_open(p, NULL, false, &img), 0);
	ck_assert_str_eq(img->subtype, "iso");
	img_unref(img);
	free(p);
	free(data);
}
END_TEST

START_TEST(non_images_are_refused)
{
	struct img *img = NULL;
	char *odd = fx_write_file("notes.txt", "hello", 5);
	char *empty = fx_write_file("empty.img", "", 0);

	log_set_quiet(1);
	ck_assert_ptr_null(img_probe_file(odd));
	ck_assert_ptr_null(img_probe_file(empty));
	ck_assert_int_eq(img_open(odd, NULL, false, &img), -EINVAL);
	ck_assert_ptr_null(img);
	ck_assert_int_eq(img_open("/nonexistent/x.img", NULL, false, &img),
			 -ENOENT);
	ck_assert_int_eq(img_open(fx_tmpdir(), NULL, false, &img), -EINVAL);
	free(odd);
	free(empty);
}
END_TEST

START_TEST(refcount_and_parent_refs)
{
	uint8_t data[512] = { 0 };
	struct img_parent p = { 0 };
	struct img *img;
	char *path = fx_write_file("r.img", data, sizeof(data));

	ck_assert_int_eq(img_open(path, NULL, false, &img), 0);
	ck_assert_ptr_eq(img_ref(img), img);
	img_unref(img);
	img_unref(img);
	img_unref(NULL);
	for (int i = 0; i < IMG_PARENT_MAX_REFS; i++)
		ck_assert_int_eq(img_parent_add_ref(&p, IMG_REF_NAME, "n",
						    "x.vhd"), 0);
	ck_assert_int_eq(img_parent_add_ref(&p, IMG_REF_NAME, "n", "y"),
			 -E2BIG);
	ck_assert_str_eq(p.refs[3].path, "x.vhd");
	img_parent_clear(&p);
	ck_assert_uint_eq(p.nrefs, 0);
	free(path);
}
END_TEST

Suite *unit_suite(void)
{
	Suite *s = suite_create("raw");
	TCase *tc = tcase_create("raw");

	tcase_add_test(tc, raw_opens_and_maps);
	tcase_add_test(tc, iso_is_read_only_raw);
	tcase_add_test(tc, non_images_are_refused);
	tcase_add_test(tc, refcount_and_parent_refs);
	suite_add_tcase(s, tc);
	return s;
}
