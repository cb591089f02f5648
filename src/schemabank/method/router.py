"""Router designs: what a bank's router reads, and how deep it is.

The seed's router (SPEC section 2) is a linear map of each token's own ``RMSNorm(h)``. Its target
in stage 1 is a property of the whole problem (the problem's tags), which a token's own state
may not carry, so the router's input is a config choice (``schemabank.router_input``):

============== ==================================================================================
input          what the router of token ``t`` reads
============== ==================================================================================
token          ``RMSNorm(h_t)``, the seed's router
prefix_mean    ``mean_{s <= t} RMSNorm(h_s)`` over the non-padding tokens of the prefix
token_prefix   both, concatenated (2H features)
============== ==================================================================================

Every input is causal: a token's route depends on its prefix alone, so KV-cache generation routes
each new token exactly as a full forward pass over the sequence does. The prefix mean is carried
between the forward passes of one generation as a running sum and count per sequence
(:class:`PrefixState`), reset whenever a forward pass starts a new sequence (no past key values).
A pass that continues its sequences updates the carry in place, so a decoder whose step is
captured as a CUDA graph (:mod:`schemabank.decode`) replays against the same buffers.

Depth (``schemabank.router_hidden``): 0 is a linear map without bias (the seed's); ``n > 0`` is a
two-layer MLP ``Linear(in, n) -> GELU -> Linear(n, S, bias=False)``. Either way the module is the
bank's ``router`` submodule, so its parameters are the ``router`` group of every stage filter.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import ROUTER_INPUTS


def make_router(hidden_size: int, num_schemas: int, router_input: str, hidden: int) -> nn.Module:
    """The router network: ``(..., in_features) -> (..., S)`` logits."""
    if router_input not in ROUTER_INPUTS:
        raise ValueError(f"router input must be one of {ROUTER_INPUTS}, got {router_input!r}")
    n_in = hidden_size * (2 if router_input == "token_prefix" else 1)
    if hidden <= 0:
        return nn.Linear(n_in, num_schemas, bias=False)
    return nn.Sequential(
        nn.Linear(n_in, hidden), nn.GELU(), nn.Linear(hidden, num_schemas, bias=False)
    )


class PrefixState:
    """Where a forward pass sits in its sequences, set before each decoder pass (see
    :class:`~schemabank.method.attach.BankSet`): which of the new tokens are real (not padding) and
    whether the pass continues the sequences of the previous one (KV-cache decoding)."""

    def __init__(self):
        self.mask: torch.Tensor | None = None  # (B, T_new) 1 for real tokens, or None: all real
        self.continues = False
        self.held = False
        """True while a decoder sets the state itself (:mod:`schemabank.decode`); the decoder's
        pre-hook then leaves it alone (it reads the KV cache's length, a value on the device that
        a captured step cannot branch on)."""

    def set(self, mask: torch.Tensor | None, continues: bool) -> None:
        self.mask, self.continues = mask, continues


def prefix_mean(
    x: torch.Tensor,
    mask: torch.Tensor | None,
    carry: tuple[torch.Tensor, torch.Tensor] | None,
) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
    """Causal running mean of ``x`` (B, T, F) over the real tokens of each sequence.

    ``mask`` (B, T): 1 for real tokens (None: all real); ``carry``: the running ``(sum (B, F),
    count (B,))`` of the sequences' earlier tokens, or None at their start. Returns the means
    (B, T, F) (zero before a sequence's first real token) and the new carry.
    """
    m = torch.ones(x.shape[:2], device=x.device) if mask is None else mask.to(x.dtype)  # (B, T)
    sums = (x * m.unsqueeze(-1)).cumsum(1)  # (B, T, F)
    counts = m.cumsum(1)  # (B, T)
    if carry is not None:
        sums = sums + carry[0].unsqueeze(1)  # (B, F) -> (B, 1, F), added at every position
        counts = counts + carry[1].unsqueeze(1)  # (B,) -> (B, 1)
    means = sums / counts.clamp_min(1.0).unsqueeze(-1)  # (B, T, F)
    return means, (sums[:, -1].detach(), counts[:, -1].detach())  # carry: (B, F), (B,)
