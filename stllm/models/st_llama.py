"""STLlamaForCausalLM: a causal LM that reads city windows and coordinates at placeholder tokens.

The forward pass is the picture in DESIGN.md: encode each (window, region) history once, project
to the LLM width, write the features into the input embeddings at ``<st_his>`` / ``<geo>`` slots
with one ``index_copy``, run any Hugging Face causal LM, and read the hidden states at
``<st_pre>`` slots (and the history slots they answer) with the regression and classification
heads. The Llama name is what users expect; the backbone is whatever ``text_config`` describes.

Every bad-input check and every slot count is read back from the device in one transfer
(:meth:`STLlamaForCausalLM.slot_layout`); the slot positions then follow from the counts, so a
forward on a GPU waits for the device once, not at each check (``masked_scatter`` and boolean
indexing each wait to learn their sizes).
"""

from __future__ import annotations

import copy
import dataclasses
import inspect
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationMixin, PreTrainedModel
from transformers.utils import ModelOutput

from stllm.batch_checks import DeviceChecks, flat_positions
from stllm.encoders.geo_encoder import GeoEncoder, check_coordinates
from stllm.encoders.io import load_encoder
from stllm.encoders.st_encoder import STEncoder, STEncoderOutput, denormalise
from stllm.models.configuration import STLlamaConfig
from stllm.models.heads import ClassificationHead, RegressionHead
from stllm.models.mobility import CellChoiceHead, check_mob_slot
from stllm.models.poi import CandidateHead, relation_features
from stllm.models.projector import STProjector
from stllm.tokens import add_st_tokens

# Inputs consumed by the splice: only the prefill step of ``generate`` sees them.
SPLICE_INPUTS = ("st_values", "st_window", "st_region", "st_adj", "geo_coords")
# Next-POI inputs: the candidate table and each sample's visit history (see stllm.models.poi).
POI_INPUTS = ("poi_coords", "poi_category", "poi_category_tokens", "poi_history", "poi_anchor")
POI_OPTIONAL = ("poi_transition",)
# Long-term mobility inputs, one row per <mob_pre> (see stllm.models.mobility).
MOB_INPUTS = ("mob_features", "mob_valid", "mob_slot")


@dataclass
class STCausalLMOutput(ModelOutput):
    """Joint loss and its terms, LM logits, and the heads' outputs at prediction placeholders.

    ``reg_pred`` / ``cls_logits`` are ``(Q, horizon, st_slots)`` with one row per ``<ST_PRE>``
    placeholder in reading order; regression is in scaled units, classification in logits.
    ``poi_scores`` is ``(B, P)``: every candidate POI's score for each sample (next-POI prompts).
    ``mob_scores`` is ``(Q, K)``: each ``<mob_pre>`` slot's logits over its user's K candidate places.
    """

    loss: torch.FloatTensor | None = None
    lm_loss: torch.FloatTensor | None = None
    reg_loss: torch.FloatTensor | None = None
    cls_loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    reg_pred: torch.FloatTensor | None = None
    cls_logits: torch.FloatTensor | None = None
    poi_loss: torch.FloatTensor | None = None
    poi_scores: torch.FloatTensor | None = None
    mob_loss: torch.FloatTensor | None = None
    mob_scores: torch.FloatTensor | None = None
    past_key_values: object | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


def backbone_cache(out) -> object | None:
    """The cache a backbone's output carries: ``cache`` on transformers 5.2x (reading ``.past_key_values`` there
    logs a deprecation), ``past_key_values`` before; None when no cache was asked for."""
    names = {f.name for f in dataclasses.fields(out)}
    name = "cache" if "cache" in names else "past_key_values"  # even .get("past_key_values") logs on 5.2x
    return out.get(name) if name in names else None


@dataclass(frozen=True)
class SlotLayout:
    """Flat positions ``(n,)`` in reading order over a ``(B, L)`` batch of the slot tokens a pass writes
    (``his``, ``geo``: None without their features) or reads (``pre``: None without ``<st_pre>``; ``poi``;
    ``mob``), and ``his_group (Q,)``: the history placeholder each ``<st_pre>`` placeholder answers."""

    his: torch.Tensor | None = None
    geo: torch.Tensor | None = None
    pre: torch.Tensor | None = None
    his_group: torch.Tensor | None = None
    poi: torch.Tensor | None = None
    mob: torch.Tensor | None = None


def _is_prefill(past_key_values) -> bool:
    return past_key_values is None or past_key_values.get_seq_length() == 0


def masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` where ``mask`` is true (all if None); 0 when nothing is valid."""
    if mask is None:
        return values.mean()
    mask = mask.to(values.dtype)
    return (values * mask).sum() / mask.sum().clamp_min(1.0)


class STLlamaPreTrainedModel(PreTrainedModel):
    config_class = STLlamaConfig
    base_model_prefix = ""
    supports_gradient_checkpointing = True
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = False
    # The joint loss is a mean per micro-batch; let the Trainer scale it for gradient accumulation.
    accepts_loss_kwargs = False

    def _init_weights(self, module):
        """ST modules keep PyTorch's default (fan-in) init; the backbone dispatches its own."""
        if hasattr(module, "reset_parameters"):
            module.reset_parameters()


class STLlamaForCausalLM(STLlamaPreTrainedModel, GenerationMixin):
    """Spatio-temporal LLM over any Hugging Face causal-LM backbone (Llama/Vicuna by default)."""

    def __init__(self, config: STLlamaConfig, backbone: PreTrainedModel | None = None):
        super().__init__(config)
        if backbone is None:
            backbone = AutoModelForCausalLM.from_config(config.text_config)
        self.backbone = backbone
        # transformers 5.2x renamed the backbone's cache argument (`past_key_values` -> `cache`; the old name
        # warns and goes in 5.40): pass it under the name this backbone's forward takes
        params = inspect.signature(backbone.forward).parameters
        self._cache_arg = "cache" if "cache" in params else "past_key_values"
        config.text_config = backbone.config  # one object: resizing the vocab updates both
        hidden = config.text_config.hidden_size
        self.st_encoder = STEncoder(config.st_encoder)
        self.st_projector = STProjector(self.st_encoder.token_dim, hidden, config.projector_type)
        self.geo_encoder = GeoEncoder(config.geo_encoder)
        self.geo_projector = STProjector(self.geo_encoder.token_dim, hidden, config.projector_type)
        horizon = config.st_encoder.horizon
        self.reg_head = RegressionHead(hidden, config.head_dim, horizon)
        self.cls_head = ClassificationHead(hidden, config.head_dim, horizon)
        self.poi_head = CandidateHead(hidden, config.head_dim)
        if config.mob_features:  # only mobility models carry it: older checkpoints load unchanged
            self.mob_head = CellChoiceHead(hidden, config.mob_features)
        self.post_init()
        # residual starts: post_init skips modules without parameters of their own (custom code), so the
        # zero-initialised corrections are set here (loaded weights replace them)
        self.st_encoder.reset_parameters()
        self.reg_head.reset_parameters()
        if self.st_encoder.event_proj is not None:  # the event logits are a correction to the encoder's logistic
            self.cls_head.reset_parameters()
        if backbone.generation_config is not None:
            self.generation_config = copy.deepcopy(backbone.generation_config)
        self._suppress_feature_slots()

    def _suppress_feature_slots(self) -> None:
        """Never generate <st_his>/<geo>: their meaning comes from features only a prompt can carry."""
        if self.generation_config is None:
            return
        never = [i for i in (self.config.st_his_token_id, self.config.geo_token_id) if i is not None]
        old = list(self.generation_config.suppress_tokens or [])
        self.generation_config.suppress_tokens = sorted(set(old) | set(never)) or None

    # -- Hugging Face plumbing: the backbone owns embeddings, cache and attention ------------------
    def get_input_embeddings(self):
        return self.backbone.get_input_embeddings()

    def set_input_embeddings(self, value):
        self.backbone.set_input_embeddings(value)

    def get_output_embeddings(self):
        return self.backbone.get_output_embeddings()

    def set_output_embeddings(self, value):
        self.backbone.set_output_embeddings(value)

    def resize_token_embeddings(self, new_num_tokens=None, pad_to_multiple_of=None, mean_resizing=True):
        emb = self.backbone.resize_token_embeddings(new_num_tokens, pad_to_multiple_of, mean_resizing)
        self.config.text_config = self.backbone.config
        return emb

    def train(self, mode: bool = True):
        """A frozen ST encoder stays in eval mode (no dropout noise on features it cannot adapt to)."""
        super().train(mode)
        if mode and not any(p.requires_grad for p in self.st_encoder.parameters()):
            self.st_encoder.eval()
        return self

    # -- the splice ---------------------------------------------------------------------------------
    def _check_input_ids(self, input_ids: torch.Tensor, checks: DeviceChecks | None = None) -> None:
        vocab = self.get_input_embeddings().weight.shape[0]
        outside = (input_ids < 0) | (input_ids >= vocab)
        own = checks is None
        checks = DeviceChecks() if own else checks
        checks.fail_if(outside.any(), lambda: f"input_ids contain token ids outside the vocabulary [0, {vocab}): "
                                              f"{input_ids[outside].unique()[:8].tolist()}")
        if own:
            checks.resolve()

    def encode_history(
        self,
        st_values: torch.Tensor,
        st_window: torch.Tensor,
        st_region: torch.Tensor,
        st_adj: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Encoder tokens ``(P, K, D)`` for each history placeholder's (window, region)."""
        return self.encode_context(st_values, st_window, st_region, st_adj).tokens

    def _check_context(self, st_values, st_window, st_region, checks: DeviceChecks) -> None:
        """Shape errors raise now (host-side facts); value errors (NaN, indices) join ``checks``."""
        if st_values.dim() != 4:
            raise ValueError(f"st_values must be (W, T, N, C) city windows, got shape {tuple(st_values.shape)}")
        w, _, n, c = st_values.shape
        if c != self.st_encoder.config.in_channels:
            raise ValueError(f"st_values has {c} channels; the ST encoder was built for "
                             f"{self.st_encoder.config.in_channels}")
        checks.fail_if(~torch.isfinite(st_values).all(),
                       "st_values contains NaN or inf; fill or mask missing values before the model")
        for name, idx, size in (("st_window", st_window, w), ("st_region", st_region, n)):
            if idx is None:
                raise ValueError(f"st_values given without {name}: pass one index per history placeholder")
            if idx.dim() != 1 or idx.dtype not in (torch.int32, torch.int64):
                raise ValueError(f"{name} must be a 1-D integer tensor, got {idx.dtype} {tuple(idx.shape)}")
            if idx.numel():
                checks.fail_if((idx.min() < 0) | (idx.max() >= size),
                               lambda name=name, idx=idx, size=size:
                               f"{name} holds indices outside [0, {size}): {idx.tolist()[:8]}...")
        if st_window.shape != st_region.shape:
            raise ValueError(
                f"st_window ({st_window.numel()}) and st_region ({st_region.numel()}) must have one entry "
                "per history placeholder each"
            )

    def encode_context(
        self,
        st_values: torch.Tensor,
        st_window: torch.Tensor,
        st_region: torch.Tensor,
        st_adj: torch.Tensor | None = None,
    ) -> STEncoderOutput:
        """The encoder's output for each history placeholder's (window, region): tokens ``(P, K, D)``,
        forecast ``(P, H, C)``, and (scale-free encoders) ``loc``/``scale`` ``(P, 1, C)``, ``anchor (P, H, C)``.

        Without graph mixing regions are independent, so only the P selected series are encoded
        (cheaper than all W x N when a batch touches few regions); with graph mixing every window
        is encoded over all its regions once and the placeholders gather from the result.
        """
        checks = DeviceChecks()
        self._check_context(st_values, st_window, st_region, checks)
        checks.resolve()
        return self._encode_checked(st_values, st_window, st_region, st_adj)

    def _encode_checked(self, st_values, st_window, st_region, st_adj) -> STEncoderOutput:
        ref = next(self.st_encoder.parameters())  # cast to the encoder's dtype/device, whatever came in
        x = st_values.to(device=ref.device, dtype=ref.dtype)
        st_window, st_region = st_window.to(x.device), st_region.to(x.device)
        # the encoder (~0.1M parameters) runs outside autocast: its forecast is the base the heads correct,
        # and in bf16 the closed-form linear correction would lose its precision
        with torch.autocast(x.device.type, enabled=False):
            if self.st_encoder.config.graph_mixing:
                out = self.st_encoder(x, st_adj, scale_correction=not self.training)
                return STEncoderOutput(*(None if v is None else v[st_window, st_region] for v in out))
            series = x[st_window, :, st_region]  # (P, T, C)
            out = self.st_encoder(series.transpose(0, 1).unsqueeze(0), scale_correction=not self.training)
        return STEncoderOutput(*(None if v is None else v[0] for v in out))

    def slot_layout(
        self,
        input_ids: torch.Tensor,
        st_values: torch.Tensor | None = None,
        st_window: torch.Tensor | None = None,
        st_region: torch.Tensor | None = None,
        geo_coords: torch.Tensor | None = None,
        strict: bool = True,
        heads: tuple[str, ...] = ("st",),
        checks: DeviceChecks | None = None,
    ) -> SlotLayout:
        """Check a batch and find its slot tokens with one host synchronisation (see batch_checks).

        ``heads`` names the readouts this pass needs positions for (``st``, ``poi``, ``mob``); ``checks``
        may already hold the caller's own device-side checks, resolved in the same transfer.
        Every error the splice and heads raise for bad input is raised here, before any work.
        """
        cfg, k = self.config, self.config.st_slots
        checks = DeviceChecks() if checks is None else checks
        self._check_input_ids(input_ids, checks)
        if st_values is not None:
            self._check_context(st_values, st_window, st_region, checks)
        if geo_coords is not None:
            check_coordinates(geo_coords, "geo_coords", checks)
        wanted = {
            "his": cfg.st_his_token_id,
            "geo": cfg.geo_token_id,
            "pre": cfg.st_pre_token_id if strict and "st" in heads and cfg.st_his_token_id is not None else None,
            "poi": cfg.poi_pre_token_id if "poi" in heads else None,
            "mob": cfg.mob_pre_token_id if "mob" in heads else None,
        }
        masks = {name: input_ids == tok for name, tok in wanted.items() if tok is not None}
        sums = {name: mask.sum() for name, mask in masks.items()}
        handles = {name: checks.count(total) for name, total in sums.items()}
        his_before = None
        if "pre" in masks:
            flat, length = masks["pre"].reshape(-1), input_ids.shape[1]
            checks.fail_if(sums["pre"] % k != 0,
                           lambda: f"{int(sums['pre'])} <st_pre> tokens is not a multiple of st_slots={k}")
            rank = flat.long().cumsum(0) - 1
            col = torch.arange(flat.numel(), device=flat.device) % length
            prev = torch.cat([flat.new_zeros(1), flat[:-1]]) & (col > 0)
            checks.fail_if((flat & (rank % k != 0) & ~prev).any(),
                           f"<st_pre> slot tokens must come in consecutive runs of st_slots={k}")
            his = masks["his"].long()
            his_before = his.reshape(-1).cumsum(0) - his.reshape(-1)  # <st_his> tokens before each position
            in_row = his_before.view_as(his) - his_before.view_as(his)[:, :1]
            checks.fail_if((flat & (rank % k == 0) & (in_row.reshape(-1) < k)).any(),
                           "an <st_pre> placeholder has no <st_his> placeholder before it in its prompt")
        if "poi" in masks:
            per_row = masks["poi"].sum(dim=1)
            checks.fail_if((per_row != 1).any(), lambda: "next-POI scoring needs one <poi_pre> per prompt; row "
                           f"{int(torch.nonzero(per_row != 1)[0, 0])} has {int(per_row[per_row != 1][0])}")
        values = checks.resolve()
        counts = {name: values[h] for name, h in handles.items()}
        for name, feats, what, arg, per in (("his", st_values, "<st_his>", "st_values", k),
                                            ("geo", geo_coords, "<geo>", "geo_coords", 1)):
            if feats is None:
                if strict and counts.get(name):
                    raise ValueError(f"input_ids contain {what} slot tokens but no {arg} was given")
                continue
            if name not in counts:
                raise ValueError(f"{arg} given but config.{what[1:-1]}_token_id is not set")
            items = st_window.numel() if name == "his" else feats.reshape(-1, 2).shape[0]
            if counts[name] != items * per:
                raise ValueError(f"{what}: input_ids hold {counts[name]} slot tokens but {items} placeholder "
                                 f"feature sets x {per} slots = {items * per} features were given")
        pos = {name: flat_positions(masks[name], counts[name]) for name in masks}
        his_group = None
        if "pre" in pos:
            his_group = his_before[pos["pre"].view(-1, k)[:, 0]] // k - 1  # nearest preceding history placeholder
        return SlotLayout(his=pos.get("his") if st_values is not None else None,
                          geo=pos.get("geo") if geo_coords is not None else None,
                          pre=pos.get("pre") if counts.get("pre") else None, his_group=his_group,
                          poi=pos.get("poi"), mob=pos.get("mob"))

    def splice(
        self,
        input_ids: torch.Tensor,
        inputs_embeds: torch.Tensor,
        st_values: torch.Tensor | None = None,
        st_window: torch.Tensor | None = None,
        st_region: torch.Tensor | None = None,
        st_adj: torch.Tensor | None = None,
        geo_coords: torch.Tensor | None = None,
        strict: bool = True,
        return_encoding: bool = False,
        layout: SlotLayout | None = None,
    ):
        """Write projected encoder features into ``inputs_embeds`` at the slot tokens (rule 1).

        ``strict`` (prefill) makes slot tokens without features an error; in cached decoding a
        generated slot token is an ordinary token with its own embedding row. ``return_encoding``
        also returns the per-placeholder :class:`STEncoderOutput` (None without ``st_values``), whose
        normalisation and anchor the regression head's output is added to. ``layout`` (from
        :meth:`slot_layout`, which checks the inputs) is found here when not given.
        """
        if layout is None:
            layout = self.slot_layout(input_ids, st_values, st_window, st_region, geo_coords, strict, heads=())
        encoding, flat = None, inputs_embeds.reshape(-1, inputs_embeds.shape[-1])
        if st_values is not None:
            encoding = self._encode_checked(st_values, st_window, st_region, st_adj)
            feats = self.st_projector(encoding.tokens).flatten(0, 1)
            flat = flat.index_copy(0, layout.his, feats.to(flat.dtype))
        if geo_coords is not None:
            coords = geo_coords.to(device=inputs_embeds.device).reshape(-1, 2)
            feats = self.geo_projector(self.geo_encoder(coords, validate=False))  # checked by slot_layout
            flat = flat.index_copy(0, layout.geo, feats.to(flat.dtype))
        inputs_embeds = flat.view_as(inputs_embeds)
        return (inputs_embeds, encoding) if return_encoding else inputs_embeds

    # -- heads ----------------------------------------------------------------------------------------
    @staticmethod
    def _at(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """Hidden states ``(n, H)`` at flat positions of a ``(B, L, H)`` batch (no host synchronisation)."""
        return hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions.to(hidden.device))

    def _slot_hidden(self, hidden: torch.Tensor, layout: SlotLayout):
        """Hidden states ``(Q, K, H)`` at each ``<st_pre>`` placeholder and at its history placeholder,
        and the index ``(Q,)`` of that history placeholder (reading order over the batch).

        Prediction placeholder q is paired with the nearest history placeholder before it in the same
        sample (one per prompt in the usual case; the last view when a prompt carries several).
        """
        if layout.pre is None:
            return None  # no <st_pre>, or cached decoding: the heads run on a full pass
        k, h = self.config.st_slots, hidden.shape[-1]
        his_h = self._at(hidden, layout.his).view(-1, k, h)
        pre_h = self._at(hidden, layout.pre).view(-1, k, h)
        return his_h[layout.his_group], pre_h, layout.his_group

    def _read_heads(self, his_h, pre_h, his_group, encoding: STEncoderOutput | None):
        """``(reg_pred, cls_logits)`` in float32, the heads run outside autocast. With a scale-free encoder
        the regression head's output is a correction to the encoder's own forecast of that history in its
        normalised units (the seasonal anchor plus the encoder's correction: the historical average for an
        untrained encoder), mapped back to scaled units with the same history's statistics."""
        dtype = self.reg_head.out.weight.dtype
        with torch.autocast(his_h.device.type, enabled=False):
            his_h, pre_h = his_h.to(dtype), pre_h.to(dtype)
            reg, cls = self.reg_head(his_h, pre_h).float(), self.cls_head(his_h, pre_h).float()
            if encoding is not None and encoding.event_logits is not None:
                cls = cls + self._event_anchor(encoding.event_logits[his_group].to(cls.device), cls.shape[-1])
            if encoding is not None and encoding.loc is not None:
                k = reg.shape[-1]
                if encoding.gain is not None:  # corrections in units of the usual level, scaled to today's
                    reg = reg * encoding.gain[his_group][..., :k].to(reg.device)
                base = encoding.base[his_group][..., :k].to(reg.device)
                reg = denormalise(base + reg, encoding.loc[his_group].to(reg.device),
                                  encoding.scale[his_group].to(reg.device), k)
        return reg, cls

    def _event_anchor(self, logits: torch.Tensor, k: int) -> torch.Tensor:
        """The encoder's logistic event logits ``(Q, horizon, C)`` as the base of slot k's event logits, shifted by
        ``log(cls_pos_weight)``: the optimum of the class-balanced BCE the heads train with, so an untrained head
        (zero output) already answers what the trained one would at the logistic's ranking."""
        logits = logits[..., :k].float()
        if self.config.cls_pos_weight is not None:
            w = torch.tensor(self.config.cls_pos_weight, dtype=logits.dtype, device=logits.device)[:k]
            logits = logits + w.log()
        return logits

    @staticmethod
    def _check_poi_indices(poi_coords, poi_category, poi_category_tokens, poi_history, checks: DeviceChecks) -> None:
        """Category and history indices of a next-POI batch inside the table (device-side, see batch_checks)."""
        n_cat, n_cand = poi_category_tokens.shape[0], poi_coords.shape[0]
        check_coordinates(poi_coords, "poi_coords", checks)
        if poi_category.numel():
            checks.fail_if((poi_category.min() < 0) | (poi_category.max() >= n_cat),
                           f"poi_category holds indices outside the {n_cat} categories of poi_category_tokens")
        if poi_history is not None and poi_history.numel():
            checks.fail_if(poi_history.max() >= n_cand, lambda: f"poi_history holds index {int(poi_history.max())}, "
                                                                f"outside the {n_cand} candidates")

    def candidate_embeddings(
        self, poi_coords: torch.Tensor, poi_category: torch.Tensor, poi_category_tokens: torch.Tensor,
        validate: bool = True,
    ) -> torch.Tensor:
        """``(P, H)``: projected GeoEncoder features of each candidate plus the mean input embedding of
        its category name's tokens (``poi_category_tokens`` (C, L), -1 padded; ``poi_category`` (P,)).
        ``validate=False``: the forward checked the indices with its other checks."""
        if poi_coords.dim() != 2 or poi_category.shape != poi_coords.shape[:1]:
            raise ValueError(f"poi_coords must be (P, 2) and poi_category (P,), got {tuple(poi_coords.shape)} "
                             f"and {tuple(poi_category.shape)}")
        if validate:
            checks = DeviceChecks()
            self._check_poi_indices(poi_coords, poi_category, poi_category_tokens, None, checks)
            checks.resolve()
        emb = self.get_input_embeddings()
        valid = (poi_category_tokens >= 0).unsqueeze(-1)
        tok = emb(poi_category_tokens.clamp_min(0).to(emb.weight.device)) * valid.to(emb.weight.device)
        cat = tok.sum(dim=1) / valid.sum(dim=1).clamp_min(1).to(tok)
        geo = self.geo_projector(self.geo_encoder(poi_coords.to(emb.weight.device), validate=False))  # checked
        return geo + cat[poi_category.to(cat.device)].to(geo.dtype)

    def score_candidates(self, query, poi_coords, poi_category, poi_category_tokens, poi_history, poi_anchor,
                         poi_transition=None, validate: bool = True):
        """``(B, P)`` scores of every candidate for each query (see :class:`~stllm.models.poi.CandidateHead`)."""
        cands = self.candidate_embeddings(poi_coords, poi_category, poi_category_tokens, validate)
        dev = cands.device
        rel = relation_features(poi_history.to(dev), cands.shape[0], poi_coords.to(dev), poi_anchor.to(dev),
                                None if poi_transition is None else poi_transition.to(dev), validate=validate)
        return self.poi_head(query, cands, rel)

    def score_places(self, hidden: torch.Tensor, layout: SlotLayout, mob_features: torch.Tensor,
                     mob_slot: torch.Tensor | None, mob_valid: torch.Tensor | None = None) -> torch.Tensor:
        """``(Q, K)`` logits over candidate places at every ``<mob_pre>`` token (reading order over the batch)."""
        if layout.mob is None or getattr(self, "mob_head", None) is None:
            raise ValueError("mob_features given but the model has no mobility head (config.mob_pre_token_id and "
                             "config.mob_features must be set)")
        if mob_slot is None:
            raise ValueError("mob_features given without mob_slot (day kind * 48 + slot of each <mob_pre>)")
        return self.mob_head(self._at(hidden, layout.mob), mob_features, mob_slot.to(hidden.device), mob_valid,
                             validate=False)  # mob_slot's range: checked in the forward's one host read

    # -- forward ------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        past_key_values=None,
        inputs_embeds: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        st_values: torch.Tensor | None = None,
        st_window: torch.LongTensor | None = None,
        st_region: torch.LongTensor | None = None,
        st_adj: torch.Tensor | None = None,
        geo_coords: torch.Tensor | None = None,
        reg_targets: torch.Tensor | None = None,
        reg_mask: torch.Tensor | None = None,
        cls_targets: torch.Tensor | None = None,
        cls_mask: torch.Tensor | None = None,
        poi_coords: torch.Tensor | None = None,
        poi_category: torch.LongTensor | None = None,
        poi_category_tokens: torch.LongTensor | None = None,
        poi_history: torch.LongTensor | None = None,
        poi_anchor: torch.Tensor | None = None,
        poi_transition: torch.Tensor | None = None,
        poi_targets: torch.LongTensor | None = None,
        mob_features: torch.Tensor | None = None,
        mob_valid: torch.Tensor | None = None,
        mob_slot: torch.LongTensor | None = None,
        mob_targets: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        prefill: bool | None = None,
        **kwargs,
    ) -> STCausalLMOutput:
        """Joint forward; see :class:`STCausalLMOutput`. Targets are ``(Q, horizon, st_slots)``; next-POI
        targets ``(B,)`` candidate indices (-1: not in the table, left out of the loss). ``prefill``
        (default: the cache is empty) says the input holds whole prompts to splice and read heads on,
        e.g. prompts continuing a shared-prefix cache (:class:`~stllm.eval.slot_pass.SlotPass`)."""
        kwargs.pop("num_items_in_batch", None)
        kwargs.pop("return_dict", None)  # always a ModelOutput (indexable, and .to_tuple() for tuples)
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        cache = past_key_values if past_key_values is not None else kwargs.pop("cache", None)  # transformers 5.2x
        prefill = _is_prefill(cache) if prefill is None else prefill
        layout = encoding = None
        if inputs_embeds is None:
            heads = tuple(name for name, given in (("st", True), ("poi", poi_coords is not None),
                                                   ("mob", mob_features is not None)) if given and prefill)
            checks = DeviceChecks()  # target ranges join the one host synchronisation of the layout
            for name, target, table, dim, missing in (
                ("poi_targets", poi_targets, poi_coords, 0, "POI not in the table"),
                ("mob_targets", mob_targets, mob_features, 1, "cell that is not a candidate"),
            ):
                if target is not None and table is not None and target.numel():
                    n = table.shape[dim]
                    checks.fail_if(target.max() >= n, lambda name=name, target=target, n=n, missing=missing:
                                   f"{name} holds {int(target.max())}, outside the {n} candidates "
                                   f"(use -1 for a {missing})")
            if "mob" in heads and mob_slot is not None:
                check_mob_slot(mob_slot, checks)
            if "poi" in heads and None not in (poi_category, poi_category_tokens):
                self._check_poi_indices(poi_coords, poi_category, poi_category_tokens, poi_history, checks)
            layout = self.slot_layout(input_ids, st_values, st_window, st_region, geo_coords, strict=prefill,
                                      heads=heads, checks=checks)
            inputs_embeds = self.get_input_embeddings()(input_ids)
            inputs_embeds, encoding = self.splice(
                input_ids, inputs_embeds, st_values, st_window, st_region, st_adj, geo_coords, strict=prefill,
                return_encoding=True, layout=layout,
            )
        out, hidden = self._run_backbone(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **{self._cache_arg: cache},
            use_cache=use_cache,
            output_hidden_states=output_hidden_states,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )
        reg_pred = cls_logits = None
        slots = None if layout is None else self._slot_hidden(hidden, layout)
        if slots is not None:
            reg_pred, cls_logits = self._read_heads(*slots, encoding)
        poi_scores = None
        if poi_coords is not None and input_ids is not None and prefill:
            given = dict(zip(POI_INPUTS, (poi_coords, poi_category, poi_category_tokens, poi_history, poi_anchor)))
            missing = [k for k, v in given.items() if v is None]
            if missing:
                raise ValueError(f"next-POI scoring needs {', '.join(POI_INPUTS)}; missing {', '.join(missing)}")
            if layout.poi is None:
                raise ValueError("next-POI inputs given but config.poi_pre_token_id is not set")
            poi_scores = self.score_candidates(self._at(hidden, layout.poi), **given,
                                               poi_transition=poi_transition, validate=False)
        mob_scores = None
        if mob_features is not None and input_ids is not None and prefill:
            mob_scores = self.score_places(hidden, layout, mob_features, mob_slot, mob_valid)

        cfg, terms = self.config, {}
        if labels is not None:
            terms["lm_loss"] = self._lm_loss(out.logits, labels)
        for name, pred, target, mask in (
            ("reg_loss", reg_pred, reg_targets, reg_mask),
            ("cls_loss", cls_logits, cls_targets, cls_mask),
        ):
            if target is None:
                continue
            if pred is None:
                raise ValueError(f"{name[:3]}_targets given but input_ids hold no <st_pre> placeholder")
            if target.shape != pred.shape:
                raise ValueError(f"{name[:3]}_targets has shape {tuple(target.shape)}, predictions {tuple(pred.shape)}")
            if mask is not None and mask.shape != target.shape:
                raise ValueError(f"{name[:3]}_mask has shape {tuple(mask.shape)}, targets {tuple(target.shape)}")
            target = target.to(device=pred.device, dtype=torch.float32)
            mask = None if mask is None else mask.to(pred.device)
            if name == "reg_loss":
                per = (pred.float() - target).abs()
            else:
                pos_weight = None
                if cfg.cls_pos_weight is not None:
                    pos_weight = torch.tensor(cfg.cls_pos_weight, dtype=torch.float32, device=pred.device)
                per = F.binary_cross_entropy_with_logits(pred.float(), target, reduction="none", pos_weight=pos_weight)
            terms[name] = masked_mean(per, mask)
        if poi_targets is not None:
            if poi_scores is None:
                raise ValueError("poi_targets given without the candidate table (poi_coords, ...)")
            if poi_targets.shape != poi_scores.shape[:1]:
                raise ValueError(f"poi_targets has shape {tuple(poi_targets.shape)}, expected ({poi_scores.shape[0]},)")
            target = poi_targets.to(poi_scores.device)
            per = F.cross_entropy(poi_scores.float(), target.clamp_min(0), reduction="none")
            terms["poi_loss"] = masked_mean(per, target >= 0)
        if mob_targets is not None:
            if mob_scores is None:
                raise ValueError("mob_targets given without mob_features (the candidate places of each <mob_pre>)")
            if mob_targets.shape != mob_scores.shape[:1]:
                raise ValueError(f"mob_targets has shape {tuple(mob_targets.shape)}, expected ({mob_scores.shape[0]},)")
            target = mob_targets.to(mob_scores.device)
            # -inf logits of padded candidates are never a target; clamp so a -1 row's CE stays finite
            per = F.cross_entropy(mob_scores.float().clamp_min(-1e4), target.clamp_min(0), reduction="none")
            terms["mob_loss"] = masked_mean(per, target >= 0)
        weights = {"lm_loss": cfg.lm_loss_weight, "reg_loss": cfg.reg_loss_weight, "cls_loss": cfg.cls_loss_weight,
                   "poi_loss": cfg.poi_loss_weight, "mob_loss": cfg.mob_loss_weight}
        loss = sum(weights[n] * v for n, v in terms.items()) if terms else None
        return STCausalLMOutput(
            loss=loss,
            logits=out.logits,
            reg_pred=reg_pred,
            cls_logits=cls_logits,
            poi_scores=poi_scores,
            mob_scores=mob_scores,
            past_key_values=backbone_cache(out),
            hidden_states=out.hidden_states,
            attentions=getattr(out, "attentions", None),
            **terms,
        )

    def _run_backbone(self, **kwargs):
        """Run the whole backbone (so model-specific logit scaling/softcapping stays intact) and
        capture its decoder's final hidden state with a hook scoped to this call -- rather than
        ``output_hidden_states=True``, which would keep every layer's activations alive."""
        decoder = self.backbone.get_decoder()
        if decoder is self.backbone:  # no separate decoder module to hook
            out = self.backbone(return_dict=True, **{**kwargs, "output_hidden_states": True})
            return out, out.hidden_states[-1]
        captured = []

        def grab(module, args, output):
            captured.append(output[0] if isinstance(output, tuple) else output.last_hidden_state)

        handle = decoder.register_forward_hook(grab)
        try:
            out = self.backbone(return_dict=True, **kwargs)
        finally:
            handle.remove()
        if not captured:
            raise RuntimeError(f"{type(decoder).__name__}.forward was not called by {type(self.backbone).__name__}")
        return out, captured[-1]

    @staticmethod
    def _lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Next-token cross-entropy over labelled positions (-100 ignored); 0 when none are labelled."""
        labels = labels.to(logits.device)
        shift_logits = logits[:, :-1].flatten(0, 1).float()
        shift_labels = labels[:, 1:].flatten()
        total = F.cross_entropy(shift_logits, shift_labels, ignore_index=-100, reduction="sum")
        return total / (shift_labels != -100).sum().clamp_min(1)

    def prepare_inputs_for_generation(self, *args, is_first_iteration: bool | None = False, **kwargs):
        """Splice on prefill only: later steps reuse the cache and drop the city inputs."""
        inputs = super().prepare_inputs_for_generation(*args, is_first_iteration=is_first_iteration, **kwargs)
        if not is_first_iteration and kwargs.get("use_cache", True):
            for key in (*SPLICE_INPUTS, *POI_INPUTS, *POI_OPTIONAL, *MOB_INPUTS):
                inputs.pop(key, None)
        return inputs

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load a full checkpoint (standard) or an stllm LoRA checkpoint (adapter merged on load)."""
        from stllm.models.checkpoint import check_lora_files, is_lora_checkpoint, load_lora_checkpoint
        from stllm.safe_io import check_safetensors_in

        if is_lora_checkpoint(pretrained_model_name_or_path):
            return load_lora_checkpoint(cls, pretrained_model_name_or_path, **kwargs)
        if isinstance(pretrained_model_name_or_path, (str, os.PathLike)):  # a local directory: name bad files
            check_lora_files(pretrained_model_name_or_path)
            check_safetensors_in(pretrained_model_name_or_path)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    # -- wrapping an existing checkpoint ------------------------------------------------------------
    @classmethod
    def from_backbone(
        cls,
        backbone_path: str | os.PathLike,
        tokenizer=None,
        st_encoder_path: str | os.PathLike | None = None,
        dtype: torch.dtype | str | None = None,
        attn_implementation: str | None = None,
        **config_kwargs,
    ):
        """Wrap a local Llama/Vicuna (or any causal LM) checkpoint directory plus its tokenizer.

        Adds the slot tokens to the tokenizer, resizes the embeddings (new rows = mean of the old
        ones) and builds fresh ST modules around the pretrained backbone. Returns ``(model,
        tokenizer)``. ``config_kwargs`` go to :class:`STLlamaConfig` (encoder configs, head sizes,
        loss weights). A ``.gguf`` file is converted once to a plain folder (:mod:`stllm.models.backbones`).
        """
        path = os.fspath(backbone_path)
        if path.endswith(".gguf"):
            from stllm.models.backbones import gguf_folder

            path = os.fspath(gguf_folder(path))
        if not os.path.isdir(path):
            raise FileNotFoundError(f"backbone directory not found: {path}")
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise FileNotFoundError(f"backbone directory {path} has no config.json")
        if tokenizer is None:
            tokenizer = AutoTokenizer.from_pretrained(path)
        load_kwargs = {"dtype": dtype or "auto"}
        if attn_implementation is not None:
            load_kwargs["attn_implementation"] = attn_implementation
        backbone = AutoModelForCausalLM.from_pretrained(path, **load_kwargs)
        ids = add_st_tokens(tokenizer, backbone)
        # a copy: building the composite config must not touch the live backbone's config
        text_config = copy.deepcopy(backbone.config)
        config = STLlamaConfig(
            text_config=text_config, backbone_name_or_path=os.path.abspath(path), **ids.as_config(), **config_kwargs
        )
        model = cls(config, backbone=backbone)
        if st_encoder_path is not None:
            model.st_encoder.load_state_dict(load_encoder(st_encoder_path).state_dict())
        backbone_dtype = next(backbone.parameters()).dtype
        return model.to(backbone_dtype), tokenizer
