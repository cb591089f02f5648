"""Loading, validating, overriding and dumping configs (SPEC section 4): the shipped YAML files,
and every kind of invalid input, each of which must raise a one-line ConfigError naming the key."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from schemabank.config import Config, config_from_dict, dump_config, for_device, load_config
from schemabank.errors import ConfigError, SchemaBankError

REPO = Path(__file__).resolve().parents[1]
CONFIG_FILES = sorted(REPO.glob("configs/**/*.yaml"))
STAGE1 = "training.stages.stage1_router_pretrain"
SCHEDULE_KEY = f"{STAGE1}.tag_curriculum.dropout_schedule"


def config_id(path: Path) -> str:
    return str(path.relative_to(REPO / "configs"))


def seed_schemabank() -> dict:
    return yaml.safe_load((REPO / "configs" / "schemabank.yaml").read_text())


def write_yaml(tmp_path: Path, data, name: str = "cfg.yaml") -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


def config_error(path, overrides=None) -> str:
    """The message of the ConfigError that loading must raise; it must be one line."""
    with pytest.raises(ConfigError) as info:
        load_config(path, overrides)
    message = str(info.value)
    assert "\n" not in message and "\r" not in message, message
    return message


# ---------------------------------------------------------------------------------------------
# The shipped configs


def test_config_files_found():
    names = {config_id(p) for p in CONFIG_FILES}
    assert {
        "baseline.yaml",
        "schemabank.yaml",
        "smollm2/baseline.yaml",
        "smollm2/schemabank.yaml",
    } <= names


@pytest.mark.parametrize("path", CONFIG_FILES, ids=config_id)
def test_every_config_loads(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)
    assert cfg.experiment.mode in ("baseline", "schemabank")
    if cfg.experiment.mode == "schemabank":
        assert sum(cfg.stage_steps().values()) == cfg.training.total_steps


@pytest.mark.parametrize("path", CONFIG_FILES, ids=config_id)
def test_every_config_round_trips_through_dump(path, tmp_path):
    cfg = load_config(path)
    text = dump_config(cfg)
    again = load_config(write_yaml(tmp_path, text))
    assert again == cfg
    assert dump_config(again) == text


def test_defaults_are_valid_and_match_the_seed():
    cfg = load_config(None)
    assert cfg == Config()
    assert cfg.stage_steps() == {
        "stage1_router_pretrain": 250,
        "stage2_schema_train": 500,
        "stage3_joint_finetune": 250,
    }


def test_seed_baseline_config():
    cfg = load_config(REPO / "configs" / "baseline.yaml")
    assert cfg.experiment.mode == "baseline"
    assert cfg.model.base_model == "Qwen/Qwen2-0.5B"
    assert (cfg.lora.r, cfg.lora.lora_alpha) == (8, 16)
    t = cfg.training
    assert (t.total_steps, t.batch_size, t.learning_rate) == (1000, 1, 1e-4)


def test_seed_schemabank_config():
    cfg = load_config(REPO / "configs" / "schemabank.yaml")
    assert cfg.experiment.mode == "schemabank"
    assert cfg.model.base_model == "Qwen/Qwen2-0.5B"
    assert (cfg.lora.r, cfg.lora.lora_alpha) == (8, 16)
    b = cfg.schemabank
    assert (b.num_schemas, b.rank, b.topk) == (32, 16, 2)
    assert (b.lambda_balance, b.lambda_z) == (0.0, 0.0)  # seed-faithful: no balance or z-loss
    t = cfg.training
    assert (t.total_steps, t.batch_size, t.learning_rate) == (1000, 1, 1e-4)
    assert list(cfg.stage_steps().values()) == [250, 500, 250]
    schedule = t.stages.stage1_router_pretrain.tag_curriculum.dropout_schedule
    assert schedule == [0.0, 0.75, 0.5, 0.25]


def test_baseline_and_schemabank_share_lora_and_training():
    base = load_config(REPO / "configs" / "baseline.yaml")
    bank = load_config(REPO / "configs" / "schemabank.yaml")
    assert base.lora == bank.lora
    assert base.training == bank.training
    assert base.experiment.seed == bank.experiment.seed


@pytest.mark.parametrize("mode", ["baseline", "schemabank"])
def test_smollm2_configs_are_the_seed_on_the_embedded_model(mode):
    seed = load_config(REPO / "configs" / f"{mode}.yaml")
    small = load_config(REPO / "configs" / "smollm2" / f"{mode}.yaml")
    assert small.model.base_model == "smollm2-135m-instruct"
    assert small.experiment.mode == mode
    a, b = seed.to_dict(), small.to_dict()
    for d in (a, b):
        del d["experiment"]["name"], d["model"]["base_model"]
    assert a == b


# ---------------------------------------------------------------------------------------------
# Invalid configs


def with_change(key: str, value) -> dict:
    """The seed schemabank config with ``key`` (dotted) set to ``value``."""
    data = copy.deepcopy(seed_schemabank())
    *parents, last = key.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value
    return data


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("trainig", {"total_steps": 10}, "trainig: unknown key"),
        ("schemabank.num_schema", 32, "schemabank.num_schema: unknown key"),
        (
            "training.stages.stage2_schema_train.foo",
            1,
            "training.stages.stage2_schema_train.foo: unknown key",
        ),
        ("training.total_steps", "ten", "training.total_steps: must be an integer"),
        ("training.total_steps", 10.5, "training.total_steps: must be an integer"),
        ("schemabank.num_schemas", True, "schemabank.num_schemas: must be an integer"),
        ("lora.r", False, "lora.r: must be an integer"),
        ("training.learning_rate", True, "training.learning_rate: must be a number"),
        ("training.learning_rate", "fast", "training.learning_rate: must be a number"),
        ("experiment.name", 7, "experiment.name: must be a string"),
        ("schemabank.layers", -1, "schemabank.layers: must be a list of integers"),
        ("schemabank.layers", [-1, "x"], "schemabank.layers: must be a list of integers"),
        ("training", 5, "training: must be a mapping"),
        ("training.stages", [250, 500, 250], "training.stages: must be a mapping"),
        ("schemabank.topk", 33, "schemabank.topk: must be between 1 and num_schemas (32)"),
        ("schemabank.topk", 0, "schemabank.topk"),
        ("schemabank.num_schemas", 4, "schemabank.num_schemas: must be >= 8"),
        ("training.stages.stage2_schema_train.steps", 400, "stage steps must add up"),
        ("training.total_steps", 999, "training.total_steps"),
        (SCHEDULE_KEY, [0.0, 1.5], f"{SCHEDULE_KEY}: every probability must be in [0, 1]"),
        (SCHEDULE_KEY, [-0.1, 0.5], f"{SCHEDULE_KEY}: every probability must be in [0, 1]"),
        (SCHEDULE_KEY, [], f"{SCHEDULE_KEY}: must not be empty"),
        (SCHEDULE_KEY, [0.0, "x"], f"{SCHEDULE_KEY}: must be a list of numbers"),
        ("experiment.mode", "lora_only", "experiment.mode: must be one of baseline, schemabank"),
        ("training.stages.stage1_router_pretrain.steps", -5, f"{STAGE1}.steps: must be >= 0"),
        ("training.learning_rate", 0.0, "training.learning_rate: must be > 0"),
        ("lora.lora_dropout", 1.0, "lora.lora_dropout"),
        ("training.lr_scheduler", "step", "training.lr_scheduler"),
        ("training.compile_mode", "fast", "training.compile_mode: must be null or one of default,"),
        ("training.compile_region_layers", 0, "training.compile_region_layers: must be >= 1"),
        ("training.attention_backend", "fa3", "training.attention_backend: must be null or one"),
        ("eval.limit", 0, "eval.limit"),
        ("experiment.ablation_of", "a b", "experiment.ablation_of: must name another run"),
        ("experiment.ablation_of", "schemabank_gsm8k", "experiment.ablation_of: must name another"),
    ],
)
def test_invalid_value_names_the_key(tmp_path, key, value, fragment):
    message = config_error(write_yaml(tmp_path, with_change(key, value)))
    assert fragment in message
    assert "cfg.yaml" in message  # names the file too


def test_fused_lora_a_needs_lora_without_dropout(tmp_path):
    data = with_change("training.fuse_lora_a", True)
    data.setdefault("lora", {})["lora_dropout"] = 0.1
    assert "training.fuse_lora_a: needs lora.lora_dropout 0" in config_error(
        write_yaml(tmp_path, data)
    )
    data["lora"]["lora_dropout"] = 0.0
    assert load_config(write_yaml(tmp_path, data)).training.fuse_lora_a


def test_ablation_of_is_recorded_in_results():
    from schemabank.results import _experiment

    cfg = load_config(REPO / "configs" / "schemabank.yaml", ["experiment.ablation_of=full"])
    assert _experiment(cfg) == {
        "name": "schemabank_gsm8k",
        "seed": 42,
        "mode": "schemabank",
        "ablation_of": "full",
    }
    plain = load_config(REPO / "configs" / "schemabank.yaml")
    assert "ablation_of" not in _experiment(plain)  # results of other runs keep their shape


def test_stage_sum_message_shows_the_arithmetic(tmp_path):
    data = with_change("training.stages.stage2_schema_train.steps", 400)
    message = config_error(write_yaml(tmp_path, data))
    assert "250 + 400 + 250 = 900" in message
    assert "total_steps = 1000" in message


def test_stage_sum_is_not_checked_in_baseline_mode(tmp_path):
    cfg = load_config(REPO / "configs" / "baseline.yaml", ["training.total_steps=10"])
    assert cfg.training.total_steps == 10


def test_int_accepted_for_a_float_field(tmp_path):
    cfg = load_config(write_yaml(tmp_path, with_change("training.learning_rate", 1)))
    assert cfg.training.learning_rate == 1.0
    assert isinstance(cfg.training.learning_rate, float)


def test_several_problems_in_one_message(tmp_path):
    data = with_change("schemabank.topk", 40)
    data["lora"]["r"] = 0
    data["training"]["stages"]["stage2_schema_train"]["steps"] = 1
    data["training"]["stages"]["stage1_router_pretrain"]["tag_curriculum"] = {
        "dropout_schedule": [0.0, 2.0]
    }
    message = config_error(write_yaml(tmp_path, data))
    for key in ("lora.r", "schemabank.topk", "stage steps must add up", SCHEDULE_KEY):
        assert key in message
    assert message.count(";") == 3


def test_bad_mode_skips_the_stage_checks(tmp_path):
    # With an unknown mode, the schemabank-only checks (stage sum, schedule) do not pile up.
    data = with_change("experiment.mode", "bad")
    data["schemabank"]["topk"] = 40
    data["training"]["total_steps"] = 7
    message = config_error(write_yaml(tmp_path, data))
    assert "experiment.mode" in message and "schemabank.topk" in message
    assert "stage steps" not in message


def test_several_structural_problems_in_one_message(tmp_path):
    data = with_change("training.total_steps", "ten")
    data["lora"]["rank"] = 8
    data["bogus"] = {}
    message = config_error(write_yaml(tmp_path, data))
    for fragment in ("training.total_steps: must be", "lora.rank: unknown key", "bogus: unknown"):
        assert fragment in message


def test_missing_file(tmp_path):
    path = tmp_path / "nope.yaml"
    message = config_error(path)
    assert "not found" in message and str(path) in message


def test_malformed_yaml_names_the_line(tmp_path):
    text = "experiment:\n  name: x\n  mode: [unclosed\ntraining:\n  total_steps: 3\n"
    message = config_error(write_yaml(tmp_path, text))
    assert "not valid YAML" in message
    assert "line 4" in message


def test_bad_indentation_names_the_line(tmp_path):
    message = config_error(write_yaml(tmp_path, "experiment:\n  name: x\n   seed: 3\n"))
    assert "line 3" in message


def test_top_level_list_is_rejected(tmp_path):
    message = config_error(write_yaml(tmp_path, "- experiment\n- training\n"))
    assert "top level must be a mapping" in message


def test_top_level_scalar_is_rejected(tmp_path):
    assert "top level must be a mapping" in config_error(write_yaml(tmp_path, "42\n"))


def test_empty_file_is_refused(tmp_path):
    """An empty config would silently start a 1,000-step run of every default."""
    for text in ("", "# only a comment\n"):
        message = config_error(write_yaml(tmp_path, text))
        assert "is empty" in message and "1,000 steps" in message
    assert load_config(None) == Config()  # the defaults, asked for in code


def test_unknown_key_from_set_is_blamed_on_the_set(tmp_path):
    message = config_error(REPO / "configs" / "baseline.yaml", ["training.foo=1"])
    assert message.startswith("invalid --set: training.foo: unknown key")
    assert "baseline.yaml" not in message
    both = write_yaml(tmp_path, "training: {bar: 2}\n")
    message = config_error(both, ["newsection.x=1", "training.total_steps=ten"])
    assert f"invalid config {both}: training.bar: unknown key" in message
    assert "--set newsection: unknown key" in message
    assert "--set training.total_steps: must be an integer" in message


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.yaml"
    path.write_bytes("experiment:\n  name: caf\xe9\n".encode("latin-1"))
    assert "UTF-8" in config_error(path)


def test_config_error_is_a_schemabank_error():
    assert issubclass(ConfigError, SchemaBankError)


# ---------------------------------------------------------------------------------------------
# --set overrides


def test_overrides_applied():
    cfg = load_config(
        REPO / "configs" / "schemabank.yaml",
        [
            "training.total_steps=10",
            f"{STAGE1}.steps=4",
            "training.stages.stage2_schema_train.steps=3",
            "training.stages.stage3_joint_finetune.steps=3",
            f"{STAGE1}.tag_curriculum.dropout_schedule=[0.0, 0.5]",
            "schemabank.layers=[-1, -2]",
            "eval.limit=null",
            "experiment.name=run1",
            "training.learning_rate=3.0e-4",
        ],
    )
    assert cfg.training.total_steps == 10
    assert list(cfg.stage_steps().values()) == [4, 3, 3]
    assert cfg.training.stages.stage1_router_pretrain.tag_curriculum.dropout_schedule == [0.0, 0.5]
    assert cfg.schemabank.layers == [-1, -2]
    assert cfg.eval.limit is None
    assert cfg.experiment.name == "run1"
    assert cfg.training.learning_rate == 3e-4


def test_overrides_later_wins_and_create_sections():
    cfg = load_config(None, ["eval.limit=5", "eval.limit=7", "data.dir=/tmp/x"])
    assert cfg.eval.limit == 7
    assert cfg.data.dir == "/tmp/x"


def test_override_breaking_stage_sum_is_rejected():
    message = config_error(REPO / "configs" / "schemabank.yaml", ["training.total_steps=10"])
    assert "training.stages" in message and "total_steps = 10" in message


@pytest.mark.parametrize(
    ("override", "fragment"),
    [
        ("nokey", "'nokey'"),
        ("=5", "'=5'"),
        ("training.foo=1", "training.foo: unknown key"),
        ("newsection.x=1", "newsection: unknown key"),
        ("training.total_steps=ten", "training.total_steps: must be an integer"),
        ("lora.r.x=1", "lora.r is not a section"),
        ("experiment.mode=[a", "not valid YAML"),
    ],
)
def test_bad_override(override, fragment):
    message = config_error(REPO / "configs" / "baseline.yaml", [override])
    assert fragment in message


def test_dump_round_trip_after_overrides(tmp_path):
    cfg = load_config(
        REPO / "configs" / "baseline.yaml",
        ["eval.limit=50", "lora.target_modules=[q_proj, v_proj]", "data.dir=data"],
    )
    text = dump_config(cfg)
    assert isinstance(yaml.safe_load(text), dict)
    again = load_config(write_yaml(tmp_path, text))
    assert again == cfg
    assert again.lora.target_modules == ["q_proj", "v_proj"]


def test_exponent_without_dot_is_a_float(tmp_path):
    """PyYAML (YAML 1.1) would read 1e-4 as a string; configs and --set read it as a number."""
    path = tmp_path / "cfg.yaml"
    path.write_text("training:\n  learning_rate: 3e-4\n")
    assert load_config(path).training.learning_rate == 3e-4
    assert load_config(path, ["training.learning_rate=1e-5"]).training.learning_rate == 1e-5


def test_run_name_must_be_a_plain_folder_name(tmp_path):
    for bad in ("a\nb", "../x", "a/b", ""):
        with pytest.raises(ConfigError, match="experiment.name") as exc:
            config_from_dict({"experiment": {"name": bad}})
        assert "\n" not in str(exc.value)


def test_the_demo_run_stays_out_of_the_committed_results():
    """`make demo` trains configs/smoke.yaml: its run goes to runs/, which git ignores, so the
    committed study in results/ (and the table in docs/results.md CI checks against it) stays untouched."""
    from pathlib import Path

    from schemabank.config import load_config

    root = Path(__file__).resolve().parents[1]
    assert load_config(root / "configs" / "smoke.yaml").output_dir == "runs"
    assert "/runs/" in (root / ".gitignore").read_text().splitlines()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_config_holds_only_what_it_changes_from_its_base(tmp_path):
    _write(
        tmp_path / "parent.yaml",
        "experiment: {name: parent, mode: schemabank}\n"
        "lora: {r: 16, target_modules: [q_proj, v_proj, o_proj]}\n"
        "training: {batch_size: 8, stages: {stage1_router_pretrain: {steps: 100, learning_rate: 0.01}, "
        "stage2_schema_train: {steps: 600}, stage3_joint_finetune: {steps: 300}}}\n",
    )
    (tmp_path / "sub").mkdir()
    _write(
        tmp_path / "sub" / "child.yaml",
        "base: ../parent.yaml\nexperiment: {name: child}\nlora: {target_modules: [q_proj]}\n"
        "training: {stages: {stage1_router_pretrain: {steps: 50}, stage2_schema_train: {steps: 650}}}\n",
    )
    _write(tmp_path / "sub" / "grandchild.yaml", "base: child.yaml\nexperiment: {name: g}\n")
    child = load_config(tmp_path / "sub" / "child.yaml")
    assert child.experiment.name == "child" and child.experiment.mode == "schemabank"
    assert child.lora.r == 16 and child.lora.target_modules == ["q_proj"]  # a list is replaced
    s1 = child.training.stages.stage1_router_pretrain
    assert (s1.steps, s1.learning_rate) == (50, 0.01)  # a mapping is merged key by key
    assert child.training.batch_size == 8
    grand = load_config(tmp_path / "sub" / "grandchild.yaml", ["training.batch_size=4"])
    assert grand.experiment.name == "g" and grand.training.batch_size == 4
    assert grand.lora.target_modules == ["q_proj"]
    assert "\nbase:" not in "\n" + dump_config(grand)  # a run's config.yaml is the resolved config


def test_bad_bases_are_one_line_errors(tmp_path):
    _write(tmp_path / "a.yaml", "base: b.yaml\n")
    _write(tmp_path / "b.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="base a.yaml leads back to itself"):
        load_config(tmp_path / "a.yaml")
    _write(tmp_path / "c.yaml", "base: missing.yaml\n")
    with pytest.raises(ConfigError, match="config file not found: .*missing.yaml"):
        load_config(tmp_path / "c.yaml")
    _write(tmp_path / "d.yaml", "base: [a.yaml]\n")
    with pytest.raises(ConfigError, match="base must be the path of another config"):
        load_config(tmp_path / "d.yaml")
    _write(tmp_path / "e.yaml", "- a list\n")
    _write(tmp_path / "f.yaml", "base: e.yaml\n")
    with pytest.raises(ConfigError, match="the top level must be a mapping"):
        load_config(tmp_path / "f.yaml")


# Keys that a committed run may differ in from its config without changing a result: greedy
# generation does not depend on the evaluation batch (tested in test_evaluation), and the output
# folder is where the run was written.
NOT_RESULT_KEYS = {("eval", "batch_size"), ("output_dir",)}


def _mismatches(resolved: dict, recorded: dict, path: tuple = ()) -> list[str]:
    """The keys of a run's recorded config whose value the resolved config does not have."""
    out = []
    for key, value in recorded.items():
        here = (*path, key)
        if here in NOT_RESULT_KEYS:
            continue
        if key not in resolved:
            out.append(".".join(here) + " is not a config key any more")
        elif isinstance(value, dict) and isinstance(resolved[key], dict):
            out += _mismatches(resolved[key], value, here)
        elif resolved[key] != value:
            out.append(f"{'.'.join(here)}: {resolved[key]!r} in the config, {value!r} in the run")
    return out


def test_study_configs_resolve_to_the_committed_runs_configs():
    """Every committed run of a study config was made with what that config resolves to today
    (``base:`` chains included): keys added since then aside, no value differs."""
    import json

    checked = 0
    for path in CONFIG_FILES:
        for run in sorted(REPO.glob(f"results/{path.stem}_seed*/results.json")):
            recorded = json.loads(run.read_text())["config"]
            seed = recorded["experiment"]["seed"]
            resolved = load_config(path, [f"experiment.seed={seed}"]).to_dict()
            assert _mismatches(resolved, recorded) == [], run
            checked += 1
    assert checked >= 40


def test_a_config_built_in_python_is_checked_before_a_run(tmp_path, monkeypatch):
    from schemabank import training
    from schemabank.config import TrainingConfig

    monkeypatch.setattr(training, "load_base_model", lambda *a: pytest.fail("the model was loaded"))
    bad = Config(training=TrainingConfig(batch_size=0, learning_rate="fast"))
    with pytest.raises(ConfigError, match=r"config \(built in Python\).*training.learning_rate"):
        training.run(bad, output_dir=tmp_path)
    assert not any(tmp_path.iterdir())


def test_run_config_is_the_runs_own_with_overrides(tmp_path):
    from schemabank.config import run_config

    cfg = load_config(REPO / "configs" / "smoke.yaml")
    (tmp_path / "config.yaml").write_text(dump_config(cfg))
    again = run_config(tmp_path, ["eval.limit=3"])
    assert again.experiment.name == "smoke" and again.eval.limit == 3
    told = []
    bare = run_config(tmp_path / "none", [], told.append)
    assert bare == Config() and "has no config.yaml" in told[0]


def _speed(cfg: Config) -> tuple:
    t, ev = cfg.training, cfg.eval
    return (
        t.compile,
        t.capture_step,
        ev.decoder,
        ev.compile_decoder,
        ev.decoder_shrink,
        ev.merge_lora,
    )


def test_null_speed_keys_are_the_fast_path_on_one_cuda_device_and_eager_elsewhere():
    """The defaults: on one CUDA device the measured fast path (compiled layers, the step
    captured, the static decoder captured and shrinking, the LoRA merged while decoding); on the
    CPU or in several processes the eager step and HF generate. The scope is the layers'."""
    cfg = config_from_dict({})
    assert _speed(cfg) == (None, None, None, None, None, None)
    assert cfg.training.compile_scope == "layers"
    assert _speed(for_device(cfg, "cuda")) == (True, True, "static", True, True, True)
    assert _speed(for_device(cfg, "cpu")) == (False, False, "hf", False, False, False)
    assert _speed(for_device(cfg, "cuda", world=2)) == (False, False, "hf", False, False, False)
    resolved = for_device(cfg, "cuda")
    assert config_from_dict(yaml.safe_load(dump_config(resolved))) == resolved  # as recorded
    assert for_device(resolved, "cpu") == resolved  # a run's recorded choice is kept


def test_a_speed_key_the_config_sets_is_kept_and_the_rest_follow_it():
    def on(device, **sections):
        return _speed(for_device(config_from_dict(sections), device))

    assert on("cuda", training={"compile": False}) == (False, True, "static", True, True, True)
    assert on("cuda", eval={"decoder": "hf"}) == (True, True, "hf", False, False, True)
    assert on("cuda", eval={"compile_decoder": False})[3:5] == (False, False)
    assert on("cuda", eval={"decoder_capture": "compile"})[2:5] == ("static", True, False)
    # the step is captured only where it can be: one micro-batch, no CUDA graphs of compile's
    assert on("cuda", training={"batch_size": 32, "micro_batch_size": 8})[1] is False
    assert on("cuda", training={"compile_mode": "reduce-overhead"})[1] is False
    assert on("cpu", training={"compile": True}) == (True, False, "hf", False, False, False)
    assert on("cpu", eval={"decoder_shrink": True})[2:5] == ("static", False, True)
    with pytest.raises(ConfigError, match="eval.compile_decoder: needs eval.decoder static"):
        config_from_dict({"eval": {"decoder": "hf", "compile_decoder": True}})


def test_the_study_config_on_one_cuda_device_is_the_measured_fast_path():
    """The issue's plain command (``schemabank train --config sb_b32_split50.yaml``) on one
    CUDA device runs what the README's speed figures measured with the keys set by
    ``scripts/speed_study.sh`` (its FAST arguments with STEP_GRAPH, MERGE and SHRINK true);
    the decoder's attention and batch are the nulls those figures named (grouped, one batch)."""
    path = REPO / "configs" / "gsm8k" / "sb_b32_split50.yaml"
    fast = [
        "training.compile=true",
        "training.compile_scope=layers",
        "training.capture_step=true",
        "eval.decoder=static",
        "eval.compile_decoder=true",
        "eval.decoder_shrink=true",
        "eval.merge_lora=true",
    ]
    plain = for_device(load_config(path), "cuda")
    assert plain == for_device(load_config(path, fast), "cuda")
    assert plain.eval.decoder_attention is None and plain.eval.batch_size is None
