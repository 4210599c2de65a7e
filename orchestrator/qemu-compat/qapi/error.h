/*
 * QEMU's Error API as the s3chain command provides it: a GError inside
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef S3CHAIN_COMPAT_ERROR_H
#define S3CHAIN_COMPAT_ERROR_H

#include "qemu/osdep.h"

struct Error {
    GError *gerror;
};

/* Aborts on any error set through it, as QEMU's does */
extern Error *error_abort;

void error_setg(Error **errp, const char *fmt, ...) G_GNUC_PRINTF(2, 3);

#endif
