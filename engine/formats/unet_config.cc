#include "engine/formats/unet_config.h"

#include <algorithm>
#include <array>
#include <cerrno>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <iterator>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "base/status_macros.h"
#include "nlohmann/json.hpp"

namespace lpd::engine {
namespace {

using json = nlohmann::json;

// Upper bound for every size-like integer (channels, heads, layers ...), far
// above any real U-Net, so that derived sizes (e.g. 4 * block_out_channels[0])
// can never overflow and a corrupt config cannot ask for absurd allocations.
constexpr int64_t kMaxSize = int64_t{1} << 24;

// Every key of UNet2DConditionModel's config (diffusers 0.2x - 0.40).
constexpr std::array<absl::string_view, 48> kKnownFields = {
    "sample_size",
    "in_channels",
    "out_channels",
    "center_input_sample",
    "flip_sin_to_cos",
    "freq_shift",
    "down_block_types",
    "mid_block_type",
    "up_block_types",
    "only_cross_attention",
    "block_out_channels",
    "layers_per_block",
    "downsample_padding",
    "mid_block_scale_factor",
    "dropout",
    "act_fn",
    "norm_num_groups",
    "norm_eps",
    "cross_attention_dim",
    "transformer_layers_per_block",
    "reverse_transformer_layers_per_block",
    "encoder_hid_dim",
    "encoder_hid_dim_type",
    "attention_head_dim",
    "num_attention_heads",
    "dual_cross_attention",
    "use_linear_projection",
    "class_embed_type",
    "addition_embed_type",
    "addition_time_embed_dim",
    "num_class_embeds",
    "upcast_attention",
    "resnet_time_scale_shift",
    "resnet_skip_time_act",
    "resnet_out_scale_factor",
    "time_embedding_type",
    "time_embedding_dim",
    "time_embedding_act_fn",
    "timestep_post_act",
    "time_cond_proj_dim",
    "conv_in_kernel",
    "conv_out_kernel",
    "projection_class_embeddings_input_dim",
    "attention_type",
    "class_embeddings_concat",
    "mid_block_only_cross_attention",
    "cross_attention_norm",
    "addition_embed_type_num_heads",
};

// Fields the engine does not implement: each must hold one of the listed
// values (a missing field takes diffusers' default, which is always the first
// listed value).
struct FixedField {
  absl::string_view name;
  std::vector<json> allowed;
};

const std::vector<FixedField>& FixedFields() {
  static const auto* const kFields = new std::vector<FixedField>{
      {"act_fn", {"silu"}},
      {"center_input_sample", {false}},
      {"dual_cross_attention", {false}},
      {"encoder_hid_dim", {nullptr}},
      {"encoder_hid_dim_type", {nullptr}},
      {"class_embed_type", {nullptr}},
      {"num_class_embeds", {nullptr}},
      {"resnet_time_scale_shift", {"default"}},
      {"resnet_skip_time_act", {false}},
      {"resnet_out_scale_factor", {1.0}},
      {"time_embedding_type", {"positional"}},
      {"time_embedding_dim", {nullptr}},
      {"time_embedding_act_fn", {nullptr}},
      {"timestep_post_act", {nullptr}},
      {"time_cond_proj_dim", {nullptr}},
      {"conv_in_kernel", {3}},
      {"conv_out_kernel", {3}},
      {"attention_type", {"default"}},
      {"class_embeddings_concat", {false}},
      {"mid_block_only_cross_attention", {nullptr, false}},
      {"cross_attention_norm", {nullptr}},
      // diffusers itself refuses a non-null value: its `attention_head_dim`
      // is the head count.
      {"num_attention_heads", {nullptr}},
      // null would mean "no mid block" in diffusers.
      {"mid_block_type", {"UNetMidBlock2DCrossAttn"}},
      {"addition_embed_type", {nullptr, "text_time"}},
  };
  return *kFields;
}

// A JSON value for a message: compact, invalid UTF-8 replaced, long values
// shortened.
std::string Show(const json& value) {
  std::string text = value.dump(-1, ' ', false, json::error_handler_t::replace);
  constexpr size_t kMaxShown = 120;
  if (text.size() > kMaxShown) {
    text.resize(kMaxShown);
    text += "...";
  }
  return text;
}

std::string Quote(absl::string_view name) {
  return Show(json(std::string(name)));
}

// "string \"4\"", "null", "number 4.5", ...
std::string Describe(const json& value) {
  if (value.is_null()) return "null";
  return absl::StrCat(value.type_name(), " ", Show(value));
}

// "1 entry", "3 entries".
std::string Entries(size_t count) {
  return absl::StrCat(count, count == 1 ? " entry" : " entries");
}

// 1-based line and column of the 0-based byte `offset` in `text`.
std::pair<size_t, size_t> LineColumn(std::string_view text, size_t offset) {
  offset = std::min(offset, text.size());
  size_t line = 1;
  size_t line_start = 0;
  for (size_t i = 0; i < offset; ++i) {
    if (text[i] == '\n') {
      ++line;
      line_start = i + 1;
    }
  }
  return {line, offset - line_start + 1};
}

class Parser {
 public:
  Parser(const json& root, absl::string_view source)
      : root_(root), source_(source) {}

  absl::StatusOr<UNetConfig> Parse();

 private:
  absl::Status Error(absl::string_view field, absl::string_view what) const {
    return absl::InvalidArgumentError(
        absl::StrCat(source_, ": field ", Quote(field), ": ", what));
  }
  absl::Status Unsupported(absl::string_view field, const json& value,
                           absl::string_view supported) const {
    return Error(
        field, absl::StrCat("value ", Show(value),
                            " is not supported (supported: ", supported, ")"));
  }
  absl::Status WrongType(absl::string_view field, const json& value,
                         absl::string_view expected) const {
    return Error(
        field, absl::StrCat("expected ", expected, ", got ", Describe(value)));
  }

  // A copy of the field's value, or `fallback` (diffusers' default) when
  // absent. (By value: `fallback` is usually a temporary.)
  json Get(absl::string_view field, json fallback) const {
    auto it = root_.find(field);
    return it == root_.end() ? std::move(fallback) : *it;
  }

  absl::Status CheckKeys() const;
  absl::Status CheckFixedFields() const;

  absl::StatusOr<bool> Bool(absl::string_view field, bool fallback) const;
  absl::StatusOr<int64_t> IntValue(absl::string_view field, const json& value,
                                   int64_t min, int64_t max) const;
  absl::StatusOr<int64_t> Int(absl::string_view field, int64_t fallback,
                              int64_t min, int64_t max) const {
    return IntValue(field, Get(field, json(fallback)), min, max);
  }
  // Null (or absent) gives nullopt.
  absl::StatusOr<std::optional<int64_t>> OptionalInt(absl::string_view field,
                                                     int64_t min,
                                                     int64_t max) const;
  absl::StatusOr<double> Number(absl::string_view field, double fallback,
                                double min, double max, bool min_inclusive,
                                bool max_inclusive) const;
  // An int broadcast to `n` entries, or a list of exactly `n` ints.
  absl::StatusOr<std::vector<int64_t>> IntOrList(absl::string_view field,
                                                 const json& fallback, size_t n,
                                                 absl::string_view n_source,
                                                 int64_t min) const;
  absl::StatusOr<std::vector<int64_t>> IntList(absl::string_view field,
                                               const json& value, int64_t min,
                                               int64_t max) const;
  template <typename Enum>
  absl::StatusOr<std::vector<Enum>> BlockTypes(
      absl::string_view field, const json& fallback,
      std::initializer_list<std::pair<absl::string_view, Enum>> known) const;
  absl::Status CheckOnlyCrossAttention(size_t n) const;

  const json& root_;
  absl::string_view source_;
};

absl::Status Parser::CheckKeys() const {
  for (const auto& [key, value] : root_.items()) {
    if (!key.empty() && key[0] == '_') {
      if (key == "_class_name" && value != json("UNet2DConditionModel")) {
        return Unsupported(key, value, "\"UNet2DConditionModel\"");
      }
      continue;
    }
    if (std::find(kKnownFields.begin(), kKnownFields.end(), key) ==
        kKnownFields.end()) {
      return Error(key,
                   "unknown field (not part of UNet2DConditionModel's "
                   "config)");
    }
  }
  return absl::OkStatus();
}

absl::Status Parser::CheckFixedFields() const {
  for (const FixedField& field : FixedFields()) {
    auto it = root_.find(field.name);
    if (it == root_.end()) continue;
    bool ok = false;
    for (const json& allowed : field.allowed) {
      // Values of different JSON types never match (false != 0, "3" != 3);
      // numbers compare by value (1 == 1.0).
      if (*it == allowed) ok = true;
    }
    if (!ok) {
      std::vector<std::string> shown;
      for (const json& allowed : field.allowed) shown.push_back(Show(allowed));
      return Unsupported(field.name, *it, absl::StrJoin(shown, ", "));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<bool> Parser::Bool(absl::string_view field,
                                  bool fallback) const {
  const json& value = Get(field, json(fallback));
  if (!value.is_boolean()) return WrongType(field, value, "true or false");
  return value.get<bool>();
}

absl::StatusOr<int64_t> Parser::IntValue(absl::string_view field,
                                         const json& value, int64_t min,
                                         int64_t max) const {
  if (!value.is_number_integer()) return WrongType(field, value, "an integer");
  if (value.is_number_unsigned() &&
      value.get<uint64_t>() >
          static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return Error(field, absl::StrCat("value ", Show(value),
                                     " is out of range (expected an integer "
                                     "in [",
                                     min, ", ", max, "])"));
  }
  const int64_t result = value.get<int64_t>();
  if (result < min || result > max) {
    return Error(field, absl::StrCat("value ", result,
                                     " is out of range (expected an integer "
                                     "in [",
                                     min, ", ", max, "])"));
  }
  return result;
}

absl::StatusOr<std::optional<int64_t>> Parser::OptionalInt(
    absl::string_view field, int64_t min, int64_t max) const {
  const json& value = Get(field, json(nullptr));
  if (value.is_null()) return std::nullopt;
  if (!value.is_number_integer()) {
    return WrongType(field, value, "an integer or null");
  }
  ASSIGN_OR_RETURN(int64_t result, IntValue(field, value, min, max));
  return result;
}

absl::StatusOr<double> Parser::Number(absl::string_view field, double fallback,
                                      double min, double max,
                                      bool min_inclusive,
                                      bool max_inclusive) const {
  const json& value = Get(field, json(fallback));
  if (!value.is_number()) return WrongType(field, value, "a number");
  const double result = value.get<double>();
  const bool above_min = min_inclusive ? result >= min : result > min;
  const bool below_max = max_inclusive ? result <= max : result < max;
  if (!std::isfinite(result) || !above_min || !below_max) {
    const std::string upper = std::isfinite(max)
                                  ? absl::StrCat(max, max_inclusive ? "]" : ")")
                                  : std::string("inf)");
    return Error(
        field, absl::StrCat("value ", Show(value),
                            " is out of range (expected a number in ",
                            min_inclusive ? "[" : "(", min, ", ", upper, ")"));
  }
  return result;
}

absl::StatusOr<std::vector<int64_t>> Parser::IntList(absl::string_view field,
                                                     const json& value,
                                                     int64_t min,
                                                     int64_t max) const {
  std::vector<int64_t> result;
  for (size_t i = 0; i < value.size(); ++i) {
    ASSIGN_OR_RETURN(int64_t entry, IntValue(absl::StrCat(field, "[", i, "]"),
                                             value[i], min, max));
    result.push_back(entry);
  }
  return result;
}

absl::StatusOr<std::vector<int64_t>> Parser::IntOrList(
    absl::string_view field, const json& fallback, size_t n,
    absl::string_view n_source, int64_t min) const {
  const json& value = Get(field, fallback);
  if (value.is_number_integer()) {
    ASSIGN_OR_RETURN(int64_t entry, IntValue(field, value, min, kMaxSize));
    return std::vector<int64_t>(n, entry);
  }
  if (!value.is_array()) {
    return WrongType(field, value, "an integer or a list of integers");
  }
  for (const json& entry : value) {
    if (entry.is_array()) {
      return Unsupported(field, value,
                         "an integer or a list of integers; nested lists "
                         "are not implemented");
    }
  }
  if (value.size() != n) {
    return Error(field,
                 absl::StrCat("has ", Entries(value.size()), ", expected ", n,
                              " (one per entry of ", Quote(n_source), ")"));
  }
  return IntList(field, value, min, kMaxSize);
}

template <typename Enum>
absl::StatusOr<std::vector<Enum>> Parser::BlockTypes(
    absl::string_view field, const json& fallback,
    std::initializer_list<std::pair<absl::string_view, Enum>> known) const {
  const json& value = Get(field, fallback);
  if (!value.is_array()) {
    return WrongType(field, value, "a list of block type names");
  }
  if (value.empty()) return Error(field, "must not be empty");
  std::vector<std::string> supported;
  for (const auto& [name, type] : known) supported.push_back(Quote(name));
  std::vector<Enum> result;
  for (size_t i = 0; i < value.size(); ++i) {
    const std::string entry_field = absl::StrCat(field, "[", i, "]");
    if (!value[i].is_string()) {
      return WrongType(entry_field, value[i], "a block type name (string)");
    }
    const std::string& name = value[i].get_ref<const std::string&>();
    auto it = std::find_if(known.begin(), known.end(),
                           [&](const auto& k) { return k.first == name; });
    if (it == known.end()) {
      return Unsupported(entry_field, value[i], absl::StrJoin(supported, ", "));
    }
    result.push_back(it->second);
  }
  return result;
}

absl::Status Parser::CheckOnlyCrossAttention(size_t n) const {
  const absl::string_view field = "only_cross_attention";
  const json& value = Get(field, json(false));
  if (value.is_boolean()) {
    if (value.get<bool>()) {
      return Unsupported(field, value, "false, or a list of false");
    }
    return absl::OkStatus();
  }
  if (!value.is_array()) {
    return WrongType(field, value, "false or a list of booleans");
  }
  if (value.size() != n) {
    return Error(field,
                 absl::StrCat("has ", Entries(value.size()), ", expected ", n,
                              " (one per entry of \"down_block_types\")"));
  }
  for (size_t i = 0; i < value.size(); ++i) {
    if (!value[i].is_boolean()) {
      return WrongType(absl::StrCat(field, "[", i, "]"), value[i],
                       "true or false");
    }
    if (value[i].get<bool>()) {
      return Unsupported(field, value, "false, or a list of false");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<UNetConfig> Parser::Parse() {
  RETURN_IF_ERROR(CheckKeys());
  RETURN_IF_ERROR(CheckFixedFields());

  UNetConfig config;

  // Block layout.
  ASSIGN_OR_RETURN(
      config.down_block_types,
      BlockTypes<DownBlockType>(
          "down_block_types",
          json{"CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
               "CrossAttnDownBlock2D", "DownBlock2D"},
          {{"DownBlock2D", DownBlockType::kDownBlock2D},
           {"CrossAttnDownBlock2D", DownBlockType::kCrossAttnDownBlock2D}}));
  ASSIGN_OR_RETURN(
      config.up_block_types,
      BlockTypes<UpBlockType>(
          "up_block_types",
          json{"UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
               "CrossAttnUpBlock2D"},
          {{"UpBlock2D", UpBlockType::kUpBlock2D},
           {"CrossAttnUpBlock2D", UpBlockType::kCrossAttnUpBlock2D}}));
  const size_t n = config.down_block_types.size();
  if (config.up_block_types.size() != n) {
    return Error("up_block_types",
                 absl::StrCat("has ", Entries(config.up_block_types.size()),
                              ", expected ", n,
                              " (one per entry of \"down_block_types\")"));
  }

  {
    const json& value = Get("block_out_channels", json{320, 640, 1280, 1280});
    if (!value.is_array()) {
      return WrongType("block_out_channels", value, "a list of integers");
    }
    if (value.size() != n) {
      return Error("block_out_channels",
                   absl::StrCat("has ", Entries(value.size()), ", expected ", n,
                                " (one per entry of \"down_block_types\")"));
    }
    ASSIGN_OR_RETURN(config.block_out_channels,
                     IntList("block_out_channels", value, 1, kMaxSize));
  }
  RETURN_IF_ERROR(CheckOnlyCrossAttention(n));

  // Scalars.
  ASSIGN_OR_RETURN(config.in_channels, Int("in_channels", 4, 1, kMaxSize));
  ASSIGN_OR_RETURN(config.out_channels, Int("out_channels", 4, 1, kMaxSize));
  {
    // diffusers' default is null; the model does not depend on it (pipelines
    // use it for the default resolution), so null gives 64.
    ASSIGN_OR_RETURN(std::optional<int64_t> sample_size,
                     OptionalInt("sample_size", 1, kMaxSize));
    config.sample_size = sample_size.value_or(64);
  }
  {
    const json& value = Get("cross_attention_dim", json(1280));
    if (value.is_array()) {
      return Unsupported("cross_attention_dim", value,
                         "a single integer; per-block lists are not "
                         "implemented");
    }
    ASSIGN_OR_RETURN(config.cross_attention_dim,
                     IntValue("cross_attention_dim", value, 1, kMaxSize));
  }
  {
    const json& value = Get("norm_num_groups", json(32));
    if (value.is_null()) {
      // null means "no group norm" in diffusers.
      return Unsupported("norm_num_groups", value, "a positive integer");
    }
    ASSIGN_OR_RETURN(config.norm_num_groups,
                     IntValue("norm_num_groups", value, 1, kMaxSize));
  }
  ASSIGN_OR_RETURN(config.norm_eps,
                   Number("norm_eps", 1e-5, 0.0, 1.0, false, false));
  ASSIGN_OR_RETURN(config.downsample_padding,
                   Int("downsample_padding", 1, 0, kMaxSize));
  ASSIGN_OR_RETURN(
      config.mid_block_scale_factor,
      Number("mid_block_scale_factor", 1.0, 0.0,
             std::numeric_limits<double>::infinity(), false, false));
  ASSIGN_OR_RETURN(config.flip_sin_to_cos, Bool("flip_sin_to_cos", true));
  ASSIGN_OR_RETURN(config.use_linear_projection,
                   Bool("use_linear_projection", false));
  ASSIGN_OR_RETURN(config.upcast_attention, Bool("upcast_attention", false));
  // Dropout is a training-time value: the engine runs (and distills) without
  // it, so any valid probability is accepted and not applied.
  RETURN_IF_ERROR(Number("dropout", 0.0, 0.0, 1.0, true, true).status());
  // Only read by addition_embed_type "text", which is rejected above.
  RETURN_IF_ERROR(
      OptionalInt("addition_embed_type_num_heads", 1, kMaxSize).status());

  // Per-block lists.
  ASSIGN_OR_RETURN(
      config.layers_per_block,
      IntOrList("layers_per_block", json(2), n, "down_block_types", 1));
  ASSIGN_OR_RETURN(
      config.attention_heads,
      IntOrList("attention_head_dim", json(8), n, "down_block_types", 1));
  ASSIGN_OR_RETURN(config.transformer_layers_per_block,
                   IntOrList("transformer_layers_per_block", json(1), n,
                             "down_block_types", 1));
  {
    const json& value =
        Get("reverse_transformer_layers_per_block", json(nullptr));
    if (value.is_null()) {
      config.up_transformer_layers_per_block.assign(
          config.transformer_layers_per_block.rbegin(),
          config.transformer_layers_per_block.rend());
    } else {
      if (!value.is_array()) {
        return WrongType("reverse_transformer_layers_per_block", value,
                         "null or a list of integers");
      }
      ASSIGN_OR_RETURN(config.up_transformer_layers_per_block,
                       IntOrList("reverse_transformer_layers_per_block",
                                 json(nullptr), n, "up_block_types", 1));
    }
  }

  // SDXL's additional time/text embedding.
  {
    ASSIGN_OR_RETURN(std::optional<int64_t> time_dim,
                     OptionalInt("addition_time_embed_dim", 1, kMaxSize));
    ASSIGN_OR_RETURN(
        std::optional<int64_t> projection_dim,
        OptionalInt("projection_class_embeddings_input_dim", 1, kMaxSize));
    config.text_time_embedding =
        Get("addition_embed_type", json(nullptr)) == json("text_time");
    if (config.text_time_embedding) {
      if (!time_dim.has_value()) {
        return Error("addition_time_embed_dim",
                     "must be a positive integer when \"addition_embed_type\" "
                     "is \"text_time\"");
      }
      if (!projection_dim.has_value()) {
        return Error("projection_class_embeddings_input_dim",
                     "must be a positive integer when \"addition_embed_type\" "
                     "is \"text_time\"");
      }
      config.addition_time_embed_dim = *time_dim;
      config.projection_class_embeddings_input_dim = *projection_dim;
    }
  }

  // The sinusoidal embeddings divide by (dim / 2 - freq_shift).
  {
    int64_t half_dim = config.block_out_channels[0] / 2;
    absl::string_view dim_field = "block_out_channels";
    if (config.text_time_embedding &&
        config.addition_time_embed_dim / 2 < half_dim) {
      half_dim = config.addition_time_embed_dim / 2;
      dim_field = "addition_time_embed_dim";
    }
    ASSIGN_OR_RETURN(config.freq_shift, Int("freq_shift", 0, 0, kMaxSize));
    if (config.freq_shift >= half_dim) {
      return Error("freq_shift",
                   absl::StrCat("value ", config.freq_shift,
                                " must be less than half the sinusoidal "
                                "embedding width (",
                                half_dim, ", from ", Quote(dim_field), ")"));
    }
  }

  // Consistency of the channel counts.
  for (size_t i = 0; i < n; ++i) {
    const int64_t channels = config.block_out_channels[i];
    if (channels % config.norm_num_groups != 0) {
      return Error(absl::StrCat("block_out_channels[", i, "]"),
                   absl::StrCat("value ", channels,
                                " is not divisible by \"norm_num_groups\" (",
                                config.norm_num_groups, ")"));
    }
    // Down block i, up block n-1-i and (for the last) the mid block use
    // these channels with these heads; only attention blocks split them.
    const bool has_attention =
        config.down_block_types[i] == DownBlockType::kCrossAttnDownBlock2D ||
        config.up_block_types[n - 1 - i] == UpBlockType::kCrossAttnUpBlock2D ||
        i + 1 == n;
    const int64_t heads = config.attention_heads[i];
    if (has_attention && channels % heads != 0) {
      return Error(Get("attention_head_dim", json(8)).is_array()
                       ? absl::StrCat("attention_head_dim[", i, "]")
                       : std::string("attention_head_dim"),
                   absl::StrCat(heads, " heads do not divide the ", channels,
                                " channels of block ", i,
                                " (\"block_out_channels[", i, "]\")"));
    }
  }
  return config;
}

}  // namespace

absl::StatusOr<UNetConfig> ParseUNetConfig(std::string_view json_text,
                                           std::string_view source_view) {
  // This Abseil's string_view is not std::string_view.
  const std::string source(source_view);
  json root;
  try {
    root = json::parse(json_text.begin(), json_text.end());
  } catch (const json::parse_error& e) {
    // e.byte is the 1-based index of the last character read.
    const size_t offset = e.byte == 0 ? 0 : e.byte - 1;
    const auto [line, column] = LineColumn(json_text, offset);
    // Strip nlohmann's "[json.exception.parse_error.101] parse error at line
    // L, column C: " prefix; keep its description.
    std::string_view what = e.what();
    if (size_t bracket = what.find("] "); bracket != std::string_view::npos) {
      if (size_t colon = what.find(": ", bracket);
          colon != std::string_view::npos) {
        what.remove_prefix(colon + 2);
      }
    }
    return absl::InvalidArgumentError(absl::StrCat(
        source, ":", line, ":", column, ": invalid JSON: ", std::string(what)));
  } catch (const json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": invalid JSON: ", e.what()));
  }
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": expected a JSON object at the top level, got ",
                     Describe(root)));
  }
  return Parser(root, source).Parse();
}

absl::StatusOr<UNetConfig> LoadUNetConfig(const std::string& dir) {
  const std::filesystem::path path = std::filesystem::path(dir) / "config.json";
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (!std::filesystem::exists(status)) {
    return absl::NotFoundError(absl::StrCat(path.string(), ": not found"));
  }
  if (!std::filesystem::is_regular_file(status)) {
    return absl::FailedPreconditionError(
        absl::StrCat(path.string(), ": not a regular file"));
  }
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    const int error = errno;
    const std::string message = absl::StrCat(path.string(), ": cannot open");
    if (error == 0) return absl::UnavailableError(message);
    return absl::ErrnoToStatus(error, message);
  }
  std::string text((std::istreambuf_iterator<char>(in)),
                   std::istreambuf_iterator<char>());
  if (in.bad()) {
    return absl::DataLossError(absl::StrCat(path.string(), ": read failed"));
  }
  return ParseUNetConfig(text, path.string());
}

}  // namespace lpd::engine
