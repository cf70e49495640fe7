"""Drafting (specdec_cli/drafting.py): what each `--draft` mode proposes, from which text,
with which evidence; the recycling tree it grows and what it learns. Model-free: the
Drafter is fed token ids directly."""

from __future__ import annotations

import numpy as np
import pytest

from specdec_cli import _native as nat
from specdec_cli.drafting import (AUTO_DRAFT_LEN, CHAIN_SOURCE, DRAFT_MODES, FIXED_DRAFT_LEN, MATRIX_K, USES_TREE,
                                  Drafter, DraftSettings)
from specdec_cli.options import EngineConfig

from native_inputs import i32

N_VOCAB = 100


def drafter(*context: int, history: list[list[int]] | None = None) -> Drafter:
    automaton = None
    if history is not None:
        automaton = nat.SuffixAutomaton()
        for document in history:
            automaton.extend(i32(*document))
            automaton.end_document()
    d = Drafter(N_VOCAB, history=automaton)
    d.observe(i32(*context))
    return d


def test_every_mode_has_a_chain_source_and_a_tree_rule():
    assert set(CHAIN_SOURCE) == set(DRAFT_MODES)
    assert {mode: CHAIN_SOURCE[mode] for mode in DRAFT_MODES} == {
        "none": None, "ngram": "ngram", "suffix": "suffix", "recycling": None, "hybrid": "ngram", "auto": "suffix"}
    assert USES_TREE == {"recycling", "hybrid", "auto"}


def test_default_settings_are_auto_within_one_decode_call():
    settings = DraftSettings()
    assert settings.mode == "auto"
    engine = EngineConfig()
    # The largest step the defaults allow (the tree plus a chain grafted on it) is one batch,
    # and the tree's branches fit the context's sequences.
    assert settings.tree_size + settings.chain_cap <= engine.n_batch
    assert settings.tree_size <= engine.n_seq_max


def test_auto_may_pick_longer_chains_than_a_fixed_mode_verifies():
    # A fixed mode verifies its whole chain at every match; auto picks from up to its cap.
    assert DraftSettings().chain_cap == AUTO_DRAFT_LEN == 64
    assert DraftSettings(mode="suffix").chain_cap == DraftSettings(mode="ngram").chain_cap == FIXED_DRAFT_LEN == 32
    assert DraftSettings(mode="auto", draft_len=8).chain_cap == 8
    assert DraftSettings(mode="hybrid", draft_len=0).chain_cap == 0


def test_ngram_chain_continues_the_most_recent_occurrence():
    d = drafter(5, 6, 7, 8, 1, 5, 6, 9, 2, 5, 6)
    lookup = d.lookup("ngram", 3)
    assert lookup.tokens.tolist() == [9, 2, 5] and lookup.match_length == 2
    assert (lookup.agreement, lookup.origin) == (1.0, "context")  # the index keeps no counts


def test_suffix_chain_says_how_far_earlier_text_agrees():
    # "1 2" was followed by 3 once and by 4 once: a split vote.
    d = drafter(1, 2, 3, 8, 1, 2, 4, 9, 1, 2)
    lookup = d.lookup("suffix", 4)
    assert lookup.match_length == 2 and lookup.origin == "context"
    assert lookup.agreement == pytest.approx(0.5)
    assert lookup.tokens[0] in (3, 4) and len(lookup.tokens) >= 2
    unanimous = drafter(1, 2, 3, 8, 1, 2, 3, 9, 1, 2).lookup("suffix", 2)
    assert unanimous.tokens[0] == 3 and unanimous.agreement == 1.0


def test_no_source_or_no_match_drafts_nothing():
    d = drafter(1, 2, 3, 4)
    for source, max_len in (("ngram", 4), ("suffix", 4), (None, 4), ("suffix", 0)):
        lookup = d.lookup(source, max_len)
        assert len(lookup.tokens) == 0 and lookup.origin == ""


def test_history_match_is_taken_when_it_is_longer():
    history = [[40, 41, 42, 43, 44, 45, 46]]
    d = drafter(7, 41, 42, 43, history=history)  # 3 tokens match the history, none the context
    lookup = d.lookup("suffix", 3)
    assert (lookup.tokens.tolist(), lookup.match_length, lookup.origin) == ([44, 45, 46], 3, "history")
    # The context's own match wins a tie: it is the text being written.
    d = drafter(41, 42, 50, 51, 41, 42, history=[[41, 42, 60]])
    lookup = d.lookup("suffix", 2)
    assert (lookup.tokens.tolist(), lookup.origin) == ([50, 51], "context")
    assert d.lookup("ngram", 3).origin == "context"  # n-grams never look at the history


def test_reset_context_forgets_the_text_and_the_history_position():
    d = drafter(7, 41, 42, 43, history=[[40, 41, 42, 43, 44]])
    d.reset_context()
    assert len(d.lookup("suffix", 3).tokens) == 0
    d.observe(i32(42, 43))
    assert d.lookup("suffix", 3).tokens.tolist() == [44]  # the history itself is kept


def test_plain_decoding_is_the_root_alone():
    tree = Drafter(N_VOCAB).draft(5, i32(), tree_size=1)
    assert tree.tokens.tolist() == [5] and tree.parents.tolist() == [-1] and (tree.size, tree.depth) == (1, 0)


def test_a_chain_without_a_tree():
    tree = Drafter(N_VOCAB).draft(5, i32(6, 7, 8), tree_size=1)
    assert tree.tokens.tolist() == [5, 6, 7, 8] and tree.parents.tolist() == [-1, 0, 1, 2] and tree.depth == 3


def test_recycling_tree_is_read_from_what_the_model_ranked_and_learned():
    d = Drafter(N_VOCAB)
    assert d.draft(5, i32(), tree_size=16).size == 1  # nothing learned yet: no candidates
    rng = np.random.default_rng(3)
    tokens = np.arange(N_VOCAB, dtype=np.int32)
    topk = np.stack([rng.choice(N_VOCAB, size=MATRIX_K, replace=False) for _ in range(N_VOCAB)]).astype(np.int32)
    d.learn(tokens, topk)  # every verified node's row := the model's top-k there
    tree = d.draft(5, i32(), tree_size=16)
    assert tree.size == 16
    children_of_root = tree.tokens[1:][tree.parents[1:] == 0].tolist()
    assert set(children_of_root) <= set(topk[5].tolist()) and topk[5][0] in children_of_root
    # a chain is grafted on: the tree keeps its nodes and gains the chain's new ones
    with_chain = d.draft(5, i32(1, 2, 3), tree_size=16)
    assert 16 < with_chain.size <= 19
    assert d.draft(5, i32(), tree_size=16).tokens.tolist() == tree.tokens.tolist()  # the same tree each time


def test_matrix_is_saved_and_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv("SPECDEC_CACHE_DIR", str(tmp_path))
    d = Drafter(N_VOCAB)
    d.learn(i32(4), np.array([[9, 8, 7, 6, 5, 4, 3, 2]], dtype=np.int32))
    path = tmp_path / "recycling" / "m.matrix"
    d.save_matrix(path)
    loaded = nat.RecyclingMatrix.load(str(path), N_VOCAB, MATRIX_K)
    assert loaded.row(4).tolist() == [9, 8, 7, 6, 5, 4, 3, 2] and loaded.filled_rows() == 1
    assert Drafter(N_VOCAB, matrix=loaded).draft(4, i32(), tree_size=3).tokens.tolist()[:2] == [4, 9]


def test_a_chain_ends_before_a_stop_token():
    """A chain copied out of the prompt stops just before a code-fence token (stop_tokens):
    an answer copying a code block leaves the copy there."""
    fence = 77
    context = [10, 11, 12, 13, fence, 14, 15, 99, 10, 11, 12]
    free = Drafter(N_VOCAB)
    free.observe(i32(*context))
    assert free.lookup("suffix", 8).tokens.tolist()[:3] == [13, fence, 14]
    stopped = Drafter(N_VOCAB, stop_tokens=i32(fence, 90))
    stopped.observe(i32(*context))
    found = stopped.lookup("suffix", 8)
    assert found.tokens.tolist() == [13] and found.match_length == 3
    assert stopped.lookup("ngram", 8).tokens.tolist() == [13]
    stopped.observe(i32(13))
    assert stopped.lookup("suffix", 8).tokens.tolist() == []  # the fence itself is the model's to write


def test_a_context_indexed_for_one_source_is_looked_up_only_from_it():
    """A generation indexes its context for its own mode's lookups only; asking the other
    index is an error, not an empty chain that would read as "no match"."""
    context = [10, 11, 12, 13, 14, 10, 11, 12]
    suffix_only = Drafter(N_VOCAB)
    suffix_only.reset_context(indexed=("suffix",))
    suffix_only.observe(i32(*context))
    assert suffix_only.lookup("suffix", 4).tokens.tolist() == [13, 14, 10, 11]
    with pytest.raises(ValueError, match="not indexed"):
        suffix_only.lookup("ngram", 4)
    both = drafter(*context)
    assert both.lookup("ngram", 4).tokens.tolist() == [13, 14, 10, 11]


@pytest.mark.slow
def test_fence_tokens_are_the_models_fence_pieces(smollm2_gguf):
    from specdec_cli.drafting import fence_tokens
    from specdec_cli.llama import LlamaModel

    model = LlamaModel(smollm2_gguf)
    try:
        def tokenize(text: str) -> np.ndarray:
            return model.tokenize(text, add_special=False, parse_special=False)

        fences = fence_tokens(tokenize, model.token_bytes)
        assert len(fences) and all(b"``" in model.token_bytes(int(t)) for t in fences)
        assert {int(t) for t in tokenize("```")} <= set(fences.tolist())
    finally:
        model.close()
