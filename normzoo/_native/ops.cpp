// normzoo's native kernels (row_norm.c, zoo.c) as torch operators with C++ autograd nodes.
//
// Group norm, and with it InstanceNorm (groups = C) and channels-first LayerNorm (groups = 1):
//   y = weight_c * (x - mean_{n,g}) * rstd_{n,g} + bias_c,   rstd = 1 / sqrt(var_{n,g} + eps)
// over each (sample, group) row (Wu and He, "Group Normalization", ECCV 2018); with relu=True,
// relu(y) in the same kernels (Norm.fuse_activation: the ReLU's mask is recomputed in backward).
//
// Why C++: the same kernels behind a Python torch.autograd.Function cost tens of microseconds
// of Python per forward and backward, which decided the comparison with torch's own group norm
// (a C++ autograd node) on mid-sized tensors. Registered as normzoo::group_norm; the loader
// (normzoo/_native/__init__.py) builds this file with the C++ compiler against the installed
// torch's headers, links row_norm.c in, and loads it with torch.ops.load_library.
//
// The caller (normzoo/norms/_rownorm.py) dispatches only float32 CPU tensors here, contiguous
// or channels_last (row_norm.c has kernels for both; the output keeps the layout).
#include <ATen/Parallel.h>
#include <ATen/TensorOperators.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/batch_norm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/group_norm.h>
#include <ATen/ops/maximum.h>
#include <ATen/ops/native_batch_norm_backward.h>
#include <ATen/ops/relu.h>
#include <ATen/ops/sigmoid.h>
#include <ATen/ops/softmax.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

#include <vector>

extern "C" {
// batch_norm.c
void nz_bn_forward(const float *x, const float *w, const float *b, float *y, float *mean_out,
                   float *invstd_out, float *var_out, int64_t N, int64_t C, int64_t L,
                   double eps, int threads);
void nz_bn_relu_forward(const float *x, const float *w, const float *b, float *y,
                        float *mean_out, float *invstd_out, float *var_out, int64_t N, int64_t C,
                        int64_t L, double eps, int threads);
void nz_bn_backward(const float *dy, const float *x, const float *w, const float *mean,
                    const float *invstd, float *dx, float *dw, float *db, int64_t N, int64_t C,
                    int64_t L, int threads);
void nz_bn_relu_backward(const float *dy, const float *x, const float *w, const float *b,
                         const float *mean, const float *invstd, float *dx, float *dw,
                         float *db, int64_t N, int64_t C, int64_t L, int threads);
void nz_bn_forward_cl(const float *x, const float *w, const float *b, float *y, float *mean_out,
                      float *invstd_out, float *var_out, double *work, int64_t max_blocks,
                      int64_t R, int64_t C, double eps, int threads);
void nz_bn_relu_forward_cl(const float *x, const float *w, const float *b, float *y,
                           float *mean_out, float *invstd_out, float *var_out, double *work,
                           int64_t max_blocks, int64_t R, int64_t C, double eps, int threads);
void nz_bn_backward_cl(const float *dy, const float *x, const float *w, const float *mean,
                       const float *invstd, float *dx, float *dw, float *db, double *work,
                       int64_t max_blocks, int64_t R, int64_t C, int threads);
void nz_bn_relu_backward_cl(const float *dy, const float *x, const float *w, const float *b,
                            const float *mean, const float *invstd, float *dx, float *dw,
                            float *db, double *work, int64_t max_blocks, int64_t R, int64_t C,
                            int threads);
// batch_norm.c's bfloat16 builds (bn_block.h, bn_cl.h): x, y, dy, dx as uint16_t bits, the
// rest float32
void nz_bn_forward_bf16(const uint16_t *x, const float *w, const float *b, uint16_t *y,
                        float *mean_out, float *invstd_out, float *var_out, int64_t N, int64_t C,
                        int64_t L, double eps, int threads);
void nz_bn_relu_forward_bf16(const uint16_t *x, const float *w, const float *b, uint16_t *y,
                             float *mean_out, float *invstd_out, float *var_out, int64_t N,
                             int64_t C, int64_t L, double eps, int threads);
void nz_bn_backward_bf16(const uint16_t *dy, const uint16_t *x, const float *w,
                         const float *mean, const float *invstd, uint16_t *dx, float *dw,
                         float *db, int64_t N, int64_t C, int64_t L, int threads);
void nz_bn_relu_backward_bf16(const uint16_t *dy, const uint16_t *x, const float *w,
                              const float *b, const float *mean, const float *invstd,
                              uint16_t *dx, float *dw, float *db, int64_t N, int64_t C,
                              int64_t L, int threads);
void nz_bn_forward_cl_bf16(const uint16_t *x, const float *w, const float *b, uint16_t *y,
                           float *mean_out, float *invstd_out, float *var_out, double *work,
                           int64_t max_blocks, int64_t R, int64_t C, double eps, int threads);
void nz_bn_relu_forward_cl_bf16(const uint16_t *x, const float *w, const float *b, uint16_t *y,
                                float *mean_out, float *invstd_out, float *var_out,
                                double *work, int64_t max_blocks, int64_t R, int64_t C,
                                double eps, int threads);
void nz_bn_backward_cl_bf16(const uint16_t *dy, const uint16_t *x, const float *w,
                            const float *mean, const float *invstd, uint16_t *dx, float *dw,
                            float *db, double *work, int64_t max_blocks, int64_t R, int64_t C,
                            int threads);
void nz_bn_relu_backward_cl_bf16(const uint16_t *dy, const uint16_t *x, const float *w,
                                 const float *b, const float *mean, const float *invstd,
                                 uint16_t *dx, float *dw, float *db, double *work,
                                 int64_t max_blocks, int64_t R, int64_t C, int threads);
// batch_norm.c's ghost batch norm (ghost_rows.h; the contiguous blocks), float32 and bfloat16
void nz_ghost_forward_rows(const float *x, const float *w, const float *b, float *y,
                           float *stats, float *var, int64_t R, int64_t C, int64_t B, double eps,
                           int threads);
void nz_ghost_backward_rows(const float *dy, const float *x, const float *w, const float *stats,
                            float *dx, float *dw, float *db, float *part, int64_t R, int64_t C,
                            int64_t B, int threads);
void nz_ghost_forward_rows_bf16(const uint16_t *x, const float *w, const float *b, uint16_t *y,
                                float *stats, float *var, int64_t R, int64_t C, int64_t B,
                                double eps, int threads);
void nz_ghost_backward_rows_bf16(const uint16_t *dy, const uint16_t *x, const float *w,
                                 const float *stats, uint16_t *dx, float *dw, float *db,
                                 float *part, int64_t R, int64_t C, int64_t B, int threads);
void nz_ghost_forward(const float *x, const float *w, const float *b, float *y, float *stats,
                      float *var, int64_t N, int64_t C, int64_t L, int64_t B, double eps,
                      int threads);
void nz_ghost_backward(const float *dy, const float *x, const float *w, const float *stats,
                       float *dx, float *dw, float *db, float *part, int64_t N, int64_t C,
                       int64_t L, int64_t B, int threads);
void nz_ghost_forward_bf16(const uint16_t *x, const float *w, const float *b, uint16_t *y,
                           float *stats, float *var, int64_t N, int64_t C, int64_t L, int64_t B,
                           double eps, int threads);
void nz_ghost_backward_bf16(const uint16_t *dy, const uint16_t *x, const float *w,
                            const float *stats, uint16_t *dx, float *dw, float *db, float *part,
                            int64_t N, int64_t C, int64_t L, int64_t B, int threads);
// Batch Renorm: BatchNorm's forward with r and d per channel (batch_norm.c, bn_block.h, bn_cl.h)
void nz_renorm_forward(const float *x, const float *w, const float *b, const float *running_mean,
                       const float *running_var, double r_max, double d_max, float *y,
                       float *mean_out, float *invstd_out, float *out, int64_t N, int64_t C,
                       int64_t L, double eps, int threads);
void nz_renorm_forward_cl(const float *x, const float *w, const float *b,
                          const float *running_mean, const float *running_var, double r_max,
                          double d_max, float *y, float *mean_out, float *invstd_out, float *out,
                          double *work, int64_t max_blocks, int64_t R, int64_t C, double eps,
                          int threads);
void nz_renorm_forward_bf16(const uint16_t *x, const float *w, const float *b,
                            const float *running_mean, const float *running_var, double r_max,
                            double d_max, uint16_t *y, float *mean_out, float *invstd_out,
                            float *out, int64_t N, int64_t C, int64_t L, double eps, int threads);
void nz_renorm_forward_cl_bf16(const uint16_t *x, const float *w, const float *b,
                               const float *running_mean, const float *running_var, double r_max,
                               double d_max, uint16_t *y, float *mean_out, float *invstd_out,
                               float *out, double *work, int64_t max_blocks, int64_t R, int64_t C,
                               double eps, int threads);
// row_norm.c
void nz_row_forward(const float *x, const float *w, const float *b, float *y, float *mean_out,
                    float *rstd_out, float *var_out, int64_t N, int64_t G, int64_t Cg,
                    int64_t L, double eps, int threads);
void nz_row_backward(const float *dy, const float *x, const float *w, const float *mean,
                     const float *rstd, float *dx, float *dw, float *db, float *partial,
                     int64_t N, int64_t G, int64_t Cg, int64_t L, int threads);
void nz_row_relu_forward(const float *x, const float *w, const float *b, float *y,
                         float *mean_out, float *rstd_out, float *var_out, int64_t N, int64_t G,
                         int64_t Cg, int64_t L, double eps, int threads);
void nz_row_relu_backward(const float *dy, const float *x, const float *w, const float *b,
                          const float *mean, const float *rstd, float *dx, float *dw,
                          float *db, float *partial, float *mask, int64_t N, int64_t G,
                          int64_t Cg, int64_t L, int threads);
int nz_row_relu_forward_cl(const float *x, const float *w, const float *b, float *y,
                           float *mean_out, float *rstd_out, float *var_out, int64_t N,
                           int64_t G, int64_t Cg, int64_t L, double eps, int threads);
int nz_row_relu_backward_cl(const float *dy, const float *x, const float *w, const float *b,
                            const float *mean, const float *rstd, float *dx, float *dw,
                            float *db, float *partial, int64_t N, int64_t G, int64_t Cg,
                            int64_t L, int threads);
int nz_row_forward_cl(const float *x, const float *w, const float *b, float *y,
                      float *mean_out, float *rstd_out, float *var_out, int64_t N, int64_t G,
                      int64_t Cg, int64_t L, double eps, int threads);
int nz_row_backward_cl(const float *dy, const float *x, const float *w, const float *mean,
                       const float *rstd, float *dx, float *dw, float *db, float *partial,
                       int64_t N, int64_t G, int64_t Cg, int64_t L, int threads);
// zoo.c (the wider zoo's per-row norms)
int nz_frozen_forward(const float *x, const float *mean, const float *var, const float *w,
                      const float *b, double eps, float *y, int64_t N, int64_t C, int64_t L,
                      int cl, int relu, int threads);
int nz_frozen_backward(const float *dy, const float *y, const float *var, const float *w,
                       double eps, float *dx, int64_t N, int64_t C, int64_t L, int cl, int relu,
                       int threads);
void nz_s0_forward(const float *x, const float *v, const float *w, const float *b, int64_t G,
                   double eps, float *y, float *mean, float *var, float *lo, float *params,
                   int64_t N, int64_t C, int64_t L, int cl, int threads);
void nz_s0_backward(const float *dy, const float *x, const float *params, const float *mean,
                    const float *var, const float *lo, const float *w, int64_t G, double eps,
                    float *sums, float *k, float *dx, float *dv, float *dw, float *db, int64_t N,
                    int64_t C, int64_t L, int cl, int threads);
void nz_b0_forward(const float *x, const float *v, const float *w, const float *b,
                   const float *running_var, double eps, float *y, float *mean, float *var,
                   float *lo, float *var_b, float *params, int64_t N, int64_t C, int64_t L,
                   int cl, int threads);
void nz_b0_backward(const float *dy, const float *x, const float *params, const float *mean,
                    const float *lo, int batch, float *sums, float *k, float *dx, float *dv,
                    float *dw, float *db, int64_t N, int64_t C, int64_t L, int cl,
                    int threads);
void nz_switchable_forward(const float *x, const float *mean_weight, const float *var_weight,
                           const float *w, const float *b, const float *running_mean,
                           const float *running_var, double eps, float *y, float *mean,
                           float *var, float *stats_bn, float *params, double *scratch,
                           int64_t N, int64_t C, int64_t L, int cl, int threads);
void nz_switchable_backward(const float *dy, const float *x, const float *params,
                            const float *mean, const float *var, const float *mean_weight,
                            const float *var_weight, const float *w, const float *running_mean,
                            const float *running_var, double eps, float *sums, float *k,
                            double *scratch, float *dx, float *dmw, float *dvw, float *dw,
                            float *db, int64_t N, int64_t C, int64_t L, int cl, int threads);
void nz_frn_forward(const float *x, const float *w, const float *b, const float *tau, double eps,
                    float *y, float *mean, float *var, float *params, int64_t N, int64_t C,
                    int64_t L, int cl, int threads);
void nz_frn_backward(const float *dy, const float *x, const float *params, const float *mean,
                     const float *var, const float *w, double eps, float *sums, float *k,
                     float *dx, float *dw, float *db, float *dtau, int64_t N, int64_t C,
                     int64_t L, int cl, int threads);
void nz_rms_forward(const float *x, const float *w, const float *b, double eps, float *y,
                    float *mean, float *var, float *params, int64_t N, int64_t C, int64_t L,
                    int cl, int threads);
void nz_rms_backward(const float *dy, const float *x, const float *params, const float *mean,
                     const float *var, const float *w, double eps, float *sums, float *k,
                     float *dx, float *dw, float *db, int64_t N, int64_t C, int64_t L, int cl,
                     int threads);
void nz_frn_forward_bf16(const uint16_t *x, const float *w, const float *b, const float *tau,
                         double eps, uint16_t *y, float *mean, float *var, float *params,
                         int64_t N, int64_t C, int64_t L, int cl, int threads);
void nz_frn_backward_bf16(const uint16_t *dy, const uint16_t *x, const float *params,
                          const float *mean, const float *var, const float *w, double eps,
                          float *sums, float *k, uint16_t *dx, float *dw, float *db, float *dtau,
                          int64_t N, int64_t C, int64_t L, int cl, int threads);
void nz_rms_forward_bf16(const uint16_t *x, const float *w, const float *b, double eps,
                         uint16_t *y, float *mean, float *var, float *params, int64_t N,
                         int64_t C, int64_t L, int cl, int threads);
void nz_rms_backward_bf16(const uint16_t *dy, const uint16_t *x, const float *params,
                          const float *mean, const float *var, const float *w, double eps,
                          float *sums, float *k, uint16_t *dx, float *dw, float *db, int64_t N,
                          int64_t C, int64_t L, int cl, int threads);
// zoo.c's bfloat16 builds of EvoNorm-S0's, EvoNorm-B0's and SwitchableNorm's: x, y, dy, dx as
// uint16_t bits, the rest float32
void nz_s0_forward_bf16(const uint16_t *x, const float *v, const float *w, const float *b,
                        int64_t G, double eps, uint16_t *y, float *mean, float *var, float *lo,
                        float *params, int64_t N, int64_t C, int64_t L, int cl, int threads);
void nz_s0_backward_bf16(const uint16_t *dy, const uint16_t *x, const float *params,
                         const float *mean, const float *var, const float *lo, const float *w,
                         int64_t G, double eps, float *sums, float *k, uint16_t *dx, float *dv,
                         float *dw, float *db, int64_t N, int64_t C, int64_t L, int cl,
                         int threads);
void nz_b0_forward_bf16(const uint16_t *x, const float *v, const float *w, const float *b,
                        const float *running_var, double eps, uint16_t *y, float *mean,
                        float *var, float *lo, float *var_b, float *params, int64_t N,
                        int64_t C, int64_t L, int cl, int threads);
void nz_b0_backward_bf16(const uint16_t *dy, const uint16_t *x, const float *params,
                         const float *mean, const float *lo, int batch, float *sums, float *k,
                         uint16_t *dx, float *dv, float *dw, float *db, int64_t N, int64_t C,
                         int64_t L, int cl, int threads);
void nz_switchable_forward_bf16(const uint16_t *x, const float *mean_weight,
                                const float *var_weight, const float *w, const float *b,
                                const float *running_mean, const float *running_var, double eps,
                                uint16_t *y, float *mean, float *var, float *stats_bn,
                                float *params, double *scratch, int64_t N, int64_t C, int64_t L,
                                int cl, int threads);
void nz_switchable_backward_bf16(const uint16_t *dy, const uint16_t *x, const float *params,
                                 const float *mean, const float *var, const float *mean_weight,
                                 const float *var_weight, const float *w,
                                 const float *running_mean, const float *running_var,
                                 double eps, float *sums, float *k, double *scratch,
                                 uint16_t *dx, float *dmw, float *dvw, float *dw, float *db,
                                 int64_t N, int64_t C, int64_t L, int cl, int threads);
}

namespace {
using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// An absent weight or bias travels as an empty tensor: autograd's Function takes no
// undefined tensor arguments. The kernels take a null pointer for it.
const float *in_ptr(const Tensor &t) { return t.numel() ? t.data_ptr<float>() : nullptr; }
float *out_ptr(Tensor &t) { return t.defined() && t.numel() ? t.data_ptr<float>() : nullptr; }
// A bfloat16 tensor's values as the kernels take them (their uint16_t bits).
uint16_t *bf16_ptr(const Tensor &t) {
  return reinterpret_cast<uint16_t *>(t.data_ptr<at::BFloat16>());
}

// The operators on float32 or bfloat16 x: `run` called with the kernel of x's element
// type (float32: `f32`, bfloat16: `bf16`, its uint16_t build) and a function giving the
// element pointer of an x-like tensor (nullptr for an undefined or empty one).
template <typename F32, typename BF16, typename Run>
void by_dtype(const Tensor &x, F32 f32, BF16 bf16, Run run) {
  if (x.scalar_type() == at::kBFloat16)
    run(bf16, [](const Tensor &t) -> uint16_t * {
      return t.defined() && t.numel() ? bf16_ptr(t) : nullptr;
    });
  else
    run(f32, [](const Tensor &t) -> float * {
      return t.defined() && t.numel() ? t.data_ptr<float>() : nullptr;
    });
}

Tensor or_empty(const std::optional<Tensor> &t, const Tensor &like) {
  return t.has_value() && t->defined() ? *t : at::empty({0}, like.options());
}

// channels_last (4-d) or channels_last_3d (5-d) x that is not also plain contiguous: the
// kernels' (N, L, C) layout. Anything else runs on the contiguous kernels.
bool channels_last(const Tensor &x) {
  if (x.is_contiguous()) return false;
  return (x.dim() == 4 && x.is_contiguous(at::MemoryFormat::ChannelsLast)) ||
         (x.dim() == 5 && x.is_contiguous(at::MemoryFormat::ChannelsLast3d));
}

// The channels_last kernels allocate their own scratch (a few KB per thread) and return -1,
// having written nothing, where that fails.
void check_scratch(int status) {
  TORCH_CHECK(status == 0, "normzoo::group_norm: out of memory for the kernel's scratch");
}

// dy in x's layout: the kernels read both with the same strides.
Tensor like_x(const Tensor &dy, const Tensor &x, bool cl) {
  return dy.contiguous(!cl                ? at::MemoryFormat::Contiguous
                       : x.dim() == 4     ? at::MemoryFormat::ChannelsLast
                                          : at::MemoryFormat::ChannelsLast3d);
}

// (1, C, 1, ...) for broadcasting a per-channel vector against x.
std::vector<int64_t> per_channel(const Tensor &x) {
  std::vector<int64_t> shape(x.dim(), 1);
  shape[1] = x.size(1);
  return shape;
}

struct GroupNormFunction : public torch::autograd::Function<GroupNormFunction> {
  // Returns (y, stats, var): stats (2, N, G) is the mean and rstd, var (N, G) the biased
  // variance when want_var (else empty); neither is differentiable. Saves x, weight and
  // stats, as torch's group norm saves x, weight, mean and rstd; with relu (y = relu(group
  // norm)) the bias too, which the backward's mask needs.
  static variable_list forward(AutogradContext *ctx, const Tensor &x, int64_t groups,
                               const Tensor &weight, const Tensor &bias, double eps,
                               bool want_var, bool relu) {
    const int64_t n = x.size(0), c = x.size(1), length = x.numel() / (n * c);
    Tensor y = at::empty_like(x);  // keeps a channels_last layout
    Tensor stats = at::empty({2, n, groups}, x.options());
    Tensor var = at::empty({want_var ? n : 0, want_var ? groups : 0}, x.options());
    float *s = stats.data_ptr<float>();
    if (channels_last(x)) {
      check_scratch((relu ? nz_row_relu_forward_cl : nz_row_forward_cl)(
          x.data_ptr<float>(), in_ptr(weight), in_ptr(bias), y.data_ptr<float>(), s,
          s + n * groups, out_ptr(var), n, groups, c / groups, length, eps,
          at::get_num_threads()));
    } else if (relu) {
      nz_row_relu_forward(x.data_ptr<float>(), in_ptr(weight), in_ptr(bias), y.data_ptr<float>(),
                          s, s + n * groups, out_ptr(var), n, groups, c / groups, length, eps,
                          at::get_num_threads());
    } else {
      nz_row_forward(x.data_ptr<float>(), in_ptr(weight), in_ptr(bias), y.data_ptr<float>(), s,
                     s + n * groups, out_ptr(var), n, groups, c / groups, length, eps,
                     at::get_num_threads());
    }
    ctx->save_for_backward({x, weight, stats, relu ? bias : at::empty({0}, x.options())});
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["relu"] = relu;
    ctx->mark_non_differentiable({stats, var});
    // stats and var get no gradient: no zeros made for them in backward
    ctx->set_materialize_grads(false);
    return {y, stats, var};
  }

  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(7);  // y got no gradient
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &weight = saved[1], &stats = saved[2], &bias = saved[3];
    const int64_t groups = ctx->saved_data["groups"].toInt();
    const bool relu = ctx->saved_data["relu"].toBool();
    // needs_input_grad counts the tensor arguments only: x, weight, bias.
    const bool need_x = ctx->needs_input_grad(0), need_w = ctx->needs_input_grad(1),
               need_b = ctx->needs_input_grad(2);
    const Tensor none;
    Tensor dy = grads[0];
    if (at::GradMode::is_enabled()) {
      // create_graph=True: differentiate torch's group norm with a graph instead, so double
      // backward works as with torch.nn.GroupNorm. Without the ReLU the bias only shifts y.
      // On a contiguous copy: torch's channels_last CPU kernel cancels catastrophically
      // (E[x^2] - E[x]^2) where the mean is large against the spread.
      variable_list inputs;
      if (need_x) inputs.push_back(x);
      if (need_w) inputs.push_back(weight);
      if (need_b && relu) inputs.push_back(bias);
      variable_list g;
      if (!inputs.empty()) {
        const double eps = ctx->saved_data["eps"].toDouble();
        Tensor y = at::group_norm(x.contiguous(), groups, weight.numel() ? weight : none,
                                  relu && bias.numel() ? bias : none, eps);
        if (relu) y = at::relu(y);
        g = torch::autograd::grad({y}, inputs, {dy}, /*retain_graph=*/true,
                                  /*create_graph=*/true);
      }
      size_t i = 0;
      Tensor dx = need_x ? g[i++] : none;
      Tensor dw = need_w ? g[i++] : none;
      std::vector<int64_t> dims{0};
      for (int64_t d = 2; d < dy.dim(); ++d) dims.push_back(d);
      Tensor db = need_b ? (relu ? g[i++] : dy.sum(dims)) : none;
      return {dx, none, dw, db, none, none, none};
    }
    const bool cl = channels_last(x);
    dy = like_x(dy, x, cl);
    const int64_t n = x.size(0), c = x.size(1), length = x.numel() / (n * c);
    Tensor dx = need_x ? at::empty_like(x) : none;
    Tensor dw = need_w ? at::empty({c}, x.options()) : none;
    Tensor db = need_b ? at::empty({c}, x.options()) : none;
    Tensor partial = at::empty({2, n, c}, x.options());
    const float *s = stats.data_ptr<float>();
    if (cl && relu) {
      check_scratch(nz_row_relu_backward_cl(dy.data_ptr<float>(), x.data_ptr<float>(),
                                            in_ptr(weight), in_ptr(bias), s, s + n * groups,
                                            out_ptr(dx), out_ptr(dw), out_ptr(db),
                                            partial.data_ptr<float>(), n, groups, c / groups,
                                            length, at::get_num_threads()));
    } else if (relu) {
      const int threads = at::get_num_threads();
      Tensor mask = at::empty({threads, x.numel() / (n * groups)}, x.options());
      nz_row_relu_backward(dy.data_ptr<float>(), x.data_ptr<float>(), in_ptr(weight),
                           in_ptr(bias), s, s + n * groups, out_ptr(dx), out_ptr(dw),
                           out_ptr(db), partial.data_ptr<float>(), mask.data_ptr<float>(), n,
                           groups, c / groups, length, threads);
    } else if (cl) {
      check_scratch(nz_row_backward_cl(dy.data_ptr<float>(), x.data_ptr<float>(),
                                       in_ptr(weight), s, s + n * groups, out_ptr(dx),
                                       out_ptr(dw), out_ptr(db), partial.data_ptr<float>(), n,
                                       groups, c / groups, length, at::get_num_threads()));
    } else {
      nz_row_backward(dy.data_ptr<float>(), x.data_ptr<float>(), in_ptr(weight), s,
                      s + n * groups, out_ptr(dx), out_ptr(dw), out_ptr(db),
                      partial.data_ptr<float>(), n, groups, c / groups, length,
                      at::get_num_threads());
    }
    return {dx, none, dw, db, none, none, none};
  }
};

// -- batch norm in training (batch_norm.c) ---------------------------------------------------
// y = weight_c (x - mean_c) invstd_c + bias_c over each channel's N * spatial values (Ioffe
// and Szegedy, ICML 2015), contiguous or channels_last; relu: relu(y) in the same kernels.

variable_list differentiate(const Tensor &y, const std::vector<Tensor> &leaves,
                            const std::vector<bool> &need, const Tensor &dy, size_t extra);

// The channels_last kernels' float64 workspace (2 max_blocks C values), one per thread, kept
// and grown: a fresh one per call would fault its pages in again. The kernels write every value
// they read.
double *bn_cl_work(int64_t values) {
  thread_local std::vector<double> work;
  if (static_cast<int64_t>(work.size()) < values) work.resize(values);
  return work.data();
}

// x the BatchNorm kernels read as (R, C) rows: channels_last input, or (N, C) tokens (the
// channels_last kernels' layout with one position per sample).
bool bn_rows(const Tensor &x) { return x.dim() == 2 || channels_last(x); }

struct BatchNormFunction : public torch::autograd::Function<BatchNormFunction> {
  // Returns (y, stats, var): stats (2, C) is the batch mean and inverse std, var (C,) the
  // biased batch variance; neither is differentiable. Saves x, weight and stats (and with
  // relu the bias, for the mask), as the Python autograd.Function in normzoo/norms/batch.py.
  // max_blocks: the channels_last kernels' partition (kernels.CL_MAX_BLOCKS). bfloat16 x
  // (float32 parameters): the kernels' bfloat16 builds, as
  // normzoo._native.kernels.batch_norm_forward_bf16 runs them; stats and var float32.
  static variable_list forward(AutogradContext *ctx, const Tensor &x, const Tensor &weight,
                               const Tensor &bias, double eps, bool relu, int64_t max_blocks) {
    const int64_t c = x.size(1), values = x.numel() / c;
    const int threads = at::get_num_threads();
    const auto f32 = x.options().dtype(at::kFloat);
    Tensor y = at::empty_like(x);  // keeps a channels_last layout
    Tensor stats = at::empty({2, c}, f32);
    Tensor var = at::empty({c}, f32);
    float *s = stats.data_ptr<float>();
    if (x.scalar_type() == at::kBFloat16) {
      if (bn_rows(x))
        (relu ? nz_bn_relu_forward_cl_bf16 : nz_bn_forward_cl_bf16)(
            bf16_ptr(x), in_ptr(weight), in_ptr(bias), bf16_ptr(y), s, s + c,
            var.data_ptr<float>(), bn_cl_work(2 * max_blocks * c), max_blocks, values, c, eps,
            threads);
      else
        (relu ? nz_bn_relu_forward_bf16 : nz_bn_forward_bf16)(
            bf16_ptr(x), in_ptr(weight), in_ptr(bias), bf16_ptr(y), s, s + c,
            var.data_ptr<float>(), x.size(0), c, values / x.size(0), eps, threads);
    } else if (bn_rows(x)) {
      (relu ? nz_bn_relu_forward_cl : nz_bn_forward_cl)(
          x.data_ptr<float>(), in_ptr(weight), in_ptr(bias), y.data_ptr<float>(), s, s + c,
          var.data_ptr<float>(), bn_cl_work(2 * max_blocks * c), max_blocks, values, c, eps,
          threads);
    } else {
      (relu ? nz_bn_relu_forward : nz_bn_forward)(
          x.data_ptr<float>(), in_ptr(weight), in_ptr(bias), y.data_ptr<float>(), s, s + c,
          var.data_ptr<float>(), x.size(0), c, values / x.size(0), eps, threads);
    }
    ctx->save_for_backward({x, weight, stats, relu ? bias : at::empty({0}, x.options())});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["relu"] = relu;
    ctx->saved_data["max_blocks"] = max_blocks;
    ctx->mark_non_differentiable({stats, var});
    ctx->set_materialize_grads(false);
    return {y, stats, var};
  }

  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(6);
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &weight = saved[1], &stats = saved[2], &bias = saved[3];
    const bool relu = ctx->saved_data["relu"].toBool();
    const double eps = ctx->saved_data["eps"].toDouble();
    const bool need_x = ctx->needs_input_grad(0), need_w = ctx->needs_input_grad(1),
               need_b = ctx->needs_input_grad(2);
    const Tensor none;
    const std::optional<Tensor> w_opt =
        weight.numel() ? std::optional<Tensor>(weight) : std::nullopt;
    Tensor dy = grads[0];
    if (at::GradMode::is_enabled()) {
      // create_graph=True: a differentiable backward, as torch.nn.BatchNorm gives
      if (relu) {  // relu(batch norm) again, differentiated with a graph
        const std::optional<Tensor> b_opt =
            bias.numel() ? std::optional<Tensor>(bias) : std::nullopt;
        Tensor y = at::relu(at::batch_norm(x, w_opt, b_opt, {}, {}, true, 0.0, eps, false));
        return differentiate(y, {x, weight, bias}, {need_x, need_w, need_b}, dy, 3);
      }
      auto g = at::native_batch_norm_backward(dy, x, w_opt, {}, {}, stats[0], stats[1], true,
                                              eps, {need_x, need_w, need_b});
      return {need_x ? std::get<0>(g) : none, need_w ? std::get<1>(g) : none,
              need_b ? std::get<2>(g) : none, none, none, none};
    }
    const bool rows = bn_rows(x);
    dy = like_x(dy, x, channels_last(x));  // (tokens: contiguous, as x)
    const int64_t c = x.size(1), values = x.numel() / c;
    const int threads = at::get_num_threads();
    const auto f32 = x.options().dtype(at::kFloat);  // the parameters' (float32)
    Tensor dx = need_x ? at::empty_like(x) : none;
    Tensor dw = need_w ? at::empty({c}, f32) : none;
    Tensor db = need_b ? at::empty({c}, f32) : none;
    const float *s = stats.data_ptr<float>();
    if (x.scalar_type() == at::kBFloat16) {
      uint16_t *dx_ptr = need_x ? bf16_ptr(dx) : nullptr;
      if (rows) {
        const int64_t max_blocks = ctx->saved_data["max_blocks"].toInt();
        double *work = bn_cl_work(2 * max_blocks * c);
        if (relu)
          nz_bn_relu_backward_cl_bf16(bf16_ptr(dy), bf16_ptr(x), in_ptr(weight), in_ptr(bias), s,
                                      s + c, dx_ptr, out_ptr(dw), out_ptr(db), work, max_blocks,
                                      values, c, threads);
        else
          nz_bn_backward_cl_bf16(bf16_ptr(dy), bf16_ptr(x), in_ptr(weight), s, s + c, dx_ptr,
                                 out_ptr(dw), out_ptr(db), work, max_blocks, values, c, threads);
      } else if (relu) {
        nz_bn_relu_backward_bf16(bf16_ptr(dy), bf16_ptr(x), in_ptr(weight), in_ptr(bias), s,
                                 s + c, dx_ptr, out_ptr(dw), out_ptr(db), x.size(0), c,
                                 values / x.size(0), threads);
      } else {
        nz_bn_backward_bf16(bf16_ptr(dy), bf16_ptr(x), in_ptr(weight), s, s + c, dx_ptr,
                            out_ptr(dw), out_ptr(db), x.size(0), c, values / x.size(0), threads);
      }
    } else if (rows) {
      const int64_t max_blocks = ctx->saved_data["max_blocks"].toInt();
      double *work = bn_cl_work(2 * max_blocks * c);
      if (relu)
        nz_bn_relu_backward_cl(dy.data_ptr<float>(), x.data_ptr<float>(), in_ptr(weight),
                               in_ptr(bias), s, s + c, out_ptr(dx), out_ptr(dw), out_ptr(db),
                               work, max_blocks, values, c, threads);
      else
        nz_bn_backward_cl(dy.data_ptr<float>(), x.data_ptr<float>(), in_ptr(weight), s, s + c,
                          out_ptr(dx), out_ptr(dw), out_ptr(db), work, max_blocks, values, c,
                          threads);
    } else if (relu) {
      nz_bn_relu_backward(dy.data_ptr<float>(), x.data_ptr<float>(), in_ptr(weight),
                          in_ptr(bias), s, s + c, out_ptr(dx), out_ptr(dw), out_ptr(db),
                          x.size(0), c, values / x.size(0), threads);
    } else {
      nz_bn_backward(dy.data_ptr<float>(), x.data_ptr<float>(), in_ptr(weight), s, s + c,
                     out_ptr(dx), out_ptr(dw), out_ptr(db), x.size(0), c, values / x.size(0),
                     threads);
    }
    return {dx, dw, db, none, none, none};
  }
};

// Batch Renorm in training (Ioffe, "Batch Renormalization", NeurIPS 2017):
//   y = weight_c (r_c xhat + d_c) + bias_c,  r = clip(sigma_B / sigma, 1/r_max, r_max),
//   d = clip((mean_B - mean) / sigma, -d_max, d_max),  sigma = sqrt(running_var + eps),
// r and d constants to backprop: BatchNorm with the weight w r and the bias w d + b
// (nz_renorm_forward computes them per channel from its moments), BatchNorm's backward with
// the weight w r, dweight = r dw' + d db'. As normzoo/norms/batch_renorm.py's
// _BatchRenormTrain on the native kernels. Returns (y, stats, out): stats (2, C) the batch
// mean and inverse std, out (5, C) r, d, w r, w d + b and the unbiased batch variance, neither
// differentiable; saves x, stats, out.
Tensor float32(const Tensor &x);
Tensor biased_var(const Tensor &x, at::IntArrayRef dims);
Tensor affine(Tensor y, const Tensor &weight, const Tensor &bias, at::IntArrayRef pc);

// Batch Renorm's training output in ATen ops with r and d constants, for double backward:
// the batch statistics of x differentiable, as the first backward treats them.
Tensor renorm_reference(const Tensor &x, const Tensor &weight, const Tensor &bias,
                        const Tensor &r, const Tensor &d, double eps) {
  const auto pc = per_channel(x);
  std::vector<int64_t> dims{0};
  for (int64_t i = 2; i < x.dim(); ++i) dims.push_back(i);
  const Tensor xhat = (x - x.mean(dims, /*keepdim=*/true)) * (biased_var(x, dims) + eps).rsqrt();
  return affine(xhat * r.view(pc) + d.view(pc), weight, bias, pc);
}

struct BatchRenormFunction : public torch::autograd::Function<BatchRenormFunction> {
  static variable_list forward(AutogradContext *ctx, const Tensor &x, const Tensor &weight,
                               const Tensor &bias, const Tensor &running_mean,
                               const Tensor &running_var, double r_max, double d_max,
                               double eps, int64_t max_blocks) {
    const int64_t c = x.size(1), values = x.numel() / c;
    const int threads = at::get_num_threads();
    const auto f32 = x.options().dtype(at::kFloat);
    Tensor y = at::empty_like(x);  // keeps a channels_last layout
    Tensor stats = at::empty({2, c}, f32);
    Tensor out = at::empty({5, c}, f32);
    float *s = stats.data_ptr<float>();
    const float *rm = running_mean.data_ptr<float>(), *rv = running_var.data_ptr<float>();
    if (channels_last(x)) {
      double *work = bn_cl_work(2 * max_blocks * c);
      by_dtype(x, nz_renorm_forward_cl, nz_renorm_forward_cl_bf16, [&](auto kernel, auto ptr) {
        kernel(ptr(x), in_ptr(weight), in_ptr(bias), rm, rv, r_max, d_max, ptr(y), s, s + c,
               out.data_ptr<float>(), work, max_blocks, values, c, eps, threads);
      });
    } else {
      by_dtype(x, nz_renorm_forward, nz_renorm_forward_bf16, [&](auto kernel, auto ptr) {
        kernel(ptr(x), in_ptr(weight), in_ptr(bias), rm, rv, r_max, d_max, ptr(y), s, s + c,
               out.data_ptr<float>(), x.size(0), c, values / x.size(0), eps, threads);
      });
    }
    ctx->save_for_backward({x, stats, out, weight, bias});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["max_blocks"] = max_blocks;
    ctx->mark_non_differentiable({stats, out});
    ctx->set_materialize_grads(false);
    return {y, stats, out};
  }

  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    variable_list result(9);
    if (!grads[0].defined()) return result;
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &stats = saved[1], &out = saved[2];
    const Tensor &weight = saved[3], &bias = saved[4];
    const bool need_x = ctx->needs_input_grad(0), need_w = ctx->needs_input_grad(1),
               need_b = ctx->needs_input_grad(2);
    const Tensor wr = out[2], r = out[0], d = out[1];
    Tensor dx, dw, db;
    if (at::GradMode::is_enabled()) {  // create_graph=True: the math differentiated again
      const Tensor y = renorm_reference(float32(x), weight, bias, r, d,
                                        ctx->saved_data["eps"].toDouble());
      auto g = differentiate(y, {x, weight, bias}, {need_x, need_w, need_b}, grads[0], 6);
      return g;
    } else {
      const bool cl = channels_last(x);
      const Tensor dy = like_x(grads[0], x, cl);
      const int64_t c = x.size(1), values = x.numel() / c;
      const int threads = at::get_num_threads();
      const auto f32 = x.options().dtype(at::kFloat);
      dx = need_x ? at::empty_like(x) : Tensor();
      dw = need_w ? at::empty({c}, f32) : Tensor();
      db = need_b || need_w ? at::empty({c}, f32) : Tensor();
      const float *s = stats.data_ptr<float>(), *w = wr.data_ptr<float>();
      if (cl) {
        const int64_t max_blocks = ctx->saved_data["max_blocks"].toInt();
        double *work = bn_cl_work(2 * max_blocks * c);
        by_dtype(x, nz_bn_backward_cl, nz_bn_backward_cl_bf16, [&](auto kernel, auto ptr) {
          kernel(ptr(dy), ptr(x), w, s, s + c, ptr(dx), out_ptr(dw), out_ptr(db), work,
                 max_blocks, values, c, threads);
        });
      } else {
        by_dtype(x, nz_bn_backward, nz_bn_backward_bf16, [&](auto kernel, auto ptr) {
          kernel(ptr(dy), ptr(x), w, s, s + c, ptr(dx), out_ptr(dw), out_ptr(db), x.size(0), c,
                 values / x.size(0), threads);
        });
      }
    }
    result[0] = need_x ? dx : Tensor();
    if (need_w) result[1] = r * dw + d * db;  // the weight's, through w r and w d + b
    result[2] = need_b ? db : Tensor();
    return result;
  }
};

// -- Ghost batch norm in training (batch_norm.c) ---------------------------------------------
// Hoffer, Hubara and Soudry, "Train longer, generalize better", NeurIPS 2017: BatchNorm's
// formulas on each virtual batch of B samples (the last one smaller where N is not a
// multiple). The kernels (`kernels`): GHOST_BLOCKS, contiguous (N, C, L) x on BatchNorm's
// blocks, every virtual batch in one call; GHOST_ROWS, x seen as its (R, C) rows (tokens, or
// channels_last input), B P rows a virtual batch (P positions per sample), one call;
// GHOST_CL_PER_BATCH, channels_last x on BatchNorm's channels_last kernels, a call per virtual
// batch (too few of them to give every thread a task of the rows kernel). As
// normzoo/norms/ghost_batch.py's _NativeGhostBatchNorm, on the same kernels.
enum GhostKernels : int64_t { GHOST_BLOCKS = 0, GHOST_ROWS = 1, GHOST_CL_PER_BATCH = 2 };

// Spatial positions per sample and channel (1 for tokens).
int64_t positions(const Tensor &x) { return x.numel() / (x.size(0) * x.size(1)); }

struct GhostBatchNormFunction : public torch::autograd::Function<GhostBatchNormFunction> {
  // Returns (y, stats, var): stats (V, 2, C) each virtual batch's mean and inverse std, var
  // (V, C) their biased variances; neither is differentiable. Saves x, weight and stats.
  static variable_list forward(AutogradContext *ctx, const Tensor &x, const Tensor &weight,
                               const Tensor &bias, double eps, int64_t vbs, int64_t kernels,
                               int64_t max_blocks) {
    const int64_t n = x.size(0), c = x.size(1), batches = (n + vbs - 1) / vbs, p = positions(x);
    const int threads = at::get_num_threads();
    const auto f32 = x.options().dtype(at::kFloat);
    Tensor y = at::empty_like(x);  // keeps a channels_last layout
    Tensor stats = at::empty({batches, 2, c}, f32);
    Tensor var = at::empty({batches, c}, f32);
    float *s = stats.data_ptr<float>(), *v = var.data_ptr<float>();
    if (kernels == GHOST_ROWS) {
      by_dtype(x, nz_ghost_forward_rows, nz_ghost_forward_rows_bf16, [&](auto kernel, auto ptr) {
        kernel(ptr(x), in_ptr(weight), in_ptr(bias), ptr(y), s, v, n * p, c, vbs * p, eps,
               threads);
      });
    } else if (kernels == GHOST_CL_PER_BATCH) {
      double *work = bn_cl_work(2 * max_blocks * c);
      for (int64_t j = 0; j < batches; ++j) {  // virtual batch j: rows [j B P, ...) of x's
        const int64_t off = j * vbs * p * c, rows = std::min(vbs, n - j * vbs) * p;
        by_dtype(x, nz_bn_forward_cl, nz_bn_forward_cl_bf16, [&](auto kernel, auto ptr) {
          kernel(ptr(x) + off, in_ptr(weight), in_ptr(bias), ptr(y) + off, s + j * 2 * c,
                 s + (j * 2 + 1) * c, v + j * c, work, max_blocks, rows, c, eps, threads);
        });
      }
    } else {
      by_dtype(x, nz_ghost_forward, nz_ghost_forward_bf16, [&](auto kernel, auto ptr) {
        kernel(ptr(x), in_ptr(weight), in_ptr(bias), ptr(y), s, v, n, c, p, vbs, eps, threads);
      });
    }
    ctx->save_for_backward({x, weight, stats});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["vbs"] = vbs;
    ctx->saved_data["kernels"] = kernels;
    ctx->saved_data["max_blocks"] = max_blocks;
    ctx->mark_non_differentiable({stats, var});
    ctx->set_materialize_grads(false);
    return {y, stats, var};
  }

  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    variable_list result(7);
    if (!grads[0].defined()) return result;
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &weight = saved[1], &stats = saved[2];
    const int64_t vbs = ctx->saved_data["vbs"].toInt();
    const bool need_x = ctx->needs_input_grad(0), need_w = ctx->needs_input_grad(1),
               need_b = ctx->needs_input_grad(2);
    const int64_t n = x.size(0), c = x.size(1), batches = stats.size(0);
    if (at::GradMode::is_enabled()) {
      // create_graph=True: torch's differentiable BN backward per virtual batch; the
      // parameters' gradients added over the virtual batches in order
      const std::optional<Tensor> w_opt =
          weight.numel() ? std::optional<Tensor>(weight) : std::nullopt;
      const double eps = ctx->saved_data["eps"].toDouble();
      std::vector<Tensor> dxs;
      Tensor dw, db;
      for (int64_t j = 0; j < batches; ++j) {
        const int64_t start = j * vbs, len = std::min(vbs, n - start);
        auto part = at::native_batch_norm_backward(
            grads[0].narrow(0, start, len), x.narrow(0, start, len), w_opt, std::nullopt,
            std::nullopt, stats[j][0], stats[j][1], true, eps, {need_x, need_w, need_b});
        if (need_x) dxs.push_back(std::get<0>(part));
        if (need_w) dw = j ? dw + std::get<1>(part) : std::get<1>(part);
        if (need_b) db = j ? db + std::get<2>(part) : std::get<2>(part);
      }
      if (need_x) result[0] = dxs.size() == 1 ? dxs[0] : at::cat(dxs);
      result[1] = dw;
      result[2] = db;
      return result;
    }
    const int64_t kernels = ctx->saved_data["kernels"].toInt(), p = positions(x);
    const Tensor dy = like_x(grads[0], x, channels_last(x));
    const int threads = at::get_num_threads();
    const auto f32 = x.options().dtype(at::kFloat);
    Tensor dx = need_x ? at::empty_like(x) : Tensor();
    Tensor dw = need_w ? at::empty({c}, f32) : Tensor();
    Tensor db = need_b ? at::empty({c}, f32) : Tensor();
    Tensor part = at::empty({batches, 2, c}, f32);
    const float *s = stats.data_ptr<float>();
    if (kernels == GHOST_ROWS) {
      by_dtype(x, nz_ghost_backward_rows, nz_ghost_backward_rows_bf16, [&](auto kernel, auto ptr) {
        kernel(ptr(dy), ptr(x), in_ptr(weight), s, ptr(dx), out_ptr(dw), out_ptr(db),
               part.data_ptr<float>(), n * p, c, vbs * p, threads);
      });
    } else if (kernels == GHOST_CL_PER_BATCH) {
      const int64_t max_blocks = ctx->saved_data["max_blocks"].toInt();
      double *work = bn_cl_work(2 * max_blocks * c);
      float *pt = part.data_ptr<float>();  // virtual batch j's dweight and dbias
      for (int64_t j = 0; j < batches; ++j) {
        const int64_t off = j * vbs * p * c, rows = std::min(vbs, n - j * vbs) * p;
        by_dtype(x, nz_bn_backward_cl, nz_bn_backward_cl_bf16, [&](auto kernel, auto ptr) {
          kernel(ptr(dy) + off, ptr(x) + off, in_ptr(weight), s + j * 2 * c, s + (j * 2 + 1) * c,
                 need_x ? ptr(dx) + off : nullptr, pt + j * 2 * c, pt + (j * 2 + 1) * c, work,
                 max_blocks, rows, c, threads);
        });
      }
      // the parameters' gradients: the virtual batches' added in order, in float32
      for (int64_t i = 0; i < 2; ++i) {
        float *out = out_ptr(i ? db : dw);
        if (!out) continue;
        for (int64_t k = 0; k < c; ++k) out[k] = pt[i * c + k];
        for (int64_t j = 1; j < batches; ++j)
          for (int64_t k = 0; k < c; ++k) out[k] += pt[(j * 2 + i) * c + k];
      }
    } else {
      by_dtype(x, nz_ghost_backward, nz_ghost_backward_bf16, [&](auto kernel, auto ptr) {
        kernel(ptr(dy), ptr(x), in_ptr(weight), s, ptr(dx), out_ptr(dw), out_ptr(db),
               part.data_ptr<float>(), n, c, p, vbs, threads);
      });
    }
    result[0] = dx;
    result[1] = dw;
    result[2] = db;
    return result;
  }
};

// The running statistics after one BatchNorm update per virtual batch, in order, folded into
// one step: r <- (1 - f_j) r + f_j b_j for j = 0 .. V-1 is r <- keep r + sum_j c_j b_j with
// keep = prod_j (1 - f_j), c_j = f_j prod_{k > j} (1 - f_k); f_j the momentum, or 1 / (tracked
// + j + 1) for the cumulative average (momentum None). The variances are made unbiased over
// each virtual batch's count first. As GhostBatchNorm._blend_virtual_batches (float32
// buffers: r keep in float, the sums in double, added as float).
void ghost_blend(const Tensor &running_mean, const Tensor &running_var, const Tensor &stats,
                 const Tensor &var, int64_t n, int64_t vbs, int64_t p,
                 std::optional<double> momentum, int64_t tracked) {
  const int64_t batches = stats.size(0), c = stats.size(2);
  std::vector<double> coef(batches), unbias(batches);
  double keep = 1.0;
  for (int64_t j = batches - 1; j >= 0; --j) {
    const double f = momentum.has_value() ? *momentum : 1.0 / static_cast<double>(tracked + j + 1);
    coef[j] = f * keep;
    keep *= 1.0 - f;
    const int64_t count = std::min(vbs, n - j * vbs) * p;
    unbias[j] = coef[j] * static_cast<double>(count) / static_cast<double>(std::max<int64_t>(count - 1, 1));
  }
  const float *s = stats.data_ptr<float>(), *v = var.data_ptr<float>();
  float *rm = running_mean.data_ptr<float>(), *rv = running_var.data_ptr<float>();
  const float k = static_cast<float>(keep);
  at::parallel_for(0, c, 1024, [&](int64_t c0, int64_t c1) {
    std::vector<double> am(c1 - c0, 0.0), av(c1 - c0, 0.0);
    for (int64_t j = 0; j < batches; ++j) {
      const float *mj = s + j * 2 * c, *vj = v + j * c;
      for (int64_t i = c0; i < c1; ++i) {
        am[i - c0] += coef[j] * static_cast<double>(mj[i]);
        av[i - c0] += unbias[j] * static_cast<double>(vj[i]);
      }
    }
    for (int64_t i = c0; i < c1; ++i) {
      rm[i] = rm[i] * k + static_cast<float>(am[i - c0]);
      rv[i] = rv[i] * k + static_cast<float>(av[i - c0]);
    }
  });
  // written in place through their memory: bump their versions as an in-place op would
  running_mean.unsafeGetTensorImpl()->bump_version();
  running_var.unsafeGetTensorImpl()->bump_version();
}

// -- the wider zoo (zoo.c): one kernel call per forward and per backward ---------------------

// x as the zoo's reference math differentiates it: float32 (a bfloat16 x widened, as the
// kernels widen it; the cast is part of the graph).
Tensor float32(const Tensor &x) {
  return x.scalar_type() == at::kBFloat16 ? x.to(at::kFloat) : x;
}

// The gradients of a create_graph=True backward: `y` (the layer's math in ATen ops, built
// from the saved inputs) differentiated with a graph, for the `leaves` that `need` one; then
// `extra` undefined gradients (the non-tensor arguments).
variable_list differentiate(const Tensor &y_ref, const std::vector<Tensor> &leaves,
                            const std::vector<bool> &need, const Tensor &dy, size_t extra) {
  // bfloat16 x: the reference math in float32 (float32(x)); the layer's output (and so dy)
  // is bfloat16
  const Tensor y = y_ref.scalar_type() == dy.scalar_type() ? y_ref : y_ref.to(dy.scalar_type());
  variable_list inputs;
  for (size_t i = 0; i < leaves.size(); ++i)
    if (need[i]) inputs.push_back(leaves[i]);
  variable_list out(leaves.size() + extra);
  if (inputs.empty()) return out;
  const variable_list g = torch::autograd::grad({y}, inputs, {dy}, /*retain_graph=*/true,
                                                /*create_graph=*/true);
  size_t j = 0;
  for (size_t i = 0; i < leaves.size(); ++i)
    if (need[i]) out[i] = g[j++];
  return out;
}

// Biased variance over `dims` (keepdim), in two passes as normzoo.functional computes it.
Tensor biased_var(const Tensor &x, at::IntArrayRef dims) {
  const Tensor centered = x - x.mean(dims, /*keepdim=*/true);
  return (centered * centered).mean(dims, /*keepdim=*/true);
}

// The gradients a zoo backward writes: dx (like x), then one vector per size (the
// parameters'), each undefined where `need` (x first) wants none.
variable_list zoo_grads(const Tensor &x, const std::vector<bool> &need,
                        std::initializer_list<int64_t> sizes) {
  variable_list out{need[0] ? at::empty_like(x) : Tensor()};
  size_t i = 1;
  for (const int64_t size : sizes)  // float32, as the parameters (also for bfloat16 x)
    out.push_back(need[i++] ? at::empty({size}, x.options().dtype(at::kFloat)) : Tensor());
  return out;
}


Tensor affine(Tensor y, const Tensor &weight, const Tensor &bias, at::IntArrayRef pc) {
  if (weight.numel()) y = y * weight.view(pc);
  if (bias.numel()) y = y + bias.view(pc);
  return y;
}

// EvoNorm-S0 (Liu, Brock, Simonyan and Le, "Evolving Normalization-Activation Layers",
// NeurIPS 2020):
//   y = x sigmoid(v_c x) / sqrt(var_{n,g} + eps) * weight_c + bias_c
// with var_{n,g} the biased variance of a sample's group of C / G channels over them and
// their positions. In ATen ops, for double backward.
Tensor s0_reference(const Tensor &x, const Tensor &v, const Tensor &weight, const Tensor &bias,
                    int64_t groups, double eps) {
  const auto pc = per_channel(x);
  const Tensor rstd = (biased_var(x.reshape({x.size(0), groups, -1}), {2}) + eps).rsqrt();
  const Tensor num = x * at::sigmoid(v.view(pc) * x);
  return affine((num.reshape({x.size(0), groups, -1}) * rstd).view(x.sizes()), weight, bias,
                pc);
}

void check_frozen(int status) {
  TORCH_CHECK(status == 0, "normzoo::frozen_batch_norm: out of memory for its coefficients");
}

struct FrozenBatchNormFunction : public torch::autograd::Function<FrozenBatchNormFunction> {
  // y = a x + b per channel (relu: max(a x + b, 0)); the statistics and the affine are
  // constants. Saves y with the ReLU (its mask; the next layer saves y anyway), running_var
  // and weight (for a).
  static Tensor forward(AutogradContext *ctx, const Tensor &x, const Tensor &mean,
                        const Tensor &var, const Tensor &weight, const Tensor &bias, double eps,
                        bool relu) {
    const int64_t n = x.size(0), c = x.size(1), length = x.numel() / (n * c);
    Tensor y = at::empty_like(x);  // keeps a channels_last layout
    check_frozen(nz_frozen_forward(x.data_ptr<float>(), mean.data_ptr<float>(),
                                   var.data_ptr<float>(), in_ptr(weight), in_ptr(bias), eps,
                                   y.data_ptr<float>(), n, c, length, channels_last(x), relu,
                                   at::get_num_threads()));
    ctx->save_for_backward({relu ? y : at::empty({0}, x.options()), var, weight});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["relu"] = relu;
    return y;
  }

  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &y = saved[0], &var = saved[1], &weight = saved[2];
    const double eps = ctx->saved_data["eps"].toDouble();
    const bool relu = ctx->saved_data["relu"].toBool();
    variable_list out(7);
    if (!ctx->needs_input_grad(0) || !grads[0].defined()) return out;
    if (at::GradMode::is_enabled()) {  // create_graph=True: differentiable torch ops
      Tensor a = at::rsqrt(var + eps);
      if (weight.numel()) a = a * weight;
      a = a.view(per_channel(grads[0]));
      out[0] = (relu ? at::where(y <= 0, at::zeros({}, y.options()), grads[0]) : grads[0]) * a;
      return out;
    }
    const Tensor &ref = relu ? y : grads[0];
    const bool cl = channels_last(ref);
    const Tensor dy = like_x(grads[0], ref, cl);
    const int64_t n = dy.size(0), c = dy.size(1), length = dy.numel() / (n * c);
    Tensor dx = at::empty_like(dy);
    check_frozen(nz_frozen_backward(dy.data_ptr<float>(), relu ? y.data_ptr<float>() : nullptr,
                                    var.data_ptr<float>(), in_ptr(weight), eps,
                                    dx.data_ptr<float>(), n, c, length, cl, relu,
                                    at::get_num_threads()));
    out[0] = dx;
    return out;
  }
};

struct EvoNormS0Function : public torch::autograd::Function<EvoNormS0Function> {
  // Saves x, the parameters, the per-channel row statistics (3, N, C: the mean, the variance
  // and the mean's rounding remainder) and the per-row parameters of the map (N, C, 3).
  static Tensor forward(AutogradContext *ctx, const Tensor &x, const Tensor &v,
                        const Tensor &weight, const Tensor &bias, int64_t groups, double eps) {
    const int64_t n = x.size(0), c = x.size(1), length = x.numel() / (n * c);
    const auto f32 = x.options().dtype(at::kFloat);
    Tensor y = at::empty_like(x);  // keeps a channels_last layout
    Tensor stats = at::empty({3, n, c}, f32);
    Tensor params = at::empty({n, c, 3}, f32);
    float *s = stats.data_ptr<float>();
    by_dtype(x, nz_s0_forward, nz_s0_forward_bf16, [&](auto kernel, auto ptr) {
      kernel(ptr(x), v.data_ptr<float>(), in_ptr(weight), in_ptr(bias), groups, eps, ptr(y), s,
             s + n * c, s + 2 * n * c, params.data_ptr<float>(), n, c, length, channels_last(x),
             at::get_num_threads());
    });
    ctx->save_for_backward({x, v, weight, bias, stats, params});
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["eps"] = eps;
    return y;
  }

  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &v = saved[1], &weight = saved[2], &bias = saved[3];
    const Tensor &stats = saved[4], &params = saved[5];
    const int64_t groups = ctx->saved_data["groups"].toInt();
    const double eps = ctx->saved_data["eps"].toDouble();
    // needs_input_grad counts the tensor arguments only: x, v, weight, bias.
    const std::vector<bool> need{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                 ctx->needs_input_grad(2) && weight.numel() > 0,
                                 ctx->needs_input_grad(3) && bias.numel() > 0};
    if (at::GradMode::is_enabled()) {
      const Tensor y = s0_reference(float32(x), v, weight, bias, groups, eps);
      return differentiate(y, {x, v, weight, bias}, need, grads[0], 2);
    }
    const bool cl = channels_last(x);
    const Tensor dy = like_x(grads[0], x, cl);
    const int64_t n = x.size(0), c = x.size(1), length = x.numel() / (n * c);
    variable_list g = zoo_grads(x, need, {c, c, c});  // dx, dv, dweight, dbias
    const auto f32 = x.options().dtype(at::kFloat);
    Tensor sums = at::empty({n, c, 3}, f32);
    Tensor k = at::empty({2, n, c}, f32);
    const float *s = stats.data_ptr<float>();
    by_dtype(x, nz_s0_backward, nz_s0_backward_bf16, [&](auto kernel, auto ptr) {
      kernel(ptr(dy), ptr(x), params.data_ptr<float>(), s, s + n * c, s + 2 * n * c,
             in_ptr(weight), groups, eps, sums.data_ptr<float>(), k.data_ptr<float>(), ptr(g[0]),
             out_ptr(g[1]), out_ptr(g[2]), out_ptr(g[3]), n, c, length, cl,
             at::get_num_threads());
    });
    g.resize(6);  // groups, eps
    return g;
  }
};

// EvoNorm-B0 (same paper):
//   y = x / max(sqrt(var_b + eps), v_c x + sqrt(var_i + eps)) * weight_c + bias_c
// var_b the biased batch variance of a channel over the samples and positions (or the running
// variance), var_i the instance variance of one sample's channel over its positions. In ATen
// ops, for double backward; running_var is empty in batch mode.
Tensor b0_reference(const Tensor &x, const Tensor &v, const Tensor &weight, const Tensor &bias,
                    const Tensor &running_var, double eps) {
  const auto pc = per_channel(x);
  std::vector<int64_t> batch_dims{0}, instance_dims;
  for (int64_t d = 2; d < x.dim(); ++d) batch_dims.push_back(d), instance_dims.push_back(d);
  const Tensor var_b = running_var.numel() ? running_var.view(pc) : biased_var(x, batch_dims);
  const Tensor var_i = biased_var(x, instance_dims);
  const Tensor y = x / at::maximum((var_b + eps).sqrt(), v.view(pc) * x + (var_i + eps).sqrt());
  return affine(y, weight, bias, pc);
}

struct EvoNormB0Function : public torch::autograd::Function<EvoNormB0Function> {
  // Returns (y, var_b): var_b (C) the biased batch variance in batch mode (running_var
  // empty), else empty; not differentiable.
  static variable_list forward(AutogradContext *ctx, const Tensor &x, const Tensor &v,
                               const Tensor &weight, const Tensor &bias,
                               const Tensor &running_var, double eps) {
    const int64_t n = x.size(0), c = x.size(1), length = x.numel() / (n * c);
    const bool batch = running_var.numel() == 0;
    const auto f32 = x.options().dtype(at::kFloat);
    Tensor y = at::empty_like(x);
    Tensor stats = at::empty({3, n, c}, f32);  // mean, variance, mean's remainder
    Tensor var_b = at::empty({batch ? c : 0}, f32);
    Tensor params = at::empty({n, c, 5}, f32);
    float *s = stats.data_ptr<float>();
    by_dtype(x, nz_b0_forward, nz_b0_forward_bf16, [&](auto kernel, auto ptr) {
      kernel(ptr(x), v.data_ptr<float>(), in_ptr(weight), in_ptr(bias), in_ptr(running_var), eps,
             ptr(y), s, s + n * c, s + 2 * n * c, out_ptr(var_b), params.data_ptr<float>(), n,
             c, length, channels_last(x), at::get_num_threads());
    });
    ctx->save_for_backward({x, v, weight, bias, running_var, stats, params});
    ctx->saved_data["eps"] = eps;
    ctx->mark_non_differentiable({var_b});
    ctx->set_materialize_grads(false);
    return {y, var_b};
  }

  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(6);  // y got no gradient
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &v = saved[1], &weight = saved[2], &bias = saved[3];
    const Tensor &running_var = saved[4], &stats = saved[5], &params = saved[6];
    // x, v, weight, bias; running_var (a statistic) gets none
    const std::vector<bool> need{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                 ctx->needs_input_grad(2) && weight.numel() > 0,
                                 ctx->needs_input_grad(3) && bias.numel() > 0};
    if (at::GradMode::is_enabled()) {
      const double eps = ctx->saved_data["eps"].toDouble();
      const Tensor y = b0_reference(float32(x), v, weight, bias, running_var, eps);
      return differentiate(y, {x, v, weight, bias}, need, grads[0], 2);
    }
    const bool cl = channels_last(x);
    const Tensor dy = like_x(grads[0], x, cl);
    const int64_t n = x.size(0), c = x.size(1), length = x.numel() / (n * c);
    variable_list g = zoo_grads(x, need, {c, c, c});  // dx, dv, dweight, dbias
    const auto f32 = x.options().dtype(at::kFloat);
    Tensor sums = at::empty({n, c, 5}, f32);
    Tensor k = at::empty({2, n, c}, f32);
    const float *s = stats.data_ptr<float>();
    by_dtype(x, nz_b0_backward, nz_b0_backward_bf16, [&](auto kernel, auto ptr) {
      kernel(ptr(dy), ptr(x), params.data_ptr<float>(), s, s + 2 * n * c,
             running_var.numel() == 0, sums.data_ptr<float>(), k.data_ptr<float>(), ptr(g[0]),
             out_ptr(g[1]), out_ptr(g[2]), out_ptr(g[3]), n, c, length, cl,
             at::get_num_threads());
    });
    g.resize(6);  // running_var, eps
    return g;
  }
};

// SwitchableNorm (Luo, Ren, Peng, Zhang and Li, "Differentiable Learning-to-Normalize via
// Switchable Normalization", ICLR 2019):
//   y = (x - sum_k wm_k mean_k) / sqrt(sum_k wv_k var_k + eps) * weight_c + bias_c
// over k in IN, LN, BN, with wm = softmax(mean_weight), wv = softmax(var_weight); the LN and
// BN statistics from the IN ones (biased variances), BN's from the running statistics where
// given (eval). In ATen ops, for double backward; the running statistics are empty in batch
// mode.
Tensor switchable_reference(const Tensor &x, const Tensor &mean_weight, const Tensor &var_weight,
                            const Tensor &weight, const Tensor &bias, const Tensor &running_mean,
                            const Tensor &running_var, double eps) {
  const int64_t n = x.size(0), c = x.size(1);
  const Tensor flat = x.reshape({n, c, -1});
  const Tensor mean_in = flat.mean({2});
  const Tensor var_in = biased_var(flat, {2}).squeeze(2);
  // a set's variance from its parts': mean (var_i + (mean_i - mean)^2), which the paper's
  // mean (var_i + mean_i^2) - mean^2 equals without its cancellation far from zero
  const Tensor mean_ln = mean_in.mean({1}, /*keepdim=*/true);
  const Tensor var_ln = (var_in + (mean_in - mean_ln).square()).mean({1}, /*keepdim=*/true);
  Tensor mean_bn, var_bn;
  if (running_mean.numel()) {
    mean_bn = running_mean.view({1, c});
    var_bn = running_var.view({1, c});
  } else {
    mean_bn = mean_in.mean({0}, /*keepdim=*/true);
    var_bn = (var_in + (mean_in - mean_bn).square()).mean({0}, /*keepdim=*/true);
  }
  const Tensor wm = at::softmax(mean_weight, 0), wv = at::softmax(var_weight, 0);
  const Tensor mean = wm[0] * mean_in + wm[1] * mean_ln + wm[2] * mean_bn;
  const Tensor var = wv[0] * var_in + wv[1] * var_ln + wv[2] * var_bn;
  Tensor a = (var + eps).rsqrt();
  if (weight.numel()) a = a * weight.view({1, c});
  Tensor b = -mean * a;
  if (bias.numel()) b = b + bias.view({1, c});
  return (flat * a.unsqueeze(2) + b.unsqueeze(2)).reshape(x.sizes());
}

struct SwitchableFunction : public torch::autograd::Function<SwitchableFunction> {
  // Returns (y, stats_bn): stats_bn (2, C) BN's batch mean and biased variance in batch mode
  // (running statistics empty), else empty; not differentiable.
  static variable_list forward(AutogradContext *ctx, const Tensor &x, const Tensor &mean_weight,
                               const Tensor &var_weight, const Tensor &weight,
                               const Tensor &bias, const Tensor &running_mean,
                               const Tensor &running_var, double eps) {
    const int64_t n = x.size(0), c = x.size(1), length = x.numel() / (n * c);
    const bool batch = running_mean.numel() == 0;
    const auto f32 = x.options().dtype(at::kFloat);
    Tensor y = at::empty_like(x);
    Tensor stats = at::empty({2, n, c}, f32);
    Tensor stats_bn = at::empty({batch ? 2 : 0, c}, f32);
    Tensor params = at::empty({n, c, 2}, f32);
    Tensor scratch = at::empty({2 * (n + c)}, x.options().dtype(at::kDouble));
    float *s = stats.data_ptr<float>();
    by_dtype(x, nz_switchable_forward, nz_switchable_forward_bf16, [&](auto kernel, auto ptr) {
      kernel(ptr(x), mean_weight.data_ptr<float>(), var_weight.data_ptr<float>(), in_ptr(weight),
             in_ptr(bias), in_ptr(running_mean), in_ptr(running_var), eps, ptr(y), s, s + n * c,
             batch ? stats_bn.data_ptr<float>() : nullptr, params.data_ptr<float>(),
             scratch.data_ptr<double>(), n, c, length, channels_last(x), at::get_num_threads());
    });
    ctx->save_for_backward(
        {x, mean_weight, var_weight, weight, bias, running_mean, running_var, stats, params});
    ctx->saved_data["eps"] = eps;
    ctx->mark_non_differentiable({stats_bn});
    ctx->set_materialize_grads(false);
    return {y, stats_bn};
  }

  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    if (!grads[0].defined()) return variable_list(8);  // y got no gradient
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &mean_weight = saved[1], &var_weight = saved[2];
    const Tensor &weight = saved[3], &bias = saved[4], &running_mean = saved[5];
    const Tensor &running_var = saved[6], &stats = saved[7], &params = saved[8];
    const double eps = ctx->saved_data["eps"].toDouble();
    // x, mean_weight, var_weight, weight, bias; the running statistics get none
    const std::vector<bool> need{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                 ctx->needs_input_grad(2),
                                 ctx->needs_input_grad(3) && weight.numel() > 0,
                                 ctx->needs_input_grad(4) && bias.numel() > 0};
    if (at::GradMode::is_enabled()) {
      const Tensor y = switchable_reference(float32(x), mean_weight, var_weight, weight, bias,
                                            running_mean, running_var, eps);
      return differentiate(y, {x, mean_weight, var_weight, weight, bias}, need, grads[0], 3);
    }
    const bool cl = channels_last(x);
    const Tensor dy = like_x(grads[0], x, cl);
    const int64_t n = x.size(0), c = x.size(1), length = x.numel() / (n * c);
    variable_list g = zoo_grads(x, need, {3, 3, c, c});  // dx, dmean_w, dvar_w, dw, db
    const auto f32 = x.options().dtype(at::kFloat);
    Tensor sums = at::empty({n, c, 2}, f32);
    Tensor k = at::empty({2, n, c}, f32);
    Tensor scratch = at::empty({4 * n + 5 * c + 2 * n * c}, x.options().dtype(at::kDouble));
    const float *s = stats.data_ptr<float>();
    by_dtype(x, nz_switchable_backward, nz_switchable_backward_bf16, [&](auto kernel, auto ptr) {
      kernel(ptr(dy), ptr(x), params.data_ptr<float>(), s, s + n * c,
             mean_weight.data_ptr<float>(), var_weight.data_ptr<float>(), in_ptr(weight),
             in_ptr(running_mean), in_ptr(running_var), eps, sums.data_ptr<float>(),
             k.data_ptr<float>(), scratch.data_ptr<double>(), ptr(g[0]), out_ptr(g[1]),
             out_ptr(g[2]), out_ptr(g[3]), out_ptr(g[4]), n, c, length, cl,
             at::get_num_threads());
    });
    g.resize(8);  // running_mean, running_var, eps
    return g;
  }
};

// FRN + TLU (Singh and Krishnan, "Filter Response Normalization Layer", CVPR 2020):
//   z = max(weight_c x / sqrt(nu2_{n,c} + eps) + bias_c, tau_c),  nu2 the mean of x^2 over a
// sample's channel's positions. In ATen ops, for double backward (torch.maximum's ties).
Tensor frn_reference(const Tensor &x, const Tensor &weight, const Tensor &bias, const Tensor &tau,
                     double eps) {
  const auto pc = per_channel(x);
  std::vector<int64_t> dims;
  for (int64_t d = 2; d < x.dim(); ++d) dims.push_back(d);
  const Tensor nu2 = (x * x).mean(dims, /*keepdim=*/true);
  const Tensor y = x * (nu2 + eps).rsqrt() * weight.view(pc) + bias.view(pc);
  return at::maximum(y, tau.view(pc));
}

struct FRNFunction : public torch::autograd::Function<FRNFunction> {
  // Saves x, the parameters, the rows' statistics (2, N, C: mean, biased variance) and the
  // map's per-row parameters (N, C, 3).
  static Tensor forward(AutogradContext *ctx, const Tensor &x, const Tensor &weight,
                        const Tensor &bias, const Tensor &tau, double eps) {
    const int64_t n = x.size(0), c = x.size(1), length = x.numel() / (n * c);
    const auto f32 = x.options().dtype(at::kFloat);
    Tensor y = at::empty_like(x);  // keeps a channels_last layout
    Tensor stats = at::empty({2, n, c}, f32);
    Tensor params = at::empty({n, c, 3}, f32);
    float *s = stats.data_ptr<float>();
    by_dtype(x, nz_frn_forward, nz_frn_forward_bf16, [&](auto kernel, auto ptr) {
      kernel(ptr(x), weight.data_ptr<float>(), bias.data_ptr<float>(), tau.data_ptr<float>(), eps,
             ptr(y), s, s + n * c, params.data_ptr<float>(), n, c, length, channels_last(x),
             at::get_num_threads());
    });
    ctx->save_for_backward({x, weight, bias, tau, stats, params});
    ctx->saved_data["eps"] = eps;
    return y;
  }

  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &weight = saved[1], &bias = saved[2], &tau = saved[3];
    const Tensor &stats = saved[4], &params = saved[5];
    const double eps = ctx->saved_data["eps"].toDouble();
    const std::vector<bool> need{ctx->needs_input_grad(0), ctx->needs_input_grad(1),
                                 ctx->needs_input_grad(2), ctx->needs_input_grad(3)};
    if (at::GradMode::is_enabled()) {
      const Tensor y = frn_reference(float32(x), weight, bias, tau, eps);
      return differentiate(y, {x, weight, bias, tau}, need, grads[0], 1);
    }
    const bool cl = channels_last(x);
    const Tensor dy = like_x(grads[0], x, cl);
    const int64_t n = x.size(0), c = x.size(1), length = x.numel() / (n * c);
    variable_list g = zoo_grads(x, need, {c, c, c});  // dx, dweight, dbias, dtau
    const auto f32 = x.options().dtype(at::kFloat);
    Tensor sums = at::empty({n, c, 3}, f32);
    Tensor k = at::empty({2, n, c}, f32);
    const float *s = stats.data_ptr<float>();
    by_dtype(x, nz_frn_backward, nz_frn_backward_bf16, [&](auto kernel, auto ptr) {
      kernel(ptr(dy), ptr(x), params.data_ptr<float>(), s, s + n * c, weight.data_ptr<float>(),
             eps, sums.data_ptr<float>(), k.data_ptr<float>(), ptr(g[0]), out_ptr(g[1]),
             out_ptr(g[2]), out_ptr(g[3]), n, c, length, cl, at::get_num_threads());
    });
    g.resize(5);  // eps
    return g;
  }
};

// RMSNorm over a sample's channels and positions (Zhang and Sennrich, "Root Mean Square Layer
// Normalization", NeurIPS 2019): y = x / sqrt(mean_{c,l} x^2 + eps) weight_c + bias_c. In ATen
// ops, for double backward.
Tensor rms_reference(const Tensor &x, const Tensor &weight, const Tensor &bias, double eps) {
  std::vector<int64_t> dims;
  for (int64_t d = 1; d < x.dim(); ++d) dims.push_back(d);
  const Tensor ms = (x * x).mean(dims, /*keepdim=*/true);
  return affine(x * (ms + eps).rsqrt(), weight, bias, per_channel(x));
}

struct RMSNormFunction : public torch::autograd::Function<RMSNormFunction> {
  // Saves x, the parameters, the rows' statistics (2, N, C) and the map's parameters (N, C, 2).
  static Tensor forward(AutogradContext *ctx, const Tensor &x, const Tensor &weight,
                        const Tensor &bias, double eps) {
    const int64_t n = x.size(0), c = x.size(1), length = x.numel() / (n * c);
    const auto f32 = x.options().dtype(at::kFloat);
    Tensor y = at::empty_like(x);  // keeps a channels_last layout
    Tensor stats = at::empty({2, n, c}, f32);
    Tensor params = at::empty({n, c, 2}, f32);
    float *s = stats.data_ptr<float>();
    by_dtype(x, nz_rms_forward, nz_rms_forward_bf16, [&](auto kernel, auto ptr) {
      kernel(ptr(x), in_ptr(weight), in_ptr(bias), eps, ptr(y), s, s + n * c,
             params.data_ptr<float>(), n, c, length, channels_last(x), at::get_num_threads());
    });
    ctx->save_for_backward({x, weight, bias, stats, params});
    ctx->saved_data["eps"] = eps;
    return y;
  }

  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &weight = saved[1], &bias = saved[2];
    const Tensor &stats = saved[3], &params = saved[4];
    const double eps = ctx->saved_data["eps"].toDouble();
    const std::vector<bool> need{ctx->needs_input_grad(0),
                                 ctx->needs_input_grad(1) && weight.numel() > 0,
                                 ctx->needs_input_grad(2) && bias.numel() > 0};
    if (at::GradMode::is_enabled()) {
      const Tensor y = rms_reference(float32(x), weight, bias, eps);
      return differentiate(y, {x, weight, bias}, need, grads[0], 1);
    }
    const bool cl = channels_last(x);
    const Tensor dy = like_x(grads[0], x, cl);
    const int64_t n = x.size(0), c = x.size(1), length = x.numel() / (n * c);
    variable_list g = zoo_grads(x, need, {c, c});  // dx, dweight, dbias
    const auto f32 = x.options().dtype(at::kFloat);
    Tensor sums = at::empty({n, c, 2}, f32);
    Tensor k = at::empty({2, n, c}, f32);
    const float *s = stats.data_ptr<float>();
    by_dtype(x, nz_rms_backward, nz_rms_backward_bf16, [&](auto kernel, auto ptr) {
      kernel(ptr(dy), ptr(x), params.data_ptr<float>(), s, s + n * c, in_ptr(weight), eps,
             sums.data_ptr<float>(), k.data_ptr<float>(), ptr(g[0]), out_ptr(g[1]),
             out_ptr(g[2]), n, c, length, cl, at::get_num_threads());
    });
    g.resize(4);  // eps
    return g;
  }
};

// The operators' checks: the kernels read raw float32 CPU memory, so anything else is refused
// here, before any work (and before any running statistic changes).

// x for the kernels: float32 CPU (N, C, *), contiguous or channels_last as it is (other
// strides are copied into the contiguous layout).
Tensor kernel_input(const char *op, const Tensor &input, bool bf16 = false) {
  const auto dtype = input.scalar_type();
  TORCH_CHECK(input.device().is_cpu() && (dtype == at::kFloat || (bf16 && dtype == at::kBFloat16)),
              "normzoo::", op, ": expected a float32", bf16 ? " or bfloat16" : "",
              " CPU input, got ", dtype, " on ", input.device());
  TORCH_CHECK(input.dim() >= 2 && input.numel() > 0, "normzoo::", op,
              ": expected a non-empty (N, C, *) input, got shape ", input.sizes());
  return input.is_contiguous() || channels_last(input) ? input : input.contiguous();
}

void check_groups(const char *op, const Tensor &x, int64_t groups) {
  TORCH_CHECK(groups > 0 && x.size(1) % groups == 0, "normzoo::", op, ": groups (", groups,
              ") must divide the channels (", x.size(1), ")");
}

// Per-channel parameters and statistics (absent ones skipped): contiguous float32 CPU (C,);
// `what` names them in the error.
void check_per_channel(const char *op, const char *what, const Tensor &x,
                       std::initializer_list<const std::optional<Tensor> *> tensors) {
  for (const auto *t : tensors) {
    if (!t->has_value() || !(*t)->defined()) continue;
    const Tensor &p = **t;
    TORCH_CHECK(p.device().is_cpu() && p.scalar_type() == at::kFloat && p.dim() == 1 &&
                    p.size(0) == x.size(1) && p.is_contiguous(),
                "normzoo::", op, ": expected contiguous float32 CPU (", x.size(1),
                ",) parameters (", what, "), got ", p.scalar_type(), " ", p.sizes(), " on ",
                p.device());
  }
}

// running = lerp(running, batch, momentum) in place, as BatchNorm updates its statistics; a
// variance is made unbiased over `count` values first (count 0: a mean, taken as it is).
void blend_running(const Tensor &running, const Tensor &batch, double momentum, int64_t count) {
  at::NoGradGuard no_grad;
  const double unbias = count ? static_cast<double>(count) / std::max<int64_t>(count - 1, 1) : 0;
  running.lerp_(count ? batch * unbias : batch, momentum);
}

std::tuple<Tensor, Tensor, Tensor> group_norm(const Tensor &input, int64_t groups,
                                              const std::optional<Tensor> &weight,
                                              const std::optional<Tensor> &bias, double eps,
                                              bool want_var, bool relu) {
  const Tensor x = kernel_input("group_norm", input);
  check_groups("group_norm", x, groups);
  check_per_channel("group_norm", "weight and bias", x, {&weight, &bias});
  auto out = GroupNormFunction::apply(x, groups, or_empty(weight, x), or_empty(bias, x), eps,
                                      want_var, relu);
  return {out[0], out[1], out[2]};
}

// The LayerNorm and GroupNorm modules' one-call path (normzoo/norms/_rownorm.py,
// fast_group_norm): the module's output, where its checked forward would call group_norm
// above for this input, else an undefined tensor (None in Python: that forward runs, with
// its input checks, errors and torch's kernels). Served: a float32 CPU (N, C, *spatial) x
// with 3 to max_dim dims, C == channels, at least min_numel elements, contiguous or
// channels_last; float32 CPU parameters (the caller checks for torch.jit.trace: the tracer
// runs an operator's kernel with tracing off). relu: relu(y), fused;
// contiguous rows (Cg L values) longer than max_relu_row decline (the checked path runs the
// ReLU after the kernels there). The tests compare both paths bit for bit.
Tensor group_norm_module(const Tensor &x, int64_t groups, const std::optional<Tensor> &weight,
                         const std::optional<Tensor> &bias, double eps, bool relu,
                         int64_t channels, int64_t max_dim, int64_t min_numel,
                         int64_t max_relu_row) {
  const int64_t dim = x.dim();
  if (!x.device().is_cpu() || x.scalar_type() != at::kFloat || dim < 3 || dim > max_dim ||
      x.size(1) != channels || x.numel() < min_numel || x.numel() == 0)
    return Tensor();
  const bool cl = channels_last(x);
  if (!cl && !x.is_contiguous()) return Tensor();
  if (relu && !cl && x.numel() / (x.size(0) * groups) > max_relu_row) return Tensor();
  for (const auto *p : {&weight, &bias})
    if (p->has_value() && (*p)->defined() &&
        (!(*p)->device().is_cpu() || (*p)->scalar_type() != at::kFloat))
      return Tensor();
  return std::get<0>(group_norm(x, groups, weight, bias, eps, false, relu));
}

// The BatchNorm module's one-call path in training (normzoo/norms/batch.py,
// fast_batch_norm), as group_norm_module is GroupNorm's: the module's output where its
// checked forward would run the native training kernels for this input, else an undefined
// tensor (None) and nothing changed. Served (normzoo/norms/batch.py's dispatch): a float32 CPU
// (or bfloat16: the bfloat16 kernels, the parameters and running statistics float32 as under
// autocast) (N, C, *spatial) x with 3 to max_dim dims, C == channels, at least min_numel elements and more
// than one value per channel; contiguous with at least min_spatial positions, or
// channels_last with at least min_numel_cl elements or at most few_channels_cl channels; or
// contiguous (N, C) tokens of at most max_numel_tokens elements (the channels_last kernels);
// float32 CPU (C,) parameters and running statistics, running_var and num_batches_tracked
// given with running_mean. With running statistics (training with
// track_running_stats) it then counts the batch in num_batches_tracked and blends the batch
// mean and unbiased variance in with momentum (None: the cumulative average), as the module
// does. The tests compare both paths bit for bit.
Tensor batch_norm_module(const Tensor &x, const std::optional<Tensor> &weight,
                         const std::optional<Tensor> &bias,
                         const std::optional<Tensor> &running_mean,
                         const std::optional<Tensor> &running_var,
                         const std::optional<Tensor> &num_batches_tracked,
                         std::optional<double> momentum, double eps, bool relu, int64_t channels,
                         int64_t max_dim, int64_t min_numel, int64_t min_spatial,
                         int64_t min_numel_cl, int64_t few_channels_cl, int64_t max_blocks,
                         int64_t max_numel_tokens) {
  const int64_t dim = x.dim();
  const auto dtype = x.scalar_type();
  if (!x.device().is_cpu() || (dtype != at::kFloat && dtype != at::kBFloat16) || dim < 2 ||
      dim > max_dim || x.size(1) != channels || x.numel() < min_numel || x.numel() <= channels)
    return Tensor();
  if (dim == 2) {  // (N, C) tokens: the channels_last kernels on their rows
    if (!x.is_contiguous() || x.numel() > max_numel_tokens) return Tensor();
  } else if (x.is_contiguous()) {
    if (x.numel() / (x.size(0) * channels) < min_spatial) return Tensor();
  } else if (!channels_last(x) || (x.numel() < min_numel_cl && channels > few_channels_cl)) {
    return Tensor();
  }
  // per-channel tensors as the kernels and the blend read them (the module's always are): a
  // call that passes others is declined before anything runs or changes
  for (const auto *p : {&weight, &bias, &running_mean, &running_var})
    if (p->has_value() && (*p)->defined() &&
        (!(*p)->device().is_cpu() || (*p)->scalar_type() != at::kFloat || (*p)->dim() != 1 ||
         (*p)->size(0) != channels || !(*p)->is_contiguous()))
      return Tensor();
  const auto given = [](const std::optional<Tensor> &t) { return t.has_value() && t->defined(); };
  const bool update = given(running_mean);
  if (update && !(given(running_var) && given(num_batches_tracked) &&
                  num_batches_tracked->numel() == 1))
    return Tensor();
  auto out = BatchNormFunction::apply(x, or_empty(weight, x), or_empty(bias, x), eps, relu,
                                      max_blocks);
  if (update) {
    at::NoGradGuard no_grad;
    num_batches_tracked->add_(1);
    const double factor =
        momentum.has_value() ? *momentum : 1.0 / num_batches_tracked->item<double>();
    blend_running(*running_mean, out[1][0], factor, 0);
    blend_running(*running_var, out[2], factor, x.numel() / channels);
  }
  return out[0];
}

// Batch Renorm's training step on the native kernels (normzoo/norms/batch_renorm.py serves
// float32 or bfloat16 CPU input of BatchNorm's native sizes here, float32 parameters and
// running statistics): y, then the running statistics blended with the batch mean and unbiased
// variance (`factor`), after r and d read them, as the module's Python path does.
Tensor batch_renorm_train(const Tensor &input, const std::optional<Tensor> &weight,
                          const std::optional<Tensor> &bias, const Tensor &running_mean,
                          const Tensor &running_var, double r_max, double d_max, double eps,
                          double factor, int64_t max_blocks) {
  const Tensor x = kernel_input("batch_renorm_train", input, /*bf16=*/true);
  TORCH_CHECK(x.dim() >= 3, "normzoo::batch_renorm_train: expected (N, C, *spatial) input, got ",
              "shape ", x.sizes());
  const std::optional<Tensor> rm_opt = running_mean, rv_opt = running_var;
  check_per_channel("batch_renorm_train", "weight, bias and running statistics", x,
                    {&weight, &bias, &rm_opt, &rv_opt});
  auto res = BatchRenormFunction::apply(x, or_empty(weight, x), or_empty(bias, x), running_mean,
                                        running_var, r_max, d_max, eps, max_blocks);
  at::NoGradGuard no_grad;
  running_mean.lerp_(res[1][0], factor);
  running_var.lerp_(res[2][4], factor);
  return res[0];
}

// Ghost BN's training step on the native kernels (normzoo/norms/ghost_batch.py serves float32
// or bfloat16 CPU input with float32 parameters and buffers here): y, then the running
// statistics given blended with every virtual batch's (ghost_blend). kernels: GhostKernels;
// max_blocks: BatchNorm's channels_last partition (kernels.CL_MAX_BLOCKS). Every check before
// any work, so a refused call changes nothing.
Tensor ghost_batch_norm_train(const Tensor &input, const std::optional<Tensor> &weight,
                              const std::optional<Tensor> &bias,
                              const std::optional<Tensor> &running_mean,
                              const std::optional<Tensor> &running_var, int64_t vbs, double eps,
                              std::optional<double> momentum, int64_t tracked, int64_t kernels,
                              int64_t max_blocks) {
  const Tensor x = kernel_input("ghost_batch_norm_train", input, /*bf16=*/true);
  TORCH_CHECK(kernels >= GHOST_BLOCKS && kernels <= GHOST_CL_PER_BATCH,
              "normzoo::ghost_batch_norm_train: kernels must be 0 (contiguous blocks), 1 (rows) ",
              "or 2 (channels_last per virtual batch), got ", kernels);
  const bool ok = kernels == GHOST_BLOCKS ? x.is_contiguous()
                  : kernels == GHOST_ROWS ? x.dim() == 2 ? x.is_contiguous() : channels_last(x)
                                          : channels_last(x);
  TORCH_CHECK(ok, "normzoo::ghost_batch_norm_train: expected ",
              kernels == GHOST_BLOCKS ? "contiguous"
              : kernels == GHOST_ROWS ? "(N, C) contiguous or channels_last"
                                      : "channels_last",
              " input for kernels=", kernels, ", got shape ", x.sizes(), " with strides ",
              x.strides());
  TORCH_CHECK(kernels != GHOST_CL_PER_BATCH || max_blocks > 0,
              "normzoo::ghost_batch_norm_train: max_blocks must be positive, got ", max_blocks);
  check_per_channel("ghost_batch_norm_train", "weight, bias and running statistics", x,
                    {&weight, &bias, &running_mean, &running_var});
  const bool update = running_mean.has_value() && running_mean->defined();
  TORCH_CHECK(update == (running_var.has_value() && running_var->defined()),
              "normzoo::ghost_batch_norm_train: expected both running statistics or neither");
  const int64_t n = x.size(0), p = positions(x);
  TORCH_CHECK(vbs > 0, "normzoo::ghost_batch_norm_train: virtual_batch_size must be positive, ",
              "got ", vbs);
  TORCH_CHECK((n % vbs ? n % vbs : std::min(vbs, n)) * p > 1,
              "normzoo::ghost_batch_norm_train: every virtual batch needs more than 1 value per ",
              "channel; N=", n, " in virtual batches of ", vbs, " with ", p, " positions");
  TORCH_CHECK(momentum.has_value() || tracked >= 0,
              "normzoo::ghost_batch_norm_train: tracked must be >= 0, got ", tracked);
  auto out = GhostBatchNormFunction::apply(x, or_empty(weight, x), or_empty(bias, x), eps, vbs,
                                           kernels, max_blocks);
  if (update) ghost_blend(*running_mean, *running_var, out[1], out[2], n, vbs, p, momentum, tracked);
  return out[0];
}

Tensor frozen_batch_norm(const Tensor &input, const Tensor &running_mean,
                         const Tensor &running_var, const std::optional<Tensor> &weight,
                         const std::optional<Tensor> &bias, double eps, bool relu) {
  const Tensor x = kernel_input("frozen_batch_norm", input);
  const std::optional<Tensor> mean_opt = running_mean, var_opt = running_var;
  check_per_channel("frozen_batch_norm", "running statistics, weight and bias", x,
                    {&mean_opt, &var_opt, &weight, &bias});
  return FrozenBatchNormFunction::apply(x, running_mean, running_var, or_empty(weight, x),
                                        or_empty(bias, x), eps, relu);
}

Tensor evonorm_s0(const Tensor &input, const Tensor &v, const std::optional<Tensor> &weight,
                  const std::optional<Tensor> &bias, int64_t groups, double eps) {
  const Tensor x = kernel_input("evonorm_s0", input, /*bf16=*/true);
  const std::optional<Tensor> v_opt = v;
  check_per_channel("evonorm_s0", "v, weight and bias", x, {&v_opt, &weight, &bias});
  check_groups("evonorm_s0", x, groups);
  return EvoNormS0Function::apply(x, v, or_empty(weight, x), or_empty(bias, x), groups, eps);
}

// FRN + TLU on conv input (N, C, *spatial), its default configuration: weight, bias and
// tau given, eps fixed.
Tensor filter_response_norm(const Tensor &input, const Tensor &weight, const Tensor &bias,
                            const Tensor &tau, double eps) {
  const Tensor x = kernel_input("filter_response_norm", input, /*bf16=*/true);
  TORCH_CHECK(x.dim() >= 3, "normzoo::filter_response_norm: expected (N, C, *spatial) input, got ",
              "shape ", x.sizes());
  const std::optional<Tensor> w_opt = weight, b_opt = bias, tau_opt = tau;
  check_per_channel("filter_response_norm", "weight, bias and tau", x,
                    {&w_opt, &b_opt, &tau_opt});
  return FRNFunction::apply(x, weight, bias, tau, eps);
}

// RMSNorm over each sample's channels and positions, conv input (N, C, *spatial).
Tensor rms_norm_rows(const Tensor &input, const std::optional<Tensor> &weight,
                     const std::optional<Tensor> &bias, double eps) {
  const Tensor x = kernel_input("rms_norm_rows", input, /*bf16=*/true);
  TORCH_CHECK(x.dim() >= 3, "normzoo::rms_norm_rows: expected (N, C, *spatial) input, got ",
              "shape ", x.sizes());
  check_per_channel("rms_norm_rows", "weight and bias", x, {&weight, &bias});
  return RMSNormFunction::apply(x, or_empty(weight, x), or_empty(bias, x), eps);
}

// batch: normalize with the batch variance, and update running_var (where given) in place
// like BatchNorm's, with the unbiased batch variance and `momentum`, after the kernels ran.
// Otherwise (eval) normalize with running_var.
Tensor evonorm_b0(const Tensor &input, const Tensor &v, const std::optional<Tensor> &weight,
                  const std::optional<Tensor> &bias, const std::optional<Tensor> &running_var,
                  bool batch, double momentum, double eps) {
  const Tensor x = kernel_input("evonorm_b0", input, /*bf16=*/true);
  const std::optional<Tensor> v_opt = v;
  check_per_channel("evonorm_b0", "v, weight, bias and running_var", x,
                    {&v_opt, &weight, &bias, &running_var});
  const Tensor running = or_empty(running_var, x);
  TORCH_CHECK(batch || running.numel(),
              "normzoo::evonorm_b0: batch=False normalizes with running_var, got none");
  auto out = EvoNormB0Function::apply(x, v, or_empty(weight, x), or_empty(bias, x),
                                      batch ? at::empty({0}, x.options()) : running, eps);
  if (batch && running.numel()) blend_running(running, out[1], momentum, x.numel() / x.size(1));
  return out[0];
}

// batch: BN's term from the batch, and the running statistics (where given) updated in place
// like BatchNorm's (the unbiased variance, `momentum`) after the kernels ran. Otherwise (eval)
// BN's term from the running statistics.
Tensor switchable_norm(const Tensor &input, const Tensor &mean_weight, const Tensor &var_weight,
                       const std::optional<Tensor> &weight, const std::optional<Tensor> &bias,
                       const std::optional<Tensor> &running_mean,
                       const std::optional<Tensor> &running_var, bool batch, double momentum,
                       double eps) {
  const Tensor x = kernel_input("switchable_norm", input, /*bf16=*/true);
  check_per_channel("switchable_norm", "weight, bias and the running statistics", x,
                    {&weight, &bias, &running_mean, &running_var});
  for (const Tensor *t : {&mean_weight, &var_weight})
    TORCH_CHECK(t->device().is_cpu() && t->scalar_type() == at::kFloat && t->dim() == 1 &&
                    t->size(0) == 3 && t->is_contiguous(),
                "normzoo::switchable_norm: expected contiguous float32 CPU (3,) mixture "
                "logits, got ",
                t->scalar_type(), " ", t->sizes());
  const Tensor mean = or_empty(running_mean, x), var = or_empty(running_var, x);
  TORCH_CHECK(mean.numel() == var.numel(),
              "normzoo::switchable_norm: expected both running statistics or neither");
  TORCH_CHECK(batch || mean.numel(),
              "normzoo::switchable_norm: batch=False uses the running statistics, got none");
  const Tensor empty = at::empty({0}, x.options());
  auto out = SwitchableFunction::apply(x, mean_weight, var_weight, or_empty(weight, x),
                                       or_empty(bias, x), batch ? empty : mean,
                                       batch ? empty : var, eps);
  if (batch && mean.numel()) {
    blend_running(mean, out[1][0], momentum, 0);
    blend_running(var, out[1][1], momentum, x.numel() / x.size(1));
  }
  return out[0];
}
}  // namespace

TORCH_LIBRARY(normzoo, m) {
  m.def(
      "group_norm(Tensor x, int groups, Tensor? weight, Tensor? bias, float eps, "
      "bool want_var, bool relu=False) -> (Tensor, Tensor, Tensor)");
  m.def(
      "group_norm_module(Tensor x, int groups, Tensor? weight, Tensor? bias, float eps, "
      "bool relu, int channels, int max_dim, int min_numel, int max_relu_row) -> Tensor");
  m.def(
      "batch_norm_module(Tensor x, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, Tensor(c!)? num_batches_tracked, float? momentum, float eps, "
      "bool relu, int channels, int max_dim, int min_numel, int min_spatial, "
      "int min_numel_cl, int few_channels_cl, int max_blocks, int max_numel_tokens=0) -> Tensor");
  m.def(
      "frozen_batch_norm(Tensor x, Tensor running_mean, Tensor running_var, Tensor? weight, "
      "Tensor? bias, float eps, bool relu=False) -> Tensor");
  m.def(
      "evonorm_s0(Tensor x, Tensor v, Tensor? weight, Tensor? bias, int groups, float eps) "
      "-> Tensor");
  m.def(
      "evonorm_b0(Tensor x, Tensor v, Tensor? weight, Tensor? bias, Tensor(a!)? running_var, "
      "bool batch, float momentum, float eps) -> Tensor");
  m.def(
      "switchable_norm(Tensor x, Tensor mean_weight, Tensor var_weight, Tensor? weight, "
      "Tensor? bias, Tensor(a!)? running_mean, Tensor(b!)? running_var, bool batch, "
      "float momentum, float eps) -> Tensor");
  m.def("filter_response_norm(Tensor x, Tensor weight, Tensor bias, Tensor tau, float eps) -> Tensor");
  m.def("rms_norm_rows(Tensor x, Tensor? weight, Tensor? bias, float eps) -> Tensor");
  m.def(
      "ghost_batch_norm_train(Tensor x, Tensor? weight, Tensor? bias, Tensor(a!)? running_mean, "
      "Tensor(b!)? running_var, int virtual_batch_size, float eps, float? momentum, int tracked, "
      "int kernels, int max_blocks) -> Tensor");
  m.def(
      "batch_renorm_train(Tensor x, Tensor? weight, Tensor? bias, Tensor(a!) running_mean, "
      "Tensor(b!) running_var, float r_max, float d_max, float eps, float factor, "
      "int max_blocks) -> Tensor");
}

// CompositeImplicitAutograd: one kernel for every dispatch key, autograd (the Function above
// records its node) and inference mode alike.
TORCH_LIBRARY_IMPL(normzoo, CompositeImplicitAutograd, m) {
  m.impl("group_norm", &group_norm);
  m.impl("group_norm_module", &group_norm_module);
  m.impl("batch_norm_module", &batch_norm_module);
  m.impl("frozen_batch_norm", &frozen_batch_norm);
  m.impl("evonorm_s0", &evonorm_s0);
  m.impl("evonorm_b0", &evonorm_b0);
  m.impl("switchable_norm", &switchable_norm);
  m.impl("filter_response_norm", &filter_response_norm);
  m.impl("rms_norm_rows", &rms_norm_rows);
  m.impl("batch_renorm_train", &batch_renorm_train);
  m.impl("ghost_batch_norm_train", &ghost_batch_norm_train);
}
