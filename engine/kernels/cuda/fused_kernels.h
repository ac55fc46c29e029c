// Launchers of the engine's fused CUDA kernels. Plain CUDA C++ (no LibTorch)
// so that nvcc compiles them quickly; engine/kernels/fused_ops.cc calls them.
#ifndef LPD_ENGINE_KERNELS_CUDA_FUSED_KERNELS_H_
#define LPD_ENGINE_KERNELS_CUDA_FUSED_KERNELS_H_

#include <cuda_runtime.h>

#include <cstdint>

namespace lpd::engine::cuda {

enum class ElementType { kFloat32, kBFloat16, kFloat16 };

// Group normalization over a channels-last [B, H·W, C] tensor, with an
// optional per-(batch, channel) addend applied before normalizing and an
// optional SiLU after the affine transform:
//   y = act(((x + add[b, c]) − mean[b, g]) · rstd[b, g] · weight[c] + bias[c])
// `weight`/`bias` have x's element type; `add` may be null; `workspace`
// needs GroupNormWorkspaceBytes(B, G). (C / groups) must be even. When
// `stats` (float [B, G, 2]) is given, each group's mean and 1/std go there
// for the backward pass.
size_t GroupNormWorkspaceBytes(int64_t batch, int64_t groups);
cudaError_t LaunchGroupNormNhwc(ElementType type, const void* x,
                                const void* add, const void* weight,
                                const void* bias, void* y, int64_t batch,
                                int64_t hw, int64_t channels, int64_t groups,
                                float eps, bool silu, void* workspace,
                                void* stats, cudaStream_t stream);

// Backward of LaunchGroupNormNhwc, from its input, its `stats` and dL/dy
// (channels-last like x): writes dx, dadd ([B, C], when `add` is given; may
// be null otherwise), dweight and dbias (x's element type). Sums run in
// float; `workspace` needs GroupNormBackwardWorkspaceBytes.
size_t GroupNormBackwardWorkspaceBytes(int64_t batch, int64_t hw,
                                       int64_t channels, int64_t groups);
cudaError_t LaunchGroupNormNhwcBackward(
    ElementType type, const void* x, const void* add, const void* weight,
    const void* bias, const void* stats, const void* dy, void* dx, void* dadd,
    void* dweight, void* dbias, int64_t batch, int64_t hw, int64_t channels,
    int64_t groups, bool silu, void* workspace, cudaStream_t stream);

// GEGLU: x is [rows, 2n] row-major; y[r, i] = x[r, i] · gelu(x[r, n + i])
// (exact erf GELU).
cudaError_t LaunchGeglu(ElementType type, const void* x, void* y, int64_t rows,
                        int64_t n, cudaStream_t stream);

// Backward of LaunchGeglu: dx ([rows, 2n]) from x and dy ([rows, n]).
cudaError_t LaunchGegluBackward(ElementType type, const void* x, const void* dy,
                                void* dx, int64_t rows, int64_t n,
                                cudaStream_t stream);

// out[c] = Σ_r x[r, c] for a row-major [rows, cols] 16-bit matrix (bf16,
// fp16), summed in float: the bias gradient of a linear layer. cols must be
// a multiple of 8 and x 16-byte aligned (cudaErrorInvalidValue otherwise);
// `workspace` needs ColumnSumWorkspaceBytes.
size_t ColumnSumWorkspaceBytes(int64_t rows, int64_t cols);
cudaError_t LaunchColumnSum(ElementType type, const void* x, void* out,
                            int64_t rows, int64_t cols, void* workspace,
                            cudaStream_t stream);

// Layer normalization over the last dimension of [rows, dim] with an optional
// residual: s = x + residual (written to `sum` when residual is given),
// y = (s − mean) · rstd · weight + bias. 16-bit types only (bf16, fp16);
// dim must be a multiple of 8 and at most kMaxLayerNormDim. When `stats`
// (float [rows, 2]) is given, each row's mean and rstd go there. With a
// `sum_addend` ([dim]), `sum` receives s + sum_addend instead of s (with or
// without a residual); the normalization still sees s.
inline constexpr int64_t kMaxLayerNormDim = 2048;
cudaError_t LaunchAddLayerNorm(ElementType type, const void* x,
                               const void* residual, const void* weight,
                               const void* bias, void* sum, void* y,
                               int64_t rows, int64_t dim, float eps,
                               cudaStream_t stream, void* stats = nullptr,
                               const void* sum_addend = nullptr);

// out[r, c] = a[r, c] + b[r, c] + bias[c] over row-major [rows, channels]
// 16-bit data (a channels-last [B, C, H, W] map is [B·H·W, C]), summed in
// float: a residual add that also applies a convolution's bias. channels a
// multiple of 8, pointers 16-byte aligned (cudaErrorInvalidValue otherwise).
cudaError_t LaunchAddChannelBias(ElementType type, const void* a, const void* b,
                                 const void* bias, void* out, int64_t rows,
                                 int64_t channels, cudaStream_t stream);

// Backward of LaunchAddLayerNorm from s (its sum, or x without a residual),
// its stats and dy (the gradient of y); dsum (the gradient of the sum
// output, may be null) is added to dx, which is then the gradient of both x
// and the residual. Writes dx and the weight and bias gradients (sums in
// float). 16-bit types, dim a multiple of 8, 16-byte aligned rows;
// `workspace` needs LayerNormBackwardWorkspaceBytes.
size_t LayerNormBackwardWorkspaceBytes(int64_t rows, int64_t dim);
cudaError_t LaunchLayerNormBackward(ElementType type, const void* s,
                                    const void* dy, const void* dsum,
                                    const void* weight, const void* stats,
                                    void* dx, void* dweight, void* dbias,
                                    int64_t rows, int64_t dim, void* workspace,
                                    cudaStream_t stream);

}  // namespace lpd::engine::cuda

#endif  // LPD_ENGINE_KERNELS_CUDA_FUSED_KERNELS_H_
