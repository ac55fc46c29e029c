#include "studies/quality/shapes_dataset.h"

#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <map>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "base/status_macros.h"
#include "engine/core/tensor_io.h"
#include "engine/core/torch_errors.h"

namespace lpd::engine {
namespace {

namespace fs = std::filesystem;

uint64_t SplitMix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Uniform in [0, 1) from the top 53 bits.
double Uniform(std::mt19937_64& rng) {
  return static_cast<double>(rng() >> 11) * 0x1.0p-53;
}

// N(0, 1) by Box–Muller (one value per call; the pair's second is dropped so
// that the stream stays simple to reproduce).
double Normal(std::mt19937_64& rng) {
  const double u1 = 1.0 - Uniform(rng);  // (0, 1]
  const double u2 = Uniform(rng);
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(2.0 * M_PI * u2);
}

torch::Tensor NormalTable(std::mt19937_64& rng, int64_t rows, int64_t dim) {
  torch::Tensor t = torch::empty({rows, dim}, torch::kFloat32);
  float* p = t.data_ptr<float>();
  for (int64_t i = 0; i < rows * dim; ++i)
    p[i] = static_cast<float>(Normal(rng));
  return t;
}

bool Inside(int kind, double dx, double dy, double r) {
  switch (kind) {
    case 0:  // square
      return std::abs(dx) <= r && std::abs(dy) <= r;
    case 1:  // circle
      return dx * dx + dy * dy <= r * r;
    case 2:  // triangle, apex up
      return dy >= -r && dy <= r && std::abs(dx) <= (dy + r) / 2;
    default:  // cross
      return (std::abs(dx) <= r && std::abs(dy) <= r / 3) ||
             (std::abs(dy) <= r && std::abs(dx) <= r / 3);
  }
}

double HalfExtent(int size, int64_t image_size) {
  return (size == 0 ? 3.5 : 6.0) * static_cast<double>(image_size) / 32.0;
}

// Renders into `out` ([4, S, S] contiguous float32), which must hold the
// background (-1) already.
void RenderInto(const std::vector<ShapeSpec>& shapes, int64_t s, float* out) {
  const int64_t plane = s * s;
  for (const ShapeSpec& shape : shapes) {
    const double r = HalfExtent(shape.size, s);
    const auto& rgb = ShapeColourRgb()[shape.colour];
    const int64_t x0 = std::max<int64_t>(0, std::floor(shape.cx - r - 1));
    const int64_t x1 = std::min<int64_t>(s - 1, std::ceil(shape.cx + r + 1));
    const int64_t y0 = std::max<int64_t>(0, std::floor(shape.cy - r - 1));
    const int64_t y1 = std::min<int64_t>(s - 1, std::ceil(shape.cy + r + 1));
    for (int64_t y = y0; y <= y1; ++y) {
      for (int64_t x = x0; x <= x1; ++x) {
        int hits = 0;
        for (double oy : {0.25, 0.75}) {
          for (double ox : {0.25, 0.75}) {
            hits += Inside(shape.kind, x + ox - shape.cx, y + oy - shape.cy, r);
          }
        }
        if (hits == 0) continue;
        const float c = hits / 4.0f;
        const int64_t at = y * s + x;
        for (int ch = 0; ch < 3; ++ch)
          out[ch * plane + at] = 2 * c * rgb[ch] - 1;
        out[3 * plane + at] = 2 * c - 1;
      }
    }
  }
}

absl::Status CheckImageSize(int64_t image_size) {
  if (image_size < 16 || image_size % 16 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("shapes dataset: image_size ", image_size,
                     " must be a multiple of 16 (at least 16)"));
  }
  return absl::OkStatus();
}

// Parses one sequence: the shapes it asks for (position = quadrant), or an
// error naming the row.
absl::StatusOr<std::vector<ShapeSpec>> ParseSequence(const int64_t* tokens,
                                                     int64_t row) {
  std::vector<ShapeSpec> shapes;
  bool padded = false;
  for (int g = 0; g < kMaxShapes; ++g) {
    const int64_t* t = tokens + g * kTokensPerShape;
    const bool all_pad = std::all_of(t, t + kTokensPerShape,
                                     [](int64_t v) { return v == kPadToken; });
    if (all_pad) {
      padded = true;
      continue;
    }
    auto in = [](int64_t v, int64_t first, int n) {
      return v >= first && v < first + n;
    };
    if (padded || !in(t[0], kFirstKindToken, kShapeKinds) ||
        !in(t[1], kFirstColourToken, kShapeColours) ||
        !in(t[2], kFirstSizeToken, kShapeSizes) ||
        !in(t[3], kFirstPositionToken, kQuadrants)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "shapes tokens: row ", row, " group ", g,
          " is not [kind, colour, size, position] tokens after shapes: ",
          absl::StrJoin(t, t + kTokensPerShape, ",")));
    }
    ShapeSpec s;
    s.kind = static_cast<int>(t[0] - kFirstKindToken);
    s.colour = static_cast<int>(t[1] - kFirstColourToken);
    s.size = static_cast<int>(t[2] - kFirstSizeToken);
    s.quadrant = static_cast<int>(t[3] - kFirstPositionToken);
    for (const ShapeSpec& other : shapes) {
      if (other.quadrant == s.quadrant) {
        return absl::InvalidArgumentError(
            absl::StrCat("shapes tokens: row ", row, " puts two shapes in ",
                         QuadrantNames()[s.quadrant]));
      }
    }
    shapes.push_back(s);
  }
  return shapes;
}

absl::Status CheckTokens(const torch::Tensor& tokens) {
  if (!tokens.defined() || tokens.dim() != 2 ||
      tokens.size(1) != kShapesSeqLen ||
      tokens.scalar_type() != torch::kInt64) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shapes tokens: expected int64 [N, ", kShapesSeqLen, "], got ",
        tokens.defined()
            ? absl::StrCat("[", absl::StrJoin(tokens.sizes(), ","), "] ",
                           std::string(c10::toString(tokens.scalar_type())))
            : "an undefined tensor"));
  }
  return absl::OkStatus();
}

}  // namespace

const std::array<const char*, kShapeKinds>& ShapeKindNames() {
  static const std::array<const char*, kShapeKinds> names = {
      "square", "circle", "triangle", "cross"};
  return names;
}
const std::array<const char*, kShapeColours>& ShapeColourNames() {
  static const std::array<const char*, kShapeColours> names = {
      "red", "green", "blue", "yellow", "magenta", "cyan"};
  return names;
}
const std::array<const char*, kShapeSizes>& ShapeSizeNames() {
  static const std::array<const char*, kShapeSizes> names = {"small", "large"};
  return names;
}
const std::array<const char*, kQuadrants>& QuadrantNames() {
  static const std::array<const char*, kQuadrants> names = {
      "top-left", "top-right", "bottom-left", "bottom-right"};
  return names;
}
const std::array<std::array<float, 3>, kShapeColours>& ShapeColourRgb() {
  static const std::array<std::array<float, 3>, kShapeColours> rgb = {{
      {1, 0, 0},  // red
      {0, 1, 0},  // green
      {0, 0, 1},  // blue
      {1, 1, 0},  // yellow
      {1, 0, 1},  // magenta
      {0, 1, 1},  // cyan
  }};
  return rgb;
}

absl::StatusOr<ShapesTextEncoder> ShapesTextEncoder::Create(int64_t dim,
                                                            uint64_t seed) {
  if (dim < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("shapes text encoder: dimension ", dim, " < 1"));
  }
  return GuardTorch("shapes text encoder",
                    [&]() -> absl::StatusOr<ShapesTextEncoder> {
                      std::mt19937_64 rng(SplitMix64(seed ^ 0x7E47ull));
                      ShapesTextEncoder e;
                      e.dim_ = dim;
                      e.token_table_ = NormalTable(rng, kVocabularySize, dim);
                      e.position_table_ = NormalTable(rng, kQuadrants, dim);
                      e.slot_table_ = NormalTable(rng, kShapesSeqLen, dim);
                      return e;
                    });
}

absl::StatusOr<torch::Tensor> ShapesTextEncoder::Embed(
    const torch::Tensor& tokens) const {
  RETURN_IF_ERROR(CheckTokens(tokens));
  return GuardTorch(
      "embedding shapes tokens", [&]() -> absl::StatusOr<torch::Tensor> {
        const torch::Tensor t = tokens.to(torch::kCPU).contiguous();
        const int64_t n = t.size(0);
        const int64_t* tok = t.data_ptr<int64_t>();
        torch::Tensor out =
            torch::empty({n, kShapesSeqLen, dim_}, torch::kFloat32);
        float* o = out.data_ptr<float>();
        const float* tt = token_table_.data_ptr<float>();
        const float* pt = position_table_.data_ptr<float>();
        const float* st = slot_table_.data_ptr<float>();
        const float inv2 = 1.0f / std::sqrt(2.0f),
                    inv3 = 1.0f / std::sqrt(3.0f);
        for (int64_t i = 0; i < n; ++i) {
          const int64_t* row = tok + i * kShapesSeqLen;
          RETURN_IF_ERROR(ParseSequence(row, i).status());
          for (int64_t j = 0; j < kShapesSeqLen; ++j) {
            float* e = o + (i * kShapesSeqLen + j) * dim_;
            const float* a = tt + row[j] * dim_;
            const float* s = st + j * dim_;
            if (row[j] == kPadToken) {
              for (int64_t d = 0; d < dim_; ++d) e[d] = (a[d] + s[d]) * inv2;
            } else {
              const int64_t position =
                  row[(j / kTokensPerShape) * kTokensPerShape + 3] -
                  kFirstPositionToken;
              const float* g = pt + position * dim_;
              for (int64_t d = 0; d < dim_; ++d) {
                e[d] = (a[d] + g[d] + s[d]) * inv3;
              }
            }
          }
        }
        return out;
      });
}

torch::Tensor ShapesTextEncoder::Unconditional(int64_t n) const {
  torch::Tensor pad = torch::full({n, kShapesSeqLen}, kPadToken, torch::kInt64);
  return *Embed(pad);  // an all-pad sequence is always well-formed
}

std::vector<std::vector<ShapeSpec>> DrawScenes(
    const ShapesDatasetOptions& options) {
  std::mt19937_64 rng(SplitMix64(options.seed));
  const int64_t s = options.image_size;
  std::vector<std::vector<ShapeSpec>> scenes;
  scenes.reserve(std::max<int64_t>(0, options.num_samples));
  for (int64_t i = 0; i < options.num_samples; ++i) {
    const int count = Uniform(rng) < options.two_shape_probability ? 2 : 1;
    const int q1 = static_cast<int>(rng() % kQuadrants);
    const int q2 =
        static_cast<int>((q1 + 1 + rng() % (kQuadrants - 1)) % kQuadrants);
    std::vector<ShapeSpec> scene;
    for (int k = 0; k < count; ++k) {
      ShapeSpec shape;
      shape.quadrant = k == 0 ? q1 : q2;
      shape.kind = static_cast<int>(rng() % kShapeKinds);
      shape.colour = static_cast<int>(rng() % kShapeColours);
      shape.size = static_cast<int>(rng() % kShapeSizes);
      const double jitter =
          (shape.size == 0 ? 2.0 : 1.0) * static_cast<double>(s) / 32.0;
      const double half = static_cast<double>(s) / 2;
      shape.cx = (shape.quadrant % 2) * half + half / 2 +
                 (2 * Uniform(rng) - 1) * jitter;
      shape.cy = (shape.quadrant / 2) * half + half / 2 +
                 (2 * Uniform(rng) - 1) * jitter;
      scene.push_back(shape);
    }
    std::sort(scene.begin(), scene.end(),
              [](const ShapeSpec& a, const ShapeSpec& b) {
                return a.quadrant < b.quadrant;
              });
    scenes.push_back(std::move(scene));
  }
  return scenes;
}

torch::Tensor RenderScene(const std::vector<ShapeSpec>& shapes,
                          int64_t image_size) {
  torch::Tensor out = torch::full({kShapesChannels, image_size, image_size},
                                  -1.0f, torch::kFloat32);
  RenderInto(shapes, image_size, out.data_ptr<float>());
  return out;
}

std::vector<int64_t> SceneTokens(const std::vector<ShapeSpec>& shapes) {
  std::vector<ShapeSpec> sorted = shapes;
  std::sort(sorted.begin(), sorted.end(),
            [](const ShapeSpec& a, const ShapeSpec& b) {
              return a.quadrant < b.quadrant;
            });
  std::vector<int64_t> tokens(kShapesSeqLen, kPadToken);
  for (size_t k = 0; k < sorted.size() && k < kMaxShapes; ++k) {
    tokens[k * kTokensPerShape + 0] = kFirstKindToken + sorted[k].kind;
    tokens[k * kTokensPerShape + 1] = kFirstColourToken + sorted[k].colour;
    tokens[k * kTokensPerShape + 2] = kFirstSizeToken + sorted[k].size;
    tokens[k * kTokensPerShape + 3] = kFirstPositionToken + sorted[k].quadrant;
  }
  return tokens;
}

absl::StatusOr<QuadrantAttributes> AttributesFromTokens(
    const torch::Tensor& tokens) {
  RETURN_IF_ERROR(CheckTokens(tokens));
  return GuardTorch(
      "shapes attributes", [&]() -> absl::StatusOr<QuadrantAttributes> {
        const torch::Tensor t = tokens.to(torch::kCPU).contiguous();
        const int64_t n = t.size(0);
        const auto i64 = torch::kInt64;
        QuadrantAttributes a{torch::zeros({n, kQuadrants}, i64),
                             torch::zeros({n, kQuadrants}, i64),
                             torch::zeros({n, kQuadrants}, i64),
                             torch::zeros({n, kQuadrants}, i64)};
        auto present = a.present.accessor<int64_t, 2>();
        auto kind = a.kind.accessor<int64_t, 2>();
        auto colour = a.colour.accessor<int64_t, 2>();
        auto size = a.size.accessor<int64_t, 2>();
        for (int64_t i = 0; i < n; ++i) {
          ASSIGN_OR_RETURN(
              auto shapes,
              ParseSequence(t.data_ptr<int64_t>() + i * kShapesSeqLen, i));
          for (const ShapeSpec& s : shapes) {
            present[i][s.quadrant] = 1;
            kind[i][s.quadrant] = s.kind;
            colour[i][s.quadrant] = s.colour;
            size[i][s.quadrant] = s.size;
          }
        }
        return a;
      });
}

std::string PromptText(const std::vector<int64_t>& tokens) {
  if (tokens.size() != static_cast<size_t>(kShapesSeqLen)) return "<invalid>";
  auto shapes = ParseSequence(tokens.data(), 0);
  if (!shapes.ok()) return "<invalid>";
  if (shapes->empty()) return "<empty>";
  std::vector<std::string> parts;
  for (const ShapeSpec& s : *shapes) {
    parts.push_back(absl::StrCat(
        ShapeSizeNames()[s.size], " ", ShapeColourNames()[s.colour], " ",
        ShapeKindNames()[s.kind], " ", QuadrantNames()[s.quadrant]));
  }
  return absl::StrJoin(parts, ", ");
}

absl::StatusOr<ShapesData> GenerateShapesData(
    const ShapesDatasetOptions& options) {
  RETURN_IF_ERROR(CheckImageSize(options.image_size));
  if (options.num_samples < 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "shapes dataset: num_samples ", options.num_samples, " < 1"));
  }
  if (!(options.two_shape_probability >= 0 &&
        options.two_shape_probability <= 1)) {
    return absl::InvalidArgumentError(
        "shapes dataset: two_shape_probability must lie in [0, 1]");
  }
  ASSIGN_OR_RETURN(
      ShapesTextEncoder encoder,
      ShapesTextEncoder::Create(options.embedding_dim, options.embedding_seed));
  const auto scenes = DrawScenes(options);
  return GuardTorch(
      "generating the shapes dataset", [&]() -> absl::StatusOr<ShapesData> {
        const int64_t n = options.num_samples, s = options.image_size;
        ShapesData data;
        data.latents =
            torch::full({n, kShapesChannels, s, s}, -1.0f, torch::kFloat32);
        data.tokens = torch::empty({n, kShapesSeqLen}, torch::kInt64);
        float* latents = data.latents.data_ptr<float>();
        int64_t* tokens = data.tokens.data_ptr<int64_t>();
        for (int64_t i = 0; i < n; ++i) {
          RenderInto(scenes[i], s, latents + i * kShapesChannels * s * s);
          const std::vector<int64_t> t = SceneTokens(scenes[i]);
          std::copy(t.begin(), t.end(), tokens + i * kShapesSeqLen);
        }
        ASSIGN_OR_RETURN(data.encoder_hidden_states,
                         encoder.Embed(data.tokens));
        ASSIGN_OR_RETURN(data.attributes, AttributesFromTokens(data.tokens));
        return data;
      });
}

absl::StatusOr<DatasetManifest> WriteShapesDataset(const ShapesData& data,
                                                   const std::string& dir,
                                                   int64_t shard_size) {
  const int64_t n = data.size();
  if (n < 1 || shard_size < 1 || !data.encoder_hidden_states.defined() ||
      !data.tokens.defined()) {
    return absl::InvalidArgumentError(
        "shapes dataset: nothing to write (empty data or shard size < 1)");
  }
  RETURN_IF_ERROR(PrepareNewDatasetFolder(dir));
  DatasetManifest m;
  m.num_samples = n;
  m.vae_scaling_factor = 1.0;
  m.tensors[kLatents] = {
      {data.latents.size(1), data.latents.size(2), data.latents.size(3)},
      SafetensorsDtype::kF32};
  m.tensors[kEncoderHiddenStates] = {
      {data.encoder_hidden_states.size(1), data.encoder_hidden_states.size(2)},
      SafetensorsDtype::kF32};
  for (int64_t begin = 0, i = 0; begin < n; begin += shard_size, ++i) {
    const int64_t count = std::min(shard_size, n - begin);
    m.shards.push_back({absl::StrFormat("shard-%05d.safetensors", i), count});
    RETURN_IF_ERROR(GuardTorch("writing a shapes shard", [&]() {
      std::map<std::string, torch::Tensor> tensors = {
          {kLatents, data.latents.narrow(0, begin, count).to(torch::kFloat32)},
          {kEncoderHiddenStates,
           data.encoder_hidden_states.narrow(0, begin, count)
               .to(torch::kFloat32)}};
      return WriteTensors((fs::path(dir) / m.shards.back().file).string(),
                          tensors, {{"format", "pt"}});
    }));
  }
  RETURN_IF_ERROR(GuardTorch("writing the shapes attributes", [&]() {
    return WriteTensors((fs::path(dir) / kShapesAttributesFile).string(),
                        {{"tokens", data.tokens},
                         {"present", data.attributes.present},
                         {"kind", data.attributes.kind},
                         {"colour", data.attributes.colour},
                         {"size", data.attributes.size}},
                        {{"format", "pt"}});
  }));
  RETURN_IF_ERROR(WriteDatasetManifest(dir, m));
  return m;
}

absl::StatusOr<ShapesData> ReadShapesAttributes(const std::string& dir) {
  ASSIGN_OR_RETURN(
      auto tensors,
      ReadAllTensors((fs::path(dir) / kShapesAttributesFile).string()));
  for (const char* name : {"tokens", "present", "kind", "colour", "size"}) {
    if (!tensors.contains(name)) {
      return absl::DataLossError(absl::StrCat(
          dir, "/", kShapesAttributesFile, ": tensor \"", name, "\" missing"));
    }
  }
  ShapesData data;
  data.tokens = tensors["tokens"];
  RETURN_IF_ERROR(CheckTokens(data.tokens));
  data.attributes = {tensors["present"], tensors["kind"], tensors["colour"],
                     tensors["size"]};
  return data;
}

}  // namespace lpd::engine
