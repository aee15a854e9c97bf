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
 *
 * The _relu variants fuse a ReLU after the affine map (timm's norm-act layers):
 *   forward:  y = max(pre, 0),  pre = (x - mean) rstd w[c] + b[c]
 *   backward: dy is replaced by dy [pre > 0] (pre recomputed from x, the saved mean and rstd,
 *             w and b, by the forward's own expression, so the mask is bit for bit the
 *             forward's), then the backward above.
 * This saves the separate ReLU's passes over the tensor (forward: read y, write; backward:
 * read dy and y, write), the activation's share of a conv-norm-ReLU block.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <omp.h>
#include <stdlib.h>

#include "nz_simd.h"

#define NZ_CHUNK 1024

/* nz_vf and its helpers: nz_simd.h */
#define NZ_NV 4  /* nz_vf per tile */
#define NZ_TILE (NZ_VL * NZ_NV)

typedef float nz_vh __attribute__((vector_size(32)));
typedef double nz_vd __attribute__((vector_size(64)));

/* sum(p - k) and sum((p - k)^2) over p[0..n), n <= NZ_CHUNK, in float lanes, added (in
 * double) to *t1 and *t2: a row's moments are its chunks', added in order. */
static inline void moments_chunk(const float *p, int64_t n, float k, double *t1, double *t2) {
  float r1, r2;
  int64_t i = nz_shifted_sums(p, n, k, &r1, &r2);
  for (; i < n; ++i) {
    const float d = p[i] - k;
    r1 += d;
    r2 += d * d;
  }
  *t1 += r1;
  *t2 += r2;
}

/* Shifted moments of p[0..n): sum(p - k) and sum((p - k)^2) with the shift k = p[0] (a value
 * of the row, so (mean - k)^2 is of the order of the variance and the one-pass formula
 * var = E[(p - k)^2] - E[p - k]^2 loses no precision to cancellation; see Chan, Golub and
 * LeVeque, "Algorithms for computing the sample variance", 1983). */
static void shifted_moments(const float *p, int64_t n, float k, double *s1, double *s2) {
  double t1 = 0.0, t2 = 0.0;
  for (int64_t s = 0; s < n; s += NZ_CHUNK)
    moments_chunk(p + s, (s + NZ_CHUNK < n ? s + NZ_CHUNK : n) - s, k, &t1, &t2);
  *s1 = t1;
  *s2 = t2;
}

/* Channel c's affine map of the normalized row: pre = x sc + sh. The forward and the fused
 * ReLU's backward mask both compute it through these, so they agree to the bit. */
static inline float row_scale(const float *w, int64_t c, float rstd) {
  return w ? w[c] * rstd : rstd;
}
static inline float row_shift(const float *b, int64_t c, float m, float sc) {
  return (b ? b[c] : 0.f) - m * sc;
}

/* The map of values [s, e) of row p (channels c0 + s / L, ...): o = p sc + sh per channel, in
 * whole cache lines at every length (measured faster for short channels too). */
static inline void map_span(const float *p, float *o, const float *w, const float *b, int64_t c0,
                            int64_t L, int64_t s, int64_t e, float m, float rstd, int relu) {
  for (int64_t j = s / L; j * L < e; ++j) {
    const float sc = row_scale(w, c0 + j, rstd), sh = row_shift(b, c0 + j, m, sc);
    const int64_t i0 = j * L > s ? j * L : s, i1 = (j + 1) * L < e ? (j + 1) * L : e;
    nz_map_lines(p + i0, o + i0, i1 - i0, sc, sh, relu); /* whole lines (nz_simd.h) */
  }
}

/* Rows of at least NZ_PIPE_MIN values, longer than an L1 cache: a thread maps its rows one
 * after the other, summing the next row's chunks as it maps this one's, so the next row's
 * reads from memory overlap the map's reads of this one from the L2 cache (LayerNorm on
 * (32, 64, 32, 32), 2 threads: the forward kernel 12-22% faster; scripts/bench_kernel_ab.py).
 * The sums per row are those of shifted_moments, chunk by chunk in order: the same result as
 * one row at a time. Shorter rows, one at a time: the map reads the row from L1, and
 * interleaving measured up to 10% slower there. */
#define NZ_PIPE_MIN 16384
static void row_forward(const float *x, const float *w, const float *b, float *y,
                        float *mean_out, float *rstd_out, float *var_out, int64_t N, int64_t G,
                        int64_t Cg, int64_t L, double eps, int relu, int threads) {
  const int64_t D = Cg * L, rows = N * G;
  if (D < NZ_PIPE_MIN) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float *p = x + r * D;
      const float k = D > 0 ? p[0] : 0.f;
      double s1, s2;
      shifted_moments(p, D, k, &s1, &s2);
      const double dm = s1 / (double)D;
      double var = s2 / (double)D - dm * dm;
      if (var < 0.0) var = 0.0;
      const float m = (float)(k + dm);
      const float rstd = (float)(1.0 / sqrt(var + eps));
      map_span(p, y + r * D, w, b, (r % G) * Cg, L, 0, D, m, rstd, relu);
      mean_out[r] = m;
      rstd_out[r] = rstd;
      if (var_out) var_out[r] = (float)var;
    }
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    const int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
    const int64_t r0 = rows * t / T, r1 = rows * (t + 1) / T;
    double s1 = 0.0, s2 = 0.0;
    float k = r0 < r1 && D > 0 ? x[r0 * D] : 0.f;
    if (r0 < r1) shifted_moments(x + r0 * D, D, k, &s1, &s2);
    for (int64_t r = r0; r < r1; ++r) {
      const float *p = x + r * D;
      float *o = y + r * D;
      const double dm = s1 / (double)D;
      double var = s2 / (double)D - dm * dm;
      if (var < 0.0) var = 0.0;
      const float m = (float)(k + dm);
      const float rstd = (float)(1.0 / sqrt(var + eps));
      mean_out[r] = m;
      rstd_out[r] = rstd;
      if (var_out) var_out[r] = (float)var;
      /* the next row's sums, chunk by chunk with this row's map */
      const float *pn = r + 1 < r1 ? p + D : NULL;
      s1 = s2 = 0.0;
      k = pn && D > 0 ? pn[0] : 0.f;
      const int64_t c0 = (r % G) * Cg;
      for (int64_t s = 0; s < D; s += NZ_CHUNK) {
        const int64_t e = s + NZ_CHUNK < D ? s + NZ_CHUNK : D;
        map_span(p, o, w, b, c0, L, s, e, m, rstd, relu);
        if (pn) moments_chunk(pn + s, e - s, k, &s1, &s2);
      }
    }
  }
}

void nz_row_forward(const float *x, const float *w, const float *b, float *y, float *mean_out,
                    float *rstd_out, float *var_out, int64_t N, int64_t G, int64_t Cg,
                    int64_t L, double eps, int threads) {
  row_forward(x, w, b, y, mean_out, rstd_out, var_out, N, G, Cg, L, eps, 0, threads);
}

void nz_row_relu_forward(const float *x, const float *w, const float *b, float *y,
                         float *mean_out, float *rstd_out, float *var_out, int64_t N, int64_t G,
                         int64_t Cg, int64_t L, double eps, int threads) {
  row_forward(x, w, b, y, mean_out, rstd_out, var_out, N, G, Cg, L, eps, 1, threads);
}

/* dbias[c] = sum_n partial[0][n][c] and dweight[c] = sum_n partial[1][n][c] (sums of dy and of
 * dy xhat per sample and channel), in double; shares its caller's threads (an orphaned
 * `omp for`: called inside a parallel region). */
static void affine_grads(const float *partial, float *dw, float *db, int64_t N, int64_t C) {
  /* channels in blocks of NZ_VL, each summed over n in order (as one channel at a time
   * would), with the samples' rows read along their length */
#pragma omp for schedule(static)
  for (int64_t c0 = 0; c0 < C; c0 += NZ_VL) {
    const int64_t nc = C - c0 < NZ_VL ? C - c0 : NZ_VL;
    double s1[NZ_VL] = {0.0}, s2[NZ_VL] = {0.0};
    for (int64_t n = 0; n < N; ++n) {
      const float *p1 = partial + n * C + c0, *p2 = partial + N * C + n * C + c0;
#pragma omp simd
      for (int64_t j = 0; j < nc; ++j) {
        s1[j] += p1[j];
        s2[j] += p2[j];
      }
    }
    for (int64_t j = 0; j < nc; ++j) {
      if (db) db[c0 + j] = (float)s1[j];
      if (dw) dw[c0 + j] = (float)s2[j];
    }
  }
}

typedef float nz_v8 __attribute__((vector_size(32)));

static inline nz_v8 nz_load8(const float *p) {
  nz_v8 v;
  __builtin_memcpy(&v, p, sizeof v);
  return v;
}

/* [a0+a1, a2+a3, b0+b1, b2+b3, a4+a5, a6+a7, b4+b5, b6+b7] */
static inline nz_v8 nz_hadd8(nz_v8 a, nz_v8 b) {
  return __builtin_shufflevector(a, b, 0, 2, 8, 10, 4, 6, 12, 14) +
         __builtin_shufflevector(a, b, 1, 3, 9, 11, 5, 7, 13, 15);
}

/* The lane sums of v[0..8), as the lanes of one vector. */
static inline nz_v8 nz_sum8x8(const nz_v8 *v) {
  const nz_v8 q0 = nz_hadd8(nz_hadd8(v[0], v[1]), nz_hadd8(v[2], v[3]));
  const nz_v8 q1 = nz_hadd8(nz_hadd8(v[4], v[5]), nz_hadd8(v[6], v[7]));
  return __builtin_shufflevector(q0, q1, 0, 1, 2, 3, 8, 9, 10, 11) +
         __builtin_shufflevector(q0, q1, 4, 5, 6, 7, 12, 13, 14, 15);
}

/* For eight consecutive channels of L values (g, p at their first): t1 = sum g and
 * t2 = sum g (p - m) per channel. */
static void sums8(const float *g, const float *p, int64_t L, float m, float *t1, float *t2) {
  nz_v8 a1[8], a2[8];
  for (int k = 0; k < 8; ++k) a1[k] = a2[k] = (nz_v8){0};
  const int64_t body = L - L % 8;
  for (int64_t i = 0; i < body; i += 8)
    for (int k = 0; k < 8; ++k) {
      const nz_v8 d = nz_load8(g + k * L + i);
      a1[k] += d;
      a2[k] += d * (nz_load8(p + k * L + i) - m);
    }
  nz_v8 r1 = nz_sum8x8(a1), r2 = nz_sum8x8(a2);
  for (int k = 0; k < 8; ++k)
    for (int64_t i = body; i < L; ++i) {
      r1[k] += g[k * L + i];
      r2[k] += g[k * L + i] * (p[k * L + i] - m);
    }
  __builtin_memcpy(t1, &r1, sizeof r1);
  __builtin_memcpy(t2, &r2, sizeof r2);
}

/* dy [pre > 0] of row (p, g) into out (D = Cg L values): the fused ReLU's gradient mask, with
 * pre computed as the forward computed it (row_scale, row_shift, x sc + sh). */
static void relu_mask_row(const float *g, const float *p, const float *w, const float *b,
                          int64_t c0, int64_t Cg, int64_t L, float m, float rs, float *out) {
  for (int64_t j = 0; j < Cg; ++j) {
    const float sc = row_scale(w, c0 + j, rs), sh = row_shift(b, c0 + j, m, sc);
    const float *gj = g + j * L, *pj = p + j * L;
    float *oj = out + j * L;
#pragma omp simd
    for (int64_t i = 0; i < L; ++i) oj[i] = pj[i] * sc + sh <= 0.f ? 0.f : gj[i];
  }
}

/* partial: scratch of 2 * N * C floats (per sample and channel: sum dy, sum dy xhat).
 * mask: NULL, or the fused ReLU's scratch of threads * Cg * L floats (b its bias). */
static void row_backward(const float *dy, const float *x, const float *w, const float *b,
                         const float *mean, const float *rstd, float *dx, float *dw, float *db,
                         float *partial, float *mask, int64_t N, int64_t G, int64_t Cg,
                         int64_t L, int threads) {
  const int64_t D = Cg * L, rows = N * G, C = G * Cg;
  float *p_dy = partial, *p_dyx = partial + N * C;
#pragma omp parallel num_threads(threads)
  {
    /* this thread's masked dy: one row, written and read back while in its cache */
    float *own = mask ? mask + (int64_t)omp_get_thread_num() * D : NULL;
#pragma omp for schedule(static)
    for (int64_t r = 0; r < rows; ++r) {
      const float *g = dy + r * D;
      const float *p = x + r * D;
      const float m = mean[r], rs = rstd[r];
      const int64_t n = r / G, c0 = (r % G) * Cg;
      if (own) {
        relu_mask_row(g, p, w, b, c0, Cg, L, m, rs, own);
        g = own;
      }
      double a = 0.0, bsum = 0.0; /* sum w dy, sum w dy (x - m) */
      int64_t j = 0;
      /* short channels: eight at a time, one reduction for all eight. Longer ones one at a
       * time: eight channels' 16 streams, L floats apart (4 KB at L = 1024), measured
       * LayerNorm's backward at 1.03-1.08x torch's (L = 512, 1024), 0.80-0.94x one at a time;
       * below NZ_LINE_MIN values the eight stay ahead (L = 144, 196: 1.02-1.12x one at a
       * time, against 0.98-1.02x) */
      if (L < NZ_LINE_MIN)
        for (; j + 8 <= Cg; j += 8) {
          float t1[8], t2[8];
          sums8(g + j * L, p + j * L, L, m, t1, t2);
          for (int k = 0; k < 8; ++k) {
            const float wc = w ? w[c0 + j + k] : 1.f;
            a += wc * (double)t1[k];
            bsum += wc * (double)t2[k];
            p_dy[n * C + c0 + j + k] = t1[k];
            p_dyx[n * C + c0 + j + k] = (float)((double)t2[k] * rs);
          }
        }
      for (; j < Cg; ++j) {
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
        if (L < NZ_LINE_MIN) { /* short channels: measured faster as compiled */
#pragma omp simd
          for (int64_t i = 0; i < L; ++i)
            oj[i] = rs * (wc * gj[i] - mean_dxhat - (pj[i] - m) * proj);
          continue;
        }
        const int64_t h = nz_head(oj, L); /* then whole lines */
        int64_t i = 0;
        for (; i < h; ++i) oj[i] = rs * (wc * gj[i] - mean_dxhat - (pj[i] - m) * proj);
        for (; i + NZ_VL <= L; i += NZ_VL)
          nz_store(oj + i, rs * (wc * nz_load(gj + i) - mean_dxhat - (nz_load(pj + i) - m) * proj));
        for (; i < L; ++i) oj[i] = rs * (wc * gj[i] - mean_dxhat - (pj[i] - m) * proj);
      }
    }
    if (dw || db) {
      affine_grads(partial, dw, db, N, C);
    }
  }
}

void nz_row_backward(const float *dy, const float *x, const float *w, const float *mean,
                     const float *rstd, float *dx, float *dw, float *db, float *partial,
                     int64_t N, int64_t G, int64_t Cg, int64_t L, int threads) {
  row_backward(dy, x, w, NULL, mean, rstd, dx, dw, db, partial, NULL, N, G, Cg, L, threads);
}

/* mask: scratch of threads * Cg * L floats. */
void nz_row_relu_backward(const float *dy, const float *x, const float *w, const float *b,
                          const float *mean, const float *rstd, float *dx, float *dw,
                          float *db, float *partial, float *mask, int64_t N, int64_t G,
                          int64_t Cg, int64_t L, int threads) {
  row_backward(dy, x, w, b, mean, rstd, dx, dw, db, partial, mask, N, G, Cg, L, threads);
}

/* ---------------------------------------------------------------- channels_last ------- *
 * The same group norm on channels_last input: sample n is a contiguous (L, C) block, element
 * (n, c, l) at (n L + l) C + c; the output and dx keep that layout. Group g's values are
 * channels [g Cg, (g + 1) Cg) at every position, so the statistics come from per-channel
 * sums (float lanes over C, flushed to double every NZ_CL_FLUSH positions) combined per
 * group by the law of total variance:
 *   mean_c = k_c + S1_c / L,   var_c = S2_c / L - (S1_c / L)^2   (shift k_c = x[n, c, 0])
 *   mean_g = avg_c mean_c,     var_g = avg_c var_c + avg_c (mean_c - mean_g)^2.
 * A sample's positions are cut into super-blocks of NZ_SB positions, each summed on its own
 * and added in order, so results do not depend on the thread count: with enough samples a
 * thread takes whole samples (sums, coefficients, map: the sample stays in its cache), else
 * the super-blocks of every sample are spread over the threads, phase by phase. The sums and
 * the maps hold a tile of channels in vector registers (nz_vf); scratch memory is allocated
 * per call (see cl_alloc). */
#define NZ_SB 1024
#define NZ_CL_FLUSH 16

static int64_t nz_min64(int64_t a, int64_t b) { return a < b ? a : b; }

static int cl_fused(int64_t N, int threads) { return N % threads == 0 || N >= 4 * threads; }

/* Per-channel sums over positions [l0, l1) of the (L, C) block p: sum(a), sum(a b) with
 * a = u - ku (u = p, or dy for the backward) and b = p - kb; written to s (2 C doubles). With
 * u == NULL, a = p - ku and b = a (the forward's shifted moments). Channels go in tiles of
 * NZ_TILE whose float sums stay in vector registers over NZ_CL_FLUSH positions (a few KB,
 * in L1 for every tile), then are added to the double totals. */
/* s[0..NZ_VL) += f, in double. */
static inline void nz_add_wide(double *s, nz_vf f) {
  const nz_vh lo = __builtin_shufflevector(f, f, 0, 1, 2, 3, 4, 5, 6, 7);
  const nz_vh hi = __builtin_shufflevector(f, f, 8, 9, 10, 11, 12, 13, 14, 15);
  nz_vd a, b;
  __builtin_memcpy(&a, s, sizeof a);
  __builtin_memcpy(&b, s + 8, sizeof b);
  a += __builtin_convertvector(lo, nz_vd);
  b += __builtin_convertvector(hi, nz_vd);
  __builtin_memcpy(s, &a, sizeof a);
  __builtin_memcpy(s + 8, &b, sizeof b);
}

/* The sums of channels [c0, c0 + nv NZ_VL) over positions [l, e), added to s1, s2. */
static inline __attribute__((always_inline)) void
cl_sums_tile(const float *u, const float *p, const float *ku, const float *kb, int64_t C,
             int64_t c0, int nv, int64_t l, int64_t e, double *s1, double *s2) {
  nz_vf a1[NZ_NV], a2[NZ_NV], k[NZ_NV];
  for (int v = 0; v < nv; ++v) {
    a1[v] = a2[v] = (nz_vf){0};
    k[v] = nz_load((u ? kb : ku) + c0 + v * NZ_VL);
  }
  if (u) {
    for (int64_t i = l; i < e; ++i)
      for (int v = 0; v < nv; ++v) {
        const nz_vf g = nz_load(u + i * C + c0 + v * NZ_VL);
        a1[v] += g;
        a2[v] += g * (nz_load(p + i * C + c0 + v * NZ_VL) - k[v]);
      }
  } else {
    for (int64_t i = l; i < e; ++i)
      for (int v = 0; v < nv; ++v) {
        const nz_vf d = nz_load(p + i * C + c0 + v * NZ_VL) - k[v];
        a1[v] += d;
        a2[v] += d * d;
      }
  }
  for (int v = 0; v < nv; ++v) {
    nz_add_wide(s1 + c0 + v * NZ_VL, a1[v]);
    nz_add_wide(s2 + c0 + v * NZ_VL, a2[v]);
  }
}

static void cl_sums(const float *u, const float *p, const float *ku, const float *kb,
                    int64_t C, int64_t l0, int64_t l1, double *s) {
  double *s1 = s, *s2 = s + C;
  for (int64_t j = 0; j < C; ++j) s1[j] = s2[j] = 0.0;
  const int64_t wide = C - C % NZ_TILE, narrow = C - C % NZ_VL;
  for (int64_t l = l0; l < l1; l += NZ_CL_FLUSH) {
    const int64_t e = nz_min64(l + NZ_CL_FLUSH, l1);
    for (int64_t c0 = 0; c0 < wide; c0 += NZ_TILE)
      cl_sums_tile(u, p, ku, kb, C, c0, NZ_NV, l, e, s1, s2);
    switch ((narrow - wide) / NZ_VL) { /* one narrower tile: a constant width each */
      case 3: cl_sums_tile(u, p, ku, kb, C, wide, 3, l, e, s1, s2); break;
      case 2: cl_sums_tile(u, p, ku, kb, C, wide, 2, l, e, s1, s2); break;
      case 1: cl_sums_tile(u, p, ku, kb, C, wide, 1, l, e, s1, s2); break;
    }
    for (int64_t j = narrow; j < C; ++j) { /* the last C % NZ_VL channels */
      float r1 = 0.f, r2 = 0.f;
      for (int64_t i = l; i < e; ++i) {
        const float x = p[i * C + j];
        if (u) {
          r1 += u[i * C + j];
          r2 += u[i * C + j] * (x - kb[j]);
        } else {
          r1 += x - ku[j];
          r2 += (x - ku[j]) * (x - ku[j]);
        }
      }
      s1[j] += r1;
      s2[j] += r2;
    }
  }
}

/* Totals of one sample's super-block sums wk (nsb blocks of 2 C doubles), in order: into t,
 * which is returned; or wk itself where there is one block (its sums are the totals). */
static double *cl_total(double *wk, int64_t nsb, int64_t C, double *t) {
  if (nsb == 1) return wk;
  for (int64_t j = 0; j < 2 * C; ++j) t[j] = wk[j];
  for (int64_t sb = 1; sb < nsb; ++sb)
    for (int64_t j = 0; j < 2 * C; ++j) t[j] += wk[sb * 2 * C + j];
  return t;
}

/* The forward's sums of positions [l0, l1) of the (L, C) sample p into s (2 C doubles): per
 * channel; or, with one group (channels-first LayerNorm), the sample's moments with the one
 * shift p[0] over its contiguous values, in s[0] and s[C] only (the rest is not written). */
static void cl_forward_sums(const float *p, int64_t G, int64_t C, int64_t l0, int64_t l1,
                            double *s) {
  if (G > 1) {
    cl_sums(NULL, p, p, NULL, C, l0, l1, s);
    return;
  }
  shifted_moments(p + l0 * C, (l1 - l0) * C, p[0], s, s + C);
}

/* Sample n's forward: group statistics from its sums wk, and the map's coefficients
 * cf = (a, shift) per channel: y = a x + shift. */
static void cl_forward_coef(const float *x, const float *w, const float *b, double *wk,
                            float *cf, float *mean_out, float *rstd_out, float *var_out,
                            int64_t n, int64_t G, int64_t Cg, int64_t L, int64_t nsb,
                            double eps, double *t) {
  const int64_t C = G * Cg;
  const float *k = x + n * L * C;
  float *a = cf, *sh = cf + C;
  const double inv_l = 1.0 / (double)L, inv_cg = 1.0 / (double)Cg;
  if (G == 1) { /* the sample's shifted moments, in each block's [0] and [C]: one "channel" */
    double s1 = 0.0, s2 = 0.0;
    for (int64_t sb = 0; sb < nsb; ++sb) {
      s1 += wk[sb * 2 * C];
      s2 += wk[sb * 2 * C + C];
    }
    const double dm = s1 / (double)(L * C), v = s2 / (double)(L * C) - dm * dm;
    const double var = v > 0.0 ? v : 0.0;
    const float m = (float)(k[0] + dm), rstd = (float)(1.0 / sqrt(var + eps));
    for (int64_t j = 0; j < C; ++j) {
      a[j] = row_scale(w, j, rstd);
      sh[j] = row_shift(b, j, m, a[j]);
    }
    mean_out[n] = m;
    rstd_out[n] = rstd;
    if (var_out) var_out[n] = (float)var;
    return;
  }
  t = cl_total(wk, nsb, C, t);
  for (int64_t j = 0; j < C; ++j) { /* channel means and variances, in place */
    const double dm = t[j] * inv_l, v = t[C + j] * inv_l - dm * dm;
    t[j] = k[j] + dm;
    t[C + j] = v > 0.0 ? v : 0.0;
  }
  for (int64_t g = 0; g < G; ++g) {
    double mg = 0.0, vg = 0.0;
    for (int64_t j = g * Cg; j < (g + 1) * Cg; ++j) mg += t[j];
    mg *= inv_cg;
    for (int64_t j = g * Cg; j < (g + 1) * Cg; ++j) vg += t[C + j] + (t[j] - mg) * (t[j] - mg);
    vg *= inv_cg;
    const float m = (float)mg, rstd = (float)(1.0 / sqrt(vg + eps));
    for (int64_t j = g * Cg; j < (g + 1) * Cg; ++j) {
      a[j] = row_scale(w, j, rstd);
      sh[j] = row_shift(b, j, m, a[j]);
    }
    mean_out[n * G + g] = m;
    rstd_out[n * G + g] = rstd;
    if (var_out) var_out[n * G + g] = (float)vg;
  }
}

/* The elementwise map over positions [l0, l1) of sample block (u, p -> o), with per-channel
 * coefficients c4 = (c0, c1, c2, c3) of C floats each, kept in registers per channel tile:
 *   forward (u == NULL): o = p c0 + c1 (then max(o, 0) with relu);
 *   backward: o = c0 u + c1 (p - c3) + c2. */
static inline __attribute__((always_inline)) void
cl_map_tile(const float *u, const float *p, float *o, const float *c4, int64_t C, int64_t c0,
            int nv, int64_t l, int64_t e, int relu) {
  nz_vf k0[NZ_NV], k1[NZ_NV], k2[NZ_NV], k3[NZ_NV];
  for (int v = 0; v < nv; ++v) {
    const int64_t j = c0 + v * NZ_VL;
    k0[v] = nz_load(c4 + j);
    k1[v] = nz_load(c4 + C + j);
    if (u) {
      k2[v] = nz_load(c4 + 2 * C + j);
      k3[v] = nz_load(c4 + 3 * C + j);
    }
  }
  for (int64_t i = l; i < e; ++i)
    for (int v = 0; v < nv; ++v) {
      const int64_t at = i * C + c0 + v * NZ_VL;
      nz_vf r = u ? k0[v] * nz_load(u + at) + k1[v] * (nz_load(p + at) - k3[v]) + k2[v]
                  : nz_load(p + at) * k0[v] + k1[v];
      if (relu) r = nz_relu(r);
      __builtin_memcpy(o + at, &r, sizeof r);
    }
}

static inline __attribute__((always_inline)) void
cl_map_body(const float *u, const float *p, float *o, const float *c4, int64_t C, int64_t l0,
            int64_t l1, int relu) {
  const int64_t wide = C - C % NZ_TILE, narrow = C - C % NZ_VL;
  for (int64_t l = l0; l < l1; l += NZ_CL_FLUSH) {
    const int64_t e = nz_min64(l + NZ_CL_FLUSH, l1);
    for (int64_t c0 = 0; c0 < wide; c0 += NZ_TILE)
      cl_map_tile(u, p, o, c4, C, c0, NZ_NV, l, e, relu);
    switch ((narrow - wide) / NZ_VL) {
      case 3: cl_map_tile(u, p, o, c4, C, wide, 3, l, e, relu); break;
      case 2: cl_map_tile(u, p, o, c4, C, wide, 2, l, e, relu); break;
      case 1: cl_map_tile(u, p, o, c4, C, wide, 1, l, e, relu); break;
    }
    for (int64_t i = l; i < e; ++i)
      for (int64_t j = narrow; j < C; ++j) {
        const int64_t at = i * C + j;
        float r = u ? c4[j] * u[at] + c4[C + j] * (p[at] - c4[3 * C + j]) + c4[2 * C + j]
                    : p[at] * c4[j] + c4[C + j];
        if (relu) r = r < 0.f ? 0.f : r;
        o[at] = r;
      }
  }
}

/* relu (forward only): o = max(p c0 + c1, 0). One copy of the loops with it, one without. */
static void cl_map(const float *u, const float *p, float *o, const float *c4, int64_t C,
                   int64_t l0, int64_t l1, int relu) {
  if (relu)
    cl_map_body(NULL, p, o, c4, C, l0, l1, 1);
  else
    cl_map_body(u, p, o, c4, C, l0, l1, 0);
}

/* The fused ReLU's backward: dy [pre > 0] over positions [l0, l1) of sample n's (L, C) block
 * into out ((l1 - l0) C floats), pre = x sc + sh with the forward's coefficients (row_scale,
 * row_shift of the saved mean and rstd; sc, sh: scratch of C floats each). */
static void cl_relu_mask(const float *dy, const float *x, const float *w, const float *b,
                         const float *mean, const float *rstd, int64_t n, int64_t G, int64_t Cg,
                         int64_t l0, int64_t l1, float *sc, float *sh, float *out) {
  const int64_t C = G * Cg;
  for (int64_t g = 0; g < G; ++g)
    for (int64_t j = g * Cg; j < (g + 1) * Cg; ++j) {
      sc[j] = row_scale(w, j, rstd[n * G + g]);
      sh[j] = row_shift(b, j, mean[n * G + g], sc[j]);
    }
  for (int64_t i = l0; i < l1; ++i) {
    const float *pi = x + i * C, *gi = dy + i * C;
    float *oi = out + (i - l0) * C;
#pragma omp simd
    for (int64_t j = 0; j < C; ++j) oi[j] = pi[j] * sc[j] + sh[j] <= 0.f ? 0.f : gi[j];
  }
}

/* Scratch of the channels_last kernels, one allocation per call: the super-block sums (nsb
 * 2 C doubles per sample) and coefficients (4 C floats per sample) of one sample per thread
 * when threads take whole samples (fused), else of every sample, shared; and 2 C doubles of
 * totals per thread. */
typedef struct {
  double *work, *totals;
  float *coef;
  int fused;
  int64_t nsb, C, work_stride, coef_stride, totals_stride;
} nz_cl_scratch;

/* n rounded up to whole 64-byte lines of `size`-byte items, plus one line: no two threads'
 * blocks share a cache line. */
static int64_t nz_lines(int64_t n, int64_t size) { return (n * size + 127) / 64 * 64 / size; }

static int cl_alloc(nz_cl_scratch *s, int64_t N, int64_t C, int64_t L, int threads) {
  s->fused = cl_fused(N, threads);
  s->nsb = (L + NZ_SB - 1) / NZ_SB;
  s->C = C;
  s->work_stride = nz_lines(s->nsb * 2 * C, sizeof(double));
  s->totals_stride = nz_lines(2 * C, sizeof(double));
  s->coef_stride = nz_lines(4 * C, sizeof(float));
  const int64_t samples = s->fused ? threads : N;
  const int64_t nd = samples * s->work_stride + threads * s->totals_stride;
  const size_t bytes = (size_t)nd * sizeof(double) + (size_t)(samples * s->coef_stride) * sizeof(float);
  s->work = aligned_alloc(64, (bytes + 63) / 64 * 64);
  if (!s->work) return 0;
  s->totals = s->work + samples * s->work_stride;
  s->coef = (float *)(s->work + nd);
  return 1;
}

/* Sample n's sums and coefficients, for the calling thread. */
static double *cl_work(const nz_cl_scratch *s, int64_t n) {
  return s->work + (s->fused ? omp_get_thread_num() : n) * s->work_stride;
}
static float *cl_coef(const nz_cl_scratch *s, int64_t n) {
  return s->coef + (s->fused ? omp_get_thread_num() : n) * s->coef_stride;
}
static double *cl_totals(const nz_cl_scratch *s) {
  return s->totals + omp_get_thread_num() * s->totals_stride;
}

static int row_forward_cl(const float *x, const float *w, const float *b, float *y,
                          float *mean_out, float *rstd_out, float *var_out, int64_t N, int64_t G,
                          int64_t Cg, int64_t L, double eps, int relu, int threads) {
  const int64_t C = G * Cg;
  if (threads < 1) threads = 1;
  nz_cl_scratch s;
  if (!cl_alloc(&s, N, C, L, threads)) return -1;
  const int64_t nsb = s.nsb;
#define NZ_SUMS(n, sb)                                                                       \
  cl_forward_sums(x + (n) * L * C, G, C, (sb) * NZ_SB, nz_min64(((sb) + 1) * NZ_SB, L),       \
                  cl_work(&s, n) + (sb) * 2 * C)
#define NZ_COEF(n)                                                                           \
  cl_forward_coef(x, w, b, cl_work(&s, n), cl_coef(&s, n), mean_out, rstd_out, var_out, n, G, \
                  Cg, L, nsb, eps, cl_totals(&s))
#define NZ_MAP(n, sb)                                                                        \
  cl_map(NULL, x + (n) * L * C, y + (n) * L * C, cl_coef(&s, n), C, (sb) * NZ_SB,           \
         nz_min64(((sb) + 1) * NZ_SB, L), relu)
#pragma omp parallel num_threads(threads)
  {
    if (s.fused) {
#pragma omp for schedule(static)
      for (int64_t n = 0; n < N; ++n) {
        for (int64_t sb = 0; sb < nsb; ++sb) NZ_SUMS(n, sb);
        NZ_COEF(n);
        for (int64_t sb = 0; sb < nsb; ++sb) NZ_MAP(n, sb);
      }
    } else {
#pragma omp for schedule(static)
      for (int64_t i = 0; i < N * nsb; ++i) NZ_SUMS(i / nsb, i % nsb);
#pragma omp for schedule(static)
      for (int64_t n = 0; n < N; ++n) NZ_COEF(n);
#pragma omp for schedule(static)
      for (int64_t i = 0; i < N * nsb; ++i) NZ_MAP(i / nsb, i % nsb);
    }
  }
#undef NZ_SUMS
#undef NZ_COEF
#undef NZ_MAP
  free(s.work);
  return 0;
}

/* Returns 0, or -1 where the scratch memory could not be allocated (nothing written). */
int nz_row_forward_cl(const float *x, const float *w, const float *b, float *y,
                      float *mean_out, float *rstd_out, float *var_out, int64_t N, int64_t G,
                      int64_t Cg, int64_t L, double eps, int threads) {
  return row_forward_cl(x, w, b, y, mean_out, rstd_out, var_out, N, G, Cg, L, eps, 0, threads);
}

/* The same with a ReLU after the affine map. */
int nz_row_relu_forward_cl(const float *x, const float *w, const float *b, float *y,
                           float *mean_out, float *rstd_out, float *var_out, int64_t N,
                           int64_t G, int64_t Cg, int64_t L, double eps, int threads) {
  return row_forward_cl(x, w, b, y, mean_out, rstd_out, var_out, N, G, Cg, L, eps, 1, threads);
}

/* Sample n's backward coefficients from its sums wk: dx = A_c dy + B1_c (x - mean_g) + B0_c,
 * cf = (A, B1, B0, mean_g) per channel (the group means are in cf already); partial gets
 * sum dy and sum dy xhat per (sample, channel), for dweight and dbias. */
static void cl_backward_coef(const float *w, const float *rstd, double *wk, float *cf,
                             float *partial, int64_t n, int64_t N, int64_t G, int64_t Cg,
                             int64_t L, int64_t nsb, double *t) {
  const int64_t C = G * Cg;
  const double inv_d = 1.0 / (double)(Cg * L);
  t = cl_total(wk, nsb, C, t);
  float *A = cf, *B1 = cf + C, *B0 = cf + 2 * C;
  float *p_dy = partial, *p_dyx = partial + N * C;
  for (int64_t g = 0; g < G; ++g) {
    const float rs = rstd[n * G + g];
    double a = 0.0, bsum = 0.0; /* sum w dy, sum w dy (x - mean) */
#pragma omp simd reduction(+ : a, bsum)
    for (int64_t j = g * Cg; j < (g + 1) * Cg; ++j) {
      const float wc = w ? w[j] : 1.f;
      a += wc * t[j];
      bsum += wc * t[C + j];
      p_dy[n * C + j] = (float)t[j];
      p_dyx[n * C + j] = (float)(t[C + j] * rs);
    }
    const float mean_dxhat = (float)(a * inv_d);
    const float proj = (float)(bsum * inv_d) * rs * rs; /* mean(dxhat xhat) rstd */
    for (int64_t j = g * Cg; j < (g + 1) * Cg; ++j) {
      A[j] = rs * (w ? w[j] : 1.f);
      B1[j] = -rs * proj;
      B0[j] = -rs * mean_dxhat;
    }
  }
}

/* partial: scratch of 2 N C floats, as for nz_row_backward. b, relu: the fused ReLU's (its
 * gradient mask, recomputed per super-block into a thread's scratch; b may be NULL). Returns
 * 0, or -1 where the scratch memory could not be allocated (nothing written). */
static int row_backward_cl(const float *dy, const float *x, const float *w, const float *b,
                           const float *mean, const float *rstd, float *dx, float *dw, float *db,
                           float *partial, int64_t N, int64_t G, int64_t Cg, int64_t L,
                           int relu, int threads) {
  const int64_t C = G * Cg;
  if (threads < 1) threads = 1;
  nz_cl_scratch s;
  if (!cl_alloc(&s, N, C, L, threads)) return -1;
  const int64_t nsb = s.nsb;
  /* relu: per thread, a super-block of masked dy (NZ_SB C floats) and sc, sh (C each) */
  const int64_t mask_stride = nz_lines((nz_min64(NZ_SB, L) + 2) * C, sizeof(float));
  const size_t mask_bytes = (size_t)(threads * mask_stride) * sizeof(float);
  float *masks = relu ? aligned_alloc(64, mask_bytes) : NULL;
  if (relu && !masks) {
    free(s.work);
    return -1;
  }
  /* dy of positions [l0, l1) of sample n as the sums and the map read it: dy itself, or the
   * thread's masked copy, offset so that position i is at (i - l0) C */
#define NZ_DY(n, l0, l1) (relu ? masked_dy(n, l0, l1) : dy + (n) * L * C)
  /* the group mean per channel (coef's 4th row): the shift of the sums and of dx's x - mean */
#define NZ_MEANS(n)                                                                          \
  do {                                                                                       \
    float *m = cl_coef(&s, n) + 3 * C;                                                       \
    for (int64_t g = 0; g < G; ++g)                                                          \
      for (int64_t j = g * Cg; j < (g + 1) * Cg; ++j) m[j] = mean[(n) * G + g];              \
  } while (0)
#define NZ_SUMS(n, sb)                                                                       \
  cl_sums(NZ_DY(n, (sb) * NZ_SB, nz_min64(((sb) + 1) * NZ_SB, L)), x + (n) * L * C, NULL,   \
          cl_coef(&s, n) + 3 * C, C, (sb) * NZ_SB, nz_min64(((sb) + 1) * NZ_SB, L),          \
          cl_work(&s, n) + (sb) * 2 * C)
#define NZ_COEF(n)                                                                           \
  cl_backward_coef(w, rstd, cl_work(&s, n), cl_coef(&s, n), partial, n, N, G, Cg, L, nsb,   \
                   cl_totals(&s))
#define NZ_MAP(n, sb)                                                                        \
  cl_map(NZ_DY(n, (sb) * NZ_SB, nz_min64(((sb) + 1) * NZ_SB, L)), x + (n) * L * C,           \
         dx + (n) * L * C, cl_coef(&s, n), C, (sb) * NZ_SB, nz_min64(((sb) + 1) * NZ_SB, L), 0)
#pragma omp parallel num_threads(threads)
  {
    float *own = relu ? masks + (int64_t)omp_get_thread_num() * mask_stride : NULL;
    /* writes sample n's masked dy of [l0, l1) into own; returns it offset to position 0 */
#define masked_dy(n, l0, l1)                                                                 \
  (cl_relu_mask(dy + (n) * L * C, x + (n) * L * C, w, b, mean, rstd, n, G, Cg, l0, l1,       \
                own + nz_min64(NZ_SB, L) * C, own + nz_min64(NZ_SB, L) * C + C, own),        \
   own - (l0) * C)
    if (s.fused) {
#pragma omp for schedule(static)
      for (int64_t n = 0; n < N; ++n) {
        NZ_MEANS(n);
        for (int64_t sb = 0; sb < nsb; ++sb) NZ_SUMS(n, sb);
        NZ_COEF(n);
        if (dx)
          for (int64_t sb = 0; sb < nsb; ++sb) NZ_MAP(n, sb);
      }
    } else {
#pragma omp for schedule(static)
      for (int64_t n = 0; n < N; ++n) NZ_MEANS(n);
#pragma omp for schedule(static)
      for (int64_t i = 0; i < N * nsb; ++i) NZ_SUMS(i / nsb, i % nsb);
#pragma omp for schedule(static)
      for (int64_t n = 0; n < N; ++n) NZ_COEF(n);
      if (dx) {
#pragma omp for schedule(static)
        for (int64_t i = 0; i < N * nsb; ++i) NZ_MAP(i / nsb, i % nsb);
      }
    }
    if (dw || db) {
      affine_grads(partial, dw, db, N, C);
    }
  }
#undef NZ_MEANS
#undef NZ_SUMS
#undef NZ_COEF
#undef NZ_MAP
#undef NZ_DY
#undef masked_dy
  free(masks);
  free(s.work);
  return 0;
}

int nz_row_backward_cl(const float *dy, const float *x, const float *w, const float *mean,
                       const float *rstd, float *dx, float *dw, float *db, float *partial,
                       int64_t N, int64_t G, int64_t Cg, int64_t L, int threads) {
  return row_backward_cl(dy, x, w, NULL, mean, rstd, dx, dw, db, partial, N, G, Cg, L, 0,
                         threads);
}

/* The backward of nz_row_relu_forward_cl (b: its bias, may be NULL). */
int nz_row_relu_backward_cl(const float *dy, const float *x, const float *w, const float *b,
                            const float *mean, const float *rstd, float *dx, float *dw,
                            float *db, float *partial, int64_t N, int64_t G, int64_t Cg,
                            int64_t L, int threads) {
  return row_backward_cl(dy, x, w, b, mean, rstd, dx, dw, db, partial, N, G, Cg, L, 1,
                         threads);
}
