"""lm: language-model scaling experiments in JAX/Flax.

Importing lm (or any lm module) changes no process state: process-wide settings such as
XLA_FLAGS are set by the command-line entry points (lm.cli.set_process_defaults).
"""

__version__ = "0.1.0"
