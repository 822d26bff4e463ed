/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * layers.h: the L0-L9 layer naming rules (see layerfs-layers(7)).
 *
 * A file name carries a layer tag as the last '-', '_' or '.' separated
 * token of its stem (the name without its last extension), or as the
 * whole stem: "L<d>" is level d; "L<d><nn>" or "<d><nn>" is differencing
 * image nn of level d.  'l' is accepted for 'L'; nn is 01..99.
 */
#ifndef LAYERFS_LAYERS_H
#define LAYERFS_LAYERS_H

#include <stdbool.h>
#include <stddef.h>

#define LAYER_TAG_MAX 8		/* buffer for layer_tag_format() */
#define LAYER_MSG_MAX 96	/* buffer for layer_check_*() messages */

struct layer_tag {
	bool tagged;		/* false: no rule applies */
	int level;		/* 0..9; -1 when untagged */
	int seq;		/* 1..99 for a "dnn" image, -1 for a plain level
				 * (and when untagged) */
};

/*
 * Parse the tag from a file name (a path's directory part is ignored).
 * Never fails: a name without a tag gives an untagged *t.
 */
void layer_tag_parse(const char *name, struct layer_tag *t);
/* "L3", "L301"; buf >= LAYER_TAG_MAX bytes; "" when untagged */
void layer_tag_format(const struct layer_tag *t, char *buf, size_t len);

/*
 * The checks return true if the rules are obeyed.  On a violation they
 * return false and write a short lower-case message naming the tags into
 * buf (e.g. "parent L4 is a higher level than L3"; truncated to len, and
 * LAYER_MSG_MAX is always enough).  buf gets "" when there is no
 * violation; buf may be NULL when len is 0.  Whether a violation is a
 * warning or an error is the caller's choice (strict_layers).
 */

/* One image's tag on its own: L0 has no differencing images (L0nn). */
bool layer_check_self(const struct layer_tag *t, char *buf, size_t len);
/*
 * A child/parent pair: the parent's level must not be higher than the
 * child's; at the same level only an "L<d><nn>" child may have a parent,
 * and that parent must be plain "L<d>" or "L<d><mm>" with mm < nn.  Any
 * pair with an untagged side is fine.  A tag's own violation (L0nn) is
 * left to layer_check_self(), which the caller runs on every layer.
 */
bool layer_check_pair(const struct layer_tag *child,
		      const struct layer_tag *parent, char *buf, size_t len);

/* Which name a new layer over an image gets (layer_next_name). */
enum layer_next {
	LAYER_NEXT_DEFAULT,	/* L<d><nn> -> the next free L<d><nn+k>;
				 * L<d> -> L<d+1>, else the first free L<d>nn
				 * (L9 -> L901; never L0nn); untagged ->
				 * <stem>-L1 */
	LAYER_NEXT_DIFF,	/* L<d> -> L<d>01, L<d><nn> -> L<d><nn+1> (the
				 * next free ones); none over L0 */
	LAYER_NEXT_LEVEL,	/* L<d>, L<d><nn> -> L<d+1>; none over L9 */
};

/*
 * The file name of a new layer over the image named top_name (a path's
 * directory part is ignored), with extension ext: the stem's text before
 * the tag is kept ("win-L3.vhd" -> "win-L4.<ext>").  taken(ctx, stem)
 * says whether a candidate stem is in use (any extension); this module
 * does no I/O itself.  malloc'd name, or NULL when no name is free (or
 * the mode allows none, or out of memory).
 */
char *layer_next_name(const char *top_name, const char *ext,
		      enum layer_next mode,
		      bool (*taken)(void *ctx, const char *stem), void *ctx);

#endif
