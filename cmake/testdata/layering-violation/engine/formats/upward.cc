// A file of the lowest engine layer that includes the model: the layering
// check must reject it (ctest layering_rejects_upward_include).
#include "engine/model/unet.h"
