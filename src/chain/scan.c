// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * scan.c: find images, resolve each one's parents, build chains.
 *
 * Every image is opened once per scan (read-only) and shared by all chains
 * that contain it.  A parent is found from what the child says about it
 * (struct img_parent), in this order:
 *   1. each relative reference, joined to the child's directory;
 *   2. each absolute reference: as it is if it is a POSIX path (inside
 *      IMAGEDIR, or anywhere with allow_outside), then by its file name
 *      inside IMAGEDIR;
 *   3. the file name of every reference inside IMAGEDIR (exact, then
 *      ignoring case, since Windows paths are case-insensitive).
 * A candidate outside IMAGEDIR is refused unless allow_outside.  The
 * parent's identity is then checked (VHD parent UUID, VHDX linkage GUID),
 * cycles and excessive depth are refused, and the layer naming rules are
 * applied (warnings, or errors with strict_layers).
 *
 * Confinement: a file of IMAGEDIR (a top-level entry or a parent) is
 * opened beneath an fd of IMAGEDIR with openat2(RESOLVE_BENEATH), by the
 * path its canonical form has there, so a symbolic link leading out of
 * IMAGEDIR is refused by the kernel at open time, even one swapped in
 * after the checks.  A file outside IMAGEDIR is opened only with
 * allow_outside; a top-level symbolic link to one is left out, logged.
 * Only a file the user names (chain_open_file's image) is opened as is.
 *
 * Depth: each chain's own depth is measured (its base is depth 1), so a
 * chain is refused for depth only if it is deeper than max_depth, whatever
 * the order of the scan.  The walk up a chain is iterative.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "atomic-file.h"
#include "chain-priv.h"
#include "compiler.h"
#include "io.h"
#include "log.h"

enum node_state { NODE_NEW, NODE_BUSY, NODE_OK, NODE_FAILED };

struct node {
	char *path;		/* owned: path the image was opened by */
	const char *name;	/* borrowed: the file-name part of path */
	struct img *img;	/* owned reference */
	struct layer_tag tag;
	enum node_state state;
	bool scanned;		/* a file of IMAGEDIR itself */
	bool is_parent;		/* another resolved image uses this file */
	bool writable;		/* img opened O_RDWR with a ->write */
	bool locked_out;	/* its write lock is held elsewhere (logged) */
	bool named;		/* named by the user: opened as it is */
	char *why;		/* owned: why it was refused, or NULL */
	struct node *parent;	/* borrowed; NULL for a base */
	char *parent_ref;	/* owned: reference that resolved */
	const char *parent_ref_what;
	int id_check;
	unsigned depth;		/* layers in this node's chain */
};

struct resolver {
	const char *dir;	/* borrowed: IMAGEDIR as given */
	char *realdir;		/* owned: canonical IMAGEDIR */
	int dirfd;		/* owned: IMAGEDIR (O_PATH), files beneath */
	int open_err;		/* why the last node_open_fd failed */
	struct chain_opts o;
	struct node **nodes;	/* owned array of owned nodes */
	size_t n, cap;
};

static void node_free(struct node *nd)
{
	if (!nd)
		return;
	img_unref(nd->img);
	free(nd->why);
	free(nd->parent_ref);
	free(nd->path);
	free(nd);
}

static void resolver_fini(struct resolver *r)
{
	for (size_t i = 0; i < r->n; i++)
		node_free(r->nodes[i]);
	free(r->nodes);
	free(r->realdir);
	if (r->dirfd >= 0)
		close(r->dirfd);
}

static int resolver_init(struct resolver *r, const char *dir,
			 const struct chain_opts *o)
{
	struct stat st;

	memset(r, 0, sizeof(*r));
	r->dirfd = -1;
	r->dir = dir;
	if (o)
		r->o = *o;
	if (!r->o.max_depth)
		r->o.max_depth = CHAIN_MAX_DEPTH_DEFAULT;
	r->realdir = realpath(dir, NULL);
	if (!r->realdir)
		return log_err_ret(-errno, "%s: %s", dir, strerror(errno));
	if (stat(r->realdir, &st) < 0 || !S_ISDIR(st.st_mode)) {
		free(r->realdir);
		r->realdir = NULL;
		return log_err_ret(-ENOTDIR, "%s: not a directory", dir);
	}
	r->dirfd = open(r->realdir, O_PATH | O_DIRECTORY | O_CLOEXEC);
	if (r->dirfd < 0) {
		int err = -errno;

		free(r->realdir);
		r->realdir = NULL;
		return log_err_ret(err, "%s: %s", dir, strerror(-err));
	}
	return 0;
}

static const char *base_name(const char *path)
{
	const char *s = strrchr(path, '/');

	return s ? s + 1 : path;
}

/* The last component of a path written with '/' or '\' separators. */
static const char *any_base_name(const char *path)
{
	const char *s = path;

	for (const char *p = path; *p; p++)
		if (*p == '/' || *p == '\\')
			s = p + 1;
	return s;
}

static char *stem_of(const char *name)
{
	const char *dot = strrchr(name, '.');
	size_t len = dot && dot != name ? (size_t)(dot - name) : strlen(name);

	return strndup(name, len);
}

/* The part of a canonical path below IMAGEDIR ("sub/x.vhd"), or NULL */
static const char *below_dir(const struct resolver *r, const char *real)
{
	size_t n = strlen(r->realdir);

	if (n == 1)		/* IMAGEDIR is "/" */
		return real[0] == '/' && real[1] ? real + 1 : NULL;
	if (strncmp(real, r->realdir, n) || real[n] != '/' || !real[n + 1])
		return NULL;
	return real + n + 1;
}

/* true if the canonical form of path lies inside IMAGEDIR */
static bool inside_dir(const struct resolver *r, const char *path)
{
	char *real = realpath(path, NULL);
	bool ok = real && below_dir(r, real);

	free(real);
	return ok;
}

/*
 * Open path for the scan (flags: O_RDONLY or O_RDWR): beneath IMAGEDIR by
 * its canonical path there, outside it only with allow_outside, as it is
 * when the user named it.  The fd, or -errno: -EXDEV (not logged) when it
 * lies, or would lead, outside IMAGEDIR.
 */
static int resolver_open_fd(const struct resolver *r, const char *path,
			    int flags, bool named)
{
	const char *rel;
	char *real;
	int fd;

	if (named) {
		fd = open(path, flags | O_CLOEXEC);
		return fd < 0 ? -errno : fd;
	}
	real = realpath(path, NULL);
	if (!real)
		return -errno;
	rel = below_dir(r, real);
	if (rel) {
		fd = file_open_beneath(r->dirfd, rel, flags);
		if (fd == -ELOOP)	/* a link swapped in to leave */
			fd = -EXDEV;
	} else if (r->o.allow_outside) {
		fd = open(real, flags | O_CLOEXEC);
		fd = fd < 0 ? -errno : fd;
	} else {
		fd = -EXDEV;
	}
	free(real);
	return fd;
}

static bool is_regular(const char *path, struct stat *st)
{
	return stat(path, st) == 0 && S_ISREG(st->st_mode);
}

static struct node *node_find(struct resolver *r, const struct stat *st,
			      const struct img_driver *drv)
{
	for (size_t i = 0; i < r->n; i++) {
		struct node *nd = r->nodes[i];

		if (nd->img && nd->img->dev == st->st_dev &&
		    nd->img->ino == st->st_ino && (!drv || nd->img->drv == drv))
			return nd;
	}
	return NULL;
}

/*
 * A new node for path, read through fd (which it takes over, even on
 * failure).  NULL if the image cannot be opened (logged).
 */
static struct node *node_open_fd(struct resolver *r, int fd, const char *path,
				 const struct img_driver *drv, bool scanned,
				 bool named)
{
	struct node *nd;
	char msg[LAYER_MSG_MAX];

	if (r->n == r->cap) {
		size_t cap = r->cap ? r->cap * 2 : 16;
		struct node **v = realloc(r->nodes, cap * sizeof(*v));

		if (!v) {
			close(fd);
			return NULL;
		}
		r->nodes = v;
		r->cap = cap;
	}
	nd = calloc(1, sizeof(*nd));
	if (!nd) {
		close(fd);
		return NULL;
	}
	nd->path = strdup(path);
	if (!nd->path) {
		close(fd);
		node_free(nd);
		return NULL;
	}
	r->open_err = img_open_fd(fd, path, drv, false, &nd->img);
	if (r->open_err < 0) {
		node_free(nd);
		return NULL;
	}
	nd->name = base_name(nd->path);
	nd->scanned = scanned;
	nd->named = named;
	layer_tag_parse(nd->name, &nd->tag);
	if (!layer_check_self(&nd->tag, msg, sizeof(msg))) {
		if (r->o.strict_layers) {
			log_err("%s: layer rule: %s", path, msg);
			nd->state = NODE_FAILED;
			if (asprintf(&nd->why, "layer rule: %s", msg) < 0)
				nd->why = NULL;
		} else {
			log_warn("%s: layer rule: %s", path, msg);
		}
	}
	r->nodes[r->n++] = nd;
	return nd;
}

/* Log that path lies outside IMAGEDIR; reason says what it is. */
static void log_outside(const struct resolver *r, const char *path,
			const char *what)
{
	char *real = realpath(path, NULL);

	log_err("%s: %s %s, outside %s (use -o allow_outside to follow it)",
		path, what, real ? real : "a path", r->dir);
	free(real);
}

/* Open path (confined, see resolver_open_fd) as a new node, or NULL. */
static struct node *node_open(struct resolver *r, const char *path,
			      const struct img_driver *drv, bool scanned,
			      bool named)
{
	int fd = resolver_open_fd(r, path, O_RDONLY, named);

	if (fd == -EXDEV) {
		log_outside(r, path, "resolves to");
		return NULL;
	}
	if (fd < 0) {
		log_err("%s: cannot open: %s", path, strerror(-fd));
		return NULL;
	}
	return node_open_fd(r, fd, path, drv, scanned, named);
}

/* A short reason for a code of STYLE.md's list, for the log's summary */
static const char *reason_of(int err)
{
	switch (-err) {
	case EINVAL:
		return "not a usable image";
	case EUCLEAN:
		return "corrupt metadata";
	case EBADMSG:
		return "checksum mismatch";
	case ENOTSUP:
		return "unsupported feature or version";
	case ESTALE:
		return "parent identity mismatch";
	case ENOENT:
		return "parent not found";
	case ELOOP:
		return "parent cycle or chain too deep";
	case EPERM:
	case EXDEV:
		return "outside IMAGEDIR";
	case EFBIG:
		return "over the format's limit";
	}
	return strerror(-err);
}

/* Record why nd was refused (the first reason) and log it once. */
static int __printf(4, 5) node_fail(struct node *nd, int err, bool log,
				    const char *fmt, ...)
{
	char msg[512];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (log)
		log_err("%s: %s", nd->path, msg);
	if (!nd->why)
		nd->why = strdup(msg);
	nd->state = NODE_FAILED;
	return err;
}

/* Look for name in dir: exact, then ignoring case.  malloc'd path or NULL */
static char *find_in_dir(const char *dir, const char *name)
{
	struct stat st;
	struct dirent *de;
	char *path = NULL;
	DIR *d;

	if (!*name || !strcmp(name, ".") || !strcmp(name, ".."))
		return NULL;
	if (asprintf(&path, "%s/%s", dir, name) < 0)
		return NULL;
	if (is_regular(path, &st))
		return path;
	free(path);
	path = NULL;
	d = opendir(dir);
	if (!d)
		return NULL;
	while ((de = readdir(d))) {
		if (strcasecmp(de->d_name, name))
			continue;
		if (asprintf(&path, "%s/%s", dir, de->d_name) < 0) {
			path = NULL;
			break;
		}
		if (is_regular(path, &st))
			break;
		free(path);
		path = NULL;
	}
	closedir(d);
	return path;
}

char *chain_path_dir(const char *path)
{
	const char *s = strrchr(path, '/');

	if (!s)
		return strdup(".");
	if (s == path)
		return strdup("/");
	return strndup(path, (size_t)(s - path));
}

char *chain_path_relative(const char *from_dir, const char *to)
{
	bool root = !strcmp(from_dir, "/");
	size_t common = 0, i, ups = 0;
	char *out, *o;

	/* the longest common prefix that ends at a component boundary */
	for (i = 0; from_dir[i] && from_dir[i] == to[i]; i++)
		if (from_dir[i] == '/')
			common = i;
	if (!from_dir[i] && (to[i] == '/' || root))
		common = root ? 0 : i;	/* from_dir is a prefix of to */
	/* one "../" per component of from_dir past the common prefix */
	for (i = common; from_dir[i]; i++)
		if (from_dir[i] == '/' && from_dir[i + 1])
			ups++;
	out = malloc(ups * 3 + strlen(to + common) + 1);
	if (!out)
		return NULL;
	o = out;
	for (size_t k = 0; k < ups; k++, o += 3)
		memcpy(o, "../", 3);
	strcpy(o, to + common + 1);
	return out;
}

/* A relative reference as a POSIX path joined to the child's directory. */
static char *join_relative(const char *child, const char *ref)
{
	char *dir = chain_path_dir(child), *norm = strdup(ref), *out = NULL;
	char *p;

	if (!dir || !norm)
		goto out;
	for (p = norm; *p; p++)
		if (*p == '\\')
			*p = '/';
	p = norm;
	while (p[0] == '.' && p[1] == '/')
		p += 2;
	if (*p == '/' || !*p)	/* not relative after all */
		goto out;
	if (asprintf(&out, "%s/%s", dir, p) < 0)
		out = NULL;
out:
	free(dir);
	free(norm);
	return out;
}

struct candidate {
	char *path;		/* owned */
	const struct img_parent_ref *ref;
};

/*
 * Try one candidate path: it must exist, not be the child, and stay
 * inside IMAGEDIR unless allowed.  Returns 1 accepted, 0 not usable.
 */
static int try_candidate(struct resolver *r, const struct node *child,
			 char *path, const struct img_parent_ref *ref,
			 struct candidate *out, char **outside, bool *self)
{
	struct stat st;

	if (!path)
		return 0;
	if (!is_regular(path, &st)) {
		free(path);
		return 0;
	}
	if (st.st_dev == child->img->dev && st.st_ino == child->img->ino) {
		*self = true;
		free(path);
		return 0;
	}
	if (!r->o.allow_outside && !inside_dir(r, path)) {
		if (!*outside)
			*outside = path;
		else
			free(path);
		return 0;
	}
	out->path = path;
	out->ref = ref;
	return 1;
}

static int find_parent_file(struct resolver *r, const struct node *child,
			    const struct img_parent *p, struct candidate *out)
{
	char *outside = NULL;
	bool self = false;
	unsigned i;
	int pass;

	for (pass = 1; pass <= 3; pass++) {
		for (i = 0; i < p->nrefs; i++) {
			const struct img_parent_ref *ref = &p->refs[i];
			char *cand = NULL;

			if (pass == 1 && ref->kind == IMG_REF_RELATIVE)
				cand = join_relative(child->path, ref->path);
			else if (pass == 2 && ref->kind == IMG_REF_ABSOLUTE) {
				/* as written only if it is a POSIX path; one
				 * outside IMAGEDIR is refused (and reported)
				 * unless allow_outside */
				if (ref->path[0] == '/' &&
				    try_candidate(r, child, strdup(ref->path),
						  ref, out, &outside, &self))
					goto found;
				cand = find_in_dir(r->dir,
						   any_base_name(ref->path));
			} else if (pass == 3 && ref->kind != IMG_REF_ABSOLUTE)
				cand = find_in_dir(r->dir,
						   any_base_name(ref->path));
			if (try_candidate(r, child, cand, ref, out, &outside,
					  &self))
				goto found;
		}
	}
	if (outside) {
		log_err("%s: parent %s lies outside %s (use -o allow_outside "
			"to follow it)", child->path, outside, r->dir);
		free(outside);
		return -EPERM;
	}
	if (self)
		return log_err_ret(-ELOOP, "%s: names itself as its parent",
				   child->path);
	if (!p->nrefs)
		return log_err_ret(-ENOENT, "%s: names no parent file",
				   child->path);
	log_err("%s: parent not found: \"%s\" (%s%s)", child->path,
		p->refs[0].path, p->refs[0].what,
		p->nrefs > 1 ? " and other references" : "");
	return -ENOENT;
found:
	free(outside);
	return 0;
}

static int check_identity(struct resolver *r, struct node *nd,
			  const struct img_parent *p, const struct node *pn)
{
	char want[GUID_STR_LEN + 1], have[GUID_STR_LEN + 1];

	if (p->id_kind == IMG_ID_NONE) {
		nd->id_check = 0;
		return 0;
	}
	if (pn->img->has_id && (guid_equal(&p->id, &pn->img->id) ||
				(p->has_id2 && guid_equal(&p->id2, &pn->img->id)))) {
		nd->id_check = 1;
		return 0;
	}
	guid_to_str(&p->id, want);
	if (pn->img->has_id)
		guid_to_str(&pn->img->id, have);
	else
		strcpy(have, "none");
	if (r->o.ignore_parent_id) {
		log_warn("%s: parent %s identity mismatch (expects {%s}, parent "
			 "has {%s}); mounted anyway (ignore_parent_id)",
			 nd->path, pn->path, want, have);
		nd->id_check = -1;
		return 0;
	}
	log_err("%s: parent %s identity mismatch (expects {%s}, parent has "
		"{%s}); use -o ignore_parent_id to mount anyway",
		nd->path, pn->path, want, have);
	return -ESTALE;
}

/*
 * Find, open (or share) and check nd's parent, without looking further
 * down: nd->parent is set, or -errno (logged, naming nd).
 */
static int link_parent(struct resolver *r, struct node *nd,
		       const struct img_parent *p)
{
	const struct img_driver *drv = NULL;
	struct candidate cand = { 0 };
	struct node *pn;
	struct stat st;
	char msg[LAYER_MSG_MAX];
	int fd, ret;

	if (p->format) {
		drv = img_driver_find(p->format);
		if (!drv)
			log_warn("%s: parent format \"%s\" is unknown; probing",
				 nd->path, p->format);
	}
	ret = find_parent_file(r, nd, p, &cand);
	if (ret < 0)
		return ret;
	/* the checks were on paths: what is opened is confined again */
	fd = resolver_open_fd(r, cand.path, O_RDONLY, false);
	if (fd == -EXDEV) {
		log_outside(r, cand.path, "parent resolves to");
		ret = -EPERM;
		goto out;
	}
	if (fd < 0 || fstat(fd, &st) < 0) {
		ret = fd < 0 ? fd : -errno;
		log_err("%s: parent %s cannot be opened: %s", nd->path,
			cand.path, strerror(-ret));
		if (fd >= 0)
			close(fd);
		goto out;
	}
	/*
	 * qemu has no driver for Android sparse images, so an overlay that
	 * qemu-img made over one can only say "raw".  Read such a parent as
	 * what it is: as raw it would show the sparse container's bytes.
	 */
	if (drv && !strcmp(drv->name, "raw")) {
		const struct img_driver *probed = img_probe_fd(fd, cand.path);

		if (probed && !strcmp(probed->name, "asparse")) {
			log_info("%s: parent %s recorded as raw is an Android "
				 "sparse image; reading it as one", nd->path,
				 cand.path);
			drv = probed;
		}
	}
	pn = node_find(r, &st, drv);
	if (pn) {
		close(fd);
	} else {
		pn = node_open_fd(r, fd, cand.path, drv, false, false);
		if (!pn) {
			ret = node_fail(nd, -EIO, true,
					"parent %s cannot be opened",
					cand.path);
			goto out;
		}
	}
	ret = check_identity(r, nd, p, pn);
	if (ret < 0)
		goto out;
	if (!layer_check_pair(&nd->tag, &pn->tag, msg, sizeof(msg))) {
		if (r->o.strict_layers) {
			ret = node_fail(nd, -EINVAL, true, "layer rule: %s",
					msg);
			goto out;
		}
		log_warn("%s: layer rule: %s", nd->path, msg);
	}
	nd->parent = pn;
	nd->parent_ref = strdup(cand.ref->path);
	nd->parent_ref_what = cand.ref->what;
	ret = nd->parent_ref ? 0 : -ENOMEM;
out:
	free(cand.path);
	return ret;
}

/* One step up: nd->parent set (NULL for a base), or -errno (logged). */
static int node_link(struct resolver *r, struct node *nd)
{
	struct img_parent p = { 0 };
	int ret;

	nd->parent = NULL;
	ret = nd->img->drv->parent ? nd->img->drv->parent(nd->img, &p) : 0;
	if (ret > 0)
		ret = link_parent(r, nd, &p);
	img_parent_clear(&p);
	return ret;
}

/*
 * "b.qcow2 -> c.qcow2 -> a.qcow2 -> b.qcow2": the cycle path[k..n-1]
 * (each one's parent is the next, path[n - 1]'s is path[k]) from path[i]
 * round to itself, cut with "..." at len.
 */
static void cycle_text(struct node **path, size_t k, size_t n, size_t i,
		       char *buf, size_t len)
{
	size_t used = 0, j = i;

	buf[0] = '\0';
	for (size_t step = 0; step <= n - k; step++) {
		int w = snprintf(buf + used, len - used, "%s%s",
				 step ? " -> " : "", path[j]->name);

		if (w < 0 || (size_t)w >= len - used) {
			strcpy(buf + len - 4, "...");
			return;
		}
		used += (size_t)w;
		j = j + 1 < n ? j + 1 : k;
	}
}

/*
 * Resolve nd's whole chain: every layer is linked to its parent, walking
 * down (iteratively) to a base, a node already resolved, a failure or a
 * loop; then the depths are set walking back up.  A node's state and
 * depth depend on its own chain only, never on where the walk started.
 * Every node refused is logged once, naming it.  0 or -errno.
 */
static int resolve(struct resolver *r, struct node *top)
{
	struct node **path = NULL, *cur = top;
	size_t n = 0, cap = 0, k;
	char cycle[448];	/* fits node_fail's message */
	int ret = 0;

	while (cur->state == NODE_NEW) {
		if (n == cap) {
			size_t c = cap ? cap * 2 : 16;
			struct node **v = realloc(path, c * sizeof(*v));

			if (!v) {
				ret = -ENOMEM;
				break;
			}
			path = v;
			cap = c;
		}
		cur->state = NODE_BUSY;
		ret = node_link(r, cur);
		if (ret < 0) {
			node_fail(cur, ret, false, "%s", reason_of(ret));
			break;
		}
		path[n++] = cur;
		if (!cur->parent) {	/* a base */
			cur->depth = 0;	/* set below, with the others */
			break;
		}
		cur = cur->parent;
	}
	if (ret == -ENOMEM)
		cur->state = NODE_FAILED;
	if (cur->state == NODE_BUSY && cur->parent) {
		/* a loop: cur is path[k], the cycle is path[k..n-1] */
		for (k = 0; path[k] != cur; k++)
			;
		for (size_t i = k; i < n; i++) {
			cycle_text(path, k, n, i, cycle, sizeof(cycle));
			node_fail(path[i], -ELOOP, true,
				  "parent chain loops: %s", cycle);
		}
		n = k;
		cur = path[k];
	}
	/* path[n - 1]'s parent is cur, resolved; then up to path[0] */
	for (size_t i = n; i-- > 0;) {
		struct node *nd = path[i], *pn = nd->parent;

		if (pn && pn->state == NODE_FAILED &&
		    pn->depth <= r->o.max_depth) {	/* not for its depth */
			node_fail(nd, -EINVAL, true, "parent %s is unusable",
				  pn->path);
			continue;
		}
		nd->depth = pn ? pn->depth + 1 : 1;
		if (nd->depth > r->o.max_depth) {
			node_fail(nd, -ELOOP, true,
				  "chain deeper than %u layers (%u)",
				  r->o.max_depth, nd->depth);
			continue;
		}
		nd->state = NODE_OK;
	}
	free(path);
	switch (top->state) {
	case NODE_OK:
		return 0;
	case NODE_FAILED:
		return ret < 0 ? ret : -EINVAL;
	default:
		top->state = NODE_FAILED;	/* out of memory on the way */
		return -ENOMEM;
	}
}

static struct chain *chain_build(const struct node *top, const char *name)
{
	struct chain *c = calloc(1, sizeof(*c));
	const struct node *nd = top;

	if (!c)
		return NULL;
	c->layers = calloc(top->depth, sizeof(*c->layers));
	c->name = strdup(name);
	c->top_path = strdup(top->path);
	if (!c->layers || !c->name || !c->top_path)
		goto fail;
	for (unsigned i = 0; i < top->depth; i++, nd = nd->parent) {
		struct chain_layer *l = &c->layers[i];

		l->img = img_ref(nd->img);
		l->tag = nd->tag;
		l->parent_ref = nd->parent_ref ? strdup(nd->parent_ref) : NULL;
		l->parent_ref_what = nd->parent_ref_what;
		l->id_check = nd->id_check;
		c->depth++;
	}
	c->size = top->img->size;
	c->sector_size = top->img->sector_size;
	c->writable = top->writable;
	c->is_parent = top->is_parent;
	if (chain_shape_init(c) < 0)
		goto fail;
	return c;
fail:
	chain_free(c);
	return NULL;
}

/* Mark every node whose file another resolved node uses as its parent. */
static void mark_parents(struct resolver *r)
{
	for (size_t i = 0; i < r->n; i++) {
		const struct node *p = r->nodes[i]->parent;

		if (r->nodes[i]->state != NODE_OK || !p)
			continue;
		for (size_t j = 0; j < r->n; j++) {
			struct node *m = r->nodes[j];

			if (m->img && m->img->dev == p->img->dev &&
			    m->img->ino == p->img->ino)
				m->is_parent = true;
		}
	}
}

/* true if the n bytes at tok are name, or its stem */
static bool name_is(const char *tok, size_t n, const char *name)
{
	const char *dot = strrchr(name, '.');
	size_t len = strlen(name);
	size_t stem = dot && dot != name ? (size_t)(dot - name) : len;

	return n && (n == len || n == stem) && !strncmp(tok, name, n);
}

/* true if the list NAME[:NAME...] names nd by file name or stem */
static bool names_node(const char *list, const struct node *nd)
{
	while (list && *list) {
		size_t n = strcspn(list, ":");

		if (name_is(list, n, nd->name))
			return true;
		list += n + (list[n] == ':');
	}
	return false;
}

/* Warn about each name of -o rw_base that cannot be written in place. */
static void check_rw_base(const struct resolver *r, struct node **tops,
			  size_t ntops)
{
	const char *list = r->o.rw_base;

	while (list && *list) {
		size_t n = strcspn(list, ":");
		const struct node *nd = NULL;

		for (size_t i = 0; i < ntops && !nd; i++)
			if (!tops[i]->parent && name_is(list, n, tops[i]->name))
				nd = tops[i];
		if (n && !nd)
			log_warn("%s: rw_base: no standalone image named "
				 "\"%.*s\"", r->dir, (int)n, list);
		else if (nd && nd->is_parent)
			log_warn("%s: rw_base: another image depends on it; it "
				 "stays read-only", nd->path);
		list += n + (list[n] == ':');
	}
}

/*
 * Reopen a top image that nothing depends on O_RDWR.  Every other image
 * stays as it was opened: O_RDONLY.  A base (an image with no parent) is
 * never written in place unless -o rw_base names it: writing over a base
 * means a new layer on it.  A failure leaves it read-only, but a top
 * another process holds (its write lock refused, imglock.h) is left out:
 * writing it would race that process.
 */
static void open_writable(const struct resolver *r, struct node *nd)
{
	struct img *w;
	int fd, ret;

	if (nd->is_parent || !nd->img->drv->write)
		return;
	if (!nd->parent && !names_node(r->o.rw_base, nd)) {
		log_info("%s: a base image stays read-only (-o rw_base=%s "
			 "writes it in place, -o newlayer=%s adds a layer)",
			 nd->path, nd->name, nd->name);
		return;
	}
	fd = resolver_open_fd(r, nd->path, O_RDWR, nd->named);
	if (fd < 0) {
		log_warn("%s: stays read-only: %s", nd->path,
			 fd == -EXDEV ? "outside IMAGEDIR" : strerror(-fd));
		return;
	}
	ret = img_open_fd(fd, nd->path, nd->img->drv, true, &w);
	if (ret == -EBUSY) {	/* another writer or a reader that denies it */
		nd->locked_out = true;
		return;
	}
	if (ret < 0) {
		log_warn("%s: stays read-only", nd->path);
		return;
	}
	if (!w->writable) {	/* the driver cannot write this image */
		img_unref(w);
		return;
	}
	img_unref(nd->img);
	nd->img = w;
	nd->writable = true;
}

/* The default format of a new layer over a chain whose top is drv. */
static const char *layer_format_for(const struct img_driver *drv)
{
	if (!strcmp(drv->name, "vhd") || !strcmp(drv->name, "vhdx"))
		return drv->name;
	return "qcow2";		/* over qcow2, qcow, raw, ISO, sparse */
}

static const char *format_ext(const char *fmt)
{
	if (!strcmp(fmt, "vhd"))
		return "vhd";
	if (!strcmp(fmt, "vhdx"))
		return "vhdx";
	return "qcow2";
}

/* true if some file of dir (ctx) has this stem (any extension) */
static bool stem_taken(void *ctx, const char *stem)
{
	const char *dir = ctx;
	struct dirent *de;
	bool taken = false;
	DIR *d = opendir(dir);

	if (!d)
		return true;
	while (!taken && (de = readdir(d))) {
		char *s = stem_of(de->d_name);

		taken = s && !strcmp(s, stem);
		free(s);
	}
	closedir(d);
	return taken;
}

/* The next free layer name over top (layers.h: LAYER_NEXT_DEFAULT). */
static char *next_layer_name(const struct resolver *r, const struct node *top,
			     const char *ext)
{
	return layer_next_name(top->name, ext, LAYER_NEXT_DEFAULT, stem_taken,
			       (void *)r->dir);
}

/* Make the new top layer asked for in the options; returns its node. */
static struct node *create_layer(struct resolver *r, struct node **tops,
				 size_t ntops)
{
	const struct chain_opts *o = &r->o;
	struct img_create_parent cp = { 0 };
	struct img_create_opts co = { 0 };
	const struct img_driver *drv;
	struct node *top = NULL, *nd = NULL;
	char *name = NULL, *path = NULL, *real = NULL;
	const char *fmt;
	int ret;

	for (size_t i = 0; i < ntops && !top; i++) {
		char *stem = stem_of(tops[i]->name);

		if (!strcmp(tops[i]->name, o->new_layer_of) ||
		    (stem && !strcmp(stem, o->new_layer_of)))
			top = tops[i];
		free(stem);
	}
	if (!top) {
		log_err("%s: no chain named \"%s\" for the new layer", r->dir,
			o->new_layer_of);
		return NULL;
	}
	fmt = o->new_layer_format ? o->new_layer_format
				  : layer_format_for(top->img->drv);
	drv = img_driver_find(fmt);
	if (!drv || !drv->create_diff) {
		log_err("%s: cannot create a %s layer over %s", r->dir, fmt,
			top->name);
		return NULL;
	}
	name = o->new_layer_name ? strdup(o->new_layer_name)
				 : next_layer_name(r, top, format_ext(fmt));
	if (!name || strchr(name, '/') || name[0] == '.') {
		log_err("%s: no usable name for a new layer over %s", r->dir,
			top->name);
		goto out;
	}
	real = realpath(top->path, NULL);
	if (asprintf(&path, "%s/%s", r->dir, name) < 0 || !real) {
		path = NULL;
		goto out;
	}
	cp.img = top->img;
	cp.rel_path = top->name;	/* both live in IMAGEDIR */
	cp.abs_path = real;
	cp.format = top->img->drv->name;
	ret = drv->create_diff(path, &cp, &co);
	if (ret < 0) {
		log_err("%s: cannot create a %s layer over %s: %s", path, fmt,
			top->name, strerror(-ret));
		goto out;
	}
	log_info("%s: new %s layer over %s", path, fmt, top->name);
	nd = node_open(r, path, drv, true, false);
	if (nd && resolve(r, nd) < 0)
		nd = NULL;
out:
	free(real);
	free(path);
	free(name);
	return nd;
}

int chain_open_file(const char *path, const char *dir,
		    const struct chain_opts *o, struct chain **out)
{
	struct resolver r;
	struct node *nd;
	char *d = dir ? NULL : chain_path_dir(path), *stem;
	int ret;

	ret = resolver_init(&r, dir ? dir : d, o);
	if (ret < 0)
		goto out;
	ret = -EIO;
	nd = node_open(&r, path, NULL, true, true);	/* named by the user */
	if (!nd)
		goto out_res;
	ret = resolve(&r, nd);
	if (ret < 0)
		goto out_res;
	stem = stem_of(nd->name);
	*out = stem ? chain_build(nd, stem) : NULL;
	free(stem);
	ret = *out ? 0 : -ENOMEM;
out_res:
	resolver_fini(&r);
out:
	free(d);
	return ret;
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmp_chain(const void *a, const void *b)
{
	return strcmp((*(struct chain *const *)a)->name,
		      (*(struct chain *const *)b)->name);
}

/* The regular, non-hidden files of dir, sorted; NULL-terminated. */
static char **list_dir(const char *dir, size_t *count)
{
	char **names = NULL;
	size_t n = 0, cap = 0;
	struct dirent *de;
	DIR *d = opendir(dir);

	if (!d) {
		log_err("%s: %s", dir, strerror(errno));
		return NULL;
	}
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		if (de->d_type != DT_REG && de->d_type != DT_UNKNOWN &&
		    de->d_type != DT_LNK)
			continue;
		if (n + 1 >= cap) {
			cap = cap ? cap * 2 : 32;
			char **v = realloc(names, cap * sizeof(*v));

			if (!v)
				goto fail;
			names = v;
		}
		names[n] = strdup(de->d_name);
		if (!names[n])
			goto fail;
		n++;
	}
	closedir(d);
	if (!names) {
		names = calloc(1, sizeof(*names));
		if (!names)
			return NULL;
	}
	qsort(names, n, sizeof(*names), cmp_str);
	names[n] = NULL;
	*count = n;
	return names;
fail:
	for (size_t i = 0; i < n; i++)
		free(names[i]);
	free(names);
	closedir(d);
	return NULL;
}

/* Chain directory names: the stem, or the full name where stems clash. */
static const char *chain_name(struct node **tops, size_t n, size_t i,
			      char **stem)
{
	*stem = stem_of(tops[i]->name);
	if (!*stem)
		return NULL;
	for (size_t j = 0; j < n; j++) {
		char *other;
		bool clash;

		if (j == i)
			continue;
		other = stem_of(tops[j]->name);
		clash = other && !strcmp(other, *stem);
		free(other);
		if (clash)
			return tops[i]->name;
	}
	return *stem;
}

int chainset_scan(const char *dir, const struct chain_opts *o,
		  struct chainset **out)
{
	struct chainset *cs;
	struct resolver r;
	struct node **tops = NULL;
	size_t nnames = 0, ntops = 0;
	char **names;
	int ret;

	ret = resolver_init(&r, dir, o);
	if (ret < 0)
		return ret;
	/* new files whose creator died before the rename; never read-only */
	if (r.o.writable)
		atomic_dir_clean(dir);
	names = list_dir(dir, &nnames);
	cs = calloc(1, sizeof(*cs));
	if (!names || !cs || !(cs->dir = strdup(dir))) {
		ret = names ? -ENOMEM : -EIO;
		goto fail;
	}
	/*
	 * Open every file first, so parents are shared by identity.  Each is
	 * opened beneath IMAGEDIR: a symbolic link that leads out of it is
	 * left out (unless allow_outside).
	 */
	for (size_t i = 0; i < nnames; i++) {
		char *path;
		struct stat st;
		int fd;

		if (asprintf(&path, "%s/%s", dir, names[i]) < 0) {
			ret = -ENOMEM;
			goto fail;
		}
		if (!is_regular(path, &st)) {
			free(path);
			continue;
		}
		fd = resolver_open_fd(&r, path, O_RDONLY, false);
		if (fd < 0) {
			if (fd == -EXDEV) {
				log_outside(&r, path, "a symbolic link to");
				log_summary_add(path, "a link outside IMAGEDIR");
			} else {
				log_err("%s: cannot open: %s", path,
					strerror(-fd));
				log_summary_add(path, reason_of(fd));
			}
			cs->nfailed++;
		} else if (fstat(fd, &st) < 0 || node_find(&r, &st, NULL)) {
			close(fd);
		} else if (!img_probe_fd(fd, path)) {
			log_warn("%s: skipped: not a disk image", path);
			close(fd);
		} else if (!node_open_fd(&r, fd, path, NULL, true, false)) {
			log_summary_add(path, reason_of(r.open_err));
			cs->nfailed++;
		}
		free(path);
	}
	tops = calloc(r.n ? r.n : 1, sizeof(*tops));
	if (!tops) {
		ret = -ENOMEM;
		goto fail;
	}
	for (size_t i = 0, nscanned = r.n; i < nscanned; i++) {
		struct node *nd = r.nodes[i];

		if (!nd->scanned)
			continue;
		ret = resolve(&r, nd);
		if (ret < 0) {	/* the reason is logged */
			log_summary_add(nd->path,
					nd->why ? nd->why : reason_of(ret));
			cs->nfailed++;
			continue;
		}
		tops[ntops++] = nd;
	}
	if (r.o.new_layer_of) {
		struct node **v = realloc(tops, (ntops + 1) * sizeof(*tops));
		struct node *nd;

		if (!v) {
			ret = -ENOMEM;
			goto fail;
		}
		tops = v;
		nd = create_layer(&r, tops, ntops);
		if (!nd) {
			ret = -EIO;	/* the user asked for it: fail */
			goto fail;
		}
		tops[ntops++] = nd;
	}
	mark_parents(&r);
	if (r.o.writable) {
		check_rw_base(&r, tops, ntops);
		for (size_t i = 0; i < ntops; i++)
			open_writable(&r, tops[i]);
	}
	cs->chains = calloc(ntops ? ntops : 1, sizeof(*cs->chains));
	if (!cs->chains) {
		ret = -ENOMEM;
		goto fail;
	}
	for (size_t i = 0; i < ntops; i++) {
		char *stem;
		const char *name;
		struct chain *c;

		if (tops[i]->locked_out) {
			log_err("%s: left out: cannot be locked for writing",
				tops[i]->path);
			cs->nfailed++;
			continue;
		}
		name = chain_name(tops, ntops, i, &stem);
		c = name ? chain_build(tops[i], name) : NULL;
		free(stem);
		if (!c) {
			ret = -ENOMEM;
			goto fail;
		}
		cs->chains[cs->nchains++] = c;
	}
	qsort(cs->chains, cs->nchains, sizeof(*cs->chains), cmp_chain);
	for (size_t i = 0; i < nnames; i++)
		free(names[i]);
	free(names);
	free(tops);
	resolver_fini(&r);
	*out = cs;
	return 0;
fail:
	if (names)
		for (size_t i = 0; i < nnames; i++)
			free(names[i]);
	free(names);
	free(tops);
	chainset_free(cs);
	resolver_fini(&r);
	return ret;
}

void chainset_free(struct chainset *cs)
{
	if (!cs)
		return;
	for (size_t i = 0; i < cs->nchains; i++)
		chain_free(cs->chains[i]);
	free(cs->chains);
	free(cs->dir);
	free(cs);
}
