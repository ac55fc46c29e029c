#include "selection/units.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "selection/units_test_support.h"

namespace lpd::selection {
namespace {

using ::testing::ElementsAre;

TEST(ModelUnitsTest, EffectiveRemovalTakesTheAttentionShell) {
  const ModelUnits units = TinyUnits();
  auto one = EffectiveRemoval(units, {"down.a0.transformer_blocks.0"});
  ASSERT_TRUE(one.ok()) << one.status();
  EXPECT_THAT(*one, ElementsAre("down.a0.transformer_blocks.0"));
  auto both =
      EffectiveRemovedParams(units, {"down.a0.transformer_blocks.0",
                                     "down.a0.transformer_blocks.1", "up.r0"});
  ASSERT_TRUE(both.ok()) << both.status();
  EXPECT_EQ(*both, 150);  // the attention's 50, not the blocks' 40, + 100
  EXPECT_FALSE(EffectiveRemoval(units, {"mid.r0"}).ok());
  EXPECT_FALSE(EffectiveRemoval(units, {"nope"}).ok());

  auto back =
      ModelUnitsFromJson(nlohmann::json::parse(ModelUnitsToJson(units).dump()));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(ModelUnitsToJson(*back), ModelUnitsToJson(units));
  nlohmann::json bad = ModelUnitsToJson(units);
  bad["units"][2]["attention"] = "up.r0";
  EXPECT_FALSE(ModelUnitsFromJson(bad).ok());
}

}  // namespace
}  // namespace lpd::selection
