/* Batch norm over a contiguous float32 (N, C, L) tensor, one channel at a time (the
 * channels_last variants, nz_bn_*_cl, are at the end of this file).
 *
 * Each thread takes blocks of whole channels, sized so that a block's values (N rows of L per
 * channel) stay in the core's L2 cache: the block is read from memory once for the mean and
 * variance (shifted one-pass moments), then again from cache for y; the backward reads x and dy once for its two
 * sums and again (from cache) for dx. Within a block, loops run over n, then the block's
 * channels, so each n visits one contiguous run of memory (short rows stay prefetchable).
 * Row sums are float SIMD lanes, channel totals double, as precise as torch's kernel.
 *
 *   forward:  y = (x - mean) * invstd * w + b,  invstd = 1 / sqrt(var + eps), var biased
 *   backward: dx = w invstd (dy - mean(dy) - xhat mean(dy xhat)),
 *             dw = sum(dy xhat), db = sum(dy),  xhat = (x - mean) invstd
 * Any of w, b, var (forward) and dx, dw, db (backward) may be NULL; y too, for the statistics
 * alone. Batch Renorm runs the same forward with its r and d folded into each channel's map
 * (nz_renorm_forward, below bn_forward).
 *
 * Ghost BN, every virtual batch in one call, is at the end of the file: contiguous input on
 * these blocks per virtual batch (nz_ghost_forward, nz_ghost_backward), (N, C) rows (tokens,
 * channels_last input) in ghost_rows.h.
 *
 * The _relu variants fuse a ReLU after the affine map (Norm.fuse_activation): the forward
 * writes max(y, 0); the backward uses dy [pre > 0], pre = x scale + shift recomputed from the
 * saved mean and invstd, w and b by the forward's own expressions (bn_scale, bn_shift), so
 * the mask is the forward's to the bit. Both passes of the backward (sums, dx) mask dy as
 * they read it.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#include "nz_bf16.h"
#include "nz_simd.h"

#define NZ_INLINE static inline __attribute__((always_inline))
#define NZ_MAX_BLOCK 256
#define NZ_BLOCK_BYTES (256 * 1024)

/* Channels per block: the block fits NZ_BLOCK_BYTES per tensor read, and every thread gets
 * the same number of blocks (up to one channel). */
static int64_t block_channels(int64_t N, int64_t C, int64_t L, int threads) {
  int64_t per_channel = N * L * (int64_t)sizeof(float);
  int64_t bc = per_channel > 0 ? NZ_BLOCK_BYTES / per_channel : NZ_MAX_BLOCK;
  if (bc > NZ_MAX_BLOCK) bc = NZ_MAX_BLOCK;
  if (bc < 1) bc = 1;
  /* as many blocks as that needs, rounded up to a multiple of the threads, evenly filled */
  const int64_t t = threads > 0 ? threads : 1;
  int64_t blocks = (C + bc - 1) / bc;
  blocks = (blocks + t - 1) / t * t;
  bc = (C + blocks - 1) / blocks;
  return bc < 1 ? 1 : bc;
}

/* o = p sc + sh (then max(., 0) with relu) over a row of n values: whole cache lines from
 * NZ_LINE_MIN values (nz_simd.h), shorter rows as compiled (no gain measured there). */
static inline void map_line(const float *p, float *o, int64_t n, float sc, float sh, int relu) {
  if (n >= NZ_LINE_MIN) {
    nz_map_lines(p, o, n, sc, sh, relu);
  } else if (relu) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float v = p[i] * sc + sh;
      o[i] = v < 0.f ? 0.f : v; /* a NaN kept, as torch.relu keeps it */
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) o[i] = p[i] * sc + sh;
  }
}

/* sum(p - k) and sum((p - k)^2) over one row, float SIMD lanes. Rows of at least NZ_LINE_MIN
 * values on two vectors per sum (a single chain of adds waits on each add's latency: the
 * forward on (4, 32, 64, 64) measured 0.80 of its time before this way, scripts/
 * bench_kernel_ab.py; the same for the backward's sums measured no gain), shorter ones as
 * compiled. */
static inline void row_moments(const float *p, int64_t L, float k, double *s1, double *s2) {
  float r1 = 0.f, r2 = 0.f;
  int64_t j = L >= NZ_LINE_MIN ? nz_shifted_sums(p, L, k, &r1, &r2)
                               : nz_short_sums(p, L, k, &r1, &r2);
  for (; j < L; ++j) {
    const float d = p[j] - k;
    r1 += d;
    r2 += d * d;
  }
  *s1 += r1;
  *s2 += r2;
}

/* Channel c's affine map x scale + shift; the forward and the fused ReLU's mask share them. */
static inline float bn_scale(const float *w, int64_t c, float inv) { return w ? w[c] * inv : inv; }
static inline float bn_shift(const float *b, int64_t c, float m, float sc) {
  return (b ? b[c] : 0.f) - m * sc;
}

/* Batch Renorm (Ioffe, "Batch Renormalization", NeurIPS 2017) inside BatchNorm's forward:
 * y = w (r xhat + d) + b is BatchNorm with the weight w r and the bias w d + b, where
 * r = clip(sigma_B / sigma, 1 / r_max, r_max) and d = clip((mean_B - mean) / sigma, -d_max,
 * d_max), sigma = sqrt(running_var + eps), from the running statistics before this step. Both
 * depend on the channel's own batch statistics only, so each channel's map follows from its
 * moments where BatchNorm's would (one pass over x for the moments, one for y, as BatchNorm).
 * out (5 C): r, d, the map's weight w r and bias w d + b, the unbiased batch variance. The
 * float32 expressions are those of normzoo.norms.batch_renorm's torch ops. */
typedef struct {
  const float *running_mean, *running_var;
  float r_lo, r_hi, d_max;
  float *out;
} nz_renorm;

static inline float nz_clip(float v, float lo, float hi) { return v < lo ? lo : (v > hi ? hi : v); }

static inline void renorm_channel(const nz_renorm *rn, const float *w, const float *b, int64_t c,
                                  int64_t C, float mean, float inv, double var, double M,
                                  double eps) {
  const float sigma = sqrtf(rn->running_var[c] + (float)eps);
  const float r = nz_clip(1.f / inv / sigma, rn->r_lo, rn->r_hi);
  const float d = nz_clip((mean - rn->running_mean[c]) / sigma, -rn->d_max, rn->d_max);
  rn->out[c] = r;
  rn->out[C + c] = d;
  rn->out[2 * C + c] = w ? w[c] * r : r;
  rn->out[3 * C + c] = (w ? w[c] * d : d) + (b ? b[c] : 0.f);
  rn->out[4 * C + c] = (float)(var * (M / (M > 1.0 ? M - 1.0 : 1.0)));
}

/* dx = a (dy - md - (x - m) pr) over a row of L values: whole cache lines from NZ_LINE_MIN
 * values (as map_line), shorter rows as compiled. */
static inline void dx_line(const float *g, const float *p, float *o, int64_t L, float a,
                           float md, float m, float pr) {
  if (L < NZ_LINE_MIN) {
#pragma omp simd
    for (int64_t i = 0; i < L; ++i) o[i] = a * (g[i] - md - (p[i] - m) * pr);
    return;
  }
  const int64_t h = nz_head(o, L);
  int64_t i = 0;
  for (; i < h; ++i) o[i] = a * (g[i] - md - (p[i] - m) * pr);
  for (; i + NZ_VL <= L; i += NZ_VL)
    nz_store(o + i, a * (nz_load(g + i) - md - (nz_load(p + i) - m) * pr));
  for (; i < L; ++i) o[i] = a * (g[i] - md - (p[i] - m) * pr);
}

/* The bfloat16 rows' helpers: row_moments, map_line and dx_line on uint16_t bits, each value
 * widened as it is loaded, each output rounded once (the compiled loops: no line stores). */
static inline void row_moments_bf16(const uint16_t *p, int64_t L, float k, double *s1,
                                    double *s2) {
  float r1 = 0.f, r2 = 0.f;
  if (L < NZ_LINE_MIN) {
    for (int64_t j = nz_short_sums_bf16(p, L, k, &r1, &r2); j < L; ++j) {
      const float d = nz_bf16_load(p[j]) - k;
      r1 += d;
      r2 += d * d;
    }
  } else { /* long rows: the compiled loop (its reduction's cost shared by many values) */
#pragma omp simd reduction(+ : r1, r2)
    for (int64_t j = 0; j < L; ++j) {
      const float d = nz_bf16_load(p[j]) - k;
      r1 += d;
      r2 += d * d;
    }
  }
  *s1 += r1;
  *s2 += r2;
}

static inline void map_line_bf16(const uint16_t *p, uint16_t *o, int64_t n, float sc, float sh,
                                 int relu) {
  if (relu) {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) {
      const float v = nz_bf16_load(p[i]) * sc + sh;
      o[i] = nz_bf16_store(v < 0.f ? 0.f : v); /* a NaN kept, as torch.relu keeps it */
    }
  } else {
#pragma omp simd
    for (int64_t i = 0; i < n; ++i) o[i] = nz_bf16_store(nz_bf16_load(p[i]) * sc + sh);
  }
}

static inline void dx_line_bf16(const uint16_t *g, const uint16_t *p, uint16_t *o, int64_t L,
                                float a, float md, float m, float pr) {
#pragma omp simd
  for (int64_t i = 0; i < L; ++i)
    o[i] = nz_bf16_store(a * (nz_bf16_load(g[i]) - md - (nz_bf16_load(p[i]) - m) * pr));
}

/* ---------------------------------------------------------------- channels_last ----------
 * The same batch norm over a float32 tensor in channels_last (or channels_last_3d) memory:
 * R = N * spatial rows of C contiguous channels, element (r, c) at r * C + c. A channel's
 * values are strided, so the kernels run over blocks of rows, each inner loop a contiguous
 * run of channels (SIMD over c):
 *
 *   1. each block's per-channel partial sums, into the workspace (float lanes over
 *      NZ_CL_CHUNK rows, flushed into double);
 *   2. the totals, adding the blocks' partials in block order;
 *   3. the elementwise map over the same blocks (y, or dx).
 *
 * Blocks have at least NZ_CL_MIN_ROWS rows and there are at most `max_blocks` of them (the
 * workspace's size, 2 * max_blocks * C doubles): the partition depends on R and max_blocks
 * only, never on the thread count, so results are bitwise the same for any thread count.
 * Forward moments are shifted by the first row's value (as above); backward sums are
 * sum(dy) and sum(dy (x - mean)), with the formulas of the contiguous kernels.
 */
#define NZ_CL_CB 256      /* channels per inner run (stack arrays) */
#define NZ_CL_CHUNK 32    /* rows summed in float lanes before the double flush */
#define NZ_CL_MIN_ROWS 128 /* rows per block, at least */
#define NZ_CL_TILE 32     /* channels whose float sums stay in registers */

/* Rows per block: at most max_blocks blocks of at least NZ_CL_MIN_ROWS rows, evenly filled. */
static int64_t cl_block_rows(int64_t R, int64_t max_blocks) {
  int64_t blocks = (R + NZ_CL_MIN_ROWS - 1) / NZ_CL_MIN_ROWS;
  if (blocks > max_blocks) blocks = max_blocks;
  if (blocks < 1) blocks = 1;
  const int64_t rows = (R + blocks - 1) / blocks;
  return rows < 1 ? 1 : rows;
}

/* ---------------------------------------------------------------- ghost batch norm ----- *
 * Ghost batch norm over (N, C) tokens, every virtual batch in one call: ghost_rows.h, built
 * for float32 (nz_ghost_*_rows) and bfloat16 (nz_ghost_*_rows_bf16). A task is (virtual
 * batch j, block of NZ_GHOST_BLOCK channels from c0): its W channels of the n rows from r0. */
#define NZ_GHOST_BLOCK 256 /* channels per task: NZ_GHOST_BLOCK / NZ_CL_TILE tiles */
NZ_INLINE void ghost_task(int64_t t, int64_t nt, int64_t R, int64_t C, int64_t B, int64_t *j,
                          int64_t *c0, int64_t *W, int64_t *r0, int64_t *n) {
  *j = t / nt;
  *c0 = (t % nt) * NZ_GHOST_BLOCK;
  *W = C - *c0 < NZ_GHOST_BLOCK ? C - *c0 : NZ_GHOST_BLOCK;
  *r0 = *j * B;
  *n = R - *r0 < B ? R - *r0 : B;
}

/* dw and db (either may be NULL) from the virtual batches' (V, 2, C) parts, added in order in
 * double: a worksharing loop for the threads of the enclosing parallel region. */
NZ_INLINE void ghost_sum_parts(const float *part, int64_t V, int64_t C, float *dw, float *db) {
  if (!dw && !db) return;
#pragma omp for schedule(static)
  for (int64_t c = 0; c < C; ++c) {
    double tw = 0.0, tb = 0.0;
    for (int64_t j = 0; j < V; ++j) {
      tw += part[j * 2 * C + c];
      tb += part[(j * 2 + 1) * C + c];
    }
    if (dw) dw[c] = (float)tw;
    if (db) db[c] = (float)tb;
  }
}

/* ---------------------------------------------------------------- per element type ---- *
 * The kernels written once for an element type (bn_kernels.h: the contiguous blocks, the
 * channels_last tiles and kernels, Ghost BN's rows), built for float32 under their own names
 * and for bfloat16 (x, y, dy, dx as uint16_t bits, nz_bf16.h) with _bf16 appended. */
/* NZ_VLD(p): NZ_VL elements widened to an nz_vf; NZ_SHORT_ROW(L): the backward's row sums
 * in explicit vectors (bn_block.h's row_grad_sums) below NZ_LINE_MIN values, the compiled
 * loop from there (its reduction's cost shared by many values: 1.03-1.08x faster there). */
#define NZ_T float
#define NZ_LD(v) (v)
#define NZ_ST(v) (v)
#define NZ_VLD(p) nz_load(p)
#define NZ_SHORT_ROW(L) ((L) < NZ_LINE_MIN)
#define NZ_FN(name) name
#include "bn_kernels.h"
#undef NZ_T
#undef NZ_LD
#undef NZ_ST
#undef NZ_VLD
#undef NZ_SHORT_ROW
#undef NZ_FN

#define NZ_T uint16_t
#define NZ_LD(v) nz_bf16_load(v)
#define NZ_ST(v) nz_bf16_store(v)
#define NZ_VLD(p) nz_load_bf16(p)
#define NZ_SHORT_ROW(L) ((L) < NZ_LINE_MIN)
#define NZ_FN(name) name##_bf16
#include "bn_kernels.h"
#undef NZ_T
#undef NZ_LD
#undef NZ_ST
#undef NZ_VLD
#undef NZ_SHORT_ROW
#undef NZ_FN

/* Ghost batch norm of a contiguous (N, C, L) tensor, every virtual batch in one call: virtual
 * batch j is the samples [j B, min((j + 1) B, N)), a contiguous (n, C, L) tensor of its own,
 * normalized as nz_bn_forward normalizes it (the same blocks of channels, the same bits). A
 * task is (virtual batch, block of channels). stats: (V, 2, C), each virtual batch's mean and
 * invstd; var: (V, C) biased, or NULL. The backward's part (V, 2, C) holds each virtual batch's
 * dw and db, added over the virtual batches in order (double). dx, dw, db may be NULL. */
/* Task t of (virtual batch j, block of bc channels from c0): its k channels, the virtual
 * batch's n samples (the last may be fewer than B), its offset into the tensor. */
NZ_INLINE void ghost_block_task(int64_t t, int64_t blocks, int64_t bc, int64_t N, int64_t C,
                                int64_t L, int64_t B, int64_t *j, int64_t *c0, int64_t *k,
                                int64_t *n, int64_t *off) {
  *j = t / blocks;
  *c0 = (t % blocks) * bc;
  *k = C - *c0 < bc ? C - *c0 : bc;
  *n = N - *j * B < B ? N - *j * B : B;
  *off = *j * B * C * L;
}

void nz_ghost_forward(const float *x, const float *w, const float *b, float *y, float *stats,
                      float *var, int64_t N, int64_t C, int64_t L, int64_t B, double eps,
                      int threads) {
  const int64_t V = (N + B - 1) / B, bc = block_channels(B, C, L, threads);
  const int64_t blocks = (C + bc - 1) / bc;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t t = 0; t < V * blocks; ++t) {
    int64_t j, c0, k, n, off;
    ghost_block_task(t, blocks, bc, N, C, L, B, &j, &c0, &k, &n, &off);
    bn_forward_block(x + off, w, b, y + off, stats + j * 2 * C, stats + (j * 2 + 1) * C,
                     var ? var + j * C : NULL, n, C, L, c0, k, eps, 0, NULL);
  }
}

void nz_ghost_backward(const float *dy, const float *x, const float *w, const float *stats,
                       float *dx, float *dw, float *db, float *part, int64_t N, int64_t C,
                       int64_t L, int64_t B, int threads) {
  const int64_t V = (N + B - 1) / B, bc = block_channels(B, C, L, threads);
  const int64_t blocks = (C + bc - 1) / bc;
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < V * blocks; ++t) {
      int64_t j, c0, k, n, off;
      ghost_block_task(t, blocks, bc, N, C, L, B, &j, &c0, &k, &n, &off);
      bn_backward_block(dy + off, x + off, w, NULL, stats + j * 2 * C, stats + (j * 2 + 1) * C,
                        dx ? dx + off : NULL, part + j * 2 * C, part + (j * 2 + 1) * C, n, C, L,
                        c0, k, 0);
    }
    ghost_sum_parts(part, V, C, dw, db);
  }
}

/* The same ghost batch norm of a contiguous bfloat16 (N, C, L) tensor (x, y, dy, dx as their
 * uint16_t bits, nz_bf16.h; w, b, stats, var, dw, db float32) on the blocks' bfloat16 build
 * (bn_block.h): each value widened as it is loaded, BatchNorm's formulas in float (double for
 * the sums), each output rounded once. */
void nz_ghost_forward_bf16(const uint16_t *x, const float *w, const float *b, uint16_t *y,
                           float *stats, float *var, int64_t N, int64_t C, int64_t L, int64_t B,
                           double eps, int threads) {
  const int64_t V = (N + B - 1) / B, bc = block_channels(B, C, L, threads);
  const int64_t blocks = (C + bc - 1) / bc;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t t = 0; t < V * blocks; ++t) {
    int64_t j, c0, k, n, off;
    ghost_block_task(t, blocks, bc, N, C, L, B, &j, &c0, &k, &n, &off);
    bn_forward_block_bf16(x + off, w, b, y + off, stats + j * 2 * C, stats + (j * 2 + 1) * C,
                          var ? var + j * C : NULL, n, C, L, c0, k, eps, 0, NULL);
  }
}

void nz_ghost_backward_bf16(const uint16_t *dy, const uint16_t *x, const float *w,
                            const float *stats, uint16_t *dx, float *dw, float *db, float *part,
                            int64_t N, int64_t C, int64_t L, int64_t B, int threads) {
  const int64_t V = (N + B - 1) / B, bc = block_channels(B, C, L, threads);
  const int64_t blocks = (C + bc - 1) / bc;
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t t = 0; t < V * blocks; ++t) {
      int64_t j, c0, k, n, off;
      ghost_block_task(t, blocks, bc, N, C, L, B, &j, &c0, &k, &n, &off);
      bn_backward_block_bf16(dy + off, x + off, w, NULL, stats + j * 2 * C,
                             stats + (j * 2 + 1) * C, dx ? dx + off : NULL, part + j * 2 * C,
                             part + (j * 2 + 1) * C, n, C, L, c0, k, 0);
    }
    ghost_sum_parts(part, V, C, dw, db);
  }
}
