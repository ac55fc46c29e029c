// Compiled only to produce the shared LibTorch precompiled header
// (cmake/torch_pch.cmake).
