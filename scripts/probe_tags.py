"""Linear probes of where a problem's tags can be read in the frozen base model's hidden states.

Usage, from the repository root, in the project's environment (``make setup``; a GPU when there
is one, the CPU otherwise):

    python scripts/probe_tags.py --output docs/probes

It loads the base model (frozen, as training does) and the GSM8K training split, holds out the
last ``--dev-size`` problems (the study's dev set, never trained on), and for each decoder layer
of ``--layers``, each input of :data:`schemabank.study.probe.INPUTS` (one token's state, the running
mean of the states up to it, the prompt's last token, the text's last token) and the training
text without and with the tag line, fits a logistic regression per tag on the first ``--fit``
training problems and scores it on the dev problems (:mod:`schemabank.study.probe`). It writes
``OUTPUT/probes.json`` and ``OUTPUT/probes.png`` (a heatmap of ROC AUC per tag and layer) and
prints a Markdown table of the mean AUC over tags (untagged text) and the time taken.

``--plot OUTPUT/probes.json`` redraws the figure beside that file, without a model.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

from schemabank.errors import ConfigError, SchemaBankError

PROG = "probe_tags"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument(
        "--model", default="smollm2-135m-instruct", help="base model (as model.base_model)"
    )
    p.add_argument("--data-dir", help="folder with gsm8k/ (default: $SCHEMABANK_DATA_DIR, the hub)")
    p.add_argument(
        "--layers",
        help="decoder layers, comma-separated, negative from the end "
        "(default: every third from 2, the last and -10: 2,5,...,29 for 30 layers)",
    )
    p.add_argument("--fit", type=int, default=2000, help="training problems to fit the probes on")
    p.add_argument(
        "--dev-size", type=int, default=500, help="last train problems held out to score"
    )
    p.add_argument("--positions", type=int, default=16, help="sampled token positions per problem")
    p.add_argument(
        "--max-length", type=int, default=512, help="tokens per text (training.max_length)"
    )
    p.add_argument("--batch-size", type=int, default=32, help="texts per forward pass")
    p.add_argument("--l2", type=float, default=1e-3, help="L2 penalty of the logistic regressions")
    p.add_argument("--steps", type=int, default=200, help="L-BFGS iterations per probe")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled positions")
    p.add_argument("--device", default="auto", help="auto (CUDA when available), cuda or cpu")
    p.add_argument("--output", default="docs/probes", help="folder for probes.json and probes.png")
    p.add_argument(
        "--plot", metavar="JSON", help="only redraw the figure of an existing probes.json"
    )
    return p.parse_args(argv)


def parse_layers(text: str | None, num_layers: int) -> list[int]:
    """``--layers`` as sorted layer indices (negative ones counted from the end)."""
    from schemabank.study.probe import default_layers

    if text is None:
        return default_layers(num_layers)
    try:
        layers = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--layers: expected comma-separated integers, got {text!r}") from None
    bad = [x for x in layers if not -num_layers <= x < num_layers]
    if bad or not layers:
        raise ConfigError(
            f"--layers: {bad or 'none given'}: the model has decoder layers 0..{num_layers - 1}"
        )
    return sorted({x % num_layers for x in layers})


def redraw(path: Path) -> None:
    from schemabank.study.probe import load_probes, plot_probes, probe_table

    data = load_probes(path)
    plot_probes(data, path.with_suffix(".png"))
    print(probe_table(data))
    print(f"wrote {path.with_suffix('.png')}")


def run(args) -> None:
    from schemabank.data import load_gsm8k, split_dev
    from schemabank.models import load_base_model, resolve_base_model
    from schemabank.runtime import pick_device, weight_dtype
    from schemabank.study.probe import plot_probes, probe_table, run_probes

    t0 = time.perf_counter()
    for name in ("fit", "dev_size", "positions", "batch_size", "steps"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: must be >= 1")
    train, dev = split_dev(load_gsm8k("train", args.data_dir), args.dev_size)
    fit = train[: args.fit]
    device = pick_device(args.device)
    info = resolve_base_model(args.model)
    tok, model = load_base_model(info, device, weight_dtype("auto", device))
    layers = parse_layers(args.layers, model.config.num_hidden_layers)
    print(
        f"{info.name}: {info.num_hidden_layers} layers on {device}; probing layers {layers} with "
        f"{len(fit)} problems, scoring on {len(dev)}",
        flush=True,
    )
    data = run_probes(
        model,
        tok,
        fit,
        dev,
        layers,
        device,
        positions_per_problem=args.positions,
        seed=args.seed,
        batch_size=args.batch_size,
        max_length=args.max_length,
        l2=args.l2,
        steps=args.steps,
        progress=lambda line: print(line, flush=True),
    )
    data["model"] = info.to_dict()
    data["time_s"] = round(time.perf_counter() - t0, 1)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    (out / "probes.json").write_text(json.dumps(data, indent=1) + "\n")
    plot_probes(data, out / "probes.png")
    print("\nMean ROC AUC over the tags, untagged text (dev problems):\n")
    print(probe_table(data))
    print(f"\nwrote {out / 'probes.json'} and {out / 'probes.png'} in {data['time_s']:.0f} s")


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if args.plot:
            redraw(Path(args.plot))
        else:
            run(args)
    except SchemaBankError as exc:
        message = str(exc).replace("\n", "\\n")
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
