import json
import pickle

import numpy as np
import pytest

from stllm.data import (
    CityDataError,
    STDataCollator,
    STInstructionDataset,
    STScaler,
    UrbanGPTDataset,
    load_urbangpt,
    write_urbangpt,
)


@pytest.fixture()
def files(tmp_path, city):
    ds = STInstructionDataset(city, regions=city.region_ids[:4], stride=24)
    j, p = tmp_path / "NYCtaxi.json", tmp_path / "NYCtaxi_pkl.pkl"
    n = write_urbangpt(j, p, ds, windows=[0, 3, 5], kind=1)
    return ds, j, p, n


def test_round_trip(files, city):
    ds, j, p, n = files
    data = load_urbangpt(j, p, trust_pickle=True)
    assert n == len(data.samples) == 12 and data.x.shape == (3, 12, city.n_regions, 2)
    assert data.kind.tolist() == [1, 1, 1]
    for k, w in enumerate([0, 3, 5]):
        t0 = int(ds.starts[w])
        np.testing.assert_array_equal(data.x[k], city.values[t0:t0 + 12])
        np.testing.assert_array_equal(data.y[k], city.values[t0 + 12:t0 + 24])
    s = data.samples[5]  # window 3 (k=1), second region
    assert (s.window, s.region) == (1, 1)
    conv = ds[ds.index_of(3, 1)]["conversation"]
    assert (s.human, s.gpt) == (conv.user, conv.answer)


def test_pickle_needs_trust(files):
    _, j, p, _ = files
    with pytest.raises(PermissionError, match="trust_pickle=True"):
        load_urbangpt(j, p)


def test_conversation_without_placeholder_names_id(files):
    _, j, p, _ = files
    records = json.loads(j.read_text())
    records[2]["conversations"][0]["value"] = "no placeholder"
    j.write_text(json.dumps(records))
    with pytest.raises(CityDataError, match=rf"id='{records[2]['id']}'.*no <ST_HIS> placeholder"):
        load_urbangpt(j, p, trust_pickle=True)


@pytest.mark.parametrize("text,match", [
    ('[{"id": "train_x_region_0_1_len_0",\n "conversations": [', r"JSON \(Expecting value at line 2 column 20\)"),
    ("", r"not valid JSON \(Expecting value at line 1 column 1\)"),
    ('{"id": "train_x_region_0_1_len_0"}', r"field '<root>': expected a list of \{\"id\".*got a JSON dict"),
    ("[]", r"field '<root>': expected a list .*got an empty list"),
    ('[{"id": "train_x_region_0_1_len_0", "conversations": ["hi", "there"]}]',
     r"field '\[0\] id='train_x_region_0_1_len_0'.conversations': needs a list of turns"),
])  # fmt: skip
def test_corrupt_instruction_json_names_the_file_and_what_was_expected(files, text, match):
    _, j, p, _ = files
    j.write_text(text)
    with pytest.raises(CityDataError, match=match) as e:
        load_urbangpt(j, p, trust_pickle=True)
    assert str(e.value).startswith(f"{j}: field ")


def test_non_utf8_json_and_truncated_pickle_name_their_file(files):
    _, j, p, _ = files
    good_json = j.read_bytes()
    j.write_bytes(b"\xff\xfe[" + good_json)
    with pytest.raises(CityDataError, match=rf"{j.name}: field '<file>': not UTF-8 text"):
        load_urbangpt(j, p, trust_pickle=True)
    j.write_bytes(good_json)
    p.write_bytes(p.read_bytes()[:100])
    with pytest.raises(CityDataError, match=rf"{p.name}: field '<file>': not a readable pickle .*data_x"):
        load_urbangpt(j, p, trust_pickle=True)
    with pytest.raises(FileNotFoundError):
        load_urbangpt(j, p.with_name("absent.pkl"), trust_pickle=True)


def test_corrupt_zone_poi_json_names_the_file(tmp_path):
    from stllm.data.loaders import read_zone_pois

    path = tmp_path / "zone_poi.json"
    path.write_text('{"4": [{"category_name": "Food"}], ')
    with pytest.raises(CityDataError, match=r"zone_poi.json: field '<file>': not valid JSON .*expected an object"):
        read_zone_pois(path)


def test_pickle_not_matching_json(files):
    _, j, p, _ = files
    blobs = pickle.loads(p.read_bytes())
    p.write_bytes(pickle.dumps(blobs[:2]))
    with pytest.raises(CityDataError, match=r"refers to window 2.*holds 2 windows"):
        load_urbangpt(j, p, trust_pickle=True)
    blobs[1]["data_x"] = blobs[1]["data_x"][:, :, :3]
    p.write_bytes(pickle.dumps(blobs))
    with pytest.raises(CityDataError, match="data_x': windows differ in shape"):
        load_urbangpt(j, p, trust_pickle=True)


def test_urbangpt_dataset_collates(files, tokenizer, city):
    _, j, p, _ = files
    data = load_urbangpt(j, p, trust_pickle=True)
    scaler = STScaler.fit(city)
    ds = UrbanGPTDataset(data, scaler)
    b = STDataCollator(tokenizer, st_slots=2)([ds[i] for i in range(8)])
    assert b["st_values"].shape[0] == 2 and b["st_region"].tolist() == [0, 1, 2, 3] * 2
    np.testing.assert_allclose(b["reg_targets"][5].numpy(), scaler.transform(data.y[1, :, 1]), rtol=1e-6)


def test_write_refuses_a_context_dataset(tmp_path, city):
    ds = STInstructionDataset(city, regions=city.region_ids[:4], stride=24, days=1, weeks=0)
    with pytest.raises(ValueError, match="multi-period context"):
        write_urbangpt(tmp_path / "x.json", tmp_path / "x.pkl", ds)
