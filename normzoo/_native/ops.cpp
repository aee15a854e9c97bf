// normzoo's native row kernels (row_norm.c) as a torch operator with a C++ autograd node.
//
// Group norm, and with it InstanceNorm (groups = C) and channels-first LayerNorm (groups = 1):
//   y = weight_c * (x - mean_{n,g}) * rstd_{n,g} + bias_c,   rstd = 1 / sqrt(var_{n,g} + eps)
// over each (sample, group) row (Wu and He, "Group Normalization", ECCV 2018).
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
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <ATen/ops/group_norm.h>
#include <torch/csrc/autograd/autograd.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/library.h>

extern "C" {
void nz_row_forward(const float *x, const float *w, const float *b, float *y, float *mean_out,
                    float *rstd_out, float *var_out, int64_t N, int64_t G, int64_t Cg,
                    int64_t L, double eps, int threads);
void nz_row_backward(const float *dy, const float *x, const float *w, const float *mean,
                     const float *rstd, float *dx, float *dw, float *db, float *partial,
                     int64_t N, int64_t G, int64_t Cg, int64_t L, int threads);
int nz_row_forward_cl(const float *x, const float *w, const float *b, float *y,
                      float *mean_out, float *rstd_out, float *var_out, int64_t N, int64_t G,
                      int64_t Cg, int64_t L, double eps, int threads);
int nz_row_backward_cl(const float *dy, const float *x, const float *w, const float *mean,
                       const float *rstd, float *dx, float *dw, float *db, float *partial,
                       int64_t N, int64_t G, int64_t Cg, int64_t L, int threads);
}

namespace {
using at::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// An absent weight or bias travels as an empty tensor: autograd's Function takes no
// undefined tensor arguments. The kernels take a null pointer for it.
const float *in_ptr(const Tensor &t) { return t.numel() ? t.data_ptr<float>() : nullptr; }
float *out_ptr(Tensor &t) { return t.defined() && t.numel() ? t.data_ptr<float>() : nullptr; }
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

struct GroupNormFunction : public torch::autograd::Function<GroupNormFunction> {
  // Returns (y, stats, var): stats (2, N, G) is the mean and rstd, var (N, G) the biased
  // variance when want_var (else empty); neither is differentiable. Saves x, weight and
  // stats, as torch's group norm saves x, weight, mean and rstd.
  static variable_list forward(AutogradContext *ctx, const Tensor &x, int64_t groups,
                               const Tensor &weight, const Tensor &bias, double eps,
                               bool want_var) {
    const int64_t n = x.size(0), c = x.size(1), length = x.numel() / (n * c);
    Tensor y = at::empty_like(x);  // keeps a channels_last layout
    Tensor stats = at::empty({2, n, groups}, x.options());
    Tensor var = at::empty({want_var ? n : 0, want_var ? groups : 0}, x.options());
    float *s = stats.data_ptr<float>();
    if (channels_last(x)) {
      check_scratch(nz_row_forward_cl(x.data_ptr<float>(), in_ptr(weight), in_ptr(bias),
                                      y.data_ptr<float>(), s, s + n * groups, out_ptr(var), n,
                                      groups, c / groups, length, eps, at::get_num_threads()));
    } else {
      nz_row_forward(x.data_ptr<float>(), in_ptr(weight), in_ptr(bias), y.data_ptr<float>(), s,
                     s + n * groups, out_ptr(var), n, groups, c / groups, length, eps,
                     at::get_num_threads());
    }
    ctx->save_for_backward({x, weight, stats});
    ctx->saved_data["groups"] = groups;
    ctx->saved_data["eps"] = eps;
    ctx->mark_non_differentiable({stats, var});
    return {y, stats, var};
  }

  static variable_list backward(AutogradContext *ctx, variable_list grads) {
    const auto saved = ctx->get_saved_variables();
    const Tensor &x = saved[0], &weight = saved[1], &stats = saved[2];
    const int64_t groups = ctx->saved_data["groups"].toInt();
    // needs_input_grad counts the tensor arguments only: x, weight, bias.
    const bool need_x = ctx->needs_input_grad(0), need_w = ctx->needs_input_grad(1),
               need_b = ctx->needs_input_grad(2);
    const Tensor none;
    Tensor dy = grads[0];
    if (at::GradMode::is_enabled()) {
      // create_graph=True: differentiate torch's group norm with a graph instead, so double
      // backward works as with torch.nn.GroupNorm. The bias only shifts y.
      variable_list inputs;
      if (need_x) inputs.push_back(x);
      if (need_w) inputs.push_back(weight);
      variable_list g;
      if (!inputs.empty()) {
        const double eps = ctx->saved_data["eps"].toDouble();
        Tensor y = at::group_norm(x, groups, weight.numel() ? weight : none, none, eps);
        g = torch::autograd::grad({y}, inputs, {dy}, /*retain_graph=*/true,
                                  /*create_graph=*/true);
      }
      size_t i = 0;
      Tensor dx = need_x ? g[i++] : none;
      Tensor dw = need_w ? g[i++] : none;
      std::vector<int64_t> dims{0};
      for (int64_t d = 2; d < dy.dim(); ++d) dims.push_back(d);
      Tensor db = need_b ? dy.sum(dims) : none;
      return {dx, none, dw, db, none, none};
    }
    const bool cl = channels_last(x);
    // dy in x's layout: the kernels read both with the same strides
    dy = dy.contiguous(!cl                ? at::MemoryFormat::Contiguous
                       : x.dim() == 4     ? at::MemoryFormat::ChannelsLast
                                          : at::MemoryFormat::ChannelsLast3d);
    const int64_t n = x.size(0), c = x.size(1), length = x.numel() / (n * c);
    Tensor dx = need_x ? at::empty_like(x) : none;
    Tensor dw = need_w ? at::empty({c}, x.options()) : none;
    Tensor db = need_b ? at::empty({c}, x.options()) : none;
    Tensor partial = at::empty({2, n, c}, x.options());
    const float *s = stats.data_ptr<float>();
    if (cl) {
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
    return {dx, none, dw, db, none, none};
  }
};

// The kernels read raw float32 CPU memory: anything else is refused here, before any work.
void check_inputs(const Tensor &x, int64_t groups, const std::optional<Tensor> &weight,
                  const std::optional<Tensor> &bias) {
  TORCH_CHECK(x.device().is_cpu() && x.scalar_type() == at::kFloat,
              "normzoo::group_norm: expected a float32 CPU input, got ", x.scalar_type(), " on ",
              x.device());
  TORCH_CHECK(x.dim() >= 2 && x.size(0) > 0 && x.size(1) > 0,
              "normzoo::group_norm: expected a non-empty (N, C, *) input, got shape ", x.sizes());
  TORCH_CHECK(groups > 0 && x.size(1) % groups == 0, "normzoo::group_norm: groups (", groups,
              ") must divide the channels (", x.size(1), ")");
  for (const auto *t : {&weight, &bias}) {
    if (!t->has_value() || !(*t)->defined()) continue;
    const Tensor &p = **t;
    TORCH_CHECK(p.device().is_cpu() && p.scalar_type() == at::kFloat && p.dim() == 1 &&
                    p.size(0) == x.size(1) && p.is_contiguous(),
                "normzoo::group_norm: expected weight and bias as contiguous float32 CPU (",
                x.size(1), ",), got ", p.scalar_type(), " ", p.sizes());
  }
}

std::tuple<Tensor, Tensor, Tensor> group_norm(const Tensor &input, int64_t groups,
                                              const std::optional<Tensor> &weight,
                                              const std::optional<Tensor> &bias, double eps,
                                              bool want_var) {
  check_inputs(input, groups, weight, bias);
  // the kernels' two layouts; any other strides are copied into the contiguous one
  const Tensor x = input.is_contiguous() || channels_last(input) ? input : input.contiguous();
  auto out = GroupNormFunction::apply(x, groups, or_empty(weight, x), or_empty(bias, x), eps,
                                      want_var);
  return {out[0], out[1], out[2]};
}
}  // namespace

TORCH_LIBRARY(normzoo, m) {
  m.def(
      "group_norm(Tensor x, int groups, Tensor? weight, Tensor? bias, float eps, "
      "bool want_var) -> (Tensor, Tensor, Tensor)");
}

// CompositeImplicitAutograd: one kernel for every dispatch key, autograd (the Function above
// records its node) and inference mode alike.
TORCH_LIBRARY_IMPL(normzoo, CompositeImplicitAutograd, m) { m.impl("group_norm", &group_norm); }
