/*
 * s3chain: which failures of a request to the bucket are worth another
 * try; one policy for the driver and the s3chain command
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef BLOCK_S3CHAIN_RETRY_H
#define BLOCK_S3CHAIN_RETRY_H

#include <curl/curl.h>

/* The network failed on the way: another try may pass */
bool s3chain_curl_error_is_transient(CURLcode code);
/*
 * TLS failed: a certificate that does not verify, or no TLS at all at
 * the other end.  Never tried again: the same answer would come.
 */
bool s3chain_curl_error_is_tls(CURLcode code);
/* The server is busy, failing or timed out: 5xx but 501/505, 429, 408 */
bool s3chain_status_is_transient(long status);

#endif
