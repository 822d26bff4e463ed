// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * perm.c: who may see and open what (issue #12, item 9).  The mount
 * grants no more than the image files do, whoever they belong to.
 *
 * Shown (getattr; the kernel checks it, default_permissions is always on):
 *
 *   disk, pN, info   owner and group of the top image file; its mode is the
 *                    top's read/write bits (& 0666), where a read bit is
 *                    kept only if every lower layer grants read to the same
 *                    class, judged on that layer's own owner and group:
 *                      owner  its owner bit if it has the top's owner,
 *                             else its group bit if it has the top's
 *                             group, else its other bit;
 *                      group  its group bit if it has the top's group,
 *                             else its other bit;
 *                      other  its other bit.
 *                    Write bits only on a writable chain's disk and pN
 *                    (lower layers are never written); info is read-only.
 *   .layerfs.log     0400, owned by the mounting user.
 *   directories      0555, owned by the mounting user (names only).
 *
 * Checked (open): the caller's uid, gid and supplementary groups
 * (fuse_req_ctx, fuse_req_getgroups) against every layer file's owner,
 * group and mode, as the kernel checks a file: read access to every layer
 * to read, and write access to the top too to write; uid 0 passes (the
 * kernel's CAP_DAC_OVERRIDE).  ACLs are not consulted.  The log: its
 * owner or root.  The check is at open only: READ and WRITE cost nothing.
 *
 * The shown mode may allow less than the open check would (a group the
 * top's owner is in, but we cannot tell), never more.  Directory modes
 * along the image paths are not part of the rule: the files decide.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "compiler.h"
#include "fs-priv.h"
#include "log.h"

#define PERM_GROUPS_MAX 65536	/* NGROUPS_MAX on Linux */

/* Read bits of the shown mode that lower layer l allows, given top t. */
static mode_t perm_lower_mask(const struct stat *t, const struct stat *l)
{
	mode_t m = 0, lm = l->st_mode;

	if (l->st_uid == t->st_uid)
		m |= lm & S_IRUSR;
	else if (l->st_gid == t->st_gid)
		m |= (lm & S_IRGRP) << 3;
	else
		m |= (lm & S_IROTH) << 6;
	if (l->st_gid == t->st_gid)
		m |= lm & S_IRGRP;
	else
		m |= (lm & S_IROTH) << 3;
	m |= lm & S_IROTH;
	return m | (S_IWUSR | S_IWGRP | S_IWOTH);	/* writes: top only */
}

int fs_perm_attr(const struct fs_node *nd, struct stat *st)
{
	struct chain_view *v;
	struct stat top, l;
	mode_t mode;
	unsigned i;
	int r = 0;

	if (nd->type == FS_NODE_LOG) {
		st->st_mode = S_IFREG | S_IRUSR;
		return 0;
	}
	if (!fs_node_is_window(nd) && nd->type != FS_NODE_INFO)
		return 0;
	v = chain_view_get(nd->chain);
	if (fstat(v->layers[0].img->fd, &top) < 0) {
		r = -errno;
		goto out;
	}
	mode = top.st_mode & 0666;
	for (i = 1; i < v->depth && mode; i++) {
		if (fstat(v->layers[i].img->fd, &l) < 0) {
			r = -errno;
			goto out;
		}
		mode &= perm_lower_mask(&top, &l);
	}
	if (!fs_node_is_window(nd) || !nd->chain->writable)
		mode &= ~(mode_t)0222;
	st->st_uid = top.st_uid;
	st->st_gid = top.st_gid;
	st->st_mode = S_IFREG | mode;
out:
	chain_view_put(v);
	if (r < 0) {	/* show nothing we could not check */
		st->st_mode = S_IFREG;
		log_warn("fuse: %s: cannot stat a layer (%s)",
			 nd->chain->name, strerror(-r));
	}
	return r;
}

struct perm_cred {
	uid_t uid;
	gid_t gid;
	gid_t *groups;		/* owned */
	int ngroups;		/* < 0: unknown, the primary gid only */
};

static void perm_cred_get(fuse_req_t req, struct perm_cred *c)
{
	const struct fuse_ctx *ctx = fuse_req_ctx(req);
	int n, cap = 32;

	c->uid = ctx->uid;
	c->gid = ctx->gid;
	c->groups = NULL;
	c->ngroups = -1;
	if (c->uid == 0)
		return;
	for (;;) {
		gid_t *g = malloc((size_t)cap * sizeof(*g));

		if (!g)
			return;
		n = fuse_req_getgroups(req, cap, g);
		if (n < 0) {	/* e.g. no /proc: fewer groups, less access */
			free(g);
			return;
		}
		if (n <= cap) {
			c->groups = g;
			c->ngroups = n;
			return;
		}
		free(g);
		if (n > PERM_GROUPS_MAX)
			return;
		cap = n;
	}
}

static bool perm_in_group(const struct perm_cred *c, gid_t gid)
{
	int i;

	if (c->gid == gid)
		return true;
	for (i = 0; i < c->ngroups; i++)
		if (c->groups[i] == gid)
			return true;
	return false;
}

/* As the kernel's generic permission check, without ACLs. */
static bool perm_file_ok(const struct perm_cred *c, const struct stat *st,
			 mode_t want)
{
	mode_t m = st->st_mode;

	if (c->uid == 0)
		return true;
	if (st->st_uid == c->uid)
		m >>= 6;
	else if (perm_in_group(c, st->st_gid))
		m >>= 3;
	return (m & want) == want;
}

int fs_perm_open(fuse_req_t req, const struct fs *fs,
		 const struct fs_node *nd, bool write)
{
	struct chain_view *v;
	struct perm_cred c;
	struct stat st;
	unsigned i;
	int r = 0;

	perm_cred_get(req, &c);
	if (c.uid == 0)
		return 0;
	if (nd->type == FS_NODE_LOG) {
		r = c.uid == fs->uid ? 0 : -EACCES;
		goto out_cred;
	}
	if (!fs_node_is_window(nd) && nd->type != FS_NODE_INFO)
		goto out_cred;
	v = chain_view_get(nd->chain);
	for (i = 0; i < v->depth && r == 0; i++) {
		mode_t want = (i == 0 && write) ? 06 : 04;

		if (fstat(v->layers[i].img->fd, &st) < 0)
			r = -errno;
		else if (!perm_file_ok(&c, &st, want))
			r = -EACCES;
	}
	chain_view_put(v);
out_cred:
	free(c.groups);
	return r;
}
