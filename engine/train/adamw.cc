#include "engine/train/adamw.h"

#include <c10/util/C++17.h>
#include <torch/torch.h>

#include <cmath>
#include <map>
#include <memory>
#include <optional>
#include <tuple>
#include <vector>

namespace lpd::engine {

AdamWStateKey AdamWStateKeyOf(const torch::Tensor& tensor) {
#if TORCH_VERSION_MAJOR >= 2
  return static_cast<void*>(tensor.unsafeGetTensorImpl());
#else
  return c10::guts::to_string(tensor.unsafeGetTensorImpl());
#endif
}

void MultiTensorAdamWStep(torch::optim::AdamW& optimizer, bool allow_fused,
                          const torch::Tensor& found_inf,
                          const torch::Tensor& grad_scale) {
  torch::NoGradGuard no_grad;
  for (auto& group : optimizer.param_groups()) {
    auto& o = static_cast<torch::optim::AdamWOptions&>(group.options());
    if (o.amsgrad()) {
      optimizer.step();
      return;
    }
    const double lr = o.lr(), wd = o.weight_decay(), eps = o.eps();
    const double beta1 = std::get<0>(o.betas()), beta2 = std::get<1>(o.betas());
    // Tensors grouped by step count (all equal in practice), dtype and
    // device.
    struct Lists {
      std::vector<torch::Tensor> params, grads, avgs, sqs;
    };
    std::map<std::tuple<int64_t, int, std::string>, Lists> by_step;
    for (torch::Tensor& p : group.params()) {
      if (!p.grad().defined()) continue;
      auto& slot = optimizer.state()[AdamWStateKeyOf(p)];
      if (!slot) {
        auto state = std::make_unique<torch::optim::AdamWParamState>();
        state->step(0);
        state->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        state->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
        slot = std::move(state);
      }
      auto& state = static_cast<torch::optim::AdamWParamState&>(*slot);
      state.step(state.step() + 1);
      Lists& lists = by_step[{state.step(), static_cast<int>(p.scalar_type()),
                              p.device().str()}];
      lists.params.push_back(p);
      lists.grads.push_back(p.grad());
      lists.avgs.push_back(state.exp_avg());
      lists.sqs.push_back(state.exp_avg_sq());
    }
    for (auto& [key, l] : by_step) {
      const int64_t step = std::get<0>(key);
#if TORCH_VERSION_MAJOR >= 2
      if (allow_fused && l.params.front().is_cuda()) {
        // The kernel reads each tensor's step count (already incremented).
        std::vector<torch::Tensor> steps =
            torch::full({static_cast<int64_t>(l.params.size())},
                        static_cast<double>(step),
                        l.params.front().options().dtype(torch::kFloat32))
                .unbind(0);
        at::_fused_adamw_(
            l.params, l.grads, l.avgs, l.sqs, {}, steps, lr, beta1, beta2, wd,
            eps, /*amsgrad=*/false,
            /*maximize=*/false,
            grad_scale.defined() ? std::optional<torch::Tensor>(grad_scale)
                                 : std::nullopt,
            found_inf.defined() ? std::optional<torch::Tensor>(found_inf)
                                : std::nullopt);
        continue;
      }
#endif
      (void)allow_fused;
      (void)found_inf;
      if (grad_scale.defined()) {
        at::_foreach_div_(l.grads, grad_scale.item<double>());
      }
      const double bias_correction1 = 1 - std::pow(beta1, step);
      const double bias_correction2 = 1 - std::pow(beta2, step);
      if (wd != 0) at::_foreach_mul_(l.params, 1 - lr * wd);
      at::_foreach_mul_(l.avgs, beta1);
      at::_foreach_add_(l.avgs, l.grads, 1 - beta1);
      at::_foreach_mul_(l.sqs, beta2);
      at::_foreach_addcmul_(l.sqs, l.grads, l.grads, 1 - beta2);
      std::vector<torch::Tensor> denom = at::_foreach_sqrt(l.sqs);
      at::_foreach_div_(denom, std::sqrt(bias_correction2));
      at::_foreach_add_(denom, eps);
      at::_foreach_addcdiv_(l.params, l.avgs, denom, -lr / bias_correction1);
    }
  }
}

}  // namespace lpd::engine
