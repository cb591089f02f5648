"""The throughput benchmark runs end to end on a tiny model and reports consistent figures."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from conftest import TRAIN, tiny_config

from schemabank import training
from schemabank.cli import main
from schemabank.config import config_from_dict
from schemabank.data import load_gsm8k
from schemabank.method.adapter import build_adapter
from schemabank.method.stages import BASELINE
from schemabank.models import load_base_model, resolve_base_model
from schemabank.runtime import seed_everything
from schemabank.study.bench import (
    Batch,
    batch_shape,
    cover_shapes,
    draw_batches,
    format_bench,
    make_peer,
    run_bench,
)
from schemabank.training import Trainer


def test_bench_measures_training_and_evaluation(tiny_llama, data_dir):
    cfg = config_from_dict(
        tiny_config(tiny_llama, training={"batch_size": 4, "micro_batch_size": 2})
    )
    r = run_bench(cfg, data_dir=data_dir, steps=4, warmup=1, limit=3)
    t = r["training"]
    for mode in ("baseline", "schemabank_stage3"):
        x = t[mode]
        assert x["steps"] == 4 and x["batch_size"] == 4 and x["micro_batch_size"] == 2
        assert x["tokens_per_s"] > 0 and 0 <= x["padding_share"] < 1
        assert len(x["block_ms"]) == 2 and abs(sum(x["block_ms"]) / 2 - x["step_ms"]) < 1e-6
        assert (
            abs(x["tokens_per_s"] * x["step_ms"] / 1000 - x["tokens_per_step"])
            < 1e-6 * x["tokens_per_step"] + 1e-3
        )
    assert (
        t["stage3_over_baseline_step_time"]
        == t["schemabank_stage3"]["step_ms"] / t["baseline"]["step_ms"]
    )
    # On CPU the default peers are eager PEFT only (compiling is slow there).
    assert r["settings"]["peers"] == ["peft_eager"] and "peft_compiled" not in t
    assert t["peft_eager"]["steps"] == 4 and t["peft_eager"]["step_ms"] > 0
    assert t["baseline_over_peft_eager_step_time"] == (
        t["baseline"]["step_ms"] / t["peft_eager"]["step_ms"]
    )
    assert "stage3_over_peft_compiled_step_time" not in t
    g = r["evaluation"]["gsm8k"]
    assert g["problems"] == 3 and g["generated_tokens"] > 0 and g["time_s"] >= g["generation_s"]
    assert r["evaluation"]["perplexity"]["tokens"] == 200
    assert r["environment"]["torch"] and r["settings"]["train_batch_size"] == 4
    assert r["settings"]["attention_backend"] is None and r["settings"]["capture_step"] is False
    text = "\n".join(format_bench(r))
    assert "schemabank_stage3" in text and "gsm8k: 3 problems" in text
    assert "baseline / peft_eager step time" in text


def test_bench_profiles_each_models_steps(tiny_llama, data_dir, tmp_path, capsys):
    """``--profile-steps``: after the timed steps every model steps again under the profiler;
    the figures say the wall time a step and the top host operations (on the CPU the GPU's busy
    time and the launches are 0), and the timed figures leave those steps out."""
    import yaml

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(tiny_llama)))
    out = tmp_path / "bench.json"
    args = ["bench", "--config", str(cfg), "--data-dir", str(data_dir), "--only", "train"]
    args += ["--steps", "2", "--warmup", "0", "--output", str(out)]
    assert main([*args, "--profile-steps", "2"]) == 0
    r = json.loads(out.read_text())
    assert r["settings"]["profile_steps"] == 2
    for name in ("baseline", "schemabank_stage3", "peft_eager"):
        x = r["training"][name]
        p = x["profile"]
        assert x["steps"] == 2 and p["steps"] == 2 and p["wall_ms"] > 0
        assert p["device_ms"] == 0 and p["kernel_launches"] == 0 and p["graph_launches"] == 0
        host = dict(p["top_host_ms"])
        assert 0 < len(host) <= 8 and all(v > 0 for v in host.values())
    assert "baseline profiled over 2 steps" in capsys.readouterr().out
    assert main([*args, "--profile-steps", "0"]) == 0  # the profiled steps count nowhere
    plain = json.loads(out.read_text())["training"]
    for name in ("baseline", "schemabank_stage3", "peft_eager"):
        x, y = r["training"][name], plain[name]
        assert "profile" not in y and x["batches_sha256"] == y["batches_sha256"]
        assert x["batch_shapes"] == y["batch_shapes"]
    assert main([*args, "--profile-steps", "-1"]) == 1
    assert "--profile-steps: must be >= 0" in capsys.readouterr().err


def test_device_gaps_sums_the_gpus_idle_time_by_gap_size():
    """The GPU's idle time between its activities (overlapping ones merged), per step, by the
    gap's size, and the largest gaps with the activities around them."""
    from schemabank.profiling import device_gaps, summary_line

    spans = [  # (start_us, end_us, name), unsorted; b overlaps a, c starts inside b
        (0, 10, "a"),
        (5, 30, "b"),
        (20, 31, "c"),
        (32, 40, "d"),  # 1 us after c
        (60, 70, "e"),  # 20 us after d
        (2070, 2080, "f"),  # 2 ms after e
        (2080, 2090, "g"),  # no gap
    ]
    g = device_gaps(spans[::-1], steps=2, top=2)
    assert g["activities"] == 3.5
    assert g["idle_ms_by_gap"] == pytest.approx(
        {"<5us": 0.0005, "5-50us": 0.01, "50-1000us": 0.0, ">1000us": 1.0}
    )
    assert g["gaps_by_size"] == {"<5us": 0.5, "5-50us": 0.5, "50-1000us": 0.0, ">1000us": 0.5}
    assert g["idle_ms"] == pytest.approx(1.0105)
    assert g["largest_gaps"] == [[2.0, "e", "f"], [0.02, "d", "e"]]
    assert device_gaps([], steps=3)["idle_ms"] == 0
    p = {"steps": 2, "wall_ms": 4.0, "device_ms": 2.0, "kernel_launches": 0, "graph_launches": 1}
    line = summary_line("stage 3", {**p, "gaps": g})
    assert line.endswith("; GPU idle 1.0 ms between 4 activities (0.0 ms in gaps under 5 us)")
    assert "idle" not in summary_line("stage 3", p)  # off CUDA: no device activities


def same_length_data(root: Path) -> Path:
    """A data folder whose training problems are one problem repeated: every batch has one
    padded shape, so a compiled model compiles once (in the warmup)."""
    (root / "gsm8k").mkdir(parents=True)
    q, a = TRAIN[0]
    line = json.dumps({"question": q, "answer": a}) + "\n"
    (root / "gsm8k" / "train.jsonl").write_text(line * 8)
    return root


@pytest.mark.parametrize("contiguous", [False, True])
def test_bench_interleaves_eager_models_and_runs_compiled_ones_one_after_another(
    tiny_llama, tmp_path, monkeypatch, contiguous
):
    """Eager models alternate their timed blocks; when a model is compiled on a GPU
    (:func:`times_contiguously`), each runs its warmup and all its timed steps before the next."""
    from schemabank.study import bench

    monkeypatch.setattr(bench, "times_contiguously", lambda device, compiled: contiguous)
    order = []
    step = bench._Ours.step
    monkeypatch.setattr(
        bench._Ours, "step", lambda self, batch: order.append(self.stage.key) or step(self, batch)
    )
    cfg = config_from_dict(tiny_config(tiny_llama, training={"batch_size": 2}))
    r = run_bench(
        cfg, data_dir=same_length_data(tmp_path), steps=4, warmup=1, parts=("train",), peers="none"
    )
    base, sb = order[0], order[-1]
    warm = 3  # one warmup step, and its shape twice more (bench.WARM_VISITS)
    assert base != sb and len(order) == 2 * (warm + 4)
    if contiguous:
        assert order == [base] * (warm + 4) + [sb] * (warm + 4)
    else:  # warmups, then two rounds of two-step blocks
        assert order == [base] * warm + [sb] * warm + [base, base, sb, sb] * 2
    for m in ("baseline", "schemabank_stage3"):
        assert r["training"][m]["timing"] == ("contiguous" if contiguous else "interleaved")
        assert r["training"][m]["steps"] == 4


def test_bench_waits_for_the_step_befores_values_as_a_run_does(tiny_llama, tmp_path, monkeypatch):
    """Our models are timed as a run's loop steps them: once a step is queued, the host reads
    the step before's logged values (so it runs at most a step ahead of the device), and only
    within a block (the block before ended synchronised)."""
    from schemabank import steplog
    from schemabank.study import bench

    finished = []
    finish = steplog.finish_host_copy
    monkeypatch.setattr(
        steplog,
        "finish_host_copy",
        lambda record: finished.append(record["step"]) or finish(record),
    )
    begin, step = bench._Ours.begin, bench._Ours.step
    steps = []  # per model step: (first of its block, values read during it)

    def first_begin(self):
        self.first = True
        begin(self)

    def watched_step(self, batch):
        before = len(finished)
        step(self, batch)
        steps.append((self.first, finished[before:], self.trainer.step))
        self.first = False

    monkeypatch.setattr(bench._Ours, "begin", first_begin)
    monkeypatch.setattr(bench._Ours, "step", watched_step)
    cfg = config_from_dict(tiny_config(tiny_llama, training={"batch_size": 2}))
    run_bench(
        cfg, data_dir=same_length_data(tmp_path), steps=4, warmup=1, parts=("train",), peers="none"
    )
    assert len(steps) == 2 * (3 + 4)  # two models, each 3 warmup steps and 4 timed
    for first, read, done in steps:
        assert read == ([] if first else [done - 1])


def test_bench_peer_gets_the_packed_rows_positions(tiny_llama, tmp_path, monkeypatch):
    """With training.packing the peer's forward gets the packed rows with each example's
    positions and the block mask, as our trainers do (without them its loss would be wrong)."""
    from schemabank.study import bench

    calls = []
    make_peer = bench.make_peer

    def recording_peer(*args, **kwargs):
        peer = make_peer(*args, **kwargs)
        forward = peer.forward
        peer.forward = lambda **kw: calls.append(kw) or forward(**kw)
        return peer

    monkeypatch.setattr(bench, "make_peer", recording_peer)
    keys = {"batch_size": 4, "packing": True, "max_length": 256}
    cfg = config_from_dict(tiny_config(tiny_llama, training=keys))
    r = run_bench(
        cfg, data_dir=same_length_data(tmp_path), steps=1, warmup=0, parts=("train",), peers="eager"
    )
    assert len({r["training"][m]["batches_sha256"] for m in ("baseline", "peft_eager")}) == 1
    assert calls and all(c["attention_mask"].dim() == 4 for c in calls)
    for c in calls:  # each row's examples start their positions at 0
        rows, length = c["input_ids"].shape
        assert c["position_ids"].shape == (rows, length) and c["position_ids"][:, 0].eq(0).all()
        assert c["position_ids"].max() < length


def test_bench_times_a_captured_step(tiny_llama, data_dir, monkeypatch):
    """With ``training.capture_step`` (a stand-in graph on the CPU) the bench's trainers run
    the captured step through the bench's own batches, and the timed steps replay graphs."""
    from test_capture import EagerGraph

    class Counted(EagerGraph):
        replayed = 0

        def replay(self):
            Counted.replayed += 1
            return super().replay()

    monkeypatch.setattr(training.Trainer, "step_graph", Counted)
    cfg = config_from_dict(
        tiny_config(tiny_llama, training={"batch_size": 4, "capture_step": True})
    )
    r = run_bench(cfg, data_dir=data_dir, steps=4, warmup=2, parts=("train",), peers="none")
    for mode in ("baseline", "schemabank_stage3"):
        x = r["training"][mode]
        assert x["steps"] == 4 and x["step_ms"] > 0 and x["new_shapes_timed"] == 0
    assert Counted.replayed >= 2 * 4  # every timed step of both trainers replays a graph


def test_bench_releases_each_trainers_captured_steps_before_the_next(
    tiny_llama, data_dir, monkeypatch
):
    """With captured steps (one model after another on a GPU), each of our trainers releases
    its graphs once its timed and profiled steps are done, before the next model steps."""
    from test_capture import EagerGraph

    from schemabank.study import bench

    monkeypatch.setattr(training.Trainer, "step_graph", EagerGraph)
    monkeypatch.setattr(bench, "times_contiguously", lambda device, compiled: compiled)
    events = []
    step, release = bench._Ours.step, training.Trainer.release_step_graphs
    monkeypatch.setattr(
        bench._Ours,
        "step",
        lambda self, b: events.append(("step", self.stage.key)) or step(self, b),
    )

    def released(self):
        events.append(("release", len(self._step_graphs)))
        release(self)

    monkeypatch.setattr(training.Trainer, "release_step_graphs", released)
    cfg = config_from_dict(
        tiny_config(tiny_llama, training={"batch_size": 4, "capture_step": True})
    )
    r = run_bench(cfg, data_dir=data_dir, steps=4, warmup=2, parts=("train",), peers="none")
    releases = [i for i, e in enumerate(events) if e[0] == "release"]
    assert len(releases) == 2 and releases[1] == len(events) - 1
    first = {e[1] for e in events[: releases[0]]}
    second = {e[1] for e in events[releases[0] + 1 : releases[1]]}
    assert len(first) == len(second) == 1 and first != second
    assert all(events[i][1] > 0 for i in releases)  # each had graphs to release
    assert r["training"]["baseline"]["timing"] == "contiguous"


def test_times_contiguously_only_for_compiled_models_on_a_gpu():
    from schemabank.study.bench import times_contiguously

    assert times_contiguously(torch.device("cuda"), True)
    assert not times_contiguously(torch.device("cuda"), False)
    assert not times_contiguously(torch.device("cpu"), True)


def test_bench_peers_replay_the_same_batches(tiny_llama, tmp_path, monkeypatch):
    """Both peers (the compiled one through the fast aot_eager backend) run on the batches our
    trainers run on, in the same order, and the ratios are those of the reported step times.
    Our trainers compile too (training.compile, layers scope) and report their compilation."""
    monkeypatch.setattr(training, "COMPILE_BACKEND", "aot_eager")
    keys = {"batch_size": 2, "compile": True, "compile_scope": "layers"}
    cfg = config_from_dict(tiny_config(tiny_llama, training=keys))
    r = run_bench(
        cfg,
        data_dir=same_length_data(tmp_path),
        steps=2,
        warmup=2,
        parts=("train",),
        peers="all",
        compile_backend="aot_eager",
    )
    t = r["training"]
    models = ("baseline", "schemabank_stage3", "peft_eager", "peft_compiled")
    assert r["settings"]["peers"] == ["peft_eager", "peft_compiled"]
    assert len({t[m]["batches_sha256"] for m in models}) == 1
    for m in models:
        x = t[m]
        assert x["steps"] == 2 and x["warmup_steps"] == 3  # the shape's third visit added
        assert x["step_ms"] > 0 and x["tokens_per_s"] > 0 and x["warmup_s"] > 0
        assert x["tokens_per_step"] == t["baseline"]["tokens_per_step"]
        assert x["batch_shapes"] == 1 and x["new_shapes_timed"] == 0
    c = t["peft_compiled"]
    assert c["compile_backend"] == "aot_eager" and c["compile_mode"] == "default"
    assert c["compile_s"] == c["warmup_s"] - 3 * c["step_ms"] / 1000
    assert t["peft_eager"]["lora_rank"] == c["lora_rank"] == 2
    ms = {m: t[m]["step_ms"] for m in models}
    assert t["baseline_over_peft_eager_step_time"] == ms["baseline"] / ms["peft_eager"]
    assert t["baseline_over_peft_compiled_step_time"] == ms["baseline"] / ms["peft_compiled"]
    assert t["stage3_over_peft_compiled_step_time"] == ms["schemabank_stage3"] / ms["peft_compiled"]
    for m in ("baseline", "schemabank_stage3"):
        x = t[m]
        assert x["compile_scope"] == "layers"
        assert x["compile_s"] == x["warmup_s"] - x["warmup_steps"] * x["step_ms"] / 1000
    text = "\n".join(format_bench(r))
    assert "stage-3 / peft_compiled step time" in text and "backend aot_eager" in text
    assert "training.compile (scope layers) added" in text
    assert "warning" not in text


def test_peer_is_the_baselines_lora_and_trains(tiny_llama, data_dir):
    """A peer starts from the baseline's LoRA weights (rank and initialisation) and its step,
    on batches drawn from a Trainer's data path, trains them."""
    cfg = config_from_dict(tiny_config(tiny_llama, "baseline", training={"batch_size": 2}))
    info = resolve_base_model(cfg.model.base_model)
    device = torch.device("cpu")
    tok, base = load_base_model(info, device, torch.float32)
    seed_everything(cfg.experiment.seed)
    model, banks, rank = build_adapter(base, cfg)
    trainer = Trainer(cfg, model, banks, tok, load_gsm8k("train", data_dir), device, False)
    batches = draw_batches(trainer, BASELINE, 2)
    assert [len(b.micro) for b in batches] == [1, 1] and batches[0].shares == [1.0]
    assert batches[0].micro[0][1]["labels"].shape == batches[0].micro[0][1]["input_ids"].shape

    peer = make_peer(cfg, info, device, False, rank)
    lora = {k: v for k, v in model.state_dict().items() if "lora_" in k}
    theirs = {k: v for k, v in peer.model.state_dict().items() if "lora_" in k}
    assert lora.keys() == theirs.keys() and all(torch.equal(lora[k], theirs[k]) for k in lora)
    peer.begin()
    for b in batches:
        peer.step(b)
    after = {k: v for k, v in peer.model.state_dict().items() if "lora_" in k}
    assert any(not torch.equal(lora[k], after[k]) for k in lora)
    assert [shape for _, shape in peer.seen] == [
        tuple(b.micro[0][1]["input_ids"].shape) for b in batches
    ]


def test_bench_cli_writes_json(tiny_llama, data_dir, tmp_path, capsys):
    import yaml

    cfg = tmp_path / "cfg.yaml"
    cfg.write_text(yaml.safe_dump(tiny_config(tiny_llama)))
    out = tmp_path / "bench.json"
    rc = main(
        [
            "bench",
            "--config",
            str(cfg),
            "--data-dir",
            str(data_dir),
            "--steps",
            "2",
            "--warmup",
            "0",
            "--only",
            "train",
            "--output",
            str(out),
        ]
    )
    assert rc == 0
    r = json.loads(out.read_text())
    assert "training" in r and "evaluation" not in r
    t = r["training"]
    added = {"warmup_s", "batch_shapes", "new_shapes_timed", "batches_sha256"}
    assert added <= t["baseline"].keys() and added <= t["peft_eager"].keys()
    assert t["peft_eager"]["lora_rank"] == 2 and "baseline_over_peft_eager_step_time" in t
    assert "stage-3 / baseline step time" in capsys.readouterr().out
    argv = ["bench", "--config", str(cfg), "--data-dir", str(data_dir), "--steps", "2"]
    rc = main([*argv, "--warmup", "0", "--only", "train", "--peers", "none", "--output", str(out)])
    assert rc == 0
    r = json.loads(out.read_text())
    assert r["settings"]["peers"] == [] and r["settings"]["compile_mode"] is None
    assert not [k for k in r["training"] if "peft" in k]
    assert "peft_eager" not in capsys.readouterr().out
    assert main(["bench", "--config", str(cfg), "--steps", "0"]) == 1
    assert "--steps" in capsys.readouterr().err


def test_bench_times_a_compiled_decoder_twice(tiny_llama, data_dir):
    """With eval.compile_decoder the GSM8K evaluation runs twice (the first pass compiles):
    the second's time and how many answers it shares with the first are reported."""
    cfg = config_from_dict(
        tiny_config(
            tiny_llama,
            eval={"decoder": "static", "compile_decoder": True, "decoder_attention": "grouped"},
        )
    )
    r = run_bench(cfg, data_dir=data_dir, limit=3, parts=("eval",))
    g = r["evaluation"]["gsm8k"]
    assert g["again"]["same_answers"] == 3 and g["again"]["generation_s"] > 0
    assert r["settings"]["decoder_attention"] == "grouped" and "training" not in r
    text = "\n".join(format_bench(r))
    assert "attention grouped" in text and "3 of 3 answers as the first pass" in text


def test_cover_shapes_warms_up_every_timed_shape():
    """The warmup meets every shape ``visits`` times (a CUDA graph runs once, is recorded, then
    replayed): each shape short of that gains its first batch (the warmup's, else the first
    timed one) as often as it lacks, in the order the shapes first appear; the timed batches
    stay as they are; no warmup steps means no additions."""

    def batch(*lengths, answers=100):
        micro = [([0], {"input_ids": torch.zeros(2, n, dtype=torch.long)}) for n in lengths]
        return Batch(examples=[], targets=torch.zeros(0), n_ans=[answers], micro=micro, shares=[])

    a, a2, b, c, b2, ab = batch(64), batch(64), batch(128), batch(192), batch(128), batch(64, 128)
    warm, timed = cover_shapes([a, a2], [b, a, c, b2, ab])
    assert timed == [b, a, c, b2, ab]
    assert warm == [a, a2, a, b, b, b, c, c, c, ab, ab, ab]
    m = training.ANSWER_POSITION_MULTIPLE
    assert [batch_shape(x) for x in warm[2::3]] == [
        (((2, 64), m),),
        (((2, 128), m),),
        (((2, 192), m),),
        (((2, 64), m), ((2, 128), m)),
    ]
    # a captured step's graph also depends on the answer tokens (padded to a multiple of m)
    more = batch(64, answers=m + 88)
    assert batch_shape(more) == (((2, 64), 2 * m),)
    assert batch_shape(batch(64, answers=m)) == batch_shape(a)
    assert cover_shapes([a] * 3, [more]) == ([a] * 3 + [more] * 3, [more])
    assert cover_shapes([a], [b], visits=1) == ([a, b], [b])  # the rule before: once
    assert cover_shapes([], [b, c]) == ([], [b, c])
    assert cover_shapes([a, b, c] * 3, [b2]) == ([a, b, c] * 3, [b2])


def test_step_times_script(tmp_path, capsys):
    """scripts/step_times.py: each step's time from tokens / tokens_per_s, per stage, with the
    slow steps named; a missing log is one line and a non-zero exit."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "step_times.py"
    spec = importlib.util.spec_from_file_location("step_times", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    seconds = {"schema_train": [5.0, 0.06, 0.05, 0.07], "joint_finetune": [0.06, 0.5]}
    lines, step = [], 0
    for stage, times in seconds.items():
        for t in times:
            step += 1
            lines.append({"step": step, "stage": stage, "tokens": 600, "tokens_per_s": 600 / t})
    run = tmp_path / "run"
    run.mkdir()
    (run / "training_log.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    stages = module.step_times(lines)
    assert [s for s, _ in stages["joint_finetune"]] == [5, 6]
    r = module.summary(stages["schema_train"], 0.2)
    assert r["median_ms"] == pytest.approx(65.0) and r["total_s"] == pytest.approx(5.18)
    assert r["slow_steps"] == [(1, pytest.approx(5.0))] and r["slow_s"] == pytest.approx(5.0)
    capsys.readouterr()
    assert module.main([str(run)]) == 0
    out = capsys.readouterr().out
    assert "6 steps, 5.7 s" in out and "over 0.2 s: 1 steps, 5.0 s: 1 (5.0 s)" in out
    assert "6 (0.5 s)" in out
    with pytest.raises(SystemExit, match="training log not found"):
        module.main([str(tmp_path / "absent")])


def test_step_shapes_script_counts_what_a_captured_step_meets(tiny_llama, data_dir, capsys):
    """scripts/step_shapes.py: every step of the run counted once under its (stage, batch shape,
    answer positions), lengths padded to the multiple, answer positions to theirs (none in stage
    1, which has no LM loss); a coarser answer multiple never gives more shapes; a broken
    config is one line and a non-zero exit."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "step_shapes.py"
    spec = importlib.util.spec_from_file_location("step_shapes", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    cfg = config_from_dict(tiny_config(tiny_llama))
    tok, _ = load_base_model(
        resolve_base_model(str(tiny_llama)), torch.device("cpu"), torch.float32
    )
    train = load_gsm8k("train", data_dir)
    r = module.step_shapes(cfg, tok, train, 16, 8)
    shapes = r["shapes"]
    assert sum(shapes.values()) == cfg.training.total_steps
    for (stage, (batch, length), positions), _ in shapes.items():
        assert batch == cfg.training.batch_size and length % 16 == 0
        assert (positions is None) == (stage == "router_pretrain")
        assert positions is None or positions % 8 == 0
    assert r["padded_answer_positions"] >= r["answer_positions"] > 0
    coarse = module.step_shapes(cfg, tok, train, 16, 4096)["shapes"]
    assert {p for _, _, p in coarse} == {None, 4096} and len(coarse) <= len(shapes)
    assert module.report(r)[0].startswith(f"{len(shapes)} step shapes")
    with pytest.raises(SystemExit, match="error: "):
        module.main(["--config", str(data_dir / "absent.yaml")])


def test_padding_script_rounds_lengths_as_the_compiled_step_pads():
    """batching.padded_tokens with ``multiple`` (what scripts/padding.py counts): without one the
    tokens as before; with one, each micro-batch's length rounded up to it
    (training.pad_to_multiple_of), the lengths the script lists."""
    import importlib.util

    from schemabank.batching import padded_tokens

    path = Path(__file__).resolve().parents[1] / "scripts" / "padding.py"
    spec = importlib.util.spec_from_file_location("padding", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    lengths = [70, 130, 5, 64, 200, 9]
    for world, micro in ((1, None), (2, None), (1, 2), (2, 2)):
        assert padded_tokens(lengths, world, micro, 1) == padded_tokens(lengths, world, micro)
    assert module.padded_lengths(lengths, None, 64) == [256]
    assert padded_tokens(lengths, 1, None, 64) == [6 * 256]
    assert module.padded_lengths([70, 130, 5, 64], 2, 64) == [64, 192]  # ascending lengths


def test_cache_report_script(tmp_path, capsys):
    """scripts/cache_report.py on two logs in torch's format: the counts per cache, a miss whose
    key the first run had, and a new key's differing parts, the graph's code as a diff; a
    missing log is one line and a non-zero exit."""
    import importlib.util

    path = Path(__file__).resolve().parents[1] / "scripts" / "cache_report.py"
    spec = importlib.util.spec_from_file_location("cache_report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    h = "a" * 51  # a part's hash (its value here does not matter, only equality)

    def details(at: str, key: str, parts: dict[str, tuple[str, list[str]]]) -> list[str]:
        head = f"V1202 {at} 7 torch/_inductor/codecache.py:1646] [0/0] "
        bar = "run:   0%|          | 0/60 [00:00<?, ?step/s]"  # a progress bar before the log line
        lines = [bar + head + f"FX graph cache hash details for key {key}:"]
        for name, (hash_, value) in parts.items():
            lines.append(head + f"[{hash_}] {name}: {value[0]}")
            lines += [head + more for more in value[1:]]
        return lines

    def event(at: str, text: str) -> str:
        return f"I1202 {at} 7 torch/_inductor/codecache.py:2316] [0/1] {text}"

    code1 = ["GraphModule()", "def forward(self, x):", "    y = x * 2.0", "    return (y,)"]
    code2 = ["GraphModule()", "def forward(self, x):", "    y = x * 3.0", "    return (y,)"]
    first = [
        *details("10:00:00.1", "fkeyone", {"gm": ("b" * 51, code1), "cudagraphs": (h, ["True"])}),
        event("10:00:00.2", "fx graph cache miss for key fkeyone"),
        event("10:00:01.0", "fx graph cache miss for key fkeytwo"),
        "I1202 10:00:02.0 7 torch/_functorch/_aot_autograd/autograd_cache.py:1077] [1/0] "
        "Bypassing autograd cache due to: Unsupported call_function target _enter_autocast",
        "a progress bar line, not the logger's",
    ]
    second = [
        *details("11:00:00.1", "fkeynew", {"gm": ("c" * 51, code2), "cudagraphs": (h, ["True"])}),
        event("11:00:00.2", "fx graph cache miss for key fkeynew"),
        event("11:00:01.0", "fx graph cache miss for key fkeytwo"),
        event("11:00:02.0", "fx graph cache hit for key fkeythree"),
    ]
    (tmp_path / "a.log").write_text("\n".join(first) + "\n")
    (tmp_path / "b.log").write_text("\n".join(second) + "\n")
    events, found = module.read(tmp_path / "a.log")
    assert [(c, o) for c, o, _, _ in events] == [("fx", "miss"), ("fx", "miss"), ("aot", "bypass")]
    assert found["fkeyone"]["parts"]["gm"][1].endswith("return (y,)")
    capsys.readouterr()
    module.main(tmp_path / "a.log", tmp_path / "b.log")
    out = capsys.readouterr().out
    assert "  fx miss: 2\n  fx bypass: 0\n  aot hit: 0\n  aot miss: 0\n  aot bypass: 1" in out
    assert "bypass x1: Unsupported call_function target _enter_autocast" in out
    assert "second run's misses: 2" in out
    assert "fkeytwo: the first run had this key" in out
    assert "fkeynew: new key; against the first run's closest graph, 1 parts differ" in out
    assert "-    y = x * 2.0" in out and "+    y = x * 3.0" in out
    assert "cudagraphs" not in out.split("fkeynew")[1]  # equal parts are not listed
    # a part whose hash differs while the log prints the same text for it
    same = details(
        "12:00:00.1", "fkeysame", {"gm": ("b" * 51, code1), "cudagraphs": ("d" * 51, ["True"])}
    )
    (tmp_path / "c.log").write_text(
        "\n".join([*same, event("12:00:00.2", "fx graph cache miss for key fkeysame")]) + "\n"
    )
    module.main(tmp_path / "a.log", tmp_path / "c.log")
    assert "cudagraphs: the same text in both logs (True...)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="no such log"):
        module.main(tmp_path / "absent.log", tmp_path / "b.log")
