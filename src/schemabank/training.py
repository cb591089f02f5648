"""Training: the baseline (LoRA only) and SchemaBank's three stages, then evaluation.

A run is ``setup → train (stage by stage) → save_checkpoint → evaluate → write results``. Both
modes share the data order (seeded), the batch size and the learning-rate schedule over the global
step; what each stage trains and optimises comes from the table in :mod:`schemabank.stages`.
One AdamW optimiser holds every adapter parameter; a stage freezes what it does not train
(frozen parameters get no gradient, so AdamW leaves them and their moments alone).
"""

from __future__ import annotations

import math
import time
from contextlib import nullcontext
from pathlib import Path

import torch
from tqdm.auto import tqdm

from .adapter import base_only, build_adapter
from .bank import balance_loss, routing_ce, z_loss
from .checkpoint import save_checkpoint, write_json
from .config import Config, dump_config
from .data import DataOrder, Problem, collate, encode_example, load_gsm8k, load_wikitext
from .errors import SchemaBankError
from .evaluation import run_evaluation
from .models import load_base_model, resolve_base_model
from .results import build_results
from .runtime import autocast, environment, pick_device, seed_everything, use_bf16, weight_dtype
from .stages import BASELINE, STAGES, Stage, count_parameters, grouped_parameters, set_trainable
from .tags import dropout_for_step, routing_target
from .telemetry import JsonlLogger


class TrainingError(SchemaBankError):
    """Training cannot go on (a non-finite loss)."""


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


class Trainer:
    """Holds what a run needs between steps: model, banks, optimiser, data order and RNGs."""

    def __init__(
        self,
        cfg: Config,
        model,
        banks,
        tokenizer,
        train_set: list[Problem],
        device: torch.device,
        bf16: bool,
    ):
        self.cfg, self.model, self.banks, self.tok = cfg, model, banks, tokenizer
        self.train_set, self.device, self.bf16 = train_set, device, bf16
        seed = cfg.experiment.seed
        self.order = DataOrder(len(train_set), cfg.training.batch_size, seed)
        self.tag_rng = torch.Generator().manual_seed(seed + 1)
        params = [p for ps in grouped_parameters(model).values() for _, p in ps]
        self.optimizer = torch.optim.AdamW(
            params, lr=cfg.training.learning_rate, weight_decay=cfg.training.weight_decay
        )
        self.step = 0  # global steps done

    def make_batch(self, stage: Stage, p_drop: float):
        """The next batch: tensors on the device, routing targets, and its non-padding tokens."""
        examples, targets = [], []
        S, max_length = self.cfg.schemabank.num_schemas, self.cfg.training.max_length
        for i in self.order.next_batch():
            prob = self.train_set[i]
            tags = prob.tags
            keep = stage.tagged and bool(torch.rand((), generator=self.tag_rng) >= p_drop)
            ids, labels = encode_example(self.tok, prob, tags if keep else None, max_length)
            if "lm" in stage.losses and all(x == -100 for x in labels):
                raise TrainingError(
                    f"training.max_length: {max_length} tokens leave no answer tokens for training problem "
                    f"{i} (its prompt is {len(ids)}+ tokens); raise training.max_length"
                )
            examples.append((ids, labels))
            targets.append(routing_target(tags, S))
        batch = collate(examples, self.tok.pad_token_id)
        n_tokens = int(batch["attention_mask"].sum())
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        return batch, torch.stack(targets).to(self.device), n_tokens

    def losses(self, stage: Stage, batch: dict, targets: torch.Tensor) -> dict[str, torch.Tensor]:
        """Forward pass; every loss the stage uses (and ortho for the log)."""
        b = self.cfg.schemabank
        out: dict[str, torch.Tensor] = {}
        capture = self.banks.capturing() if self.banks is not None else nullcontext()
        with capture, autocast(self.device, self.bf16):
            if "lm" in stage.losses:
                out["lm"] = self.model(**batch).loss
            else:  # stage 1 needs only the hidden states at the banks, not the vocabulary logits
                self.model(
                    input_ids=batch["input_ids"],
                    attention_mask=batch["attention_mask"],
                    logits_to_keep=1,
                )
            if self.banks is not None:
                logits = self.banks.last_logits()
        if self.banks is None:
            return out
        mask = batch["attention_mask"].bool()

        def mean(xs):  # average over banks
            return torch.stack(xs).mean()

        if "route" in stage.losses:
            out["route"] = mean([routing_ce(lg, targets, mask) for lg in logits])
        # Regularisers are logged at every step; they carry gradients only where optimised.
        regularisers = {
            "ortho": (b.lambda_ortho, self.banks.ortho),
            "balance": (
                b.lambda_balance,
                lambda: mean([balance_loss(lg, b.topk, mask) for lg in logits]),
            ),
            "z": (b.lambda_z, lambda: mean([z_loss(lg, mask) for lg in logits])),
        }
        for name, (weight, fn) in regularisers.items():
            with torch.set_grad_enabled(name in stage.losses and weight > 0):
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

    def train_stage(self, stage: Stage, steps: int, lr: float, logger: JsonlLogger, bar) -> dict:
        """Run one stage; returns its summary for results.json."""
        t = self.cfg.training
        set_trainable(self.model, stage.trainable)
        trainable = [p for p in self.model.parameters() if p.requires_grad]
        schedule = self.cfg.training.stages.stage1_router_pretrain.tag_curriculum.dropout_schedule
        self.model.train()
        t_stage, last = time.perf_counter(), {}
        for i in range(steps):
            t0 = time.perf_counter()
            p_drop = dropout_for_step(i, steps, schedule) if stage.tagged else 1.0
            cur_lr = lr * lr_factor(self.step, t.total_steps, t.warmup_steps, t.lr_scheduler)
            for group in self.optimizer.param_groups:
                group["lr"] = cur_lr
            batch, targets, n_tokens = self.make_batch(stage, p_drop)
            parts = self.losses(stage, batch, targets)
            loss = self.total_loss(stage, parts)
            if not torch.isfinite(loss):
                raise TrainingError(
                    f"loss is {loss.item()} at step {self.step + 1} (stage {stage.label}); stopping. "
                    "Lower the learning rate or check the data."
                )
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(trainable, t.max_grad_norm)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            last = {
                "step": self.step,
                "stage": stage.label,
                "loss": loss.item(),
                "lm_loss": _item(parts.get("lm")),
                "route_loss": _item(parts.get("route")),
                "ortho": _item(parts.get("ortho")),
                "balance": _item(parts.get("balance")),
                "z_loss": _item(parts.get("z")),
                "lr": cur_lr,
                "tag_dropout": p_drop,
                "grad_norm": grad_norm.item(),
            }
            dt = time.perf_counter() - t0
            last.update(
                tokens_per_s=n_tokens / dt,
                tokens=n_tokens,
                gain=self.mean_gain(),
                elapsed_s=time.perf_counter() - t_stage,
            )
            logger.log(last)
            bar.set_postfix(stage=stage.label, loss=f"{last['loss']:.3f}")
            bar.update(1)
        return {
            "steps": steps,
            "learning_rate": lr,
            "time_s": time.perf_counter() - t_stage,
            "final_loss": last.get("loss"),
        }

    def mean_gain(self) -> float | None:
        if self.banks is None:
            return None
        return float(torch.stack([b.gain.detach() for b in self.banks]).mean())


def _item(x: torch.Tensor | None) -> float | None:
    return None if x is None else x.item()


def run(
    cfg: Config, output_dir: str | Path | None = None, data_dir: str | Path | None = None
) -> Path:
    """Train and evaluate one configuration; return the run directory."""
    t_start = time.perf_counter()
    device = pick_device(cfg.training.device)
    bf16 = use_bf16(cfg.training.precision, device)
    data_dir = data_dir or cfg.data.dir
    run_dir = Path(output_dir or cfg.output_dir) / cfg.run_name

    # Read and check every input before the long work starts.
    train_set = load_gsm8k("train", data_dir)
    test_set = load_gsm8k("test", data_dir)[: cfg.eval.limit]
    shots = train_set[: cfg.eval.shots]
    wikitext = load_wikitext(data_dir) if cfg.eval.ppl_windows else None
    info = resolve_base_model(cfg.model.base_model)
    tok, base = load_base_model(info, device, weight_dtype(cfg.model.dtype, device))
    seed_everything(cfg.experiment.seed)
    model, banks, lora_r = build_adapter(base, cfg)
    t_loaded = time.perf_counter()

    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
    trainer = Trainer(cfg, model, banks, tok, train_set, device, bf16)
    stages = {}
    with (
        JsonlLogger(run_dir / "training_log.jsonl") as logger,
        tqdm(total=cfg.training.total_steps, desc=cfg.run_name, unit="step") as bar,
    ):
        for stage, steps, lr in stage_plan(cfg):
            stages[stage.label] = trainer.train_stage(stage, steps, lr, logger, bar)
    t_trained = time.perf_counter()
    set_trainable(model, ())
    save_checkpoint(run_dir / "checkpoint", model, banks, info)

    evaluation = run_evaluation(
        model,
        tok,
        banks,
        test_set,
        shots,
        wikitext,
        cfg.eval,
        device,
        bf16,
        lambda: base_only(model, banks),
    )
    results = build_results(
        cfg=cfg,
        info=info,
        env=environment(device),
        evaluation=evaluation,
        parameters={
            **count_parameters(model),
            "lora_rank": lora_r,
            "lora_target_modules": sorted(model.peft_config["default"].target_modules),
        },
        training={"total_steps": trainer.step, "stages": stages, "time_s": t_trained - t_loaded},
        timings={
            "setup_s": t_loaded - t_start,
            "train_s": t_trained - t_loaded,
            **evaluation.pop("timings"),
            "total_s": time.perf_counter() - t_start,
        },
    )
    write_json(run_dir / "results.json", results)
    return run_dir
