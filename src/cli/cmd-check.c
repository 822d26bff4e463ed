// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * cmd-check.c: layerimg check, a structural check of one image file.
 *
 *   layerimg check [-r leaks|all] [--output=json] [-q] [-f FMT] [-U] IMAGE
 *
 * The format's ->check hook does the work.  It gets a struct img whose fd,
 * path, file_size and driver are set but whose ->open has NOT run (priv is
 * NULL): a checker reads and judges every structure itself, so it can
 * report on files that open would refuse.  Each finding is one log line
 * naming the file; the hook counts them in struct img_check.
 *
 * Exit status, qemu-img check's (enum cli_check_status): 0 clean, 1 could
 * not check (or bad usage), 2 errors/corruptions, 3 leaks only, 63 the
 * format has no checker (raw, qcow).  Warnings do not change the status.
 * -r leaks repairs only when the check finds no errors (so only leaks get
 * fixed); -r all (--repair) lets the driver fix everything it can.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chain.h"
#include "cli.h"
#include "compiler.h"
#include "img.h"
#include "log.h"

static const char usage_text[] =
	"Usage: layerimg check [-r leaks|all] [--output=human|json] [-q]\n"
	"                      [-f FMT] [-U] IMAGE\n"
	"\n"
	"Check the structure of one image file (qcow2, vhd, vhdx, Android\n"
	"sparse): every table inside the file, no overlaps, checksums,\n"
	"bitmaps, and for qcow2 every cluster's reference count.  Each\n"
	"finding is one line on stderr naming the file, the structure and\n"
	"its offset or index.\n"
	"\n"
	"  -r, --repair=leaks|all  fix what is safe to fix, only in a top layer\n"
	"                (refused if another image in the same directory uses\n"
	"                IMAGE as its parent): leaks only when no errors were\n"
	"                found (qcow2 leaked clusters), or all (also the vhd\n"
	"                footer from its copy, the footer checksum).  --repair\n"
	"                without a value is all\n"
	"  -f, --format FMT  IMAGE's format (qcow2, vhd or vpc, vhdx, asparse,\n"
	"                raw): refused if the content is another format; a\n"
	"                file too damaged to be recognised is checked as FMT\n"
	"      --output=FMT  human (default) or json: the summary as one JSON\n"
	"                object on stdout (--json, -j: the same)\n"
	"  -q, --quiet   no summary (findings are still printed)\n"
	"  -U, --force-share  check an image another process writes (a\n"
	"                warning; no locks; not with --repair)\n"
	"  -h, --help    this help\n"
	"\n"
	"Exit status (qemu-img check's): 0 clean, 1 could not check (or usage),\n"
	"2 errors found, 3 only leaks found (harmless), 63 the format has no\n"
	"checker.\n";

/* Findings collected for --json (and printed on stderr as usual). */
struct finding {
	enum log_level lvl;
	char *msg;		/* owned */
};

static struct finding *findings;	/* owned */
static size_t nfindings, findings_cap;
static bool quiet_sink;			/* drop everything (directory scan) */
/* -U: no locks taken, a writer holding the image only warns */
static bool force_share;

static void check_sink(enum log_level lvl, const char *msg)
{
	if (quiet_sink)
		return;
	cli_log_sink(lvl, msg);
	if (lvl > LOG_LVL_WARN)
		return;
	if (nfindings == findings_cap) {
		size_t ncap = findings_cap ? 2 * findings_cap : 16;
		struct finding *n = reallocarray(findings, ncap, sizeof(*n));

		if (!n)
			return;
		findings = n;
		findings_cap = ncap;
	}
	findings[nfindings].lvl = lvl;
	findings[nfindings].msg = strdup(msg);
	if (findings[nfindings].msg)
		nfindings++;
}

static void findings_free(void)
{
	for (size_t i = 0; i < nfindings; i++)
		free(findings[i].msg);
	free(findings);
	findings = NULL;
	nfindings = findings_cap = 0;
}

static void json_str(FILE *f, const char *s)
{
	fputc('"', f);
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\')
			fprintf(f, "\\%c", c);
		else if (c < 0x20)
			fprintf(f, "\\u%04x", c);
		else
			fputc(c, f);
	}
	fputc('"', f);
}

/*
 * Is the file at path the parent of another image in its directory?
 * 1 yes (*child set, owned), 0 no, -errno if the directory cannot be read.
 */
static int used_as_parent(const char *path, const struct stat *st,
			  char **child)
{
	struct chain_opts o = { .allow_outside = false };
	struct chainset *cs;
	char *copy = strdup(path), *dir;
	int r, found = 0;

	if (!copy)
		return -ENOMEM;
	dir = dirname(copy);
	quiet_sink = true;	/* other files' problems are not ours */
	r = chainset_scan(dir, &o, &cs);
	quiet_sink = false;
	if (r < 0) {
		log_err("%s: cannot scan the directory to find its children "
			"(%s)", dir, strerror(-r));
		free(copy);
		return r;
	}
	for (size_t i = 0; i < cs->nchains && !found; i++) {
		const struct chain *c = cs->chains[i];

		for (unsigned k = 1; k < c->depth; k++) {
			const struct img *img = c->layers[k].img;

			if (img->dev == st->st_dev && img->ino == st->st_ino) {
				*child = strdup(c->top_path);
				found = *child ? 1 : -ENOMEM;
				break;
			}
		}
	}
	chainset_free(cs);
	free(copy);
	return found;
}

/*
 * Run the driver's check on path.  0 (res filled), or -errno: could not
 * check (logged; -ENOTSUP: the format has no checker).  *drv_out names the format.
 */
static int run_check(const char *path, const struct img_driver *drv,
		     bool repair, struct img_check *res,
		     const struct img_driver **drv_out)
{
	struct img *img;
	struct stat st;
	int r;

	if (access(path, repair ? R_OK | W_OK : R_OK) < 0)
		return log_err_ret(-errno, "%s: cannot open: %s", path,
				   strerror(errno));
	if (!drv)
		drv = img_probe_file(path);
	if (!drv)
		return log_err_ret(-EINVAL, "%s: not a disk image (unknown "
				   "format)", path);
	*drv_out = drv;
	memset(res, 0, sizeof(*res));
	if (!drv->check) {
		/* no structural checker: what open validates is the check */
		r = img_open(path, drv, false, &img);
		if (r == -EUCLEAN || r == -EBADMSG) {
			res->errors = 1;
			return 0;
		}
		if (r < 0)
			return r;
		img_unref(img);
		return log_err_ret(-ENOTSUP, "%s: the %s format has no "
				   "structural check (it opens cleanly)", path,
				   drv->name);
	}

	img = calloc(1, sizeof(*img));
	if (!img)
		return -ENOMEM;
	img->refcnt = 1;
	img->writable = repair;
	img->path = strdup(path);
	img->fd = open(path, (repair ? O_RDWR : O_RDONLY) | O_CLOEXEC);
	if (!img->path || img->fd < 0) {
		r = img->path ? -errno : -ENOMEM;
		log_err("%s: cannot open: %s", path, strerror(-r));
		goto out;
	}
	if (fstat(img->fd, &st) < 0 || !S_ISREG(st.st_mode)) {
		r = log_err_ret(-EINVAL, "%s: not a regular file", path);
		goto out;
	}
	img->dev = st.st_dev;
	img->ino = st.st_ino;
	img->file_size = (uint64_t)st.st_size;
	img->sector_size = 512;
	img->phys_sector_size = 512;
	img->drv = drv;
	/* a repair writes: the write lock, as img_open(writable) takes */
	r = cli_lock_image(img, repair ? IMGLOCK_WRITE : IMGLOCK_READ,
			   force_share && !repair);
	if (r < 0)
		goto out;
	r = drv->check(img, repair, res);
	if (img->priv) {	/* a checker must not leave state behind */
		log_err("%s: %s check left private state", path, drv->name);
		img->priv = NULL;
	}
out:
	img->drv = NULL;	/* ->open never ran: nothing for ->close */
	img_unref(img);
	return r;
}

static const char *verdict(const struct img_check *c)
{
	return c->errors ? "errors" : c->leaks ? "leaks" : "clean";
}

static void print_summary(FILE *f, const char *path, const char *fmt,
			  const struct img_check *c, bool repair)
{
	if (repair && c->repaired)
		fprintf(f, "The following inconsistencies were found and "
			   "repaired:\n\n    %llu finding(s)\n\n",
			(unsigned long long)c->repaired);
	if (c->errors)
		fprintf(f, "%s: %llu error(s) were found on the %s image.\n"
			   "Data may be corrupted, or further writes to the "
			   "image may corrupt it.\n",
			path, (unsigned long long)c->errors, fmt);
	if (c->leaks)
		fprintf(f, "%s: %llu leaked cluster(s) or other harmless "
			   "finding(s) on the %s image.\nThis means waste of "
			   "disk space, but no harm to data.\n",
			path, (unsigned long long)c->leaks, fmt);
	if (!c->errors && !c->leaks)
		fprintf(f, "%s: no errors were found on the %s image.\n", path,
			fmt);
	if (c->warnings)
		fprintf(f, "%llu warning(s).\n",
			(unsigned long long)c->warnings);
	if (c->allocated)
		fprintf(f, "%llu bytes allocated.\n",
			(unsigned long long)c->allocated);
}

static void print_json(FILE *f, const char *path, const char *fmt,
		       const struct img_check *c, int status, bool checked)
{
	fprintf(f, "{\"filename\": ");
	json_str(f, path);
	fprintf(f, ", \"format\": ");
	json_str(f, fmt);
	fprintf(f, ", \"check-errors\": %d", checked ? 0 : 1);
	if (checked)
		fprintf(f, ", \"result\": \"%s\", \"corruptions\": %llu, "
			   "\"leaks\": %llu, \"warnings\": %llu, "
			   "\"repaired\": %llu, \"allocated-bytes\": %llu",
			verdict(c), (unsigned long long)c->errors,
			(unsigned long long)c->leaks,
			(unsigned long long)c->warnings,
			(unsigned long long)c->repaired,
			(unsigned long long)c->allocated);
	fprintf(f, ", \"exit-status\": %d, \"findings\": [", status);
	for (size_t i = 0; i < nfindings; i++) {
		fprintf(f, "%s{\"level\": \"%s\", \"message\": ", i ? ", " : "",
			findings[i].lvl == LOG_LVL_ERR ? "error" : "warning");
		json_str(f, findings[i].msg);
		fputc('}', f);
	}
	fprintf(f, "]}\n");
}

enum { OPT_OUTPUT = 256, OPT_REPAIR_ALL };
enum repair_mode { REPAIR_NONE, REPAIR_LEAKS, REPAIR_ALL };

int cmd_check(int argc, char **argv)
{
	static const struct option opts[] = {
		{ "repair", optional_argument, NULL, OPT_REPAIR_ALL },
		{ "format", required_argument, NULL, 'f' },
		{ "output", required_argument, NULL, OPT_OUTPUT },
		{ "json", no_argument, NULL, 'j' },
		{ "quiet", no_argument, NULL, 'q' },
		{ "force-share", no_argument, NULL, 'U' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const struct img_driver *drv = NULL, *force = NULL;
	struct img_check res = { 0 }, first = { 0 };
	enum repair_mode mode = REPAIR_NONE;
	bool json = false, quiet = false;
	const char *path, *fmt = NULL, *rarg;
	struct stat st;
	int c, r, status;

	optind = 1;
	while ((c = getopt_long(argc, argv, "r:f:jqUh", opts, NULL)) != -1) {
		switch (c) {
		case 'r':
		case OPT_REPAIR_ALL:
			rarg = c == 'r' ? optarg : optarg ? optarg : "all";
			if (!strcmp(rarg, "leaks")) {
				mode = REPAIR_LEAKS;
			} else if (!strcmp(rarg, "all")) {
				mode = REPAIR_ALL;
			} else {
				cli_error("-r takes 'leaks' or 'all', not '%s'",
					  rarg);
				cli_try_help();
				return CLI_CHECK_FAILED;
			}
			break;
		case 'f':
			fmt = optarg;
			force = img_driver_find(cli_format_name(optarg));
			if (!force) {
				cli_error("unknown format '%s'", optarg);
				return CLI_CHECK_FAILED;
			}
			break;
		case OPT_OUTPUT:
			if (cli_parse_output(optarg, &json) < 0)
				return CLI_CHECK_FAILED;
			break;
		case 'j':
			json = true;
			break;
		case 'q':
			quiet = true;
			break;
		case 'U':
			force_share = true;
			break;
		case 'h':
			fputs(usage_text, stdout);
			return CLI_CHECK_CLEAN;
		default:
			cli_try_help();
			return CLI_CHECK_FAILED;
		}
	}
	if (optind != argc - 1) {
		cli_error("expected one IMAGE");
		cli_try_help();
		return CLI_CHECK_FAILED;
	}
	if (mode != REPAIR_NONE && force_share) {
		cli_error("-U (--force-share) cannot be used with -r");
		cli_try_help();
		return CLI_CHECK_FAILED;
	}
	path = argv[optind];
	cli_set_quiet(quiet);
	log_set_sink(check_sink);

	if (stat(path, &st) < 0) {
		log_err("%s: %s", path, strerror(errno));
		status = CLI_CHECK_FAILED;
		goto out;
	}
	if (!S_ISREG(st.st_mode)) {
		log_err("%s: not a regular file", path);
		status = CLI_CHECK_FAILED;
		goto out;
	}
	if (fmt && cli_format_expect(path, fmt, true) < 0) {
		status = CLI_CHECK_FAILED;
		goto out;
	}
	if (mode != REPAIR_NONE) {
		char *child = NULL;

		r = used_as_parent(path, &st, &child);
		if (r > 0) {
			log_err("%s: is the parent of %s: refusing to repair a "
				"base layer (run check without -r)", path,
				child);
			free(child);
		}
		if (r != 0) {
			status = CLI_CHECK_FAILED;
			goto out;
		}
	}

	/* -r leaks: a first, silent, read-only pass; repair only if it found
	 * leaks and no errors */
	if (mode == REPAIR_LEAKS) {
		quiet_sink = true;
		r = run_check(path, force, false, &res, &drv);
		quiet_sink = false;
		/* (a failure ran silently: again, to say why) */
		r = run_check(path, force, r == 0 && !res.errors && res.leaks,
			      &res, &drv);
		if (r == 0 && res.errors)
			log_warn("%s: errors found: not repaired (-r leaks "
				 "repairs leaks only; -r all tries more)",
				 path);
	} else {
		r = run_check(path, force, mode == REPAIR_ALL, &res, &drv);
	}
	if (r == 0 && mode != REPAIR_NONE && res.repaired) {
		/* report the state after the repair, as qemu-img does */
		first = res;
		r = run_check(path, force, false, &res, &drv);
		res.repaired = first.repaired;
	}
	if (r < 0) {	/* logged where it was found */
		status = r == -ENOTSUP ? CLI_CHECK_UNSUPPORTED
				       : CLI_CHECK_FAILED;
		goto out;
	}
	status = res.errors ? CLI_CHECK_CORRUPT :
		 res.leaks ? CLI_CHECK_LEAKS : CLI_CHECK_CLEAN;
out:
	log_set_sink(cli_log_sink);
	if (json)
		print_json(stdout, path, drv ? drv->name : "unknown", &res,
			   status, drv && status != CLI_CHECK_FAILED &&
				   status != CLI_CHECK_UNSUPPORTED);
	else if (!quiet && drv && status != CLI_CHECK_FAILED &&
		 status != CLI_CHECK_UNSUPPORTED)
		print_summary(stdout, path, drv->name, &res, mode != REPAIR_NONE);
	findings_free();
	return status;
}
