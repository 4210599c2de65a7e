/*
 * QEMU's HMAC API, backed by glib's GHmac, for the s3chain command
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */
#ifndef S3CHAIN_COMPAT_HMAC_H
#define S3CHAIN_COMPAT_HMAC_H

#include "crypto/hash.h"

typedef struct QCryptoHmac QCryptoHmac;

QCryptoHmac *qcrypto_hmac_new(QCryptoHashAlgo alg, const uint8_t *key,
                              size_t nkey, Error **errp);
void qcrypto_hmac_free(QCryptoHmac *hmac);
int qcrypto_hmac_bytes(QCryptoHmac *hmac, const char *buf, size_t len,
                       uint8_t **result, size_t *resultlen, Error **errp);

G_DEFINE_AUTOPTR_CLEANUP_FUNC(QCryptoHmac, qcrypto_hmac_free)

#endif
