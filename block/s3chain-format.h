/*
 * s3chain: the format of chunked images in the bucket, one definition for
 * the driver and the s3chain command (docs/object-layout.rst)
 *
 * Plain C over glib: the command compiles s3chain-format.c unchanged.
 * Each side walks a manifest's JSON with its own library (QObject, json-c)
 * and asks these functions whether each value is one the format allows.
 *
 * Copyright (c) 2026 The s3chain authors
 *
 * SPDX-License-Identifier: GPL-2.0-or-later
 */

#ifndef BLOCK_S3CHAIN_FORMAT_H
#define BLOCK_S3CHAIN_FORMAT_H

#include "s3chain-seal.h"

/* The manifest's "format", and the versions of it that are read */
#define S3CHAIN_MANIFEST_FORMAT "s3chain-chunked"
#define S3CHAIN_MANIFEST_VERSION 7
/*
 * What a manifest says it is: 7 for an image whose blocks are stored
 * encrypted, else 6 if compressed, else 5 if a chunk has patches, else
 * 4, so that a reader of an older version reads every image that needs
 * nothing newer
 */
#define S3CHAIN_MANIFEST_VERSION_ENCRYPTED 7
#define S3CHAIN_MANIFEST_VERSION_COMPRESSED 6
#define S3CHAIN_MANIFEST_VERSION_PATCHED 5
#define S3CHAIN_MANIFEST_VERSION_UNPATCHED 4

/*
 * The compression of a version 6 or 7 manifest's blocks, its "compress": each
 * block a zstd frame, stored as is if that is no shorter, or not at all
 * if it is all zeroes
 */
#define S3CHAIN_COMPRESS_ZSTD "zstd"
/* zstd's levels a writer takes, and its own default */
#define S3CHAIN_MAX_COMPRESS_LEVEL 19
#define S3CHAIN_DEFAULT_COMPRESS_LEVEL 3

/* The Content-Type that marks a chunked image's manifest */
#define S3CHAIN_MANIFEST_TYPE "application/vnd.s3chain.manifest+json"

/* A manifest of a 64 TiB image of 64 KiB chunks, all stored, is ~70 GiB */
#define S3CHAIN_MANIFEST_MAX_BYTES (256 * 1024 * 1024)

#define S3CHAIN_MIN_CHUNK_SIZE (64 * 1024)
#define S3CHAIN_MAX_CHUNK_SIZE (256 * 1024 * 1024)

/*
 * Where version 3 writers put the CRC-32 of each block of a chunk, 8 hex
 * digits each, in order: the chunk object's metadata.  Since version 4
 * the manifest holds them: OpenStack Swift refuses metadata values over
 * 256 bytes, and 64 sums are 512.
 */
#define S3CHAIN_BLOCK_SUMS_META "x-amz-meta-s3chain-block-crc32"
#define S3CHAIN_MAX_BLOCKS 64
#define S3CHAIN_MIN_BLOCK_SIZE (64 * 1024)

/*
 * A chunk's patches: at most this many objects, holding together at
 * most half of its blocks, over the object it was stored whole in
 */
#define S3CHAIN_MAX_PATCHES 4

/*
 * What the driver's reports of an image whose stored bytes or manifest
 * are wrong begin with, wherever the report ends up (qemu-img's or
 * qemu-io's stderr, a QMP error): the command tells a damaged backup from
 * a failed transfer by it.
 */
#define S3CHAIN_DAMAGED "s3chain: damaged: "
/*
 * And of an image that the key given does not open: encrypted with
 * another key or none given, or not encrypted while a key was
 */
#define S3CHAIN_KEY_REFUSED "s3chain: key refused: "

/* The blocks of a chunk: a qcow2 cluster, or a 64th of the chunk */
static inline uint64_t s3chain_block_size(uint64_t chunk_size)
{
    return chunk_size / S3CHAIN_MAX_BLOCKS > S3CHAIN_MIN_BLOCK_SIZE
           ? chunk_size / S3CHAIN_MAX_BLOCKS : S3CHAIN_MIN_BLOCK_SIZE;
}

/* The key of the object of chunk @index of image @image_key, upload @tag */
char *s3chain_chunk_key(const char *image_key, uint64_t index,
                        const char *tag);

/*
 * The checks of a manifest's values.  Each takes what the JSON held (NULL
 * for a member that is missing or not a string) and says if it is valid.
 */

/* A power of two from S3CHAIN_MIN_CHUNK_SIZE to S3CHAIN_MAX_CHUNK_SIZE */
bool s3chain_chunk_size_is_valid(uint64_t chunk_size);
/* Within an image of @size bytes */
bool s3chain_chunk_index_is_valid(uint64_t index, uint64_t size,
                                  uint64_t chunk_size);
/* The most fields a chunk entry of manifest @version has */
unsigned s3chain_entry_fields_max(uint64_t version);
/* How a chunk entry of manifest @version looks, for messages */
const char *s3chain_entry_shape(uint64_t version);
/* Lower-case hex digits and dots, so never a '/' */
bool s3chain_tag_is_valid(const char *tag);
/* 32 hex digits of either case, an ETag */
bool s3chain_md5_from_hex(const char *hex, uint8_t md5[16]);
/* 8 lower-case hex digits */
bool s3chain_crc32_from_hex(const char *hex, uint32_t *crc32);
/* A power of two dividing the chunk in at most S3CHAIN_MAX_BLOCKS */
bool s3chain_block_size_is_valid(uint64_t block_size, uint64_t chunk_size);
/* One CRC-32 of each block, 8 lower-case hex digits each */
bool s3chain_block_sums_are_valid(const char *sums, uint64_t chunk_size,
                                  uint64_t block_size);
/*
 * @n 32-bit words in 8 lower-case hex digits each, the shape of block
 * sums and stored lengths: to text, and back into @words if not NULL
 */
char *s3chain_words_to_hex(const uint32_t *words, unsigned n);
bool s3chain_words_from_hex(const char *hex, unsigned n, uint32_t *words);
/* S3CHAIN_COMPRESS_ZSTD, the one compression there is */
bool s3chain_compress_is_valid(const char *compress);
/* S3CHAIN_ENCRYPT_AES_256_GCM, the one encryption there is */
bool s3chain_encrypt_is_valid(const char *encrypt);
/* A key id or image id: 32 lower-case hex digits, into @id, and back */
bool s3chain_id_from_hex(const char *hex, uint8_t id[16]);
char *s3chain_id_to_hex(const uint8_t id[16]);
/*
 * The stored length of each block of a packed chunk (a compressed or
 * encrypted image's), 8 lower-case hex digits each, into @lengths if not
 * NULL.  Each is 0 (all zeroes), or the block's bytes: at most
 * @block_size if @compressed, else exactly; and, if @sealed, with
 * S3CHAIN_SEAL_OVERHEAD bytes more.
 */
bool s3chain_stored_lengths_from_hex(const char *hex, uint64_t chunk_size,
                                     uint64_t block_size, bool compressed,
                                     bool sealed, uint32_t *lengths);
/*
 * A patch's blocks: 16 lower-case hex digits of a mask of blocks of
 * s3chain_block_size(), at least one, none past the chunk's end
 */
bool s3chain_patch_blocks_from_hex(const char *hex, uint64_t chunk_size,
                                   uint64_t *blocks);

#endif
