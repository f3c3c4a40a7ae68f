/*
 * watch.c - see watch.h. Loop thread only.
 */
#include "watch.h"

const ms_op_t ms_watch_ops[] = {
    {NULL, NULL},
};
