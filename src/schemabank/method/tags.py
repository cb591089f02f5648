"""Tags: coarse labels of a GSM8K problem, the schemas each tag owns, and the tag curriculum.

A tag is derived automatically from a problem's question and reference solution (SPEC section 3).
GSM8K solutions carry calculator annotations such as ``<<48/2=24>>``; the operator tags look only
inside those annotations. The default tag set, in its fixed order:

========== =====================================================================================
tag        the problem has it when
========== =====================================================================================
add        ``+`` appears in an annotation
sub        ``-`` appears in an annotation as a binary operator (after a number or ``)``)
mul        ``*`` appears in an annotation
div        ``/`` appears in an annotation
percent    ``%`` or the word "percent" appears in the question or the solution
fraction   the question holds a non-integer number (``2.5``) or ``/`` between numbers (``3/4``)
money      ``$`` appears in the question
multistep  the solution has 4 or more annotations
========== =====================================================================================

With ``T`` tags and ``S`` schemas, tag ``t`` owns the block of ``S // T`` schemas starting at
``t * (S // T)``; leftover schemas are owned by no tag. A problem's routing target is the uniform
distribution over the schemas its tags own (over all schemas when it has no tag).
"""

from __future__ import annotations

import re
from collections.abc import Sequence

TAGS: tuple[str, ...] = ("add", "sub", "mul", "div", "percent", "fraction", "money", "multistep")

_ANNOTATION = re.compile(r"<<([^<>]*)>>")
_BINARY_MINUS = re.compile(r"[0-9.)%]\s*-")
_FRACTION = re.compile(r"\d+\.\d+|\d+\s*/\s*\d+")
_PERCENT = re.compile(r"%|percent", re.IGNORECASE)


def annotations(solution: str) -> list[str]:
    """The expressions (left of ``=``) of a solution's calculator annotations."""
    return [a.split("=", 1)[0] for a in _ANNOTATION.findall(solution)]


def derive_tags(question: str, solution: str) -> list[str]:
    """The tags of a problem, in the order of :data:`TAGS`."""
    exprs = annotations(solution)
    has = {
        "add": any("+" in x for x in exprs),
        "sub": any(_BINARY_MINUS.search(x) for x in exprs),
        "mul": any("*" in x for x in exprs),
        "div": any("/" in x for x in exprs),
        "percent": bool(_PERCENT.search(question) or _PERCENT.search(solution)),
        "fraction": bool(_FRACTION.search(question)),
        "money": "$" in question,
        "multistep": len(exprs) >= 4,
    }
    return [t for t in TAGS if has[t]]


def tag_line(tags: list[str]) -> str:
    """The line put before ``Question:`` in a tagged training example ("" without tags)."""
    return f"Tags: {', '.join(tags)}\n" if tags else ""


def owned_schemas(tag: str, num_schemas: int) -> range:
    """The block of schema ids owned by ``tag``."""
    block = num_schemas // len(TAGS)
    i = TAGS.index(tag)
    return range(i * block, (i + 1) * block)


def routing_target(tags: list[str], num_schemas: int):
    """Uniform distribution over the schemas owned by ``tags``; uniform over all without tags.

    Returns a float tensor of shape (S,).
    """
    return routing_targets([tags], num_schemas)[0]


def routing_targets(tag_lists: Sequence[Sequence[str]], num_schemas: int):
    """:func:`routing_target` of each of ``tag_lists`` (a problem's tags), as one float tensor of
    shape (N, S), built in numpy at once (thousands of problems: one tensor, not thousands)."""
    import numpy as np
    import torch  # here, so that reading a config does not pay for importing torch

    owned = np.zeros((len(tag_lists), num_schemas), dtype=np.float32)  # (N, S)
    for i, tags in enumerate(tag_lists):
        for t in tags:
            block = owned_schemas(t, num_schemas)
            owned[i, block.start : block.stop] = 1.0
    owned[owned.sum(1) == 0] = 1.0
    return torch.from_numpy(owned / owned.sum(1, keepdims=True))


def dropout_for_step(step_in_stage: int, stage_steps: int, schedule: list[float]) -> float:
    """Tag-dropout probability at a step of stage 1 (0-based), which is split into
    ``len(schedule)`` equal phases."""
    phase = min(step_in_stage * len(schedule) // max(stage_steps, 1), len(schedule) - 1)
    return schedule[phase]
