/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * layers.h: the L0-L9 layer naming rules (see layerfs-layers(7)).
 *
 * A file name carries a layer tag as the last '-', '_' or '.' separated
 * token of its stem (the name without its last extension), or as the
 * whole stem: "L<d>" is level d; "L<d><nn>" or "<d><nn>" is differencing
 * image nn of level d.
 */
#ifndef LAYERFS_LAYERS_H
#define LAYERFS_LAYERS_H

#include <stdbool.h>
#include <stddef.h>

struct layer_tag {
	bool tagged;		/* false: no rule applies */
	int level;		/* 0..9 */
	int seq;		/* 1..99 for a "dnn" image, -1 for a plain level */
};

/* Parse the tag from a file name (a path's directory part is ignored). */
void layer_tag_parse(const char *name, struct layer_tag *t);
/* "L3", "L301"; buf >= 8 bytes; "" when untagged */
void layer_tag_format(const struct layer_tag *t, char *buf, size_t len);

/*
 * Check one image's tag on its own (e.g. L0 has no differencing images).
 * Returns NULL if fine, or a static message describing the violation.
 */
const char *layer_check_self(const struct layer_tag *t);
/*
 * Check a child/parent pair.  Returns NULL if the pair obeys the rules
 * (or either is untagged), or a static message describing the violation.
 */
const char *layer_check_pair(const struct layer_tag *child,
			     const struct layer_tag *parent);

#endif
