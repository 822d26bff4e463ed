// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * imglock.c: qemu's permission lock bytes on one file descriptor (see
 * imglock.h), and naming the process that holds a conflicting byte.
 */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "compiler.h"
#include "imglock.h"
#include "log.h"

/* One byte, F_RDLCK or F_UNLCK, owned by fd's open file description. */
static int byte_set(int fd, unsigned off, short type)
{
	struct flock fl = {
		.l_type = type,
		.l_whence = SEEK_SET,
		.l_start = off,
		.l_len = 1,
	};

	return fcntl(fd, F_OFD_SETLK, &fl) < 0 ? -errno : 0;
}

/* 1 if another open file description holds a lock on byte off, 0 if not */
static int byte_held(int fd, unsigned off)
{
	struct flock fl = {
		.l_type = F_WRLCK,	/* conflicts with any lock */
		.l_whence = SEEK_SET,
		.l_start = off,
		.l_len = 1,
	};

	if (fcntl(fd, F_OFD_GETLK, &fl) < 0)
		return -errno;
	return fl.l_type != F_UNLCK;
}

void imglock_fd_release(int fd)
{
	for (unsigned i = 0; i < IMGLOCK_NPERMS; i++) {
		byte_set(fd, IMGLOCK_PERM_BASE + i, F_UNLCK);
		byte_set(fd, IMGLOCK_SHARED_BASE + i, F_UNLCK);
	}
}

unsigned imglock_mode_perm(enum imglock_mode mode, bool grow)
{
	unsigned perm = IMGLOCK_PERM_CONSISTENT_READ;

	if (mode == IMGLOCK_WRITE) {
		perm |= IMGLOCK_PERM_WRITE;
		if (grow)
			perm |= IMGLOCK_PERM_RESIZE;
	}
	return perm;
}

/* Does one "lock:" line of an fdinfo file cover byte off? */
static bool fdinfo_line_covers(const char *line, unsigned off)
{
	unsigned long long start;
	char end[24];
	const char *p;

	if (strncmp(line, "lock:", 5) != 0 || strstr(line, "->"))
		return false;	/* not a lock, or a waiter */
	if (!strstr(line, "OFDLCK") && !strstr(line, "POSIX"))
		return false;	/* flock() and leases lock no bytes */
	/* "lock:\t1: OFDLCK ADVISORY  READ -1 fe:00:1234 100 101" */
	p = strrchr(line, ':');	/* the one inside MAJ:MIN:INO */
	if (!p || !(p = strchr(p, ' ')))
		return false;
	if (sscanf(p, " %llu %23s", &start, end) != 2)
		return false;
	if (off < start)
		return false;
	return !strcmp(end, "EOF") || off <= strtoull(end, NULL, 10);
}

/* Does /proc/PID/fdinfo/FD list a lock that covers byte off? */
static bool fdinfo_covers(long pid, long fd, unsigned off)
{
	char path[64], line[256];
	bool found = false;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%ld/fdinfo/%ld", pid, fd);
	f = fopen(path, "re");
	if (!f)
		return false;
	while (!found && fgets(line, sizeof(line), f))
		found = fdinfo_line_covers(line, off);
	fclose(f);
	return found;
}

/* Does process pid have a descriptor other than skip_fd of the file st
 * that holds byte off? */
static bool pid_holds(long pid, const struct stat *st, int skip_fd,
		      bool self, unsigned off)
{
	char path[64];
	struct dirent *de;
	bool found = false;
	DIR *d;

	snprintf(path, sizeof(path), "/proc/%ld/fd", pid);
	d = opendir(path);
	if (!d)
		return false;
	while (!found && (de = readdir(d))) {
		char fdpath[96];
		struct stat fst;
		long fd;

		if (!isdigit((unsigned char)de->d_name[0]))
			continue;
		fd = strtol(de->d_name, NULL, 10);
		if (self && fd == skip_fd)
			continue;
		snprintf(fdpath, sizeof(fdpath), "%s/%ld", path, fd);
		if (stat(fdpath, &fst) < 0 || fst.st_dev != st->st_dev ||
		    fst.st_ino != st->st_ino)
			continue;
		found = fdinfo_covers(pid, fd, off);
	}
	closedir(d);
	return found;
}

/*
 * A process's program name: the base name of its argv[0] (comm is cut at
 * 15 bytes: "qemu-storage-da"), else comm, else "?".
 */
static void pid_name(long pid, char *name, size_t len)
{
	char path[64], buf[256];
	const char *slash;
	size_t n = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%ld/cmdline", pid);
	f = fopen(path, "re");
	if (f) {
		n = fread(buf, 1, sizeof(buf) - 1, f);
		fclose(f);
	}
	buf[n] = '\0';		/* argv[0] ends at its own NUL */
	if (!buf[0]) {
		snprintf(path, sizeof(path), "/proc/%ld/comm", pid);
		f = fopen(path, "re");
		if (f) {
			if (!fgets(buf, sizeof(buf), f))
				buf[0] = '\0';
			fclose(f);
		}
		buf[strcspn(buf, "\n")] = '\0';
	}
	slash = strrchr(buf, '/');
	snprintf(name, len, "%.*s", 63, buf[0] ? (slash ? slash + 1 : buf) : "?");
}

/*
 * " (NAME, pid N)" for the first process found holding byte off of fd's
 * file, " (this process)" for ourselves, or "" when none can be seen
 * (another user's process, another PID namespace).  OFD locks carry no
 * pid, so the holder is found through /proc/PID/fdinfo.
 */
static void holder_describe(int fd, unsigned off, char *buf, size_t len)
{
	struct dirent *de;
	struct stat st;
	DIR *d;

	buf[0] = '\0';
	if (fstat(fd, &st) < 0)
		return;
	d = opendir("/proc");
	if (!d)
		return;
	while ((de = readdir(d))) {
		char name[64];
		bool is_self;
		long pid;

		if (!isdigit((unsigned char)de->d_name[0]))
			continue;
		pid = strtol(de->d_name, NULL, 10);
		is_self = pid == (long)getpid();
		if (!pid_holds(pid, &st, fd, is_self, off))
			continue;
		if (is_self) {
			snprintf(buf, len, " (this process)");
			break;
		}
		pid_name(pid, name, sizeof(name));
		snprintf(buf, len, " (%s, pid %ld)", name, pid);
		break;
	}
	closedir(d);
}

static const char *perm_doing(unsigned i)
{
	static const char *const doing[IMGLOCK_NPERMS] = {
		"reading", "writing", "writing", "resizing",
	};

	return i < IMGLOCK_NPERMS ? doing[i] : "using";
}

int imglock_fd_test(int fd, unsigned perm, unsigned shared, char *why,
		    size_t len)
{
	char who[96];
	int r;

	/* Someone holds a permission we refuse to share? */
	for (unsigned i = 0; i < IMGLOCK_NPERMS; i++) {
		if (shared & (1u << i))
			continue;
		r = byte_held(fd, IMGLOCK_PERM_BASE + i);
		if (r < 0)
			return r;
		if (r) {
			holder_describe(fd, IMGLOCK_PERM_BASE + i, who,
					sizeof(who));
			snprintf(why, len, "is locked for %s by another "
				 "process%s", perm_doing(i), who);
			return -EBUSY;
		}
	}
	/* Someone refuses to share a permission we want? */
	for (unsigned i = 0; i < IMGLOCK_NPERMS; i++) {
		if (!(perm & (1u << i)))
			continue;
		r = byte_held(fd, IMGLOCK_SHARED_BASE + i);
		if (r < 0)
			return r;
		if (r) {
			holder_describe(fd, IMGLOCK_SHARED_BASE + i, who,
					sizeof(who));
			snprintf(why, len, "is locked against %s by another "
				 "process%s", perm_doing(i), who);
			return -EBUSY;
		}
	}
	return 0;
}

int imglock_fd_take(int fd, const char *path, unsigned perm,
		    unsigned shared)
{
	char why[IMGLOCK_WHY_MAX];
	int r = 0;

	/*
	 * Lock first, then check (as qemu does): of two takers racing, each
	 * then sees the other, so at worst both fail, never both succeed.
	 */
	for (unsigned i = 0; i < IMGLOCK_NPERMS && r == 0; i++) {
		r = byte_set(fd, IMGLOCK_PERM_BASE + i,
			     perm & (1u << i) ? F_RDLCK : F_UNLCK);
		if (r == 0)
			r = byte_set(fd, IMGLOCK_SHARED_BASE + i,
				     shared & (1u << i) ? F_UNLCK : F_RDLCK);
	}
	if (r == 0) {
		r = imglock_fd_test(fd, perm, shared, why, sizeof(why));
		if (r == -EBUSY)
			log_err("%s: %s", path, why);
	}
	if (r < 0)
		imglock_fd_release(fd);
	if (r == -ENOLCK || r == -EOPNOTSUPP || r == -ENOSYS || r == -EINVAL) {
		/* a file system without byte-range locks (NFS without lockd,
		 * some FUSE file systems): go on unlocked, warned */
		log_warn("%s: cannot lock (%s); used without image locks",
			 path, strerror(-r));
		return 0;
	}
	if (r < 0 && r != -EBUSY)
		log_err("%s: cannot lock: %s", path, strerror(-r));
	return r;
}
