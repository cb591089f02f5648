"""The bank: zero gain is a no-op, the fast forward equals a per-schema reference, the KV cache
still works, and the regularisers have their textbook values."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from schemabank.errors import ConfigError
from schemabank.method.attach import BankSet, decoder_layers, resolve_layers
from schemabank.method.bank import SchemaBank, balance_loss, ortho_penalty, routing_ce, z_loss


def reference_forward(bank: SchemaBank, h: torch.Tensor) -> torch.Tensor:
    """SPEC section 2, token by token and schema by schema."""
    out = h.clone()
    x = h.reshape(-1, h.shape[-1])
    flat = out.reshape(-1, h.shape[-1])
    for t in range(x.shape[0]):
        ht = x[t]
        normed = ht / torch.sqrt(ht.pow(2).mean() + 1e-6)
        logits = bank.router.weight @ normed
        val, idx = logits.topk(bank.topk)
        w = torch.softmax(val, dim=0)
        delta = torch.zeros_like(ht)
        for j, s in enumerate(idx.tolist()):
            gate = torch.sigmoid(bank.A[s] @ bank.G)
            delta += w[j] * ((ht @ bank.U[s]) * gate) @ bank.V[s]
        flat[t] = ht + bank.gain * delta
    return out


def randomized(bank: SchemaBank, seed: int = 0) -> SchemaBank:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in bank.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * (0.5 if p.dim() else 1.0))
    return bank


@pytest.mark.parametrize("topk", [1, 2, 8])
def test_fast_forward_equals_reference(topk):
    torch.manual_seed(0)
    bank = randomized(SchemaBank(hidden_size=24, num_schemas=8, rank=3, topk=topk, attr_dim=5))
    h = torch.randn(2, 5, 24)
    torch.testing.assert_close(bank(h), reference_forward(bank, h), rtol=1e-5, atol=1e-5)


def test_fast_gradients_equal_reference():
    bank = randomized(SchemaBank(hidden_size=16, num_schemas=8, rank=2, topk=2, attr_dim=3))
    h = torch.randn(3, 4, 16)
    target = torch.randn(3, 4, 16)
    grads = []
    for fn in (bank.forward, lambda x: reference_forward(bank, x)):
        bank.zero_grad()
        ((fn(h) - target) ** 2).sum().backward()
        grads.append({n: p.grad.clone() for n, p in bank.named_parameters()})
    for name in grads[0]:
        torch.testing.assert_close(grads[0][name], grads[1][name], rtol=1e-4, atol=1e-5, msg=name)


def test_zero_gain_bank_is_exact_identity():
    bank = SchemaBank(hidden_size=32, num_schemas=8, rank=4, topk=2)
    h = torch.randn(2, 7, 32) * 100
    assert bank.gain.item() == 0.0
    assert torch.equal(bank(h), h)


def test_init_is_orthonormal():
    bank = SchemaBank(hidden_size=40, num_schemas=6, rank=5)
    eye = torch.eye(5)
    for s in range(6):
        torch.testing.assert_close(bank.U[s].T @ bank.U[s], eye, atol=1e-5, rtol=0)
        torch.testing.assert_close(bank.V[s] @ bank.V[s].T, eye, atol=1e-5, rtol=0)
    assert ortho_penalty(bank).item() < 1e-9


def test_ortho_penalty_value():
    bank = SchemaBank(hidden_size=8, num_schemas=2, rank=2)
    with torch.no_grad():
        bank.U.zero_()  # ||0 - I||² = r per schema
        bank.V[0] = torch.eye(2, 8) * 2  # ||4I - I||² = 9 · r
        bank.V[1] = torch.eye(2, 8)
    # mean over schemas of (2 + 18, 2 + 0)
    assert ortho_penalty(bank).item() == pytest.approx(11.0)


def test_routing_ce_balance_and_z_loss_values():
    S = 4
    logits = torch.zeros(1, 3, S)  # uniform router
    target = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    assert routing_ce(logits, target, None).item() == pytest.approx(math.log(4))
    # padding positions are left out: a masked token with huge logits does not count
    logits2 = torch.cat([logits, torch.tensor([[[50.0, -50, -50, -50]]])], dim=1)
    mask = torch.tensor([[1, 1, 1, 0]]).bool()
    assert routing_ce(logits2, target, mask).item() == pytest.approx(math.log(4))
    # uniform probabilities and uniform top-1 counts give a balance loss of exactly 1
    uniform = torch.eye(S).unsqueeze(0) * 1e-3  # each token prefers a different schema, p ≈ 1/S
    assert balance_loss(uniform, 1, None).item() == pytest.approx(1.0, abs=1e-3)
    # all tokens on one schema with probability ~1: S · 1 · 1
    collapsed = torch.tensor([[[20.0, 0, 0, 0]] * 5])
    assert balance_loss(collapsed, 1, None).item() == pytest.approx(S, rel=1e-3)
    assert z_loss(logits, None).item() == pytest.approx(math.log(4) ** 2)


def _load(path):
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    return tok, model


def test_attaching_zero_gain_banks_leaves_logits_bit_identical(tiny_model):
    tok, model = _load(tiny_model)
    ids = tok(["Question: Tom has 3 apples.\nAnswer:"], return_tensors="pt").input_ids
    with torch.no_grad():
        before = model(ids).logits
        banks = BankSet.attach(model, [0, -1], num_schemas=8, rank=4, topk=2, attr_dim=4)
        with_banks = model(ids).logits
        banks.detach()
        after = model(ids).logits
    assert torch.equal(before, with_banks)
    assert torch.equal(before, after)
    assert not any("schemabank" in n for n, _ in model.named_parameters())


def test_nonzero_gain_changes_logits_and_disabled_restores_them(tiny_model):
    tok, model = _load(tiny_model)
    ids = tok(["Question: Tom has 3 apples.\nAnswer:"], return_tensors="pt").input_ids
    banks = BankSet.attach(model, [-1], num_schemas=8, rank=4, topk=2, attr_dim=4)
    with torch.no_grad():
        base = model(ids).logits
        for b in banks:
            b.gain.fill_(2.0)
        changed = model(ids).logits
        with banks.disabled():
            off = model(ids).logits
    assert not torch.allclose(base, changed)
    assert torch.equal(base, off)


def test_cached_generation_equals_uncached(tiny_model):
    tok, model = _load(tiny_model)
    banks = BankSet.attach(model, [0, 1], num_schemas=8, rank=4, topk=2, attr_dim=4)
    with torch.no_grad():
        for b in banks:
            randomized(b, seed=3)
            b.gain.fill_(1.0)
    tok.padding_side = "left"
    batch = tok(
        ["Question: Tom has 3 apples.\nAnswer:", "Question: A pen costs $2.\nAnswer:"],
        return_tensors="pt",
        padding=True,
    )
    kwargs = dict(
        max_new_tokens=12, do_sample=False, pad_token_id=tok.pad_token_id, eos_token_id=None
    )
    with torch.no_grad():
        cached = model.generate(**batch, use_cache=True, **kwargs)
        uncached = model.generate(**batch, use_cache=False, **kwargs)
        with banks.disabled():
            plain = model.generate(**batch, use_cache=True, **kwargs)
    assert torch.equal(cached, uncached)
    assert not torch.equal(cached, plain)  # the bank does act on generation


def test_capturing_keeps_router_logits(tiny_llama):
    tok, model = _load(tiny_llama)
    banks = BankSet.attach(model, [-1], num_schemas=8, rank=4, topk=2, attr_dim=4)
    ids = tok(["Question: hi\nAnswer:"], return_tensors="pt").input_ids
    with banks.capturing(), torch.no_grad():
        model(ids)
        (logits,) = banks.last_logits()
    assert logits.shape == (1, ids.shape[1], 8) and logits.dtype == torch.float32
    assert all(b.last_logits is None and not b.capture for b in banks)
    with pytest.raises(RuntimeError):
        banks.last_logits()


def test_layer_resolution():
    assert resolve_layers([-1, 0], 4) == [0, 3]
    with pytest.raises(ConfigError, match="schemabank.layers"):
        resolve_layers([4], 4)
    with pytest.raises(ConfigError, match="schemabank.layers"):
        resolve_layers([-1, 3], 4)


def test_decoder_layers_found_for_both_architectures(tiny_model):
    _, model = _load(tiny_model)
    assert len(decoder_layers(model)) == model.config.num_hidden_layers


def test_bank_state_dict_round_trip(tiny_llama):
    _, model = _load(tiny_llama)
    banks = BankSet.attach(model, [0, 1], num_schemas=8, rank=4, topk=2, attr_dim=4)
    for b in banks:
        randomized(b, seed=1)
    sd = banks.state_dict()
    assert set(sd) == {
        f"layers.{i}.{k}" for i in (0, 1) for k in ("router.weight", "U", "V", "A", "G", "gain")
    }
    _, other = _load(tiny_llama)
    banks2 = BankSet.attach(other, [0, 1], num_schemas=8, rank=4, topk=2, attr_dim=4)
    banks2.load_state_dict(sd)
    assert all(torch.equal(sd[k], v) for k, v in banks2.state_dict().items())
    with pytest.raises(ValueError, match="shape"):
        banks2.load_state_dict({**sd, "layers.0.U": torch.zeros(8, 32, 5)})
    with pytest.raises(ValueError, match="missing"):
        banks2.load_state_dict({k: v for k, v in sd.items() if k != "layers.1.gain"})
