"""Scheduler tests work on tiny tensors: one thread avoids thread hand-off costs that dwarf the math."""

import pytest
import torch


@pytest.fixture(autouse=True, scope="package")
def single_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
