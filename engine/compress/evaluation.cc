#include "engine/compress/evaluation.h"

#include <torch/cuda.h>
#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/status_macros.h"
#include "engine/core/torch_errors.h"

namespace lpd::engine {
namespace {

struct ModelPlace {
  torch::Device device = torch::kCPU;
  torch::Dtype dtype = torch::kFloat32;
};

ModelPlace PlaceOf(UNet2DConditionModelImpl& model) {
  ModelPlace place;
  for (const auto& item : model.named_parameters(true)) {
    place.device = item.value().device();
    place.dtype = item.value().scalar_type();
    break;
  }
  return place;
}

UNetInputs ToPlace(const UNetInputs& in, const ModelPlace& place) {
  auto floating = [&](const torch::Tensor& t) {
    return t.defined() ? t.to(place.device, place.dtype) : t;
  };
  UNetInputs out;
  out.sample = floating(in.sample);
  out.timestep =
      in.timestep.defined() ? in.timestep.to(place.device) : in.timestep;
  out.encoder_hidden_states = floating(in.encoder_hidden_states);
  out.text_embeds = floating(in.text_embeds);
  out.time_ids = floating(in.time_ids);
  return out;
}

// Per-sample sums of squares [B] in float64 on the CPU.
torch::Tensor PerSampleSquares(const torch::Tensor& t) {
  return t.to(torch::kCPU, torch::kFloat64).pow(2).flatten(1).sum(1);
}

struct Sums {
  int64_t samples = 0;
  double err = 0, ref = 0, teacher = 0, student = 0;
};

EvaluationMetrics MetricsOf(const Sums& sums, int64_t elements_per_sample) {
  EvaluationMetrics m;
  m.samples = sums.samples;
  if (sums.samples == 0) return m;
  m.relative_error = sums.ref > 0 ? sums.err / sums.ref : 0.0;
  const double n = static_cast<double>(sums.samples) * elements_per_sample;
  m.teacher_loss = sums.teacher / n;
  m.student_loss = sums.student / n;
  return m;
}

double Median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  const size_t n = values.size();
  return n % 2 == 1 ? values[n / 2] : 0.5 * (values[n / 2 - 1] + values[n / 2]);
}

void Synchronize(const torch::Device& device) {
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
}

double TimeForwards(UNet2DConditionModelImpl& model, const UNetInputs& inputs,
                    const torch::Device& device, int runs) {
  model.forward(inputs);  // warm-up
  Synchronize(device);
  std::vector<double> seconds;
  for (int i = 0; i < runs; ++i) {
    const auto start = std::chrono::steady_clock::now();
    model.forward(inputs);
    Synchronize(device);
    seconds.push_back(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
            .count());
  }
  return Median(std::move(seconds));
}

}  // namespace

std::vector<TimestepRange> DefaultTimestepRanges() {
  return {{0, 250}, {250, 500}, {500, 750}, {750, 1000}};
}

absl::StatusOr<EvaluationReport> Evaluate(
    UNet2DConditionModelImpl& teacher, UNet2DConditionModelImpl& student,
    const std::vector<TrainingBatch>& batches,
    const EvaluationOptions& options) {
  if (batches.empty()) {
    return absl::InvalidArgumentError("evaluation: no held-out batches");
  }
  for (const TimestepRange& r : options.ranges) {
    if (r.begin >= r.end) {
      return absl::InvalidArgumentError(absl::StrCat(
          "evaluation: timestep range [", r.begin, ", ", r.end, ") is empty"));
    }
  }
  if (options.latency_runs < 0) {
    return absl::InvalidArgumentError("evaluation: latency_runs must be >= 0");
  }
  return GuardTorch("evaluation", [&]() -> absl::StatusOr<EvaluationReport> {
    torch::NoGradGuard no_grad;
    const ModelPlace teacher_place = PlaceOf(teacher);
    const ModelPlace student_place = PlaceOf(student);
    Sums overall;
    std::vector<Sums> ranges(options.ranges.size());
    int64_t elements_per_sample = -1;
    for (size_t b = 0; b < batches.size(); ++b) {
      const TrainingBatch& batch = batches[b];
      const UNetInputs teacher_in = ToPlace(batch.noised, teacher_place);
      const UNetInputs student_in = ToPlace(batch.noised, student_place);
      RETURN_IF_ERROR(teacher.ValidateInputs(teacher_in));
      RETURN_IF_ERROR(student.ValidateInputs(student_in));
      const torch::Tensor eps_t =
          teacher.forward(teacher_in).to(torch::kCPU, torch::kFloat64);
      const torch::Tensor eps_s =
          student.forward(student_in).to(torch::kCPU, torch::kFloat64);
      if (!batch.target.defined() || batch.target.sizes() != eps_t.sizes()) {
        return absl::InvalidArgumentError(
            absl::StrCat("evaluation: batch ", b, ": the target must have the ",
                         "output's shape"));
      }
      const torch::Tensor target =
          batch.target.to(torch::kCPU, torch::kFloat64);
      const int64_t n = eps_t.size(0);
      const int64_t per_sample = eps_t.numel() / std::max<int64_t>(n, 1);
      if (elements_per_sample < 0) elements_per_sample = per_sample;
      if (per_sample != elements_per_sample) {
        return absl::InvalidArgumentError(
            absl::StrCat("evaluation: batch ", b,
                         " has another output size per sample than batch 0"));
      }
      const torch::Tensor err = PerSampleSquares(eps_s - eps_t);
      const torch::Tensor ref = PerSampleSquares(eps_t);
      const torch::Tensor loss_t = PerSampleSquares(eps_t - target);
      const torch::Tensor loss_s = PerSampleSquares(eps_s - target);
      torch::Tensor t =
          batch.noised.timestep.to(torch::kCPU, torch::kFloat64).reshape({-1});
      if (t.numel() == 1) t = t.expand({n});
      if (t.numel() != n) {
        return absl::InvalidArgumentError(
            absl::StrCat("evaluation: batch ", b, " has ", t.numel(),
                         " timesteps for ", n, " samples"));
      }
      auto err_a = err.accessor<double, 1>();
      auto ref_a = ref.accessor<double, 1>();
      auto lt_a = loss_t.accessor<double, 1>();
      auto ls_a = loss_s.accessor<double, 1>();
      t = t.contiguous();
      auto t_a = t.accessor<double, 1>();
      for (int64_t i = 0; i < n; ++i) {
        auto add = [&](Sums& s) {
          ++s.samples;
          s.err += err_a[i];
          s.ref += ref_a[i];
          s.teacher += lt_a[i];
          s.student += ls_a[i];
        };
        add(overall);
        for (size_t r = 0; r < options.ranges.size(); ++r) {
          if (t_a[i] >= options.ranges[r].begin &&
              t_a[i] < options.ranges[r].end) {
            add(ranges[r]);
          }
        }
      }
    }
    EvaluationReport report;
    report.overall = MetricsOf(overall, elements_per_sample);
    for (size_t r = 0; r < options.ranges.size(); ++r) {
      report.per_range.push_back(
          {options.ranges[r], MetricsOf(ranges[r], elements_per_sample)});
    }
    report.teacher_parameters = teacher.NumParameters();
    report.student_parameters = student.NumParameters();
    if (options.latency_runs > 0) {
      LatencyReport& latency = report.latency;
      latency.device = student_place.device.str();
      latency.batch_size = batches[0].noised.sample.size(0);
      latency.runs = options.latency_runs;
      latency.teacher_seconds =
          TimeForwards(teacher, ToPlace(batches[0].noised, teacher_place),
                       teacher_place.device, options.latency_runs);
      latency.student_seconds =
          TimeForwards(student, ToPlace(batches[0].noised, student_place),
                       student_place.device, options.latency_runs);
    }
    return report;
  });
}

nlohmann::json ReportToJson(const EvaluationReport& report) {
  // Metrics of an empty set are null, not 0.
  auto metrics = [](nlohmann::json& out, const EvaluationMetrics& m) {
    auto value = [&](double x) {
      return m.samples > 0 ? nlohmann::json(x) : nlohmann::json(nullptr);
    };
    out["samples"] = m.samples;
    out["relative_error"] = value(m.relative_error);
    out["teacher_loss"] = value(m.teacher_loss);
    out["student_loss"] = value(m.student_loss);
  };
  nlohmann::json json = nlohmann::json::object();
  metrics(json, report.overall);
  nlohmann::json ranges = nlohmann::json::array();
  for (const RangeMetrics& r : report.per_range) {
    nlohmann::json item = {{"begin", r.range.begin}, {"end", r.range.end}};
    metrics(item, r.metrics);
    ranges.push_back(std::move(item));
  }
  json["per_timestep_range"] = std::move(ranges);
  json["parameters"] = {
      {"teacher", report.teacher_parameters},
      {"student", report.student_parameters},
      {"ratio", report.teacher_parameters > 0
                    ? static_cast<double>(report.student_parameters) /
                          static_cast<double>(report.teacher_parameters)
                    : 0.0}};
  if (report.latency.runs > 0) {
    const LatencyReport& l = report.latency;
    json["latency"] = {
        {"device", l.device},
        {"batch_size", l.batch_size},
        {"runs", l.runs},
        {"teacher_seconds", l.teacher_seconds},
        {"student_seconds", l.student_seconds},
        {"speedup",
         l.student_seconds > 0 ? l.teacher_seconds / l.student_seconds : 0.0}};
  }
  return json;
}

}  // namespace lpd::engine
