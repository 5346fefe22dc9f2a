"""Data layer: city tensors and metadata, loaders, synthetic city, splits, scaler, prompts, dataset, collator."""

from stllm.data.checkins import (
    CheckInError,
    CheckIns,
    align_checkins,
    build_checkins,
    chronological_split,
    load_checkins,
    merge_checkins,
    next_poi_rows,
    next_poi_samples,
    synthetic_checkins,
    unseen_user_split,
    user_trajectories,
)
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
from stllm.data.next_poi import (
    NextPOICollator,
    NextPOIDataset,
    NextPOITask,
    next_poi_eval_task,
    next_poi_train_task,
)
from stllm.data.prompts import (
    TEMPLATES,
    ChatFormatter,
    Conversation,
    PromptContext,
    build_conversation,
    event_prompt,
    flow_prompt,
    next_poi_prompt,
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
    "CheckInError", "CheckIns", "align_checkins", "build_checkins", "chronological_split", "load_checkins",
    "merge_checkins", "next_poi_rows", "next_poi_samples", "synthetic_checkins", "unseen_user_split",
    "user_trajectories",
    "NextPOICollator", "NextPOIDataset", "NextPOITask", "next_poi_eval_task", "next_poi_train_task",
    "CityData", "CityDataError", "Region", "parse_freq",
    "STDataCollator", "STInstructionDataset", "window_batches",
    "data_root", "load_bikenyc", "load_manhattan_flows", "load_npz", "load_nyc_crime", "read_zone_pois",
    "TEMPLATES", "ChatFormatter", "Conversation", "PromptContext", "build_conversation", "event_prompt",
    "flow_prompt", "next_poi_prompt",
    "STScaler",
    "CitySplit", "RegionSplit", "SplitError", "SplitRecord", "TimeSplit", "assert_zero_shot", "make_records",
    "split_record",
    "EVENT_CATEGORIES", "POI_CATEGORIES", "REGION_TYPES", "synthetic_city",
    "train_tokenizer",
    "UrbanGPTData", "UrbanGPTDataset", "UrbanGPTSample", "load_urbangpt", "write_urbangpt",
]  # fmt: skip
