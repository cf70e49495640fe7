"""Pure-Python references of the native algorithms, used as oracles in the tests: slow and
obvious where the C++ is fast and clever."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Draft:
    tokens: list[int]
    shares: list[float]
    match_length: int
    occurrences: int


def _ends(text: list[int], pattern: list[int]) -> list[int]:
    """Every index e where `pattern` ends in `text`."""
    n = len(pattern)
    return [e for e in range(n - 1, len(text)) if text[e - n + 1:e + 1] == pattern]


def _chain(text: list[int], pattern: list[int], match_length: int, max_len: int) -> Draft:
    """From the occurrences of `pattern`, repeatedly take the most frequent next token (ties:
    the one whose first occurrence after the pattern is latest); negative tokens (document
    sentinels) are never drafted."""
    draft = Draft([], [], match_length, 0)
    if match_length == 0:
        return draft
    current = list(pattern)
    for step in range(max_len + 1):
        follow: dict[int, list[int]] = {}
        for e in _ends(text, current):
            if e + 1 < len(text) and text[e + 1] >= 0:
                follow.setdefault(text[e + 1], []).append(e + 1)
        total = sum(len(v) for v in follow.values())
        if step == 0:
            draft.occurrences = total
        if step == max_len or not follow:
            break
        token = max(follow, key=lambda t: (len(follow[t]), min(follow[t])))
        draft.tokens.append(token)
        draft.shares.append(len(follow[token]) / total)
        current.append(token)
    return draft


def longest_repeated_suffix(text: list[int]) -> int:
    """Length of the longest suffix of `text` that also ends at an earlier position."""
    n = len(text)
    for length in range(n - 1, 0, -1):
        suffix = text[n - length:]
        if any(e < n - 1 for e in _ends(text, suffix)):
            return length
    return 0


def suffix_lookup(text: list[int], max_len: int) -> Draft:
    """What SuffixAutomaton.lookup drafts for the indexed text `text`."""
    length = longest_repeated_suffix(text)
    return _chain(text, text[len(text) - length:] if length else [], length, max_len)


def continuations(text: list[int]) -> list[tuple[int, int]]:
    """(token, count) after the earlier occurrences of the longest repeated suffix, most
    frequent first, ties by token id."""
    length = longest_repeated_suffix(text)
    if not length:
        return []
    counts: dict[int, int] = {}
    for e in _ends(text, text[len(text) - length:]):
        if e + 1 < len(text) and text[e + 1] >= 0:
            counts[text[e + 1]] = counts.get(text[e + 1], 0) + 1
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))


def history_text(documents: list[list[int]]) -> list[int]:
    """Documents joined as the automaton holds them: each closed by its own sentinel."""
    text: list[int] = []
    for i, doc in enumerate(documents):
        text += doc + [-(i + 1)]
    return text


def followed_lookup(documents: list[list[int]], context: list[int], max_len: int) -> Draft:
    """What SuffixAutomaton.lookup_followed drafts after following `context` through an
    automaton of `documents`: from the longest suffix of the context found in them."""
    text = history_text(documents)
    length = 0
    for candidate in range(len(context), 0, -1):
        if _ends(text, context[len(context) - candidate:]):
            length = candidate
            break
    return _chain(text, context[len(context) - length:] if length else [], length, max_len)
