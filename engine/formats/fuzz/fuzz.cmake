# libFuzzer target for the safetensors reader (ParseSafetensorsHeader and
# SafetensorsFile::Open), and a ctest that runs it briefly.
#
# This file has two modes:
#  - include()d from engine/formats/CMakeLists.txt (when LPD_BUILD_FUZZERS is ON): it
#    builds `safetensors_header_fuzzer` with clang++ even when the main build
#    uses g++ (libFuzzer needs clang), through add_custom_command, and
#    registers the ctest `safetensors_header_fuzz`;
#  - run by that ctest as `cmake -DFUZZER=... -DCORPUS=... -DWORK=...
#    -DARTIFACTS=... -P fuzz.cmake`: copies the seed corpus to a scratch folder
#    (libFuzzer adds to its corpus folder), runs the fuzzer for a bounded time
#    and fails on any crash, leak, sanitizer report or timeout.

if(CMAKE_SCRIPT_MODE_FILE)
  foreach(var FUZZER CORPUS WORK ARTIFACTS)
    if(NOT DEFINED ${var})
      message(FATAL_ERROR "fuzz.cmake: -D${var}=... is required")
    endif()
  endforeach()
  if(NOT EXISTS "${FUZZER}")
    message(FATAL_ERROR "${FUZZER} does not exist: build the target "
                        "safetensors_header_fuzzer first")
  endif()
  if(NOT DEFINED MAX_TOTAL_TIME)
    set(MAX_TOTAL_TIME 20)
  endif()
  file(REMOVE_RECURSE "${WORK}")
  file(MAKE_DIRECTORY "${WORK}" "${ARTIFACTS}")
  file(GLOB seeds "${CORPUS}/*")
  if(seeds)
    file(COPY ${seeds} DESTINATION "${WORK}")
  endif()
  execute_process(
    COMMAND "${FUZZER}" -max_total_time=${MAX_TOTAL_TIME} -timeout=10
            -rss_limit_mb=2048 -max_len=4096 -print_final_stats=1
            "-artifact_prefix=${ARTIFACTS}/" "${WORK}"
    RESULT_VARIABLE result)
  file(REMOVE_RECURSE "${WORK}")
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "safetensors_header_fuzzer failed (${result}); the "
                        "crashing input is in ${ARTIFACTS}")
  endif()
  return()
endif()

if(NOT LPD_BUILD_FUZZERS)
  return()
endif()

# libFuzzer comes with clang: use the main compiler if it is clang, else look
# for one beside it.
if(CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  set(LPD_FUZZ_CXX "${CMAKE_CXX_COMPILER}" CACHE FILEPATH
                   "clang++ that builds the libFuzzer targets")
else()
  find_program(LPD_FUZZ_CXX NAMES clang++ clang++-19 clang++-18 clang++-17
                                  clang++-16 clang++-15 clang++-14
               DOC "clang++ that builds the libFuzzer targets")
endif()
if(NOT LPD_FUZZ_CXX)
  message(WARNING "LPD_BUILD_FUZZERS is ON but no clang++ was found: "
                  "skipping safetensors_header_fuzzer (install clang and "
                  "libclang-rt-14-dev, or set LPD_FUZZ_CXX)")
  return()
endif()

# Abseil's link flags, for a compiler CMake does not drive: pkg-config when it
# knows Abseil, else the Debian shared libraries (which carry their own
# dependencies).
set(_lpd_fuzz_absl_libs)
find_package(PkgConfig QUIET)
if(PKG_CONFIG_FOUND)
  pkg_check_modules(LPD_FUZZ_ABSL QUIET absl_status absl_statusor
                    absl_strings)
  if(LPD_FUZZ_ABSL_FOUND)
    set(_lpd_fuzz_absl_libs ${LPD_FUZZ_ABSL_LDFLAGS})
  endif()
endif()
if(NOT _lpd_fuzz_absl_libs)
  set(_lpd_fuzz_absl_libs -labsl_statusor -labsl_status -labsl_cord
                          -labsl_strings -labsl_str_format_internal
                          -labsl_strings_internal -labsl_raw_logging_internal
                          -labsl_throw_delegate -labsl_int128 -labsl_base)
endif()

get_filename_component(_lpd_fuzz_root "${CMAKE_CURRENT_LIST_DIR}/../../.."
                       ABSOLUTE)
set(_lpd_fuzz_sources
    "${_lpd_fuzz_root}/engine/formats/safetensors.cc"
    "${CMAKE_CURRENT_LIST_DIR}/safetensors_header_fuzzer.cc")
set(_lpd_fuzz_headers "${_lpd_fuzz_root}/engine/formats/safetensors.h"
                      "${_lpd_fuzz_root}/base/status_macros.h")
set(_lpd_fuzz_bin "${CMAKE_CURRENT_BINARY_DIR}/fuzz/safetensors_header_fuzzer")
file(MAKE_DIRECTORY "${CMAKE_CURRENT_BINARY_DIR}/fuzz")

add_custom_command(
  OUTPUT "${_lpd_fuzz_bin}"
  COMMAND
    "${LPD_FUZZ_CXX}" -std=c++20 -g -O1 -fno-omit-frame-pointer
    -fsanitize=fuzzer,address,undefined -fno-sanitize-recover=undefined
    -Wall -Wextra -Wno-unused-parameter "-I${_lpd_fuzz_root}"
    ${_lpd_fuzz_sources} -o "${_lpd_fuzz_bin}" ${_lpd_fuzz_absl_libs}
  DEPENDS ${_lpd_fuzz_sources} ${_lpd_fuzz_headers}
  COMMENT "Building safetensors_header_fuzzer with ${LPD_FUZZ_CXX}"
  VERBATIM COMMAND_EXPAND_LISTS)
add_custom_target(safetensors_header_fuzzer ALL DEPENDS "${_lpd_fuzz_bin}")

if(LPD_BUILD_TESTS)
  add_test(
    NAME safetensors_header_fuzz
    COMMAND
      "${CMAKE_COMMAND}" "-DFUZZER=${_lpd_fuzz_bin}"
      "-DCORPUS=${CMAKE_CURRENT_LIST_DIR}/corpus"
      "-DWORK=${CMAKE_CURRENT_BINARY_DIR}/fuzz/corpus_work"
      "-DARTIFACTS=${CMAKE_CURRENT_BINARY_DIR}/fuzz/artifacts"
      -DMAX_TOTAL_TIME=20 -P "${CMAKE_CURRENT_LIST_FILE}")
  set_tests_properties(safetensors_header_fuzz PROPERTIES TIMEOUT 60
                                                          LABELS fuzz)
endif()
