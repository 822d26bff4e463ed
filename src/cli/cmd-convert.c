// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * cmd-convert.c: layerimg convert, a chain flattened into one standalone
 * image (raw, Android sparse, or through a driver's ->create: vhd, vhdx,
 * qcow2).
 *
 * The disk is read window by window (CONV_WINDOW bytes, aligned): the
 * window's extents come from chain_view_map, the data ones are read straight
 * into one buffer (a pread per extent), and only data is written, in runs
 * as long as the data is (rounded out to the output's sector or block
 * size, with zeros where the rounding reaches into a hole).  Holes are
 * never read or written: a raw output is ftruncate'd to size and stays
 * sparse, a sparse output gets DONT_CARE chunks, a driver output leaves
 * them unallocated.  A hole that runs past the window is skipped whole.
 * -S SIZE is qemu-img's: a run of zero bytes at least SIZE long inside
 * the data (512-byte sectors) is treated as a hole too; -S 0 allocates
 * everything (holes written as zeros, a raw file preallocated).  Without
 * -S the data is not scanned.
 * Explicit zero runs (a layer's ZERO state) read as zeros in every output
 * format; only the sparse output must say so (FILL 0), since a DONT_CARE
 * block may keep whatever the target held.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "asparse-writer.h"
#include "atomic-file.h"
#include "chain.h"
#include "checked.h"
#include "cli.h"
#include "endian-io.h"
#include "img.h"
#include "io.h"
#include "json.h"
#include "log.h"

#define CONV_WINDOW (8u << 20)	/* bytes read and written at a time */
#define CONV_ZERO_GRAIN 512u	/* -S: zero detection granule */
#define CONV_SPARSE_DEFAULT 4096u	/* --sparse-zeros: -S 4k */

enum conv_fmt { CONV_RAW, CONV_SPARSE, CONV_DRIVER };

struct conv_run {
	uint64_t s, e;		/* [s, e) in disk offsets */
};

struct conv {
	struct chain *c;	/* borrowed */
	const char *out;	/* borrowed */
	enum conv_fmt fmt;
	bool detect_zeros;	/* -S SIZE > 0 */
	bool full_alloc;	/* -S 0 */
	uint64_t min_zeros;	/* -S SIZE */
	uint64_t written;	/* bytes of data written */
	uint32_t align;		/* output granularity, a power of 2 */
	uint64_t size;		/* output bytes */
	int fd;			/* CONV_RAW: owned */
	struct asparse_writer *sw; /* CONV_SPARSE: owned */
	struct img *img;	/* CONV_DRIVER: owned reference */
	uint8_t *buf;		/* owned: CONV_WINDOW bytes */
	uint64_t wbase;		/* disk offset of buf[0] */
	struct conv_run *runs;	/* owned */
	size_t nruns, cap;
	bool created;		/* out was created: remove it on failure */
};

static void convert_usage(FILE *f)
{
	fprintf(f,
		"Usage: layerimg convert [-f FMT] [-O raw|vhd|vhdx|qcow2|sparse] [-S SIZE]\n"
		"                        [-o OPTIONS] [--fixed] [-p] [-q] [-U]\n"
		"                        [--output=human|json] IMAGE|IMAGEDIR [CHAIN] OUTPUT\n"
		"\n"
		"Flatten a chain into one standalone image with no parent.  Only\n"
		"data is written: holes stay holes (raw: a sparse file; sparse:\n"
		"DONT_CARE chunks; vhd/vhdx/qcow2: unallocated blocks).  OUTPUT must\n"
		"not exist.\n"
		"\n"
		"  -f, --source-format FMT the format of IMAGE (the top): refused if it\n"
		"                          is another format\n"
		"  -O, --format FMT        output format: raw (default), vhd (or vpc),\n"
		"                          vhdx, qcow2, or sparse (Android sparse image)\n"
		"  -S, --sparse-size SIZE  a run of zero bytes at least SIZE long (a\n"
		"                          multiple of 512) in the data is left a hole;\n"
		"                          0: fully allocated output.  Without -S the\n"
		"                          data is not scanned for zeros\n"
		"      --sparse-zeros      the same as -S 4k\n"
		"  -o OPTIONS              block_size=SIZE, cluster_size=SIZE, fixed,\n"
		"                          subformat=fixed|dynamic, preallocation=...\n"
		"      --fixed             fully allocated output (raw: preallocated;\n"
		"                          vhd/vhdx: fixed disk; qcow2: preallocated)\n"
		"      --block-size SIZE   vhd/vhdx block or qcow2 cluster size (default:\n"
		"                          the format's; K, M suffixes)\n"
		"  -p, --progress          draw a progress bar (by default, only when\n"
		"                          stderr is a terminal)\n"
		"      --no-progress       no progress bar\n"
		"  -q, --quiet             no progress bar, no messages but errors\n"
		CLI_FORCE_SHARE_HELP
		"      --output=FMT        human (default: nothing on success) or json:\n"
		"                          the result as one JSON object on stdout\n"
		"                          (--json: the same)\n"
		CLI_CHAIN_HELP
		"  -h, --help              this help\n"
		"\n"
		"Exit status: 0 converted, 1 the conversion failed (OUTPUT removed),\n"
		"2 bad usage, an unreadable chain or an existing OUTPUT.\n");
}

static int zeros_below(void *ctx __unused, void *buf, size_t n,
		       uint64_t off __unused)
{
	memset(buf, 0, n);
	return 0;
}

static bool all_zero(const uint8_t *p, size_t n)
{
	return n == 0 || (p[0] == 0 && memcmp(p, p + 1, n - 1) == 0);
}

static int add_run(struct conv *cv, uint64_t s, uint64_t e)
{
	if (cv->nruns && cv->runs[cv->nruns - 1].e == s) {
		cv->runs[cv->nruns - 1].e = e;
		return 0;
	}
	if (cv->nruns == cv->cap) {
		size_t cap = cv->cap ? cv->cap * 2 : 64;
		struct conv_run *v = realloc(cv->runs, cap * sizeof(*v));

		if (!v)
			return -ENOMEM;
		cv->runs = v;
		cv->cap = cap;
	}
	cv->runs[cv->nruns++] = (struct conv_run){ s, e };
	return 0;
}

/* -S SIZE: drop each run of zero sectors at least min_zeros long. */
static int drop_zero_grains(struct conv *cv)
{
	size_t n = cv->nruns;
	struct conv_run *old = cv->runs;
	int r = 0;

	cv->runs = NULL;
	cv->nruns = cv->cap = 0;
	for (size_t i = 0; i < n && r == 0; i++) {
		uint64_t keep = old[i].s;	/* data not yet added */
		uint64_t zs = UINT64_MAX;	/* start of the zero run */

		for (uint64_t g = old[i].s; g < old[i].e && r == 0;) {
			uint64_t ge = MIN(old[i].e,
					  g - g % CONV_ZERO_GRAIN + CONV_ZERO_GRAIN);

			if (all_zero(cv->buf + (g - cv->wbase), ge - g)) {
				if (zs == UINT64_MAX)
					zs = g;
			} else {
				if (zs != UINT64_MAX && g - zs >= cv->min_zeros) {
					if (keep < zs)
						r = add_run(cv, keep, zs);
					keep = g;
				}
				zs = UINT64_MAX;
			}
			g = ge;
		}
		if (zs != UINT64_MAX && old[i].e - zs >= cv->min_zeros) {
			if (r == 0 && keep < zs)
				r = add_run(cv, keep, zs);
		} else if (r == 0 && keep < old[i].e) {
			r = add_run(cv, keep, old[i].e);
		}
	}
	free(old);
	return r;
}

/* Fill-pattern check: the block repeats its first 32-bit word. */
static bool is_fill(const uint8_t *p, size_t n)
{
	return memcmp(p, p + 4, n - 4) == 0;
}

/* Hand [s, e) (blk_sz aligned, in buf) to the sparse writer. */
static int put_sparse(struct conv *cv, uint64_t s, uint64_t e)
{
	uint32_t bs = cv->align;
	uint64_t raw0 = s;	/* start of the pending RAW blocks */
	int r = 0;

	for (uint64_t b = s; b < e && r == 0; b += bs) {
		const uint8_t *p = cv->buf + (b - cv->wbase);

		if (!is_fill(p, bs))
			continue;
		if (raw0 < b)
			r = asparse_writer_raw(cv->sw, raw0 / bs,
					       cv->buf + (raw0 - cv->wbase),
					       (b - raw0) / bs);
		if (r == 0)
			r = asparse_writer_fill(cv->sw, b / bs, get_le32(p), 1);
		raw0 = b + bs;
	}
	if (r == 0 && raw0 < e)
		r = asparse_writer_raw(cv->sw, raw0 / bs,
				       cv->buf + (raw0 - cv->wbase),
				       (e - raw0) / bs);
	return r;
}

static int put_run(struct conv *cv, uint64_t s, uint64_t e)
{
	const struct img_below below = { .read = zeros_below };
	const uint8_t *p = cv->buf + (s - cv->wbase);
	int r;

	cv->written += e - s;
	switch (cv->fmt) {
	case CONV_RAW:
		r = pwrite_full(cv->fd, p, (size_t)(e - s), s);
		if (r < 0)
			return log_err_ret(r, "%s: write at %" PRIu64 ": %s",
					   cv->out, s, strerror(-r));
		break;
	case CONV_SPARSE:
		r = put_sparse(cv, s, e);
		if (r < 0)
			return r;
		break;
	case CONV_DRIVER:
		r = cv->img->drv->write(cv->img, p, (size_t)(e - s), s, &below);
		if (r < 0)
			return log_err_ret(r, "%s: write at %" PRIu64 ": %s",
					   cv->out, s, strerror(-r));
		break;
	}
	return 0;
}

/*
 * Write the window's runs, each rounded out to the output's granularity
 * (within [wbase, wend)); runs that meet after rounding are written as
 * one, with zeros in the bytes between them.
 */
static int flush_runs(struct conv *cv, uint64_t wend)
{
	uint64_t a = cv->align;
	size_t i = 0;
	int r = 0;

	while (i < cv->nruns && r == 0) {
		uint64_t s = cv->runs[i].s - cv->runs[i].s % a, e;
		uint64_t prev_e;

		memset(cv->buf + (s - cv->wbase), 0, cv->runs[i].s - s);
		prev_e = cv->runs[i].e;
		e = MIN(wend, (prev_e + a - 1) / a * a);
		while (++i < cv->nruns && cv->runs[i].s - cv->runs[i].s % a <= e) {
			memset(cv->buf + (prev_e - cv->wbase), 0,
			       cv->runs[i].s - prev_e);
			prev_e = cv->runs[i].e;
			e = MIN(wend, (prev_e + a - 1) / a * a);
		}
		memset(cv->buf + (prev_e - cv->wbase), 0, e - prev_e);
		r = put_run(cv, s, e);
	}
	return r;
}

/*
 * One window starting at off: read its data into buf, write it.  *next:
 * where the next window starts (past a hole that runs beyond this one).
 */
static int convert_window(struct conv *cv, const struct chain_view *v,
			  uint64_t off, uint64_t *next)
{
	struct chain *c = cv->c;
	uint64_t wend, pos = off;
	int r = 0;

	cv->wbase = off - off % cv->align;
	wend = MIN(cv->size, cv->wbase - cv->wbase % CONV_WINDOW + CONV_WINDOW);
	*next = wend;
	cv->nruns = 0;
	while (pos < wend && r == 0) {
		struct chain_extent e;
		uint64_t end, n;

		if (pos >= c->size)	/* output rounded up past the disk */
			break;
		r = chain_view_map(v, pos, c->size - pos, &e);
		if (r < 0)
			break;		/* the driver said why */
		end = pos + e.len;
		n = MIN(end, wend) - pos;
		if (e.type != CHAIN_EXT_ZERO) {
			r = chain_view_read_extent(v, &e,
						   cv->buf + (pos - cv->wbase),
						   (size_t)n, pos);
			if (r < 0) {
				/* drivers log their own ->read errors */
				if (e.type == CHAIN_EXT_HOST)
					log_err("%s: read at %" PRIu64 ": %s",
						v->layers[e.layer].img->path,
						e.host_off, strerror(-r));
				break;
			}
			r = add_run(cv, pos, pos + n);
		} else if (e.allocated && cv->fmt == CONV_SPARSE &&
			   !cv->detect_zeros && end > wend &&
			   end - end % cv->align > pos) {
			/* a zero run past the window: one FILL for its whole
			 * blocks, the partial block before them as data */
			uint64_t zs = (pos + cv->align - 1) / cv->align * cv->align;
			uint64_t ze = end - end % cv->align;

			memset(cv->buf + (pos - cv->wbase), 0, (size_t)(zs - pos));
			if (zs > pos)
				r = add_run(cv, pos, zs);
			if (r == 0)
				r = flush_runs(cv, zs);
			cv->nruns = 0;
			if (r == 0)
				r = asparse_writer_fill(cv->sw, zs / cv->align, 0,
							(ze - zs) / cv->align);
			*next = ze;
			return r;
		} else if (e.allocated && cv->fmt == CONV_SPARSE &&
			   !cv->detect_zeros) {
			memset(cv->buf + (pos - cv->wbase), 0, (size_t)n);
			r = add_run(cv, pos, pos + n);
		} else if (cv->full_alloc && cv->fmt != CONV_RAW) {
			/* -S 0: zeros written (a raw file is preallocated) */
			memset(cv->buf + (pos - cv->wbase), 0, (size_t)n);
			r = add_run(cv, pos, pos + n);
		} else if (end > wend) {
			*next = end;	/* the hole runs on: skip it whole */
		}
		pos += n;
	}
	if (r == 0 && cv->detect_zeros)
		r = drop_zero_grains(cv);
	if (r == 0)
		r = flush_runs(cv, wend);
	return r;
}

/* The sparse output's block size: 4 KiB, or what divides the size. */
static uint32_t sparse_block_size(uint64_t size)
{
	uint32_t bs = 4096;

	while (bs > 4 && size % bs)
		bs /= 2;
	return bs;
}

static int conv_open_output(struct conv *cv, const char *fmt, bool fixed,
			    uint32_t block_size)
{
	const struct img_driver *drv;
	struct img_create_opts co = { 0 };
	int r;

	if (block_size && (!strcmp(fmt, "raw") || !strcmp(fmt, "sparse")))
		return log_err_ret(-EINVAL, "%s: --block-size does not apply "
				   "to %s output", cv->out, fmt);
	if (!strcmp(fmt, "raw")) {
		cv->fmt = CONV_RAW;
		cv->align = 1;
		/* a temporary, renamed to cv->out when complete */
		cv->fd = file_create(cv->out, "convert");
		if (cv->fd < 0)
			return cv->fd;
		if (ftruncate(cv->fd, (off_t)cv->size) < 0)
			return log_err_ret(-errno, "%s: cannot set the size: %s",
					   cv->out, strerror(errno));
		if ((fixed || cv->full_alloc) &&
		    (r = posix_fallocate(cv->fd, 0, (off_t)cv->size)))
			return log_err_ret(-r, "%s: cannot preallocate: %s",
					   cv->out, strerror(r));
		return 0;
	}
	if (!strcmp(fmt, "sparse")) {
		if (fixed)
			return log_err_ret(-EINVAL, "%s: --fixed does not apply "
					   "to a sparse image", cv->out);
		cv->fmt = CONV_SPARSE;
		cv->align = sparse_block_size(cv->size);
		/* has no name until asparse_writer_close() */
		return asparse_writer_open(cv->out, cv->size, cv->align,
					   &cv->sw);
	}
	drv = img_driver_find(fmt);
	if (!drv || (strcmp(fmt, "vhd") && strcmp(fmt, "vhdx") &&
		     strcmp(fmt, "qcow2")))
		return log_err_ret(-EINVAL, "%s: unknown output format '%s' "
				   "(raw, vhd, vhdx, qcow2, sparse)", cv->out,
				   fmt);
	if (!drv->create || !drv->write)
		return log_err_ret(-ENOTSUP, "%s: the %s driver cannot create "
				   "images", cv->out, fmt);
	cv->fmt = CONV_DRIVER;
	co.size = cv->size;
	co.block_size = block_size;
	/* only VHDX records a logical sector size; VHD and QCOW2 are 512
	 * (the bytes of the disk are the same whatever the sector size) */
	co.sector_size = !strcmp(fmt, "vhdx") ? cv->c->sector_size : 0;
	co.fixed = fixed;
	r = drv->create(cv->out, &co);
	if (r < 0)
		return log_err_ret(r, "%s: cannot create a %s image: %s",
				   cv->out, fmt, strerror(-r));
	cv->created = true;
	r = img_open(cv->out, drv, true, &cv->img);
	if (r < 0)
		return r;
	if (!cv->img->writable)
		return log_err_ret(-EROFS, "%s: the new %s image cannot be "
				   "written", cv->out, fmt);
	if (cv->img->size < cv->size)
		return log_err_ret(-EFBIG, "%s: the new image holds %" PRIu64
				   " bytes, not %" PRIu64, cv->out,
				   cv->img->size, cv->size);
	if (cv->img->size > cv->size)
		log_warn("%s: the new image holds %" PRIu64 " bytes, %" PRIu64
			 " more than the chain", cv->out, cv->img->size,
			 cv->img->size - cv->size);
	cv->size = cv->img->size;
	cv->align = cv->img->sector_size ? cv->img->sector_size : 512;
	if (!is_pow2(cv->align) || cv->align > CONV_WINDOW)
		return log_err_ret(-EINVAL, "%s: sector size %u", cv->out,
				   cv->align);
	return 0;
}

/* Finish the output: flush and close.  0 or -errno (logged). */
static int conv_close_output(struct conv *cv, bool ok)
{
	int r = 0;

	switch (cv->fmt) {
	case CONV_RAW:
		if (cv->fd < 0)
			break;
		if (ok)		/* sync, rename into place */
			r = file_create_end(cv->fd, cv->out, 0, "convert");
		else
			file_create_abort(cv->fd);
		cv->fd = -1;
		break;
	case CONV_SPARSE:
		if (ok && cv->sw)
			r = asparse_writer_close(cv->sw);
		asparse_writer_free(cv->sw);
		cv->sw = NULL;
		break;
	case CONV_DRIVER:
		if (ok && cv->img && cv->img->drv->flush) {
			r = cv->img->drv->flush(cv->img);
			if (r < 0)
				log_err("%s: flush: %s", cv->out, strerror(-r));
		}
		img_unref(cv->img);
		cv->img = NULL;
		break;
	}
	return r;
}

static int convert(struct conv *cv, const char *fmt, bool fixed,
		   uint32_t block_size, int progress)
{
	struct cli_progress pg;
	struct chain_view *v;
	uint64_t off = 0;
	int r;

	r = conv_open_output(cv, fmt, fixed, block_size);
	if (r == 0 && posix_memalign((void **)&cv->buf, 4096, CONV_WINDOW))
		r = -ENOMEM;
	if (r < 0)
		return r;
	cli_progress_start(&pg, "convert", cv->size, progress);
	v = chain_view_get(cv->c);
	while (off < cv->size && r == 0) {
		uint64_t next;

		r = convert_window(cv, v, off, &next);
		off = next;
		cli_progress_update(&pg, MIN(off, cv->size));
	}
	chain_view_put(v);
	if (r == 0)
		cli_progress_end(&pg);
	else if (pg.on)
		fputc('\n', stderr);
	return r;
}

static void print_result(const struct conv *cv, const char *src,
			 const char *chain, const char *fmt, bool sparse_set)
{
	struct json j;

	json_init(&j, stdout, false);
	json_obj_begin(&j, NULL);
	json_u64(&j, "version", 1);
	json_str(&j, "command", "convert");
	json_str(&j, "source", src);
	json_str(&j, "chain", chain);
	json_str(&j, "output", cv->out);
	json_str(&j, "format", fmt);
	json_u64(&j, "virtual_size", cv->size);
	json_u64(&j, "bytes_written", cv->written);
	if (sparse_set)
		json_u64(&j, "sparse_size", cv->min_zeros);
	else
		json_null(&j, "sparse_size");
	json_obj_end(&j);
	json_end(&j);
}

/* -S SIZE as qemu-img takes it: a multiple of 512, here up to a window */
static int parse_sparse_size(const char *arg, uint64_t *out)
{
	uint64_t v;

	if (cli_parse_size(arg, &v) < 0 || v % 512 || v > CONV_WINDOW) {
		cli_error("bad -S size '%s': a multiple of 512 up to %u (0: "
			  "fully allocated)", arg, CONV_WINDOW);
		return -EINVAL;
	}
	*out = v;
	return 0;
}

int cmd_convert(int argc, char **argv)
{
	enum { OPT_FIXED = 256, OPT_NOPROG, OPT_BS, OPT_SPARSE_ZEROS,
	       OPT_OUTPUT, OPT_JSON };
	static const struct option opts[] = {
		{ "format", required_argument, NULL, 'O' },
		{ "source-format", required_argument, NULL, 'f' },
		{ "sparse-size", required_argument, NULL, 'S' },
		{ "sparse-zeros", no_argument, NULL, OPT_SPARSE_ZEROS },
		{ "fixed", no_argument, NULL, OPT_FIXED },
		{ "block-size", required_argument, NULL, OPT_BS },
		{ "progress", no_argument, NULL, 'p' },
		{ "no-progress", no_argument, NULL, OPT_NOPROG },
		{ "quiet", no_argument, NULL, 'q' },
		{ "force-share", no_argument, NULL, 'U' },
		{ "output", required_argument, NULL, OPT_OUTPUT },
		{ "json", no_argument, NULL, OPT_JSON },
		CLI_CHAIN_OPTIONS,
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct chain_opts co = { 0 };
	struct img_create_opts oo = { 0 };
	struct conv cv = { .fd = -1 };
	struct cli_chain cc;
	const char *fmt = "raw", *src_fmt = NULL;
	uint64_t bs = 0;
	bool fixed = false, json = false, quiet = false, sparse_set = false;
	bool force_share = false;
	int progress = CLI_PROGRESS_AUTO;
	int ch, r, rc, npos;

	while ((ch = getopt_long(argc, argv, "O:f:S:o:pqUh", opts, NULL)) != -1) {
		switch (ch) {
		case 'O':
			fmt = cli_format_name(optarg);
			break;
		case 'f':
			src_fmt = optarg;
			break;
		case 'S':
			if (parse_sparse_size(optarg, &cv.min_zeros) < 0)
				return cli_try_help();
			sparse_set = true;
			break;
		case OPT_SPARSE_ZEROS:
			cv.min_zeros = CONV_SPARSE_DEFAULT;
			sparse_set = true;
			break;
		case 'o':
			if (cli_parse_create_opts(optarg, &oo) < 0)
				return cli_try_help();
			if (oo.sector_size) {
				cli_error("-o sector_size: convert keeps the "
					  "chain's sector size");
				return cli_try_help();
			}
			if (oo.block_size)
				bs = oo.block_size;
			fixed = oo.fixed;
			break;
		case OPT_FIXED:
			fixed = true;
			break;
		case OPT_BS:
			if (cli_parse_size(optarg, &bs) < 0 || !bs ||
			    bs > UINT32_MAX) {
				cli_error("bad block size '%s'", optarg);
				return cli_try_help();
			}
			break;
		case 'p':
			progress = CLI_PROGRESS_ON;
			break;
		case OPT_NOPROG:
			progress = CLI_PROGRESS_OFF;
			break;
		case 'q':
			quiet = true;
			break;
		case 'U':
			force_share = true;
			break;
		case OPT_OUTPUT:
			if (cli_parse_output(optarg, &json) < 0)
				return cli_try_help();
			break;
		case OPT_JSON:
			json = true;
			break;
		case 'h':
			convert_usage(stdout);
			return CLI_OK;
		default:
			if (cli_chain_option(ch, &co))
				break;
			return cli_try_help();
		}
	}
	npos = argc - optind;
	if (npos < 2 || npos > 3) {
		cli_error("expected IMAGE|IMAGEDIR [CHAIN] OUTPUT");
		return cli_try_help();
	}
	if (quiet) {
		cli_set_quiet(true);
		if (progress == CLI_PROGRESS_AUTO)
			progress = CLI_PROGRESS_OFF;
	}
	cv.detect_zeros = sparse_set && cv.min_zeros > 0;
	cv.full_alloc = sparse_set && cv.min_zeros == 0;
	cv.out = argv[argc - 1];
	if (access(cv.out, F_OK) == 0) {
		log_err("%s: exists; not overwritten", cv.out);
		return CLI_USAGE;
	}
	atomic_dir_clean_for(cv.out);	/* creators killed before the rename */
	if (src_fmt && cli_format_expect(argv[optind], src_fmt, false) < 0)
		return CLI_USAGE;
	if (cli_chain_open(argv[optind], npos == 3 ? argv[optind + 1] : NULL,
			   &co, &cc) < 0)
		return CLI_USAGE;
	/* the source is read: writers refused (-U: none taken) */
	if (cli_lock_chain(cc.c, 0, force_share) < 0) {
		cli_chain_close(&cc);
		return CLI_USAGE;
	}
	cv.c = cc.c;
	cv.size = cc.c->size;
	r = convert(&cv, fmt, fixed, (uint32_t)bs, progress);
	rc = conv_close_output(&cv, r == 0);
	if (r == 0)
		r = rc;
	if (r < 0 && cv.created && unlink(cv.out) < 0)
		log_err("%s: cannot remove the incomplete output: %s", cv.out,
			strerror(errno));
	if (r == 0 && json)
		print_result(&cv, argv[optind], npos == 3 ? argv[optind + 1]
							   : NULL,
			     fmt, sparse_set);
	free(cv.buf);
	free(cv.runs);
	cli_chain_close(&cc);
	if (r == -EINVAL || r == -ENOTSUP)
		return CLI_USAGE;
	return r < 0 ? CLI_FAIL : CLI_OK;
}
