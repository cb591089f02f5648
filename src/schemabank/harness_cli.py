"""lm-eval's own command line with the model class ``schemabank`` registered:
``python -m schemabank.harness_cli`` (also ``schemabank-lm-eval``) takes every ``lm_eval``
argument, e.g. ``--model schemabank --model_args path=RUN --tasks gsm8k``."""

from __future__ import annotations

import sys

from .errors import SchemaBankError


def main() -> None:
    try:
        from . import harness  # noqa: F401  (registers the model class)
    except SchemaBankError as exc:
        print(f"schemabank-lm-eval: error: {exc}", file=sys.stderr)
        sys.exit(1)
    from lm_eval.__main__ import cli_evaluate

    cli_evaluate()


if __name__ == "__main__":
    main()
