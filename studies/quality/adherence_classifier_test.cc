#include "studies/quality/adherence_classifier.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

namespace lpd::engine {
namespace {

QuadrantAttributes Attrs(std::vector<int64_t> present,
                         std::vector<int64_t> kind, std::vector<int64_t> colour,
                         std::vector<int64_t> size) {
  auto t = [](std::vector<int64_t> v) {
    return torch::tensor(v, torch::kInt64).view({-1, kQuadrants});
  };
  return {t(present), t(kind), t(colour), t(size)};
}

TEST(ScoreAdherenceTest, CountsAttributesAndExactSamples) {
  // Sample 0 asks for one shape in quadrant 1; sample 1 for shapes in 0 and 3.
  const QuadrantAttributes requested =
      Attrs({0, 1, 0, 0, /**/ 1, 0, 0, 1}, {0, 2, 0, 0, /**/ 1, 0, 0, 3},
            {0, 4, 0, 0, /**/ 5, 0, 0, 0}, {0, 1, 0, 0, /**/ 0, 0, 0, 1});
  // Sample 0 read exactly (plus nothing else); sample 1: quadrant 0 has the
  // wrong colour, quadrant 3 is read empty, and quadrant 2 holds an extra.
  const QuadrantAttributes read =
      Attrs({0, 1, 0, 0, /**/ 1, 0, 1, 0}, {0, 2, 0, 0, /**/ 1, 0, 2, 3},
            {0, 4, 0, 0, /**/ 4, 0, 0, 0}, {0, 1, 0, 0, /**/ 0, 0, 0, 1});
  auto s = ScoreAdherence(read, requested);
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_EQ(s->samples, 2);
  EXPECT_EQ(s->requested_shapes, 3);
  // Right: shape A 4/4; shape B 3/4 (colour wrong); shape C 0/4 (absent,
  // so kind and size do not count even though they match).
  EXPECT_DOUBLE_EQ(s->attribute_accuracy, 7.0 / 12);
  EXPECT_DOUBLE_EQ(s->position, 2.0 / 3);
  EXPECT_DOUBLE_EQ(s->colour, 1.0 / 3);
  EXPECT_DOUBLE_EQ(s->kind, 2.0 / 3);
  EXPECT_DOUBLE_EQ(s->exact_rate, 0.5);
  EXPECT_DOUBLE_EQ(s->extra_shape_rate, 0.5);
  QuadrantAttributes wrong = requested;
  wrong.kind = torch::zeros({3, 4}, torch::kInt64);
  EXPECT_FALSE(ScoreAdherence(wrong, requested).ok());
}

TEST(ShapesClassifierTest, LearnsTheGeneratorsAttributes) {
  torch::set_num_threads(1);
  ShapesDatasetOptions o;
  o.num_samples = 3000;
  o.seed = 1;
  auto train = GenerateShapesData(o);
  o.num_samples = 400;
  o.seed = 2;
  auto heldout = GenerateShapesData(o);
  ASSERT_TRUE(train.ok() && heldout.ok());
  ClassifierTrainOptions co;
  co.steps = 300;
  co.batch_size = 32;
  co.width = 8;
  co.learning_rate = 5e-3;
  auto model = TrainShapesClassifier(*train, co);
  ASSERT_TRUE(model.ok()) << model.status();
  auto read = ReadAttributes(**model, heldout->latents);
  ASSERT_TRUE(read.ok()) << read.status();
  auto acc = MeasureClassifierAccuracy(*read, heldout->attributes);
  ASSERT_TRUE(acc.ok());
  std::printf(
      "held-out accuracy: present %.3f kind %.3f colour %.3f size %.3f\n",
      acc->present, acc->kind, acc->colour, acc->size);
  // Chance: present ~0.6 (majority), kind 0.25, colour 0.17, size 0.5.
  EXPECT_GT(acc->present, 0.97);
  EXPECT_GT(acc->colour, 0.9);
  EXPECT_GT(acc->size, 0.85);
  EXPECT_GT(acc->kind, 0.5);  // 0.9+ with more steps (GPU run: 1.0)
  auto own = ScoreAdherence(*read, heldout->attributes);
  ASSERT_TRUE(own.ok());
  // Against other samples' prompts the same images score far lower.
  QuadrantAttributes shuffled = heldout->attributes;
  const torch::Tensor perm = torch::roll(torch::arange(400), 1);
  shuffled.present = shuffled.present.index_select(0, perm);
  shuffled.kind = shuffled.kind.index_select(0, perm);
  shuffled.colour = shuffled.colour.index_select(0, perm);
  shuffled.size = shuffled.size.index_select(0, perm);
  auto chance = ScoreAdherence(*read, shuffled);
  ASSERT_TRUE(chance.ok());
  EXPECT_GT(own->attribute_accuracy, 0.85);
  EXPECT_LT(chance->attribute_accuracy, 0.45);
  EXPECT_LT(chance->exact_rate, 0.05);
}

}  // namespace
}  // namespace lpd::engine
