// Runs bench/quality_study end to end at tiny CPU sizes and checks what it
// writes: a report per row and seed with the fields scripts/quality_table.py
// reads, study.json, the additivity files, the saved teacher; then reruns two
// rows from the saved teacher.
#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>

#include "nlohmann/json.hpp"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

json ReadJson(const fs::path& path) {
  std::ifstream in(path);
  EXPECT_TRUE(in.good()) << path;
  std::stringstream text;
  text << in.rdbuf();
  return json::parse(text.str(), nullptr, /*allow_exceptions=*/false);
}

std::string TinyFlags() {
  return std::string(" --device cpu --config ") + LPD_CONFIGS_DIR +
         "/study-sd15-tiny --image-size 16 --threads 1"
         " --train-samples 256 --heldout-samples 64"
         " --teacher-steps 6 --teacher-batch 8 --classifier-steps 10"
         " --classifier-batch 16 --classifier-width 8 --distill-steps 2"
         " --distill-batch 4 --samples 8 --ddim-steps 2 --eval-samples 8"
         " --eval-batch 8 --calibration-samples 4 --additivity-sets 2"
         " --seeds 1 --log-every 5";
}

TEST(QualityStudyTest, RunsEndToEndAtTinySizes) {
  const fs::path out = fs::temp_directory_path() /
                       ("quality_study_test_" + std::to_string(::getpid()));
  fs::remove_all(out);
  // Without --allow-failed-gate an untrained teacher stops the study (3).
  const std::string base =
      std::string(QUALITY_STUDY_BIN) + " --out " + out.string() + TinyFlags();
  int rc =
      std::system((base + " > " + (out.string() + ".log1") + " 2>&1").c_str());
  ASSERT_TRUE(WIFEXITED(rc));
  EXPECT_EQ(WEXITSTATUS(rc), 3);
  json study = ReadJson(out / "study.json");
  ASSERT_FALSE(study.is_discarded());
  EXPECT_FALSE(study["gate_passed"].get<bool>());

  fs::remove_all(out);
  rc = std::system(
      (base + " --allow-failed-gate > " + out.string() + ".log2 2>&1").c_str());
  ASSERT_TRUE(WIFEXITED(rc));
  ASSERT_EQ(WEXITSTATUS(rc), 0) << "see " << out.string() << ".log2";

  const char* rows[] = {
      "rh-output_loss-nkd",  "rh-output_loss-pkd", "rh-magnitude-nkd",
      "rh-random-nkd",       "rh-handcrafted-nkd", "r50-output_loss-nkd",
      "r50-output_loss-pkd", "r50-magnitude-nkd",  "r50-random-nkd"};
  study = ReadJson(out / "study.json");
  const double ratio_h = study["ratio_h"];
  EXPECT_GT(ratio_h, 0.1);
  EXPECT_LT(ratio_h, 0.5);
  for (const char* row : rows) {
    const json r = ReadJson(out / row / "seed-0" / "report.json");
    ASSERT_FALSE(r.is_discarded()) << row;
    EXPECT_EQ(r["row"], row);
    EXPECT_EQ(r["seed"], 0);
    const double achieved = r["achieved_ratio"];
    const double target = r["target_ratio"];
    if (std::string(row) == "rh-handcrafted-nkd") {
      EXPECT_DOUBLE_EQ(achieved, ratio_h);
    } else {
      EXPECT_GE(achieved, target) << row;
    }
    for (const char* key : {"attribute_accuracy", "exact_rate"}) {
      const double v = r["adherence"][key];
      EXPECT_GE(v, 0.0);
      EXPECT_LE(v, 1.0);
      EXPECT_TRUE(r["teacher_adherence"].contains(key));
    }
    EXPECT_GT(r["evaluation"]["relative_error"].get<double>(), 0.0) << row;
    EXPECT_GT(r["evaluation"]["student_loss"].get<double>(), 0.0);
    EXPECT_GT(r["evaluation"]["teacher_loss"].get<double>(), 0.0);
    EXPECT_TRUE(r["sample_psnr_db"]["mean"].is_number());
    EXPECT_EQ(r["distill"]["steps"], 2);
    EXPECT_EQ(r["distill"]["batch"], 4);
    EXPECT_EQ(r["feature_kd"], std::string(row).find("pkd") != std::string::npos
                                   ? "plain"
                                   : "normalized");
  }
  const json additivity = ReadJson(out / "additivity.json");
  ASSERT_FALSE(additivity.is_discarded());
  EXPECT_GT(additivity["pooled"]["samples"].get<int>(), 2);
  EXPECT_TRUE(additivity.contains("by_set_size"));
  std::ifstream csv(out / "additivity.csv");
  std::string header;
  std::getline(csv, header);
  EXPECT_EQ(header, "set_size,predicted,measured");
  EXPECT_TRUE(fs::exists(out / "teacher" / "config.json"));
  EXPECT_TRUE(
      fs::exists(out / "teacher" / "diffusion_pytorch_model.safetensors"));
  EXPECT_TRUE(fs::exists(out / "teacher_samples.ppm"));

  // Reuse the saved teacher for two rows.
  const fs::path again = out.string() + "_again";
  fs::remove_all(again);
  rc =
      std::system((std::string(QUALITY_STUDY_BIN) + " --out " + again.string() +
                   TinyFlags() + " --teacher " + (out / "teacher").string() +
                   " --allow-failed-gate --rows rh-random-nkd,r50-random-nkd"
                   " > " +
                   again.string() + ".log 2>&1")
                      .c_str());
  ASSERT_TRUE(WIFEXITED(rc));
  ASSERT_EQ(WEXITSTATUS(rc), 0) << "see " << again.string() << ".log";
  EXPECT_TRUE(fs::exists(again / "rh-random-nkd" / "seed-0" / "report.json"));
  EXPECT_FALSE(fs::exists(again / "rh-magnitude-nkd"));
  EXPECT_FALSE(fs::exists(again / "teacher"));
  EXPECT_EQ(ReadJson(again / "study.json")["teacher"]["loaded_from"],
            (out / "teacher").string());

  // The table script reads the reports (when python3 is there).
  if (std::system("python3 --version > /dev/null 2>&1") == 0) {
    rc = std::system((std::string("python3 ") + LPD_SOURCE_DIR +
                      "/scripts/quality_table.py " + out.string() + " --svg " +
                      out.string() + "/additivity.svg > " + out.string() +
                      "/table.md")
                         .c_str());
    EXPECT_EQ(rc, 0);
    std::ifstream table(out / "table.md");
    std::stringstream text;
    text << table.rdbuf();
    EXPECT_NE(text.str().find("rh-output_loss-nkd"), std::string::npos);
    EXPECT_TRUE(fs::exists(out / "additivity.svg"));
  }
  fs::remove_all(out);
  fs::remove_all(again);
  fs::remove(out.string() + ".log1");
  fs::remove(out.string() + ".log2");
  fs::remove(again.string() + ".log");
}

}  // namespace
