"""Run lm (one run, or a whole sweep) on a Cloud TPU slice, and survive spot preemption.

    python -m experiments.launch.tpu --zone=us-west4-a --accelerator_type=v5litepod-16 --spot \
        --bucket=gs://my-bucket --run="--config=configs/ladder.py:p50m --workdir=/mnt/my-bucket/runs/p50m"
    python -m experiments.launch.tpu ... --sweep="--config=experiments/sweeps/x.py --sweep_dir=/mnt/my-bucket/sweeps/x"
    ... --dry_run      prints every command it would run, runs none

Steps, each one gcloud command (printed as it runs; output in launch_logs/<name>/):
  pack     the working tree (or `git archive` of --git_ref), once, so every restart runs the same code
  create   a queued resource: one TPU VM slice, spot, reserved or on-demand
  wait     until the queued resource is ACTIVE
  ship     scp the code to every worker; install it (`pip install -e .` plus --extra_install) in a
           venv; mount the bucket with gcsfuse at the same path on every worker
  run      the same command on every worker (--worker=all), streamed here and saved
  delete   the queued resource, at the end or on any error (unless --keep)

Multi-host runs need one directory every worker sees: orbax writes each host's shards into the
same checkpoint directory, and process 0 writes metrics.jsonl, summary.json and config.json with
plain file I/O. So the workdir (or sweep_dir) must be under the bucket's mount point, or under
--shared_dir (a filesystem already mounted on every worker, e.g. Filestore over NFS).

Preemption: spot capacity can be taken back at any time; the queued resource then leaves ACTIVE
(SUSPENDING, SUSPENDED, FAILED; the node shows PREEMPTED). The launcher notices (while the command
runs, and after it ends, since lm exits 0 when SIGTERM makes it checkpoint and stop), deletes the
queued resource, creates it again, ships, installs and runs the same command: lm resumes from its
latest checkpoint, a sweep skips finished points. At most --max_restarts times. A lost ssh connection
(exit status 255) with the slice still ACTIVE reruns on the same slice; any other failure stops.

Every value that reaches a worker's shell is quoted with shlex (paths, --env values, the
command) or validated (--bucket, --name); --extra_install is a shell command by design.
"""

from __future__ import annotations

import argparse
import os
import re
import shlex
import sys
from pathlib import Path

from experiments.launch import common
from experiments.launch import tpu_pool
from experiments.launch.common import LaunchError
from experiments.launch.tpu_slice import (LOST, REMOTE_TAR, SSH_LOST, Tpu, run_script, setup_script, still_active,
                                          wait_active)

# Accelerator type -> default runtime (software) version, from the Cloud TPU runtime table:
# v6e v2-alpha-tpuv6e, v5p v2-alpha-tpuv5, v5e v2-alpha-tpuv5-lite, v4 and older tpu-ubuntu2204-base.
RUNTIMES = {"v6e": "v2-alpha-tpuv6e", "v5p": "v2-alpha-tpuv5", "v5litepod": "v2-alpha-tpuv5-lite",
            "v4": "tpu-ubuntu2204-base", "v3": "tpu-ubuntu2204-base", "v2": "tpu-ubuntu2204-base"}
ACCELERATOR = re.compile(r"^(v6e|v5p|v5litepod|v4|v3|v2)-(\d+)$")
NAME = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")

def launch(tpu: Tpu, runner: common.Runner, code: str, setup: str, run: str, max_restarts: int, keep: bool,
           poll_s: float = 30, settle_s: float = 120) -> int:
  """Create, wait, ship, run; on preemption delete and do it all again. Exit status of the launch."""
  restarts, attempt, created, need_slice = 0, 0, False, True
  try:
    while True:
      active = True
      if need_slice:
        runner.say(f"create the slice ({tpu.accelerator_type}, {tpu.provisioning}) through a queued resource")
        if runner.run(tpu.create(), f"create-{attempt}") != 0:
          runner.say(f"could not create the queued resource (see above). If one named {tpu.name} exists already "
                     f"and is yours to remove:\n{shlex.join(tpu.delete())}")
          return 1
        created = True
        active = wait_active(tpu, runner, poll_s)
      rc = 0
      if active:
        runner.say("ship the code to every worker, install it, mount the shared storage")
        rc = runner.run(tpu.scp(code, REMOTE_TAR), f"ship-{attempt}") or runner.run(tpu.ssh(setup), f"setup-{attempt}")
        if rc == 0:
          runner.say(f"run on every worker (output here and in {runner.log_dir / f'run-{attempt}.log'})")
          rc = runner.run(tpu.ssh(run), f"run-{attempt}", stream=True, watch=lambda: tpu.state(runner) in LOST,
                          watch_every=max(poll_s, 60))
        if runner.dry_run:
          runner.say(f"if the slice is preempted, during the run or after it: delete it, create it again, ship, "
                     f"install and run\nthe same command (it resumes from its checkpoints), at most {max_restarts} "
                     f"times (--max_restarts)")
        active = still_active(tpu, runner, poll_s, settle_s)
      if active and rc == 0:
        runner.say("done")
        return 0
      if active and rc != SSH_LOST:
        runner.say(f"the command failed (exit status {rc}) on a healthy slice: not restarting")
        return rc
      what = "the slice was preempted or lost" if not active else "the ssh connection was lost (slice still ACTIVE)"
      if restarts >= max_restarts:
        runner.say(f"{what}, and no restarts are left (--max_restarts={max_restarts})")
        return 1
      restarts += 1
      attempt += 1
      if active:
        runner.say(f"{what}: restart {restarts} of {max_restarts} on the same slice")
        need_slice = False
      else:
        runner.say(f"{what}: restart {restarts} of {max_restarts}: delete it and create it again")
        if runner.run(tpu.delete(), f"delete-{attempt}") != 0:
          return 1  # still ours: the finally below tries once more
        created, need_slice = False, True
  finally:
    if created and not keep:
      runner.say("delete the slice")
      runner.run(tpu.delete(), "delete")
    elif created:
      runner.say(f"--keep: the slice stays up, and is billed; delete it with:\n{shlex.join(tpu.delete())}")


def parse_args(argv: list[str]) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m experiments.launch.tpu", description=__doc__.split("\n")[0],
                              epilog="Full description: the docstring of experiments/launch/tpu.py.")
  p.add_argument("--name", help="Queued resource and node id (default: lm-<basename of the workdir or sweep_dir>).")
  p.add_argument("--zone", required=True, help="e.g. us-west4-a.")
  p.add_argument("--project", help="Google Cloud project (default: gcloud's configured project).")
  p.add_argument("--accelerator_type", required=True, help="e.g. v5litepod-16, v6e-16, v5p-32, v4-32.")
  p.add_argument("--runtime_version", help="TPU software version (default: the one the Cloud TPU docs name for "
                 "JAX on that generation, e.g. v2-alpha-tpuv5-lite for v5e, v2-alpha-tpuv6e for v6e).")
  tier = p.add_mutually_exclusive_group()
  tier.add_argument("--spot", action="store_true", help="Spot capacity: cheap, can be preempted at any time.")
  tier.add_argument("--reserved", action="store_true", help="Capacity from the project's reservation.")
  p.add_argument("--create_arg", action="append", default=[], metavar="FLAG",
                 help="Extra flag for `queued-resources create`, e.g. --create_arg=--service-account=SA (repeatable).")
  store = p.add_mutually_exclusive_group(required=True)
  store.add_argument("--bucket", help="gs://BUCKET, mounted with gcsfuse on every worker at --mount_point.")
  store.add_argument("--shared_dir", help="A directory already mounted on every worker (e.g. NFS).")
  p.add_argument("--mount_point", help="Where every worker mounts --bucket (default: /mnt/BUCKET).")
  p.add_argument("--git_ref", help="Ship `git archive` of this commit/branch/tag instead of the working tree.")
  p.add_argument("--extra_install", default='pip install -U "jax[tpu]"',
                 help="Accelerator-specific install, after `pip install -e .` (default: %(default)s).")
  p.add_argument("--max_restarts", type=int, default=5, help="Re-creations after preemption (default: %(default)s).")
  p.add_argument("--keep", action="store_true", help="Leave the slice up at the end (it stays billed).")
  p.add_argument("--poll_s", type=float, default=30, help="Seconds between state polls (default: %(default)s).")
  p.add_argument("--settle_s", type=float, default=120,
                 help="How long the slice must stay ACTIVE after the command ends to count as finished.")
  p.add_argument("--log_dir", help="Local logs and the code tarball (default: launch_logs/<name>).")
  p.add_argument("--dry_run", action="store_true", help="Print every command, run none.")
  per = p.add_argument_group("a pool of slices, one point at a time on each (--sweep only): tpu_pool.py")
  per.add_argument("--per_point", action="store_true", help="Run the sweep's points on a pool of slices.")
  per.add_argument("--max_slices", type=int, default=4, help="At most this many slices (points) at once "
                   "(default: %(default)s).")
  per.add_argument("--fixed_size", action="store_true", help="Every point on --accelerator_type (default: the "
                   "smallest slice of its generation that holds the point, up to --accelerator_type).")
  per.add_argument("--plan_python", default=sys.executable, help="The python that plans the sweep here, with lm "
                   "installed (default: this one).")
  common.add_job_flags(p)
  flags, rest = common.split_argv(argv)
  args = p.parse_args(flags)
  args.rest = rest
  return args


def plan(args: argparse.Namespace):
  """Check the flags and build (Tpu, job, env, setup script, run script, log dir), before anything runs."""
  job = common.parse_job(args.run, args.sweep, args.rest, common.REPO)
  env = common.parse_env(args.env)
  m = ACCELERATOR.match(args.accelerator_type)
  if not m:
    raise LaunchError(f"--accelerator_type={args.accelerator_type}: expected <generation>-<size> with a generation "
                      f"in {', '.join(RUNTIMES)}, e.g. v5litepod-16 or v6e-16.")
  if args.bucket and not re.fullmatch(r"gs://[a-z0-9][-_.a-z0-9]*", args.bucket):
    raise LaunchError(f"--bucket={args.bucket}: expected gs://BUCKET (the bucket only; put paths in the workdir).")
  if args.max_restarts < 0 or args.poll_s <= 0 or args.settle_s < 0:
    raise LaunchError("--max_restarts and --settle_s must be >= 0, --poll_s > 0.")
  if args.per_point and (job.kind != "sweep" or args.keep or args.max_slices < 1):
    raise LaunchError("--per_point runs the points of a sweep (--sweep='<sweep args>') on --max_slices >= 1 "
                      "slices, and deletes them all at the end (no --keep).")
  shared = args.shared_dir or args.mount_point or f"/mnt/{args.bucket[len('gs://'):]}"
  flag = "--workdir" if job.kind == "run" else "--sweep_dir"
  if not os.path.isabs(shared):
    raise LaunchError(f"{shared}: the shared directory must be an absolute path.")
  if not (os.path.isabs(job.output_dir) and common.is_under(job.output_dir, shared)):
    where = f"--bucket={args.bucket} is mounted at {shared}" if args.bucket else f"--shared_dir={shared}"
    raise LaunchError(f"{flag}={job.output_dir} is not on storage every worker sees ({where}); "
                      f"use e.g. {flag}={shared.rstrip('/')}/{os.path.basename(job.output_dir.rstrip('/')) or 'run'}.")
  base = os.path.basename(job.output_dir.rstrip("/")).lower()
  name = args.name or "lm-" + re.sub(r"[^a-z0-9]+", "-", base).strip("-")
  if not NAME.match(name):
    raise LaunchError(f"--name={name}: lowercase letters, digits and hyphens, starting with a letter.")
  provisioning = "spot" if args.spot else "reserved" if args.reserved else "on-demand"
  tpu = Tpu(name, args.zone, args.project, args.accelerator_type, args.runtime_version or RUNTIMES[m.group(1)],
            provisioning, args.create_arg)
  setup = setup_script(args.extra_install, args.bucket, shared if args.bucket else None, args.shared_dir)
  return tpu, job, env, setup, run_script(job, env), Path(args.log_dir or f"launch_logs/{name}")


def main(argv: list[str], out=None) -> int:
  try:
    args = parse_args(argv)
    tpu, job, env, setup, run, log_dir = plan(args)
  except LaunchError as e:
    print(f"launch_tpu: {e}", file=sys.stderr)
    return 2
  runner = common.Runner(args.dry_run, log_dir, out)
  if args.per_point:
    runner.say(f"sweep on a pool of at most {args.max_slices} Cloud TPU slice(s) of up to {tpu.accelerator_type} "
               f"({tpu.provisioning}), {tpu.name}-<k>-<n>, in {tpu.zone}, runtime {tpu.runtime_version}; "
               f"logs in {log_dir}")
  else:
    runner.say(f"{job.kind} on Cloud TPU {tpu.accelerator_type} ({tpu.provisioning}) {tpu.name} in {tpu.zone}, "
               f"runtime {tpu.runtime_version}; logs in {log_dir}")
  code = str(log_dir / "code.tar.gz")
  if args.git_ref:
    # --output is relative to the repository after -C: give it the absolute path.
    rc = runner.run(["git", "-C", str(common.REPO), "archive", "--format=tar.gz", f"--output={os.path.abspath(code)}",
                     args.git_ref], "pack")
  else:
    runner.say(f"pack the working tree of {common.REPO} (tracked and untracked files, not ignored ones) into {code}")
    rc = 0 if args.dry_run else common.pack_tree(common.REPO, Path(code), exclude=[log_dir])
  if rc:
    return rc
  if args.per_point:
    try:
      return tpu_pool.launch(args, tpu, job, env, setup, runner, code, run_script, common.REPO)
    except LaunchError as e:
      print(f"launch_tpu: {e}", file=sys.stderr)
      return 2
  return launch(tpu, runner, code, setup, run, args.max_restarts, args.keep, args.poll_s, args.settle_s)


if __name__ == "__main__":
  sys.exit(main(sys.argv[1:]))
