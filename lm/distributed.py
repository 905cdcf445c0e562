"""Multi-process start-up on JAX's own runtime (jax.distributed), never a home-made one.

    initialize()                      # from flags, or detected: Cloud TPU pod, SLURM
    --coordinator_address=HOST:PORT --num_processes=N --process_id=I   # explicit
    process_flags()                   # those three as given, for a program that passes them on

Detection: on a multi-host Cloud TPU slice and under SLURM with more than one task,
`jax.distributed.initialize()` finds the coordinator, the process count and this process's
id itself (its cluster detection). One process on one machine needs nothing. On CPU the
processes exchange collectives over gloo.
"""

from __future__ import annotations

import glob
import importlib.util
import os

from absl import flags
from absl import logging

_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "HOST:PORT of process 0, for multi-process runs.")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "Number of processes in a multi-process run.")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "This process's index in a multi-process run.")


def process_flags() -> dict[str, str | int | None]:
  """{'coordinator_address', 'num_processes', 'process_id'}: the flags as given (None where not
  given, after absl has parsed them), in that order: a program that starts lm.main processes
  (experiments.sweep) passes them on and reads this host's index from them."""
  return {f.name: f.value for f in (_COORDINATOR, _NUM_PROCESSES, _PROCESS_ID)}


def on_cloud_tpu_vm() -> bool:
  """A Cloud TPU VM: libtpu installed and TPU chips attached (/dev/accel* on v4 and
  older, VFIO groups on v5e/v6e). Checked without starting jax's backend."""
  if importlib.util.find_spec("libtpu") is None:
    return False
  return bool(glob.glob("/dev/accel[0-9]*") or glob.glob("/dev/vfio/[0-9]*"))


def detected_cluster() -> str | None:
  """'slurm' or 'tpu' when the environment is a multi-process job jax can detect.

  On a TPU VM jax reads the slice's hosts from the metadata server (ssh sessions do not
  carry TPU_WORKER_HOSTNAMES), and a single-host slice initialises as one process, so a
  TPU VM always starts jax.distributed: orbax's checkpoint barriers need its client.
  """
  if int(os.environ.get("SLURM_NTASKS", "1")) > 1 and "SLURM_PROCID" in os.environ:
    return "slurm"
  if "," in os.environ.get("TPU_WORKER_HOSTNAMES", "") or on_cloud_tpu_vm():
    return "tpu"
  return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> bool:
  """Start jax.distributed if this is a multi-process run; True if it was started."""
  coordinator_address = coordinator_address or (_COORDINATOR.value if flags.FLAGS.is_parsed() else None)
  num_processes = num_processes if num_processes is not None else (
      _NUM_PROCESSES.value if flags.FLAGS.is_parsed() else None)
  process_id = process_id if process_id is not None else (_PROCESS_ID.value if flags.FLAGS.is_parsed() else None)
  import jax  # local: lm.main defines these flags before jax starts (its XLA flags come first)
  explicit = [coordinator_address, num_processes, process_id]
  if any(v is not None for v in explicit):
    if any(v is None for v in explicit):
      raise ValueError("A multi-process run needs all of --coordinator_address, --num_processes and "
                       "--process_id (or none of them, to detect a Cloud TPU slice or SLURM job).")
    if num_processes == 1:
      return False
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # used only by the CPU backend
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
  elif detected_cluster():
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize()
  else:
    return False
  logging.info("jax.distributed: process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())
  return True
