// Runs studies/quality/quality_study at tiny CPU sizes and checks what it
// writes:
//   - the split flow on one OUT: a --gate-only run with a two-scale guidance
//     sweep (the saved teacher, classifier and teacher samples, study.json's
//     sweep and chosen scale), --rows-only runs that load the classifier
//     instead of training it, and studies/quality/quality_study_gpus.sh running
//     all 27 row-seeds as two concurrent processes, then the table;
//   - the one-process flow with a forced guidance scale;
//   - the launcher's round-robin assignment (--dry-run).
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string ReadFile(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

json ReadJson(const fs::path& path) {
  EXPECT_TRUE(fs::exists(path)) << path;
  return json::parse(ReadFile(path), nullptr, /*allow_exceptions=*/false);
}

// Runs a shell command, its output to `log`; the exit status (-1: killed).
int Shell(const std::string& command, const fs::path& log) {
  const int rc =
      std::system((command + " > " + log.string() + " 2>&1").c_str());
  return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

// The data and sampling flags every run of one OUT shares.
std::string TinyFlags() {
  return std::string(" --device cpu --config ") + LPD_CONFIGS_DIR +
         "/study-sd15-tiny --image-size 16 --threads 1"
         " --train-samples 256 --heldout-samples 64"
         " --teacher-steps 6 --teacher-batch 8 --classifier-steps 10"
         " --classifier-batch 16 --classifier-width 8 --distill-steps 2"
         " --distill-batch 4 --samples 8 --ddim-steps 2 --eval-samples 8"
         " --eval-batch 8 --calibration-samples 4 --additivity-sets 2"
         " --log-every 5";
}

const char* const kRows[] = {
    "rh-output_loss-nkd",  "rh-output_loss-pkd", "rh-magnitude-nkd",
    "rh-random-nkd",       "rh-handcrafted-nkd", "r50-output_loss-nkd",
    "r50-output_loss-pkd", "r50-magnitude-nkd",  "r50-random-nkd"};

fs::path TempDir(const std::string& name) {
  const fs::path dir =
      fs::temp_directory_path() / (name + "_" + std::to_string(::getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

void CheckReport(const json& r, const std::string& row, int seed,
                 double ratio_h, double guidance) {
  ASSERT_FALSE(r.is_discarded()) << row;
  EXPECT_EQ(r["row"], row);
  EXPECT_EQ(r["seed"], seed);
  const double achieved = r["achieved_ratio"];
  if (row == "rh-handcrafted-nkd") {
    EXPECT_DOUBLE_EQ(achieved, ratio_h);
  } else {
    EXPECT_GE(achieved, r["target_ratio"].get<double>()) << row;
  }
  for (const char* key : {"attribute_accuracy", "exact_rate"}) {
    const double v = r["adherence"][key];
    EXPECT_GE(v, 0.0);
    EXPECT_LE(v, 1.0);
    EXPECT_TRUE(r["teacher_adherence"].contains(key));
  }
  EXPECT_EQ(r["sampling"]["guidance"].get<double>(), guidance) << row;
  EXPECT_GT(r["evaluation"]["relative_error"].get<double>(), 0.0) << row;
  EXPECT_GT(r["evaluation"]["student_loss"].get<double>(), 0.0);
  EXPECT_GT(r["evaluation"]["teacher_loss"].get<double>(), 0.0);
  EXPECT_TRUE(r["sample_psnr_db"]["mean"].is_number());
  EXPECT_EQ(r["distill"]["steps"], 2);
  EXPECT_EQ(r["distill"]["batch"], 4);
  EXPECT_EQ(r["feature_kd"],
            row.find("pkd") != std::string::npos ? "plain" : "normalized");
}

TEST(QualityStudyTest, SplitFlowSharesOneOutFolder) {
  const fs::path dir = TempDir("quality_study_split");
  const fs::path out = dir / "out";
  const std::string bin = QUALITY_STUDY_BIN;
  const std::string gate = bin + " --out " + out.string() + TinyFlags() +
                           " --gate-only --guidance-scales 1,3";

  // An untrained teacher fails the gate: exit 3, study.json says so, and
  // rows-only runs refuse the folder without --allow-failed-gate.
  ASSERT_EQ(Shell(gate, dir / "gate1.log"), 3) << ReadFile(dir / "gate1.log");
  json study = ReadJson(out / "study.json");
  ASSERT_FALSE(study.is_discarded());
  EXPECT_FALSE(study["gate_passed"].get<bool>());
  EXPECT_EQ(study["gate"]["sweep"].size(), 2u);
  const std::string rows_only =
      bin + " --out " + out.string() + TinyFlags() + " --rows-only";
  EXPECT_EQ(
      Shell(rows_only + " --rows rh-random-nkd --seeds 1", dir / "refused.log"),
      3)
      << ReadFile(dir / "refused.log");

  fs::remove_all(out);
  ASSERT_EQ(Shell(gate + " --allow-failed-gate", dir / "gate2.log"), 0)
      << ReadFile(dir / "gate2.log");
  study = ReadJson(out / "study.json");
  ASSERT_FALSE(study.is_discarded());
  EXPECT_EQ(study["mode"], "gate-only");
  const json& g = study["gate"];
  ASSERT_EQ(g["sweep"].size(), 2u);
  EXPECT_EQ(g["sweep"][0]["guidance"].get<double>(), 1.0);
  EXPECT_EQ(g["sweep"][1]["guidance"].get<double>(), 3.0);
  // The chosen scale is the sweep's best (the first of equals).
  const double a1 = g["sweep"][0]["adherence"]["attribute_accuracy"];
  const double a3 = g["sweep"][1]["adherence"]["attribute_accuracy"];
  const double chosen = g["guidance"];
  EXPECT_EQ(chosen, a3 > a1 ? 3.0 : 1.0);
  EXPECT_FALSE(g["guidance_forced"].get<bool>());
  EXPECT_DOUBLE_EQ(g["teacher_adherence"]["attribute_accuracy"].get<double>(),
                   std::max(a1, a3));
  EXPECT_DOUBLE_EQ(
      g["teacher_adherence_unguided"]["attribute_accuracy"].get<double>(), a1);
  EXPECT_EQ(g["passed"].get<bool>(),
            std::max(a1, a3) >= g["threshold"].get<double>());
  EXPECT_EQ(study["classifier"]["saved_to"],
            (out / "classifier.safetensors").string());
  for (const char* file :
       {"teacher/config.json", "teacher/diffusion_pytorch_model.safetensors",
        "classifier.safetensors", "teacher_samples.safetensors",
        "teacher_samples.ppm", "teacher_samples_g1.ppm",
        "teacher_samples_g3.ppm", "additivity.json", "additivity.csv"}) {
    EXPECT_TRUE(fs::exists(out / file)) << file;
  }
  EXPECT_FALSE(fs::exists(out / "rh-random-nkd"));
  const double ratio_h = study["ratio_h"];
  EXPECT_GT(ratio_h, 0.1);
  EXPECT_LT(ratio_h, 0.5);
  const std::string study_text = ReadFile(out / "study.json");
  const std::string classifier_bytes = ReadFile(out / "classifier.safetensors");

  // A rows-only run of one row: the saved classifier is loaded (not
  // trained), the gate's scale and samples are used, and only its own files
  // are written.
  const std::string one =
      rows_only + " --allow-failed-gate --rows rh-random-nkd --seeds 1" +
      " --run-name one";
  ASSERT_EQ(Shell(one, dir / "one.log"), 0) << ReadFile(dir / "one.log");
  const std::string one_log = ReadFile(dir / "one.log");
  EXPECT_EQ(one_log.find("classifier step"), std::string::npos) << one_log;
  CheckReport(ReadJson(out / "rh-random-nkd" / "seed-0" / "report.json"),
              "rh-random-nkd", 0, ratio_h, chosen);
  const json run = ReadJson(out / "runs" / "one.json");
  ASSERT_FALSE(run.is_discarded());
  EXPECT_EQ(run["classifier"]["loaded_from"],
            (out / "classifier.safetensors").string());
  EXPECT_EQ(run["teacher"]["loaded_from"], (out / "teacher").string());
  EXPECT_EQ(run["guidance"].get<double>(), chosen);
  EXPECT_EQ(run["guidance_source"], "gate");
  ASSERT_EQ(run["rows"].size(), 1u);
  // The loaded classifier reads the saved teacher samples exactly as the gate
  // run's classifier did (CPU: bit-identical weights and samples).
  EXPECT_EQ(run["teacher_adherence"], g["teacher_adherence"]);
  EXPECT_EQ(ReadFile(out / "study.json"), study_text);
  EXPECT_EQ(ReadFile(out / "classifier.safetensors"), classifier_bytes);
  EXPECT_FALSE(fs::exists(out / "rh-magnitude-nkd"));

  // It really reads the classifier file: without it the run fails naming it.
  const fs::path missing = dir / "no-such-classifier.safetensors";
  EXPECT_EQ(Shell(one + " --classifier " + missing.string(), dir / "nocl.log"),
            1);
  EXPECT_NE(ReadFile(dir / "nocl.log").find(missing.string()),
            std::string::npos);
  // A scale the gate did not sample is refused; a swept one can be forced.
  EXPECT_EQ(Shell(one + " --guidance-scale 2", dir / "g2.log"), 1);
  EXPECT_NE(ReadFile(dir / "g2.log").find("no teacher samples at guidance 2"),
            std::string::npos);
  // Data flags that differ from the gate run's are refused.
  EXPECT_EQ(Shell(one + " --data-seed 7", dir / "seed.log"), 1);

  // The launcher: all 27 row-seeds as two concurrent rows-only processes on
  // "one GPU", then the table and the plot.
  const std::string launcher =
      std::string(LPD_SOURCE_DIR) +
      "/studies/quality/quality_study_gpus.sh rows " + LPD_BINARY_DIR + " " +
      out.string() + " 2 --gpus 1 --svg " + (dir / "plot.svg").string() +
      TinyFlags() + " --allow-failed-gate";
  ASSERT_EQ(Shell(launcher, dir / "launcher.log"), 0)
      << ReadFile(dir / "launcher.log");
  for (const char* row : kRows) {
    for (int seed = 0; seed < 3; ++seed) {
      CheckReport(ReadJson(out / row / ("seed-" + std::to_string(seed)) /
                           "report.json"),
                  row, seed, ratio_h, chosen);
    }
  }
  int rows_run = 0;
  for (const char* name : {"gpu0-p0", "gpu0-p1"}) {
    const json r = ReadJson(out / "runs" / (std::string(name) + ".json"));
    ASSERT_FALSE(r.is_discarded()) << name;
    EXPECT_EQ(r["classifier"]["loaded_from"],
              (out / "classifier.safetensors").string());
    rows_run += static_cast<int>(r["rows"].size());
    EXPECT_TRUE(
        fs::exists(out / "logs" / ("rows-" + std::string(name) + ".log")));
  }
  EXPECT_EQ(rows_run, 27);
  EXPECT_EQ(ReadFile(out / "study.json"), study_text);
  const std::string table = ReadFile(out / "table.md");
  for (const char* row : kRows) {
    EXPECT_NE(table.find(std::string("| ") + row + " |"), std::string::npos)
        << row;
  }
  EXPECT_NE(table.find("guidance sweep of the teacher"), std::string::npos);
  EXPECT_EQ(table.find("WARNING"), std::string::npos) << table;
  EXPECT_TRUE(fs::exists(dir / "plot.svg"));
  // Nothing but the files named above: no temporaries left behind.
  for (const auto& entry : fs::recursive_directory_iterator(out)) {
    EXPECT_EQ(entry.path().filename().string().find(".tmp-"), std::string::npos)
        << entry.path();
  }
  fs::remove_all(dir);
}

TEST(QualityStudyTest, OneProcessWithForcedGuidanceScale) {
  const fs::path dir = TempDir("quality_study_one");
  const fs::path out = dir / "out";
  const std::string cmd = std::string(QUALITY_STUDY_BIN) + " --out " +
                          out.string() + TinyFlags() +
                          " --guidance-scale 2 --allow-failed-gate --seeds 1"
                          " --rows rh-handcrafted-nkd,r50-output_loss-pkd";
  ASSERT_EQ(Shell(cmd, dir / "run.log"), 0) << ReadFile(dir / "run.log");
  const json study = ReadJson(out / "study.json");
  ASSERT_FALSE(study.is_discarded());
  EXPECT_EQ(study["mode"], "full");
  EXPECT_EQ(study["gate"]["guidance"].get<double>(), 2.0);
  EXPECT_TRUE(study["gate"]["guidance_forced"].get<bool>());
  EXPECT_EQ(study["gate"]["sweep"].size(), 1u);
  EXPECT_TRUE(study["gate"]["teacher_adherence_unguided"].contains(
      "attribute_accuracy"));
  EXPECT_EQ(study["rows"].size(), 2u);
  CheckReport(ReadJson(out / "rh-handcrafted-nkd" / "seed-0" / "report.json"),
              "rh-handcrafted-nkd", 0, study["ratio_h"], 2.0);
  CheckReport(ReadJson(out / "r50-output_loss-pkd" / "seed-0" / "report.json"),
              "r50-output_loss-pkd", 0, study["ratio_h"], 2.0);
  EXPECT_FALSE(fs::exists(out / "rh-random-nkd"));
  EXPECT_FALSE(fs::exists(out / "teacher_samples_g2.ppm"));  // no sweep
  EXPECT_TRUE(fs::exists(out / "additivity.json"));
  EXPECT_TRUE(fs::exists(out / "classifier.safetensors"));
  EXPECT_FALSE(fs::exists(out / "runs"));
  // --guidance-scale and --guidance-scales exclude each other.
  EXPECT_EQ(Shell(cmd + " --guidance-scales 1,2", dir / "both.log"), 2);
  fs::remove_all(dir);
}

TEST(QualityStudyTest, LauncherDealsThePairsRoundRobin) {
  const fs::path dir = TempDir("quality_study_launcher");
  const std::string launcher = std::string(LPD_SOURCE_DIR) +
                               "/studies/quality/quality_study_gpus.sh rows " +
                               LPD_BINARY_DIR + " " + (dir / "out").string() +
                               " 3 --gpus 4 --dry-run --distill-steps 5";
  ASSERT_EQ(Shell(launcher, dir / "dry.log"), 0) << ReadFile(dir / "dry.log");
  std::istringstream lines(ReadFile(dir / "dry.log"));
  std::string line;
  std::set<std::string> pairs;
  std::map<int, int> processes_per_gpu;
  std::vector<int> counts;
  std::set<int> gpus_with_three;
  while (std::getline(lines, line)) {
    if (line.rfind("gpu", 0) == 0) {
      // "gpuG-pJ: row:seed,row:seed"
      const int gpu = std::stoi(line.substr(3));
      ++processes_per_gpu[gpu];
      std::string list = line.substr(line.find(": ") + 2);
      int n = 0;
      std::istringstream items(list);
      std::string item;
      while (std::getline(items, item, ',')) {
        EXPECT_TRUE(pairs.insert(item).second) << item << " twice";
        ++n;
      }
      counts.push_back(n);
      if (n == 3) gpus_with_three.insert(gpu);
      ASSERT_TRUE(std::getline(lines, line));
      EXPECT_EQ(
          line.rfind("  CUDA_VISIBLE_DEVICES=" + std::to_string(gpu) + " ", 0),
          0u)
          << line;
      EXPECT_NE(line.find("--rows-only --row-seeds " + list),
                std::string::npos);
      EXPECT_NE(line.find("--distill-steps 5"), std::string::npos);
    }
  }
  EXPECT_EQ(pairs.size(), 27u);
  for (const char* row : kRows) {
    for (int seed = 0; seed < 3; ++seed) {
      EXPECT_TRUE(pairs.contains(std::string(row) + ":" + std::to_string(seed)))
          << row << " " << seed;
    }
  }
  ASSERT_EQ(counts.size(), 12u);  // 4 GPUs x 3 processes
  for (int gpu = 0; gpu < 4; ++gpu) EXPECT_EQ(processes_per_gpu[gpu], 3);
  // 27 over 12 slots: three slots run 3 pairs, on three different GPUs.
  EXPECT_EQ(*std::max_element(counts.begin(), counts.end()), 3);
  EXPECT_EQ(*std::min_element(counts.begin(), counts.end()), 2);
  EXPECT_EQ(gpus_with_three.size(), 3u);
  fs::remove_all(dir);
}

}  // namespace
