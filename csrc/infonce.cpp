// The mutual-information family's CPU ops: the fused InfoNCE logsumexp (below) and the fused
// information bottleneck (noise injection + KL, further down).
//
// Fused InfoNCE logsumexp (CPU): the N x N*K score matrix is never materialised.
//
//   s[i, j] = <X[j], Y[i]> / tau                 j = (m, k) flattened, X (N*K, D), Y (N, D)
//   include:  lse[i] = logsumexp_j s[i, j];            terms[i, k] = s[i, iK+k] - lse[i]
//   exclude:  lse[i] = logsumexp_{j not in i} s[i, j]; terms[i, k] = log sigmoid(s[i, iK+k] - lse[i])
//
// backward, with c[i,k] = gT[i,k] (include) or gT[i,k] * sigmoid(lse[i] - s_pos[i,k]) (exclude),
// g[i] = gL[i] - sum_k c[i,k]:
//   ds[i, j] = g[i] exp(s[i, j] - lse[i]) [j allowed] + [j in block i] c[i, j - iK]
//   dX = ds^T Y / tau,   dY = ds X / tau
//
// Tiling: the locals axis is cut into tiles of `block_cols`, grouped into at most kMaxChunks
// chunks; one task per chunk loops over all row tiles of `block_rows` globals.  Tile products go
// through at::mm (the BLAS), the rest (online max/sum, probabilities) is done per tile while it
// is in cache.  The chunking depends only on the shapes and block sizes, never on the number of
// threads, and partial results are merged in chunk order: results are bitwise independent of
// the thread count.  Accumulation in float (double for double inputs); half/bfloat16 inputs are
// computed in float.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

// std::bit_cast without C++20: torch before 2.13 builds extensions as C++17.  A fixed-size
// memcpy compiles to a register move.
template <typename To, typename From>
inline To bits_as(From v) {
  static_assert(sizeof(To) == sizeof(From), "bits_as: sizes differ");
  To out;
  std::memcpy(&out, &v, sizeof(To));
  return out;
}

// The per-tile loops (exp, max, sums) are ~a third of the work next to the BLAS tile products;
// they vectorise only when GCC may if-convert the exp's range selects, which -ftrapping-math (the
// default) forbids, and they run ~2x faster with AVX2/AVX-512 clones picked at load time.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#pragma GCC push_options
#pragma GCC optimize("no-trapping-math")
#define XK_VEC_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#define XK_POP_OPTIONS 1
#else
#define XK_VEC_CLONES
#endif

namespace xaikernels {

namespace {

constexpr int64_t kMaxChunks = 64;

// exp for float, accurate to ~2 ulp (Cephes polynomial), written so that GCC vectorises the
// loops that call it (std::exp does not vectorise without -ffast-math).  Rounding uses the
// 1.5*2^23 trick instead of floor (floor needs SSE4.1 to vectorise).  Arguments below -87.3
// give 0, NaN propagates.
inline float exp_f32(float x) {
  constexpr float kLog2e = 1.44269504088896341f;
  constexpr float kShift = 12582912.0f;  // 1.5 * 2^23
  constexpr float kC1 = 0.693359375f, kC2 = -2.12194440e-4f;
  const float lo = -87.33654475f, hi = 88.0f;
  const bool underflow = x < lo;
  float xc = x < lo ? lo : x;  // ternaries, not min/max: they keep NaN
  xc = xc > hi ? hi : xc;
  const float fx = xc * kLog2e + kShift;
  const float n = fx - kShift;
  const float r = (xc - n * kC1) - n * kC2;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float y = p * r * r + r + 1.0f;
  // round(x*log2e) sits in the low mantissa bits of fx (offset 0x4B400000); build 2^n from it.
  const int32_t ni = bits_as<int32_t>(fx) - 0x4B400000;
  const float pow2 = bits_as<float>(static_cast<int32_t>(static_cast<uint32_t>(ni + 127) << 23));
  return underflow ? 0.0f : y * pow2;
}

inline double exp_acc(double x) { return std::exp(x); }
inline float exp_acc(float x) { return exp_f32(x); }

template <typename T>
XK_VEC_CLONES T row_max(const T* s, int64_t n) {
  T m = -std::numeric_limits<T>::infinity();
#pragma omp simd reduction(max : m)
  for (int64_t j = 0; j < n; ++j) m = s[j] > m ? s[j] : m;
  return m;
}

template <typename T>
XK_VEC_CLONES T row_exp_sum(const T* s, int64_t n, T shift) {
  T acc = 0;
#pragma omp simd reduction(+ : acc)
  for (int64_t j = 0; j < n; ++j) acc += exp_acc(s[j] - shift);
  return acc;
}

template <typename T>
XK_VEC_CLONES void row_scaled_exp(T* s, int64_t n, T shift, T scale) {
#pragma omp simd
  for (int64_t j = 0; j < n; ++j) s[j] = scale * exp_acc(s[j] - shift);
}

#ifdef XK_POP_OPTIONS
#pragma GCC pop_options
#endif

struct Tiling {
  int64_t br, bc, tiles, tiles_per_chunk, chunks;
};

Tiling make_tiling(int64_t N, int64_t NK, int64_t D, int64_t block_rows, int64_t block_cols) {
  Tiling t{};
  t.br = std::min<int64_t>(N, block_rows > 0 ? block_rows : 256);
  // Default column tile: ~256 KiB of float locals, so a tile of X and a tile of scores stay in L2.
  int64_t bc = block_cols > 0 ? block_cols : std::clamp<int64_t>(65536 / std::max<int64_t>(D, 1), 64, 1024);
  t.bc = std::min(bc, NK);
  t.tiles = (NK + t.bc - 1) / t.bc;
  const int64_t chunks = std::min(t.tiles, kMaxChunks);
  t.tiles_per_chunk = (t.tiles + chunks - 1) / chunks;
  t.chunks = (t.tiles + t.tiles_per_chunk - 1) / t.tiles_per_chunk;
  return t;
}

void check_inputs(const at::Tensor& x, const at::Tensor& y, double temperature, bool exclude_self,
                  int64_t block_rows, int64_t block_cols) {
  TORCH_CHECK(x.dim() == 3, "infonce_lse: locals x must be (N, K, D), got shape ", x.sizes());
  TORCH_CHECK(y.dim() == 2, "infonce_lse: globals y must be (N, D), got shape ", y.sizes());
  TORCH_CHECK(x.size(0) == y.size(0), "infonce_lse: x has N=", x.size(0), " samples but y has N=", y.size(0));
  TORCH_CHECK(x.size(2) == y.size(1), "infonce_lse: feature sizes differ: x has D=", x.size(2), ", y has D=",
              y.size(1));
  TORCH_CHECK(x.size(0) > 0, "infonce_lse: empty batch (N = 0)");
  TORCH_CHECK(x.size(1) > 0, "infonce_lse: no local positions (K = 0)");
  TORCH_CHECK(!exclude_self || x.size(0) >= 2,
              "infonce_lse: exclude_self needs N >= 2 (the negatives come from the other samples)");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "infonce_lse: floating dtype required, got ", x.scalar_type());
  TORCH_CHECK(x.scalar_type() == y.scalar_type(), "infonce_lse: x and y dtypes differ (", x.scalar_type(), " vs ",
              y.scalar_type(), ")");
  TORCH_CHECK(x.device() == y.device(), "infonce_lse: x and y are on different devices");
  TORCH_CHECK(std::isfinite(temperature) && temperature > 0, "infonce_lse: temperature must be finite and > 0, got ",
              temperature);
  TORCH_CHECK(block_rows >= 0 && block_cols >= 0, "infonce_lse: block sizes must be >= 0 (0 = automatic)");
}

at::ScalarType acc_type(at::ScalarType t) { return t == at::kDouble ? at::kDouble : at::kFloat; }

// Positive scores s[i, iK+k] = <X[i,k], Y[i]> (Y already divided by tau): (N, K).
at::Tensor positive_scores(const at::Tensor& xa, const at::Tensor& ys) {
  return at::bmm(xa, ys.unsqueeze(2)).squeeze(2);
}

template <typename acc_t>
void forward_kernel(const at::Tensor& xf, const at::Tensor& ys, int64_t K, bool exclude_self, const Tiling& t,
                    at::Tensor& lse) {
  const int64_t N = ys.size(0), NK = xf.size(0);
  std::vector<double> part_m(t.chunks * N, -std::numeric_limits<double>::infinity());
  std::vector<double> part_l(t.chunks * N, 0.0);
  constexpr acc_t kNegInf = -std::numeric_limits<acc_t>::infinity();
  at::parallel_for(0, t.chunks, 1, [&](int64_t c_begin, int64_t c_end) {
    auto S = at::empty({t.br, t.bc}, ys.options());
    for (int64_t c = c_begin; c < c_end; ++c) {
      double* pm = part_m.data() + c * N;
      double* pl = part_l.data() + c * N;
      const int64_t tile_end = std::min(t.tiles, (c + 1) * t.tiles_per_chunk);
      for (int64_t tile = c * t.tiles_per_chunk; tile < tile_end; ++tile) {
        const int64_t j0 = tile * t.bc, nj = std::min(t.bc, NK - j0);
        const auto xt = xf.narrow(0, j0, nj);
        for (int64_t i0 = 0; i0 < N; i0 += t.br) {
          const int64_t ni = std::min(t.br, N - i0);
          auto St = S.narrow(0, 0, ni).narrow(1, 0, nj);
          at::mm_out(St, ys.narrow(0, i0, ni), xt.t());
          acc_t* sp = St.data_ptr<acc_t>();
          const int64_t ld = St.stride(0);
          for (int64_t r = 0; r < ni; ++r) {
            const int64_t i = i0 + r;
            acc_t* row = sp + r * ld;
            if (exclude_self) {
              const int64_t a = std::max(j0, i * K), b = std::min(j0 + nj, (i + 1) * K);
              for (int64_t j = a; j < b; ++j) row[j - j0] = kNegInf;
            }
            const acc_t tmax = row_max(row, nj);
            if (tmax == kNegInf) continue;  // the whole tile row was masked out
            const double m_new = std::max(pm[i], double(tmax));
            const acc_t tsum = row_exp_sum(row, nj, acc_t(m_new));
            pl[i] = pl[i] * std::exp(pm[i] - m_new) + double(tsum);
            pm[i] = m_new;
          }
        }
      }
    }
  });
  acc_t* out = lse.data_ptr<acc_t>();
  for (int64_t i = 0; i < N; ++i) {
    double m = -std::numeric_limits<double>::infinity();
    for (int64_t c = 0; c < t.chunks; ++c) m = std::max(m, part_m[c * N + i]);
    double l = 0;
    for (int64_t c = 0; c < t.chunks; ++c)
      if (part_l[c * N + i] > 0) l += part_l[c * N + i] * std::exp(part_m[c * N + i] - m);
    out[i] = acc_t(m + std::log(l));
  }
}

template <typename acc_t>
void backward_kernel(const at::Tensor& xf, const at::Tensor& ys, int64_t K, bool exclude_self, const Tiling& t,
                     const at::Tensor& lse, const at::Tensor& g, const at::Tensor& c, at::Tensor& dx,
                     at::Tensor& dy_part) {
  const int64_t N = ys.size(0), NK = xf.size(0);
  const acc_t* L = lse.const_data_ptr<acc_t>();
  const acc_t* G = g.const_data_ptr<acc_t>();
  const acc_t* C = c.const_data_ptr<acc_t>();
  at::parallel_for(0, t.chunks, 1, [&](int64_t c_begin, int64_t c_end) {
    auto S = at::empty({t.br, t.bc}, ys.options());
    for (int64_t ch = c_begin; ch < c_end; ++ch) {
      auto dyp = dy_part.select(0, ch);
      const int64_t tile_end = std::min(t.tiles, (ch + 1) * t.tiles_per_chunk);
      for (int64_t tile = ch * t.tiles_per_chunk; tile < tile_end; ++tile) {
        const int64_t j0 = tile * t.bc, nj = std::min(t.bc, NK - j0);
        const auto xt = xf.narrow(0, j0, nj);
        auto dxt = dx.narrow(0, j0, nj);
        for (int64_t i0 = 0; i0 < N; i0 += t.br) {
          const int64_t ni = std::min(t.br, N - i0);
          auto St = S.narrow(0, 0, ni).narrow(1, 0, nj);
          const auto yt = ys.narrow(0, i0, ni);
          at::mm_out(St, yt, xt.t());
          acc_t* sp = St.data_ptr<acc_t>();
          const int64_t ld = St.stride(0);
          for (int64_t r = 0; r < ni; ++r) {
            const int64_t i = i0 + r;
            acc_t* row = sp + r * ld;
            row_scaled_exp(row, nj, L[i], G[i]);
            const int64_t a = std::max(j0, i * K), b = std::min(j0 + nj, (i + 1) * K);
            for (int64_t j = a; j < b; ++j) {
              // Own block: the positive's direct gradient; without self pairs it is not a negative.
              const acc_t neg = exclude_self ? acc_t(0) : row[j - j0];
              row[j - j0] = neg + C[i * K + (j - i * K)];
            }
          }
          dxt.addmm_(St.t(), yt);
          dyp.narrow(0, i0, ni).addmm_(St, xt);
        }
      }
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> infonce_lse_cpu(const at::Tensor& x, const at::Tensor& y, double temperature,
                                                   bool exclude_self, int64_t block_rows, int64_t block_cols) {
  check_inputs(x, y, temperature, exclude_self, block_rows, block_cols);
  TORCH_INTERNAL_ASSERT(x.device().is_cpu());
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const int64_t N = x.size(0), K = x.size(1), D = x.size(2);
  const auto acc = acc_type(x.scalar_type());
  // Y / tau once, so that every tile product is already a score.
  const auto xa = x.detach().to(acc).contiguous();
  const auto ys = (y.detach().to(acc) / temperature).contiguous();
  const auto xf = xa.view({N * K, D});
  const Tiling t = make_tiling(N, N * K, D, block_rows, block_cols);
  auto lse = at::empty({N}, ys.options());
  AT_DISPATCH_FLOATING_TYPES(acc, "infonce_lse_cpu", [&] { forward_kernel<scalar_t>(xf, ys, K, exclude_self, t, lse); });
  const auto pos = positive_scores(xa, ys);
  // Each term is a log-probability (<= 0); the clamp only removes the rounding difference between
  // the positive score from bmm and its copy inside the tiled logsumexp, so the InfoNCE estimate
  // provably stays <= log(#candidates).  The backward uses the exact formula.
  auto terms = exclude_self ? at::log_sigmoid(pos - lse.unsqueeze(1)) : (pos - lse.unsqueeze(1)).clamp_max(0);
  TORCH_CHECK(at::isfinite(lse).all().item<bool>() && at::isfinite(terms).all().item<bool>(),
              "infonce_lse: non-finite scores: the features contain NaN/inf, or <x, y> / temperature overflows "
              "(temperature = ", temperature, ")");
  return {terms.to(x.scalar_type()), lse};
}

std::tuple<at::Tensor, at::Tensor> infonce_lse_backward_cpu(const at::Tensor& grad_terms, const at::Tensor& grad_lse,
                                                            const at::Tensor& x, const at::Tensor& y,
                                                            const at::Tensor& lse, double temperature,
                                                            bool exclude_self, int64_t block_rows,
                                                            int64_t block_cols) {
  check_inputs(x, y, temperature, exclude_self, block_rows, block_cols);
  at::AutoDispatchBelowADInplaceOrView below_autograd;
  const int64_t N = x.size(0), K = x.size(1), D = x.size(2);
  TORCH_CHECK(grad_terms.sizes() == at::IntArrayRef({N, K}), "infonce_lse_backward: grad_terms must be (N, K)");
  TORCH_CHECK(grad_lse.sizes() == at::IntArrayRef({N}), "infonce_lse_backward: grad_lse must be (N,)");
  TORCH_CHECK(lse.sizes() == at::IntArrayRef({N}), "infonce_lse_backward: lse must be (N,)");
  const auto acc = acc_type(x.scalar_type());
  const auto xa = x.detach().to(acc).contiguous();
  const auto ys = (y.detach().to(acc) / temperature).contiguous();
  const auto xf = xa.view({N * K, D});
  const auto L = lse.detach().to(acc).contiguous();
  const auto gt = grad_terms.detach().to(acc);
  const auto c = (exclude_self ? gt * at::sigmoid(L.unsqueeze(1) - positive_scores(xa, ys)) : gt).contiguous();
  const auto g = (grad_lse.detach().to(acc) - c.sum(1)).contiguous();
  const Tiling t = make_tiling(N, N * K, D, block_rows, block_cols);
  auto dx = at::zeros({N * K, D}, ys.options());
  auto dy_part = at::zeros({t.chunks, N, D}, ys.options());
  AT_DISPATCH_FLOATING_TYPES(acc, "infonce_lse_backward_cpu", [&] {
    backward_kernel<scalar_t>(xf, ys, K, exclude_self, t, L, g, c, dx, dy_part);
  });
  // Chunk partials summed in chunk order (at::sum's order could depend on the thread count).
  auto dy = dy_part.select(0, 0).clone();
  for (int64_t ch = 1; ch < t.chunks; ++ch) dy.add_(dy_part.select(0, ch));
  dy.div_(temperature);
  return {dx.view({N, K, D}).to(x.scalar_type()), dy.to(y.scalar_type())};
}

// ---------------------------------------------------------------------------------------------
// The information bottleneck (noise injection + KL), fused: one pass over x, alpha and the noise.
//   eps = mu + std * n;   z = alpha * eps + (1 - alpha) * x
//   kl[n, s] = sum_c 0.5 (a^2 + m^2 - 1) - log a,   m = (1 - a)(x - mu)/std,   a = max(alpha, eps_kl)
// backward:  dx = gz (1 - alpha) + gk (1 - a) m / std
//            dalpha = gz (eps - x) + gk (a - m r - 1/a) [alpha >= eps_kl]   (summed over c if alpha is (N,1,S))
// x, noise: (N, C, S); alpha: (N, 1, S) or (N, C, S); mu, std: (C, S).
namespace {

constexpr int64_t kBottleneckBlock = 256;

void check_bottleneck(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& noise, const at::Tensor& mu,
                      const at::Tensor& sd) {
  TORCH_CHECK(x.dim() == 3, "info_bottleneck: x must be (N, C, S), got ", x.sizes());
  const int64_t N = x.size(0), C = x.size(1), S = x.size(2);
  TORCH_CHECK(alpha.dim() == 3 && alpha.size(0) == N && alpha.size(2) == S && (alpha.size(1) == 1 || alpha.size(1) == C),
              "info_bottleneck: alpha must be (N, 1, S) or (N, C, S) for x of shape ", x.sizes(), ", got ",
              alpha.sizes());
  TORCH_CHECK(noise.sizes() == x.sizes(), "info_bottleneck: noise must have the shape of x");
  TORCH_CHECK(mu.sizes() == at::IntArrayRef({C, S}) && sd.sizes() == at::IntArrayRef({C, S}),
              "info_bottleneck: mu and std must be (C, S)");
  for (const auto* t : {&alpha, &noise, &mu, &sd})
    TORCH_CHECK(t->scalar_type() == x.scalar_type() && t->device() == x.device(),
                "info_bottleneck: all inputs must share x's dtype and device");
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "info_bottleneck: floating dtype required");
}

template <typename scalar_t, bool kBackward>
void bottleneck_kernel(const at::Tensor& x, const at::Tensor& alpha, const at::Tensor& noise, const at::Tensor& mu,
                       const at::Tensor& sd, double eps_kl, const at::Tensor* gz_t, const at::Tensor* gk_t,
                       at::Tensor& out_a, at::Tensor& out_b, std::atomic<int>& bad) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t N = x.size(0), C = x.size(1), S = x.size(2);
  const bool per_elem = alpha.size(1) == C && C != 1;
  const scalar_t* X = x.const_data_ptr<scalar_t>();
  const scalar_t* A = alpha.const_data_ptr<scalar_t>();
  const scalar_t* NZ = noise.const_data_ptr<scalar_t>();
  const scalar_t* MU = mu.const_data_ptr<scalar_t>();
  const scalar_t* SD = sd.const_data_ptr<scalar_t>();
  const scalar_t* GZ = kBackward ? gz_t->const_data_ptr<scalar_t>() : nullptr;
  const scalar_t* GK = kBackward ? gk_t->const_data_ptr<scalar_t>() : nullptr;
  scalar_t* OA = out_a.mutable_data_ptr<scalar_t>();  // forward: z;  backward: dx
  scalar_t* OB = out_b.mutable_data_ptr<scalar_t>();  // forward: kl (N, S);  backward: dalpha
  const acc_t e = acc_t(eps_kl);
  const int64_t sblocks = (S + kBottleneckBlock - 1) / kBottleneckBlock;
  at::parallel_for(0, N * sblocks, 1, [&](int64_t begin, int64_t end) {
    acc_t red[kBottleneckBlock];  // kl (forward) or dalpha of a broadcast alpha (backward), per position
    bool local_bad = false;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / sblocks, s0 = (task % sblocks) * kBottleneckBlock;
      const int64_t len = std::min(kBottleneckBlock, S - s0);
      for (int64_t k = 0; k < len; ++k) red[k] = 0;
      for (int64_t c = 0; c < C; ++c) {
        const int64_t row = (n * C + c) * S + s0;
        const int64_t arow = (n * alpha.size(1) + (per_elem ? c : 0)) * S + s0;
        const int64_t srow = c * S + s0;
        for (int64_t k = 0; k < len; ++k) {
          const acc_t xv = acc_t(X[row + k]), al = acc_t(A[arow + k]), nv = acc_t(NZ[row + k]);
          const acc_t mv = acc_t(MU[srow + k]), sv = acc_t(SD[srow + k]);
          local_bad |= !(al >= acc_t(0) && al <= acc_t(1)) || !(sv > acc_t(0));
          const acc_t a = al > e ? al : e;
          const acc_t r = (xv - mv) / sv;
          const acc_t m = (acc_t(1) - a) * r;
          if constexpr (!kBackward) {
            OA[row + k] = scalar_t(al * (mv + sv * nv) + (acc_t(1) - al) * xv);
            red[k] += acc_t(0.5) * (a * a + m * m - acc_t(1)) - std::log(a);
          } else {
            const acc_t gz = acc_t(GZ[row + k]), gk = acc_t(GK[n * S + s0 + k]);
            OA[row + k] = scalar_t(gz * (acc_t(1) - al) + gk * (acc_t(1) - a) * m / sv);
            const acc_t dkl_da = al >= e ? a - m * r - acc_t(1) / a : acc_t(0);
            const acc_t da = gz * (mv + sv * nv - xv) + gk * dkl_da;
            if (per_elem) {
              OB[arow + k] = scalar_t(da);
            } else {
              red[k] += da;
            }
          }
        }
      }
      if (!kBackward || !per_elem)
        for (int64_t k = 0; k < len; ++k) OB[n * S + s0 + k] = scalar_t(red[k]);
    }
    if (local_bad) bad.store(1);
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> info_bottleneck_cpu(const at::Tensor& x_in, const at::Tensor& alpha_in,
                                                       const at::Tensor& noise_in, const at::Tensor& mu_in,
                                                       const at::Tensor& sd_in, double eps) {
  check_bottleneck(x_in, alpha_in, noise_in, mu_in, sd_in);
  TORCH_CHECK(eps > 0, "info_bottleneck: eps must be > 0");
  const auto x = x_in.contiguous(), alpha = alpha_in.contiguous(), noise = noise_in.contiguous();
  const auto mu = mu_in.contiguous(), sd = sd_in.contiguous();
  auto z = at::empty_like(x);
  auto kl = at::empty({x.size(0), x.size(2)}, x.options());
  std::atomic<int> bad{0};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "info_bottleneck_cpu", [&] {
    bottleneck_kernel<scalar_t, false>(x, alpha, noise, mu, sd, eps, nullptr, nullptr, z, kl, bad);
  });
  TORCH_CHECK(!bad.load(), "info_bottleneck: alpha must lie in [0, 1] and std must be > 0 (found values outside, or NaN)");
  return {z, kl};
}

std::tuple<at::Tensor, at::Tensor> info_bottleneck_backward_cpu(const at::Tensor& grad_z, const at::Tensor& grad_kl,
                                                                const at::Tensor& x_in, const at::Tensor& alpha_in,
                                                                const at::Tensor& noise_in, const at::Tensor& mu_in,
                                                                const at::Tensor& sd_in, double eps) {
  check_bottleneck(x_in, alpha_in, noise_in, mu_in, sd_in);
  TORCH_CHECK(grad_z.sizes() == x_in.sizes(), "info_bottleneck_backward: grad_z must have the shape of x");
  TORCH_CHECK(grad_kl.sizes() == at::IntArrayRef({x_in.size(0), x_in.size(2)}),
              "info_bottleneck_backward: grad_kl must be (N, S)");
  const auto x = x_in.contiguous(), alpha = alpha_in.contiguous(), noise = noise_in.contiguous();
  const auto mu = mu_in.contiguous(), sd = sd_in.contiguous();
  const auto gz = grad_z.to(x.scalar_type()).contiguous(), gk = grad_kl.to(x.scalar_type()).contiguous();
  auto dx = at::empty_like(x);
  auto dalpha = at::empty_like(alpha);
  std::atomic<int> bad{0};
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "info_bottleneck_backward_cpu", [&] {
    bottleneck_kernel<scalar_t, true>(x, alpha, noise, mu, sd, eps, &gz, &gk, dx, dalpha, bad);
  });
  return {dx, dalpha};
}

TORCH_LIBRARY_FRAGMENT(xaikernels, m) {
  m.def("infonce_lse(Tensor x, Tensor y, float temperature=1.0, bool exclude_self=False, int block_rows=0, "
        "int block_cols=0) -> (Tensor, Tensor)");
  m.def("infonce_lse_backward(Tensor grad_terms, Tensor grad_lse, Tensor x, Tensor y, Tensor lse, "
        "float temperature=1.0, bool exclude_self=False, int block_rows=0, int block_cols=0) -> (Tensor, Tensor)");
  m.def("info_bottleneck(Tensor x, Tensor alpha, Tensor noise, Tensor mu, Tensor std, float eps=1e-6) "
        "-> (Tensor, Tensor)");
  m.def("info_bottleneck_backward(Tensor grad_z, Tensor grad_kl, Tensor x, Tensor alpha, Tensor noise, Tensor mu, "
        "Tensor std, float eps=1e-6) -> (Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(xaikernels, CPU, m) {
  m.impl("infonce_lse", &infonce_lse_cpu);
  m.impl("infonce_lse_backward", &infonce_lse_backward_cpu);
  m.impl("info_bottleneck", &info_bottleneck_cpu);
  m.impl("info_bottleneck_backward", &info_bottleneck_backward_cpu);
}

}  // namespace xaikernels
