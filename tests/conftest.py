"""Test session setup: 8 simulated CPU devices, so multi-device code runs in CI; the entry
points' XLA flags (lm.cli.set_process_defaults), as `python -m lm.main` sets them; and, unlike
lm.main, LLVM's optimisation off, here and in the processes tests start, so that compiling
costs less (below; the golden losses in tests/test_train.py hold at either level)."""

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent compilation cache for the session and every process it starts (the tests
# launch ~150 `python -m lm.main`-like processes, most compiling the same few tiny programs;
# compilation is half of each one's time: a 4-step configs/tiny.py run took 16.2 s cold and
# 8.1 s from the cache). Every program is cached (no minimum compile time or size); a cached
# executable is the one XLA compiled, so no number changes. Fresh per session and removed at
# exit, so a test never reads a cache another session wrote. Set JAX_COMPILATION_CACHE_DIR
# yourself to keep one across sessions, or to "" to compile everything afresh.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _CACHE = tempfile.mkdtemp(prefix="lm-tests-jax-cache-")
  atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")

# Tests compile with LLVM's optimisation off (--xla_backend_optimization_level=0), in this
# process and in every process the tests start (their env passes LM_TEST_XLA_FLAGS as
# XLA_FLAGS). Compilation is most of a tiny test run's time and the programs run for
# milliseconds: configs/tiny.py's train step compiled in 3.0 s instead of 6.5 s (its eval
# step 0.6 s instead of 2.3 s) and gave the same losses; the golden losses hold at either
# level. Set LM_TEST_XLA_FLAGS="" to test at XLA's default optimisation, as lm.main runs.
os.environ.setdefault("LM_TEST_XLA_FLAGS", "--xla_backend_optimization_level=0")
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {os.environ['LM_TEST_XLA_FLAGS']}".strip()

# Medium-row products (lm/cpu_gemm_rows.py) go to the BLAS, as on a host that measured no gain
# for XLA's product, so that what a test lowers does not depend on the host it runs on;
# tests/test_cpu_gemm_rows.py sets and measures the limit itself. Inherited by the processes tests start.
os.environ["LM_CPU_GEMM_XLA_ROWS"] = "0"

from lm.cli import set_process_defaults  # noqa: E402

set_process_defaults()  # before the first test starts jax's CPU backend

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)


# ---- two tiers: CI and extended ----
# The whole suite takes ~55 minutes on 2 cores (3,274 s on 2026-12-01 at load ~1.5) and CI has
# 20. The CI tier keeps at least one test of every behaviour (a fresh clone's `.ci/run` on
# 2026-12-02 at ab392a6: 587 tests, 581 s of tests, 750 s with the install, alone on the host;
# 1,263 s at 591 tests on an earlier, slower day of the same host). EXTENDED lists, by node-id prefix, what
# it leaves to `python -m pytest -q --extended tests`: more meshes, families or variants of an
# assertion a CI test already makes, and the longest end-to-end scenarios whose parts CI tests
# one by one. Run the extended tier before merging a change to the code an entry names.
# Per-test times: `python -m pytest -q --extended --durations=0 tests`. The README's command runs two
# pytest-xdist workers (-n 2): on 2026-12-04, 558 s of tests on a 2-core EPYC where one took 925 s.
EXTENDED = {
    # The whole README walk (~9 min); CI runs its quickstart (test_the_quickstart_command_runs).
    "tests/test_readme.py::test_every_local_readme_command_runs": "README walk",
    # More meshes and variants of an equality CI checks on (2, 2, 2) or one variant.
    "tests/test_muon.py::test_sharded_muon_steps_equal_one_device[mesh_shape0-False]": "variant",
    "tests/test_muon.py::test_sharded_muon_steps_equal_one_device[mesh_shape1": "variant",
    "tests/test_muon.py::test_sharded_muon_steps_equal_one_device[mesh_shape2": "variant",
    "tests/test_muon.py::test_the_adamw_side_of_muon_is_optax_adamw": "57 s; Muon's own steps are checked in CI",
    "tests/test_mup.py::test_sharded_mup_step_equals_one_device[mesh_shape1]": "variant",
    "tests/test_mup.py::test_sharded_mup_step_equals_one_device[mesh_shape2]": "variant",
    "tests/test_mup.py::test_mup_at_its_base_shape_computes_what_sp_computes[llama]": "variant",
    "tests/test_mup.py::test_folding_the_multipliers_gives_an_sp_model_with_the_same_logits[llama-mqa": "variant",
    "tests/test_mup.py::test_folding_the_multipliers_gives_an_sp_model_with_the_same_logits[gpt2": "variant",
    "tests/test_mup.py::test_scan_and_remat_give_the_unrolled_gradients_under_mup": "variant",
    "tests/test_mup.py::test_cached_decoding_equals_the_full_forward_under_mup[gpt2": "variant",
    "tests/test_mup.py::test_hf_export_of_a_mup_model_reimports_to_the_same_logits": "variant",
    "tests/test_mup.py::test_a_mup_run_resumes_exactly": "exact resume is checked in CI under SP",
    "tests/test_ops.py::test_remat_dots_gives_no_remats_loss_and_gradients_under_either_matmul[gpt2": "variant",
    "tests/test_ops.py::test_remat_dots_gives_no_remats_loss_and_gradients_under_either_matmul[llama-einsum]": "variant",
    "tests/test_model.py::test_every_remat_policy_gives_the_same_gradients[True]": "variant",
    "tests/test_sharding.py::test_sharded_forward_and_gradients_equal_one_device[llama-mesh_shape1]": "variant",
    "tests/test_sharding.py::test_sharded_forward_and_gradients_equal_one_device[llama-mesh_shape2]": "variant",
    "tests/test_sharding.py::test_sharded_forward_and_gradients_equal_one_device[gpt2-mesh_shape1]": "variant",
    "tests/test_sharding.py::test_sharded_forward_and_gradients_equal_one_device[gpt2-mesh_shape2]": "variant",
    "tests/test_decode_sharding.py::test_sharded_generate_equals_one_device[mesh_shape1": "variant",
    "tests/test_flops.py::test_executed_flops_match_xla_on_the_compiled_train_step_of_cpu_ladder_shapes[224": "variant",
    "tests/test_flops.py::test_executed_flops_match_xla_on_the_compiled_train_step_of_cpu_ladder_shapes[32": "variant",
    "tests/test_process_flags.py::test_importing_a_command_line_module_leaves_the_environment_as_it_was":
        "one process per module; CI imports every module in one process",
    # Long end-to-end scenarios; CI keeps the cheaper test of each mechanism.
    "tests/test_cli.py::test_sigkill_then_same_command_resumes_bitwise_identically": "CI: SIGTERM resume, two-process resume",
    "tests/test_cli.py::test_a_first_ctrl_c_saves_like_sigterm_and_a_second_stops_at_once": "CI: SIGTERM",
    "tests/test_cli.py::test_a_loss_blow_up_is_diverged_with_its_own_exit_status": "CI: the sweep's diverged point",
    "tests/test_cli.py::test_generate_streams_a_continuation_and_rejects_bad_prompts": "CI: test_hf_tokenizers' lm.generate",
    "tests/test_sweep.py::test_a_sweep_stopped_by_sigterm_then_sigkill_finishes_with_the_uninterrupted_table": "CI: relaunch",
    "tests/test_sweep.py::test_two_hosts_run_each_point_together_and_only_host_0_writes_sweep_files": "CI: test_multiprocess",
    "tests/test_sweep_branching.py::test_branches_start_after_their_stable_run": "CI: test_branching's branched cooldown",
    "tests/test_cluster_sweeps.py::test_a_preempted_slice_point_resumes": "CI: the requeued SLURM array task",
    "tests/test_cluster_sweeps.py::test_a_stopped_or_killed_pool_leaves_no_slice": "CI: the pool of four slices",
    "tests/test_tracking.py::test_a_preempted_and_resumed_run_logs_to_the_same_wandb_run": "CI: the offline W&B run",
    "tests/test_lr_sweep.py::test_a_sweep_trains_what_lm_train_trains_at_each_lr[muon]": "variant",
    "tests/test_harness.py::test_python_m_lm_harness_registers_the_model_for_lm_evals_cli": "CI: the local tasks through lm_eval",
    "tests/test_quality_vs_cost.py::test_end_to_end_on_a_tiny_trained_run": "CI: the study's notebook and unit tests",
    "tests/test_workdir.py::test_a_full_disk_keeps_the_real_error_and_records_it_when_it_can": "28 s",
    "tests/test_cluster_sweeps.py::test_a_requeued_array_task_resumes": "84 s; CI: the SIGTERM resume, the relaunch",
    "tests/test_lr_sweep.py::test_a_sweep_trains_what_lm_train_trains_at_each_lr[adamw]": "32 s",
    "tests/test_train.py::test_init_from_takes_another_runs_parameters_but_not_its_optimizer": "CI: test_sft's fine-tune",
    "tests/test_notebooks.py::test_notebook_executes_without_errors[isoflop_cpu.ipynb]": "CI: the other notebooks",
    # Moved on 2026-12-02 to bring the CI tier under 20 minutes (each one's mechanism keeps a CI test).
    "tests/test_readme.py::test_the_quickstart_command_runs": "66 s; CI: the golden losses and the run-files test train the same code",
    "tests/test_cli.py::test_evaluate_prints_loss_and_bits_per_byte_on_plain_text": "CI: test_harness's rolling loglikelihood equals lm.evaluate",
    "tests/test_cluster_sweeps.py::test_a_relaunch_submits_only_the_points_neither_finished_nor_in_flight": "CI: the local relaunch (test_sweep)",
    "tests/test_mup.py::test_sharded_mup_step_equals_one_device[mesh_shape0]": "CI: sharded equals one device under SP; µP's multipliers are per-leaf scalars",
    "tests/test_mup.py::test_weight_decay_per_step_is_the_same_at_every_width": "CI: each kind's LR multiplier (test_first_adam_step)",
    "tests/test_sharding.py::test_sharded_forward_and_gradients_equal_one_device[llama-mesh_shape0]": "variant: gpt2 on the same mesh",
    "tests/test_hf_tokenizers.py::test_lm_generate_prints_the_text_transformers_generates_without_bos": "CI: transformers generates what lm does",
    "tests/test_multiprocess.py::test_one_process_resumes_a_two_process_checkpoint_like_one":
        "CI: two processes resume their own checkpoint; test_train restores onto another mesh",
    "tests/test_hf.py::test_convert_cli_then_loading_a_workdir_or_the_directory": "CI: the in-process HF export and import parity",
    "tests/test_sft.py::test_finetune_a_hugging_face_directory_through_train": "CI: the other SFT tests; test_hf's import",
    "tests/test_harness.py::test_local_tasks_run_offline_and_multiple_choice_agrees_with_lm_tasks":
        "CI: the harness adapter's rolling loglikelihood equals lm.evaluate; test_tasks' scorer",
    "tests/test_decode.py::test_greedy_is_deterministic_and_sampling_is_seeded": "CI: cached decoding equals the full forward",
    # Moved on 2026-12-04: a fresh clone's CI tier took 968 s of tests on the 2-core AVX2 EPYC, and
    # 1,203 s in a slower hour of the same host (with --durations=80), against 20 minutes in all.
    "tests/test_mup.py::test_coordinate_check_is_flat_in_width_under_mup_and_grows_under_sp":
        "46 s; CI: each kind's LR multiplier, the folding equality (experiments/results/coord_check)",
    "tests/test_hf_tokenizers.py::test_a_unigram_sentencepiece_exports_with_the_same_ids": "variant of the BPE export's",
    "tests/test_muon.py::test_tiny_model_overfits_a_fixed_batch_with_muon": "CI: sharded Muon steps equal one device",
    "tests/test_sharding.py::test_sharded_column_blocks_equal_one_device_without_them[llama-mesh_shape1]": "variant",
    "tests/test_sharding.py::test_sharded_column_blocks_equal_one_device_without_them[gpt2": "variant",
    "tests/test_cli.py::test_bad_overrides_fail_fast_with_one_clear_line[--config.model.d_model=wide": "variant",
    "tests/test_cli.py::test_bad_overrides_fail_fast_with_one_clear_line[--config.optim.schedule=linear": "variant",
    "tests/test_workdir.py::test_a_relaunch_that_changes_what_the_run_computes_is_refused_and_changes_nothing[optim":
        "variant",
    "tests/test_workdir.py::test_a_relaunch_that_changes_what_the_run_computes_is_refused_and_changes_nothing[data":
        "variant",
    "tests/test_ops.py::test_the_custom_vjp_gives_autodiffs_values_and_gradients_for_every_model_equation[bfloat16":
        "variant",
}


def pytest_addoption(parser):
  parser.addoption("--extended", action="store_true",
                   help="also run the extended tier (tests/conftest.py:EXTENDED, ~55 min on 2 cores)")


def pytest_configure(config):
  config.addinivalue_line("markers", "extended: in the extended tier (tests/conftest.py:EXTENDED); run with --extended")


def pytest_collection_modifyitems(config, items):
  files = {item.nodeid.split("::")[0] for item in items}
  for item in items:
    if any(item.nodeid.startswith(prefix) for prefix in EXTENDED):
      item.add_marker("extended")
  stale = [p for p in EXTENDED if p.split("::")[0] in files and not any(i.nodeid.startswith(p) for i in items)]
  whole_files = not any("::" in a for a in config.args) and not config.getoption("-k") and not config.getoption("-m")
  if stale and whole_files:  # a renamed test leaves the table stale
    raise pytest.UsageError(f"tests/conftest.py:EXTENDED names tests that do not exist: {stale}")
  if config.getoption("--extended"):
    return
  left = [item for item in items if item.get_closest_marker("extended")]
  if left:
    config.hook.pytest_deselected(items=left)
    items[:] = [item for item in items if not item.get_closest_marker("extended")]
