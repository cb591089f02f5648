"""The schema bank: S routed low-rank transforms added to the residual stream of one layer.

For a hidden state ``h`` (size H) leaving a decoder layer (SPEC section 2)::

    logits = W_r · RMSNorm(h)                  # S, in float32
    idx    = topk(logits, k)                   # the k chosen schemas
    w      = softmax(logits[idx])              # k weights that sum to 1
    gate_s = sigmoid(A_s · G)                  # r, one gate per schema
    delta  = gain · Σ_{s in idx} w_s · ((h · U_s) ⊙ gate_s) · V_s
    h'     = h + delta

The forward pass is vectorised over schemas (two matmuls against all of U and V, with a dense
``T x S`` routing-weight matrix that is zero outside the top-k) and never synchronises with the
host. ``gain`` starts at 0, so a freshly attached bank leaves the model's output unchanged.

The regularisers are pure functions of the parameters and of the router logits that the bank keeps
from its last forward pass when ``capture`` is on (see :mod:`schemabank.method.attach`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .router import PrefixState, make_router, prefix_mean

RMS_EPS = 1e-6


class SchemaBank(nn.Module):
    """One bank of ``num_schemas`` rank-``rank`` schemas with a top-``topk`` router.

    Parameter names are the stage filters: ``router.weight`` is the router group; ``U``, ``V``,
    ``A``, ``G`` and ``gain`` are the schema group (see :mod:`schemabank.method.stages`).
    """

    def __init__(
        self,
        hidden_size: int,
        num_schemas: int = 32,
        rank: int = 16,
        topk: int = 2,
        attr_dim: int = 8,
        router_input: str = "token",
        router_hidden: int = 0,
    ):
        super().__init__()
        if not 1 <= topk <= num_schemas:
            raise ValueError(f"topk must be in [1, num_schemas], got {topk}")
        self.hidden_size, self.num_schemas, self.rank, self.topk = (
            hidden_size,
            num_schemas,
            rank,
            topk,
        )
        self.attr_dim = attr_dim
        self.router_input, self.router_hidden = router_input, router_hidden
        self.router = make_router(hidden_size, num_schemas, router_input, router_hidden)
        self.U = nn.Parameter(torch.empty(num_schemas, hidden_size, rank))  # S x H x r
        self.V = nn.Parameter(torch.empty(num_schemas, rank, hidden_size))  # S x r x H
        self.A = nn.Parameter(torch.empty(num_schemas, attr_dim))  # S x ad
        self.G = nn.Parameter(torch.empty(attr_dim, rank))  # ad x r
        self.gain = nn.Parameter(torch.zeros(()))
        self.enabled = True
        self.capture = False
        self.last_logits: torch.Tensor | None = None
        self.route_mask: torch.Tensor | None = None
        """(B, S) bool: each sequence's top-k is chosen among these schemas (oracle routing)."""
        self.prefix_state: PrefixState | None = None  # set by BankSet for prefix routers
        self._carry: tuple[torch.Tensor, torch.Tensor] | None = None
        self._carry_buffers: tuple[torch.Tensor, torch.Tensor] | None = None  # start_carry's
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Initialise as SPEC section 2 says: orthonormal ``U`` columns and ``V`` rows, small
        random router, attributes and gate, and ``gain = 0`` so the bank starts as the identity."""
        for m in self.router.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        for s in range(self.num_schemas):
            nn.init.orthogonal_(self.U[s])  # H x r: orthonormal columns
            nn.init.orthogonal_(self.V[s])  # r x H: orthonormal rows
        nn.init.normal_(self.A, std=0.02)
        nn.init.normal_(self.G, std=1.0 / self.attr_dim**0.5)
        self.gain.zero_()

    def extra_repr(self) -> str:
        """The bank's sizes, shown when the model is printed."""
        return (
            f"H={self.hidden_size}, S={self.num_schemas}, r={self.rank}, k={self.topk}, "
            f"ad={self.attr_dim}, router={self.router_input}/{self.router_hidden or 'linear'}"
        )

    def router_logits(self, h: torch.Tensor) -> torch.Tensor:
        """Router logits in float32: ``(B, T, H) -> (B, T, S)``, from the input that
        ``router_input`` names (see :mod:`schemabank.method.router`)."""
        with torch.autocast(device_type=h.device.type, enabled=False):
            x = F.rms_norm(h.float(), (self.hidden_size,), eps=RMS_EPS)  # (B, T, H)
            if self.router_input != "token":
                mean = self._prefix_mean(x)  # (B, T, H)
                # prefix_mean: (B, T, H); token_prefix: (B, T, H) + (B, T, H) -> (B, T, 2H)
                x = mean if self.router_input == "prefix_mean" else torch.cat([x, mean], -1)
            # in float32 whatever the router's weights are (a model cast to bf16 casts them too)
            if isinstance(self.router, nn.Linear):
                return F.linear(x, self.router.weight.float())  # (B, T, H) -> (B, T, S)
            weights = {name: p.float() for name, p in self.router.named_parameters()}
            return torch.func.functional_call(self.router, weights, (x,))  # (B, T, H or 2H)

    def _prefix_mean(self, x: torch.Tensor) -> torch.Tensor:
        """Running mean (B, T, H) of the RMS-normed states ``x`` over each sequence's real
        tokens, continuing the carry of the previous pass when :attr:`prefix_state` says so."""
        state = self.prefix_state
        if state is None:  # no BankSet: each pass alone
            return prefix_mean(x, None, None)[0]
        carry = self._carry if state.continues else None
        means, new = prefix_mean(x, state.mask, carry)
        if carry is None:
            self._carry = new
        else:  # in place: a captured decode step replays against the same buffers
            carry[0].copy_(new[0])
            carry[1].copy_(new[1])
        return means

    def start_carry(self, batch_size: int) -> None:
        """Start the running prefix sums of ``batch_size`` new sequences at zero, in buffers
        kept at fixed addresses while the batch size stays (for a decoder that sets
        :attr:`prefix_state` itself and continues the carry from its first pass on)."""
        buf = self._carry_buffers
        device = self.U.device
        if buf is None or buf[1].shape[0] != batch_size or buf[1].device != device:
            buf = (
                torch.zeros(batch_size, self.hidden_size, device=device),  # (B, H) sums
                torch.zeros(batch_size, device=device),  # (B,) counts
            )
            for t in buf:
                torch._dynamo.mark_static_address(t)  # CUDA-graph replay may mutate it
            self._carry_buffers = buf
        else:
            for t in buf:
                t.zero_()
        self._carry = buf

    def keep_rows(self, idx: torch.Tensor) -> None:
        """Keep only the sequences ``idx`` (n,) of the batch being decoded: their prefix carry
        and their rows of :attr:`route_mask` (a decoder that drops finished sequences)."""
        if self._carry is not None:
            self._carry = (self._carry[0][idx], self._carry[1][idx])
        if self.route_mask is not None:
            self.route_mask = self.route_mask[idx]

    def masked(self, logits: torch.Tensor) -> torch.Tensor:
        """``logits`` (B, T, S) with the schemas outside :attr:`route_mask` at -inf (unchanged
        without a mask): what the top-k is taken over."""
        if self.route_mask is None:
            return logits
        return logits.masked_fill(~self.route_mask[:, None, :], float("-inf"))  # (B, 1, S) mask

    def slots(self, logits: torch.Tensor) -> torch.Tensor:
        """The top-k schema ids (B, T, k) that router logits ``logits`` (B, T, S) route to, under
        :attr:`route_mask`; a slot that gets no weight (oracle routing among fewer than k
        schemas: its logit is -inf) repeats the token's top-1 schema."""
        val, idx = self.masked(logits).topk(self.topk, dim=-1)
        return torch.where(torch.isinf(val), idx[..., :1], idx)

    def gates(self) -> torch.Tensor:
        """Per-schema gates ``sigmoid(A · G)``: ``S x r``."""
        return torch.sigmoid(self.A @ self.G)  # (S, ad) @ (ad, r) -> (S, r)

    def routing_weights(self, logits: torch.Tensor) -> torch.Tensor:
        """Dense routing weights, zero outside each token's top-k: ``(..., S) -> (..., S)``."""
        top_val, top_idx = logits.topk(self.topk, dim=-1)  # (..., k)
        return torch.zeros_like(logits).scatter(-1, top_idx, top_val.softmax(dim=-1))  # (..., S)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """``h``: (B, T, H) -> ``h + delta`` (same shape and dtype)."""
        if not self.enabled:
            return h
        logits = self.router_logits(h)  # (B, T, S) float32
        if self.capture:
            self.last_logits = logits
        weights = self.routing_weights(self.masked(logits))  # (B, T, S)
        S, H, r = self.num_schemas, self.hidden_size, self.rank
        u_all = self.U.permute(1, 0, 2).reshape(H, S * r)  # H x (S·r)
        v_all = self.V.reshape(S * r, H)  # (S·r) x H
        z = (h @ u_all.to(h.dtype)).unflatten(-1, (S, r))  # (B, T, S, r)
        coef = weights.unsqueeze(-1) * self.gates()  # (B, T, S, r) float32
        z = (z * coef.to(z.dtype)).flatten(-2)  # (B, T, S·r)
        delta = z @ v_all.to(z.dtype)  # (B, T, H)
        return h + (self.gain * delta).to(h.dtype)


# ---------------------------------------------------------------------------------------------
# Regularisers


def ortho_penalty(bank: SchemaBank) -> torch.Tensor:
    """``mean_s(||U_sᵀU_s − I||²_F + ||V_s V_sᵀ − I||²_F)``."""
    eye = torch.eye(bank.rank, device=bank.U.device, dtype=bank.U.dtype)
    utu = bank.U.transpose(1, 2) @ bank.U  # S x r x r
    vvt = bank.V @ bank.V.transpose(1, 2)  # S x r x r
    return ((utu - eye).square().sum((1, 2)) + (vvt - eye).square().sum((1, 2))).mean()


def _masked_mean(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``x`` (B, T) over the positions where ``mask`` (B, T) is true."""
    if mask is None:
        return x.mean()
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp_min(1.0)


def routing_ce(
    logits: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """Cross-entropy of the router's softmax against a per-example target distribution.

    ``logits``: (B, T, S); ``target``: (B, S), rows summing to 1, or each token's (B, T, S) (a
    packed batch's); ``mask``: (B, T) non-padding.
    """
    logp = logits.float().log_softmax(-1)  # (B, T, S)
    if target.dim() == 2:
        target = target[:, None, :]  # (B, S) -> (B, 1, S)
    ce = -(logp * target).sum(-1)  # (B, T)
    return _masked_mean(ce, mask)


def balance_loss(logits: torch.Tensor, topk: int, mask: torch.Tensor | None) -> torch.Tensor:
    """Switch/Mixtral load balancing ``S · Σ_s f_s · p_s`` over non-padding tokens.

    ``f_s``: share of top-k slots routed to schema s; ``p_s``: mean router probability of s.
    Equals 1 for perfectly uniform routing.
    """
    S = logits.shape[-1]
    flat = logits.reshape(-1, S).float()  # (B, T, S) -> (B·T, S)
    # (B, T) -> (B·T,): 1 for the tokens that count
    keep = (
        torch.ones(flat.shape[0], device=flat.device) if mask is None else mask.reshape(-1).float()
    )
    n = keep.sum().clamp_min(1.0)
    probs = flat.softmax(-1)  # (B·T, S)
    slots = torch.zeros_like(flat).scatter(-1, flat.topk(topk, -1).indices, 1.0)  # (B·T, S) 0/1
    f = (slots * keep[:, None]).sum(0) / (n * topk)  # (S,)
    p = (probs * keep[:, None]).sum(0) / n  # (S,)
    return S * (f * p).sum()


def z_loss(logits: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Router z-loss: mean of ``logsumexp(logits)²`` over non-padding tokens."""
    return _masked_mean(logits.float().logsumexp(-1).square(), mask)  # (B, T, S) -> (B, T)
