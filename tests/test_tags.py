"""Tags, tag -> schema ownership, routing targets and the tag-dropout curriculum (SPEC section 3),
on hand-written problems."""

from __future__ import annotations

import pytest
import torch

from schemabank.method.tags import (
    TAGS,
    annotations,
    derive_tags,
    dropout_for_step,
    owned_schemas,
    routing_target,
    routing_targets,
    tag_line,
)

SEED_SCHEDULE = [0.0, 0.75, 0.5, 0.25]

# (question, solution, expected tags). Together they cover every tag in TAGS.
CASES = {
    "add": (
        "Tom has 3 apples and buys 5 more. How many apples does he have?",
        "He has 3+5=<<3+5=8>>8 apples.\n#### 8",
        ["add"],
    ),
    "sub": (
        "Sara had 10 candies and ate 4. How many are left?",
        "She has 10-4=<<10-4=6>>6 left.\n#### 6",
        ["sub"],
    ),
    "sub_with_spaces": (
        "There are 20 birds and 3 fly away. How many stay?",
        "<<20 - 3=17>>17 stay.\n#### 17",
        ["sub"],
    ),
    "sub_with_negative_result": (
        "It is 2 degrees and it cools by 5. What is the temperature?",
        "2-5=<<2-5=-3>>-3 degrees.\n#### -3",
        ["sub"],
    ),
    "sub_after_parenthesis": (
        "Mia has 10 cards, loses 2, then triples them. How many does she have?",
        "(10-2)*3=<<(10-2)*3=24>>24\n#### 24",
        ["sub", "mul"],
    ),
    "negative_number_is_not_sub": (
        "It is -3 degrees and it warms by 5. What is the temperature?",
        "-3+5=<<-3+5=2>>2 degrees.\n#### 2",
        ["add"],
    ),
    "negative_factor_is_not_sub": (
        "A level drops 3 feet a day for 5 days. What is the change?",
        "5*-3=<<5*-3=-15>>-15 feet.\n#### -15",
        ["mul"],
    ),
    "mul": (
        "Lia reads 7 pages a day for 3 days. How many pages does she read?",
        "She reads 7*3=<<7*3=21>>21 pages.\n#### 21",
        ["mul"],
    ),
    "div_in_solution_is_not_fraction": (
        "12 cookies are shared by 3 kids. How many does each get?",
        "Each gets 12/3=<<12/3=4>>4 cookies.\n#### 4",
        ["div"],
    ),
    "percent_sign_in_question": (
        "A class of 20 has 10% absent. How many are absent?",
        "20*10=<<20*10=200>>200 and 200/100=<<200/100=2>>2.\n#### 2",
        ["mul", "div", "percent"],
    ),
    "percent_word_in_question": (
        "A class of 20 has 10 percent absent. How many are absent?",
        "20*0.1=<<20*0.1=2>>2\n#### 2",
        ["mul", "percent"],
    ),
    "percent_word_only_in_solution": (
        "A class of 20 has one absent in ten. How many are absent?",
        "That is 10 Percent, so 20*0.1=<<20*0.1=2>>2\n#### 2",
        ["mul", "percent"],
    ),
    "fraction_slash_in_question": (
        "Ben eats 3/4 of 8 slices. How many does he eat?",
        "8*3=<<8*3=24>>24 and 24/4=<<24/4=6>>6\n#### 6",
        ["mul", "div", "fraction"],
    ),
    "fraction_decimal_in_question": (
        "Ann walks 2.5 miles a day. How far does she walk in 2 days?",
        "She walks 2.5*2=<<2.5*2=5>>5 miles.\n#### 5",
        ["mul", "fraction"],
    ),
    "thousands_separator_is_not_fraction": (
        "Kim has 1,000 beads and buys 20. How many does she have?",
        "1000+20=<<1000+20=1020>>1020\n#### 1020",
        ["add"],
    ),
    "sentence_period_is_not_fraction": (
        "Joe has 5. Amy has 3 more. How many does Amy have?",
        "5+3=<<5+3=8>>8\n#### 8",
        ["add"],
    ),
    "money_in_question": (
        "A pen costs $2. How much do 4 pens cost?",
        "4 pens cost 4*2=<<4*2=8>>8 dollars.\n#### 8",
        ["mul", "money"],
    ),
    "dollar_only_in_solution_is_not_money": (
        "A pen costs 2 dollars. How much do 4 pens cost?",
        "4 pens cost $4*2=$<<4*2=8>>8.\n#### 8",
        ["mul"],
    ),
    "three_annotations_is_not_multistep": (
        "Bob has 4 boxes of 6 eggs, breaks 3 and buys 5. How many does he have?",
        "4*6=<<4*6=24>>24\n24-3=<<24-3=21>>21\n21+5=<<21+5=26>>26\n#### 26",
        ["add", "sub", "mul"],
    ),
    "four_annotations_is_multistep": (
        "Bob has 4 boxes of 6 eggs, breaks 3, buys 5 and gives away half. How many does he keep?",
        "4*6=<<4*6=24>>24\n24-3=<<24-3=21>>21\n21+5=<<21+5=26>>26\n26/2=<<26/2=13>>13\n#### 13",
        ["add", "sub", "mul", "div", "multistep"],
    ),
    "operators_outside_annotations_do_not_count": (
        "Tom has 3 apples and buys 5 more. How many apples does he have?",
        "He has 3+5 = 8 apples, not 3*5 or 3-5 or 3/5.\n#### 8",
        [],
    ),
    "all_question_tags_without_annotations": (
        "A 1/2 pound bag costs $3 after a 25 percent discount. What did it cost?",
        "It cost 4 dollars.\n#### 4",
        ["percent", "fraction", "money"],
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_derive_tags(name):
    question, solution, expected = CASES[name]
    assert derive_tags(question, solution) == expected


def test_cases_cover_every_tag():
    covered = {t for _, _, tags in CASES.values() for t in tags}
    assert covered == set(TAGS)


def test_tag_set_and_order():
    assert TAGS == ("add", "sub", "mul", "div", "percent", "fraction", "money", "multistep")


def test_tags_come_in_tags_order():
    # A problem with every tag: the result follows TAGS, not the order of appearance.
    question = "Of $100, 1/2 is saved and 10% spent. What remains?"
    solution = (
        "<<100/2=50>>50 saved.\n<<100*10=1000>>\n<<1000/100=10>>10 spent.\n"
        "<<50-10=40>>40 and <<40+0=40>>40.\n#### 40"
    )
    assert derive_tags(question, solution) == list(TAGS)


def test_annotations_are_expressions_left_of_equals():
    solution = "4*6=<<4*6=24>>24 and <<-3+5=2>>2, then <<(10-2)*3=24>>.\n#### 24"
    assert annotations(solution) == ["4*6", "-3+5", "(10-2)*3"]
    assert annotations("no annotations here\n#### 3") == []


@pytest.mark.parametrize(
    ("tags", "line"),
    [
        (["mul", "money", "multistep"], "Tags: mul, money, multistep\n"),
        (["add"], "Tags: add\n"),
        ([], ""),
    ],
)
def test_tag_line(tags, line):
    assert tag_line(tags) == line


# ---------------------------------------------------------------------------------------------
# Ownership and routing targets


def test_owned_schemas_s32_blocks_of_four():
    assert owned_schemas("add", 32) == range(0, 4)
    assert owned_schemas("sub", 32) == range(4, 8)
    assert owned_schemas("money", 32) == range(24, 28)
    assert owned_schemas("multistep", 32) == range(28, 32)
    owned = [s for t in TAGS for s in owned_schemas(t, 32)]
    assert sorted(owned) == list(range(32))  # disjoint blocks covering every schema


def test_owned_schemas_s20_leaves_schemas_unowned():
    # 20 // 8 = 2 schemas per tag; schemas 16..19 belong to no tag.
    assert owned_schemas("add", 20) == range(0, 2)
    assert owned_schemas("div", 20) == range(6, 8)
    assert owned_schemas("multistep", 20) == range(14, 16)
    owned = [s for t in TAGS for s in owned_schemas(t, 20)]
    assert sorted(owned) == list(range(16))


def expected_target(num_schemas: int, ids: list[int]) -> list[float]:
    return [1.0 / len(ids) if s in ids else 0.0 for s in range(num_schemas)]


@pytest.mark.parametrize(
    ("tags", "num_schemas", "ids"),
    [
        (["mul"], 32, [8, 9, 10, 11]),
        (["add", "multistep"], 32, [0, 1, 2, 3, 28, 29, 30, 31]),
        (["mul", "money", "multistep"], 32, [8, 9, 10, 11, 24, 25, 26, 27, 28, 29, 30, 31]),
        (["div", "money"], 20, [6, 7, 12, 13]),
        (["mul", "mul"], 32, [8, 9, 10, 11]),  # a repeated tag does not weigh more
        ([], 32, list(range(32))),
        ([], 20, list(range(20))),  # no tags: uniform over all, unowned schemas included
    ],
)
def test_routing_target(tags, num_schemas, ids):
    target = routing_target(tags, num_schemas)
    assert target.shape == (num_schemas,)
    assert target.dtype == torch.float32
    assert target.tolist() == pytest.approx(expected_target(num_schemas, ids))
    assert float(target.sum()) == pytest.approx(1.0)


def test_routing_targets_are_each_problems_routing_target():
    """The batched targets equal the one-problem function's, bit for bit, row by row."""
    lists = [["mul"], [], ["add", "multistep"], list(TAGS), ["div", "money", "div"]]
    for S in (32, 20, 8):
        got = routing_targets(lists, S)
        assert got.shape == (len(lists), S) and got.dtype == torch.float32
        for row, tags in zip(got, lists, strict=True):
            want = torch.zeros(S)
            for t in tags:
                want[list(owned_schemas(t, S))] = 1.0
            if want.sum() == 0:
                want.fill_(1.0)
            assert torch.equal(row, want / want.sum())
    assert routing_targets([], 32).shape == (0, 32)


def test_routing_target_never_puts_mass_on_unowned_schemas():
    target = routing_target(list(TAGS), 20)
    assert target[16:].tolist() == [0.0] * 4
    assert target[:16].tolist() == pytest.approx([1 / 16] * 16)


# ---------------------------------------------------------------------------------------------
# Tag-dropout curriculum


@pytest.mark.parametrize(
    ("step", "p"),
    [
        (0, 0.0),
        (62, 0.0),
        (63, 0.75),
        (124, 0.75),
        (125, 0.5),
        (187, 0.5),
        (188, 0.25),
        (249, 0.25),
    ],
)
def test_dropout_seed_schedule_phase_boundaries(step, p):
    assert dropout_for_step(step, 250, SEED_SCHEDULE) == p


def test_dropout_seed_schedule_phase_lengths():
    # Phase of step s is floor(4 s / 250): phases of 63, 62, 63 and 62 steps.
    ps = [dropout_for_step(s, 250, SEED_SCHEDULE) for s in range(250)]
    assert [ps.count(p) for p in SEED_SCHEDULE] == [63, 62, 63, 62]
    assert ps == sorted(ps, key=SEED_SCHEDULE.index)  # phases in schedule order


def test_dropout_schedule_of_length_one():
    assert {dropout_for_step(s, 250, [0.3]) for s in range(250)} == {0.3}
    assert dropout_for_step(0, 1, [0.3]) == 0.3


@pytest.mark.parametrize(
    ("stage_steps", "phases"),
    [
        (10, [0, 0, 0, 1, 1, 2, 2, 2, 3, 3]),
        (5, [0, 0, 1, 2, 3]),
        (4, [0, 1, 2, 3]),
        (7, [0, 0, 1, 1, 2, 2, 3]),
    ],
)
def test_dropout_uneven_splits(stage_steps, phases):
    sched = [0.1, 0.2, 0.3, 0.4]
    got = [dropout_for_step(s, stage_steps, sched) for s in range(stage_steps)]
    assert got == [sched[i] for i in phases]


def test_dropout_phases_are_near_equal_and_all_used():
    sched = [0.0, 0.75, 0.5, 0.25]
    for stage_steps in range(4, 300):
        ps = [dropout_for_step(s, stage_steps, sched) for s in range(stage_steps)]
        sizes = [ps.count(p) for p in sched]
        assert min(sizes) >= 1, stage_steps
        assert max(sizes) - min(sizes) <= 1, stage_steps
        assert sum(sizes) == stage_steps


def test_dropout_after_the_stage_keeps_the_last_phase():
    assert dropout_for_step(250, 250, SEED_SCHEDULE) == 0.25
    assert dropout_for_step(1000, 250, SEED_SCHEDULE) == 0.25
