// Fused Grad-CAM reduction (CUDA).  Same contract as csrc/grad_cam.cpp:
//   w[n,c] = mean_s G[n,c,s];  out[n,s] = act(sum_c w[n,c] A[n,c,s])
//   dA = w * g',  dG = mean_s(g' * A)  with g' = g_out * [out > 0] when relu.
// Accumulation in float (double for double inputs).  Compiled only with a CUDA torch; on
// CPU-only machines `make test` compile-checks it with `nvcc --ptx`.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/empty_like.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace xaikernels {
namespace {

constexpr int kThreads = 256;

template <typename acc_t>
__device__ acc_t block_sum(acc_t v) {
  __shared__ acc_t smem[kThreads / 32];
  for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  if (lane == 0) smem[warp] = v;
  __syncthreads();
  v = threadIdx.x < (kThreads / 32) ? smem[lane] : acc_t(0);
  if (warp == 0)
    for (int off = 16; off > 0; off >>= 1) v += __shfl_down_sync(0xffffffffu, v, off);
  return v;  // valid in thread 0
}

// One block per (n, c) row: w[r] = mean_s G[r, s].
template <typename scalar_t, typename acc_t>
__global__ void channel_mean_kernel(const scalar_t* __restrict__ G, acc_t* __restrict__ w, int64_t S) {
  const int64_t r = blockIdx.x;
  acc_t s = 0;
  for (int64_t k = threadIdx.x; k < S; k += blockDim.x) s += acc_t(G[r * S + k]);
  s = block_sum<acc_t>(s);
  if (threadIdx.x == 0) w[r] = s / acc_t(S);
}

// One thread per (n, s): out = act(sum_c w[n,c] A[n,c,s]).
template <typename scalar_t, typename acc_t>
__global__ void weighted_sum_kernel(const scalar_t* __restrict__ A, const acc_t* __restrict__ w,
                                    scalar_t* __restrict__ out, int64_t N, int64_t C, int64_t S,
                                    bool relu) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N * S) return;
  const int64_t n = i / S, s = i % S;
  acc_t acc = 0;
  for (int64_t c = 0; c < C; ++c) acc += w[n * C + c] * acc_t(A[(n * C + c) * S + s]);
  if (relu && acc < acc_t(0)) acc = 0;
  out[i] = scalar_t(acc);
}

// One block per (n, c) row: both gradients of that row.
template <typename scalar_t, typename acc_t>
__global__ void grad_cam_backward_kernel(const scalar_t* __restrict__ GO, const scalar_t* __restrict__ A,
                                         const scalar_t* __restrict__ G, const scalar_t* __restrict__ O,
                                         scalar_t* __restrict__ DA, scalar_t* __restrict__ DG,
                                         int64_t C, int64_t S, bool relu) {
  const int64_t r = blockIdx.x, n = r / C;
  __shared__ acc_t shared_w, shared_dot;
  acc_t wsum = 0, dot = 0;
  for (int64_t k = threadIdx.x; k < S; k += blockDim.x) {
    const acc_t go = (!relu || acc_t(O[n * S + k]) > acc_t(0)) ? acc_t(GO[n * S + k]) : acc_t(0);
    wsum += acc_t(G[r * S + k]);
    dot += go * acc_t(A[r * S + k]);
  }
  wsum = block_sum<acc_t>(wsum);
  __syncthreads();
  dot = block_sum<acc_t>(dot);
  if (threadIdx.x == 0) {
    shared_w = wsum / acc_t(S);
    shared_dot = dot / acc_t(S);
  }
  __syncthreads();
  for (int64_t k = threadIdx.x; k < S; k += blockDim.x) {
    const acc_t go = (!relu || acc_t(O[n * S + k]) > acc_t(0)) ? acc_t(GO[n * S + k]) : acc_t(0);
    DA[r * S + k] = scalar_t(shared_w * go);
    DG[r * S + k] = scalar_t(shared_dot);
  }
}

}  // namespace

at::Tensor grad_cam_cuda(const at::Tensor& acts_in, const at::Tensor& grads_in, bool relu) {
  TORCH_CHECK(acts_in.dim() == 3 && grads_in.sizes() == acts_in.sizes(), "grad_cam: (N, C, S) inputs of equal shape required");
  TORCH_CHECK(acts_in.scalar_type() == grads_in.scalar_type(), "grad_cam: dtypes differ");
  TORCH_CHECK(acts_in.size(2) > 0, "grad_cam: empty spatial dimension");
  const c10::cuda::CUDAGuard guard(acts_in.device());
  const auto acts = acts_in.contiguous();
  const auto grads = grads_in.contiguous();
  const int64_t N = acts.size(0), C = acts.size(1), S = acts.size(2);
  auto out = at::empty({N, S}, acts.options());
  if (N == 0) return out;
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, acts.scalar_type(), "grad_cam_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    auto w = at::empty({N, C}, acts.options().dtype(c10::CppTypeToScalarType<acc_t>::value));
    if (C > 0) {
      channel_mean_kernel<scalar_t, acc_t><<<N * C, kThreads, 0, stream>>>(
          grads.const_data_ptr<scalar_t>(), w.mutable_data_ptr<acc_t>(), S);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
    const int64_t total = N * S;
    weighted_sum_kernel<scalar_t, acc_t><<<(total + kThreads - 1) / kThreads, kThreads, 0, stream>>>(
        acts.const_data_ptr<scalar_t>(), w.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(),
        N, C, S, relu);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> grad_cam_backward_cuda(const at::Tensor& grad_out, const at::Tensor& acts_in,
                                                          const at::Tensor& grads_in, const at::Tensor& out,
                                                          bool relu) {
  const c10::cuda::CUDAGuard guard(acts_in.device());
  const auto acts = acts_in.contiguous();
  const auto grads = grads_in.contiguous();
  const auto go = grad_out.to(acts.scalar_type()).contiguous();
  const auto o = out.contiguous();
  auto dA = at::empty_like(acts);
  auto dG = at::empty_like(grads);
  const int64_t N = acts.size(0), C = acts.size(1), S = acts.size(2);
  if (N * C == 0) return {dA, dG};
  auto stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, acts.scalar_type(), "grad_cam_backward_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    grad_cam_backward_kernel<scalar_t, acc_t><<<N * C, kThreads, 0, stream>>>(
        go.const_data_ptr<scalar_t>(), acts.const_data_ptr<scalar_t>(), grads.const_data_ptr<scalar_t>(),
        o.const_data_ptr<scalar_t>(), dA.mutable_data_ptr<scalar_t>(), dG.mutable_data_ptr<scalar_t>(), C, S,
        relu);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return {dA, dG};
}

TORCH_LIBRARY_IMPL(xaikernels, CUDA, m) {
  m.impl("grad_cam", &grad_cam_cuda);
  m.impl("grad_cam_backward", &grad_cam_backward_cuda);
}

}  // namespace xaikernels
