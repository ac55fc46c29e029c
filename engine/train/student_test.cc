#include "engine/train/student.h"

#include <torch/torch.h>

#include <memory>
#include <optional>
#include <set>
#include <string>

#include "engine/model/golden_test_support.h"
#include "engine/model/model_loader.h"
#include "engine/train/distill.h"
#include "gtest/gtest.h"
#include "storage/local_object_store.h"
#include "testing/temp_folder.h"

namespace lpd::engine {
namespace {

const std::string kGolden = testing::GoldenDir("tiny-sd15");
const std::set<std::string> kRemoved = {"down_blocks.0.resnets.1",
                                        "up_blocks.1.attentions.1"};

UNet2DConditionModel Teacher() {
  LoadModelOptions options;
  options.dtype = torch::kFloat32;
  auto model = LoadModel(kGolden, options);
  EXPECT_TRUE(model.ok()) << model.status();
  return *model;
}

// The reference inputs with a fixed random target, every step.
BatchSource ReferenceBatches() {
  TrainingBatch batch;
  batch.noised = testing::InputsFrom(
      testing::ReadVectors(kGolden + "/vectors.safetensors"));
  torch::manual_seed(3);
  batch.target = torch::randn_like(batch.noised.sample);
  return [batch](int64_t) -> absl::StatusOr<TrainingBatch> { return batch; };
}

class StudentCheckpointTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = storage::LocalObjectStore::Create(temp_.path());
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = std::move(*store);
  }

  test::TempFolder temp_{"student_test_"};
  std::unique_ptr<storage::LocalObjectStore> store_;
  UNet2DConditionModel teacher_ = Teacher();
};

TEST_F(StudentCheckpointTest, NoCheckpointLeavesTheStudentAsBuilt) {
  auto student = MakeStudent(*teacher_, kRemoved);
  ASSERT_TRUE(student.ok()) << student.status();
  const torch::Tensor before =
      (*student)->named_parameters()["conv_in.weight"].clone();
  auto step = LoadLatestStudentWeights(*store_, "job/", **student);
  ASSERT_TRUE(step.ok()) << step.status();
  EXPECT_FALSE(step->has_value());
  EXPECT_TRUE(
      torch::equal((*student)->named_parameters()["conv_in.weight"], before));
}

TEST_F(StudentCheckpointTest, LoadsTheTrainedWeightsWithoutTheOptimizer) {
  DistillTrainerOptions options;
  options.learning_rate = 1e-3;
  options.seed = 5;
  auto trainer = DistillTrainer::Create(teacher_, kRemoved, options);
  ASSERT_TRUE(trainer.ok()) << trainer.status();
  CheckpointTarget target{store_.get(), "job/", 0};
  ASSERT_TRUE((*trainer)->Train(2, ReferenceBatches(), nullptr, target).ok());
  // The optimizer state is never read: spoil it (same size, so the
  // checkpoint still counts as complete; reading it would fail its checksum).
  const std::string optimizer =
      "job/" + job::CheckpointDir(2) + std::string(job::kOptimizerStateName);
  auto state = store_->Get(optimizer);
  ASSERT_TRUE(state.ok()) << state.status();
  ASSERT_TRUE(store_->Put(optimizer, std::string(state->size(), 'x')).ok());

  auto student = MakeStudent(*teacher_, kRemoved);
  ASSERT_TRUE(student.ok()) << student.status();
  auto step = LoadLatestStudentWeights(*store_, "job/", **student);
  ASSERT_TRUE(step.ok()) << step.status();
  ASSERT_TRUE(step->has_value());
  EXPECT_EQ(**step, 2);
  auto trained = (*trainer)->student()->named_parameters();
  int compared = 0;
  for (const auto& item : (*student)->named_parameters()) {
    ASSERT_TRUE(torch::equal(item.value(), trained[item.key()])) << item.key();
    ++compared;
  }
  EXPECT_EQ(compared, static_cast<int>(trained.size()));
  // Training changed the weights: the student is not the pruned teacher.
  auto fresh = MakeStudent(*teacher_, kRemoved);
  ASSERT_TRUE(fresh.ok());
  EXPECT_FALSE(torch::equal((*fresh)->named_parameters()["conv_in.weight"],
                            (*student)->named_parameters()["conv_in.weight"]));

  // A student of other units is refused, and left unchanged.
  auto other = MakeStudent(*teacher_, {"down_blocks.0.resnets.1"});
  ASSERT_TRUE(other.ok());
  auto refused = LoadLatestStudentWeights(*store_, "job/", **other);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition)
      << refused.status();
}

}  // namespace
}  // namespace lpd::engine
