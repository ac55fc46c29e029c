// The adherence metric of the quality study (issue 6): a small CNN trained on
// the shapes generator's ground truth (shapes_dataset.h) that reads, for each
// quadrant of an image, whether it holds a shape and that shape's kind,
// colour and size; a sample "adheres" to its tokens when what the classifier
// reads equals what the tokens ask for.
//
// Classifier. Input: the RGB channels (0–2) of a [N, ≥3, 32, 32] image in
// [-1, 1] (values clamped to [-1, 1] first; the occupancy channel is not
// read, so the score is about what the picture shows). Three stages of two
// 3×3 convolutions (32, 64, 128 channels, GroupNorm, SiLU) with 2× average
// pooling between them, then one feature vector per quadrant (the mean over
// its 4×4 cells at 8×8 resolution for a 32×32 input) and a head shared by
// the quadrants, plus a learned quadrant embedding: 2 + 4 + 6 + 2 logits
// (present, kind, colour, size). Trained with cross-entropy on `present` for
// every quadrant and on kind/colour/size for the occupied ones, with AdamW
// and Gaussian noise augmentation (real images are clean, samples are not).
//
// Adherence of a batch of images to their requested attributes (both
// QuadrantAttributes, requested from the tokens):
//   attribute accuracy = over every requested shape, the fraction of its four
//     attributes read back right: position (a shape is read in its quadrant),
//     kind, colour and size (each counted right only when the quadrant is
//     also read as occupied);
//   exact rate = the fraction of samples whose every requested attribute is
//     right and that show no shape in an unrequested quadrant.
#ifndef LPD_STUDIES_QUALITY_ADHERENCE_CLASSIFIER_H_
#define LPD_STUDIES_QUALITY_ADHERENCE_CLASSIFIER_H_

#include <torch/nn/module.h>
#include <torch/nn/modules/container/sequential.h>
#include <torch/nn/modules/embedding.h>
#include <torch/nn/modules/linear.h>
#include <torch/nn/pimpl.h>
#include <torch/types.h>

#include <cstdint>
#include <functional>

#include "absl/status/statusor.h"
#include "nlohmann/json.hpp"
#include "studies/quality/shapes_dataset.h"

namespace lpd::engine {

class ShapesClassifierImpl : public torch::nn::Module {
 public:
  explicit ShapesClassifierImpl(int64_t width = 32);
  // images [N, ≥3, S, S] (S a multiple of 8) → logits [N, 4, 14]: columns
  // 0–1 present, 2–5 kind, 6–11 colour, 12–13 size.
  torch::Tensor forward(const torch::Tensor& images);

 private:
  torch::nn::Sequential features_{nullptr};
  torch::nn::Embedding quadrant_{nullptr};
  torch::nn::Sequential head_{nullptr};
};
TORCH_MODULE(ShapesClassifier);

inline constexpr int64_t kClassifierLogits =
    2 + kShapeKinds + kShapeColours + kShapeSizes;

struct ClassifierTrainOptions {
  int64_t steps = 600;
  int64_t batch_size = 128;
  double learning_rate = 2e-3;
  double weight_decay = 1e-4;
  // Std of the Gaussian noise added to the [-1, 1] images while training.
  double noise_std = 0.1;
  int64_t width = 32;  // channels of the first stage
  uint64_t seed = 0;
  torch::Device device = torch::kCPU;
  // Called every `log_every` steps with (step, loss) (0 or null: never).
  int64_t log_every = 0;
  std::function<void(int64_t, double)> log;
};

// Trains a classifier on `data` (latents and attributes). InvalidArgument for
// empty data or bad options.
absl::StatusOr<ShapesClassifier> TrainShapesClassifier(
    const ShapesData& data, const ClassifierTrainOptions& options);

// What the classifier reads, per quadrant (int64 [N, 4] each, on the CPU).
// Runs in evaluation mode without gradients, `batch_size` images at a time.
absl::StatusOr<QuadrantAttributes> ReadAttributes(ShapesClassifierImpl& model,
                                                  const torch::Tensor& images,
                                                  int64_t batch_size = 512);

struct AdherenceScore {
  int64_t samples = 0;
  int64_t requested_shapes = 0;
  double attribute_accuracy = 0;  // of the header comment
  double exact_rate = 0;
  // Per attribute over requested shapes: position, kind, colour, size.
  double position = 0, kind = 0, colour = 0, size = 0;
  // Samples showing a shape in a quadrant no token asked for.
  double extra_shape_rate = 0;
};

// Compares what was read with what was requested. InvalidArgument when the
// shapes differ.
absl::StatusOr<AdherenceScore> ScoreAdherence(
    const QuadrantAttributes& read, const QuadrantAttributes& requested);

// Per-head accuracy on real data (the classifier's own accuracy): present
// over all quadrants; kind, colour, size over occupied quadrants.
struct ClassifierAccuracy {
  double present = 0, kind = 0, colour = 0, size = 0;
};
absl::StatusOr<ClassifierAccuracy> MeasureClassifierAccuracy(
    const QuadrantAttributes& read, const QuadrantAttributes& truth);

nlohmann::json AdherenceToJson(const AdherenceScore& score);
nlohmann::json ClassifierAccuracyToJson(const ClassifierAccuracy& accuracy);

}  // namespace lpd::engine

#endif  // LPD_STUDIES_QUALITY_ADHERENCE_CLASSIFIER_H_
