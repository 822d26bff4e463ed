/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * cli.h: layerimg's subcommands and the helpers they share.
 *
 * Every subcommand is `int cmd_X(int argc, char **argv)` with argv[0]
 * "layerimg: X" (so getopt's own complaints carry the prefix), and returns
 * the process exit status:
 *   0  success
 *   1  the operation failed
 *   2  bad usage, or the input could not be opened
 * check uses qemu-img check's codes instead (enum cli_check_status).
 * Messages go to stderr through log.h and cli_log_sink, one line each:
 * "layerimg: X: error: message", "layerimg: X: warning: message", or
 * "layerimg: X: message" for information (getopt's own complaints have
 * no level word).
 */
#ifndef LAYERFS_CLI_H
#define LAYERFS_CLI_H

#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "chain.h"
#include "imglock.h"
#include "log.h"

enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2 };

/* layerimg check's exit status: qemu-img check's values. */
enum cli_check_status {
	CLI_CHECK_CLEAN = 0,
	CLI_CHECK_FAILED = 1,		/* could not check (or bad usage) */
	CLI_CHECK_CORRUPT = 2,		/* errors (corruptions) found */
	CLI_CHECK_LEAKS = 3,		/* leaks only */
	CLI_CHECK_UNSUPPORTED = 63,	/* the format has no checker */
};

/*
 * The command being run, for the message prefix ("layerimg: COMMAND: ").
 * Set by main() before the command runs; NULL before a command is known.
 */
void cli_set_command(const char *name);
/* The log sink of every command: the prefix, INFO dropped when quiet. */
void cli_log_sink(enum log_level lvl, const char *msg);
void cli_set_quiet(bool quiet);
/* One error line with the prefix (usage errors: no file to name). */
void cli_error(const char *fmt, ...) __printf(1, 2);
void cli_verror(const char *fmt, va_list ap) __printf(1, 0);
/* The usage-error tail: "Try 'layerimg COMMAND --help'..." on stderr. */
int cli_try_help(void);

int cmd_info(int argc, char **argv);
int cmd_map(int argc, char **argv);
int cmd_check(int argc, char **argv);
int cmd_create(int argc, char **argv);
int cmd_commit(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_rebase(int argc, char **argv);

/*
 * Parse a size as qemu-img does: a decimal number, a fraction allowed
 * when a suffix follows ("1.5G"), with an optional suffix b/B (bytes) or
 * k, M, G, T, P, E (powers of 1024, either case; also KiB, MB...).  The
 * fraction's bytes are rounded down.  0 or -EINVAL (-ERANGE: too big).
 */
int cli_parse_size(const char *s, uint64_t *out);

/* A size for a 32-bit field, not 0; errors logged naming what. */
int cli_parse_size32(const char *what, const char *s, uint32_t *out);

/*
 * -o key[=value],... of create and convert (list is cut up): block_size,
 * cluster_size, sector_size, fixed, subformat=fixed|dynamic,
 * preallocation=off|metadata|falloc|full.  0, or -EINVAL (logged).
 */
struct img_create_opts;
int cli_parse_create_opts(char *list, struct img_create_opts *o);

/* --output=human|json: *json set.  0, or -EINVAL (logged). */
int cli_parse_output(const char *arg, bool *json);

/* A format name as given to -f/-F/-O, qemu-img's spelling accepted
 * ("vpc" is vhd).  Returns the layerimg name (borrowed). */
const char *cli_format_name(const char *name);

/*
 * -f FMT for an input file: FMT must be a known format and path's content
 * must be that format, as qemu-img refuses an image of another format.
 * allow_unknown: a file no driver recognises (it probes as raw) passes
 * too (check -f on a damaged file).  0, or -EINVAL (logged).
 */
int cli_format_expect(const char *path, const char *fmt, bool allow_unknown);

/*
 * Open IMAGE's chain read-only (or with its top writable), parents looked up
 * in IMAGE's own directory.  IMAGEDIR given as a directory: the directory is
 * scanned and the chain named `name` (NULL: the only chain, or an error if
 * there are several) is returned; *cs then owns it.  Errors are logged.
 * 0 or -errno.
 */
struct cli_chain {
	struct chainset *cs;	/* owned, or NULL when one file was opened */
	struct chain *c;	/* owned when cs is NULL, else borrowed */
};
int cli_chain_open(const char *path, const char *name,
		   const struct chain_opts *o, struct cli_chain *out);
void cli_chain_close(struct cli_chain *cc);

/*
 * --allow-outside and --ignore-parent-id, shared by the commands that open
 * a chain: CLI_CHAIN_OPTIONS goes into the getopt_long table, CLI_CHAIN_HELP
 * into the usage text, and the switch's default case asks
 * cli_chain_option(), which sets the option in *o and returns true if ch
 * is one of them.
 */
enum { CLI_OPT_ALLOW_OUTSIDE = 1024, CLI_OPT_IGNORE_PARENT_ID };
#define CLI_CHAIN_OPTIONS \
	{ "allow-outside", no_argument, NULL, CLI_OPT_ALLOW_OUTSIDE }, \
	{ "ignore-parent-id", no_argument, NULL, CLI_OPT_IGNORE_PARENT_ID }
#define CLI_CHAIN_HELP \
	"      --allow-outside     parents may resolve outside the directory\n" \
	"      --ignore-parent-id  accept a parent whose UUID/linkage differs\n"
bool cli_chain_option(int ch, struct chain_opts *o);

/*
 * Image locks (imglock.h), shared with qemu and layerfs.  A command that
 * writes gets its write lock from img_open(writable); what it reads it
 * locks with cli_lock_image(img, IMGLOCK_READ, force_share): consistent
 * read, writers refused.  With force_share (-U, --force-share, as
 * qemu-img) nothing is taken, and a writer holding the image only draws a
 * warning.  IMGLOCK_WRITE re-takes the write lock (force_share refused).
 * 0, or -EBUSY (logged: the file and who holds it) or -errno.
 */
int cli_lock_image(struct img *img, enum imglock_mode mode, bool force_share);
#define CLI_FORCE_SHARE_HELP \
	"  -U, --force-share       read images another process writes (a\n" \
	"                          warning; no locks taken, as qemu-img -U)\n"
/* cli_lock_image(IMGLOCK_READ) on layers [first, depth) of c */
int cli_lock_chain(struct chain *c, unsigned first, bool force_share);

/* A log sink that drops every message: log_set_sink(cli_log_drop). */
void cli_log_drop(enum log_level lvl, const char *msg);

/* A progress bar on stderr. */
struct cli_progress {
	bool on;
	uint64_t total;
	int last_pct;
	const char *what;
};
/* mode: CLI_PROGRESS_AUTO (on a terminal), _ON (-p: always), _OFF */
enum { CLI_PROGRESS_OFF, CLI_PROGRESS_AUTO, CLI_PROGRESS_ON };
void cli_progress_start(struct cli_progress *p, const char *what,
			uint64_t total, int mode);
void cli_progress_update(struct cli_progress *p, uint64_t done);
void cli_progress_end(struct cli_progress *p);

/*
 * cmd-rebase.c, also used by commit: rewrite the parent reference of the
 * image file top (opened writable) to name the image file parent: its
 * path relative to top's directory and its absolute path, its identity
 * and its format.  No identity check.  Errors are logged.  0 or -errno.
 */
int cli_set_parent(const char *top, const char *parent);

#endif
