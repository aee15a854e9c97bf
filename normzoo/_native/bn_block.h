/* BatchNorm's contiguous kernels (see batch_norm.c) written once for an element type:
 * batch_norm.c includes this file twice through bn_kernels.h (no include guard), for float32
 * and for bfloat16 (x, y, dy, dx as their uint16_t bits; the statistics, parameters and sums
 * float either way), with the macros of ghost_rows.h (NZ_T, NZ_LD, NZ_ST, NZ_FN) and the row
 * helpers of that type (row_moments, map_line, dx_line). */

/* One block of k channels from c0 of an (N, C, L) tensor: their moments, then y. */
NZ_INLINE void NZ_FN(bn_forward_block)(const NZ_T *x, const float *w, const float *b, NZ_T *y,
                                       float *mean_out, float *invstd_out, float *var_out,
                                       int64_t N, int64_t C, int64_t L, int64_t c0, int64_t k,
                                       double eps, int relu, const nz_renorm *rn) {
  /* the map's weight and bias: Batch Renorm's w r and w d + b, written per channel below */
  const float *wm = rn ? rn->out + 2 * C : w, *bm = rn ? rn->out + 3 * C : b;
  const double M = (double)N * (double)L;
  /* shifted one-pass moments, shift = the channel's first value: no cancellation (Chan,
   * Golub and LeVeque, "Algorithms for computing the sample variance", 1983) */
  double s1[NZ_MAX_BLOCK], s2[NZ_MAX_BLOCK];
  float shift0[NZ_MAX_BLOCK], m[NZ_MAX_BLOCK], scale[NZ_MAX_BLOCK], shift[NZ_MAX_BLOCK];
  for (int64_t j = 0; j < k; ++j) {
    s1[j] = s2[j] = 0.0;
    shift0[j] = N > 0 && L > 0 ? NZ_LD(x[(c0 + j) * L]) : 0.f;
  }
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < k; ++j)
      NZ_FN(row_moments)(x + (n * C + c0 + j) * L, L, shift0[j], &s1[j], &s2[j]);
  for (int64_t j = 0; j < k; ++j) {
    const int64_t c = c0 + j;
    const double dm = s1[j] / M;
    double var = s2[j] / M - dm * dm;
    if (var < 0.0) var = 0.0;
    m[j] = (float)(shift0[j] + dm);
    const float inv = (float)(1.0 / sqrt(var + eps));
    if (rn) renorm_channel(rn, w, b, c, C, m[j], inv, var, M, eps);
    scale[j] = bn_scale(wm, c, inv);
    shift[j] = bn_shift(bm, c, m[j], scale[j]);
    mean_out[c] = m[j];
    invstd_out[c] = inv;
    if (var_out) var_out[c] = (float)var;
  }
  if (!y) return;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < k; ++j) {
      const NZ_T *p = x + (n * C + c0 + j) * L;
      NZ_T *o = y + (n * C + c0 + j) * L;
      NZ_FN(map_line)(p, o, L, scale[j], shift[j], relu);
    }
}

static void NZ_FN(bn_forward)(const NZ_T *x, const float *w, const float *b, NZ_T *y,
                              float *mean_out, float *invstd_out, float *var_out, int64_t N,
                              int64_t C, int64_t L, double eps, int relu, const nz_renorm *rn,
                              int threads) {
  const int64_t bc = block_channels(N, C, L, threads);
  const int64_t blocks = (C + bc - 1) / bc;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t c0 = blk * bc, c1 = c0 + bc < C ? c0 + bc : C;
    NZ_FN(bn_forward_block)(x, w, b, y, mean_out, invstd_out, var_out, N, C, L, c0, c1 - c0, eps,
                            relu, rn);
  }
}

void NZ_FN(nz_bn_forward)(const NZ_T *x, const float *w, const float *b, NZ_T *y,
                          float *mean_out, float *invstd_out, float *var_out, int64_t N,
                          int64_t C, int64_t L, double eps, int threads) {
  NZ_FN(bn_forward)(x, w, b, y, mean_out, invstd_out, var_out, N, C, L, eps, 0, NULL, threads);
}

void NZ_FN(nz_renorm_forward)(const NZ_T *x, const float *w, const float *b,
                              const float *running_mean, const float *running_var, double r_max,
                              double d_max, NZ_T *y, float *mean_out, float *invstd_out,
                              float *out, int64_t N, int64_t C, int64_t L, double eps,
                              int threads) {
  const nz_renorm rn = {running_mean, running_var, (float)(1.0 / r_max), (float)r_max,
                        (float)d_max, out};
  NZ_FN(bn_forward)(x, w, b, y, mean_out, invstd_out, NULL, N, C, L, eps, 0, &rn, threads);
}

void NZ_FN(nz_bn_relu_forward)(const NZ_T *x, const float *w, const float *b, NZ_T *y,
                               float *mean_out, float *invstd_out, float *var_out, int64_t N,
                               int64_t C, int64_t L, double eps, int threads) {
  NZ_FN(bn_forward)(x, w, b, y, mean_out, invstd_out, var_out, N, C, L, eps, 1, NULL, threads);
}

/* sum(g) and sum(g (p - m)) over a row of L values into *o1, *o2 (relu: g taken as 0 where
 * p sc + sh <= 0, the forward's pre-activation by its own expression, a NaN kept): two chains
 * of vectors, their lanes summed as a tree (nz_hsum), the tail one at a time. The compiled
 * `omp simd reduction` added its 32 partial sums one at a time through the stack after every
 * row: most of the time of rows of tens of values. */
NZ_INLINE void NZ_FN(row_grad_sums)(const NZ_T *g, const NZ_T *p, int64_t L, float m, int relu,
                                    float sc, float sh, float *o1, float *o2) {
  nz_vf a1 = {0}, a2 = {0}, b1 = {0}, b2 = {0};
  int64_t i = 0;
  for (; i + 2 * NZ_VL <= L; i += 2 * NZ_VL) {
    const nz_vf pd = NZ_VLD(p + i), pe = NZ_VLD(p + i + NZ_VL);
    nz_vf gd = NZ_VLD(g + i), ge = NZ_VLD(g + i + NZ_VL);
    if (relu) { /* the lanes whose pre-activation is <= 0 cleared */
      gd = nz_clear(gd, pd * sc + sh <= (nz_vf){0});
      ge = nz_clear(ge, pe * sc + sh <= (nz_vf){0});
    }
    a1 += gd;
    a2 += gd * (pd - m);
    b1 += ge;
    b2 += ge * (pe - m);
  }
  if (i + NZ_VL <= L) {
    const nz_vf pd = NZ_VLD(p + i);
    nz_vf gd = NZ_VLD(g + i);
    if (relu) gd = nz_clear(gd, pd * sc + sh <= (nz_vf){0});
    a1 += gd;
    a2 += gd * (pd - m);
    i += NZ_VL;
  }
  float r1 = nz_hsum(a1 + b1), r2 = nz_hsum(a2 + b2);
  for (; i < L; ++i) {
    const float pi = NZ_LD(p[i]), gi = relu && pi * sc + sh <= 0.f ? 0.f : NZ_LD(g[i]);
    r1 += gi;
    r2 += gi * (pi - m);
  }
  *o1 = r1;
  *o2 = r2;
}

/* One block of k channels from c0: the sums of dy and dy (x - mean), dw and db from them
 * (where not NULL), then dx. */
NZ_INLINE void NZ_FN(bn_backward_block)(const NZ_T *dy, const NZ_T *x, const float *w,
                                        const float *b, const float *mean, const float *invstd,
                                        NZ_T *dx, float *dw, float *db, int64_t N, int64_t C,
                                        int64_t L, int64_t c0, int64_t k, int relu) {
  const double M = (double)N * (double)L;
  double s_dy[NZ_MAX_BLOCK], s_dyx[NZ_MAX_BLOCK];
  for (int64_t j = 0; j < k; ++j) s_dy[j] = s_dyx[j] = 0.0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t j = 0; j < k; ++j) {
      const NZ_T *g = dy + (n * C + c0 + j) * L;
      const NZ_T *p = x + (n * C + c0 + j) * L;
      const float m = mean[c0 + j];
      float r1 = 0.f, r2 = 0.f;
      if (NZ_SHORT_ROW(L)) {
        const float sc = relu ? bn_scale(w, c0 + j, invstd[c0 + j]) : 0.f;
        const float sh = relu ? bn_shift(b, c0 + j, m, sc) : 0.f;
        NZ_FN(row_grad_sums)(g, p, L, m, relu, sc, sh, &r1, &r2);
      } else if (relu) {
        const float sc = bn_scale(w, c0 + j, invstd[c0 + j]), sh = bn_shift(b, c0 + j, m, sc);
#pragma omp simd reduction(+ : r1, r2)
        for (int64_t i = 0; i < L; ++i) {
          const float pi = NZ_LD(p[i]), gi = pi * sc + sh <= 0.f ? 0.f : NZ_LD(g[i]);
          r1 += gi;
          r2 += gi * (pi - m);
        }
      } else {
#pragma omp simd reduction(+ : r1, r2)
        for (int64_t i = 0; i < L; ++i) {
          const float gi = NZ_LD(g[i]);
          r1 += gi;
          r2 += gi * (NZ_LD(p[i]) - m);
        }
      }
      s_dy[j] += r1;
      s_dyx[j] += r2;
    }
  for (int64_t j = 0; j < k; ++j) {
    if (dw) dw[c0 + j] = (float)(s_dyx[j] * invstd[c0 + j]);
    if (db) db[c0 + j] = (float)s_dy[j];
  }
  if (!dx) return;
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
      const NZ_T *g = dy + (n * C + c0 + j) * L;
      const NZ_T *p = x + (n * C + c0 + j) * L;
      NZ_T *o = dx + (n * C + c0 + j) * L;
      const float m = mean[c0 + j], a = kk[j], md = mean_dy[j], pr = proj[j];
      if (relu) {
        const float sc = bn_scale(w, c0 + j, invstd[c0 + j]), sh = bn_shift(b, c0 + j, m, sc);
#pragma omp simd
        for (int64_t i = 0; i < L; ++i) {
          const float pi = NZ_LD(p[i]), gi = pi * sc + sh <= 0.f ? 0.f : NZ_LD(g[i]);
          o[i] = NZ_ST(a * (gi - md - (pi - m) * pr));
        }
      } else {
        NZ_FN(dx_line)(g, p, o, L, a, md, m, pr);
      }
    }
}

static void NZ_FN(bn_backward)(const NZ_T *dy, const NZ_T *x, const float *w, const float *b,
                               const float *mean, const float *invstd, NZ_T *dx, float *dw,
                               float *db, int64_t N, int64_t C, int64_t L, int relu,
                               int threads) {
  const int64_t bc = block_channels(N, C, L, threads);
  const int64_t blocks = (C + bc - 1) / bc;
#pragma omp parallel for num_threads(threads) schedule(static)
  for (int64_t blk = 0; blk < blocks; ++blk) {
    const int64_t c0 = blk * bc, c1 = c0 + bc < C ? c0 + bc : C;
    NZ_FN(bn_backward_block)(dy, x, w, b, mean, invstd, dx, dw, db, N, C, L, c0, c1 - c0, relu);
  }
}

void NZ_FN(nz_bn_backward)(const NZ_T *dy, const NZ_T *x, const float *w, const float *mean,
                           const float *invstd, NZ_T *dx, float *dw, float *db, int64_t N,
                           int64_t C, int64_t L, int threads) {
  NZ_FN(bn_backward)(dy, x, w, NULL, mean, invstd, dx, dw, db, N, C, L, 0, threads);
}

/* b: the forward's bias (may be NULL). */
void NZ_FN(nz_bn_relu_backward)(const NZ_T *dy, const NZ_T *x, const float *w, const float *b,
                                const float *mean, const float *invstd, NZ_T *dx, float *dw,
                                float *db, int64_t N, int64_t C, int64_t L, int threads) {
  NZ_FN(bn_backward)(dy, x, w, b, mean, invstd, dx, dw, db, N, C, L, 1, threads);
}

