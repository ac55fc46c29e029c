#include "worker/data_parallel_launcher.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace lpd::worker {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

// A stand-in for `lpd-worker distill-rank`: a shell script that behaves as
// $MODE says, so the supervision is tested without LibTorch.
constexpr char kFakeRank[] = R"sh(#!/bin/bash
rank= result= device=none
while [ $# -gt 0 ]; do
  case "$1" in
    --rank) rank=$2; shift ;;
    --result) result=$2; shift ;;
    --device) device=$2; shift ;;
  esac
  shift
done
ok() { printf '{"ok":true,"result":%s}\n' "$1" > "$result"; exit 0; }
fail() { printf '{"ok":false,"code":%d,"message":"%s"}\n' "$1" "$2" > "$result"; exit 1; }
case "$MODE" in
  succeed)
    if [ "$rank" = 0 ]; then
      echo "@progress 0.5 DISTILL: step 1/2"
      echo "@log DISTILL: hello"
      sleep 0.3
    else
      echo "stray output"
    fi
    ok "{\"final_step\":2,\"local_rank\":\"$LOCAL_RANK\",\"secret\":\"$SECRET\",\"device\":\"$device\"}" ;;
  fail_rank1)
    if [ "$rank" = 1 ]; then fail 8 "no GPU for this rank"; fi
    trap '' TERM   # stuck in a collective: only SIGKILL ends it
    sleep 60 ;;
  killed_rank1)
    if [ "$rank" = 1 ]; then kill -9 $$; fi
    sleep 60 ;;
  stoppable)
    terms=0
    trap 'terms=$((terms + 1)); echo "rank $rank got SIGTERM"' TERM
    echo "@progress 0.1 DISTILL: step 1/10"
    for i in $(seq 100); do
      sleep 0.1
      if [ $terms -gt 0 ]; then
        sleep 0.5  # time for a second signal to arrive, if one were sent
        fail 1 "stopped after $terms SIGTERM(s)"
      fi
    done
    ok '{}' ;;
esac
)sh";

class LauncherTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char pattern[] = "/tmp/lpd-launcher-test-XXXXXX";
    ASSERT_NE(mkdtemp(pattern), nullptr);
    dir_ = pattern;
    script_ = dir_ + "/fake-rank";
    std::ofstream(script_) << kFakeRank;
    ASSERT_EQ(chmod(script_.c_str(), 0755), 0);
    options_.executable = script_;
    // The launcher's work folders go here.
    fs::create_directory(dir_ + "/tmp");
    setenv("TMPDIR", (dir_ + "/tmp").c_str(), 1);
    options_.world_size = 2;
    options_.device = "cpu";
    options_.failure_grace = absl::Seconds(1);
    options_.stop_grace = absl::Seconds(10);
    options_.log = [this](const std::string& line) { logs_.push_back(line); };
  }
  void TearDown() override {
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
  }
  absl::StatusOr<std::string> Run(const std::string& mode) {
    options_.extra_env.push_back("MODE=" + mode);
    return RunDataParallelDistill(lpd::v1::CompressionJob(), options_);
  }

  std::string dir_, script_;
  DataParallelLaunchOptions options_;
  std::vector<std::string> logs_;
};

TEST_F(LauncherTest, ReturnsRankZerosResultAndPassesOnItsProgressAndLogs) {
  std::vector<std::pair<double, std::string>> progress;
  options_.progress = [&](double f, const std::string& line) {
    progress.emplace_back(f, line);
    return absl::OkStatus();
  };
  options_.extra_env.push_back("SECRET=s3cr3t");
  auto result = Run("succeed");
  ASSERT_TRUE(result.ok()) << result.status();
  const nlohmann::json json = nlohmann::json::parse(*result);
  EXPECT_EQ(json["final_step"], 2);
  EXPECT_EQ(json["local_rank"], "0");   // each rank is told its own
  EXPECT_EQ(json["secret"], "s3cr3t");  // through the environment
  EXPECT_EQ(json["device"], "cpu");
  EXPECT_THAT(progress, ::testing::Contains(std::make_pair(
                            0.5, std::string("DISTILL: step 1/2"))));
  EXPECT_THAT(logs_, ::testing::Contains("DISTILL: hello"));
  EXPECT_THAT(logs_, ::testing::Contains("rank 1: stray output"));
  // The work folder (job, rendezvous, results) is gone.
  EXPECT_TRUE(fs::is_empty(dir_ + "/tmp"));
}

TEST_F(LauncherTest, AFailingRankFailsTheTaskWithItsStatusAndNoRankLingers) {
  const auto start = std::chrono::steady_clock::now();
  auto result = Run("fail_rank1");
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(result.status().message(),
            "data-parallel rank 1: no GPU for this rank");
  // Rank 0 ignored SIGTERM and was killed after the 1 s grace, not after
  // its 60 s sleep.
  EXPECT_LT(seconds, 20);
}

TEST_F(LauncherTest, ARankKilledWithoutAResultIsRetryable) {
  auto result = Run("killed_rank1");
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kAborted);
  EXPECT_THAT(result.status().message(),
              HasSubstr("data-parallel rank 1 ended (signal 9)"));
}

TEST_F(LauncherTest, AStopFromProgressReachesEveryRank) {
  int calls = 0;
  options_.progress = [&](double, const std::string&) {
    return ++calls >= 2 ? absl::CancelledError("job cancelled")
                        : absl::OkStatus();
  };
  const auto start = std::chrono::steady_clock::now();
  auto result = Run("stoppable");
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start)
          .count();
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kCancelled);
  EXPECT_EQ(result.status().message(), "job cancelled");
  EXPECT_LT(seconds, 8);  // the ranks left on SIGTERM, not after 10 s
  EXPECT_THAT(logs_, ::testing::Contains(HasSubstr(
                         "stopping the data-parallel ranks (job cancelled)")));
  // One SIGTERM per rank: a second one makes a real rank exit at once,
  // without its checkpoint.
  int terms = 0;
  for (const std::string& line : logs_) {
    if (line.find("got SIGTERM") != std::string::npos) ++terms;
  }
  EXPECT_EQ(terms, 2);
}

TEST_F(LauncherTest, RejectsADeviceWithAnIndexAndASingleRank) {
  options_.device = "cuda:1";
  EXPECT_EQ(Run("succeed").status().code(), absl::StatusCode::kInvalidArgument);
  options_.device = "cuda";
  options_.world_size = 1;
  EXPECT_EQ(Run("succeed").status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(RankResultTest, RoundTrips) {
  auto ok = ParseRankResult(RankResultJson(std::string(R"({"a":1})")));
  ASSERT_TRUE(ok.ok());
  EXPECT_EQ(*ok, R"({"a":1})");
  auto failed = ParseRankResult(
      RankResultJson(absl::FailedPreconditionError("no plan.json")));
  EXPECT_EQ(failed.status(), absl::FailedPreconditionError("no plan.json"));
  EXPECT_EQ(ParseRankResult("garbage").status().code(),
            absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace lpd::worker
