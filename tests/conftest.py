"""Test setup: eight fake CPU devices, so every compile mode runs data-parallel here."""

import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# No persistent compilation cache from experiment commands (tests count compilations); the
# tests that check the cache name a folder themselves.
os.environ["JDL_COMPILATION_CACHE"] = ""

import jax

jax.config.update("jax_platforms", "cpu")
