// Held-out evaluation of a student against its teacher (DESIGN §4.6), the
// content of `report.json`.
//
// On a list of held-out batches (noised inputs x_t with their timesteps, and
// the task target ε or v), both models predict, and per sample s:
//   err_s  = ‖ε_S − ε_T‖²,  ref_s = ‖ε_T‖²,
//   loss_s(M) = ‖ε_M − target‖²   (M = teacher, student)
// Sums are taken in float64. Over a set of samples S (the whole set, or the
// samples whose timestep lies in a range):
//   relative_error = Σ_S err_s / Σ_S ref_s
//   loss(M)        = Σ_S loss_s(M) / (|S| · elements per sample)  (the MSE)
// Forward latency: the median of a few timed forwards of each model on the
// first batch after one warm-up run, synchronized on CUDA.
#ifndef LPD_ENGINE_COMPRESS_EVALUATION_H_
#define LPD_ENGINE_COMPRESS_EVALUATION_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/model/batch.h"
#include "engine/model/unet.h"
#include "nlohmann/json.hpp"

namespace lpd::engine {

// A half-open timestep range [begin, end).
struct TimestepRange {
  int64_t begin = 0;
  int64_t end = 0;
};

// [0,250), [250,500), [500,750), [750,1000).
std::vector<TimestepRange> DefaultTimestepRanges();

struct EvaluationOptions {
  // Ranges for the per-range metrics; they may leave gaps or overlap (each
  // is reported on its own). Each needs begin < end.
  std::vector<TimestepRange> ranges = DefaultTimestepRanges();
  // Timed forwards per model for the latency (0: no latency measured).
  int latency_runs = 5;
};

// The metrics of one set of samples.
struct EvaluationMetrics {
  int64_t samples = 0;
  double relative_error = 0;  // Σ‖ε_S − ε_T‖² / Σ‖ε_T‖² (0 when empty)
  double teacher_loss = 0;  // MSE of the teacher to the target
  double student_loss = 0;  // MSE of the student to the target
};

struct RangeMetrics {
  TimestepRange range;
  EvaluationMetrics metrics;
};

struct LatencyReport {
  std::string device;      // "cpu", "cuda:0"
  int64_t batch_size = 0;  // of the timed batch
  int runs = 0;            // timed runs per model (median taken)
  double teacher_seconds = 0;
  double student_seconds = 0;
};

struct EvaluationReport {
  EvaluationMetrics overall;
  std::vector<RangeMetrics> per_range;
  int64_t teacher_parameters = 0;
  int64_t student_parameters = 0;
  LatencyReport latency;  // runs == 0: not measured
};

// Evaluates `student` against `teacher` on `batches` (each batch's
// noised.timestep [B] or a scalar; `target` shaped like the output). Inputs
// are converted to each model's device and dtype; both run under
// NoGradGuard. InvalidArgument for an empty batch list, a bad range, inputs
// or targets that do not fit; LibTorch failures become statuses.
absl::StatusOr<EvaluationReport> Evaluate(
    UNet2DConditionModelImpl& teacher, UNet2DConditionModelImpl& student,
    const std::vector<TrainingBatch>& batches,
    const EvaluationOptions& options = {});

// report.json's evaluation part: {"samples", "relative_error",
// "teacher_loss", "student_loss", "per_timestep_range": [{"begin", "end",
// "samples", "relative_error", "teacher_loss", "student_loss"}],
// "parameters": {"teacher", "student", "ratio"}, "latency": {"device",
// "batch_size", "runs", "teacher_seconds", "student_seconds", "speedup"}}
// ("latency" omitted when not measured; the metrics of a set without
// samples are null).
nlohmann::json ReportToJson(const EvaluationReport& report);

}  // namespace lpd::engine

#endif  // LPD_ENGINE_COMPRESS_EVALUATION_H_
