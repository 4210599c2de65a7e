/*
 * The part of QEMU's osdep.h that block/s3chain-sigv4.c,
 * s3chain-retry.c and s3chain-format.c need (the system headers QEMU's
 * osdep.h includes first), so that the s3chain command compiles them
 * unchanged.
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef S3CHAIN_COMPAT_OSDEP_H
#define S3CHAIN_COMPAT_OSDEP_H

#include <inttypes.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <glib.h>

#endif
