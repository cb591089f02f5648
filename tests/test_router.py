"""Router designs (prefix inputs, MLP routers), KV-cache exactness, oracle routing, the routing
fit to the stage-1 targets and per-tag routing precision/recall."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import TEST, TRAIN, tiny_config
from transformers import AutoModelForCausalLM, AutoTokenizer

from schemabank.config import config_from_dict
from schemabank.data import Problem
from schemabank.errors import ConfigError
from schemabank.evaluation import evaluate_gsm8k, oracle_masks, routing_fit
from schemabank.method.attach import BankSet
from schemabank.method.bank import RMS_EPS, SchemaBank
from schemabank.method.router import prefix_mean
from schemabank.method.tags import owned_schemas
from schemabank.metrics import tag_routing_scores

CPU = torch.device("cpu")
DESIGNS = [("prefix_mean", 0), ("token_prefix", 0), ("prefix_mean", 16), ("token", 16)]


def load(path):
    tok = AutoTokenizer.from_pretrained(path)
    return tok, AutoModelForCausalLM.from_pretrained(path).eval()


def attach(model, router_input: str, hidden: int, gain: float = 2.0) -> BankSet:
    torch.manual_seed(0)
    banks = BankSet.attach(model, [0, -1], 8, 4, 2, 4, router_input, hidden)
    with torch.no_grad():
        for b in banks:
            b.gain.fill_(gain)  # the banks change the output, so a wrong route would show
            for p in b.router.parameters():
                p.mul_(50.0)  # decisive routers: top-k far from ties
    return banks


def test_prefix_mean_matches_a_loop_over_real_tokens():
    torch.manual_seed(0)
    x = torch.randn(2, 5, 3)
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 0]])
    means, (s, n) = prefix_mean(x, mask, None)
    for b in range(2):
        real = [t for t in range(5) if mask[b, t]]
        for t in real:
            expect = torch.stack([x[b, u] for u in real if u <= t]).mean(0)
            torch.testing.assert_close(means[b, t], expect)
    assert n.tolist() == [3.0, 4.0]
    # carrying the running sum over a split gives the same means
    first, carry = prefix_mean(x[:, :3], mask[:, :3], None)
    second, _ = prefix_mean(x[:, 3:], mask[:, 3:], carry)
    torch.testing.assert_close(torch.cat([first, second], 1), means)


@pytest.mark.parametrize("router_input,hidden", DESIGNS)
def test_router_design_shapes_and_stage_groups(router_input, hidden):
    bank = SchemaBank(16, num_schemas=8, rank=4, topk=2, attr_dim=4, router_input=router_input)
    bank = SchemaBank(16, 8, 4, 2, 4, router_input, hidden)
    h = torch.randn(2, 5, 16)
    assert bank.router_logits(h).shape == (2, 5, 8)
    assert torch.equal(bank(h), h)  # gain 0: still the identity
    names = [n for n, _ in bank.named_parameters() if n.startswith("router.")]
    assert names and all(n.startswith("router.") for n in names)


@pytest.mark.parametrize("router_input,hidden", DESIGNS)
def test_router_logits_are_float32_in_a_model_cast_to_bf16(router_input, hidden):
    """Every router design computes its logits in float32, also after the bank (the model it
    is attached to) is cast to bf16: the logits of the bf16 weights, read back in float32, and
    gradients that reach the bf16 weights."""
    torch.manual_seed(0)
    bank = SchemaBank(16, 8, 4, 2, 4, router_input, hidden)
    h = torch.randn(2, 5, 16)
    cast = SchemaBank(16, 8, 4, 2, 4, router_input, hidden).to(torch.bfloat16)
    cast.load_state_dict(bank.state_dict())  # the same weights, rounded to bf16
    logits = cast.router_logits(h.to(torch.bfloat16))
    assert logits.dtype == torch.float32
    rounded = SchemaBank(16, 8, 4, 2, 4, router_input, hidden)
    rounded.load_state_dict({k: v.float() for k, v in cast.state_dict().items()})
    want = rounded.router_logits(h.to(torch.bfloat16).float())
    torch.testing.assert_close(logits, want)
    logits.sum().backward()
    assert all(
        p.grad is not None and p.grad.dtype == torch.bfloat16 for p in cast.router.parameters()
    )


def test_token_router_is_the_seed_router():
    """The default design reads the token's own RMS-normed state through one linear map."""
    torch.manual_seed(0)
    bank = SchemaBank(16, 8, 4, 2, 4)
    h = torch.randn(3, 16)
    normed = h / h.pow(2).mean(-1, keepdim=True).add(RMS_EPS).sqrt()
    torch.testing.assert_close(bank.router_logits(h[None])[0], normed @ bank.router.weight.T)
    assert list(bank.state_dict()).count("router.weight") == 1


@pytest.mark.parametrize("router_input,hidden", DESIGNS)
def test_kv_cache_decoding_routes_as_a_full_forward_pass(tiny_llama, router_input, hidden):
    """A left-padded batch decoded token by token with the KV cache gets, at every step, the
    router logits that one forward pass over the whole sequences gives."""
    tok, model = load(tiny_llama)
    banks = attach(model, router_input, hidden)
    tok.padding_side = "left"
    batch = tok(
        ["Question: Tom has 3 apples.", "Question: A pen"], return_tensors="pt", padding=True
    )
    ids, mask = batch["input_ids"], batch["attention_mask"]
    steps = 5
    with torch.no_grad(), banks.capturing():
        out = model(input_ids=ids, attention_mask=mask, use_cache=True)
        step_logits = [[lg.clone()] for lg in banks.last_logits()]
        cache, seq, m = out.past_key_values, ids, mask
        for _ in range(steps):
            nxt = out.logits[:, -1].argmax(-1, keepdim=True)
            seq, m = torch.cat([seq, nxt], 1), torch.cat([m, torch.ones_like(nxt)], 1)
            out = model(input_ids=nxt, attention_mask=m, past_key_values=cache, use_cache=True)
            cache = out.past_key_values
            for acc, lg in zip(step_logits, banks.last_logits(), strict=True):
                acc.append(lg.clone())
        model(input_ids=seq, attention_mask=m, use_cache=False)
        full = banks.last_logits()
    real = m.bool()
    for acc, lg in zip(step_logits, full, strict=True):
        incremental = torch.cat(acc, 1)
        torch.testing.assert_close(incremental[real], lg[real], rtol=1e-4, atol=1e-4)
    # and HF generate with the cache gives what generation without it gives
    kwargs = dict(max_new_tokens=6, do_sample=False, pad_token_id=tok.pad_token_id)
    with torch.no_grad():
        cached = model.generate(**batch, use_cache=True, **kwargs)
        uncached = model.generate(**batch, use_cache=False, **kwargs)
    assert torch.equal(cached, uncached)


def test_prefix_router_without_a_bank_set_reads_each_pass_alone():
    bank = SchemaBank(16, 8, 4, 2, 4, "prefix_mean")
    h = torch.randn(1, 4, 16)
    a = bank.router_logits(h)
    torch.testing.assert_close(bank.router_logits(h), a)  # no state carried between calls


def test_detach_removes_the_prefix_hook(tiny_llama):
    tok, model = load(tiny_llama)
    ids = tok(["Question: Tom has 3 apples."], return_tensors="pt").input_ids
    with torch.no_grad():
        before = model(ids).logits
        banks = attach(model, "prefix_mean", 0)
        assert not torch.equal(model(ids).logits, before)
        banks.detach()
        torch.testing.assert_close(model(ids).logits, before)


def test_restricted_routing_stays_inside_the_mask(tiny_llama):
    tok, model = load(tiny_llama)
    banks = attach(model, "token", 0)
    ids = tok(["Question: Tom has 3 apples and buys 5 more."] * 2, return_tensors="pt").input_ids
    allowed = torch.zeros(2, 8, dtype=torch.bool)
    allowed[0, [1, 5]] = True
    allowed[1, [6]] = True  # fewer schemas than k: the second slot gets no weight
    with torch.no_grad(), banks.capturing(), banks.restricted(allowed):
        model(ids)
        for b in banks:
            chosen = b.masked(b.last_logits).topk(2, -1).indices  # (B, T, k)
            assert set(chosen[0].unique().tolist()) <= {1, 5}
            w = b.routing_weights(b.masked(b.last_logits))
            assert torch.all(w[1][:, 6] == 1.0) and torch.all(w[0][:, [1, 5]].sum(-1) > 0.999)
    assert all(b.route_mask is None for b in banks)


def test_oracle_evaluation_routes_by_the_problems_tags(tiny_llama):
    tok, model = load(tiny_llama)
    banks = attach(model, "token", 0)
    problems = [Problem(q, a) for q, a in TEST]
    out = evaluate_gsm8k(model, tok, problems, [], banks, 2, 6, CPU, False, oracle=True)
    assert out["gsm8k"]["routing_mode"] == "oracle"
    masks = oracle_masks(problems, 8)
    routing = out["routing"]["layers"]
    for layer in routing:
        scores = routing[layer]["tag_routing"]
        for t in range(len(scores["tags"])):
            if scores["support"][t]:  # every problem with the tag is routed to it
                assert scores["recall"][t] == 1.0
    counts = np.array(routing[next(iter(routing))]["tag_schema"]["counts"])
    allowed_any = masks.any(0).numpy()
    assert counts[:, ~allowed_any].sum() == 0
    learned = evaluate_gsm8k(model, tok, problems, [], banks, 2, 6, CPU, False)
    assert learned["gsm8k"]["routing_mode"] == "learned"


def test_routing_fit_of_a_uniform_router_closes_no_gap(tiny_llama):
    tok, model = load(tiny_llama)
    banks = attach(model, "prefix_mean", 0)
    with torch.no_grad():
        for b in banks:
            b.router.weight.zero_()  # uniform routing: ce = ln S everywhere
    problems = [Problem(q, a) for q, a in TRAIN]
    fit = routing_fit(model, tok, banks, problems, 128, 3, CPU, False)
    S = 8
    assert fit["uniform"] == pytest.approx(math.log(S))
    targets_entropy = []
    for p in problems:
        n = len({s for t in p.tags for s in owned_schemas(t, S)}) or S
        targets_entropy.append(math.log(n))
    last = fit["regions"]["last"]
    assert last["tokens"] == len(problems)
    assert last["perfect"] == pytest.approx(np.mean(targets_entropy), rel=1e-5)
    for region in fit["regions"].values():
        assert region["ce"] == pytest.approx(math.log(S), rel=1e-5)
        assert region["gap_closed"] == pytest.approx(0.0, abs=1e-5)
    r = fit["regions"]
    assert r["question"]["tokens"] + r["answer"]["tokens"] == r["all"]["tokens"]


def test_routing_fit_of_a_router_that_knows_the_target(tiny_llama):
    """Problems of one tag set and a constant router that puts its mass on their block: the
    cross-entropy is the perfect router's and the whole gap is closed."""
    tok, model = load(tiny_llama)
    banks = attach(model, "token", 4)
    q, a = TRAIN[-1]  # tags: mul alone
    problems = [Problem(q, a)] * 3
    assert problems[0].tags == ["mul"]
    block = list(owned_schemas("mul", 8))
    with torch.no_grad():
        for b in banks:
            first, last = b.router[0], b.router[2]
            first.weight.zero_()
            first.bias.fill_(1.0)  # every token: the same hidden units
            last.weight.fill_(-30.0)
            last.weight[block] = 30.0  # all the mass on mul's block
    fit = routing_fit(model, tok, banks, problems, 128, 2, CPU, False)
    for region in fit["regions"].values():
        assert region["perfect"] == pytest.approx(math.log(len(block)), abs=1e-6)
        assert region["ce"] == pytest.approx(region["perfect"], abs=1e-4)
        assert region["gap_closed"] == pytest.approx(1.0, abs=1e-4)


def test_tag_routing_scores_by_hand():
    tags = ("a", "b")
    # S = 4: tag a owns schemas 0-1, tag b owns 2-3; threshold share 2 * 2 / 4 = 1.0
    problems = [["a"], ["b"], ["a", "b"], []]
    routes = [
        np.array([[0, 1], [1, 0]]),  # all in a's block: routed to a
        np.array([[0, 2], [3, 1]]),  # half and half: routed to neither
        np.array([[2, 3]]),  # all in b's block: routed to b
        np.array([[3, 2]]),  # routed to b without the tag
    ]
    out = tag_routing_scores(problems, routes, tags, 4)
    assert out["threshold_share"] == 1.0
    assert out["support"] == [2, 2] and out["routed"] == [1, 2]
    assert out["precision"] == [1.0, 0.5]
    assert out["recall"] == [0.5, 0.5]
    none = tag_routing_scores([[]], [np.array([[0, 1]])], tags, 4)
    assert none["recall"] == [None, None] and none["precision"] == [1.0 * 0, None]


def test_router_design_keys_are_validated(tiny_llama):
    cfg = tiny_config(tiny_llama)
    cfg["schemabank"] |= {"router_input": "sentence", "router_hidden": -1, "routing": "tags"}
    cfg["eval"] |= {"routing": "both"}
    with pytest.raises(ConfigError) as err:
        config_from_dict(cfg)
    msg = str(err.value)
    for key in ("router_input", "router_hidden", "schemabank.routing", "eval.routing"):
        assert key in msg


def test_a_run_with_a_prefix_mlp_router_and_oracle_routing(tiny_llama, data_dir, tmp_path):
    """Trains a prefix/MLP router with oracle routing in stages 2-3, saves it, records the
    routing fit and per-tag scores, and re-evaluates the checkpoint both ways."""
    import json

    from schemabank import training
    from schemabank.evaluation import evaluate_checkpoint

    raw = tiny_config(
        tiny_llama,
        schemabank={"router_input": "token_prefix", "router_hidden": 8, "routing": "oracle"},
        data={"dev_size": 2},
        eval={"limit": 3, "batch_size": 2, "max_new_tokens": 4, "ppl_windows": []},
    )
    cfg = config_from_dict(raw)
    run_dir = training.run(cfg, tmp_path, data_dir)
    r = json.loads((run_dir / "results.json").read_text())
    assert r["gsm8k"]["routing_mode"] == "oracle"
    assert r["parameters"]["router"] == 2 * 32 * 8 + 8 + 8 * 8
    fit = r["routing_fit"]
    assert set(fit) == {"dev", "test"} and fit["dev"]["problems"] == 2
    assert set(fit["test"]["regions"]) == {"all", "question", "answer", "last"}
    assert "tag_routing" in r["routing"]["layers"][str(1)]
    bank_cfg = json.loads((run_dir / "checkpoint" / "schemabank_config.json").read_text())
    assert (bank_cfg["router_input"], bank_cfg["router_hidden"]) == ("token_prefix", 8)
    again = evaluate_checkpoint(run_dir / "checkpoint", cfg, data_dir)
    assert again["gsm8k"]["problems"] == r["gsm8k"]["problems"]
    for region, v in fit["test"]["regions"].items():
        assert again["routing_fit"]["test"]["regions"][region]["ce"] == pytest.approx(v["ce"])
    learned = evaluate_checkpoint(
        run_dir / "checkpoint",
        config_from_dict({**raw, "eval": {**raw["eval"], "routing": "learned"}}),
        data_dir,
    )
    assert learned["gsm8k"]["routing_mode"] == "learned"
