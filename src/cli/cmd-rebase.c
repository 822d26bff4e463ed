// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * cmd-rebase.c: layerimg rebase, rewrite a layer's parent reference.
 *
 *   layerimg rebase -b NEWPARENT [-F FMT] [-f FMT] [-u] [-q] [-p] [-U]
 *                   [--output=json] TOP
 *
 * The Linux answer to Hyper-V's "reconnect to parent": after files moved
 * or were renamed, TOP is pointed at NEWPARENT through the format's own
 * ->set_parent (VHD: W2ru/W2ku locators, parent name, UUID and time
 * stamp; VHDX: relative_path, absolute_win32_path, parent_linkage; QCOW2:
 * backing file name relative to TOP and backing format).  No data is
 * copied: like `qemu-img rebase -u`, NEWPARENT must hold what the old
 * parent held.  Where the child records its parent's identity (VHD parent
 * UUID, VHDX parent_linkage), NEWPARENT must have it, unless --unsafe,
 * which links NEWPARENT anyway and records its identity.  QCOW2 records
 * no identity: nothing to check.  Afterwards TOP's chain is resolved
 * again, and must reach NEWPARENT.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chain.h"
#include "cli.h"
#include "guid.h"
#include "img.h"
#include "json.h"
#include "log.h"

static void rebase_usage(FILE *f)
{
	fprintf(f,
		"Usage: layerimg rebase -b NEWPARENT [-F FMT] [-f FMT] [-u] [-q] [-p] [-U]\n"
		"                       [--output=human|json] TOP\n"
		"\n"
		"Rewrite the parent reference of the differencing image TOP so that it\n"
		"names NEWPARENT (\"reconnect to parent\" after files moved).  No data is\n"
		"copied: NEWPARENT must hold the data TOP was made over.  Where TOP\n"
		"records its parent's identity (VHD parent UUID, VHDX parent linkage),\n"
		"NEWPARENT must have it.\n"
		"\n"
		"  -b, --backing NEWPARENT  the parent image file TOP is to name\n"
		"  -F, --backing-format FMT NEWPARENT's format: refused if it is another\n"
		"  -f, --format FMT         TOP's format: refused if it is another\n"
		"  -u, --unsafe             link NEWPARENT even if its identity differs,\n"
		"                           and record its identity in TOP\n"
		"  -p, --progress           accepted (no data is copied: nothing to show)\n"
		"  -q, --quiet              print nothing on success\n"
		"  -U, --force-share        read NEWPARENT even if another process\n"
		"                           writes it (a warning; TOP is always locked)\n"
		"      --output=FMT         human (default) or json: the result as one\n"
		"                           JSON object on stdout (--json: the same)\n"
		"  -h, --help               this help\n"
		"\n"
		"Exit status: 0 rebased, 1 refused or failed, 2 bad usage or an\n"
		"unreadable image.\n");
}

int cli_set_parent(const char *top, const char *parent)
{
	struct img_create_parent cp = { 0 };
	struct img *ti = NULL, *pi = NULL;
	char *rtop = NULL, *rpar = NULL, *rel = NULL, *slash;
	int r;

	rtop = realpath(top, NULL);
	rpar = realpath(parent, NULL);
	if (!rtop || !rpar) {
		r = log_err_ret(-errno, "%s: %s", rtop ? parent : top,
				strerror(errno));
		goto out;
	}
	slash = strrchr(rtop, '/');
	if (slash == rtop)
		slash[1] = '\0';
	else
		*slash = '\0';
	rel = chain_path_relative(rtop, rpar);
	if (!rel) {
		r = -ENOMEM;
		goto out;
	}
	r = img_open(parent, NULL, false, &pi);
	if (r < 0)
		goto out;
	r = img_open(top, NULL, true, &ti);
	if (r < 0)
		goto out;
	if (!ti->drv->set_parent || !ti->writable) {
		r = log_err_ret(-ENOTSUP, "%s: cannot record a new parent in a "
				"%s image", top, ti->drv->name);
		goto out;
	}
	cp.img = pi;
	cp.rel_path = rel;
	cp.abs_path = rpar;
	cp.format = pi->drv->name;
	r = ti->drv->set_parent(ti, &cp);
	if (r < 0)
		log_err("%s: cannot rewrite the parent reference: %s", top,
			strerror(-r));
out:
	img_unref(ti);
	img_unref(pi);
	free(rel);
	free(rtop);
	free(rpar);
	return r;
}

/* 1 if the chain of path (resolved quietly, anywhere) contains img */
static int chain_contains(const char *path, const struct img *img)
{
	struct chain_opts o = { .allow_outside = true,
				.ignore_parent_id = true };
	struct chain *c = NULL;
	int found = 0;

	log_set_sink(cli_log_drop);
	if (chain_open_file(path, NULL, &o, &c) == 0) {
		for (unsigned i = 0; i < c->depth; i++)
			if (c->layers[i].img->dev == img->dev &&
			    c->layers[i].img->ino == img->ino)
				found = 1;
		chain_free(c);
	}
	log_set_sink(cli_log_sink);
	return found;
}

/* true if parent lies in top's directory or below it */
static bool inside_dir_of(const char *top, const char *parent)
{
	char *rt = realpath(top, NULL), *rp = realpath(parent, NULL), *s;
	bool in = false;

	if (rt && rp && (s = strrchr(rt, '/'))) {
		size_t n = (size_t)(s - rt) + 1;	/* with the '/' */

		in = !strncmp(rt, rp, n);
	}
	free(rt);
	free(rp);
	return in;
}

/* Does np carry the identity p expects?  1 yes, 0 no, -1 not recorded */
static int identity_matches(const struct img_parent *p, const struct img *np)
{
	if (p->id_kind == IMG_ID_NONE)
		return -1;
	if (!np->has_id)
		return 0;
	return guid_equal(&p->id, &np->id) ||
	       (p->has_id2 && guid_equal(&p->id2, &np->id));
}

struct rebase_args {
	bool unsafe, json, quiet;
	bool force_share;	/* -U: NEWPARENT is read without a lock */
};

static void print_result(const struct rebase_args *a, const char *top,
			 const char *newparent, const char *fmt, int match)
{
	struct json j;

	if (!a->json) {
		if (!a->quiet)
			printf("%s: parent is now %s (%s)\n", top, newparent,
			       fmt);
		return;
	}
	json_init(&j, stdout, false);
	json_obj_begin(&j, NULL);
	json_u64(&j, "version", 1);
	json_str(&j, "command", "rebase");
	json_str(&j, "top", top);
	json_str(&j, "parent", newparent);
	json_str(&j, "parent_format", fmt);
	json_str(&j, "identity_check", match > 0 ? "matched" :
		 match < 0 ? "not-recorded" : "mismatch");
	json_bool(&j, "unsafe", a->unsafe);
	json_obj_end(&j);
	json_end(&j);
}

static int rebase(const char *top, const char *newparent,
		  const struct rebase_args *a)
{
	bool unsafe = a->unsafe;
	struct chain_opts o = { .allow_outside = true };
	struct img_parent p = { 0 };
	struct img *ti = NULL, *np = NULL;
	struct chain *c = NULL;
	char want[GUID_STR_LEN + 1], have[GUID_STR_LEN + 1];
	int r, ret = CLI_FAIL, m;

	if (img_open(top, NULL, false, &ti) < 0 ||
	    img_open(newparent, NULL, false, &np) < 0) {
		ret = CLI_USAGE;
		goto out;
	}
	r = ti->drv->parent ? ti->drv->parent(ti, &p) : 0;
	if (r < 0)
		goto out;
	if (r == 0) {
		log_err("%s: not a differencing image (a %s %s image has no "
			"parent to change)", top, ti->drv->name, ti->subtype);
		goto out;
	}
	if (!ti->drv->set_parent) {
		log_err("%s: cannot record a new parent in a %s image", top,
			ti->drv->name);
		goto out;
	}
	if (ti->dev == np->dev && ti->ino == np->ino) {
		log_err("%s: cannot be its own parent", top);
		goto out;
	}
	/*
	 * TOP is rewritten: refuse early, while a mount or a qemu holds it
	 * (cli_set_parent's writable open takes the lock for the write
	 * itself).  NEWPARENT is read.
	 */
	if (cli_lock_image(ti, IMGLOCK_WRITE, false) < 0 ||
	    cli_lock_image(np, IMGLOCK_READ, a->force_share) < 0)
		goto out;
	if (chain_contains(newparent, ti)) {
		log_err("%s: %s is built on %s: the chain would loop", top,
			newparent, top);
		goto out;
	}
	m = identity_matches(&p, np);
	if (m == 0) {
		guid_to_str(&p.id, want);
		if (np->has_id)
			guid_to_str(&np->id, have);
		else
			strcpy(have, "none");
		if (!unsafe) {
			log_err("%s: %s is not the parent it was made over "
				"(expects {%s}, %s has {%s}); use --unsafe to "
				"link it anyway", top, newparent, want,
				newparent, have);
			goto out;
		}
		log_warn("%s: %s has identity {%s}, not {%s}; linked anyway "
			 "(--unsafe): the chain now reads %s's data under "
			 "this layer", top, newparent, have, want, newparent);
	} else if (m < 0 && !unsafe) {
		log_info("%s: no parent identity recorded: %s not checked",
			 top, newparent);
	}
	if (np->size < ti->size)
		log_warn("%s: %s is smaller than this layer (%llu < %llu "
			 "bytes): past its end the chain reads zeros", top,
			 newparent, (unsigned long long)np->size,
			 (unsigned long long)ti->size);
	img_unref(ti);
	ti = NULL;
	if (cli_set_parent(top, newparent) < 0)
		goto out;

	/* the new reference must lead to NEWPARENT */
	if (chain_open_file(top, NULL, &o, &c) < 0) {
		log_err("%s: the new parent reference does not resolve", top);
		goto out;
	}
	if (c->depth < 2 || c->layers[1].img->dev != np->dev ||
	    c->layers[1].img->ino != np->ino) {
		log_err("%s: the new parent reference resolves to %s, not %s",
			top, c->depth < 2 ? "nothing" : c->layers[1].img->path,
			newparent);
		goto out;
	}
	if (c->layers[0].parent_ref_what &&
	    strcmp(c->layers[0].parent_ref_what, "relative_path") &&
	    strcmp(c->layers[0].parent_ref_what, "W2ru") &&
	    strcmp(c->layers[0].parent_ref_what, "backing file"))
		log_warn("%s: parent found through %s only", top,
			 c->layers[0].parent_ref_what);
	if (!inside_dir_of(top, newparent))
		log_info("%s: %s lies outside its directory: layerimg info, "
			 "map and convert follow it only with --allow-outside "
			 "(layerfs: -o allow_outside)", top, newparent);
	print_result(a, top, newparent, np->drv->name, m);
	ret = CLI_OK;
out:
	chain_free(c);
	img_parent_clear(&p);
	img_unref(ti);
	img_unref(np);
	return ret;
}

int cmd_rebase(int argc, char **argv)
{
	enum { OPT_OUTPUT = 256, OPT_JSON };
	static const struct option opts[] = {
		{ "backing", required_argument, NULL, 'b' },
		{ "backing-format", required_argument, NULL, 'F' },
		{ "format", required_argument, NULL, 'f' },
		{ "unsafe", no_argument, NULL, 'u' },
		{ "progress", no_argument, NULL, 'p' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "force-share", no_argument, NULL, 'U' },
		{ "output", required_argument, NULL, OPT_OUTPUT },
		{ "json", no_argument, NULL, OPT_JSON },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct rebase_args a = { 0 };
	const char *newparent = NULL, *fmt = NULL, *pfmt = NULL;
	int ch;

	while ((ch = getopt_long(argc, argv, "b:F:f:upqUh", opts, NULL)) != -1) {
		switch (ch) {
		case 'b':
			newparent = optarg;
			break;
		case 'F':
			pfmt = optarg;
			break;
		case 'f':
			fmt = optarg;
			break;
		case 'u':
			a.unsafe = true;
			break;
		case 'p':	/* no data is copied: no progress to draw */
			break;
		case 'U':
			a.force_share = true;
			break;
		case 'q':
			a.quiet = true;
			break;
		case OPT_OUTPUT:
			if (cli_parse_output(optarg, &a.json) < 0)
				return cli_try_help();
			break;
		case OPT_JSON:
			a.json = true;
			break;
		case 'h':
			rebase_usage(stdout);
			return CLI_OK;
		default:
			return cli_try_help();
		}
	}
	if (!newparent || argc - optind != 1) {
		if (!newparent && argc - optind == 1)
			cli_error("-b NEWPARENT is required");
		else
			cli_error("expected one TOP");
		return cli_try_help();
	}
	cli_set_quiet(a.quiet);
	if ((fmt && cli_format_expect(argv[optind], fmt, false) < 0) ||
	    (pfmt && cli_format_expect(newparent, pfmt, false) < 0))
		return CLI_USAGE;
	return rebase(argv[optind], newparent, &a);
}
