/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * imglock.h: image locks that qemu, qemu-img, qemu-storage-daemon and
 * layerfs all see.
 *
 * qemu's file-posix driver states the block permissions it holds and the
 * ones it refuses to share as open-file-description (OFD) read locks of
 * single bytes of the image file:
 *   byte IMGLOCK_PERM_BASE + i     "I hold permission i"
 *   byte IMGLOCK_SHARED_BASE + i   "I let nobody else hold permission i"
 * where i is the bit number of the permission (IMGLOCK_PERM_*: qemu's
 * BLK_PERM_* values).  Whoever wants permission i first checks that nobody
 * holds byte SHARED_BASE + i; whoever refuses to share i checks that nobody
 * holds byte PERM_BASE + i.  The check is F_OFD_GETLK for a write lock, so
 * it sees every other open file description, in this process too: a file
 * must never be reopened for the same purpose while its first descriptor
 * holds locks.  The bytes lie in the file's header, but locks are advisory
 * and touch no data.  Closing the last descriptor of a description drops
 * its locks; a fork keeps them (the description is shared).
 *
 * layerfs takes, like qemu for an image and its backing files:
 *   IMGLOCK_READ   a layer read through a chain: consistent read; writers
 *                  and resizers refused
 *   IMGLOCK_WRITE  a writable top: consistent read, write, resize (unless
 *                  the format cannot grow the file); writers and resizers
 *                  refused
 */
#ifndef LAYERFS_IMGLOCK_H
#define LAYERFS_IMGLOCK_H

#include <stdbool.h>
#include <stddef.h>

#define IMGLOCK_PERM_BASE 100
#define IMGLOCK_SHARED_BASE 200

/* qemu's BLK_PERM_* bits (include/block/block-common.h) */
#define IMGLOCK_PERM_CONSISTENT_READ 0x1u
#define IMGLOCK_PERM_WRITE 0x2u
#define IMGLOCK_PERM_WRITE_UNCHANGED 0x4u
#define IMGLOCK_PERM_RESIZE 0x8u
#define IMGLOCK_PERM_ALL 0xfu
#define IMGLOCK_NPERMS 4

/* What every layerfs user shares: reading, and writes that change nothing */
#define IMGLOCK_SHARED_DEFAULT \
	(IMGLOCK_PERM_CONSISTENT_READ | IMGLOCK_PERM_WRITE_UNCHANGED)

#define IMGLOCK_WHY_MAX 160	/* buffer for imglock_fd_test() */

enum imglock_mode {
	IMGLOCK_READ,
	IMGLOCK_WRITE,
};

/*
 * Make fd hold exactly perm and deny exactly the permissions not in shared
 * (bytes of other permissions are released), then check that no other
 * open file description conflicts.  On a conflict every lock byte of fd is
 * released, the conflict is logged as "PATH: is locked for writing by
 * another process (qemu-io, pid 123)", and -EBUSY returned.  On a file
 * system that has no byte-range locks it warns and returns 0 (unlocked).
 * 0 or -errno.
 */
int imglock_fd_take(int fd, const char *path, unsigned perm,
		    unsigned shared);
/*
 * Would fd, holding perm and sharing only shared, conflict with another
 * open file description?  Takes nothing.  0 no; -EBUSY yes, and why gets
 * "is locked for writing by another process (qemu-io, pid 123)" (len >=
 * IMGLOCK_WHY_MAX is enough); -errno when the locks cannot be tested.
 */
int imglock_fd_test(int fd, unsigned perm, unsigned shared, char *why,
		    size_t len);
/* Release every lock byte fd holds. */
void imglock_fd_release(int fd);
/* The permissions a mode holds; grow: the file may get longer. */
unsigned imglock_mode_perm(enum imglock_mode mode, bool grow);

struct img;
struct chainset;

/*
 * Lock an opened image in mode on its own descriptor (grow unless it is a
 * raw file).  Taking a mode again changes the locks in place.  0, -EBUSY
 * (logged, nothing held), or -errno.
 */
int imglock_img_take(struct img *img, enum imglock_mode mode);
/*
 * The daemon, once the scan is done: every layer of every chain holds
 * IMGLOCK_READ (writable tops got IMGLOCK_WRITE when img_open opened them).
 * A chain with a layer that cannot be locked is left out: logged, freed,
 * counted in cs->nfailed.  0 or -errno (out of memory: nothing changed).
 */
int imglock_chainset_take(struct chainset *cs);

#endif
