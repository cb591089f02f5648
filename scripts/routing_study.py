"""The router design search of the routing study: the table of stage-1 designs, and the choice.

The designs (``configs/gsm8k/routing/*.yaml``) train stage 1 alone, as a 1,000-step run would,
and are scored on the 500 held-out dev problems, without the tag line, by ``routing_fit``: the
share of the gap between a uniform and a perfect router that the routers close. The rule, fixed
before any design ran: **the design closing the largest share over all dev tokens** is the one
trained in full. The full config is the best SchemaBank of the earlier study
(``configs/gsm8k/sb_b32_split50.yaml``: batch 32, lr 5e-4 cosine, LoRA r=32 on every linear
layer, stage 3 of 300 steps) with the chosen router and its stage 1 (steps, learning rate,
curriculum); stage 2 gets the rest of the 1,000 steps. The oracle config is the same run with
``schemabank.routing: oracle`` (an upper bound, listed as an ablation, never chosen as best).

    python scripts/routing_study.py results/routing                 # the table and the choice
    python scripts/routing_study.py results/routing --write configs/gsm8k   # also the configs
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from schemabank.config import load_config, read_yaml, resolve_base  # noqa: E402
from schemabank.errors import SchemaBankError  # noqa: E402
from schemabank.results import load_results  # noqa: E402

REGIONS = ("all", "question", "answer", "last")
TEMPLATE = Path(__file__).resolve().parents[1] / "configs" / "gsm8k" / "sb_b32_split50.yaml"
STAGE3_STEPS = 300


def design_rows(folder: Path) -> list[dict]:
    """One row per stage-1 run in ``folder``: its design and dev routing fit."""
    rows = []
    for path in sorted(folder.glob("*/results.json")):
        r = load_results(path)
        fit = (r.get("routing_fit") or {}).get("dev")
        if fit is None:
            raise SchemaBankError(f"{path}: no routing_fit on a dev split")
        cfg, s1 = r["config"], r["config"]["training"]["stages"]["stage1_router_pretrain"]
        rows.append(
            {
                "name": r["experiment"]["name"],
                "router_input": cfg["schemabank"]["router_input"],
                "router_hidden": cfg["schemabank"]["router_hidden"],
                "steps": s1["steps"],
                "learning_rate": s1["learning_rate"] or cfg["training"]["learning_rate"],
                "dropout_schedule": s1["tag_curriculum"]["dropout_schedule"],
                "closed": {k: fit["regions"][k]["gap_closed"] for k in REGIONS},
                "ce": {k: fit["regions"][k]["ce"] for k in REGIONS},
                "perfect": {k: fit["regions"][k]["perfect"] for k in REGIONS},
                "uniform": fit["uniform"],
            }
        )
    if not rows:
        raise SchemaBankError(f"{folder}: no stage-1 runs (*/results.json)")
    return rows


def choose(rows: list[dict]) -> dict:
    """The rule: the largest share of the gap closed over all dev tokens."""
    return max(rows, key=lambda r: r["closed"]["all"])


def markdown(rows: list[dict], chosen: dict) -> str:
    head = "| design | input | depth | stage 1 | " + " | ".join(
        f"{k}: CE (gap closed)" for k in REGIONS
    )
    lines = [head + " |", "|" + "---|" * (4 + len(REGIONS))]
    for r in rows:
        depth = "linear" if r["router_hidden"] == 0 else f"MLP {r['router_hidden']}"
        stage = f"{r['steps']} steps, lr {r['learning_rate']:g}, drop {r['dropout_schedule']}"
        cells = [f"{r['ce'][k]:.3f} ({r['closed'][k]:.2f})" for k in REGIONS]
        name = f"**{r['name']}**" if r is chosen else r["name"]
        lines.append(
            f"| {name} | {r['router_input']} | {depth} | {stage} | " + " | ".join(cells) + " |"
        )
    u, p = rows[0]["uniform"], rows[0]["perfect"]
    lines.append("")
    lines.append(
        f"Uniform router: {u:.3f} nats everywhere; perfect router: "
        + ", ".join(f"{k} {p[k]:.3f}" for k in REGIONS)
        + f". Chosen by the rule (largest share closed over all dev tokens): **{chosen['name']}**."
    )
    return "\n".join(lines)


def write_configs(chosen: dict, folder: Path) -> list[Path]:
    """``sb_routed.yaml`` (``base:`` the template, with the chosen router and stage 1) and
    ``sb_routed_oracle.yaml`` (``base:`` sb_routed, with oracle routing) in ``folder``."""
    total = resolve_base(read_yaml(TEMPLATE), TEMPLATE)["training"]["total_steps"]
    routed = {
        "base": os.path.relpath(TEMPLATE, folder),
        "experiment": {"name": "sb_routed"},
        "schemabank": {
            "router_input": chosen["router_input"],
            "router_hidden": chosen["router_hidden"],
        },
        "training": {
            "stages": {
                "stage1_router_pretrain": {
                    "steps": chosen["steps"],
                    "learning_rate": chosen["learning_rate"],
                    "tag_curriculum": {"dropout_schedule": chosen["dropout_schedule"]},
                },
                "stage2_schema_train": {"steps": total - chosen["steps"] - STAGE3_STEPS},
                "stage3_joint_finetune": {"steps": STAGE3_STEPS},
            }
        },
    }
    oracle = {
        "base": "sb_routed.yaml",
        "experiment": {"name": "sb_routed_oracle", "ablation_of": "sb_routed"},
        "schemabank": {"routing": "oracle"},
    }
    out = []
    for name, data, comment in (
        (
            "sb_routed",
            routed,
            f"the best SchemaBank's settings with the router chosen on dev ({chosen['name']})",
        ),
        (
            "sb_routed_oracle",
            oracle,
            "sb_routed with oracle routing (each problem's tokens routed among its tags' schemas, in stages 2-3 and at evaluation): an upper bound",
        ),
    ):
        path = folder / f"{name}.yaml"
        text = f"# Routing study: {comment}; written by scripts/routing_study.py.\n"
        text += yaml.safe_dump(data, sort_keys=False, default_flow_style=None)
        path.write_text(text)
        load_config(path)  # it must load
        out.append(path)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", type=Path, help="folder of the stage-1 design runs")
    ap.add_argument("--write", type=Path, help="write sb_routed*.yaml for the chosen design here")
    args = ap.parse_args(argv)
    try:
        rows = design_rows(args.runs)
        chosen = choose(rows)
        print(markdown(rows, chosen))
        if args.write:
            for path in write_configs(chosen, args.write):
                print(f"wrote {path}")
    except SchemaBankError as exc:
        print(f"routing_study: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
