"""Greedy decoding over a static KV cache, the gpt-fast recipe, for GSM8K generation.

HF ``generate`` spends most of a decode step on the host (Python around hundreds of kernel
launches). Here a left-padded prompt batch is prefilled in one forward pass into a transformers
``StaticCache`` long enough for the longest prompt plus every new token, and each new token is one
forward pass of shape (B, 1) whose inputs all live in buffers of fixed shape and address, updated
in place: the KV cache, the 2-D attention mask (B, cache length), the position ids, the last
tokens, the rows still running and the prefix routers' running sums
(:meth:`~schemabank.method.bank.SchemaBank.start_carry`). So the step can be captured as one CUDA graph
(``torch.compile(mode="reduce-overhead", fullgraph=True)``).

It makes the tokens HF ``generate`` makes: greedy, position ids from the cumulative attention mask,
pad tokens after a row's EOS. The attention mask is 1 from the prompt's end to the cache's end:
the causal mask already hides the slots not yet written. The stop string is checked on the host
only every ``check_every`` steps, so a row may run past it for a few tokens; the caller trims at
the stop string and EOS, as it trims HF's output.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager

import torch
from transformers import AttentionInterface, StaticCache
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .method.attach import decoder_module
from .method.bank import SchemaBank
from .models import attention_implementation, unwrapped
from .runtime import cudagraph_skips, warn_cudagraph_skips


def _cache_arg(model) -> str:
    """The forward argument that takes the KV cache: ``cache`` in newer transformers (5.2x),
    ``past_key_values`` before."""
    params = inspect.signature(decoder_module(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


GROUPED = "schemabank_grouped"
"""The attention implementation :class:`StaticDecoder` switches the model to with
``attention="grouped"`` (:func:`grouped_attention`, registered with transformers'
``AttentionInterface`` and sdpa's mask)."""


def grouped_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kw):
    """Attention of a single new token over a grouped-query KV cache without copying the cache
    for every query head.

    SDPA with a mask repeats each key/value head for its query heads (``repeat_kv``: a copy of
    the whole cache per layer and step) before a kernel that reads it again. With one query
    per row, the query heads that share a key/value head are folded into the query-length axis
    instead, ``(B, H, 1, D) -> (B, H_kv, H / H_kv, D)``, so the scores are one batched matmul
    against the cache as stored. ``query`` (B, H, q, D), ``key``/``value`` (B, H_kv, L, D),
    ``attention_mask`` bool (B, 1, q, L), True where a query may attend, or additive float, or
    None. Longer queries (the prefill) go to transformers' SDPA attention unchanged. Returns
    ``(B, q, H, D)`` and no weights, as transformers' attention functions do."""
    B, H, q, D = query.shape
    if q > 1:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kw
        )
    Hkv, L = key.shape[1], key.shape[2]
    g = H // Hkv  # query heads h = kv * g + i share key/value head kv, as in repeat_kv
    scale = scaling if scaling is not None else D**-0.5
    scores = torch.matmul(query.reshape(B, Hkv, g, D), key.transpose(-1, -2)).float() * scale
    if attention_mask is not None:  # (B, 1 or H, 1, L) -> (B, H_kv, g, L)
        m = attention_mask[..., :L].reshape(B, -1, 1, L).expand(B, H, 1, L).reshape(B, Hkv, g, L)
        if m.dtype == torch.bool:
            scores = scores.masked_fill(~m, torch.finfo(scores.dtype).min)
        else:
            scores = scores + m.float()
    probs = torch.softmax(scores, dim=-1).to(value.dtype)
    out = torch.matmul(probs, value)  # (B, H_kv, g, D)
    return out.reshape(B, H, 1, D).transpose(1, 2), None


AttentionInterface.register(GROUPED, grouped_attention)
AttentionMaskInterface.register(GROUPED, sdpa_mask)


ATTENTIONS = ("model", "grouped")
"""``StaticDecoder(attention=...)``: the model's own attention, or :func:`grouped_attention`."""
DEFAULT_ATTENTION = "grouped"  # eval.decoder_attention: null

CAPTURES = ("compile", "graph")
"""How a compiled :class:`StaticDecoder` captures its step on CUDA: ``compile``,
``torch.compile(mode="reduce-overhead")`` (inductor's fused kernels in a CUDA graph, after Dynamo
traces the whole model: seconds in every new process, even with a warm cache); ``graph``, the
eager step captured as it is (:class:`CapturedStep`: no tracing, no compilation)."""
DEFAULT_CAPTURE = "graph"  # eval.decoder_capture: null


class CapturedStep:
    """A function of no arguments over buffers of fixed address, run as one CUDA graph captured
    directly (``torch.cuda.CUDAGraph``, no ``torch.compile``): the first call runs it eagerly
    (warm-up: cuBLAS workspaces, the cache's lazily built tensors), the second captures it, then
    replays it, and every later call replays it. Returns ``fn``'s outputs, which a replay
    overwrites in place: read them before the next call. Autocast's cast cache stays off
    inside, as CUDA graphs need (a cached cast would outlive the graph's memory)."""

    def __init__(self, fn):
        self.fn = fn
        self.calls = 0
        self.outputs = None

    def __call__(self):
        self.calls += 1
        if self.calls == 1:
            with _autocast_uncached():
                return self.fn()
        if self.calls == 2:
            self._capture()
        return self._replay()

    def _capture(self) -> None:
        self.graph = torch.cuda.CUDAGraph()
        with _autocast_uncached(), torch.cuda.graph(self.graph):
            self.outputs = self.fn()

    def _replay(self):
        self.graph.replay()
        return self.outputs


@contextmanager
def _autocast_uncached():
    """The CUDA autocast now in force (if any), with its cast cache off."""
    if not torch.is_autocast_enabled("cuda"):
        yield
        return
    with torch.autocast("cuda", dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False):
        yield


class StaticDecoder:
    """Greedy decoding of left-padded prompt batches with a static KV cache.

    ``cache_len``: the cache's length, at least the longest prompt plus ``max_new_tokens``; one
    length for every batch keeps the step's shapes, so a captured step is captured once per
    batch size. ``compile``: the single-token step captured as a CUDA graph (on CUDA only;
    ``backend`` given, e.g. ``"aot_eager"`` in tests, it goes through ``torch.compile`` with that
    backend on any device). ``capture``: one of
    :data:`CAPTURES`, how ``compile`` captures on CUDA: ``graph`` (None: the default), each
    :meth:`decode` call captures its eager step anew as a :class:`CapturedStep` (``graph_step``:
    its class, which tests replace to run the same sequence on the CPU); ``compile``,
    ``torch.compile(mode="reduce-overhead", fullgraph=True)``. ``shrink``: at a stop check where
    at most :data:`SHRINK_AT` of the batch's rows are still open, the finished rows leave the
    batch and the rest go on as a smaller one (the eager or directly captured step only; every
    row keeps its tokens on the CPU tests, but a GPU's kernels at another batch size may round
    differently). ``attention``: one of
    :data:`ATTENTIONS`, the attention of the new tokens' passes (None: ``grouped``,
    :func:`grouped_attention`; the prefill is the model's SDPA either way). The decoder sets the
    prefix state of the banks' prefix routers itself
    (:attr:`~schemabank.method.router.PrefixState.held`).

    :meth:`decode` with ``record`` (banks) also keeps the schemas each token was routed to as it
    went through the model (:meth:`~schemabank.method.bank.SchemaBank.slots`), in
    :attr:`routes`: no second pass over the text is needed for the routing statistics.
    """

    def __init__(
        self,
        model,
        cache_len: int,
        max_new_tokens: int,
        eos_token_id: int | None,
        pad_token_id: int | None,
        compile: bool = False,
        backend: str | None = None,
        attention: str | None = None,
        capture: str | None = None,
        graph_step: type[CapturedStep] | None = None,
        shrink: bool = False,
    ):
        attention, capture = attention or DEFAULT_ATTENTION, capture or DEFAULT_CAPTURE
        if attention not in ATTENTIONS:
            raise ValueError(f"attention: {attention!r} is not one of {ATTENTIONS}")
        if capture not in CAPTURES:
            raise ValueError(f"capture: {capture!r} is not one of {CAPTURES}")
        self.model = unwrapped(model)
        self.attention_name = attention
        self.attention = None if attention == "model" else GROUPED
        self.cache_len, self.max_new_tokens = cache_len, max_new_tokens
        self.eos, self.pad_id, self.compiled = eos_token_id, pad_token_id, compile
        self.capture = capture
        self.pad = pad_token_id if pad_token_id is not None else (eos_token_id or 0)
        self.cache_arg = _cache_arg(self.model)
        banks = [m for m in self.model.modules() if isinstance(m, SchemaBank)]
        self.banks = banks
        self.prefix_banks = [b for b in banks if b.prefix_state is not None]
        self.prefix_states = list(
            {id(b.prefix_state): b.prefix_state for b in self.prefix_banks}.values()
        )
        self.batch_size: int | None = None
        self.record: tuple = ()  # banks whose routing the step returns (decode's ``record``)
        self.routes: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.step = self._step
        self.graphs = False  # CUDA graphs: mark each replay's step
        self.graph_step = None  # capture "graph": the class that captures each call's step
        if compile:
            device = next(self.model.parameters()).device
            if backend is not None:
                self.step = torch.compile(
                    self._step, backend=backend, fullgraph=True, dynamic=False
                )
            elif capture == "graph" and (graph_step is not None or device.type == "cuda"):
                self.graph_step = graph_step or CapturedStep
            elif device.type == "cuda":
                self.step = torch.compile(
                    self._step, mode="reduce-overhead", fullgraph=True, dynamic=False
                )
                self.graphs = True
                self.checked, self.skips_before = False, cudagraph_skips()
        if shrink and self.step != self._step:
            raise ValueError("shrink: a torch.compile'd step keeps one batch size")
        self.shrink = shrink

    def _buffers(self, batch_size: int, device: torch.device) -> None:
        """Allocate the cache and the step's buffers for ``batch_size`` rows (kept while the
        batch size stays, so a captured step replays against the same addresses)."""
        if self.batch_size == batch_size:
            self.cache.reset()
            return
        self.batch_size = batch_size
        self.cache = StaticCache(config=self.model.config, max_cache_len=self.cache_len)
        B, L = batch_size, self.cache_len
        self.mask = torch.ones(B, L, dtype=torch.long, device=device)  # (B, L)
        self.tokens = torch.zeros(B, 1, dtype=torch.long, device=device)  # (B, 1) last tokens
        self.positions = torch.zeros(B, 1, dtype=torch.long, device=device)  # (B, 1)
        self.running = torch.ones(B, dtype=torch.bool, device=device)  # (B,) before EOS
        for t in (self.mask, self.tokens, self.positions, self.running):
            torch._dynamo.mark_static_address(t)

    def _forward(self, input_ids, attention_mask, position_ids) -> torch.Tensor:
        """Next-token logits (B, V) of one pass that continues the cache."""
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
            **{self.cache_arg: self.cache},
        )
        return out.logits[:, -1]

    def _pick(self, logits: torch.Tensor) -> torch.Tensor:
        """Greedy next tokens (B,), pad for rows past their EOS (as HF ``generate``), and the
        running rows, tokens and positions advanced in place."""
        nxt = torch.where(self.running, logits.argmax(-1), self.pad)
        if self.eos is not None:
            self.running &= nxt != self.eos
        self.tokens.copy_(nxt[:, None])
        self.positions.add_(1)
        return nxt

    def _step(self) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """One new token for every row (B,): the single-token pass over the static buffers; and
        for each bank of :attr:`record`, the schemas (B, k) the fed tokens were routed to."""
        nxt = self._pick(self._forward(self.tokens, self.mask, self.positions))
        return nxt, tuple(b.slots(b.last_logits)[:, -1] for b in self.record)

    def _hold(self, mask: torch.Tensor | None) -> None:
        """Prefix state of the pass to come: ``mask`` (B, T_new) real tokens, continuing the
        carry (started at zero by :meth:`decode`)."""
        for state in self.prefix_states:
            state.set(mask, True)

    @torch.no_grad()
    def decode(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        stopped=None,
        check_every: int = 16,
        record=(),
    ) -> torch.Tensor:
        """New tokens (B, n) for a left-padded batch ``input_ids`` (B, P) with its
        ``attention_mask``, n <= ``max_new_tokens``: the loop ends once every row has met EOS
        or ``stopped`` (a host-side test of the open rows' new ids so far, a list of id lists
        to a list of bools, made every ``check_every`` steps), or after ``max_new_tokens``.

        ``record``: banks (:class:`~schemabank.method.bank.SchemaBank`) whose routing to keep.
        :attr:`routes` then holds, per bank, the prompt's (B, P, k) and the new tokens' (B, n, k)
        schema ids on the CPU: new token j's as it was fed back (one pass more than the tokens
        need, so the last one's is there too). Otherwise :attr:`routes` is None."""
        B, P = input_ids.shape
        if P + self.max_new_tokens > self.cache_len:
            raise ValueError(
                f"a prompt of {P} tokens and {self.max_new_tokens} new ones do not fit the "
                f"cache ({self.cache_len} tokens)"
            )
        device = input_ids.device
        self._buffers(B, device)
        self.mask[:, :P].copy_(attention_mask)
        self.mask[:, P:] = 1
        self.running.fill_(True)
        out = torch.full((B, self.max_new_tokens), self.pad, dtype=torch.long, device=device)
        positions = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)
        for bank in self.prefix_banks:
            bank.start_carry(B)
        for state in self.prefix_states:
            state.held = True
        self.record, self.routes = tuple(record), None
        capture = [(b, b.capture) for b in self.record]
        for b, _ in capture:
            b.capture = True
        route_masks = [(b, b.route_mask) for b in self.banks]  # shrinking cuts them
        if self.graph_step is not None:  # this call's buffers: captured anew
            self.step = self.graph_step(self._step)
        try:
            with attention_implementation(self.model, self.attention):
                return self._loop(input_ids, attention_mask, positions, out, stopped, check_every)
        finally:
            for state in self.prefix_states:
                state.held = False
                state.set(None, False)
            for b, before in capture:
                b.capture, b.last_logits = before, None
            for b, mask in route_masks:
                b.route_mask = mask
            self.record = ()
            if self.graph_step is not None:
                self.step = self._step  # the graph and its memory go

    def _loop(self, input_ids, attention_mask, positions, out, stopped, check_every):
        """:meth:`decode`'s prefill and steps, the prefix state held."""
        B = input_ids.shape[0]
        self._hold(attention_mask)
        self.positions.copy_(positions[:, -1:])
        logits = self._forward(input_ids, self.mask, positions)  # prefill (B, P)
        prompt = [b.slots(b.last_logits) for b in self.record]  # (B, P, k) each
        # new token j's schemas (B, k) come from step j + 1, the pass that feeds it back
        fed = [
            torch.zeros(B, self.max_new_tokens + 1, b.topk, dtype=torch.long, device=out.device)
            for b in self.record
        ]
        out[:, 0] = self._pick(logits)
        self._hold(None)  # every new token is real
        done = [False] * B
        rows = slice(None)  # the rows of out still decoded (with shrink, a tensor once some go)
        n = self.max_new_tokens
        for j in range(1, self.max_new_tokens):
            keep = None
            if j % check_every == 0:
                if self._all_done(
                    out[rows, max(0, j - check_every - STOP_OVERLAP) : j], stopped, done
                ):
                    n = j
                    break
                if self.shrink and done.count(False) <= SHRINK_AT * len(done):
                    keep = [r for r, d in enumerate(done) if not d]
            out[rows, j] = self._replay(fed, j, rows)
            if keep is not None:  # after step j: it recorded the routing of their last tokens
                rows = self._keep_rows(keep, rows)
                done = [False] * len(keep)
        if self.record:  # the pass that feeds the last token back: its routing
            self._replay(fed, n, rows)
            self.routes = [
                (p.cpu(), f[:, 1 : n + 1].cpu()) for p, f in zip(prompt, fed, strict=True)
            ]
        return out[:, :n]

    def _keep_rows(self, keep: list[int], rows: torch.Tensor | slice) -> torch.Tensor:
        """Decode only the current rows ``keep`` from now on (``shrink``): the cache, the step's
        buffers, the prefix carries and the oracle masks cut to them, and the step captured
        anew for the smaller batch. Returns the rows of the call's batch they are."""
        idx = torch.tensor(keep, device=self.mask.device)
        self.cache.reorder_cache(idx)
        self.mask, self.tokens, self.positions, self.running = (
            t[idx] for t in (self.mask, self.tokens, self.positions, self.running)
        )
        for bank in self.banks:
            bank.keep_rows(idx)
        self.batch_size = None  # the next call allocates its own buffers
        if self.graph_step is not None:
            self.step = self.graph_step(self._step)
        return idx if isinstance(rows, slice) else rows[idx]

    def _replay(self, fed: list[torch.Tensor], j: int, rows=slice(None)) -> torch.Tensor:
        """Step ``j`` (:attr:`step`, a CUDA-graph replay when captured): its new tokens (B,),
        the routing of the tokens it fed written to column ``j`` of ``fed`` (in ``rows``, the
        rows still decoded, when some were dropped)."""
        if self.graphs:
            torch.compiler.cudagraph_mark_step_begin()
        nxt, ids = self.step()
        for buf, step_ids in zip(fed, ids, strict=True):
            buf[rows, j] = step_ids
        if self.graphs and not self.checked and j == 3:  # compiled, recorded, replayed
            warn_cudagraph_skips(self.skips_before, "the static decoder's step")
            self.checked = True
        return nxt

    def _all_done(self, new: torch.Tensor, stopped, done: list[bool]) -> bool:
        """Whether every row has met EOS or ``stopped`` (rows found done are marked in
        ``done``); one host sync. ``new``: the tokens since the last check and the
        :data:`STOP_OVERLAP` before them (a stop string met earlier ended its row then, and one
        split across two checks lies inside the overlap), so a check costs the same at every
        length."""
        running = self.running.tolist()
        for b in range(len(done)):
            done[b] = done[b] or not running[b]
        open_rows = [b for b in range(len(done)) if not done[b]]
        if stopped is not None and open_rows:
            ids = new[open_rows].tolist()
            for b, stop in zip(open_rows, stopped(ids), strict=True):
                done[b] = stop
        return all(done)


# Tokens of the previous check decoded again at the next: more than a stop string spans.
STOP_OVERLAP = 8
# ``shrink``: rows are dropped at a check once at most this share of the batch is still open.
SHRINK_AT = 0.75


def stop_test(tokenizer, stop: str):
    """A ``stopped`` test for :meth:`StaticDecoder.decode`: which rows' text (a list of id
    lists) contains ``stop``."""

    def stopped(rows: list[list[int]]) -> list[bool]:
        return [stop in text for text in tokenizer.batch_decode(rows, skip_special_tokens=True)]

    return stopped
