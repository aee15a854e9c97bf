/* Per-row norms of the zoo over a float32 (N, C, L) tensor, in either memory layout:
 * cl = 0: contiguous, element (n, c, l) at (n C + c) L + l (a row of L values);
 * cl = 1: channels_last, element (n, c, l) at (n L + l) C + c (C channels per position).
 *
 * Every norm here is y = f(x; p[n, c]): per-row statistics (mean, biased variance of each
 * (n, c) row), then small per-row parameters p (P floats per row, computed by the caller from
 * the statistics), then one elementwise map. The maps (op):
 *
 *   NZ_AFFINE (P = 2: a, b):            y = a x + b
 *   NZ_B0     (P = 5: v, s_i, s_b, w, b): y = x / max(s_b, v x + s_i) * w + b    (EvoNorm-B0)
 *   NZ_S0     (P = 3: v, a, b):          y = x sigmoid(v x) a + b               (EvoNorm-S0)
 *
 * Backward in two passes: nz_map_sums reads dy and x for the per-row sums that are dL/dp
 * (the caller backpropagates them through its small graph to dL/dmean, dL/dvar), then
 * nz_map_dx writes dx = (df/dx) dy + k1 (x - mean) + k0 (the statistics' share; k1 may be
 * NULL). Contiguous rows are one task each (read from cache for the second sweep of the
 * statistics); channels_last runs tasks of (sample, block of NZ_CB channels), whose inner
 * loops are contiguous runs over the block's channels. Sums are float SIMD lanes, flushed
 * into double every NZ_CHUNK values of a row (NZ_CL_CHUNK channels_last).
 */
#include <math.h>
#include <stdint.h>

/* -std=c11 turns off the contraction of a * b + c into FMAs, which halves the speed of the
 * polynomial of nz_exp: allow it in this file. */
#pragma GCC optimize("fp-contract=fast")

#define NZ_AFFINE 0
#define NZ_B0 1
#define NZ_S0 2
#define NZ_MAXP 5
#define NZ_CB 64
#define NZ_CHUNK 256
#define NZ_CL_CHUNK 16 /* channels_last sums are sequential per channel: flush often */
#define NZ_INLINE static inline __attribute__((always_inline))

static const int NZ_NPARAMS[3] = {2, 5, 3};

/* exp(x) to about 2 ulp, vectorizable (Cephes' expf: 2^n times a degree-6 polynomial). */
NZ_INLINE float nz_exp(float x) {
  x = x < -87.0f ? -87.0f : (x > 88.0f ? 88.0f : x); /* fminf/fmaxf do not inline */
  /* round to nearest: adding and removing 1.5 2^23 drops the fraction */
  const float n = (x * 1.44269504088896341f + 12582912.0f) - 12582912.0f;
  const float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500E-4f;
  p = fmaf(p, r, 1.3981999507E-3f);
  p = fmaf(p, r, 8.3334519073E-3f);
  p = fmaf(p, r, 4.1665795894E-2f);
  p = fmaf(p, r, 1.6666665459E-1f);
  p = fmaf(p, r, 5.0000001201E-1f);
  p = fmaf(p * r, r, r + 1.0f);
  union { /* 2^n from its exponent bits (a bit cast that vectorizes, unlike memcpy) */
    int32_t i;
    float f;
  } scale = {.i = ((int32_t)n + 127) << 23};
  return p * scale.f;
}

NZ_INLINE float nz_sigmoid(float z) { return 1.0f / (1.0f + nz_exp(-z)); }

/* ---------------------------------------------------------------- statistics ---------- */

void nz_row_stats(const float *x, float *mean, float *var, int64_t N, int64_t C, int64_t L,
                  int cl, int threads) {
  if (!cl) {
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t r = 0; r < N * C; ++r) {
      const float *p = x + r * L;
      double s = 0.0;
      for (int64_t i0 = 0; i0 < L; i0 += NZ_CHUNK) {
        const int64_t i1 = i0 + NZ_CHUNK < L ? i0 + NZ_CHUNK : L;
        float f = 0.f;
#pragma omp simd reduction(+ : f)
        for (int64_t i = i0; i < i1; ++i) f += p[i];
        s += f;
      }
      const float m = (float)(s / (double)L);
      double q = 0.0;
      for (int64_t i0 = 0; i0 < L; i0 += NZ_CHUNK) {
        const int64_t i1 = i0 + NZ_CHUNK < L ? i0 + NZ_CHUNK : L;
        float f = 0.f;
#pragma omp simd reduction(+ : f)
        for (int64_t i = i0; i < i1; ++i) f += (p[i] - m) * (p[i] - m);
        q += f;
      }
      mean[r] = m;
      var[r] = (float)(q / (double)L);
    }
    return;
  }
  /* channels_last: a task is (sample, block of channels), L NZ_CB-wide runs: small enough
   * (L NZ_CB floats) to read the variance's second sweep from cache. */
  const int64_t nb = (C + NZ_CB - 1) / NZ_CB;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t t = 0; t < N * nb; ++t) {
    const int64_t n = t / nb, c0 = (t % nb) * NZ_CB, k = C - c0 < NZ_CB ? C - c0 : NZ_CB;
    const float *base = x + n * L * C + c0;
    float m[NZ_CB], f[NZ_CB];
    double s[NZ_CB];
    for (int64_t j = 0; j < k; ++j) s[j] = 0.0;
    for (int64_t l0 = 0; l0 < L; l0 += NZ_CL_CHUNK) {
      const int64_t l1 = l0 + NZ_CL_CHUNK < L ? l0 + NZ_CL_CHUNK : L;
      for (int64_t j = 0; j < k; ++j) f[j] = 0.f;
      for (int64_t l = l0; l < l1; ++l) {
        const float *p = base + l * C;
#pragma omp simd
        for (int64_t j = 0; j < k; ++j) f[j] += p[j];
      }
      for (int64_t j = 0; j < k; ++j) s[j] += f[j];
    }
    for (int64_t j = 0; j < k; ++j) {
      m[j] = (float)(s[j] / (double)L);
      s[j] = 0.0;
    }
    for (int64_t l0 = 0; l0 < L; l0 += NZ_CL_CHUNK) {
      const int64_t l1 = l0 + NZ_CL_CHUNK < L ? l0 + NZ_CL_CHUNK : L;
      for (int64_t j = 0; j < k; ++j) f[j] = 0.f;
      for (int64_t l = l0; l < l1; ++l) {
        const float *p = base + l * C;
#pragma omp simd
        for (int64_t j = 0; j < k; ++j) f[j] += (p[j] - m[j]) * (p[j] - m[j]);
      }
      for (int64_t j = 0; j < k; ++j) s[j] += f[j];
    }
    for (int64_t j = 0; j < k; ++j) {
      mean[n * C + c0 + j] = m[j];
      var[n * C + c0 + j] = (float)(s[j] / (double)L);
    }
  }
}

/* ---------------------------------------------------------------- the maps ------------ */

/* Forward of one element: p0..p4 are the row's parameters. */
NZ_INLINE float nz_fwd(int op, float x, float p0, float p1, float p2, float p3, float p4) {
  if (op == NZ_AFFINE) return x * p0 + p1;
  if (op == NZ_B0) {
    const float d = p0 * x + p1, den = d > p2 ? d : p2;
    return x / den * p3 + p4;
  }
  return x * nz_sigmoid(p0 * x) * p1 + p2;
}

/* The row sums of the backward: dL/dp for one element, added into g[0..P-1]. */
#define NZ_SUMS_BODY(op, g, dyv, xv, p0, p1, p2, p3)                                        \
  do {                                                                                    \
    if (op == NZ_AFFINE) {                                                                \
      g##0 += dyv * xv;                                                                   \
      g##1 += dyv;                                                                        \
    } else if (op == NZ_B0) {                                                             \
      const float d = p0 * xv + p1, inv = 1.f / (d > p2 ? d : p2);                        \
      const float q = xv * inv, r = dyv * p3 * inv, tt = r * q;                           \
      const float u = d > p2 ? 2.f * tt : (d == p2 ? tt : 0.f);                           \
      g##0 -= 0.5f * u * xv;                                                              \
      g##1 -= 0.5f * u;                                                                   \
      g##2 += 0.5f * u - tt;                                                              \
      g##3 += dyv * q;                                                                    \
      g##4 += dyv;                                                                        \
    } else {                                                                              \
      const float s = nz_sigmoid(p0 * xv), e = dyv * p1 * xv;                             \
      g##0 += e * xv * s * (1.f - s);                                                     \
      g##1 += dyv * xv * s;                                                               \
      g##2 += dyv;                                                                        \
    }                                                                                     \
  } while (0)

/* (df/dx) dy for one element. */
NZ_INLINE float nz_dx(int op, float dy, float x, float p0, float p1, float p2, float p3) {
  if (op == NZ_AFFINE) return dy * p0;
  if (op == NZ_B0) {
    const float d = p0 * x + p1, inv = 1.f / (d > p2 ? d : p2);
    const float r = dy * p3 * inv, tt = r * x * inv;
    const float u = d > p2 ? 2.f * tt : (d == p2 ? tt : 0.f);
    return r - 0.5f * p0 * u;
  }
  const float s = nz_sigmoid(p0 * x);
  return dy * p1 * (s + p0 * x * s * (1.f - s));
}

/* The row's parameters, or (channels_last) the block's, one array per parameter. */
static inline void load_params(const float *params, int P, int64_t row, float *out) {
  for (int i = 0; i < NZ_MAXP; ++i) out[i] = i < P ? params[row * P + i] : 0.f;
}

static inline void load_block(const float *params, int P, int64_t row0, int64_t k,
                              float out[NZ_MAXP][NZ_CB]) {
  for (int i = 0; i < NZ_MAXP; ++i)
    for (int64_t j = 0; j < k; ++j) out[i][j] = i < P ? params[(row0 + j) * P + i] : 0.f;
}

/* Each exported map opens the parallel region, then each thread runs an always-inlined body
 * with a constant op (its `omp for` shares the rows), so the branches on op fold away and
 * the inner loops vectorize. */
#define NZ_DISPATCH(impl, op, threads, ...)  \
  _Pragma("omp parallel num_threads(threads)") \
  {                                          \
    if ((op) == NZ_AFFINE)                   \
      impl(NZ_AFFINE, __VA_ARGS__);          \
    else if ((op) == NZ_B0)                  \
      impl(NZ_B0, __VA_ARGS__);              \
    else                                     \
      impl(NZ_S0, __VA_ARGS__);              \
  }

NZ_INLINE void map_forward(const int op, const float *x, const float *params, float *y,
                           int64_t N, int64_t C, int64_t L, int cl, int threads) {
  const int P = NZ_NPARAMS[op];
  if (!cl) {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < N * C; ++r) {
      float p[NZ_MAXP];
      load_params(params, P, r, p);
      const float *xr = x + r * L;
      float *yr = y + r * L;
#pragma omp simd
      for (int64_t i = 0; i < L; ++i) yr[i] = nz_fwd(op, xr[i], p[0], p[1], p[2], p[3], p[4]);
    }
    return;
  }
  const int64_t nb = (C + NZ_CB - 1) / NZ_CB;
#pragma omp for schedule(static)
  for (int64_t t = 0; t < N * nb; ++t) {
    const int64_t n = t / nb, c0 = (t % nb) * NZ_CB, k = C - c0 < NZ_CB ? C - c0 : NZ_CB;
    float p[NZ_MAXP][NZ_CB];
    load_block(params, P, n * C + c0, k, p);
    for (int64_t l = 0; l < L; ++l) {
      const float *xr = x + (n * L + l) * C + c0;
      float *yr = y + (n * L + l) * C + c0;
#pragma omp simd
      for (int64_t j = 0; j < k; ++j)
        yr[j] = nz_fwd(op, xr[j], p[0][j], p[1][j], p[2][j], p[3][j], p[4][j]);
    }
  }
}

NZ_INLINE void map_sums(const int op, const float *dy, const float *x, const float *params,
                        float *grads, int64_t N, int64_t C, int64_t L, int cl, int threads) {
  const int P = NZ_NPARAMS[op];
  if (!cl) {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < N * C; ++r) {
      float p[NZ_MAXP];
      load_params(params, P, r, p);
      const float *xr = x + r * L, *gr = dy + r * L;
      double acc[NZ_MAXP] = {0.0, 0.0, 0.0, 0.0, 0.0};
      for (int64_t i0 = 0; i0 < L; i0 += NZ_CHUNK) {
        const int64_t i1 = i0 + NZ_CHUNK < L ? i0 + NZ_CHUNK : L;
        float g0 = 0.f, g1 = 0.f, g2 = 0.f, g3 = 0.f, g4 = 0.f;
#pragma omp simd reduction(+ : g0, g1, g2, g3, g4)
        for (int64_t i = i0; i < i1; ++i) {
          const float dyv = gr[i], xv = xr[i];
          NZ_SUMS_BODY(op, g, dyv, xv, p[0], p[1], p[2], p[3]);
        }
        acc[0] += g0, acc[1] += g1, acc[2] += g2, acc[3] += g3, acc[4] += g4;
      }
      for (int i = 0; i < P; ++i) grads[r * P + i] = (float)acc[i];
    }
    return;
  }
  const int64_t nb = (C + NZ_CB - 1) / NZ_CB;
#pragma omp for schedule(static)
  for (int64_t t = 0; t < N * nb; ++t) {
    const int64_t n = t / nb, c0 = (t % nb) * NZ_CB, k = C - c0 < NZ_CB ? C - c0 : NZ_CB;
    float p[NZ_MAXP][NZ_CB];
    load_block(params, P, n * C + c0, k, p);
    double acc[NZ_MAXP][NZ_CB];
    float f[NZ_MAXP][NZ_CB];
    for (int i = 0; i < NZ_MAXP; ++i)
      for (int64_t j = 0; j < k; ++j) acc[i][j] = 0.0;
    for (int64_t l0 = 0; l0 < L; l0 += NZ_CL_CHUNK) {
      const int64_t l1 = l0 + NZ_CL_CHUNK < L ? l0 + NZ_CL_CHUNK : L;
      for (int i = 0; i < NZ_MAXP; ++i)
        for (int64_t j = 0; j < k; ++j) f[i][j] = 0.f;
      for (int64_t l = l0; l < l1; ++l) {
        const float *xr = x + (n * L + l) * C + c0, *gr = dy + (n * L + l) * C + c0;
#pragma omp simd
        for (int64_t j = 0; j < k; ++j) {
          const float dyv = gr[j], xv = xr[j];
          float g0 = 0.f, g1 = 0.f, g2 = 0.f, g3 = 0.f, g4 = 0.f;
          NZ_SUMS_BODY(op, g, dyv, xv, p[0][j], p[1][j], p[2][j], p[3][j]);
          f[0][j] += g0, f[1][j] += g1, f[2][j] += g2, f[3][j] += g3, f[4][j] += g4;
        }
      }
      for (int i = 0; i < NZ_MAXP; ++i)
        for (int64_t j = 0; j < k; ++j) acc[i][j] += f[i][j];
    }
    for (int i = 0; i < P; ++i)
      for (int64_t j = 0; j < k; ++j) grads[(n * C + c0 + j) * P + i] = (float)acc[i][j];
  }
}

NZ_INLINE void map_dx(const int op, const float *dy, const float *x, const float *params,
                      const float *mean, const float *k1, const float *k0, float *dx,
                      int64_t N, int64_t C, int64_t L, int cl, int threads) {
  const int P = NZ_NPARAMS[op];
  if (!cl) {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < N * C; ++r) {
      float p[NZ_MAXP];
      load_params(params, P, r, p);
      const float *xr = x + r * L, *gr = dy + r * L;
      float *o = dx + r * L;
      const float m = k1 ? mean[r] : 0.f, a = k1 ? k1[r] : 0.f, b = k1 ? k0[r] : 0.f;
#pragma omp simd
      for (int64_t i = 0; i < L; ++i)
        o[i] = nz_dx(op, gr[i], xr[i], p[0], p[1], p[2], p[3]) + a * (xr[i] - m) + b;
    }
    return;
  }
  const int64_t nb = (C + NZ_CB - 1) / NZ_CB;
#pragma omp for schedule(static)
  for (int64_t t = 0; t < N * nb; ++t) {
    const int64_t n = t / nb, c0 = (t % nb) * NZ_CB, k = C - c0 < NZ_CB ? C - c0 : NZ_CB;
    float p[NZ_MAXP][NZ_CB], m[NZ_CB], a[NZ_CB], b[NZ_CB];
    load_block(params, P, n * C + c0, k, p);
    for (int64_t j = 0; j < k; ++j) {
      m[j] = k1 ? mean[n * C + c0 + j] : 0.f;
      a[j] = k1 ? k1[n * C + c0 + j] : 0.f;
      b[j] = k1 ? k0[n * C + c0 + j] : 0.f;
    }
    for (int64_t l = 0; l < L; ++l) {
      const float *xr = x + (n * L + l) * C + c0, *gr = dy + (n * L + l) * C + c0;
      float *o = dx + (n * L + l) * C + c0;
#pragma omp simd
      for (int64_t j = 0; j < k; ++j)
        o[j] = nz_dx(op, gr[j], xr[j], p[0][j], p[1][j], p[2][j], p[3][j]) +
               a[j] * (xr[j] - m[j]) + b[j];
    }
  }
}

void nz_map_forward(int op, const float *x, const float *params, float *y, int64_t N,
                    int64_t C, int64_t L, int cl, int threads) {
  NZ_DISPATCH(map_forward, op, threads, x, params, y, N, C, L, cl, threads);
}

void nz_map_sums(int op, const float *dy, const float *x, const float *params, float *grads,
                 int64_t N, int64_t C, int64_t L, int cl, int threads) {
  NZ_DISPATCH(map_sums, op, threads, dy, x, params, grads, N, C, L, cl, threads);
}

void nz_map_dx(int op, const float *dy, const float *x, const float *params, const float *mean,
               const float *k1, const float *k0, float *dx, int64_t N, int64_t C, int64_t L,
               int cl, int threads) {
  NZ_DISPATCH(map_dx, op, threads, dy, x, params, mean, k1, k0, dx, N, C, L, cl, threads);
}
