// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * cmd-info.c: layerimg info, a resolved chain from top to bottom.
 *
 * For each layer: file, format and subtype, layer tag, sizes, block size,
 * allocated bytes (its own DATA extents, from img_map), the parent
 * reference as written and as resolved, which locator resolved and the
 * identity check, a VHDX log replayed in memory, QCOW2 internal
 * snapshots.  For the chain: the layer-rule findings and the partitions
 * part_scan finds.  An IMAGEDIR shows every chain.  --json is documented
 * in docs/layerimg-json.md; its layout is stable.
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "chain.h"
#include "cli.h"
#include "json.h"
#include "layers.h"
#include "log.h"
#include "part.h"
#include "registry.h"

#define INFO_SCHEMA_VERSION 1
#define INFO_MAX_WARNINGS 64

/* What one layer's own extents hold. */
struct layer_alloc {
	uint64_t data, zero;
};

/* The chain's layer-rule and identity findings, as text. */
struct warnings {
	char *msg[INFO_MAX_WARNINGS];	/* owned */
	size_t n;
};

static void info_usage(FILE *f)
{
	fprintf(f,
		"Usage: layerimg info [--output=human|json] [-f FMT] [-U] IMAGE|IMAGEDIR\n"
		"                     [CHAIN]\n"
		"\n"
		"Show a resolved chain from top to bottom: each layer's file, format,\n"
		"layer tag, sizes, allocation, parent reference (as written and as\n"
		"resolved) and identity check, a VHDX log, QCOW2 snapshots; then the\n"
		"layer-rule warnings and the partitions of the flat disk.  For an\n"
		"IMAGEDIR, every chain (or the one named CHAIN).\n"
		"\n"
		"      --output=FMT        human (default) or json (--json, -j: the same);\n"
		"                          the JSON is described in\n"
		"                          " LAYERIMG_JSON_DOC "\n"
		"  -f, --format FMT        IMAGE's format: refused if it is another\n"
		"      --backing-chain     accepted as qemu-img's: the whole chain is\n"
		"                          always shown\n"
		CLI_FORCE_SHARE_HELP
		"      --no-partitions     do not look for a partition table\n"
		CLI_CHAIN_HELP
		"  -h, --help              this help\n");
}

static void human_size(uint64_t v, char *buf, size_t len)
{
	static const char *const unit[] = { "B", "KiB", "MiB", "GiB", "TiB",
					     "PiB", "EiB" };
	double d = (double)v;
	unsigned u = 0;

	while (d >= 1024 && u + 1 < sizeof(unit) / sizeof(unit[0])) {
		d /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, len, "%" PRIu64 " B", v);
	else if (v % (1ull << (10 * u)) == 0)
		snprintf(buf, len, "%.0f %s", d, unit[u]);
	else
		snprintf(buf, len, "%.1f %s", d, unit[u]);
}

/* "64 MiB (67108864 bytes)" */
static const char *size_str(uint64_t v, char *buf, size_t len)
{
	char h[32];

	human_size(v, h, sizeof(h));
	snprintf(buf, len, "%s (%" PRIu64 " bytes)", h, v);
	return buf;
}

static int layer_alloc_scan(struct img *img, struct layer_alloc *a)
{
	uint64_t off = 0;

	a->data = a->zero = 0;
	while (off < img->size) {
		struct img_extent e;
		int r = img_map(img, off, img->size - off, &e);

		if (r < 0)
			return r;	/* the driver said why */
		if (e.type == IMG_EXT_DATA)
			a->data += e.len;
		else if (e.type == IMG_EXT_ZERO)
			a->zero += e.len;
		off += e.len;
	}
	return 0;
}

static void warn_add(struct warnings *w, const char *fmt, ...) __printf(2, 3);

static void warn_add(struct warnings *w, const char *fmt, ...)
{
	va_list ap;
	char *s;

	if (w->n == INFO_MAX_WARNINGS)
		return;
	va_start(ap, fmt);
	if (vasprintf(&s, fmt, ap) >= 0)
		w->msg[w->n++] = s;
	va_end(ap);
}

/* The same rules scan.c applies, so info can list every finding. */
static void chain_warnings(const struct chain *c, struct warnings *w)
{
	char msg[LAYER_MSG_MAX];

	for (unsigned i = 0; i < c->depth; i++) {
		const struct chain_layer *l = &c->layers[i];

		if (!layer_check_self(&l->tag, msg, sizeof(msg)))
			warn_add(w, "%s: layer rule: %s", l->img->path, msg);
		if (i + 1 == c->depth)
			continue;
		if (!layer_check_pair(&l->tag, &c->layers[i + 1].tag, msg,
				      sizeof(msg)))
			warn_add(w, "%s: layer rule: %s", l->img->path, msg);
		if (l->id_check < 0)
			warn_add(w, "%s: parent %s identity mismatch "
				 "(ignored)", l->img->path,
				 c->layers[i + 1].img->path);
	}
}

static void warnings_free(struct warnings *w)
{
	for (size_t i = 0; i < w->n; i++)
		free(w->msg[i]);
	w->n = 0;
}

static const char *ref_kind_name(enum img_ref_kind k)
{
	switch (k) {
	case IMG_REF_RELATIVE:
		return "relative";
	case IMG_REF_ABSOLUTE:
		return "absolute";
	case IMG_REF_NAME:
		return "name";
	}
	return "unknown";
}

static const char *id_kind_name(enum img_id_kind k)
{
	switch (k) {
	case IMG_ID_NONE:
		return NULL;
	case IMG_ID_VHD_UUID:
		return "vhd-uuid";
	case IMG_ID_VHDX_LINKAGE:
		return "vhdx-parent-linkage";
	}
	return NULL;
}

static const char *id_check_name(int id_check)
{
	return id_check > 0 ? "matched" : id_check < 0 ? "mismatch"
						       : "not-recorded";
}

static void date_str(uint32_t sec, char *buf, size_t len)
{
	time_t t = (time_t)sec;
	struct tm tm;

	if (!gmtime_r(&t, &tm) ||
	    !strftime(buf, len, "%Y-%m-%dT%H:%M:%SZ", &tm))
		snprintf(buf, len, "%u", sec);
}

/* ---- JSON ---- */

static void json_layer(struct json *j, const struct chain *c, unsigned i,
		       const struct layer_alloc *a, bool alloc_ok)
{
	const struct chain_layer *l = &c->layers[i];
	struct img *img = l->img;
	struct img_parent p = { 0 };
	struct img_info inf;
	char tag[LAYER_TAG_MAX], g[GUID_STR_LEN + 1], d[32];
	int pr;

	json_obj_begin(j, NULL);
	json_u64(j, "index", i);
	json_str(j, "file", img->path);
	json_str(j, "format", img->drv->name);
	json_str(j, "subtype", img->subtype[0] ? img->subtype : NULL);
	layer_tag_format(&l->tag, tag, sizeof(tag));
	json_str(j, "layer", l->tag.tagged ? tag : NULL);
	json_u64(j, "virtual_size", img->size);
	json_u64(j, "logical_sector_size", img->sector_size);
	json_u64(j, "physical_sector_size",
		 img->phys_sector_size ? img->phys_sector_size
				       : img->sector_size);
	if (img->block_size)
		json_u64(j, "block_size", img->block_size);
	else
		json_null(j, "block_size");
	json_u64(j, "file_size", img->file_size);
	if (alloc_ok) {
		json_u64(j, "allocated_bytes", a->data);
		json_u64(j, "zero_bytes", a->zero);
	} else {
		json_null(j, "allocated_bytes");
		json_null(j, "zero_bytes");
	}
	if (img->has_id) {
		guid_to_str(&img->id, g);
		json_str(j, "identity", g);
	} else {
		json_null(j, "identity");
	}

	pr = img->drv->parent ? img->drv->parent(img, &p) : 0;
	if (pr > 0 || i + 1 < c->depth) {
		json_obj_begin(j, "parent");
		json_str(j, "reference", l->parent_ref);
		json_str(j, "locator", l->parent_ref_what);
		json_str(j, "resolved", i + 1 < c->depth
						? c->layers[i + 1].img->path
						: NULL);
		json_str(j, "identity_check", id_check_name(l->id_check));
		json_str(j, "recorded_format", pr > 0 ? p.format : NULL);
		json_str(j, "identity_kind", pr > 0 ? id_kind_name(p.id_kind)
						    : NULL);
		if (pr > 0 && p.id_kind != IMG_ID_NONE) {
			guid_to_str(&p.id, g);
			json_str(j, "expected_identity", g);
		} else {
			json_null(j, "expected_identity");
		}
		json_arr_begin(j, "references");
		for (unsigned k = 0; pr > 0 && k < p.nrefs; k++) {
			json_obj_begin(j, NULL);
			json_str(j, "kind", ref_kind_name(p.refs[k].kind));
			json_str(j, "locator", p.refs[k].what);
			json_str(j, "path", p.refs[k].path);
			json_obj_end(j);
		}
		json_arr_end(j);
		json_obj_end(j);
	} else {
		json_null(j, "parent");
	}
	img_parent_clear(&p);

	if (img_info_get(img, &inf) < 0)
		memset(&inf, 0, sizeof(inf));
	if (inf.has_log) {
		json_obj_begin(j, "log");
		json_bool(j, "dirty", inf.log.dirty);
		json_u64(j, "entries_replayed", inf.log.entries);
		if (inf.log.dirty) {
			guid_to_str(&inf.log.guid, g);
			json_str(j, "guid", g);
		} else {
			json_null(j, "guid");
		}
		json_u64(j, "offset", inf.log.offset);
		json_u64(j, "length", inf.log.length);
		json_obj_end(j);
	}
	if (inf.has_snapshots && inf.snapshots_err < 0) {
		json_null(j, "snapshots");
	} else if (inf.has_snapshots) {
		json_arr_begin(j, "snapshots");
		for (size_t k = 0; k < inf.nsnapshots; k++) {
			const struct img_snapshot *sn = &inf.snapshots[k];

			json_obj_begin(j, NULL);
			json_str(j, "id", sn->id);
			json_str(j, "name", sn->name);
			date_str(sn->date_sec, d, sizeof(d));
			json_str(j, "date", d);
			json_u64(j, "date_sec", sn->date_sec);
			json_u64(j, "vm_clock_nsec", sn->vm_clock_nsec);
			json_u64(j, "vm_state_size", sn->vm_state_size);
			json_u64(j, "disk_size", sn->disk_size);
			json_obj_end(j);
		}
		json_arr_end(j);
	}
	if (inf.nfacts) {
		json_obj_begin(j, "format_specific");
		for (unsigned k = 0; k < inf.nfacts; k++)
			json_u64(j, inf.facts[k].key, inf.facts[k].value);
		json_obj_end(j);
	}
	img_info_clear(&inf);
	json_obj_end(j);
}

static void json_partitions(struct json *j, const struct part_table *t)
{
	if (!t) {
		json_null(j, "partitions");
		return;
	}
	json_obj_begin(j, "partitions");
	json_str(j, "table", t->type[0] ? t->type : NULL);
	json_str(j, "id", t->id[0] ? t->id : NULL);
	json_u64(j, "sector_size", t->sector_size);
	json_arr_begin(j, "entries");
	for (size_t i = 0; i < t->nparts; i++) {
		const struct part *p = &t->parts[i];

		json_obj_begin(j, NULL);
		json_u64(j, "number", p->number);
		json_u64(j, "start", p->start);
		json_u64(j, "size", p->size);
		json_str(j, "type", p->type);
		json_str(j, "name", p->name[0] ? p->name : NULL);
		json_str(j, "uuid", p->uuid[0] ? p->uuid : NULL);
		json_str(j, "fstype", p->fstype[0] ? p->fstype : NULL);
		json_str(j, "label", p->label[0] ? p->label : NULL);
		json_bool(j, "container", p->container);
		json_obj_end(j);
	}
	json_arr_end(j);
	json_obj_end(j);
}

/* ---- text ---- */

static void text_layer(const struct chain *c, unsigned i,
		       const struct layer_alloc *a, bool alloc_ok)
{
	const struct chain_layer *l = &c->layers[i];
	struct img *img = l->img;
	struct img_info inf;
	char tag[LAYER_TAG_MAX], g[GUID_STR_LEN + 1], s[64], h[32];

	layer_tag_format(&l->tag, tag, sizeof(tag));
	printf("  [%u] %s\n", i, img->path);
	printf("      format:        %s%s%s%s\n", img->drv->name,
	       img->subtype[0] ? " (" : "", img->subtype,
	       img->subtype[0] ? ")" : "");
	printf("      layer tag:     %s\n", l->tag.tagged ? tag : "(none)");
	printf("      virtual size:  %s\n", size_str(img->size, s, sizeof(s)));
	printf("      sectors:       %u logical, %u physical\n",
	       img->sector_size,
	       img->phys_sector_size ? img->phys_sector_size
				     : img->sector_size);
	if (img->block_size) {
		human_size(img->block_size, h, sizeof(h));
		printf("      block size:    %s\n", h);
	}
	printf("      file size:     %s\n",
	       size_str(img->file_size, s, sizeof(s)));
	if (alloc_ok) {
		printf("      allocated:     %s", size_str(a->data, s, sizeof(s)));
		if (a->zero) {
			human_size(a->zero, h, sizeof(h));
			printf(", and %s marked zero", h);
		}
		putchar('\n');
	}
	if (img->has_id) {
		guid_to_str(&img->id, g);
		printf("      identity:      {%s}\n", g);
	}
	if (i + 1 < c->depth) {
		printf("      parent:        \"%s\" (%s) -> %s\n",
		       l->parent_ref ? l->parent_ref : "",
		       l->parent_ref_what ? l->parent_ref_what : "?",
		       c->layers[i + 1].img->path);
		printf("      parent id:     %s\n",
		       l->id_check > 0   ? "matched"
		       : l->id_check < 0 ? "MISMATCH (ignored)"
					 : "not recorded");
	}
	if (img_info_get(img, &inf) < 0)
		memset(&inf, 0, sizeof(inf));
	if (inf.has_log && inf.log.dirty)
		printf("      log:           dirty, %u entr%s replayed in memory "
		       "(the file is not changed)\n",
		       inf.log.entries, inf.log.entries == 1 ? "y" : "ies");
	if (inf.nsnapshots) {
		printf("      snapshots:     %zu\n", inf.nsnapshots);
		printf("        %-8s %-20s %-20s %10s %12s\n", "ID", "NAME",
		       "DATE", "VM STATE", "VM CLOCK");
		for (size_t k = 0; k < inf.nsnapshots; k++) {
			const struct img_snapshot *sn = &inf.snapshots[k];
			char d[32];
			uint64_t cs = sn->vm_clock_nsec / 1000000000u;

			date_str(sn->date_sec, d, sizeof(d));
			human_size(sn->vm_state_size, h, sizeof(h));
			printf("        %-8s %-20s %-20s %10s %4" PRIu64
			       ":%02u:%02u\n",
			       sn->id, sn->name, d, h, cs / 3600,
			       (unsigned)(cs / 60 % 60), (unsigned)(cs % 60));
		}
	}
	if (inf.nfacts) {
		printf("      format facts:  ");
		for (unsigned k = 0; k < inf.nfacts; k++)
			printf("%s%s=%" PRIu64, k ? ", " : "", inf.facts[k].key,
			       inf.facts[k].value);
		putchar('\n');
	}
	img_info_clear(&inf);
}

static void text_partitions(const struct part_table *t)
{
	char h[32];

	if (!t)
		return;
	if (!t->type[0]) {
		printf("  partitions:    none (no partition table)\n");
		return;
	}
	printf("  partitions:    %s, id %s, %u-byte sectors\n", t->type,
	       t->id[0] ? t->id : "-", t->sector_size);
	if (!t->nparts)
		return;
	printf("    %-3s %-14s %-10s %-38s %-8s %s\n", "#", "START", "SIZE",
	       "TYPE", "FS", "NAME/LABEL");
	for (size_t i = 0; i < t->nparts; i++) {
		const struct part *p = &t->parts[i];

		human_size(p->size, h, sizeof(h));
		printf("    %-3u %-14" PRIu64 " %-10s %-38s %-8s %s%s%s%s\n",
		       p->number, p->start, h, p->type,
		       p->container ? "(ext)" : p->fstype[0] ? p->fstype : "-",
		       p->name, p->name[0] && p->label[0] ? " / " : "",
		       p->label, !p->name[0] && !p->label[0] ? "-" : "");
	}
}

/* ---- one chain ---- */

static int info_chain(struct json *j, struct chain *c, bool parts)
{
	struct layer_alloc *a;
	struct warnings w = { 0 };
	struct part_table *t = NULL;
	bool *alloc_ok;
	char s[64];
	int ret = 0;

	a = calloc(c->depth, sizeof(*a));
	alloc_ok = calloc(c->depth, sizeof(*alloc_ok));
	if (!a || !alloc_ok) {
		free(a);
		free(alloc_ok);
		return -ENOMEM;
	}
	for (unsigned i = 0; i < c->depth; i++) {
		alloc_ok[i] = layer_alloc_scan(c->layers[i].img, &a[i]) == 0;
		if (!alloc_ok[i])
			ret = -EIO;
	}
	chain_warnings(c, &w);
	if (parts && part_scan(c, &t) < 0) {	/* logged where it failed */
		t = NULL;
		ret = -EIO;
	}

	if (j) {
		json_obj_begin(j, NULL);
		json_str(j, "name", c->name);
		json_str(j, "top", c->top_path);
		json_u64(j, "virtual_size", c->size);
		json_u64(j, "sector_size", c->sector_size);
		json_u64(j, "depth", c->depth);
		json_bool(j, "is_parent", c->is_parent);
		json_arr_begin(j, "layers");
		for (unsigned i = 0; i < c->depth; i++)
			json_layer(j, c, i, &a[i], alloc_ok[i]);
		json_arr_end(j);
		json_arr_begin(j, "warnings");
		for (size_t i = 0; i < w.n; i++)
			json_str(j, NULL, w.msg[i]);
		json_arr_end(j);
		if (parts)
			json_partitions(j, t);
		json_obj_end(j);
	} else {
		printf("chain %s: %s, %u-byte sectors, %u layer%s\n", c->name,
		       size_str(c->size, s, sizeof(s)), c->sector_size,
		       c->depth, c->depth == 1 ? "" : "s");
		for (unsigned i = 0; i < c->depth; i++)
			text_layer(c, i, &a[i], alloc_ok[i]);
		if (w.n) {
			printf("  warnings:\n");
			for (size_t i = 0; i < w.n; i++)
				printf("    %s\n", w.msg[i]);
		} else {
			printf("  warnings:      none\n");
		}
		if (parts)
			text_partitions(t);
	}
	part_table_free(t);
	warnings_free(&w);
	free(a);
	free(alloc_ok);
	return ret;
}

int cmd_info(int argc, char **argv)
{
	enum { OPT_NOPART = 256, OPT_OUTPUT, OPT_BACKING_CHAIN };
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "output", required_argument, NULL, OPT_OUTPUT },
		{ "format", required_argument, NULL, 'f' },
		{ "backing-chain", no_argument, NULL, OPT_BACKING_CHAIN },
		{ "force-share", no_argument, NULL, 'U' },
		{ "no-partitions", no_argument, NULL, OPT_NOPART },
		CLI_CHAIN_OPTIONS,
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct chain_opts co = { 0 };
	struct cli_chain cc = { 0 };
	struct chainset *all = NULL;
	struct json js, *j = NULL;
	bool json = false, parts = true, force_share = false;
	const char *path, *name, *fmt = NULL;
	struct stat st;
	unsigned nfailed = 0;
	int ch, r = 0;

	while ((ch = getopt_long(argc, argv, "jf:Uh", opts, NULL)) != -1) {
		switch (ch) {
		case 'j':
			json = true;
			break;
		case OPT_OUTPUT:
			if (cli_parse_output(optarg, &json) < 0)
				return cli_try_help();
			break;
		case 'f':
			fmt = optarg;
			break;
		case OPT_BACKING_CHAIN:	/* always the whole chain */
			break;
		case 'U':
			force_share = true;
			break;
		case OPT_NOPART:
			parts = false;
			break;
		case 'h':
			info_usage(stdout);
			return CLI_OK;
		default:
			if (cli_chain_option(ch, &co))
				break;
			return cli_try_help();
		}
	}
	if (argc - optind < 1 || argc - optind > 2) {
		cli_error("expected IMAGE|IMAGEDIR [CHAIN]");
		return cli_try_help();
	}
	path = argv[optind];
	name = argc - optind == 2 ? argv[optind + 1] : NULL;
	if (stat(path, &st) < 0) {
		log_err("%s: %s", path, strerror(errno));
		return CLI_USAGE;
	}
	if (fmt && S_ISDIR(st.st_mode)) {
		cli_error("-f names the format of an IMAGE, not of a directory");
		return cli_try_help();
	}
	if (fmt && cli_format_expect(path, fmt, false) < 0)
		return CLI_USAGE;
	if (S_ISDIR(st.st_mode) && !name) {
		if (chainset_scan(path, &co, &all) < 0)
			return CLI_USAGE;
		nfailed = all->nfailed;
	} else if (cli_chain_open(path, name, &co, &cc) < 0) {
		return CLI_USAGE;
	}
	/* read locks, as qemu-img info takes (-U: none) */
	for (size_t i = 0; all && i < all->nchains && r == 0; i++)
		r = cli_lock_chain(all->chains[i], 0, force_share);
	if (!all)
		r = cli_lock_chain(cc.c, 0, force_share);
	if (r < 0) {
		chainset_free(all);
		cli_chain_close(&cc);
		return CLI_USAGE;
	}

	if (json) {
		j = &js;
		json_init(j, stdout, false);
		json_obj_begin(j, NULL);
		json_u64(j, "version", INFO_SCHEMA_VERSION);
		json_str(j, "path", path);
		json_arr_begin(j, "chains");
	}
	if (all) {
		for (size_t i = 0; i < all->nchains; i++) {
			if (!json && i)
				putchar('\n');
			if (info_chain(j, all->chains[i], parts) < 0)
				r = -EIO;
		}
	} else {
		r = info_chain(j, cc.c, parts);
	}
	if (json) {
		json_arr_end(j);
		json_u64(j, "failed", nfailed);
		json_obj_end(j);
		json_end(j);
	} else if (nfailed) {
		printf("\n%u image%s of %s left out (see the messages above)\n",
		       nfailed, nfailed == 1 ? "" : "s", path);
	}
	chainset_free(all);
	cli_chain_close(&cc);
	if (fflush(stdout) != 0 || ferror(stdout))
		return CLI_FAIL;
	return r < 0 ? CLI_FAIL : CLI_OK;
}
