/*
 * s3chain: the byte ranges a reader says it will read (x-read-plan)
 *
 * A restore reads each layer of a backing chain only where no layer above
 * it has data.  Loaded whole, a chunk of a lower layer brings along what
 * the layers above shadow: for a full backup under ten incrementals that
 * each rewrote 64 MiB in 1 MiB pieces, a sixth of its bytes.  The reader
 * knows beforehand what it will read (qemu-img map of the chain gives
 * every layer's host extents), and with a plan a chunk loads only the
 * blocks that the plan touches.
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#include "qemu/osdep.h"
#include "qapi/error.h"
#include "qemu/cutils.h"
#include "s3chain.h"

uint64_t *s3chain_read_plan_parse(const char *text, const char *path,
                                  uint64_t size, uint64_t chunk_size,
                                  uint64_t block_size, Error **errp)
{
    g_auto(GStrv) lines = g_strsplit(text, "\n", -1);
    g_autofree uint64_t *planned =
        g_new0(uint64_t, DIV_ROUND_UP(size, chunk_size));

    for (unsigned i = 0; lines[i]; i++) {
        const char *end;
        uint64_t offset, bytes;

        if (!*lines[i]) {
            continue;
        }
        if (qemu_strtou64(lines[i], &end, 10, &offset) < 0 || *end != ' ' ||
            qemu_strtou64(end + 1, NULL, 10, &bytes) < 0 || !bytes ||
            offset > size || bytes > size - offset) {
            error_setg(errp, "s3chain: read plan %s, line %u: want "
                       "\"OFFSET LENGTH\" within the image's %" PRIu64
                       " bytes, not \"%s\"", path, i + 1, size, lines[i]);
            return NULL;
        }
        while (bytes) {
            uint64_t index = offset / chunk_size;
            uint64_t in_chunk = offset % chunk_size;
            uint64_t n = MIN(bytes, chunk_size - in_chunk);

            planned[index] |= s3chain_blocks_of(block_size, in_chunk, n);
            offset += n;
            bytes -= n;
        }
    }
    return g_steal_pointer(&planned);
}
