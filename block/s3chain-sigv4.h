/*
 * s3chain: AWS Signature Version 4 for S3 requests
 *
 * Needs only glib and the two digests below, so that the s3chain command
 * signs with the same code as the driver.
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef BLOCK_S3CHAIN_SIGV4_H
#define BLOCK_S3CHAIN_SIGV4_H

#define S3CHAIN_SHA256_LEN 32

/*
 * The digests the signer needs, defined by each program that links it:
 * over QEMU's crypto in the driver (s3chain-crypto.c), over glib in the
 * s3chain command.  Neither can fail.
 */
/* SHA-256 of @data as lower-case hex, NUL-terminated, into @hex */
void s3chain_sha256_hex(const char *data, size_t len,
                        char hex[2 * S3CHAIN_SHA256_LEN + 1]);
/* HMAC-SHA-256 of @data under @key into @mac */
void s3chain_hmac_sha256(const uint8_t *key, size_t key_len,
                         const char *data, size_t len,
                         uint8_t mac[S3CHAIN_SHA256_LEN]);

/*
 * Percent-encodes @s as SigV4 wants: everything but A-Z a-z 0-9 - . _ ~
 * and, if @keep_slash, '/'.
 */
char *s3chain_uri_encode(const char *s, bool keep_slash);

typedef struct S3chainHeader {
    const char *name;
    const char *value;
} S3chainHeader;

typedef struct S3chainSigV4Request {
    const char *method;
    const char *path;           /* not encoded, starts with '/' */
    const char *query;          /* as on the wire, may be NULL */
    const S3chainHeader *headers; /* every header to sign, Host included */
    size_t nheaders;
    const char *payload_sha256; /* hex */
} S3chainSigV4Request;

typedef struct S3chainSigV4Key {
    const char *access_key_id;
    const char *secret_access_key;
    const char *region;
    const char *service;
} S3chainSigV4Key;

char *s3chain_sigv4_canonical_request(const S3chainSigV4Request *req,
                                      char **signed_headers);
char *s3chain_sigv4_string_to_sign(const char *amz_date, const char *region,
                                   const char *service,
                                   const char *canonical_request);
/* The signature of @string_to_sign, in hex */
char *s3chain_sigv4_signature(const S3chainSigV4Key *key,
                              const char *amz_date,
                              const char *string_to_sign);
/*
 * Signs @req at @amz_date ("YYYYMMDDTHHMMSSZ", which must also be the
 * value of its x-amz-date header) and returns the Authorization header's
 * value.
 */
char *s3chain_sigv4_authorization(const S3chainSigV4Key *key,
                                  const char *amz_date,
                                  const S3chainSigV4Request *req);

#endif
