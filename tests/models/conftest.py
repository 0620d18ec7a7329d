"""Model test fixtures."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine each parallel op waits for that
    thread to be scheduled (it once made a module ~100x slower). One thread also makes batch slicing exactly
    reproducible (reductions are not split between threads)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
