"""Per-GPU memory estimates for fine-tuning an ST-LLM with DeepSpeed ZeRO (full or LoRA).

Everything is in GiB (``2**30`` bytes, the unit DeepSpeed's own estimators print as "GB") per GPU.

**Model states** (weights, gradients, optimizer states) come from DeepSpeed's own estimators,
``estimate_zero2_model_states_mem_needs`` and ``estimate_zero3_model_states_mem_needs``, which
assume mixed-precision Adam over *all* parameters: 2 bytes of fp16/bf16 weights plus
18 bytes/param of fp16 grads, fp32 grads, fp32 master weights and two fp32 Adam moments
(the 18 is sharded over the GPUs, and under ZeRO-3 the 2 as well). With LoRA most parameters are
frozen, so the estimate is split (``P_f`` frozen, ``P_t`` trainable, ``G`` GPUs in total,
``d = dtype_bytes``, ``L`` the largest single module of the model)::

    ZeRO-0/1   d*P_f                      + zero2_estimator(P_t, 1 GPU)        (full replica)
    ZeRO-2     d*P_f                      + zero2_estimator(P_t, G GPUs)       (frozen weights replicated)
    ZeRO-3     d*P_f/G + d*L              + zero3_estimator(P_t, G GPUs)       (frozen weights sharded,
                                                                                one layer gathered)
    ZeRO-3 + offload:  d*L                + zero3_estimator(P_t, offloaded)   (frozen shards on CPU)

Full fine-tuning is the estimator applied to every parameter. ZeRO-0 and ZeRO-1 are treated as plain
data parallelism (a full replica of every state on each GPU, i.e. the ZeRO-2 estimator at one GPU):
an upper bound for ZeRO-1, which really does partition the optimizer states. ``offload`` means
``offload_optimizer`` (ZeRO-2/3) plus ``offload_param`` (ZeRO-3) to CPU; it needs ZeRO-2 or 3.

**Activations** follow Korthikanti et al. 2022 ("Reducing Activation Recomputation in Large
Transformer Models", no tensor/sequence parallelism): one decoder layer keeps
``s*b*h*(34 + 5*a*s/h)`` bytes with 16-bit activations (``s`` sequence, ``b`` micro batch, ``h`` hidden,
``a`` heads). With gradient checkpointing (per decoder layer, as in Hugging Face models) only each
layer's 16-bit input is kept (``2*s*b*h`` bytes per layer) plus one layer's full activations while it
is recomputed. The logits add ``s*b*vocab*4`` bytes (the fp32 copy the loss is computed on).
Assumptions: the ``34`` counts a GELU MLP of width ``4h`` (Llama's SwiGLU of ~``2.7h`` is close), the
``5*a*s/h`` term is the materialised attention matrix (FlashAttention/SDPA kernels skip most of it,
so the figure is conservative there), and LoRA does not shrink activations (gradients must still
flow back through the frozen layers to the lower adapters). Activations are never sharded by ZeRO.

A fixed ``overhead_gb`` (CUDA context, NCCL and allocator reserve; 1 GiB by default) is added to
the total, and ``fits`` is ``total_gb <= gpu_memory_gb``. These are planning figures: allocator
fragmentation and temporary buffers can add several GiB on a real run.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field, replace

from stllm.data.loaders import read_json
from stllm.train.checks import positive_float, positive_int

GIB = 2**30

# Modules stllm adds around the backbone, at their default configs (STEncoderConfig(), GeoEncoderConfig(),
# token_dim 64, head_dim 128, horizon 12). The encoders are frozen under LoRA; projectors, heads and the
# four new slot-token rows are trained (see ``stllm.models.lora.add_lora``).
ST_ENCODER_PARAMS = 99_568
GEO_ENCODER_PARAMS = 21_056
ST_TOKEN_DIM = 64
ST_HEAD_DIM = 128
ST_HORIZON = 12
ST_NEW_TOKENS = 4
POI_RELATION_FEATURES = 5
LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj")


@dataclass(frozen=True)
class ModelSpec:
    """Shape of a decoder-only backbone plus the ST modules around it.

    ``backbone_params`` counts the backbone alone; ``st_trainable`` (projectors, heads) and ``st_frozen``
    (ST and geo encoders) are the stllm modules, zero for a bare backbone. Under LoRA, ``new_token_rows``
    slot-token embedding rows are trained as deltas added next to the frozen embedding (peft
    ``trainable_token_indices``), like the adapters.
    """

    name: str
    backbone_params: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    largest_layer_params: int
    st_trainable: int = 0
    st_frozen: int = 0
    new_token_rows: int = 0

    @property
    def total_params(self) -> int:
        return self.backbone_params + self.st_trainable + self.st_frozen

    def lora_params(self, r: int = 8, targets: tuple[str, ...] = LORA_TARGETS) -> int:
        """Adapter parameters of rank ``r`` on ``targets`` (``r*(fan_in + fan_out)`` per module per layer)."""
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        h = self.hidden_size
        shapes = {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, self.intermediate_size),
            "up_proj": (h, self.intermediate_size),
            "down_proj": (self.intermediate_size, h),
        }
        unknown = set(targets) - set(shapes)
        if unknown:
            raise ValueError(f"unknown LoRA targets {sorted(unknown)}; choose from {sorted(shapes)}")
        return self.num_layers * sum(r * sum(shapes[t]) for t in targets)


def st_module_params(
    hidden_size: int,
    token_dim: int = ST_TOKEN_DIM,
    head_dim: int = ST_HEAD_DIM,
    horizon: int = ST_HORIZON,
    projector_type: str = "linear",
    st_encoder_params: int = ST_ENCODER_PARAMS,
    geo_encoder_params: int = GEO_ENCODER_PARAMS,
) -> tuple[int, int]:
    """``(trainable, frozen)`` parameter counts of stllm's modules for a backbone of width ``hidden_size``.

    Trainable under LoRA: two projectors (``token_dim*h + h`` each, plus ``h*h + h`` for ``mlp2x_gelu``),
    two slot heads (``2*(h*head_dim + head_dim) + (2*head_dim*horizon + horizon)`` each) and the next-POI
    candidate head (query ``h*d + d``, key MLP ``h*d + d + d*d + d``, relation MLP ``f*32 + 32 + 33``).
    Frozen: the ST encoder and the geo encoder.
    """
    proj = token_dim * hidden_size + hidden_size
    if projector_type == "mlp2x_gelu":
        proj += hidden_size * hidden_size + hidden_size
    head = 2 * (hidden_size * head_dim + head_dim) + (2 * head_dim * horizon + horizon)
    cand = 2 * (hidden_size * head_dim + head_dim) + head_dim * head_dim + head_dim + POI_RELATION_FEATURES * 32 + 65
    return 2 * proj + 2 * head + cand, st_encoder_params + geo_encoder_params


def _llama_spec(
    name: str,
    hidden: int,
    layers: int,
    heads: int,
    kv_heads: int,
    intermediate: int,
    vocab: int,
    st: bool = True,
    tied: bool = False,
) -> ModelSpec:
    head_dim = hidden // heads
    attn = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim  # q, o + k, v (no biases)
    per_layer = attn + 3 * hidden * intermediate + 2 * hidden  # + SwiGLU MLP + two RMSNorms
    params = vocab * hidden * (1 if tied else 2) + layers * per_layer + hidden
    trainable, frozen = st_module_params(hidden) if st else (0, 0)
    return ModelSpec(
        name, params, hidden, layers, heads, kv_heads, head_dim, intermediate, vocab,
        max(vocab * hidden, hidden * intermediate), trainable, frozen, ST_NEW_TOKENS if st else 0,
    )  # fmt: skip


PRESETS: dict[str, ModelSpec] = {
    # Vicuna-7B v1.5 = Llama-2-7B shape (6,738,415,616 params) + stllm's ST modules.
    "vicuna-7b": _llama_spec("Vicuna-7B + ST", 4096, 32, 32, 32, 11008, 32000),
    "tiny": _llama_spec("tiny", 64, 2, 4, 2, 128, 300),
}


# -- configs --------------------------------------------------------------------------------------------


def load_config(config):
    """An HF config object from a config, a ``config.json`` path or a checkpoint directory."""
    if not isinstance(config, (str, os.PathLike)):
        return config
    path = os.fspath(config)
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    data = read_json(path, "a Hugging Face config (config.json)")
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object (a Hugging Face config), got {type(data).__name__}")
    if "text_config" in data:  # an STLlamaConfig (or any composite): size its backbone, keep the ST bits
        from stllm.models.configuration import STLlamaConfig

        return STLlamaConfig(**{k: v for k, v in data.items() if k not in ("model_type", "architectures")})
    from transformers import AutoConfig

    data = dict(data)
    return AutoConfig.for_model(data.pop("model_type", "llama"), **data)


def _count_params_meta(config) -> tuple[int, int]:
    """``(total, largest module)`` by building the model on the meta device (no memory is allocated)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    total = sum(p.numel() for p in model.parameters())  # tied weights are one Parameter, counted once
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    return total, largest


def spec_from_config(config, st_modules: bool | None = None) -> ModelSpec:
    """A :class:`ModelSpec` from an HF config (or a path to one).

    Llama-like configs (``hidden_size``, ``intermediate_size``, ``num_attention_heads``, ``num_hidden_layers``,
    ``vocab_size``) are counted from their dimensions, honouring ``num_key_value_heads``, ``head_dim``,
    ``attention_bias``/``mlp_bias``, Qwen2's q/k/v biases and ``tie_word_embeddings``; any other
    architecture is counted by building it on the meta device. An :class:`STLlamaConfig` sizes its
    ``text_config`` and adds the ST modules (``st_modules`` defaults to whether the config is one).
    """
    path = os.fspath(config) if isinstance(config, (str, os.PathLike)) else None
    config = load_config(config)
    st_config = None
    if hasattr(config, "st_encoder_config") and hasattr(config, "text_config"):
        st_config, config = config, config.text_config
    if st_modules is None:
        st_modules = st_config is not None
    h = _first(config, "hidden_size", "n_embd", "d_model")
    layers = _first(config, "num_hidden_layers", "n_layer", "num_layers")
    heads = _first(config, "num_attention_heads", "n_head")
    vocab = config.vocab_size
    kv = getattr(config, "num_key_value_heads", None) or heads
    head_dim = getattr(config, "head_dim", None) or h // heads
    inter = getattr(config, "intermediate_size", None) or getattr(config, "n_inner", None) or 4 * h
    tied = bool(getattr(config, "tie_word_embeddings", False))
    if hasattr(config, "intermediate_size") and getattr(config, "model_type", "") not in ("gpt2",):
        q, k = heads * head_dim, kv * head_dim
        attn = h * q + 2 * h * k + q * h
        if getattr(config, "attention_bias", False):
            attn += q + 2 * k + h
        elif getattr(config, "model_type", "") == "qwen2":  # q/k/v carry biases, o does not
            attn += q + 2 * k
        mlp = 3 * h * inter + (2 * inter + h if getattr(config, "mlp_bias", False) else 0)
        params = vocab * h * (1 if tied else 2) + layers * (attn + mlp + 2 * h) + h
        largest = max(vocab * h, h * inter)
    else:
        params, largest = _count_params_meta(config)
    trainable = frozen = 0
    if st_modules:
        if st_config is not None:
            trainable, frozen = _st_params_from_config(st_config, h)
        else:
            trainable, frozen = st_module_params(h)
    name = getattr(config, "_name_or_path", "") or getattr(config, "model_type", "config")
    if path is not None:  # .../vicuna-7b/config.json -> vicuna-7b
        path = os.path.abspath(path)
        name = os.path.basename(path if os.path.isdir(path) else os.path.dirname(path)) or name
    if st_modules:
        name += " + ST"
    rows = ST_NEW_TOKENS if st_modules else 0
    return ModelSpec(name, params, h, layers, heads, kv, head_dim, inter, vocab, largest, trainable, frozen, rows)


def _st_params_from_config(st_config, hidden: int) -> tuple[int, int]:
    from stllm.encoders.geo_encoder import GeoEncoder
    from stllm.encoders.st_encoder import STEncoder

    st, geo = STEncoder(st_config.st_encoder), GeoEncoder(st_config.geo_encoder)
    return st_module_params(
        hidden,
        token_dim=st.token_dim,
        head_dim=st_config.head_dim,
        horizon=st_config.st_encoder.horizon,
        projector_type=st_config.projector_type,
        st_encoder_params=sum(p.numel() for p in st.parameters()),
        geo_encoder_params=sum(p.numel() for p in geo.parameters()),
    )


def _first(config, *names):
    for name in names:
        value = getattr(config, name, None)
        if value is not None:
            return value
    raise ValueError(f"config {type(config).__name__} has none of {names}")


# -- the estimate ---------------------------------------------------------------------------------------


@dataclass
class MemoryEstimate:
    """Per-GPU memory (GiB) of one training setup; ``row()`` formats it for :func:`memory_table`."""

    label: str
    total_params: int
    trainable_params: int
    num_gpus: int  # per node
    num_nodes: int
    zero_stage: int
    lora: bool
    offload: bool
    model_states_gb: float
    activations_gb: float
    overhead_gb: float
    total_gb: float
    gpu_memory_gb: float
    fits: bool
    # CPU per node: DeepSpeed's figure for the trained parameters (+ frozen shards offloaded under ZeRO-3);
    # a rough guide, it leaves out loading the frozen checkpoint
    cpu_gb: float = 0.0
    details: dict = field(default_factory=dict)

    HEADER = (
        f"{'setup':<22} {'mode':<5} {'ZeRO':<9} {'trainable':>10} {'states':>8} {'activ.':>7} {'total':>7}"
        f"  {'GPU':>6}  fits"
    )

    def row(self) -> str:
        gpus = f"{self.num_gpus * self.num_nodes}x{self.gpu_memory_gb:g}GB"
        zero = f"{self.zero_stage}{'+off' if self.offload else ''}"
        return (
            f"{self.label:<22} {'LoRA' if self.lora else 'full':<5} {zero:<9} {_human(self.trainable_params):>10}"
            f" {self.model_states_gb:>8.1f} {self.activations_gb:>7.1f} {self.total_gb:>7.1f}  {gpus:>6}"
            f"  {'yes' if self.fits else 'NO'}"
        )


def _human(n: int) -> str:
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.2f}{unit}"
    return str(n)


def _deepspeed_estimators():
    try:
        from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
        from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs
    except ImportError as e:
        raise ImportError(
            "estimate_memory needs DeepSpeed for its ZeRO model-state estimators: pip install deepspeed"
        ) from e
    return estimate_zero2_model_states_mem_needs, estimate_zero3_model_states_mem_needs


def activation_bytes(
    seq_len: int,
    micro_batch: int,
    hidden_size: int,
    num_layers: int,
    num_heads: int,
    vocab_size: int,
    gradient_checkpointing: bool = True,
    dtype_bytes: int = 2,
) -> dict[str, int]:
    """Activation bytes per GPU (Korthikanti et al. 2022); see the module docstring for assumptions.

    Returns ``{"layers": ..., "logits": ...}``. ``dtype_bytes`` scales the 16-bit layer activations.
    """
    s, b, h, a = seq_len, micro_batch, hidden_size, num_heads
    one_layer = s * b * h * (34 + 5 * a * s / h) * dtype_bytes / 2
    if gradient_checkpointing:
        layers = num_layers * dtype_bytes * s * b * h + one_layer
    else:
        layers = num_layers * one_layer
    return {"layers": int(layers), "logits": int(s * b * vocab_size * 4)}


def _check_positive(**values) -> None:
    """Refuse zero or negative sizes (they printed negative GiB), naming the argument and its flag."""
    flags = {"num_gpus", "num_nodes", "gpu_memory_gb", "seq_len", "micro_batch", "lora_r"}  # estimate-memory's
    bad = [f"{'--' if k in flags else ''}{k} must be > 0, got {v!r}"
           for k, v in values.items() if v is not None and not v > 0]  # fmt: skip
    if bad:
        raise ValueError("; ".join(bad))


def estimate_memory(
    model_params: int | None = None,
    config=None,
    num_gpus: int = 1,
    num_nodes: int = 1,
    gpu_memory_gb: float = 80.0,
    zero_stage: int = 2,
    lora: bool = True,
    lora_trainable_params: int | None = None,
    offload: bool = False,
    seq_len: int = 2048,
    micro_batch: int = 1,
    hidden_size: int | None = None,
    num_layers: int | None = None,
    gradient_checkpointing: bool = True,
    dtype_bytes: int = 2,
    *,
    model: str | None = None,
    num_heads: int | None = None,
    vocab_size: int | None = None,
    lora_r: int = 8,
    lora_targets: tuple[str, ...] = LORA_TARGETS,
    st_modules: bool | None = None,
    largest_layer_params: int | None = None,
    overhead_gb: float = 1.0,
    additional_buffer_factor: float = 1.5,
    label: str | None = None,
) -> MemoryEstimate:
    """Per-GPU memory for training on ``num_gpus`` GPUs per node x ``num_nodes`` nodes.

    The model is a preset (``model=``: one of :data:`PRESETS`), an HF config / ``config.json`` path
    (``config=``), or just ``model_params`` (then ``hidden_size`` and ``num_layers`` are required for the
    activations; ``num_heads`` defaults to ``hidden_size // 128`` and ``vocab_size`` to 32000). Explicit
    arguments override what the preset/config says; an explicit ``model_params`` is the whole model.

    ``lora`` (default): the backbone and encoders are frozen and only ``lora_trainable_params`` (everything
    that trains, ST projectors/heads included) train
    (default: rank-``lora_r`` adapters on ``lora_targets``, the new slot-token rows, and stllm's projectors
    and heads, exactly what ``stllm.models.lora.add_lora`` makes trainable). ``lora=False``: full
    fine-tuning of every parameter. Model states use DeepSpeed's estimators (see the module docstring for
    the LoRA split and the ZeRO-0/1 and ``offload`` conventions).
    """
    if zero_stage not in (0, 1, 2, 3):
        raise ValueError(f"zero_stage must be 0, 1, 2 or 3, got {zero_stage}")
    if offload and zero_stage < 2:
        raise ValueError("offload (ZeRO-Offload) needs zero_stage 2 or 3")
    _check_positive(num_gpus=num_gpus, num_nodes=num_nodes, gpu_memory_gb=gpu_memory_gb, seq_len=seq_len,
                    micro_batch=micro_batch, lora_r=lora_r, dtype_bytes=dtype_bytes, model_params=model_params,
                    lora_trainable_params=lora_trainable_params, hidden_size=hidden_size, num_layers=num_layers,
                    num_heads=num_heads, vocab_size=vocab_size, largest_layer_params=largest_layer_params,
                    additional_buffer_factor=additional_buffer_factor)  # fmt: skip
    if overhead_gb < 0:
        raise ValueError(f"overhead_gb must be >= 0, got {overhead_gb}")
    est2, est3 = _deepspeed_estimators()

    spec = None
    if model is not None and config is not None:
        raise ValueError("pass model= (a preset) or config=, not both")
    if model is not None:
        if model not in PRESETS:
            raise ValueError(f"unknown preset {model!r}; choose one of {sorted(PRESETS)}")
        spec = PRESETS[model]
    elif config is not None:
        spec = spec_from_config(config, st_modules=st_modules)
    if spec is not None and st_modules is False and (spec.st_trainable or spec.st_frozen):
        spec = replace(spec, name=spec.name.removesuffix(" + ST"), st_trainable=0, st_frozen=0, new_token_rows=0)

    hidden = hidden_size or (spec and spec.hidden_size)
    layers = num_layers or (spec and spec.num_layers)
    heads = num_heads or (spec and spec.num_heads) or (hidden and max(1, hidden // 128))
    vocab = vocab_size or (spec and spec.vocab_size) or 32000
    total = model_params if model_params is not None else (spec and spec.total_params)
    if not total:
        raise ValueError("give model_params, model= (a preset) or config=")
    if not hidden or not layers:
        raise ValueError("hidden_size and num_layers are needed for the activations (or pass model=/config=)")
    largest = largest_layer_params or (spec.largest_layer_params if spec else max(vocab * hidden, 4 * hidden * hidden))

    if lora:
        if lora_trainable_params is not None:
            trainable = lora_trainable_params
        elif spec is not None:
            trainable = spec.lora_params(lora_r, lora_targets) + spec.new_token_rows * spec.hidden_size
            trainable += spec.st_trainable
        else:  # square q/k/v/o projections of width `hidden`
            trainable = layers * len(lora_targets) * 2 * lora_r * hidden
        # adapters are added to the model; stllm's projectors/heads move from frozen to trainable
        frozen = total - (spec.st_trainable if spec is not None and model_params is None else 0)
        total_with_adapters = frozen + trainable
    else:
        trainable, frozen, total_with_adapters = total, 0, total

    gpus_total = num_gpus * num_nodes
    if lora:  # largest trainable module: an ST head's hidden->head_dim layer, else one adapter matrix
        st_largest = hidden * ST_HEAD_DIM + ST_HEAD_DIM if spec is not None and spec.st_trainable else 0
        largest_trainable = min(trainable, max(lora_r * hidden, st_largest))
    else:
        largest_trainable = largest
    if zero_stage in (0, 1):  # a full replica: DeepSpeed's ZeRO-2 figure at one GPU (CPU figure per node)
        _, states = est2(trainable, 1, 1, False, additional_buffer_factor)
        cpu, _ = est2(trainable, num_gpus, num_nodes, False, additional_buffer_factor)
        states += dtype_bytes * frozen
    elif zero_stage == 2:
        cpu, states = est2(trainable, num_gpus, num_nodes, offload, additional_buffer_factor)
        states += dtype_bytes * frozen
    else:
        cpu, states, _ = est3(
            trainable,
            largest_trainable,
            num_gpus,
            num_nodes,
            offload,
            offload,
            True,
            additional_buffer_factor,
        )
        if frozen:
            # frozen shards live on GPU (or on CPU with offload); one full module is gathered at a time
            states += dtype_bytes * largest + (0 if offload else int(dtype_bytes * frozen / gpus_total))
            if offload:
                cpu += dtype_bytes * frozen / num_nodes * additional_buffer_factor

    act = activation_bytes(seq_len, micro_batch, hidden, layers, heads, vocab, gradient_checkpointing, dtype_bytes)
    states_gb = states / GIB
    act_gb = (act["layers"] + act["logits"]) / GIB
    total_gb = states_gb + act_gb + overhead_gb
    if label is None:
        label = spec.name if spec is not None else f"{_human(total)} params"
    return MemoryEstimate(
        label=label,
        total_params=total_with_adapters,
        trainable_params=trainable,
        num_gpus=num_gpus,
        num_nodes=num_nodes,
        zero_stage=zero_stage,
        lora=lora,
        offload=offload,
        model_states_gb=states_gb,
        activations_gb=act_gb,
        overhead_gb=overhead_gb,
        total_gb=total_gb,
        gpu_memory_gb=gpu_memory_gb,
        fits=total_gb <= gpu_memory_gb,
        cpu_gb=cpu / GIB,
        details={"frozen_params": frozen, "largest_layer_params": largest, "activation_bytes": act},
    )


# -- tables and CLI -------------------------------------------------------------------------------------

STANDARD_HARDWARE = (("1x80GB", 1, 80.0), ("8x24GB", 8, 24.0), ("8x80GB", 8, 80.0))


def standard_cases(
    model: str | None = "vicuna-7b", config=None, st_modules: bool | None = None, **overrides
) -> list[tuple[str, dict]]:
    """Vicuna-7B + ST modules (or ``config``) on 1x80GB, 8x24GB and 8x80GB, LoRA and full, ZeRO-2 and ZeRO-3."""
    if config is not None:
        spec = spec_from_config(config, st_modules=st_modules)
        source, name = {"config": config, "st_modules": st_modules}, spec.name
    else:
        source, name = {"model": model}, PRESETS[model].name
    cases = []
    for hw, gpus, mem in STANDARD_HARDWARE:
        for lora in (True, False):
            for stage in (2, 3):
                kwargs = {**source, "num_gpus": gpus, "gpu_memory_gb": mem, "zero_stage": stage, "lora": lora}
                cases.append((f"{name} {hw}", {**kwargs, **overrides}))
    return cases


def memory_table(cases: list[tuple[str, dict]]) -> str:
    """The printed table (header + one :meth:`MemoryEstimate.row` per case) for ``(label, kwargs)`` cases."""
    lines = [MemoryEstimate.HEADER]
    for label, kwargs in cases:
        lines.append(estimate_memory(**{**kwargs, "label": label}).row())
    first = cases[0][1] if cases else {}
    lines.append(
        f"per-GPU GiB; seq_len {first.get('seq_len', 2048)}, micro_batch {first.get('micro_batch', 1)}, "
        f"gradient checkpointing {'on' if first.get('gradient_checkpointing', True) else 'off'}, "
        f"+{first.get('overhead_gb', 1.0):g} GiB overhead; states from DeepSpeed's ZeRO estimators"
    )
    return "\n".join(lines)


def cmd_estimate_memory(args: argparse.Namespace) -> int:
    """Print one estimate row (or the standard table with ``--table``)."""
    common = {
        "offload": args.offload,
        "seq_len": args.seq_len,
        "micro_batch": args.micro_batch,
        "gradient_checkpointing": not args.no_gradient_checkpointing,
        "lora_r": args.lora_r,
    }
    source = {"config": args.config, "st_modules": not args.no_st_modules} if args.config else {"model": args.model}
    if args.table:
        print(memory_table(standard_cases(**source, **common)))
        return 0
    est = estimate_memory(
        num_gpus=args.num_gpus,
        num_nodes=args.num_nodes,
        gpu_memory_gb=args.gpu_memory_gb,
        zero_stage=args.zero_stage,
        lora=not args.full,
        **source,
        **common,
    )
    print(MemoryEstimate.HEADER)
    print(est.row())
    print(
        f"params {est.total_params:,} (trainable {est.trainable_params:,}); per GPU: states {est.model_states_gb:.2f}"
        f" + activations {est.activations_gb:.2f} + overhead {est.overhead_gb:g} = {est.total_gb:.2f} GiB"
        f" of {est.gpu_memory_gb:g}; CPU per node {est.cpu_gb:.1f} GiB"
    )
    return 0


def add_estimate_memory_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``estimate-memory`` sub-command on an ``add_subparsers()`` object."""
    p = subparsers.add_parser(
        "estimate-memory",
        allow_abbrev=False,
        help="per-GPU memory for LoRA/full fine-tuning under DeepSpeed ZeRO",
        description=__doc__.split("\n\n")[0],
    )
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", default="vicuna-7b", choices=sorted(PRESETS), help="preset (default vicuna-7b)")
    src.add_argument("--config", help="HF config.json (or checkpoint directory) to size instead of a preset")
    p.add_argument("--num_gpus", "--num-gpus", type=positive_int, default=1, help="GPUs per node")
    p.add_argument("--num_nodes", "--num-nodes", type=positive_int, default=1)
    p.add_argument("--gpu_memory_gb", "--gpu-memory-gb", type=positive_float, default=80.0)
    p.add_argument("--zero_stage", "--zero-stage", type=int, default=2, choices=(0, 1, 2, 3))
    p.add_argument("--full", action="store_true", help="full fine-tuning (default: LoRA on q,k,v,o)")
    p.add_argument("--lora_r", "--lora-r", type=positive_int, default=8)
    p.add_argument("--offload", action="store_true", help="offload optimizer (and ZeRO-3 params) to CPU")
    p.add_argument("--seq_len", "--seq-len", type=positive_int, default=2048)
    p.add_argument("--micro_batch", "--micro-batch", type=positive_int, default=1)
    p.add_argument("--no_gradient_checkpointing", "--no-gradient-checkpointing", action="store_true")
    p.add_argument(
        "--no_st_modules", "--no-st-modules", action="store_true", help="with --config: size the bare backbone"
    )
    p.add_argument("--table", action="store_true", help="print the standard table (1x80GB, 8x24GB, 8x80GB)")
    p.set_defaults(func=cmd_estimate_memory)
    return p
