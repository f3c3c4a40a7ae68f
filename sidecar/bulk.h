/*
 * bulk.h - bulk reads from the cache: lists of every connection's or room's
 * metadata, paged, and many entries in one request. Loop thread only.
 */
#ifndef MS_BULK_H
#define MS_BULK_H

#include "handlers.h"

/* The operations of this module (see handlers.h). */
extern const ms_op_t ms_bulk_ops[];

#endif
