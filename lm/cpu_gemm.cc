// lm_cpu_gemm: an f32 matrix product for XLA:CPU through OpenBLAS (lm/cpu_gemm.py builds,
// loads and documents it). C[m, n] = op(A) op(B), op = transpose where the attribute says,
// row-major, written straight into XLA's output buffer; or, for 3-D operands, one such
// product per entry of the leading (batch) axis: C[i] = op(A[i]) op(B[i]).
//
// Also lm_cpu_materialize, a copy (at the end of the file; lm/cpu_gemm.py's materialize).
//
// Few rows (`few_rows`, which lm/cpu_gemm.py sets for at most FEW_ROWS rows: decoding, one row
// per sequence): a BLAS's sgemm is built for many rows, and on the 2026-12-03 Xeon OpenBLAS read
// the weights of an [8, 768] @ [768, 4096] product at 6-7 GB/s (MKL 9.5) where the memory reads
// 29-31. Such products run the loops below instead (21-23 GB/s there;
// experiments/bench/decode_products.py): every element of B is read once, in blocks of kBlockK
// rows streamed left to right with the next block prefetched, into register tiles of C (GCC
// vector extensions: AVX-512, AVX2, or what -march=native finds).
//
// One row (batch-1 decoding) streams B instead: each chunk is a piece of kPieceRows whole rows
// of B, read kStreamRows at a time, left to right, into a partial product of its own; the
// partials are added in piece order, so the sum's order depends on K alone, not on the threads
// that ran it. Cold, on 2 threads of the 2-core AVX2 EPYC of 2026-12-07, llama-100m's matrices
// read at 25-43 GB/s this way against 19-25 through column tiles of 16-row passes, and at 23-31
// against 22-25 in a busier run (experiments/bench/one_row_loops.cc); its batch-1 decode step
// took 11.8 ms, not 16.9, and 12.8 against 15.3 (experiments.bench.kernel_ab, one process).
//
// Threads: the product is cut into as many chunks as XLA's intra-op pool has threads (batch
// entries; or, for one matrix, rows, or columns when it has few rows or takes the few-row
// loops; or a one-row product's pieces, claimed in turn), and each chunk is single-threaded.
// OpenBLAS's own thread pool is set to one thread (this OpenBLAS, from the scipy-openblas32
// wheel, is used by nothing else), so the cores are shared by one scheduler, XLA's, instead of
// two that contend. The caller claims chunks too, and a pool task that starts after every chunk is
// claimed does nothing, so a busy pool delays the product but never deadlocks it. A one-row
// product's second thread is instead lm's own, which stays awake between products
// (lm/cpu_helper.h), where it is free.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>

#include "cpu_blas.h"
#include "cpu_helper.h"
#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

// ---- few-row kernels ----

#if defined(__AVX512F__)
constexpr int kLanes = 16, kRegisters = 32;
#else
constexpr int kLanes = 8, kRegisters = 16;
#endif
typedef float Vec __attribute__((vector_size(kLanes * sizeof(float))));
constexpr int kBlockK = 16;    // rows of B per pass: C's tile is loaded and stored once per pass
constexpr int64_t kFewRowsChunk = 32 * 1024;  // fewest elements of B per thread: fewer are not worth a wake-up
constexpr int kGroupRows = 8;  // rows of A per register tile

inline Vec Load(const float* p) { Vec v; std::memcpy(&v, p, sizeof v); return v; }
inline void Store(float* p, Vec v) { std::memcpy(p, &v, sizeof v); }

// C[0:R, 0:NV lanes] += A[0:R, 0:kb] B[0:kb, 0:NV lanes], prefetching the same columns `ahead`
// elements on in B (the next block of rows: without it, 8 rows at a time ran at 7 GB/s from memory
// on one core of the 2026-12-03 Xeon, with it 13-15).
template <int R, int NV>
void TileNN(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, int64_t kb, int64_t ahead) {
  Vec acc[R][NV];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NV; ++j) acc[r][j] = Load(c + r * ldc + j * kLanes);
  for (int64_t kk = 0; kk < kb; ++kk) {
    Vec bv[NV];
    for (int j = 0; j < NV; ++j) __builtin_prefetch(b + kk * ldb + ahead + j * kLanes);
    for (int j = 0; j < NV; ++j) bv[j] = Load(b + kk * ldb + j * kLanes);
    for (int r = 0; r < R; ++r) {
      float s = a[r * lda + kk];
      for (int j = 0; j < NV; ++j) acc[r][j] += s * bv[j];
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NV; ++j) Store(c + r * ldc + j * kLanes, acc[r][j]);
}

// Columns [lo, hi) of C[0:R] += A[0:R, 0:kb] B[0:kb]: register tiles NV vectors wide while they
// fit, then one vector, then single columns.
template <int R>
void PanelNN(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, int64_t kb,
             int64_t ahead, int64_t lo, int64_t hi) {
  // enough accumulators to hide the FMA latency, few enough to stay in registers
  constexpr int NV = std::max(1, std::min(8, (kRegisters / 2) / R));
  int64_t n = lo;
  for (; n + NV * kLanes <= hi; n += NV * kLanes) TileNN<R, NV>(a, lda, b + n, ldb, c + n, ldc, kb, ahead);
  for (; n + kLanes <= hi; n += kLanes) TileNN<R, 1>(a, lda, b + n, ldb, c + n, ldc, kb, ahead);
  for (; n < hi; ++n) {
    for (int r = 0; r < R; ++r) {
      float s = c[r * ldc + n];
      for (int64_t kk = 0; kk < kb; ++kk) s += a[r * lda + kk] * b[kk * ldb + n];
      c[r * ldc + n] = s;
    }
  }
}

using PanelFn = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t, int64_t, int64_t, int64_t,
                         int64_t);
constexpr PanelFn kPanelsNN[kGroupRows] = {PanelNN<1>, PanelNN<2>, PanelNN<3>, PanelNN<4>,
                                           PanelNN<5>, PanelNN<6>, PanelNN<7>, PanelNN<8>};

// Columns [lo, hi) of C[m, n] = A[m, k] B[k, n]: for each block of kBlockK rows of B, each group
// of up to kGroupRows rows of A (a second group reads the block again, from cache).
void FewRowsNN(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t m, int64_t n,
               int64_t k, int64_t lo, int64_t hi) {
  for (int64_t r = 0; r < m; ++r) std::memset(c + r * n + lo, 0, (hi - lo) * sizeof(float));
  int64_t groups = (m + kGroupRows - 1) / kGroupRows;
  for (int64_t k0 = 0; k0 < k; k0 += kBlockK) {
    int64_t kb = std::min<int64_t>(kBlockK, k - k0);
    for (int64_t g = 0; g < groups; ++g) {
      int64_t r0 = m * g / groups, rows = m * (g + 1) / groups - r0;
      kPanelsNN[rows - 1](a + r0 * lda + k0, lda, b + k0 * ldb, ldb, c + r0 * n, n, kb, kBlockK * ldb, lo, hi);
    }
  }
}

constexpr int kStreamRows = 8;       // rows of B read side by side by the one-row loop
constexpr int64_t kPieceRows = 128;  // rows of B per piece of a one-row product

// c[0:n] += a[0:R] B[0:R, 0:n]: R whole rows of B, left to right.
template <int R>
void StreamRows(const float* a, const float* b, int64_t ldb, float* c, int64_t n) {
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    Vec acc = Load(c + j);
    for (int r = 0; r < R; ++r) acc += a[r] * Load(b + r * ldb + j);
    Store(c + j, acc);
  }
  for (; j < n; ++j) {
    float s = c[j];
    for (int r = 0; r < R; ++r) s += a[r] * b[r * ldb + j];
    c[j] = s;
  }
}

// c[0:n] = a[0:k] B[0:k, 0:n] for one row a: B's k rows streamed kStreamRows at a time, a single
// contiguous stretch of memory (column tiles instead read 16 rows at once, 4 KiB apart for the
// wide shapes, which the prefetchers and L1's sets follow worse: the numbers at the top).
void OneRowStream(const float* a, const float* b, int64_t ldb, float* c, int64_t n, int64_t k) {
  std::memset(c, 0, n * sizeof(float));
  int64_t kk = 0;
  for (; kk + kStreamRows <= k; kk += kStreamRows) StreamRows<kStreamRows>(a + kk, b + kk * ldb, ldb, c, n);
  for (; kk < k; ++kk) StreamRows<1>(a + kk, b + kk * ldb, ldb, c, n);
}

typedef float Vec8 __attribute__((vector_size(8 * sizeof(float))));
typedef float Vec4 __attribute__((vector_size(4 * sizeof(float))));

// The sum of a vector's lanes, halving it in registers (lane by lane through memory made the
// horizontal sums cost more than the products in TileNT). The halves are taken with memcpy,
// which compilers turn into register extracts (__builtin_shufflevector needs GCC 12).
template <typename Half, typename Whole>
inline Half AddHalves(Whole v) {
  Half lo, hi;
  std::memcpy(&lo, &v, sizeof lo);
  std::memcpy(&hi, reinterpret_cast<const char*>(&v) + sizeof lo, sizeof hi);
  return lo + hi;
}
inline float Sum4(Vec4 v) { return (v[0] + v[2]) + (v[1] + v[3]); }
inline float Sum8(Vec8 v) { return Sum4(AddHalves<Vec4>(v)); }
#if defined(__AVX512F__)
inline float Sum(Vec v) { return Sum8(AddHalves<Vec8>(v)); }
#else
inline float Sum(Vec v) { return Sum8(v); }
#endif

// C[0:R, 0:NR] = A[0:R, 0:k] B[0:NR, 0:k]^T: NR rows of B streamed side by side.
template <int R, int NR>
void TileNT(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, int64_t k) {
  Vec acc[R][NR];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < NR; ++j) acc[r][j] = Vec{};
  int64_t kk = 0;
  for (; kk + kLanes <= k; kk += kLanes) {
    Vec bv[NR];
    for (int j = 0; j < NR; ++j) bv[j] = Load(b + j * ldb + kk);
    for (int r = 0; r < R; ++r) {
      Vec av = Load(a + r * lda + kk);
      for (int j = 0; j < NR; ++j) acc[r][j] += av * bv[j];
    }
  }
  for (int r = 0; r < R; ++r) {
    for (int j = 0; j < NR; ++j) {
      float s = Sum(acc[r][j]);
      for (int64_t t = kk; t < k; ++t) s += a[r * lda + t] * b[j * ldb + t];
      c[r * ldc + j] = s;
    }
  }
}

constexpr int kTileNT = kLanes == 16 ? 4 : 2;  // rows of A and of B per tile: kTileNT^2 accumulators

template <int R>
void PanelNT(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t ldc, int64_t k, int64_t lo,
             int64_t hi) {
  // One row of A (batch-1 decoding's tied head) takes 8 rows of B per tile, 8 independent sums
  // instead of 2: [1, 384] @ [4096, 384]^T read 20.5 -> 23.4 GB/s, gpt2-10m's step 1.04x
  // (rounds 0.96-1.45), in experiments.bench.kernel_ab --products on 2026-12-07.
  constexpr int NR = R == 1 ? 8 : kTileNT;
  int64_t n = lo;
  for (; n + NR <= hi; n += NR) TileNT<R, NR>(a, lda, b + n * ldb, ldb, c + n, ldc, k);
  for (; n < hi; ++n) TileNT<R, 1>(a, lda, b + n * ldb, ldb, c + n, ldc, k);
}

using PanelNTFn = void (*)(const float*, int64_t, const float*, int64_t, float*, int64_t, int64_t, int64_t, int64_t);
constexpr PanelNTFn kPanelsNT[4] = {PanelNT<1>, PanelNT<2>, PanelNT<3>, PanelNT<4>};

// Columns [lo, hi) of C[m, n] = A[m, k] B[n, k]^T (B's rows lo..hi), in groups of kTileNT rows of A.
void FewRowsNT(const float* a, int64_t lda, const float* b, int64_t ldb, float* c, int64_t m, int64_t n, int64_t k,
               int64_t lo, int64_t hi) {
  // a block of B's rows at a time, so that the second and later groups of A's rows find it in cache
  constexpr int64_t kBlockN = 64;
  for (int64_t n0 = lo; n0 < hi; n0 += kBlockN) {
    int64_t n1 = std::min(hi, n0 + kBlockN);
    for (int64_t r0 = 0; r0 < m; r0 += kTileNT) {
      int64_t rows = std::min<int64_t>(kTileNT, m - r0);
      kPanelsNT[rows - 1](a + r0 * lda, lda, b, ldb, c + r0 * n, n, k, n0, n1);
    }
  }
}

// ---- the product, in chunks over XLA's threads ----

struct Product : lm::HelperTask {
  const float* a;
  const float* b;
  float* c;
  int64_t batch, m, n, k, lda, ldb, a_size, b_size;  // a_size, b_size: one batch entry's elements
  bool trans_a, trans_b, split_rows, few_rows, pieces;  // pieces: one row, streamed (OneRowStream)
  int64_t chunks;
  float* partials = nullptr;  // pieces: piece i > 0's partial product, n floats at (i - 1) n
  std::atomic<int64_t> next{0}, done{0};

  void Run() override { RunChunks(); }

  void RunChunks() {
    for (int64_t i; (i = next.fetch_add(1)) < chunks;) {
      auto few = trans_b ? FewRowsNT : FewRowsNN;
      if (batch > 1) {  // chunk i: batch entries lo..hi, one whole product each
        for (int64_t e = batch * i / chunks; e < batch * (i + 1) / chunks; ++e) {
          if (few_rows) {
            few(a + e * a_size, lda, b + e * b_size, ldb, c + e * m * n, m, n, k, 0, n);
          } else {
            LM_SGEMM(kRowMajor, trans_a ? kTrans : kNoTrans, trans_b ? kTrans : kNoTrans, m, n, k, 1.0f,
                     a + e * a_size, lda, b + e * b_size, ldb, 0.0f, c + e * m * n, n);
          }
        }
        done.fetch_add(1, std::memory_order_release);
        continue;
      }
      if (pieces) {  // chunk i: B's rows from i kPieceRows (A's columns), into C or a partial
        int64_t k0 = i * kPieceRows;
        OneRowStream(a + k0, b + k0 * ldb, ldb, i == 0 ? c : partials + (i - 1) * n, n,
                     std::min(kPieceRows, k - k0));
        done.fetch_add(1, std::memory_order_release);
        continue;
      }
      if (few_rows) {  // chunk i: columns lo..hi of C, whole vectors of them where C's rows are B's
        int64_t align = trans_b ? 1 : kLanes, units = (n + align - 1) / align;
        int64_t lo = std::min(n, units * i / chunks * align), hi = std::min(n, units * (i + 1) / chunks * align);
        few(a, lda, b, ldb, c, m, n, k, lo, hi);
        done.fetch_add(1, std::memory_order_release);
        continue;
      }
      int64_t extent = split_rows ? m : n, lo = extent * i / chunks, hi = extent * (i + 1) / chunks;
      if (split_rows) {  // rows lo..hi of op(A): A's rows, or its columns when transposed
        const float* a_lo = trans_a ? a + lo : a + lo * lda;
        LM_SGEMM(kRowMajor, trans_a ? kTrans : kNoTrans, trans_b ? kTrans : kNoTrans, hi - lo, n, k,
                 1.0f, a_lo, lda, b, ldb, 0.0f, c + lo * n, n);
      } else {  // columns lo..hi of op(B): B's columns, or its rows when transposed
        const float* b_lo = trans_b ? b + lo * ldb : b + lo;
        LM_SGEMM(kRowMajor, trans_a ? kTrans : kNoTrans, trans_b ? kTrans : kNoTrans, m, hi - lo, k,
                 1.0f, a, lda, b_lo, ldb, 0.0f, c + lo, n);
      }
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

ffi::Error Gemm(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                ffi::ResultBuffer<ffi::F32> c, bool trans_a, bool trans_b, bool few_rows) {
  auto a_dims = a.dimensions(), b_dims = b.dimensions();
  size_t rank = a_dims.size();
  if (rank != b_dims.size() || (rank != 2 && rank != 3) || (rank == 3 && a_dims[0] != b_dims[0])) {
    return ffi::Error::InvalidArgument("lm_cpu_gemm takes two 2-D operands, or two 3-D with one batch size");
  }
  int64_t a_rows = a_dims[rank - 2], a_cols = a_dims[rank - 1], b_rows = b_dims[rank - 2], b_cols = b_dims[rank - 1];
  auto product = std::make_shared<Product>();
  product->a = a.typed_data();
  product->b = b.typed_data();
  product->c = c->typed_data();
  product->batch = rank == 3 ? a_dims[0] : 1;
  product->m = trans_a ? a_cols : a_rows;
  product->k = trans_a ? a_rows : a_cols;
  product->n = trans_b ? b_rows : b_cols;
  if ((trans_b ? b_cols : b_rows) != product->k) {
    return ffi::Error::InvalidArgument("lm_cpu_gemm: the operands' contracted sizes differ");
  }
  product->lda = a_cols;
  product->ldb = b_cols;
  product->a_size = a_rows * a_cols;
  product->b_size = b_rows * b_cols;
  product->trans_a = trans_a;
  product->trans_b = trans_b;
  product->split_rows = product->m >= product->n;
  if (few_rows && trans_a) {
    return ffi::Error::InvalidArgument("lm_cpu_gemm: few_rows takes A not transposed");
  }
  product->few_rows = few_rows;
  int64_t threads = pool.num_threads() > 0 ? pool.num_threads() : 1;
  int64_t extent = product->batch > 1 ? product->batch : (product->split_rows ? product->m : product->n);
  if (few_rows) extent = std::max<int64_t>(1, product->batch * product->n * product->k / kFewRowsChunk);
  if (few_rows && product->batch > 1) extent = std::min(extent, product->batch);
  int64_t workers = std::max<int64_t>(1, std::min<int64_t>(threads, extent)), n = product->n;
  product->chunks = workers;
  product->pieces = few_rows && !trans_b && product->batch == 1 && product->m == 1 && product->k > 0;
  // The caller's buffer for the partials: it waits below until every piece is done.
  thread_local std::unique_ptr<float[]> partials;
  thread_local int64_t partials_size = 0;
  if (product->pieces) {
    product->chunks = (product->k + kPieceRows - 1) / kPieceRows;
    workers = std::min(workers, product->chunks);
    if (partials_size < (product->chunks - 1) * n) {
      partials_size = (product->chunks - 1) * n;
      partials.reset(new float[partials_size]);
    }
    product->partials = partials.get();
  }
  // A one-row product's second thread is lm's spinning helper where it is free (cpu_helper.h):
  // batch-1 decode steps 1.03x (llama-100m, rounds 1.00-1.06), 1.14x (llama-10m) and 1.08x
  // (gpt2-10m) as fast on the 2-core Xeon of 2026-12-08 (experiments.bench.kernel_ab).
  bool helped = few_rows && product->m == 1 && product->batch == 1 && workers > 1 &&
                lm::SpinningHelper::Get().Post(product.get());
  for (int64_t t = helped ? 2 : 1; t < workers; ++t) pool.Schedule([product] { product->RunChunks(); });
  product->RunChunks();
  if (helped) lm::SpinningHelper::Get().Retire(product.get());
  while (product->done.load(std::memory_order_acquire) < product->chunks) std::this_thread::yield();
  if (product->pieces) {  // C = ((P0 + P1) + P2) + ...: in piece order, whichever thread ran each
    float* c_out = product->c;
    for (int64_t i = 1; i < product->chunks; ++i) {
      const float* part = product->partials + (i - 1) * n;
      for (int64_t j = 0; j < n; ++j) c_out[j] += part[j];
    }
  }
  return ffi::Error::Success();
}

// lm_cpu_materialize: y = x, a copy into XLA's output buffer. XLA cannot fuse a custom call,
// so the producer of x is computed once into a buffer of its own instead of being fused into
// (and recomputed for every element of) each consumer (lm/cpu_gemm.py's materialize says why).
ffi::Error Materialize(ffi::AnyBuffer x, ffi::Result<ffi::AnyBuffer> y) {
  if (x.size_bytes() != y->size_bytes()) return ffi::Error::InvalidArgument("lm_cpu_materialize: sizes differ");
  std::memcpy(y->untyped_data(), x.untyped_data(), x.size_bytes());
  return ffi::Error::Success();
}

}  // namespace

extern "C" void LmCpuGemmInit() { LM_SET_THREADS(1); }

XLA_FFI_DEFINE_HANDLER_SYMBOL(LmCpuGemm, Gemm,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("trans_a")
                                  .Attr<bool>("trans_b")
                                  .Attr<bool>("few_rows"));

XLA_FFI_DEFINE_HANDLER_SYMBOL(LmCpuMaterialize, Materialize,
                              ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>());
