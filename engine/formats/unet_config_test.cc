#include "engine/formats/unet_config.h"

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <ostream>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace lpd::engine {
namespace {

using json = nlohmann::json;

using Heads = std::vector<int64_t>;

// SD-2.1's unet/config.json (stabilityai/stable-diffusion-2-1).
constexpr std::string_view kSd21Config = R"({
  "_class_name": "UNet2DConditionModel",
  "_diffusers_version": "0.10.0.dev0",
  "_name_or_path": "stabilityai/stable-diffusion-2-1",
  "act_fn": "silu",
  "attention_head_dim": [5, 10, 20, 20],
  "block_out_channels": [320, 640, 1280, 1280],
  "center_input_sample": false,
  "cross_attention_dim": 1024,
  "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                       "CrossAttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1,
  "dual_cross_attention": false,
  "flip_sin_to_cos": true,
  "freq_shift": 0,
  "in_channels": 4,
  "layers_per_block": 2,
  "mid_block_scale_factor": 1,
  "norm_eps": 1e-05,
  "norm_num_groups": 32,
  "num_class_embeds": null,
  "only_cross_attention": false,
  "out_channels": 4,
  "sample_size": 96,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                     "CrossAttnUpBlock2D"],
  "upcast_attention": true,
  "use_linear_projection": true
})";

// SDXL refiner's unet/config.json
// (stabilityai/stable-diffusion-xl-refiner-1.0).
constexpr std::string_view kSdxlRefinerConfig = R"({
  "_class_name": "UNet2DConditionModel",
  "_diffusers_version": "0.19.0.dev0",
  "act_fn": "silu",
  "addition_embed_type": "text_time",
  "addition_embed_type_num_heads": 64,
  "addition_time_embed_dim": 256,
  "attention_head_dim": [6, 12, 24, 24],
  "block_out_channels": [384, 768, 1536, 1536],
  "center_input_sample": false,
  "class_embed_type": null,
  "class_embeddings_concat": false,
  "conv_in_kernel": 3,
  "conv_out_kernel": 3,
  "cross_attention_dim": 1280,
  "cross_attention_norm": null,
  "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D",
                       "CrossAttnDownBlock2D", "DownBlock2D"],
  "downsample_padding": 1,
  "dual_cross_attention": false,
  "encoder_hid_dim": null,
  "encoder_hid_dim_type": null,
  "flip_sin_to_cos": true,
  "freq_shift": 0,
  "in_channels": 4,
  "layers_per_block": 2,
  "mid_block_only_cross_attention": null,
  "mid_block_scale_factor": 1,
  "mid_block_type": "UNetMidBlock2DCrossAttn",
  "norm_eps": 1e-05,
  "norm_num_groups": 32,
  "num_attention_heads": null,
  "num_class_embeds": null,
  "only_cross_attention": false,
  "out_channels": 4,
  "projection_class_embeddings_input_dim": 2560,
  "resnet_out_scale_factor": 1.0,
  "resnet_skip_time_act": false,
  "resnet_time_scale_shift": "default",
  "sample_size": 128,
  "time_cond_proj_dim": null,
  "time_embedding_act_fn": null,
  "time_embedding_dim": null,
  "time_embedding_type": "positional",
  "timestep_post_act": null,
  "transformer_layers_per_block": 4,
  "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                     "UpBlock2D"],
  "upcast_attention": false,
  "use_linear_projection": true
})";

absl::StatusOr<UNetConfig> ParseConfigFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << "cannot open " << path;
  const std::string text((std::istreambuf_iterator<char>(in)),
                         std::istreambuf_iterator<char>());
  return ParseUNetConfig(text, path);
}

// Whether the status message contains `part` (GoogleTest without gMock).
::testing::AssertionResult MessageHas(const absl::Status& status,
                                      const std::string& part) {
  if (absl::StrContains(status.message(), part)) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure()
         << "message of " << status << " lacks \"" << part << "\"";
}

// The SD-2.1 config with the fields of `patch` set.
std::string Sd21With(const json& patch) {
  json config = json::parse(kSd21Config);
  for (const auto& [key, value] : patch.items()) config[key] = value;
  return config.dump();
}

std::string SdxlRefinerWith(const json& patch) {
  json config = json::parse(kSdxlRefinerConfig);
  for (const auto& [key, value] : patch.items()) config[key] = value;
  return config.dump();
}

absl::Status ParseError(std::string_view text) {
  absl::StatusOr<UNetConfig> config = ParseUNetConfig(text, "config.json");
  EXPECT_FALSE(config.ok()) << "parsed unexpectedly: " << text;
  return config.status();
}

// --- Real configs ----------------------------------------------------------

TEST(UNetConfigTest, ParsesSd15Config) {
  absl::StatusOr<UNetConfig> config =
      ParseConfigFile(LPD_CONFIGS_DIR "/sd15-unet.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->in_channels, 4);
  EXPECT_EQ(config->out_channels, 4);
  EXPECT_EQ(config->sample_size, 64);
  EXPECT_EQ(config->down_block_types,
            (std::vector<DownBlockType>{DownBlockType::kCrossAttnDownBlock2D,
                                        DownBlockType::kCrossAttnDownBlock2D,
                                        DownBlockType::kCrossAttnDownBlock2D,
                                        DownBlockType::kDownBlock2D}));
  EXPECT_EQ(
      config->up_block_types,
      (std::vector<UpBlockType>{
          UpBlockType::kUpBlock2D, UpBlockType::kCrossAttnUpBlock2D,
          UpBlockType::kCrossAttnUpBlock2D, UpBlockType::kCrossAttnUpBlock2D}));
  EXPECT_EQ(config->block_out_channels, (Heads{320, 640, 1280, 1280}));
  EXPECT_EQ(config->layers_per_block, (Heads{2, 2, 2, 2}));
  EXPECT_EQ(config->attention_heads, (Heads{8, 8, 8, 8}));
  EXPECT_EQ(config->transformer_layers_per_block, (Heads{1, 1, 1, 1}));
  EXPECT_EQ(config->up_transformer_layers_per_block, (Heads{1, 1, 1, 1}));
  EXPECT_EQ(config->cross_attention_dim, 768);
  EXPECT_EQ(config->norm_num_groups, 32);
  EXPECT_DOUBLE_EQ(config->norm_eps, 1e-5);
  EXPECT_EQ(config->downsample_padding, 1);
  EXPECT_DOUBLE_EQ(config->mid_block_scale_factor, 1.0);
  EXPECT_TRUE(config->flip_sin_to_cos);
  EXPECT_EQ(config->freq_shift, 0);
  EXPECT_FALSE(config->use_linear_projection);
  EXPECT_FALSE(config->upcast_attention);
  EXPECT_FALSE(config->text_time_embedding);
  EXPECT_EQ(config->time_embed_dim(), 1280);
}

TEST(UNetConfigTest, ParsesSdxlBaseConfig) {
  absl::StatusOr<UNetConfig> config =
      ParseConfigFile(LPD_CONFIGS_DIR "/sdxl-base-unet.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->sample_size, 128);
  EXPECT_EQ(config->down_block_types,
            (std::vector<DownBlockType>{DownBlockType::kDownBlock2D,
                                        DownBlockType::kCrossAttnDownBlock2D,
                                        DownBlockType::kCrossAttnDownBlock2D}));
  EXPECT_EQ(config->up_block_types,
            (std::vector<UpBlockType>{UpBlockType::kCrossAttnUpBlock2D,
                                      UpBlockType::kCrossAttnUpBlock2D,
                                      UpBlockType::kUpBlock2D}));
  EXPECT_EQ(config->block_out_channels, (Heads{320, 640, 1280}));
  EXPECT_EQ(config->attention_heads, (Heads{5, 10, 20}));
  EXPECT_EQ(config->transformer_layers_per_block, (Heads{1, 2, 10}));
  EXPECT_EQ(config->up_transformer_layers_per_block, (Heads{10, 2, 1}));
  EXPECT_EQ(config->cross_attention_dim, 2048);
  EXPECT_TRUE(config->use_linear_projection);
  EXPECT_TRUE(config->text_time_embedding);
  EXPECT_EQ(config->addition_time_embed_dim, 256);
  EXPECT_EQ(config->projection_class_embeddings_input_dim, 2816);
}

TEST(UNetConfigTest, LoadsTinySd15ReferenceConfig) {
  absl::StatusOr<UNetConfig> config =
      LoadUNetConfig(LPD_TESTDATA_DIR "/unet-golden/tiny-sd15");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->sample_size, 16);
  EXPECT_EQ(config->block_out_channels, (Heads{32, 64, 64, 64}));
  EXPECT_EQ(config->layers_per_block, (Heads{2, 2, 2, 2}));
  EXPECT_EQ(config->attention_heads, (Heads{8, 8, 8, 8}));
  EXPECT_EQ(config->transformer_layers_per_block, (Heads{1, 1, 1, 1}));
  EXPECT_EQ(config->up_transformer_layers_per_block, (Heads{1, 1, 1, 1}));
  EXPECT_EQ(config->cross_attention_dim, 48);
  EXPECT_FALSE(config->use_linear_projection);
  EXPECT_FALSE(config->text_time_embedding);
  EXPECT_EQ(config->addition_time_embed_dim, 0);
  EXPECT_EQ(config->projection_class_embeddings_input_dim, 0);
  EXPECT_EQ(config->time_embed_dim(), 128);
}

TEST(UNetConfigTest, LoadsTinySdxlReferenceConfig) {
  absl::StatusOr<UNetConfig> config =
      LoadUNetConfig(LPD_TESTDATA_DIR "/unet-golden/tiny-sdxl");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->down_block_types,
            (std::vector<DownBlockType>{DownBlockType::kDownBlock2D,
                                        DownBlockType::kCrossAttnDownBlock2D,
                                        DownBlockType::kCrossAttnDownBlock2D}));
  EXPECT_EQ(config->block_out_channels, (Heads{32, 64, 96}));
  EXPECT_EQ(config->attention_heads, (Heads{2, 4, 6}));
  EXPECT_EQ(config->transformer_layers_per_block, (Heads{1, 2, 3}));
  EXPECT_EQ(config->up_transformer_layers_per_block, (Heads{3, 2, 1}));
  EXPECT_EQ(config->cross_attention_dim, 48);
  EXPECT_TRUE(config->use_linear_projection);
  EXPECT_TRUE(config->text_time_embedding);
  EXPECT_EQ(config->addition_time_embed_dim, 8);
  EXPECT_EQ(config->projection_class_embeddings_input_dim, 88);
}

TEST(UNetConfigTest, ParsesSd21Config) {
  absl::StatusOr<UNetConfig> config =
      ParseUNetConfig(kSd21Config, "config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->sample_size, 96);
  EXPECT_EQ(config->block_out_channels, (Heads{320, 640, 1280, 1280}));
  EXPECT_EQ(config->attention_heads, (Heads{5, 10, 20, 20}));
  EXPECT_EQ(config->cross_attention_dim, 1024);
  EXPECT_TRUE(config->use_linear_projection);
  EXPECT_TRUE(config->upcast_attention);
  EXPECT_FALSE(config->text_time_embedding);
}

TEST(UNetConfigTest, ParsesSdxlRefinerConfig) {
  absl::StatusOr<UNetConfig> config =
      ParseUNetConfig(kSdxlRefinerConfig, "config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->block_out_channels, (Heads{384, 768, 1536, 1536}));
  EXPECT_EQ(config->attention_heads, (Heads{6, 12, 24, 24}));
  EXPECT_EQ(config->transformer_layers_per_block, (Heads{4, 4, 4, 4}));
  EXPECT_EQ(config->up_transformer_layers_per_block, (Heads{4, 4, 4, 4}));
  EXPECT_EQ(
      config->down_block_types,
      (std::vector<DownBlockType>{
          DownBlockType::kDownBlock2D, DownBlockType::kCrossAttnDownBlock2D,
          DownBlockType::kCrossAttnDownBlock2D, DownBlockType::kDownBlock2D}));
  EXPECT_EQ(config->up_block_types,
            (std::vector<UpBlockType>{
                UpBlockType::kUpBlock2D, UpBlockType::kCrossAttnUpBlock2D,
                UpBlockType::kCrossAttnUpBlock2D, UpBlockType::kUpBlock2D}));
  EXPECT_EQ(config->cross_attention_dim, 1280);
  EXPECT_TRUE(config->text_time_embedding);
  EXPECT_EQ(config->addition_time_embed_dim, 256);
  EXPECT_EQ(config->projection_class_embeddings_input_dim, 2560);
  EXPECT_EQ(config->time_embed_dim(), 1536);
}

// --- Defaults and resolution -----------------------------------------------

TEST(UNetConfigTest, EmptyObjectGivesDiffusersDefaults) {
  absl::StatusOr<UNetConfig> config = ParseUNetConfig("{}", "config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->in_channels, 4);
  EXPECT_EQ(config->out_channels, 4);
  EXPECT_EQ(config->sample_size, 64);
  EXPECT_EQ(config->block_out_channels, (Heads{320, 640, 1280, 1280}));
  EXPECT_EQ(config->down_block_types,
            (std::vector<DownBlockType>{DownBlockType::kCrossAttnDownBlock2D,
                                        DownBlockType::kCrossAttnDownBlock2D,
                                        DownBlockType::kCrossAttnDownBlock2D,
                                        DownBlockType::kDownBlock2D}));
  EXPECT_EQ(
      config->up_block_types,
      (std::vector<UpBlockType>{
          UpBlockType::kUpBlock2D, UpBlockType::kCrossAttnUpBlock2D,
          UpBlockType::kCrossAttnUpBlock2D, UpBlockType::kCrossAttnUpBlock2D}));
  EXPECT_EQ(config->layers_per_block, (Heads{2, 2, 2, 2}));
  EXPECT_EQ(config->attention_heads, (Heads{8, 8, 8, 8}));
  EXPECT_EQ(config->transformer_layers_per_block, (Heads{1, 1, 1, 1}));
  EXPECT_EQ(config->cross_attention_dim, 1280);
  EXPECT_EQ(config->norm_num_groups, 32);
  EXPECT_DOUBLE_EQ(config->norm_eps, 1e-5);
  EXPECT_EQ(config->downsample_padding, 1);
  EXPECT_DOUBLE_EQ(config->mid_block_scale_factor, 1.0);
  EXPECT_TRUE(config->flip_sin_to_cos);
  EXPECT_EQ(config->freq_shift, 0);
  EXPECT_FALSE(config->use_linear_projection);
  EXPECT_FALSE(config->upcast_attention);
  EXPECT_FALSE(config->text_time_embedding);
}

TEST(UNetConfigTest, NullSampleSizeGives64) {
  absl::StatusOr<UNetConfig> config =
      ParseUNetConfig(Sd21With({{"sample_size", nullptr}}), "config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->sample_size, 64);
}

TEST(UNetConfigTest, LayersPerBlockListIsKeptPerBlock) {
  absl::StatusOr<UNetConfig> config = ParseUNetConfig(
      Sd21With({{"layers_per_block", {1, 2, 3, 1}}}), "config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->layers_per_block, (Heads{1, 2, 3, 1}));
}

TEST(UNetConfigTest, ReverseTransformerLayersPerBlockGivesUpOrder) {
  absl::StatusOr<UNetConfig> config = ParseUNetConfig(
      SdxlRefinerWith({{"transformer_layers_per_block", {1, 2, 3, 4}},
                       {"reverse_transformer_layers_per_block", {5, 6, 7, 8}}}),
      "config.json");
  ASSERT_TRUE(config.ok()) << config.status();
  EXPECT_EQ(config->transformer_layers_per_block, (Heads{1, 2, 3, 4}));
  EXPECT_EQ(config->up_transformer_layers_per_block, (Heads{5, 6, 7, 8}));
}

TEST(UNetConfigTest, AcceptsOnlyCrossAttentionListOfFalse) {
  EXPECT_TRUE(ParseUNetConfig(Sd21With({{"only_cross_attention",
                                         {false, false, false, false}}}),
                              "config.json")
                  .ok());
}

TEST(UNetConfigTest, AcceptsAnyDropoutWithoutApplyingIt) {
  EXPECT_TRUE(
      ParseUNetConfig(Sd21With({{"dropout", 0.1}}), "config.json").ok());
}

TEST(UNetConfigTest, AcceptsFalseMidBlockOnlyCrossAttention) {
  EXPECT_TRUE(
      ParseUNetConfig(Sd21With({{"mid_block_only_cross_attention", false}}),
                      "config.json")
          .ok());
}

TEST(UNetConfigTest, IgnoresUnderscoreFields) {
  EXPECT_TRUE(ParseUNetConfig(
                  Sd21With({{"_use_default_values", {"x"}}, {"_anything", 3}}),
                  "config.json")
                  .ok());
}

// --- Unsupported values ----------------------------------------------------

struct UnsupportedCase {
  std::string field;
  json value;
  // What the message shows of the value, if not all of it (list entries are
  // reported one by one).
  std::string shown = "";
};

void PrintTo(const UnsupportedCase& c, std::ostream* os) {
  *os << c.field << "=" << c.value.dump();
}

class UnsupportedValueTest : public ::testing::TestWithParam<UnsupportedCase> {
};

TEST_P(UnsupportedValueTest, IsRejectedNamingFieldAndValue) {
  const UnsupportedCase& c = GetParam();
  absl::Status status = ParseError(Sd21With({{c.field, c.value}}));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(MessageHas(status, "field \"" + c.field));
  EXPECT_TRUE(MessageHas(status, c.shown.empty() ? c.value.dump() : c.shown));
  EXPECT_TRUE(MessageHas(status, "is not supported"));
}

INSTANTIATE_TEST_SUITE_P(
    AllOffFields, UnsupportedValueTest,
    ::testing::Values(
        UnsupportedCase{"_class_name", "UNet2DModel"},
        UnsupportedCase{"act_fn", "gelu"},
        UnsupportedCase{"center_input_sample", true},
        UnsupportedCase{"only_cross_attention", true},
        UnsupportedCase{"only_cross_attention", {false, true, false, false}},
        UnsupportedCase{"dual_cross_attention", true},
        UnsupportedCase{"encoder_hid_dim", 768},
        UnsupportedCase{"encoder_hid_dim_type", "text_proj"},
        UnsupportedCase{"class_embed_type", "timestep"},
        UnsupportedCase{"num_class_embeds", 10},
        UnsupportedCase{"addition_embed_type", "text"},
        UnsupportedCase{"addition_embed_type", "image"},
        UnsupportedCase{"resnet_time_scale_shift", "scale_shift"},
        UnsupportedCase{"resnet_skip_time_act", true},
        UnsupportedCase{"resnet_out_scale_factor", 2.0},
        UnsupportedCase{"time_embedding_type", "fourier"},
        UnsupportedCase{"time_embedding_dim", 1024},
        UnsupportedCase{"time_embedding_act_fn", "silu"},
        UnsupportedCase{"timestep_post_act", "silu"},
        UnsupportedCase{"time_cond_proj_dim", 256},
        UnsupportedCase{"conv_in_kernel", 1},
        UnsupportedCase{"conv_out_kernel", 5},
        UnsupportedCase{"attention_type", "gated"},
        UnsupportedCase{"class_embeddings_concat", true},
        UnsupportedCase{"mid_block_only_cross_attention", true},
        UnsupportedCase{"cross_attention_norm", "layer_norm"},
        UnsupportedCase{"num_attention_heads", 8},
        UnsupportedCase{"mid_block_type", nullptr},
        UnsupportedCase{"mid_block_type", "UNetMidBlock2DSimpleCrossAttn"},
        UnsupportedCase{"down_block_types",
                        {"CrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D",
                         "CrossAttnDownBlock2D", "DownBlock2D"},
                        "\"SimpleCrossAttnDownBlock2D\""},
        UnsupportedCase{"up_block_types",
                        {"UpBlock2D", "CrossAttnUpBlock2D", "AttnUpBlock2D",
                         "CrossAttnUpBlock2D"},
                        "\"AttnUpBlock2D\""},
        UnsupportedCase{"cross_attention_dim", {1024, 1024, 1024, 1024}},
        UnsupportedCase{"transformer_layers_per_block",
                        {{1, 1}, {2, 2}, {3, 3}, {1, 1}}},
        UnsupportedCase{"norm_num_groups", nullptr}));

TEST(UNetConfigTest, UnsupportedMessageListsSupportedValues) {
  absl::Status status =
      ParseError(Sd21With({{"class_embed_type", "timestep"}}));
  EXPECT_EQ(status.message(),
            "config.json: field \"class_embed_type\": value \"timestep\" is "
            "not supported (supported: null)");
}

TEST(UNetConfigTest, UnsupportedBlockTypeNamesItsIndex) {
  absl::Status status =
      ParseError(Sd21With({{"down_block_types",
                            {"CrossAttnDownBlock2D", "AttnDownBlock2D",
                             "CrossAttnDownBlock2D", "DownBlock2D"}}}));
  EXPECT_TRUE(MessageHas(status,
                         "field \"down_block_types[1]\": value "
                         "\"AttnDownBlock2D\" is not supported"));
}

TEST(UNetConfigTest, RejectsUnknownFieldByName) {
  absl::Status status = ParseError(Sd21With({{"attention_heads", 8}}));
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(MessageHas(status, "field \"attention_heads\": unknown field"));
}

TEST(UNetConfigTest, TextTimeRequiresAdditionTimeEmbedDim) {
  absl::Status status =
      ParseError(SdxlRefinerWith({{"addition_time_embed_dim", nullptr}}));
  EXPECT_TRUE(MessageHas(status,
                         "field \"addition_time_embed_dim\": must be a "
                         "positive integer"));
}

TEST(UNetConfigTest, TextTimeRequiresProjectionInputDim) {
  json config = json::parse(kSdxlRefinerConfig);
  config.erase("projection_class_embeddings_input_dim");
  absl::Status status = ParseError(config.dump());
  EXPECT_TRUE(
      MessageHas(status, "field \"projection_class_embeddings_input_dim\""));
}

// --- Wrong types and ranges ------------------------------------------------

TEST(UNetConfigTest, RejectsStringForIntegerNamingExpectedType) {
  absl::Status status = ParseError(Sd21With({{"in_channels", "4"}}));
  EXPECT_EQ(status.message(),
            "config.json: field \"in_channels\": expected an integer, got "
            "string \"4\"");
}

TEST(UNetConfigTest, RejectsFloatForInteger) {
  absl::Status status = ParseError(Sd21With({{"cross_attention_dim", 1024.5}}));
  EXPECT_TRUE(
      MessageHas(status, "field \"cross_attention_dim\": expected an integer"));
}

TEST(UNetConfigTest, RejectsIntegerForBool) {
  absl::Status status = ParseError(Sd21With({{"use_linear_projection", 1}}));
  EXPECT_TRUE(MessageHas(status,
                         "field \"use_linear_projection\": expected true or "
                         "false, got number 1"));
}

TEST(UNetConfigTest, RejectsStringInIntegerList) {
  absl::Status status =
      ParseError(Sd21With({{"block_out_channels", {320, "640", 1280, 1280}}}));
  EXPECT_TRUE(MessageHas(status,
                         "field \"block_out_channels[1]\": expected an "
                         "integer"));
}

TEST(UNetConfigTest, RejectsObjectForBlockTypes) {
  absl::Status status =
      ParseError(Sd21With({{"down_block_types", {{"a", 1}}}}));
  EXPECT_TRUE(MessageHas(status, "down_block_types"));
}

TEST(UNetConfigTest, RejectsNonPositiveChannels) {
  absl::Status status = ParseError(Sd21With({{"out_channels", 0}}));
  EXPECT_TRUE(
      MessageHas(status, "field \"out_channels\": value 0 is out of range"));
}

TEST(UNetConfigTest, RejectsNegativeHeadCount) {
  absl::Status status =
      ParseError(Sd21With({{"attention_head_dim", {5, -10, 20, 20}}}));
  EXPECT_TRUE(MessageHas(status,
                         "field \"attention_head_dim[1]\": value -10 is out "
                         "of range"));
}

TEST(UNetConfigTest, RejectsHugeInteger) {
  absl::Status status =
      ParseError(Sd21With({{"in_channels", 18446744073709551615ull}}));
  EXPECT_TRUE(MessageHas(status,
                         "field \"in_channels\": value 18446744073709551615 "
                         "is out of range"));
}

TEST(UNetConfigTest, RejectsNonPositiveNormEps) {
  absl::Status status = ParseError(Sd21With({{"norm_eps", 0.0}}));
  EXPECT_TRUE(MessageHas(status, "field \"norm_eps\""));
}

TEST(UNetConfigTest, RejectsDropoutOutsideZeroOne) {
  absl::Status status = ParseError(Sd21With({{"dropout", 1.5}}));
  EXPECT_TRUE(MessageHas(status, "field \"dropout\""));
}

TEST(UNetConfigTest, RejectsTopLevelArray) {
  absl::Status status = ParseError("[1, 2]");
  EXPECT_TRUE(MessageHas(status, "expected a JSON object at the top level"));
}

// --- Wrong list lengths ----------------------------------------------------

TEST(UNetConfigTest, RejectsUpBlockTypesOfOtherLength) {
  absl::Status status = ParseError(
      Sd21With({{"up_block_types", {"UpBlock2D", "CrossAttnUpBlock2D"}}}));
  EXPECT_TRUE(MessageHas(
      status, "field \"up_block_types\": has 2 entries, expected 4"));
}

TEST(UNetConfigTest, RejectsBlockOutChannelsOfOtherLength) {
  absl::Status status =
      ParseError(Sd21With({{"block_out_channels", {320, 640, 1280}}}));
  EXPECT_TRUE(MessageHas(
      status, "field \"block_out_channels\": has 3 entries, expected 4"));
}

TEST(UNetConfigTest, RejectsAttentionHeadDimOfOtherLength) {
  absl::Status status =
      ParseError(Sd21With({{"attention_head_dim", {5, 10, 20}}}));
  EXPECT_TRUE(MessageHas(
      status, "field \"attention_head_dim\": has 3 entries, expected 4"));
}

TEST(UNetConfigTest, RejectsTransformerLayersOfOtherLength) {
  absl::Status status = ParseError(
      SdxlRefinerWith({{"transformer_layers_per_block", {1, 2, 3, 4, 5}}}));
  EXPECT_TRUE(MessageHas(status,
                         "field \"transformer_layers_per_block\": has 5 "
                         "entries, expected 4"));
}

TEST(UNetConfigTest, RejectsReverseTransformerLayersOfOtherLength) {
  absl::Status status = ParseError(
      SdxlRefinerWith({{"reverse_transformer_layers_per_block", {1, 2}}}));
  EXPECT_TRUE(MessageHas(status,
                         "field \"reverse_transformer_layers_per_block\": has "
                         "2 entries, expected 4"));
}

TEST(UNetConfigTest, RejectsLayersPerBlockOfOtherLength) {
  absl::Status status =
      ParseError(Sd21With({{"layers_per_block", {2, 2, 2, 2, 2}}}));
  EXPECT_TRUE(MessageHas(
      status, "field \"layers_per_block\": has 5 entries, expected 4"));
}

TEST(UNetConfigTest, RejectsOnlyCrossAttentionListOfOtherLength) {
  absl::Status status =
      ParseError(Sd21With({{"only_cross_attention", {false, false}}}));
  EXPECT_TRUE(MessageHas(
      status, "field \"only_cross_attention\": has 2 entries, expected 4"));
}

TEST(UNetConfigTest, DefaultBlockOutChannelsMustMatchGivenBlockTypes) {
  json config = json::parse(kSd21Config);
  config.erase("block_out_channels");
  config["down_block_types"] = {"DownBlock2D", "CrossAttnDownBlock2D"};
  config["up_block_types"] = {"CrossAttnUpBlock2D", "UpBlock2D"};
  config["attention_head_dim"] = 8;
  absl::Status status = ParseError(config.dump());
  EXPECT_TRUE(MessageHas(
      status, "field \"block_out_channels\": has 4 entries, expected 2"));
}

// --- Channel consistency ---------------------------------------------------

TEST(UNetConfigTest, RejectsChannelsNotDivisibleByNormGroups) {
  absl::Status status =
      ParseError(Sd21With({{"block_out_channels", {320, 640, 1280, 1000}}}));
  EXPECT_TRUE(MessageHas(status,
                         "field \"block_out_channels[3]\": value 1000 is not "
                         "divisible by \"norm_num_groups\" (32)"));
}

TEST(UNetConfigTest, RejectsChannelsNotDivisibleByHeads) {
  absl::Status status =
      ParseError(Sd21With({{"attention_head_dim", {5, 10, 20, 30}}}));
  EXPECT_TRUE(MessageHas(status,
                         "field \"attention_head_dim[3]\": 30 heads do not "
                         "divide the 1280 channels"));
}

TEST(UNetConfigTest, IgnoresHeadsOfBlocksWithoutAttention) {
  // Block 0 is DownBlock2D / UpBlock2D in the refiner: its head count is
  // never used, so it need not divide the channels.
  EXPECT_TRUE(ParseUNetConfig(
                  SdxlRefinerWith({{"attention_head_dim", {7, 12, 24, 24}}}),
                  "config.json")
                  .ok());
}

TEST(UNetConfigTest, MidBlockHeadsMustDivideLastChannels) {
  // The refiner's last block has no attention, but the mid block does.
  absl::Status status =
      ParseError(SdxlRefinerWith({{"attention_head_dim", {6, 12, 24, 7}}}));
  EXPECT_TRUE(MessageHas(status, "field \"attention_head_dim[3]\""));
}

// --- Invalid JSON ----------------------------------------------------------

TEST(UNetConfigTest, InvalidJsonReportsLineAndColumn) {
  absl::Status status =
      ParseError("{\n  \"in_channels\": 4,\n  \"out_channels\": ]\n}\n");
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(MessageHas(status, "config.json:3:19: invalid JSON: "));
}

TEST(UNetConfigTest, TruncatedJsonReportsEndPosition) {
  absl::Status status = ParseError("{\n  \"in_channels\": 4,\n");
  EXPECT_TRUE(MessageHas(status, "config.json:3:1: invalid JSON: "));
}

TEST(UNetConfigTest, InvalidJsonOnFirstLine) {
  absl::Status status = ParseError("{\"a\" 1}");
  EXPECT_TRUE(MessageHas(status, "config.json:1:6: invalid JSON: "));
}

// --- Loading ---------------------------------------------------------------

TEST(UNetConfigTest, LoadReportsMissingFileAsNotFound) {
  const std::string dir = ::testing::TempDir() + "/unet_config_test_missing";
  std::filesystem::create_directories(dir);
  absl::StatusOr<UNetConfig> config = LoadUNetConfig(dir);
  EXPECT_EQ(config.status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(MessageHas(config.status(), dir + "/config.json"));
}

TEST(UNetConfigTest, LoadNamesFileInParseErrors) {
  const std::string dir = ::testing::TempDir() + "/unet_config_test_bad";
  std::filesystem::create_directories(dir);
  std::ofstream(dir + "/config.json") << R"({"act_fn": "gelu"})";
  absl::StatusOr<UNetConfig> config = LoadUNetConfig(dir);
  EXPECT_EQ(config.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(
      MessageHas(config.status(), dir + "/config.json: field \"act_fn\""));
}

}  // namespace
}  // namespace lpd::engine
