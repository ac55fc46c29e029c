# One precompiled <torch/torch.h>, shared by every target with a source file
# that includes it (most tests and benchmarks). Parsing it takes about 20 s per
# translation unit on CI's cores, half of such a file's compile time. Files
# that include only <torch/types.h> and the like do not take it: loading the
# 0.6 GB header costs them more than it saves. A target whose flags do not
# match the header's falls back to parsing it (GCC checks, and says so under
# -Winvalid-pch): the same result, only slower.
option(LPD_TORCH_PCH "Share one precompiled LibTorch header" ON)

function(lpd_share_torch_pch)
  if(NOT LPD_TORCH_PCH)
    return()
  endif()
  add_library(lpd_torch_pch OBJECT "${CMAKE_SOURCE_DIR}/cmake/torch_pch.cc")
  target_link_libraries(lpd_torch_pch PRIVATE torch)
  target_precompile_headers(lpd_torch_pch PRIVATE <torch/torch.h>)
  lpd_targets_under("${CMAKE_SOURCE_DIR}" targets)
  set(shared 0)
  foreach(target IN LISTS targets)
    get_target_property(type ${target} TYPE)
    if(target STREQUAL "lpd_torch_pch" OR type STREQUAL "INTERFACE_LIBRARY"
       OR type STREQUAL "UTILITY")
      continue()
    endif()
    get_target_property(sources ${target} SOURCES)
    get_target_property(source_dir ${target} SOURCE_DIR)
    list(FILTER sources INCLUDE REGEX "\\.cc$")  # nvcc takes no GCC header
    set(users "")
    foreach(source IN LISTS sources)
      set(path "${source}")
      if(NOT IS_ABSOLUTE "${path}")
        set(path "${source_dir}/${path}")
      endif()
      if(EXISTS "${path}")
        file(STRINGS "${path}" includes REGEX "^#include <torch/torch\\.h>")
        if(includes)
          list(APPEND users "${source}")
        else()
          set_source_files_properties("${source}" TARGET_DIRECTORY ${target}
                                      PROPERTIES SKIP_PRECOMPILE_HEADERS ON)
        endif()
      endif()
    endforeach()
    if(users)
      target_precompile_headers(${target} REUSE_FROM lpd_torch_pch)
      math(EXPR shared "${shared} + 1")
    endif()
  endforeach()
  message(STATUS "LibTorch precompiled header: used by ${shared} targets")
endfunction()
