// The compression job spec (DESIGN §3.1): parsing it from YAML, filling in
// defaults, validating it, and writing it back as canonical YAML. Shared by
// `lpdctl` (YAML files) and the scheduler (specs arriving over gRPC).
//
// Errors. Every rejected spec gets an INVALID_ARGUMENT status whose message
// has one line per problem (sorted by position, at most kMaxReportedErrors),
// each naming the field by its YAML path, the expectation and the value:
//
//   job.yaml:14:19: spec.prune.target_ratio: must be in (0, 1), got 1.5
//   job.yaml:20:12: spec.distill.steps: expected an integer, got "many"
//   job.yaml:20:5: spec.distill.stpes: unknown field (did you mean "steps"?)
//
// Specs parsed from YAML carry `source:line:column: ` (1-based, the value's
// position; for a missing field, its parent's key); ValidateJobSpec, which
// sees only a message, reports `path: message`. Paths use the YAML spelling
// (`apiVersion`), list elements `[i]` and labels `["key"]`.
//
// YAML rules, beyond the schema: one document; no duplicate keys; no tags
// or null values; numbers and booleans unquoted (a quoted "16" is a string,
// and rejected where a number is expected); booleans are true/false (also
// True/TRUE/False/FALSE), not yes/no; enum values are case-sensitive.
// Integers may be written 20000 or 2e4, but must be integral and in range.
#ifndef LPD_JOB_SPEC_H_
#define LPD_JOB_SPEC_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "lpd/v1/job_spec.pb.h"

namespace lpd::job {

inline constexpr absl::string_view kApiVersion = "lpd/v1";
inline constexpr absl::string_view kJobKind = "CompressionJob";

// Larger YAML input is rejected before parsing.
inline constexpr std::size_t kMaxJobSpecBytes = 1 << 20;
// Most spec.prune.additivity_sets.
inline constexpr int kMaxAdditivitySets = 64;
// Error messages list at most this many problems, then "... and N more".
inline constexpr int kMaxReportedErrors = 20;
// At most this many metadata.labels.
inline constexpr int kMaxLabels = 64;

// The defaults: the one table ApplyDefaults reads. Fields not listed here
// are required (apiVersion, kind, metadata.name, spec.model.uri,
// spec.data.train.uri, spec.output.uri) or default to their zero value
// (metadata.labels: none; spec.seed: 0; spec.distill.master_weights_fp32:
// false). The "auto" enums (prediction_type, precision, device) stay
// unspecified and are resolved by the worker, as job_spec.proto documents.
struct JobSpecDefaults {
  // spec.data
  int32_t calibration_samples = 256;
  int32_t eval_samples = 512;
  // spec.prune
  double target_ratio = 0.5;
  lpd::v1::Criterion criterion = lpd::v1::CRITERION_OUTPUT_LOSS;
  // Transformer blocks rather than whole attentions: on SDXL's deep
  // transformers they give the knapsack fine-grained units; on one-block
  // transformers (SD-v1.x/2.x) the two are the same.
  std::array<lpd::v1::PruneUnit, 2> units = {
      lpd::v1::PRUNE_UNIT_RESNET, lpd::v1::PRUNE_UNIT_TRANSFORMER_BLOCK};
  int32_t additivity_sets = 8;
  // spec.distill
  int32_t steps = 20000;
  int32_t batch_size = 16;
  double learning_rate = 5e-5;
  double weight_decay = 0.01;
  double grad_clip_norm = 1.0;
  int32_t warmup_steps = 0;
  int32_t checkpoint_every = 500;
  int32_t gpus = 1;
  // spec.distill.loss
  double loss_task = 1.0;
  double loss_output_kd = 1.0;
  double loss_feature_kd = 1.0;
  bool normalize_features = true;
};
inline constexpr JobSpecDefaults kJobSpecDefaults{};
// The largest spec.distill.gpus accepted.
inline constexpr int32_t kMaxDistillGpus = 64;

// Parses one YAML document into a job, fills in the defaults and validates
// it. `source` names the input in messages (a file path, "<stdin>"; empty:
// positions only). INVALID_ARGUMENT for malformed YAML, a schema violation
// or an invalid value, with every problem found (see above).
absl::StatusOr<lpd::v1::CompressionJob> ParseJobSpecYaml(
    absl::string_view yaml_text, absl::string_view source);

// Reads `path` and parses it as ParseJobSpecYaml does, naming `path` in
// messages. NOT_FOUND, PERMISSION_DENIED, ... when the file cannot be read;
// INVALID_ARGUMENT when it is over kMaxJobSpecBytes or invalid.
absl::StatusOr<lpd::v1::CompressionJob> LoadJobSpecFile(
    const std::string& path);

// Sets every unset field that has a default (kJobSpecDefaults), creating
// sub-messages as needed. Set fields, required fields and the "auto" enums
// are left as they are. Idempotent.
void ApplyDefaults(lpd::v1::CompressionJob* job);

// Checks a job's effective values (unset fields count as their defaults):
// required fields present, apiVersion/kind, name and label formats, URI
// shapes, enum values known, ranges and cross-field rules. OK or
// INVALID_ARGUMENT listing every problem as `path: message`. Use it on specs
// that did not come through ParseJobSpecYaml (gRPC), then ApplyDefaults.
absl::Status ValidateJobSpec(const lpd::v1::CompressionJob& job);

// The canonical YAML of `job` with every default filled in: fixed key order,
// labels sorted, numbers in their shortest exact form. For a job that
// ValidateJobSpec accepts, ParseJobSpecYaml(JobSpecToYaml(job)) gives back
// the job with defaults applied.
std::string JobSpecToYaml(const lpd::v1::CompressionJob& job);

// The YAML spelling of enum values ("output_loss", "transformer_block", ...;
// "auto" for the unspecified value of PredictionType, Precision and Device).
// Empty for a value outside the enum.
absl::string_view YamlName(lpd::v1::PredictionType value);
absl::string_view YamlName(lpd::v1::Criterion value);
absl::string_view YamlName(lpd::v1::PruneUnit value);
absl::string_view YamlName(lpd::v1::Precision value);
absl::string_view YamlName(lpd::v1::Device value);

}  // namespace lpd::job

#endif  // LPD_JOB_SPEC_H_
