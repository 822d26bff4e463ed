/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* chain-priv.h: what scan.c and chain.c share, private to src/chain/. */
#ifndef LAYERFS_CHAIN_PRIV_H
#define LAYERFS_CHAIN_PRIV_H

#include "chain.h"

/*
 * Give a chain whose layers scan.c filled in (c->layers, c->depth) its
 * shape: the lock and the first view, which takes over the layers array.
 * 0 or -ENOMEM (c->layers is still the caller's then).
 */
int chain_shape_init(struct chain *c);

#endif
