/* batch_norm.c's kernels for one element type (the macros NZ_T, NZ_LD, NZ_ST, NZ_FN of
 * ghost_rows.h), in the order they use each other; batch_norm.c includes this file twice (no
 * include guard), for float32 and for bfloat16. */
#include "bn_block.h"   /* BatchNorm's contiguous blocks: bn_forward_block, bn_backward_block */
#include "cl_tiles.h"   /* the channels_last tile sums: cl_tile_moments, cl_tile_grad_sums */
#include "bn_cl.h"      /* BatchNorm's channels_last kernels */
#include "ghost_rows.h" /* Ghost BN on (N, C) rows */
