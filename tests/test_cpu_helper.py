"""lm/cpu_helper.h, the spinning second thread of lm's one-row products, driven from C++ (a small
program compiled here with the compiler lm/cpu_gemm.py builds its kernel with): two callers
share it without losing or repeating a chunk, and a forked child refuses it (its copy of the
helper has no thread behind it, and may hold the helper's mutex locked forever)."""

import os
import subprocess

import pytest

from lm import cpu_gemm

COMPILER = cpu_gemm.compiler()
pytestmark = pytest.mark.skipif(COMPILER is None or os.name != "posix", reason="needs a C++ compiler and fork()")
HEADER_DIR = os.path.join(os.path.dirname(__file__), os.pardir, "lm")

PROGRAM = r"""
#include "cpu_helper.h"
#include <cstdio>
#include <sys/wait.h>
#include <unistd.h>

// A task of `chunks` claims; each claim adds its index to `sum` (so a chunk run twice, or not at
// all, shows), whichever thread makes it.
struct Task : lm::HelperTask {
  std::atomic<long> next{0}, done{0}, sum{0};
  long chunks = 64;
  void Claim() {
    for (long i; (i = next.fetch_add(1)) < chunks;) { sum += i; done++; }
  }
  void Run() override { Claim(); }
};

// Post, claim alongside, retire, wait: lm/cpu_gemm.cc's protocol. Returns whether it was posted.
bool RunOne(long* bad) {
  Task t;
  bool posted = lm::SpinningHelper::Get().Post(&t);
  t.Claim();
  if (posted) lm::SpinningHelper::Get().Retire(&t);
  while (t.done.load() < t.chunks) {}
  if (t.sum.load() != t.chunks * (t.chunks - 1) / 2) ++*bad;
  return posted;
}

int main() {
  long bad[2] = {0, 0}, posted[2] = {0, 0};
  std::thread other([&] { for (int i = 0; i < 20000; ++i) posted[1] += RunOne(&bad[1]); });
  for (int i = 0; i < 20000; ++i) posted[0] += RunOne(&bad[0]);
  other.join();
  printf("parent: %ld wrong sums, %ld posted\n", bad[0] + bad[1], posted[0] + posted[1]);
  fflush(stdout);  // else the child inherits the buffered line and prints it again
  pid_t pid = fork();
  if (pid == 0) {
    long child_bad = 0, child_posted = 0;
    for (int i = 0; i < 100; ++i) child_posted += RunOne(&child_bad);
    printf("child: %ld wrong sums, %ld posted\n", child_bad, child_posted);
    fflush(stdout);
    _exit(0);
  }
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
"""


def test_the_helper_runs_every_chunk_once_for_two_callers_and_a_forked_child_refuses_it(tmp_path):
  source, binary = tmp_path / "helper.cc", tmp_path / "helper"
  source.write_text(PROGRAM)
  subprocess.run([COMPILER, "-O2", "-std=c++17", "-pthread", f"-I{HEADER_DIR}", str(source), "-o", str(binary)],
                 check=True, capture_output=True, text=True)
  result = subprocess.run([str(binary)], capture_output=True, text=True, timeout=60)
  assert result.returncode == 0, result.stderr
  parent, child = result.stdout.strip().splitlines()
  assert parent.startswith("parent: 0 wrong sums, ") and int(parent.split()[-2]) > 0, parent
  assert child == "child: 0 wrong sums, 0 posted", child
