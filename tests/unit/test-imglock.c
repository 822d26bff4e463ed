// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * test-imglock.c: qemu's permission lock bytes.  Two open file
 * descriptions in one process conflict exactly as two processes do (OFD
 * locks), so most cases need no second process; one case forks to check
 * that the holder is named.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "chain.h"
#include "fixtures.h"
#include "img.h"
#include "imglock.h"
#include "log.h"
#include "registry.h"

#define SHARED IMGLOCK_SHARED_DEFAULT
#define PERM_READ IMGLOCK_PERM_CONSISTENT_READ
#define PERM_WRITE (IMGLOCK_PERM_CONSISTENT_READ | IMGLOCK_PERM_WRITE | \
		    IMGLOCK_PERM_RESIZE)

static char *lock_file(const char *name)
{
	static const uint8_t zeros[4096];

	return fx_write_file(name, zeros, sizeof(zeros));
}

static int open_rw(const char *path)
{
	int fd = open(path, O_RDWR | O_CLOEXEC);

	ck_assert_int_ge(fd, 0);
	return fd;
}

/* 1 if some other open file description holds byte off */
static int held(int fd, unsigned off)
{
	struct flock fl = { .l_type = F_WRLCK, .l_whence = SEEK_SET,
			    .l_start = off, .l_len = 1 };

	ck_assert_int_eq(fcntl(fd, F_OFD_GETLK, &fl), 0);
	return fl.l_type != F_UNLCK;
}

/* Which of the bytes 100..103 and 200..203 another description holds */
static unsigned held_mask(int fd)
{
	unsigned m = 0;

	for (unsigned i = 0; i < IMGLOCK_NPERMS; i++) {
		m |= (unsigned)held(fd, IMGLOCK_PERM_BASE + i) << i;
		m |= (unsigned)held(fd, IMGLOCK_SHARED_BASE + i) << (i + 4);
	}
	return m;
}

/* The bytes `strace -e fcntl qemu-io` shows for a writable top and a
 * backing file: 100, 101, 103 + 201, 203; and 100 + 201, 203. */
START_TEST(bytes_match_qemu)
{
	char *p = lock_file("a.img");
	int a = open_rw(p), b = open_rw(p);

	ck_assert_uint_eq(imglock_mode_perm(IMGLOCK_WRITE, true), PERM_WRITE);
	ck_assert_uint_eq(imglock_mode_perm(IMGLOCK_READ, true), PERM_READ);
	ck_assert_uint_eq(imglock_mode_perm(IMGLOCK_WRITE, false),
			  PERM_READ | IMGLOCK_PERM_WRITE);
	ck_assert_int_eq(imglock_fd_take(a, p, PERM_WRITE, SHARED), 0);
	ck_assert_uint_eq(held_mask(b), 0x1 | 0x2 | 0x8 | 0x20 | 0x80);
	/* taking another mode changes the bytes in place: a downgrade */
	ck_assert_int_eq(imglock_fd_take(a, p, PERM_READ, SHARED), 0);
	ck_assert_uint_eq(held_mask(b), 0x1 | 0x20 | 0x80);
	imglock_fd_release(a);
	ck_assert_uint_eq(held_mask(b), 0);
	close(a);
	close(b);
	free(p);
}
END_TEST

START_TEST(writer_refuses_others)
{
	char *p = lock_file("w.img");
	char why[IMGLOCK_WHY_MAX];
	int a = open_rw(p), b = open_rw(p), c = open_rw(p);

	ck_assert_int_eq(imglock_fd_take(a, p, PERM_WRITE, SHARED), 0);
	/* a reader that denies writers, a second writer: both refused */
	ck_assert_int_eq(imglock_fd_test(b, PERM_READ, SHARED, why,
					 sizeof(why)), -EBUSY);
	ck_assert_str_eq(why, "is locked for writing by another process "
			      "(this process)");
	ck_assert_int_eq(imglock_fd_take(b, p, PERM_READ, SHARED), -EBUSY);
	ck_assert_int_eq(imglock_fd_take(c, p, PERM_WRITE, SHARED), -EBUSY);
	/* a refused take leaves nothing behind */
	close(a);
	ck_assert_uint_eq(held_mask(c), 0);
	ck_assert_uint_eq(held_mask(b), 0);
	/* qemu-img -U: wants nothing, shares everything */
	a = open_rw(p);
	ck_assert_int_eq(imglock_fd_take(a, p, PERM_WRITE, SHARED), 0);
	ck_assert_int_eq(imglock_fd_test(b, 0, IMGLOCK_PERM_ALL, why,
					 sizeof(why)), 0);
	close(a);
	close(b);
	close(c);
	free(p);
}
END_TEST

START_TEST(readers_share_and_refuse_writers)
{
	char *p = lock_file("r.img");
	char why[IMGLOCK_WHY_MAX];
	int a = open_rw(p), b = open_rw(p), c = open_rw(p);

	ck_assert_int_eq(imglock_fd_take(a, p, PERM_READ, SHARED), 0);
	ck_assert_int_eq(imglock_fd_take(b, p, PERM_READ, SHARED), 0);
	ck_assert_int_eq(imglock_fd_test(c, PERM_WRITE, SHARED, why,
					 sizeof(why)), -EBUSY);
	ck_assert_str_eq(why, "is locked against writing by another process "
			      "(this process)");
	ck_assert_int_eq(imglock_fd_take(c, p, PERM_WRITE, SHARED), -EBUSY);
	close(a);
	ck_assert_int_eq(imglock_fd_take(c, p, PERM_WRITE, SHARED), -EBUSY);
	close(b);
	ck_assert_int_eq(imglock_fd_take(c, p, PERM_WRITE, SHARED), 0);
	close(c);
	free(p);
}
END_TEST

/* Another process holds the write lock: it is named. */
START_TEST(holder_is_named)
{
	char *p = lock_file("h.img");
	char why[IMGLOCK_WHY_MAX], want[IMGLOCK_WHY_MAX];
	int fds[2], a;
	pid_t pid;
	char c;

	ck_assert_int_eq(pipe(fds), 0);
	pid = fork();
	ck_assert_int_ge(pid, 0);
	if (pid == 0) {
		int fd = open(p, O_RDWR);

		if (fd < 0 || imglock_fd_take(fd, p, PERM_WRITE, SHARED) < 0)
			_exit(1);
		if (write(fds[1], "x", 1) != 1)
			_exit(1);
		pause();
		_exit(0);
	}
	ck_assert_int_eq(read(fds[0], &c, 1), 1);
	a = open_rw(p);
	ck_assert_int_eq(imglock_fd_test(a, PERM_READ, SHARED, why,
					 sizeof(why)), -EBUSY);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	snprintf(want, sizeof(want), ", pid %d)", (int)pid);
	ck_assert_msg(strstr(why, "is locked for writing by another process (")
		      && strstr(why, want), "%s", why);
	/* its locks died with it */
	ck_assert_int_eq(imglock_fd_take(a, p, PERM_WRITE, SHARED), 0);
	close(a);
	close(fds[0]);
	close(fds[1]);
	free(p);
}
END_TEST

/* img_open(writable) holds the write lock before the driver runs. */
START_TEST(img_open_writable_locks)
{
	char *p = lock_file("o.img");
	struct img *w, *w2, *ro;
	int b;

	ck_assert_int_eq(img_open(p, &raw_rw_driver, true, &w), 0);
	b = open_rw(p);
	/* raw keeps its length: write without resize */
	ck_assert_uint_eq(held_mask(b), 0x1 | 0x2 | 0x20 | 0x80);
	ck_assert_int_eq(img_open(p, &raw_rw_driver, true, &w2), -EBUSY);
	/* a read-only open takes nothing itself: the caller locks */
	ck_assert_int_eq(img_open(p, NULL, false, &ro), 0);
	ck_assert_int_eq(imglock_img_take(ro, IMGLOCK_READ), -EBUSY);
	img_unref(ro);
	img_unref(w);
	ck_assert_uint_eq(held_mask(b), 0);
	close(b);
	free(p);
}
END_TEST

/* The daemon's pass: a chain whose layer another writer holds is left
 * out, the others keep read locks. */
START_TEST(chainset_leaves_out_locked)
{
	struct chain_opts o = { 0 };
	struct chainset *cs;
	char *a = lock_file("cs-a.img"), *b = lock_file("cs-b.img");
	int fd = open_rw(b), fa;

	ck_assert_int_eq(imglock_fd_take(fd, b, PERM_WRITE, SHARED), 0);
	ck_assert_int_eq(chainset_scan(fx_tmpdir(), &o, &cs), 0);
	ck_assert_uint_ge(cs->nchains, 2);
	{
		unsigned before = cs->nfailed;
		size_t n = cs->nchains;

		ck_assert_int_eq(imglock_chainset_take(cs), 0);
		ck_assert_uint_eq(cs->nfailed, before + 1);
		ck_assert_uint_eq(cs->nchains, n - 1);
	}
	for (size_t i = 0; i < cs->nchains; i++)
		ck_assert_str_ne(cs->chains[i]->name, "cs-b");
	fa = open_rw(a);
	ck_assert_uint_eq(held_mask(fa), 0x1 | 0x20 | 0x80);
	chainset_free(cs);
	ck_assert_uint_eq(held_mask(fa), 0);
	close(fa);
	close(fd);
	free(a);
	free(b);
}
END_TEST

Suite *unit_suite(void)
{
	Suite *s = suite_create("imglock");
	TCase *tc = tcase_create("imglock");

	tcase_add_test(tc, bytes_match_qemu);
	tcase_add_test(tc, writer_refuses_others);
	tcase_add_test(tc, readers_share_and_refuse_writers);
	tcase_add_test(tc, holder_is_named);
	tcase_add_test(tc, img_open_writable_locks);
	tcase_add_test(tc, chainset_leaves_out_locked);
	suite_add_tcase(s, tc);
	return s;
}
