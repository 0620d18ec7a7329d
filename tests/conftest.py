"""Shared test settings: tiny models, fp32, deterministic, nothing downloaded."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import torch  # noqa: E402

# tiny models: a second thread only adds synchronisation cost (and is slow when the CPU is shared)
torch.set_num_threads(1)
