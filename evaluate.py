"""Seed-compatible entry point: ``python evaluate.py --checkpoint results/schemabank_seed42/checkpoint
[--output F]`` (= ``schemabank eval``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from schemabank.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["eval", *sys.argv[1:]]))
