// SPDX-License-Identifier: LGPL-2.1-or-later
/* lockset.c: image locks (imglock.h) on opened images and whole chains. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "chain.h"
#include "imglock.h"
#include "log.h"

int imglock_img_take(struct img *img, enum imglock_mode mode)
{
	/* a raw file keeps its length; every other format appends */
	bool grow = !img->drv || strcmp(img->drv->name, "raw") != 0;

	return imglock_fd_take(img->fd, img->path,
			       imglock_mode_perm(mode, grow),
			       IMGLOCK_SHARED_DEFAULT);
}

struct taken {
	const struct img *img;
	int r;
};

/* Lock img for reading once, however many chains share it. */
static int take_once(struct img *img, struct taken *done, size_t *ndone)
{
	for (size_t i = 0; i < *ndone; i++)
		if (done[i].img == img)
			return done[i].r;
	done[*ndone].img = img;
	/* a writable top holds IMGLOCK_WRITE since img_open */
	done[*ndone].r = img->writable ? 0 : imglock_img_take(img, IMGLOCK_READ);
	return done[(*ndone)++].r;
}

int imglock_chainset_take(struct chainset *cs)
{
	struct taken *done;
	size_t ndone = 0, cap = 0, kept = 0;

	for (size_t i = 0; i < cs->nchains; i++)
		cap += cs->chains[i]->depth;
	done = calloc(cap ? cap : 1, sizeof(*done));
	if (!done)
		return -ENOMEM;
	for (size_t i = 0; i < cs->nchains; i++) {
		struct chain *c = cs->chains[i];
		const char *bad = NULL;

		for (unsigned k = 0; k < c->depth && !bad; k++)
			if (take_once(c->layers[k].img, done, &ndone) < 0)
				bad = c->layers[k].img->path;
		if (!bad) {
			cs->chains[kept++] = c;
			continue;
		}
		if (bad == c->layers[0].img->path)
			log_err("%s: left out: cannot be locked", c->top_path);
		else
			log_err("%s: left out: its layer %s cannot be locked",
				c->top_path, bad);
		cs->nfailed++;
		chain_free(c);
	}
	cs->nchains = kept;
	free(done);
	return 0;
}
