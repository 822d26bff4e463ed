// SPDX-License-Identifier: LGPL-2.1-or-later
/* fixtures.c: temporary files and test data for the unit tests. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "fixtures.h"

static char tmpdir[256];

static void fx_cleanup(void)
{
	char cmd[300];

	if (tmpdir[0] && !getenv("FX_KEEP")) {
		snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
		if (system(cmd) != 0)
			fprintf(stderr, "could not remove %s\n", tmpdir);
	}
}

const char *fx_tmpdir(void)
{
	static pid_t owner;

	/* Check forks each test: a child makes its own directory. */
	if (!tmpdir[0] || owner != getpid()) {
		const char *base = getenv("TMPDIR");

		snprintf(tmpdir, sizeof(tmpdir), "%s/layerfs-unit-XXXXXX",
			 base ? base : "/tmp");
		ck_assert_ptr_nonnull(mkdtemp(tmpdir));
		owner = getpid();
		atexit(fx_cleanup);
	}
	return tmpdir;
}

char *fx_path(const char *name)
{
	char *p;

	ck_assert_int_ge(asprintf(&p, "%s/%s", fx_tmpdir(), name), 0);
	return p;
}

char *fx_write_file(const char *name, const void *data, size_t len)
{
	char *p = fx_path(name);
	int fd = open(p, O_WRONLY | O_CREAT | O_TRUNC, 0644);

	ck_assert_int_ge(fd, 0);
	if (len)
		ck_assert_int_eq(write(fd, data, len), (ssize_t)len);
	close(fd);
	return p;
}

void fx_pwrite(const char *path, const void *data, size_t len, uint64_t off)
{
	int fd = open(path, O_WRONLY | O_CREAT, 0644);

	ck_assert_int_ge(fd, 0);
	ck_assert_int_eq(pwrite(fd, data, len, (off_t)off), (ssize_t)len);
	close(fd);
}

uint8_t *fx_read_file(const char *path, size_t *len)
{
	struct stat st;
	uint8_t *buf;
	int fd = open(path, O_RDONLY);

	if (fd < 0)
		return NULL;
	ck_assert_int_eq(fstat(fd, &st), 0);
	buf = malloc((size_t)st.st_size + 1);
	ck_assert_ptr_nonnull(buf);
	ck_assert_int_eq(pread(fd, buf, (size_t)st.st_size, 0), st.st_size);
	close(fd);
	*len = (size_t)st.st_size;
	return buf;
}

char *fx_vector(const char *rel)
{
	char *p;
	const char *env = getenv("LAYERFS_VECTORS");

	if (env)
		ck_assert_int_ge(asprintf(&p, "%s/%s", env, rel), 0);
	else
		ck_assert_int_ge(asprintf(&p, "%s/../shared/vectors/%s",
					  SOURCE_DIR, rel), 0);
	if (access(p, R_OK) != 0) {
		free(p);
		return NULL;
	}
	return p;
}

void fx_fill_random(void *buf, size_t len, uint32_t seed)
{
	uint8_t *p = buf;
	uint32_t x = seed ? seed : 1;

	for (size_t i = 0; i < len; i++) {
		x ^= x << 13;	/* xorshift32 */
		x ^= x >> 17;
		x ^= x << 5;
		p[i] = (uint8_t)(x >> 24);
	}
}

int fx_system(const char *fmt, ...)
{
	char *cmd;
	va_list ap;
	int r;

	va_start(ap, fmt);
	r = vasprintf(&cmd, fmt, ap);
	va_end(ap);
	ck_assert_int_ge(r, 0);
	r = system(cmd);
	free(cmd);
	if (r == -1 || !WIFEXITED(r))
		return -1;
	return WEXITSTATUS(r);
}
