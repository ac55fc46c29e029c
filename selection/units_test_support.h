// Test data for the units of selection/units.h: a tiny model's units.
#ifndef LPD_SELECTION_UNITS_TEST_SUPPORT_H_
#define LPD_SELECTION_UNITS_TEST_SUPPORT_H_

#include <cstdint>
#include <string>

#include "selection/units.h"

namespace lpd::selection {

inline ModelUnit Unit(const std::string& id, const std::string& kind,
                      int64_t params, bool removable,
                      const std::string& attention = "") {
  ModelUnit unit;
  unit.id = id;
  unit.kind = kind;
  unit.params = params;
  unit.removable = removable;
  unit.attention = attention;
  return unit;
}

// A model of three resnets (one not removable) and one attention of two
// transformer blocks; the attention's own parameters are 10 (norm and
// projections) beyond its blocks' 2 × 20.
inline ModelUnits TinyUnits() {
  ModelUnits units;
  units.total_params = 1000;
  units.units = {
      Unit("down.r0", "resnet", 100, true),
      Unit("down.a0", "attention", 50, true),
      Unit("down.a0.transformer_blocks.0", "transformer_block", 20, true,
           "down.a0"),
      Unit("down.a0.transformer_blocks.1", "transformer_block", 20, true,
           "down.a0"),
      Unit("mid.r0", "resnet", 200, false),
      Unit("up.r0", "resnet", 100, true),
  };
  return units;
}

}  // namespace lpd::selection

#endif  // LPD_SELECTION_UNITS_TEST_SUPPORT_H_
