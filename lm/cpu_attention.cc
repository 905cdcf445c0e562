// lm_cpu_attention_fwd / lm_cpu_attention_bwd: causal self-attention over packed rows for XLA:CPU,
// float32, in one pass per block of queries (lm/cpu_attention.py wraps, documents and tests them).
//
// Why: as jnp ops (lm/attention.py's reference_attention under 'blas') the training step's
// attention ran 63 ms a layer forward and backward on the 2-core Xeon of 2026-12-03, of which the
// products were under half: XLA writes the [B, H, L, L] logits, the mask's select, the
// probabilities and their gradient to memory between ops, computes the masked upper triangle, and
// transposes q, k, v and the output into and out of the heads' layout.
//
// What: for each (batch entry b, kv head g), each of its R = H / G query heads, and each block of
// kQueryBlock queries [l0, l1), only keys [0, l1) are computed (causal: later keys are all masked):
//   forward   S = scale Q K^T, masked (key s <= query l and the same segment id), row max and sum
//             of exp, P = softmax(S), O = P V; keeps lse = max + log(sum) per query.
//   backward  P again from S and lse; dV += P^T dO; dP = dO V^T; dS = P (dP - rowsum(dO O));
//             dQ = scale dS K; dK += scale dS^T Q.
// The products are the BLAS's sgemm (one thread each), reading q, k, v and writing o, dq, dk, dv
// in their [B, L, heads, K] layout through the leading dimension: no transposes. The (b, g) units
// are split over XLA's intra-op threads; a unit's dK and dV are its thread's alone.
//
// Every query attends at least to itself (s = l), so no row is empty: its max is finite and its
// sum of exp at least 1.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "cpu_blas.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

constexpr int64_t kQueryBlock = 64;  // queries per block: [l0, l1) sees keys [0, l1)

// exp(x) for x <= 0 (every argument here is a logit less its row's max), Cephes' expf: x = n ln2
// + r, |r| <= ln2 / 2, exp(r) by its degree-7 polynomial, 2^n through the exponent bits. Relative
// error about 1e-7; below -87 (2^-126) it returns 0.
inline float ExpNonPositive(float x) {
  if (x < -87.0f) return 0.0f;
  float n = std::nearbyint(x * 1.44269504088896341f);
  float r = x - n * 0.693359375f + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return p * scale;
}

struct Shapes {
  int64_t b, l, h, g, k;
  float scale;
  int64_t q_row() const { return h * k; }   // elements between two queries of one head
  int64_t kv_row() const { return g * k; }  // between two keys (or values) of one kv head
};

// One row's softmax numerators over keys [0, last) in vectors of kLanes (GCC vector extensions:
// AVX-512, AVX2, or what -march=native finds). Written as scalar loops, GCC vectorized neither the
// max nor the sum of exp (a float reduction keeps its order without -ffast-math). In vectors, on
// the 2-core AVX2 EPYC of 2026-12-04 at the benchmark shape, the forward took 12.6 ms against
// 18.8 (best of 15, alternating processes), and in a 1-core profile of the Llama-like step a
// layer's forward 26 ms against 37 and its backward 57 against 69.
#if defined(__AVX512F__)
constexpr int kLanes = 16;
#else
constexpr int kLanes = 8;
#endif
typedef float VecF __attribute__((vector_size(kLanes * sizeof(float))));
typedef int32_t VecI __attribute__((vector_size(kLanes * sizeof(int32_t))));

inline VecF LoadF(const float* p) { VecF v; std::memcpy(&v, p, sizeof v); return v; }
inline VecI LoadI(const int32_t* p) { VecI v; std::memcpy(&v, p, sizeof v); return v; }
inline void StoreF(float* p, VecF v) { std::memcpy(p, &v, sizeof v); }

// ExpNonPositive lane by lane, with the same arithmetic: n rounded to nearest even by adding and
// subtracting 1.5 * 2^23 (what nearbyint does in the default rounding mode, exact for |n| < 2^22).
inline VecF ExpNonPositive(VecF x) {
  const VecF round = VecF{} + 12582912.0f;  // 1.5 * 2^23
  VecI underflow = x < -87.0f;
  x = underflow ? VecF{} - 87.0f : x;
  VecF n = (x * 1.44269504088896341f + round) - round;
  VecF r = x - n * 0.693359375f + n * 2.12194440e-4f;
  VecF p = VecF{} + 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  VecI bits = (__builtin_convertvector(n, VecI) + 127) << 23;
  VecF scale;
  std::memcpy(&scale, &bits, sizeof scale);
  return underflow ? VecF{} : p * scale;
}

// The largest of row[j] for j < last with seg[j] == own.
inline float MaskedMax(const float* row, const int32_t* seg, int32_t own, int64_t last) {
  VecF best = VecF{} - INFINITY;
  int64_t j = 0;
  for (; j + kLanes <= last; j += kLanes) {
    VecF x = LoadF(row + j);
    x = LoadI(seg + j) == own ? x : VecF{} - INFINITY;
    best = best > x ? best : x;
  }
  float m = -INFINITY;
  for (int lane = 0; lane < kLanes; ++lane) m = std::max(m, best[lane]);
  for (; j < last; ++j) m = seg[j] == own ? std::max(m, row[j]) : m;
  return m;
}

// row[j] = exp(row[j] - m) where seg[j] == own, else 0, for j < last; returns their sum.
inline float MaskedExp(float* row, const int32_t* seg, int32_t own, int64_t last, float m) {
  VecF total = VecF{};
  int64_t j = 0;
  for (; j + kLanes <= last; j += kLanes) {
    VecF p = ExpNonPositive(LoadF(row + j) - m);
    p = LoadI(seg + j) == own ? p : VecF{};
    StoreF(row + j, p);
    total += p;
  }
  float sum = 0.0f;
  for (int lane = 0; lane < kLanes; ++lane) sum += total[lane];
  for (; j < last; ++j) {
    float p = seg[j] == own ? ExpNonPositive(row[j] - m) : 0.0f;
    row[j] = p;
    sum += p;
  }
  return sum;
}

// S[0:rows, 0:keys] = scale q[l0:l0+rows] k[0:keys]^T, then each row masked (key s <= query l, one
// segment) into its softmax numerators: exp(S - m) where m is lse (backward) or the row's max
// (forward, which returns the lse it found in lse_out).
void Probabilities(const Shapes& d, const float* q, const float* k, const int32_t* seg, int64_t l0, int64_t rows,
                   int64_t keys, float* s, const float* lse_in, float* lse_out) {
  LM_SGEMM(kRowMajor, kNoTrans, kTrans, rows, keys, d.k, d.scale, q, d.q_row(), k, d.kv_row(), 0.0f, s, keys);
  for (int64_t i = 0; i < rows; ++i) {
    int64_t l = l0 + i;
    float* row = s + i * keys;
    int32_t own = seg[l];
    int64_t last = l + 1;  // keys after the query are masked: causal
    float m = lse_in ? lse_in[i] : MaskedMax(row, seg, own, last);
    float sum = MaskedExp(row, seg, own, last, m);
    for (int64_t j = last; j < keys; ++j) row[j] = 0.0f;
    if (!lse_in) {  // normalise, and keep the row's log-sum-exp for the backward pass
      float inv = 1.0f / sum;
      for (int64_t j = 0; j < last; ++j) row[j] *= inv;
      lse_out[i] = m + std::log(sum);
    }
  }
}

// Runs unit(u) for u in [0, units) over XLA's intra-op pool, the caller taking its share; returns
// when all are done (a pool task that starts after every unit is claimed does nothing).
template <typename Unit>
void ParallelUnits(ffi::ThreadPool& pool, int64_t units, Unit unit) {
  struct State {
    std::atomic<int64_t> next{0}, done{0};
  };
  auto state = std::make_shared<State>();
  int64_t threads = std::max<int64_t>(1, std::min<int64_t>(pool.num_threads() > 0 ? pool.num_threads() : 1, units));
  auto run = [state, units, threads, unit] {
    for (int64_t t; (t = state->next.fetch_add(1)) < threads;) {
      for (int64_t u = units * t / threads; u < units * (t + 1) / threads; ++u) unit(u);
      state->done.fetch_add(1, std::memory_order_release);
    }
  };
  for (int64_t t = 1; t < threads; ++t) pool.Schedule([run] { run(); });
  run();
  while (state->done.load(std::memory_order_acquire) < threads) std::this_thread::yield();
}

ffi::Error CheckShapes(ffi::Buffer<ffi::F32>& q, ffi::Buffer<ffi::F32>& k, ffi::Buffer<ffi::F32>& v,
                       ffi::Buffer<ffi::S32>& seg, float scale, Shapes* d) {
  auto qd = q.dimensions(), kd = k.dimensions(), vd = v.dimensions(), sd = seg.dimensions();
  if (qd.size() != 4 || kd.size() != 4 || vd.size() != 4 || sd.size() != 2) {
    return ffi::Error::InvalidArgument("lm_cpu_attention: q, k, v are [B, L, heads, K] and segment ids [B, L]");
  }
  *d = Shapes{qd[0], qd[1], qd[2], kd[2], qd[3], scale};
  bool same = kd[0] == d->b && kd[1] == d->l && kd[3] == d->k && vd[0] == kd[0] && vd[1] == kd[1] &&
              vd[2] == kd[2] && vd[3] == kd[3] && sd[0] == d->b && sd[1] == d->l;
  if (!same || d->g == 0 || d->h % d->g != 0) {
    return ffi::Error::InvalidArgument("lm_cpu_attention: k and v must be [B, L, G, K] with G dividing q's heads");
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                   ffi::Buffer<ffi::S32> seg, ffi::ResultBuffer<ffi::F32> o, ffi::ResultBuffer<ffi::F32> lse,
                   float scale) {
  Shapes d;
  if (auto e = CheckShapes(q, k, v, seg, scale, &d); e.failure()) return e;
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data();
  const int32_t* sp = seg.typed_data();
  float *op = o->typed_data(), *lp = lse->typed_data();  // lse: [B, H, L]
  int64_t r = d.h / d.g;
  ParallelUnits(pool, d.b * d.g, [=](int64_t u) {
    int64_t b = u / d.g, g = u % d.g;
    const float* k_b = kp + (b * d.l * d.g + g) * d.k;
    const float* v_b = vp + (b * d.l * d.g + g) * d.k;
    std::vector<float> s(kQueryBlock * d.l);
    for (int64_t hr = 0; hr < r; ++hr) {
      int64_t h = g * r + hr;
      for (int64_t l0 = 0; l0 < d.l; l0 += kQueryBlock) {
        int64_t rows = std::min(kQueryBlock, d.l - l0), keys = l0 + rows;
        const float* q_blk = qp + ((b * d.l + l0) * d.h + h) * d.k;
        Probabilities(d, q_blk, k_b, sp + b * d.l, l0, rows, keys, s.data(), nullptr, lp + (b * d.h + h) * d.l + l0);
        LM_SGEMM(kRowMajor, kNoTrans, kNoTrans, rows, d.k, keys, 1.0f, s.data(), keys, v_b, d.kv_row(), 0.0f,
                 op + ((b * d.l + l0) * d.h + h) * d.k, d.q_row());
      }
    }
  });
  return ffi::Error::Success();
}

ffi::Error Backward(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> q, ffi::Buffer<ffi::F32> k, ffi::Buffer<ffi::F32> v,
                    ffi::Buffer<ffi::S32> seg, ffi::Buffer<ffi::F32> o, ffi::Buffer<ffi::F32> lse,
                    ffi::Buffer<ffi::F32> d_o, ffi::ResultBuffer<ffi::F32> dq, ffi::ResultBuffer<ffi::F32> dk,
                    ffi::ResultBuffer<ffi::F32> dv, float scale) {
  Shapes d;
  if (auto e = CheckShapes(q, k, v, seg, scale, &d); e.failure()) return e;
  const float *qp = q.typed_data(), *kp = k.typed_data(), *vp = v.typed_data(), *opp = o.typed_data();
  const float *lp = lse.typed_data(), *dop = d_o.typed_data();
  const int32_t* sp = seg.typed_data();
  float *dqp = dq->typed_data(), *dkp = dk->typed_data(), *dvp = dv->typed_data();
  int64_t r = d.h / d.g;
  ParallelUnits(pool, d.b * d.g, [=](int64_t u) {
    int64_t b = u / d.g, g = u % d.g;
    int64_t kv0 = (b * d.l * d.g + g) * d.k;  // this unit's first key, value, dk and dv row
    for (int64_t s = 0; s < d.l; ++s) {       // dK and dV accumulate over the unit's heads and blocks
      std::memset(dkp + kv0 + s * d.kv_row(), 0, d.k * sizeof(float));
      std::memset(dvp + kv0 + s * d.kv_row(), 0, d.k * sizeof(float));
    }
    std::vector<float> p(kQueryBlock * d.l), dp(kQueryBlock * d.l);
    for (int64_t hr = 0; hr < r; ++hr) {
      int64_t h = g * r + hr;
      for (int64_t l0 = 0; l0 < d.l; l0 += kQueryBlock) {
        int64_t rows = std::min(kQueryBlock, d.l - l0), keys = l0 + rows;
        int64_t q0 = ((b * d.l + l0) * d.h + h) * d.k;  // this block's first q, o, do and dq row
        Probabilities(d, qp + q0, kp + kv0, sp + b * d.l, l0, rows, keys, p.data(), lp + (b * d.h + h) * d.l + l0,
                      nullptr);
        LM_SGEMM(kRowMajor, kTrans, kNoTrans, keys, d.k, rows, 1.0f, p.data(), keys, dop + q0, d.q_row(), 1.0f,
                 dvp + kv0, d.kv_row());  // dV += P^T dO
        LM_SGEMM(kRowMajor, kNoTrans, kTrans, rows, keys, d.k, 1.0f, dop + q0, d.q_row(), vp + kv0, d.kv_row(), 0.0f,
                 dp.data(), keys);  // dP = dO V^T
        for (int64_t i = 0; i < rows; ++i) {
          const float *o_i = opp + q0 + i * d.q_row(), *do_i = dop + q0 + i * d.q_row();
          float sum = 0.0f;
          for (int64_t c = 0; c < d.k; ++c) sum += o_i[c] * do_i[c];
          float *p_i = p.data() + i * keys, *dp_i = dp.data() + i * keys;
          for (int64_t j = 0; j < keys; ++j) dp_i[j] = p_i[j] * (dp_i[j] - sum) * d.scale;  // dS, scaled
        }
        LM_SGEMM(kRowMajor, kNoTrans, kNoTrans, rows, d.k, keys, 1.0f, dp.data(), keys, kp + kv0, d.kv_row(), 0.0f,
                 dqp + q0, d.q_row());  // dQ = scale dS K
        LM_SGEMM(kRowMajor, kTrans, kNoTrans, keys, d.k, rows, 1.0f, dp.data(), keys, qp + q0, d.q_row(), 1.0f,
                 dkp + kv0, d.kv_row());  // dK += scale dS^T Q
      }
    }
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(LmCpuAttentionFwd, Forward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LmCpuAttentionBwd, Backward,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::S32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<float>("scale"));
