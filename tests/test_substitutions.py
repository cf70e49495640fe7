"""Learned substitutions (specdec_cli/substitutions.py): an answer that renames something
in the text it copies gets the rename in its later chains, learned from its own tokens."""

from __future__ import annotations

import numpy as np

from specdec_cli.drafting import Drafter
from specdec_cli.substitutions import MIN_COPY, SubstitutionMemory

from native_inputs import i32

OLD, NEW = 900, 901  # the renamed identifier, before and after


def source_with(name: int, seed: int = 3) -> list[int]:
    """200 random tokens with `name` at four places, like an identifier in code. (The first
    is well inside the answer's first chain: a divergence is learned once the answer is
    back on the chain's text for ALIGN tokens, so the chain has to reach that far.)"""
    rng = np.random.default_rng(seed)
    text = rng.integers(1, 800, size=200).tolist()
    for at in (20, 80, 130, 170):
        text[at] = name
    return text


def copy_steps(drafter: Drafter, prompt: list[int], answer: list[int]) -> list[tuple[int, list[int]]]:
    """Drive the drafter as `--draft suffix` does: every step verifies the whole chain and
    emits its right tokens and one more. Returns (answer position, chain) per step."""
    drafter.observe(i32(*prompt))
    steps, i = [], 0
    while i < len(answer):
        chain = drafter.lookup("suffix", 32).tokens.tolist()
        right = 0
        while right < len(chain) and i + right < len(answer) and chain[right] == answer[i + right]:
            right += 1
        emitted = answer[i:i + right + 1]
        steps.append((i, chain))
        drafter.observe(i32(*emitted))
        i += len(emitted)
    return steps


def chains_wrong_at_rename(steps: list[tuple[int, list[int]]], answer: list[int]) -> int:
    """Steps whose chain was right up to a renamed token and wrong there."""
    count = 0
    for i, chain in steps:
        right = 0
        while right < len(chain) and i + right < len(answer) and chain[right] == answer[i + right]:
            right += 1
        count += right < len(chain) and i + right < len(answer) and answer[i + right] == NEW
    return count


def test_a_rename_is_learned_once_and_drafted_at_every_later_occurrence() -> None:
    prompt = source_with(OLD) + [5, 6, 7]  # the code, then an instruction
    answer = source_with(NEW)
    learning = copy_steps(Drafter(1000), prompt, answer)
    plain = copy_steps(Drafter(1000, substitutions=False), prompt, answer)
    # Without substitutions every occurrence is a lost bet; with them only the first.
    assert chains_wrong_at_rename(plain, answer) == 4
    assert chains_wrong_at_rename(learning, answer) == 1
    assert len(learning) < len(plain)
    # The later chains spell the new name where the prompt has the old one.
    assert any(NEW in chain for i, chain in learning if i > 80)


def test_nothing_is_learned_outside_a_long_copy() -> None:
    """A divergence right after a short match is the answer going its own way, not an edit
    of a copy: it teaches nothing."""
    memory = SubstitutionMemory()
    memory.observe(i32(1, 2, 3, 4, 5, 6, 7, 8, 9))
    chain, writers = memory.rewrite(i32(4, 5, 6, 7, 8))
    memory.proposed(chain, MIN_COPY - 2, writers)  # wrong at its first token
    memory.observe(i32(40))
    memory.observe(i32(5, 6, 7, 8))
    assert memory.learned == []


def learned_after(chain: list[int], emitted: list[int]) -> list[tuple[list[int], list[int]]]:
    memory = SubstitutionMemory()
    memory.observe(i32(*range(100, 100 + MIN_COPY)))
    chain_now, writers = memory.rewrite(i32(*chain))
    memory.proposed(chain_now, MIN_COPY, writers)
    for token in emitted:  # one token a step, as plain decoding after a lost bet
        memory.observe(i32(token))
    return [(s.tolist(), r.tolist()) for s, r in memory.learned]


def test_the_smallest_replacement_that_explains_the_detour_is_learned() -> None:
    assert learned_after([1, 2, 3, 4, 5], [9, 2, 3, 4]) == [([1], [9])]  # one token for one
    assert learned_after([1, 2, 3, 4, 5, 6], [9, 8, 3, 4, 5]) == []  # (0, 3) not checkable yet
    assert learned_after([1, 2, 3, 4, 5, 6], [9, 8, 3, 4, 5, 6]) == [([1, 2], [9, 8])]
    assert learned_after([1, 2, 3, 4, 5, 6], [9, 8, 7, 2, 3, 4]) == [([1], [9, 8, 7])]  # a longer name


def test_insertions_and_deletions_are_not_learned() -> None:
    assert learned_after([1, 2, 3, 4, 5], [9, 1, 2, 3]) == []  # 9 inserted before the chain
    assert learned_after([1, 2, 3, 4, 5], [2, 3, 4]) == []  # 1 left out


def test_a_divergence_the_answer_never_comes_back_from_is_dropped() -> None:
    assert learned_after([1, 2, 3, 4, 5], [9] * 20 + [2, 3, 4]) == []


def test_rewrite_replaces_every_occurrence_left_to_right() -> None:
    memory = SubstitutionMemory()
    memory.learned = [(i32(7, 8), i32(70)), (i32(1), i32(10, 11))]
    chain, writers = memory.rewrite(i32(1, 7, 8, 7, 8, 2, 7))
    assert chain.tolist() == [10, 11, 70, 70, 2, 7]
    assert writers.tolist() == [1, 1, 0, 0, -1, -1]  # which substitution wrote each token
    assert memory.rewrite(i32(7))[0].tolist() == [7]  # shorter than the source
    assert memory.rewrite(i32())[0].tolist() == []


def test_a_new_generation_forgets_what_the_last_one_learned() -> None:
    d = Drafter(1000)
    copy_steps(d, source_with(OLD) + [5, 6, 7], source_with(NEW))
    assert d.substitutions.learned
    d.reset_context()
    assert d.substitutions.learned == []
