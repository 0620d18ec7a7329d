"""--fast in the command line: the pipelines run in sfumato.optimize's mode for this CPU, the PNG records it
and `reproduce` uses it; bf16 on a CPU without native bf16 gets a warning."""

from __future__ import annotations

import numpy as np

from sfumato.metadata import read_parameters

from .conftest import pixels

PROMPT = "a red circle on a blue background"


def test_fast_is_recorded_reproduced_and_close_to_the_default(cli, tmp_path, monkeypatch):
    from sfumato import fast
    from sfumato.cli import models

    plans = []
    place = models.Loader._place

    def spy(self, pipe):
        placed = place(self, pipe)
        plans.append(fast.current_plan(placed))
        return placed

    monkeypatch.setattr(models.Loader, "_place", spy)
    assert cli("generate", PROMPT, "--seed", 1, "--fast", "-o", "fast.png", "-q").code == 0
    assert plans and all(plan is not None for plan in plans)
    assert read_parameters(tmp_path / "fast.png")["fast"] is True
    plans.clear()
    assert cli("generate", PROMPT, "--seed", 1, "-o", "plain.png", "-q").code == 0
    assert plans and all(plan is None for plan in plans)
    assert "fast" not in read_parameters(tmp_path / "plain.png")
    made, plain = pixels(tmp_path / "fast.png").astype(float), pixels(tmp_path / "plain.png").astype(float)
    mse = ((made - plain) ** 2).mean()
    assert mse == 0 or 10 * np.log10(255 ** 2 / mse) >= 30
    plans.clear()
    result = cli("reproduce", "fast.png", "-o", "again.png", "--check", "-q")
    assert result.code == 0, result.err
    assert plans and all(plan is not None for plan in plans)


def test_bf16_on_a_cpu_without_native_bf16_warns(cli, monkeypatch):
    from sfumato import fast

    monkeypatch.setattr(fast, "cpu_capability", lambda: "AVX2")
    monkeypatch.setattr(fast, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    result = cli("generate", PROMPT, "--seed", 1, "--dtype", "bf16", "--steps", 2, "--prior-steps", 2, "-o", "b.png")
    assert result.code == 0, result.err
    assert "sfumato: warning: bf16 on this CPU (AVX2" in result.err
    monkeypatch.setattr(fast, "cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(fast, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16", "amx_bf16"}))
    result = cli("generate", PROMPT, "--seed", 1, "--dtype", "bf16", "--steps", 2, "--prior-steps", 2, "-o", "c.png")
    assert result.code == 0 and "bf16 on this CPU" not in result.err


def test_fast_must_be_true_or_false_in_a_record():
    import pytest

    from sfumato.cli.errors import UsageError
    from sfumato.cli.jobs import Job, check_fields

    job = Job.from_mapping({"task": "text2image", "prompt": PROMPT, "fast": "yes"}, "job")
    with pytest.raises(UsageError, match="fast must be true or false, got 'yes'"):
        check_fields(job, "job: ")
