"""Data layer: city tensors and metadata, loaders, synthetic city, splits, scaler, prompts, dataset, collator."""

from stllm.data.city import CityData, CityDataError, Region, parse_freq
from stllm.data.collator import STDataCollator
from stllm.data.dataset import STInstructionDataset, window_batches
from stllm.data.loaders import (
    data_root,
    load_bikenyc,
    load_manhattan_flows,
    load_npz,
    load_nyc_crime,
    read_zone_pois,
)
from stllm.data.prompts import (
    TEMPLATES,
    ChatFormatter,
    Conversation,
    PromptContext,
    build_conversation,
    event_prompt,
    flow_prompt,
)
from stllm.data.scaler import STScaler
from stllm.data.splits import (
    CitySplit,
    RegionSplit,
    SplitError,
    SplitRecord,
    TimeSplit,
    assert_zero_shot,
    make_records,
    split_record,
)
from stllm.data.synthetic import EVENT_CATEGORIES, POI_CATEGORIES, REGION_TYPES, synthetic_city
from stllm.data.tokenizer import train_tokenizer
from stllm.data.urbangpt import UrbanGPTData, UrbanGPTDataset, UrbanGPTSample, load_urbangpt, write_urbangpt

__all__ = [
    "CityData", "CityDataError", "Region", "parse_freq",
    "STDataCollator", "STInstructionDataset", "window_batches",
    "data_root", "load_bikenyc", "load_manhattan_flows", "load_npz", "load_nyc_crime", "read_zone_pois",
    "TEMPLATES", "ChatFormatter", "Conversation", "PromptContext", "build_conversation", "event_prompt",
    "flow_prompt",
    "STScaler",
    "CitySplit", "RegionSplit", "SplitError", "SplitRecord", "TimeSplit", "assert_zero_shot", "make_records",
    "split_record",
    "EVENT_CATEGORIES", "POI_CATEGORIES", "REGION_TYPES", "synthetic_city",
    "train_tokenizer",
    "UrbanGPTData", "UrbanGPTDataset", "UrbanGPTSample", "load_urbangpt", "write_urbangpt",
]  # fmt: skip
