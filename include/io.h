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

#endif
