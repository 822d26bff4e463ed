// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * test-chain.c: the directory scan, parent resolution and layer reads.
 * Parent links are made with qemu-img (qcow2 backing files), so the
 * resolver is tested against files an independent tool wrote.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chain.h"
#include "compiler.h"
#include "fixtures.h"
#include "io.h"
#include "registry.h"

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

/*
 * The same limit when the scan meets the top first: names sort the chain
 * top down (a5 -> b4 -> c3 -> d2 -> e1), and each chain keeps its own
 * depth, so e1, d2 and c3 mount with max_depth 3.
 */
START_TEST(depth_limit_any_order)
{
	char *d = mkdir_sub("q5b");
	struct chainset *cs;
	struct chain_opts o = opts;

	ck_assert_int_eq(fx_system("cd %s && qemu-img create -q -f qcow2 "
				   "e1.qcow2 1M && p=e1 && for n in d2 c3 b4 "
				   "a5; do qemu-img create -q -f qcow2 -F qcow2 "
				   "-b $p.qcow2 $n.qcow2 || exit 1; p=$n; done",
				   d), 0);
	o.max_depth = 3;
	ck_assert_int_eq(chainset_scan(d, &o, &cs), 0);
	ck_assert_uint_eq(cs->nchains, 3);
	ck_assert_uint_eq(cs->nfailed, 2);
	ck_assert_uint_eq(find_chain(cs, "e1")->depth, 1);
	ck_assert_uint_eq(find_chain(cs, "d2")->depth, 2);
	ck_assert_uint_eq(find_chain(cs, "c3")->depth, 3);
	ck_assert_ptr_null(find_chain(cs, "b4"));
	ck_assert_ptr_null(find_chain(cs, "a5"));
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

/* ---- the chain's shape: views, chain_set_top ---------------------------- */

static void assert_view_equals(const struct chain_view *v, const char *flat)
{
	size_t len;
	uint8_t *want = fx_read_file(flat, &len);
	uint8_t *got = malloc(len);

	ck_assert_ptr_nonnull(want);
	ck_assert_ptr_nonnull(got);
	ck_assert_uint_eq(v->size, len);
	ck_assert_int_eq(chain_view_pread(v, got, len, 0), 0);
	ck_assert_int_eq(memcmp(got, want, len), 0);
	free(want);
	free(got);
}

/*
 * A view taken before a shape change keeps reading the old layers; the
 * chain reads the new ones; the old top is closed with the last view.
 */
START_TEST(view_outlives_set_top)
{
	char *d = mkdir_sub("v1");
	char a[512], b[512], small[512];
	struct chain *c;
	struct chain_view *v;
	struct img *top, *bad;
	int fd;

	snprintf(a, sizeof(a), "%s/a.raw", d);
	snprintf(b, sizeof(b), "%s/b.raw", d);
	snprintf(small, sizeof(small), "%s/small.raw", d);
	write_random(a, 1 << 20, 11);
	write_random(b, 1 << 20, 12);
	write_random(small, 65536, 13);
	ck_assert_int_eq(chain_open_file(a, NULL, &opts, &c), 0);
	v = chain_view_get(c);
	ck_assert_uint_eq(v->depth, 1);
	fd = v->layers[0].img->fd;

	/* refused: other size, nothing to drop */
	ck_assert_int_eq(img_open(small, NULL, false, &bad), 0);
	ck_assert_int_eq(chain_set_top(c, bad, 1), -EINVAL);
	img_unref(bad);
	ck_assert_int_eq(img_open(b, NULL, false, &top), 0);
	ck_assert_int_eq(chain_set_top(c, top, 2), -EINVAL);
	ck_assert_ptr_eq(c->layers[0].img, v->layers[0].img);

	/* b replaces a */
	ck_assert_int_eq(chain_set_top(c, top, 1), 0);
	img_unref(top);		/* the chain has its own reference */
	ck_assert_uint_eq(c->depth, 1);
	ck_assert_ptr_eq(c->layers[0].img, top);
	assert_view_equals(v, a);
	assert_chain_equals(c, b);
	ck_assert_int_ne(fcntl(fd, F_GETFD), -1);	/* a is still open */
	chain_view_put(v);
	errno = 0;
	ck_assert_int_eq(fcntl(fd, F_GETFD), -1);	/* closed with the view */
	ck_assert_int_eq(errno, EBADF);
	chain_free(c);
	free(d);
}
END_TEST

/* drop 0: a new layer over the chain (the live checkpoint's switch). */
START_TEST(set_top_pushes_a_layer)
{
	char *d = mkdir_sub("v2");
	char a[512], o[512];
	struct chain *c;
	struct chain_view *v;
	struct img *top, *base;

	snprintf(a, sizeof(a), "%s/a.raw", d);
	snprintf(o, sizeof(o), "%s/over.qcow2", d);
	write_random(a, 1 << 20, 21);
	ck_assert_int_eq(fx_system("cd %s && qemu-img create -q -f qcow2 -F raw "
				   "-b a.raw over.qcow2 && qemu-io -f qcow2 -c "
				   "'write -P 0x5a 4096 8192' over.qcow2 >/dev/null && "
				   "qemu-img convert -O raw over.qcow2 over.flat",
				   d), 0);
	ck_assert_int_eq(chain_open_file(a, NULL, &opts, &c), 0);
	base = c->layers[0].img;
	ck_assert_int_eq(img_open(o, NULL, false, &top), 0);
	ck_assert_int_eq(chain_set_top(c, top, 0), 0);
	img_unref(top);
	ck_assert_uint_eq(c->depth, 2);
	v = chain_view_get(c);
	ck_assert_ptr_eq(v->layers[0].img, top);
	ck_assert_ptr_eq(v->layers[1].img, base);
	ck_assert_ptr_null(v->retired);		/* a read-only chain */
	chain_view_put(v);
	snprintf(o, sizeof(o), "%s/over.flat", d);
	assert_chain_equals(c, o);
	chain_free(c);
	free(d);
}
END_TEST

/*
 * A test driver over a raw file whose ->write waits until the test lets
 * it go: a write in flight, holding the chain's lock shared.
 */
static struct {
	pthread_mutex_t m;
	pthread_cond_t cv;
	bool entered, release;
} slow = { PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER, false,
	   false };

static int slow_open(struct img *img)
{
	img->size = img->file_size;
	return 0;
}

static int slow_map(struct img *img, uint64_t off, uint64_t len,
		    struct img_extent *ext)
{
	(void)off;
	ext->type = IMG_EXT_DATA;
	ext->len = len;
	ext->fd = img->fd;
	ext->host_off = off;
	return 0;
}

static int slow_write(struct img *img, const void *buf, size_t n,
		      uint64_t off, const struct img_below *below)
{
	(void)below;
	pthread_mutex_lock(&slow.m);
	slow.entered = true;
	pthread_cond_broadcast(&slow.cv);
	while (!slow.release)
		pthread_cond_wait(&slow.cv, &slow.m);
	pthread_mutex_unlock(&slow.m);
	return pwrite_full(img->fd, buf, n, off);
}

static int slow_flush(struct img *img)
{
	return fdatasync(img->fd) < 0 ? -errno : 0;
}

static const struct img_driver slow_driver = {
	.name = "slow",
	.open = slow_open,
	.map_extent = slow_map,
	.write = slow_write,
	.flush = slow_flush,
};

struct job {
	struct chain *c;
	struct img *top;
	struct chain_view *v;
	int r;
	bool done;		/* atomic */
};

static void *job_write(void *arg)
{
	struct job *j = arg;
	uint8_t buf[4096];

	memset(buf, 0x77, sizeof(buf));
	j->r = chain_pwrite(j->c, buf, sizeof(buf), 8192);
	__atomic_store_n(&j->done, true, __ATOMIC_SEQ_CST);
	return NULL;
}

static void *job_set_top(void *arg)
{
	struct job *j = arg;

	j->r = chain_set_top(j->c, j->top, 1);
	__atomic_store_n(&j->done, true, __ATOMIC_SEQ_CST);
	return NULL;
}

static void *job_view(void *arg)
{
	struct job *j = arg;

	j->v = chain_view_get(j->c);
	__atomic_store_n(&j->done, true, __ATOMIC_SEQ_CST);
	return NULL;
}

static bool job_done(struct job *j)
{
	return __atomic_load_n(&j->done, __ATOMIC_SEQ_CST);
}

/*
 * A shape change takes the lock exclusive: it waits for a write in flight,
 * and while it waits, new readers wait behind it (writer preference);
 * a view held from before reads on, without the lock.
 */
START_TEST(set_top_waits_for_writes)
{
	char *d = mkdir_sub("v3");
	char p1[512], p2[512];
	struct chainset *cs;
	struct chain_opts wo = opts;
	struct chain *c;
	struct chain_view *v0;
	struct img *slowtop, *newtop;
	struct job w = { 0 }, st = { 0 }, rd = { 0 };
	pthread_t tw, ts, tr;
	uint8_t buf[4096];

	snprintf(p1, sizeof(p1), "%s/slow.raw", d);
	snprintf(p2, sizeof(p2), "%s/new.raw", d);
	write_random(p1, 1 << 20, 31);
	write_random(p2, 1 << 20, 32);
	ck_assert_int_eq(fx_system("cd %s && qemu-img create -q -f qcow2 "
				   "disk.qcow2 1M", d), 0);
	wo.writable = true;
	wo.rw_base = "disk";	/* a lone base: written in place only if named */
	ck_assert_int_eq(chainset_scan(d, &wo, &cs), 0);
	c = find_chain(cs, "disk");
	ck_assert_ptr_nonnull(c);
	ck_assert(c->writable);

	/* a read-only top cannot replace a writable one */
	ck_assert_int_eq(img_open(p2, &raw_driver, false, &newtop), 0);
	ck_assert_int_eq(chain_set_top(c, newtop, 1), -EROFS);
	img_unref(newtop);

	ck_assert_int_eq(img_open(p1, &slow_driver, true, &slowtop), 0);
	ck_assert_int_eq(chain_set_top(c, slowtop, 1), 0);
	ck_assert_int_eq(img_open(p2, &raw_rw_driver, true, &newtop), 0);
	v0 = chain_view_get(c);

	w.c = c;
	ck_assert_int_eq(pthread_create(&tw, NULL, job_write, &w), 0);
	pthread_mutex_lock(&slow.m);
	while (!slow.entered)
		pthread_cond_wait(&slow.cv, &slow.m);
	pthread_mutex_unlock(&slow.m);

	st.c = c;
	st.top = newtop;
	ck_assert_int_eq(pthread_create(&ts, NULL, job_set_top, &st), 0);
	usleep(100000);
	ck_assert(!job_done(&st));	/* waits for the write */
	rd.c = c;
	ck_assert_int_eq(pthread_create(&tr, NULL, job_view, &rd), 0);
	usleep(100000);
	ck_assert(!job_done(&rd));	/* waits behind the shape change */
	ck_assert(!job_done(&st));
	/* a view from before reads on: no lock */
	assert_view_equals(v0, p1);

	pthread_mutex_lock(&slow.m);
	slow.release = true;
	pthread_cond_broadcast(&slow.cv);
	pthread_mutex_unlock(&slow.m);
	pthread_join(tw, NULL);
	pthread_join(ts, NULL);
	pthread_join(tr, NULL);
	ck_assert_int_eq(w.r, 0);
	ck_assert_int_eq(st.r, 0);
	ck_assert_ptr_eq(rd.v->layers[0].img, newtop);
	ck_assert_ptr_null(rd.v->retired);	/* flushed by chain_set_top */
	chain_view_put(rd.v);
	/* the write landed in the old top, before the switch */
	ck_assert_int_eq(chain_view_pread(v0, buf, sizeof(buf), 8192), 0);
	for (size_t i = 0; i < sizeof(buf); i++)
		ck_assert_uint_eq(buf[i], 0x77);
	chain_view_put(v0);
	img_unref(slowtop);
	/* the new top takes writes */
	memset(buf, 0x66, sizeof(buf));
	ck_assert_int_eq(chain_pwrite(c, buf, 1000, 5), 0);
	ck_assert_int_eq(chain_flush(c), 0);
	img_unref(newtop);
	chainset_free(cs);
	{
		uint8_t *got;
		size_t len;

		got = fx_read_file(p2, &len);
		ck_assert_ptr_nonnull(got);
		for (size_t i = 5; i < 1005; i++)
			ck_assert_uint_eq(got[i], 0x66);
		free(got);
	}
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
	tcase_add_test(tc, depth_limit_any_order);
	tcase_add_test(tc, layer_rules_warn_or_refuse);
	tcase_add_test(tc, backing_format_is_honoured);
	suite_add_tcase(s, tc);
	tc = tcase_create("shape");
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, view_outlives_set_top);
	tcase_add_test(tc, set_top_pushes_a_layer);
	tcase_add_test(tc, set_top_waits_for_writes);
	suite_add_tcase(s, tc);
	return s;
}
