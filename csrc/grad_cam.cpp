// Fused Grad-CAM reduction (CPU).
//
//   w[n,c]   = (1/S) * sum_s G[n,c,s]                 (channel weights: spatially averaged grads)
//   out[n,s] = act( sum_c w[n,c] * A[n,c,s] )         (act = ReLU or identity)
//
// backward, with g' = g_out * [out > 0] when relu:
//   dA[n,c,s] = w[n,c] * g'[n,s]
//   dG[n,c,s] = (1/S) * sum_s' g'[n,s'] * A[n,c,s']   (constant along s)
//
// Accumulation is in opmath (float for half/bfloat16/float, double for double); outputs are
// stored in the input dtype.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <ATen/OpMathType.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <vector>

namespace xaikernels {

namespace {

// Sum of a row with 8 independent partial sums: a single running sum is a serial dependency
// chain the compiler may not reorder (no -ffast-math), which made long rows ~4x slower.
template <typename scalar_t, typename acc_t>
inline acc_t row_sum(const scalar_t* x, int64_t n) {
  acc_t p[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int j = 0; j < 8; ++j) p[j] += acc_t(x[k + j]);
  acc_t s = 0;
  for (; k < n; ++k) s += acc_t(x[k]);
  return ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7])) + s;
}

// Dot product of a masked upstream gradient row (opmath) with an activation row, 8 lanes.
template <typename scalar_t, typename acc_t>
inline acc_t row_dot(const acc_t* g, const scalar_t* a, int64_t n) {
  acc_t p[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  int64_t k = 0;
  for (; k + 8 <= n; k += 8)
    for (int j = 0; j < 8; ++j) p[j] += g[k + j] * acc_t(a[k + j]);
  acc_t s = 0;
  for (; k < n; ++k) s += g[k] * acc_t(a[k]);
  return ((p[0] + p[1]) + (p[2] + p[3])) + ((p[4] + p[5]) + (p[6] + p[7])) + s;
}

void check_inputs(const at::Tensor& acts, const at::Tensor& grads) {
  TORCH_CHECK(acts.dim() == 3, "grad_cam: acts must be (N, C, S), got ", acts.sizes());
  TORCH_CHECK(grads.sizes() == acts.sizes(), "grad_cam: grads ", grads.sizes(),
              " must have the shape of acts ", acts.sizes());
  TORCH_CHECK(grads.scalar_type() == acts.scalar_type(), "grad_cam: acts and grads dtypes differ (",
              acts.scalar_type(), " vs ", grads.scalar_type(), ")");
  TORCH_CHECK(at::isFloatingType(acts.scalar_type()), "grad_cam: floating dtype required, got ",
              acts.scalar_type());
  TORCH_CHECK(acts.device() == grads.device(), "grad_cam: acts and grads on different devices");
  TORCH_CHECK(acts.size(2) > 0, "grad_cam: empty spatial dimension");
}

}  // namespace

at::Tensor grad_cam_cpu(const at::Tensor& acts_in, const at::Tensor& grads_in, bool relu) {
  check_inputs(acts_in, grads_in);
  TORCH_INTERNAL_ASSERT(acts_in.device().is_cpu());
  const auto acts = acts_in.contiguous();
  const auto grads = grads_in.contiguous();
  const int64_t N = acts.size(0), C = acts.size(1), S = acts.size(2);
  auto out = at::empty({N, S}, acts.options());
  if (N == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, acts.scalar_type(), "grad_cam_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* A = acts.const_data_ptr<scalar_t>();
    const scalar_t* G = grads.const_data_ptr<scalar_t>();
    scalar_t* O = out.mutable_data_ptr<scalar_t>();
    std::vector<acc_t> w(N * C);
    const acc_t inv_s = acc_t(1) / acc_t(S);
    at::parallel_for(0, N * C, 16, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) w[r] = row_sum<scalar_t, acc_t>(G + r * S, S) * inv_s;
    });
    // Tile the spatial axis so each task streams all C rows of one tile (cache friendly, and
    // parallel even at batch 1).
    constexpr int64_t TILE = 512;
    const int64_t tiles = (S + TILE - 1) / TILE;
    at::parallel_for(0, N * tiles, 1, [&](int64_t b, int64_t e) {
      acc_t buf[TILE];
      for (int64_t t = b; t < e; ++t) {
        const int64_t n = t / tiles, s0 = (t % tiles) * TILE, len = std::min(TILE, S - s0);
        for (int64_t k = 0; k < len; ++k) buf[k] = 0;
        for (int64_t c = 0; c < C; ++c) {
          const acc_t wc = w[n * C + c];
          const scalar_t* a = A + (n * C + c) * S + s0;
          for (int64_t k = 0; k < len; ++k) buf[k] += wc * acc_t(a[k]);
        }
        scalar_t* o = O + n * S + s0;
        for (int64_t k = 0; k < len; ++k) {
          const acc_t v = relu && buf[k] < acc_t(0) ? acc_t(0) : buf[k];
          o[k] = scalar_t(v);
        }
      }
    });
  });
  return out;
}

std::tuple<at::Tensor, at::Tensor> grad_cam_backward_cpu(const at::Tensor& grad_out_in,
                                                         const at::Tensor& acts_in,
                                                         const at::Tensor& grads_in,
                                                         const at::Tensor& out_in, bool relu) {
  check_inputs(acts_in, grads_in);
  const int64_t N = acts_in.size(0), C = acts_in.size(1), S = acts_in.size(2);
  TORCH_CHECK(grad_out_in.sizes() == at::IntArrayRef({N, S}), "grad_cam_backward: grad_out must be (N, S)");
  TORCH_CHECK(out_in.sizes() == at::IntArrayRef({N, S}), "grad_cam_backward: out must be (N, S)");
  const auto acts = acts_in.contiguous();
  const auto grads = grads_in.contiguous();
  const auto grad_out = grad_out_in.to(acts.scalar_type()).contiguous();
  const auto out = out_in.contiguous();
  auto dA = at::empty_like(acts);
  auto dG = at::empty_like(grads);
  if (N == 0 || C == 0) return {dA, dG};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, acts.scalar_type(), "grad_cam_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* A = acts.const_data_ptr<scalar_t>();
    const scalar_t* G = grads.const_data_ptr<scalar_t>();
    const scalar_t* GO = grad_out.const_data_ptr<scalar_t>();
    const scalar_t* O = out.const_data_ptr<scalar_t>();
    scalar_t* DA = dA.mutable_data_ptr<scalar_t>();
    scalar_t* DG = dG.mutable_data_ptr<scalar_t>();
    // Masked upstream gradient g' (N, S) in opmath.
    std::vector<acc_t> gp(N * S);
    at::parallel_for(0, N * S, 4096, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) {
        const bool pass = !relu || acc_t(O[i]) > acc_t(0);
        gp[i] = pass ? acc_t(GO[i]) : acc_t(0);
      }
    });
    const acc_t inv_s = acc_t(1) / acc_t(S);
    at::parallel_for(0, N * C, 4, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) {
        const int64_t n = r / C;
        const scalar_t* a = A + r * S;
        const scalar_t* g = G + r * S;
        const acc_t* go = gp.data() + n * S;
        const acc_t w = row_sum<scalar_t, acc_t>(g, S) * inv_s;
        const acc_t dot = row_dot<scalar_t, acc_t>(go, a, S);
        const scalar_t dg = scalar_t(dot * inv_s);
        scalar_t* da = DA + r * S;
        scalar_t* dgr = DG + r * S;
        for (int64_t k = 0; k < S; ++k) {
          da[k] = scalar_t(w * go[k]);
          dgr[k] = dg;
        }
      }
    });
  });
  return {dA, dG};
}

TORCH_LIBRARY_FRAGMENT(xaikernels, m) {
  m.def("grad_cam(Tensor acts, Tensor grads, bool relu) -> Tensor");
  m.def("grad_cam_backward(Tensor grad_out, Tensor acts, Tensor grads, Tensor out, bool relu) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(xaikernels, CPU, m) {
  m.impl("grad_cam", &grad_cam_cpu);
  m.impl("grad_cam_backward", &grad_cam_backward_cpu);
}

}  // namespace xaikernels
