"""UrbanGPT's released instruction format: read it, write it, and train on it.

Format (``instruction_generate.py`` of HKUDS/UrbanGPT): a JSON list of
``{"id": "<split>_<dataset>_region_<r>_<r+1>_len_<i>", "conversations": [{"from": "human", "value":
... <ST_HIS> ...}, {"from": "gpt", "value": ... <ST_PRE> ...}]}`` and a pickle holding a list whose
item ``i`` is ``{"data_x": (1, T, N, C+1), "data_y": (1, T', N, C+1)}``, the last channel a dataset
type code (1 NYC taxi, 2 NYC bike, 3/4 NYC crime, 5 Chicago taxi). Loading a pickle can execute
code, so it needs ``trust_pickle=True``.
"""

from __future__ import annotations

import itertools
import json
import os
import pickle
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from stllm.data.city import CityDataError
from stllm.data.loaders import read_json
from stllm.data.prompts import VICUNA_SYSTEM, Conversation
from stllm.data.scaler import STScaler
from stllm.tokens import ST_HIS_PLACEHOLDER, ST_PRE_PLACEHOLDER

_ID_RE = re.compile(r"_region_(\d+)_(\d+)_len_(\d+)$")
EVENT_KINDS = (3, 4)  # UrbanGPT type codes of classification (crime) data
_UIDS = itertools.count()


@dataclass(frozen=True)
class UrbanGPTSample:
    id: str
    window: int
    region: int
    human: str
    gpt: str


@dataclass
class UrbanGPTData:
    """Windows ``x`` (S, T, N, C), ``y`` (S, T', N, C), type code per window, and the conversations."""

    x: np.ndarray
    y: np.ndarray
    kind: np.ndarray
    samples: tuple[UrbanGPTSample, ...]
    source: str = "<memory>"


def load_urbangpt(
    instruction_json: str | os.PathLike, pkl: str | os.PathLike, trust_pickle: bool = False
) -> UrbanGPTData:
    """Read an UrbanGPT instruction JSON and its window pickle, checking that they agree."""
    if not trust_pickle:
        raise PermissionError(f"{pkl}: loading a pickle can execute arbitrary code; pass trust_pickle=True "
                              "only for files you trust")
    jpath, ppath = str(instruction_json), str(pkl)
    records = read_json(jpath, _JSON_FORMAT)
    if not isinstance(records, list) or not records:
        got = "an empty list" if isinstance(records, list) else f"a JSON {type(records).__name__}"
        raise CityDataError(jpath, "<root>", f"expected {_JSON_FORMAT}, got {got}")
    x, y = _stack_windows(_read_pickle(ppath), ppath)
    n_windows, _, n_regions, _ = x.shape
    samples = []
    for k, rec in enumerate(records):
        sid = rec.get("id") if isinstance(rec, dict) else None
        where = f"[{k}] id={sid!r}"
        turns = rec.get("conversations") if isinstance(rec, dict) else None
        if not isinstance(turns, list) or len(turns) < 2 or not all(isinstance(t, dict) for t in turns):
            raise CityDataError(jpath, f"{where}.conversations", 'needs a list of turns {"from": "human" | "gpt", '
                                                                 '"value": text}, a human turn and a gpt turn')
        human = next((t.get("value", "") for t in turns if t.get("from") == "human"), None)
        gpt = next((t.get("value", "") for t in turns if t.get("from") == "gpt"), None)
        if human is None or ST_HIS_PLACEHOLDER not in human:
            raise CityDataError(jpath, f"{where}.conversations", f"human turn has no {ST_HIS_PLACEHOLDER} placeholder")
        if gpt is None or ST_PRE_PLACEHOLDER not in gpt:
            raise CityDataError(jpath, f"{where}.conversations", f"gpt turn has no {ST_PRE_PLACEHOLDER} placeholder")
        m = _ID_RE.search(str(sid))
        if m is None:
            raise CityDataError(jpath, f"{where}.id", "does not end in _region_<r>_<r+1>_len_<window>")
        region, window = int(m.group(1)), int(m.group(3))
        if window >= n_windows or region >= n_regions:
            raise CityDataError(
                ppath, "data_x",
                f"conversation {sid!r} of {jpath} refers to window {window}, region {region}, but the pickle "
                f"holds {n_windows} windows of {n_regions} regions",
            )  # fmt: skip
        samples.append(UrbanGPTSample(str(sid), window, region, human, gpt))
    return UrbanGPTData(x[..., :-1], y[..., :-1], x[:, 0, 0, -1].astype(np.int64), tuple(samples), jpath)


_JSON_FORMAT = 'a list of {"id": ..._region_<r>_<r+1>_len_<window>, "conversations": [...]} (UrbanGPT\'s format)'


def _read_pickle(path: str):
    """The window pickle; a truncated or foreign file is refused naming it (not a bare EOFError)."""
    with open(path, "rb") as f:
        try:
            return pickle.load(f)  # noqa: S301 -- guarded by trust_pickle
        except (pickle.UnpicklingError, EOFError, ValueError, ImportError, AttributeError) as e:
            raise CityDataError(path, "<file>", f"not a readable pickle ({type(e).__name__}: {e}); expected "
                                                "UrbanGPT's list of {'data_x', 'data_y'} windows") from None


def _stack_windows(windows, path: str) -> tuple[np.ndarray, np.ndarray]:
    if not isinstance(windows, list) or not windows:
        raise CityDataError(path, "<root>", "expected a non-empty list of {'data_x', 'data_y'} dicts")
    xs, ys = [], []
    for i, w in enumerate(windows):
        for key, out in (("data_x", xs), ("data_y", ys)):
            if not isinstance(w, dict) or key not in w:
                raise CityDataError(path, f"[{i}].{key}", "missing")
            a = np.asarray(w[key], dtype=np.float32)
            if a.ndim != 4 or a.shape[0] != 1 or a.shape[-1] < 2:
                raise CityDataError(path, f"[{i}].{key}", f"must be (1, T, N, C+1), got {a.shape}")
            out.append(a[0])
    for name, arrs in (("data_x", xs), ("data_y", ys)):
        shapes = {a.shape for a in arrs}
        if len(shapes) != 1:
            raise CityDataError(path, name, f"windows differ in shape: {sorted(shapes)[:4]}")
    x, y = np.stack(xs), np.stack(ys)
    if x.shape[2:] != y.shape[2:]:
        raise CityDataError(path, "data_y", f"regions/channels {y.shape[2:]} differ from data_x {x.shape[2:]}")
    return x, y


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_urbangpt(
    instruction_json: str | os.PathLike,
    pkl: str | os.PathLike,
    dataset,
    windows: Sequence[int] | None = None,
    kind: int = 1,
    split: str = "train",
) -> int:
    """Write windows of an :class:`~stllm.data.dataset.STInstructionDataset` (raw counts, all its
    regions, its prompts) in UrbanGPT's format; returns the number of conversations written."""
    if dataset.extra_views or dataset.with_geo or dataset.has_context:
        raise ValueError("UrbanGPT's format has one <ST_HIS> over the recent steps and no <GEO> per prompt; build "
                         "the dataset without extra_views, with_geo and a multi-period context (days=weeks=0)")
    city = dataset.city
    windows = range(dataset.n_windows) if windows is None else windows
    t_in, t_out = dataset.input_len, dataset.output_len
    records, blobs = [], []
    for k, w in enumerate(windows):
        t0 = int(dataset.starts[w])
        code = np.full((1, 1, city.n_regions, 1), kind, np.float32)
        x, y = city.values[None, t0:t0 + t_in], city.values[None, t0 + t_in:t0 + t_in + t_out]
        blobs.append({"data_x": np.concatenate([x, np.broadcast_to(code, (1, t_in, city.n_regions, 1))], -1),
                      "data_y": np.concatenate([y, np.broadcast_to(code, (1, t_out, city.n_regions, 1))], -1)})
        for r in range(dataset.n_regions):
            n = int(dataset.region_idx[r])
            conv = dataset[dataset.index_of(w, r)]["conversation"]
            records.append({
                "id": f"{split}_{city.name}_region_{n}_{n + 1}_len_{k}",
                "conversations": [{"from": "human", "value": conv.user}, {"from": "gpt", "value": conv.answer}],
            })  # fmt: skip
    _atomic_write(Path(instruction_json), json.dumps(records).encode("utf-8"))
    _atomic_write(Path(pkl), pickle.dumps(blobs, protocol=pickle.HIGHEST_PROTOCOL))
    return len(records)


class UrbanGPTDataset(torch.utils.data.Dataset):
    """UrbanGPT data as collator-ready samples (same dict layout as ``STInstructionDataset``).

    The human turn's quoted ``"<ST_PRE>"`` (UrbanGPT names the prediction tokens in the question)
    is reworded so that the only prediction placeholder is the one in the answer.
    """

    def __init__(self, data: UrbanGPTData, scaler: STScaler | None = None):
        self.data, self.scaler = data, scaler
        self.x = data.x if scaler is None else scaler.transform(data.x)
        self.y = data.y if scaler is None else scaler.transform(data.y)
        self._uid = next(_UIDS)

    def __len__(self) -> int:
        return len(self.data.samples)

    def __getitem__(self, i: int) -> dict:
        s = self.data.samples[i]
        event = int(self.data.kind[s.window]) in EVENT_KINDS
        raw = self.data.y[s.window, :, s.region]
        target = (raw > 0).astype(np.float32) if event else self.y[s.window, :, s.region]
        human = s.human.replace(f'"{ST_PRE_PLACEHOLDER}"', "prediction tokens").replace(ST_PRE_PLACEHOLDER, "")
        return {
            "id": s.id,
            "conversation": Conversation(VICUNA_SYSTEM, human, s.gpt),
            "history": [((self._uid, s.window), self.x[s.window])],
            "region": s.region,
            "target": target,
            "target_mask": np.ones(target.shape, dtype=bool),
            "task": "event" if event else "flow",
            "geo": np.zeros((0, 2), np.float32),
            "adjacency": None,
        }
