/*
 * bulk.c - see bulk.h. Loop thread only.
 */
#include "bulk.h"

const ms_op_t ms_bulk_ops[] = {
    {NULL, NULL},
};
