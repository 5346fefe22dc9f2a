"""The LLMob Tokyo activity file (``llmob_activity_chains.csv.gz``, see ../shared/data/llmob_tokyo/PROVENANCE.txt):
one reader for every task that uses it (activity-chain generation, intent prediction).

Rows are real activities of 117 Tokyo residents (``dataset`` 2019, 2021 or 20192021: users repeat across them),
with ``uid, split (train/test), date, seq, time, place_category, top_category, place_id``. The reader checks the
columns a caller needs, keeps one ``dataset`` and yields each row with its line number, so callers name the line
and field of a bad value in their own error type.
"""

from __future__ import annotations

import csv
import gzip
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

LLMOB_FILE = ("llmob_tokyo", "llmob_activity_chains.csv.gz")  # under the data root


def open_text(path: str | os.PathLike):
    """A CSV file (``.gz`` or plain) opened for ``csv`` reading as UTF-8."""
    path = Path(path)
    return gzip.open(path, "rt", newline="", encoding="utf-8") if path.suffix == ".gz" else \
        path.open(newline="", encoding="utf-8")


def read_llmob_rows(path: str | os.PathLike, columns: Sequence[str], dataset: str | None = "2019",
                    error: type[Exception] = ValueError) -> Iterator[tuple[int, dict[str, str]]]:
    """``(line, row)`` of every row of ``dataset`` (None: all rows); ``error`` names a missing file column or an
    empty selection. A missing file is :class:`FileNotFoundError`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such file")
    wanted = tuple(dict.fromkeys(("dataset", *columns)))
    found = False
    with open_text(path) as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in wanted if c not in (reader.fieldnames or [])]
        if missing:
            raise error(f"{path}: missing column(s) {', '.join(missing)}")
        for line, rec in enumerate(reader, start=2):
            if dataset is None or rec["dataset"] == dataset:
                found = True
                yield line, rec
    if not found:
        raise error(f"{path}: field 'dataset': no rows of dataset {dataset!r}")
