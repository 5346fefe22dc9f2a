"""bench/gpu_suite.py is run as it stands on the next GPU: at toy size on CPU every part must produce its numbers."""

from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


@pytest.fixture
def gpu_suite(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import gpu_suite

    return gpu_suite


def test_every_part_reports_and_the_slot_pass_computes_fewer_tokens_than_the_prompts(gpu_suite, capsys):
    rows = gpu_suite.main(["--shape", "tiny", "--device", "cpu", "--dtype", "fp32", "--skip-demo",
                           "--eval-samples", "16", "--gen-samples", "1"])
    table = {name: (value, verdict) for name, value, _, verdict in rows}
    assert not [name for name, (_, verdict) in table.items() if verdict == "FAIL"], capsys.readouterr().out[-3000:]
    assert table["train step: extra peak device memory GiB"][0] == "n/a on cpu"
    computed = float(table["eval: tokens computed per sample"][0])
    prompt = float(next(t for n, _, t, _ in rows if n == "eval: tokens computed per sample").split()[1])
    assert 0 < computed < prompt  # the tail after the last <st_pre> and the shared prefix are not recomputed
    compact = float(table["eval, compact prompts: tokens computed per sample"][0])
    assert compact < 0.7 * computed  # the same facts without the filler
    assert "gpu suite: shape tiny, cpu, fp32" in capsys.readouterr().out
