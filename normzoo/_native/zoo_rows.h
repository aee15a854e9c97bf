/* The zoo's per-row kernels and norms (see zoo.c), written once for an element type:
 * zoo.c includes this file twice (no include guard), with
 *   NZ_T          the element type of the full-size tensors x, y, dy, dx (float, or uint16_t
 *                 holding bfloat16 bits); statistics, parameters and gradients of parameters
 *                 are float32 either way;
 *   NZ_LD(v)      an NZ_T value as a float;   NZ_ST(f)  a float as an NZ_T (rounded once);
 *   NZ_FN(name)   the exported name for this type (name, or name_bf16);
 *   NZ_DIRECT(p)  the float buffer in which B0 and S0 keep (df/dx) dy between their backward
 *                 sweeps (dx itself for float32; NULL, recomputing it, for bfloat16).
 */

/* ---------------------------------------------------------------- statistics ---------- */

/* sum(p[i] - k) (sq: sum((p[i] - k)^2)) over i from i0 to i1: two chains of vectors, a tree
 * over their lanes (nz_hsum), the tail one at a time. The compiled `omp simd reduction` added
 * its partial sums one at a time through the stack after every chunk: on rows of tens of
 * values (a (sample, channel) row of (128, 64, 8, 8)) about a third of FRN's forward. */
NZ_INLINE float NZ_FN(chunk_sum)(const NZ_T *p, int64_t i0, int64_t i1, float k, int sq) {
  nz_vf a = {0}, b = {0};
  int64_t i = i0;
  for (; i + 2 * NZ_VL <= i1; i += 2 * NZ_VL) {
    const nz_vf d = NZ_VLD(p + i) - k, e = NZ_VLD(p + i + NZ_VL) - k;
    a += sq ? d * d : d;
    b += sq ? e * e : e;
  }
  if (i + NZ_VL <= i1) {
    const nz_vf d = NZ_VLD(p + i) - k;
    a += sq ? d * d : d;
    i += NZ_VL;
  }
  float f = nz_hsum(a + b);
  for (; i < i1; ++i) {
    const float d = NZ_LD(p[i]) - k;
    f += sq ? d * d : d;
  }
  return f;
}

/* One contiguous row of L values: its mean (*mean, with its rounding remainder in *lo where
 * not NULL) and biased variance (see row_stats). */
NZ_INLINE void NZ_FN(row_stat)(const NZ_T *p, int64_t L, float *mean, float *var, float *lo) {
  const float k = NZ_LD(p[0]);
  double s = 0.0;
  for (int64_t i0 = 0; i0 < L; i0 += NZ_CHUNK)
    s += NZ_FN(chunk_sum)(p, i0, i0 + NZ_CHUNK < L ? i0 + NZ_CHUNK : L, k, 0);
  const double mu = (double)k + s / (double)L;
  const float m = (float)mu;
  if (lo) *lo = (float)(mu - (double)m);
  double q = 0.0;
  for (int64_t i0 = 0; i0 < L; i0 += NZ_CHUNK)
    q += NZ_FN(chunk_sum)(p, i0, i0 + NZ_CHUNK < L ? i0 + NZ_CHUNK : L, m, 1);
  *mean = m;
  *var = (float)(q / (double)L);
}

/* channels_last block (sample n, channels c0 .. c0 + k, k <= NZ_CB): its rows' statistics as
 * row_stats_for's (below), from L k-wide runs: small enough (L NZ_CB values) to read the
 * variance's second sweep from cache. */
NZ_INLINE void NZ_FN(cl_block_stats)(const NZ_T *x, float *mean, float *var, float *lo,
                                     int64_t n, int64_t c0, int64_t k, int64_t C, int64_t L) {
  const NZ_T *base = x + n * L * C + c0;
  float m[NZ_CB], f[NZ_CB], shift[NZ_CB];
  double s[NZ_CB];
  for (int64_t j = 0; j < k; ++j) s[j] = 0.0, shift[j] = NZ_LD(base[j]);
  for (int64_t l0 = 0; l0 < L; l0 += NZ_CL_CHUNK) {
    const int64_t l1 = l0 + NZ_CL_CHUNK < L ? l0 + NZ_CL_CHUNK : L;
    for (int64_t j = 0; j < k; ++j) f[j] = 0.f;
    for (int64_t l = l0; l < l1; ++l) {
      const NZ_T *p = base + l * C;
#pragma omp simd
      for (int64_t j = 0; j < k; ++j) f[j] += NZ_LD(p[j]) - shift[j];
    }
    for (int64_t j = 0; j < k; ++j) s[j] += f[j];
  }
  for (int64_t j = 0; j < k; ++j) {
    const double mu = (double)shift[j] + s[j] / (double)L;
    m[j] = (float)mu;
    if (lo) lo[n * C + c0 + j] = (float)(mu - (double)m[j]);
    s[j] = 0.0;
  }
  for (int64_t l0 = 0; l0 < L; l0 += NZ_CL_CHUNK) {
    const int64_t l1 = l0 + NZ_CL_CHUNK < L ? l0 + NZ_CL_CHUNK : L;
    for (int64_t j = 0; j < k; ++j) f[j] = 0.f;
    for (int64_t l = l0; l < l1; ++l) {
      const NZ_T *p = base + l * C;
#pragma omp simd
      for (int64_t j = 0; j < k; ++j) {
        const float d = NZ_LD(p[j]) - m[j];
        f[j] += d * d;
      }
    }
    for (int64_t j = 0; j < k; ++j) s[j] += f[j];
  }
  for (int64_t j = 0; j < k; ++j) {
    mean[n * C + c0 + j] = m[j];
    var[n * C + c0 + j] = (float)(s[j] / (double)L);
  }
}

/* The mean and biased variance of each row: the mean from sums shifted by a value of the row
 * (float partial sums of values near 1e4 would keep few of their bits), then the variance
 * around the float mean in a second sweep.
 * lo (may be NULL): each mean's rounding remainder, exact mean - float mean (the exact mean's
 * double sum), so that gradients can be taken against the exact mean: in float32 the mean of
 * values around 1e4 is off by up to 5e-4, which would shift every element of the variance's
 * gradient 2 (x - mean) / L by that much. */
NZ_INLINE void NZ_FN(row_stats_for)(const NZ_T *x, float *mean, float *var, float *lo, int64_t N,
                                    int64_t C, int64_t L, int cl) {
  if (!cl) {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < N * C; ++r) NZ_FN(row_stat)(x + r * L, L, mean + r, var + r, lo ? lo + r : NULL);
    return;
  }
  /* channels_last: a task is (sample, block of channels) */
  const int64_t nb = (C + NZ_CB - 1) / NZ_CB;
#pragma omp for schedule(static)
  for (int64_t t = 0; t < N * nb; ++t) {
    const int64_t n = t / nb, c0 = (t % nb) * NZ_CB, k = C - c0 < NZ_CB ? C - c0 : NZ_CB;
    NZ_FN(cl_block_stats)(x, mean, var, lo, n, c0, k, C, L);
  }
}

void NZ_FN(nz_row_stats)(const NZ_T *x, float *mean, float *var, int64_t N, int64_t C, int64_t L,
                         int cl, int threads) {
#pragma omp parallel num_threads(threads)
  NZ_FN(row_stats_for)(x, mean, var, NULL, N, C, L, cl);
}



/* The maps on one contiguous row r of L values (the contiguous loops below, and the fused
 * group kernels after them). */
NZ_INLINE void NZ_FN(map_row_forward)(const int op, const NZ_T *x, const float *params, NZ_T *y,
                                      int64_t r, int64_t L) {
  float p[NZ_MAXP];
  load_params(params, NZ_NPARAMS[op], r, p);
  const NZ_T *xr = x + r * L;
  NZ_T *yr = y + r * L;
  if (NZ_STAGE && op == NZ_S0) { /* the same float math, staged (zoo.c) */
    float v[NZ_CHUNK];
    for (int64_t i0 = 0; i0 < L; i0 += NZ_CHUNK) {
      const int64_t n = L - i0 < NZ_CHUNK ? L - i0 : NZ_CHUNK;
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) v[i] = NZ_LD(xr[i0 + i]);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) v[i] = nz_fwd(op, v[i], p[0], p[1], p[2], p[3], p[4]);
#pragma omp simd
      for (int64_t i = 0; i < n; ++i) yr[i0 + i] = NZ_ST(v[i]);
    }
    return;
  }
#pragma omp simd
  for (int64_t i = 0; i < L; ++i)
    yr[i] = NZ_ST(nz_fwd(op, NZ_LD(xr[i]), p[0], p[1], p[2], p[3], p[4]));
}

/* NZ_SUMS_BODY of NZ_AFFINE (sum(dy x), sum(dy)) or NZ_TLU (sum(h x), sum(h), sum(dy), h: dy
 * where x p0 + p1 > p2, half at a tie) over i from i0 to i1, into g[0..2]: vectors, a tree
 * over their lanes (nz_hsum), the tail one at a time (as chunk_sum, where the compiled
 * reduction's lanes went through the stack one at a time after every chunk), on rows shorter
 * than NZ_LINE_MIN values: longer ones, and EvoNorm's bodies (a sigmoid or a division a
 * value), keep the compiled loop (as fast there, or faster: 1.02-1.30x on 4096 values). */
NZ_INLINE void NZ_FN(grad_lanes)(const int op, nz_vf dyv, nz_vf xv, const float *p, nz_vf *a0,
                                  nz_vf *a1, nz_vf *a2) {
  if (op == NZ_AFFINE) {
    *a0 += dyv * xv;
    *a1 += dyv;
  } else {
    const nz_vf y = xv * p[0] + p[1];
    const nz_vi gt = y > p[2], lt = y < p[2]; /* -1 where true */
    const nz_vf h = dyv * 0.5f * (1.f - __builtin_convertvector(gt, nz_vf) +
                                   __builtin_convertvector(lt, nz_vf));
    *a0 += h * xv;
    *a1 += h;
    *a2 += dyv;
  }
}

NZ_INLINE void NZ_FN(chunk_grad_sums)(const int op, const NZ_T *gr, const NZ_T *xr, int64_t i0,
                                      int64_t i1, const float *p, float *g) {
  nz_vf a0 = {0}, a1 = {0}, a2 = {0}, b0 = {0}, b1 = {0}, b2 = {0};
  int64_t i = i0;
  for (; i + 2 * NZ_VL <= i1; i += 2 * NZ_VL) {
    NZ_FN(grad_lanes)(op, NZ_VLD(gr + i), NZ_VLD(xr + i), p, &a0, &a1, &a2);
    NZ_FN(grad_lanes)(op, NZ_VLD(gr + i + NZ_VL), NZ_VLD(xr + i + NZ_VL), p, &b0, &b1, &b2);
  }
  if (i + NZ_VL <= i1) {
    NZ_FN(grad_lanes)(op, NZ_VLD(gr + i), NZ_VLD(xr + i), p, &a0, &a1, &a2);
    i += NZ_VL;
  }
  float g0 = nz_hsum(a0 + b0), g1 = nz_hsum(a1 + b1), g2 = nz_hsum(a2 + b2), g3 = 0.f, g4 = 0.f;
  for (; i < i1; ++i) {
    const float dyv = NZ_LD(gr[i]), xv = NZ_LD(xr[i]);
    float dd = 0.f;
    NZ_SUMS_BODY(op, g, dd, dyv, xv, p[0], p[1], p[2], p[3]);
    (void)dd;
  }
  (void)g3, (void)g4;
  g[0] = g0, g[1] = g1, g[2] = g2;
}

/* Row r's sums dL/dp into grads[r P ..]; o (may be NULL): the row's (df/dx) dy (B0, S0). */
NZ_INLINE void NZ_FN(map_row_sums)(const int op, const NZ_T *dy, const NZ_T *x,
                                   const float *params, float *grads, float *o, int64_t r,
                                   int64_t L) {
  const int P = NZ_NPARAMS[op];
  float p[NZ_MAXP];
  load_params(params, P, r, p);
  const NZ_T *xr = x + r * L, *gr = dy + r * L;
  double acc[NZ_MAXP] = {0.0, 0.0, 0.0, 0.0, 0.0};
  if ((op == NZ_AFFINE || op == NZ_TLU) && L < NZ_LINE_MIN) { /* (o unused: not kept) */
    float g[3]; /* (one chunk: NZ_LINE_MIN <= NZ_CHUNK) */
    NZ_FN(chunk_grad_sums)(op, gr, xr, 0, L, p, g);
    for (int i = 0; i < P; ++i) grads[r * P + i] = g[i];
    return;
  }
  for (int64_t i0 = 0; i0 < L; i0 += NZ_CHUNK) {
    const int64_t i1 = i0 + NZ_CHUNK < L ? i0 + NZ_CHUNK : L;
    float g0 = 0.f, g1 = 0.f, g2 = 0.f, g3 = 0.f, g4 = 0.f;
    if (o) {
#pragma omp simd reduction(+ : g0, g1, g2, g3, g4)
      for (int64_t i = i0; i < i1; ++i) {
        const float dyv = NZ_LD(gr[i]), xv = NZ_LD(xr[i]);
        float dd = 0.f;
        NZ_SUMS_BODY(op, g, dd, dyv, xv, p[0], p[1], p[2], p[3]);
        o[i] = dd;
      }
    } else {
#pragma omp simd reduction(+ : g0, g1, g2, g3, g4)
      for (int64_t i = i0; i < i1; ++i) {
        const float dyv = NZ_LD(gr[i]), xv = NZ_LD(xr[i]);
        float dd = 0.f;
        NZ_SUMS_BODY(op, g, dd, dyv, xv, p[0], p[1], p[2], p[3]);
        (void)dd;
      }
    }
    acc[0] += g0, acc[1] += g1, acc[2] += g2, acc[3] += g3, acc[4] += g4;
  }
  for (int i = 0; i < P; ++i) grads[r * P + i] = (float)acc[i];
}

/* Row r's dx = (df/dx) dy + a (x - m) + b; d (may be NULL): the row's (df/dx) dy, from
 * map_row_sums, instead of recomputing it. */
NZ_INLINE void NZ_FN(map_row_dx)(const int op, const NZ_T *dy, const NZ_T *x, const float *params,
                                 const float *d, float m, float a, float b, NZ_T *dx, int64_t r,
                                 int64_t L) {
  const NZ_T *xr = x + r * L, *gr = dy + r * L;
  NZ_T *o = dx + r * L;
  if (d) {
#pragma omp simd
    for (int64_t i = 0; i < L; ++i) o[i] = NZ_ST(d[i] + a * (NZ_LD(xr[i]) - m) + b);
    return;
  }
  float p[NZ_MAXP];
  load_params(params, NZ_NPARAMS[op], r, p);
#pragma omp simd
  for (int64_t i = 0; i < L; ++i)
    o[i] = NZ_ST(nz_dx(op, NZ_LD(gr[i]), NZ_LD(xr[i]), p[0], p[1], p[2], p[3]) +
                 a * (NZ_LD(xr[i]) - m) + b);
}

/* The maps on channels_last block (sample n, channels c0 .. c0 + k, k <= NZ_CB): L runs of k
 * channels (the channels_last loops below, and the fused blocks after them). */
NZ_INLINE void NZ_FN(cl_block_forward)(const int op, const NZ_T *x, const float *params, NZ_T *y,
                                       int64_t n, int64_t c0, int64_t k, int64_t C, int64_t L) {
  float p[NZ_MAXP][NZ_CB];
  load_block(params, NZ_NPARAMS[op], n * C + c0, k, p);
  for (int64_t l = 0; l < L; ++l) {
    const NZ_T *xr = x + (n * L + l) * C + c0;
    NZ_T *yr = y + (n * L + l) * C + c0;
#pragma omp simd
    for (int64_t j = 0; j < k; ++j)
      yr[j] = NZ_ST(nz_fwd(op, NZ_LD(xr[j]), p[0][j], p[1][j], p[2][j], p[3][j], p[4][j]));
  }
}

/* The block's sums dL/dp into grads[(n C + c) P ..]; direct (may be NULL, laid out as x): the
 * block's (df/dx) dy (B0, S0). */
NZ_INLINE void NZ_FN(cl_block_sums)(const int op, const NZ_T *dy, const NZ_T *x,
                                    const float *params, float *grads, float *direct, int64_t n,
                                    int64_t c0, int64_t k, int64_t C, int64_t L) {
  const int P = NZ_NPARAMS[op];
  float p[NZ_MAXP][NZ_CB];
  load_block(params, P, n * C + c0, k, p);
  double acc[NZ_MAXP][NZ_CB];
  float f[NZ_MAXP][NZ_CB];
  for (int i = 0; i < NZ_MAXP; ++i)
    for (int64_t j = 0; j < k; ++j) acc[i][j] = 0.0;
  for (int64_t l0 = 0; l0 < L; l0 += NZ_CL_CHUNK) {
    const int64_t l1 = l0 + NZ_CL_CHUNK < L ? l0 + NZ_CL_CHUNK : L;
    for (int i = 0; i < P; ++i)
      for (int64_t j = 0; j < k; ++j) f[i][j] = 0.f;
    for (int64_t l = l0; l < l1; ++l) {
      const NZ_T *xr = x + (n * L + l) * C + c0, *gr = dy + (n * L + l) * C + c0;
      float *o = direct ? direct + (n * L + l) * C + c0 : NULL;
/* P is a constant here (op is): no dead updates */
#define NZ_CL_SUMS                                                                           \
  const float dyv = NZ_LD(gr[j]), xv = NZ_LD(xr[j]);                                         \
  float g0 = 0.f, g1 = 0.f, g2 = 0.f, g3 = 0.f, g4 = 0.f, dd = 0.f;                          \
  NZ_SUMS_BODY(op, g, dd, dyv, xv, p[0][j], p[1][j], p[2][j], p[3][j]);                      \
  f[0][j] += g0, f[1][j] += g1;                                                              \
  if (P > 2) f[2][j] += g2;                                                                  \
  if (P > 3) f[3][j] += g3;                                                                  \
  if (P > 4) f[4][j] += g4
      if (o) {
#pragma omp simd
        for (int64_t j = 0; j < k; ++j) {
          NZ_CL_SUMS;
          o[j] = dd;
        }
      } else {
#pragma omp simd
        for (int64_t j = 0; j < k; ++j) {
          NZ_CL_SUMS;
          (void)dd;
        }
      }
#undef NZ_CL_SUMS
    }
    for (int i = 0; i < P; ++i)
      for (int64_t j = 0; j < k; ++j) acc[i][j] += f[i][j];
  }
  for (int i = 0; i < P; ++i)
    for (int64_t j = 0; j < k; ++j) grads[(n * C + c0 + j) * P + i] = (float)acc[i][j];
}

/* The block's dx = (df/dx) dy + k1 (x - mean) + k0 (k1 NULL: no statistics' share); direct
 * (may be NULL, may be dx): cl_block_sums' (df/dx) dy, used instead of recomputing it. */
NZ_INLINE void NZ_FN(cl_block_dx)(const int op, const NZ_T *dy, const NZ_T *x,
                                  const float *params, const float *mean, const float *k1,
                                  const float *k0, const float *direct, NZ_T *dx, int64_t n,
                                  int64_t c0, int64_t k, int64_t C, int64_t L) {
  float p[NZ_MAXP][NZ_CB], m[NZ_CB], a[NZ_CB], b[NZ_CB];
  load_block(params, NZ_NPARAMS[op], n * C + c0, k, p);
  for (int64_t j = 0; j < k; ++j) {
    m[j] = k1 ? mean[n * C + c0 + j] : 0.f;
    a[j] = k1 ? k1[n * C + c0 + j] : 0.f;
    b[j] = k1 ? k0[n * C + c0 + j] : 0.f;
  }
  for (int64_t l = 0; l < L; ++l) {
    const NZ_T *xr = x + (n * L + l) * C + c0, *gr = dy + (n * L + l) * C + c0;
    NZ_T *o = dx + (n * L + l) * C + c0;
    if (direct) {
      const float *d = direct + (n * L + l) * C + c0;
#pragma omp simd
      for (int64_t j = 0; j < k; ++j) o[j] = NZ_ST(d[j] + a[j] * (NZ_LD(xr[j]) - m[j]) + b[j]);
    } else {
#pragma omp simd
      for (int64_t j = 0; j < k; ++j)
        o[j] = NZ_ST(nz_dx(op, NZ_LD(gr[j]), NZ_LD(xr[j]), p[0][j], p[1][j], p[2][j], p[3][j]) +
                     a[j] * (NZ_LD(xr[j]) - m[j]) + b[j]);
    }
  }
}

NZ_INLINE void NZ_FN(map_forward)(const int op, const NZ_T *x, const float *params, NZ_T *y,
                                  int64_t N, int64_t C, int64_t L, int cl, int threads) {
  if (!cl) {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < N * C; ++r) NZ_FN(map_row_forward)(op, x, params, y, r, L);
    return;
  }
  const int64_t nb = (C + NZ_CB - 1) / NZ_CB;
#pragma omp for schedule(static)
  for (int64_t t = 0; t < N * nb; ++t) {
    const int64_t n = t / nb, c0 = (t % nb) * NZ_CB, k = C - c0 < NZ_CB ? C - c0 : NZ_CB;
    NZ_FN(cl_block_forward)(op, x, params, y, n, c0, k, C, L);
  }
}

/* direct (B0 and S0 only, may be NULL): (df/dx) dy of every element, laid out as x (the
 * costly part of dx, computed here with the sums instead of again by map_dx). */
NZ_INLINE void NZ_FN(map_sums)(const int op, const NZ_T *dy, const NZ_T *x, const float *params,
                               float *grads, float *direct, int64_t N, int64_t C, int64_t L, int cl,
                               int threads) {
  const int keep = direct && (op == NZ_B0 || op == NZ_S0);
  if (!cl) {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < N * C; ++r)
      NZ_FN(map_row_sums)(op, dy, x, params, grads, keep ? direct + r * L : NULL, r, L);
    return;
  }
  const int64_t nb = (C + NZ_CB - 1) / NZ_CB;
#pragma omp for schedule(static)
  for (int64_t t = 0; t < N * nb; ++t) {
    const int64_t n = t / nb, c0 = (t % nb) * NZ_CB, k = C - c0 < NZ_CB ? C - c0 : NZ_CB;
    NZ_FN(cl_block_sums)(op, dy, x, params, grads, keep ? direct : NULL, n, c0, k, C, L);
  }
}

/* direct (may be NULL, may be dx): map_sums' (df/dx) dy, used instead of recomputing it. */
NZ_INLINE void NZ_FN(map_dx)(const int op, const NZ_T *dy, const NZ_T *x, const float *params,
                             const float *mean, const float *k1, const float *k0,
                             const float *direct, NZ_T *dx, int64_t N, int64_t C, int64_t L, int cl,
                             int threads) {
  if (!cl) {
#pragma omp for schedule(static)
    for (int64_t r = 0; r < N * C; ++r)
      NZ_FN(map_row_dx)(op, dy, x, params, direct ? direct + r * L : NULL, k1 ? mean[r] : 0.f,
                        k1 ? k1[r] : 0.f, k1 ? k0[r] : 0.f, dx, r, L);
    return;
  }
  const int64_t nb = (C + NZ_CB - 1) / NZ_CB;
#pragma omp for schedule(static)
  for (int64_t t = 0; t < N * nb; ++t) {
    const int64_t n = t / nb, c0 = (t % nb) * NZ_CB, k = C - c0 < NZ_CB ? C - c0 : NZ_CB;
    NZ_FN(cl_block_dx)(op, dy, x, params, mean, k1, k0, direct, dx, n, c0, k, C, L);
  }
}

void NZ_FN(nz_map_forward)(int op, const NZ_T *x, const float *params, NZ_T *y, int64_t N,
                           int64_t C, int64_t L, int cl, int threads) {
  NZ_DISPATCH(NZ_FN(map_forward), op, threads, x, params, y, N, C, L, cl, threads);
}

void NZ_FN(nz_map_sums)(int op, const NZ_T *dy, const NZ_T *x, const float *params, float *grads,
                        int64_t N, int64_t C, int64_t L, int cl, int threads) {
  NZ_DISPATCH(NZ_FN(map_sums), op, threads, dy, x, params, grads, NULL, N, C, L, cl, threads);
}

void NZ_FN(nz_map_dx)(int op, const NZ_T *dy, const NZ_T *x, const float *params, const float *mean,
                      const float *k1, const float *k0, NZ_T *dx, int64_t N, int64_t C, int64_t L,
                      int cl, int threads) {
  NZ_DISPATCH(NZ_FN(map_dx), op, threads, dy, x, params, mean, k1, k0, NULL, dx, N, C, L, cl,
              threads);
}

/* The fused path (zoo.c, "fused groups"): op NZ_S0 (groups of `size` rows of a sample),
 * NZ_TLU (FRN, size 1) or NZ_AFFINE (RMSNorm, size C), on contiguous input (cb 0) or on
 * channels_last input in tasks of (sample, cb channels: whole groups). fused_forward and
 * fused_backward are the bodies of a parallel region that the caller opens with a constant op
 * (as NZ_DISPATCH: a region opened in here would take op as a variable, and its maps' loops
 * would not vectorize). fused_params: the parameters of ng groups from row r0 (a group's
 * first row). */
NZ_INLINE void NZ_FN(fused_params)(const int op, const nz_fuse *f, const float *mean,
                                   const float *lo, const float *var, float *params, int64_t r0,
                                   int64_t ng, int64_t size) {
  if (op == NZ_S0) {
    s0_group_params(f->v, f->w, f->b, f->eps, mean, lo, var, params, f->C, r0, ng, size);
    return;
  }
  for (int64_t r = r0; r < r0 + ng * size; r += size) {
    if (op == NZ_TLU)
      frn_row_params(f->w, f->b, f->tau, f->eps, mean, var, params, r, r % f->C);
    else
      rms_sample_params(f->w, f->b, f->eps, mean, var, params, r / f->C, f->C);
  }
}

/* k1, k0 of ng groups from row r0 (and the rows' dL/dw shares, see the callees). */
NZ_INLINE void NZ_FN(fused_k)(const int op, const nz_fuse *f, float *sums, const float *mean,
                              const float *lo, const float *var, float *k1, float *k0, int64_t r0,
                              int64_t ng, int64_t size, int64_t L) {
  if (op == NZ_S0) {
    s0_group_k(sums, mean, lo, var, f->w, f->eps, k1, k0, f->C, r0, ng, size, L);
    return;
  }
  for (int64_t r = r0; r < r0 + ng * size; r += size) {
    if (op == NZ_TLU)
      frn_row_k(sums, mean, var, f->w, f->eps, k1, k0, r, r % f->C, L);
    else
      rms_sample_k(sums, mean, var, f->w, f->eps, k1, k0, r / f->C, f->C, L);
  }
}

NZ_INLINE void NZ_FN(fused_forward)(const int op, const nz_fuse *f, const NZ_T *x, NZ_T *y,
                                    float *mean, float *var, float *lo, float *params,
                                    int64_t groups, int64_t size, int64_t L, int64_t cb) {
  if (cb) { /* channels_last: the task's channels in NZ_CB-wide blocks */
    const int64_t C = f->C, N = groups * size / C, nb = (C + cb - 1) / cb;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < N * nb; ++t) {
      const int64_t n = t / nb, c0 = (t % nb) * cb, c1 = c0 + cb < C ? c0 + cb : C;
      for (int64_t c = c0; c < c1; c += NZ_CB)
        NZ_FN(cl_block_stats)(x, mean, var, lo, n, c, c1 - c < NZ_CB ? c1 - c : NZ_CB, C, L);
      NZ_FN(fused_params)(op, f, mean, lo, var, params, n * C + c0, (c1 - c0) / size, size);
      for (int64_t c = c0; c < c1; c += NZ_CB)
        NZ_FN(cl_block_forward)(op, x, params, y, n, c, c1 - c < NZ_CB ? c1 - c : NZ_CB, C, L);
    }
    return;
  }
  const int64_t per = fuse_groups(size, L, (int64_t)sizeof(NZ_T));
  const int64_t tasks = (groups + per - 1) / per;
#pragma omp for schedule(static)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t q0 = t * per, q1 = q0 + per < groups ? q0 + per : groups;
    for (int64_t r = q0 * size; r < q1 * size; ++r)
      NZ_FN(row_stat)(x + r * L, L, mean + r, var + r, lo ? lo + r : NULL);
    NZ_FN(fused_params)(op, f, mean, lo, var, params, q0 * size, q1 - q0, size);
    for (int64_t r = q0 * size; r < q1 * size; ++r) NZ_FN(map_row_forward)(op, x, params, y, r, L);
  }
}

/* sums (rows P), k1 and k0 (rows) as the two-pass path's; dx may be NULL. */
NZ_INLINE void NZ_FN(fused_backward)(const int op, const nz_fuse *f, const NZ_T *dy,
                                     const NZ_T *x, const float *params, const float *mean,
                                     const float *lo, const float *var, float *sums, float *k1,
                                     float *k0, NZ_T *dx, int64_t groups, int64_t size,
                                     int64_t L, int64_t cb) {
  float *direct = op == NZ_S0 ? NZ_DIRECT(dx) : NULL;
  if (cb) { /* channels_last (bfloat16 S0 recomputes (df/dx) dy, as the two-pass path) */
    const int64_t C = f->C, N = groups * size / C, nb = (C + cb - 1) / cb;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < N * nb; ++t) {
      const int64_t n = t / nb, c0 = (t % nb) * cb, c1 = c0 + cb < C ? c0 + cb : C;
      for (int64_t c = c0; c < c1; c += NZ_CB)
        NZ_FN(cl_block_sums)(op, dy, x, params, sums, direct, n, c,
                             c1 - c < NZ_CB ? c1 - c : NZ_CB, C, L);
      NZ_FN(fused_k)(op, f, sums, mean, lo, var, k1, k0, n * C + c0, (c1 - c0) / size, size, L);
      if (!dx) continue;
      for (int64_t c = c0; c < c1; c += NZ_CB)
        NZ_FN(cl_block_dx)(op, dy, x, params, mean, k1, k0, direct, dx, n, c,
                           c1 - c < NZ_CB ? c1 - c : NZ_CB, C, L);
    }
    return;
  }
  const int64_t per = fuse_groups(size, L, (int64_t)sizeof(NZ_T));
  const int64_t tasks = (groups + per - 1) / per;
  float *rows = NULL;
  if (op == NZ_S0 && dx && !direct) /* bfloat16; NULL where it fails: recomputed */
    rows = malloc((size_t)(per * size * L) * sizeof(float));
#pragma omp for schedule(static)
  for (int64_t t = 0; t < tasks; ++t) {
    const int64_t q0 = t * per, q1 = q0 + per < groups ? q0 + per : groups;
    const int64_t r0 = q0 * size, r1 = q1 * size;
    for (int64_t r = r0; r < r1; ++r) {
      float *o = direct ? direct + r * L : rows ? rows + (r - r0) * L : NULL;
      NZ_FN(map_row_sums)(op, dy, x, params, sums, o, r, L);
    }
    NZ_FN(fused_k)(op, f, sums, mean, lo, var, k1, k0, q0 * size, q1 - q0, size, L);
    if (!dx) continue;
    for (int64_t r = r0; r < r1; ++r) {
      const float *d = direct ? direct + r * L : rows ? rows + (r - r0) * L : NULL;
      NZ_FN(map_row_dx)(op, dy, x, params, d, mean[r], k1[r], k0[r], dx, r, L);
    }
  }
  free(rows);
}

/* Whether the fused path takes `groups` groups of `size` rows of L elements (C channels per
 * sample): 0 where it does not; where it does, on channels_last input the channels of a task
 * (whole groups, about NZ_CL_FUSE_BYTES of x), on contiguous input 1. */
static inline int64_t NZ_FN(fused_takes)(int cl, int64_t groups, int64_t size, int64_t C,
                                         int64_t L, int threads) {
  const int64_t elem = (int64_t)sizeof(NZ_T);
  if (size * L * elem > NZ_FUSE_GROUP_BYTES) return 0;
  if (!cl) {
    const int64_t per = fuse_groups(size, L, elem);
    return (groups + per - 1) / per >= NZ_GROUP_TASKS * (int64_t)threads;
  }
  int64_t cb = L > 0 ? NZ_CL_FUSE_BYTES / (L * elem) : NZ_CB;
  cb = (cb < NZ_CB ? cb : NZ_CB) / size * size;
  cb = cb < size ? size : cb > C ? C : cb;
  if (cb < C && cb * elem < NZ_CL_MIN_RUN) return 0; /* runs of less than two cache lines */
  const int64_t tasks = groups * size / C * ((C + cb - 1) / cb);
  return tasks >= NZ_GROUP_TASKS * (int64_t)threads || (tasks >= threads && tasks % threads == 0)
             ? cb
             : 0;
}

/* fused_takes, exported: which path the norms take (tests, benchmarks). */
int64_t NZ_FN(nz_fused_width)(int cl, int64_t groups, int64_t size, int64_t C, int64_t L,
                              int threads) {
  return NZ_FN(fused_takes)(cl, groups, size, C, L, threads);
}

/* ---------------------------------------------------------------- the norms ----------- *
 * One call per forward and one per backward for each norm: the statistics, the small graph
 * (loops over the N C rows, in double), the full-size passes above, in one parallel region
 * (the small graph's loops shared among the threads as the sweeps' are: one fork and join per
 * call, and no serial stretch between the sweeps, which at (128, 64, 8, 8) cost EvoNorm-S0 a
 * fifth of its backward). The backward
 * recomputes the small quantities from the statistics (cheaper than storing them). Every
 * optional pointer (w, b, running statistics, gradients) may be NULL.
 */
/* EvoNorm-B0. params (N C 5): v, s_i, s_b, w, b. var_b (C): the batch variance (out) or, with
 * running_var, that. lo (N C, out): the means' rounding remainders (row_stats). */
void NZ_FN(nz_b0_forward)(const NZ_T *x, const float *v, const float *w, const float *b,
                          const float *running_var, double eps, NZ_T *y, float *mean, float *var,
                          float *lo, float *var_b, float *params, int64_t N, int64_t C, int64_t L,
                          int cl, int threads) {
#pragma omp parallel num_threads(threads)
  {
    NZ_FN(row_stats_for)(x, mean, var, lo, N, C, L, cl);
#pragma omp for schedule(static)
    for (int64_t c = 0; c < C; ++c)
      b0_channel_params(v, w, b, running_var, eps, mean, var, lo, var_b, params, N, C, c);
    NZ_FN(map_forward)(NZ_B0, x, params, y, N, C, L, cl, threads);
  }
}


/* sums (N C 5) and k (N C 2) are scratch. batch: s_b came from the batch (its gradient flows
 * to the statistics). lo (may be NULL): the forward's rounding remainders of the means. */
void NZ_FN(nz_b0_backward)(const NZ_T *dy, const NZ_T *x, const float *params, const float *mean,
                           const float *lo, int batch, float *sums, float *k, NZ_T *dx, float *dv,
                           float *dw, float *db, int64_t N, int64_t C, int64_t L, int cl,
                           int threads) {
  /* dx holds (df/dx) dy from the sums' sweep until the last sweep adds the statistics' share */
  float *k1 = k, *k0 = k + N * C;
#pragma omp parallel num_threads(threads)
  {
    NZ_FN(map_sums)(NZ_B0, dy, x, params, sums, NZ_DIRECT(dx), N, C, L, cl, threads);
#pragma omp for schedule(static)
    for (int64_t c = 0; c < C; ++c)
      b0_channel_k(sums, params, mean, lo, batch, k1, k0, dv, dw, db, N, C, L, c);
    if (dx)
      NZ_FN(map_dx)(NZ_B0, dy, x, params, mean, k1, k0, NZ_DIRECT(dx), dx, N, C, L, cl, threads);
  }
}

/* EvoNorm-S0. params (N C 3): v, a = w / sqrt(var_g + eps), b. lo (N C, out): the means'
 * rounding remainders (row_stats). */
void NZ_FN(nz_s0_forward)(const NZ_T *x, const float *v, const float *w, const float *b, int64_t G,
                          double eps, NZ_T *y, float *mean, float *var, float *lo, float *params,
                          int64_t N, int64_t C, int64_t L, int cl, int threads) {
  const int64_t size = C / G, fused = NZ_FN(fused_takes)(cl, N * G, size, C, L, threads);
  if (fused) {
    const nz_fuse f = {v, w, b, NULL, eps, C};
#pragma omp parallel num_threads(threads)
    NZ_FN(fused_forward)(NZ_S0, &f, x, y, mean, var, lo, params, N * G, size, L, cl ? fused : 0);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    NZ_FN(row_stats_for)(x, mean, var, lo, N, C, L, cl);
#pragma omp for schedule(static)
    for (int64_t q = 0; q < N * G; q += NZ_CB)
      s0_group_params(v, w, b, eps, mean, lo, var, params, C, q * size, nz_min64(NZ_CB, N * G - q),
                      size);
    NZ_FN(map_forward)(NZ_S0, x, params, y, N, C, L, cl, threads);
  }
}

/* lo (may be NULL): the forward's rounding remainders of the means. */
void NZ_FN(nz_s0_backward)(const NZ_T *dy, const NZ_T *x, const float *params, const float *mean,
                           const float *var, const float *lo, const float *w, int64_t G, double eps,
                           float *sums, float *k, NZ_T *dx, float *dv, float *dw, float *db,
                           int64_t N, int64_t C, int64_t L, int cl, int threads) {
  float *k1 = k, *k0 = k + N * C;
  const int64_t size = C / G;
  const int64_t fused = NZ_FN(fused_takes)(cl, N * G, size, C, L, threads);
  /* s0_group_k leaves each row's dL/dw share in its sums (sums[1] r) */
  float *out[3] = {dv, dw, db};
  if (fused) {
    const nz_fuse f = {NULL, w, NULL, NULL, eps, C};
#pragma omp parallel num_threads(threads)
    {
      NZ_FN(fused_backward)(NZ_S0, &f, dy, x, params, mean, lo, var, sums, k1, k0, dx, N * G,
                            size, L, cl ? fused : 0);
      column_sums_for(sums, 3, out, N, C);
    }
    return;
  }
#pragma omp parallel num_threads(threads) /* as B0's */
  {
    NZ_FN(map_sums)(NZ_S0, dy, x, params, sums, NZ_DIRECT(dx), N, C, L, cl, threads);
#pragma omp for schedule(static)
    for (int64_t q = 0; q < N * G; q += NZ_CB)
      s0_group_k(sums, mean, lo, var, w, eps, k1, k0, C, q * size, nz_min64(NZ_CB, N * G - q),
                 size, L);
    column_sums_for(sums, 3, out, N, C);
    if (dx)
      NZ_FN(map_dx)(NZ_S0, dy, x, params, mean, k1, k0, NZ_DIRECT(dx), dx, N, C, L, cl, threads);
  }
}

/* SwitchableNorm: y = a x + b, params (N C 2), from zoo.c's switchable_params. scratch:
 * 2 (N + C) doubles. stats_bn (2 C): BN's batch mean and biased variance (out, with no
 * running statistics). */
void NZ_FN(nz_switchable_forward)(const NZ_T *x, const float *mean_weight, const float *var_weight,
                                  const float *w, const float *b, const float *running_mean,
                                  const float *running_var, double eps, NZ_T *y, float *mean,
                                  float *var, float *stats_bn, float *params, double *scratch,
                                  int64_t N, int64_t C, int64_t L, int cl, int threads) {
  NZ_FN(nz_row_stats)(x, mean, var, N, C, L, cl, threads);
  switchable_params(mean, var, mean_weight, var_weight, w, b, running_mean, running_var, eps,
                    stats_bn, params, scratch, N, C, threads);
  NZ_FN(nz_map_forward)(NZ_AFFINE, x, params, y, N, C, L, cl, threads);
}

/* sums (N C 2), k (N C 2) scratch; scratch: 4 N + 5 C + 2 N C doubles (zoo.c's
 * switchable_grads). */
void NZ_FN(nz_switchable_backward)(const NZ_T *dy, const NZ_T *x, const float *params,
                                   const float *mean, const float *var, const float *mean_weight,
                                   const float *var_weight, const float *w,
                                   const float *running_mean, const float *running_var, double eps,
                                   float *sums, float *k, double *scratch, NZ_T *dx, float *dmw,
                                   float *dvw, float *dw, float *db, int64_t N, int64_t C,
                                   int64_t L, int cl, int threads) {
  NZ_FN(nz_map_sums)(NZ_AFFINE, dy, x, params, sums, N, C, L, cl, threads);
  switchable_grads(mean, var, params, sums, mean_weight, var_weight, w, running_mean,
                   running_var, eps, k, scratch, dmw, dvw, dw, db, N, C, L, threads);
  if (dx) NZ_FN(nz_map_dx)(NZ_AFFINE, dy, x, params, mean, k, k + N * C, dx, N, C, L, cl, threads);
}

/* FRN + TLU: params (N C 3): a = w / sqrt(nu2 + eps), b, tau; nu2 = var + mean^2, the mean
 * square of the row. */
void NZ_FN(nz_frn_forward)(const NZ_T *x, const float *w, const float *b, const float *tau,
                           double eps, NZ_T *y, float *mean, float *var, float *params, int64_t N,
                           int64_t C, int64_t L, int cl, int threads) {
  const int64_t fused = NZ_FN(fused_takes)(cl, N * C, 1, C, L, threads);
  if (fused) {
    const nz_fuse f = {NULL, w, b, tau, eps, C};
#pragma omp parallel num_threads(threads)
    NZ_FN(fused_forward)(NZ_TLU, &f, x, y, mean, var, NULL, params, N * C, 1, L, cl ? fused : 0);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    NZ_FN(row_stats_for)(x, mean, var, NULL, N, C, L, cl);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < N * C; ++r) frn_row_params(w, b, tau, eps, mean, var, params, r, r % C);
    NZ_FN(map_forward)(NZ_TLU, x, params, y, N, C, L, cl, threads);
  }
}

void NZ_FN(nz_frn_backward)(const NZ_T *dy, const NZ_T *x, const float *params, const float *mean,
                            const float *var, const float *w, double eps, float *sums, float *k,
                            NZ_T *dx, float *dw, float *db, float *dtau, int64_t N, int64_t C,
                            int64_t L, int cl, int threads) {
  float *k1 = k, *k0 = k + N * C;
  const int64_t fused = NZ_FN(fused_takes)(cl, N * C, 1, C, L, threads);
  if (fused) {
    const nz_fuse f = {NULL, w, NULL, NULL, eps, C};
#pragma omp parallel num_threads(threads)
    {
      NZ_FN(fused_backward)(NZ_TLU, &f, dy, x, params, mean, NULL, var, sums, k1, k0, dx, N * C,
                            1, L, cl ? fused : 0);
#pragma omp for schedule(static)
      for (int64_t c = 0; c < C; ++c) frn_channel_grads(sums, mean, var, eps, dw, db, dtau, N, C, c);
    }
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    NZ_FN(map_sums)(NZ_TLU, dy, x, params, sums, NULL, N, C, L, cl, threads);
#pragma omp for schedule(static)
    for (int64_t r = 0; r < N * C; ++r) frn_row_k(sums, mean, var, w, eps, k1, k0, r, r % C, L);
#pragma omp for schedule(static) nowait
    for (int64_t c = 0; c < C; ++c) frn_channel_grads(sums, mean, var, eps, dw, db, dtau, N, C, c);
    if (dx) NZ_FN(map_dx)(NZ_TLU, dy, x, params, mean, k1, k0, NULL, dx, N, C, L, cl, threads);
  }
}

/* RMSNorm over each sample's channels and positions: params (N C 2): a = w / rms_n, b;
 * rms_n^2 = mean_c (var + mean^2). */
void NZ_FN(nz_rms_forward)(const NZ_T *x, const float *w, const float *b, double eps, NZ_T *y,
                           float *mean, float *var, float *params, int64_t N, int64_t C, int64_t L,
                           int cl, int threads) {
  const int64_t fused = NZ_FN(fused_takes)(cl, N, C, C, L, threads);
  if (fused) {
    const nz_fuse f = {NULL, w, b, NULL, eps, C};
#pragma omp parallel num_threads(threads)
    NZ_FN(fused_forward)(NZ_AFFINE, &f, x, y, mean, var, NULL, params, N, C, L, cl ? fused : 0);
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    NZ_FN(row_stats_for)(x, mean, var, NULL, N, C, L, cl);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) rms_sample_params(w, b, eps, mean, var, params, n, C);
    NZ_FN(map_forward)(NZ_AFFINE, x, params, y, N, C, L, cl, threads);
  }
}

void NZ_FN(nz_rms_backward)(const NZ_T *dy, const NZ_T *x, const float *params, const float *mean,
                            const float *var, const float *w, double eps, float *sums, float *k,
                            NZ_T *dx, float *dw, float *db, int64_t N, int64_t C, int64_t L, int cl,
                            int threads) {
  float *k1 = k, *k0 = k + N * C;
  const int64_t fused = NZ_FN(fused_takes)(cl, N, C, C, L, threads);
  /* rms_sample_k leaves each row's dL/dw share in its sums (sum dy x / rms) */
  float *out[2] = {dw, db};
  if (fused) {
    const nz_fuse f = {NULL, w, NULL, NULL, eps, C};
#pragma omp parallel num_threads(threads)
    {
      NZ_FN(fused_backward)(NZ_AFFINE, &f, dy, x, params, mean, NULL, var, sums, k1, k0, dx, N,
                            C, L, cl ? fused : 0);
      column_sums_for(sums, 2, out, N, C);
    }
    return;
  }
#pragma omp parallel num_threads(threads)
  {
    NZ_FN(map_sums)(NZ_AFFINE, dy, x, params, sums, NULL, N, C, L, cl, threads);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) rms_sample_k(sums, mean, var, w, eps, k1, k0, n, C, L);
    column_sums_for(sums, 2, out, N, C);
    if (dx) NZ_FN(map_dx)(NZ_AFFINE, dy, x, params, mean, k1, k0, NULL, dx, N, C, L, cl, threads);
  }
}

/* GroupNorm over G groups of C / G channels of each sample (InstanceNorm: G = C), on the rows:
 * the group's mean and biased variance combined from its channels' (law of total variance:
 * mean_g = mean_c mean, var_g = mean_c var + mean_c (mean - mean_g)^2, in double), then
 * y = a x + b with a = w rstd_g, b = bias - mean_g a (params (N C 2)); gstats (2 N G): each
 * group's mean and rstd = 1 / sqrt(var_g + eps). For channels_last input where no row_norm.c
 * kernel serves it (bfloat16; float32 without the operator library). */
void NZ_FN(nz_gn_forward)(const NZ_T *x, const float *w, const float *b, int64_t G, double eps,
                          NZ_T *y, float *mean, float *var, float *gstats, float *params,
                          int64_t N, int64_t C, int64_t L, int cl, int threads) {
  const int64_t size = C / G;
#pragma omp parallel num_threads(threads)
  {
    NZ_FN(row_stats_for)(x, mean, var, NULL, N, C, L, cl);
#pragma omp for schedule(static)
    for (int64_t q = 0; q < N * G; ++q) {
      const int64_t n = q / G, c0 = q % G * size;
      double mg, vg;
      group_stats(mean, NULL, var, n * C + c0, size, &mg, &vg);
      const double rs = 1.0 / sqrt(vg + eps);
      gstats[q] = (float)mg;
      gstats[N * G + q] = (float)rs;
      for (int64_t c = c0; c < c0 + size; ++c) {
        const double a = w ? w[c] * rs : rs;
        params[(n * C + c) * 2] = (float)a;
        params[(n * C + c) * 2 + 1] = (float)((b ? b[c] : 0.0) - mg * a);
      }
    }
    NZ_FN(map_forward)(NZ_AFFINE, x, params, y, N, C, L, cl, threads);
  }
}

/* dx = rstd (w dy - mean_g(w dy) - xhat mean_g(w dy xhat)) as a dy + k1 (x - mean_c) + k0
 * (map_dx), dw_c = sum_n rstd sum dy (x - mean_g), db_c = sum dy. sums (N C 2), k (2 N C)
 * scratch. */
void NZ_FN(nz_gn_backward)(const NZ_T *dy, const NZ_T *x, const float *params,
                           const float *mean, const float *gstats, const float *w, int64_t G,
                           float *sums, float *k, NZ_T *dx, float *dw, float *db, int64_t N,
                           int64_t C, int64_t L, int cl, int threads) {
  float *k1 = k, *k0 = k + N * C, *out[2] = {dw, db};
  const int64_t size = C / G;
  const double m = (double)size * (double)L; /* values per group */
#pragma omp parallel num_threads(threads)
  {
    NZ_FN(map_sums)(NZ_AFFINE, dy, x, params, sums, NULL, N, C, L, cl, threads);
#pragma omp for schedule(static)
    for (int64_t q = 0; q < N * G; ++q) {
      const int64_t n = q / G, c0 = q % G * size;
      const double mg = gstats[q], rs = gstats[N * G + q];
      double s_wdy = 0.0, s_wdyx = 0.0;
      for (int64_t c = c0; c < c0 + size; ++c) {
        float *s = sums + (n * C + c) * 2; /* sum dy x, sum dy */
        const double s_dy = s[1], s_dyxc = s[0] - mg * s[1]; /* sum dy (x - mean_g) */
        const double wc = w ? w[c] : 1.0;
        s_wdy += wc * s_dy;
        s_wdyx += wc * s_dyxc;
        s[0] = (float)(s_dyxc * rs); /* the row's share of dL/dw, for column_sums_for */
      }
      const double kk1 = -rs * rs * rs * s_wdyx / m;
      for (int64_t c = c0; c < c0 + size; ++c) {
        k1[n * C + c] = (float)kk1;
        k0[n * C + c] = (float)(-rs * s_wdy / m + kk1 * ((double)mean[n * C + c] - mg));
      }
    }
    column_sums_for(sums, 2, out, N, C);
    if (dx) NZ_FN(map_dx)(NZ_AFFINE, dy, x, params, mean, k1, k0, NULL, dx, N, C, L, cl, threads);
  }
}
