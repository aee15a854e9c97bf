/* BatchNorm's channels_last kernels (see batch_norm.c, "channels_last") written once for an
 * element type: batch_norm.c includes this file twice through bn_kernels.h (no include guard),
 * for float32 and for bfloat16 (x, y, dy, dx as their uint16_t bits; the statistics,
 * parameters and sums float either way), with the macros of ghost_rows.h (NZ_T, NZ_LD, NZ_ST,
 * NZ_FN) and after cl_tiles.h of the same type. */

static void NZ_FN(bn_forward_cl)(const NZ_T *x, const float *w, const float *b, NZ_T *y,
                          float *mean_out, float *invstd_out, float *var_out, double *work,
                          int64_t max_blocks, int64_t R, int64_t C, double eps, int relu,
                          const nz_renorm *rn, int threads) {
  const float *wm = rn ? rn->out + 2 * C : w, *bm = rn ? rn->out + 3 * C : b; /* see bn_forward */
  const int64_t rb = cl_block_rows(R, max_blocks);
  const int64_t blocks = (R + rb - 1) / rb;
  const double M = (double)R;
  double *part1 = work, *part2 = work + max_blocks * C; /* [block][C] */
#pragma omp parallel num_threads(threads)
  {
    /* 1. per block: sum(x - k) and sum((x - k)^2), k = the first row */
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t r0 = blk * rb, r1 = r0 + rb < R ? r0 + rb : R;
      for (int64_t c0 = 0; c0 < C; c0 += NZ_CL_CB) {
        const int64_t k = C - c0 < NZ_CL_CB ? C - c0 : NZ_CL_CB;
        double s1[NZ_CL_CB], s2[NZ_CL_CB];
        float shift0[NZ_CL_CB]; /* the first row's values */
        for (int64_t j = 0; j < k; ++j) s1[j] = s2[j] = 0.0, shift0[j] = NZ_LD(x[c0 + j]);
        for (int64_t q0 = r0; q0 < r1; q0 += NZ_CL_CHUNK) {
          const int64_t n = q0 + NZ_CL_CHUNK < r1 ? NZ_CL_CHUNK : r1 - q0;
          const NZ_T *p = x + q0 * C + c0;
          int64_t j = 0; /* tiles of 32, then 8 channels, then the rest */
          for (; j + NZ_CL_TILE <= k; j += NZ_CL_TILE)
            NZ_FN(cl_tile_moments)(p + j, C, n, shift0 + j, NZ_CL_TILE, s1 + j, s2 + j);
          for (; j + 8 <= k; j += 8)
            NZ_FN(cl_tile_moments)(p + j, C, n, shift0 + j, 8, s1 + j, s2 + j);
          if (j < k) NZ_FN(cl_tile_moments)(p + j, C, n, shift0 + j, k - j, s1 + j, s2 + j);
        }
        for (int64_t j = 0; j < k; ++j) {
          part1[blk * C + c0 + j] = s1[j];
          part2[blk * C + c0 + j] = s2[j];
        }
      }
    }
    /* 2. totals in block order, then the statistics */
#pragma omp for schedule(static)
    for (int64_t c0 = 0; c0 < C; c0 += NZ_CL_CB) {
      const int64_t k = C - c0 < NZ_CL_CB ? C - c0 : NZ_CL_CB;
      double t1[NZ_CL_CB], t2[NZ_CL_CB];
      for (int64_t j = 0; j < k; ++j) t1[j] = t2[j] = 0.0;
      for (int64_t blk = 0; blk < blocks; ++blk)
        for (int64_t j = 0; j < k; ++j) {
          t1[j] += part1[blk * C + c0 + j];
          t2[j] += part2[blk * C + c0 + j];
        }
      for (int64_t j = 0; j < k; ++j) {
        const int64_t c = c0 + j;
        const double dm = t1[j] / M;
        double var = t2[j] / M - dm * dm;
        if (var < 0.0) var = 0.0;
        mean_out[c] = (float)((R > 0 ? NZ_LD(x[c]) : 0.f) + dm);
        invstd_out[c] = (float)(1.0 / sqrt(var + eps));
        if (var_out) var_out[c] = (float)var;
        if (rn) renorm_channel(rn, w, b, c, C, mean_out[c], invstd_out[c], var, M, eps);
      }
    }
    /* 3. y = x scale + shift (no y: statistics only) */
    if (y) {
#pragma omp for schedule(static)
      for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t r0 = blk * rb, r1 = r0 + rb < R ? r0 + rb : R;
        for (int64_t c0 = 0; c0 < C; c0 += NZ_CL_CB) {
          const int64_t k = C - c0 < NZ_CL_CB ? C - c0 : NZ_CL_CB;
          float scale[NZ_CL_CB], shift[NZ_CL_CB];
          for (int64_t j = 0; j < k; ++j) {
            const int64_t c = c0 + j;
            scale[j] = bn_scale(wm, c, invstd_out[c]);
            shift[j] = bn_shift(bm, c, mean_out[c], scale[j]);
          }
          for (int64_t r = r0; r < r1; ++r) {
            const NZ_T *p = x + r * C + c0;
            NZ_T *o = y + r * C + c0;
            if (relu) {
#pragma omp simd
              for (int64_t j = 0; j < k; ++j) {
                const float v = NZ_LD(p[j]) * scale[j] + shift[j];
                o[j] = NZ_ST(v < 0.f ? 0.f : v);
              }
            } else {
#pragma omp simd
              for (int64_t j = 0; j < k; ++j) o[j] = NZ_ST(NZ_LD(p[j]) * scale[j] + shift[j]);
            }
          }
        }
      }
    }
  }
}

void NZ_FN(nz_bn_forward_cl)(const NZ_T *x, const float *w, const float *b, NZ_T *y,
                             float *mean_out, float *invstd_out, float *var_out, double *work,
                             int64_t max_blocks, int64_t R, int64_t C, double eps, int threads) {
  NZ_FN(bn_forward_cl)(x, w, b, y, mean_out, invstd_out, var_out, work, max_blocks, R, C, eps, 0,
                NULL, threads);
}

void NZ_FN(nz_renorm_forward_cl)(const NZ_T *x, const float *w, const float *b,
                                 const float *running_mean, const float *running_var,
                                 double r_max, double d_max, NZ_T *y, float *mean_out,
                                 float *invstd_out, float *out, double *work, int64_t max_blocks,
                                 int64_t R, int64_t C, double eps, int threads) {
  const nz_renorm rn = {running_mean, running_var, (float)(1.0 / r_max), (float)r_max,
                        (float)d_max, out};
  NZ_FN(bn_forward_cl)(x, w, b, y, mean_out, invstd_out, NULL, work, max_blocks, R, C, eps, 0,
                       &rn, threads);
}

void NZ_FN(nz_bn_relu_forward_cl)(const NZ_T *x, const float *w, const float *b, NZ_T *y,
                                  float *mean_out, float *invstd_out, float *var_out,
                                  double *work, int64_t max_blocks, int64_t R, int64_t C,
                                  double eps, int threads) {
  NZ_FN(bn_forward_cl)(x, w, b, y, mean_out, invstd_out, var_out, work, max_blocks, R, C, eps, 1,
                NULL, threads);
}

/* Sums of one run of rows, tiles of 32, then 8 channels, then the rest (relu a constant). */
NZ_INLINE void NZ_FN(cl_grad_sums_run)(const NZ_T *g, const NZ_T *p, int64_t C, int64_t n,
                                const float *m, int64_t k, double *s1, double *s2,
                                const float *sc, const float *sh, int relu) {
  int64_t j = 0;
  for (; j + NZ_CL_TILE <= k; j += NZ_CL_TILE)
    NZ_FN(cl_tile_grad_sums)(g + j, p + j, C, n, m + j, NZ_CL_TILE, s1 + j, s2 + j, sc + j,
                             sh + j, relu);
  for (; j + 8 <= k; j += 8)
    NZ_FN(cl_tile_grad_sums)(g + j, p + j, C, n, m + j, 8, s1 + j, s2 + j, sc + j, sh + j,
                             relu);
  if (j < k)
    NZ_FN(cl_tile_grad_sums)(g + j, p + j, C, n, m + j, k - j, s1 + j, s2 + j, sc + j, sh + j,
                             relu);
}

static void NZ_FN(bn_backward_cl)(const NZ_T *dy, const NZ_T *x, const float *w,
                                  const float *b, const float *mean, const float *invstd,
                                  NZ_T *dx, float *dw, float *db, double *work,
                                  int64_t max_blocks, int64_t R, int64_t C, int relu,
                                  int threads) {
  const int64_t rb = cl_block_rows(R, max_blocks);
  const int64_t blocks = (R + rb - 1) / rb;
  const double M = (double)R;
  double *part1 = work, *part2 = work + max_blocks * C; /* [block][C]; totals into row 0 */
#pragma omp parallel num_threads(threads)
  {
    /* 1. per block: sum(dy) and sum(dy (x - mean)) */
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < blocks; ++blk) {
      const int64_t r0 = blk * rb, r1 = r0 + rb < R ? r0 + rb : R;
      for (int64_t c0 = 0; c0 < C; c0 += NZ_CL_CB) {
        const int64_t k = C - c0 < NZ_CL_CB ? C - c0 : NZ_CL_CB;
        const float *m = mean + c0;
        double s1[NZ_CL_CB], s2[NZ_CL_CB];
        float sc[NZ_CL_CB], sh[NZ_CL_CB];
        for (int64_t j = 0; j < k; ++j) {
          s1[j] = s2[j] = 0.0;
          if (relu) {
            sc[j] = bn_scale(w, c0 + j, invstd[c0 + j]);
            sh[j] = bn_shift(b, c0 + j, m[j], sc[j]);
          }
        }
        for (int64_t q0 = r0; q0 < r1; q0 += NZ_CL_CHUNK) {
          const int64_t n = q0 + NZ_CL_CHUNK < r1 ? NZ_CL_CHUNK : r1 - q0;
          const NZ_T *g = dy + q0 * C + c0, *p = x + q0 * C + c0;
          if (relu)
            NZ_FN(cl_grad_sums_run)(g, p, C, n, m, k, s1, s2, sc, sh, 1);
          else
            NZ_FN(cl_grad_sums_run)(g, p, C, n, m, k, s1, s2, sc, sh, 0);
        }
        for (int64_t j = 0; j < k; ++j) {
          part1[blk * C + c0 + j] = s1[j];
          part2[blk * C + c0 + j] = s2[j];
        }
      }
    }
    /* 2. totals in block order (each channel's own thread reads then overwrites row 0) */
#pragma omp for schedule(static)
    for (int64_t c0 = 0; c0 < C; c0 += NZ_CL_CB) {
      const int64_t k = C - c0 < NZ_CL_CB ? C - c0 : NZ_CL_CB;
      double t1[NZ_CL_CB], t2[NZ_CL_CB];
      for (int64_t j = 0; j < k; ++j) t1[j] = t2[j] = 0.0;
      for (int64_t blk = 0; blk < blocks; ++blk)
        for (int64_t j = 0; j < k; ++j) {
          t1[j] += part1[blk * C + c0 + j];
          t2[j] += part2[blk * C + c0 + j];
        }
      for (int64_t j = 0; j < k; ++j) {
        const int64_t c = c0 + j;
        part1[c] = t1[j];
        part2[c] = t2[j];
        if (dw) dw[c] = (float)(t2[j] * invstd[c]);
        if (db) db[c] = (float)t1[j];
      }
    }
    /* 3. dx = w invstd (dy - mean(dy) - (x - mean) invstd^2 mean(dy (x - mean))) */
    if (dx) {
#pragma omp for schedule(static)
      for (int64_t blk = 0; blk < blocks; ++blk) {
        const int64_t r0 = blk * rb, r1 = r0 + rb < R ? r0 + rb : R;
        for (int64_t c0 = 0; c0 < C; c0 += NZ_CL_CB) {
          const int64_t k = C - c0 < NZ_CL_CB ? C - c0 : NZ_CL_CB;
          const float *m = mean + c0;
          float a[NZ_CL_CB], mean_dy[NZ_CL_CB], proj[NZ_CL_CB], sc[NZ_CL_CB], sh[NZ_CL_CB];
          for (int64_t j = 0; j < k; ++j) {
            const int64_t c = c0 + j;
            const float inv = invstd[c];
            a[j] = (w ? w[c] : 1.f) * inv;
            mean_dy[j] = (float)(part1[c] / M);
            proj[j] = (float)(part2[c] / M) * inv * inv;
            if (relu) {
              sc[j] = bn_scale(w, c, inv);
              sh[j] = bn_shift(b, c, m[j], sc[j]);
            }
          }
          for (int64_t r = r0; r < r1; ++r) {
            const NZ_T *g = dy + r * C + c0, *p = x + r * C + c0;
            NZ_T *o = dx + r * C + c0;
            if (relu) {
#pragma omp simd
              for (int64_t j = 0; j < k; ++j) {
                const float pv = NZ_LD(p[j]);
                const float gv = pv * sc[j] + sh[j] <= 0.f ? 0.f : NZ_LD(g[j]);
                o[j] = NZ_ST(a[j] * (gv - mean_dy[j] - (pv - m[j]) * proj[j]));
              }
            } else {
#pragma omp simd
              for (int64_t j = 0; j < k; ++j)
                o[j] = NZ_ST(a[j] * (NZ_LD(g[j]) - mean_dy[j] - (NZ_LD(p[j]) - m[j]) * proj[j]));
            }
          }
        }
      }
    }
  }
}

void NZ_FN(nz_bn_backward_cl)(const NZ_T *dy, const NZ_T *x, const float *w, const float *mean,
                              const float *invstd, NZ_T *dx, float *dw, float *db, double *work,
                              int64_t max_blocks, int64_t R, int64_t C, int threads) {
  NZ_FN(bn_backward_cl)(dy, x, w, NULL, mean, invstd, dx, dw, db, work, max_blocks, R, C, 0,
                        threads);
}

/* b: the forward's bias (may be NULL). */
void NZ_FN(nz_bn_relu_backward_cl)(const NZ_T *dy, const NZ_T *x, const float *w,
                                   const float *b, const float *mean, const float *invstd,
                                   NZ_T *dx, float *dw, float *db, double *work,
                                   int64_t max_blocks, int64_t R, int64_t C, int threads) {
  NZ_FN(bn_backward_cl)(dy, x, w, b, mean, invstd, dx, dw, db, work, max_blocks, R, C, 1,
                        threads);
}

