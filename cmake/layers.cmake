# The allowed dependency directions between the project's folders
# (docs/architecture.md), in one table, checked two ways:
#
#  - at configure time, lpd_check_layers() (called at the end of the top
#    CMakeLists.txt) fails the configuration when a target links a library of
#    a folder its own folder may not use, or when a target that must stay
#    free of LibTorch reaches it through any chain of links;
#  - at test time, the ctest `layering` runs this file as a script
#    (cmake -DLPD_SOURCE_DIR=... -P cmake/layers.cmake) and fails when a
#    source file includes a header of a folder its folder may not use.
#
# A folder may always use itself. LPD_LAYER_<folder> lists the others, with
# '/' written as '_' in the variable name. `bench` may use everything but
# server/, worker/ and client/; `tests` everything (it starts those
# binaries). `testing/` (test helpers) is for tests only: files named
# *_test.cc, *_test_support.h or test_util.h, and tests/ and bench/.

cmake_policy(VERSION 3.22)

set(LPD_LAYER_FOLDERS
    base testing proto metrics storage selection job engine/formats engine/core
    engine/kernels engine/model engine/data engine/compress engine/train
    runtime server worker client studies/quality bench tests)

set(LPD_LAYER_base "")
set(LPD_LAYER_testing "")
set(LPD_LAYER_proto "")
set(LPD_LAYER_metrics base)
set(LPD_LAYER_storage base)
set(LPD_LAYER_selection base)
set(LPD_LAYER_job base proto storage selection)
set(LPD_LAYER_engine_formats base)
set(LPD_LAYER_engine_core base engine/formats)
set(LPD_LAYER_engine_kernels base)
set(LPD_LAYER_engine_model base selection engine/formats engine/core
                           engine/kernels)
set(LPD_LAYER_engine_data base engine/formats engine/core)
set(LPD_LAYER_engine_compress base storage selection job engine/formats
                              engine/core engine/kernels engine/model
                              engine/data)
set(LPD_LAYER_engine_train base storage job engine/formats engine/core
                           engine/kernels engine/model engine/data)
set(LPD_LAYER_runtime base proto storage selection job engine/formats
                      engine/core engine/kernels engine/model engine/data
                      engine/compress engine/train)
set(LPD_LAYER_server base proto metrics storage selection job runtime)
set(LPD_LAYER_worker base proto metrics storage selection job runtime
                     engine/formats engine/core engine/kernels engine/model
                     engine/data engine/compress engine/train)
set(LPD_LAYER_client base proto job)
set(LPD_LAYER_studies_quality base storage selection job engine/formats
                              engine/core engine/kernels engine/model
                              engine/data engine/compress engine/train)
set(LPD_LAYER_bench base proto metrics storage selection job runtime
                    engine/formats engine/core engine/kernels engine/model
                    engine/data engine/compress engine/train)
set(LPD_LAYER_tests ${LPD_LAYER_bench} server worker client studies/quality)

# Libraries that must not reach LibTorch through any link: the scheduler's
# and the client's whole world, and the worker's service loop.
set(LPD_TORCH_FREE_TARGETS
    lpd_base lpd_base_grpc lpd_proto lpd_grpc lpd_metrics lpd_storage
    lpd_selection lpd_job lpd_engine_formats lpd_runtime_select lpd_job_store
    lpd_scheduler lpd_grpc_services lpd_scheduler_metrics lpd-scheduler
    lpdctl lpd_worker_loop lpd_dp_launcher lpd_worker_metrics)

# The folder (an entry of LPD_LAYER_FOLDERS) that holds `path` (relative to
# the source root), or "" when none does. The longest match wins.
function(lpd_layer_of path out)
  set(best "")
  foreach(folder IN LISTS LPD_LAYER_FOLDERS)
    string(LENGTH "${folder}" n)
    string(SUBSTRING "${path}/" 0 ${n} head)
    string(LENGTH "${path}/" m)
    if(m GREATER n)
      string(SUBSTRING "${path}/" ${n} 1 next)
    else()
      set(next "")
    endif()
    string(LENGTH "${best}" b)
    if(head STREQUAL folder AND next STREQUAL "/" AND n GREATER b)
      set(best "${folder}")
    endif()
  endforeach()
  set(${out} "${best}" PARENT_SCOPE)
endfunction()

# Whether folder `from` may use folder `to`.
function(lpd_layer_allows from to out)
  string(REPLACE "/" "_" var "LPD_LAYER_${from}")
  if(from STREQUAL to OR "${to}" IN_LIST ${var})
    set(${out} TRUE PARENT_SCOPE)
  else()
    set(${out} FALSE PARENT_SCOPE)
  endif()
endfunction()

if(CMAKE_SCRIPT_MODE_FILE)
  # The include check (ctest `layering`).
  if(NOT DEFINED LPD_SOURCE_DIR)
    message(FATAL_ERROR "layers.cmake: -DLPD_SOURCE_DIR=... is required")
  endif()
  set(violations "")
  set(checked 0)
  foreach(folder IN LISTS LPD_LAYER_FOLDERS)
    file(GLOB_RECURSE sources RELATIVE "${LPD_SOURCE_DIR}"
         "${LPD_SOURCE_DIR}/${folder}/*.h" "${LPD_SOURCE_DIR}/${folder}/*.cc"
         "${LPD_SOURCE_DIR}/${folder}/*.cu")
    foreach(source IN LISTS sources)
      get_filename_component(dir "${source}" DIRECTORY)
      lpd_layer_of("${dir}" from)
      if(NOT from STREQUAL folder)
        continue()  # a deeper folder's file: checked under that folder
      endif()
      math(EXPR checked "${checked} + 1")
      file(STRINGS "${LPD_SOURCE_DIR}/${source}" includes
           REGEX "^#include \"[^\"]+\"")
      foreach(line IN LISTS includes)
        string(REGEX REPLACE "^#include \"([^\"]+)\".*" "\\1" header "${line}")
        if(header MATCHES "^(lpd|grpc)/")
          set(to proto)  # generated from proto/
        else()
          get_filename_component(header_dir "${header}" DIRECTORY)
          lpd_layer_of("${header_dir}" to)
        endif()
        if(to STREQUAL "")
          continue()  # a library's header (absl/, gtest/, nlohmann/, ...)
        endif()
        if(to STREQUAL "testing" AND NOT from STREQUAL "testing")
          if(source MATCHES "(_test\\.cc|_test_support\\.h|/test_util\\.h)$"
             OR from STREQUAL "tests" OR from STREQUAL "bench")
            set(ok TRUE)
          else()
            set(ok FALSE)
          endif()
        else()
          lpd_layer_allows("${from}" "${to}" ok)
        endif()
        if(NOT ok)
          list(APPEND violations "${source}: ${from}/ may not use ${to}/ (${header})")
        endif()
      endforeach()
    endforeach()
  endforeach()
  if(violations)
    list(JOIN violations "\n  " text)
    message(FATAL_ERROR "includes against the layering "
                        "(cmake/layers.cmake):\n  ${text}")
  endif()
  message(STATUS "layering: ${checked} files, every include allowed")
  return()
endif()

# Every target defined in `dir` and below.
function(lpd_targets_under dir out)
  get_property(targets DIRECTORY "${dir}" PROPERTY BUILDSYSTEM_TARGETS)
  get_property(subdirs DIRECTORY "${dir}" PROPERTY SUBDIRECTORIES)
  foreach(sub IN LISTS subdirs)
    lpd_targets_under("${sub}" more)
    list(APPEND targets ${more})
  endforeach()
  set(${out} "${targets}" PARENT_SCOPE)
endfunction()

# The project targets that `target` links directly (PRIVATE and INTERFACE).
function(lpd_project_links target out)
  get_target_property(type ${target} TYPE)
  set(links "")
  if(NOT type STREQUAL "INTERFACE_LIBRARY")
    get_target_property(direct ${target} LINK_LIBRARIES)
    if(direct)
      list(APPEND links ${direct})
    endif()
  endif()
  get_target_property(iface ${target} INTERFACE_LINK_LIBRARIES)
  if(iface)
    list(APPEND links ${iface})
  endif()
  set(result "")
  foreach(link IN LISTS links)
    string(REGEX REPLACE "^\\$<LINK_ONLY:(.*)>$" "\\1" link "${link}")
    list(APPEND result "${link}")
  endforeach()
  list(REMOVE_DUPLICATES result)
  set(${out} "${result}" PARENT_SCOPE)
endfunction()

# Whether `target` reaches LibTorch (the `torch` target or a torch library)
# through any chain of links; `seen` guards against cycles.
function(lpd_reaches_torch target out)
  set(visited "${ARGN}")
  if(target STREQUAL "torch" OR target MATCHES "torch_(cpu|cuda)|libtorch")
    set(${out} TRUE PARENT_SCOPE)
    return()
  endif()
  if(NOT TARGET ${target} OR "${target}" IN_LIST visited)
    set(${out} FALSE PARENT_SCOPE)
    return()
  endif()
  list(APPEND visited ${target})
  get_target_property(imported ${target} IMPORTED)
  if(imported)
    set(${out} FALSE PARENT_SCOPE)
    return()
  endif()
  lpd_project_links(${target} links)
  foreach(link IN LISTS links)
    lpd_reaches_torch("${link}" hit ${visited})
    if(hit)
      set(${out} TRUE PARENT_SCOPE)
      return()
    endif()
  endforeach()
  set(${out} FALSE PARENT_SCOPE)
endfunction()

function(lpd_check_layers)
  lpd_targets_under("${CMAKE_SOURCE_DIR}" targets)
  set(violations "")
  foreach(target IN LISTS targets)
    get_target_property(source_dir ${target} SOURCE_DIR)
    file(RELATIVE_PATH rel "${CMAKE_SOURCE_DIR}" "${source_dir}")
    lpd_layer_of("${rel}" from)
    if(from STREQUAL "")
      continue()
    endif()
    lpd_project_links(${target} links)
    foreach(link IN LISTS links)
      if(NOT TARGET ${link})
        continue()
      endif()
      get_target_property(imported ${link} IMPORTED)
      if(imported)
        continue()
      endif()
      get_target_property(link_dir ${link} SOURCE_DIR)
      file(RELATIVE_PATH link_rel "${CMAKE_SOURCE_DIR}" "${link_dir}")
      lpd_layer_of("${link_rel}" to)
      if(to STREQUAL "" OR to STREQUAL "testing")
        continue()  # test helpers: header-only, the include check governs them
      endif()
      lpd_layer_allows("${from}" "${to}" ok)
      if(NOT ok)
        list(APPEND violations "${target} (${from}/) links ${link} (${to}/)")
      endif()
    endforeach()
  endforeach()
  foreach(target IN LISTS LPD_TORCH_FREE_TARGETS)
    if(TARGET ${target})
      lpd_reaches_torch(${target} hit)
      if(hit)
        list(APPEND violations "${target} must not reach LibTorch, but does")
      endif()
    endif()
  endforeach()
  if(violations)
    list(JOIN violations "\n  " text)
    message(FATAL_ERROR "links against the layering (cmake/layers.cmake, "
                        "docs/architecture.md):\n  ${text}")
  endif()
endfunction()
