// A conditional toy dataset for the quality study (issue 6): small scenes of
// one or two coloured shapes, rendered to 32×32 images that the U-Net models
// directly as its 4-channel "latents", and a token sequence ("text") that
// determines the scene, embedded by a fixed random "text encoder".
//
// Scene. One or two shapes (equal odds), each in its own quadrant of the
// image, each with four attributes:
//   kind     ∈ {square, circle, triangle, cross}
//   colour   ∈ {red, green, blue, yellow, magenta, cyan}
//   size     ∈ {small (half-extent 3.5 px), large (half-extent 6 px)}
//   position ∈ {top-left, top-right, bottom-left, bottom-right} quadrant
// The shape's centre is the quadrant's centre plus a uniform jitter of at
// most ±2 px (small) or ±1 px (large), so a shape never leaves its quadrant.
// Pixels are rendered with 2×2 supersampling (coverage c ∈ {0, ¼, ½, ¾, 1})
// on a black background.
//
// "Latents" [4, S, S] (S = 32 by default), every value in [-1, 1]:
//   channels 0–2: the RGB image mapped from [0, 1] to [-1, 1] (2·v − 1),
//   channel 3:    the occupancy mask (coverage of any shape), 2·c − 1.
// So the background is −1 in all four channels.
//
// Text. L = 8 tokens: [kind, colour, size, position] of each shape, shapes in
// quadrant order, padded with kPadToken (0). Vocabulary (kVocabularySize 17):
//   0 pad; 1–4 kinds; 5–10 colours; 11–12 sizes; 13–16 positions.
// The "text encoder" is fixed (not learned), from its own seed:
//   e_j = (T[token_j] + G[position token of token j's shape] + P[j]) / √3
// for an attribute token at slot j, and (T[pad] + P[j]) / √2 for a pad; T
// (per token), G (per position) and P (per slot) are N(0, 1) vectors of the
// model's cross_attention_dim. G gives each attribute token its shape's
// position, as a contextual text encoder would; without it, cross-attention
// could not tell which colour goes with which shape. The embedding of the
// all-pad sequence is the unconditional ("empty prompt") state used for
// conditioning dropout and classifier-free guidance.
//
// Everything is drawn from std::mt19937_64 streams and Box–Muller, not from
// LibTorch's generators, so a seed gives the same bytes with any LibTorch.
#ifndef LPD_STUDIES_QUALITY_SHAPES_DATASET_H_
#define LPD_STUDIES_QUALITY_SHAPES_DATASET_H_

#include <torch/types.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "engine/data/dataset.h"

namespace lpd::engine {

inline constexpr int kShapeKinds = 4;
inline constexpr int kShapeColours = 6;
inline constexpr int kShapeSizes = 2;
inline constexpr int kQuadrants = 4;
inline constexpr int kMaxShapes = 2;
inline constexpr int kTokensPerShape = 4;
inline constexpr int64_t kShapesSeqLen = kMaxShapes * kTokensPerShape;  // 8
inline constexpr int64_t kPadToken = 0;
inline constexpr int64_t kFirstKindToken = 1;
inline constexpr int64_t kFirstColourToken = kFirstKindToken + kShapeKinds;
inline constexpr int64_t kFirstSizeToken = kFirstColourToken + kShapeColours;
inline constexpr int64_t kFirstPositionToken = kFirstSizeToken + kShapeSizes;
inline constexpr int64_t kVocabularySize = kFirstPositionToken + kQuadrants;
inline constexpr int64_t kShapesImageSize = 32;
inline constexpr int64_t kShapesChannels = 4;
// The name of the file beside dataset.json that holds the tokens and the
// ground-truth attributes (int64 safetensors: "tokens" [N, L] and "present",
// "kind", "colour", "size" [N, 4], one column per quadrant).
inline constexpr char kShapesAttributesFile[] = "shapes_attributes.safetensors";

// Names, for prompts and reports.
const std::array<const char*, kShapeKinds>& ShapeKindNames();
const std::array<const char*, kShapeColours>& ShapeColourNames();
const std::array<const char*, kShapeSizes>& ShapeSizeNames();
const std::array<const char*, kQuadrants>& QuadrantNames();
// RGB in [0, 1] of each colour.
const std::array<std::array<float, 3>, kShapeColours>& ShapeColourRgb();

// One shape of a scene. quadrant: 0 top-left, 1 top-right, 2 bottom-left,
// 3 bottom-right. (cx, cy): its centre in pixels (x right, y down; pixel
// (i, j) covers [i, i+1) × [j, j+1)).
struct ShapeSpec {
  int kind = 0;
  int colour = 0;
  int size = 0;
  int quadrant = 0;
  double cx = 0;
  double cy = 0;
};

// The attributes per quadrant, int64 [N, 4] each: present ∈ {0, 1}; kind,
// colour, size hold the class (0 where absent).
struct QuadrantAttributes {
  torch::Tensor present, kind, colour, size;
};

struct ShapesData {
  torch::Tensor latents;                // [N, 4, S, S] float32 in [-1, 1]
  torch::Tensor tokens;                 // [N, L] int64
  torch::Tensor encoder_hidden_states;  // [N, L, D] float32
  QuadrantAttributes attributes;        // the ground truth
  int64_t size() const { return latents.defined() ? latents.size(0) : 0; }
};

struct ShapesDatasetOptions {
  int64_t num_samples = 1024;
  uint64_t seed = 0;  // scenes
  // The text encoder's dimension (the model's cross_attention_dim) and seed.
  // Train, held-out and prompt sets must share both.
  int64_t embedding_dim = 64;
  uint64_t embedding_seed = 1234;
  int64_t image_size = kShapesImageSize;  // multiple of 16, ≥ 16
  double two_shape_probability = 0.5;
};

// The fixed "text encoder" of the header comment.
class ShapesTextEncoder {
 public:
  // InvalidArgument for dim < 1.
  static absl::StatusOr<ShapesTextEncoder> Create(int64_t dim, uint64_t seed);
  // tokens: int64 [N, L] (L = kShapesSeqLen) → float32 [N, L, dim] on the
  // CPU. InvalidArgument for another shape, a token outside the vocabulary,
  // or a sequence that is not a list of well-formed shapes then padding.
  absl::StatusOr<torch::Tensor> Embed(const torch::Tensor& tokens) const;
  // The embedding of `n` empty (all-pad) sequences [n, L, dim].
  torch::Tensor Unconditional(int64_t n) const;
  int64_t dim() const { return dim_; }

 private:
  ShapesTextEncoder() = default;
  int64_t dim_ = 0;
  torch::Tensor token_table_, position_table_, slot_table_;  // float32
};

// Draws `options.num_samples` scenes. Deterministic in (seed, options).
std::vector<std::vector<ShapeSpec>> DrawScenes(
    const ShapesDatasetOptions& options);

// Renders one scene to float32 [4, S, S] in [-1, 1] (layout above).
torch::Tensor RenderScene(const std::vector<ShapeSpec>& shapes,
                          int64_t image_size = kShapesImageSize);

// The token sequence [L] of a scene (shapes sorted by quadrant).
std::vector<int64_t> SceneTokens(const std::vector<ShapeSpec>& shapes);

// The attributes a token batch [N, L] asks for; InvalidArgument for a
// malformed sequence (a group that is not kind, colour, size, position
// tokens in that order, two shapes in one quadrant, a shape after padding).
absl::StatusOr<QuadrantAttributes> AttributesFromTokens(
    const torch::Tensor& tokens);

// "small red circle top-left, large blue cross bottom-right" (or "<empty>").
std::string PromptText(const std::vector<int64_t>& tokens);

// Draws, renders and embeds a dataset in memory. InvalidArgument for bad
// options.
absl::StatusOr<ShapesData> GenerateShapesData(
    const ShapesDatasetOptions& options);

// Writes `data` in the dataset format of dataset.h into `dir` (created if
// missing; AlreadyExists when it already holds a dataset.json): shards of
// `latents` and `encoder_hidden_states` (F32, `shard_size` samples each),
// kShapesAttributesFile, then dataset.json (vae_scaling_factor 1: these
// latents are pixels, no VAE). Returns the manifest.
absl::StatusOr<DatasetManifest> WriteShapesDataset(const ShapesData& data,
                                                   const std::string& dir,
                                                   int64_t shard_size = 4096);

// Reads kShapesAttributesFile of a dataset folder back: tokens and
// attributes (latents and encoder states stay undefined; read them with
// Dataset).
absl::StatusOr<ShapesData> ReadShapesAttributes(const std::string& dir);

}  // namespace lpd::engine

#endif  // LPD_STUDIES_QUALITY_SHAPES_DATASET_H_
