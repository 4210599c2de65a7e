/*
 * QEMU's hash API, backed by glib's GChecksum, for the s3chain command
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef S3CHAIN_COMPAT_HASH_H
#define S3CHAIN_COMPAT_HASH_H

#include "qapi/error.h"

typedef enum QCryptoHashAlgo {
    QCRYPTO_HASH_ALGO_SHA256,
} QCryptoHashAlgo;

size_t qcrypto_hash_digest_len(QCryptoHashAlgo alg);

/* Sets @digest to the lowercase hex digest of @buf */
int qcrypto_hash_digest(QCryptoHashAlgo alg, const char *buf, size_t len,
                        char **digest, Error **errp);

#endif
