// The BLAS that lm's XLA:CPU kernels call (lm/cpu_gemm.cc, lm/cpu_attention.cc): OpenBLAS from the
// scipy-openblas32 wheel (its symbols prefixed scipy_), or, built with -DLM_GEMM_MKL, Intel MKL from
// the mkl wheel (lm/cpu_gemm.py chooses and links). Row-major CBLAS sgemm, one thread per call.
#pragma once

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

constexpr int kRowMajor = 101, kNoTrans = 111, kTrans = 112;  // CBLAS's enum values
