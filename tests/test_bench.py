"""`specdec bench`: prompt-file parsing, method specs, report formats, mismatch reporting,
and one small real run through the CLI (2 prompts, 16 tokens, none + ngram, no peers)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest

from specdec_cli import bench
from specdec_cli.errors import UsageError


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_load_prompts_reads_first_turn_and_skips_blank_lines(tmp_path: Path) -> None:
    path = _write(tmp_path / "p.jsonl", [
        json.dumps({"question_id": 1, "category": "qa", "turns": ["What is 2+2?", "And 3+3?"]}),
        "",
        json.dumps({"question_id": "x", "category": "rag", "turns": ["Summarize."]}),
    ])
    prompts = bench.load_prompts(path)
    assert [(p.question_id, p.category, p.text) for p in prompts] == [("1", "qa", "What is 2+2?"),
                                                                     ("x", "rag", "Summarize.")]


@pytest.mark.parametrize("bad, message", [
    ("{not json", "not valid JSON"),
    ('{"question_id": 2, "category": "qa"}', "missing turns"),
    ('{"question_id": 2, "category": "qa", "turns": []}', "non-empty list"),
    ('[1, 2]', "expected a JSON object"),
])
def test_bad_prompt_line_names_the_line(tmp_path: Path, bad: str, message: str) -> None:
    good = json.dumps({"question_id": 1, "category": "qa", "turns": ["hi"]})
    path = _write(tmp_path / "p.jsonl", [good, good, bad])
    with pytest.raises(UsageError) as info:
        bench.load_prompts(path)
    assert "line 3" in str(info.value) and message in str(info.value)


def test_builtin_prompts_and_selection() -> None:
    prompts = bench.load_prompts(bench.default_prompts_path())
    assert len(prompts) == 240
    chosen = bench.select_prompts(prompts, ["qa", "rag"], 2)
    assert [p.category for p in chosen] == ["qa", "qa", "rag", "rag"]
    with pytest.raises(UsageError, match="unknown category"):
        bench.select_prompts(prompts, ["poetry"], None)


def test_method_specs() -> None:
    hybrid = bench.parse_method("hybrid:16:8")
    assert (hybrid.mode, hybrid.tree_size, hybrid.draft_len) == ("hybrid", 16, 8)
    assert bench.parse_method("ngram:4").draft_len == 4
    assert bench.parse_method("lcp-pld:2").num_pred_tokens == 2
    assert bench.parse_method("server:ngram-simple").spec_type == "ngram-simple"
    assert [m.name for m in bench.parse_methods("ngram")] == ["none", "ngram"]  # baseline added
    assert [m.name for m in bench.parse_methods("control,auto")] == ["none", "control", "auto"]
    assert bench.parse_method("control").mode == "none"
    for bad in ("turbo", "ngram:0", "ngram:x", "hybrid:1:2:3"):
        with pytest.raises(UsageError):
            bench.parse_method(bad)


def test_llama_server_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert bench.find_llama_server(None) is None
    with pytest.raises(UsageError, match="no executable"):
        bench.find_llama_server(str(tmp_path / "llama-server"))


def _report(matched: bool) -> bench.BenchReport:
    header = bench.ReportHeader(device="Test CPU", cores="2 cores / 2 threads", backend="CPU only",
                                model="m (m.gguf)", model_sha256="ab" * 32, llama_cpp_version="llama-cpp-python 0",
                                llama_system_info="CPU", threads=2, kv_cache="K f16, V q8_0", date="today",
                                max_tokens=16, repeat=1, prompts_file="p.jsonl", n_prompts=2)
    samples = []
    for qid, category in (("1", "qa"), ("2", "rag")):
        samples.append(bench.Sample("none", "specdec", qid, category, 100.0, 1.0, 0.1, 16, 2**28, True))
        samples.append(bench.Sample("hybrid", "specdec", qid, category, 150.0, 2.0, 0.1, 16, 2**28,
                                    matched or qid == "1"))
    return bench.BenchReport(header, bench.summarize(samples, ["none", "hybrid"]), samples)


def test_summary_pairs_ratios_per_category_and_overall() -> None:
    rows = {(r.method, r.category): r for r in _report(True).rows}
    assert rows[("hybrid", "qa")].speedup == 1.5 and rows[("hybrid", "overall")].n_prompts == 2
    assert rows[("hybrid", "rag")].mean_tokens_per_step == 2.0 and rows[("none", "overall")].speedup == 1.0


@pytest.mark.parametrize("fmt", bench.FORMATS)
def test_mismatch_is_loud_in_every_format(fmt: str) -> None:
    text = bench.render(_report(False), fmt)
    assert "MISMATCH" in text and "hybrid on rag #2" in text
    assert "MISMATCH" not in bench.render(_report(True), fmt)


def test_json_and_csv_shapes() -> None:
    report = _report(False)
    doc = json.loads(bench.to_json(report))
    assert doc["lossless"] is False and doc["header"]["device"] == "Test CPU"
    assert {(r["method"], r["category"]) for r in doc["results"]} >= {("hybrid", "qa"), ("none", "overall")}
    rows = list(csv.DictReader(line for line in io.StringIO(bench.to_csv(report)) if not line.startswith("#")))
    assert rows[0]["method"] == "none" and any(r["exact"].startswith("MISMATCH") for r in rows)


def test_plot_writes_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "speedup.png"
    bench.plot_speedups(_report(False), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_cli_small_real_run(run_specdec, smollm2_gguf: Path, tmp_path: Path) -> None:
    prompts = _write(tmp_path / "p.jsonl", [
        json.dumps({"question_id": 1, "category": "summarization",
                    "turns": ["Repeat this list: red, green, blue, red, green, blue, red, green."]}),
        json.dumps({"question_id": 2, "category": "qa", "turns": ["Name three primary colors."]}),
    ])
    result = run_specdec("bench", "-m", str(smollm2_gguf), "--prompts", str(prompts), "--methods", "none,ngram,control",
                         "--max-tokens", "16", "--no-peers", "--format", "json", "--out", "r.json",
                         "--no-progress", timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["lossless"] is True and doc["header"]["model_sha256"]
    cells = {(r["method"], r["category"]) for r in doc["results"]}
    assert cells == {(m, c) for m in ("none", "ngram", "control") for c in ("summarization", "qa", "overall")}
    assert all(r["tokens_per_s"] > 0 for r in doc["results"])
    control = {r["category"]: r for r in doc["results"] if r["method"] == "control"}
    assert control["overall"]["exact"] == "yes" and control["overall"]["speedup"] > 0
    assert control["overall"]["mean_tokens_per_step"] == pytest.approx(1.0, abs=0.1)

    bad = run_specdec("bench", "-m", str(smollm2_gguf), "--prompts", str(_write(tmp_path / "bad.jsonl", ["{"])))
    assert bad.returncode == 2 and "line 1" in bad.stderr
