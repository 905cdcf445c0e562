// lm_cpu_gemm: an f32 matrix product for XLA:CPU through OpenBLAS (lm/cpu_gemm.py builds,
// loads and documents it). C[m, n] = op(A) op(B), op = transpose where the attribute says,
// row-major, written straight into XLA's output buffer; or, for 3-D operands, one such
// product per entry of the leading (batch) axis: C[i] = op(A[i]) op(B[i]).
//
// Threads: the product is cut into as many chunks as XLA's intra-op pool has threads (batch
// entries; or, for one matrix, rows, or columns when it has few rows), and each chunk is
// single-threaded sgemm. OpenBLAS's own
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

// The BLAS: OpenBLAS from the scipy-openblas32 wheel (its symbols prefixed scipy_), or, built
// with -DLM_GEMM_MKL, Intel MKL from the mkl wheel (lm/cpu_gemm.py chooses and links).
#ifdef LM_GEMM_MKL
#define LM_SGEMM cblas_sgemm
#define LM_SET_THREADS MKL_Set_Num_Threads
#else
#define LM_SGEMM scipy_cblas_sgemm
#define LM_SET_THREADS scipy_openblas_set_num_threads
#endif

extern "C" {
void LM_SGEMM(int order, int trans_a, int trans_b, int m, int n, int k, float alpha, const float* a, int lda,
              const float* b, int ldb, float beta, float* c, int ldc);
void LM_SET_THREADS(int threads);
}

namespace {

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;

struct Product {
  const float* a;
  const float* b;
  float* c;
  int64_t batch, m, n, k, lda, ldb, a_size, b_size;  // a_size, b_size: one batch entry's elements
  bool trans_a, trans_b, split_rows;
  int64_t chunks;
  std::atomic<int64_t> next{0}, done{0};

  void RunChunks() {
    for (int64_t i; (i = next.fetch_add(1)) < chunks;) {
      if (batch > 1) {  // chunk i: batch entries lo..hi, one whole product each
        for (int64_t e = batch * i / chunks; e < batch * (i + 1) / chunks; ++e) {
          LM_SGEMM(kRowMajor, trans_a ? kTrans : kNoTrans, trans_b ? kTrans : kNoTrans, m, n, k, 1.0f,
                            a + e * a_size, lda, b + e * b_size, ldb, 0.0f, c + e * m * n, n);
        }
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
                ffi::ResultBuffer<ffi::F32> c, bool trans_a, bool trans_b) {
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
  int64_t threads = pool.num_threads() > 0 ? pool.num_threads() : 1;
  int64_t extent = product->batch > 1 ? product->batch : (product->split_rows ? product->m : product->n);
  product->chunks = std::min<int64_t>(threads, extent);
  if (product->chunks < 1) product->chunks = 1;
  for (int64_t t = 1; t < product->chunks; ++t) pool.Schedule([product] { product->RunChunks(); });
  product->RunChunks();
  while (product->done.load(std::memory_order_acquire) < product->chunks) std::this_thread::yield();
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
                                  .Attr<bool>("trans_b"));
