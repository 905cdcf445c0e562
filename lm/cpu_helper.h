// A second thread for lm's one-row products that stays awake between them (lm/cpu_gemm.cc).
//
// Why. A batch-1 decode step is a chain of ~113 small products (llama-100m: 40-450 us each),
// each split between the calling thread and one of XLA's intra-op pool. The pool's threads
// sleep between products, so each product paid a futex wake (gdb caught the caller inside
// Eigen's EventCount::Notify -> futex_wake in two of two samples on the 2-core Xeon of
// 2026-12-08) and the worker's start. This thread instead spins (yielding) for kSpinMicros
// after each task, so in a step's chain it is already running when the next product is
// posted, and sleeps once products stop (a decode loop that ends; training posts none).
// lm/cpu_gemm.cc posts only one-row products: at batch 8, where XLA's own threads have more
// to run beside the products, the 10M models' steps were 0.88-0.94x as fast with it.
//
// Safety. One task at a time, in one slot. A caller that finds the slot taken (another
// product running at once on XLA's other thread) gets false and uses the pool. The caller
// always works on its own task too (the task's chunks are claimed, not assigned), then
// Retire() takes the task back if this thread never started it, or waits until it is done,
// so a task never outlives its caller's frame, and a missed wake-up only costs the helper's
// share: the caller has done all of it. A forked child has no helper thread (and may inherit
// its mutex locked), so after fork() Post refuses and the pool is used; so it is too where the
// thread cannot be started.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <system_error>
#include <thread>

#include <pthread.h>

namespace lm {

struct HelperTask {
  virtual void Run() = 0;  // runs at most once on the helper, beside the caller's own work
};

class SpinningHelper {
 public:
  static constexpr double kSpinMicros = 200;  // OpenMP's KMP_BLOCKTIME default is 200 ms; a step's gaps are ~10 us

  static SpinningHelper& Get() {
    static SpinningHelper* helper = new SpinningHelper();  // never destroyed: the thread outlives main
    return *helper;
  }

  // Offers `task` to the helper thread; false when the slot holds another caller's task.
  bool Post(HelperTask* task) {
    if (disabled_.load()) return false;
    HelperTask* empty = nullptr;
    if (!slot_.compare_exchange_strong(empty, task)) return false;
    if (sleeping_.load()) {
      std::lock_guard<std::mutex> lock(mu_);
      wake_.notify_one();
    }
    return true;
  }

  // After the caller's own share: `task` back if the helper never took it, else wait for it.
  void Retire(HelperTask* task) {
    HelperTask* posted = task;
    if (slot_.compare_exchange_strong(posted, nullptr)) return;
    while (running_.load() == task) std::this_thread::yield();  // at most the one chunk the helper is on
  }

 private:
  SpinningHelper() {
    try {
      std::thread([this] { Loop(); }).detach();
    } catch (const std::system_error&) {  // no thread to be had: every product uses the pool
      disabled_.store(true);
      return;
    }
    pthread_atfork(nullptr, nullptr, [] { Get().disabled_.store(true); });  // in the child
  }

  // running_ is set before the slot is emptied, so a Retire that finds the slot empty (or
  // holding a later task) sees this task running until Run() returns.
  HelperTask* Take() {
    HelperTask* task = slot_.load();
    if (task == nullptr) return nullptr;
    running_.store(task);
    if (slot_.compare_exchange_strong(task, nullptr)) return task;
    running_.store(nullptr);  // its caller took it back first
    return nullptr;
  }

  void Loop() {
    using Clock = std::chrono::steady_clock;
    auto idle_since = Clock::now();
    for (int64_t spins = 0;; ++spins) {
      if (HelperTask* task = Take()) {
        task->Run();
        running_.store(nullptr);
        idle_since = Clock::now();
        continue;
      }
      if ((spins & 63) == 0 &&
          std::chrono::duration<double, std::micro>(Clock::now() - idle_since).count() > kSpinMicros) {
        std::unique_lock<std::mutex> lock(mu_);
        sleeping_.store(true);
        wake_.wait(lock, [this] { return slot_.load() != nullptr; });
        sleeping_.store(false);
        idle_since = Clock::now();
      }
      std::this_thread::yield();  // spin, but hand the core to XLA's own threads when they have work
    }
  }

  std::atomic<HelperTask*> slot_{nullptr}, running_{nullptr};
  std::atomic<bool> sleeping_{false}, disabled_{false};
  std::mutex mu_;
  std::condition_variable wake_;
};

}  // namespace lm
