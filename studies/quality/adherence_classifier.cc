#include "studies/quality/adherence_classifier.h"

#include <ATen/CPUGeneratorImpl.h>
#include <torch/torch.h>

#include <random>

#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/core/torch_errors.h"

namespace lpd::engine {
namespace {

namespace nn = torch::nn;

void AddStage(nn::Sequential& seq, int64_t in, int64_t out, bool pool) {
  seq->push_back(nn::Conv2d(nn::Conv2dOptions(in, out, 3).padding(1)));
  seq->push_back(nn::GroupNorm(nn::GroupNormOptions(8, out)));
  seq->push_back(nn::SiLU());
  seq->push_back(nn::Conv2d(nn::Conv2dOptions(out, out, 3).padding(1)));
  seq->push_back(nn::GroupNorm(nn::GroupNormOptions(8, out)));
  seq->push_back(nn::SiLU());
  if (pool) seq->push_back(nn::AvgPool2d(nn::AvgPool2dOptions(2)));
}

// Splits logits [N, 4, 14] into the four heads.
struct Heads {
  torch::Tensor present, kind, colour, size;
};
Heads Split(const torch::Tensor& logits) {
  int64_t at = 0;
  auto take = [&](int64_t n) {
    torch::Tensor t = logits.narrow(2, at, n);
    at += n;
    return t;
  };
  Heads h;
  h.present = take(2);
  h.kind = take(kShapeKinds);
  h.colour = take(kShapeColours);
  h.size = take(kShapeSizes);
  return h;
}

absl::Status SameShape(const QuadrantAttributes& a,
                       const QuadrantAttributes& b) {
  for (const auto* t : {&a.present, &a.kind, &a.colour, &a.size, &b.present,
                        &b.kind, &b.colour, &b.size}) {
    if (!t->defined() || t->dim() != 2 || t->size(1) != kQuadrants ||
        t->size(0) != a.present.size(0)) {
      return absl::InvalidArgumentError(
          "adherence: attribute tensors must all be [N, 4] of one N");
    }
  }
  return absl::OkStatus();
}

}  // namespace

ShapesClassifierImpl::ShapesClassifierImpl(int64_t width) {
  features_ = nn::Sequential();
  AddStage(features_, 3, width, /*pool=*/true);
  AddStage(features_, width, 2 * width, /*pool=*/true);
  AddStage(features_, 2 * width, 4 * width, /*pool=*/false);
  register_module("features", features_);
  quadrant_ = register_module("quadrant", nn::Embedding(kQuadrants, 4 * width));
  head_ = nn::Sequential(nn::Linear(4 * width, 4 * width), nn::SiLU(),
                         nn::Linear(4 * width, kClassifierLogits));
  register_module("head", head_);
}

torch::Tensor ShapesClassifierImpl::forward(const torch::Tensor& images) {
  torch::Tensor x = images.narrow(1, 0, 3).clamp(-1, 1);
  x = features_->forward(x);                               // [N, C, h, w]
  x = torch::adaptive_avg_pool2d(x, {2, 2}).flatten(2);    // [N, C, 4]
  x = x.transpose(1, 2) + quadrant_->weight.unsqueeze(0);  // [N, 4, C]
  return head_->forward(x);                                // [N, 4, 14]
}

absl::StatusOr<ShapesClassifier> TrainShapesClassifier(
    const ShapesData& data, const ClassifierTrainOptions& options) {
  if (data.size() < 1 || !data.attributes.present.defined()) {
    return absl::InvalidArgumentError("classifier: no training data");
  }
  if (options.steps < 1 || options.batch_size < 1 ||
      !(options.learning_rate > 0) || options.width < 8 ||
      options.width % 8 != 0) {
    return absl::InvalidArgumentError(
        "classifier: steps and batch size must be ≥ 1, learning rate > 0, "
        "width a multiple of 8");
  }
  return GuardTorch(
      "training the adherence classifier",
      [&]() -> absl::StatusOr<ShapesClassifier> {
        torch::manual_seed(options.seed);  // the initial weights
        ShapesClassifier model(options.width);
        model->to(options.device);
        model->train();
        torch::optim::AdamW optimizer(
            model->parameters(),
            torch::optim::AdamWOptions(options.learning_rate)
                .weight_decay(options.weight_decay));
        const torch::Device dev = options.device;
        const torch::Tensor images = data.latents.narrow(1, 0, 3).to(dev);
        const torch::Tensor present = data.attributes.present.to(dev);
        const torch::Tensor kind = data.attributes.kind.to(dev);
        const torch::Tensor colour = data.attributes.colour.to(dev);
        const torch::Tensor size = data.attributes.size.to(dev);
        at::Generator gen =
            at::detail::createCPUGenerator(options.seed ^ 0xC1A55ull);
        const int64_t n = data.size();
        for (int64_t step = 0; step < options.steps; ++step) {
          // Cosine decay to 5% of the peak.
          const double progress =
              static_cast<double>(step) / static_cast<double>(options.steps);
          const double lr =
              options.learning_rate *
              (0.05 + 0.95 * 0.5 * (1 + std::cos(M_PI * progress)));
          for (auto& group : optimizer.param_groups()) {
            static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr);
          }
          const torch::Tensor idx =
              torch::randint(0, n, {options.batch_size}, gen,
                             torch::dtype(torch::kInt64))
                  .to(dev);
          torch::Tensor x = images.index_select(0, idx);
          if (options.noise_std > 0) {
            x = x + options.noise_std *
                        torch::randn(x.sizes(), gen, torch::kFloat32).to(dev);
          }
          const Heads h = Split(model->forward(x));
          const torch::Tensor p = present.index_select(0, idx).flatten();
          const torch::Tensor mask = p.to(torch::kFloat32);
          const torch::Tensor occupied = mask.sum().clamp_min(1.0);
          auto masked_ce = [&](const torch::Tensor& logits,
                               const torch::Tensor& y, int64_t classes) {
            torch::Tensor ce = torch::nn::functional::cross_entropy(
                logits.reshape({-1, classes}), y.index_select(0, idx).flatten(),
                torch::nn::functional::CrossEntropyFuncOptions().reduction(
                    torch::kNone));
            return (ce * mask).sum() / occupied;
          };
          torch::Tensor loss = torch::nn::functional::cross_entropy(
                                   h.present.reshape({-1, 2}), p) +
                               masked_ce(h.kind, kind, kShapeKinds) +
                               masked_ce(h.colour, colour, kShapeColours) +
                               masked_ce(h.size, size, kShapeSizes);
          optimizer.zero_grad();
          loss.backward();
          optimizer.step();
          if (options.log && options.log_every > 0 &&
              (step % options.log_every == 0 || step + 1 == options.steps)) {
            options.log(step, loss.item<double>());
          }
        }
        model->eval();
        return model;
      });
}

absl::StatusOr<QuadrantAttributes> ReadAttributes(ShapesClassifierImpl& model,
                                                  const torch::Tensor& images,
                                                  int64_t batch_size) {
  if (!images.defined() || images.dim() != 4 || images.size(1) < 3 ||
      images.size(2) % 8 != 0 || images.size(3) % 8 != 0 || batch_size < 1) {
    return absl::InvalidArgumentError(
        "classifier: expected images [N, ≥3, H, W] with H, W multiples of 8");
  }
  return GuardTorch(
      "reading attributes", [&]() -> absl::StatusOr<QuadrantAttributes> {
        torch::NoGradGuard no_grad;
        const bool was_training = model.is_training();
        model.eval();
        const auto params = model.parameters();
        const torch::Device dev = params.at(0).device();
        std::vector<torch::Tensor> parts[4];
        for (int64_t begin = 0; begin < images.size(0); begin += batch_size) {
          const int64_t count = std::min(batch_size, images.size(0) - begin);
          const Heads h = Split(model.forward(
              images.narrow(0, begin, count).to(dev, torch::kFloat32)));
          parts[0].push_back(h.present.argmax(2).cpu());
          parts[1].push_back(h.kind.argmax(2).cpu());
          parts[2].push_back(h.colour.argmax(2).cpu());
          parts[3].push_back(h.size.argmax(2).cpu());
        }
        if (was_training) model.train();
        return QuadrantAttributes{torch::cat(parts[0]), torch::cat(parts[1]),
                                  torch::cat(parts[2]), torch::cat(parts[3])};
      });
}

absl::StatusOr<AdherenceScore> ScoreAdherence(
    const QuadrantAttributes& read, const QuadrantAttributes& requested) {
  RETURN_IF_ERROR(SameShape(read, requested));
  return GuardTorch(
      "scoring adherence", [&]() -> absl::StatusOr<AdherenceScore> {
        auto cpu = [](const torch::Tensor& t) {
          return t.to(torch::kCPU, torch::kInt64).contiguous();
        };
        const torch::Tensor rp = cpu(read.present), rk = cpu(read.kind),
                            rc = cpu(read.colour), rs = cpu(read.size);
        const torch::Tensor qp = cpu(requested.present),
                            qk = cpu(requested.kind),
                            qc = cpu(requested.colour),
                            qs = cpu(requested.size);
        auto a_rp = rp.accessor<int64_t, 2>(), a_rk = rk.accessor<int64_t, 2>(),
             a_rc = rc.accessor<int64_t, 2>(), a_rs = rs.accessor<int64_t, 2>();
        auto a_qp = qp.accessor<int64_t, 2>(), a_qk = qk.accessor<int64_t, 2>(),
             a_qc = qc.accessor<int64_t, 2>(), a_qs = qs.accessor<int64_t, 2>();
        AdherenceScore s;
        s.samples = rp.size(0);
        int64_t pos = 0, kind = 0, colour = 0, size = 0, exact = 0, extra = 0;
        for (int64_t i = 0; i < s.samples; ++i) {
          bool all = true, has_extra = false;
          for (int q = 0; q < kQuadrants; ++q) {
            if (a_qp[i][q] == 0) {
              has_extra |= a_rp[i][q] != 0;
              continue;
            }
            ++s.requested_shapes;
            const bool p = a_rp[i][q] != 0;
            const bool k = p && a_rk[i][q] == a_qk[i][q];
            const bool c = p && a_rc[i][q] == a_qc[i][q];
            const bool z = p && a_rs[i][q] == a_qs[i][q];
            pos += p;
            kind += k;
            colour += c;
            size += z;
            all &= p && k && c && z;
          }
          exact += all && !has_extra;
          extra += has_extra;
        }
        const double shapes = std::max<int64_t>(1, s.requested_shapes);
        s.position = pos / shapes;
        s.kind = kind / shapes;
        s.colour = colour / shapes;
        s.size = size / shapes;
        s.attribute_accuracy = (pos + kind + colour + size) / (4 * shapes);
        const double samples = std::max<int64_t>(1, s.samples);
        s.exact_rate = exact / samples;
        s.extra_shape_rate = extra / samples;
        return s;
      });
}

absl::StatusOr<ClassifierAccuracy> MeasureClassifierAccuracy(
    const QuadrantAttributes& read, const QuadrantAttributes& truth) {
  RETURN_IF_ERROR(SameShape(read, truth));
  return GuardTorch(
      "classifier accuracy", [&]() -> absl::StatusOr<ClassifierAccuracy> {
        const torch::Tensor occupied = truth.present.cpu() != 0;
        const double n_occupied =
            std::max<double>(1, occupied.sum().item<double>());
        auto masked = [&](const torch::Tensor& a, const torch::Tensor& b) {
          return ((a.cpu() == b.cpu()) & occupied).sum().item<double>() /
                 n_occupied;
        };
        ClassifierAccuracy acc;
        acc.present = (read.present.cpu() == truth.present.cpu())
                          .to(torch::kFloat64)
                          .mean()
                          .item<double>();
        acc.kind = masked(read.kind, truth.kind);
        acc.colour = masked(read.colour, truth.colour);
        acc.size = masked(read.size, truth.size);
        return acc;
      });
}

nlohmann::json AdherenceToJson(const AdherenceScore& s) {
  return {{"samples", s.samples},
          {"requested_shapes", s.requested_shapes},
          {"attribute_accuracy", s.attribute_accuracy},
          {"exact_rate", s.exact_rate},
          {"position", s.position},
          {"kind", s.kind},
          {"colour", s.colour},
          {"size", s.size},
          {"extra_shape_rate", s.extra_shape_rate}};
}

nlohmann::json ClassifierAccuracyToJson(const ClassifierAccuracy& a) {
  return {{"present", a.present},
          {"kind", a.kind},
          {"colour", a.colour},
          {"size", a.size}};
}

}  // namespace lpd::engine
