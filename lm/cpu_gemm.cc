// lm_cpu_gemm: an f32 matrix product for XLA:CPU through OpenBLAS (lm/cpu_gemm.py builds,
// loads and documents it). C[m, n] = op(A) op(B), op = transpose where the attribute says,
// row-major, written straight into XLA's output buffer.
//
// Threads: the product is cut into as many row (or, for few rows, column) chunks as XLA's
// intra-op pool has threads, and each chunk is one single-threaded sgemm. OpenBLAS's own
// thread pool is set to one thread (this OpenBLAS, from the scipy-openblas32 wheel, is used
// by nothing else), so the cores are shared by one scheduler, XLA's, instead of two that
// contend. The caller claims chunks too, and a pool task that starts after every chunk is
// claimed does nothing, so a busy pool delays the product but never deadlocks it.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

extern "C" {
void scipy_cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k, float alpha,
                       const float* a, int lda, const float* b, int ldb, float beta, float* c, int ldc);
void scipy_openblas_set_num_threads(int threads);
}

namespace {

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

struct Product {
  const float* a;
  const float* b;
  float* c;
  int64_t m, n, k, lda, ldb;
  bool trans_a, trans_b, split_rows;
  int64_t chunks;
  std::atomic<int64_t> next{0}, done{0};

  void RunChunks() {
    for (int64_t i; (i = next.fetch_add(1)) < chunks;) {
      int64_t extent = split_rows ? m : n, lo = extent * i / chunks, hi = extent * (i + 1) / chunks;
      if (split_rows) {  // rows lo..hi of op(A): A's rows, or its columns when transposed
        const float* a_lo = trans_a ? a + lo : a + lo * lda;
        scipy_cblas_sgemm(kRowMajor, trans_a ? kTrans : kNoTrans, trans_b ? kTrans : kNoTrans, hi - lo, n, k,
                          1.0f, a_lo, lda, b, ldb, 0.0f, c + lo * n, n);
      } else {  // columns lo..hi of op(B): B's columns, or its rows when transposed
        const float* b_lo = trans_b ? b + lo * ldb : b + lo;
        scipy_cblas_sgemm(kRowMajor, trans_a ? kTrans : kNoTrans, trans_b ? kTrans : kNoTrans, m, hi - lo, k,
                          1.0f, a, lda, b_lo, ldb, 0.0f, c + lo, n);
      }
      done.fetch_add(1, std::memory_order_release);
    }
  }
};

ffi::Error Gemm(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                ffi::ResultBuffer<ffi::F32> c, bool trans_a, bool trans_b) {
  auto a_dims = a.dimensions(), b_dims = b.dimensions();
  if (a_dims.size() != 2 || b_dims.size() != 2) {
    return ffi::Error::InvalidArgument("lm_cpu_gemm takes two 2-D operands");
  }
  auto product = std::make_shared<Product>();
  product->a = a.typed_data();
  product->b = b.typed_data();
  product->c = c->typed_data();
  product->m = trans_a ? a_dims[1] : a_dims[0];
  product->k = trans_a ? a_dims[0] : a_dims[1];
  product->n = trans_b ? b_dims[0] : b_dims[1];
  if ((trans_b ? b_dims[1] : b_dims[0]) != product->k) {
    return ffi::Error::InvalidArgument("lm_cpu_gemm: the operands' contracted sizes differ");
  }
  product->lda = a_dims[1];
  product->ldb = b_dims[1];
  product->trans_a = trans_a;
  product->trans_b = trans_b;
  product->split_rows = product->m >= product->n;
  int64_t threads = pool.num_threads() > 0 ? pool.num_threads() : 1;
  product->chunks = std::min<int64_t>(threads, product->split_rows ? product->m : product->n);
  if (product->chunks < 1) product->chunks = 1;
  for (int64_t t = 1; t < product->chunks; ++t) pool.Schedule([product] { product->RunChunks(); });
  product->RunChunks();
  while (product->done.load(std::memory_order_acquire) < product->chunks) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

extern "C" void LmCpuGemmInit() { scipy_openblas_set_num_threads(1); }

XLA_FFI_DEFINE_HANDLER_SYMBOL(LmCpuGemm, Gemm,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("trans_a")
                                  .Attr<bool>("trans_b"));
