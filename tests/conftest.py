"""Shared test settings: tiny models, fp32, deterministic, nothing downloaded."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("DIFFUSERS_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import atexit  # noqa: E402
import shutil  # noqa: E402
import tempfile  # noqa: E402

# values kept on disk (sfumato.checkpoint.derived) go to a folder of this run, not the user's cache
if "SFUMATO_CACHE_DIR" not in os.environ:
    os.environ["SFUMATO_CACHE_DIR"] = tempfile.mkdtemp(prefix="sfumato-test-cache-")
    atexit.register(shutil.rmtree, os.environ["SFUMATO_CACHE_DIR"], True)

import torch  # noqa: E402

# tiny models: a second thread only adds synchronisation cost (and is slow when the CPU is shared)
torch.set_num_threads(1)
