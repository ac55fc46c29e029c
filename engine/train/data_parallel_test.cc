#include "engine/train/data_parallel.h"

#include <ATen/CPUGeneratorImpl.h>
#include <stdlib.h>
#include <torch/torch.h>

#include <atomic>
#include <cmath>
#include <filesystem>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "engine/model/model_loader.h"
#include "engine/train/distill.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "job/checkpoints.h"
#include "storage/local_object_store.h"
#include "testing/temp_folder.h"

namespace lpd::engine {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

using test::TempFolder;

// A fresh FileStore rendezvous (each group needs a file of its own).
std::string NewRendezvous(const TempFolder& folder) {
  static std::atomic<int> counter{0};
  return absl::StrCat("file://", folder.path(), "/rdv-", counter++);
}

// Runs body(rank, group) for every rank of a `world`-rank gloo group, one
// thread per rank; returns once all are done.
void RunRanks(int world, const std::string& rendezvous,
              const std::function<void(int, DataParallelGroup*)>& body,
              int64_t bucket_bytes = int64_t{25} << 20,
              bool overlap_backward = false) {
  std::vector<std::thread> threads;
  for (int rank = 0; rank < world; ++rank) {
    threads.emplace_back([&, rank] {
      DataParallelOptions options;
      options.rank = rank;
      options.world_size = world;
      options.rendezvous = rendezvous;
      options.backend = "gloo";
      options.timeout = absl::Seconds(60);
      options.bucket_bytes = bucket_bytes;
      options.overlap_backward = overlap_backward;
      auto group = DataParallelGroup::Create(options, torch::kCPU);
      ASSERT_TRUE(group.ok()) << group.status();
      body(rank, group->get());
    });
  }
  for (auto& t : threads) t.join();
}

bool HaveGloo() { return DataParallelBackendAvailable("gloo"); }

// Ranks run as threads: one intra-op thread each keeps 2-core CI machines
// from being oversubscribed.
class OneThreadEnvironment : public ::testing::Environment {
 public:
  void SetUp() override { torch::set_num_threads(1); }
};
const auto* const kEnvironment =
    ::testing::AddGlobalTestEnvironment(new OneThreadEnvironment);

TEST(DataParallelOptionsTest, Validates) {
  EXPECT_TRUE(MakeDataParallelOptions(0, 1, "").ok());
  EXPECT_TRUE(MakeDataParallelOptions(1, 2, "tcp://127.0.0.1:29500").ok());
  EXPECT_TRUE(MakeDataParallelOptions(0, 2, "file:///tmp/x", "gloo").ok());
  EXPECT_EQ(MakeDataParallelOptions(2, 2, "tcp://h:1").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeDataParallelOptions(0, 2, "").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeDataParallelOptions(0, 2, "tcp://host").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeDataParallelOptions(0, 2, "file://rel").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeDataParallelOptions(0, 2, "file:///x", "mpi").status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(DataParallelOptionsTest, DevicePerRank) {
  DataParallelOptions options;
  options.rank = 1;
  options.world_size = 2;
  EXPECT_EQ(DataParallelDevice(options, torch::kCPU), torch::Device("cpu"));
  EXPECT_EQ(DataParallelDevice(options, torch::Device("cuda:3")),
            torch::Device("cuda:3"));
  ::setenv("LOCAL_RANK", "1", 1);
  EXPECT_EQ(DataParallelDevice(options, torch::Device("cuda")),
            torch::Device("cuda:1"));
  ::unsetenv("LOCAL_RANK");
  options.world_size = 1;
  options.rank = 0;
  EXPECT_EQ(DataParallelDevice(options, torch::Device("cuda")),
            torch::Device("cuda"));
}

TEST(DataParallelGroupTest, SingleRankNeedsNoBackend) {
  auto group = DataParallelGroup::Create(DataParallelOptions(), torch::kCPU);
  ASSERT_TRUE(group.ok()) << group.status();
  std::vector<torch::Tensor> t = {torch::ones({3})};
  EXPECT_TRUE((*group)->AllReduceMean(t).ok());
  EXPECT_TRUE((*group)->Broadcast(t).ok());
  EXPECT_TRUE((*group)->Barrier().ok());
  EXPECT_TRUE(torch::equal(t[0], torch::ones({3})));
}

class CollectivesTest : public ::testing::TestWithParam<int> {};

TEST_P(CollectivesTest, AllReduceAndBroadcast) {
  if (!HaveGloo()) GTEST_SKIP() << "built without gloo";
  const int world = GetParam();
  TempFolder folder;
  std::vector<std::vector<torch::Tensor>> results(world);
  // Small buckets: several buckets, some of one tensor, mixed dtypes, a
  // non-contiguous tensor.
  RunRanks(
      world, NewRendezvous(folder),
      [&](int rank, DataParallelGroup* group) {
        EXPECT_EQ(group->rank(), rank);
        EXPECT_EQ(group->world_size(), world);
        EXPECT_EQ(group->backend(), "gloo");
        const double r = rank + 1;
        std::vector<torch::Tensor> floats = {
            torch::full({100}, r), torch::arange(6, torch::kFloat64) * r,
            torch::full({2, 3}, r).t(),
            torch::full({5000}, r, torch::kFloat32)};
        ASSERT_TRUE(group->AllReduceMean(floats).ok());
        std::vector<torch::Tensor> ints = {
            torch::full({4}, rank, torch::kInt64)};
        ASSERT_TRUE(group->AllReduceSum(ints).ok());
        std::vector<torch::Tensor> bcast = {
            torch::full({7}, r), torch::full({3, 2}, r, torch::kFloat64).t()};
        ASSERT_TRUE(group->Broadcast(bcast, world - 1).ok());
        ASSERT_TRUE(group->Barrier().ok());
        results[rank] = {floats[0], floats[1], floats[2], floats[3],
                         ints[0],   bcast[0],  bcast[1]};
      },
      /*bucket_bytes=*/1024);
  const double mean = (world + 1) / 2.0;
  const double ranks_sum = world * (world - 1) / 2.0;
  for (int rank = 0; rank < world; ++rank) {
    const auto& t = results[rank];
    ASSERT_EQ(t.size(), 7u) << "rank " << rank;
    EXPECT_TRUE(torch::allclose(t[0], torch::full({100}, mean)));
    EXPECT_TRUE(
        torch::allclose(t[1], torch::arange(6, torch::kFloat64) * mean));
    EXPECT_TRUE(torch::allclose(t[2], torch::full({3, 2}, mean)));
    EXPECT_TRUE(torch::allclose(t[3], torch::full({5000}, mean)));
    EXPECT_TRUE(torch::equal(
        t[4],
        torch::full({4}, static_cast<int64_t>(ranks_sum), torch::kInt64)));
    EXPECT_TRUE(torch::equal(t[5], torch::full({7}, double(world))));
    EXPECT_TRUE(torch::equal(
        t[6], torch::full({2, 3}, double(world), torch::kFloat64)));
  }
}

INSTANTIATE_TEST_SUITE_P(Ranks, CollectivesTest, ::testing::Values(2, 3));

TEST(DataParallelGroupTest, RankAloneTimesOut) {
  if (!HaveGloo()) GTEST_SKIP() << "built without gloo";
  TempFolder folder;
  DataParallelOptions options;
  options.world_size = 2;
  options.rank = 0;
  options.rendezvous = NewRendezvous(folder);
  options.timeout = absl::Seconds(1);
  auto group = DataParallelGroup::Create(options, torch::kCPU);
  ASSERT_FALSE(group.ok());
  EXPECT_EQ(group.status().code(), absl::StatusCode::kDeadlineExceeded)
      << group.status();
  EXPECT_THAT(group.status().message(), HasSubstr("could not join"));

  options.rank = 1;  // a client with no server
  options.rendezvous = "tcp://127.0.0.1:1";
  group = DataParallelGroup::Create(options, torch::kCPU);
  ASSERT_FALSE(group.ok());
  EXPECT_THAT(group.status().message(), HasSubstr("could not join"));
}

// Distillation on the tiny golden model.
std::string GoldenDir() {
  return std::string(LPD_TESTDATA_DIR) + "/unet-golden/tiny-sd15";
}

UNet2DConditionModel LoadTeacher() {
  LoadModelOptions options;
  options.dtype = torch::kFloat32;
  auto model = LoadModel(GoldenDir(), options);
  EXPECT_TRUE(model.ok()) << model.status();
  return *model;
}

// step → a global batch of `batch` noised samples of a fixed synthetic set,
// everything drawn from generators keyed by the step.
BatchSource Source(int64_t batch, uint64_t seed) {
  at::Generator set_gen = at::detail::createCPUGenerator(5);
  const torch::Tensor latents =
      torch::randn({8, 4, 16, 16}, set_gen, torch::kFloat32);
  const torch::Tensor states =
      torch::randn({8, 7, 48}, set_gen, torch::kFloat32);
  torch::Tensor betas = torch::linspace(std::sqrt(0.00085), std::sqrt(0.012),
                                        1000, torch::kFloat32)
                            .square();
  const torch::Tensor alphas = torch::cumprod(1 - betas, 0);
  return [=](int64_t step) -> absl::StatusOr<TrainingBatch> {
    at::Generator gen = at::detail::createCPUGenerator(BatchSeed(seed, step));
    torch::Tensor index = torch::randint(0, 8, {batch}, gen, torch::kInt64);
    torch::Tensor x0 = latents.index_select(0, index);
    torch::Tensor t = torch::randint(0, 1000, {batch}, gen, torch::kInt64);
    torch::Tensor noise = torch::randn(x0.sizes(), gen, torch::kFloat32);
    torch::Tensor a = alphas.index_select(0, t).view({batch, 1, 1, 1});
    TrainingBatch b;
    b.noised.sample = a.sqrt() * x0 + (1 - a).sqrt() * noise;
    b.noised.timestep = t;
    b.noised.encoder_hidden_states = states.index_select(0, index);
    b.target = noise;
    return b;
  };
}

const std::set<std::string>& Removed() {
  static const std::set<std::string> removed = {"down_blocks.0.resnets.1",
                                                "up_blocks.1.attentions.1"};
  return removed;
}

DistillTrainerOptions Options(DataParallelGroup* group) {
  DistillTrainerOptions options;
  options.learning_rate = 1e-3;
  options.warmup_steps = 1;
  options.max_grad_norm = 0.5;  // clipping active: norms are larger
  options.seed = 11;
  // AdamW turns gradients near zero into steps of ±lr whatever their size,
  // so that float rounding (the ranks sum their slices' gradients in
  // another order) could move those weights by up to lr; an eps above that
  // noise keeps the comparison meaningful.
  options.eps = 1e-4;
  options.data_parallel = group;
  return options;
}

struct RunResult {
  std::map<std::string, torch::Tensor> weights;
  std::vector<StepReport> reports;
  // Parameters with a gradient, and the distinct storages those live in.
  size_t grads = 0, grad_storages = 0;
};

RunResult Collect(DistillTrainer& trainer, std::vector<StepReport> reports) {
  RunResult r;
  std::set<const void*> storages;
  for (const auto& item : trainer.student()->named_parameters(true)) {
    r.weights[item.key()] = item.value().detach().clone();
    const torch::Tensor& grad = item.value().grad();
    if (!grad.defined()) continue;
    ++r.grads;
    storages.insert(grad.storage().data());
  }
  r.grad_storages = storages.size();
  r.reports = std::move(reports);
  return r;
}

// Trains `steps` steps (from a checkpoint under `prefix` of `store_dir` when
// there is one, writing one at the end when `store_dir` is set).
RunResult Train(DataParallelGroup* group, int64_t batch, int64_t steps,
                const std::string& store_dir = "",
                std::optional<int64_t> expect_resume = std::nullopt) {
  auto trainer =
      DistillTrainer::Create(LoadTeacher(), Removed(), Options(group));
  EXPECT_TRUE(trainer.ok()) << trainer.status();
  if (!trainer.ok()) return {};
  std::unique_ptr<storage::ObjectStore> store;
  if (!store_dir.empty()) {
    auto local = storage::LocalObjectStore::Create(store_dir);
    EXPECT_TRUE(local.ok()) << local.status();
    store = std::move(*local);
    auto resumed = (*trainer)->Resume(*store, "job/");
    EXPECT_TRUE(resumed.ok()) << resumed.status();
    if (resumed.ok()) {
      EXPECT_EQ(*resumed, expect_resume);
    }
  }
  std::vector<StepReport> reports;
  absl::Status status = (*trainer)->Train(
      steps, Source(batch, 11),
      [&](const StepReport& r) {
        reports.push_back(r);
        return absl::OkStatus();
      },
      CheckpointTarget{store.get(), "job/", 0});
  EXPECT_TRUE(status.ok()) << status;
  return Collect(**trainer, reports);
}

double MaxDiff(const RunResult& a, const RunResult& b) {
  EXPECT_EQ(a.weights.size(), b.weights.size());
  double diff = 0;
  for (const auto& [name, w] : a.weights) {
    auto found = b.weights.find(name);
    if (found == b.weights.end()) return INFINITY;
    diff = std::max(diff, (w - found->second).abs().max().item<double>());
  }
  return diff;
}

void ExpectSameLosses(const RunResult& dp, const RunResult& single,
                      int64_t first_step) {
  ASSERT_LE(dp.reports.size() + first_step, single.reports.size());
  for (size_t i = 0; i < dp.reports.size(); ++i) {
    const StepReport& a = dp.reports[i];
    const StepReport& b = single.reports[i + first_step];
    EXPECT_EQ(a.step, b.step);
    EXPECT_NEAR(a.loss.total, b.loss.total, 1e-5 * std::abs(b.loss.total));
    EXPECT_NEAR(a.loss.task, b.loss.task, 1e-5 * std::abs(b.loss.task));
    EXPECT_NEAR(a.loss.feature_kd, b.loss.feature_kd,
                1e-5 * std::abs(b.loss.feature_kd));
    EXPECT_NEAR(a.grad_norm, b.grad_norm, 1e-4 * b.grad_norm);
    // A block's normalized term is the ratio of a small difference
    // ‖F_S − F_T‖² to ‖F_T‖²: float rounding of the weights (the ranks sum
    // gradients in another order) moves it relatively more than the sums
    // above (seen: 1.1e-5 after a resume).
    for (const auto& [name, v] : b.loss.feature_terms) {
      EXPECT_NEAR(a.loss.feature_terms.at(name), v, 5e-5 * std::abs(v)) << name;
    }
  }
}

TEST(DataParallelDistillTest, TwoRanksEqualOneProcess) {
  if (!HaveGloo()) GTEST_SKIP() << "built without gloo";
  constexpr int64_t kBatch = 4, kSteps = 2;
  const RunResult single = Train(nullptr, kBatch, kSteps);
  TempFolder folder;
  // Gradients all-reduced during backward() (buckets of 64 KiB: many) and
  // after it.
  for (const bool overlap : {true, false}) {
    SCOPED_TRACE(overlap ? "overlapped" : "after backward");
    std::vector<RunResult> ranks(2);
    RunRanks(
        2, NewRendezvous(folder),
        [&](int rank, DataParallelGroup* group) {
          ranks[rank] = Train(group, kBatch, kSteps);
        },
        /*bucket_bytes=*/64 << 10, overlap);
    ASSERT_EQ(ranks[0].reports.size(), static_cast<size_t>(kSteps));
    EXPECT_EQ(MaxDiff(ranks[0], ranks[1]), 0.0);  // identical replicas
    if (!overlap) {
      // The gradients are views into a few flat buffers of ~64 KiB (the
      // bucket size here; larger tensors get one of their own), all-reduced
      // in place.
      EXPECT_GT(ranks[0].grads, 0u);
      EXPECT_LT(ranks[0].grad_storages, ranks[0].grads / 2);
    }
    const double diff = MaxDiff(ranks[0], single);
    std::cout << "2 ranks vs 1 process: max |diff| = " << diff << "\n";
    EXPECT_LE(diff, 2e-6);
    ExpectSameLosses(ranks[0], single, 0);
    ExpectSameLosses(ranks[1], single, 0);
  }
  auto untrained =
      DistillTrainer::Create(LoadTeacher(), Removed(), Options(nullptr));
  ASSERT_TRUE(untrained.ok());
  EXPECT_GT(MaxDiff(single, Collect(**untrained, {})), 0);  // it did train
}

TEST(DataParallelDistillTest, CheckpointsResumeWithOtherRankCounts) {
  if (!HaveGloo()) GTEST_SKIP() << "built without gloo";
  constexpr int64_t kBatch = 6, kSteps = 3, kHalf = 1;
  const RunResult straight = Train(nullptr, kBatch, kSteps);

  // 2 ranks to step 2 (rank 0 writes the checkpoint) ...
  TempFolder store2;
  {
    TempFolder rdv;
    RunRanks(2, NewRendezvous(rdv), [&](int rank, DataParallelGroup* group) {
      Train(group, kBatch, kHalf, store2.path(), std::nullopt);
    });
  }
  // ... resumed by 1 process and by 3 ranks (from a copy of the store).
  TempFolder store3;
  fs::copy(store2.path(), store3.path(),
           fs::copy_options::recursive | fs::copy_options::overwrite_existing);
  const RunResult one = Train(nullptr, kBatch, kSteps, store2.path(), kHalf);
  const double one_diff = MaxDiff(one, straight);
  std::cout << "2 ranks, resumed by 1 process: max |diff| = " << one_diff
            << "\n";
  EXPECT_LE(one_diff, 2e-6);
  ExpectSameLosses(one, straight, kHalf);

  std::vector<RunResult> three(3);
  {
    TempFolder rdv;
    RunRanks(3, NewRendezvous(rdv), [&](int rank, DataParallelGroup* group) {
      three[rank] = Train(group, kBatch, kSteps, store3.path(), kHalf);
    });
  }
  EXPECT_EQ(MaxDiff(three[0], three[2]), 0.0);
  const double three_diff = MaxDiff(three[0], straight);
  std::cout << "2 ranks, resumed by 3 ranks: max |diff| = " << three_diff
            << "\n";
  EXPECT_LE(three_diff, 2e-6);
  ExpectSameLosses(three[1], straight, kHalf);
  auto store = storage::LocalObjectStore::Create(store3.path());
  ASSERT_TRUE(store.ok());
  auto step = job::ReadLatestCheckpoint(**store, "job/");
  ASSERT_TRUE(step.ok() && step->has_value());
  EXPECT_EQ(**step, kSteps);  // written once, by rank 0
}

// A stop asked of one rank only (a SIGTERM that reached one process) stops
// every rank at the same step, after one checkpoint of that step, and no
// rank waits in a collective.
TEST(DataParallelDistillTest, StopOnOneRankStopsAllAtOneStepWithCheckpoint) {
  if (!HaveGloo()) GTEST_SKIP() << "built without gloo";
  TempFolder folder, store_dir;
  auto store = storage::LocalObjectStore::Create(store_dir.path());
  ASSERT_TRUE(store.ok()) << store.status();
  std::vector<absl::Status> statuses(2);
  std::vector<int64_t> steps(2, -1);
  RunRanks(2, NewRendezvous(folder), [&](int rank, DataParallelGroup* group) {
    auto trainer =
        DistillTrainer::Create(LoadTeacher(), Removed(), Options(group));
    ASSERT_TRUE(trainer.ok()) << trainer.status();
    statuses[rank] = (*trainer)->Train(
        10, Source(4, 11),
        [&](const StepReport& r) {
          return rank == 1 && r.step == 1
                     ? absl::CancelledError("rank 1 asked to stop")
                     : absl::OkStatus();
        },
        CheckpointTarget{store->get(), "job/", 0});
    steps[rank] = (*trainer)->step();
  });
  EXPECT_EQ(steps[0], 2);
  EXPECT_EQ(steps[1], 2);
  EXPECT_EQ(statuses[1].code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(statuses[1].message(), "rank 1 asked to stop");
  EXPECT_EQ(statuses[0].code(), absl::StatusCode::kCancelled);
  EXPECT_THAT(statuses[0].message(),
              HasSubstr("another data-parallel rank stopped at step 2"));
  auto latest = job::ReadLatestCheckpoint(**store, "job/");
  ASSERT_TRUE(latest.ok() && latest->has_value()) << latest.status();
  EXPECT_EQ(**latest, 2);
}

TEST(DataParallelDistillTest, BatchNotDivisibleByRanks) {
  if (!HaveGloo()) GTEST_SKIP() << "built without gloo";
  EXPECT_THAT(CheckDataParallelBatch(6, 4).message(),
              HasSubstr("spec.distill.batch_size"));
  EXPECT_TRUE(CheckDataParallelBatch(6, 3).ok());
  TempFolder folder;
  std::vector<absl::Status> statuses(2);
  RunRanks(2, NewRendezvous(folder), [&](int rank, DataParallelGroup* group) {
    auto trainer =
        DistillTrainer::Create(LoadTeacher(), Removed(), Options(group));
    ASSERT_TRUE(trainer.ok()) << trainer.status();
    statuses[rank] = (*trainer)->Train(1, Source(3, 11));
  });
  for (const absl::Status& s : statuses) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_THAT(s.message(), HasSubstr("spec.distill.batch_size"));
  }
}

}  // namespace
}  // namespace lpd::engine
