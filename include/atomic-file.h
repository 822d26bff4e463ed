/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * atomic-file.h: new files that appear whole under their name, or not at
 * all.
 *
 * A new file is written under a hidden temporary name in the directory of
 * its final name, ".NAME.layerfs-tmp-XXXXXX", whose creator holds a
 * whole-file OFD write lock on it while it lives.  Commit fdatasyncs it,
 * moves it to NAME with renameat2(RENAME_NOREPLACE) (an existing NAME is
 * never replaced: -EEXIST) and fsyncs the directory.  A crash before the
 * rename leaves only the temporary; its lock died with its creator, so
 * atomic_dir_clean() can tell it from one being written.  The scan ignores
 * dot files, so a temporary is never taken for an image.
 *
 * LAYERFS_FAULT=create-before-rename makes the process SIGKILL itself in
 * commit, after the sync and before the rename (for tests).
 */
#ifndef LAYERFS_ATOMIC_FILE_H
#define LAYERFS_ATOMIC_FILE_H

#define ATOMIC_FILE_TAG ".layerfs-tmp-"

struct atomic_file {
	int fd;			/* the temporary, O_RDWR, locked */
	char *path;		/* final path */
	char *tmp;		/* temporary path */
};

/*
 * Create the temporary for path (which must not exist: -EEXIST), mode
 * 0644, O_RDWR|O_CLOEXEC, locked.  Fills *af; the caller writes through
 * af->fd.  0 or -errno, logged as "MOD: PATH: cannot create: ...".
 */
int atomic_file_begin(const char *path, struct atomic_file *af,
		      const char *mod);
/*
 * fdatasync, rename into place without replacing, fsync the directory,
 * close.  On failure the temporary is removed.  0 or -errno, logged as
 * "MOD: PATH: cannot write the new file: ...".  *af is freed either way.
 */
int atomic_file_commit(struct atomic_file *af, const char *mod);
/* Close and remove the temporary; *af is freed. */
void atomic_file_abort(struct atomic_file *af);
/*
 * Remove the temporaries in dir whose creator is gone (their lock can be
 * taken); one still locked is left alone.  Logs each removal.  The number
 * removed, or -errno when dir cannot be read.
 */
int atomic_dir_clean(const char *dir);
/* atomic_dir_clean() of the directory that holds path */
int atomic_dir_clean_for(const char *path);

#endif
