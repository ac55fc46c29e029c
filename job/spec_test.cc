#include "job/spec.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace lpd::job {
namespace {

using ::google::protobuf::util::MessageDifferencer;
using ::lpd::v1::CompressionJob;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::StartsWith;

// Lines 1-10 of most documents below; tests append fields of `spec` from
// line 11 on, so their positions are known.
constexpr absl::string_view kHeader = R"(apiVersion: lpd/v1
kind: CompressionJob
metadata:
  name: tiny
spec:
  model:
    uri: file:///models/tiny/
  data:
    train: {uri: "file:///data/tiny/"}
  output: {uri: "file:///out/tiny/"}
)";

// DESIGN §3.1, verbatim.
constexpr absl::string_view kDesignExample = R"(apiVersion: lpd/v1
kind: CompressionJob
metadata: {name: sdxl-half}
spec:
  model:
    uri: s3://models/sdxl-base/unet/
    prediction_type: epsilon        # or v_prediction; default: the scheduler
                                    # config beside the U-Net folder, else epsilon
  data:
    train: {uri: s3://data/aesthetic-encoded/}
    calibration_samples: 256        # taken from train, fixed by seed
    eval_samples: 512               # held out from train
  prune:
    target_ratio: 0.5               # share of U-Net parameters removed
    criterion: output_loss          # output_loss | magnitude | random | handcrafted
    units: [resnet, transformer_block]
  distill:
    steps: 20000
    batch_size: 16
    learning_rate: 5.0e-5
    loss: {task: 1.0, output_kd: 1.0, feature_kd: 1.0, normalize_features: true}
    precision: bf16
    checkpoint_every: 500
  output: {uri: s3://artifacts/compressed/}
  seed: 42
)";

std::string Job(absl::string_view spec_fields) {
  return absl::StrCat(kHeader, spec_fields);
}

// kHeader with `from` (a unique substring) replaced.
std::string HeaderWith(absl::string_view from, absl::string_view to) {
  return absl::StrReplaceAll(kHeader, {{from, to}});
}

// The message of a spec that must be rejected as INVALID_ARGUMENT.
std::string ErrorOf(absl::string_view yaml) {
  const auto job = ParseJobSpecYaml(yaml, "job.yaml");
  EXPECT_FALSE(job.ok()) << JobSpecToYaml(*job);
  if (job.ok()) return "";
  EXPECT_EQ(job.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(job.status().message());
}

CompressionJob ParseOk(absl::string_view yaml) {
  auto job = ParseJobSpecYaml(yaml, "job.yaml");
  EXPECT_TRUE(job.ok()) << job.status();
  return job.ok() ? *job : CompressionJob();
}

std::vector<std::filesystem::path> ExampleFiles() {
  std::vector<std::filesystem::path> files;
  for (const auto& entry :
       std::filesystem::directory_iterator(LPD_EXAMPLES_DIR)) {
    if (entry.path().extension() == ".yaml") files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end());
  return files;
}

// A job with only the required fields, built as a gRPC client would.
CompressionJob MinimalProto() {
  CompressionJob job;
  job.set_api_version("lpd/v1");
  job.set_kind("CompressionJob");
  job.mutable_metadata()->set_name("tiny");
  job.mutable_spec()->mutable_model()->set_uri("file:///models/tiny/");
  job.mutable_spec()->mutable_data()->mutable_train()->set_uri(
      "file:///data/tiny/");
  job.mutable_spec()->mutable_output()->set_uri("file:///out/tiny/");
  return job;
}

// --- Accepted specs -------------------------------------------------------

TEST(JobSpecTest, EveryExampleFileParses) {
  const auto files = ExampleFiles();
  ASSERT_GE(files.size(), 3u);
  for (const auto& file : files) {
    const auto job = LoadJobSpecFile(file.string());
    EXPECT_TRUE(job.ok()) << file << ": " << job.status();
  }
}

TEST(JobSpecTest, ExampleFilesSayWhatTheirNamesSay) {
  const auto tiny = LoadJobSpecFile(LPD_EXAMPLES_DIR "/tiny-cpu.yaml");
  ASSERT_TRUE(tiny.ok()) << tiny.status();
  EXPECT_EQ(tiny->spec().device(), lpd::v1::DEVICE_CPU);
  EXPECT_EQ(tiny->spec().distill().precision(), lpd::v1::PRECISION_FP32);

  const auto sd15 = LoadJobSpecFile(LPD_EXAMPLES_DIR "/sd15-third.yaml");
  ASSERT_TRUE(sd15.ok()) << sd15.status();
  EXPECT_THAT(
      sd15->spec().prune().units(),
      ElementsAre(lpd::v1::PRUNE_UNIT_RESNET, lpd::v1::PRUNE_UNIT_ATTENTION));

  const auto sdxl = LoadJobSpecFile(LPD_EXAMPLES_DIR "/sdxl-half.yaml");
  ASSERT_TRUE(sdxl.ok()) << sdxl.status();
  EXPECT_EQ(sdxl->spec().prune().target_ratio(), 0.5);
  EXPECT_THAT(sdxl->spec().prune().units(),
              ElementsAre(lpd::v1::PRUNE_UNIT_RESNET,
                          lpd::v1::PRUNE_UNIT_TRANSFORMER_BLOCK));
}

TEST(JobSpecTest, DesignExampleParsesWithItsValues) {
  const CompressionJob job = ParseOk(kDesignExample);
  EXPECT_EQ(job.metadata().name(), "sdxl-half");
  EXPECT_EQ(job.spec().model().uri(), "s3://models/sdxl-base/unet/");
  EXPECT_EQ(job.spec().model().prediction_type(),
            lpd::v1::PREDICTION_TYPE_EPSILON);
  EXPECT_EQ(job.spec().data().train().uri(), "s3://data/aesthetic-encoded/");
  EXPECT_EQ(job.spec().prune().criterion(), lpd::v1::CRITERION_OUTPUT_LOSS);
  EXPECT_EQ(job.spec().distill().learning_rate(), 5.0e-5);
  EXPECT_EQ(job.spec().distill().precision(), lpd::v1::PRECISION_BF16);
  EXPECT_EQ(job.spec().output().uri(), "s3://artifacts/compressed/");
  EXPECT_EQ(job.spec().seed(), 42u);
}

TEST(JobSpecTest, MissingFieldsGetTheDocumentedDefaults) {
  const CompressionJob job = ParseOk(kHeader);
  const auto& spec = job.spec();
  EXPECT_TRUE(job.metadata().labels().empty());
  EXPECT_EQ(spec.model().prediction_type(),
            lpd::v1::PREDICTION_TYPE_UNSPECIFIED);
  EXPECT_EQ(spec.data().calibration_samples(), 256);
  EXPECT_EQ(spec.data().eval_samples(), 512);
  EXPECT_EQ(spec.prune().target_ratio(), 0.5);
  EXPECT_EQ(spec.prune().criterion(), lpd::v1::CRITERION_OUTPUT_LOSS);
  EXPECT_THAT(spec.prune().units(),
              ElementsAre(lpd::v1::PRUNE_UNIT_RESNET,
                          lpd::v1::PRUNE_UNIT_TRANSFORMER_BLOCK));
  EXPECT_EQ(spec.prune().additivity_sets(), 8);
  EXPECT_EQ(spec.distill().steps(), 20000);
  EXPECT_EQ(spec.distill().batch_size(), 16);
  EXPECT_EQ(spec.distill().learning_rate(), 5e-5);
  EXPECT_EQ(spec.distill().weight_decay(), 0.01);
  EXPECT_EQ(spec.distill().grad_clip_norm(), 1.0);
  EXPECT_EQ(spec.distill().warmup_steps(), 0);
  EXPECT_EQ(spec.distill().loss().task(), 1.0);
  EXPECT_EQ(spec.distill().loss().output_kd(), 1.0);
  EXPECT_EQ(spec.distill().loss().feature_kd(), 1.0);
  EXPECT_TRUE(spec.distill().loss().normalize_features());
  EXPECT_EQ(spec.distill().precision(), lpd::v1::PRECISION_UNSPECIFIED);
  EXPECT_FALSE(spec.distill().master_weights_fp32());
  EXPECT_EQ(spec.distill().checkpoint_every(), 500);
  EXPECT_EQ(spec.seed(), 0u);
  EXPECT_EQ(spec.device(), lpd::v1::DEVICE_UNSPECIFIED);
}

TEST(JobSpecTest, ExplicitZerosAreNotReplacedByDefaults) {
  const CompressionJob job =
      ParseOk(Job("  distill:\n"
                  "    steps: 0\n"
                  "    grad_clip_norm: 0\n"
                  "    loss: {task: 0, normalize_features: false}\n"));
  EXPECT_EQ(job.spec().distill().steps(), 0);
  EXPECT_EQ(job.spec().distill().grad_clip_norm(), 0.0);
  EXPECT_EQ(job.spec().distill().loss().task(), 0.0);
  EXPECT_FALSE(job.spec().distill().loss().normalize_features());
}

TEST(JobSpecTest, ApplyDefaultsIsIdempotent) {
  CompressionJob once = MinimalProto();
  ApplyDefaults(&once);
  CompressionJob twice = once;
  ApplyDefaults(&twice);
  EXPECT_TRUE(MessageDifferencer::Equals(once, twice));
}

TEST(JobSpecTest, IntegralFloatNotationIsAcceptedForIntegers) {
  const CompressionJob job = ParseOk(Job("  distill:\n    steps: 2e4\n"));
  EXPECT_EQ(job.spec().distill().steps(), 20000);
}

TEST(JobSpecTest, IntegersAreAcceptedForFloatFields) {
  const CompressionJob job = ParseOk(Job("  distill:\n    loss: {task: 2}\n"));
  EXPECT_EQ(job.spec().distill().loss().task(), 2.0);
}

TEST(JobSpecTest, SeedTakesTheFullUnsigned64BitRange) {
  const CompressionJob job = ParseOk(Job("  seed: 18446744073709551615\n"));
  EXPECT_EQ(job.spec().seed(), 18446744073709551615u);
}

TEST(JobSpecTest, AutoSpellsTheUnspecifiedEnumValues) {
  const CompressionJob job =
      ParseOk(HeaderWith("    uri: file:///models/tiny/\n",
                         "    uri: file:///models/tiny/\n"
                         "    prediction_type: auto\n"));
  EXPECT_EQ(job.spec().model().prediction_type(),
            lpd::v1::PREDICTION_TYPE_UNSPECIFIED);
}

TEST(JobSpecTest, S3UrisAreAccepted) {
  const CompressionJob job =
      ParseOk(HeaderWith("file:///models/tiny/", "s3://models/sd-1.5/unet"));
  EXPECT_EQ(job.spec().model().uri(), "s3://models/sd-1.5/unet");
}

// --- YAML-level errors ----------------------------------------------------

TEST(JobSpecTest, SyntaxErrorNamesLineAndColumn) {
  EXPECT_EQ(ErrorOf("apiVersion: [lpd/v1\nkind: CompressionJob\n"),
            "job.yaml:2:5: invalid YAML: end of sequence flow not found");
}

TEST(JobSpecTest, EmptyDocumentIsRejected) {
  EXPECT_EQ(ErrorOf("# nothing here\n"),
            "job.yaml: empty document: expected a CompressionJob "
            "(apiVersion, kind, metadata, spec)");
}

TEST(JobSpecTest, SecondDocumentIsRejected) {
  EXPECT_EQ(ErrorOf(absl::StrCat(kHeader, "---\nkind: CompressionJob\n")),
            "job.yaml:12:1: expected one YAML document, found a second");
}

TEST(JobSpecTest, TopLevelSequenceIsRejected) {
  EXPECT_EQ(ErrorOf("- apiVersion\n- kind\n"),
            "job.yaml:1:1: expected a mapping with apiVersion, kind, "
            "metadata, spec; got a sequence");
}

TEST(JobSpecTest, OversizedInputIsRejectedBeforeParsing) {
  const std::string huge(kMaxJobSpecBytes + 1, '#');
  EXPECT_EQ(ErrorOf(huge),
            absl::StrCat("job.yaml: job spec is ", kMaxJobSpecBytes + 1,
                         " bytes; the limit is ", kMaxJobSpecBytes));
}

TEST(JobSpecTest, DuplicateKeyIsRejectedWithBothPositions) {
  EXPECT_EQ(ErrorOf(Job("  distill:\n    steps: 1\n    steps: 2\n")),
            "job.yaml:13:5: spec.distill.steps: duplicate key (first at line "
            "12, column 5)");
}

TEST(JobSpecTest, DuplicateSectionIsRejected) {
  EXPECT_EQ(ErrorOf(Job("  model: {uri: \"file:///models/other/\"}\n")),
            "job.yaml:11:3: spec.model: duplicate key (first at line 6, "
            "column 3)");
}

TEST(JobSpecTest, UnknownFieldSuggestsTheClosestName) {
  EXPECT_EQ(ErrorOf(Job("  distill:\n    stpes: 100\n")),
            "job.yaml:12:5: spec.distill.stpes: unknown field (did you mean "
            "\"steps\"?)");
}

TEST(JobSpecTest, UnknownFieldSuggestsDespiteCaseAndSeparators) {
  EXPECT_EQ(
      ErrorOf(absl::StrReplaceAll(kHeader, {{"apiVersion", "api_version"}})),
      "job.yaml:1:1: api_version: unknown field (did you mean "
      "\"apiVersion\"?)\n"
      "job.yaml:1:1: apiVersion: required (\"lpd/v1\")");
}

TEST(JobSpecTest, UnknownFieldFarFromAnyNameListsTheKnownFields) {
  EXPECT_EQ(ErrorOf(Job("  distill:\n    epochs: 3\n")),
            "job.yaml:12:5: spec.distill.epochs: unknown field; known "
            "fields: steps, batch_size, learning_rate, weight_decay, "
            "grad_clip_norm, warmup_steps, loss, precision, "
            "master_weights_fp32, checkpoint_every, gpus");
}

TEST(JobSpecTest, WrongTypeNamesPathPositionAndValue) {
  EXPECT_EQ(ErrorOf(Job("  distill:\n    steps: many\n")),
            "job.yaml:12:12: spec.distill.steps: expected an integer, got "
            "\"many\"");
}

TEST(JobSpecTest, MappingWhereScalarExpectedIsRejected) {
  EXPECT_EQ(ErrorOf(Job("  distill:\n    batch_size: {per_gpu: 4}\n")),
            "job.yaml:12:17: spec.distill.batch_size: expected an integer, "
            "got a mapping");
}

TEST(JobSpecTest, ScalarWhereMappingExpectedIsRejected) {
  EXPECT_EQ(ErrorOf(Job("  distill: fast\n")),
            "job.yaml:11:12: spec.distill: expected a mapping with steps, "
            "batch_size, learning_rate, weight_decay, grad_clip_norm, "
            "warmup_steps, loss, precision, master_weights_fp32, "
            "checkpoint_every, gpus; got \"fast\"");
}

TEST(JobSpecTest, FractionalIntegerIsRejected) {
  EXPECT_EQ(ErrorOf(Job("  distill:\n    steps: 1.5\n")),
            "job.yaml:12:12: spec.distill.steps: expected an integer, got 1.5");
}

TEST(JobSpecTest, IntegerBeyondItsTypeIsRejected) {
  EXPECT_EQ(ErrorOf(Job("  distill:\n    steps: 1e20\n")),
            "job.yaml:12:12: spec.distill.steps: must be <= 2147483647, got "
            "1e20");
}

TEST(JobSpecTest, NegativeSeedIsRejected) {
  EXPECT_EQ(ErrorOf(Job("  seed: -1\n")),
            "job.yaml:11:9: spec.seed: must be >= 0, got -1");
}

TEST(JobSpecTest, NumberWrittenAsStringIsRejected) {
  EXPECT_EQ(ErrorOf(Job("  distill:\n    batch_size: \"16\"\n")),
            "job.yaml:12:17: spec.distill.batch_size: expected an integer, "
            "got \"16\" (a quoted string: write numbers without quotes)");
}

TEST(JobSpecTest, FloatWrittenAsStringIsRejected) {
  EXPECT_EQ(ErrorOf(Job("  prune:\n    target_ratio: '0.5'\n")),
            "job.yaml:12:19: spec.prune.target_ratio: expected a number, got "
            "\"0.5\" (a quoted string: write numbers without quotes)");
}

TEST(JobSpecTest, BooleanWrittenAsStringIsRejected) {
  EXPECT_EQ(ErrorOf(Job("  distill:\n    master_weights_fp32: \"true\"\n")),
            "job.yaml:12:26: spec.distill.master_weights_fp32: expected true "
            "or false, got \"true\" (a quoted string: write true and false "
            "without quotes)");
}

TEST(JobSpecTest, YesIsNotABoolean) {
  EXPECT_EQ(ErrorOf(Job("  distill:\n    loss: {normalize_features: yes}\n")),
            "job.yaml:12:32: spec.distill.loss.normalize_features: expected "
            "true or false, got \"yes\"");
}

TEST(JobSpecTest, NullValueIsRejectedAtItsKey) {
  EXPECT_EQ(ErrorOf(Job("  distill:\n    steps:\n")),
            "job.yaml:12:5: spec.distill.steps: expected an integer, got null");
}

TEST(JobSpecTest, ExplicitTagIsRejected) {
  EXPECT_EQ(ErrorOf(Job("  distill:\n    steps: !!int 5\n")),
            "job.yaml:12:12: spec.distill.steps: unsupported YAML tag "
            "\"tag:yaml.org,2002:int\"; write the value without a tag");
}

TEST(JobSpecTest, EnumValuesAreCaseSensitiveAndListed) {
  EXPECT_EQ(ErrorOf(Job("  prune:\n    criterion: Magnitude\n")),
            "job.yaml:12:16: spec.prune.criterion: must be one of "
            "output_loss, magnitude, random, handcrafted; got \"Magnitude\" "
            "(did you mean \"magnitude\"?)");
}

TEST(JobSpecTest, ShortEnumValueIsNotMatchedToAnUnrelatedName) {
  EXPECT_EQ(ErrorOf(Job("  device: gpu\n")),
            "job.yaml:11:11: spec.device: must be one of auto, cpu, cuda; "
            "got \"gpu\"");
}

TEST(JobSpecTest, UnknownUnitIsNamedByIndex) {
  EXPECT_EQ(ErrorOf(Job("  prune:\n    units: [resnet, attn]\n")),
            "job.yaml:12:21: spec.prune.units[1]: must be one of resnet, "
            "attention, transformer_block; got \"attn\"");
}

TEST(JobSpecTest, EmptyUnitListIsRejected) {
  EXPECT_EQ(ErrorOf(Job("  prune:\n    units: []\n")),
            "job.yaml:12:12: spec.prune.units: must not be empty (leave it "
            "out for the default [resnet, transformer_block])");
}

TEST(JobSpecTest, UnitsAsAScalarAreRejected) {
  EXPECT_EQ(ErrorOf(Job("  prune:\n    units: resnet\n")),
            "job.yaml:12:12: spec.prune.units: expected a sequence such as "
            "[resnet, transformer_block], got \"resnet\"");
}

TEST(JobSpecTest, NullUnitIsPlacedAtTheSequence) {
  EXPECT_EQ(ErrorOf(Job("  prune:\n    units: [resnet, ~]\n")),
            "job.yaml:12:12: spec.prune.units[1]: must be one of resnet, "
            "attention, transformer_block; got null");
}

TEST(JobSpecTest, QuotedEnumValueIsAccepted) {
  EXPECT_EQ(ParseOk(Job("  device: \"cpu\"\n")).spec().device(),
            lpd::v1::DEVICE_CPU);
}

TEST(JobSpecTest, TagOnAMappingIsRejected) {
  EXPECT_EQ(ErrorOf(Job("  distill: !!map {steps: 1}\n")),
            "job.yaml:11:12: spec.distill: unsupported YAML tag "
            "\"tag:yaml.org,2002:map\"; write the value without a tag");
}

TEST(JobSpecTest, KeyThatIsNotANameIsRejected) {
  EXPECT_EQ(ErrorOf(Job("  distill: {[steps]: 1}\n")),
            "job.yaml:11:13: spec.distill: keys must be names, got a "
            "sequence");
}

TEST(JobSpecTest, UnknownKeyThatIsNotANameIsQuotedInItsPath) {
  EXPECT_EQ(ErrorOf(Job("  \"the seed\": 1\n")),
            "job.yaml:11:3: spec[\"the seed\"]: unknown field; known fields: "
            "model, data, prune, distill, output, seed, device");
}

TEST(JobSpecTest, LabelsAreReadAsStrings) {
  const CompressionJob job = ParseOk(
      HeaderWith("name: tiny", "name: tiny\n  labels: {team: ml, count: 3}"));
  EXPECT_EQ(job.metadata().labels().at("team"), "ml");
  EXPECT_EQ(job.metadata().labels().at("count"), "3");
}

TEST(JobSpecTest, LabelsAsAScalarAreRejected) {
  EXPECT_EQ(ErrorOf(HeaderWith("name: tiny", "name: tiny\n  labels: x")),
            "job.yaml:5:11: metadata.labels: expected a mapping of label "
            "names to values, got \"x\"");
}

TEST(JobSpecTest, LabelNameThatIsNotAStringIsRejected) {
  EXPECT_EQ(
      ErrorOf(HeaderWith("name: tiny", "name: tiny\n  labels: {[a]: x}")),
      "job.yaml:5:12: metadata.labels: label names must be strings, got a "
      "sequence");
}

TEST(JobSpecTest, DuplicateLabelIsRejected) {
  EXPECT_EQ(
      ErrorOf(HeaderWith("name: tiny", "name: tiny\n  labels: {a: x, a: y}")),
      "job.yaml:5:18: metadata.labels[\"a\"]: duplicate key (first at line "
      "5, column 12)");
}

TEST(JobSpecTest, LabelValueThatIsNotAStringIsRejected) {
  EXPECT_EQ(ErrorOf(HeaderWith("name: tiny", "name: tiny\n  labels: {a: [x]}")),
            "job.yaml:5:15: metadata.labels[\"a\"]: expected a string, got a "
            "sequence");
}

TEST(JobSpecTest, YamlProblemsAreCappedToo) {
  std::string fields = "  distill:\n";
  for (int i = 0; i < kMaxReportedErrors + 3; ++i) {
    absl::StrAppend(&fields, "    unknown_", i, ": 1\n");
  }
  EXPECT_THAT(ErrorOf(Job(fields)), HasSubstr("\n... and 3 more"));
}

// --- Values out of range (positions from the YAML) ------------------------

TEST(JobSpecTest, OutOfRangeValueNamesPathPositionAndValue) {
  EXPECT_EQ(ErrorOf(Job("  prune:\n    target_ratio: 1.5\n")),
            "job.yaml:12:19: spec.prune.target_ratio: must be in (0, 1), got "
            "1.5");
}

struct RangeCase {
  const char* name;
  std::string yaml;
  const char* error;
};

void PrintTo(const RangeCase& range_case, std::ostream* os) {
  *os << range_case.name;
}

class JobSpecRangeTest : public ::testing::TestWithParam<RangeCase> {};

TEST_P(JobSpecRangeTest, IsRejectedWithPathAndPosition) {
  EXPECT_EQ(ErrorOf(GetParam().yaml), GetParam().error);
}

INSTANTIATE_TEST_SUITE_P(
    Ranges, JobSpecRangeTest,
    ::testing::Values(
        RangeCase{"ZeroTargetRatio", Job("  prune:\n    target_ratio: 0\n"),
                  "job.yaml:12:19: spec.prune.target_ratio: must be in (0, "
                  "1), got 0.0"},
        RangeCase{"NegativeSteps", Job("  distill:\n    steps: -1\n"),
                  "job.yaml:12:12: spec.distill.steps: must be >= 0, got -1"},
        RangeCase{"ZeroBatchSize", Job("  distill:\n    batch_size: 0\n"),
                  "job.yaml:12:17: spec.distill.batch_size: must be >= 1, got "
                  "0"},
        RangeCase{"ZeroLearningRate", Job("  distill:\n    learning_rate: 0\n"),
                  "job.yaml:12:20: spec.distill.learning_rate: must be > 0, "
                  "got 0.0"},
        RangeCase{"NanLearningRate",
                  Job("  distill:\n    learning_rate: .nan\n"),
                  "job.yaml:12:20: spec.distill.learning_rate: must be a "
                  "finite number, got .nan"},
        RangeCase{"NegativeWeightDecay",
                  Job("  distill:\n    weight_decay: -0.1\n"),
                  "job.yaml:12:19: spec.distill.weight_decay: must be >= 0, "
                  "got -0.1"},
        RangeCase{"NegativeLossWeight",
                  Job("  distill:\n    loss: {task: -1}\n"),
                  "job.yaml:12:18: spec.distill.loss.task: must be >= 0, got "
                  "-1.0"},
        RangeCase{"AllLossWeightsZero",
                  Job("  distill:\n"
                      "    loss: {task: 0, output_kd: 0, feature_kd: 0}\n"),
                  "job.yaml:12:5: spec.distill.loss: task, output_kd and "
                  "feature_kd are all 0: at least one must be > 0"},
        RangeCase{"ZeroCheckpointEvery",
                  Job("  distill:\n    checkpoint_every: 0\n"),
                  "job.yaml:12:23: spec.distill.checkpoint_every: must be >= "
                  "1, got 0"},
        RangeCase{"ZeroGpus", Job("  distill:\n    gpus: 0\n"),
                  "job.yaml:12:11: spec.distill.gpus: must be in [1, 64], "
                  "got 0"},
        RangeCase{"BatchNotAMultipleOfGpus",
                  Job("  distill:\n    batch_size: 6\n    gpus: 4\n"),
                  "job.yaml:12:17: spec.distill.batch_size: must be a "
                  "multiple of spec.distill.gpus (4): each rank takes an "
                  "equal share of the batch, got 6"},
        RangeCase{"WarmupLongerThanTraining",
                  Job("  distill:\n    steps: 10\n    warmup_steps: 20\n"),
                  "job.yaml:13:19: spec.distill.warmup_steps: must be <= "
                  "spec.distill.steps (10), got 20"},
        RangeCase{"MasterWeightsWithFp32",
                  Job("  distill:\n"
                      "    precision: fp32\n"
                      "    master_weights_fp32: true\n"),
                  "job.yaml:13:26: spec.distill.master_weights_fp32: applies "
                  "only to precision bf16 (or auto); with fp32 the weights "
                  "are fp32 already"},
        RangeCase{"ZeroCalibrationSamples",
                  HeaderWith("file:///data/tiny/\"}\n",
                             "file:///data/tiny/\"}\n"
                             "    calibration_samples: 0\n"),
                  "job.yaml:10:26: spec.data.calibration_samples: must be >= "
                  "1, got 0"},
        RangeCase{"NegativeEvalSamples",
                  HeaderWith("file:///data/tiny/\"}\n",
                             "file:///data/tiny/\"}\n"
                             "    eval_samples: -1\n"),
                  "job.yaml:10:19: spec.data.eval_samples: must be >= 0, got "
                  "-1"},
        RangeCase{"NegativeAdditivitySets",
                  Job("  prune:\n"
                      "    additivity_sets: -1\n"),
                  "job.yaml:12:22: spec.prune.additivity_sets: must be >= 0, "
                  "got -1"},
        RangeCase{"TooManyAdditivitySets",
                  Job("  prune:\n"
                      "    additivity_sets: 65\n"),
                  "job.yaml:12:22: spec.prune.additivity_sets: must be <= 64, "
                  "got 65"},
        RangeCase{"AttentionWithTransformerBlock",
                  Job("  prune:\n"
                      "    units: [resnet, attention, transformer_block]\n"),
                  "job.yaml:12:12: spec.prune.units: attention and "
                  "transformer_block exclude each other (whole transformers "
                  "or single blocks): list one of them"},
        RangeCase{"UnitsWithoutResnet",
                  Job("  prune:\n    units: [attention]\n"),
                  "job.yaml:12:12: spec.prune.units: must include resnet"},
        RangeCase{"UnitsWithoutTransformerGranularity",
                  Job("  prune:\n    units: [resnet]\n"),
                  "job.yaml:12:12: spec.prune.units: must include attention "
                  "or transformer_block"},
        RangeCase{"DuplicateUnit",
                  Job("  prune:\n    units: [resnet, attention, resnet]\n"),
                  "job.yaml:12:32: spec.prune.units[2]: duplicate "
                  "\"resnet\""}),
    [](const ::testing::TestParamInfo<RangeCase>& info) {
      return info.param.name;
    });

// --- Envelope, names and URIs ----------------------------------------------

TEST(JobSpecTest, ApiVersionMustBeLpdV1) {
  EXPECT_EQ(ErrorOf(HeaderWith("lpd/v1", "lpd/v2")),
            "job.yaml:1:13: apiVersion: must be \"lpd/v1\", got \"lpd/v2\"");
}

TEST(JobSpecTest, KindMustBeCompressionJob) {
  EXPECT_EQ(ErrorOf(HeaderWith("kind: CompressionJob", "kind: Job")),
            "job.yaml:2:7: kind: must be \"CompressionJob\", got \"Job\"");
}

TEST(JobSpecTest, NameMustBeADnsLabel) {
  EXPECT_EQ(ErrorOf(HeaderWith("name: tiny", "name: Tiny_Job")),
            "job.yaml:4:9: metadata.name: must be a DNS label (at most 63 "
            "lowercase letters, digits and '-', starting and ending with a "
            "letter or digit), got \"Tiny_Job\"");
}

TEST(JobSpecTest, InvalidLabelKeyIsNamed) {
  EXPECT_EQ(
      ErrorOf(HeaderWith("name: tiny", "name: tiny\n  labels: {\"a key\": x}")),
      "job.yaml:5:12: metadata.labels[\"a key\"]: invalid label key "
      "\"a key\": at most 63 letters, digits, '.', '_' and '-', "
      "starting and ending with a letter or digit, optionally after a "
      "DNS prefix and '/'");
}

TEST(JobSpecTest, MissingRequiredFieldPointsAtItsParent) {
  EXPECT_EQ(ErrorOf(HeaderWith("    uri: file:///models/tiny/",
                               "    prediction_type: epsilon")),
            "job.yaml:6:3: spec.model.uri: required (a "
            "file:///absolute/path or s3://bucket/prefix URI)");
}

TEST(JobSpecTest, MissingNameIsRequired) {
  EXPECT_EQ(ErrorOf(HeaderWith("metadata:\n  name: tiny", "metadata: {}")),
            "job.yaml:3:1: metadata.name: required");
}

TEST(JobSpecTest, UnreadableValueIsNotAlsoReportedAsMissing) {
  EXPECT_EQ(ErrorOf(HeaderWith("uri: file:///models/tiny/", "uri: [a, b]")),
            "job.yaml:7:10: spec.model.uri: expected a string, got a "
            "sequence");
}

TEST(JobSpecTest, RelativePathIsRejectedAsUri) {
  EXPECT_EQ(ErrorOf(HeaderWith("file:///models/tiny/", "models/tiny")),
            "job.yaml:7:10: spec.model.uri: must be a file:///absolute/path "
            "or s3://bucket/prefix URI, got \"models/tiny\"");
}

TEST(JobSpecTest, AbsolutePathWithoutSchemeSuggestsFileUri) {
  EXPECT_EQ(ErrorOf(HeaderWith("file:///models/tiny/", "/models/tiny")),
            "job.yaml:7:10: spec.model.uri: must be a file:///absolute/path "
            "or s3://bucket/prefix URI, got \"/models/tiny\" (did you mean "
            "\"file:///models/tiny\"?)");
}

TEST(JobSpecTest, OtherSchemeIsRejected) {
  EXPECT_EQ(ErrorOf(HeaderWith("file:///models/tiny/", "gs://models/tiny")),
            "job.yaml:7:10: spec.model.uri: unsupported scheme \"gs\"; must "
            "be a file:///absolute/path or s3://bucket/prefix URI, got "
            "\"gs://models/tiny\"");
}

TEST(JobSpecTest, FileUriWithHostIsRejected) {
  EXPECT_EQ(ErrorOf(HeaderWith("file:///models/tiny/", "file://models/tiny")),
            "job.yaml:7:10: spec.model.uri: must be file:///absolute/path "
            "(three slashes: an empty host, then an absolute path), got "
            "\"file://models/tiny\"");
}

TEST(JobSpecTest, DotDotSegmentIsRejected) {
  EXPECT_EQ(
      ErrorOf(HeaderWith("file:///models/tiny/", "file:///models/../etc/")),
      "job.yaml:7:10: spec.model.uri: must not contain \".\" or \"..\" "
      "segments, got \"file:///models/../etc/\"");
}

TEST(JobSpecTest, InvalidS3BucketIsRejected) {
  EXPECT_EQ(ErrorOf(HeaderWith("file:///models/tiny/", "s3://My_Models/unet")),
            "job.yaml:7:10: spec.model.uri: bucket \"My_Models\" is not a "
            "valid S3 bucket name (3-63 lowercase letters, digits, '.' and "
            "'-', starting and ending with a letter or digit)");
}

TEST(JobSpecTest, OutputInsideModelFolderIsRejected) {
  EXPECT_EQ(ErrorOf(HeaderWith("file:///out/tiny/", "file:///models/tiny/out")),
            "job.yaml:10:17: spec.output.uri: must not be spec.model.uri or "
            "lie inside it, got \"file:///models/tiny/out\"");
}

TEST(JobSpecTest, EveryProblemIsReportedInDocumentOrder) {
  EXPECT_EQ(ErrorOf(Job("  prune:\n"
                        "    target_ratio: 1.5\n"
                        "  distill:\n"
                        "    stpes: 100\n"
                        "    batch_size: many\n")),
            "job.yaml:12:19: spec.prune.target_ratio: must be in (0, 1), got "
            "1.5\n"
            "job.yaml:14:5: spec.distill.stpes: unknown field (did you mean "
            "\"steps\"?)\n"
            "job.yaml:15:17: spec.distill.batch_size: expected an integer, "
            "got \"many\"");
}

TEST(JobSpecTest, EmptySourceGivesPositionsOnly) {
  const auto job = ParseJobSpecYaml(Job("  seed: x\n"), "");
  ASSERT_FALSE(job.ok());
  EXPECT_EQ(job.status().message(),
            "11:9: spec.seed: expected an integer, got \"x\"");
}

// --- Canonical YAML ---------------------------------------------------------

TEST(JobSpecTest, CanonicalYamlListsEveryDefault) {
  EXPECT_EQ(JobSpecToYaml(ParseOk(kHeader)), R"(apiVersion: lpd/v1
kind: CompressionJob
metadata:
  name: tiny
  labels: {}
spec:
  model:
    uri: file:///models/tiny/
    prediction_type: auto
  data:
    train:
      uri: file:///data/tiny/
    calibration_samples: 256
    eval_samples: 512
  prune:
    target_ratio: 0.5
    criterion: output_loss
    units: [resnet, transformer_block]
    additivity_sets: 8
  distill:
    steps: 20000
    batch_size: 16
    learning_rate: 5.0e-05
    weight_decay: 0.01
    grad_clip_norm: 1.0
    warmup_steps: 0
    loss:
      task: 1.0
      output_kd: 1.0
      feature_kd: 1.0
      normalize_features: true
    precision: auto
    master_weights_fp32: false
    checkpoint_every: 500
    gpus: 1
  output:
    uri: file:///out/tiny/
  seed: 0
  device: auto
)");
}

TEST(JobSpecTest, CanonicalYamlSortsAndQuotesLabels) {
  CompressionJob job = MinimalProto();
  auto& labels = *job.mutable_metadata()->mutable_labels();
  labels["team"] = "ml";
  labels["a/b"] = "true";
  labels["count"] = "";
  EXPECT_THAT(JobSpecToYaml(job), HasSubstr("metadata:\n"
                                            "  name: tiny\n"
                                            "  labels:\n"
                                            "    a/b: \"true\"\n"
                                            "    count: \"\"\n"
                                            "    team: ml\n"
                                            "spec:\n"));
}

TEST(JobSpecTest, CanonicalYamlWritesEnumNumbersOutsideTheEnum) {
  CompressionJob job = MinimalProto();
  job.mutable_spec()->set_device(static_cast<lpd::v1::Device>(7));
  job.mutable_spec()->mutable_prune()->add_units(lpd::v1::PRUNE_UNIT_RESNET);
  job.mutable_spec()->mutable_prune()->add_units(
      lpd::v1::PRUNE_UNIT_UNSPECIFIED);
  const std::string yaml = JobSpecToYaml(job);
  EXPECT_THAT(yaml, HasSubstr("    units: [resnet, 0]\n"));
  EXPECT_THAT(yaml, HasSubstr("  device: 7\n"));
}

TEST(JobSpecTest, ExamplesRoundTripThroughCanonicalYaml) {
  for (const auto& file : ExampleFiles()) {
    const auto first = LoadJobSpecFile(file.string());
    ASSERT_TRUE(first.ok()) << first.status();
    const std::string yaml = JobSpecToYaml(*first);
    const auto second = ParseJobSpecYaml(yaml, "canonical");
    ASSERT_TRUE(second.ok()) << second.status() << "\n" << yaml;
    EXPECT_TRUE(MessageDifferencer::Equals(*first, *second)) << file;
    EXPECT_EQ(JobSpecToYaml(*second), yaml) << file;
  }
}

TEST(JobSpecTest, StringsThatLookLikeOtherTypesRoundTrip) {
  CompressionJob job = MinimalProto();
  auto& labels = *job.mutable_metadata()->mutable_labels();
  labels["count"] = "123";
  labels["flag"] = "true";
  labels["nothing"] = "null";
  labels["empty"] = "";
  labels["example.com/ratio"] = "0.5";
  job.mutable_spec()->mutable_model()->set_uri(
      "file:///models/my model: \"v2\"/");
  ASSERT_TRUE(ValidateJobSpec(job).ok()) << ValidateJobSpec(job);
  const auto parsed = ParseJobSpecYaml(JobSpecToYaml(job), "canonical");
  ASSERT_TRUE(parsed.ok()) << parsed.status() << "\n" << JobSpecToYaml(job);
  ApplyDefaults(&job);
  EXPECT_TRUE(MessageDifferencer::Equals(job, *parsed))
      << JobSpecToYaml(*parsed);
}

TEST(JobSpecTest, DoublesRoundTripExactly) {
  CompressionJob job = MinimalProto();
  job.mutable_spec()->mutable_distill()->set_learning_rate(1e-4 / 3);
  job.mutable_spec()->mutable_prune()->set_target_ratio(0.1 + 0.2);
  const auto parsed = ParseJobSpecYaml(JobSpecToYaml(job), "canonical");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(parsed->spec().distill().learning_rate(), 1e-4 / 3);
  EXPECT_EQ(parsed->spec().prune().target_ratio(), 0.1 + 0.2);
}

// --- ValidateJobSpec on messages ---------------------------------------------

TEST(JobSpecTest, ValidateAcceptsAMessageWithOnlyRequiredFields) {
  EXPECT_TRUE(ValidateJobSpec(MinimalProto()).ok());
}

TEST(JobSpecTest, ValidateRejectsAValidMessageWithAnInvalidValue) {
  CompressionJob job = MinimalProto();
  job.mutable_spec()->mutable_prune()->set_target_ratio(1.5);
  const absl::Status status = ValidateJobSpec(job);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message(),
            "spec.prune.target_ratio: must be in (0, 1), got 1.5");
}

TEST(JobSpecTest, ValidateNamesEveryMissingRequiredField) {
  EXPECT_EQ(ValidateJobSpec(CompressionJob()).message(),
            "apiVersion: required (\"lpd/v1\")\n"
            "kind: required (\"CompressionJob\")\n"
            "metadata.name: required\n"
            "spec.model.uri: required (a file:///absolute/path or "
            "s3://bucket/prefix URI)\n"
            "spec.data.train.uri: required (a file:///absolute/path or "
            "s3://bucket/prefix URI)\n"
            "spec.output.uri: required (a file:///absolute/path or "
            "s3://bucket/prefix URI)");
}

TEST(JobSpecTest, ValidateRejectsEnumNumbersOutsideTheEnum) {
  CompressionJob job = MinimalProto();
  job.mutable_spec()->mutable_prune()->set_criterion(
      static_cast<lpd::v1::Criterion>(42));
  EXPECT_EQ(ValidateJobSpec(job).message(),
            "spec.prune.criterion: unknown value 42");
}

TEST(JobSpecTest, ValidateRejectsUnspecifiedUnitInTheList) {
  CompressionJob job = MinimalProto();
  job.mutable_spec()->mutable_prune()->add_units(lpd::v1::PRUNE_UNIT_RESNET);
  job.mutable_spec()->mutable_prune()->add_units(
      lpd::v1::PRUNE_UNIT_UNSPECIFIED);
  EXPECT_EQ(ValidateJobSpec(job).message(),
            "spec.prune.units[1]: unknown value 0");
}

TEST(JobSpecTest, ValidateCapsTheNumberOfReportedProblems) {
  CompressionJob job = MinimalProto();
  for (int i = 0; i < kMaxReportedErrors + 5; ++i) {
    (*job.mutable_metadata()->mutable_labels())[absl::StrCat("bad key ", i)] =
        "x";
  }
  const std::string message(ValidateJobSpec(job).message());
  EXPECT_THAT(message, HasSubstr("\n... and 5 more"));
}

// --- Files and names ------------------------------------------------------

TEST(JobSpecTest, MissingFileIsNotFound) {
  const auto job = LoadJobSpecFile("/nonexistent/job.yaml");
  EXPECT_EQ(job.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(job.status().message()),
              HasSubstr("/nonexistent/job.yaml"));
}

TEST(JobSpecTest, DirectoryIsRejected) {
  const auto job = LoadJobSpecFile(LPD_EXAMPLES_DIR);
  EXPECT_EQ(job.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(job.status().message()), HasSubstr("is a directory"));
}

TEST(JobSpecTest, FileErrorsNameTheFile) {
  const std::string path =
      (std::filesystem::path(::testing::TempDir()) / "bad-job.yaml").string();
  std::ofstream(path) << Job("  seed: x\n");
  const auto job = LoadJobSpecFile(path);
  std::remove(path.c_str());
  EXPECT_THAT(std::string(job.status().message()),
              StartsWith(absl::StrCat(path, ":11:9: ")));
}

TEST(JobSpecTest, YamlNamesAreTheSpecSpellings) {
  EXPECT_EQ(YamlName(lpd::v1::PRUNE_UNIT_TRANSFORMER_BLOCK),
            "transformer_block");
  EXPECT_EQ(YamlName(lpd::v1::PREDICTION_TYPE_V_PREDICTION), "v_prediction");
  EXPECT_EQ(YamlName(lpd::v1::PRECISION_UNSPECIFIED), "auto");
  EXPECT_EQ(YamlName(static_cast<lpd::v1::Criterion>(42)), "");
}

TEST(JobSpecTest, YamlNamesAreEnumNamesWithoutPrefixInLowerCase) {
  EXPECT_EQ(YamlName(lpd::v1::PREDICTION_TYPE_EPSILON), "epsilon");
  EXPECT_EQ(YamlName(lpd::v1::CRITERION_OUTPUT_LOSS), "output_loss");
  EXPECT_EQ(YamlName(lpd::v1::CRITERION_HANDCRAFTED), "handcrafted");
  EXPECT_EQ(YamlName(lpd::v1::PRUNE_UNIT_RESNET), "resnet");
  EXPECT_EQ(YamlName(lpd::v1::PRECISION_BF16), "bf16");
  EXPECT_EQ(YamlName(lpd::v1::DEVICE_CUDA), "cuda");
}

TEST(JobSpecTest, OnlyTheAutoEnumsSpellTheirUnspecifiedValue) {
  EXPECT_EQ(YamlName(lpd::v1::PREDICTION_TYPE_UNSPECIFIED), "auto");
  EXPECT_EQ(YamlName(lpd::v1::PRECISION_UNSPECIFIED), "auto");
  EXPECT_EQ(YamlName(lpd::v1::DEVICE_UNSPECIFIED), "auto");
  EXPECT_EQ(YamlName(lpd::v1::CRITERION_UNSPECIFIED), "");
  EXPECT_EQ(YamlName(lpd::v1::PRUNE_UNIT_UNSPECIFIED), "");
}

}  // namespace
}  // namespace lpd::job
