"""STLlamaConfig: everything ``STLlamaForCausalLM.forward`` needs, in one serialisable object."""

from __future__ import annotations

from transformers import AutoConfig, PretrainedConfig
from transformers.configuration_utils import SubConfigSpec

from stllm.encoders.geo_encoder import GeoEncoderConfig
from stllm.encoders.st_encoder import STEncoderConfig
from stllm.models.projector import PROJECTOR_KINDS


class STLlamaConfig(PretrainedConfig):
    """Backbone config (``text_config``: any causal-LM config) + encoders + slot token ids + heads.

    ``st_slots`` is the number of ``<st_his>`` tokens per history placeholder (the encoder's
    ``num_tokens``) and of ``<st_pre>`` tokens per prediction placeholder; slot ``k`` of a
    prediction placeholder forecasts output channel ``k`` (UrbanGPT: 2 = inflow, outflow).
    ``cls_pos_weight`` (one per channel) up-weights positives in the event BCE: rare events
    (crime categories on ~10% of region-days) are otherwise learned as "never".
    ``backbone_name_or_path`` records where pretrained backbone weights came from, so LoRA
    checkpoints need not copy them.
    """

    model_type = "stllm"
    sub_configs_defaults = {"text_config": SubConfigSpec(config_class=AutoConfig, model_type="llama")}

    text_config: dict | PretrainedConfig | None = None
    st_encoder_config: dict | None = None
    geo_encoder_config: dict | None = None
    st_his_token_id: int | None = None
    st_pre_token_id: int | None = None
    geo_token_id: int | None = None
    poi_pre_token_id: int | None = None
    mob_pre_token_id: int | None = None
    st_slots: int | None = None
    projector_type: str = "linear"
    head_dim: int = 128
    lm_loss_weight: float = 1.0
    reg_loss_weight: float = 1.0
    cls_loss_weight: float = 1.0
    poi_loss_weight: float = 1.0
    mob_loss_weight: float = 1.0
    mob_features: int | None = None  # features per (slot, candidate) of the mobility head; None: no head
    cls_pos_weight: list[float] | None = None
    tie_word_embeddings: bool = False
    backbone_name_or_path: str | None = None

    def __post_init__(self, **kwargs):
        if isinstance(self.st_encoder_config, STEncoderConfig):
            self.st_encoder_config = self.st_encoder_config.to_dict()
        if isinstance(self.geo_encoder_config, GeoEncoderConfig):
            self.geo_encoder_config = self.geo_encoder_config.to_dict()
        st = STEncoderConfig.from_dict(self.st_encoder_config)
        if self.st_slots is None:
            self.st_slots = st.num_tokens
        elif self.st_slots != st.num_tokens:
            st.num_tokens = self.st_slots
        self.st_encoder_config = st.to_dict()
        self.geo_encoder_config = GeoEncoderConfig.from_dict(self.geo_encoder_config).to_dict()
        if self.projector_type not in PROJECTOR_KINDS:
            raise ValueError(f"projector_type must be one of {PROJECTOR_KINDS}, got {self.projector_type!r}")
        super().__post_init__(**kwargs)
        if not self.tie_word_embeddings and getattr(self.text_config, "tie_word_embeddings", False):
            self.tie_word_embeddings = True
        self._check_token_ids()

    SLOT_TOKEN_FIELDS = ("st_his_token_id", "st_pre_token_id", "geo_token_id", "poi_pre_token_id", "mob_pre_token_id")

    @property
    def slot_token_ids(self) -> list[int]:
        """The ids of the slot tokens that are set (``SLOT_TOKEN_FIELDS`` order)."""
        return [i for i in (getattr(self, n) for n in self.SLOT_TOKEN_FIELDS) if i is not None]

    def _check_token_ids(self) -> None:
        vocab = getattr(self.text_config, "vocab_size", None)
        named = {n: getattr(self, n) for n in self.SLOT_TOKEN_FIELDS}
        given = {n: v for n, v in named.items() if v is not None}
        if len(set(given.values())) != len(given):
            raise ValueError(f"slot token ids must be distinct, got {given}")
        for name, value in given.items():
            if vocab is not None and not 0 <= value < vocab:
                raise ValueError(f"{name}={value} is outside the backbone vocabulary [0, {vocab})")

    @property
    def st_encoder(self) -> STEncoderConfig:
        return STEncoderConfig.from_dict(self.st_encoder_config)

    @property
    def geo_encoder(self) -> GeoEncoderConfig:
        return GeoEncoderConfig.from_dict(self.geo_encoder_config)

    @property
    def hidden_size(self) -> int:
        return self.text_config.hidden_size

    @property
    def vocab_size(self) -> int:
        return self.text_config.vocab_size
