"""Block tests run single-threaded: their tensors are tiny, and on a busy machine thread hand-offs dominate."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
