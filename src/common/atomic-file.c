// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * atomic-file.c: write a new file under a locked temporary name, then
 * rename it into place (see atomic-file.h).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <unistd.h>

#include "atomic-file.h"
#include "io.h"
#include "log.h"

#define TMP_RAND 6
#define TMP_TRIES 32

/* A whole-file OFD write lock, without waiting: 0, -EAGAIN, or -errno. */
static int atomic_fd_lock(int fd)
{
	struct flock fl = {
		.l_type = F_WRLCK,
		.l_whence = SEEK_SET,
		.l_start = 0,
		.l_len = 0,
	};

	if (fcntl(fd, F_OFD_SETLK, &fl) == 0)
		return 0;
	return errno == EACCES ? -EAGAIN : -errno;
}

static void atomic_name_rand(char *out)
{
	static const char set[] = "abcdefghijklmnopqrstuvwxyz"
				  "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
	unsigned char b[TMP_RAND];

	if (getrandom(b, sizeof(b), GRND_NONBLOCK) != (ssize_t)sizeof(b)) {
		unsigned long v = (unsigned long)getpid() * 2654435761u ^
				  (unsigned long)random();

		for (size_t i = 0; i < sizeof(b); i++, v >>= 5)
			b[i] = (unsigned char)v;
	}
	for (size_t i = 0; i < TMP_RAND; i++)
		out[i] = set[b[i] % (sizeof(set) - 1)];
	out[TMP_RAND] = '\0';
}

/* "DIR/.BASE.layerfs-tmp-" for path, or NULL */
static char *atomic_tmp_prefix(const char *path)
{
	char *d = strdup(path), *b = strdup(path), *out = NULL;

	if (d && b && asprintf(&out, "%s/.%s" ATOMIC_FILE_TAG, dirname(d),
			       basename(b)) < 0)
		out = NULL;
	free(d);
	free(b);
	return out;
}

int atomic_file_begin(const char *path, struct atomic_file *af,
		      const char *mod)
{
	char *prefix = atomic_tmp_prefix(path), rnd[TMP_RAND + 1];
	struct stat st;
	int r = -EEXIST;

	af->fd = -1;
	af->tmp = NULL;
	af->path = strdup(path);
	if (!prefix || !af->path) {
		r = -ENOMEM;
		goto fail;
	}
	if (lstat(path, &st) == 0)	/* fail early; the rename checks too */
		goto fail;
	for (int i = 0; i < TMP_TRIES && af->fd < 0; i++) {
		free(af->tmp);
		atomic_name_rand(rnd);
		if (asprintf(&af->tmp, "%s%s", prefix, rnd) < 0) {
			af->tmp = NULL;
			r = -ENOMEM;
			goto fail;
		}
		af->fd = open(af->tmp, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC,
			      0644);
		r = af->fd < 0 ? -errno : 0;
		if (r < 0 && r != -EEXIST)
			break;
	}
	if (af->fd < 0)
		goto fail;
	r = atomic_fd_lock(af->fd);
	/* without byte-range locks a stale temporary just stays */
	if (r == -ENOLCK || r == -EOPNOTSUPP || r == -EINVAL)
		r = 0;
	if (r < 0) {
		close(af->fd);
		unlink(af->tmp);
		af->fd = -1;
		goto fail;
	}
	free(prefix);
	return 0;
fail:
	log_err("%s: %s: cannot create: %s", mod, path, strerror(-r));
	free(prefix);
	free(af->tmp);
	free(af->path);
	af->tmp = af->path = NULL;
	return r;
}

static void atomic_file_free(struct atomic_file *af)
{
	free(af->tmp);
	free(af->path);
	af->tmp = af->path = NULL;
	af->fd = -1;
}

void atomic_file_abort(struct atomic_file *af)
{
	if (af->tmp) {
		unlink(af->tmp);	/* before close: still ours */
		close(af->fd);
	}
	atomic_file_free(af);
}

static int atomic_rename(const char *from, const char *to)
{
	if (renameat2(AT_FDCWD, from, AT_FDCWD, to, RENAME_NOREPLACE) == 0)
		return 0;
	if (errno != EINVAL && errno != ENOSYS)
		return -errno;
	/* no RENAME_NOREPLACE here: link() never replaces either */
	if (link(from, to) < 0)
		return -errno;
	unlink(from);
	return 0;
}

int atomic_file_commit(struct atomic_file *af, const char *mod)
{
	const char *fault = getenv("LAYERFS_FAULT");
	int r = 0;

	if (fdatasync(af->fd) < 0)
		r = -errno;
	if (r == 0 && fault && !strcmp(fault, "create-before-rename"))
		kill(getpid(), SIGKILL);
	if (r == 0)
		r = atomic_rename(af->tmp, af->path);
	if (r < 0) {
		log_err("%s: %s: cannot write the new file: %s", mod,
			af->path, strerror(-r));
		atomic_file_abort(af);
		return r;
	}
	if (close(af->fd) < 0)
		r = -errno;	/* the data is synced: only report */
	if (r == 0)
		r = fsync_parent_dir(af->path);
	if (r < 0)
		log_err("%s: %s: cannot write the new file: %s", mod,
			af->path, strerror(-r));
	atomic_file_free(af);
	return r;
}

/* Is name ".X.layerfs-tmp-R" with a non-empty X and R? */
static int atomic_name_is_tmp(const char *name)
{
	const char *t = strstr(name, ATOMIC_FILE_TAG);

	return name[0] == '.' && t && t > name + 1 &&
	       t[strlen(ATOMIC_FILE_TAG)] != '\0';
}

int atomic_dir_clean(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *de;
	int n = 0;

	if (!d)
		return -errno;
	while ((de = readdir(d))) {
		struct stat st;
		int fd;

		if (!atomic_name_is_tmp(de->d_name))
			continue;
		fd = openat(dirfd(d), de->d_name,
			    O_RDWR | O_NOFOLLOW | O_NONBLOCK | O_CLOEXEC);
		if (fd < 0)
			continue;
		if (fstat(fd, &st) < 0 || !S_ISREG(st.st_mode)) {
			close(fd);
			continue;
		}
		/* the lock is free: its creator died before the rename */
		if (atomic_fd_lock(fd) == 0 &&
		    unlinkat(dirfd(d), de->d_name, 0) == 0) {
			log_info("%s/%s: removed an unfinished new file",
				 dir, de->d_name);
			n++;
		}
		close(fd);
	}
	closedir(d);
	return n;
}

int atomic_dir_clean_for(const char *path)
{
	char *d = strdup(path);
	int r;

	if (!d)
		return -ENOMEM;
	r = atomic_dir_clean(dirname(d));
	free(d);
	return r;
}
