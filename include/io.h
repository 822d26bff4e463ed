/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* io.h: whole-buffer pread/pwrite that retry on EINTR and short I/O. */
#ifndef LAYERFS_IO_H
#define LAYERFS_IO_H

#include <stddef.h>
#include <stdint.h>

/*
 * Read exactly n bytes at off.  Returns 0, -errno, or -ENODATA if the file
 * ends first (the caller decides whether that is corruption).
 */
int pread_full(int fd, void *buf, size_t n, uint64_t off);
/* Like pread_full, but bytes past end of file read as zeros. */
int pread_zeropad(int fd, void *buf, size_t n, uint64_t off);
int pwrite_full(int fd, const void *buf, size_t n, uint64_t off);
/* fsync the directory holding path, so a new file's name is durable. */
int fsync_parent_dir(const char *path);

/*
 * New image files, for the drivers' create hooks.  file_create() creates
 * a locked temporary for path (atomic-file.h; path itself must not exist)
 * and returns its fd, O_RDWR|O_CLOEXEC, mode 0644, or -errno, logged as
 * "MOD: PATH: cannot create: ...".  file_create_end() ends the file
 * written through fd with the result r of writing it: when r is 0 it
 * fdatasyncs, renames the temporary to path (never replacing a file) and
 * fsyncs the directory, so path appears whole or not at all; when r or any
 * of that failed the temporary is removed and "MOD: PATH: cannot write
 * the new file: ..." logged.  Returns r, or the first error of ending.
 * file_create_abort() drops the temporary silently.
 */
int file_create(const char *path, const char *mod);
int file_create_end(int fd, const char *path, int r, const char *mod);
void file_create_abort(int fd);
/*
 * Reserve [off, off + len) of fd with fallocate where the file system can;
 * where it cannot (EOPNOTSUPP, ENOSYS) the range stays sparse (it reads as
 * zeros either way).  0 or -errno; does not log.
 */
int file_reserve(int fd, uint64_t off, uint64_t len);
/*
 * Open rel (a relative path) beneath the directory dirfd: no ".." above
 * it, no absolute path, no symbolic link that leads out of it, checked by
 * the kernel at open time (openat2 with RESOLVE_BENEATH and
 * RESOLVE_NO_MAGICLINKS), so a file swapped for a link after a check
 * cannot escape either.  flags as for open(2); O_CLOEXEC is added.  The
 * fd, or -errno: -EXDEV (or -ELOOP) for a path that would leave dirfd.
 * Does not log.
 */
int file_open_beneath(int dirfd, const char *rel, int flags);

#endif
