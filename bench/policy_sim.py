"""Replay drafting policies over recorded outputs, on the measured cost curve (issues 15, 16).

A greedy output does not depend on how it was drafted (up to near-ties), so once the
prompt and output tokens of a run are recorded, any policy can be replayed over them
without the model: at each step the drafter's lookup runs on the context so far, the
policy picks a chain length, the accepted length is how far the chain agrees with the
recorded output, and the step costs c(rows) from `specdec tune`'s profile (plus the
policy's per-step drafting overhead). Replays of our policy land within ~5% of measured
runs on this machine, and a replay of the rule llama-server's `ngram-simple` follows
(a 12-token match drafts 48 tokens) reproduced its measured tokens/step on 4 edit
prompts (7.31/7.31, 1.90/1.90, 1.85/1.84, 6.21/5.87). So a policy change is compared in
seconds, on the same outputs, with no timing noise; the bench then confirms it.

    python bench/policy_sim.py collect -m qwen2.5-coder-1.5b --per-category 3 --out outputs.json
    python bench/policy_sim.py replay outputs.json

Rules replayed: `auto` (policy.py, fresh or from a user's learned rates, and again after
one pass over the set), `auto` drafting from the n-gram index instead of the suffix
drafter (fresh), `ngram-simple`-like (match >= 12 tokens: draft 48),
`ngram-mod`-like (match >= 24 and >= 48 tokens known: draft up to 64) and the oracle
(each step the best chain length knowing how far the chain is right: an upper bound for
chain drafting from this lookup), and a drafter that knows the answer (each step the longest
prefix of the rest of the output found anywhere in the text so far: a bound for verbatim
copying). `auto`'s replays learn and apply the answer's substitutions
as the engine does (substitutions.py); llama-server's rules and the oracle draft the plain
lookup. Recycling trees are not replayed (they need the model).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import numpy as np

from specdec_cli import _native as nat
from specdec_cli.drafting import AUTO_DRAFT_LEN, Drafter, DraftSettings
from specdec_cli.policy import SPECULATIVE_STEP_OVERHEAD, CostCurve, SpeculationPolicy

MAX_CHAIN = 64


def collect(args) -> int:
    from specdec_cli.bench.prompts import load_prompts, prompts_path, select_prompts
    from specdec_cli.session import RunOptions, open_session

    prompts = select_prompts(load_prompts(prompts_path(args.prompts)), args.category, args.per_category)
    session = open_session(RunOptions(model=args.model, history=False))
    records = []
    for i, prompt in enumerate(prompts):
        tokens = session.prompt_tokens(prompt.text)
        result = session.generator.generate(tokens, max_tokens=args.max_tokens, draft=DraftSettings(mode=args.draft))
        records.append({"question_id": prompt.question_id, "category": prompt.category,
                        "prompt": tokens.tolist(), "output": result.tokens})
        print(f"{i + 1}/{len(prompts)} {prompt.question_id}: {len(result.tokens)} tokens", file=sys.stderr)
    profile = session.profile_key.path()
    stop_tokens = session.generator.drafter.stop_tokens.tolist()
    session.close()
    args.out.write_text(json.dumps({"model": session.alias, "draft": args.draft, "max_tokens": args.max_tokens,
                                    "profile": str(profile), "stop_tokens": stop_tokens, "records": records}) + "\n")
    return 0


class FixedRule:
    """Draft `length` tokens when the match is at least `min_match` long and the lookup
    knows at least `min_known` tokens; otherwise decode plainly."""

    def __init__(self, min_match: int, length: int, min_known: int = 1):
        self.min_match, self.length, self.min_known = min_match, length, min_known

    def chain_length(self, chain: np.ndarray, match_n: int, agreement: float, depth: int) -> int:
        ok = match_n >= self.min_match and len(chain) >= self.min_known
        return min(len(chain), self.length) if ok else 0


class PolicyRule:
    def __init__(self, policy: SpeculationPolicy):
        self.policy = policy

    def chain_length(self, chain: np.ndarray, match_n: int, agreement: float, depth: int) -> int:
        return self.policy.choose(chain, match_n, 0, agreement, depth=depth).draft_len


def replay(record: dict, rule, curve: CostCurve, oracle: bool = False, source: str = "suffix",
           max_tokens: int | None = None, stop_tokens: list[int] | None = None) -> dict:
    """Simulated decode of one recorded output: ms, steps, rows. `source` is the drafter's
    lookup: "suffix" (auto's) or "ngram" (the 1-4-token index auto used before). As the
    engine does, no chain runs past `max_tokens` (the collection's limit) or into one of the
    model's `stop_tokens` (drafting.fence_tokens, recorded at collection)."""
    out = record["output"]
    # The lookup only; the recycling matrix is unused.
    # llama-server's rules and the oracle draft the plain lookup: no learned substitutions.
    drafter = Drafter(n_vocab=1, stop_tokens=np.array(stop_tokens or [], dtype=np.int32),
                      substitutions=isinstance(rule, PolicyRule))
    drafter.reset_context(indexed=(source,))
    drafter.observe(np.array(record["prompt"], dtype=np.int32))
    policy = rule.policy if isinstance(rule, PolicyRule) else None
    if policy is not None:
        policy.reset()
    i, ms, steps, rows = 0, 0.0, 0, 0
    while i < len(out):
        depth = len(record["prompt"]) + i
        found = drafter.lookup(source, MAX_CHAIN if max_tokens is None else min(MAX_CHAIN, max_tokens - i - 1))
        chain = found.tokens
        right = 0
        while right < len(chain) and i + right < len(out) and chain[right] == out[i + right]:
            right += 1
        if oracle:
            length = max(range(len(chain) + 1), key=lambda d: (1 + min(right, d)) / step_cost(curve, d + 1, depth))
        else:
            length = rule.chain_length(chain, found.match_length, found.agreement, depth)
        produced = out[i:i + min(right, length) + 1]
        if policy is not None:
            policy.observe(produced)
        ms += step_cost(curve, length + 1, depth)
        rows += length + 1
        steps += 1
        drafter.observe(np.array(produced, dtype=np.int32))
        i += len(produced)
    return replayed(record, curve, ms, steps, rows)


def copy_bound(record: dict, curve: CostCurve, max_tokens: int | None = None) -> dict:
    """Simulated decode by a drafter that knows the answer: each step drafts the longest
    prefix of the rest of the output that occurs anywhere in the text so far (prompt and
    output), up to MAX_CHAIN tokens, and verifies the length that the curve makes fastest.
    No drafter that copies verbatim can beat it on these outputs (learned substitutions,
    which rewrite a copy, can on renames); it bounds what any lookup or policy could still
    gain."""
    out = record["output"]
    text = nat.SuffixAutomaton()
    text.extend(np.array(record["prompt"], dtype=np.int32))
    i, ms, steps, rows = 0, 0.0, 0, 0
    while i < len(out):
        depth = len(record["prompt"]) + i
        limit = MAX_CHAIN if max_tokens is None else min(MAX_CHAIN, max_tokens - i - 1)
        text.follow_reset()
        known = 0  # how far the rest of the output is a substring of the text so far
        while known < limit and i + known < len(out):
            text.follow(np.array([out[i + known]], dtype=np.int32))
            if text.lookup_followed(0)[2] != known + 1:
                break
            known += 1
        length = max(range(known + 1), key=lambda d: (1 + d) / step_cost(curve, d + 1, depth))
        produced = out[i:i + length + 1]
        ms += step_cost(curve, length + 1, depth)
        rows += length + 1
        steps += 1
        text.extend(np.array(produced, dtype=np.int32))
        i += len(produced)
    return replayed(record, curve, ms, steps, rows)


def step_cost(curve: CostCurve, rows: int, depth: int) -> float:
    """A replayed step of `rows` rows after `depth` cells of context; a speculative one also
    pays drafting's overhead."""
    overhead = SPECULATIVE_STEP_OVERHEAD * curve.at(1) if rows > 1 else 0.0
    return curve.at(rows) + rows * curve.row_extra(depth) + overhead


def replayed(record: dict, curve: CostCurve, ms: float, steps: int, rows: int) -> dict:
    """A replay's totals, with what plain decoding would have spent on the same output."""
    depth = len(record["prompt"])
    return {"ms": ms, "steps": steps, "rows": rows, "tokens": len(record["output"]),
            "plain_ms": sum(step_cost(curve, 1, depth + j) for j in range(len(record["output"])))}


def summarize(runs: list[dict]) -> dict:
    return {"tok_s": statistics.fmean(r["tokens"] / r["ms"] * 1000 for r in runs),
            "x_plain": statistics.fmean(r["plain_ms"] / r["ms"] for r in runs),
            "tok_step": sum(r["tokens"] for r in runs) / sum(r["steps"] for r in runs),
            "rows_tok": sum(r["rows"] for r in runs) / sum(r["tokens"] for r in runs)}


def replay_all(args) -> int:
    from specdec_cli.tuning import load_profile

    data = json.loads(args.outputs.read_text())
    profile = load_profile(Path(args.profile or data["profile"]))
    if profile is None:
        print(f"error: no tuner profile at {args.profile or data['profile']}; run `specdec tune`", file=sys.stderr)
        return 2
    curve, records = profile.curve, data["records"]
    plain = 1000 / curve.at(1)  # at the curve's own depth; "x plain" compares at each step's depth

    def chain_policy() -> SpeculationPolicy:  # `auto` without trees (they need the model)
        return SpeculationPolicy(curve, verify_batch=profile.verify_batch, max_tree=1,
                                 max_chain=AUTO_DRAFT_LEN)

    policy = chain_policy()
    start = "fresh"
    if args.learned:
        # The rates a user's earlier work left (session.learned_path): what `auto` starts from.
        policy.restore(json.loads(args.learned.read_text()))
        start = "learned"
    cap = data.get("max_tokens")  # the engine and llama-server draft no further than the limit
    stops = data.get("stop_tokens")  # our engine's chains end before a code fence (older recordings: none)
    runs = {f"auto ({start})": [replay(r, PolicyRule(policy), curve, max_tokens=cap, stop_tokens=stops)
                                for r in records]}
    runs["auto (second pass)"] = [replay(r, PolicyRule(policy), curve, max_tokens=cap, stop_tokens=stops)
                                  for r in records]
    # The same policy drafting from the n-gram index instead of the suffix drafter (issue 16:
    # no Spec-Bench category may be slower with the suffix drafter than without).
    ngram_policy = chain_policy()
    runs["auto, n-gram lookup"] = [replay(r, PolicyRule(ngram_policy), curve, source="ngram", max_tokens=cap,
                                          stop_tokens=stops) for r in records]
    runs["ngram-simple-like"] = [replay(r, FixedRule(12, 48), curve, max_tokens=cap) for r in records]
    runs["ngram-mod-like"] = [replay(r, FixedRule(24, 64, min_known=48), curve, max_tokens=cap) for r in records]
    runs["oracle (chain <= 64)"] = [replay(r, None, curve, oracle=True, max_tokens=cap) for r in records]
    runs["knows the answer"] = [copy_bound(r, curve, max_tokens=cap) for r in records]
    results = {name: summarize(rs) for name, rs in runs.items()}
    print(f"{data['model']}, {len(records)} recorded outputs, curve {profile.device}; "
          f"plain decoding {plain:.1f} tok/s")
    print(f"{'rule':24} {'tok/s':>7} {'x plain':>8} {'tok/step':>9} {'rows/tok':>9}")
    for name, r in results.items():
        print(f"{name:24} {r['tok_s']:7.1f} {r['x_plain']:8.2f} {r['tok_step']:9.2f} {r['rows_tok']:9.2f}")
    categories = sorted({r.get("category", "") for r in records})
    by_category = {}
    if len(categories) > 1:
        # Spec-Bench's target is per category (>= 0.98x plain decoding in every one).
        print(f"\nx plain by category: {' '.join(c[:11] for c in categories)}")
        for name, rs in runs.items():
            by_category[name] = {c: summarize([run for run, rec in zip(rs, records) if rec.get("category", "") == c])
                                 ["x_plain"] for c in categories}
            print(f"{name:24} " + " ".join(f"{by_category[name][c]:>{min(len(c), 11)}.3f}" for c in categories))
    if args.json:
        args.json.write_text(json.dumps({"plain_tok_s": plain, "results": results, "by_category": by_category},
                                        indent=1) + "\n")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("collect", help="record prompt and output tokens of greedy runs")
    c.add_argument("-m", "--model", default="qwen2.5-coder-1.5b")
    c.add_argument("--prompts", default="edits")
    c.add_argument("--per-category", type=int, default=3)
    c.add_argument("--category", action="append", help="only this category (repeatable; default: all)")
    c.add_argument("--max-tokens", type=int, default=256)
    c.add_argument("--draft", default="auto", help="how the outputs are generated (greedy: same text up to near-ties)")
    c.add_argument("--out", type=Path, required=True)
    r = sub.add_parser("replay", help="replay the rules over recorded outputs")
    r.add_argument("outputs", type=Path)
    r.add_argument("--profile", help="tuner profile JSON (default: the one recorded at collection)")
    r.add_argument("--learned", type=Path, help="start `auto` from these learned rates (a user's earlier work; "
                   "~/.cache/specdec/policy/<model>-fast.json) instead of the priors")
    r.add_argument("--json", type=Path, help="also write the table as JSON")
    args = parser.parse_args()
    return collect(args) if args.command == "collect" else replay_all(args)


if __name__ == "__main__":
    sys.exit(main())
