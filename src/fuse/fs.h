/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * fs.h: the FUSE layer of the layerfs daemon (low-level libfuse API), as
 * main.c sees it.  The node table, the operations and the partition watch
 * are in nodes.c, ops.c and partwatch.c (shared parts: fs-priv.h).
 *
 * This directory is the only includer of fuse_lowlevel.h, and the only
 * place where errno values are translated for the kernel.
 */
#ifndef LAYERFS_FUSE_FS_H
#define LAYERFS_FUSE_FS_H

#ifndef FUSE_USE_VERSION
#define FUSE_USE_VERSION 312	/* fuse_loop_cfg_*, lseek: libfuse >= 3.12 */
#endif
#include <fuse_lowlevel.h>

#include "chain.h"

struct fs;

/* Tree building, before the session starts (not thread-safe). */
struct fs *fs_new(void);
/*
 * One directory per chain holding `disk`, `info` and the partitions found
 * by part_scan, plus the root's log file.
 */
int fs_add_chainset(struct fs *fs, const struct chainset *cs);
/* Sort directories and freeze the table; the root's mtime is imagedir's. */
int fs_tree_finish(struct fs *fs, const char *imagedir);
/* fs_free(NULL) is a no-op; the chains stay the caller's. */
void fs_free(struct fs *fs);
/*
 * After fuse_daemonize (threads do not survive a fork): start the thread
 * that rescans partition tables written to and tells the kernel to drop
 * its cached entries.  fs_stop ends it (before the session is destroyed).
 */
int fs_start(struct fs *fs, struct fuse_session *se);
void fs_stop(struct fs *fs);

/* The operations table; userdata is the struct fs. */
extern const struct fuse_lowlevel_ops fs_ops;

/* Kernel error for a -errno from the layers below (EUCLEAN... -> EIO). */
int fs_errno(int r);

#endif
