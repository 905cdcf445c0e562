// One-row products x[K] @ B[K, N] as batch-1 decoding computes them, in loop orders side by
// side: the GB/s of B each reads from memory on 2 threads (a spinning worker, so that thread
// wake-ups are not timed). What lm/cpu_gemm.cc's one-row loop was chosen by, on 2026-12-07.
//
//     g++ -O3 -march=native -std=c++17 -pthread experiments/bench/one_row_loops.cc -o /tmp/one_row_loops
//     /tmp/one_row_loops
//
// Each cell: as many distinct matrices as make 200 MB (at least 14), so B is cold as in a step
// (llama-100m's weights are 369 MB), median of 15 passes over them.
//   read        a sum of B's elements, each thread over its half: the ceiling
//   cols kbR    columns split between the threads, passes of R rows of B into register tiles
//               of 8 vectors, the next pass prefetched: lm's few-row loop (R = 16) before
//   rows rR     rows split between the threads, each reading its stretch whole, R rows at a
//               time, into a partial product: lm's one-row loop now (R = 8, in pieces)
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <functional>
#include <thread>
#include <vector>

typedef float Vec __attribute__((vector_size(32)));
inline Vec Load(const float* p) { Vec v; std::memcpy(&v, p, 32); return v; }
inline void Store(float* p, Vec v) { std::memcpy(p, &v, 32); }

template <int KB>
void Columns(const float* a, const float* b, float* c, int64_t n, int64_t k, int64_t lo, int64_t hi) {
  constexpr int NV = 8;
  std::memset(c + lo, 0, (hi - lo) * 4);
  for (int64_t k0 = 0; k0 < k; k0 += KB) {
    int64_t kb = std::min<int64_t>(KB, k - k0);
    for (int64_t j = lo; j + NV * 8 <= hi; j += NV * 8) {
      Vec acc[NV];
      for (int v = 0; v < NV; ++v) acc[v] = Load(c + j + v * 8);
      for (int64_t kk = 0; kk < kb; ++kk) {
        const float* row = b + (k0 + kk) * n + j;
        for (int v = 0; v < NV; ++v) __builtin_prefetch(row + KB * n + v * 8);
        for (int v = 0; v < NV; ++v) acc[v] += a[k0 + kk] * Load(row + v * 8);
      }
      for (int v = 0; v < NV; ++v) Store(c + j + v * 8, acc[v]);
    }
  }
}

template <int R>
void Rows(const float* a, const float* b, float* c, int64_t n, int64_t k0, int64_t k1) {
  std::memset(c, 0, n * 4);
  int64_t kk = k0;
  for (; kk + R <= k1; kk += R)
    for (int64_t j = 0; j < n; j += 8) {
      Vec acc = Load(c + j);
      for (int r = 0; r < R; ++r) acc += a[kk + r] * Load(b + (kk + r) * n + j);
      Store(c + j, acc);
    }
  for (; kk < k1; ++kk)
    for (int64_t j = 0; j < n; j += 8) Store(c + j, Load(c + j) + a[kk] * Load(b + kk * n + j));
}

float Sum(const float* b, int64_t lo, int64_t hi) {
  Vec s0{}, s1{}, s2{}, s3{};
  for (int64_t i = lo; i < hi; i += 32) {
    s0 += Load(b + i); s1 += Load(b + i + 8); s2 += Load(b + i + 16); s3 += Load(b + i + 24);
  }
  Vec s = s0 + s1 + s2 + s3;
  return s[0] + s[7];
}

int main() {
  const int kThreads = 2, kRepeats = 15;
  const int64_t shapes[][2] = {{768, 4096}, {768, 768}, {768, 256}, {2048, 768}};  // llama-100m's
  std::vector<float> x(4096, 0.01f);
  std::atomic<int> posted{0}, finished{0};
  std::atomic<bool> quit{false};
  std::function<void()> job;
  std::thread worker([&] {
    for (int seen = 0; !quit.load();) {
      int p = posted.load(std::memory_order_acquire);
      if (p != seen) { job(); seen = p; finished.store(p, std::memory_order_release); }
    }
  });
  volatile float sink;
  for (auto& shape : shapes) {
    const int64_t k = shape[0], n = shape[1];
    const int mats = std::max<int64_t>(14, 200000000 / (k * n * 4));
    std::vector<std::vector<float>> B(mats, std::vector<float>(k * n, 0.5f));
    std::vector<float> C(n * kThreads);
    auto bench = [&](const char* name, std::function<void(int, const float*)> work) {
      std::vector<double> seconds;
      for (int r = 0; r < kRepeats; ++r) {
        auto t0 = std::chrono::steady_clock::now();
        for (int m = 0; m < mats; ++m) {
          job = [&, m] { work(1, B[m].data()); };
          posted.fetch_add(1, std::memory_order_release);
          work(0, B[m].data());
          while (finished.load(std::memory_order_acquire) != posted.load()) {}
        }
        seconds.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      std::sort(seconds.begin(), seconds.end());
      printf("  %-10s %6.1f GB/s\n", name, mats * k * n * 4.0 / seconds[kRepeats / 2] / 1e9);
    };
    auto columns = [&](auto fn) {
      return [&, fn](int t, const float* b) {
        int64_t vecs = n / 8;
        fn(x.data(), b, C.data(), n, k, vecs * t / kThreads * 8, vecs * (t + 1) / kThreads * 8);
      };
    };
    auto rows = [&](auto fn) {
      return [&, fn](int t, const float* b) { fn(x.data(), b, C.data() + t * n, n, k * t / kThreads, k * (t + 1) / kThreads); };
    };
    printf("[1, %ld] @ [%ld, %ld], %d matrices\n", k, k, n, mats);
    bench("read", [&](int t, const float* b) { sink = Sum(b, k * n * t / kThreads, k * n * (t + 1) / kThreads); });
    bench("cols kb16", columns(Columns<16>));
    bench("cols kb8", columns(Columns<8>));
    bench("rows r4", rows(Rows<4>));
    bench("rows r8", rows(Rows<8>));
  }
  quit = true;
  worker.join();
}
