/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * cli.h: layerimg's subcommands and the helpers they share.
 *
 * Every subcommand is `int cmd_X(int argc, char **argv)` with argv[0] the
 * subcommand name, and returns the process exit status:
 *   0  success (check: the image is clean)
 *   1  the operation failed (check: errors were found)
 *   2  bad usage, or the input could not be opened/checked
 *   3  check only: leaks or other harmless findings, no errors
 * Messages go to stderr through log.h, one line naming the file.
 */
#ifndef LAYERFS_CLI_H
#define LAYERFS_CLI_H

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>

#include "chain.h"
#include "log.h"

enum { CLI_OK = 0, CLI_FAIL = 1, CLI_USAGE = 2, CLI_LEAKS = 3 };

int cmd_info(int argc, char **argv);
int cmd_map(int argc, char **argv);
int cmd_check(int argc, char **argv);
int cmd_create(int argc, char **argv);
int cmd_commit(int argc, char **argv);
int cmd_convert(int argc, char **argv);
int cmd_rebase(int argc, char **argv);

/*
 * Parse a size: a decimal number with an optional K, M, G, T or P suffix
 * (powers of 1024; also KiB, MiB...; a trailing B is allowed).  0 or -EINVAL.
 */
int cli_parse_size(const char *s, uint64_t *out);

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

/* A log sink that drops every message: log_set_sink(cli_log_drop). */
void cli_log_drop(enum log_level lvl, const char *msg);

/* A progress bar on stderr, drawn only when stderr is a terminal. */
struct cli_progress {
	bool on;
	uint64_t total;
	int last_pct;
	const char *what;
};
void cli_progress_start(struct cli_progress *p, const char *what,
			uint64_t total, bool enable);
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
