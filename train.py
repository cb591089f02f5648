"""Seed-compatible entry point: ``python train.py --config configs/schemabank.yaml`` (= ``schemabank train``)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent / "src"))

from schemabank.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
