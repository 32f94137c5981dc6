// Fused InfoNCE logsumexp (CUDA).  Same contract as csrc/infonce.cpp:
//   s[i, j] = <X[j], Y[i]> / tau,  j = (m, k) flattened;  lse[i] = logsumexp over the candidates of row i
//   (all N*K locals, or those of the other samples with exclude_self);  terms[i, k] from s[i, iK+k] and lse[i].
//   backward: ds[i, j] = g[i] exp(s[i, j] - lse[i]) [j allowed] + [j in block i] c[i, j - iK];
//             dX = ds^T Y / tau,  dY = ds X / tau.
// Score tiles (16 globals x 64 locals) are built in shared memory with plain FMA loops (no cuBLAS),
// reduced with warp shuffles inside the 16-lane group that owns a row; the score matrix never
// exists in global memory.  Each output element has one owner and a fixed reduction order, so
// results are deterministic.  Accumulation in float (double for double); half/bfloat16 inputs are
// computed in float.  Compiled only with a CUDA torch; on CPU-only machines `make test`
// compile-checks it with `nvcc --ptx`.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cmath>

namespace xaikernels {
namespace {

constexpr int BI = 16;   // globals per tile: one 16-lane half-warp per row
constexpr int BJ = 64;   // locals per tile: 4 per lane
constexpr int BD = 16;   // feature slice staged in shared memory
constexpr int kThreads = BI * 16;
constexpr int64_t kMaxChunks = 64;

template <typename acc_t>
__device__ __forceinline__ acc_t neg_inf() {
  return -acc_t(INFINITY);
}

template <typename acc_t>
__device__ __forceinline__ acc_t group_max(acc_t v) {
  // xor offsets < 16 stay inside the 16-lane group of one row; every lane ends with the result.
  for (int off = 8; off > 0; off >>= 1) {
    const acc_t o = __shfl_xor_sync(0xffffffffu, v, off);
    v = o > v ? o : v;
  }
  return v;
}

template <typename acc_t>
__device__ __forceinline__ acc_t group_sum(acc_t v) {
  for (int off = 8; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Scores of globals [i0, i0+BI) against locals [j0, j0+BJ): lane (r, c) gets row r, columns
// c + 16q (q < 4).  Out-of-range rows/columns read zeros; callers mask them.
template <typename acc_t>
__device__ void score_tile(const acc_t* __restrict__ Y, const acc_t* __restrict__ X, int64_t N, int64_t NK,
                           int64_t D, int64_t i0, int64_t j0, acc_t (*sY)[BD], acc_t (*sX)[BD + 1], acc_t out[4]) {
  const int t = threadIdx.x, r = t / 16, c = t % 16;
#pragma unroll
  for (int q = 0; q < 4; ++q) out[q] = 0;
  for (int64_t d0 = 0; d0 < D; d0 += BD) {
    {
      const int rr = t / BD, dd = t % BD;
      const int64_t i = i0 + rr, d = d0 + dd;
      sY[rr][dd] = (i < N && d < D) ? Y[i * D + d] : acc_t(0);
    }
    for (int e = t; e < BJ * BD; e += kThreads) {
      const int jj = e / BD, dd = e % BD;
      const int64_t j = j0 + jj, d = d0 + dd;
      sX[jj][dd] = (j < NK && d < D) ? X[j * D + d] : acc_t(0);
    }
    __syncthreads();
#pragma unroll
    for (int dd = 0; dd < BD; ++dd) {
      const acc_t yv = sY[r][dd];
#pragma unroll
      for (int q = 0; q < 4; ++q) out[q] += yv * sX[c + 16 * q][dd];
    }
    __syncthreads();
  }
}

template <typename acc_t>
__device__ __forceinline__ bool allowed(int64_t i, int64_t j, int64_t N, int64_t NK, int64_t K, bool exclude_self) {
  return i < N && j < NK && !(exclude_self && j / K == i);
}

// Online logsumexp of one (row tile, chunk of column tiles): partial (max, sum) per row.
template <typename acc_t>
__global__ void lse_partial_kernel(const acc_t* __restrict__ Y, const acc_t* __restrict__ X, int64_t N, int64_t K,
                                   int64_t D, int64_t tiles_per_chunk, bool exclude_self, acc_t* __restrict__ part_m,
                                   acc_t* __restrict__ part_l) {
  __shared__ acc_t sY[BI][BD];
  __shared__ acc_t sX[BJ][BD + 1];
  const int64_t NK = N * K, tiles = (NK + BJ - 1) / BJ;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * BI, chunk = blockIdx.y;
  const int r = threadIdx.x / 16, c = threadIdx.x % 16;
  const int64_t i = i0 + r;
  acc_t m = neg_inf<acc_t>(), l = 0;
  const int64_t t_end = min(tiles, (chunk + 1) * tiles_per_chunk);
  for (int64_t tile = chunk * tiles_per_chunk; tile < t_end; ++tile) {
    const int64_t j0 = tile * BJ;
    acc_t v[4];
    score_tile<acc_t>(Y, X, N, NK, D, i0, j0, sY, sX, v);
    acc_t tmax = neg_inf<acc_t>();
#pragma unroll
    for (int q = 0; q < 4; ++q) {
      if (!allowed<acc_t>(i, j0 + c + 16 * q, N, NK, K, exclude_self)) v[q] = neg_inf<acc_t>();
      tmax = v[q] > tmax ? v[q] : tmax;
    }
    tmax = group_max(tmax);
    // A fully masked tile row is skipped by a flag, not a branch: the shuffles below need both
    // rows of the warp.
    const bool any = tmax != neg_inf<acc_t>();
    const acc_t m_new = (any && tmax > m) ? tmax : m;
    acc_t s = 0;
#pragma unroll
    for (int q = 0; q < 4; ++q) s += any ? exp(v[q] - m_new) : acc_t(0);
    s = group_sum(s);
    if (any) {
      l = l * exp(m - m_new) + s;
      m = m_new;
    }
  }
  if (c == 0 && i < N) {
    part_m[chunk * N + i] = m;
    part_l[chunk * N + i] = l;
  }
}

template <typename acc_t>
__global__ void lse_merge_kernel(const acc_t* __restrict__ part_m, const acc_t* __restrict__ part_l, int64_t N,
                                 int64_t chunks, acc_t* __restrict__ lse) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= N) return;
  acc_t m = neg_inf<acc_t>();
  for (int64_t c = 0; c < chunks; ++c) m = part_m[c * N + i] > m ? part_m[c * N + i] : m;
  acc_t l = 0;
  for (int64_t c = 0; c < chunks; ++c)
    if (part_l[c * N + i] > acc_t(0)) l += part_l[c * N + i] * exp(part_m[c * N + i] - m);
  lse[i] = m + log(l);
}

// One warp per local j = (i, k): pos[j] = <X[j], Y[i]>.
template <typename acc_t>
__global__ void positive_kernel(const acc_t* __restrict__ Y, const acc_t* __restrict__ X, int64_t NK, int64_t K,
                                int64_t D, acc_t* __restrict__ pos) {
  const int64_t j = (static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x) / 32;
  const int lane = threadIdx.x % 32;
  if (j >= NK) return;  // whole warps exit together (blockDim is a multiple of 32)
  const int64_t i = j / K;
  acc_t s = 0;
  for (int64_t d = lane; d < D; d += 32) s += X[j * D + d] * Y[i * D + d];
  for (int off = 16; off > 0; off >>= 1) s += __shfl_down_sync(0xffffffffu, s, off);
  if (lane == 0) pos[j] = s;
}

// Gradient of one score given its value: see the header.  c is (N, K) flattened, so the own-block
// entry of row i at column j = iK + k is c[j].
template <typename acc_t>
__device__ __forceinline__ acc_t score_grad(acc_t v, int64_t i, int64_t j, int64_t N, int64_t NK, int64_t K,
                                            bool exclude_self, const acc_t* __restrict__ L,
                                            const acc_t* __restrict__ G, const acc_t* __restrict__ C) {
  if (i >= N || j >= NK) return acc_t(0);
  const bool own = j / K == i;
  acc_t p = (exclude_self && own) ? acc_t(0) : G[i] * exp(v - L[i]);
  if (own) p += C[j];
  return p;
}

// dX rows [j0, j0+BJ) are owned by one block; it sweeps all row tiles in order.
template <typename acc_t>
__global__ void dx_kernel(const acc_t* __restrict__ Y, const acc_t* __restrict__ X, int64_t N, int64_t K, int64_t D,
                          bool exclude_self, const acc_t* __restrict__ L, const acc_t* __restrict__ G,
                          const acc_t* __restrict__ C, acc_t* __restrict__ dX) {
  __shared__ acc_t sY[BI][BD];
  __shared__ acc_t sX[BJ][BD + 1];
  __shared__ acc_t sP[BI][BJ];
  const int64_t NK = N * K, j0 = static_cast<int64_t>(blockIdx.x) * BJ;
  const int r = threadIdx.x / 16, c = threadIdx.x % 16;
  for (int64_t i0 = 0; i0 < N; i0 += BI) {
    acc_t v[4];
    score_tile<acc_t>(Y, X, N, NK, D, i0, j0, sY, sX, v);
#pragma unroll
    for (int q = 0; q < 4; ++q)
      sP[r][c + 16 * q] = score_grad<acc_t>(v[q], i0 + r, j0 + c + 16 * q, N, NK, K, exclude_self, L, G, C);
    __syncthreads();
    for (int64_t e = threadIdx.x; e < BJ * D; e += kThreads) {
      const int jj = static_cast<int>(e / D);
      const int64_t d = e % D, j = j0 + jj;
      if (j >= NK) continue;
      acc_t acc = 0;
      for (int rr = 0; rr < BI && i0 + rr < N; ++rr) acc += sP[rr][jj] * Y[(i0 + rr) * D + d];
      dX[j * D + d] += acc;
    }
    __syncthreads();
  }
}

// Partial dY of row tile blockIdx.x over the column tiles of chunk blockIdx.y.
template <typename acc_t>
__global__ void dy_kernel(const acc_t* __restrict__ Y, const acc_t* __restrict__ X, int64_t N, int64_t K, int64_t D,
                          int64_t tiles_per_chunk, bool exclude_self, const acc_t* __restrict__ L,
                          const acc_t* __restrict__ G, const acc_t* __restrict__ C, acc_t* __restrict__ dY_part) {
  __shared__ acc_t sY[BI][BD];
  __shared__ acc_t sX[BJ][BD + 1];
  __shared__ acc_t sP[BI][BJ];
  const int64_t NK = N * K, tiles = (NK + BJ - 1) / BJ;
  const int64_t i0 = static_cast<int64_t>(blockIdx.x) * BI, chunk = blockIdx.y;
  const int r = threadIdx.x / 16, c = threadIdx.x % 16;
  acc_t* out = dY_part + chunk * N * D;
  const int64_t t_end = min(tiles, (chunk + 1) * tiles_per_chunk);
  for (int64_t tile = chunk * tiles_per_chunk; tile < t_end; ++tile) {
    const int64_t j0 = tile * BJ;
    acc_t v[4];
    score_tile<acc_t>(Y, X, N, NK, D, i0, j0, sY, sX, v);
#pragma unroll
    for (int q = 0; q < 4; ++q)
      sP[r][c + 16 * q] = score_grad<acc_t>(v[q], i0 + r, j0 + c + 16 * q, N, NK, K, exclude_self, L, G, C);
    __syncthreads();
    for (int64_t e = threadIdx.x; e < BI * D; e += kThreads) {
      const int rr = static_cast<int>(e / D);
      const int64_t d = e % D, i = i0 + rr;
      if (i >= N) continue;
      acc_t acc = 0;
      for (int jj = 0; jj < BJ && j0 + jj < NK; ++jj) acc += sP[rr][jj] * X[(j0 + jj) * D + d];
      out[i * D + d] += acc;
    }
    __syncthreads();
  }
}

struct Grid {
  int64_t row_tiles, tiles, tiles_per_chunk, chunks;
};

Grid make_grid(int64_t N, int64_t NK) {
  Grid g{};
  g.row_tiles = (N + BI - 1) / BI;
  g.tiles = (NK + BJ - 1) / BJ;
  // Enough blocks to fill a GPU (row_tiles * chunks >= ~1024) with at most kMaxChunks partials.
  const int64_t want = std::min<int64_t>(kMaxChunks, std::max<int64_t>(1, 1024 / g.row_tiles));
  const int64_t chunks = std::min(g.tiles, want);
  g.tiles_per_chunk = (g.tiles + chunks - 1) / chunks;
  g.chunks = (g.tiles + g.tiles_per_chunk - 1) / g.tiles_per_chunk;
  return g;
}

void check(const at::Tensor& x, const at::Tensor& y, double temperature, bool exclude_self) {
  TORCH_CHECK(x.dim() == 3 && y.dim() == 2, "infonce_lse: x must be (N, K, D) and y (N, D)");
  TORCH_CHECK(x.size(0) == y.size(0), "infonce_lse: x has N=", x.size(0), " samples but y has N=", y.size(0));
  TORCH_CHECK(x.size(2) == y.size(1), "infonce_lse: feature sizes differ: x has D=", x.size(2), ", y has D=",
              y.size(1));
  TORCH_CHECK(x.size(0) > 0 && x.size(1) > 0, "infonce_lse: empty batch or no local positions (K = 0)");
  TORCH_CHECK(!exclude_self || x.size(0) >= 2, "infonce_lse: exclude_self needs N >= 2");
  TORCH_CHECK(x.scalar_type() == y.scalar_type() && at::isFloatingType(x.scalar_type()),
              "infonce_lse: x and y must share a floating dtype");
  TORCH_CHECK(x.device() == y.device(), "infonce_lse: x and y are on different devices");
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0, "infonce_lse: temperature must be finite and > 0");
}

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

at::Tensor positive_scores(const at::Tensor& xa, const at::Tensor& ys, cudaStream_t stream) {
  const int64_t N = xa.size(0), K = xa.size(1), D = xa.size(2);
  auto pos = at::empty({N, K}, ys.options());
  AT_DISPATCH_FLOATING_TYPES(ys.scalar_type(), "infonce_positive_cuda", [&] {
    const int64_t warps_per_block = kThreads / 32;
    const int64_t blocks = (N * K + warps_per_block - 1) / warps_per_block;
    positive_kernel<scalar_t><<<blocks, kThreads, 0, stream>>>(ys.const_data_ptr<scalar_t>(),
                                                                xa.const_data_ptr<scalar_t>(), N * K, K, D,
                                                                pos.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return pos;
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> infonce_lse_cuda(const at::Tensor& x, const at::Tensor& y, double temperature,
                                                    bool exclude_self, int64_t block_rows, int64_t block_cols) {
  // block_rows / block_cols tune the CPU kernel; the CUDA tiles are fixed by the launch shape.
  check(x, y, temperature, exclude_self);
  const c10::cuda::CUDAGuard guard(x.device());
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t N = x.size(0), K = x.size(1), D = x.size(2);
  const auto acc = acc_type(x.scalar_type());
  const auto xa = x.detach().to(acc).contiguous();
  const auto ys = (y.detach().to(acc) / temperature).contiguous();
  const Grid g = make_grid(N, N * K);
  auto part_m = at::empty({g.chunks, N}, ys.options());
  auto part_l = at::empty({g.chunks, N}, ys.options());
  auto lse = at::empty({N}, ys.options());
  AT_DISPATCH_FLOATING_TYPES(acc, "infonce_lse_cuda", [&] {
    const dim3 grid(static_cast<unsigned>(g.row_tiles), static_cast<unsigned>(g.chunks));
    lse_partial_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        ys.const_data_ptr<scalar_t>(), xa.const_data_ptr<scalar_t>(), N, K, D, g.tiles_per_chunk, exclude_self,
        part_m.mutable_data_ptr<scalar_t>(), part_l.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    lse_merge_kernel<scalar_t><<<(N + 255) / 256, 256, 0, stream>>>(
        part_m.const_data_ptr<scalar_t>(), part_l.const_data_ptr<scalar_t>(), N, g.chunks,
        lse.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  const auto pos = positive_scores(xa, ys, stream);
  auto terms = exclude_self ? at::log_sigmoid(pos - lse.unsqueeze(1)) : (pos - lse.unsqueeze(1)).clamp_max(0);
  TORCH_CHECK(at::isfinite(lse).all().item<bool>() && at::isfinite(terms).all().item<bool>(),
              "infonce_lse: non-finite scores: the features contain NaN/inf, or <x, y> / temperature overflows "
              "(temperature = ", temperature, ")");
  return {terms.to(x.scalar_type()), lse};
}

std::tuple<at::Tensor, at::Tensor> infonce_lse_backward_cuda(const at::Tensor& grad_terms, const at::Tensor& grad_lse,
                                                             const at::Tensor& x, const at::Tensor& y,
                                                             const at::Tensor& lse, double temperature,
                                                             bool exclude_self, int64_t block_rows,
                                                             int64_t block_cols) {
  check(x, y, temperature, exclude_self);
  const c10::cuda::CUDAGuard guard(x.device());
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  auto stream = c10::cuda::getCurrentCUDAStream();
  const int64_t N = x.size(0), K = x.size(1), D = x.size(2);
  TORCH_CHECK(grad_terms.sizes() == at::IntArrayRef({N, K}) && grad_lse.sizes() == at::IntArrayRef({N}) &&
                  lse.sizes() == at::IntArrayRef({N}),
              "infonce_lse_backward: grad_terms (N, K), grad_lse (N,) and lse (N,) required");
  const auto acc = acc_type(x.scalar_type());
  const auto xa = x.detach().to(acc).contiguous();
  const auto ys = (y.detach().to(acc) / temperature).contiguous();
  const auto L = lse.detach().to(acc).contiguous();
  const auto gt = grad_terms.detach().to(acc);
  const auto c =
      (exclude_self ? gt * at::sigmoid(L.unsqueeze(1) - positive_scores(xa, ys, stream)) : gt).contiguous();
  const auto gvec = (grad_lse.detach().to(acc) - c.sum(1)).contiguous();
  const Grid g = make_grid(N, N * K);
  auto dx = at::zeros({N * K, D}, ys.options());
  auto dy_part = at::zeros({g.chunks, N, D}, ys.options());
  AT_DISPATCH_FLOATING_TYPES(acc, "infonce_lse_backward_cuda", [&] {
    dx_kernel<scalar_t><<<static_cast<unsigned>(g.tiles), kThreads, 0, stream>>>(
        ys.const_data_ptr<scalar_t>(), xa.const_data_ptr<scalar_t>(), N, K, D, exclude_self,
        L.const_data_ptr<scalar_t>(), gvec.const_data_ptr<scalar_t>(), c.const_data_ptr<scalar_t>(),
        dx.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    const dim3 grid(static_cast<unsigned>(g.row_tiles), static_cast<unsigned>(g.chunks));
    dy_kernel<scalar_t><<<grid, kThreads, 0, stream>>>(
        ys.const_data_ptr<scalar_t>(), xa.const_data_ptr<scalar_t>(), N, K, D, g.tiles_per_chunk, exclude_self,
        L.const_data_ptr<scalar_t>(), gvec.const_data_ptr<scalar_t>(), c.const_data_ptr<scalar_t>(),
        dy_part.mutable_data_ptr<scalar_t>());
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  auto dy = dy_part.select(0, 0).clone();
  for (int64_t ch = 1; ch < g.chunks; ++ch) dy.add_(dy_part.select(0, ch));
  dy.div_(temperature);
  return {dx.view({N, K, D}).to(x.scalar_type()), dy.to(y.scalar_type())};
}

TORCH_LIBRARY_IMPL(xaikernels, CUDA, m) {
  m.impl("infonce_lse", &infonce_lse_cuda);
  m.impl("infonce_lse_backward", &infonce_lse_backward_cuda);
}

}  // namespace xaikernels
