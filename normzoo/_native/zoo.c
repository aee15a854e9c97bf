/* Per-row norms of the zoo over a float32 or bfloat16 (N, C, L) tensor, in either memory layout:
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
 *   NZ_TLU    (P = 3: a, b, tau):        y = max(a x + b, tau)                  (FRN + TLU)
 *
 * Backward in two passes: nz_map_sums reads dy and x for the per-row sums that are dL/dp
 * (the caller backpropagates them through its small graph to dL/dmean, dL/dvar), then
 * nz_map_dx writes dx = (df/dx) dy + k1 (x - mean) + k0 (the statistics' share; k1 may be
 * NULL). For B0 and S0, whose df/dx costs a division or a sigmoid, the norms' backward
 * writes (df/dx) dy into dx during the sums' pass and the second pass only adds the
 * statistics' share (one sigmoid or division per element in the backward instead of two). Contiguous rows are one task each (read from cache for the second sweep of the
 * statistics); channels_last runs tasks of (sample, block of NZ_CB channels), whose inner
 * loops are contiguous runs over the block's channels. Sums are float SIMD lanes, flushed
 * into double every NZ_CHUNK values of a row (NZ_CL_CHUNK channels_last).
 *
 * At the end of the file: token input (N, C) with no positions, where a per-row kernel's
 * fixed cost would be paid per value (GroupNorm, EvoNorm-S0, EvoNorm-B0, RMSNorm and FRN + TLU
 * on tokens).
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include "nz_bf16.h"
#include "nz_simd.h"

#define NZ_AFFINE 0
#define NZ_B0 1
#define NZ_S0 2
#define NZ_TLU 3
#define NZ_MAXP 5
#define NZ_CB 64
#define NZ_CHUNK 256
#define NZ_CL_CHUNK 16 /* channels_last sums are sequential per channel: flush often */
#define NZ_INLINE static inline __attribute__((always_inline))

static const int NZ_NPARAMS[4] = {2, 5, 3, 3};

/* exp(x) to within 0.9 ulp on [-86.6, 88] (clamped there), vectorizable: x = n ln2 + r with
 * n = round(x / ln2) and |r| <= ln2 / 2 (ln2 in two parts, Cody and Waite), e^r by a degree-6
 * polynomial 1 + r + r^2 (c2 + ... + c6 r^4) with minimax coefficients (fitted here for the
 * relative error, 3e-9 before rounding), then 2^n added to the result's exponent bits. 2^n
 * comes from the rounding itself: x / ln2 + 1.5 2^23 holds n in its low mantissa bits, and
 * those shifted by 23 are n << 23 (the constant's own bits shift out). Against Cephes' expf
 * (degree 7, 2^n built from the float n and multiplied in, 1.3 ulp): 3 operations fewer of
 * about 18, EvoNorm-S0's kernels 0.90-0.97 of their time (docs/data/ab_zoo_exp_cl.json); the
 * sigmoid below 2.5 ulp on [-80, 80] (3.2 with Cephes'). The lower clamp keeps n >= -125, so
 * that the exponent stays a normal one's. */
NZ_INLINE float nz_exp(float x) {
  x = x < -86.6f ? -86.6f : (x > 88.0f ? 88.0f : x); /* fminf/fmaxf do not inline */
  const float m = NZ_FMA(x, 1.44269504088896341f, 12582912.0f); /* 1.5 2^23 + n */
  const float n = m - 12582912.0f;
  const float r = NZ_FMA(n, 2.12194440e-4f, NZ_FMA(n, -0.693359375f, x));
  float p = 1.3814177364110947e-3f;
  p = NZ_FMA(p, r, 8.368912152945995e-3f);
  p = NZ_FMA(p, r, 4.166840761899948e-2f);
  p = NZ_FMA(p, r, 1.666651964187622e-1f);
  p = NZ_FMA(p, r, 4.999999403953552e-1f);
  p = NZ_FMA(p, r, 1.0f);
  p = NZ_FMA(p, r, 1.0f);
  union { /* bit casts that vectorize, unlike memcpy */
    float f;
    int32_t i;
  } mb = {.f = m}, pb = {.f = p};
  pb.i += (int32_t)((uint32_t)mb.i << 23);
  return pb.f;
}

NZ_INLINE float nz_sigmoid(float z) { return 1.0f / (1.0f + nz_exp(-z)); }

/* Row i's mean with its rounding remainder (lo may be NULL), in double. */
static inline double exact_mean(const float *mean, const float *lo, int64_t i) {
  return lo ? (double)mean[i] + (double)lo[i] : (double)mean[i];
}

/* ---------------------------------------------------------------- the maps ------------ */

/* Forward of one element: p0..p4 are the row's parameters. */
NZ_INLINE float nz_fwd(int op, float x, float p0, float p1, float p2, float p3, float p4) {
  if (op == NZ_AFFINE) return x * p0 + p1;
  if (op == NZ_B0) {
    const float d = p0 * x + p1, den = d > p2 ? d : p2;
    return x / den * p3 + p4;
  }
  if (op == NZ_S0) return x * nz_sigmoid(p0 * x) * p1 + p2;
  const float y = x * p0 + p1;
  return y > p2 ? y : p2;
}

/* The row sums of the backward: dL/dp for one element, added into g[0..P-1].
 * B0 (here, nz_dx, and the token kernels): u's factor 1 + sign(d - s_b) (ties: half, as
 * torch.maximum's gradient) takes its sign from the difference e = d - s_b, the same as
 * comparing d with s_b, NaN included. Compared directly, the comparisons were shared with
 * the maximum's and GCC computed 1 / d and 1 / s_b both, as masked divisions (three a
 * vector), where the maximum's one division was meant: B0's backward kernels ran 1.06-1.32x
 * their time now (scripts/bench_kernel_ab.py --cases b0 b0_tok, the same bits). */
#define NZ_SUMS_BODY(op, g, dd, dyv, xv, p0, p1, p2, p3)                                    \
  do {                                                                                    \
    if (op == NZ_AFFINE) {                                                                \
      g##0 += dyv * xv;                                                                   \
      g##1 += dyv;                                                                        \
    } else if (op == NZ_B0) {                                                             \
      const float d = p0 * xv + p1, inv = 1.f / (d > p2 ? d : p2);                        \
      const float q = xv * inv, r = dyv * p3 * inv, tt = r * q;                           \
      const float e = d - p2, u = tt + tt * ((float)(e > 0.f) - (float)(e < 0.f));        \
      g##0 -= 0.5f * u * xv;                                                              \
      g##1 -= 0.5f * u;                                                                   \
      g##2 += 0.5f * u - tt;                                                              \
      g##3 += dyv * q;                                                                    \
      g##4 += dyv;                                                                        \
      dd = r - 0.5f * p0 * u;                                                             \
    } else if (op == NZ_S0) {                                                             \
      const float s = nz_sigmoid(p0 * xv), e = dyv * p1 * xv, t = e * s * (1.f - s);      \
      g##0 += t * xv;                                                                     \
      g##1 += dyv * xv * s;                                                               \
      g##2 += dyv;                                                                        \
      dd = dyv * p1 * s + p0 * t;                                                         \
    } else { /* h: dy where a x + b > tau, dy / 2 at a tie (torch.maximum), else 0 */     \
      const float y = xv * p0 + p1;                                                       \
      const float h = dyv * 0.5f * (1.f + (float)(y > p2) - (float)(y < p2));            \
      g##0 += h * xv;                                                                     \
      g##1 += h;                                                                          \
      g##2 += dyv;                                                                        \
    }                                                                                     \
  } while (0)

/* (df/dx) dy for one element. */
NZ_INLINE float nz_dx(int op, float dy, float x, float p0, float p1, float p2, float p3) {
  if (op == NZ_AFFINE) return dy * p0;
  if (op == NZ_B0) {
    const float d = p0 * x + p1, inv = 1.f / (d > p2 ? d : p2);
    const float r = dy * p3 * inv, tt = r * x * inv;
    const float e = d - p2, u = tt + tt * ((float)(e > 0.f) - (float)(e < 0.f)); /* see above */
    return r - 0.5f * p0 * u;
  }
  if (op == NZ_S0) {
    const float s = nz_sigmoid(p0 * x);
    return dy * p1 * (s + p0 * x * s * (1.f - s));
  }
  const float y = x * p0 + p1;
  return p0 * dy * 0.5f * (1.f + (float)(y > p2) - (float)(y < p2));
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
    else if ((op) == NZ_S0)                  \
      impl(NZ_S0, __VA_ARGS__);              \
    else                                     \
      impl(NZ_TLU, __VA_ARGS__);             \
  }

static inline double mean_over_n(const float *a, const float *lo, int64_t N, int64_t C,
                                 int64_t c) {
  double s = 0.0;
  for (int64_t n = 0; n < N; ++n) s += exact_mean(a, lo, n * C + c);
  return s / (double)N;
}

/* out[i][c] = sum over n of sums[(n C + c) P + i] for the i < P whose out[i] is not NULL, in
 * float with n ascending: the parameters' gradients from the rows' shares. The body of a
 * parallel region (its `omp for` shares the channels). */
static inline void column_sums_for(const float *sums, int P, float *const *out, int64_t N,
                                   int64_t C) {
#pragma omp for schedule(static)
  for (int64_t c = 0; c < C; ++c)
    for (int i = 0; i < P; ++i) {
      if (!out[i]) continue;
      float t = 0.f;
      for (int64_t n = 0; n < N; ++n) t += sums[(n * C + c) * P + i];
      out[i][c] = t;
    }
}

/* The mean and the variance of the group of rows r0 .. r0 + size (channels of one sample),
 * combined from its rows' (equal counts: exact). */
static inline void group_stats(const float *mean, const float *lo, const float *var, int64_t r0,
                               int64_t size, double *mg, double *vg) {
  const double inv = 1.0 / (double)size;
  double s = 0.0, q = 0.0;
  for (int64_t r = r0; r < r0 + size; ++r) s += exact_mean(mean, lo, r);
  *mg = s * inv;
  s = 0.0;
  for (int64_t r = r0; r < r0 + size; ++r) {
    const double d = exact_mean(mean, lo, r) - *mg;
    s += var[r];
    q += d * d;
  }
  *vg = (s + q) * inv;
}

static void softmax3(const float *logits, double *out) {
  double mx = logits[0] > logits[1] ? logits[0] : logits[1];
  mx = mx > logits[2] ? mx : logits[2];
  double s = 0.0;
  for (int i = 0; i < 3; ++i) s += out[i] = exp((double)logits[i] - mx);
  for (int i = 0; i < 3; ++i) out[i] /= s;
}

/* SwitchableNorm's small graph, its loops shared among the threads of one parallel region:
 * each sum keeps the serial loops' order (per sample over the channels, per channel over the
 * samples, the softmax's over every row), so the results are the same bits for any thread
 * count. At (128, 64, 8, 8) on a 2-core EPYC the graph ran on one thread for about a fifth
 * of a fwd+bwd (8192 rows: a square root and up to eight divisions each, the other thread
 * waiting); the per-row terms of the backward's second loop that depend on the sample or the
 * channel only are computed once per sample or channel here (the same expressions, so the
 * same bits), the per-row loops vectorize (omp simd: a square root and a division on 8 rows
 * at a time) and the sums over every row keep their accumulators in registers. Kernel A/B
 * against the serial graph (python scripts/bench_kernel_ab.py --cases switchable
 * [--channels-last], docs/data/ab_switchable_graph*.json): (128, 64, 8, 8) forward 0.84-0.89,
 * backward 0.76-0.89; (8, 256, 14, 14) backward 0.88-0.94; the shapes with long rows (the
 * graph a small share) within the A/B's noise.
 *
 * The mixture (the body of a parallel region): the LN statistics per sample (mean_ln,
 * var_ln (N)) and BN ones per channel (mean_bn, var_bn (C), from the rows', or the running
 * ones; stats_bn (2 C, may be NULL): the batch's, as floats) from the rows' IN statistics. A
 * set's variance from its parts': mean (var_i + (mean_i - mean)^2), which the paper's
 * mean (var_i + mean_i^2) - mean^2 equals without its cancellation far from zero. */
#define NZ_SW_CB 16 /* channels a task sums over the samples together (vector lanes) */
#define NZ_SW_NB 8  /* samples a task sums over the channels together (independent chains) */
/* rows from which the graph's loops are shared among the threads (fewer: one thread; at 128
 * rows the region's start and barriers measured longer than the work they shared, at 1024 the
 * backward 0.87-0.96 of the serial graph's time) */
#define NZ_SW_PARALLEL 1024

static void switchable_mix_for(const float *mean, const float *var, const float *running_mean,
                               const float *running_var, double *mean_ln, double *var_ln,
                               double *mean_bn, double *var_bn, float *stats_bn, int64_t N,
                               int64_t C) {
  /* per sample, a chain of adds over the channels: NZ_SW_NB samples' chains side by side */
#pragma omp for schedule(static) nowait
  for (int64_t n0 = 0; n0 < N; n0 += NZ_SW_NB) {
    const int nb = N - n0 < NZ_SW_NB ? (int)(N - n0) : NZ_SW_NB;
    double s[NZ_SW_NB] = {0.0}, q[NZ_SW_NB] = {0.0};
    for (int64_t c = 0; c < C; ++c)
      for (int j = 0; j < nb; ++j) s[j] += mean[(n0 + j) * C + c];
    for (int j = 0; j < nb; ++j) mean_ln[n0 + j] = s[j] / (double)C;
    for (int64_t c = 0; c < C; ++c)
      for (int j = 0; j < nb; ++j) {
        const double d = mean[(n0 + j) * C + c] - mean_ln[n0 + j];
        q[j] += var[(n0 + j) * C + c] + d * d;
      }
    for (int j = 0; j < nb; ++j) var_ln[n0 + j] = q[j] / (double)C;
  }
  /* per channel, over the samples: NZ_SW_CB channels in the lanes */
#pragma omp for schedule(static)
  for (int64_t c0 = 0; c0 < C; c0 += NZ_SW_CB) {
    const int64_t cb = C - c0 < NZ_SW_CB ? C - c0 : NZ_SW_CB;
    if (running_mean) {
      for (int64_t j = 0; j < cb; ++j) {
        mean_bn[c0 + j] = running_mean[c0 + j];
        var_bn[c0 + j] = running_var[c0 + j];
      }
      continue;
    }
    double s[NZ_SW_CB] = {0.0}, q[NZ_SW_CB] = {0.0};
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 0; j < cb; ++j) s[j] += mean[n * C + c0 + j];
    for (int64_t j = 0; j < cb; ++j) mean_bn[c0 + j] = s[j] / (double)N;
    for (int64_t n = 0; n < N; ++n)
      for (int64_t j = 0; j < cb; ++j) {
        const double d = mean[n * C + c0 + j] - mean_bn[c0 + j];
        q[j] += var[n * C + c0 + j] + d * d;
      }
    for (int64_t j = 0; j < cb; ++j) {
      var_bn[c0 + j] = q[j] / (double)N;
      if (stats_bn) {
        stats_bn[c0 + j] = (float)mean_bn[c0 + j];
        stats_bn[C + c0 + j] = (float)var_bn[c0 + j];
      }
    }
  }
}

/* The forward's graph: the mixture, then per row the mixed mean m and variance s2 and the
 * map's a = w / sqrt(s2 + eps), b = bias - m a (params (N C 2)). scratch: 2 (N + C) doubles;
 * stats_bn as switchable_mix_for's. */
static void switchable_params(const float *mean, const float *var, const float *mean_weight,
                              const float *var_weight, const float *w, const float *b,
                              const float *running_mean, const float *running_var, double eps,
                              float *stats_bn, float *params, double *scratch, int64_t N,
                              int64_t C, int threads) {
  double *mean_ln = scratch, *var_ln = scratch + N, *mean_bn = scratch + 2 * N,
         *var_bn = scratch + 2 * N + C, wm[3], wv[3];
  softmax3(mean_weight, wm);
  softmax3(var_weight, wv);
#pragma omp parallel num_threads(N * C >= NZ_SW_PARALLEL ? threads : 1)
  {
    switchable_mix_for(mean, var, running_mean, running_var, mean_ln, var_ln, mean_bn, var_bn,
                       running_mean ? NULL : stats_bn, N, C);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n)
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const int64_t r = n * C + c;
        const double m = wm[0] * mean[r] + wm[1] * mean_ln[n] + wm[2] * mean_bn[c];
        const double s2 = wv[0] * var[r] + wv[1] * var_ln[n] + wv[2] * var_bn[c];
        const double a = (w ? w[c] : 1.0) / sqrt(s2 + eps);
        params[r * 2] = (float)a;
        params[r * 2 + 1] = (float)((b ? b[c] : 0.0) - m * a);
      }
  }
}

/* The backward's graph, from the rows' sums (N C 2: dL/da, dL/db of each row's map; scratch
 * after it, the first of each pair overwritten by the row's share of dL/dw): dL/dw, dL/db
 * (per channel), the mixture weights' gradients dmw, dvw (3 each) and k (2 N C: k1, k0 of
 * nz_map_dx). Any output pointer may be NULL. scratch: 4 N + 5 C + 2 N C doubles. */
static void switchable_grads(const float *mean, const float *var, const float *params,
                             float *sums, const float *mean_weight, const float *var_weight,
                             const float *w, const float *running_mean, const float *running_var,
                             double eps, float *k, double *scratch, float *dmw, float *dvw,
                             float *dw, float *db, int64_t N, int64_t C, int64_t L, int threads) {
  double *mean_ln = scratch, *var_ln = scratch + N, *mean_bn = scratch + 2 * N,
         *var_bn = scratch + 2 * N + C, *gl = scratch + 2 * N + 2 * C,
         *hl = scratch + 3 * N + 2 * C, *tb = scratch + 4 * N + 2 * C,
         *ub = scratch + 4 * N + 3 * C, *vb = scratch + 4 * N + 4 * C,
         *gm = scratch + 4 * N + 5 * C, *gv = gm + N * C, wm[3], wv[3];
  const int batch = !running_mean;
  softmax3(mean_weight, wm);
  softmax3(var_weight, wv);
  float *k1 = k, *k0 = k + N * C; /* first the gradients of the mixed mean and variance */
#pragma omp parallel num_threads(N * C >= NZ_SW_PARALLEL ? threads : 1)
  {
    switchable_mix_for(mean, var, running_mean, running_var, mean_ln, var_ln, mean_bn, var_bn,
                       NULL, N, C);
    /* per row: the gradients of its mixed mean and variance (gm, gv; k0, k1 as floats), its
     * share of dL/dw (into sums), and the per-sample sums over the channels (gl, hl) */
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const int64_t r = n * C + c;
        const double m = wm[0] * mean[r] + wm[1] * mean_ln[n] + wm[2] * mean_bn[c];
        const double s2 = wv[0] * var[r] + wv[1] * var_ln[n] + wv[2] * var_bn[c];
        const double a0 = 1.0 / sqrt(s2 + eps), a = params[r * 2];
        const double ga = sums[r * 2], gbias = sums[r * 2 + 1];
        const double g_mean = -gbias * a, g_a = ga - gbias * m; /* b = bias - mean a */
        const double g_var = g_a * (w ? w[c] : 1.0) * -0.5 * a0 * a0 * a0;
        sums[r * 2] = (float)(g_a * a0);
        gm[r] = g_mean, gv[r] = g_var;
        k1[r] = (float)g_var, k0[r] = (float)g_mean;
      }
      double sg = 0.0, sh = 0.0; /* (chains: apart from the loop above, which vectorizes) */
      for (int64_t c = 0; c < C; ++c) sg += gm[n * C + c], sh += gv[n * C + c];
      gl[n] = sg, hl[n] = sh;
    }
    /* the mixture weights' sums over every row, in order, on one thread (the others go on) */
#pragma omp single nowait
    if (dmw || dvw) {
      double m0 = 0.0, m1 = 0.0, m2 = 0.0, v0 = 0.0, v1 = 0.0, v2 = 0.0; /* in registers */
      for (int64_t n = 0; n < N; ++n)
        for (int64_t c = 0; c < C; ++c) {
          const int64_t r = n * C + c;
          const double g_mean = gm[r], g_var = gv[r];
          m0 += g_mean * mean[r], m1 += g_mean * mean_ln[n], m2 += g_mean * mean_bn[c];
          v0 += g_var * var[r], v1 += g_var * var_ln[n], v2 += g_var * var_bn[c];
        }
      const double gwm[3] = {m0, m1, m2}, gwv[3] = {v0, v1, v2};
      const double sm = wm[0] * gwm[0] + wm[1] * gwm[1] + wm[2] * gwm[2];
      const double sv = wv[0] * gwv[0] + wv[1] * gwv[1] + wv[2] * gwv[2];
      for (int i = 0; i < 3; ++i) { /* softmax: dl = w (g - sum w g) */
        if (dmw) dmw[i] = (float)(wm[i] * (gwm[i] - sm));
        if (dvw) dvw[i] = (float)(wv[i] * (gwv[i] - sv));
      }
    }
    /* per channel: the sums over the samples (of gm, gv; dL/dw and dL/db in float), then
     * the second loop's per-channel terms from them */
#pragma omp for schedule(dynamic, 1)
    for (int64_t c0 = 0; c0 < C; c0 += NZ_SW_CB) {
      const int64_t cb = C - c0 < NZ_SW_CB ? C - c0 : NZ_SW_CB;
      double sg[NZ_SW_CB] = {0.0}, sh[NZ_SW_CB] = {0.0};
      float tw[NZ_SW_CB] = {0.f}, tb0[NZ_SW_CB] = {0.f};
      for (int64_t n = 0; n < N; ++n)
        for (int64_t j = 0; j < cb; ++j) {
          const int64_t r = n * C + c0 + j;
          sg[j] += gm[r], sh[j] += gv[r];
          tw[j] += sums[r * 2], tb0[j] += sums[r * 2 + 1];
        }
      for (int64_t j = 0; j < cb; ++j) {
        const int64_t c = c0 + j;
        if (dw) dw[c] = tw[j];
        if (db) db[c] = tb0[j];
        tb[c] = wm[2] * sg[j] / (double)N;
        ub[c] = wv[2] * sh[j] * 2.0 / (double)N;
        vb[c] = wv[2] * sh[j] / (double)N;
      }
    }
    /* mean_ln = mean_c mean_in, var_ln = mean_c (var_in + (mean_in - mean_ln)^2); BN alike */
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const double tl = wm[1] * gl[n] / (double)C, ul = wv[1] * hl[n] * 2.0 / (double)C,
                   vl = wv[1] * hl[n] / (double)C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const int64_t r = n * C + c;
        double dmean = wm[0] * k0[r] + tl + ul * (mean[r] - mean_ln[n]);
        double dvar = wv[0] * k1[r] + vl;
        if (batch) {
          dmean += tb[c] + ub[c] * (mean[r] - mean_bn[c]);
          dvar += vb[c];
        }
        k1[r] = (float)(2.0 * dvar / (double)L);
        k0[r] = (float)(dmean / (double)L);
      }
    }
  }
}


/* ---------------------------------------------------------------- fused groups -------- *
 * EvoNorm-S0 (per group of a sample), FRN (per row: groups of one) and RMSNorm (per sample)
 * on contiguous input finish each group while its rows are in the core's cache: a task
 * takes a run of whole groups (up to NZ_FUSE_ROWS rows, NZ_FUSE_BYTES of x, or one group of
 * at most NZ_FUSE_GROUP_BYTES) and, in the forward, their row
 * statistics, their parameters and their map (x read from memory once); in the backward,
 * their sums, their statistics' share (k1, k0) and dx (x and dy read once; S0's (df/dx) dy
 * kept from the sums for dx, in dx itself for float32 and in a float buffer per thread for
 * bfloat16, where the two-pass path recomputes it). A run of rows rather than one group:
 * each row's statistics end in a chain of dependent steps (lane sums, the mean, the second
 * sweep, a square root and a division) that the next rows' overlap. The same expressions in
 * the same order as the two-pass path (the results are its bits; bfloat16 S0's dx the
 * float32 kernels' rounded); taken where the tasks give every thread NZ_GROUP_TASKS or more.
 * On channels_last input a task is a block of whole groups of one sample (the channels of
 * about NZ_CL_FUSE_BYTES of x, up to NZ_CB, runs of NZ_CL_MIN_RUN bytes or more per position),
 * its statistics, parameters and map (backward: sums, k1 and k0, dx) one after another while
 * the block is in cache: the two-pass path's blocks and expressions, so its bits; taken where
 * the tasks give every thread NZ_GROUP_TASKS, or the same number each. Kernel A/B against the
 * two-pass path (EPYC, 31 rounds, docs/data/ab_zoo_cl_fused.json): forward 0.79-0.97,
 * backward 0.87-0.99 on the four conv shapes for S0, FRN and RMSNorm (a 256 KB block, 16
 * channels of (4, 32, 64, 64), ran 1.25-1.36: a position's run of 64 bytes). */
#define NZ_GROUP_TASKS 4
#define NZ_FUSE_ROWS 8
#define NZ_FUSE_BYTES (64 * 1024)
#define NZ_FUSE_GROUP_BYTES (1024 * 1024)
#ifndef NZ_CL_FUSE_BYTES /* -D for experiments */
#define NZ_CL_FUSE_BYTES (512 * 1024)
#endif
#define NZ_CL_MIN_RUN 128

typedef struct {
  const float *v, *w, *b, *tau; /* v: S0 only, tau: FRN only; w, b may be NULL (not FRN) */
  double eps;
  int64_t C;
} nz_fuse;

/* Groups of `size` rows of L elements of `elem` bytes per task. */
static int64_t fuse_groups(int64_t size, int64_t L, int64_t elem) {
  int64_t rows = L > 0 ? NZ_FUSE_BYTES / (L * elem) : NZ_FUSE_ROWS;
  rows = rows < NZ_FUSE_ROWS ? rows : NZ_FUSE_ROWS;
  const int64_t per = rows / size;
  return per > 1 ? per : 1;
}

/* EvoNorm-B0's parameters of channel c's rows (params (N C 5)): v, s_i = sqrt(var + eps),
 * s_b = sqrt(var_b + eps), w, b; var_b the batch variance (written to var_b[c]) or, with
 * running_var, that. */
static void b0_channel_params(const float *v, const float *w, const float *b,
                              const float *running_var, double eps, const float *mean,
                              const float *var, const float *lo, float *var_b, float *params,
                              int64_t N, int64_t C, int64_t c) {
  double vb;
  if (running_var) {
    vb = running_var[c];
  } else {
    const double mb = mean_over_n(mean, lo, N, C, c);
    double s = 0.0;
    for (int64_t n = 0; n < N; ++n) {
      const double d = exact_mean(mean, lo, n * C + c) - mb;
      s += var[n * C + c] + d * d;
    }
    vb = s / (double)N;
    var_b[c] = (float)vb;
  }
  const float sb = (float)sqrt(vb + eps);
  for (int64_t n = 0; n < N; ++n) {
    float *p = params + (n * C + c) * 5;
    p[0] = v[c];
    p[1] = (float)sqrt((double)var[n * C + c] + eps);
    p[2] = sb;
    p[3] = w ? w[c] : 1.f;
    p[4] = b ? b[c] : 0.f;
  }
}

/* EvoNorm-B0's backward through the statistics of channel c's rows: dv, dw, db of c (each may
 * be NULL) and its rows' k1, k0, from their sums (N C 5). batch: s_b came from the batch. */
static void b0_channel_k(const float *sums, const float *params, const float *mean,
                         const float *lo, int batch, float *k1, float *k0, float *dv, float *dw,
                         float *db, int64_t N, int64_t C, int64_t L, int64_t c) {
  double sv = 0.0, ssb = 0.0, sw = 0.0, sbias = 0.0;
  for (int64_t n = 0; n < N; ++n) {
    const float *s = sums + (n * C + c) * 5;
    sv += s[0], ssb += s[2], sw += s[3], sbias += s[4];
  }
  if (dv) dv[c] = (float)sv;
  if (dw) dw[c] = (float)sw;
  if (db) db[c] = (float)sbias;
  /* s = sqrt(u): du = ds / (2 s); var_b = mean_n var_i + mean_n (mean_i - mean_b)^2 */
  const double dvar_b = batch ? ssb * 0.5 / params[c * 5 + 2] : 0.0;
  const double mb = batch ? mean_over_n(mean, lo, N, C, c) : 0.0;
  for (int64_t n = 0; n < N; ++n) {
    const int64_t r = n * C + c;
    const double dvar = sums[r * 5 + 1] * 0.5 / params[r * 5 + 1] + dvar_b / (double)N;
    const double dmean = batch ? (exact_mean(mean, lo, r) - mb) * dvar_b * 2.0 / (double)N : 0.0;
    /* map_dx adds k1 (x - mean) + k0 with the float mean: k0 takes back k1 lo */
    const double a = 2.0 * dvar / (double)L;
    k1[r] = (float)a;
    k0[r] = (float)(dmean / (double)L - (lo ? a * lo[r] : 0.0));
  }
}

/* EvoNorm-S0's small graph runs on ng consecutive groups of `size` rows from row r0 (a
 * group's first row, n C + c0), in phases over up to NZ_CB groups at a time (their
 * statistics, then their square roots and divisions, then their rows): each group's steps
 * are a chain of dependent double operations (sums, a square root, a division), and a group
 * at a time left them to run one after another (on (128, 64, 8, 8), 4096 groups of two
 * channels a call: a sixth of the forward's and of the backward's time in `perf`). */

/* The parameters of each row: v, a = w / sqrt(var_g + eps), b. */
static void s0_group_params(const float *v, const float *w, const float *b, double eps,
                            const float *mean, const float *lo, const float *var, float *params,
                            int64_t C, int64_t r0, int64_t ng, int64_t size) {
  double r[NZ_CB];
  for (int64_t j0 = 0; j0 < ng; j0 += NZ_CB) {
    const int64_t m = ng - j0 < NZ_CB ? ng - j0 : NZ_CB, q0 = r0 + j0 * size;
    for (int64_t j = 0; j < m; ++j) {
      double mg, vg;
      group_stats(mean, lo, var, q0 + j * size, size, &mg, &vg);
      r[j] = vg + eps;
    }
    for (int64_t j = 0; j < m; ++j) r[j] = 1.0 / sqrt(r[j]);
    for (int64_t j = 0; j < m; ++j) {
      const int64_t row = q0 + j * size, c0 = row % C;
      for (int64_t i = 0; i < size; ++i) {
        float *p = params + (row + i) * 3;
        p[0] = v[c0 + i];
        p[1] = (float)(w ? r[j] * w[c0 + i] : r[j]);
        p[2] = b ? b[c0 + i] : 0.f;
      }
    }
  }
}

/* The backward through the statistics: k1 and k0 of each row (map_dx adds k1 (x - mean_c) +
 * k0), from the rows' sums (N C 3); then each row's second sum scaled by its group's
 * 1 / sqrt(var_g + eps), its share of dL/dw. */
static void s0_group_k(float *sums, const float *mean, const float *lo, const float *var,
                       const float *w, double eps, float *k1, float *k0, int64_t C, int64_t r0,
                       int64_t ng, int64_t size, int64_t L) {
  double mg[NZ_CB], r[NZ_CB], gr[NZ_CB];
  for (int64_t j0 = 0; j0 < ng; j0 += NZ_CB) {
    const int64_t m = ng - j0 < NZ_CB ? ng - j0 : NZ_CB, q0 = r0 + j0 * size;
    for (int64_t j = 0; j < m; ++j) {
      const int64_t row = q0 + j * size, c0 = row % C;
      double vg, g = 0.0;
      group_stats(mean, lo, var, row, size, &mg[j], &vg);
      r[j] = vg + eps;
      for (int64_t i = 0; i < size; ++i) {
        const float *s = sums + (row + i) * 3;
        g += w ? (double)s[1] * w[c0 + i] : (double)s[1];
      }
      gr[j] = g;
    }
    for (int64_t j = 0; j < m; ++j) r[j] = 1.0 / sqrt(r[j]);
    for (int64_t j = 0; j < m; ++j) {
      /* r = (var_g + eps)^(-1/2), var_g = mean var_c + mean (mean_c - mean_g)^2 */
      const double dvar_g = gr[j] * -0.5 * r[j] * r[j] * r[j];
      /* map_dx adds k1 (x - mean_c) + k0 with the float channel mean: k0 = k1 (mean_c - mg),
       * mg the exact group mean */
      const double f = 2.0 * dvar_g / ((double)size * (double)L);
      const int64_t row = q0 + j * size;
      for (int64_t i = row; i < row + size; ++i) {
        float *s = sums + i * 3;
        k1[i] = (float)f;
        k0[i] = (float)((mean[i] - mg[j]) * f);
        s[1] = (float)(s[1] * r[j]); /* the row's share of dL/dw, for column_sums_for */
      }
    }
  }
}

/* FRN's parameters of row r (channel c): a = w / sqrt(nu2 + eps), b, tau. */
static void frn_row_params(const float *w, const float *b, const float *tau, double eps,
                           const float *mean, const float *var, float *params, int64_t r,
                           int64_t c) {
  const double m = mean[r], q = 1.0 / sqrt(var[r] + m * m + eps);
  params[r * 3] = (float)(w[c] * q);
  params[r * 3 + 1] = b[c];
  params[r * 3 + 2] = tau[c];
}

/* FRN's backward through nu2 of row r (channel c): its k1 and k0, from its sums. */
static void frn_row_k(const float *sums, const float *mean, const float *var, const float *w,
                      double eps, float *k1, float *k0, int64_t r, int64_t c, int64_t L) {
  const double m = mean[r], q = 1.0 / sqrt(var[r] + m * m + eps);
  /* q = (nu2 + eps)^(-1/2), nu2 = var + mean^2 */
  const double dnu2 = sums[r * 3] * w[c] * -0.5 * q * q * q;
  k1[r] = (float)(2.0 * dnu2 / (double)L);
  k0[r] = (float)(2.0 * m * dnu2 / (double)L);
}

/* FRN's parameter gradients of channel c (each may be NULL), from its rows' sums. */
static void frn_channel_grads(const float *sums, const float *mean, const float *var, double eps,
                              float *dw, float *db, float *dtau, int64_t N, int64_t C, int64_t c) {
  double sw = 0.0, sb = 0.0, st = 0.0;
  for (int64_t n = 0; n < N; ++n) {
    const int64_t r = n * C + c;
    const double m = mean[r], q = 1.0 / sqrt(var[r] + m * m + eps);
    const float *g = sums + r * 3; /* sum h x, sum h, sum dy */
    sw += g[0] * q, sb += g[1], st += g[2] - g[1];
  }
  if (dw) dw[c] = (float)sw;
  if (db) db[c] = (float)sb;
  if (dtau) dtau[c] = (float)st;
}

/* RMSNorm's 1 / rms of sample n: (mean_c (var + mean^2) + eps)^(-1/2). */
static double rms_inverse(const float *mean, const float *var, double eps, int64_t n, int64_t C) {
  double ms = 0.0;
  for (int64_t c = 0; c < C; ++c) {
    const double m = mean[n * C + c];
    ms += var[n * C + c] + m * m;
  }
  return 1.0 / sqrt(ms / (double)C + eps);
}

/* RMSNorm's parameters of sample n (params (N C 2)): a = w / rms, b. */
static void rms_sample_params(const float *w, const float *b, double eps, const float *mean,
                              const float *var, float *params, int64_t n, int64_t C) {
  const double r = rms_inverse(mean, var, eps, n, C);
  for (int64_t c = 0; c < C; ++c) {
    params[(n * C + c) * 2] = (float)(w ? w[c] * r : r);
    params[(n * C + c) * 2 + 1] = b ? b[c] : 0.f;
  }
}

/* RMSNorm's backward through the rms of sample n: k1, k0 of its rows, from their sums; then
 * each row's first sum scaled by 1 / rms, its share of dL/dw. */
static void rms_sample_k(float *sums, const float *mean, const float *var, const float *w,
                         double eps, float *k1, float *k0, int64_t n, int64_t C, int64_t L) {
  const double r = rms_inverse(mean, var, eps, n, C);
  double gr = 0.0;
  for (int64_t c = 0; c < C; ++c) {
    const float *g = sums + (n * C + c) * 2; /* sum dy x, sum dy */
    gr += w ? (double)g[0] * w[c] : (double)g[0];
  }
  /* r = (ms + eps)^(-1/2), ms = mean_c (var + mean^2) */
  const double dms = gr * -0.5 * r * r * r / (double)C;
  for (int64_t c = 0; c < C; ++c) {
    float *g = sums + (n * C + c) * 2;
    k1[n * C + c] = (float)(2.0 * dms / (double)L);
    k0[n * C + c] = (float)(2.0 * mean[n * C + c] * dms / (double)L);
    g[0] = (float)(g[0] * r); /* the row's share of dL/dw, for column_sums_for */
  }
}

/* bfloat16: nz_bf16_load, nz_bf16_store (nz_bf16.h). */
/* ---------------------------------------------------------------- tokens --------------- *
 * R rows of C channels with no spatial positions ((N, C) input, contiguous): kernels that
 * read a row from memory once and work on it in cache, the column sums of the parameter
 * gradients per block of NZ_TOK_ROWS rows in their own slot of `partial`, added in block order
 * (the same bits for any thread count).
 *
 * Grouped rows (GroupNorm, EvoNorm-S0): group g of row r is the K = C / G contiguous values
 * x[r, gK .. (g + 1)K); its mean and biased variance take two passes over the cached values,
 * rstd = 1 / sqrt(var + eps).
 *   op NZ_TOK_GN: y = (x - mean) rstd w_c + b_c
 *   op NZ_TOK_S0: y = x s rstd w_c + b_c,  s = sigmoid(v_c x)
 * backward, h = w_c dy:
 *   GN: dx = rstd (h - mean_g(h) - xhat mean_g(h xhat)),   dw_c = sum_r dy xhat
 *   S0: dx = h rstd s (1 + v x (1 - s)) - rstd^3 (x - mean) mean_g(h x s),
 *       dv_c = sum_r h rstd x^2 s (1 - s),   dw_c = sum_r dy x s rstd
 *   both: db_c = sum_r dy.   w and b are required (ones and zeros for no affine map).
 */
#define NZ_TOK_GN 0
#define NZ_TOK_S0 1
#define NZ_TOK_ROWS 64

static inline int64_t nz_min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* Block blk of the rows: its slot of S C floats in `partial`, zeroed, and its last row + 1. */
NZ_INLINE float *tok_block(float *partial, int64_t blk, int S, int64_t C, int64_t R,
                           int64_t *r1) {
  float *slot = partial + blk * S * C;
  for (int64_t c = 0; c < S * C; ++c) slot[c] = 0.f;
  *r1 = nz_min64((blk + 1) * NZ_TOK_ROWS, R);
  return slot;
}

/* The block sums of `partial` (S slots of C floats per block) added in block order into
 * out[0..S) (entries may be NULL); an orphaned `omp for` inside the caller's parallel region. */
static void tok_column_totals(const float *partial, int64_t nb, int64_t C, int S,
                              float *const *out) {
#pragma omp for schedule(static)
  for (int64_t c = 0; c < C; ++c) {
    for (int s = 0; s < S; ++s) {
      if (!out[s]) continue;
      double t = 0.0;
      for (int64_t blk = 0; blk < nb; ++blk) t += partial[(blk * S + s) * C + c];
      out[s][c] = (float)t;
    }
  }
}


/* ---------------------------------------------------------------- layout copies -------- *
 * dst = src in the other layout of an (N, C, L) tensor: to_cl = 1 from contiguous (rows of L
 * positions) to channels_last (C channels per position), to_cl = 0 back. Bit copies of 4-byte
 * (float32) or 2-byte (bfloat16) elements by tiles of NZ_TILE x NZ_TILE, tasks of (sample,
 * tile) shared among the threads; the inner loop runs along the longer rows (read or written
 * as a stream: along the shorter, the tile's 32 lines of the longer side, 4 KB apart, fought
 * over the same L1 set, and (64, 32, 1024) took 1.9 ms instead of 0.97). A backward whose dy comes in the other layout than x (a graph under torch.compile:
 * inductor's choice of layouts) takes this instead of torch's copy_, which measured 2.1 ms on
 * a (64, 32, 1024) float32 tensor (7.6 GB/s moved, the 2-core EPYC). */
#define NZ_TILE 32
#define NZ_TRANSPOSE(T, name)                                                                   \
  void name(const T *src, T *dst, int64_t N, int64_t C, int64_t L, int to_cl, int threads) {   \
    /* per sample, src is R rows of K values and dst K rows of R */                          \
    const int64_t R = to_cl ? C : L, K = to_cl ? L : C;                                        \
    const int64_t tr = (R + NZ_TILE - 1) / NZ_TILE, tk = (K + NZ_TILE - 1) / NZ_TILE;          \
    _Pragma("omp parallel for num_threads(threads) schedule(static)")                         \
    for (int64_t t = 0; t < N * tr * tk; ++t) {                                                \
      const int64_t n = t / (tr * tk), i0 = (t / tk) % tr * NZ_TILE, j0 = t % tk * NZ_TILE;    \
      const int64_t i1 = i0 + NZ_TILE < R ? i0 + NZ_TILE : R;                                  \
      const int64_t j1 = j0 + NZ_TILE < K ? j0 + NZ_TILE : K;                                  \
      const T *s = src + n * R * K;                                                            \
      T *d = dst + n * R * K;                                                                  \
      if (K >= R) /* the inner loop along the longer rows */                                 \
        for (int64_t i = i0; i < i1; ++i)                                                      \
          for (int64_t j = j0; j < j1; ++j) d[j * R + i] = s[i * K + j];                       \
      else                                                                                     \
        for (int64_t j = j0; j < j1; ++j)                                                      \
          for (int64_t i = i0; i < i1; ++i) d[j * R + i] = s[i * K + j];                       \
    }                                                                                          \
  }
NZ_TRANSPOSE(uint32_t, nz_transpose_layout)
NZ_TRANSPOSE(uint16_t, nz_transpose_layout_bf16)
#undef NZ_TRANSPOSE

/* The row kernels and norms (zoo_rows.h) and the token kernels (zoo_tokens.h), once per element
 * type: float32 under their own names, bfloat16 under the same names with _bf16 appended.
 * NZ_STAGE: bfloat16's S0 forward map converts in loops of their own around a float loop (a
 * loop over 16-bit elements vectorizes the sigmoid on twice the lanes: 0.89-0.98 of the
 * forward's time, the same bits; B0's division measured 1.03-1.07, so it stays as it is).
 * NZ_VLD(p): NZ_VL elements widened to an nz_vf; NZ_VSUMS: nz_simd.h's shifted sums of them.
 * NZ_DIRECT: B0's and S0's backward keep (df/dx) dy in dx between their two sweeps in float32;
 * in bfloat16 that would round it, so the second sweep recomputes it instead. */
#define NZ_T float
#define NZ_LD(v) (v)
#define NZ_ST(v) (v)
#define NZ_VLD(p) nz_load(p)
#define NZ_VSUMS nz_short_sums
#define NZ_FN(name) name
#define NZ_DIRECT(p) (p)
#define NZ_STAGE 0
#include "zoo_rows.h"
#include "zoo_tokens.h"
#undef NZ_T
#undef NZ_LD
#undef NZ_ST
#undef NZ_VLD
#undef NZ_VSUMS
#undef NZ_FN
#undef NZ_DIRECT
#undef NZ_STAGE

#define NZ_T uint16_t
#define NZ_LD(v) nz_bf16_load(v)
#define NZ_ST(v) nz_bf16_store(v)
#define NZ_VLD(p) nz_load_bf16(p)
#define NZ_VSUMS nz_short_sums_bf16
#define NZ_FN(name) name##_bf16
#define NZ_DIRECT(p) ((float *)NULL)
#define NZ_STAGE 1
#include "zoo_rows.h"
#include "zoo_tokens.h"
#undef NZ_T
#undef NZ_LD
#undef NZ_ST
#undef NZ_VLD
#undef NZ_VSUMS
#undef NZ_FN
#undef NZ_DIRECT
#undef NZ_STAGE


/* ---------------------------------------------------------------- frozen affine ------- *
 * FrozenBatchNorm: y = a x + b per channel, a = w / sqrt(running_var + eps) and b = bias -
 * running_mean a (frozen_coef; w, bias may be NULL: 1 and 0), with relu: y = max(a x + b, 0)
 * (NaN kept, as torch.relu keeps it) in the same pass. Both forwards compute a x + b through
 * nz_affine, so the fused output is the plain output's ReLU to the bit. The backward takes
 * the output y (a ReLU's mask needs only y: y <= 0 exactly where a x + b <= 0, as torch's
 * relu backward reads its result): dx = dy a, with relu 0 where y <= 0. Per (n, c) row of L
 * values (contiguous), or per position with its C channels (channels_last). Returns -1,
 * having written nothing, where the coefficients' C floats cannot be allocated. */
NZ_INLINE float nz_affine(float x, float a, float b) { return x * a + b; }

static float *frozen_coef(const float *mean, const float *var, const float *w, const float *b,
                          double eps, int64_t C, int shift) {
  float *k = malloc((size_t)(shift ? 2 * C : C) * sizeof(float));
  if (!k) return NULL;
  for (int64_t c = 0; c < C; ++c) {
    k[c] = (float)((w ? (double)w[c] : 1.0) / sqrt((double)var[c] + eps));
    if (shift) k[C + c] = (b ? b[c] : 0.f) - mean[c] * k[c];
  }
  return k;
}

int nz_frozen_forward(const float *x, const float *mean, const float *var, const float *w,
                      const float *b, double eps, float *y, int64_t N, int64_t C, int64_t L,
                      int cl, int relu, int threads) {
  float *k = frozen_coef(mean, var, w, b, eps, C, 1);
  if (!k) return -1;
  const float *a = k, *sh = k + C;
  if (L == 1) cl = 1; /* tokens (N, C): rows of C channels, the channels_last loop */
#pragma omp parallel num_threads(threads)
  {
    if (!cl) {
#pragma omp for schedule(static)
      for (int64_t r = 0; r < N * C; ++r) {
        const float ar = a[r % C], br = sh[r % C];
        const float *xr = x + r * L;
        float *yr = y + r * L;
        if (relu) {
#pragma omp simd
          for (int64_t i = 0; i < L; ++i) {
            const float v = nz_affine(xr[i], ar, br);
            yr[i] = v < 0.f ? 0.f : v;
          }
        } else {
#pragma omp simd
          for (int64_t i = 0; i < L; ++i) yr[i] = nz_affine(xr[i], ar, br);
        }
      }
    } else {
#pragma omp for schedule(static)
      for (int64_t r = 0; r < N * L; ++r) {
        const float *xr = x + r * C;
        float *yr = y + r * C;
        if (relu) {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            const float v = nz_affine(xr[c], a[c], sh[c]);
            yr[c] = v < 0.f ? 0.f : v;
          }
        } else {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) yr[c] = nz_affine(xr[c], a[c], sh[c]);
        }
      }
    }
  }
  free(k);
  return 0;
}

int nz_frozen_backward(const float *dy, const float *y, const float *var, const float *w,
                       double eps, float *dx, int64_t N, int64_t C, int64_t L, int cl, int relu,
                       int threads) {
  float *a = frozen_coef(NULL, var, w, NULL, eps, C, 0);
  if (!a) return -1;
  if (L == 1) cl = 1;
#pragma omp parallel num_threads(threads)
  {
    if (!cl) {
#pragma omp for schedule(static)
      for (int64_t r = 0; r < N * C; ++r) {
        const float ar = a[r % C];
        const float *gr = dy + r * L;
        float *o = dx + r * L;
        if (relu) {
          const float *yr = y + r * L;
#pragma omp simd
          for (int64_t i = 0; i < L; ++i) o[i] = yr[i] <= 0.f ? 0.f : gr[i] * ar;
        } else {
#pragma omp simd
          for (int64_t i = 0; i < L; ++i) o[i] = gr[i] * ar;
        }
      }
    } else {
#pragma omp for schedule(static)
      for (int64_t r = 0; r < N * L; ++r) {
        const float *gr = dy + r * C;
        float *o = dx + r * C;
        if (relu) {
          const float *yr = y + r * C;
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) o[c] = yr[c] <= 0.f ? 0.f : gr[c] * a[c];
        } else {
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) o[c] = gr[c] * a[c];
        }
      }
    }
  }
  free(a);
  return 0;
}
