// SPDX-License-Identifier: LGPL-2.1-or-later
/* io.c: whole-buffer positioned I/O. */
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/openat2.h>

#include "atomic-file.h"
#include "io.h"
#include "log.h"

static int pread_loop(int fd, void *buf, size_t n, uint64_t off, int pad)
{
	uint8_t *p = buf;

	while (n) {
		ssize_t r = pread(fd, p, n, (off_t)off);

		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0) {
			if (!pad)
				return -ENODATA;
			memset(p, 0, n);
			return 0;
		}
		p += r;
		n -= (size_t)r;
		off += (uint64_t)r;
	}
	return 0;
}

int pread_full(int fd, void *buf, size_t n, uint64_t off)
{
	return pread_loop(fd, buf, n, off, 0);
}

int pread_zeropad(int fd, void *buf, size_t n, uint64_t off)
{
	return pread_loop(fd, buf, n, off, 1);
}

int pwrite_full(int fd, const void *buf, size_t n, uint64_t off)
{
	const uint8_t *p = buf;

	while (n) {
		ssize_t r = pwrite(fd, p, n, (off_t)off);

		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			return -EIO;
		p += r;
		n -= (size_t)r;
		off += (uint64_t)r;
	}
	return 0;
}

int fsync_parent_dir(const char *path)
{
	char *copy = strdup(path);
	int fd, r = 0;

	if (!copy)
		return -ENOMEM;
	fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd < 0 || fsync(fd) < 0)
		r = -errno;
	if (fd >= 0)
		close(fd);
	free(copy);
	return r;
}

/*
 * The temporaries behind the fds file_create() returned, until
 * file_create_end() or file_create_abort(): few live at once.
 */
struct io_pending {
	struct atomic_file af;
	struct io_pending *next;
};

static pthread_mutex_t io_pending_lock = PTHREAD_MUTEX_INITIALIZER;
static struct io_pending *io_pending_list;

int file_create(const char *path, const char *mod)
{
	struct io_pending *p = calloc(1, sizeof(*p));
	int r;

	if (!p)
		return log_err_ret(-ENOMEM, "%s: %s: cannot create: %s", mod,
				   path, strerror(ENOMEM));
	r = atomic_file_begin(path, &p->af, mod);
	if (r < 0) {
		free(p);
		return r;
	}
	pthread_mutex_lock(&io_pending_lock);
	p->next = io_pending_list;
	io_pending_list = p;
	pthread_mutex_unlock(&io_pending_lock);
	return p->af.fd;
}

static struct io_pending *io_pending_take(int fd)
{
	struct io_pending **pp, *p = NULL;

	pthread_mutex_lock(&io_pending_lock);
	for (pp = &io_pending_list; *pp; pp = &(*pp)->next) {
		if ((*pp)->af.fd == fd) {
			p = *pp;
			*pp = p->next;
			break;
		}
	}
	pthread_mutex_unlock(&io_pending_lock);
	return p;
}

int file_create_end(int fd, const char *path, int r, const char *mod)
{
	struct io_pending *p = io_pending_take(fd);

	if (!p) {		/* not from file_create(): a bug */
		close(fd);
		return log_err_ret(-EBADF, "%s: %s: cannot write the new "
				   "file: %s", mod, path, strerror(EBADF));
	}
	if (r < 0) {
		log_err("%s: %s: cannot write the new file: %s", mod, path,
			strerror(-r));
		atomic_file_abort(&p->af);
	} else {
		r = atomic_file_commit(&p->af, mod);
	}
	free(p);
	return r;
}

void file_create_abort(int fd)
{
	struct io_pending *p = io_pending_take(fd);

	if (p) {
		atomic_file_abort(&p->af);
		free(p);
	} else {
		close(fd);
	}
}

int file_reserve(int fd, uint64_t off, uint64_t len)
{
	if (!len || fallocate(fd, 0, (off_t)off, (off_t)len) == 0)
		return 0;
	if (errno == EOPNOTSUPP || errno == ENOSYS)
		return 0;
	return -errno;
}

/* The canonical path of an open fd, from /proc; malloc'd or NULL. */
static char *fd_path(int fd)
{
	char link[64], *out = malloc(PATH_MAX);
	ssize_t n;

	if (!out)
		return NULL;
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	n = readlink(link, out, PATH_MAX - 1);
	if (n <= 0) {
		free(out);
		return NULL;
	}
	out[n] = '\0';
	return out;
}

/*
 * Without openat2 (Linux before 5.6): open, then check where the open
 * file really is.  The check looks at what was opened, so it has no race
 * either, only a wasted open.
 */
static int open_beneath_fallback(int dirfd, const char *rel, int flags)
{
	char *dir, *file;
	size_t n;
	int fd, r = 0;

	fd = openat(dirfd, rel, flags | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	dir = fd_path(dirfd);
	file = fd_path(fd);
	if (!dir || !file) {
		r = -EXDEV;	/* cannot tell: refuse */
	} else {
		n = strlen(dir);
		if (n == 1)	/* the root holds everything */
			n = 0;
		if (strncmp(file, dir, n) || file[n] != '/')
			r = -EXDEV;
	}
	free(dir);
	free(file);
	if (r < 0) {
		close(fd);
		return r;
	}
	return fd;
}

int file_open_beneath(int dirfd, const char *rel, int flags)
{
	struct open_how how = {
		.flags = (uint64_t)(flags | O_CLOEXEC),
		.resolve = RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS,
	};
	int tries = 8;	/* EAGAIN: a rename raced a ".." check */
	long fd;

	if (!*rel || rel[0] == '/')
		return -EXDEV;
	do {
		fd = syscall(SYS_openat2, dirfd, rel, &how, sizeof(how));
	} while (fd < 0 && (errno == EINTR || errno == EAGAIN) && --tries);
	if (fd < 0 && errno == ENOSYS)
		return open_beneath_fallback(dirfd, rel, flags);
	if (fd < 0)
		return -errno;
	return (int)fd;
}
