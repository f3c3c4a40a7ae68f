/*
 * direct.h - reads answered from Redis instead of the cache: the
 * consistency "strong" option, and minVersion reads the cache could not
 * answer in time. One schema/read.lua call reads the value and its
 * version together. Loop thread only.
 */
#ifndef MS_DIRECT_H
#define MS_DIRECT_H

#include <stddef.h>
#include <stdint.h>

#include "app.h"
#include "server.h"

/*
 * Answers request req_id of session s with entry kind/id as Redis holds
 * it, when its version is at least min_version (0 for any; an absent
 * entry counts as of Redis's sequence); otherwise with timeout. When
 * Redis cannot be reached, with the error code fail_code (a "strong" read
 * says unavailable, a minVersion read timeout). Holds the
 * session meanwhile, counting reply_bytes against its output limit.
 */
void ms_direct_read(ms_app_t *app, ms_session_t *s, uint64_t req_id,
                    ms_kind_t kind, const char *id, size_t len,
                    uint64_t min_version, int fail_code, size_t reply_bytes);

#endif
