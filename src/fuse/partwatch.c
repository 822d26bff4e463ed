// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * partwatch.c: the partitions of the layerfs daemon's chains.  At mount
 * each chain's table is scanned into pN nodes and by-name/by-label links.
 * In a writable chain the partition files follow the partition table: a
 * write that touches a watched range of the table (part_table_touches)
 * marks the chain dirty; the next lookup, readdir or partition I/O in
 * that chain rescans it first (fs_part_settle), and the rescan thread
 * rescans it anyway and tells the kernel to drop what it cached
 * (fuse_lowlevel_notify_inval_*), always with none of our locks held.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "compiler.h"
#include "fs-priv.h"
#include "log.h"

/*
 * A partition name or label as a file name: '/' and control characters
 * become '_'; "", "." and ".." are not usable.  buf holds NAME_MAX + 1.
 */
static bool link_name(const char *in, char *buf)
{
	size_t n = 0;

	for (; *in && n < NAME_MAX; in++) {
		unsigned char ch = (unsigned char)*in;

		buf[n++] = ch < 0x20 || ch == 0x7f || ch == '/' ? '_' : (char)ch;
	}
	buf[n] = '\0';
	return fs_name_ok(buf);
}

/* The kids a chain directory (or its by-name, by-label) is being given */
struct kidlist {
	fuse_ino_t *v;		/* owned */
	size_t n, cap;
};

static int kidlist_add(struct kidlist *l, fuse_ino_t ino)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? l->cap * 2 : 16;
		fuse_ino_t *v = reallocarray(l->v, cap, sizeof(*v));

		if (!v)
			return -ENOMEM;
		l->v = v;
		l->cap = cap;
	}
	l->v[l->n++] = ino;
	return 0;
}

static bool kidlist_has_name(const struct fs *fs, const struct kidlist *l,
			     const char *name)
{
	for (size_t i = 0; i < l->n; i++)
		if (!strcmp(fs_node_at(fs, l->v[i])->name, name))
			return true;
	return false;
}

/* A live kid of dir named name (of that type), or NULL. */
static struct fs_node *kid_named(const struct fs *fs,
				 const struct fs_node *dir, const char *name,
				 enum fs_node_type type)
{
	for (size_t i = 0; dir && i < dir->nkids; i++) {
		struct fs_node *k = fs_node_at(fs, dir->kids[i]);

		if (k->type == type && !strcmp(k->name, name))
			return k;
	}
	return NULL;
}

static int gone_add(struct fs_cstate *cst, fuse_ino_t parent,
		    const char *name)
{
	struct fs_gone *g = reallocarray(cst->gone, cst->ngone + 1, sizeof(*g));

	if (!g)
		return -ENOMEM;
	cst->gone = g;
	g[cst->ngone].parent = parent;
	g[cst->ngone].name = strdup(name);
	if (!g[cst->ngone].name)
		return -ENOMEM;
	cst->ngone++;
	return 0;
}

/*
 * Old kids of dir that are not in new: marked stale (partitions, links)
 * and remembered for the kernel.  Then dir gets the new list.
 */
static void kids_replace(struct fs *fs, struct fs_cstate *cst,
			 struct fs_node *dir, struct kidlist *l)
{
	unsigned nsub = 0;

	for (size_t i = 0; i < dir->nkids; i++) {
		struct fs_node *k = fs_node_at(fs, dir->kids[i]);
		bool kept = false;

		for (size_t j = 0; j < l->n && !kept; j++)
			kept = l->v[j] == k->ino;
		if (kept)
			continue;
		if (k->type == FS_NODE_PART || k->type == FS_NODE_LINK)
			__atomic_store_n(&k->stale, true, __ATOMIC_RELEASE);
		if (gone_add(cst, dir->ino, k->name) < 0)
			log_warn("fuse: %s: out of memory", cst->chain->name);
	}
	free(dir->kids);
	dir->kids = l->v;
	dir->nkids = l->n;
	dir->kids_cap = l->cap;
	*l = (struct kidlist){ 0 };
	fs_kids_sort(fs, dir);
	for (size_t i = 0; i < dir->nkids; i++)
		nsub += fs_node_at(fs, dir->kids[i])->type == FS_NODE_DIR;
	dir->nsubdirs = nsub;
}

/*
 * The symlinks of one by-name or by-label directory: for each partition with a usable
 * name (field), "NAME" -> "../pN"; the first partition (by number) wins
 * a name used twice.  *dirino is created on first use.
 */
static int links_build(struct fs *fs, struct fs_cstate *cst,
		       const struct part_table *t, size_t field,
		       const char *dirname, fuse_ino_t *dirino,
		       struct kidlist *chainkids)
{
	struct kidlist l = { 0 };
	struct fs_node *dir = *dirino ? fs_node_at(fs, *dirino) : NULL;
	char name[NAME_MAX + 1], target[32];
	int r = 0;

	for (size_t i = 0; t && i < t->nparts; i++) {
		const struct part *p = &t->parts[i];
		struct fs_node *k;

		if (p->container || !link_name((const char *)p + field, name))
			continue;
		if (kidlist_has_name(fs, &l, name)) {
			DBG(FUSE, "%s/%s/%s: name used twice, p%u left out",
			    cst->chain->name, dirname, name, p->number);
			continue;
		}
		snprintf(target, sizeof(target), "../p%u", p->number);
		if (!dir) {
			dir = fs_node_create(fs, cst->dir, dirname, FS_NODE_DIR,
					  cst->chain, 0, 0);
			if (!dir) {
				r = -ENOMEM;
				goto out;
			}
			dir->cst = cst;
			*dirino = dir->ino;
		}
		k = kid_named(fs, dir, name, FS_NODE_LINK);
		if (!k || strcmp(k->target, target) != 0) {
			k = fs_node_create(fs, dir->ino, name, FS_NODE_LINK,
					cst->chain, 0, 0);
			if (!k || !(k->target = strdup(target))) {
				r = -ENOMEM;
				goto out;
			}
			k->cst = cst;
		}
		r = kidlist_add(&l, k->ino);
		if (r < 0)
			goto out;
	}
	if (l.n)
		r = kidlist_add(chainkids, dir->ino);
	if (r == 0 && dir)
		kids_replace(fs, cst, dir, &l);
out:
	free(l.v);
	return r;
}

/*
 * Scan cst's chain and make its directory show what was found: disk,
 * info, pN (a node kept where its window is unchanged), by-name/, by-label/.
 */
int fs_part_refresh(struct fs *fs, struct fs_cstate *cst)
{
	struct part_table *t = NULL;
	struct kidlist l = { 0 };
	struct fs_node *dir;
	int r;

	pthread_mutex_lock(&cst->scan_lock);
	/* cleared first: a write during the scan asks for another one */
	__atomic_store_n(&cst->dirty, false, __ATOMIC_SEQ_CST);
	__atomic_store_n(&cst->fsdirty, false, __ATOMIC_SEQ_CST);
	r = part_scan(cst->chain, &t);
	if (r < 0) {
		log_warn("%s: partitions not scanned: %s", cst->chain->name,
			 strerror(-r));
		pthread_mutex_unlock(&cst->scan_lock);
		return r;
	}
	if (fs->finished)
		pthread_rwlock_wrlock(&fs->tree_lock);
	dir = fs_node_at(fs, cst->dir);
	r = kidlist_add(&l, cst->disk);
	if (r == 0)
		r = kidlist_add(&l, cst->info);
	for (size_t i = 0; r == 0 && i < t->nparts; i++) {
		const struct part *p = &t->parts[i];
		char name[32];
		struct fs_node *k;

		snprintf(name, sizeof(name), "p%u", p->number);
		k = kid_named(fs, dir, name, FS_NODE_PART);
		if (!k || k->base != p->start || k->size != p->size) {
			k = fs_node_create(fs, cst->dir, name, FS_NODE_PART,
					cst->chain, p->start, p->size);
			if (!k) {
				r = -ENOMEM;
				break;
			}
			k->cst = cst;
			k->partno = p->number;
		}
		r = kidlist_add(&l, k->ino);
	}
	if (r == 0)
		r = links_build(fs, cst, t, offsetof(struct part, name),
				FS_BYNAME_NAME, &cst->byname, &l);
	if (r == 0)
		r = links_build(fs, cst, t, offsetof(struct part, label),
				FS_BYLABEL_NAME, &cst->bylabel, &l);
	if (r == 0) {
		kids_replace(fs, cst, dir, &l);
		part_table_free(cst->table);
		cst->table = t;
		t = NULL;
		cst->gen++;
		fs_now(&dir->mtime);
	}
	if (fs->finished)
		pthread_rwlock_unlock(&fs->tree_lock);
	if (r == 0 && fs->finished)
		__atomic_store_n(&cst->notify, true, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&cst->scan_lock);
	free(l.v);
	part_table_free(t);
	if (r < 0)
		log_err("%s: cannot show the partitions: %s", cst->chain->name,
			strerror(-r));
	else
		DBG(FUSE, "%s: %zu partition(s) shown (scan %u)",
		    cst->chain->name, cst->table->nparts, cst->gen);
	return r;
}

static void rescan_kick(struct fs *fs)
{
	pthread_mutex_lock(&fs->rescan_mutex);
	fs->rescan_kick = true;
	pthread_cond_signal(&fs->rescan_cond);
	pthread_mutex_unlock(&fs->rescan_mutex);
}

/*
 * Called in a handler before it looks at a chain's partitions: a table
 * written to is rescanned first (labels too, when a listing or the info
 * file is asked for: labels).  Takes no lock the caller holds.
 */
void fs_part_settle(struct fs *fs, struct fs_cstate *cst, bool labels)
{
	if (!cst)
		return;
	if (!__atomic_load_n(&cst->dirty, __ATOMIC_SEQ_CST) &&
	    !(labels && __atomic_load_n(&cst->fsdirty, __ATOMIC_SEQ_CST)))
		return;
	if (fs_part_refresh(fs, cst) == 0)
		rescan_kick(fs);	/* the kernel's caches */
}

/* After a write of [off, off + len) of cst's disk completed. */
void fs_part_written(struct fs *fs, struct fs_cstate *cst, uint64_t off,
			  uint64_t len)
{
	bool touch, fstouch = false;

	if (!cst)
		return;
	pthread_rwlock_rdlock(&fs->tree_lock);
	touch = part_table_touches(cst->table, off, len);
	if (!touch)
		fstouch = part_table_touches_fs(cst->table, off, len);
	pthread_rwlock_unlock(&fs->tree_lock);
	if (fstouch && !__atomic_load_n(&cst->fsdirty, __ATOMIC_RELAXED))
		__atomic_store_n(&cst->fsdirty, true, __ATOMIC_SEQ_CST);
	if (!touch)
		return;
	DBG(FUSE, "%s: write at %llu touches the partition table",
	    cst->chain->name, (unsigned long long)off);
	__atomic_store_n(&cst->dirty, true, __ATOMIC_SEQ_CST);
	rescan_kick(fs);
}

/* Drop the kernel's cached names and directory pages; no lock held. */
static void part_notify(struct fs *fs, struct fs_cstate *cst)
{
	fuse_ino_t byname, bylabel;
	struct fs_gone *g;
	size_t n;

	if (!__atomic_exchange_n(&cst->notify, false, __ATOMIC_ACQ_REL))
		return;
	pthread_mutex_lock(&cst->scan_lock);
	g = cst->gone;
	n = cst->ngone;
	cst->gone = NULL;
	cst->ngone = 0;
	byname = cst->byname;
	bylabel = cst->bylabel;
	pthread_mutex_unlock(&cst->scan_lock);
	for (size_t i = 0; i < n; i++) {
		int r = fuse_lowlevel_notify_inval_entry(fs->se, g[i].parent,
							 g[i].name,
							 strlen(g[i].name));

		/* -ENOENT: the kernel had not cached it */
		if (r < 0 && r != -ENOENT)
			DBG(FUSE, "%s: dropping %s from the kernel's cache: %s",
			    cst->chain->name, g[i].name, strerror(-r));
		free(g[i].name);
	}
	free(g);
	fuse_lowlevel_notify_inval_inode(fs->se, cst->dir, 0, 0);
	if (byname)
		fuse_lowlevel_notify_inval_inode(fs->se, byname, 0, 0);
	if (bylabel)
		fuse_lowlevel_notify_inval_inode(fs->se, bylabel, 0, 0);
	fuse_lowlevel_notify_inval_inode(fs->se, cst->info, 0, 0);
}

static void *rescan_main(void *arg)
{
	struct fs *fs = arg;

	pthread_mutex_lock(&fs->rescan_mutex);
	for (;;) {
		while (!fs->rescan_kick && !fs->rescan_stop)
			pthread_cond_wait(&fs->rescan_cond, &fs->rescan_mutex);
		if (fs->rescan_stop)
			break;
		fs->rescan_kick = false;
		pthread_mutex_unlock(&fs->rescan_mutex);
		usleep(FS_RESCAN_DELAY_US);
		for (size_t i = 0; i < fs->ncst; i++) {
			struct fs_cstate *cst = fs->cst[i];

			if (__atomic_load_n(&cst->dirty, __ATOMIC_SEQ_CST))
				fs_part_refresh(fs, cst);
			part_notify(fs, cst);
		}
		pthread_mutex_lock(&fs->rescan_mutex);
	}
	pthread_mutex_unlock(&fs->rescan_mutex);
	return NULL;
}

int fs_start(struct fs *fs, struct fuse_session *se)
{
	bool any = false;
	int r;

	fs->se = se;
	for (size_t i = 0; i < fs->ncst; i++)
		any |= fs->cst[i]->chain->writable;
	if (!any)		/* nothing will ever be rescanned */
		return 0;
	r = pthread_create(&fs->rescan_thread, NULL, rescan_main, fs);
	if (r != 0)
		return log_err_ret(-r, "fuse: cannot start the rescan thread: %s",
				   strerror(r));
	fs->rescan_running = true;
	return 0;
}

void fs_stop(struct fs *fs)
{
	if (!fs || !fs->rescan_running)
		return;
	pthread_mutex_lock(&fs->rescan_mutex);
	fs->rescan_stop = true;
	pthread_cond_signal(&fs->rescan_cond);
	pthread_mutex_unlock(&fs->rescan_mutex);
	pthread_join(fs->rescan_thread, NULL);
	fs->rescan_running = false;
}
