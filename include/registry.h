/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* registry.h: the exported driver of each format module. */
#ifndef LAYERFS_REGISTRY_H
#define LAYERFS_REGISTRY_H

#include "img.h"

extern const struct img_driver raw_driver;
extern const struct img_driver raw_rw_driver;	/* raw with writes; not probed */
extern const struct img_driver vhd_driver;
extern const struct img_driver asparse_driver;
extern const struct img_driver vhdx_driver;
extern const struct img_driver qcow2_driver;
extern const struct img_driver qcow_driver;

#endif
