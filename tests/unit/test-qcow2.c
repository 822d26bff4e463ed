// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * test-qcow2.c: the qcow2 and qcow (v1) drivers.
 *
 * Images are made at test time with qemu-img/qemu-io and every disk is
 * compared byte for byte with `qemu-img convert -t unsafe -O raw`, read through a
 * small layer walker (UNALLOC asks the next image, a shorter backing file
 * reads as zeros).  Allocation is also compared with `qemu-img map`.  The
 * shared vectors are checked against their recorded flattened sha256.
 * Damaged images are made by patching one field of a good one; each must
 * fail with one log line and the right errno, also under ASan/UBSan.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "chain.h"
#include "endian-io.h"
#include "fixtures.h"
#include "img.h"
#include "io.h"
#include "log.h"
#include "qcow2.h"
#include "registry.h"

/* ------------------------------------------------------------------ */
/* log capture: every problem must be one line                         */

static pthread_mutex_t cap_lock = PTHREAD_MUTEX_INITIALIZER;
static char cap_text[16384];
static unsigned cap_errors, cap_warnings;

static void cap_sink(enum log_level lvl, const char *msg)
{
	pthread_mutex_lock(&cap_lock);
	if (lvl == LOG_LVL_ERR)
		cap_errors++;
	else if (lvl == LOG_LVL_WARN)
		cap_warnings++;
	if (lvl <= LOG_LVL_WARN) {
		size_t used = strlen(cap_text);

		snprintf(cap_text + used, sizeof(cap_text) - used, "%s\n", msg);
		fprintf(stderr, "# log: %s\n", msg);
	}
	pthread_mutex_unlock(&cap_lock);
}

static void cap_start(void)
{
	cap_text[0] = '\0';
	cap_errors = cap_warnings = 0;
	log_set_sink(cap_sink);
}

/* ------------------------------------------------------------------ */
/* tools                                                               */

static bool have_qemu(void)
{
	if (fx_system("command -v qemu-img >/dev/null && command -v qemu-io >/dev/null") == 0)
		return true;
	if (getenv("CI"))
		ck_abort_msg("qemu-img/qemu-io are required under CI");
	fprintf(stderr, "# skip: qemu-img/qemu-io not found\n");
	return false;
}

static void run_v(const char *dir, const char *fmt, va_list ap)
{
	char *cmd;
	int r;

	ck_assert_int_ge(vasprintf(&cmd, fmt, ap), 0);
	r = fx_system("cd '%s' && { %s; } >/dev/null", dir, cmd);
	ck_assert_msg(r == 0, "command failed (%d): %s", r, cmd);
	free(cmd);
}

/* Run a shell command in the private directory; it must succeed. */
static void __attribute__((format(printf, 1, 2))) run(const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	run_v(fx_tmpdir(), fmt, ap);
	va_end(ap);
}

/* The same in another directory. */
static void __attribute__((format(printf, 2, 3)))
run_in(const char *dir, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	run_v(dir, fmt, ap);
	va_end(ap);
}

static uint64_t file_size(const char *path)
{
	struct stat st;

	ck_assert_int_eq(stat(path, &st), 0);
	return (uint64_t)st.st_size;
}

static uint64_t peek_be64(const char *path, uint64_t off)
{
	uint8_t b[8];
	int fd = open(path, O_RDONLY);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pread_full(fd, b, 8, off), 0);
	close(fd);
	return get_be64(b);
}

static uint32_t peek_be32(const char *path, uint64_t off)
{
	uint8_t b[4];
	int fd = open(path, O_RDONLY);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pread_full(fd, b, 4, off), 0);
	close(fd);
	return get_be32(b);
}

static void poke_be64(const char *path, uint64_t off, uint64_t v)
{
	uint8_t b[8];

	put_be64(b, v);
	fx_pwrite(path, b, 8, off);
}

static void poke_be32(const char *path, uint64_t off, uint32_t v)
{
	uint8_t b[4];

	put_be32(b, v);
	fx_pwrite(path, b, 4, off);
}

static void poke_u8(const char *path, uint64_t off, uint8_t v)
{
	fx_pwrite(path, &v, 1, off);
}

/* ------------------------------------------------------------------ */
/* the layer walker: top first, as the chain layer reads                */

#define MAX_LAYERS 16

struct stack {
	struct img *l[MAX_LAYERS];
	unsigned n;
};

static int stack_read_at(const struct stack *s, unsigned i, uint8_t *buf,
			 size_t n, uint64_t off)
{
	while (n) {
		struct img_extent e;
		size_t c;
		int r;

		if (i >= s->n || off >= s->l[i]->size) {
			memset(buf, 0, n);	/* bottom, or a shorter parent */
			return 0;
		}
		r = img_map(s->l[i], off, MIN((uint64_t)n,
					      s->l[i]->size - off), &e);
		if (r < 0)
			return r;
		c = (size_t)MIN((uint64_t)n, e.len);
		switch (e.type) {
		case IMG_EXT_DATA:
			if (e.host_off == IMG_HOST_NONE)
				r = s->l[i]->drv->read(s->l[i], buf, c, off);
			else
				r = pread_full(e.fd, buf, c, e.host_off);
			break;
		case IMG_EXT_ZERO:
			memset(buf, 0, c);
			r = 0;
			break;
		case IMG_EXT_UNALLOC:
			r = stack_read_at(s, i + 1, buf, c, off);
			break;
		}
		if (r < 0)
			return r;
		buf += c;
		n -= c;
		off += c;
	}
	return 0;
}

static int stack_read(const struct stack *s, void *buf, size_t n,
		      uint64_t off)
{
	return stack_read_at(s, 0, buf, n, off);
}

/* Open files of the private directory, top first, NULL-terminated. */
static void stack_open_dir(struct stack *s, const char *dir,
			   const char *const *names)
{
	memset(s, 0, sizeof(*s));
	for (; *names; names++) {
		char *p;
		int r;

		ck_assert_uint_lt(s->n, MAX_LAYERS);
		ck_assert_int_ge(asprintf(&p, "%s/%s", dir, *names), 0);
		r = img_open(p, NULL, false, &s->l[s->n]);
		ck_assert_msg(r == 0, "open %s: %s", p, strerror(-r));
		free(p);
		s->n++;
	}
}

static void stack_open(struct stack *s, const char *const *names)
{
	stack_open_dir(s, fx_tmpdir(), names);
}

static void stack_close(struct stack *s)
{
	for (unsigned i = 0; i < s->n; i++)
		img_unref(s->l[i]);
	s->n = 0;
}

/* Each layer's parent() names the next layer's file. */
static void check_parents(const struct stack *s, const char *const *names,
			  const char *const *formats)
{
	for (unsigned i = 0; i < s->n; i++) {
		struct img_parent p;
		const char *base;
		int r;

		memset(&p, 0, sizeof(p));
		r = s->l[i]->drv->parent ? s->l[i]->drv->parent(s->l[i], &p) :
					   0;
		if (i + 1 == s->n) {
			/* the bottom may still name a parent (vectors) */
			img_parent_clear(&p);
			continue;
		}
		ck_assert_int_eq(r, 1);
		ck_assert_uint_ge(p.nrefs, 1);
		ck_assert_str_eq(p.refs[0].what, "backing file");
		base = strrchr(p.refs[0].path, '/');
		base = base ? base + 1 : p.refs[0].path;
		ck_assert_str_eq(base, names[i + 1]);
		ck_assert_int_eq(p.id_kind, IMG_ID_NONE);
		if (formats && formats[i])
			ck_assert_str_eq(p.format, formats[i]);
		img_parent_clear(&p);
	}
}

/* Compare the stack with `qemu-img convert -t unsafe -O raw top`. */
static void check_against_qemu(const struct stack *s, const char *top)
{
	char *ref = fx_path("ref.raw");
	uint64_t size, off;
	size_t bs = 1 << 20;
	uint8_t *a = malloc(bs), *b = malloc(bs);
	uint32_t seed = 12345;
	int fd;

	ck_assert_ptr_nonnull(a);
	ck_assert_ptr_nonnull(b);
	run("qemu-img convert -t unsafe -O raw '%s' ref.raw", top);
	size = file_size(ref);
	ck_assert_uint_eq(s->l[0]->size, size);
	fd = open(ref, O_RDONLY);
	ck_assert_int_ge(fd, 0);
	/* 1: sequential 1 MiB reads */
	for (off = 0; off < size; off += bs) {
		size_t n = (size_t)MIN((uint64_t)bs, size - off);

		ck_assert_int_eq(stack_read(s, a, n, off), 0);
		ck_assert_int_eq(pread_full(fd, b, n, off), 0);
		ck_assert_msg(!memcmp(a, b, n), "%s differs from qemu in the MiB at %llu",
			      top, (unsigned long long)off);
	}
	/* 2: odd offsets and lengths, both sides of every boundary */
	for (unsigned i = 0; i < 300; i++) {
		size_t n;

		seed = seed * 1103515245u + 12345u;
		off = ((uint64_t)seed * 2654435761u) % size;
		seed = seed * 1103515245u + 12345u;
		n = 1 + (seed >> 8) % 300000;
		n = (size_t)MIN((uint64_t)n, size - off);
		ck_assert_int_eq(stack_read(s, a, n, off), 0);
		ck_assert_int_eq(pread_full(fd, b, n, off), 0);
		ck_assert_msg(!memcmp(a, b, n), "%s differs from qemu at %llu+%zu",
			      top, (unsigned long long)off, n);
	}
	close(fd);
	unlink(ref);
	free(ref);
	free(a);
	free(b);
}

/*
 * The lead's resolver (chain_open_file) finds the same parents and reads
 * the same bytes as qemu.
 */
static void check_chain_against_qemu(const char *top, unsigned depth)
{
	struct chain_opts o = { 0 };
	struct chain *c = NULL;
	char *path = fx_path(top), *ref = fx_path("ref.raw");
	size_t bs = 1 << 20;
	uint8_t *a = malloc(bs), *b = malloc(bs);
	uint64_t size;
	int fd, r;

	r = chain_open_file(path, NULL, &o, &c);
	ck_assert_msg(r == 0, "chain_open_file %s: %s", top, strerror(-r));
	ck_assert_uint_eq(c->depth, depth);
	run("qemu-img convert -t unsafe -O raw '%s' ref.raw", top);
	size = file_size(ref);
	ck_assert_uint_eq(c->size, size);
	fd = open(ref, O_RDONLY);
	ck_assert_int_ge(fd, 0);
	for (uint64_t off = 0; off < size; off += bs) {
		size_t n = (size_t)MIN((uint64_t)bs, size - off);

		ck_assert_int_eq(chain_pread(c, a, n, off), 0);
		ck_assert_int_eq(pread_full(fd, b, n, off), 0);
		ck_assert_msg(!memcmp(a, b, n), "chain %s differs at %llu", top,
			      (unsigned long long)off);
	}
	close(fd);
	unlink(ref);
	chain_free(c);
	free(a);
	free(b);
	free(path);
	free(ref);
}

/*
 * Compare one image's map with `qemu-img map --output=json` (no backing):
 * data -> DATA, zero without data -> ZERO, not present -> UNALLOC.
 */
static void check_map_against_qemu(struct img *img, const char *name)
{
	char *list = fx_path("map.txt");
	FILE *f;
	unsigned long long start, len;
	int present, zero, data, nlines = 0;

	run("qemu-img map --output=json '%s' | python3 -c '"
	    "import json,sys\n"
	    "for e in json.load(sys.stdin): print(e[\"start\"], e[\"length\"], int(e[\"present\"]), int(e[\"zero\"]), int(e[\"data\"]))"
	    "' > map.txt", name);
	f = fopen(list, "r");
	ck_assert_ptr_nonnull(f);
	while (fscanf(f, "%llu %llu %d %d %d", &start, &len, &present, &zero,
		      &data) == 5) {
		enum img_ext_type want = !present ? IMG_EXT_UNALLOC :
					 data ? IMG_EXT_DATA : IMG_EXT_ZERO;
		uint64_t off = start, end = start + len;

		nlines++;
		while (off < end) {
			struct img_extent e;

			ck_assert_int_eq(img_map(img, off, end - off, &e), 0);
			ck_assert_msg(e.type == want, "%s: map at %llu: type %d, qemu says %d",
				      name, (unsigned long long)off, e.type,
				      want);
			off += e.len;
		}
	}
	ck_assert_int_gt(nlines, 0);
	fclose(f);
	free(list);
}

/* sha256 of the flattened stack (or, with c, of the chain), hex */
static void disk_sha256(const struct stack *s, struct chain *c, char out[65])
{
	char *sum = fx_path("sum.txt"), *cmd;
	size_t bs = 4 << 20;
	uint8_t *buf = malloc(bs);
	uint64_t size = c ? c->size : s->l[0]->size;
	FILE *p, *f;

	ck_assert_ptr_nonnull(buf);
	/* openssl uses the CPU's SHA extensions; sha256sum is 5x slower */
	ck_assert_int_ge(asprintf(&cmd, "{ openssl dgst -sha256 -r 2>/dev/null || sha256sum; } > '%s'",
				  sum), 0);
	p = popen(cmd, "w");
	ck_assert_ptr_nonnull(p);
	for (uint64_t off = 0; off < size; off += bs) {
		size_t n = (size_t)MIN((uint64_t)bs, size - off);

		if (c)
			ck_assert_int_eq(chain_pread(c, buf, n, off), 0);
		else
			ck_assert_int_eq(stack_read(s, buf, n, off), 0);
		ck_assert_uint_eq(fwrite(buf, 1, n, p), n);
	}
	ck_assert_int_eq(pclose(p), 0);
	f = fopen(sum, "r");
	ck_assert_ptr_nonnull(f);
	ck_assert_int_eq(fscanf(f, "%64s", out), 1);
	fclose(f);
	free(cmd);
	free(sum);
	free(buf);
}

/* ------------------------------------------------------------------ */
/* pure decoder: a real v3 header, one damaged field per case           */

static const uint8_t good_v3[112] = {
	'Q', 'F', 'I', 0xfb, 0, 0, 0, 3,		/* magic, version */
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,		/* no backing file */
	0, 0, 0, 16,					/* cluster_bits */
	0, 0, 0, 0, 0x01, 0, 0, 0,			/* size 16 MiB */
	0, 0, 0, 0, 0, 0, 0, 1,				/* crypt, l1_size */
	0, 0, 0, 0, 0, 0x03, 0, 0,			/* l1 offset */
	0, 0, 0, 0, 0, 0x01, 0, 0,			/* refcount table */
	0, 0, 0, 1, 0, 0, 0, 0,				/* clusters, nb_snap */
	0, 0, 0, 0, 0, 0, 0, 0,				/* snapshots_offset */
	0, 0, 0, 0, 0, 0, 0, 0,				/* incompatible */
	0, 0, 0, 0, 0, 0, 0, 0,				/* compatible */
	0, 0, 0, 0, 0, 0, 0, 0,				/* autoclear */
	0, 0, 0, 4, 0, 0, 0, 112,			/* refcount order, hlen */
	0, 0, 0, 0, 0, 0, 0, 0,				/* compression type */
};

START_TEST(decode_good)
{
	struct qcow2_header h;

	ck_assert_int_eq(qcow2_header_decode("t", good_v3, sizeof(good_v3), &h),
			 0);
	ck_assert_uint_eq(h.version, 3);
	ck_assert_uint_eq(h.cluster_bits, 16);
	ck_assert_uint_eq(h.size, 16u << 20);
	ck_assert_uint_eq(h.l1_size, 1);
	ck_assert_uint_eq(h.l1_table_offset, 0x30000);
	ck_assert_uint_eq(h.refcount_table_offset, 0x10000);
	ck_assert_uint_eq(h.refcount_table_clusters, 1);
	ck_assert_uint_eq(h.refcount_order, 4);
	ck_assert_uint_eq(h.header_length, 112);
	ck_assert_uint_eq(h.compression_type, 0);
}
END_TEST

static const struct {
	const char *what;
	size_t off, width;	/* width 0: truncate the buffer to off */
	uint64_t value;
	int err;
} damage[] = {
	{ "magic", 0, 1, 'X', -EINVAL },
	{ "version 1 (qcow)", 4, 4, 1, -EINVAL },
	{ "version 4", 4, 4, 4, -ENOTSUP },
	{ "cluster_bits 8", 20, 4, 8, -EUCLEAN },
	{ "cluster_bits 22", 20, 4, 22, -ENOTSUP },
	{ "crypt_method aes", 32, 4, 1, -ENOTSUP },
	{ "crypt_method luks", 32, 4, 2, -ENOTSUP },
	{ "header_length 96", 100, 4, 96, -EUCLEAN },
	{ "header_length past the cluster", 100, 4, 65544, -EUCLEAN },
	{ "refcount_order 7", 96, 4, 7, -EUCLEAN },
	{ "short v3 header", 100, 0, 0, -EUCLEAN },
	{ "short buffer", 6, 0, 0, -EINVAL },
};

START_TEST(decode_damaged)
{
	uint8_t buf[sizeof(good_v3)];
	size_t len = sizeof(buf);
	struct qcow2_header h;

	memcpy(buf, good_v3, sizeof(buf));
	switch (damage[_i].width) {
	case 0:
		len = damage[_i].off;
		break;
	case 1:
		buf[damage[_i].off] = (uint8_t)damage[_i].value;
		break;
	case 4:
		put_be32(buf + damage[_i].off, (uint32_t)damage[_i].value);
		break;
	}
	cap_start();
	ck_assert_msg(qcow2_header_decode("t", buf, len, &h) == damage[_i].err,
		      "%s", damage[_i].what);
	/* not-this-format is silent; everything else is one line */
	ck_assert_uint_eq(cap_errors, damage[_i].err == -EINVAL ? 0 : 1);
	if (cap_errors)
		ck_assert_msg(!strncmp(cap_text, "qcow2: t: ", 10), "%s",
			      cap_text);
}
END_TEST

START_TEST(probe_scores)
{
	uint8_t head[112];
	struct img_probe p = { .path = "t", .head = head, .head_len = 112,
			       .file_size = 1 << 20 };

	memcpy(head, good_v3, sizeof(head));
	ck_assert_int_eq(qcow2_driver.probe(&p), 100);
	ck_assert_int_eq(qcow_driver.probe(&p), 0);
	put_be32(head + 4, 2);
	ck_assert_int_eq(qcow2_driver.probe(&p), 100);
	put_be32(head + 4, 1);
	ck_assert_int_eq(qcow2_driver.probe(&p), 0);
	ck_assert_int_eq(qcow_driver.probe(&p), 100);
	put_be32(head + 4, 4);
	ck_assert_int_eq(qcow2_driver.probe(&p), 0);
	ck_assert_int_eq(qcow_driver.probe(&p), 0);
	p.head_len = 6;
	ck_assert_int_eq(qcow2_driver.probe(&p), 0);
}
END_TEST

/* ------------------------------------------------------------------ */
/* single images made by qemu                                          */

/* writes at odd offsets, zeroes, discards: used by every layout */
#define IO_ODD \
	"-c 'write -P 0x11 0 65536' -c 'write -P 0x22 1000001 123457' " \
	"-c 'write -P 0x33 3145727 2' -c 'write -P 0x44 4194304 1048576' " \
	"-c 'write -z 4456448 65536' -c 'write -P 0x55 7340031 700001' " \
	"-c 'discard 4718592 65536' -c 'write -P 0x66 16776704 512'"

static const struct {
	const char *name, *opts, *io;
	const char *subtype;
} layouts[] = {
	{ "v2-64k", "compat=0.10", IO_ODD, "v2" },
	{ "v3-512", "cluster_size=512", IO_ODD, "v3" },
	{ "v3-4k", "cluster_size=4096", IO_ODD, "v3" },
	{ "v3-64k", "cluster_size=65536", IO_ODD, "v3" },
	{ "v3-2m", "cluster_size=2097152", IO_ODD, "v3" },
	{ "v3-zero", "cluster_size=65536",
	  "-c 'write -P 0x77 0 8M' -c 'write -z 65536 131072' "
	  "-c 'write -z -u 1048576 1048576' -c 'write -z 3000000 100000' "
	  "-c 'discard 6291456 65536'", "v3" },
	{ "extl2-64k", "extended_l2=on,cluster_size=65536",
	  IO_ODD " -c 'write -P 0x88 0x10800 0x800' -c 'write -z 0x21000 0x1000' "
	  "-c 'write -P 0x99 0x30100 100' -c 'write -P 0xaa 0x5ff00 0x200'",
	  "v3 extended_l2" },
	{ "extl2-2m", "extended_l2=on,cluster_size=2097152",
	  IO_ODD " -c 'write -z 2162688 65536'", "v3 extended_l2" },
	{ "extl2-zstd-comp", "extended_l2=on,compression_type=zstd",
	  "-c 'write -c -P 0x12 0 65536' -c 'write -P 0x13 0x30800 0x800' "
	  "-c 'write -c -P 0x14 0x100000 0x20000'", "v3 zstd extended_l2" },
	{ "v3-qemu-io-compressed", "cluster_size=4096",
	  "-c 'write -c -P 0x21 0 8192' -c 'write -P 0x22 8192 4096' "
	  "-c 'write -c -P 0x23 12288 4096' -c 'write -z 16384 4096'", "v3" },
};

START_TEST(layout_matches_qemu)
{
	const char *names[] = { "t.qcow2", NULL };
	struct stack s;

	if (!have_qemu())
		return;
	run("qemu-img create -q -f qcow2 -o %s t.qcow2 16M", layouts[_i].opts);
	run("qemu-io -t unsafe -f qcow2 %s t.qcow2", layouts[_i].io);
	cap_start();
	stack_open(&s, names);
	ck_assert_str_eq(s.l[0]->drv->name, "qcow2");
	ck_assert_str_eq(s.l[0]->subtype, layouts[_i].subtype);
	ck_assert_uint_eq(s.l[0]->sector_size, 512);
	check_against_qemu(&s, "t.qcow2");
	check_map_against_qemu(s.l[0], "t.qcow2");
	ck_assert_uint_eq(cap_errors + cap_warnings, 0);
	stack_close(&s);
}
END_TEST

static const struct {
	const char *name, *opts, *subtype;
} compressed[] = {
	{ "zlib-v2-64k", "-o compat=0.10", "v2" },
	{ "zlib-v3-512", "-o cluster_size=512", "v3" },
	{ "zlib-v3-4k", "-o cluster_size=4096", "v3" },
	{ "zlib-v3-2m", "-o cluster_size=2097152", "v3" },
	{ "zstd-v3-64k", "-o compression_type=zstd", "v3 zstd" },
	{ "zstd-v3-2m", "-o compression_type=zstd,cluster_size=2097152",
	  "v3 zstd" },
};

/* a raw source with text, random, runs and holes */
static void make_source_raw_in(const char *dir, const char *name,
			       uint64_t size)
{
	size_t n = 1 << 20;
	uint8_t *buf = malloc(n);
	char *p;
	int fd;

	ck_assert_int_ge(asprintf(&p, "%s/%s", dir, name), 0);
	fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);
	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(ftruncate(fd, (off_t)size), 0);
	close(fd);
	fx_fill_random(buf, n, 7);
	fx_pwrite(p, buf, n, 1 << 20);			/* incompressible */
	memset(buf, 0xa5, n);
	fx_pwrite(p, buf, n, 3 << 20);			/* compressible */
	for (size_t i = 0; i < n; i++)
		buf[i] = (uint8_t)(i / 512 % 2 ? 0 : i * 7);
	fx_pwrite(p, buf, n, 4 << 20);
	fx_pwrite(p, "first sector", 12, 0);
	fx_pwrite(p, "LAST-SECTOR!", 12, size - 512);
	free(buf);
	free(p);
}

static void make_source_raw(const char *name, uint64_t size)
{
	make_source_raw_in(fx_tmpdir(), name, size);
}

START_TEST(compressed_matches_qemu)
{
	const char *names[] = { "c.qcow2", NULL };
	struct stack s;
	struct img_extent e;
	uint8_t *a, *b;
	char *ref;
	int fd;

	if (!have_qemu())
		return;
	make_source_raw("src.raw", 8 << 20);
	run("qemu-img convert -t unsafe -c -O qcow2 %s src.raw c.qcow2",
	    compressed[_i].opts);
	cap_start();
	stack_open(&s, names);
	ck_assert_str_eq(s.l[0]->subtype, compressed[_i].subtype);
	/* the 0xa5 MiB is compressed: DATA served by ->read */
	ck_assert_int_eq(img_map(s.l[0], 3 << 20, 1 << 20, &e), 0);
	ck_assert_int_eq(e.type, IMG_EXT_DATA);
	ck_assert_uint_eq(e.host_off, IMG_HOST_NONE);
	check_against_qemu(&s, "c.qcow2");
	/* many small reads inside clusters (the per-thread cluster cache) */
	ref = fx_path("src.raw");
	fd = open(ref, O_RDONLY);
	a = malloc(4096);
	b = malloc(4096);
	for (uint64_t off = (3 << 20) - 3000; off < (5 << 20); off += 3001) {
		ck_assert_int_eq(stack_read(&s, a, 3001, off), 0);
		ck_assert_int_eq(pread_full(fd, b, 3001, off), 0);
		ck_assert(!memcmp(a, b, 3001));
	}
	close(fd);
	free(a);
	free(b);
	free(ref);
	ck_assert_uint_eq(cap_errors + cap_warnings, 0);
	stack_close(&s);
}
END_TEST

/* ------------------------------------------------------------------ */
/* chains                                                              */

START_TEST(chain_depth10)
{
	static const char *const opts[10] = {
		"cluster_size=65536", "cluster_size=4096",
		"cluster_size=512", "compat=0.10",
		"cluster_size=2097152", "extended_l2=on",
		"compression_type=zstd", "cluster_size=16384,extended_l2=on",
		"cluster_size=65536", "cluster_size=4096",
	};
	const char *names[11];
	const char *fmts[10];
	char namebuf[10][16];
	struct stack s;

	if (!have_qemu())
		return;
	for (int i = 0; i < 10; i++) {
		int j = 9 - i;	/* top first */

		snprintf(namebuf[i], sizeof(namebuf[i]), "c%d.qcow2", i);
		names[j] = namebuf[i];
		fmts[j] = "qcow2";
		if (i == 0)
			run("qemu-img create -q -f qcow2 -o %s c0.qcow2 32M",
			    opts[0]);
		else
			run("qemu-img create -q -f qcow2 -o %s -b c%d.qcow2 -F qcow2 c%d.qcow2 32M",
			    opts[i], i - 1, i);
		/* each layer: its own bytes at odd offsets, a compressed
		 * cluster, zeros over lower data, a discard */
		run("qemu-io -t unsafe -f qcow2 -c 'write -P %d %d %d' -c 'write -P %d %d %d' "
		    "-c 'write -z %d %d' -c 'write -P %d %d 1' %s c%d.qcow2",
		    0x10 + i, i * 3000001 + 17, 200000 + i * 4099,
		    0x20 + i, (31 << 20) - i * 65536 - 1, 4097,
		    (i * 2 + 1) << 20, 65536 + i * 512,
		    0x30 + i, 16777216 + i,
		    i >= 1 && i != 3 && i != 4 ?
		    "-c 'write -c -P 0x7e 29360128 2097152'" :
		    "-c 'discard 20971520 1048576'", i);
	}
	names[10] = NULL;
	fmts[9] = NULL;
	cap_start();
	stack_open(&s, names);
	check_parents(&s, names, fmts);
	check_against_qemu(&s, "c9.qcow2");
	ck_assert_uint_eq(cap_errors + cap_warnings, 0);
	stack_close(&s);
	check_chain_against_qemu("c9.qcow2", 10);
}
END_TEST

START_TEST(chain_over_raw)
{
	const char *names[] = { "top.qcow2", "base.img", NULL };
	const char *fmts[] = { "raw", NULL };
	struct stack s;

	if (!have_qemu())
		return;
	make_source_raw("base.img", 8 << 20);
	run("qemu-img create -q -f qcow2 -b base.img -F raw top.qcow2 8M");
	run("qemu-io -t unsafe -f qcow2 -c 'write -P 0x42 1000 5000' -c 'write -z 3145728 4096' top.qcow2");
	stack_open(&s, names);
	ck_assert_str_eq(s.l[1]->drv->name, "raw");
	check_parents(&s, names, fmts);
	check_against_qemu(&s, "top.qcow2");
	stack_close(&s);
	check_chain_against_qemu("top.qcow2", 2);
}
END_TEST

START_TEST(chain_short_backing)
{
	const char *names[] = { "grown.qcow2", "small.qcow2", NULL };
	struct stack s;
	uint8_t buf[4096];

	if (!have_qemu())
		return;
	run("qemu-img create -q -f qcow2 small.qcow2 8M");
	run("qemu-io -t unsafe -f qcow2 -c 'write -P 0x61 0 8M' small.qcow2");
	run("qemu-img create -q -f qcow2 -b small.qcow2 -F qcow2 grown.qcow2 24M");
	run("qemu-io -t unsafe -f qcow2 -c 'write -P 0x62 8387000 9000' -c 'write -P 0x63 20M 4096' grown.qcow2");
	stack_open(&s, names);
	check_against_qemu(&s, "grown.qcow2");
	/* past the backing file's end: zeros, not an error */
	ck_assert_int_eq(stack_read(&s, buf, sizeof(buf), 12 << 20), 0);
	for (size_t i = 0; i < sizeof(buf); i++)
		ck_assert_uint_eq(buf[i], 0);
	stack_close(&s);
	check_chain_against_qemu("grown.qcow2", 2);
}
END_TEST

START_TEST(chain_v1)
{
	const char *names[] = { "top.qcow", "base.qcow", NULL };
	const char *names2[] = { "v1c.qcow", NULL };
	const char *names3[] = { "v1.qcow", NULL };
	struct stack s;
	struct img_extent e;

	if (!have_qemu())
		return;
	run("qemu-img create -q -f qcow base.qcow 8M");
	run("qemu-io -t unsafe -f qcow -c 'write -P 0x11 0 2M' -c 'write -P 0x12 5000000 3333' base.qcow");
	run("qemu-img create -q -f qcow -b base.qcow -F qcow top.qcow 8M");
	run("qemu-io -t unsafe -f qcow -c 'write -P 0x22 4097 3000' -c 'write -P 0x23 7M 1M' top.qcow");
	cap_start();
	stack_open(&s, names);
	ck_assert_str_eq(s.l[0]->drv->name, "qcow");
	ck_assert_str_eq(s.l[0]->subtype, "v1");
	check_parents(&s, names, NULL);
	check_against_qemu(&s, "top.qcow");
	stack_close(&s);
	check_chain_against_qemu("top.qcow", 2);

	make_source_raw("src.raw", 8 << 20);
	/* qemu-img 7.2 exits 1 after writing a compressed qcow (the file is
	 * complete: qemu's own convert -O raw of it below is the oracle) */
	run("qemu-img convert -t unsafe -c -O qcow src.raw v1c.qcow || test -s v1c.qcow");
	stack_open(&s, names2);
	ck_assert_int_eq(img_map(s.l[0], 3 << 20, 4096, &e), 0);
	ck_assert_int_eq(e.type, IMG_EXT_DATA);
	ck_assert_uint_eq(e.host_off, IMG_HOST_NONE);
	check_against_qemu(&s, "v1c.qcow");
	check_map_against_qemu(s.l[0], "v1c.qcow");
	stack_close(&s);

	run("qemu-img convert -t unsafe -O qcow src.raw v1.qcow");
	stack_open(&s, names3);
	check_against_qemu(&s, "v1.qcow");
	check_map_against_qemu(s.l[0], "v1.qcow");
	stack_close(&s);
	ck_assert_uint_eq(cap_errors + cap_warnings, 0);
}
END_TEST

/* ------------------------------------------------------------------ */
/* parent(), data files, snapshots                                     */

static const struct {
	const char *backing, *qemu_fmt, *ours;
	enum img_ref_kind kind;
} backings[] = {
	{ "b.qcow2", "qcow2", "qcow2", IMG_REF_RELATIVE },
	{ "sub/b.img", "raw", "raw", IMG_REF_RELATIVE },
	{ "b.vhd", "vpc", "vhd", IMG_REF_RELATIVE },
	{ "/abs/b.vhdx", "vhdx", "vhdx", IMG_REF_ABSOLUTE },
	{ "b.qcow", "qcow", "qcow", IMG_REF_RELATIVE },
	{ "b.vmdk", "vmdk", NULL, IMG_REF_RELATIVE },
};

START_TEST(parent_names_and_formats)
{
	struct img_parent p;
	struct img *img;
	char *path = fx_path("t.qcow2");

	if (!have_qemu())
		return;
	run("qemu-img create -q -f qcow2 -u -b '%s' -F %s t.qcow2 4M",
	    backings[_i].backing, backings[_i].qemu_fmt);
	cap_start();
	ck_assert_int_eq(img_open(path, NULL, false, &img), 0);
	/* an unknown backing format is a warning, not an error */
	ck_assert_uint_eq(cap_warnings, backings[_i].ours ? 0 : 1);
	memset(&p, 0, sizeof(p));
	ck_assert_int_eq(img->drv->parent(img, &p), 1);
	ck_assert_uint_eq(p.nrefs, 1);
	ck_assert_int_eq(p.refs[0].kind, backings[_i].kind);
	ck_assert_str_eq(p.refs[0].path, backings[_i].backing);
	if (backings[_i].ours)
		ck_assert_str_eq(p.format, backings[_i].ours);
	else
		ck_assert_ptr_null(p.format);
	img_parent_clear(&p);
	img_unref(img);
	free(path);
}
END_TEST

START_TEST(no_parent)
{
	struct img_parent p;
	struct img *img;
	char *path = fx_path("t.qcow2");

	if (!have_qemu())
		return;
	run("qemu-img create -q -f qcow2 t.qcow2 4M");
	ck_assert_int_eq(img_open(path, NULL, false, &img), 0);
	memset(&p, 0, sizeof(p));
	ck_assert_int_eq(img->drv->parent(img, &p), 0);
	ck_assert_uint_eq(p.nrefs, 0);
	img_unref(img);
	free(path);
}
END_TEST

START_TEST(external_data_file)
{
	const char *names[] = { "d.qcow2", NULL };
	static const char *const raws[] = { "off", "on" };
	struct stack s;

	if (!have_qemu())
		return;
	for (int i = 0; i < 2; i++) {
		run("rm -f d.qcow2 d.data && qemu-img create -q -f qcow2 -o data_file=d.data,data_file_raw=%s d.qcow2 8M",
		    raws[i]);
		run("qemu-io -t unsafe -f qcow2 -c 'write -P 0x31 0 65536' -c 'write -P 0x32 3000001 77777' -c 'write -z 6M 64k' d.qcow2");
		stack_open(&s, names);
		ck_assert_str_eq(s.l[0]->subtype, "v3 data_file");
		check_against_qemu(&s, "d.qcow2");
		stack_close(&s);
	}
}
END_TEST

START_TEST(snapshots_listed)
{
	const char *names[] = { "s.qcow2", NULL };
	struct qcow2_snapshot *list;
	struct stack s;
	size_t n;
	time_t now = time(NULL);

	if (!have_qemu())
		return;
	run("qemu-img create -q -f qcow2 s.qcow2 4M");
	run("qemu-io -t unsafe -f qcow2 -c 'write -P 1 0 1M' s.qcow2");
	run("qemu-img snapshot -c first s.qcow2");
	run("qemu-io -t unsafe -f qcow2 -c 'write -P 2 512K 1M' s.qcow2");
	run("qemu-img snapshot -c 'second one' s.qcow2");
	run("qemu-io -t unsafe -f qcow2 -c 'write -P 3 3M 4096' s.qcow2");
	stack_open(&s, names);
	ck_assert_int_eq(qcow2_snapshot_list(s.l[0], &list, &n), 0);
	ck_assert_uint_eq(n, 2);
	ck_assert_str_eq(list[0].id, "1");
	ck_assert_str_eq(list[0].name, "first");
	ck_assert_str_eq(list[1].id, "2");
	ck_assert_str_eq(list[1].name, "second one");
	for (size_t i = 0; i < n; i++) {
		ck_assert_uint_eq(list[i].disk_size, 4 << 20);
		ck_assert_uint_eq(list[i].vm_state_size, 0);
		ck_assert_uint_ge(list[i].date_sec, (uint32_t)now - 3600);
		ck_assert_uint_le(list[i].date_sec, (uint32_t)now + 3600);
		ck_assert_uint_ne(list[i].l1_table_offset, 0);
	}
	qcow2_snapshot_list_free(list, n);
	/* only the active state is the disk */
	check_against_qemu(&s, "s.qcow2");
	stack_close(&s);
}
END_TEST

START_TEST(snapshot_list_needs_qcow2)
{
	struct qcow2_snapshot *list = NULL;
	struct img *img;
	size_t n = 7;
	uint8_t zero[4096] = { 0 };
	char *p = fx_write_file("r.img", zero, sizeof(zero));

	ck_assert_int_eq(img_open(p, NULL, false, &img), 0);
	ck_assert_int_eq(qcow2_snapshot_list(img, &list, &n), -EINVAL);
	ck_assert_uint_eq(n, 7);	/* untouched on failure */
	img_unref(img);
	ck_assert_int_eq(qcow2_snapshot_list(NULL, &list, &n), -EINVAL);
	free(p);
}
END_TEST

/* ------------------------------------------------------------------ */
/* the L2 cache under pressure and many threads                        */

struct reader_arg {
	const struct stack *s;
	const char *ref;
	unsigned seed;
	int failures;
};

static void *reader(void *opaque)
{
	struct reader_arg *a = opaque;
	uint64_t size = a->s->l[0]->size;
	uint8_t *x = malloc(70000), *y = malloc(70000);
	int fd = open(a->ref, O_RDONLY);
	unsigned seed = a->seed;

	for (int i = 0; i < 400 && x && y && fd >= 0; i++) {
		uint64_t off;
		size_t n;

		seed = seed * 1103515245u + 12345u;
		off = ((uint64_t)seed << 7) % size;
		seed = seed * 1103515245u + 12345u;
		n = (size_t)MIN((uint64_t)(1 + (seed >> 9) % 70000),
				size - off);
		if (stack_read(a->s, x, n, off) < 0 ||
		    pread_full(fd, y, n, off) < 0 || memcmp(x, y, n))
			a->failures++;
	}
	if (fd >= 0)
		close(fd);
	free(x);
	free(y);
	return NULL;
}

START_TEST(l2_cache_threads)
{
	const char *names[] = { "top.qcow2", "mid.qcow2", "base.qcow2", NULL };
	struct reader_arg args[6];
	pthread_t th[6];
	struct stack s;
	char *ref = fx_path("ref.raw");

	if (!have_qemu())
		return;
	/* 512-byte clusters: one L2 table covers 32 KiB, so 8 MiB needs
	 * 256 tables; the budget below holds about four */
	make_source_raw("src.raw", 8 << 20);
	run("qemu-img convert -t unsafe -O qcow2 -o cluster_size=512 src.raw base.qcow2");
	run("qemu-img create -q -f qcow2 -o cluster_size=512 -b base.qcow2 -F qcow2 mid.qcow2 8M");
	run("qemu-io -t unsafe -f qcow2 -c 'write -c -P 0x51 1M 64k' -c 'write -P 0x52 2000001 333333' -c 'write -z 5M 1M' mid.qcow2");
	run("qemu-img create -q -f qcow2 -o compression_type=zstd,cluster_size=4096 -b mid.qcow2 -F qcow2 top.qcow2 8M");
	run("qemu-io -t unsafe -f qcow2 -c 'write -c -P 0x61 3M 64k' -c 'write -P 0x62 6000001 3333' top.qcow2");
	run("qemu-img convert -t unsafe -O raw top.qcow2 ref.raw");
	stack_open(&s, names);
	qcow2_l2_cache_set_budget(4 * 600);
	for (int i = 0; i < 6; i++) {
		args[i] = (struct reader_arg){ &s, ref, 1000u + (unsigned)i, 0 };
		ck_assert_int_eq(pthread_create(&th[i], NULL, reader, &args[i]),
				 0);
	}
	for (int i = 0; i < 6; i++) {
		pthread_join(th[i], NULL);
		ck_assert_int_eq(args[i].failures, 0);
	}
	/* bounded: at most the budget plus what was pinned at the time */
	ck_assert_uint_le(qcow2_l2_cache_used(), 4 * 600 + 6 * 4200);
	check_against_qemu(&s, "top.qcow2");
	stack_close(&s);
	/* closing drops every table of the images */
	ck_assert_uint_eq(qcow2_l2_cache_used(), 0);
	qcow2_l2_cache_set_budget(QCOW2_L2_CACHE_DEFAULT);
	free(ref);
}
END_TEST

/* ------------------------------------------------------------------ */
/* shared vectors with recorded flattened sums                         */

static const struct {
	const char *dir;
	const char *files[4];	/* top first, compressed names */
	const char *aux;	/* another file the image needs */
	const char *sha;
	unsigned snapshots;
} vectors[] = {
	{ "gen-qemu-7.2", { "plain-v3.qcow2.xz" }, NULL,
	  "17a10523190eed69c4203aec8a63e74bf6391bffcb08805b79a09222b35e907f", 0 },
	{ "gen-qemu-7.2", { "plain-v2.qcow2.xz" }, NULL,
	  "17a10523190eed69c4203aec8a63e74bf6391bffcb08805b79a09222b35e907f", 0 },
	{ "gen-qemu-7.2", { "comp-zlib-v2.qcow2.xz" }, NULL,
	  "17a10523190eed69c4203aec8a63e74bf6391bffcb08805b79a09222b35e907f", 0 },
	{ "gen-qemu-7.2", { "comp-zlib-4k.qcow2.xz" }, NULL,
	  "17a10523190eed69c4203aec8a63e74bf6391bffcb08805b79a09222b35e907f", 0 },
	{ "gen-qemu-7.2", { "comp-zlib-2M.qcow2.xz" }, NULL,
	  "17a10523190eed69c4203aec8a63e74bf6391bffcb08805b79a09222b35e907f", 0 },
	{ "gen-qemu-7.2", { "comp-zstd-64k.qcow2.xz" }, NULL,
	  "17a10523190eed69c4203aec8a63e74bf6391bffcb08805b79a09222b35e907f", 0 },
	{ "gen-qemu-7.2", { "extl2.qcow2.xz" }, NULL,
	  "0a329e81bb9d42d53753e85011e80827b98dc17b1d6f33e303b7f90fb1aa1855", 0 },
	{ "gen-qemu-7.2", { "chain-mid.qcow2.xz", "chain-base.qcow2.xz" }, NULL,
	  "8ddd17ea8c88777a69ba2b09438cd53ce5f0f8618d0f6a001d07e3d64527f793", 0 },
	{ "gen-qemu-7.2", { "chain-top.qcow2", "chain-mid.qcow2.xz",
			    "chain-base.qcow2.xz" }, NULL,
	  "61e6e8df271e10152acf477731c84fea9ffeb961eac8443e53532d9cfd37a0c5", 0 },
	{ "gen-qemu-7.2", { "overlay-on-raw.qcow2.xz", "base.raw.xz" }, NULL,
	  "79b8f248c745755cb301dd304c2f82f87ec7ecf35d708b5860166c2f94acc879", 0 },
	{ "gen-qemu-7.2", { "overlay-grown.qcow2.xz", "chain-base.qcow2.xz" },
	  NULL,
	  "dea17e6e5884b2243fadd42b17667198633bd3beadc6dd96b5fe25425e8020fa", 0 },
	{ "dissect.hypervisor", { "basic.qcow2.gz" }, NULL,
	  "3c86a52ad19ebbe34acffb812d276817ddca56522eb72de2b984d70ffb20582f", 0 },
	{ "dissect.hypervisor", { "basic-zstd.qcow2.gz" }, NULL,
	  "3c86a52ad19ebbe34acffb812d276817ddca56522eb72de2b984d70ffb20582f", 0 },
	{ "dissect.hypervisor", { "data-file.qcow2.gz" }, "data-file.bin.gz",
	  "3c86a52ad19ebbe34acffb812d276817ddca56522eb72de2b984d70ffb20582f", 0 },
	{ "dissect.hypervisor", { "backing-chain-1.qcow2.gz",
				  "backing-chain-2.qcow2.gz",
				  "backing-chain-3.qcow2.gz" }, NULL,
	  "186334af67c1acb54b08ded0b6a419571000755d4c810c8b768a30281e2ab074", 0 },
	{ "dissect.hypervisor", { "snapshot.qcow2.gz" }, NULL,
	  "9acca8e8c22201155389f65abbf6bc9723edc7384ead80503839f49dcc56d767",
	  2 },
	{ "dfvfs", { "ext2.qcow2.xz" }, NULL,
	  "a6c2f0e39afe6c6ab432ca5465349fcefe8dc944398e97b2d957d3f89dbb5d80", 0 },
	{ "dfvfs", { "image.qcow2.xz" }, NULL,
	  "a9c0220b1dadd1812fc4bbe137f495d2c3b88c7b33b5a4de545d201fd31b3bc0", 0 },
	{ "dfvfs", { "vsstest.qcow2.xz" }, NULL,
	  "5cba558cfac0916cae697d2231dc1e17874aa262f2890f5236fb9c90b9610d0a", 0 },
	{ "dfvfs", { "windows_volume.qcow2.xz" }, NULL,
	  "44abe9deca9658f331a2bdba2deb53192d04f35d157a1fb3ba0597b03f0524f2", 0 },
	{ "encrypt-cloud-image", { "test.qcow2.xz" }, NULL,
	  "c1e139e78fe5b9eddf54b0ae9d21adf145365e8abcb8df8e575f36b8c24ec299", 0 },
};

/* Decompress (or copy) a vector into the private dir; its plain name. */
static char *vector_fetch(const char *dir, const char *file)
{
	char *rel, *src, *name = strdup(file);
	size_t len = strlen(name);
	const char *tool = "cat";

	ck_assert_ptr_nonnull(name);
	if (len > 3 && !strcmp(name + len - 3, ".xz")) {
		tool = "xz -dc";
		name[len - 3] = '\0';
	} else if (len > 3 && !strcmp(name + len - 3, ".gz")) {
		tool = "gzip -dc";
		name[len - 3] = '\0';
	}
	ck_assert_int_ge(asprintf(&rel, "%s/%s", dir, file), 0);
	src = fx_vector(rel);
	ck_assert_msg(src != NULL, "vector %s missing", rel);
	run("test -e '%s' || %s '%s' > '%s'", name, tool, src, name);
	free(rel);
	free(src);
	return name;
}

START_TEST(vector_sums)
{
	char *probe = fx_vector("INDEX.md");
	char *names[5] = { NULL };
	char sha[65];
	struct stack s;
	unsigned n = 0;

	if (!probe) {
		fprintf(stderr, "# skip: ../shared/vectors is absent\n");
		return;
	}
	free(probe);
	for (; n < 4 && vectors[_i].files[n]; n++)
		names[n] = vector_fetch(vectors[_i].dir, vectors[_i].files[n]);
	if (vectors[_i].aux)
		free(vector_fetch(vectors[_i].dir, vectors[_i].aux));
	cap_start();
	stack_open(&s, (const char *const *)names);
	check_parents(&s, (const char *const *)names, NULL);
	disk_sha256(&s, NULL, sha);
	ck_assert_str_eq(sha, vectors[_i].sha);
	if (n > 1 && s.l[0]->size <= (64u << 20)) {
		/* small chains: also through the resolver and chain_pread */
		struct chain_opts o = { 0 };
		struct chain *c = NULL;
		char *top = fx_path(names[0]);

		ck_assert_int_eq(chain_open_file(top, NULL, &o, &c), 0);
		ck_assert_uint_eq(c->depth, n);
		disk_sha256(NULL, c, sha);
		ck_assert_str_eq(sha, vectors[_i].sha);
		chain_free(c);
		free(top);
	}
	if (vectors[_i].snapshots) {
		struct qcow2_snapshot *list;
		size_t count;

		ck_assert_int_eq(qcow2_snapshot_list(s.l[0], &list, &count),
				 0);
		ck_assert_uint_eq(count, vectors[_i].snapshots);
		for (size_t i = 0; i < count; i++)
			ck_assert(list[i].id[0] != '\0');
		qcow2_snapshot_list_free(list, count);
	}
	ck_assert_uint_eq(cap_errors, 0);
	stack_close(&s);
	for (unsigned i = 0; i < n; i++) {
		char *p = fx_path(names[i]);

		unlink(p);	/* keep the disk use of the run small */
		free(p);
		free(names[i]);
	}
}
END_TEST

/* ------------------------------------------------------------------ */
/* damaged images: one field each; a clean error, one line, no crash    */

enum stage { AT_OPEN, AT_MAP, AT_READ, OPENS };

/* facts about the good image, read before damaging it */
struct facts {
	char *path;
	uint64_t size, cs, l1_off, rt_off, l2_off, l2e0, fsize;
};

static void learn(struct facts *f, const char *name)
{
	memset(f, 0, sizeof(*f));
	f->path = fx_path(name);
	f->fsize = file_size(f->path);
	if (peek_be32(f->path, 4) == 1)
		return;		/* qcow v1: the damage functions look */
	f->cs = 1ull << peek_be32(f->path, 20);
	f->size = peek_be64(f->path, 24);
	f->l1_off = peek_be64(f->path, 40);
	f->rt_off = peek_be64(f->path, 48);
	f->l2_off = peek_be64(f->path, f->l1_off) & QCOW2_L1E_OFFSET_MASK;
	f->l2e0 = f->l2_off ? peek_be64(f->path, f->l2_off) : 0;
}

enum base {
	B_PLAIN,	/* v3, 64 KiB clusters, data at 0 and 1 MiB */
	B_V2,		/* same, compat=0.10 */
	B_COMP,		/* compressed (zlib) */
	B_EXTL2,	/* extended L2 */
	B_4K,		/* v3, 4 KiB clusters */
	B_BACKING,	/* v3 with a backing file name */
	B_V1,		/* qcow v1 */
	B_V1COMP,	/* qcow v1, compressed */
	B_DATAFILE,	/* v3 with an external data file */
};

#define NBASES 9
static char *basedir;	/* made once by the unforked fixture */

static void make_base_in(const char *dir, enum base b)
{
	switch (b) {
	case B_PLAIN:
	case B_V2:
	case B_4K:
	case B_EXTL2:
		run_in(dir, "qemu-img create -q -f qcow2 -o %s t.img 4M",
		       b == B_V2 ? "compat=0.10" :
		       b == B_4K ? "cluster_size=4096" :
		       b == B_EXTL2 ? "extended_l2=on" : "compat=1.1");
		run_in(dir, "qemu-io -t unsafe -f qcow2 -c 'write -P 0x11 0 64k' -c 'write -P 0x12 1M 64k' t.img");
		break;
	case B_COMP:
		make_source_raw_in(dir, "src.raw", 4 << 20);
		run_in(dir, "qemu-img convert -t unsafe -c -O qcow2 src.raw t.img && rm src.raw");
		break;
	case B_BACKING:
		run_in(dir, "qemu-img create -q -f qcow2 -u -b base.qcow2 -F qcow2 t.img 4M");
		break;
	case B_V1:
		run_in(dir, "qemu-img create -q -f qcow t.img 4M");
		run_in(dir, "qemu-io -t unsafe -f qcow -c 'write -P 0x11 0 64k' t.img");
		break;
	case B_V1COMP:
		make_source_raw_in(dir, "src.raw", 4 << 20);
		run_in(dir, "{ qemu-img convert -t unsafe -c -O qcow src.raw t.img || test -s t.img; } && rm src.raw");
		break;
	case B_DATAFILE:
		run_in(dir, "qemu-img create -q -f qcow2 -o data_file=t.data t.img 4M");
		run_in(dir, "qemu-io -t unsafe -f qcow2 -c 'write -P 0x11 0 64k' t.img");
		break;
	}
}

/* unchecked fixture: runs once, unforked, before the damaged cases */
static void bases_setup(void)
{
	char tmpl[] = "/tmp/layerfs-qcow2-bases-XXXXXX";
	const char *base = getenv("TMPDIR");

	if (fx_system("command -v qemu-img >/dev/null && command -v qemu-io >/dev/null"))
		return;		/* each case skips (or fails under CI) */
	if (base)
		ck_assert_int_ge(asprintf(&basedir, "%s/layerfs-qcow2-bases-XXXXXX",
					  base), 0);
	else
		basedir = strdup(tmpl);
	ck_assert_ptr_nonnull(mkdtemp(basedir));
	for (int b = 0; b < NBASES; b++) {
		run_in(basedir, "mkdir b%d", b);
		char *dir;

		ck_assert_int_ge(asprintf(&dir, "%s/b%d", basedir, b), 0);
		make_base_in(dir, (enum base)b);
		free(dir);
	}
}

static void bases_teardown(void)
{
	if (basedir && !getenv("FX_KEEP"))
		fx_system("rm -rf '%s'", basedir);
	free(basedir);
	basedir = NULL;
}

static void make_base(enum base b)
{
	ck_assert_ptr_nonnull(basedir);
	run("cp -a '%s/b%d/.' .", basedir, (int)b);
}

/* each damages one thing in the image made by make_base */
typedef void (*damage_fn)(const struct facts *f);

static void d_magic(const struct facts *f) { poke_u8(f->path, 1, 'X'); }
static void d_version4(const struct facts *f) { poke_be32(f->path, 4, 4); }
static void d_version1(const struct facts *f) { poke_be32(f->path, 4, 1); }
static void d_cbits8(const struct facts *f) { poke_be32(f->path, 20, 8); }
static void d_cbits22(const struct facts *f) { poke_be32(f->path, 20, 22); }
static void d_crypt(const struct facts *f) { poke_be32(f->path, 32, 1); }
static void d_hlen(const struct facts *f) { poke_be32(f->path, 100, 96); }
static void d_rorder(const struct facts *f) { poke_be32(f->path, 96, 7); }

static void d_l1_past_eof(const struct facts *f)
{
	poke_be64(f->path, 40, (f->fsize + f->cs) & ~(f->cs - 1));
}

static void d_l1_too_big(const struct facts *f)
{
	poke_be32(f->path, 36, 0x10000000);
}

static void d_l1_too_small(const struct facts *f)
{
	poke_be64(f->path, 24, 1ull << 40);	/* size beyond l1_size */
}

static void d_l1_misaligned(const struct facts *f)
{
	poke_be64(f->path, 40, f->l1_off + 512);
}

static void d_l1_on_refcount(const struct facts *f)
{
	poke_be64(f->path, 40, f->rt_off);
}

static void d_l1_on_header(const struct facts *f)
{
	poke_be64(f->path, 40, 0);
}

static void d_l2_misaligned(const struct facts *f)
{
	poke_be64(f->path, f->l1_off, (f->l2_off + 512) | (1ull << 63));
}

static void d_l2_past_eof(const struct facts *f)
{
	poke_be64(f->path, f->l1_off,
		  ((f->fsize + 4 * f->cs) & ~(f->cs - 1)) | (1ull << 63));
}

static void d_l2_on_l1(const struct facts *f)
{
	poke_be64(f->path, f->l1_off, f->l1_off | (1ull << 63));
}

static void d_l2e_past_eof(const struct facts *f)
{
	poke_be64(f->path, f->l2_off, (1ull << 40) | (1ull << 63));
}

static void d_l2e_misaligned(const struct facts *f)
{
	poke_be64(f->path, f->l2_off, (f->l2e0 + 4096) | (1ull << 63));
}

static void d_v2_zero_flag(const struct facts *f)
{
	poke_be64(f->path, f->l2_off, f->l2e0 | 1);
}

static void d_extl2_alloc_unalloc(const struct facts *f)
{
	/* entry 2 (128 KiB) is unallocated; mark a subcluster allocated */
	poke_be64(f->path, f->l2_off + 2 * 16 + 8, 1);
}

static void d_extl2_alloc_and_zero(const struct facts *f)
{
	poke_be64(f->path, f->l2_off + 8, 0x0000000100000001ull);
}

static void d_comp_past_eof(const struct facts *f)
{
	/* same sector count, host offset far past the end */
	uint64_t x = 62 - (16 - 8);

	poke_be64(f->path, f->l2_off,
		  (f->l2e0 & ~((1ull << x) - 1)) | (1ull << 62) | (1ull << 40));
}

static void d_comp_garbage(const struct facts *f)
{
	uint64_t x = 62 - (16 - 8), coff = f->l2e0 & ((1ull << x) - 1);
	uint8_t junk[512];

	memset(junk, 0xff, sizeof(junk));
	fx_pwrite(f->path, junk, sizeof(junk), coff);
}

static void d_ext_past_cluster(const struct facts *f)
{
	/* an extension right after the header, longer than the cluster */
	poke_be32(f->path, 112, 0x12345678);
	poke_be32(f->path, 116, (uint32_t)f->cs);
}

static void d_unknown_bit(const struct facts *f)
{
	poke_be64(f->path, 72, 1ull << 5);
}

static void d_named_unknown_bit(const struct facts *f)
{
	/* qemu writes a feature table; rename the entry of bit 4 as bit 5 */
	uint8_t cl[65536];
	int fd = open(f->path, O_RDONLY);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pread_full(fd, cl, sizeof(cl), 0), 0);
	close(fd);
	for (size_t off = 112; off + 8 < sizeof(cl);) {
		uint32_t type = get_be32(cl + off), len = get_be32(cl + off + 4);

		if (!type)
			break;
		if (type == QCOW2_EXT_FEATURE_TABLE) {
			for (size_t e = off + 8; e < off + 8 + len; e += 48)
				if (cl[e] == 0 && cl[e + 1] == 4) {
					uint8_t v[48] = { 0, 5 };

					memcpy(v + 2, "time travel", 11);
					fx_pwrite(f->path, v, 48, e);
				}
		}
		off += 8 + ((len + 7) & ~7u);
	}
	poke_be64(f->path, 72, 1ull << 5);
}

static void d_backing_too_long(const struct facts *f)
{
	poke_be32(f->path, 16, 2000);
}

static void d_backing_outside(const struct facts *f)
{
	poke_be64(f->path, 8, f->cs - 4);
}

static void d_comp_type_no_bit(const struct facts *f)
{
	poke_u8(f->path, 104, 1);
}

static void d_comp_type_unknown(const struct facts *f)
{
	poke_u8(f->path, 104, 2);
	poke_be64(f->path, 72, QCOW2_INCOMPAT_COMPRESSION);
}

static void d_extl2_small_cluster(const struct facts *f)
{
	poke_be64(f->path, 72, QCOW2_INCOMPAT_EXTL2);
}

static void d_snap_misaligned(const struct facts *f)
{
	poke_be32(f->path, 60, 1);
	poke_be64(f->path, 64, 4096 + 8);
}

static void d_snap_too_many(const struct facts *f)
{
	poke_be32(f->path, 60, 70000);
	poke_be64(f->path, 64, f->cs);
}

static void d_truncated(const struct facts *f)
{
	ck_assert_int_eq(truncate(f->path, 90), 0);
}

static void d_corrupt_bit(const struct facts *f)
{
	poke_be64(f->path, 72, QCOW2_INCOMPAT_CORRUPT);
}

static void d_dirty_bit(const struct facts *f)
{
	poke_be64(f->path, 72, QCOW2_INCOMPAT_DIRTY);
}

static void d_data_file_slash(const struct facts *f)
{
	/* the name extension follows the header: "t.data" -> "../ata" */
	fx_pwrite(f->path, "../ata", 6, 112 + 8);
}

static void d_data_file_missing(const struct facts *f)
{
	char *p = fx_path("t.data");

	(void)f;
	ck_assert_int_eq(unlink(p), 0);
	free(p);
}

static void d_data_file_no_name(const struct facts *f)
{
	poke_be32(f->path, 112, 0x12345678);	/* rename the extension */
}

static void d_v1_cbits(const struct facts *f) { poke_u8(f->path, 32, 17); }
static void d_v1_l2bits(const struct facts *f) { poke_u8(f->path, 33, 14); }
static void d_v1_crypt(const struct facts *f) { poke_be32(f->path, 36, 1); }

static void d_v1_l1_past_eof(const struct facts *f)
{
	poke_be64(f->path, 40, f->fsize);
}

static void d_v1_huge(const struct facts *f)
{
	poke_be64(f->path, 24, 1ull << 62);
}

static void d_v1_backing_long(const struct facts *f)
{
	poke_be64(f->path, 8, 48);
	poke_be32(f->path, 16, 1024);
}

static void d_v1_backing_outside(const struct facts *f)
{
	poke_be64(f->path, 8, f->fsize - 2);
	poke_be32(f->path, 16, 10);
}

static void d_v1_l2_past_eof(const struct facts *f)
{
	uint64_t l1 = peek_be64(f->path, 40);

	poke_be64(f->path, l1, f->fsize + 4096);
}

static void d_v1_l2e_past_eof(const struct facts *f)
{
	uint64_t l2 = peek_be64(f->path, peek_be64(f->path, 40));

	poke_be64(f->path, l2, 1ull << 40);
}

static void d_v1_comp_garbage(const struct facts *f)
{
	uint64_t l2 = peek_be64(f->path, peek_be64(f->path, 40));
	/* cluster 0 of the source holds text: compressed */
	uint64_t e = peek_be64(f->path, l2);
	unsigned cb = peek_be32(f->path, 32) >> 24;
	uint64_t coff = e & ((1ull << (63 - cb)) - 1);
	uint8_t junk[64];

	ck_assert(e >> 63);
	memset(junk, 0xfe, sizeof(junk));
	fx_pwrite(f->path, junk, sizeof(junk), coff);
}

static const struct {
	const char *name;
	enum base base;
	damage_fn fn;
	enum stage stage;
	int err;
	const struct img_driver *drv;
	uint64_t map_off;	/* AT_MAP: where the damage is */
} bad[] = {
	{ "bad magic", B_PLAIN, d_magic, AT_OPEN, -EINVAL, &qcow2_driver, 0 },
	{ "version 4", B_PLAIN, d_version4, AT_OPEN, -ENOTSUP, &qcow2_driver, 0 },
	{ "version 1 as qcow2", B_PLAIN, d_version1, AT_OPEN, -EINVAL,
	  &qcow2_driver, 0 },
	{ "cluster_bits 8", B_PLAIN, d_cbits8, AT_OPEN, -EUCLEAN, NULL, 0 },
	{ "cluster_bits 22", B_PLAIN, d_cbits22, AT_OPEN, -ENOTSUP, NULL, 0 },
	{ "crypt_method", B_PLAIN, d_crypt, AT_OPEN, -ENOTSUP, NULL, 0 },
	{ "header_length", B_PLAIN, d_hlen, AT_OPEN, -EUCLEAN, NULL, 0 },
	{ "refcount_order", B_PLAIN, d_rorder, AT_OPEN, -EUCLEAN, NULL, 0 },
	{ "L1 past EOF", B_PLAIN, d_l1_past_eof, AT_OPEN, -EUCLEAN, NULL, 0 },
	{ "L1 too big", B_PLAIN, d_l1_too_big, AT_OPEN, -EFBIG, NULL, 0 },
	{ "L1 too small", B_PLAIN, d_l1_too_small, AT_OPEN, -EUCLEAN, NULL, 0 },
	{ "L1 misaligned", B_PLAIN, d_l1_misaligned, AT_OPEN, -EUCLEAN, NULL, 0 },
	{ "L1 on refcount table", B_PLAIN, d_l1_on_refcount, AT_OPEN,
	  -EUCLEAN, NULL, 0 },
	{ "L1 on header", B_PLAIN, d_l1_on_header, AT_OPEN, -EUCLEAN, NULL, 0 },
	{ "L2 table misaligned", B_PLAIN, d_l2_misaligned, AT_OPEN, -EUCLEAN,
	  NULL, 0 },
	{ "L2 table past EOF", B_PLAIN, d_l2_past_eof, AT_OPEN, -EUCLEAN,
	  NULL, 0 },
	{ "L2 table on L1", B_PLAIN, d_l2_on_l1, AT_OPEN, -EUCLEAN, NULL, 0 },
	{ "L2 entry past EOF", B_PLAIN, d_l2e_past_eof, AT_MAP, -EUCLEAN,
	  NULL, 0 },
	{ "L2 entry misaligned", B_PLAIN, d_l2e_misaligned, AT_MAP, -EUCLEAN,
	  NULL, 0 },
	{ "zero flag in v2", B_V2, d_v2_zero_flag, AT_MAP, -EUCLEAN, NULL, 0 },
	{ "extl2 alloc in unallocated", B_EXTL2, d_extl2_alloc_unalloc,
	  AT_MAP, -EUCLEAN, NULL, 131072 },
	{ "extl2 alloc and zero", B_EXTL2, d_extl2_alloc_and_zero, AT_MAP,
	  -EUCLEAN, NULL, 0 },
	{ "compressed past EOF", B_COMP, d_comp_past_eof, AT_MAP, -EUCLEAN,
	  NULL, 0 },
	{ "compressed garbage", B_COMP, d_comp_garbage, AT_READ, -EUCLEAN,
	  NULL, 0 },
	{ "extension past cluster", B_PLAIN, d_ext_past_cluster, AT_OPEN,
	  -EUCLEAN, NULL, 0 },
	{ "unknown incompatible bit", B_PLAIN, d_unknown_bit, AT_OPEN,
	  -ENOTSUP, NULL, 0 },
	{ "named unknown bit", B_PLAIN, d_named_unknown_bit, AT_OPEN,
	  -ENOTSUP, NULL, 0 },
	{ "backing name too long", B_BACKING, d_backing_too_long, AT_OPEN,
	  -EUCLEAN, NULL, 0 },
	{ "backing name outside", B_BACKING, d_backing_outside, AT_OPEN,
	  -EUCLEAN, NULL, 0 },
	{ "compression type without bit", B_PLAIN, d_comp_type_no_bit,
	  AT_OPEN, -EUCLEAN, NULL, 0 },
	{ "compression type unknown", B_PLAIN, d_comp_type_unknown, AT_OPEN,
	  -ENOTSUP, NULL, 0 },
	{ "extl2 with 4k clusters", B_4K, d_extl2_small_cluster, AT_OPEN,
	  -EUCLEAN, NULL, 0 },
	{ "snapshot table misaligned", B_PLAIN, d_snap_misaligned, AT_OPEN,
	  -EUCLEAN, NULL, 0 },
	{ "too many snapshots", B_PLAIN, d_snap_too_many, AT_OPEN, -EFBIG,
	  NULL, 0 },
	{ "truncated header", B_PLAIN, d_truncated, AT_OPEN, -EUCLEAN,
	  &qcow2_driver, 0 },
	{ "corrupt bit: warning only", B_PLAIN, d_corrupt_bit, OPENS, 0,
	  NULL, 0 },
	{ "dirty bit: fine", B_PLAIN, d_dirty_bit, OPENS, 0, NULL, 0 },
	{ "data file outside", B_DATAFILE, d_data_file_slash, AT_OPEN,
	  -ENOTSUP, NULL, 0 },
	{ "data file missing", B_DATAFILE, d_data_file_missing, AT_OPEN,
	  -ENOENT, NULL, 0 },
	{ "data file without name", B_DATAFILE, d_data_file_no_name, AT_OPEN,
	  -ENOTSUP, NULL, 0 },
	{ "v1 cluster_bits", B_V1, d_v1_cbits, AT_OPEN, -EUCLEAN, NULL, 0 },
	{ "v1 l2_bits", B_V1, d_v1_l2bits, AT_OPEN, -EUCLEAN, NULL, 0 },
	{ "v1 encrypted", B_V1, d_v1_crypt, AT_OPEN, -ENOTSUP, NULL, 0 },
	{ "v1 L1 past EOF", B_V1, d_v1_l1_past_eof, AT_OPEN, -EUCLEAN, NULL, 0 },
	{ "v1 too big", B_V1, d_v1_huge, AT_OPEN, -EFBIG, NULL, 0 },
	{ "v1 backing too long", B_V1, d_v1_backing_long, AT_OPEN, -EUCLEAN,
	  NULL, 0 },
	{ "v1 backing outside", B_V1, d_v1_backing_outside, AT_OPEN,
	  -EUCLEAN, NULL, 0 },
	{ "v1 L2 past EOF", B_V1, d_v1_l2_past_eof, AT_OPEN, -EUCLEAN, NULL, 0 },
	{ "v1 L2 entry past EOF", B_V1, d_v1_l2e_past_eof, AT_MAP, -EUCLEAN,
	  NULL, 0 },
	{ "v1 compressed garbage", B_V1COMP, d_v1_comp_garbage, AT_READ,
	  -EUCLEAN, NULL, 0 },
	{ "v2 as v1 driver", B_PLAIN, NULL, AT_OPEN, -EINVAL, &qcow_driver, 0 },
};

START_TEST(damaged_image)
{
	struct facts f;
	struct img *img = NULL;
	struct img_extent e;
	uint8_t buf[65536];
	const char *prefix;
	char want[512];
	int r;

	if (!have_qemu())
		return;
	make_base(bad[_i].base);
	learn(&f, "t.img");
	if (bad[_i].fn)
		bad[_i].fn(&f);
	cap_start();
	r = img_open(f.path, bad[_i].drv, false, &img);
	if (bad[_i].stage == AT_OPEN) {
		ck_assert_msg(r == bad[_i].err, "%s: open gave %d, want %d",
			      bad[_i].name, r, bad[_i].err);
		ck_assert_ptr_null(img);
	} else {
		ck_assert_msg(r == 0, "%s: open gave %d", bad[_i].name, r);
		ck_assert_uint_eq(cap_errors, 0);
		r = img_map(img, bad[_i].map_off, img->size - bad[_i].map_off,
			    &e);
		if (bad[_i].stage == AT_READ) {
			ck_assert_int_eq(r, 0);
			ck_assert_int_eq(e.type, IMG_EXT_DATA);
			ck_assert_uint_eq(e.host_off, IMG_HOST_NONE);
			r = img->drv->read(img, buf,
					   (size_t)MIN(e.len, sizeof(buf)), 0);
			/* again: the thread cache must not hide it */
			if (r == bad[_i].err) {
				cap_errors = 0;
				r = img->drv->read(img, buf, 100, 0);
			}
		}
		if (bad[_i].stage == OPENS)
			ck_assert_int_eq(r, 0);
		else
			ck_assert_msg(r == bad[_i].err, "%s: gave %d, want %d",
				      bad[_i].name, r, bad[_i].err);
		img_unref(img);
	}
	if (bad[_i].err) {
		/* exactly one line: "<drv>: <path>: <problem> (<value>)" */
		ck_assert_msg(cap_errors == 1, "%s: %u error lines:\n%s",
			      bad[_i].name, cap_errors, cap_text);
		prefix = bad[_i].base == B_V1 || bad[_i].base == B_V1COMP ||
				 bad[_i].drv == &qcow_driver ? "qcow" : "qcow2";
		snprintf(want, sizeof(want), "%s: %s: ", prefix, f.path);
		ck_assert_msg(!strncmp(cap_text, want, strlen(want)),
			      "%s: log line: %s", bad[_i].name, cap_text);
		ck_assert_msg(strchr(cap_text, '(') && strstr(cap_text, ")\n"),
			      "%s: no value in: %s", bad[_i].name, cap_text);
	}
	if (bad[_i].fn == d_named_unknown_bit)
		ck_assert_msg(strstr(cap_text, "\"time travel\""), "%s",
			      cap_text);
	if (bad[_i].fn == d_unknown_bit)
		ck_assert_msg(strstr(cap_text, "bit 5"), "%s", cap_text);
	if (bad[_i].fn == d_corrupt_bit)
		ck_assert_uint_eq(cap_warnings, 1);
	if (bad[_i].fn == d_dirty_bit)
		ck_assert_uint_eq(cap_warnings, 0);
	free(f.path);
}
END_TEST

START_TEST(luks_refused)
{
	char *p = fx_path("e.qcow2");
	struct img *img = NULL;

	if (!have_qemu())
		return;
	/* qemu's PBKDF benchmark fails now and then on a busy machine
	 * ("Unable to get accurate CPU usage"): try a few times */
	run("ok=0; for i in 1 2 3 4 5; do qemu-img create -q -f qcow2 --object secret,id=s0,data=pw "
	    "-o encrypt.format=luks,encrypt.key-secret=s0,encrypt.iter-time=50 e.qcow2 4M 2>/dev/null && "
	    "{ ok=1; break; }; done; test $ok = 1");
	cap_start();
	ck_assert_int_eq(img_open(p, NULL, false, &img), -ENOTSUP);
	ck_assert_uint_eq(cap_errors, 1);
	ck_assert_ptr_nonnull(strstr(cap_text, "encrypted images are not supported"));
	free(p);
}
END_TEST

Suite *unit_suite(void)
{
	Suite *s = suite_create("qcow2");
	TCase *tc;

	tc = tcase_create("decode");
	tcase_add_test(tc, decode_good);
	tcase_add_loop_test(tc, decode_damaged, 0, (int)ARRAY_SIZE(damage));
	tcase_add_test(tc, probe_scores);
	suite_add_tcase(s, tc);

	tc = tcase_create("images");
	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, layout_matches_qemu, 0,
			    (int)ARRAY_SIZE(layouts));
	tcase_add_loop_test(tc, compressed_matches_qemu, 0,
			    (int)ARRAY_SIZE(compressed));
	tcase_add_test(tc, chain_depth10);
	tcase_add_test(tc, chain_over_raw);
	tcase_add_test(tc, chain_short_backing);
	tcase_add_test(tc, chain_v1);
	tcase_add_loop_test(tc, parent_names_and_formats, 0,
			    (int)ARRAY_SIZE(backings));
	tcase_add_test(tc, no_parent);
	tcase_add_test(tc, external_data_file);
	tcase_add_test(tc, snapshots_listed);
	tcase_add_test(tc, snapshot_list_needs_qcow2);
	tcase_add_test(tc, l2_cache_threads);
	suite_add_tcase(s, tc);

	tc = tcase_create("vectors");
	tcase_set_timeout(tc, 60);
	tcase_add_loop_test(tc, vector_sums, 0, (int)ARRAY_SIZE(vectors));
	suite_add_tcase(s, tc);

	tc = tcase_create("damaged");
	tcase_set_timeout(tc, 30);
	tcase_add_unchecked_fixture(tc, bases_setup, bases_teardown);
	tcase_add_loop_test(tc, damaged_image, 0, (int)ARRAY_SIZE(bad));
	tcase_add_test(tc, luks_refused);
	suite_add_tcase(s, tc);
	return s;
}
