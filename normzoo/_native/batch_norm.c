/* Batch norm over a contiguous float32 (N, C, L) tensor, one channel at a time.
 *
 * Each thread takes whole channels. A channel's N rows of L values are read for the mean,
 * read again (now from the core's cache) for the variance, and a third time for y; the
 * backward reads x and dy once for its two sums and again (from cache) for dx. Row sums
 * are float SIMD lanes, channel totals double, as precise as torch's kernel.
 *
 *   forward:  y = (x - mean) * invstd * w + b,  invstd = 1 / sqrt(var + eps), var biased
 *   backward: dx = w invstd (dy - mean(dy) - xhat mean(dy xhat)),
 *             dw = sum(dy xhat), db = sum(dy),  xhat = (x - mean) invstd
 * Any of w, b (forward) and dx, dw, db (backward) may be NULL.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

void nz_bn_forward(const float *x, const float *w, const float *b, float *y, float *mean_out,
                   float *invstd_out, float *var_out, int64_t N, int64_t C, int64_t L,
                   double eps, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t c = 0; c < C; ++c) {
    const double M = (double)N * (double)L;
    double s = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      const float *p = x + (n * C + c) * L;
      float r = 0.f;
#pragma omp simd reduction(+ : r)
      for (int64_t i = 0; i < L; ++i) r += p[i];
      s += r;
    }
    const float m = (float)(s / M);
    double q = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      const float *p = x + (n * C + c) * L;
      float r = 0.f;
#pragma omp simd reduction(+ : r)
      for (int64_t i = 0; i < L; ++i) {
        const float d = p[i] - m;
        r += d * d;
      }
      q += r;
    }
    const double var = q / M;
    const float inv = (float)(1.0 / sqrt(var + eps));
    const float scale = w ? w[c] * inv : inv;
    const float shift = (b ? b[c] : 0.f) - m * scale;
    for (int64_t n = 0; n < N; ++n) {
      const float *p = x + (n * C + c) * L;
      float *o = y + (n * C + c) * L;
#pragma omp simd
      for (int64_t i = 0; i < L; ++i) o[i] = p[i] * scale + shift;
    }
    mean_out[c] = m;
    invstd_out[c] = inv;
    var_out[c] = (float)var;
  }
}

void nz_bn_backward(const float *dy, const float *x, const float *w, const float *mean,
                    const float *invstd, float *dx, float *dw, float *db, int64_t N, int64_t C,
                    int64_t L, int threads) {
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t c = 0; c < C; ++c) {
    const float m = mean[c], inv = invstd[c];
    double sum_dy = 0.0, sum_dy_xmu = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      const float *g = dy + (n * C + c) * L;
      const float *p = x + (n * C + c) * L;
      float r1 = 0.f, r2 = 0.f;
#pragma omp simd reduction(+ : r1, r2)
      for (int64_t i = 0; i < L; ++i) {
        r1 += g[i];
        r2 += g[i] * (p[i] - m);
      }
      sum_dy += r1;
      sum_dy_xmu += r2;
    }
    if (dw) dw[c] = (float)(sum_dy_xmu * inv);
    if (db) db[c] = (float)sum_dy;
    if (!dx) continue;
    const double M = (double)N * (double)L;
    const float k = (w ? w[c] : 1.f) * inv;
    const float mean_dy = (float)(sum_dy / M);
    const float proj = (float)(sum_dy_xmu / M) * inv * inv;
    for (int64_t n = 0; n < N; ++n) {
      const float *g = dy + (n * C + c) * L;
      const float *p = x + (n * C + c) * L;
      float *o = dx + (n * C + c) * L;
#pragma omp simd
      for (int64_t i = 0; i < L; ++i) o[i] = k * (g[i] - mean_dy - (p[i] - m) * proj);
    }
  }
}
