// Removing a folder and everything in it, with POSIX calls only.
//
// Not std::filesystem::remove_all: PyTorch's CUDA LibTorch (libtorch.so of
// the 2.x wheels) exports its own copy of that function, which binaries
// linked against it pick up at run time, and that copy jumps to a null
// address (seen with PyTorch 2.11 on the GPU machine: every checkpoint
// crashed the worker when its temporary folder was removed).
#ifndef LPD_BASE_REMOVE_TREE_H_
#define LPD_BASE_REMOVE_TREE_H_

#include <string>

namespace lpd {

// Removes `path` (a file, a symbolic link, or a folder with its contents,
// links not followed). Returns whether nothing is left there; a path that
// does not exist counts as removed.
bool RemoveTree(const std::string& path);

}  // namespace lpd

#endif  // LPD_BASE_REMOVE_TREE_H_
