"""Shared fixtures: real servers on 127.0.0.1 (moto S3, MLflow, the Kubernetes API emulator)."""

from __future__ import annotations

import os

import torch

pytest_plugins = ["tests.support.fixtures", "tests.support.controlplane.fixtures"]

# Two cores are shared by the whole suite: one torch thread per test process keeps timings stable.
torch.set_num_threads(int(os.environ.get("GANOPS_TEST_THREADS", "1")))
