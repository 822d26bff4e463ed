// SPDX-License-Identifier: LGPL-2.1-or-later
/*
 * main.c: the layerfs daemon: options, scan, mount, serve, unmount.
 *
 *   layerfs [options] IMAGEDIR MOUNTPOINT
 *
 * The directory is scanned before anything is mounted, so a bad IMAGEDIR
 * fails on the terminal, and images that fail to open are reported there
 * (and kept in the mount's own log, /.layerfs.log) while the rest mounts.
 * mount(8) runs us as "layerfs IMAGEDIR MNT -o rw|ro,..." through
 * mount.fuse3, with "rw" whenever the fstab entry does not say "ro", as
 * for any filesystem.  Run by hand, layerfs is read-only unless -o rw.
 */
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "fs.h"
#include "imglock.h"
#include "log.h"

#define MAX_DEPTH_LIMIT 4096
#define IDLE_THREADS_DEFAULT 16
#define MAX_THREADS_DEFAULT 64

struct cli_opts {
	char *imagedir;		/* owned */
	char *mountpoint;	/* owned: as given, then canonical */
	int help, version, foreground, debug, single;
	int strict_layers, allow_outside, ignore_parent_id;
	unsigned max_depth;
	unsigned max_threads, max_idle_threads;
	int rw, has_fsname, has_subtype, has_default_permissions;
	char *newlayer;		/* owned: CHAIN[:FILE] */
	char *newformat;	/* owned: vhd, vhdx, qcow2 */
	char *rw_base;		/* owned: NAME[:NAME...] */
	int bad_arg;		/* a third non-option argument was given */
};

enum {
	KEY_HELP,
	KEY_VERSION,
	KEY_FOREGROUND,
	KEY_DEBUG,
	KEY_SINGLE,
	KEY_RO,
	KEY_RW,
	KEY_FSNAME,
	KEY_SUBTYPE,
	KEY_DEFAULT_PERMISSIONS,
};

#define CLI_OPT(t, field, v) { t, offsetof(struct cli_opts, field), v }

/* Every key here is documented in man/layerfs.1 (t-manpage-options.sh). */
static const struct fuse_opt cli_spec[] = {
	CLI_OPT("strict_layers", strict_layers, 1),
	CLI_OPT("allow_outside", allow_outside, 1),
	CLI_OPT("ignore_parent_id", ignore_parent_id, 1),
	CLI_OPT("newlayer=%s", newlayer, 0),
	CLI_OPT("newformat=%s", newformat, 0),
	CLI_OPT("rw_base=%s", rw_base, 0),
	CLI_OPT("max_depth=%u", max_depth, 0),
	CLI_OPT("max_threads=%u", max_threads, 0),
	CLI_OPT("max_idle_threads=%u", max_idle_threads, 0),
	FUSE_OPT_KEY("ro", KEY_RO),
	FUSE_OPT_KEY("rw", KEY_RW),
	FUSE_OPT_KEY("fsname=", KEY_FSNAME),
	FUSE_OPT_KEY("subtype=", KEY_SUBTYPE),
	FUSE_OPT_KEY("default_permissions", KEY_DEFAULT_PERMISSIONS),
	FUSE_OPT_KEY("debug", KEY_DEBUG),
	FUSE_OPT_KEY("-d", KEY_DEBUG),
	FUSE_OPT_KEY("-f", KEY_FOREGROUND),
	FUSE_OPT_KEY("-s", KEY_SINGLE),
	FUSE_OPT_KEY("-h", KEY_HELP),
	FUSE_OPT_KEY("--help", KEY_HELP),
	FUSE_OPT_KEY("-V", KEY_VERSION),
	FUSE_OPT_KEY("--version", KEY_VERSION),
	FUSE_OPT_END
};

static void usage(const char *prog)
{
	printf("usage: %s [options] IMAGEDIR MOUNTPOINT\n"
	       "\n"
	       "Mount every disk image chain found in IMAGEDIR as\n"
	       "MOUNTPOINT/NAME/disk (read-only), with its partitions as\n"
	       "MOUNTPOINT/NAME/p1, p2, ... and a description in NAME/info.\n"
	       "\n"
	       "General options:\n"
	       "    -h, --help             print this help and exit\n"
	       "    -V, --version          print version information and exit\n"
	       "    -f                     stay in the foreground\n"
	       "    -d, -o debug           foreground, FUSE request tracing and\n"
	       "                           LAYERFS_DEBUG=all\n"
	       "    -s                     single-threaded\n"
	       "    -o OPT[,OPT...]        mount options\n"
	       "\n"
	       "layerfs options:\n"
	       "    -o ro                  read-only (the default)\n"
	       "    -o rw                  writable: writes go into each chain's top\n"
	       "                           image when no other image depends on it\n"
	       "                           (never into a base image: see rw_base)\n"
	       "    -o rw_base=NAME[:NAME...]  with rw: these standalone images are\n"
	       "                           written in place\n"
	       "    -o newlayer=CHAIN[:FILE]  create a new top layer over CHAIN (next\n"
	       "                           free layer name unless FILE); implies rw\n"
	       "    -o newformat=FMT       format of the new layer: vhd, vhdx, qcow2\n"
	       "                           (default: follows the chain)\n"
	       "    -o strict_layers       layer naming rule violations are errors\n"
	       "    -o allow_outside       parents and links of IMAGEDIR may lead\n"
	       "                           outside it\n"
	       "    -o ignore_parent_id    mount despite parent identity mismatches\n"
	       "    -o max_depth=N         longest chain accepted (default %u)\n"
	       "    -o max_threads=N       most worker threads (default %u)\n"
	       "    -o max_idle_threads=N  idle worker threads kept (default %u)\n"
	       "    -o fsname=NAME         mount source (default: IMAGEDIR)\n"
	       "    -o subtype=NAME        type shown as fuse.NAME (default: layerfs)\n"
	       "\n"
	       "FUSE options:\n",
	       prog, CHAIN_MAX_DEPTH_DEFAULT, MAX_THREADS_DEFAULT,
	       IDLE_THREADS_DEFAULT);
	fflush(stdout);
	fuse_lowlevel_help();
}

static int cli_proc(void *data, const char *arg, int key,
		    struct fuse_args *outargs __unused)
{
	struct cli_opts *o = data;

	switch (key) {
	case FUSE_OPT_KEY_NONOPT:
		if (!o->imagedir) {
			o->imagedir = strdup(arg);
			return o->imagedir ? 0 : -1;
		}
		if (!o->mountpoint) {
			o->mountpoint = strdup(arg);
			return o->mountpoint ? 0 : -1;
		}
		fprintf(stderr,
			"layerfs: unexpected argument '%s' (try 'layerfs --help')\n",
			arg);
		o->bad_arg = 1;
		return -1;
	case KEY_HELP:
		o->help = 1;
		return 0;
	case KEY_VERSION:
		o->version = 1;
		return 0;
	case KEY_FOREGROUND:
		o->foreground = 1;
		return 0;
	case KEY_SINGLE:
		o->single = 1;
		return 0;
	case KEY_DEBUG:		/* kept: libfuse traces requests */
		o->debug = 1;
		o->foreground = 1;
		return 1;
	case KEY_RO:		/* added back below, always */
		o->rw = 0;
		return 0;
	case KEY_RW:
		o->rw = 1;
		return 0;
	case KEY_FSNAME:
		o->has_fsname = 1;
		return 1;
	case KEY_SUBTYPE:
		o->has_subtype = 1;
		return 1;
	case KEY_DEFAULT_PERMISSIONS:
		o->has_default_permissions = 1;
		return 1;
	}
	return 1;		/* anything else is libfuse's to judge */
}

/*
 * libfuse's messages go through log.h like ours (and into the journal).
 * libfuse sometimes writes one line in several calls ("unknown option(s):
 * `", "-o ", "bogus'", "\n"), so text is gathered per thread up to '\n'.
 */
static __thread char fuse_line[1024];
static __thread size_t fuse_line_len;
static __thread enum fuse_log_level fuse_line_level;

static void fuse_log_to_log(enum fuse_log_level level, const char *fmt,
			    va_list ap)
{
	char msg[1024], *p, *nl;
	enum log_level lvl;

	if (level >= FUSE_LOG_DEBUG && !(log_debug_mask & LOG_CLS_FUSE))
		return;
	vsnprintf(msg, sizeof(msg), fmt, ap);
	if (!fuse_line_len)
		fuse_line_level = level;
	for (p = msg; *p; p = nl + 1) {
		size_t n, room = sizeof(fuse_line) - 1 - fuse_line_len;

		nl = strchr(p, '\n');
		n = nl ? (size_t)(nl - p) : strlen(p);
		memcpy(fuse_line + fuse_line_len, p, MIN(n, room));
		fuse_line_len += MIN(n, room);
		fuse_line[fuse_line_len] = '\0';
		if (!nl)
			return;	/* the rest of the line comes later */
		if (fuse_line_level <= FUSE_LOG_ERR)
			lvl = LOG_LVL_ERR;
		else if (fuse_line_level == FUSE_LOG_WARNING)
			lvl = LOG_LVL_WARN;
		else if (fuse_line_level < FUSE_LOG_DEBUG)
			lvl = LOG_LVL_INFO;
		else
			lvl = LOG_LVL_DEBUG;
		if (fuse_line_len)
			log_msg(lvl, "%s", fuse_line);
		fuse_line_len = 0;
		fuse_line_level = level;	/* the next line is this call's */
	}
}

/*
 * Mount options of our own making: ro unless rw, fsname and subtype, and
 * default_permissions always: the kernel checks the modes shown, which
 * follow the image files (perm.c), and every open is checked again by
 * perm.c with the caller's credentials.  Without it, allow_other would
 * let a user past the modes until open.
 */
static int add_mount_opts(struct fuse_args *args, const struct cli_opts *o)
{
	char *opts = NULL, *fsname = NULL;
	int r = -1;

	if (!o->rw && fuse_opt_add_opt(&opts, "ro") < 0)
		goto out;
	if (!o->has_default_permissions &&
	    fuse_opt_add_opt(&opts, "default_permissions") < 0)
		goto out;
	if (!o->has_subtype && fuse_opt_add_opt(&opts, "subtype=layerfs") < 0)
		goto out;
	if (!o->has_fsname) {
		if (asprintf(&fsname, "fsname=%s", o->imagedir) < 0) {
			fsname = NULL;
			goto out;
		}
		if (fuse_opt_add_opt_escaped(&opts, fsname) < 0)
			goto out;
	}
	if (fuse_opt_add_arg(args, "-o") < 0 || fuse_opt_add_arg(args, opts) < 0)
		goto out;
	r = 0;
out:
	free(fsname);
	free(opts);
	return r;
}

static int serve(struct fuse_session *se, const struct cli_opts *o)
{
	struct fuse_loop_config *cfg;
	int r;

	if (o->single)
		return fuse_session_loop(se);
	cfg = fuse_loop_cfg_create();
	if (!cfg)
		return -ENOMEM;
	fuse_loop_cfg_set_clone_fd(cfg, 1);
	fuse_loop_cfg_set_max_threads(cfg, o->max_threads);
	fuse_loop_cfg_set_idle_threads(cfg, MIN(o->max_idle_threads,
						o->max_threads));
	r = fuse_session_loop_mt(se, cfg);
	fuse_loop_cfg_destroy(cfg);
	return r;
}

int main(int argc, char *argv[])
{
	struct fuse_args args = FUSE_ARGS_INIT(argc, argv);
	struct cli_opts o = {
		.max_depth = CHAIN_MAX_DEPTH_DEFAULT,
		.max_threads = MAX_THREADS_DEFAULT,
		.max_idle_threads = IDLE_THREADS_DEFAULT,
	};
	struct chain_opts copts;
	struct chainset *cs = NULL;
	struct fuse_session *se;
	struct fs *fs = NULL;
	struct stat st;
	char *real;
	int ret = 1, r;

	fuse_set_log_func(fuse_log_to_log);
	if (fuse_opt_parse(&args, &o, cli_spec, cli_proc) != 0) {
		if (!o.bad_arg)
			fprintf(stderr,
				"layerfs: invalid options (try 'layerfs --help')\n");
		goto out_args;
	}
	if (o.help) {
		usage("layerfs");
		ret = 0;
		goto out_args;
	}
	if (o.version) {
		printf("layerfs %s\nFUSE library version %s\n",
		       PACKAGE_VERSION, fuse_pkgversion());
		fflush(stdout);
		fuse_lowlevel_version();
		ret = 0;
		goto out_args;
	}
	if (!o.imagedir || !o.mountpoint) {
		fprintf(stderr, "layerfs: missing %s (try 'layerfs --help')\n",
			o.imagedir ? "MOUNTPOINT" : "IMAGEDIR and MOUNTPOINT");
		goto out_args;
	}
	if (o.max_depth < 1 || o.max_depth > MAX_DEPTH_LIMIT) {
		fprintf(stderr, "layerfs: max_depth must be 1 to %u\n",
			MAX_DEPTH_LIMIT);
		goto out_args;
	}
	if (o.max_threads < 1) {
		fprintf(stderr, "layerfs: max_threads must be at least 1\n");
		goto out_args;
	}
	/* fuse_daemonize() changes to "/": keep the mount point absolute */
	real = realpath(o.mountpoint, NULL);
	if (!real) {
		fprintf(stderr, "layerfs: bad mount point '%s': %s\n",
			o.mountpoint, strerror(errno));
		goto out_args;
	}
	free(o.mountpoint);
	o.mountpoint = real;
	/*
	 * IMAGEDIR absolute too: the info files and the log name layers by
	 * paths that mean the same from any working directory.
	 */
	real = realpath(o.imagedir, NULL);
	if (!real) {
		fprintf(stderr, "layerfs: bad IMAGEDIR '%s': %s\n", o.imagedir,
			strerror(errno));
		goto out_args;
	}
	free(o.imagedir);
	o.imagedir = real;
	/* the kernel mounts over a file too: refuse it, as mount(8) would */
	r = stat(o.mountpoint, &st) < 0 ? errno
	    : !S_ISDIR(st.st_mode)      ? ENOTDIR
					: 0;
	if (r) {
		fprintf(stderr, "layerfs: bad mount point '%s': %s\n",
			o.mountpoint, strerror(r));
		goto out_args;
	}

	log_init("layerfs");
	if (o.debug)
		log_enable_debug(LOG_CLS_CHAIN | LOG_CLS_FORMAT | LOG_CLS_FUSE |
				 LOG_CLS_PART | LOG_CLS_CLI);
	if (o.newlayer)
		o.rw = 1;	/* a new top layer is there to be written */
	if (o.newformat && !o.newlayer) {
		fprintf(stderr, "layerfs: newformat needs newlayer=CHAIN\n");
		goto out_args;
	}
	/*
	 * The session first (it only parses libfuse's options, and a bad one
	 * should fail before a long scan), then the scan, then the mount.
	 */
	fs = fs_new();
	if (!fs || add_mount_opts(&args, &o) < 0) {
		log_err("out of memory");
		goto out_fs;
	}
	se = fuse_session_new(&args, &fs_ops, sizeof(fs_ops), fs);
	if (!se)
		goto out_fs;	/* libfuse said why */
	copts = (struct chain_opts){
		.writable = o.rw,
		.allow_outside = o.allow_outside,
		.ignore_parent_id = o.ignore_parent_id,
		.strict_layers = o.strict_layers,
		.max_depth = o.max_depth,
		.new_layer_format = o.newformat,
		.rw_base = o.rw_base,
	};
	if (o.newlayer) {	/* CHAIN[:FILE] */
		char *colon = strchr(o.newlayer, ':');

		if (colon) {
			*colon = '\0';
			copts.new_layer_name = colon + 1;
		}
		copts.new_layer_of = o.newlayer;
	}
	if (chainset_scan(o.imagedir, &copts, &cs) < 0)
		goto out_session;	/* logged: IMAGEDIR cannot be read */
	/* held until chainset_free(): a fork keeps OFD locks */
	if (imglock_chainset_take(cs) < 0) {
		log_err("%s: cannot lock the images: out of memory", o.imagedir);
		goto out_session;
	}
	if (!cs->nchains && cs->nfailed)
		log_warn("%s: every image (%u) was left out; mounting an empty "
			 "directory: see %s/.layerfs.log", o.imagedir,
			 cs->nfailed, o.mountpoint);
	else if (!cs->nchains)
		log_warn("%s: no disk images found; mounting an empty directory",
			 o.imagedir);
	else if (cs->nfailed)
		log_warn("%s: %u image(s) left out; see %s/.layerfs.log",
			 o.imagedir, cs->nfailed, o.mountpoint);
	r = fs_add_chainset(fs, cs);
	if (r == 0)
		r = fs_tree_finish(fs, o.imagedir);
	if (r < 0) {
		log_err("cannot build the file tree: %s", strerror(-r));
		goto out_session;
	}
	if (fuse_set_signal_handlers(se) != 0)
		goto out_session;
	if (fuse_session_mount(se, o.mountpoint) != 0)
		goto out_signals;
	if (fuse_daemonize(o.foreground) != 0)
		goto out_unmount;
	/* threads after the fork: partition rescans of writable chains */
	if (fs_start(fs, se) < 0)
		goto out_unmount;
	r = serve(se, &o);
	fs_stop(fs);
	/* > 0: the signal that ended the loop, a clean exit */
	if (r < 0)
		log_err("%s: session ended: %s", o.mountpoint, strerror(-r));
	else
		ret = 0;
out_unmount:
	fuse_session_unmount(se);
out_signals:
	fuse_remove_signal_handlers(se);
out_session:
	fuse_session_destroy(se);
out_fs:
	fs_free(fs);		/* borrows the chains: free it first */
	chainset_free(cs);
out_args:
	fuse_opt_free_args(&args);
	free(o.imagedir);
	free(o.mountpoint);
	free(o.newlayer);
	free(o.newformat);
	free(o.rw_base);
	return ret;
}
