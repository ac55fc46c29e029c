#include "engine/data/dataset.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <string>

#include "engine/core/tensor_io.h"
#include "engine/data/noise_schedule.h"
#include "engine/data/synthetic_dataset.h"
#include "engine/formats/unet_config.h"
#include "testing/temp_folder.h"

namespace lpd::engine {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

UNetConfig TinyConfig(const std::string& name) {
  auto config =
      LoadUNetConfig(std::string(LPD_TESTDATA_DIR) + "/unet-golden/" + name);
  EXPECT_TRUE(config.ok()) << config.status();
  return config.ok() ? *config : UNetConfig{};
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

void WriteText(const std::string& path, const std::string& text) {
  std::ofstream(path) << text;
}

class DatasetTest : public ::testing::Test {
 protected:
  void SetUp() override { dir_ = temp_.path(); }

  // A synthetic set of 10 samples in shards of 4 (4, 4, 2).
  std::string Write(const UNetConfig& config, const std::string& name,
                    int64_t samples = 10, int64_t shard_size = 4) {
    SyntheticDatasetOptions options;
    options.num_samples = samples;
    options.latent_size = 8;
    options.seq_len = 5;
    options.shard_size = shard_size;
    options.seed = 11;
    const std::string out = dir_ + "/" + name;
    auto manifest = WriteSyntheticDataset(config, options, out);
    EXPECT_TRUE(manifest.ok()) << manifest.status();
    return out;
  }

  test::TempFolder temp_{"dataset_test_"};
  std::string dir_;
};

TEST_F(DatasetTest, RoundTripSd15) {
  const UNetConfig config = TinyConfig("tiny-sd15");
  const std::string out = Write(config, "sd15");
  auto dataset = Dataset::Open(out);
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  EXPECT_TRUE((*dataset)->Validate(config).ok())
      << (*dataset)->Validate(config);
  EXPECT_EQ((*dataset)->size(), 10);
  EXPECT_FALSE((*dataset)->has_text_time());
  EXPECT_EQ((*dataset)->manifest().shards.size(), 3u);
  EXPECT_DOUBLE_EQ((*dataset)->manifest().vae_scaling_factor, 0.18215);

  // Samples come back in request order and equal the shard contents.
  const std::vector<int64_t> indices = {9, 0, 5, 5};
  auto batch = (*dataset)->GetSamples(indices);
  ASSERT_TRUE(batch.ok()) << batch.status();
  EXPECT_EQ(batch->latents.sizes(), (std::vector<int64_t>{4, 4, 8, 8}));
  EXPECT_EQ(batch->encoder_hidden_states.sizes(),
            (std::vector<int64_t>{4, 5, 48}));
  EXPECT_FALSE(batch->text_embeds.defined());
  EXPECT_FALSE(batch->time_ids.defined());
  auto shard2 = ReadAllTensors(out + "/shard-00002.safetensors");
  auto shard0 = ReadAllTensors(out + "/shard-00000.safetensors");
  auto shard1 = ReadAllTensors(out + "/shard-00001.safetensors");
  ASSERT_TRUE(shard0.ok() && shard1.ok() && shard2.ok());
  EXPECT_TRUE(torch::equal(batch->latents[0], shard2->at("latents")[1]));
  EXPECT_TRUE(torch::equal(batch->latents[1], shard0->at("latents")[0]));
  EXPECT_TRUE(torch::equal(batch->latents[2], shard1->at("latents")[1]));
  EXPECT_TRUE(torch::equal(batch->latents[3], batch->latents[2]));
  EXPECT_TRUE(torch::equal(batch->encoder_hidden_states[0],
                           shard2->at("encoder_hidden_states")[1]));
  // Roughly unit variance.
  const double std = shard0->at("latents").std().item<double>();
  EXPECT_GT(std, 0.6);
  EXPECT_LT(std, 1.4);

  // Conversion to another dtype.
  auto half = (*dataset)->GetSamples(indices, torch::kCPU, torch::kBFloat16);
  ASSERT_TRUE(half.ok());
  EXPECT_EQ(half->latents.scalar_type(), torch::kBFloat16);

  const std::vector<int64_t> bad = {10};
  EXPECT_EQ((*dataset)->GetSamples(bad).status().code(),
            absl::StatusCode::kOutOfRange);
}

TEST_F(DatasetTest, RoundTripSdxlWithTextTime) {
  const UNetConfig config = TinyConfig("tiny-sdxl");
  const std::string out = Write(config, "sdxl");
  auto dataset = Dataset::Open(out);
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  EXPECT_TRUE((*dataset)->Validate(config).ok())
      << (*dataset)->Validate(config);
  EXPECT_TRUE((*dataset)->has_text_time());
  EXPECT_DOUBLE_EQ((*dataset)->manifest().vae_scaling_factor, 0.13025);
  // 88 = 6 · 8 + 40.
  EXPECT_EQ((*dataset)->manifest().tensors.at("time_ids").shape,
            (std::vector<int64_t>{6}));
  EXPECT_EQ((*dataset)->manifest().tensors.at("text_embeds").shape,
            (std::vector<int64_t>{40}));
  const std::vector<int64_t> indices = {3, 4};
  auto batch = (*dataset)->GetSamples(indices);
  ASSERT_TRUE(batch.ok()) << batch.status();
  EXPECT_EQ(batch->text_embeds.sizes(), (std::vector<int64_t>{2, 40}));
  ASSERT_EQ(batch->time_ids.sizes(), (std::vector<int64_t>{2, 6}));
  // SDXL time ids: target size = 8 · latent size; original ≥ target.
  EXPECT_EQ(batch->time_ids[0][4].item<float>(), 64.0f);
  EXPECT_EQ(batch->time_ids[1][5].item<float>(), 64.0f);
  EXPECT_GE(batch->time_ids[0][0].item<float>(), 64.0f);
}

TEST_F(DatasetTest, GeneratorIsDeterministic) {
  const UNetConfig config = TinyConfig("tiny-sdxl");
  const std::string a = Write(config, "a");
  const std::string b = Write(config, "b");
  EXPECT_EQ(ReadText(a + "/dataset.json"), ReadText(b + "/dataset.json"));
  EXPECT_EQ(ReadText(a + "/shard-00001.safetensors"),
            ReadText(b + "/shard-00001.safetensors"));
  // A second write into the same folder is refused.
  SyntheticDatasetOptions options;
  EXPECT_EQ(WriteSyntheticDataset(config, options, a).status().code(),
            absl::StatusCode::kAlreadyExists);
}

TEST_F(DatasetTest, ReadsLazilyWithABoundedNumberOfMappedShards) {
  const UNetConfig config = TinyConfig("tiny-sd15");
  const std::string out = Write(config, "lazy");
  auto dataset = Dataset::Open(out, /*max_mapped_shards=*/2);
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  EXPECT_EQ((*dataset)->shard_opens(), 0);
  // A shard deleted after Open is never needed for indices of shard 0.
  fs::remove(out + "/shard-00002.safetensors");
  const std::vector<int64_t> first = {0, 3, 1};
  ASSERT_TRUE((*dataset)->GetSamples(first).ok());
  EXPECT_EQ((*dataset)->shard_opens(), 1);
  ASSERT_TRUE((*dataset)->GetSamples(first).ok());
  EXPECT_EQ((*dataset)->shard_opens(), 1);  // still mapped
  const std::vector<int64_t> second = {4};
  ASSERT_TRUE((*dataset)->GetSamples(second).ok());
  EXPECT_EQ((*dataset)->shard_opens(), 2);
  EXPECT_EQ((*dataset)->mapped_shards(), 2);
  // The deleted shard is reported when it is needed.
  const std::vector<int64_t> third = {8};
  auto missing = (*dataset)->GetSamples(third);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(),
              HasSubstr("dataset shard 2 (shard-00002.safetensors)"));
}

TEST_F(DatasetTest, LruEvictsTheLeastRecentlyUsedShard) {
  const UNetConfig config = TinyConfig("tiny-sd15");
  const std::string out = Write(config, "lru");
  auto dataset = Dataset::Open(out, /*max_mapped_shards=*/2);
  ASSERT_TRUE(dataset.ok());
  for (int64_t index : {0, 4, 0, 8, 0, 4}) {
    const std::vector<int64_t> one = {index};
    ASSERT_TRUE((*dataset)->GetSamples(one).ok());
    EXPECT_LE((*dataset)->mapped_shards(), 2);
  }
  // 0 (open), 4 (open), 0 (hit), 8 (open, evicts 4), 0 (hit), 4 (open).
  EXPECT_EQ((*dataset)->shard_opens(), 4);
}

TEST_F(DatasetTest, ShapeMismatchNamesShardAndTensor) {
  const UNetConfig config = TinyConfig("tiny-sd15");
  const std::string out = Write(config, "shape");
  auto tensors = ReadAllTensors(out + "/shard-00001.safetensors");
  ASSERT_TRUE(tensors.ok());
  (*tensors)["latents"] = torch::zeros({4, 4, 16, 16});
  ASSERT_TRUE(WriteTensors(out + "/shard-00001.safetensors", *tensors).ok());
  auto dataset = Dataset::Open(out);
  ASSERT_FALSE(dataset.ok());
  EXPECT_EQ(dataset.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(dataset.status().message(),
              HasSubstr("dataset shard 1 (shard-00001.safetensors): tensor "
                        "\"latents\" has shape [4,4,16,16], dataset.json says "
                        "[4,4,8,8]"));
}

TEST_F(DatasetTest, DtypeMismatchIsAnError) {
  const UNetConfig config = TinyConfig("tiny-sd15");
  const std::string out = Write(config, "dtype");
  auto tensors = ReadAllTensors(out + "/shard-00000.safetensors");
  ASSERT_TRUE(tensors.ok());
  (*tensors)["encoder_hidden_states"] =
      (*tensors)["encoder_hidden_states"].to(torch::kFloat16);
  ASSERT_TRUE(WriteTensors(out + "/shard-00000.safetensors", *tensors).ok());
  auto dataset = Dataset::Open(out);
  ASSERT_FALSE(dataset.ok());
  EXPECT_THAT(dataset.status().message(),
              HasSubstr("tensor \"encoder_hidden_states\" has dtype F16, "
                        "dataset.json says F32"));
}

TEST_F(DatasetTest, CountMismatchIsAnError) {
  const UNetConfig config = TinyConfig("tiny-sd15");
  const std::string out = Write(config, "count");
  std::string text = ReadText(out + "/dataset.json");
  const std::string from = "\"num_samples\": 10";
  ASSERT_NE(text.find(from), std::string::npos) << text;
  text.replace(text.find(from), from.size(), "\"num_samples\": 12");
  WriteText(out + "/dataset.json", text);
  auto dataset = Dataset::Open(out);
  ASSERT_FALSE(dataset.ok());
  EXPECT_THAT(dataset.status().message(),
              HasSubstr("shards hold 10 samples in all, num_samples says 12"));
}

TEST_F(DatasetTest, MissingShardIsAnError) {
  const UNetConfig config = TinyConfig("tiny-sd15");
  const std::string out = Write(config, "missing");
  fs::remove(out + "/shard-00002.safetensors");
  auto dataset = Dataset::Open(out);
  ASSERT_FALSE(dataset.ok());
  EXPECT_EQ(dataset.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(dataset.status().message(),
              HasSubstr("dataset shard 2 (shard-00002.safetensors)"));
}

TEST_F(DatasetTest, UnknownTensorNameIsAnError) {
  const UNetConfig config = TinyConfig("tiny-sd15");
  const std::string out = Write(config, "names");
  std::string text = ReadText(out + "/dataset.json");
  const std::string from = "\"latents\"";
  text.replace(text.find(from), from.size(), "\"latent\"");
  WriteText(out + "/dataset.json", text);
  auto dataset = Dataset::Open(out);
  ASSERT_FALSE(dataset.ok());
  EXPECT_THAT(dataset.status().message(),
              HasSubstr("unknown tensor \"latent\""));
}

TEST_F(DatasetTest, ShardWithAnExtraTensorIsAnError) {
  const UNetConfig config = TinyConfig("tiny-sd15");
  const std::string out = Write(config, "extra");
  auto tensors = ReadAllTensors(out + "/shard-00000.safetensors");
  ASSERT_TRUE(tensors.ok());
  (*tensors)["text_embeds"] = torch::zeros({4, 40});
  ASSERT_TRUE(WriteTensors(out + "/shard-00000.safetensors", *tensors).ok());
  auto dataset = Dataset::Open(out);
  ASSERT_FALSE(dataset.ok());
  EXPECT_THAT(
      dataset.status().message(),
      HasSubstr("tensor \"text_embeds\" is not listed in dataset.json"));
}

TEST_F(DatasetTest, TextTimeMissingForAnSdxlModel) {
  const std::string out = Write(TinyConfig("tiny-sd15"), "no-text-time");
  auto dataset = Dataset::Open(out);
  ASSERT_TRUE(dataset.ok()) << dataset.status();
  absl::Status status = (*dataset)->Validate(TinyConfig("tiny-sdxl"));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(status.message(), HasSubstr("text_time"));
}

TEST_F(DatasetTest, WrongChannelCountNamesTheModelsExpectation) {
  UNetConfig config = TinyConfig("tiny-sd15");
  const std::string out = Write(config, "channels");
  auto dataset = Dataset::Open(out);
  ASSERT_TRUE(dataset.ok());
  config.in_channels = 9;
  EXPECT_THAT((*dataset)->Validate(config).message(),
              HasSubstr("dataset shard 0 (shard-00000.safetensors): tensor "
                        "\"latents\" has shape [4,4,8,8], model expects 9 "
                        "channels"));
}

TEST_F(DatasetTest, OtherModelMismatches) {
  UNetConfig sdxl = TinyConfig("tiny-sdxl");
  const std::string out = Write(sdxl, "mismatch");
  auto dataset = Dataset::Open(out);
  ASSERT_TRUE(dataset.ok());
  UNetConfig config = sdxl;
  config.cross_attention_dim = 64;
  EXPECT_THAT((*dataset)->Validate(config).message(),
              HasSubstr("\"encoder_hidden_states\" has shape [4,5,48]"));
  config = sdxl;
  config.projection_class_embeddings_input_dim = 100;
  EXPECT_THAT((*dataset)->Validate(config).message(),
              HasSubstr("projection_class_embeddings_input_dim 100"));
  config = sdxl;
  config.down_block_types.resize(5);  // downsampling by 16 > 8
  EXPECT_THAT((*dataset)->Validate(config).message(),
              HasSubstr("divisible by 16"));
}

TEST(DatasetManifestTest, RoundTripsThroughJson) {
  DatasetManifest m;
  m.num_samples = 3;
  m.vae_scaling_factor = 0.13025;
  m.tensors["latents"] = {{4, 8, 8}, SafetensorsDtype::kBF16};
  m.tensors["encoder_hidden_states"] = {{7, 48}, SafetensorsDtype::kF32};
  m.shards = {{"a.safetensors", 2}, {"b.safetensors", 1}};
  auto parsed = ParseDatasetManifest(DatasetManifestToJson(m), "x");
  ASSERT_TRUE(parsed.ok()) << parsed.status();
  EXPECT_EQ(DatasetManifestToJson(*parsed), DatasetManifestToJson(m));
  m.shards[0].file = "../a.safetensors";
  EXPECT_THAT(
      ParseDatasetManifest(DatasetManifestToJson(m), "x").status().message(),
      HasSubstr("not a plain file name"));
}

TEST(SplitTest, DisjointCompleteAndDeterministic) {
  auto split = SplitDataset(100, 42, 10, 20);
  ASSERT_TRUE(split.ok()) << split.status();
  EXPECT_EQ(split->calibration.size(), 10u);
  EXPECT_EQ(split->eval.size(), 20u);
  EXPECT_EQ(split->train.size(), 70u);
  std::set<int64_t> all;
  for (const auto* list : {&split->calibration, &split->eval, &split->train}) {
    EXPECT_TRUE(std::is_sorted(list->begin(), list->end()));
    all.insert(list->begin(), list->end());
  }
  EXPECT_EQ(all.size(), 100u);
  EXPECT_EQ(*all.begin(), 0);
  EXPECT_EQ(*all.rbegin(), 99);

  auto again = SplitDataset(100, 42, 10, 20);
  EXPECT_EQ(again->calibration, split->calibration);
  EXPECT_EQ(again->eval, split->eval);
  EXPECT_EQ(again->train, split->train);
  auto other = SplitDataset(100, 43, 10, 20);
  EXPECT_NE(other->eval, split->eval);
  // Eval depends only on (seed, N, eval_samples).
  auto more_calibration = SplitDataset(100, 42, 30, 20);
  EXPECT_EQ(more_calibration->eval, split->eval);

  EXPECT_FALSE(SplitDataset(10, 1, 5, 5).ok());
  EXPECT_FALSE(SplitDataset(10, 1, -1, 0).ok());
}

TEST(BatchSamplerTest, DeterministicAndResumable) {
  auto split = SplitDataset(50, 7, 5, 5);
  ASSERT_TRUE(split.ok());
  auto a = BatchSampler::Create(split->train, 6, 99);
  auto b = BatchSampler::Create(split->train, 6, 99);
  ASSERT_TRUE(a.ok() && b.ok());
  // b "resumes" at step 17 without having seen earlier steps.
  EXPECT_EQ(b->BatchIndices(17), a->BatchIndices(17));
  for (int64_t step = 0; step < 30; ++step) {
    EXPECT_EQ(a->BatchIndices(step), b->BatchIndices(step)) << step;
  }
  EXPECT_EQ(a->BatchIndices(3), a->BatchIndices(3));
  // Steps visiting one epoch cover the train set exactly once: 40 samples,
  // batch 8 → steps 0..4 are epoch 0.
  auto c = BatchSampler::Create(split->train, 8, 5);
  std::multiset<int64_t> epoch0;
  for (int64_t step = 0; step < 5; ++step) {
    for (int64_t i : c->BatchIndices(step)) epoch0.insert(i);
  }
  EXPECT_EQ(std::vector<int64_t>(epoch0.begin(), epoch0.end()), split->train);
  EXPECT_EQ(c->EpochOf(5), 1);
  // Epochs are shuffled differently, and seeds matter.
  EXPECT_NE(c->BatchIndices(0), c->BatchIndices(5));
  auto d = BatchSampler::Create(split->train, 8, 6);
  EXPECT_NE(c->BatchIndices(0), d->BatchIndices(0));
  EXPECT_FALSE(BatchSampler::Create({}, 4, 1).ok());
  EXPECT_FALSE(BatchSampler::Create({1}, 0, 1).ok());
}

TEST(NoiseScheduleTest, MatchesDiffusersScaledLinear) {
  const NoiseSchedule s = NoiseSchedule::ScaledLinear();
  ASSERT_EQ(s.num_train_timesteps(), 1000);
  EXPECT_EQ(s.betas().scalar_type(), torch::kFloat32);
  EXPECT_NEAR(s.betas()[0].item<double>(), 0.00085, 1e-9);
  EXPECT_NEAR(s.betas()[999].item<double>(), 0.012, 1e-8);
  EXPECT_NEAR(s.alphas_cumprod()[0].item<double>(), 0.99915, 1e-7);
  // The exact float64 product is 0.00466009851 (float32 as diffusers:
  // 0.00466009602); sqrt(ᾱ_999) = 0.068265, the value the zero-terminal-SNR
  // paper quotes for SD. (0.0046812, sometimes quoted, is not this schedule.)
  EXPECT_NEAR(s.alphas_cumprod()[999].item<double>(), 0.00466009851, 1e-8);
  EXPECT_NEAR(std::sqrt(s.alphas_cumprod()[999].item<double>()), 0.068265,
              1e-6);
  // Monotone decreasing.
  EXPECT_TRUE(
      (s.alphas_cumprod().slice(0, 1) < s.alphas_cumprod().slice(0, 0, 999))
          .all()
          .item<bool>());
}

TEST(NoiseScheduleTest, AddNoiseAndVelocityIdentities) {
  const NoiseSchedule s = NoiseSchedule::ScaledLinear();
  torch::manual_seed(1);
  const torch::Tensor x0 = torch::randn({3, 4, 8, 8});
  const torch::Tensor eps = torch::randn({3, 4, 8, 8});
  const torch::Tensor t = torch::tensor({0, 500, 999}, torch::kLong);
  const torch::Tensor xt = s.AddNoise(x0, eps, t);
  const torch::Tensor v = s.Velocity(x0, eps, t);
  for (int i = 0; i < 3; ++i) {
    const double ab = s.alphas_cumprod()[t[i].item<int64_t>()].item<double>();
    const double a = std::sqrt(ab), b = std::sqrt(1 - ab);
    EXPECT_TRUE(torch::allclose(xt[i], a * x0[i] + b * eps[i], 1e-5, 1e-6));
    EXPECT_TRUE(torch::allclose(v[i], a * eps[i] - b * x0[i], 1e-5, 1e-6));
  }
  // x0 and ε are recovered from (x_t, v): x0 = a·x_t − b·v, ε = b·x_t + a·v.
  auto [a, b] =
      std::pair{s.alphas_cumprod().index({t}).sqrt().view({3, 1, 1, 1}),
                (1 - s.alphas_cumprod().index({t})).sqrt().view({3, 1, 1, 1})};
  EXPECT_TRUE(torch::allclose(a * xt - b * v, x0, 1e-4, 1e-5));
  EXPECT_TRUE(torch::allclose(b * xt + a * v, eps, 1e-4, 1e-5));
  EXPECT_TRUE(
      torch::equal(s.Target(PredictionType::kEpsilon, x0, eps, t), eps));
  EXPECT_TRUE(
      torch::equal(s.Target(PredictionType::kVPrediction, x0, eps, t), v));
  // A scalar timestep broadcasts.
  EXPECT_TRUE(torch::allclose(
      s.AddNoise(x0, eps, torch::tensor(500)),
      s.AddNoise(x0, eps, torch::full({3}, 500, torch::kLong))));
  EXPECT_EQ(ParsePredictionType("v_prediction").value(),
            PredictionType::kVPrediction);
  EXPECT_FALSE(ParsePredictionType("sample").ok());
}

TEST(NoiseScheduleTest, TimestepSamplingIsSeededAndInRange) {
  const NoiseSchedule s = NoiseSchedule::ScaledLinear();
  const torch::Tensor a = s.SampleTimesteps(4096, uint64_t{5});
  const torch::Tensor b = s.SampleTimesteps(4096, uint64_t{5});
  EXPECT_TRUE(torch::equal(a, b));
  EXPECT_EQ(a.scalar_type(), torch::kLong);
  EXPECT_GE(a.min().item<int64_t>(), 0);
  EXPECT_LE(a.max().item<int64_t>(), 999);
  EXPECT_GT(a.max().item<int64_t>(), 990);
  EXPECT_FALSE(torch::equal(a, s.SampleTimesteps(4096, uint64_t{6})));
}

}  // namespace
}  // namespace lpd::engine
