import json

import numpy as np
import pytest
import torch

from stllm.encoders.geo_encoder import GeoEncoder, GeoEncoderConfig
from stllm.encoders.geo_pretrain import (
    GeoPretrainObjective,
    cell_ids,
    cell_indices,
    haversine_m,
    jitter,
    near_far_similarity,
)
from stllm.encoders.io import load_encoder
from stllm.train.pretrain_geo import main, pretrain_geo_encoder, read_coords_csv, synthetic_coords

LEVELS = (0.5, 2.0, 8.0, 32.0)
SMALL = GeoEncoderConfig(num_scales=12, hidden_dim=64, out_dim=32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    torch.set_num_threads(1)
    coords = synthetic_coords(2000, seed=0)
    out = tmp_path_factory.mktemp("geo") / "enc"
    encoder, metrics = pretrain_geo_encoder(
        coords, SMALL, steps=150, batch=128, lr=3e-3, seed=0, output_dir=out, n_buckets=512, val_fraction=0.2
    )
    return coords, encoder, metrics, out


def test_near_pairs_closer_than_far_pairs_on_held_out_points(trained):
    _, encoder, metrics, _ = trained
    after = metrics["near_far_after"]
    assert metrics["near_far_on"] == "val" and after["n_far"] > 500
    assert after["near_cos"] - after["far_cos"] > 0.4, after
    assert after["margin"] > metrics["near_far_before"]["margin"]  # training helped
    # fresh held-out points never sampled in training (different seed, same box)
    fresh = near_far_similarity(encoder, torch.from_numpy(synthetic_coords(500, seed=123)), seed=1)
    assert fresh["near_cos"] > 0.85 and fresh["far_cos"] < 0.45, fresh


def test_saved_dir_reloads_to_identical_embeddings(trained):
    _, encoder, metrics, out = trained
    loaded = load_encoder(out)
    assert isinstance(loaded, GeoEncoder) and loaded.config == encoder.config
    x = torch.from_numpy(synthetic_coords(64, seed=5))
    with torch.no_grad():
        assert torch.equal(loaded.eval()(x), encoder(x))
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["near_far_after"] == metrics["near_far_after"]
    meta = json.loads((out / "encoder_config.json").read_text())
    assert meta["kind"] == "geo" and meta["pretrain"]["levels_km"] == list(LEVELS)


def test_cell_ids_same_point_same_id_and_differ_across_boundary():
    p = torch.tensor([[40.7128, -74.0060]], dtype=torch.float64)
    assert torch.equal(cell_ids(p, LEVELS, 4096), cell_ids(p.clone(), LEVELS, 4096))
    assert cell_ids(p, LEVELS, 4096).shape == (1, 4)
    # a latitude-band boundary of the 0.5 km grid: points 1 m either side
    dlat = 0.5 / (np.pi * 6371.0 / 180.0)
    row, _ = cell_indices(p, 0.5)
    edge = row.item() * dlat + dlat - 90.0
    eps = 1e-5  # ~1 m
    a = torch.tensor([[edge - eps, -74.0060]], dtype=torch.float64)
    b = torch.tensor([[edge + eps, -74.0060]], dtype=torch.float64)
    ia, ib = cell_ids(a, LEVELS, 4096)[0], cell_ids(b, LEVELS, 4096)[0]
    assert ia[0] != ib[0]
    assert cell_indices(a, 0.5)[0] + 1 == cell_indices(b, 0.5)[0]
    # same cell at the coarse levels unless that boundary coincides (it does not here: 32 km rows)
    assert (cell_indices(a, 32.0)[0] == cell_indices(b, 32.0)[0]).item() == (ia[3] == ib[3]).item()
    # objective uses the same ids, within range
    obj = GeoPretrainObjective(GeoEncoder(SMALL), n_buckets=4096)
    ids = obj.cell_ids(torch.from_numpy(synthetic_coords(100)))
    assert ids.min() >= 0 and ids.max() < 4096


def test_jitter_stays_within_radius():
    g = torch.Generator().manual_seed(0)
    p = torch.from_numpy(synthetic_coords(1000))
    d = haversine_m(p, jitter(p, 100.0, g))
    assert d.max() < 100.5 and d.mean() > 40


def test_objective_returns_finite_parts_and_grads():
    obj = GeoPretrainObjective(GeoEncoder(SMALL), n_buckets=64)
    out = obj(torch.from_numpy(synthetic_coords(16)), torch.Generator().manual_seed(0))
    assert out.cell_per_level.shape == (4,) and out.cell_acc.shape == (4,)
    assert torch.isfinite(out.total) and torch.allclose(out.total, out.cell + out.contrastive)
    out.total.backward()
    assert obj.encoder.mlp[0].weight.grad is not None


@pytest.mark.parametrize("bad", [[[91.0, 10.0]], [[-40.0, 200.0]], [[float("nan"), 0.0]]])
def test_bad_coordinates_raise(bad):
    with pytest.raises(ValueError):
        pretrain_geo_encoder(np.array(bad * 30), SMALL, steps=1, batch=4)
    with pytest.raises(ValueError):
        GeoPretrainObjective(GeoEncoder(SMALL), n_buckets=64)(torch.tensor(bad * 4))


def test_swapped_lon_lat_message_hints_order():
    tokyo = synthetic_coords(50, box=(35.5, 35.8, 139.5, 139.9))
    lonlat = tokyo[:, ::-1].copy()  # (139.7, 35.7): |lat| > 90
    with pytest.raises(ValueError, match="lon, lat"):
        pretrain_geo_encoder(lonlat, SMALL, steps=1, batch=4)


def test_csv_reader_and_cli(tmp_path, capsys):
    csv_path = tmp_path / "pts.csv"
    pts = synthetic_coords(40, seed=3)
    csv_path.write_text("Latitude,Longitude,name\n" + "".join(f"{a},{b},x\n" for a, b in pts))
    np.testing.assert_allclose(read_coords_csv(csv_path), pts)
    out = tmp_path / "enc"
    assert (
        main(
            [
                "--coords_csv",
                str(csv_path),
                "--output_dir",
                str(out),
                "--steps",
                "3",
                "--batch",
                "8",
                "--n_buckets",
                "32",
            ]
        )
        == 0
    )
    assert (out / "model.safetensors").is_file() and (out / "metrics.json").is_file()
    assert "near(<200 m)" in capsys.readouterr().out

    (tmp_path / "bad.csv").write_text("x,y\n1,2\n")
    assert main(["--coords_csv", str(tmp_path / "bad.csv"), "--output_dir", str(out)]) == 2
    (tmp_path / "bad2.csv").write_text("lat,lon\n40.7,-74\nabc,-74\n")
    assert main(["--coords_csv", str(tmp_path / "bad2.csv"), "--output_dir", str(out)]) == 2
    assert "line 3" in capsys.readouterr().err


def test_help_shows_every_default(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    text = capsys.readouterr().out
    for opt in ("--output_dir", "--steps", "--seed", "--batch", "--lr", "--n_buckets"):
        assert opt in text
    assert text.count("(default:") >= 15


def _geo_cli(out, *extra):
    return main(["--synthetic", "--n_synthetic", "100", "--output_dir", str(out), "--steps", "2", "--batch", "8",
                 "--n_buckets", "32", *extra])  # fmt: skip


def test_cli_never_writes_over_an_st_encoder_and_replaces_a_geo_one_only_when_told(tmp_path, capsys):
    from stllm import STEncoder, STEncoderConfig, save_encoder

    st = tmp_path / "st"
    save_encoder(STEncoder(STEncoderConfig()), st)
    before = (st / "encoder_config.json").read_text()
    for extra in ([], ["--overwrite_output_dir"]):
        assert _geo_cli(st, *extra) == 2
        assert "holds a st encoder, not a geo encoder" in capsys.readouterr().err
    assert (st / "encoder_config.json").read_text() == before and not (st / "metrics.json").exists()
    geo = tmp_path / "geo"
    assert _geo_cli(geo) == 0
    assert _geo_cli(geo, "--seed", "1") == 2 and "--overwrite_output_dir" in capsys.readouterr().err
    assert _geo_cli(geo, "--seed", "1", "--overwrite_output_dir") == 0
    assert json.loads((geo / "metrics.json").read_text())["seed"] == 1


def test_cli_refuses_a_directory_another_live_job_writes(tmp_path, capsys):
    import os

    from stllm.outdir import claim_output_dir

    with claim_output_dir(tmp_path / "geo", "geo encoder"):
        assert _geo_cli(tmp_path / "geo", "--overwrite_output_dir") == 2
    assert f"pid {os.getpid()}" in capsys.readouterr().err
    assert not (tmp_path / "geo" / "model.safetensors").exists()


@pytest.mark.parametrize("flag,value", [
    ("--steps", "-3"), ("--steps", "0"), ("--batch", "1"), ("--n_synthetic", "0"), ("--lr", "-0.1"),
    ("--out_dim", "0"), ("--num_scales", "-1"), ("--n_buckets", "0"), ("--temperature", "0"),
    ("--jitter_m", "-5"), ("--sample_jitter_m", "-1"), ("--val_fraction", "1"), ("--val_fraction", "-0.1"),
    ("--levels_km", "0"),
])  # fmt: skip
def test_out_of_range_flags_are_refused_naming_the_flag(tmp_path, capsys, flag, value):
    with pytest.raises(SystemExit) as e:
        _geo_cli(tmp_path / "g", f"{flag}={value}")
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}" in err and value in err and not (tmp_path / "g").exists()
