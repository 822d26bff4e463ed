// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * cmd-commit.c: layerimg commit, merge a top layer into its parent.
 *
 *   layerimg commit [-f FMT] [-b BASE] [-d] [-p] [-q] [--drop] [--force]
 *                   [--output=json] TOP
 *
 * The letters are qemu-img commit's: -f is TOP's format, -b names the
 * image committed into (only TOP's own parent here), and -d ("do not
 * empty TOP") is what layerimg always does.  Deleting TOP and committing
 * despite other children are long options only (--drop, --force), so a
 * qemu-img habit never deletes anything.
 *
 * Every extent TOP itself provides is written into its parent: DATA as
 * read from TOP, ZERO through the parent's ->zero (a ZERO state, a hole,
 * or written zeros).  What TOP leaves to the layers below is not touched.
 * Only TOP's own map is walked (img_map, not the chain), joined into long
 * runs and copied with big preads, so the work is proportional to what
 * TOP holds.  The parent is written through the chain layer
 * (chain_pwrite/chain_zero on the parent's own chain, its file reopened
 * writable), so a differencing parent gets its copy-on-write from its
 * own parents, then flushed.  A raw parent is written with raw_rw_driver.
 *
 * Refused (exit 1) when the parent has other children in TOP's directory
 * (their view would change; --force overrides), when TOP is larger than
 * its parent, and when the parent's format cannot be written.
 *
 * Afterwards TOP still reads the same disk (its parent now holds the data
 * it covers).  A VHDX parent gets a new DataWriteGuid on its first write
 * (MS-VHDX 2.2.2), so TOP's parent_linkage is rewritten to follow it
 * (cli_set_parent); other children of the parent (--force) are not, and
 * are left out by layerfs until rebased with --unsafe, which is right:
 * their parent's data changed under them.  --drop deletes TOP afterwards
 * (refused when other images are built on TOP).
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

#include "chain.h"
#include "cli.h"
#include "compiler.h"
#include "img.h"
#include "io.h"
#include "json.h"
#include "log.h"
#include "registry.h"

#define COMMIT_BUF (8u << 20)	/* bytes per read and write */

static void commit_usage(FILE *f)
{
	fprintf(f,
		"Usage: layerimg commit [-f FMT] [-b BASE] [-d] [-p] [-q] [--drop] [--force]\n"
		"                       [--output=human|json] TOP\n"
		"\n"
		"Merge the differencing image TOP into its parent: every extent TOP\n"
		"holds (data, and zeroed ranges) is written into the parent file, which\n"
		"then reads as the chain of TOP did.  TOP keeps its contents and stays\n"
		"valid (its chain reads the same) unless --drop deletes it.\n"
		"\n"
		"  -f, --format FMT    TOP's format: refused if TOP is another format\n"
		"  -b, --base BASE     the image to commit into: it must be TOP's parent\n"
		"  -d, --keep          keep TOP's contents (qemu-img's -d; always so here)\n"
		"      --drop          delete TOP after a successful commit\n"
		"      --force         commit even if other images in TOP's directory\n"
		"                      depend on the parent (their view of it changes),\n"
		"                      or --drop even if images are built on TOP\n"
		"  -p, --progress      draw a progress bar (by default, only on a terminal)\n"
		"      --no-progress   no progress bar\n"
		"  -q, --quiet         print nothing on success\n"
		"      --output=FMT    human (default) or json: the result as one JSON\n"
		"                      object on stdout (--json: the same)\n"
		"  -h, --help          this help\n"
		"\n"
		"Exit status: 0 committed, 1 the commit failed or was refused, 2 bad\n"
		"usage or TOP's chain does not resolve.\n");
}

static bool same_file(const struct img *a, const struct img *b)
{
	return a->dev == b->dev && a->ino == b->ino;
}

/* Paths of distinct images, for the refusal message. */
struct names {
	const struct img *v[16];
	size_t n, more;
};

static void names_add(struct names *nm, const struct img *img)
{
	for (size_t i = 0; i < nm->n; i++)
		if (same_file(nm->v[i], img))
			return;
	if (nm->n < ARRAY_SIZE(nm->v))
		nm->v[nm->n++] = img;
	else
		nm->more++;
}

static void names_fmt(const struct names *nm, char *buf, size_t len)
{
	size_t o = 0;

	buf[0] = '\0';
	for (size_t i = 0; i < nm->n && o < len; i++)
		o += (size_t)snprintf(buf + o, len - o, "%s%s", i ? ", " : "",
				      nm->v[i]->path);
	if (nm->more && o < len)
		snprintf(buf + o, len - o, " and %zu more", nm->more);
}

/*
 * Who else depends on parent (another child) or on top (a child of top)?
 * The directory is scanned quietly: its unrelated problems are not ours.
 */
static int find_dependents(const char *dir, const struct img *top,
			   const struct img *parent, bool force, bool drop)
{
	struct chainset *cs = NULL;
	struct names sib = { 0 }, kids = { 0 };
	char list[1024];
	int r;

	log_set_sink(cli_log_drop);
	r = chainset_scan(dir, NULL, &cs);
	log_set_sink(cli_log_sink);
	if (r < 0)
		return log_err_ret(r, "%s: cannot scan for other children of "
				   "%s: %s", dir, parent->path, strerror(-r));
	for (size_t i = 0; i < cs->nchains; i++) {
		const struct chain *c = cs->chains[i];

		for (unsigned k = 1; k < c->depth; k++) {
			const struct img *child = c->layers[k - 1].img;

			if (same_file(c->layers[k].img, parent) &&
			    !same_file(child, top))
				names_add(&sib, child);
			if (same_file(c->layers[k].img, top))
				names_add(&kids, child);
		}
	}
	r = 0;
	if (sib.n) {
		names_fmt(&sib, list, sizeof(list));
		if (force) {
			log_warn("%s: also the parent of %s: their view of it "
				 "changes (--force)", parent->path, list);
		} else {
			log_err("%s: other images depend on it: %s (commit "
				"would change what they read; use --force to "
				"commit anyway)", parent->path, list);
			r = -EBUSY;
		}
	}
	if (drop && kids.n) {
		names_fmt(&kids, list, sizeof(list));
		if (force) {
			log_warn("%s: the parent of %s, which lose it with "
				 "--drop (--force)", top->path, list);
		} else {
			log_err("%s: other images are built on it: %s (--drop "
				"would break them; use --force to drop it "
				"anyway)", top->path, list);
			r = -EBUSY;
		}
	}
	chainset_free(cs);
	return r;
}

struct run {
	uint64_t off, len;
	enum img_ext_type type;
	int fd;			/* DATA: file, or -1 for ->read */
	uint64_t host_off;
};

/* Copy one run of top into the parent chain pc. */
static int commit_run(struct img *top, struct chain *pc, const struct run *rn,
		      uint8_t *buf, struct cli_progress *prog)
{
	uint64_t done = 0;
	int r;

	if (rn->type == IMG_EXT_UNALLOC)
		return 0;
	if (rn->type == IMG_EXT_ZERO) {
		r = chain_zero(pc, rn->off, rn->len);
		if (r < 0)
			log_err("%s: cannot zero %" PRIu64 "+%" PRIu64 ": %s",
				pc->top_path, rn->off, rn->len, strerror(-r));
		return r;
	}
	while (done < rn->len) {
		size_t k = (size_t)MIN(rn->len - done, (uint64_t)COMMIT_BUF);

		if (rn->fd >= 0) {
			r = pread_full(rn->fd, buf, k, rn->host_off + done);
			if (r == -ENODATA)
				r = log_err_ret(-EIO, "%s: data at %" PRIu64
						" lies past the end of the "
						"file", top->path,
						rn->host_off + done);
		} else {
			r = top->drv->read(top, buf, k, rn->off + done);
		}
		if (r < 0) {
			if (r != -EIO)
				log_err("%s: cannot read at %" PRIu64 ": %s",
					top->path, rn->off + done,
					strerror(-r));
			return r;
		}
		/* let the kernel read the next piece while this one is
		 * written: reads and writes overlap, as in a pipeline */
		if (rn->fd >= 0 && done + k < rn->len)
			(void)posix_fadvise(rn->fd,
					    (off_t)(rn->host_off + done + k),
					    (off_t)MIN(rn->len - done - k,
						       (uint64_t)COMMIT_BUF),
					    POSIX_FADV_WILLNEED);
		r = chain_pwrite(pc, buf, k, rn->off + done);
		if (r < 0) {
			log_err("%s: cannot write at %" PRIu64 ": %s",
				pc->top_path, rn->off + done, strerror(-r));
			return r;
		}
		done += k;
		cli_progress_update(prog, rn->off + done);
	}
	return 0;
}

/* Walk top's own extents, joined into long runs, into pc. */
static int commit_copy(struct img *top, struct chain *pc, uint64_t *copied,
		       int progress)
{
	struct cli_progress prog;
	struct run cur = { 0 };
	bool have = false;
	uint64_t off = 0;
	uint8_t *buf = malloc(COMMIT_BUF);
	int r = 0;

	if (!buf)
		return -ENOMEM;
	*copied = 0;
	cli_progress_start(&prog, "commit", top->size, progress);
	while (off < top->size && r == 0) {
		struct img_extent e;
		int fd;

		r = img_map(top, off, top->size - off, &e);
		if (r < 0) {
			log_err("%s: cannot map offset %" PRIu64 ": %s",
				top->path, off, strerror(-r));
			break;
		}
		fd = e.type == IMG_EXT_DATA && e.host_off != IMG_HOST_NONE ?
			     e.fd : -1;
		if (have && cur.type == e.type &&
		    (e.type != IMG_EXT_DATA ||
		     (fd >= 0 && cur.fd == fd &&
		      cur.host_off + cur.len == e.host_off))) {
			cur.len += e.len;
		} else {
			if (have) {
				r = commit_run(top, pc, &cur, buf, &prog);
				if (cur.type != IMG_EXT_UNALLOC)
					*copied += cur.len;
			}
			cur = (struct run){ .off = off, .len = e.len,
					    .type = e.type, .fd = fd,
					    .host_off = e.host_off };
			have = true;
		}
		off += e.len;
		cli_progress_update(&prog, off);
	}
	if (r == 0 && have) {
		r = commit_run(top, pc, &cur, buf, &prog);
		if (cur.type != IMG_EXT_UNALLOC)
			*copied += cur.len;
	}
	if (r == 0)
		cli_progress_end(&prog);
	else if (prog.on)
		fputc('\n', stderr);
	free(buf);
	return r;
}

/* The parent's own chain, its top (the parent file) reopened writable. */
static int open_parent_rw(const char *path, const char *dir,
			  const struct img *ro, struct chain **out)
{
	const struct img_driver *drv = ro->drv;
	struct chain *pc;
	struct img *w;
	int r;

	if (drv == &raw_driver)
		drv = &raw_rw_driver;
	if (!drv->write)
		return log_err_ret(-EROFS, "%s: a %s image cannot be written",
				   path, drv->name);
	r = chain_open_file(path, dir, NULL, &pc);
	if (r < 0)
		return log_err_ret(r, "%s: the parent's own chain does not "
				   "resolve", path);
	r = img_open(path, drv, true, &w);
	if (r < 0) {
		chain_free(pc);
		return r;
	}
	if (!w->writable) {
		img_unref(w);
		chain_free(pc);
		return log_err_ret(-EROFS, "%s: this %s image cannot be written "
				   "(%s)", path, drv->name, ro->subtype);
	}
	img_unref(pc->layers[0].img);
	pc->layers[0].img = w;
	pc->writable = true;
	*out = pc;
	return 0;
}

/*
 * After the commit: does top still name its parent's identity?  1 if it
 * had to be relinked, 0 if not, -errno.
 */
static int relink_if_needed(const char *top_path, const char *parent_path)
{
	struct img_parent p = { 0 };
	struct img *t = NULL, *pi = NULL;
	int r;

	r = img_open(top_path, NULL, false, &t);
	if (r == 0)
		r = img_open(parent_path, NULL, false, &pi);
	if (r == 0 && t->drv->parent)
		r = t->drv->parent(t, &p);
	if (r > 0 && p.id_kind != IMG_ID_NONE && pi->has_id &&
	    !guid_equal(&p.id, &pi->id) &&
	    !(p.has_id2 && guid_equal(&p.id2, &pi->id))) {
		img_unref(t);
		t = NULL;
		r = cli_set_parent(top_path, parent_path);
		if (r == 0) {
			log_info("%s: parent identity updated (%s changed it "
				 "on write)", top_path, parent_path);
			r = 1;
		}
	} else if (r > 0) {
		r = 0;
	}
	img_parent_clear(&p);
	img_unref(t);
	img_unref(pi);
	return r;
}

struct commit_args {
	const char *top;
	const char *fmt;	/* -f, or NULL */
	const char *base;	/* -b, or NULL */
	bool force, drop, json, quiet;
	int progress;		/* CLI_PROGRESS_* */
};

static void print_result(const struct commit_args *a, const char *parent,
			 const char *parent_fmt, uint64_t copied, bool relinked)
{
	struct json j;

	if (!a->json) {
		if (!a->quiet)
			printf("%s: %" PRIu64 " bytes committed into %s%s\n",
			       a->top, copied, parent,
			       a->drop ? "; layer deleted" : "");
		return;
	}
	json_init(&j, stdout, false);
	json_obj_begin(&j, NULL);
	json_u64(&j, "version", 1);
	json_str(&j, "command", "commit");
	json_str(&j, "top", a->top);
	json_str(&j, "parent", parent);
	json_str(&j, "parent_format", parent_fmt);
	json_u64(&j, "bytes_committed", copied);
	json_bool(&j, "top_deleted", a->drop);
	json_bool(&j, "parent_identity_updated", relinked);
	json_obj_end(&j);
	json_end(&j);
}

/* -b BASE names the parent? */
static bool is_base(const char *base, const struct img *parent)
{
	struct stat st;

	return stat(base, &st) == 0 && st.st_dev == parent->dev &&
	       st.st_ino == parent->ino;
}

static int commit(const struct commit_args *a)
{
	struct chain *c = NULL, *pc = NULL;
	struct img *top, *parent;
	const char *top_path = a->top;
	char *dir = chain_path_dir(top_path), *parent_path = NULL;
	char parent_fmt[32];
	bool force = a->force, drop = a->drop;
	uint64_t copied = 0;
	int r, ret = CLI_FAIL, relinked = 0;

	if (!dir)
		return CLI_FAIL;
	if (chain_open_file(top_path, NULL, NULL, &c) < 0) {
		log_err("%s: its chain does not resolve: nothing committed",
			top_path);
		ret = CLI_USAGE;
		goto out;
	}
	top = c->layers[0].img;
	/*
	 * Locks: the top is read (a writer there is refused), the parent
	 * written (img_open takes its write lock: refused while a mount or
	 * a qemu serves it), the layers below it read.
	 */
	if (cli_lock_image(top, IMGLOCK_READ, false) < 0)
		goto out;
	if (c->depth < 2) {
		log_err("%s: has no parent (a %s %s image): nothing to commit "
			"into", top_path, top->drv->name, top->subtype);
		goto out;
	}
	parent = c->layers[1].img;
	if (a->base && !is_base(a->base, parent)) {
		log_err("%s: -b %s is not its parent (%s): layerimg commits "
			"into the parent only", top_path, a->base, parent->path);
		ret = CLI_USAGE;
		goto out;
	}
	snprintf(parent_fmt, sizeof(parent_fmt), "%s", parent->drv->name);
	parent_path = strdup(parent->path);
	if (!parent_path)
		goto out;
	if (top->size > parent->size) {
		log_err("%s: larger than its parent %s (%" PRIu64 " > %" PRIu64
			" bytes): commit does not grow the parent", top_path,
			parent_path, top->size, parent->size);
		goto out;
	}
	if (find_dependents(dir, top, parent, force, drop) < 0)
		goto out;
	r = open_parent_rw(parent_path, dir, parent, &pc);
	if (r == 0)
		r = cli_lock_chain(pc, 1, false);
	if (r < 0)
		goto out;
	r = commit_copy(top, pc, &copied, a->progress);
	if (r == 0) {
		r = chain_flush(pc);
		if (r < 0)
			log_err("%s: flush failed: %s", parent_path,
				strerror(-r));
	}
	chain_free(pc);
	pc = NULL;
	if (r < 0) {
		log_err("%s: commit into %s failed: the parent may hold part "
			"of it (the chain of %s still reads the same)",
			top_path, parent_path, top_path);
		goto out;
	}
	chain_free(c);
	c = NULL;
	if (drop) {
		if (unlink(top_path) < 0) {
			log_err("%s: committed, but cannot delete it: %s",
				top_path, strerror(errno));
			goto out;
		}
		r = fsync_parent_dir(top_path);
		if (r < 0)
			log_warn("%s: deleted, but the directory sync failed: "
				 "%s", top_path, strerror(-r));
	} else if ((relinked = relink_if_needed(top_path, parent_path)) < 0) {
		log_err("%s: committed, but it no longer links to %s: run "
			"layerimg rebase -u -b %s %s", top_path, parent_path,
			parent_path, top_path);
		goto out;
	}
	print_result(a, parent_path, parent_fmt, copied, relinked > 0);
	ret = CLI_OK;
out:
	chain_free(pc);
	chain_free(c);
	free(parent_path);
	free(dir);
	return ret;
}

int cmd_commit(int argc, char **argv)
{
	enum { OPT_FORCE = 256, OPT_DROP, OPT_NOPROG, OPT_OUTPUT, OPT_JSON };
	static const struct option opts[] = {
		{ "format", required_argument, NULL, 'f' },
		{ "base", required_argument, NULL, 'b' },
		{ "keep", no_argument, NULL, 'd' },
		{ "drop", no_argument, NULL, OPT_DROP },
		{ "force", no_argument, NULL, OPT_FORCE },
		{ "progress", no_argument, NULL, 'p' },
		{ "no-progress", no_argument, NULL, OPT_NOPROG },
		{ "quiet", no_argument, NULL, 'q' },
		{ "output", required_argument, NULL, OPT_OUTPUT },
		{ "json", no_argument, NULL, OPT_JSON },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	struct commit_args a = { .progress = CLI_PROGRESS_AUTO };
	int ch;

	while ((ch = getopt_long(argc, argv, "f:b:dpqh", opts, NULL)) != -1) {
		switch (ch) {
		case 'f':
			a.fmt = optarg;
			break;
		case 'b':
			a.base = optarg;
			break;
		case 'd':	/* qemu-img: keep TOP's contents; always so */
			break;
		case OPT_DROP:
			a.drop = true;
			break;
		case OPT_FORCE:
			a.force = true;
			break;
		case 'p':
			a.progress = CLI_PROGRESS_ON;
			break;
		case OPT_NOPROG:
			a.progress = CLI_PROGRESS_OFF;
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
			commit_usage(stdout);
			return CLI_OK;
		default:
			return cli_try_help();
		}
	}
	if (argc - optind != 1) {
		cli_error("expected one TOP");
		return cli_try_help();
	}
	a.top = argv[optind];
	if (a.quiet) {
		cli_set_quiet(true);
		if (a.progress == CLI_PROGRESS_AUTO)
			a.progress = CLI_PROGRESS_OFF;
	}
	if (a.fmt && cli_format_expect(a.top, a.fmt, false) < 0)
		return CLI_USAGE;
	return commit(&a);
}
