// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * cmd-map.c: layerimg map, the extents of a chain's flat disk and which
 * layer provides each one (like `qemu-img map`).
 *
 * The disk is walked with chain_view_map; neighbouring runs with the same
 * provider (same layer and kind, and for data in a file, contiguous host
 * offsets) are joined.  --json prints qemu-img map's fields: start,
 * length, depth (0 the top), present, zero, data, offset (data stored
 * plainly in a file), plus file (the layer's path).
 */
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>

#include "chain.h"
#include "cli.h"
#include "json.h"
#include "log.h"

struct map_run {
	uint64_t start, len;
	enum chain_ext_type type;
	bool allocated;
	unsigned layer;		/* the provider, or a hole's depth */
	int fd;
	uint64_t host_off;
};

static void map_usage(FILE *f)
{
	fprintf(f,
		"Usage: layerimg map [--output=human|json] [-f FMT] [-U] IMAGE|IMAGEDIR\n"
		"                    [CHAIN]\n"
		"\n"
		"Show the extents of the chain's flat disk and which layer (or a\n"
		"zero run, or a hole) provides each one, like qemu-img map.\n"
		"\n"
		"      --output=FMT        human (default) or json (--json, -j: the\n"
		"                          same): qemu-img map's fields (start, length,\n"
		"                          depth, present, zero, data, offset) plus file\n"
		"  -f, --format FMT        IMAGE's format: refused if it is another\n"
		CLI_FORCE_SHARE_HELP
		CLI_CHAIN_HELP
		"  -h, --help              this help\n");
}

static bool run_joins(const struct map_run *a, const struct chain_extent *e)
{
	if (a->type != e->type || a->allocated != e->allocated ||
	    a->layer != e->layer)
		return false;
	if (a->type == CHAIN_EXT_HOST)
		return a->fd == e->fd && a->host_off + a->len == e->host_off;
	return true;
}

/*
 * qemu's depth of a hole: the deepest layer that reaches off (a parent
 * smaller than its child ends sooner).  chain_view_map never returns a run
 * that crosses the end of a layer.
 */
static unsigned hole_depth(const struct chain *c, uint64_t off)
{
	unsigned d = 0;

	while (d + 1 < c->depth && off < c->layers[d + 1].img->size)
		d++;
	return d;
}

static void print_run(const struct chain *c, const struct map_run *r,
		      bool json, bool first)
{
	const char *file = r->allocated ? c->layers[r->layer].img->path : NULL;

	if (json) {
		printf("%s  { \"start\": %" PRIu64 ", \"length\": %" PRIu64
		       ", \"depth\": %u, \"present\": %s, \"zero\": %s, "
		       "\"data\": %s",
		       first ? "" : ",\n", r->start, r->len, r->layer,
		       r->allocated ? "true" : "false",
		       r->type == CHAIN_EXT_ZERO ? "true" : "false",
		       r->type == CHAIN_EXT_ZERO ? "false" : "true");
		if (r->type == CHAIN_EXT_HOST)
			printf(", \"offset\": %" PRIu64, r->host_off);
		if (file) {
			fputs(", \"file\": ", stdout);
			json_write_string(stdout, file);
		}
		fputs(" }", stdout);
		return;
	}
	printf("%#-18" PRIx64 " %#-18" PRIx64 " ", r->start, r->len);
	if (r->allocated)
		printf("%-5u ", r->layer);
	else
		printf("%-5s ", "-");
	if (r->type == CHAIN_EXT_HOST)
		printf("%-5s %#-18" PRIx64 " %s\n", "data", r->host_off, file);
	else if (r->type == CHAIN_EXT_READ)
		printf("%-5s %-18s %s\n", "data", "(decoded)", file);
	else if (r->allocated)
		printf("%-5s %-18s %s\n", "zero", "-", file);
	else
		printf("%-5s %-18s %s\n", "hole", "-", "-");
}

static int map_chain(struct chain *c, bool json)
{
	struct map_run cur = { 0 };
	struct chain_view *v;
	bool have = false, first = true;
	uint64_t off = 0;
	int r = 0;

	if (json)
		fputs("[\n", stdout);
	else
		printf("%-18s %-18s %-5s %-5s %-18s %s\n", "Start", "Length",
		       "Layer", "Kind", "Offset", "File");
	v = chain_view_get(c);
	while (off < c->size) {
		struct chain_extent e;

		r = chain_view_map(v, off, c->size - off, &e);
		if (r < 0)
			break;		/* the driver said why */
		if (!e.allocated)
			e.layer = hole_depth(c, off);
		if (have && run_joins(&cur, &e)) {
			cur.len += e.len;
		} else {
			if (have) {
				print_run(c, &cur, json, first);
				first = false;
			}
			cur = (struct map_run){ .start = off, .len = e.len,
						.type = e.type,
						.allocated = e.allocated,
						.layer = e.layer, .fd = e.fd,
						.host_off = e.host_off };
			have = true;
		}
		off += e.len;
	}
	chain_view_put(v);
	if (r == 0 && have)
		print_run(c, &cur, json, first);
	if (json)
		fputs("\n]\n", stdout);
	return r;
}

int cmd_map(int argc, char **argv)
{
	enum { OPT_OUTPUT = 256 };
	static const struct option opts[] = {
		{ "json", no_argument, NULL, 'j' },
		{ "output", required_argument, NULL, OPT_OUTPUT },
		{ "format", required_argument, NULL, 'f' },
		{ "force-share", no_argument, NULL, 'U' },
		CLI_CHAIN_OPTIONS,
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct chain_opts co = { 0 };
	struct cli_chain cc;
	const char *fmt = NULL;
	bool json = false, force_share = false;
	int ch, r;

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
		case 'U':
			force_share = true;
			break;
		case 'h':
			map_usage(stdout);
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
	if (fmt && cli_format_expect(argv[optind], fmt, false) < 0)
		return CLI_USAGE;
	if (cli_chain_open(argv[optind], argc - optind == 2 ? argv[optind + 1]
							     : NULL,
			   &co, &cc) < 0)
		return CLI_USAGE;
	if (cli_lock_chain(cc.c, 0, force_share) < 0) {
		cli_chain_close(&cc);
		return CLI_USAGE;
	}
	r = map_chain(cc.c, json);
	cli_chain_close(&cc);
	if (fflush(stdout) != 0 || ferror(stdout))
		return CLI_FAIL;
	return r < 0 ? CLI_FAIL : CLI_OK;
}
