#include "studies/quality/shapes_dataset.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <string>

#include "engine/data/dataset.h"
#include "engine/formats/unet_config.h"

namespace lpd::engine {
namespace {

namespace fs = std::filesystem;

ShapesDatasetOptions Options(int64_t n, uint64_t seed) {
  ShapesDatasetOptions o;
  o.num_samples = n;
  o.seed = seed;
  o.embedding_dim = 64;
  return o;
}

TEST(ShapesDatasetTest, SameSeedGivesSameBytes) {
  auto a = GenerateShapesData(Options(64, 7));
  auto b = GenerateShapesData(Options(64, 7));
  auto c = GenerateShapesData(Options(64, 8));
  ASSERT_TRUE(a.ok() && b.ok() && c.ok());
  EXPECT_TRUE(torch::equal(a->latents, b->latents));
  EXPECT_TRUE(torch::equal(a->tokens, b->tokens));
  EXPECT_TRUE(torch::equal(a->encoder_hidden_states, b->encoder_hidden_states));
  EXPECT_FALSE(torch::equal(a->latents, c->latents));
  EXPECT_EQ(a->latents.sizes(), (std::vector<int64_t>{64, 4, 32, 32}));
  EXPECT_EQ(a->encoder_hidden_states.sizes(),
            (std::vector<int64_t>{64, kShapesSeqLen, 64}));
  EXPECT_LE(a->latents.max().item<float>(), 1.0f);
  EXPECT_GE(a->latents.min().item<float>(), -1.0f);
}

TEST(ShapesDatasetTest, PixelsShowTheSceneAttributes) {
  ShapesDatasetOptions o = Options(300, 3);
  const auto scenes = DrawScenes(o);
  int two = 0;
  for (const auto& scene : scenes) {
    ASSERT_GE(scene.size(), 1u);
    ASSERT_LE(scene.size(), 2u);
    two += scene.size() == 2;
    const torch::Tensor img = RenderScene(scene);
    auto a = img.accessor<float, 3>();
    bool occupied[kQuadrants] = {false, false, false, false};
    for (const ShapeSpec& s : scene) {
      occupied[s.quadrant] = true;
      // The centre lies in the shape's quadrant and is fully covered with
      // the shape's colour.
      const int x = static_cast<int>(std::floor(s.cx));
      const int y = static_cast<int>(std::floor(s.cy));
      EXPECT_EQ((y >= 16) * 2 + (x >= 16), s.quadrant);
      const auto& rgb = ShapeColourRgb()[s.colour];
      for (int ch = 0; ch < 3; ++ch) {
        EXPECT_FLOAT_EQ(a[ch][y][x], 2 * rgb[ch] - 1) << ch;
      }
      EXPECT_FLOAT_EQ(a[3][y][x], 1.0f);
    }
    // Quadrants without a shape are background; the mask's area grows with
    // size.
    for (int q = 0; q < kQuadrants; ++q) {
      const torch::Tensor quad =
          img.narrow(1, (q / 2) * 16, 16).narrow(2, (q % 2) * 16, 16);
      const double area = ((quad[3] + 1) / 2).sum().item<double>();
      if (!occupied[q]) {
        EXPECT_EQ(area, 0.0) << q;
      } else {
        for (const ShapeSpec& s : scene) {
          if (s.quadrant != q) continue;
          if (s.size == 0) {
            EXPECT_LT(area, 60.0);
          } else {
            EXPECT_GT(area, 60.0);
          }
        }
      }
    }
    // The tokens' attributes are the scene's.
    const std::vector<int64_t> tokens = SceneTokens(scene);
    auto attrs = AttributesFromTokens(torch::tensor(tokens).view({1, -1}));
    ASSERT_TRUE(attrs.ok()) << attrs.status();
    for (const ShapeSpec& s : scene) {
      EXPECT_EQ(attrs->present[0][s.quadrant].item<int64_t>(), 1);
      EXPECT_EQ(attrs->kind[0][s.quadrant].item<int64_t>(), s.kind);
      EXPECT_EQ(attrs->colour[0][s.quadrant].item<int64_t>(), s.colour);
      EXPECT_EQ(attrs->size[0][s.quadrant].item<int64_t>(), s.size);
    }
    EXPECT_EQ(attrs->present.sum().item<int64_t>(),
              static_cast<int64_t>(scene.size()));
  }
  EXPECT_GT(two, 100);
  EXPECT_LT(two, 200);
}

TEST(ShapesDatasetTest, KindsDifferInShape) {
  // One large shape of each kind at the same place: four different masks.
  std::vector<torch::Tensor> masks;
  for (int kind = 0; kind < kShapeKinds; ++kind) {
    ShapeSpec s{kind, 0, 1, 0, 8.0, 8.0};
    masks.push_back(RenderScene({s})[3]);
  }
  for (int i = 0; i < kShapeKinds; ++i) {
    for (int j = i + 1; j < kShapeKinds; ++j) {
      EXPECT_GT((masks[i] - masks[j]).abs().sum().item<float>(), 10.0f)
          << ShapeKindNames()[i] << " vs " << ShapeKindNames()[j];
    }
  }
}

TEST(ShapesDatasetTest, TokensDetermineTheEmbedding) {
  auto encoder = ShapesTextEncoder::Create(64, 5);
  auto other = ShapesTextEncoder::Create(64, 6);
  ASSERT_TRUE(encoder.ok() && other.ok());
  // red small square top-left + blue large circle bottom-right.
  torch::Tensor t =
      torch::tensor({kFirstKindToken + 0, kFirstColourToken + 0,
                     kFirstSizeToken + 0, kFirstPositionToken + 0,
                     kFirstKindToken + 1, kFirstColourToken + 2,
                     kFirstSizeToken + 1, kFirstPositionToken + 3})
          .view({1, -1});
  auto e1 = encoder->Embed(t);
  auto e2 = encoder->Embed(t.clone());
  auto e3 = other->Embed(t);
  ASSERT_TRUE(e1.ok() && e2.ok() && e3.ok());
  EXPECT_TRUE(torch::equal(*e1, *e2));
  EXPECT_FALSE(torch::allclose(*e1, *e3));
  // Changing one colour changes only that slot.
  torch::Tensor t2 = t.clone();
  t2[0][5] = kFirstColourToken + 4;
  auto e4 = encoder->Embed(t2);
  ASSERT_TRUE(e4.ok());
  const torch::Tensor changed =
      ((*e4 - *e1).abs().sum(2) > 0).view({-1}).to(torch::kInt64);
  EXPECT_TRUE(torch::equal(
      changed, torch::tensor({0, 0, 0, 0, 0, 1, 0, 0}, torch::kInt64)));
  // Changing a position changes every token of that shape (context).
  torch::Tensor t3 = t.clone();
  t3[0][7] = kFirstPositionToken + 2;
  auto e5 = encoder->Embed(t3);
  ASSERT_TRUE(e5.ok());
  const torch::Tensor moved =
      ((*e5 - *e1).abs().sum(2) > 0).view({-1}).to(torch::kInt64);
  EXPECT_TRUE(torch::equal(
      moved, torch::tensor({0, 0, 0, 0, 1, 1, 1, 1}, torch::kInt64)));
  // The empty prompt is the all-pad sequence, and differs from any prompt.
  auto pad = encoder->Embed(torch::zeros({2, kShapesSeqLen}, torch::kInt64));
  ASSERT_TRUE(pad.ok());
  EXPECT_TRUE(torch::equal(*pad, encoder->Unconditional(2)));
  EXPECT_FALSE(torch::allclose(pad->narrow(0, 0, 1), *e1));
  EXPECT_EQ(PromptText(std::vector<int64_t>(t.data_ptr<int64_t>(),
                                            t.data_ptr<int64_t>() + 8)),
            "small red square top-left, large blue circle bottom-right");
}

TEST(ShapesDatasetTest, RejectsMalformedTokens) {
  auto encoder = ShapesTextEncoder::Create(8, 0);
  ASSERT_TRUE(encoder.ok());
  // Colour where the kind belongs.
  torch::Tensor bad = torch::zeros({1, kShapesSeqLen}, torch::kInt64);
  bad[0][0] = kFirstColourToken;
  EXPECT_EQ(encoder->Embed(bad).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Two shapes in one quadrant.
  torch::Tensor twice =
      torch::tensor({1, 5, 11, 13, 2, 6, 12, 13}).view({1, -1});
  EXPECT_EQ(AttributesFromTokens(twice).status().code(),
            absl::StatusCode::kInvalidArgument);
  // A shape after padding.
  torch::Tensor late = torch::tensor({0, 0, 0, 0, 2, 6, 12, 13}).view({1, -1});
  EXPECT_EQ(encoder->Embed(late).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Wrong length.
  EXPECT_EQ(encoder->Embed(torch::zeros({1, 7}, torch::kInt64)).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(ShapesDatasetTest, WritesTheProjectDatasetFormat) {
  auto data = GenerateShapesData(Options(20, 1));
  ASSERT_TRUE(data.ok());
  const std::string dir =
      (fs::temp_directory_path() /
       ("shapes_dataset_test_" + std::to_string(::getpid())))
          .string();
  fs::remove_all(dir);
  auto manifest = WriteShapesDataset(*data, dir, /*shard_size=*/8);
  ASSERT_TRUE(manifest.ok()) << manifest.status();
  EXPECT_EQ(manifest->shards.size(), 3u);
  auto dataset = Dataset::Open(dir);
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  auto config =
      LoadUNetConfig(std::string(LPD_CONFIGS_DIR) + "/study-sd15-small");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_TRUE((*dataset)->Validate(*config).ok());
  const std::vector<int64_t> idx = {0, 9, 19};
  auto batch = (*dataset)->GetSamples(idx);
  ASSERT_TRUE(batch.ok()) << batch.status();
  const torch::Tensor want = data->latents.index_select(0, torch::tensor(idx));
  EXPECT_TRUE(torch::equal(batch->latents, want));
  auto attrs = ReadShapesAttributes(dir);
  ASSERT_TRUE(attrs.ok()) << attrs.status();
  EXPECT_TRUE(torch::equal(attrs->tokens, data->tokens));
  EXPECT_TRUE(torch::equal(attrs->attributes.colour, data->attributes.colour));
  EXPECT_EQ(WriteShapesDataset(*data, dir).status().code(),
            absl::StatusCode::kAlreadyExists);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace lpd::engine
