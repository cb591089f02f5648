"""Throughput benchmark: training and evaluation speed, measured side by side in one process.

On real GSM8K batches and the same device: training tokens/s and step time of the LoRA baseline
and of SchemaBank stage 3 (the most expensive stage) at the same batch, peak GPU memory, the time
and generated tokens/s of the GSM8K evaluation (routing statistics included), and the time of the
perplexities. Prints a table and returns a JSON-able dict with the device, versions and settings.
The training step and the generation loop are the config's, decided for the device as a run's
are (:func:`~schemabank.config.for_device`: on one CUDA device the compiled, captured step and
the captured static decoder, :mod:`schemabank.decode`; ``--set training.compile=false --set
training.capture_step=false --set eval.decoder=hf`` times the eager ones).
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from collections import Counter

import peft
import torch

from .. import steplog
from ..batching import split_batch
from ..config import Config, for_device
from ..data import load_gsm8k, load_wikitext, padded_length
from ..decode import DEFAULT_ATTENTION, DEFAULT_CAPTURE
from ..evaluation import evaluate_gsm8k, evaluate_perplexity, generation_options
from ..method.adapter import base_only, build_adapter, make_lora_config
from ..method.stages import BASELINE, STAGES, Stage
from ..models import load_base_model, resolve_base_model
from ..profiling import profiler, summarise, summary_line, sync
from ..runtime import (
    autocast,
    cudagraph_skips,
    environment,
    pick_device,
    seed_everything,
    use_bf16,
    weight_dtype,
)
from ..training import ANSWER_POSITION_MULTIPLE, Trainer


def _peak_reset(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


PEERS = {"none": (), "eager": ("peft_eager",), "all": ("peft_eager", "peft_compiled")}
"""``--peers`` choices: which plain-PEFT peers :func:`bench_training` times beside our trainers."""


@dataclasses.dataclass
class Batch:
    """One optimiser step's data, drawn once from a Trainer's data path and replayed to every
    measured model: the host examples (as ``Batches.next_examples`` returns them) and, for the
    peers, the micro-batches already on the device (``Batches.to_device``'s padding)."""

    examples: list[tuple[list[int], list[int]]]
    targets: torch.Tensor  # (B, S): routing targets
    n_ans: list[int]  # answer tokens per example
    micro: list[tuple[list[int], dict]]  # (example indices, device batch) per micro-batch
    shares: list[float]  # each micro-batch's share of the batch's answer tokens

    @property
    def tokens(self) -> int:
        return sum(len(ids) for ids, _ in self.examples)


def draw_batches(trainer: Trainer, stage: Stage, n: int) -> list[Batch]:
    """``n`` batches from ``trainer``'s data path (its data order, tokenisation, micro-batch
    split and ``to_device`` padding), for :func:`bench_training` to replay."""
    micro_size = trainer.cfg.training.micro_batch_size
    out = []
    for _ in range(n):
        examples, targets, n_ans = trainer.batches.next_examples(stage, 1.0)
        n_tok = [len(ids) for ids, _ in examples]
        chunks = split_batch(n_tok, trainer.rank, trainer.world, micro_size)
        ans = max(sum(n_ans), 1)
        micro = [
            (chunk, trainer.batches.to_device([examples[j] for j in chunk], targets[chunk])[0])
            for chunk in chunks
        ]
        shares = [sum(n_ans[j] for j in chunk) / ans for chunk in chunks]
        out.append(Batch(examples, targets, n_ans, micro, shares))
    return out


class _Measured:
    """A model under measurement: ``begin`` before each block of steps, ``step`` per batch;
    ``seen`` records each micro-batch it computed (examples and padded shape)."""

    def __init__(self):
        self.seen: list[tuple[list, tuple[int, ...]]] = []
        self.acc = {"time": 0.0, "steps": 0, "tokens": 0, "padded": 0, "peak": 0.0, "blocks": []}

    def begin(self) -> None: ...

    def step(self, batch: Batch) -> None:
        raise NotImplementedError

    def release(self) -> None:
        """Give back the memory that only further steps would use (after the model's last)."""


class _Ours(_Measured):
    """One of our Trainers, fed the replayed batches: ``train_step`` runs unchanged, taking its
    batch from here instead of drawing one and moving it to the device itself (its
    ``to_device`` included in the step, as in training). As a run's loop does
    (:meth:`Trainer.train_stage`), once a step is queued the host waits for the step before's
    logged values (:func:`steplog.finish_host_copy`), so the host runs at most a step ahead of
    the device, as in a run, not a whole block."""

    def __init__(self, trainer: Trainer, stage: Stage):
        super().__init__()
        self.trainer, self.stage = trainer, stage
        self._next = None
        self._pending: dict | None = None  # the last step's record, its values not yet read
        batches = trainer.batches
        to_device = batches.to_device

        def recorded(examples, targets, *args, **kwargs):
            moved = to_device(examples, targets, *args, **kwargs)
            self.seen.append((examples, tuple(moved[0]["input_ids"].shape)))
            return moved

        # Instance attributes shadow the methods, for this bench-owned trainer only.
        batches.next_examples = lambda stage, p_drop: self._next
        batches.to_device = recorded

    def begin(self) -> None:
        self.trainer.enter_stage(self.stage)
        self._pending = None  # the block before ended synchronised

    def step(self, batch: Batch) -> None:
        self._next = (batch.examples, batch.targets, batch.n_ans)
        record = self.trainer.train_step(self.stage, self.trainer.cfg.training.learning_rate, 1.0)
        if self._pending is not None:
            steplog.finish_host_copy(self._pending)
        self._pending = record

    def release(self) -> None:
        """Once the model's measurements are done: its captured steps' graphs and their memory
        pool go (:meth:`Trainer.release_step_graphs`), so that the next model's are not
        captured beside them (at batch 192 two trainers' pools filled the H200)."""
        if self._pending is not None:
            steplog.finish_host_copy(self._pending)
            self._pending = None
        self.trainer.release_step_graphs()


class _Peer(_Measured):
    """Plain PEFT LoRA trained by the standard recipe, on the replayed device batches: the
    model's own loss (``labels=``), ``backward``, fused AdamW (on CUDA), ``zero_grad(set_to_none
    =True)``, under the Trainer's bf16 autocast. Micro-batches (``training.micro_batch_size``)
    accumulate gradients, each loss weighted by its share of the answer tokens, as ours do.

    ``compiled``: run the model through ``torch.compile(model, mode=mode, backend=backend)``;
    with CUDA graphs (``reduce-overhead``), each optimiser step is marked as a new step."""

    def __init__(
        self,
        model,
        cfg: Config,
        device: torch.device,
        bf16: bool,
        compiled: bool = False,
        mode: str | None = None,
        backend: str = "inductor",
    ):
        super().__init__()
        self.model, self.device, self.bf16 = model, device, bf16
        t = cfg.training
        self.optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=t.learning_rate,
            weight_decay=t.weight_decay,
            fused=device.type == "cuda",
        )
        self.forward = torch.compile(model, mode=mode, backend=backend) if compiled else model
        self.mark_step = compiled and device.type == "cuda"

    def begin(self) -> None:
        self.model.train()

    def step(self, batch: Batch) -> None:
        if self.mark_step:
            torch.compiler.cudagraph_mark_step_begin()
        for (chunk, b), share in zip(batch.micro, batch.shares, strict=True):
            self.seen.append(([batch.examples[j] for j in chunk], tuple(b["input_ids"].shape)))
            with autocast(self.device, self.bf16):
                packed = {"position_ids": b["position_ids"]} if "position_ids" in b else {}
                out = self.forward(
                    input_ids=b["input_ids"],
                    attention_mask=b["attention_mask"],
                    labels=b["labels"],
                    **packed,  # training.packing: each example's positions from 0
                )
            loss = out.loss if len(batch.micro) == 1 else out.loss * share
            loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)


def make_peer(
    cfg: Config,
    info,
    device: torch.device,
    bf16: bool,
    rank: int,
    compiled: bool = False,
    mode: str | None = None,
    backend: str = "inductor",
) -> _Peer:
    """Plain PEFT LoRA on a fresh base: ``cfg.lora`` at ``rank`` (the baseline's, from
    :func:`build_adapter`) through :func:`make_lora_config`, seeded as the baseline is (the same
    initial LoRA weights, unless ``lora.match_params``, whose rank probe draws first)."""
    _, base = load_base_model(info, device, weight_dtype(cfg.model.dtype, device))
    seed_everything(cfg.experiment.seed)
    model = peft.get_peft_model(base, make_lora_config(cfg.lora, rank))
    return _Peer(model, cfg, device, bf16, compiled, mode, backend)


def batches_digest(seen: list[tuple[list, tuple[int, ...]]]) -> str:
    """sha256 of the micro-batches a model computed, in order: each one's padded shape and its
    examples' token ids and labels. Equal digests: the models were given identical batches."""
    h = hashlib.sha256()
    for examples, shape in seen:
        h.update(repr(shape).encode())
        for ids, labels in examples:
            h.update(repr((ids, labels)).encode())
    return h.hexdigest()


def batch_shape(batch: Batch) -> tuple[tuple[tuple[int, ...], int], ...]:
    """Per micro-batch, its padded shape and its answer tokens rounded up to a multiple of
    :data:`~schemabank.training.ANSWER_POSITION_MULTIPLE`: what a compiled step specialises
    on, and what picks a captured step's graph (``training.capture_step``)."""
    return tuple(
        (
            tuple(b["input_ids"].shape),
            padded_length(sum(batch.n_ans[j] for j in chunk), ANSWER_POSITION_MULTIPLE),
        )
        for chunk, b in batch.micro
    )


# Visits of each batch shape in the warmup: a compiled step runs a new shape's CUDA graphs once
# eagerly (warm-up), records them at the second visit and replays them from the third. On the
# H200, the unpacked bench whose warmup met a shape only once timed steps 3 to 4 times as long
# as the same batches profiled afterwards (results/bench/speed_2026-12-02d/).
WARM_VISITS = 3


def cover_shapes(
    warm: list[Batch], timed: list[Batch], visits: int = WARM_VISITS
) -> tuple[list[Batch], list[Batch]]:
    """``warm`` extended so that it meets every batch shape of ``warm`` and ``timed`` at least
    ``visits`` times: each shape met fewer times gains its first batch (from ``warm``, else the
    first timed one) that many times more, in the order the shapes first appear, so that no
    compilation or CUDA-graph recording for a shape falls inside the timed steps. The timed
    batches stay as they are. Without warmup steps, nothing is added."""
    if not warm:
        return warm, timed
    met = Counter(batch_shape(b) for b in warm)
    first: dict = {}
    for b in warm + timed:
        first.setdefault(batch_shape(b), b)
    extra = [b for shape, b in first.items() for _ in range(visits - met[shape])]
    return warm + extra, timed


def times_contiguously(device: torch.device, compiled: bool) -> bool:
    """Whether :func:`bench_training` runs each model's warmup and timed steps before the next
    model starts, instead of alternating the models' blocks: when a model is compiled or its
    step captured on a GPU (``compiled``). Alternating them made the compiled step 4 times
    slower than in a whole run (H200, ``results/bench/speed_2026-12-02b/``), as if each switch
    recorded its CUDA graphs again; one after another, each model's captured steps are
    released before the next model's are captured."""
    return device.type == "cuda" and compiled


def profile_steps(m: _Measured, batches: list[Batch], device: torch.device, top: int = 8) -> dict:
    """Where a model's step time goes: ``batches`` stepped under ``torch.profiler`` (after the
    timed steps, so compiled and recorded), summarised per step (:func:`~schemabank.profiling.
    summarise`: wall time, the GPU's busy time, the host's launches, the top operations).
    The profiled steps are left out of ``m.seen`` (no batch count, no digest)."""
    seen = len(m.seen)
    m.begin()
    sync(device)
    with profiler(device) as prof:
        t0 = time.perf_counter()
        for batch in batches:
            m.step(batch)
        sync(device)
        wall = time.perf_counter() - t0
    del m.seen[seen:]
    return summarise(prof, len(batches), wall, top)


def bench_training(
    cfg: Config,
    info,
    train_set,
    device,
    bf16: bool,
    steps: int,
    warmup: int,
    rounds: int = 2,
    peers: tuple[str, ...] = (),
    compile_mode: str | None = None,
    compile_backend: str = "inductor",
    profile: int = 0,
) -> dict:
    """Step time and tokens/s of the baseline and of SchemaBank stage 3 at ``cfg``'s batch size,
    and of the plain-PEFT ``peers`` (``peft_eager``, ``peft_compiled``) at the baseline's LoRA.

    Every model is built first; the batches (``warmup`` + ``steps``) are drawn once from the
    baseline trainer's data path and replayed to every model in the same order (each model's
    ``batches_sha256`` shows it). Each model runs its ``warmup`` steps, timed as a whole
    (``warmup_s``); then the timed steps run in alternating blocks (``rounds`` per model), so that
    none gains from running second, with the device synchronised around each block. When a model
    is compiled on a GPU, each model instead runs its warmup and all its timed blocks before the
    next model starts (``timing``: ``contiguous``, else ``interleaved``).
    ``step_ms`` is the steady state: the timed steps' mean (``block_ms``: each block's mean step,
    in the order they ran, which shows a model still warming up). Our step includes its host-side
    collation and copy to the device (``Batches.to_device``, as in training), and waits as a run
    does for the step before's logged values once it is queued (:class:`_Ours`); the peers are
    given the batches already on the device, as a static-batch benchmark would. ``peak_memory_gib`` is the peak
    allocated during the model's blocks, every measured model's weights being resident.

    The compiled peer (``torch.compile`` with ``compile_mode``, default ``reduce-overhead`` on
    CUDA, since CUDA graphs need CUDA, else the default mode) reports ``compile_s``: the warmup's
    wall time minus ``warmup`` steady steps, i.e. what compiling (and recording CUDA graphs)
    added to the warmup (None without warmup steps). Each new batch shape may compile again:
    ``batch_shapes`` counts the padded shapes a model computed and ``new_shapes_timed`` those
    first met in the timed steps, whose compilation would fall inside ``step_ms``: the warmup
    therefore meets every shape :data:`WARM_VISITS` times, replaying a shape's first batch as
    often as it lacks (:func:`cover_shapes`; ``warmup_steps`` counts them), so it is 0 unless
    a model pads differently.

    ``profile`` > 0: then each model steps that many of the timed batches (at most all of them)
    again under the profiler (:func:`profile_steps`, ``profile`` in its figures; not in
    ``step_ms``).
    """
    unknown = set(peers) - set(PEERS["all"])
    if unknown:
        raise ValueError(f"unknown peers {sorted(unknown)}; known: {list(PEERS['all'])}")
    if compile_mode is None and device.type == "cuda":
        compile_mode = "reduce-overhead"
    models: dict[str, _Measured] = {}
    per_block = max(1, steps // rounds)
    for mode, stage in (("baseline", BASELINE), ("schemabank_stage3", STAGES[2])):
        c = dataclasses.replace(
            cfg, experiment=dataclasses.replace(cfg.experiment, mode=mode.split("_")[0])
        )
        tok, base = load_base_model(info, device, weight_dtype(c.model.dtype, device))
        seed_everything(c.experiment.seed)
        model, banks, r = build_adapter(base, c)
        trainer = Trainer(c, model, banks, tok, train_set, device, bf16)
        trainer.batches.prepare(stage)  # as train_stage does, before the steps
        if mode == "baseline":  # the batches every model replays, from the Trainer's data path
            lora_rank = r
            batches = draw_batches(trainer, BASELINE, warmup + per_block * rounds)
        models[mode] = _Ours(trainer, stage)
    for name in peers:
        compiled = name == "peft_compiled"
        models[name] = make_peer(
            cfg, info, device, bf16, lora_rank, compiled, compile_mode, compile_backend
        )

    warm, timed = cover_shapes(batches[:warmup], batches[warmup:])
    warmup_s, seen_in_warmup = {}, {}

    def warm_up(name: str, m) -> None:
        m.begin()
        sync(device)
        t0 = time.perf_counter()
        for batch in warm:
            m.step(batch)
        sync(device)
        warmup_s[name] = time.perf_counter() - t0
        seen_in_warmup[name] = {shape for _, shape in m.seen}

    def timed_block(m, r: int) -> None:
        block = timed[r * per_block : (r + 1) * per_block]
        acc = m.acc
        m.begin()
        sync(device)
        _peak_reset(device)
        t0 = time.perf_counter()
        for batch in block:
            m.step(batch)
        sync(device)
        elapsed = time.perf_counter() - t0
        acc["time"] += elapsed
        acc["blocks"].append(1000 * elapsed / len(block))
        acc["steps"] += len(block)
        acc["tokens"] += sum(b.tokens for b in block)
        acc["padded"] += sum(x["input_ids"].numel() for b in block for _, x in b.micro)
        acc["peak"] = max(acc["peak"], _peak_gib(device) or 0.0)

    t = cfg.training
    contiguous = times_contiguously(device, t.compile or t.capture_step or "peft_compiled" in peers)
    profiles = {}

    def profiled(name: str, m: _Measured) -> None:  # after the model's timed steps
        if profile:
            profiles[name] = profile_steps(m, timed[:profile], device)

    if contiguous:
        for name, m in models.items():
            warm_up(name, m)
            for r in range(rounds):
                timed_block(m, r)
            profiled(name, m)
            m.release()
    else:
        for name, m in models.items():
            warm_up(name, m)
        for r in range(rounds):
            for m in models.values():
                timed_block(m, r)
        for name, m in models.items():
            profiled(name, m)

    out = {}
    for name, m in models.items():
        acc = m.acc
        shapes = {shape for _, shape in m.seen}
        out[name] = {
            "batch_size": t.batch_size,
            "micro_batch_size": t.micro_batch_size or t.batch_size,
            "steps": acc["steps"],
            "step_ms": 1000 * acc["time"] / acc["steps"],
            "block_ms": acc["blocks"],
            "tokens_per_s": acc["tokens"] / acc["time"],
            "tokens_per_step": acc["tokens"] / acc["steps"],
            "padding_share": 1 - acc["tokens"] / acc["padded"],
            "peak_memory_gib": acc["peak"] if device.type == "cuda" else None,
            "warmup_steps": len(warm),
            "warmup_s": warmup_s[name],
            "batch_shapes": len(shapes),
            "new_shapes_timed": len(shapes - seen_in_warmup[name]),
            "batches_sha256": batches_digest(m.seen),
            "timing": "contiguous" if contiguous else "interleaved",
        }
        if profile:  # run after the timed steps: its steps add to no count and no digest
            out[name]["profile"] = profiles[name]
    for name in peers:
        out[name]["lora_rank"] = lora_rank
    compiled = ["peft_compiled"] if "peft_compiled" in out else []
    if "peft_compiled" in out:
        out["peft_compiled"]["compile_mode"] = compile_mode or "default"
        out["peft_compiled"]["compile_backend"] = compile_backend
    if t.compile:  # our two trainers compiled too (training.compile)
        compiled += ["baseline", "schemabank_stage3"]
        for name in ("baseline", "schemabank_stage3"):
            out[name]["compile_scope"] = t.compile_scope
    for name in compiled:  # the compilation: the warmup's time beyond as many steady steps
        x = out[name]
        x["compile_s"] = x["warmup_s"] - len(warm) * x["step_ms"] / 1000 if warm else None
    ms = {name: x["step_ms"] for name, x in out.items()}
    out["stage3_over_baseline_step_time"] = ms["schemabank_stage3"] / ms["baseline"]
    for peer in ("peft_eager", "peft_compiled"):
        if peer in ms:
            out[f"baseline_over_{peer}_step_time"] = ms["baseline"] / ms[peer]
    if "peft_compiled" in ms:
        out["stage3_over_peft_compiled_step_time"] = ms["schemabank_stage3"] / ms["peft_compiled"]
    return out


def bench_evaluation(
    cfg: Config, info, device, bf16: bool, data_dir, limit: int | None, checkpoint=None
) -> dict:
    """Time of the zero-shot GSM8K evaluation (with routing) and of both perplexities."""
    if checkpoint is not None:
        from ..checkpoint import load_checkpoint

        tok, model, banks, _ = load_checkpoint(
            checkpoint, device, weight_dtype(cfg.model.dtype, device)
        )
    else:
        tok, base = load_base_model(info, device, weight_dtype(cfg.model.dtype, device))
        seed_everything(cfg.experiment.seed)
        model, banks, _ = build_adapter(base, cfg)
    model.eval()
    test = load_gsm8k("test", data_dir)[:limit]
    sync(device)
    _peak_reset(device)
    skips = cudagraph_skips()

    def gsm8k() -> tuple[dict, float]:
        t0 = time.perf_counter()
        ev = evaluate_gsm8k(
            model,
            tok,
            test,
            [],
            banks,
            cfg.eval.batch_size,
            cfg.eval.max_new_tokens,
            device,
            bf16,
            0,
            **generation_options(cfg.eval),
        )
        sync(device)
        return ev["gsm8k"], time.perf_counter() - t0

    g, t_gsm = gsm8k()
    out = {
        "gsm8k": {
            "problems": len(test),
            "batch_size": g["batch_size"],
            "time_s": t_gsm,
            "generation_s": g["generation_s"],
            "routing_s": t_gsm - g["generation_s"],
            "generated_tokens": g["generated_tokens"],
            "generated_tokens_per_s": g["generated_tokens"] / g["generation_s"],
            "strict_accuracy": g["strict"]["accuracy"],
            "cudagraph_skips": cudagraph_skips() - skips,
            "peak_memory_gib": _peak_gib(device),
        }
    }
    if cfg.eval.compile_decoder:  # the first pass compiled the decoder: time it again, captured
        g2, t2 = gsm8k()
        out["gsm8k"]["again"] = {
            "time_s": t2,
            "generation_s": g2["generation_s"],
            "generated_tokens_per_s": g2["generated_tokens"] / g2["generation_s"],
            "same_answers": sum(
                a["flexible_pred"] == b["flexible_pred"]
                for a, b in zip(g["problems"], g2["problems"], strict=True)
            ),
        }
    text = load_wikitext(data_dir)
    t0 = time.perf_counter()
    ppl = evaluate_perplexity(
        model,
        tok,
        text,
        cfg.eval.ppl_windows,
        cfg.eval.ppl_max_tokens,
        device,
        bf16,
        lambda: base_only(model, banks),
    )
    sync(device)
    out["perplexity"] = {
        "time_s": time.perf_counter() - t0,
        "tokens": ppl["tokens"],
        "windows": cfg.eval.ppl_windows,
        "with_base": True,
    }
    return out


def run_bench(
    cfg: Config,
    data_dir=None,
    steps: int = 20,
    warmup: int = 5,
    limit: int | None = None,
    checkpoint=None,
    parts=("train", "eval"),
    peers: str | None = None,
    compile_mode: str | None = None,
    compile_backend: str = "inductor",
    profile: int = 0,
) -> dict:
    """Measure training throughput (``steps`` timed steps per mode after ``warmup``) and/or
    evaluation speed (generation for ``limit`` problems, perplexity) on this device; ``parts``
    picks which. ``peers`` (a key of :data:`PEERS`; default ``all`` on CUDA, ``eager`` elsewhere,
    where compiling is slow) picks the plain-PEFT models timed beside ours, compiled with
    ``compile_mode`` and ``compile_backend``; ``profile`` steps of each model profiled (see
    :func:`bench_training`). Returns the figures
    with the settings and environment they were measured in."""
    device = pick_device(cfg.training.device)
    cfg = for_device(cfg, device.type)  # null speed keys decided
    bf16 = use_bf16(cfg.training.precision, device)
    if peers is None:
        peers = "all" if device.type == "cuda" else "eager"
    if peers not in PEERS:
        raise ValueError(f"peers: {peers!r} is not one of {list(PEERS)}")
    if compile_mode is None and device.type == "cuda":
        compile_mode = "reduce-overhead"
    info = resolve_base_model(cfg.model.base_model)
    result = {
        "environment": environment(device),
        "settings": {
            "config": cfg.experiment.name,
            "base_model": cfg.model.base_model,
            "bf16": bf16,
            "weight_dtype": str(weight_dtype(cfg.model.dtype, device)),
            "train_batch_size": cfg.training.batch_size,
            "group_by_length": cfg.training.group_by_length,
            "pad_to_multiple_of": cfg.training.pad_to_multiple_of,
            "capture_step": cfg.training.capture_step,
            "attention_backend": cfg.training.attention_backend,
            "max_length": cfg.training.max_length,
            "steps": steps,
            "warmup": warmup,
            "eval_batch_size": cfg.eval.batch_size,
            "max_new_tokens": cfg.eval.max_new_tokens,
            "decoder": cfg.eval.decoder,
            "compile_decoder": cfg.eval.compile_decoder,
            "decoder_capture": (cfg.eval.decoder_capture or DEFAULT_CAPTURE)
            if cfg.eval.compile_decoder
            else None,
            "decoder_shrink": cfg.eval.decoder_shrink,
            "merge_lora": cfg.eval.merge_lora,
            "decoder_attention": (cfg.eval.decoder_attention or DEFAULT_ATTENTION)
            if cfg.eval.decoder == "static"
            else None,
            "limit": limit,
            "checkpoint": str(checkpoint) if checkpoint else None,
            "layers": cfg.schemabank.layers,
            "num_schemas": cfg.schemabank.num_schemas,
            "peers": list(PEERS[peers]),
            "compile_mode": (compile_mode or "default")
            if "peft_compiled" in PEERS[peers]
            else None,
            "compile_backend": compile_backend if "peft_compiled" in PEERS[peers] else None,
            "profile_steps": profile,
        },
    }
    if "train" in parts:
        train_set = load_gsm8k("train", data_dir)
        result["training"] = bench_training(
            cfg,
            info,
            train_set,
            device,
            bf16,
            steps,
            warmup,
            peers=PEERS[peers],
            compile_mode=compile_mode,
            compile_backend=compile_backend,
            profile=profile,
        )
    if "eval" in parts:
        result["evaluation"] = bench_evaluation(
            cfg, info, device, bf16, data_dir, limit, checkpoint
        )
    return result


def format_bench(r: dict) -> list[str]:
    """A :func:`run_bench` result as human-readable lines."""
    env = r["environment"]
    lines = [
        f"device {env['device_name']} ({env['device']}), torch {env['torch']}, "
        f"transformers {env['transformers']}, peft {env['peft']}"
    ]
    t = r.get("training")
    if t:
        lines.append(
            f"{'training':28s} {'batch':>6s} {'micro':>6s} {'step ms':>9s} {'tokens/s':>10s} "
            f"{'padding':>8s} {'peak GiB':>9s} {'warmup s':>9s} {'shapes':>7s}"
        )
        for k in ("baseline", "schemabank_stage3", "peft_eager", "peft_compiled"):
            x = t.get(k)
            if x is None:
                continue
            mem = f"{x['peak_memory_gib']:.2f}" if x["peak_memory_gib"] is not None else "-"
            warm = f"{x['warmup_s']:.1f}" if "warmup_s" in x else "-"
            shapes = str(x.get("batch_shapes", "-"))
            lines.append(
                f"  {k:26s} {x['batch_size']:6d} {x['micro_batch_size']:6d} {x['step_ms']:9.1f} "
                f"{x['tokens_per_s']:10.0f} {100 * x['padding_share']:7.1f}% {mem:>9s} "
                f"{warm:>9s} {shapes:>7s}"
            )
        for k in ("baseline", "schemabank_stage3"):
            x = t[k]
            if x.get("compile_s") is not None:
                lines.append(
                    f"  {k}: training.compile (scope {x['compile_scope']}) added "
                    f"{x['compile_s']:.1f} s to the warmup; {x['batch_shapes']} batch shapes, "
                    f"{x['new_shapes_timed']} first met in the timed steps"
                )
        c = t.get("peft_compiled")
        if c is not None:
            took = f"{c['compile_s']:.1f} s" if c["compile_s"] is not None else "- (no warmup)"
            lines.append(
                f"  peft_compiled: torch.compile mode {c['compile_mode']}, backend "
                f"{c['compile_backend']}; compiling added {took} to the warmup (warmup time "
                f"- warmup x step time); {c['batch_shapes']} batch shapes"
            )
            if c["new_shapes_timed"]:
                lines.append(
                    f"  warning: {c['new_shapes_timed']} batch shapes first met in the timed "
                    "steps: peft_compiled's step time includes compiling (or recording CUDA "
                    "graphs) for them; more --warmup steps or fewer batch shapes avoid it"
                )
        lines.append(f"  stage-3 / baseline step time: {t['stage3_over_baseline_step_time']:.3f}")
        for key, label in (
            ("baseline_over_peft_eager_step_time", "baseline / peft_eager"),
            ("baseline_over_peft_compiled_step_time", "baseline / peft_compiled"),
            ("stage3_over_peft_compiled_step_time", "stage-3 / peft_compiled"),
        ):
            if key in t:
                lines.append(f"  {label} step time: {t[key]:.3f}")
        for k in ("baseline", "schemabank_stage3", "peft_eager", "peft_compiled"):
            p = t.get(k, {}).get("profile")
            if p:
                lines.append("  " + summary_line(k, p))
    e = r.get("evaluation")
    if e:
        g, s = e["gsm8k"], r.get("settings", {})
        lines.append(
            f"gsm8k: {g['problems']} problems in {g['time_s']:.1f} s (generation {g['generation_s']:.1f} s, "
            f"routing {g['routing_s']:.1f} s), {g['generated_tokens_per_s']:.0f} generated tokens/s, "
            f"batch {g['batch_size']}, decoder {s.get('decoder', 'hf')}"
            + (
                f" (compile_decoder, {s.get('decoder_capture') or 'compile'})"
                if s.get("compile_decoder")
                else ""
            )
            + (f", attention {s['decoder_attention']}" if s.get("decoder_attention") else "")
            + (", shrinking" if s.get("decoder_shrink") else "")
            + (", LoRA merged" if s.get("merge_lora") else "")
        )
        if "again" in g:
            a = g["again"]
            lines.append(
                f"gsm8k again (decoder compiled): {a['time_s']:.1f} s (generation "
                f"{a['generation_s']:.1f} s), {a['generated_tokens_per_s']:.0f} generated tokens/s, "
                f"{a['same_answers']} of {g['problems']} answers as the first pass"
            )
        p = e["perplexity"]
        lines.append(
            f"perplexity: windows {p['windows']} on {p['tokens']} tokens, adapter and base, in {p['time_s']:.1f} s"
        )
    return lines
