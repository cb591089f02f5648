"""Training: the baseline (LoRA only) and SchemaBank's three stages, then evaluation.

A run is ``setup → train (stage by stage) → save_checkpoint → evaluate → write results``. Both
modes share the data order (seeded), the batch size and the learning-rate schedule over the global
step; what each stage trains and optimises comes from the table in :mod:`schemabank.method.stages`.
One AdamW optimiser holds every adapter parameter; a stage's backward pass reaches only the
parameters it trains (the others get no gradient, so AdamW leaves them and their moments alone).

Launched as several processes (torchrun, accelerate launch), each computes its share of every
global batch and the gradients are summed (see :mod:`schemabank.distributed`); rank 0 alone
writes the log, the training state, the checkpoint and the results (results.json, and
samples.jsonl with every test problem's generation, written just before it).
"""

from __future__ import annotations

import math
import shutil
import signal
import sys
import time
import types
from collections.abc import Sequence
from contextlib import ExitStack, contextmanager, nullcontext, suppress
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from tqdm.auto import tqdm
from transformers import AttentionInterface
from transformers.integrations.sdpa_attention import sdpa_attention_forward

from . import distributed, steplog
from .batching import Batches, answer_positions, split_batch
from .checkpoint import save_checkpoint
from .config import CUDA_GRAPH_MODES, Config, check_config, dump_config, for_device
from .data import Problem, load_gsm8k, load_wikitext, split_dev
from .errors import CheckpointError, SchemaBankError, TrainingError
from .evaluation import TokenizedText, check_context, evaluate_run, write_samples
from .files import atomic_write_text, check_writable, write_json
from .method import shared_lora
from .method.adapter import adapter_parameters, build_adapter
from .method.attach import decoder_layers
from .method.bank import balance_loss, routing_ce, z_loss
from .method.stages import (
    BASELINE,
    STAGES,
    Stage,
    grouped_parameters,
    param_group,
    set_trainable,
)
from .method.tags import dropout_for_step
from .models import (
    attention_implementation,
    chunk_nll_sum,
    head_nll_sum,
    load_base_model,
    plain_head_base,
    resolve_base_model,
    unwrapped,
)
from .profiling import StepWindow, prepare_for_cuda_graphs, summary_line
from .results import build_results
from .runtime import (
    autocast,
    compile_workers_unless_warm,
    cudagraph_skips,
    environment,
    mark_cache_warm,
    seed_everything,
    use_bf16,
    warm_cache_marker,
    warn_cudagraph_skips,
    weight_dtype,
)
from .state import STATE_DIR, load_state, read_state_meta, save_state
from .telemetry import JsonlLogger, NullLogger
from .tracking import check_trackers, eval_values, make_trackers


class TrainingInterrupted(SchemaBankError):
    """SIGINT or SIGTERM arrived; the state was saved. ``exit_code`` is 128 + the signal."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def lr_factor(step: int, total: int, warmup: int, schedule: str) -> float:
    """Multiplier of the learning rate at 0-based global ``step``."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = (step - warmup) / max(1, total - warmup)
    if schedule == "linear":
        return 1.0 - progress
    return 0.5 * (1.0 + math.cos(math.pi * progress))  # cosine


def stage_plan(cfg: Config) -> list[tuple[Stage, int, float]]:
    """``(stage, steps, learning rate)`` in order; stages with 0 steps are left out."""
    t = cfg.training
    if cfg.experiment.mode == "baseline":
        return [(BASELINE, t.total_steps, t.learning_rate)]
    plan = []
    for stage in STAGES:
        scfg = getattr(t.stages, stage.key)
        if scfg.steps > 0:
            plan.append((stage, scfg.steps, scfg.learning_rate or t.learning_rate))
    return plan


class StepGraph:
    """One training step captured as a CUDA graph (``training.capture_step``): :meth:`capture`
    records ``fn()`` (nothing runs), :meth:`replay` runs it and returns the outputs it recorded,
    which the next replay overwrites. ``pool``: the memory pool the graphs share (a
    ``torch.cuda.graph_pool_handle()``); they never run at the same time, and each one's
    outputs are read before another runs."""

    def __init__(self, pool):
        self.pool = pool
        self.graph = torch.cuda.CUDAGraph()
        self.outputs = None
        self.inputs = None  # the tensors the graph reads: a step copies its batch into them

    def capture(self, fn) -> None:
        with torch.cuda.graph(self.graph, pool=self.pool):
            self.outputs = fn()

    def replay(self):
        self.graph.replay()
        return self.outputs


class Trainer:
    """Holds what a run needs between steps: model, banks, optimiser and batches.

    The step never waits for the GPU: losses stay on the device, their copy to pinned host memory
    is queued as the step ends, and the step's log line is written once the next step has been
    queued (:mod:`schemabank.steplog`; :meth:`_emit`, waiting for that copy alone), which is also
    where a non-finite loss is caught. Meanwhile the host prepares the next batch
    (:mod:`schemabank.batching`) while the GPU still works.

    With several processes, each runs the same Trainer on the same global batches and computes
    every ``world``-th example of each (:meth:`train_step`).

    ``training.capture_step`` replays each step as a :class:`StepGraph` (``step_graph``: its
    class, which tests replace to run the same sequence on the CPU).
    """

    step_graph = StepGraph

    def __init__(
        self,
        cfg: Config,
        model,
        banks,
        tokenizer,
        train_set: list[Problem],
        device: torch.device,
        bf16: bool,
        heldout: list[Problem] = (),
    ):
        self.cfg, self.model, self.banks, self.tok = cfg, model, banks, tokenizer
        self.heldout = list(heldout)  # problems for stage 1's held-out routing loss (patience)
        self.train_set, self.device, self.bf16 = train_set, device, bf16
        self.rank, self.world = distributed.rank(), distributed.world_size()
        t = cfg.training
        # a compiled or captured step wants few batch shapes (a graph, or a capture, per shape)
        fixed = t.compile or t.capture_step
        pad_multiple = t.pad_to_multiple_of or (COMPILE_PAD_MULTIPLE if fixed else None)
        # the data order, the tokenised examples and their copies to the device
        self.batches = Batches(cfg, tokenizer, train_set, device, pad_multiple)
        params = [p for ps in grouped_parameters(model).values() for _, p in ps]
        distributed.broadcast_parameters(params)  # every process starts from rank 0's weights
        self.optimizer = torch.optim.AdamW(
            params,
            lr=cfg.training.learning_rate,
            weight_decay=cfg.training.weight_decay,
            fused=device.type == "cuda",
        )
        self.step = 0  # global steps done
        self.last_line: dict = {}  # the last step's log line
        self.stage_summary: dict[str, dict] = {}  # per stage label: time_s, final_loss
        self.stop_signal = 0  # set (to the signal number) by run()'s SIGINT/SIGTERM handler
        self.agreed_stop = 0  # several processes: the signal any had at the last logged step
        self.run_dir: Path | None = None
        self.trackers: list = []  # training.report_to (rank 0)
        self.last_saved_step: int | None = None
        # training.capture_step: the whole step captured as a CUDA graph per stage and shape
        self.captured = t.capture_step and (
            device.type == "cuda" or self.step_graph is not StepGraph
        )
        if t.capture_step and not self.captured:
            print("training.capture_step: not on CUDA, the step runs uncaptured", file=sys.stderr)
        unused = unused_attention_backend(cfg, model)
        if unused:
            print(f"training.attention_backend: {unused}; it is not used", file=sys.stderr)
        if self.captured and self.world > 1:
            raise SchemaBankError("training.capture_step: needs one process (got several)")
        self._step_graphs: dict[tuple, StepGraph] = {}  # per stage and batch shapes
        self._step_graph_pool = None  # the captured steps' memory, shared (they run in turn)
        self._shapes_seen: set[tuple] = set()  # run uncaptured once (compiled, warmed up)
        self._stage_entered: Stage | None = None  # the stage last entered (compiled, captured for)
        # the groups that keep requires_grad through the run (enter_stage)
        self._run_groups = {g for stage, _, _ in stage_plan(cfg) for g in stage.trainable}
        mode = t.compile_mode or ("default" if t.capture_step else None)
        self._compiled_losses = None  # compile_scope "step": the compiled forward_losses
        self._regions: list[tuple[torch.nn.Module, object]] = []  # "layers": (layer, compiled)
        self._chunk_nll = None  # "layers": the compiled LM loss head
        combo = t.compile_combo_kernels and device.type == "cuda"
        if t.compile and t.compile_scope == "step":
            self._compiled_losses = compile_step(self.forward_losses, device, mode, combo)
        elif t.compile:
            self._regions = compile_layers(model, device, mode, t.compile_region_layers, combo)
            # the LM loss's vocabulary projection and cross-entropy compiled too, without CUDA
            # graphs of its own (its row count changes from step to step)
            self._chunk_nll = compile_chunk_nll(device, mode, combo)
        fuse = bool(t.compile) if t.fuse_lora_a is None else t.fuse_lora_a  # null: with compile
        self._fuse_lora_a = fuse and shared_lora.share_lora_inputs(model) > 0
        if t.compile:
            _compiled_for_fusion(self._fuse_lora_a)
        self.graphs = (  # the step replays CUDA graphs: mark each step's start
            t.compile and device.type == "cuda" and compile_mode(device, mode) in CUDA_GRAPH_MODES
        )
        self._graph_check: dict[str, list[int]] = {}  # per stage: [CUDA-graph skips before, steps]
        self.profiles: list[StepWindow] = []  # windows of steps run under torch.profiler (rank 0)

    def losses(
        self,
        stage: Stage,
        batch: dict,
        targets: torch.Tensor,
        positions: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """Forward pass; every loss the stage uses, and the regularisers for the log.
        ``positions``: :func:`answer_positions` of the batch, on the device (found from the
        labels when not given, which waits for the GPU). With ``compile_scope: step`` the compiled
        :meth:`forward_losses` runs, with the LM loss over fixed shapes (:func:`masked_answer_loss`);
        with ``layers``, the compiled layers and loss head (:func:`compile_chunk_nll`)."""
        b = self.cfg.schemabank
        capture = self.banks.capturing() if self.banks is not None else nullcontext()
        oracle = nullcontext()
        if self.banks is not None and b.routing == "oracle" and "lm" in stage.losses:
            oracle = self.banks.restricted(targets > 0)  # each problem's tags' schemas only
        weights = {"ortho": b.lambda_ortho, "balance": b.lambda_balance, "z": b.lambda_z}
        optimised = tuple(k for k, w in weights.items() if k in stage.losses and w > 0)
        attention = padded_attention(self.model, batch, self.cfg.training.attention_backend)
        with capture, oracle, self._compiled_layers(), attention:
            if self._compiled_losses is not None:
                # one graph for every length (a CUDA graph per length), or for every number of
                # rows of a packed batch (its rows all have the same length)
                dim = 0 if "token_mask" in batch else 1
                for x in batch.values():
                    if x.shape[dim] > 1:  # a dimension of 1 would be specialised anyway
                        torch._dynamo.mark_dynamic(x, dim)
                return self._compiled_losses(stage, batch, targets, None, optimised)
            return self.forward_losses(stage, batch, targets, positions, optimised)

    def _check_graphs(self, stage: Stage) -> None:
        """Warn once per stage when its compiled step runs without CUDA graphs (checked at its
        fourth step: by then it has been compiled, recorded and replayed)."""
        check = self._graph_check.setdefault(stage.key, [cudagraph_skips(), 0])
        check[1] += 1  # steps of the stage begun in this process
        if check[1] == 4:
            warn_cudagraph_skips(check[0], f"the compiled training step of {stage.label}")

    @contextmanager
    def _compiled_layers(self):
        """With ``compile_scope: layers``, the decoder layers run compiled inside this context
        (the training forward passes) and eager everywhere else (evaluation, held-out routing);
        with ``fuse_lora_a``, the shared LoRA A products are made here alone."""
        for layer, fn in self._regions:
            layer._compiled_call_impl = fn  # what nn.Module.compile sets: __call__ runs it
        try:
            with shared_lora.fused() if self._fuse_lora_a else nullcontext():
                yield
        finally:
            for layer, _ in self._regions:
                layer._compiled_call_impl = None

    def forward_losses(
        self,
        stage: Stage,
        batch: dict,
        targets: torch.Tensor,
        positions: torch.Tensor | None,
        optimised: tuple[str, ...],
    ) -> dict[str, torch.Tensor]:
        """:meth:`losses` inside the banks' capture (and oracle) context: the part that
        ``training.compile`` compiles. ``positions`` None: the LM loss over every position
        (:func:`masked_answer_loss`, fixed shapes), else over those positions alone (a captured
        step's padded to a multiple of :data:`ANSWER_POSITION_MULTIPLE`).
        ``optimised``: the regularisers that carry gradients (decided outside, from the config's
        weights, so that a compiled graph never branches on a number)."""
        b = self.cfg.schemabank
        out: dict[str, torch.Tensor] = {}
        # a captured step keeps no cast across steps: autocast's cache stays off, as CUDA graphs need
        with autocast(self.device, self.bf16, cache=not self.captured):
            if "lm" in stage.losses:
                if positions is None:
                    out["lm"] = masked_answer_loss(self.model, batch)
                else:
                    out["lm"] = answer_loss(
                        self.model,
                        batch,
                        positions=positions,
                        padded=self.captured,
                        chunk_fn=self._chunk_nll,
                    )
            else:  # stage 1 needs only the hidden states at the banks, not the vocabulary logits
                self.model(
                    input_ids=batch["input_ids"],
                    attention_mask=model_mask(batch),
                    position_ids=batch.get("position_ids"),
                    logits_to_keep=1,
                    use_cache=False,
                )
            if self.banks is not None:
                logits = self.banks.last_logits()
        if self.banks is None:
            return out
        mask = batch.get("token_mask", batch["attention_mask"]).bool()  # (B, T) real tokens

        def mean(xs):  # average over banks
            return torch.stack(xs).mean()

        if "route" in stage.losses:
            out["route"] = mean([routing_ce(lg, targets, mask) for lg in logits])
        # Regularisers are logged at every step; they carry gradients only where optimised.
        regularisers = {
            "ortho": self.banks.ortho,
            "balance": lambda: mean([balance_loss(lg, b.topk, mask) for lg in logits]),
            "z": lambda: mean([z_loss(lg, mask) for lg in logits]),
        }
        for name, fn in regularisers.items():
            with torch.set_grad_enabled(name in optimised):
                out[name] = fn()
        return out

    def total_loss(self, stage: Stage, parts: dict[str, torch.Tensor]) -> torch.Tensor:
        b = self.cfg.schemabank
        weights = {
            "lm": 1.0,
            "route": 1.0,
            "ortho": b.lambda_ortho,
            "balance": b.lambda_balance,
            "z": b.lambda_z,
        }
        return sum(weights[k] * v for k, v in parts.items() if k in stage.losses and weights[k] > 0)

    def train_step(self, stage: Stage, lr: float, p_drop: float) -> dict:
        """One optimiser step over the configured batch, accumulated over micro-batches.

        Each micro-batch's losses are weighted by its share of the batch's tokens (answer tokens
        for the LM loss), so the gradient is that of the whole batch. With several processes,
        this one takes every ``world``-th example of the batch (strided, so that a length-sorted
        batch is shared evenly) and the shares are of the whole batch's tokens, so the sum of the
        processes' gradients (:func:`~schemabank.distributed.sum_gradients`) is the whole batch's
        gradient. The parameter-only ortho term is split over every process's micro-batches.
        Returns the step's log record with its values still on the device.
        """
        t = self.cfg.training
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        examples, targets, n_ans = self.batches.next_examples(stage, p_drop)
        if self.captured:
            return self._captured_train_step(stage, lr, p_drop, examples, targets)
        n_tok = [len(ids) for ids, _ in examples]
        chunks = split_batch(n_tok, self.rank, self.world, self.cfg.training.micro_batch_size)
        tok_total, ans_total = sum(n_tok), max(sum(n_ans), 1)
        totals: dict[str, torch.Tensor] = {}
        padded = 0
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()
            self._check_graphs(stage)  # the last step's graph outputs are done
        for chunk in chunks:
            batch, chunk_targets, positions = self.batches.to_device(
                [examples[j] for j in chunk], targets[chunk], positions="lm" in stage.losses
            )
            padded += batch["input_ids"].numel()
            w_tok = sum(n_tok[j] for j in chunk) / tok_total
            share = {
                "lm": sum(n_ans[j] for j in chunk) / ans_total,
                "route": w_tok,
                "balance": w_tok,
                "z": w_tok,
                "ortho": 1 / (len(chunks) * self.world),
            }
            parts = self.losses(stage, batch, chunk_targets, positions)
            parts = {k: v * share[k] for k, v in parts.items()}
            loss = self.total_loss(stage, parts)
            loss.backward(inputs=self._trainable)  # the stage's own parameters
            for k, v in [("loss", loss), *parts.items()]:
                totals[k] = totals[k] + v.detach() if k in totals else v.detach()
        stop = None
        if self.world > 1:  # one all-reduce: gradients, loss totals and stop requests
            stop = distributed.sum_gradients(self._trainable, totals, self._stop_request())
        grad_norm = torch.nn.utils.clip_grad_norm_(self._trainable, t.max_grad_norm)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        return self._record(
            stage,
            lr,
            p_drop,
            totals,
            grad_norm.detach(),
            self._mean_gain(),
            stop,
            tok_total,
            padded,
        )

    def _mean_gain(self) -> torch.Tensor | None:
        """The banks' mean gain (detached), for the log; None without banks."""
        if self.banks is None:
            return None
        return torch.stack([b.gain.detach() for b in self.banks]).mean()

    def _record(self, stage, lr, p_drop, totals, grad_norm, gain, stop, tokens, padded) -> dict:
        """A step's log record, its device values on their way to pinned host memory."""
        return steplog.start_host_copy(
            {
                "step": self.step,
                "stage": stage.label,
                "loss": totals["loss"],
                "lm_loss": totals.get("lm"),
                "route_loss": totals.get("route"),
                "ortho": totals.get("ortho"),
                "balance": totals.get("balance"),
                "z_loss": totals.get("z"),
                "lr": lr,
                "tag_dropout": p_drop,
                "grad_norm": grad_norm,
                "tokens": tokens,
                "padded_tokens": padded,
                "gain": gain,
                "stop": stop,
            },
            self.device,
        )

    def _captured_train_step(self, stage: Stage, lr: float, p_drop: float, examples, targets):
        """:meth:`train_step` as a captured graph (``training.capture_step``): the batch, one
        micro-batch, goes to the device; its stage and shapes pick the graph. A new pair runs
        uncaptured once (warm-up: compilation, lazy initialisation), the next time it is
        captured with that step's tensors as the graph's inputs, and from then on each step
        copies its batch into them and replays. The LM loss's vocabulary projection runs on the
        answer positions alone, their number padded up to a multiple of
        :data:`ANSWER_POSITION_MULTIPLE` (part of the shapes). The graph computes the losses and
        the clipped gradients into the trainable parameters' ``.grad`` (kept from step to step,
        zeroed inside); the optimiser then steps outside it."""
        lm = "lm" in stage.losses and self._compiled_losses is None  # (scope step: masked)
        batch, targets, positions = self.batches.to_device(
            examples, targets, ANSWER_POSITION_MULTIPLE, positions=lm
        )
        inputs = (batch, targets, positions)
        key = (
            stage.key,
            tuple((k, tuple(v.shape)) for k, v in batch.items()),
            tuple(targets.shape),
            None if positions is None else tuple(positions.shape),
        )
        graph = self._step_graphs.get(key)
        if graph is None and key not in self._shapes_seen:
            self._shapes_seen.add(key)
            out = self._graph_body(stage, *inputs)()
        elif graph is None:
            if self._step_graph_pool is None and self.device.type == "cuda":
                self._step_graph_pool = torch.cuda.graph_pool_handle()
            graph = self._step_graphs[key] = self.step_graph(self._step_graph_pool)
            graph.inputs = inputs
            graph.capture(self._graph_body(stage, *inputs))
            out = graph.replay()
        else:
            static_batch, static_targets, static_positions = graph.inputs
            for k, v in batch.items():
                static_batch[k].copy_(v, non_blocking=True)
            static_targets.copy_(targets, non_blocking=True)
            if positions is not None:
                static_positions.copy_(positions, non_blocking=True)
            out = graph.replay()
        self.optimizer.step()
        self.step += 1
        totals = {k: v for k, v in out.items() if k not in ("grad_norm", "gain")}
        tokens = sum(len(ids) for ids, _ in examples)
        padded = batch["input_ids"].numel()
        return self._record(
            stage, lr, p_drop, totals, out["grad_norm"], out["gain"], None, tokens, padded
        )

    def _graph_body(self, stage: Stage, batch: dict, targets: torch.Tensor, positions):
        """The captured step's work on ``batch``, ``targets`` and the padded answer
        ``positions`` (fixed tensors; None without an LM loss), as a function of no arguments:
        zero the gradients, losses, backward, clipping; returns the losses, the gradient norm
        and the banks' mean gain (detached)."""
        grads = [p.grad for p in self._trainable]
        max_norm = self.cfg.training.max_grad_norm

        def body() -> dict[str, torch.Tensor]:
            torch._foreach_zero_(grads)
            parts = self.losses(stage, batch, targets, positions)
            loss = self.total_loss(stage, parts)
            loss.backward(inputs=self._trainable)  # the stage's own parameters
            out = {"loss": loss.detach(), **{k: v.detach() for k, v in parts.items()}}
            out["grad_norm"] = torch.nn.utils.clip_grad_norm_(self._trainable, max_norm).detach()
            out["gain"] = self._mean_gain()
            return out

        return body

    def _stop_request(self) -> torch.Tensor:
        """(2,) on the device: 1 where this process has a SIGINT, a SIGTERM (made on the device:
        a copy from pageable host memory would wait for the backward pass)."""
        stop = torch.zeros(2, dtype=torch.float32, device=self.device)
        if self.stop_signal in (signal.SIGINT, signal.SIGTERM):
            stop[0 if self.stop_signal == signal.SIGINT else 1] = 1.0
        return stop

    def _emit(self, record: dict, logger: JsonlLogger, bar, t_prev: float, t_stage: float) -> float:
        """Bring a step's values to the host (waiting for that step only), check the loss, log."""
        line = steplog.finish_host_copy(record)
        stop = line.pop("stop", None)
        if stop is not None:  # the same on every process: all stop at the same step
            sigint, sigterm = stop
            self.agreed_stop = signal.SIGINT if sigint else signal.SIGTERM if sigterm else 0
        now = time.perf_counter()
        if not (math.isfinite(line["loss"]) and math.isfinite(line["grad_norm"])):
            what = "loss" if not math.isfinite(line["loss"]) else "gradient norm"
            kept = (
                f"the last good training state (step {self.last_saved_step}) is in {self.run_dir}/state"
                if self.last_saved_step is not None
                else "no training state was saved before it"
            )
            raise TrainingError(
                f"{what} is {line['loss'] if what == 'loss' else line['grad_norm']} at step {line['step']} "
                f"(stage {line['stage']}); stopping: {kept}. Lower the learning rate or check the data."
            )
        steplog.write(line, now - t_prev, now - t_stage, logger, self.trackers, bar)
        self.last_line = line
        return now

    def release_step_graphs(self) -> None:
        """Drop the captured steps' CUDA graphs (``training.capture_step``) and give their
        memory pool back to the device: each shape's next step runs uncaptured again, and the
        one after is captured into a new pool. :meth:`enter_stage` calls it when the stage
        changes, so that a stage's graphs do not hold their memory through the stages after
        it (``schemabank bench`` too, after each model)."""
        if not self._step_graphs and not self._shapes_seen:
            return
        self._step_graphs.clear()  # the graphs, their inputs and outputs, all in the pool
        self._shapes_seen.clear()
        self._step_graph_pool = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # no replay still running on the memory
            torch.cuda.empty_cache()

    def enter_stage(self, stage: Stage) -> None:
        """Train exactly the stage's parameter groups; training mode. Every group that a stage of
        the run trains keeps ``requires_grad`` from stage to stage, and the stage's backward pass
        stops at its own groups (``backward(inputs=...)``): the others get no gradient, so AdamW
        leaves them and their moments alone, and the autograd engine skips the work that only
        they need. Compiled code therefore serves every stage: torch 2.11's Dynamo did not
        recompile a layer when a parameter's ``requires_grad`` changed (a bank's router, frozen
        in stage 2, got no gradient in stage 3's graphs), so a compiled trainer whose
        ``requires_grad`` pattern does change (a stage outside the run's plan) drops every
        compiled graph of the process (``torch._dynamo.reset``) and traces the stage anew. A
        stage other than the last one releases the last stage's captured steps
        (:meth:`release_step_graphs`). A captured step's gradients stay in place from step to
        step: the stage's parameters keep theirs or get zeros here, the others none."""
        compiled = bool(self._regions) or self._compiled_losses is not None
        last, self._stage_entered = self._stage_entered, stage
        if last is not None and last.key != stage.key:
            self.release_step_graphs()  # the last stage's: never replayed again
            if compiled and self._grad_groups(last) != self._grad_groups(stage):
                torch._dynamo.reset()
        set_trainable(self.model, self._grad_groups(stage))
        own = [
            (param_group(name) in stage.trainable, p) for name, p in self.model.named_parameters()
        ]
        self._trainable = [p for trained, p in own if trained]
        for trained, p in own:
            if not trained:
                p.grad = None  # a stage before's (a captured step keeps its gradients)
            elif self.captured and p.grad is None:  # the graphs hold on to the gradients
                p.grad = torch.zeros_like(p)
        self.model.train()

    def _grad_groups(self, stage: Stage) -> set[str]:
        """The groups that require gradients while ``stage`` trains (:meth:`enter_stage`)."""
        return self._run_groups | set(stage.trainable)

    def train_stage(
        self,
        stage: Stage,
        steps: int,
        lr: float,
        logger: JsonlLogger,
        bar,
        start: int = 0,
        checkpoint=None,
    ) -> dict:
        """Run steps ``start..steps-1`` of one stage; returns the stage's summary.

        ``checkpoint`` (a callable) saves the training state; it is called every
        ``training.checkpoint_every`` global steps and when a stop signal arrived
        (:meth:`stop_requested`), after which this raises :class:`TrainingInterrupted`.
        """
        t = self.cfg.training
        every = t.checkpoint_every
        self.enter_stage(stage)
        self.batches.prepare(stage)
        s1 = t.stages.stage1_router_pretrain
        schedule = s1.tag_curriculum.dropout_schedule
        t_stage = t_prev = time.perf_counter()
        pending = None
        for i in range(start, steps):
            for window in self.profiles:  # schemabank train --profile-steps
                window.before(self.step + 1, stage.label)
            p_drop = dropout_for_step(i, steps, schedule) if stage.tagged else 1.0
            cur_lr = lr * lr_factor(self.step, t.total_steps, t.warmup_steps, t.lr_scheduler)
            record = self.train_step(stage, cur_lr, p_drop)
            if pending is not None:
                t_prev = self._emit(pending, logger, bar, t_prev, t_stage)
            pending = record
            ended = stage.tagged and s1.patience > 0 and (i + 1) % s1.eval_every == 0
            ended = ended and self._plateaued(stage, i + 1)  # before a save, which records it
            if (every and self.step % every == 0) or self.stop_requested():
                t_prev = self._emit(pending, logger, bar, t_prev, t_stage)  # checked before saving
                pending = None
                self._note_stage(stage, t_stage)
                t_stage = time.perf_counter()
                if checkpoint is not None:
                    checkpoint()
                if self.stop_requested():
                    distributed.barrier()  # the others wait until rank 0 has saved
                    self._interrupted(stage)
            for window in self.profiles:
                window.after(self.step)
            if ended:
                break
        for window in self.profiles:
            window.close()  # a window reaching past the stage ends with it
        if pending is not None:
            self._emit(pending, logger, bar, t_prev, t_stage)
        self._note_stage(stage, t_stage)
        return {"steps": steps, "learning_rate": lr, **self.stage_summary[stage.label]}

    def heldout_route_ce(self) -> float:
        """Mean routing cross-entropy to the routing targets over the held-out problems'
        tokens, without the tag line (the same on every process)."""
        from .evaluation import routing_fit

        self.model.eval()  # no LoRA dropout in the measurement
        fit = routing_fit(
            self.model,
            self.tok,
            self.banks,
            self.heldout,
            self.cfg.training.max_length,
            64,
            self.device,
            self.bf16,
        )
        self.model.train()
        ce = torch.tensor(fit["regions"]["all"]["ce"], device=self.device)
        if self.world > 1:  # each process's float may differ in the last bits: agree on one
            distributed.all_reduce_sum(ce)
            ce = ce / self.world
        return float(ce)

    def _plateaued(self, stage: Stage, steps_done: int) -> bool:
        """Measure the held-out routing loss after ``steps_done`` steps of the stage; record it in
        the stage summary (which the training state saves) and say whether it has not improved
        for ``patience`` measurements, which ends the stage there."""
        entry = self.stage_summary.setdefault(stage.label, {"time_s": 0.0, "final_loss": None})
        h = entry.setdefault("heldout", {"evals": [], "best": None, "bad": 0, "steps_run": None})
        ce = self.heldout_route_ce()
        h["evals"].append([steps_done, ce])
        if h["best"] is None or ce < h["best"]:
            h["best"], h["bad"] = ce, 0
        else:
            h["bad"] += 1
        if h["bad"] >= self.cfg.training.stages.stage1_router_pretrain.patience:
            h["steps_run"] = steps_done
            return True
        return False

    def stop_requested(self) -> int:
        """The signal to stop for, or 0: this process's (:attr:`stop_signal`, set by a signal
        handler); with several processes, the one any of them had received by the last logged
        step, so that all stop after the same step."""
        return self.agreed_stop if self.world > 1 else self.stop_signal

    def _note_stage(self, stage: Stage, t_stage: float) -> None:
        entry = self.stage_summary.setdefault(stage.label, {"time_s": 0.0, "final_loss": None})
        entry["time_s"] += time.perf_counter() - t_stage
        if self.last_line:
            entry["final_loss"] = self.last_line["loss"]

    def _interrupted(self, stage: Stage):
        signum = self.stop_requested()
        name = signal.Signals(signum).name
        where = (
            f" to {self.run_dir}/state; continue with: schemabank train --resume {self.run_dir}"
            if self.run_dir
            else ""
        )
        raise TrainingInterrupted(
            f"{name} at step {self.step} (stage {stage.label}): saved the training state{where}",
            128 + signum,
        )


def _steps_run(summary: dict | None, steps: int) -> int:
    """Steps a stage takes: all of them, unless its held-out routing loss ended it earlier."""
    ran = ((summary or {}).get("heldout") or {}).get("steps_run")
    return steps if ran is None else ran


def model_mask(batch: dict) -> torch.Tensor | None:
    """The attention mask a training batch's forward pass is given: a packed batch's (R, 1, L, L)
    mask, which keeps its examples apart; None for a padded batch (B, T). Its examples are
    right-padded (:func:`~schemabank.data.collate`), so under causal attention alone no real
    token attends to padding: every real token's output, and so every loss (each ignores
    padding), is what the mask gives. Without a mask the attention runs causal (SDPA's flash
    kernel) instead of through the masked memory-efficient kernel, 30% of the H200's time at
    the study's batches (``results/bench/speed_2026-12-02d/``). The batch keeps its mask for
    the losses."""
    mask = batch["attention_mask"]
    return mask if mask.dim() == 4 else None


CAUSAL = "schemabank_causal"
"""The attention implementation a padded training batch's forward pass runs with
(:func:`padded_attention`): SDPA with ``is_causal`` and no mask, whatever mask it is given
(registered with transformers' ``AttentionInterface``). It is not registered with
``AttentionMaskInterface``, so transformers' mask code returns at once: no mask built, and no
look at the position ids for packed sequences, which outside Dynamo asks the GPU for a value
(``.all()`` on a device tensor) and so made every eager pass wait for the GPU's queued work."""


def causal_attention(module, query, key, value, attention_mask, **kwargs):
    """transformers' SDPA attention with no mask: causal (its flash kernel on a GPU)."""
    return sdpa_attention_forward(module, query, key, value, None, **kwargs)


SDPA_KERNELS = {
    "flash": SDPBackend.FLASH_ATTENTION,
    "cudnn": SDPBackend.CUDNN_ATTENTION,
    "efficient": SDPBackend.EFFICIENT_ATTENTION,
    "math": SDPBackend.MATH,
}  # training.attention_backend: torch's kernel


def causal_attention_on(backend: str):
    """:func:`causal_attention` with SDPA allowed only ``backend``'s kernel
    (``training.attention_backend``). Dynamo records the choice in the compiled graph."""
    kernel = SDPA_KERNELS[backend]

    def attention(module, query, key, value, attention_mask, **kwargs):
        with sdpa_kernel(kernel):
            return causal_attention(module, query, key, value, attention_mask, **kwargs)

    return attention


AttentionInterface.register(CAUSAL, causal_attention)
for _backend in SDPA_KERNELS:
    AttentionInterface.register(f"{CAUSAL}_{_backend}", causal_attention_on(_backend))


def unused_attention_backend(cfg: Config, model) -> str | None:
    """Why ``training.attention_backend`` would never reach the training batches' attention
    (:func:`padded_attention`), or None when it does or is not set."""
    t = cfg.training
    if t.attention_backend is None:
        return None
    attention = unwrapped(model).config._attn_implementation
    if attention != "sdpa":
        return f"the model's attention is {attention!r}, not SDPA"
    if t.packing:
        return "packed batches keep the model's attention and its block mask"
    return None


def padded_attention(model, batch: dict, backend: str | None = None):
    """The attention a training forward pass of ``batch`` runs with: for a padded batch
    (:func:`model_mask` None) of a model on SDPA, :data:`CAUSAL` in place of its own for the
    pass, so that no mask is built either (``backend``: on that SDPA kernel only, see
    :func:`causal_attention_on`). transformers builds a causal mask while Dynamo traces the model
    (``compile_scope: step``; it skips it only outside), which keeps SDPA off its flash kernel.
    A model on another attention keeps it, without a mask; a packed batch keeps the model's
    attention and its block mask."""
    padded = model_mask(batch) is None and unwrapped(model).config._attn_implementation == "sdpa"
    name = CAUSAL if backend is None else f"{CAUSAL}_{backend}"
    return attention_implementation(model, name if padded else None)


def _model_loss(model, batch: dict) -> torch.Tensor:
    """The model's own causal-LM loss of ``batch`` (for a head that does more than a projection)."""
    inputs = {k: v for k, v in batch.items() if k != "token_mask"}
    return model(**inputs | {"attention_mask": model_mask(batch)}).loss


def _decoder_states(base, batch: dict) -> torch.Tensor:
    """The decoder's last hidden states (B, T, H) of ``batch``; no KV cache (a cache would make
    each compiled layer's graph its own), a packed batch's position_ids (each example's from 0)."""
    return base.get_decoder()(
        input_ids=batch["input_ids"],
        attention_mask=model_mask(batch),
        position_ids=batch.get("position_ids"),
        use_cache=False,
    ).last_hidden_state


def answer_loss(
    model,
    batch: dict,
    chunk: int = 8192,
    positions: torch.Tensor | None = None,
    padded: bool = False,
    chunk_fn=None,
) -> torch.Tensor:
    """Mean next-token cross-entropy over the answer tokens (labels != -100).

    Equal to the Hugging Face causal-LM loss, but the vocabulary projection runs only on the
    positions that predict an answer token, in chunks, so the (B, T, V) logits never exist.
    ``positions`` (:func:`answer_positions` of the labels, on the labels' device) are found from
    the labels when not given; given, the loss needs nothing back from the GPU. ``padded``: they
    were padded (``answer_positions(labels, multiple)``), so the answer tokens are counted on the
    device, and a step of fixed shapes (a captured one) serves every batch with as many.
    ``chunk_fn``: :func:`~schemabank.models.head_nll_sum`'s (a compiled one).
    """
    base = plain_head_base(model)
    if base is None:
        return _model_loss(model, batch)
    hidden = _decoder_states(base, batch)  # (B, T, H)
    if positions is None:
        positions = answer_positions(batch["labels"])
    h = hidden.reshape(-1, hidden.shape[-1]).index_select(0, positions)  # (N, H)
    y = batch["labels"].reshape(-1).index_select(0, positions + 1)  # (N,): t predicts t + 1
    if padded:  # the padding positions' targets are ignored: count the others on the device
        return head_nll_sum(base, h, y, chunk, chunk_fn) / (y != -100).sum().clamp_min(1)
    return head_nll_sum(base, h, y, chunk, chunk_fn) / max(h.shape[0], 1)


def masked_answer_loss(model, batch: dict) -> torch.Tensor:
    """:func:`answer_loss` over fixed shapes, for a compiled step: the vocabulary projection runs
    on every position and the positions that do not predict an answer token are ignored, so no
    shape depends on the labels (more work and memory, (B, T, V) logits, in exchange for one
    graph per batch shape)."""
    base = plain_head_base(model)
    if base is None:
        return _model_loss(model, batch)
    hidden = _decoder_states(base, batch)  # (B, T, H)
    labels = batch["labels"][:, 1:]  # position t predicts t + 1
    logits = base.get_output_embeddings()(hidden[:, :-1]).float()  # (B, T - 1, V)
    total = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), reduction="sum")
    return total / (labels != -100).sum().clamp_min(1)


# A captured step's answer positions are padded up to a multiple of this: each new (length,
# answer count) pair is a shape to run uncaptured once and record once per stage. A batch of the study has
# some 3,000 to 5,500 answer tokens: 1,024 gives its run 24 shapes (512 gave 35) for some 12% more
# positions in the vocabulary projection (docs/performance.md).
ANSWER_POSITION_MULTIPLE = 1024
# The compiled or captured step's default length rounding (training.pad_to_multiple_of): few
# batch shapes.
COMPILE_PAD_MULTIPLE = 64
# torch.compile's backend for training.compile (tests use "aot_eager": the same graphs, no codegen).
COMPILE_BACKEND = "inductor"


# whether the last compiled trainer of this process fuses LoRA A (None: no compiled trainer yet)
_fused_code: bool | None = None


def _compiled_for_fusion(fused: bool) -> None:
    """Drop the process's compiled code (``torch._dynamo.reset``) when a compiled trainer's LoRA
    A fusion differs from that of the one before: Dynamo does not guard on module hooks
    (``skip_nnmodule_hook_guards``), so alike layers would run the other's code, without the
    fusion's hooks or with them."""
    global _fused_code
    if _fused_code is not None and _fused_code != fused:
        torch._dynamo.reset()
    _fused_code = fused


def compile_mode(device: torch.device, requested: str | None = None) -> str | None:
    """torch.compile's mode for ``training.compile`` (``requested``: ``training.compile_mode``;
    None for torch's default): the requested one, else ``reduce-overhead`` (CUDA graphs) on
    CUDA and the default elsewhere; always the default for a backend other than inductor."""
    if COMPILE_BACKEND != "inductor":
        return None
    if requested is not None:
        return None if requested == "default" else requested
    return "reduce-overhead" if device.type == "cuda" else None


def compile_args(mode: str | None, combo: bool = False) -> dict:
    """``torch.compile``'s keyword arguments for ``mode`` (:func:`compile_mode`'s), with inductor's
    combo kernels when ``combo`` (``training.compile_combo_kernels``): ``torch.compile`` takes a
    mode or options, not both, so then the mode's options are spelled out."""
    if not combo or COMPILE_BACKEND != "inductor":
        return {"mode": mode}
    options = torch._inductor.list_mode_options(mode) if mode else {}
    return {"options": {**options, "combo_kernels": True}}


def compile_step(fn, device: torch.device, mode: str | None = None, combo: bool = False):
    """``fn`` (:meth:`Trainer.forward_losses`) under ``torch.compile`` in :func:`compile_mode`
    (on CUDA by default ``reduce-overhead``: its forward and backward replayed as CUDA graphs).
    The batch length is symbolic (:meth:`Trainer.losses` marks it), so each stage compiles once,
    and CUDA graphs are recorded once per length; the recompilation limit is raised to hold the
    stages."""
    _raise_recompile_limit()
    return torch.compile(
        fn, backend=COMPILE_BACKEND, **compile_args(compile_mode(device, mode), combo)
    )


def compile_chunk_nll(device: torch.device, mode: str | None = None, combo: bool = False):
    """:func:`~schemabank.models.chunk_nll_sum` under ``torch.compile`` in :func:`compile_mode`,
    but never with CUDA graphs (its row count changes from step to step): inductor fuses the
    logits' float cast, the log-softmax and their backward, which eager runs as separate passes
    over the (N, V) logits. The row count is symbolic from the first call: one compilation
    serves every count, in every stage with an LM loss."""
    mode = compile_mode(device, mode)
    mode = None if mode in CUDA_GRAPH_MODES else mode  # never CUDA graphs of its own
    compiled = torch.compile(chunk_nll_sum, backend=COMPILE_BACKEND, **compile_args(mode, combo))

    def chunk_fn(hidden, weight, bias, targets):
        for x in (hidden, targets):  # one graph for every row count (one or none excepted)
            torch._dynamo.maybe_mark_dynamic(x, 0)
        return compiled(hidden, weight, bias, targets)

    return chunk_fn


def compile_layers(
    model,
    device: torch.device,
    mode: str | None = None,
    region_layers: int = 1,
    combo: bool = False,
) -> list[tuple[torch.nn.Module, object]]:
    """The decoder layers' calls compiled (regional compilation) in :func:`compile_mode` (on CUDA
    by default ``reduce-overhead``), to be switched on by :meth:`Trainer._compiled_layers`: a
    (layer, call) pair for every layer.

    ``region_layers`` 1: each layer compiled on its own. The layers share one compiled code: the
    first compiles, the alike ones reuse it (the bank's layer, with its hook, compiles once more).
    More: each run of that many consecutive layers is one region, compiled as one graph
    (:class:`LayerRegion`) and called by its first layer; the region's other layers pass the hidden
    states through, so the decoder's own loop is unchanged. Alike regions share a compiled code.

    The first batch length compiles a static graph, a second one a graph with a symbolic length
    (``dynamic=None``). Not ``dynamic=True``: it also turns the layers' float attributes (norm
    epsilons, LoRA scalings) into CPU scalar tensors, which split each layer's graph around CPU
    ops and make CUDA-graph recording crash (torch 2.11)."""
    _raise_recompile_limit()
    args = compile_args(compile_mode(device, mode), combo)
    layers = list(decoder_layers(model))
    if region_layers <= 1:
        return [
            (layer, torch.compile(layer._call_impl, backend=COMPILE_BACKEND, **args))
            for layer in layers
        ]
    out: list[tuple[torch.nn.Module, object]] = []
    for i in range(0, len(layers), region_layers):
        region = LayerRegion(layers[i : i + region_layers], args)
        out.append((region.layers[0], region.first))
        out.extend((layer, region.passed_on) for layer in region.layers[1:])
    return out


def _hook_signature(layers: list[torch.nn.Module]) -> tuple:
    """What tells layers apart for a shared compiled graph beyond Dynamo's guards: every
    submodule's type and its hooks of each kind (the functions themselves)."""
    kinds = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return tuple(
        (type(m), *(tuple(getattr(m, k, {}).values()) for k in kinds))
        for layer in layers
        for m in layer.modules()
    )


_REGION_CODES: dict[tuple, types.CodeType] = {}  # LayerRegion.forward's code per hook signature


class LayerRegion:
    """Consecutive decoder layers compiled as one graph (:func:`compile_layers`). The first
    layer's call (:meth:`first`) runs them all: each layer's forward, with its hooks (a bank's),
    on the one before's hidden states, every layer given the same arguments (the mask, the
    position embeddings) as the decoder's loop gives them. The other layers' calls
    (:meth:`passed_on`) return the hidden states they are given, already their output, so the
    decoder's own loop is unchanged. Not a module: it holds the model's layers without
    registering them again."""

    def __init__(self, layers: list[torch.nn.Module], args: dict):
        # args: torch.compile's keyword arguments (compile_args)
        self.layers = list(layers)
        self.tuples = False  # the layers return tuples (hidden_states, ...), as older models do
        # Dynamo keeps compiled graphs per code object and does not guard on module hooks, so a
        # region of hook-less layers (a LoRA baseline's, in the same process) would lend its
        # graph to one with a bank's hook: regions alike in their modules and hooks share a copy
        # of forward's code, the others each have their own.
        key = _hook_signature(self.layers)
        self.code = _REGION_CODES.setdefault(key, LayerRegion.forward.__code__.replace())
        forward = types.MethodType(types.FunctionType(self.code, globals(), "forward"), self)
        self.compiled = torch.compile(forward, backend=COMPILE_BACKEND, **args)

    def forward(self, hidden_states, *args, **kwargs):
        out = hidden_states
        for layer in self.layers:
            out = layer._call_impl(hidden_states, *args, **kwargs)  # not its compiled call
            hidden_states = out[0] if isinstance(out, tuple) else out
        return out

    def first(self, hidden_states, *args, **kwargs):
        out = self.compiled(hidden_states, *args, **kwargs)
        self.tuples = isinstance(out, tuple)
        return out

    def passed_on(self, hidden_states, *args, **kwargs):
        return (hidden_states,) if self.tuples else hidden_states


def _raise_recompile_limit() -> None:
    """Let Dynamo keep a graph per stage (and per layer kind) instead of falling back to eager."""
    import torch._dynamo.config as dynamo_config

    for key in ("recompile_limit", "cache_size_limit"):  # the name changed across versions
        if hasattr(dynamo_config, key):
            setattr(dynamo_config, key, max(getattr(dynamo_config, key), 64))


# What a run directory holds (``overwrite`` removes every one of them): results.json and its
# sidecar samples.jsonl (:func:`schemabank.results.samples_path`), the same pair from
# ``schemabank eval``'s default output, and the rest.
RUN_FILES = (
    "config.yaml",
    "training_log.jsonl",
    "results.json",
    "samples.jsonl",
    "eval_results.json",
    "eval_samples.jsonl",
    "checkpoint",
    "profile.json",
    STATE_DIR,
)


def check_run_dir(run_dir: Path, resume: bool, overwrite: bool) -> list[Path]:
    """Refuse to start over an existing run unless asked to; return what ``overwrite`` replaces.
    A run is finished once it has results.json (written last; samples.jsonl goes with it, and a
    resumed run writes it again)."""
    existing = [run_dir / f for f in RUN_FILES if (run_dir / f).exists()]
    if resume:
        if (run_dir / "results.json").exists() and not (run_dir / STATE_DIR).exists():
            raise SchemaBankError(
                f"run {run_dir} is finished (it has results.json): nothing to resume"
            )
        read_state_meta(run_dir)  # raises when there is nothing to resume
        return []
    if existing and not overwrite:
        raise SchemaBankError(
            f"run directory {run_dir} already holds a run ({', '.join(p.name for p in existing)}); "
            f"continue it with --resume {run_dir}, start it again with --overwrite, or change "
            "experiment.name or seed"
        )
    return existing


def _write_profile(run_dir: Path, windows: list[StepWindow]) -> None:
    """The profiled windows' summaries (``schemabank train --profile-steps``) to profile.json
    (``{"windows": [...]}``), and a line for each to stderr. A file that cannot be written is a
    warning: the run goes on (its checkpoint is saved, its evaluation to come)."""
    for w in windows:
        if w.result is None:
            print(
                f"schemabank: --profile-steps: step {w.first} was not run here; not profiled",
                file=sys.stderr,
            )
    done = [w.result for w in windows if w.result is not None]
    for r in done:
        steps = f"steps {r['first_step']}-{r['first_step'] + r['steps'] - 1} ({r['stage']})"
        print(f"schemabank: {summary_line(steps, r)}", file=sys.stderr)
    if not done:
        return
    path = run_dir / "profile.json"
    try:
        write_json(path, {"windows": done})
    except OSError as exc:
        print(f"schemabank: warning: cannot write {path}: {exc.strerror or exc}", file=sys.stderr)
        return
    print(f"schemabank: wrote {path}", file=sys.stderr)


def _truncate_log(path: Path, lines: int) -> None:
    """Keep the first ``lines`` complete lines of the training log (those the state covers)."""
    kept = (
        path.read_text(encoding="utf-8").splitlines(keepends=True)[:lines] if path.exists() else []
    )
    if len(kept) < lines or (kept and not kept[-1].endswith("\n")):
        raise SchemaBankError(
            f"{path} has fewer lines than the training state ({lines}); cannot resume"
        )
    atomic_write_text(path, "".join(kept))


@contextmanager
def stop_on_signals(trainer: Trainer):
    """Turn SIGINT / SIGTERM into a request to save and stop at the end of the current step."""

    def handler(signum, frame):
        trainer.stop_signal = signum

    try:
        old = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        for sig, h in old.items():
            signal.signal(sig, h)


def run(
    cfg: Config,
    output_dir: str | Path | None = None,
    data_dir: str | Path | None = None,
    resume: bool = False,
    overwrite: bool = False,
    profile_steps: Sequence[tuple[int, int]] = (),
) -> Path:
    """Train and evaluate one configuration; return the run directory.

    With ``resume``, continue the run in ``<output_dir>/<name>_seed<seed>`` from its last saved
    training state (``cfg`` is then normally that run's config.yaml). Launched as several
    processes (``WORLD_SIZE`` > 1), they train and evaluate together and rank 0 writes the run;
    a run may be resumed on another number of processes. A ``cfg`` built in Python is checked
    as a YAML config is (:func:`~schemabank.config.check_config`). ``profile_steps``: windows
    ``(first, n)``, the global steps ``first`` to ``first + n - 1`` run under the profiler
    (:class:`~schemabank.profiling.StepWindow`, rank 0), their summaries in profile.json.
    """
    cfg = check_config(cfg)
    distributed.check_batch_size(cfg.training.batch_size)
    with distributed.session(cfg.training.device) as device:
        return _run(cfg, device, output_dir, data_dir, resume, overwrite, profile_steps)


def _run(
    cfg: Config,
    device: torch.device,
    output_dir,
    data_dir,
    resume: bool,
    overwrite: bool,
    profile_steps: Sequence[tuple[int, int]],
) -> Path:
    t_start = time.perf_counter()
    cfg = for_device(cfg, device.type, distributed.world_size())  # null speed keys decided
    main = distributed.is_main()
    bf16 = use_bf16(cfg.training.precision, device)
    data_dir = data_dir or cfg.data.dir
    run_dir = Path(output_dir or cfg.output_dir) / cfg.run_name
    replaced = check_run_dir(run_dir, resume, overwrite)
    if main:
        check_writable(run_dir.parent)  # before the model loads, not after the training
        check_trackers(cfg.training.report_to)

    # Read and check every input before the long work starts.
    train_set, dev_set = split_dev(load_gsm8k("train", data_dir), cfg.data.dev_size)
    test_set = load_gsm8k("test", data_dir)[: cfg.eval.limit]
    shots = train_set[: cfg.eval.shots]
    wikitext = load_wikitext(data_dir) if cfg.eval.ppl_windows else None
    info = resolve_base_model(cfg.model.base_model)
    if resume and read_state_meta(run_dir).get("base_sha256") != info.sha256:
        raise CheckpointError(f"{run_dir}/state was trained on another base model than {info.path}")
    with distributed.main_first():  # a model to convert and cache is converted once
        tok, base = load_base_model(info, device, weight_dtype(cfg.model.dtype, device))
    seed_everything(cfg.experiment.seed)
    check_context(base, cfg.eval)  # before training, not after it
    model, banks, _ = build_adapter(base, cfg)
    if wikitext is not None:  # tokenised while the run trains
        wikitext = TokenizedText(tok, wikitext)
    t_loaded = time.perf_counter()

    distributed.barrier()  # every process has checked the run directory before it changes
    if main:  # only now that every input has loaded: a failed start keeps the old run
        for path in replaced:
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        run_dir.mkdir(parents=True, exist_ok=True)
    trainer = Trainer(cfg, model, banks, tok, train_set, device, bf16, heldout=dev_set[:256])
    trainer.run_dir = run_dir
    compiled = cfg.training.compile and device.type == "cuda"
    marker = warm_cache_marker(cfg, info.sha256, device) if compiled else None
    workers = ExitStack()  # inductor's compile workers left out while the cache is warm
    if main and cfg.training.report_to:
        trainer.trackers = make_trackers(cfg.training.report_to, run_dir, cfg.to_dict())
    if main and profile_steps:
        trainer.profiles = [StepWindow(first, n, device) for first, n in profile_steps]
        prepare_for_cuda_graphs(device)  # before the compiled step records any
    try:
        warm_cache = workers.enter_context(compile_workers_unless_warm(marker))
        train_time = 0.0
        if resume:
            meta = load_state(run_dir, trainer)
            if main:
                _truncate_log(run_dir / "training_log.jsonl", meta["log_lines"])
            trainer.stage_summary = meta["stage_summary"]
            trainer.last_line = meta["last_line"]
            trainer.last_saved_step = trainer.step
            train_time = meta["train_time_s"]
        if main:
            atomic_write_text(
                run_dir / "config.yaml", dump_config(cfg)
            )  # once the state has loaded
        log_path = run_dir / "training_log.jsonl"
        t_train = time.perf_counter()

        def checkpoint():
            if main:
                save_state(
                    run_dir,
                    trainer,
                    {
                        "log_lines": trainer.step,
                        "stage_summary": trainer.stage_summary,
                        "last_line": trainer.last_line,
                        "train_time_s": train_time + time.perf_counter() - t_train,
                        "base_sha256": info.sha256,
                    },
                )
            trainer.last_saved_step = trainer.step

        stages = {}
        done = 0  # global steps before the current stage
        with (
            stop_on_signals(trainer),
            JsonlLogger(log_path, append=resume) if main else NullLogger() as logger,
            tqdm(
                total=cfg.training.total_steps,
                initial=trainer.step,
                desc=cfg.run_name,
                unit="step",
                disable=not main,
            ) as bar,
        ):
            bonus = 0  # steps a stage 1 ended by its patience left to stage 2
            for stage, steps, lr in stage_plan(cfg):
                steps += bonus
                length = _steps_run(trainer.stage_summary.get(stage.label), steps)
                start = min(max(trainer.step - done, 0), length)
                if start < length:
                    stages[stage.label] = trainer.train_stage(
                        stage, steps, lr, logger, bar, start, checkpoint
                    )
                    length = _steps_run(stages[stage.label], steps)
                else:
                    stages[stage.label] = {
                        "steps": steps,
                        "learning_rate": lr,
                        **trainer.stage_summary[stage.label],
                    }
                bonus = steps - length
                done += length
        train_time += time.perf_counter() - t_train
        t_trained = time.perf_counter()
        if marker is not None:  # every stage's graphs are in the compile cache now
            mark_cache_warm(marker)
        set_trainable(model, ())
        shared_lora.unshare_lora_inputs(model)  # evaluation runs without the training's hooks
        if main:
            try:
                save_checkpoint(run_dir / "checkpoint", model, banks, info)
            except OSError as exc:  # the trained weights must survive: keep a state to resume
                if trainer.last_saved_step != trainer.step:
                    with suppress(OSError):
                        checkpoint()
                kept = (
                    f"the training state of step {trainer.last_saved_step} is in {run_dir}/state; "
                    f"free the space and continue with: schemabank train --resume {run_dir}"
                    if trainer.last_saved_step is not None
                    else "no training state could be saved"
                )
                raise SchemaBankError(
                    f"cannot write the checkpoint {run_dir / 'checkpoint'}: "
                    f"{exc.strerror or exc}; {kept}"
                ) from None
        if trainer.profiles:  # after the checkpoint: a diagnostic never costs the weights
            _write_profile(run_dir, trainer.profiles)

        evaluation = evaluate_run(
            cfg, model, tok, banks, test_set, shots, wikitext, dev_set, device, bf16
        )
        records = evaluation.pop("records")
        results = build_results(
            cfg=cfg,
            info=info,
            env=environment(device),
            evaluation=evaluation,
            parameters=adapter_parameters(model),
            training={
                "total_steps": trainer.step,
                "stages": stages,
                "time_s": train_time,
                "resumed": resume,
                # compiled on CUDA: whether a finished run had marked the compile cache warm
                # (then without inductor's compile workers); None otherwise
                "compile_cache_warm": warm_cache,
            },
            timings={
                "setup_s": t_loaded - t_start,
                "train_s": t_trained - t_loaded,
                **evaluation.pop("timings"),
                "total_s": time.perf_counter() - t_start,
            },
        )
        if main:
            try:
                write_samples(run_dir / "samples.jsonl", records)
                write_json(run_dir / "results.json", results)
            except OSError as exc:
                raise SchemaBankError(
                    f"cannot write the results of {run_dir}: {exc.strerror or exc} "
                    f"({exc.filename}); the trained checkpoint is in {run_dir}/checkpoint: evaluate "
                    f"it again with: schemabank eval --checkpoint {run_dir}/checkpoint"
                ) from None
            shutil.rmtree(run_dir / STATE_DIR, ignore_errors=True)  # the checkpoint supersedes it
            for tracker in trainer.trackers:
                tracker.log(eval_values(results), trainer.step)
        return run_dir
    finally:
        workers.close()
        for tracker in trainer.trackers:
            tracker.close()
