// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * test-chain.c: the directory scan, parent resolution and layer reads.
 * Parent links are made with qemu-img (qcow2 backing files), so the
 * resolver is tested against files an independent tool wrote.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chain.h"
#include "compiler.h"
#include "fixtures.h"

static struct chain_opts opts;

static char *mkdir_sub(const char *name)
{
	char *d = fx_path(name);

	ck_assert_int_eq(mkdir(d, 0755), 0);
	return d;
}

static void write_random(const char *path, size_t len, uint32_t seed)
{
	uint8_t *buf = malloc(len);

	ck_assert_ptr_nonnull(buf);
	fx_fill_random(buf, len, seed);
	fx_pwrite(path, buf, len, 0);
	free(buf);
}

static struct chain *find_chain(struct chainset *cs, const char *name)
{
	for (size_t i = 0; i < cs->nchains; i++)
		if (!strcmp(cs->chains[i]->name, name))
			return cs->chains[i];
	return NULL;
}

/* Read the whole chain and compare with a flat file. */
static void assert_chain_equals(struct chain *c, const char *flat)
{
	size_t len;
	uint8_t *want = fx_read_file(flat, &len);
	uint8_t *got = malloc(len + 4096);

	ck_assert_ptr_nonnull(want);
	ck_assert_uint_eq(c->size, len);
	/* odd-sized reads so runs are split at unaligned offsets */
	for (size_t off = 0; off < len;) {
		size_t n = MIN((size_t)77777, len - off);

		ck_assert_int_eq(chain_pread(c, got + off, n, off), 0);
		off += n;
	}
	ck_assert_int_eq(memcmp(got, want, len), 0);
	/* past the end reads as zeros */
	memset(got, 0xff, 4096);
	ck_assert_int_eq(chain_pread(c, got, 4096, len), 0);
	for (int i = 0; i < 4096; i++)
		ck_assert_int_eq(got[i], 0);
	free(want);
	free(got);
}

static int qemu(const char *cmd_fmt, const char *dir, const char *a,
		const char *b)
{
	return fx_system(cmd_fmt, dir, a, b);
}

START_TEST(scan_raw_files_and_names)
{
	char *d = mkdir_sub("scan1");
	char path[512];
	struct chainset *cs;

	snprintf(path, sizeof(path), "%s/a.img", d);
	write_random(path, 1 << 20, 1);
	snprintf(path, sizeof(path), "%s/win11-L0.raw", d);
	write_random(path, 65536, 2);
	snprintf(path, sizeof(path), "%s/disk.img", d);
	write_random(path, 4096, 3);
	snprintf(path, sizeof(path), "%s/disk.raw", d);
	write_random(path, 4096, 4);
	snprintf(path, sizeof(path), "%s/README.txt", d);
	fx_pwrite(path, "hello\n", 6, 0);	/* not a disk image */
	snprintf(path, sizeof(path), "%s/.hidden.img", d);
	write_random(path, 4096, 5);

	ck_assert_int_eq(chainset_scan(d, &opts, &cs), 0);
	ck_assert_uint_eq(cs->nchains, 4);
	ck_assert_uint_eq(cs->nfailed, 0);
	ck_assert_ptr_nonnull(find_chain(cs, "a"));
	ck_assert_ptr_nonnull(find_chain(cs, "win11-L0"));
	/* same stem twice: full file names */
	ck_assert_ptr_nonnull(find_chain(cs, "disk.img"));
	ck_assert_ptr_nonnull(find_chain(cs, "disk.raw"));
	ck_assert_ptr_null(find_chain(cs, "README"));
	ck_assert_ptr_null(find_chain(cs, ".hidden"));
	struct chain *c = find_chain(cs, "win11-L0");
	ck_assert_int_eq(c->layers[0].tag.tagged, 1);
	ck_assert_int_eq(c->layers[0].tag.level, 0);
	snprintf(path, sizeof(path), "%s/a.img", d);
	assert_chain_equals(find_chain(cs, "a"), path);
	chainset_free(cs);
	free(d);
}
END_TEST

START_TEST(scan_missing_dir)
{
	struct chainset *cs = NULL;

	ck_assert_int_lt(chainset_scan("/nonexistent/layerfs", &opts, &cs), 0);
	ck_assert_ptr_null(cs);
}
END_TEST

/* base.raw <- mid.qcow2 <- top.qcow2, with writes at odd offsets */
START_TEST(qcow2_chain_matches_qemu)
{
	char *d = mkdir_sub("q1");
	struct chainset *cs;
	char path[512];

	snprintf(path, sizeof(path), "%s/base.raw", d);
	write_random(path, 4 << 20, 7);
	ck_assert_int_eq(qemu("cd %s && qemu-img create -q -f qcow2 -F raw "
			      "-b %s mid.qcow2 && qemu-io -f qcow2 -c 'write "
			      "-P 0x11 12345 70000' -c 'write -z 1000000 "
			      "300000' mid.qcow2 >/dev/null", d, "base.raw",
			      ""), 0);
	ck_assert_int_eq(qemu("cd %s && qemu-img create -q -f qcow2 -F qcow2 "
			      "-b %s top.qcow2 6M && qemu-io -f qcow2 -c "
			      "'write -P 0x22 65000 5000' -c 'write -P 0x33 "
			      "5000000 100000' top.qcow2 >/dev/null && "
			      "qemu-img convert -O raw top.qcow2 %s",
			      d, "mid.qcow2", "expect-top.bin"), 0);
	ck_assert_int_eq(chainset_scan(d, &opts, &cs), 0);
	ck_assert_uint_eq(cs->nfailed, 0);
	struct chain *c = find_chain(cs, "top");
	ck_assert_ptr_nonnull(c);
	ck_assert_uint_eq(c->depth, 3);
	ck_assert_str_eq(c->layers[1].img->drv->name, "qcow2");
	ck_assert_str_eq(c->layers[2].img->drv->name, "raw");
	ck_assert_str_eq(c->layers[0].parent_ref, "mid.qcow2");
	/* every image also is a chain of its own */
	ck_assert_ptr_nonnull(find_chain(cs, "mid"));
	ck_assert_ptr_nonnull(find_chain(cs, "base"));
	/* parents are opened once and shared */
	ck_assert_ptr_eq(c->layers[1].img, find_chain(cs, "mid")->layers[0].img);
	snprintf(path, sizeof(path), "%s/expect-top.bin", d);
	/* the expected image is in the dir too: a raw image, its own chain */
	assert_chain_equals(c, path);
	chainset_free(cs);

	/* chain_open_file resolves the same chain from one path */
	snprintf(path, sizeof(path), "%s/top.qcow2", d);
	ck_assert_int_eq(chain_open_file(path, NULL, &opts, &c), 0);
	ck_assert_uint_eq(c->depth, 3);
	snprintf(path, sizeof(path), "%s/expect-top.bin", d);
	assert_chain_equals(c, path);
	chain_free(c);
	free(d);
}
END_TEST

START_TEST(missing_parent_leaves_chain_out)
{
	char *d = mkdir_sub("q2");
	struct chainset *cs;
	char path[512];

	snprintf(path, sizeof(path), "%s/base.raw", d);
	write_random(path, 1 << 20, 8);
	ck_assert_int_eq(qemu("cd %s && qemu-img create -q -f qcow2 -F raw "
			      "-b %s child.qcow2 && rm %s", d, "base.raw",
			      "base.raw"), 0);
	snprintf(path, sizeof(path), "%s/other.raw", d);
	write_random(path, 4096, 9);
	ck_assert_int_eq(chainset_scan(d, &opts, &cs), 0);
	ck_assert_ptr_null(find_chain(cs, "child"));
	ck_assert_ptr_nonnull(find_chain(cs, "other"));
	ck_assert_uint_eq(cs->nfailed, 1);
	chainset_free(cs);
	free(d);
}
END_TEST

START_TEST(parent_cycle_is_refused)
{
	char *d = mkdir_sub("q3");
	struct chainset *cs;
	char path[512];

	snprintf(path, sizeof(path), "%s/ok.raw", d);
	write_random(path, 4096, 10);
	ck_assert_int_eq(qemu("cd %s && qemu-img create -q -f qcow2 %s 1M && "
			      "qemu-img create -q -f qcow2 -F qcow2 -b a.qcow2 "
			      "%s", d, "a.qcow2", "b.qcow2"), 0);
	ck_assert_int_eq(fx_system("cd %s && qemu-img rebase -u -f qcow2 -F "
				   "qcow2 -b b.qcow2 a.qcow2", d), 0);
	/* and one that names itself */
	ck_assert_int_eq(fx_system("cd %s && qemu-img create -q -f qcow2 "
				   "self.qcow2 1M && qemu-img rebase -u -f "
				   "qcow2 -F qcow2 -b self.qcow2 self.qcow2",
				   d), 0);
	ck_assert_int_eq(chainset_scan(d, &opts, &cs), 0);
	ck_assert_uint_eq(cs->nchains, 1);
	ck_assert_ptr_nonnull(find_chain(cs, "ok"));
	ck_assert_uint_eq(cs->nfailed, 3);
	chainset_free(cs);
	free(d);
}
END_TEST

START_TEST(outside_parent_needs_option)
{
	char *d = mkdir_sub("q4");
	char *inner = mkdir_sub("q4/images");
	struct chainset *cs;
	struct chain_opts o = opts;
	char path[512];

	snprintf(path, sizeof(path), "%s/secret.raw", d);
	write_random(path, 1 << 20, 11);
	ck_assert_int_eq(fx_system("cd %s && qemu-img create -q -f qcow2 -F "
				   "raw -b ../secret.raw child.qcow2", inner),
			 0);
	ck_assert_int_eq(chainset_scan(inner, &o, &cs), 0);
	ck_assert_uint_eq(cs->nchains, 0);
	ck_assert_uint_eq(cs->nfailed, 1);
	chainset_free(cs);

	o.allow_outside = true;
	ck_assert_int_eq(chainset_scan(inner, &o, &cs), 0);
	ck_assert_uint_eq(cs->nchains, 1);
	ck_assert_uint_eq(cs->chains[0]->depth, 2);
	assert_chain_equals(cs->chains[0], path);
	chainset_free(cs);

	/* the same name inside IMAGEDIR is used instead of the outside one */
	o.allow_outside = false;
	snprintf(path, sizeof(path), "%s/secret.raw", inner);
	write_random(path, 1 << 20, 12);
	ck_assert_int_eq(chainset_scan(inner, &o, &cs), 0);
	struct chain *c = find_chain(cs, "child");
	ck_assert_ptr_nonnull(c);
	assert_chain_equals(c, path);
	chainset_free(cs);
	free(inner);
	free(d);
}
END_TEST

START_TEST(depth_limit)
{
	char *d = mkdir_sub("q5");
	struct chainset *cs;
	struct chain_opts o = opts;

	ck_assert_int_eq(fx_system("cd %s && qemu-img create -q -f qcow2 "
				   "c0.qcow2 1M && for i in 1 2 3 4 5; do "
				   "qemu-img create -q -f qcow2 -F qcow2 -b "
				   "c$((i-1)).qcow2 c$i.qcow2 || exit 1; done",
				   d), 0);
	o.max_depth = 4;
	ck_assert_int_eq(chainset_scan(d, &o, &cs), 0);
	ck_assert_ptr_nonnull(find_chain(cs, "c3"));
	ck_assert_ptr_null(find_chain(cs, "c4"));
	ck_assert_ptr_null(find_chain(cs, "c5"));
	ck_assert_uint_eq(find_chain(cs, "c3")->depth, 4);
	chainset_free(cs);
	free(d);
}
END_TEST

START_TEST(layer_rules_warn_or_refuse)
{
	char *d = mkdir_sub("q6");
	struct chainset *cs;
	struct chain_opts o = opts;

	/* L3 whose parent is L4: a violation */
	ck_assert_int_eq(fx_system("cd %s && qemu-img create -q -f qcow2 "
				   "os-L4.qcow2 1M && qemu-img create -q -f "
				   "qcow2 -F qcow2 -b os-L4.qcow2 os-L3.qcow2 "
				   "&& qemu-img create -q -f qcow2 -F qcow2 -b "
				   "os-L4.qcow2 os-L401.qcow2", d), 0);
	ck_assert_int_eq(chainset_scan(d, &o, &cs), 0);
	ck_assert_uint_eq(cs->nchains, 3);
	chainset_free(cs);
	o.strict_layers = true;
	ck_assert_int_eq(chainset_scan(d, &o, &cs), 0);
	ck_assert_uint_eq(cs->nchains, 2);
	ck_assert_ptr_null(find_chain(cs, "os-L3"));
	ck_assert_ptr_nonnull(find_chain(cs, "os-L401"));
	chainset_free(cs);
	free(d);
}
END_TEST

/* A recorded backing format is honoured: a qcow2 file read as raw. */
START_TEST(backing_format_is_honoured)
{
	char *d = mkdir_sub("q7");
	struct chain *c;
	char path[512];

	ck_assert_int_eq(fx_system("cd %s && qemu-img create -q -f qcow2 "
				   "inner.qcow2 1M && qemu-img create -q -f "
				   "qcow2 -F raw -b inner.qcow2 top.qcow2 && "
				   "qemu-img convert -O raw top.qcow2 top.flat",
				   d), 0);
	snprintf(path, sizeof(path), "%s/top.qcow2", d);
	ck_assert_int_eq(chain_open_file(path, NULL, &opts, &c), 0);
	ck_assert_str_eq(c->layers[1].img->drv->name, "raw");
	snprintf(path, sizeof(path), "%s/top.flat", d);
	assert_chain_equals(c, path);
	chain_free(c);
	free(d);
}
END_TEST

Suite *unit_suite(void)
{
	Suite *s = suite_create("chain");
	TCase *tc = tcase_create("scan");

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, scan_raw_files_and_names);
	tcase_add_test(tc, scan_missing_dir);
	tcase_add_test(tc, qcow2_chain_matches_qemu);
	tcase_add_test(tc, missing_parent_leaves_chain_out);
	tcase_add_test(tc, parent_cycle_is_refused);
	tcase_add_test(tc, outside_parent_needs_option);
	tcase_add_test(tc, depth_limit);
	tcase_add_test(tc, layer_rules_warn_or_refuse);
	tcase_add_test(tc, backing_format_is_honoured);
	suite_add_tcase(s, tc);
	return s;
}
