/* Normalization of contiguous rows with a per-channel affine map: GroupNorm, and with it
 * InstanceNorm (one channel per group) and channels-first LayerNorm (one group).
 *
 * x is a contiguous float32 (N, C, L) tensor, C = G * Cg; row (n, g) is the Cg * L values of
 * sample n in group g, contiguous. Each thread takes whole rows: a row is read from memory
 * once for its mean and variance (shifted one-pass moments), then from the core's cache for
 * y (rows up to the L2 size); the backward reads x and dy once for its sums and again from cache for dx.
 * Sums run in float SIMD lanes over chunks of at most NZ_CHUNK values, totals in double.
 *
 *   forward:  y = (x - mean) * rstd * w[c] + b[c],  rstd = 1 / sqrt(var + eps), var biased
 *   backward: xhat = (x - mean) rstd,  dxhat = w[c] dy,
 *             dx = rstd (dxhat - mean(dxhat) - xhat mean(dxhat xhat))   (means over the row)
 *             dw[c] = sum_{n, l} dy xhat,  db[c] = sum_{n, l} dy
 * w, b, var (forward) and dx, dw, db (backward) may be NULL.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

#define NZ_CHUNK 1024

/* Shifted moments of p[0..n): sum(p - k) and sum((p - k)^2) with the shift k = p[0] (a value
 * of the row, so (mean - k)^2 is of the order of the variance and the one-pass formula
 * var = E[(p - k)^2] - E[p - k]^2 loses no precision to cancellation; see Chan, Golub and
 * LeVeque, "Algorithms for computing the sample variance", 1983). */
static void shifted_moments(const float *p, int64_t n, float k, double *s1, double *s2) {
  double t1 = 0.0, t2 = 0.0;
  for (int64_t s = 0; s < n; s += NZ_CHUNK) {
    const int64_t e = s + NZ_CHUNK < n ? s + NZ_CHUNK : n;
    float r1 = 0.f, r2 = 0.f;
#pragma omp simd reduction(+ : r1, r2)
    for (int64_t i = s; i < e; ++i) {
      const float d = p[i] - k;
      r1 += d;
      r2 += d * d;
    }
    t1 += r1;
    t2 += r2;
  }
  *s1 = t1;
  *s2 = t2;
}

void nz_row_forward(const float *x, const float *w, const float *b, float *y, float *mean_out,
                    float *rstd_out, float *var_out, int64_t N, int64_t G, int64_t Cg,
                    int64_t L, double eps, int threads) {
  const int64_t D = Cg * L, rows = N * G;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t r = 0; r < rows; ++r) {
    const float *p = x + r * D;
    float *o = y + r * D;
    const float k = D > 0 ? p[0] : 0.f;
    double s1, s2;
    shifted_moments(p, D, k, &s1, &s2);
    const double dm = s1 / (double)D;
    double var = s2 / (double)D - dm * dm;
    if (var < 0.0) var = 0.0;
    const float m = (float)(k + dm);
    const float rstd = (float)(1.0 / sqrt(var + eps));
    const int64_t c0 = (r % G) * Cg;
    for (int64_t j = 0; j < Cg; ++j) {
      const float sc = w ? w[c0 + j] * rstd : rstd;
      const float sh = (b ? b[c0 + j] : 0.f) - m * sc;
      const float *pj = p + j * L;
      float *oj = o + j * L;
#pragma omp simd
      for (int64_t i = 0; i < L; ++i) oj[i] = pj[i] * sc + sh;
    }
    mean_out[r] = m;
    rstd_out[r] = rstd;
    if (var_out) var_out[r] = (float)var;
  }
}

/* partial: scratch of 2 * N * C floats (per sample and channel: sum dy, sum dy xhat). */
void nz_row_backward(const float *dy, const float *x, const float *w, const float *mean,
                     const float *rstd, float *dx, float *dw, float *db, float *partial,
                     int64_t N, int64_t G, int64_t Cg, int64_t L, int threads) {
  const int64_t D = Cg * L, rows = N * G, C = G * Cg;
  float *p_dy = partial, *p_dyx = partial + N * C;
#pragma omp parallel num_threads(threads)
  {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float *g = dy + r * D;
      const float *p = x + r * D;
      const float m = mean[r], rs = rstd[r];
      const int64_t n = r / G, c0 = (r % G) * Cg;
      double a = 0.0, bsum = 0.0; /* sum w dy, sum w dy (x - m) */
      for (int64_t j = 0; j < Cg; ++j) {
        const float *gj = g + j * L, *pj = p + j * L;
        double s1 = 0.0, s2 = 0.0;
        for (int64_t s = 0; s < L; s += NZ_CHUNK) {
          const int64_t e = s + NZ_CHUNK < L ? s + NZ_CHUNK : L;
          float r1 = 0.f, r2 = 0.f;
#pragma omp simd reduction(+ : r1, r2)
          for (int64_t i = s; i < e; ++i) {
            r1 += gj[i];
            r2 += gj[i] * (pj[i] - m);
          }
          s1 += r1;
          s2 += r2;
        }
        const float wc = w ? w[c0 + j] : 1.f;
        a += wc * s1;
        bsum += wc * s2;
        p_dy[n * C + c0 + j] = (float)s1;
        p_dyx[n * C + c0 + j] = (float)(s2 * rs);
      }
      if (!dx) continue;
      const float mean_dxhat = (float)(a / (double)D);
      const float proj = (float)(bsum / (double)D) * rs * rs; /* mean(dxhat xhat) rstd */
      float *o = dx + r * D;
      for (int64_t j = 0; j < Cg; ++j) {
        const float wc = w ? w[c0 + j] : 1.f;
        const float *gj = g + j * L, *pj = p + j * L;
        float *oj = o + j * L;
#pragma omp simd
        for (int64_t i = 0; i < L; ++i) oj[i] = rs * (wc * gj[i] - mean_dxhat - (pj[i] - m) * proj);
      }
    }
    if (dw || db) {
#pragma omp for schedule(static)
      for (int64_t c = 0; c < C; ++c) {
        double s1 = 0.0, s2 = 0.0;
        for (int64_t n = 0; n < N; ++n) {
          s1 += p_dy[n * C + c];
          s2 += p_dyx[n * C + c];
        }
        if (db) db[c] = (float)s1;
        if (dw) dw[c] = (float)s2;
      }
    }
  }
}
