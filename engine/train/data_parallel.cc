#include "engine/train/data_parallel.h"

#include <stdlib.h>
#include <torch/cuda.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <limits>
#include <map>
#include <mutex>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/status_macros.h"
#include "engine/core/torch_errors.h"

// c10d: the stores always; gloo where its headers were found (the CMake logic
// defines LPD_WITH_GLOO), NCCL with a CUDA LibTorch and nccl.h
// (LPD_WITH_NCCL). LibTorch's headers compile those parts only under
// USE_C10D_GLOO / USE_C10D_NCCL, which its CMake config may or may not set.
#ifdef LPD_WITH_GLOO
#ifndef USE_C10D_GLOO
#define USE_C10D_GLOO
#endif
#else
#undef USE_C10D_GLOO
#endif
#ifdef LPD_WITH_NCCL
#ifndef USE_C10D_NCCL
#define USE_C10D_NCCL
#endif
#else
#undef USE_C10D_NCCL
#endif
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/Store.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/csrc/distributed/c10d/Types.hpp>
#include <torch/csrc/distributed/c10d/Work.hpp>
#ifdef USE_C10D_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#ifdef USE_C10D_NCCL
#include <c10/cuda/CUDAFunctions.h>

#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif
#if TORCH_VERSION_MAJOR >= 2
#include <torch/csrc/distributed/c10d/Backend.hpp>
#else
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#endif

namespace lpd::engine {

// The process group. LibTorch 2.x splits the user-facing ProcessGroup from
// the per-device Backend that ProcessGroupGloo/NCCL implement; 1.x has only
// ProcessGroup. Both offer the collectives used here with the same
// signatures.
#if TORCH_VERSION_MAJOR >= 2
using C10dGroup = c10d::Backend;
#else
using C10dGroup = c10d::ProcessGroup;
#endif

struct DataParallelGroup::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<C10dGroup> group;
};

namespace {

std::chrono::milliseconds Millis(absl::Duration d) {
  return std::chrono::milliseconds(absl::ToInt64Milliseconds(d));
}

struct Rendezvous {
  std::string file;  // file:// path
  std::string host;  // tcp://
  int port = 0;
};

absl::StatusOr<Rendezvous> ParseRendezvous(absl::string_view url) {
  Rendezvous r;
  if (absl::ConsumePrefix(&url, "file://")) {
    if (url.empty() || url[0] != '/') {
      return absl::InvalidArgumentError(absl::StrCat(
          "data parallel: rendezvous file:// needs an absolute path, got \"",
          url, "\""));
    }
    r.file = std::string(url);
    return r;
  }
  if (absl::ConsumePrefix(&url, "tcp://")) {
    const size_t colon = url.rfind(':');
    int port = 0;
    if (colon == absl::string_view::npos || colon == 0 ||
        !absl::SimpleAtoi(url.substr(colon + 1), &port) || port <= 0 ||
        port > 65535) {
      return absl::InvalidArgumentError(absl::StrCat(
          "data parallel: rendezvous tcp:// needs host:port, got \"", url,
          "\""));
    }
    r.host = std::string(url.substr(0, colon));
    if (r.host.size() > 2 && r.host.front() == '[' && r.host.back() == ']') {
      r.host = r.host.substr(1, r.host.size() - 2);  // [IPv6]
    }
    r.port = port;
    return r;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("data parallel: rendezvous must be file:///path or "
                   "tcp://host:port, got \"",
                   url, "\""));
}

// Rendezvous timeouts come out of LibTorch as c10::Error (or
// std::runtime_error from gloo) whose text mentions the timeout.
absl::Status JoinError(const absl::Status& status,
                       const DataParallelOptions& options) {
  const bool timeout = absl::StrContains(status.message(), "imeout") ||
                       absl::StrContains(status.message(), "imed out");
  const std::string text = absl::StrCat(
      "data parallel: rank ", options.rank, " of ", options.world_size,
      " could not join the group at ", options.rendezvous,
      timeout ? absl::StrCat(" within ", absl::FormatDuration(options.timeout),
                             " (are all ranks started with the same "
                             "rendezvous?)")
              : "",
      ": ", status.message());
  return timeout ? absl::DeadlineExceededError(text)
                 : absl::UnavailableError(text);
}

// Bytes of one tensor's elements.
int64_t Bytes(const torch::Tensor& t) {
  return t.numel() * static_cast<int64_t>(t.element_size());
}

}  // namespace

absl::StatusOr<DataParallelOptions> MakeDataParallelOptions(
    int rank, int world_size, absl::string_view rendezvous,
    absl::string_view backend) {
  if (world_size < 1 || rank < 0 || rank >= world_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("data parallel: need 0 <= rank < world_size, got rank ",
                     rank, " and world_size ", world_size));
  }
  if (!backend.empty() && backend != "gloo" && backend != "nccl") {
    return absl::InvalidArgumentError(absl::StrCat(
        "data parallel: backend must be gloo or nccl, got \"", backend, "\""));
  }
  DataParallelOptions options;
  options.rank = rank;
  options.world_size = world_size;
  options.rendezvous = std::string(rendezvous);
  options.backend = std::string(backend);
  if (world_size > 1) RETURN_IF_ERROR(ParseRendezvous(rendezvous).status());
  return options;
}

absl::StatusOr<DataParallelOptions> DataParallelOptionsFromEnv() {
  auto env = [](const char* name) -> std::string {
    const char* value = ::getenv(name);
    return value == nullptr ? "" : value;
  };
  const std::string world = env("WORLD_SIZE");
  if (world.empty()) return DataParallelOptions();
  int world_size = 0, rank = 0;
  if (!absl::SimpleAtoi(world, &world_size) ||
      !absl::SimpleAtoi(env("RANK").empty() ? "0" : env("RANK"), &rank)) {
    return absl::InvalidArgumentError(
        absl::StrCat("data parallel: malformed RANK \"", env("RANK"),
                     "\" or WORLD_SIZE \"", world, "\""));
  }
  std::string rendezvous = env("LPD_RENDEZVOUS");
  if (rendezvous.empty() && !env("MASTER_ADDR").empty()) {
    rendezvous =
        absl::StrCat("tcp://", env("MASTER_ADDR"), ":",
                     env("MASTER_PORT").empty() ? "29500" : env("MASTER_PORT"));
  }
  return MakeDataParallelOptions(rank, world_size, rendezvous,
                                 env("LPD_DP_BACKEND"));
}

torch::Device DataParallelDevice(const DataParallelOptions& options,
                                 torch::Device requested) {
  if (!requested.is_cuda() || requested.has_index() ||
      options.world_size <= 1) {
    return requested;
  }
  int local = options.rank;
  const char* env = ::getenv("LOCAL_RANK");
  if (env == nullptr || !absl::SimpleAtoi(env, &local) || local < 0) {
    const int count = static_cast<int>(torch::cuda::device_count());
    local = count > 0 ? options.rank % count : 0;
  }
  return torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(local));
}

bool DataParallelBackendAvailable(absl::string_view backend) {
#ifdef USE_C10D_GLOO
  if (backend == "gloo") return true;
#endif
#ifdef USE_C10D_NCCL
  if (backend == "nccl") return true;
#endif
  return false;
}

DataParallelGroup::DataParallelGroup(const DataParallelOptions& options,
                                     torch::Device device)
    : options_(options), device_(device), impl_(std::make_unique<Impl>()) {}

DataParallelGroup::~DataParallelGroup() = default;

absl::StatusOr<std::unique_ptr<DataParallelGroup>> DataParallelGroup::Create(
    const DataParallelOptions& options, torch::Device device) {
  RETURN_IF_ERROR(MakeDataParallelOptions(options.rank, options.world_size,
                                          options.rendezvous, options.backend)
                      .status());
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("data parallel: timeout must be > 0");
  }
  std::unique_ptr<DataParallelGroup> group(
      new DataParallelGroup(options, device));
  if (options.world_size == 1) return group;

  const std::string backend = !options.backend.empty()
                                  ? options.backend
                                  : (device.is_cuda() ? "nccl" : "gloo");
  if (!DataParallelBackendAvailable(backend)) {
    return absl::UnimplementedError(absl::StrCat(
        "data parallel: this build has no ", backend, " backend",
        backend == "nccl" ? " (LibTorch without CUDA or without NCCL headers)"
                          : " (gloo headers not found at build time)"));
  }
  if (backend == "nccl" && !device.is_cuda()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "data parallel: nccl needs a CUDA device, not ", device.str()));
  }
  group->backend_ = backend;
  ASSIGN_OR_RETURN(Rendezvous where, ParseRendezvous(options.rendezvous));
  const std::chrono::milliseconds timeout = Millis(options.timeout);

  absl::Status joined = GuardTorch("joining", [&]() -> absl::Status {
    if (!where.file.empty()) {
      group->impl_->store =
          c10::make_intrusive<c10d::FileStore>(where.file, options.world_size);
    } else {
      c10d::TCPStoreOptions tcp;
      tcp.port = static_cast<std::uint16_t>(where.port);
      tcp.isServer = options.rank == 0;
      tcp.numWorkers = static_cast<std::size_t>(options.world_size);
      tcp.waitWorkers = true;
      tcp.timeout = timeout;
      group->impl_->store =
          c10::make_intrusive<c10d::TCPStore>(where.host, tcp);
    }
    group->impl_->store->setTimeout(timeout);
#ifdef USE_C10D_GLOO
    if (backend == "gloo") {
      auto gloo = c10d::ProcessGroupGloo::Options::create(timeout);
      const char* ifname = ::getenv("GLOO_SOCKET_IFNAME");
      if (ifname != nullptr && *ifname != '\0') {
        gloo->devices.push_back(
            c10d::ProcessGroupGloo::createDeviceForInterface(ifname));
      } else if (!where.file.empty() || where.host == "127.0.0.1" ||
                 where.host == "localhost") {
        // One host: the loopback device, whatever the host name resolves to.
        gloo->devices.push_back(
            c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
      } else {
        gloo->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
      }
      group->impl_->group = c10::make_intrusive<c10d::ProcessGroupGloo>(
          group->impl_->store, options.rank, options.world_size, gloo);
    }
#endif
#ifdef USE_C10D_NCCL
    if (backend == "nccl") {
      c10::cuda::set_device(static_cast<c10::DeviceIndex>(
          device.has_index() ? device.index() : 0));
      auto nccl = c10d::ProcessGroupNCCL::Options::create();
      nccl->timeout = timeout;
      group->impl_->group = c10::make_intrusive<c10d::ProcessGroupNCCL>(
          group->impl_->store, options.rank, options.world_size, nccl);
    }
#endif
    if (!group->impl_->group) {
      return absl::InternalError("no process group was created");
    }
    return absl::OkStatus();
  });
  if (!joined.ok()) return JoinError(joined, options);
  // NCCL connects lazily: a first collective makes sure every rank is there
  // (and surfaces connection problems here rather than in the first step).
  absl::Status first = group->Barrier();
  if (!first.ok()) return JoinError(first, options);
  return group;
}

absl::Status DataParallelGroup::AllReduceSum(
    std::vector<torch::Tensor>& tensors) {
  return Reduce(tensors, /*mean=*/false);
}

absl::Status DataParallelGroup::AllReduceMean(
    std::vector<torch::Tensor>& tensors) {
  return Reduce(tensors, /*mean=*/true);
}

namespace {

// Tensors grouped into buckets of one dtype and at most about `limit` bytes,
// in order. A bucket of one contiguous tensor is used in place; others are
// flattened into one buffer.
struct Bucket {
  std::vector<size_t> members;
  int64_t bytes = 0;
  torch::Tensor buffer;
};

std::vector<Bucket> MakeBuckets(const std::vector<torch::Tensor>& tensors,
                                int64_t limit) {
  std::vector<Bucket> buckets;
  std::map<torch::ScalarType, size_t> open;  // dtype → bucket being filled
  for (size_t i = 0; i < tensors.size(); ++i) {
    const torch::ScalarType dtype = tensors[i].scalar_type();
    auto it = open.find(dtype);
    if (it == open.end() ||
        buckets[it->second].bytes + Bytes(tensors[i]) > limit) {
      buckets.emplace_back();
      it = open.insert_or_assign(dtype, buckets.size() - 1).first;
    }
    Bucket& b = buckets[it->second];
    b.members.push_back(i);
    b.bytes += Bytes(tensors[i]);
  }
  for (Bucket& b : buckets) {
    if (b.members.size() == 1 && tensors[b.members[0]].is_contiguous()) {
      b.buffer = tensors[b.members[0]];
      continue;
    }
    std::vector<torch::Tensor> flat;
    flat.reserve(b.members.size());
    for (size_t i : b.members) flat.push_back(tensors[i].reshape({-1}));
    b.buffer = torch::cat(flat);
  }
  return buckets;
}

// Copies bucket buffers back into the tensors they were flattened from.
void Unflatten(const std::vector<Bucket>& buckets,
               std::vector<torch::Tensor>& tensors) {
  torch::NoGradGuard no_grad;
  for (const Bucket& b : buckets) {
    if (b.buffer.is_same(tensors[b.members[0]])) continue;  // in place
    int64_t offset = 0;
    for (size_t i : b.members) {
      torch::Tensor& t = tensors[i];
      t.copy_(b.buffer.narrow(0, offset, t.numel()).view(t.sizes()));
      offset += t.numel();
    }
  }
}

}  // namespace

absl::Status DataParallelGroup::Reduce(std::vector<torch::Tensor>& tensors,
                                       bool mean) {
  for (const torch::Tensor& t : tensors) {
    if (!t.defined()) {
      return absl::InvalidArgumentError("data parallel: undefined tensor");
    }
    if (mean && !t.is_floating_point()) {
      return absl::InvalidArgumentError(
          "data parallel: AllReduceMean needs floating-point tensors");
    }
  }
  if (world_size() == 1 || tensors.empty()) return absl::OkStatus();
  return GuardTorch("data parallel all-reduce", [&]() -> absl::Status {
    torch::NoGradGuard no_grad;
    std::vector<Bucket> buckets = MakeBuckets(tensors, options_.bucket_bytes);
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    works.reserve(buckets.size());
    c10d::AllreduceOptions opts;
    opts.timeout = Millis(options_.timeout);
    // NCCL averages in the collective itself; gloo has no AVG.
    const bool average_in_collective = mean && backend_ == "nccl";
    if (average_in_collective) opts.reduceOp = c10d::ReduceOp::AVG;
    for (Bucket& b : buckets) {
      std::vector<torch::Tensor> one = {b.buffer};
      works.push_back(impl_->group->allreduce(one, opts));
    }
    for (auto& work : works) work->wait();
    if (mean && !average_in_collective) {
      for (Bucket& b : buckets) b.buffer.div_(world_size());
    }
    Unflatten(buckets, tensors);
    return absl::OkStatus();
  });
}

absl::Status DataParallelGroup::Broadcast(std::vector<torch::Tensor>& tensors,
                                          int root) {
  if (root < 0 || root >= world_size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("data parallel: broadcast root ", root, " is not a rank"));
  }
  for (const torch::Tensor& t : tensors) {
    if (!t.defined()) {
      return absl::InvalidArgumentError("data parallel: undefined tensor");
    }
  }
  if (world_size() == 1 || tensors.empty()) return absl::OkStatus();
  return GuardTorch("data parallel broadcast", [&]() -> absl::Status {
    torch::NoGradGuard no_grad;
    std::vector<Bucket> buckets = MakeBuckets(tensors, options_.bucket_bytes);
    std::vector<c10::intrusive_ptr<c10d::Work>> works;
    c10d::BroadcastOptions opts;
    opts.rootRank = root;
    opts.timeout = Millis(options_.timeout);
    for (Bucket& b : buckets) {
      std::vector<torch::Tensor> one = {b.buffer};
      works.push_back(impl_->group->broadcast(one, opts));
    }
    for (auto& work : works) work->wait();
    if (rank() != root) Unflatten(buckets, tensors);
    return absl::OkStatus();
  });
}

absl::Status DataParallelGroup::Barrier() {
  if (world_size() == 1) return absl::OkStatus();
  // An all-reduce read back on the host: a barrier on every backend (NCCL's
  // own barrier has to guess the device).
  torch::Tensor one;
  RETURN_IF_ERROR(GuardTorch("data parallel barrier", [&]() -> absl::Status {
    one = torch::ones(
        {1}, torch::TensorOptions().dtype(torch::kFloat32).device(device_));
    return absl::OkStatus();
  }));
  std::vector<torch::Tensor> tensors = {one};
  RETURN_IF_ERROR(AllReduceSum(tensors));
  return GuardTorch("data parallel barrier", [&]() -> absl::Status {
    const double sum = one.item<double>();
    if (sum != world_size()) {
      return absl::InternalError(absl::StrCat("data parallel: barrier counted ",
                                              sum, " ranks of ", world_size()));
    }
    return absl::OkStatus();
  });
}

struct GradientReducer::State {
  struct Bucket {
    torch::Tensor buffer;
    size_t members = 0;
    size_t ready = 0;
    c10::intrusive_ptr<c10d::Work> work;
  };
  struct Slot {
    size_t bucket = 0;
    int64_t offset = 0;
  };

  DataParallelGroup* group = nullptr;
  std::vector<torch::Tensor> params;
  std::vector<Slot> slots;  // by parameter
  std::vector<Bucket> buckets;
  std::vector<unsigned> hooks;
  std::mutex mu;
  std::vector<bool> got;  // by parameter: its gradient is in its bucket
  size_t next_launch = 0;
  bool armed = false;

  // Starts the complete buckets, in bucket order (the same on every rank).
  void LaunchReady() {
    while (next_launch < buckets.size() &&
           buckets[next_launch].ready == buckets[next_launch].members) {
      Bucket& b = buckets[next_launch];
      std::vector<torch::Tensor> one = {b.buffer};
      c10d::AllreduceOptions opts;
      opts.timeout = Millis(group->options().timeout);
      b.work = group->impl_->group->allreduce(one, opts);
      ++next_launch;
    }
  }

  torch::Tensor SlotView(size_t i) const {
    const Slot& s = slots[i];
    return buckets[s.bucket]
        .buffer.narrow(0, s.offset, params[i].numel())
        .view(params[i].sizes());
  }

  // The hook: runs inside backward(), on autograd's thread for the device.
  void OnGradient(size_t i, const torch::Tensor& grad) {
    std::lock_guard<std::mutex> lock(mu);
    if (!armed || got[i]) return;
    torch::NoGradGuard no_grad;
    SlotView(i).copy_(grad);
    got[i] = true;
    ++buckets[slots[i].bucket].ready;
    LaunchReady();
  }

  void Reset() {
    std::fill(got.begin(), got.end(), false);
    for (Bucket& b : buckets) {
      b.ready = 0;
      b.work.reset();
    }
    next_launch = 0;
  }
};

GradientReducer::GradientReducer(std::unique_ptr<State> state)
    : state_(std::move(state)) {}

GradientReducer::~GradientReducer() {
  for (size_t i = 0; i < state_->hooks.size(); ++i) {
    try {
      state_->params[i].remove_hook(state_->hooks[i]);
    } catch (...) {
    }
  }
}

absl::StatusOr<std::unique_ptr<GradientReducer>> GradientReducer::Create(
    DataParallelGroup& group, std::vector<torch::Tensor> params) {
  if (group.world_size() > 1 && !group.impl_->group) {
    return absl::FailedPreconditionError("data parallel: no process group");
  }
  auto state = std::make_unique<State>();
  state->group = &group;
  state->params = std::move(params);
  RETURN_IF_ERROR(
      GuardTorch("setting up the gradient all-reduce", [&]() -> absl::Status {
        const size_t n = state->params.size();
        state->slots.resize(n);
        state->got.assign(n, false);
        // Buckets over the parameters in reverse (roughly the order in which
        // backward() produces their gradients), one dtype each.
        std::vector<std::vector<size_t>> members;
        std::vector<int64_t> bytes;
        std::map<torch::ScalarType, size_t> open;
        for (size_t k = n; k-- > 0;) {
          const torch::Tensor& p = state->params[k];
          if (!p.requires_grad()) {
            return absl::InvalidArgumentError(
                "data parallel: a parameter does not require grad");
          }
          auto it = open.find(p.scalar_type());
          if (it == open.end() ||
              bytes[it->second] + Bytes(p) > group.options().bucket_bytes) {
            members.emplace_back();
            bytes.push_back(0);
            it = open.insert_or_assign(p.scalar_type(), members.size() - 1)
                     .first;
          }
          state->slots[k] = {it->second, 0};
          members[it->second].push_back(k);
          bytes[it->second] += Bytes(p);
        }
        state->buckets.resize(members.size());
        for (size_t b = 0; b < members.size(); ++b) {
          int64_t numel = 0;
          for (size_t k : members[b]) {
            state->slots[k].offset = numel;
            numel += state->params[k].numel();
          }
          const torch::Tensor& first = state->params[members[b][0]];
          state->buckets[b].buffer =
              torch::zeros({numel}, torch::TensorOptions()
                                        .dtype(first.dtype())
                                        .device(first.device()));
          state->buckets[b].members = members[b].size();
        }
        State* raw = state.get();
        for (size_t k = 0; k < n; ++k) {
          state->hooks.push_back(state->params[k].register_hook(
              [raw, k](const torch::Tensor& grad) {
                raw->OnGradient(k, grad);
              }));
        }
        return absl::OkStatus();
      }));
  return std::unique_ptr<GradientReducer>(
      new GradientReducer(std::move(state)));
}

void GradientReducer::Arm() {
  std::lock_guard<std::mutex> lock(state_->mu);
  state_->Reset();
  state_->armed = true;
}

absl::Status GradientReducer::Finish() {
  State& s = *state_;
  std::lock_guard<std::mutex> lock(s.mu);
  if (!s.armed) {
    return absl::FailedPreconditionError(
        "data parallel: GradientReducer::Finish without Arm");
  }
  s.armed = false;
  if (s.group->world_size() == 1) return absl::OkStatus();
  return GuardTorch("data parallel gradient all-reduce", [&]() -> absl::Status {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < s.params.size(); ++i) {
      if (s.got[i]) continue;
      s.SlotView(i).zero_();  // no gradient this time
      s.got[i] = true;
      ++s.buckets[s.slots[i].bucket].ready;
    }
    s.LaunchReady();
    for (auto& b : s.buckets) b.work->wait();
    const double world = s.group->world_size();
    for (auto& b : s.buckets) b.buffer.div_(world);
    for (size_t i = 0; i < s.params.size(); ++i) {
      torch::Tensor& p = s.params[i];
      if (p.grad().defined()) {
        p.mutable_grad().copy_(s.SlotView(i));
      } else {
        p.mutable_grad() = torch::empty_like(p, torch::MemoryFormat::Preserve)
                               .copy_(s.SlotView(i));
      }
    }
    s.Reset();
    return absl::OkStatus();
  });
}

}  // namespace lpd::engine
