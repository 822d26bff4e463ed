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
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "chain-priv.h"
#include "compiler.h"
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
	struct node *parent;	/* borrowed; NULL for a base */
	char *parent_ref;	/* owned: reference that resolved */
	const char *parent_ref_what;
	int id_check;
	unsigned depth;		/* layers in this node's chain */
};

struct resolver {
	const char *dir;	/* borrowed: IMAGEDIR as given */
	char *realdir;		/* owned: canonical IMAGEDIR */
	struct chain_opts o;
	struct node **nodes;	/* owned array of owned nodes */
	size_t n, cap;
};

static void node_free(struct node *nd)
{
	if (!nd)
		return;
	img_unref(nd->img);
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
}

static int resolver_init(struct resolver *r, const char *dir,
			 const struct chain_opts *o)
{
	struct stat st;

	memset(r, 0, sizeof(*r));
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

/* true if the canonical form of path lies inside IMAGEDIR */
static bool inside_dir(const struct resolver *r, const char *path)
{
	char *real = realpath(path, NULL);
	size_t n = strlen(r->realdir);
	bool ok;

	if (!real)
		return false;
	ok = !strncmp(real, r->realdir, n) &&
	     (real[n] == '/' || (n == 1 && r->realdir[0] == '/'));
	free(real);
	return ok;
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

/* Open path as a new node.  NULL if it cannot be opened (logged). */
static struct node *node_open(struct resolver *r, const char *path,
			      const struct img_driver *drv, bool scanned)
{
	struct node *nd;
	char msg[LAYER_MSG_MAX];

	if (r->n == r->cap) {
		size_t cap = r->cap ? r->cap * 2 : 16;
		struct node **v = realloc(r->nodes, cap * sizeof(*v));

		if (!v)
			return NULL;
		r->nodes = v;
		r->cap = cap;
	}
	nd = calloc(1, sizeof(*nd));
	if (!nd)
		return NULL;
	nd->path = strdup(path);
	if (!nd->path || img_open(path, drv, false, &nd->img) < 0) {
		node_free(nd);
		return NULL;
	}
	nd->name = base_name(nd->path);
	nd->scanned = scanned;
	layer_tag_parse(nd->name, &nd->tag);
	if (!layer_check_self(&nd->tag, msg, sizeof(msg))) {
		if (r->o.strict_layers) {
			log_err("%s: layer rule: %s", path, msg);
			nd->state = NODE_FAILED;
		} else {
			log_warn("%s: layer rule: %s", path, msg);
		}
	}
	r->nodes[r->n++] = nd;
	return nd;
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

static int resolve(struct resolver *r, struct node *nd, unsigned level);

static int resolve_parent(struct resolver *r, struct node *nd,
			  const struct img_parent *p, unsigned level)
{
	const struct img_driver *drv = NULL;
	struct candidate cand = { 0 };
	struct node *pn;
	struct stat st;
	char msg[LAYER_MSG_MAX];
	int ret;

	if (p->format) {
		drv = img_driver_find(p->format);
		if (!drv)
			log_warn("%s: parent format \"%s\" is unknown; probing",
				 nd->path, p->format);
	}
	ret = find_parent_file(r, nd, p, &cand);
	if (ret < 0)
		return ret;
	/*
	 * qemu has no driver for Android sparse images, so an overlay that
	 * qemu-img made over one can only say "raw".  Read such a parent as
	 * what it is: as raw it would show the sparse container's bytes.
	 */
	if (drv && !strcmp(drv->name, "raw")) {
		const struct img_driver *probed = img_probe_file(cand.path);

		if (probed && !strcmp(probed->name, "asparse")) {
			log_info("%s: parent %s recorded as raw is an Android "
				 "sparse image; reading it as one", nd->path,
				 cand.path);
			drv = probed;
		}
	}
	ret = -ENOENT;
	if (stat(cand.path, &st) < 0)
		goto out;
	pn = node_find(r, &st, drv);
	if (!pn) {
		pn = node_open(r, cand.path, drv, false);
		if (!pn) {
			log_err("%s: parent %s cannot be opened", nd->path,
				cand.path);
			ret = -EIO;
			goto out;
		}
	}
	ret = resolve(r, pn, level + 1);
	if (ret == -ELOOP && pn->state == NODE_BUSY) {
		log_err("%s: parent chain loops back to %s", nd->path,
			pn->path);
		goto out;
	}
	if (ret < 0) {
		if (ret != -ELOOP)
			log_err("%s: parent %s is unusable", nd->path,
				pn->path);
		goto out;
	}
	ret = check_identity(r, nd, p, pn);
	if (ret < 0)
		goto out;
	if (!layer_check_pair(&nd->tag, &pn->tag, msg, sizeof(msg))) {
		if (r->o.strict_layers) {
			ret = log_err_ret(-EINVAL, "%s: layer rule: %s",
					  nd->path, msg);
			goto out;
		}
		log_warn("%s: layer rule: %s", nd->path, msg);
	}
	if (pn->depth + 1 > r->o.max_depth) {
		ret = log_err_ret(-ELOOP, "%s: chain deeper than %u layers",
				  nd->path, r->o.max_depth);
		goto out;
	}
	nd->parent = pn;
	nd->depth = pn->depth + 1;
	nd->parent_ref = strdup(cand.ref->path);
	nd->parent_ref_what = cand.ref->what;
	ret = 0;
out:
	free(cand.path);
	return ret;
}

static int resolve(struct resolver *r, struct node *nd, unsigned level)
{
	struct img_parent p = { 0 };
	int ret;

	switch (nd->state) {
	case NODE_OK:
		return 0;
	case NODE_FAILED:
		return -EINVAL;
	case NODE_BUSY:
		return -ELOOP;
	case NODE_NEW:
		break;
	}
	if (level > r->o.max_depth) {
		nd->state = NODE_FAILED;
		return log_err_ret(-ELOOP, "%s: chain deeper than %u layers",
				   nd->path, r->o.max_depth);
	}
	nd->state = NODE_BUSY;
	ret = nd->img->drv->parent ? nd->img->drv->parent(nd->img, &p) : 0;
	if (ret == 0) {
		nd->depth = 1;
	} else if (ret > 0) {
		ret = resolve_parent(r, nd, &p, level);
	}
	img_parent_clear(&p);
	nd->state = ret < 0 ? NODE_FAILED : NODE_OK;
	return ret < 0 ? ret : 0;
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

/*
 * Reopen a top image that nothing depends on O_RDWR.  Every other image
 * stays as it was opened: O_RDONLY.  A failure leaves it read-only, but a
 * top another process holds (its write lock refused, imglock.h) is left
 * out: writing it would race that process.
 */
static void open_writable(struct node *nd)
{
	struct img *w;
	int r;

	if (nd->is_parent || !nd->img->drv->write)
		return;
	r = img_open(nd->path, nd->img->drv, true, &w);
	if (r == -EBUSY) {	/* another writer or a reader that denies it */
		nd->locked_out = true;
		return;
	}
	if (r < 0) {
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
	nd = node_open(r, path, drv, true);
	if (nd && resolve(r, nd, 1) < 0)
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
	nd = node_open(&r, path, NULL, true);
	if (!nd)
		goto out_res;
	ret = resolve(&r, nd, 1);
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
	names = list_dir(dir, &nnames);
	cs = calloc(1, sizeof(*cs));
	if (!names || !cs || !(cs->dir = strdup(dir))) {
		ret = names ? -ENOMEM : -EIO;
		goto fail;
	}
	/* Open every file first, so parents are shared by identity. */
	for (size_t i = 0; i < nnames; i++) {
		char *path;
		struct stat st;

		if (asprintf(&path, "%s/%s", dir, names[i]) < 0) {
			ret = -ENOMEM;
			goto fail;
		}
		if (!is_regular(path, &st)) {
			free(path);
			continue;
		}
		if (!node_find(&r, &st, NULL)) {
			if (!img_probe_file(path))
				log_warn("%s: skipped: not a disk image", path);
			else if (!node_open(&r, path, NULL, true))
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
		if (resolve(&r, nd, 1) < 0) {	/* the reason is logged */
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
	if (r.o.writable)
		for (size_t i = 0; i < ntops; i++)
			open_writable(tops[i]);
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
