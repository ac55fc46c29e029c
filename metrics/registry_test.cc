#include "metrics/registry.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace lpd::metrics {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

// promtool's verdict on an exposition: its exit code and output.
std::pair<int, std::string> PromtoolCheck(const std::string& text) {
  char path[] = "/tmp/lpd-metrics-XXXXXX";
  const int fd = mkstemp(path);
  EXPECT_GE(fd, 0);
  close(fd);
  std::ofstream(path) << text;
  const std::string command =
      std::string("promtool check metrics < ") + path + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  std::string output;
  char buffer[512];
  while (pipe != nullptr && fgets(buffer, sizeof(buffer), pipe) != nullptr) {
    output += buffer;
  }
  const int status = pipe != nullptr ? pclose(pipe) : -1;
  unlink(path);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

// One family of each kind, with series.
void DeclareExample(Registry& r) {
  prometheus::BuildCounter()
      .Name("lpd_jobs_submitted_total")
      .Help("Jobs accepted.")
      .Register(r.families())
      .Add({})
      .Increment(3);
  auto& jobs = prometheus::BuildGauge()
                   .Name("lpd_jobs")
                   .Help("Jobs by state.")
                   .Register(r.families());
  jobs.Add({{"state", "running"}}).Set(2);
  jobs.Add({{"state", "queued"}}).Set(0);
  prometheus::BuildGauge()
      .Name("lpd_job_progress_ratio")
      .Help("Progress of a job.")
      .Register(r.families())
      .Add({{"job", "odd \"name\"\\\n"}})
      .Set(0.25);
  auto& phase = prometheus::BuildHistogram()
                    .Name("lpd_phase_duration_seconds")
                    .Help("Phase durations.")
                    .Register(r.families())
                    .Add({{"phase", "score"}},
                         prometheus::Histogram::BucketBoundaries{0.5, 1, 2.5});
  phase.Observe(0.2);
  phase.Observe(0.7);
  phase.Observe(100);
}

TEST(RegistryTest, SerializesEveryFamilyWithItsTypeLabelsAndBuckets) {
  Registry r;
  DeclareExample(r);
  const std::string text = r.Serialize();
  EXPECT_THAT(text, HasSubstr("# TYPE lpd_jobs_submitted_total counter\n"
                              "lpd_jobs_submitted_total 3\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE lpd_jobs gauge\n"));
  EXPECT_THAT(text, HasSubstr("lpd_jobs{state=\"running\"} 2\n"));
  EXPECT_THAT(text, HasSubstr("lpd_jobs{state=\"queued\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("lpd_job_progress_ratio{job=\"odd "
                              "\\\"name\\\"\\\\\\n\"} 0.25\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE lpd_phase_duration_seconds histogram\n"));
  for (const char* bucket :
       {"{phase=\"score\",le=\"0.5\"} 1\n", "{phase=\"score\",le=\"1\"} 2\n",
        "{phase=\"score\",le=\"2.5\"} 2\n",
        "{phase=\"score\",le=\"+Inf\"} 3\n"}) {
    EXPECT_THAT(
        text,
        HasSubstr(std::string("lpd_phase_duration_seconds_bucket") + bucket));
  }
  EXPECT_THAT(
      text,
      HasSubstr("lpd_phase_duration_seconds_sum{phase=\"score\"} 100.9\n"));
  EXPECT_THAT(
      text, HasSubstr("lpd_phase_duration_seconds_count{phase=\"score\"} 3\n"));
}

TEST(RegistryTest, PromtoolAcceptsTheExpositionAndRejectsABrokenOne) {
  Registry r;
  DeclareExample(r);
  AddBuildInfo(r, "0.1.0");
  const auto [code, output] = PromtoolCheck(r.Serialize());
  ASSERT_NE(code, 127) << "promtool not found: scripts/setup-debian.sh "
                          "installs it (Debian package prometheus)";
  EXPECT_EQ(code, 0) << output;
  EXPECT_EQ(output, "");
  // The check is real: a counter without _total and a malformed line fail.
  const auto [bad_code, bad_output] = PromtoolCheck(
      "# HELP jobs x\n# TYPE jobs counter\njobs 1\nnot a metric line{\n");
  EXPECT_NE(bad_code, 0) << bad_output;
}

TEST(RegistryTest, BuildInfoIsOneWithTheVersion) {
  Registry r;
  AddBuildInfo(r, "1.2.3");
  EXPECT_THAT(r.Serialize(),
              HasSubstr("# TYPE lpd_build_info gauge\n"
                        "lpd_build_info{version=\"1.2.3\"} 1\n"));
}

TEST(RegistryTest, CollectorsRunBeforeEachCollectionInOrder) {
  Registry r;
  auto& workers = prometheus::BuildGauge()
                      .Name("lpd_workers")
                      .Help("Workers.")
                      .Register(r.families())
                      .Add({{"state", "idle"}});
  int idle = 4;
  std::string order;
  r.AddCollector([&] {
    order += "a";
    workers.Set(idle);
  });
  r.AddCollector([&] { order += "b"; });
  EXPECT_THAT(r.Serialize(), HasSubstr("lpd_workers{state=\"idle\"} 4\n"));
  idle = 1;
  EXPECT_EQ(r.Collect().size(), 1u);
  EXPECT_THAT(r.Serialize(), HasSubstr("lpd_workers{state=\"idle\"} 1\n"));
  EXPECT_EQ(order, "ababab");
}

TEST(RegistryTest, IncrementToCatchesUpAndNeverLowers) {
  Registry r;
  auto& retried = prometheus::BuildCounter()
                      .Name("lpd_tasks_retried_total")
                      .Help("Retries.")
                      .Register(r.families())
                      .Add({{"reason", "failed"}});
  IncrementTo(retried, 5);
  EXPECT_EQ(retried.Value(), 5);
  IncrementTo(retried, 3);  // a lower total (e.g. after a restart)
  EXPECT_EQ(retried.Value(), 5);
  IncrementTo(retried, 8.5);
  EXPECT_EQ(retried.Value(), 8.5);
  EXPECT_THAT(r.Serialize(),
              HasSubstr("lpd_tasks_retried_total{reason=\"failed\"} 8.5\n"));
}

TEST(RegistryTest, RemoveSeriesRemovesOnlyThatSeries) {
  Registry r;
  auto& loss = prometheus::BuildGauge()
                   .Name("lpd_distill_loss")
                   .Help("Loss.")
                   .Register(r.families());
  loss.Add({{"job", "a"}, {"term", "total"}}).Set(0.5);
  loss.Add({{"job", "a"}, {"term", "task"}}).Set(0.25);
  loss.Add({{"job", "b"}, {"term", "total"}}).Set(0.125);
  RemoveSeries(loss, {{"job", "a"}, {"term", "total"}});
  RemoveSeries(loss, {{"job", "a"}, {"term", "total"}});  // gone already
  RemoveSeries(loss, {{"job", "c"}, {"term", "total"}});  // never there
  const std::string text = r.Serialize();
  EXPECT_THAT(text, Not(HasSubstr("{job=\"a\",term=\"total\"}")));
  EXPECT_THAT(text,
              HasSubstr("lpd_distill_loss{job=\"a\",term=\"task\"} 0.25\n"));
  EXPECT_THAT(text,
              HasSubstr("lpd_distill_loss{job=\"b\",term=\"total\"} 0.125\n"));
  EXPECT_FALSE(loss.Has({{"job", "a"}, {"term", "total"}}));
  // A family whose last series went is left out of the exposition.
  RemoveSeries(loss, {{"job", "a"}, {"term", "task"}});
  RemoveSeries(loss, {{"job", "b"}, {"term", "total"}});
  EXPECT_THAT(r.Serialize(), Not(HasSubstr("lpd_distill_loss")));
}

TEST(RegistryTest, DurationBucketsGoFromAMillisecondToFifteenMinutes) {
  Registry r;
  prometheus::BuildHistogram()
      .Name("lpd_distill_step_duration_seconds")
      .Help("Steps.")
      .Register(r.families())
      .Add({}, DurationBuckets())
      .Observe(0.003);
  const std::string text = r.Serialize();
  for (const char* le :
       {"0.001", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1",
        "2.5", "5", "10", "30", "60", "120", "300", "600", "900", "+Inf"}) {
    EXPECT_THAT(text, HasSubstr(std::string("_bucket{le=\"") + le + "\"}"));
  }
  EXPECT_THAT(text, HasSubstr("_bucket{le=\"0.001\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("_bucket{le=\"0.005\"} 1\n"));
  EXPECT_EQ(DurationBuckets().size(), 18u);
}

TEST(RegistryTest, BadNamesAndNamesUsedTwiceAreRefused) {
  Registry r;
  EXPECT_THROW(prometheus::BuildGauge().Name("lpd jobs").Register(r.families()),
               std::invalid_argument);
  prometheus::BuildGauge().Name("lpd_jobs").Register(r.families());
  EXPECT_THROW(
      prometheus::BuildCounter().Name("lpd_jobs").Register(r.families()),
      std::invalid_argument);
  EXPECT_THROW(prometheus::BuildGauge().Name("lpd_jobs").Register(r.families()),
               std::invalid_argument);
}

}  // namespace
}  // namespace lpd::metrics
