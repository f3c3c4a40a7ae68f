/*
 * frame.h - the wire framing: a 4-byte big-endian length, then that many
 * bytes holding exactly one msgpack object.
 *
 * ms_frame_reader_t turns a byte stream into frames. It never allocates
 * more than the frame limit plus the header, whatever length a peer
 * declares: a declared length over the limit is reported before any byte
 * of the body is buffered.
 *
 * ms_msgpack_check() validates a frame body before msgpack-c unpacks it:
 * msgpack-c sizes arrays and maps from their declared counts, so a
 * 5-byte body declaring 4 billion elements would make it reserve ~100 GB.
 * The check refuses counts the remaining bytes cannot hold, nesting over
 * the limit, truncation, trailing bytes and reserved type bytes.
 *
 * Used by the daemon (on its loop thread) and by the client library.
 */
#ifndef MS_FRAME_H
#define MS_FRAME_H

#include <msgpack.h>
#include <stddef.h>
#include <stdint.h>

#include "error.h"

#define MS_FRAME_HEADER      4
#define MS_FRAME_DEFAULT_MAX (1024 * 1024)

typedef struct ms_frame_reader_s {
    char *buf;        /* owned; buffered, not yet consumed bytes */
    size_t start;     /* offset of the first unconsumed byte */
    size_t len;       /* bytes buffered past start */
    size_t cap;       /* size of buf */
    size_t max_frame; /* largest accepted body length */
} ms_frame_reader_t;

void ms_frame_reader_init(ms_frame_reader_t *r, size_t max_frame);
void ms_frame_reader_free(ms_frame_reader_t *r);

/*
 * Gives a place to read up to *len more bytes into (for a libuv alloc
 * callback); suggested is a hint. Returns 0, or MS_ENOMEM with *base NULL.
 */
int ms_frame_reader_space(ms_frame_reader_t *r, size_t suggested, char **base,
                          size_t *len) MS_MUST_CHECK;

/* Records that n bytes were written at the place last given. */
void ms_frame_reader_commit(ms_frame_reader_t *r, size_t n);

/*
 * Takes the next complete frame: returns 1 and points *body and *len at its
 * body (valid until the next reader call), 0 when more bytes are needed,
 * or MS_ETOOLARGE when the declared length exceeds max_frame (the stream
 * cannot be resynchronised; the caller should answer and close).
 */
int ms_frame_reader_next(ms_frame_reader_t *r, const char **body,
                         size_t *len) MS_MUST_CHECK;

/*
 * Writing: ms_frame_begin() reserves the header in sb and returns its
 * offset; after packing the body into sb, ms_frame_end() fills in the
 * length. Returns 0 or MS_ENOMEM.
 */
int ms_frame_begin(msgpack_sbuffer *sb, size_t *start) MS_MUST_CHECK;
void ms_frame_end(msgpack_sbuffer *sb, size_t start);

/* Reads a big-endian 32-bit length. */
uint32_t ms_frame_get_len(const char *p);

/*
 * Checks that buf[0..len) is exactly one well-formed msgpack object
 * nesting at most max_depth containers (the outermost counts as 1).
 * Returns 0, MS_EINVAL (truncated, trailing bytes, reserved byte 0xc1,
 * counts larger than the bytes left) or MS_ETOOLARGE (too deep), with a
 * message in err.
 */
int ms_msgpack_check(const char *buf, size_t len, int max_depth,
                     ms_error_t *err) MS_MUST_CHECK;

/*
 * Finds the unsigned integer under key in a msgpack map, without decoding
 * anything else: how an error reply still echoes the request's id when the
 * request is too deep for msgpack-c. Returns 1 with *out set, or 0 when
 * buf is not a map, has no such key, the value is not an unsigned
 * integer, or the bytes before it are malformed.
 */
int ms_msgpack_map_uint(const char *buf, size_t len, const char *key,
                        uint64_t *out);

#endif
