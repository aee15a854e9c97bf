/* Batch norm over a contiguous float32 (N, C, L) tensor, one channel at a time.
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
 * Any of w, b, var (forward) and dx, dw, db (backward) may be NULL.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

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

/* sum(p - k) and sum((p - k)^2) over one row, float SIMD lanes (rows are short). */
static inline void row_moments(const float *p, int64_t L, float k, double *s1, double *s2) {
  float r1 = 0.f, r2 = 0.f;
#pragma omp simd reduction(+ : r1, r2)
  for (int64_t i = 0; i < L; ++i) {
    const float d = p[i] - k;
    r1 += d;
    r2 += d * d;
  }
  *s1 += r1;
  *s2 += r2;
}

void nz_bn_forward(const float *x, const float *w, const float *b, float *y, float *mean_out,
                   float *invstd_out, float *var_out, int64_t N, int64_t C, int64_t L,
                   double eps, int threads) {
  const int64_t bc = block_channels(N, C, L, threads);
  const int64_t blocks = (C + bc - 1) / bc;
  const double M = (double)N * (double)L;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t c0 = blk * bc, c1 = c0 + bc < C ? c0 + bc : C, k = c1 - c0;
    /* shifted one-pass moments, shift = the channel's first value: no cancellation (Chan,
     * Golub and LeVeque, "Algorithms for computing the sample variance", 1983) */
    double s1[NZ_MAX_BLOCK], s2[NZ_MAX_BLOCK];
    float shift0[NZ_MAX_BLOCK], m[NZ_MAX_BLOCK], scale[NZ_MAX_BLOCK], shift[NZ_MAX_BLOCK];
    for (int64_t j = 0; j < k; ++j) {
      s1[j] = s2[j] = 0.0;
      shift0[j] = N > 0 && L > 0 ? x[(c0 + j) * L] : 0.f;
    }
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 0; j < k; ++j)
        row_moments(x + (n * C + c0 + j) * L, L, shift0[j], &s1[j], &s2[j]);
    for (int64_t j = 0; j < k; ++j) {
      const int64_t c = c0 + j;
      const double dm = s1[j] / M;
      double var = s2[j] / M - dm * dm;
      if (var < 0.0) var = 0.0;
      m[j] = (float)(shift0[j] + dm);
      const float inv = (float)(1.0 / sqrt(var + eps));
      scale[j] = w ? w[c] * inv : inv;
      shift[j] = (b ? b[c] : 0.f) - m[j] * scale[j];
      mean_out[c] = m[j];
      invstd_out[c] = inv;
      if (var_out) var_out[c] = (float)var;
    }
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 0; j < k; ++j) {
        const float *p = x + (n * C + c0 + j) * L;
        float *o = y + (n * C + c0 + j) * L;
        const float sc = scale[j], sh = shift[j];
#pragma omp simd
        for (int64_t i = 0; i < L; ++i) o[i] = p[i] * sc + sh;
      }
  }
}

void nz_bn_backward(const float *dy, const float *x, const float *w, const float *mean,
                    const float *invstd, float *dx, float *dw, float *db, int64_t N, int64_t C,
                    int64_t L, int threads) {
  const int64_t bc = block_channels(N, C, L, threads);
  const int64_t blocks = (C + bc - 1) / bc;
  const double M = (double)N * (double)L;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t c0 = blk * bc, c1 = c0 + bc < C ? c0 + bc : C, k = c1 - c0;
    double s_dy[NZ_MAX_BLOCK], s_dyx[NZ_MAX_BLOCK];
    for (int64_t j = 0; j < k; ++j) s_dy[j] = s_dyx[j] = 0.0;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 0; j < k; ++j) {
        const float *g = dy + (n * C + c0 + j) * L;
        const float *p = x + (n * C + c0 + j) * L;
        const float m = mean[c0 + j];
        float r1 = 0.f, r2 = 0.f;
#pragma omp simd reduction(+ : r1, r2)
        for (int64_t i = 0; i < L; ++i) {
          r1 += g[i];
          r2 += g[i] * (p[i] - m);
        }
        s_dy[j] += r1;
        s_dyx[j] += r2;
      }
    for (int64_t j = 0; j < k; ++j) {
      if (dw) dw[c0 + j] = (float)(s_dyx[j] * invstd[c0 + j]);
      if (db) db[c0 + j] = (float)s_dy[j];
    }
    if (!dx) continue;
    float kk[NZ_MAX_BLOCK], mean_dy[NZ_MAX_BLOCK], proj[NZ_MAX_BLOCK];
    for (int64_t j = 0; j < k; ++j) {
      const int64_t c = c0 + j;
      const float inv = invstd[c];
      kk[j] = (w ? w[c] : 1.f) * inv;
      mean_dy[j] = (float)(s_dy[j] / M);
      proj[j] = (float)(s_dyx[j] / M) * inv * inv;
    }
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 0; j < k; ++j) {
        const float *g = dy + (n * C + c0 + j) * L;
        const float *p = x + (n * C + c0 + j) * L;
        float *o = dx + (n * C + c0 + j) * L;
        const float m = mean[c0 + j], a = kk[j], md = mean_dy[j], pr = proj[j];
#pragma omp simd
        for (int64_t i = 0; i < L; ++i) o[i] = a * (g[i] - md - (p[i] - m) * pr);
      }
  }
}
