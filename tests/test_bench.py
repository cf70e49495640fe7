"""`specdec bench`: prompt-file parsing, method specs, report formats, mismatch and
divergence reporting, and one small real run through the CLI (2 prompts, 16 tokens, no peers)."""

from __future__ import annotations

import csv
import io
import json
import sys
from pathlib import Path

import pytest

from specdec_cli.bench import methods, prompts, report, summary
from specdec_cli.bench.plot import plot_speedups
from specdec_cli.bench.runner import BenchReport, ReportHeader
from specdec_cli.bench.samples import Divergence, Sample, first_difference
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
    loaded = prompts.load_prompts(path)
    assert [(p.question_id, p.category, p.text) for p in loaded] == [("1", "qa", "What is 2+2?"),
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
        prompts.load_prompts(path)
    assert "line 3" in str(info.value) and message in str(info.value)


def test_builtin_prompts_and_selection() -> None:
    spec_bench = prompts.load_prompts(prompts.prompts_path("spec-bench"))
    assert len(spec_bench) == 240
    chosen = prompts.select_prompts(spec_bench, ["qa", "rag"], 2)
    assert [p.category for p in chosen] == ["qa", "qa", "rag", "rag"]
    with pytest.raises(UsageError, match="unknown category"):
        prompts.select_prompts(spec_bench, ["poetry"], None)
    edits = prompts.load_prompts(prompts.prompts_path("edits"))
    assert len(edits) >= 40 and all(p.category.startswith(("code-", "doc-")) for p in edits)
    assert prompts.prompts_path("my.jsonl") == Path("my.jsonl")


def test_method_specs() -> None:
    hybrid = methods.parse_method("hybrid:16:8")
    assert (hybrid.mode, hybrid.tree_size, hybrid.draft_len) == ("hybrid", 16, 8)
    assert methods.parse_method("ngram:4").draft_len == 4 and methods.parse_method("suffix:24").draft_len == 24
    assert methods.parse_method("lcp-pld:2").num_pred_tokens == 2
    assert methods.parse_method("server:ngram-simple").spec_type == "ngram-simple"
    assert [m.name for m in methods.parse_methods("ngram")] == ["none", "ngram"]  # baseline added
    assert [m.name for m in methods.parse_methods("control,auto")] == ["none", "control", "auto"]
    # every family gets its own baseline
    assert [m.name for m in methods.parse_methods("auto,server:ngram-simple")] == \
        ["none", "auto", "server:ngram-simple", "server"]
    assert methods.parse_method("control").mode == "none" and not methods.parse_method("control").is_baseline
    assert methods.parse_method("server").is_baseline and not methods.parse_method("server:ngram-mod").is_baseline
    for bad in ("turbo", "ngram:0", "ngram:x", "hybrid:1:2:3", "server:", "server:a:b"):
        with pytest.raises(UsageError):
            methods.parse_method(bad)


def test_llama_server_not_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    assert methods.find_llama_server(None) is None
    with pytest.raises(UsageError, match="no executable"):
        methods.find_llama_server(str(tmp_path / "llama-server"))


def _sample(method: str, family: str, qid: str, category: str, tok_s: float, e2e: float, same_none, same_server):
    return Sample(method, family, qid, category, tokens_per_s=tok_s, ttft_s=0.1, e2e_s=e2e,
                  tokens_per_step=2.0 if method == "hybrid" else 1.0,
                  rows_per_token=1.5 if method == "hybrid" else 1.0, n_generated=16, rss_bytes=2**28,
                  same_as_none=same_none, same_as_server=same_server)


def _report(matched: bool, engine: str = "exact") -> BenchReport:
    header = ReportHeader(device="Test CPU", cores="2 cores / 2 threads", backend="CPU only",
                          model="m (m.gguf)", model_sha256="ab" * 32, llama_cpp_version="llama-cpp-python 0",
                          llama_system_info="CPU", threads=2, kv_cache="K f16, V q8_0", engine=engine, date="today",
                          max_tokens=16, repeat=1, prompts="p.jsonl", n_prompts=2)
    samples, divergences = [], []
    for qid, category in (("1", "qa"), ("2", "rag")):
        same = matched or qid == "1"
        samples.append(_sample("none", "specdec", qid, category, 100.0, 2.0, None, True))
        samples.append(_sample("hybrid", "specdec", qid, category, 150.0, 1.5, same, same))
        samples.append(_sample("server", "server", qid, category, 125.0, 1.8, True, None))
        if not same:
            divergences.append(Divergence("hybrid", qid, category, "none", 7, top2_gap=0.0123, pair_gap=0.0123))
    rows = summary.summarize(samples, ["none", "hybrid", "server"])
    return BenchReport(header, rows, samples, divergences)


def test_summary_pairs_ratios_per_category_and_overall() -> None:
    rows = {(r.method, r.category): r for r in _report(True).rows}
    assert rows[("hybrid", "qa")].speedup == 1.5 and rows[("hybrid", "overall")].n_prompts == 2
    assert rows[("hybrid", "rag")].tokens_per_step == 2.0 and rows[("none", "overall")].speedup == 1.0
    # paired with llama-server's plain decoding on the same prompt: decode rate and end-to-end time
    assert rows[("hybrid", "qa")].vs_server == 1.2 and rows[("hybrid", "qa")].e2e_vs_server == 1.2
    assert rows[("none", "overall")].vs_server == 0.8 and rows[("server", "overall")].vs_server == 1.0
    assert rows[("hybrid", "overall")].same_as_none == 2 and rows[("none", "overall")].same_as_none is None


@pytest.mark.parametrize("fmt", report.FORMATS)
def test_exact_mode_mismatch_is_loud_in_every_format(fmt: str) -> None:
    text = report.render(_report(False), fmt)
    assert "LOSSLESS MISMATCH" in text and "hybrid on rag #2" in text
    assert "MISMATCH" not in report.render(_report(True), fmt)


@pytest.mark.parametrize("fmt", report.FORMATS)
def test_fast_mode_lists_each_divergence_with_its_logit_gap(fmt: str) -> None:
    text = report.render(_report(False, engine="fast"), fmt)
    assert "MISMATCH" not in text  # the fast mode promises equality only up to near-ties
    assert "hybrid" in text and "0.0123" in text and ("rag #2" in text or '"question_id": "2"' in text)


def test_json_and_csv_shapes() -> None:
    rep = _report(False)
    doc = json.loads(report.to_json(rep))
    assert doc["warning"].startswith("LOSSLESS MISMATCH") and doc["header"]["device"] == "Test CPU"
    assert doc["divergences"][0]["position"] == 7
    assert {(r["method"], r["category"]) for r in doc["results"]} >= {("hybrid", "qa"), ("none", "overall")}
    rows = list(csv.DictReader(line for line in io.StringIO(report.to_csv(rep)) if not line.startswith("#")))
    hybrid = {r["category"]: r["same_as_none"] for r in rows if r["method"] == "hybrid"}
    assert rows[0]["method"] == "none" and hybrid == {"qa": "1", "rag": "0", "overall": "1"}


def test_first_difference() -> None:
    assert first_difference([1, 2, 3], [1, 2, 3]) is None
    assert first_difference([1, 2, 3], [1, 5, 3]) == 1
    assert first_difference([1, 2], [1, 2, 3]) == 2  # one stopped early


@pytest.mark.slow  # renders a figure with matplotlib
def test_plot_writes_png(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    out = tmp_path / "speedup.png"
    plot_speedups(_report(False), out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_bench_cli_small_real_run(run_specdec, smollm2_gguf: Path, tmp_path: Path) -> None:
    """Exact mode: every method of ours must reproduce plain decoding token for token."""
    prompt_file = _write(tmp_path / "p.jsonl", [
        json.dumps({"question_id": 1, "category": "summarization",
                    "turns": ["Repeat this list: red, green, blue, red, green, blue, red, green."]}),
        json.dumps({"question_id": 2, "category": "qa", "turns": ["Name three primary colors."]}),
    ])
    result = run_specdec("bench", "-m", str(smollm2_gguf), "--prompts", str(prompt_file), "--methods",
                         "none,ngram,control", "--exact", "--max-tokens", "16", "--no-peers", "--format", "json",
                         "--out", "r.json", "--no-progress", timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    doc = json.loads((tmp_path / "r.json").read_text())
    assert doc["warning"] is None and doc["divergences"] == [] and doc["header"]["model_sha256"]
    assert doc["header"]["engine"] == "exact"
    cells = {(r["method"], r["category"]) for r in doc["results"]}
    assert cells == {(m, c) for m in ("none", "ngram", "control") for c in ("summarization", "qa", "overall")}
    assert all(r["tokens_per_s"] > 0 and r["e2e_s"] > 0 and r["ttft_ms"] > 0 for r in doc["results"])
    control = {r["category"]: r for r in doc["results"] if r["method"] == "control"}
    assert control["overall"]["same_as_none"] == 2 and control["overall"]["speedup"] > 0
    assert control["overall"]["tokens_per_step"] == 1.0 and control["overall"]["rows_per_token"] == 1.0

    bad = run_specdec("bench", "-m", str(smollm2_gguf), "--prompts", str(_write(tmp_path / "bad.jsonl", ["{"])))
    assert bad.returncode == 2 and "line 1" in bad.stderr


STUB_SERVER = r"""
import json, sys, time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

args = sys.argv[1:]
port = int(args[args.index("--port") + 1])
spec = args[args.index("--spec-type") + 1] if "--spec-type" in args else "none"
log = open(LOG, "a")


class Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def _send(self, doc):
        body = json.dumps(doc).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        self._send({"status": "ok"})

    def do_POST(self):
        req = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = req["prompt"]
        log.write(json.dumps({"spec": spec, "prompt": prompt, "n": req["n_predict"],
                              "tokens_given": all(isinstance(t, int) for t in prompt)}) + "\n")
        log.flush()
        n = min(req["n_predict"], 4)
        timings = {"prompt_ms": 50.0, "predicted_n": n, "predicted_ms": 20.0 * n, "predicted_per_second": 50.0}
        if spec != "none":
            timings.update(draft_n=6, draft_n_accepted=2)
        self._send({"content": "stub", "tokens": prompt[-n:], "timings": timings})


ThreadingHTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def _stub_server(tmp_path: Path) -> tuple[Path, Path]:
    """An executable that speaks llama-server's /health and /completion on loopback and logs
    every completion request (which server, which prompt)."""
    log = tmp_path / "server.log"
    script = tmp_path / "stub_server.py"
    script.write_text(f"LOG = {str(log)!r}\n" + STUB_SERVER)
    binary = tmp_path / "llama-server"
    binary.write_text(f"#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'version: 0 (stub)'; exit 0; fi\n"
                      f"exec {sys.executable} {script} \"$@\"\n")
    binary.chmod(0o755)
    return binary, log


@pytest.mark.slow
def test_bench_interleaves_server_methods_per_prompt(run_specdec, smollm2_gguf: Path, tmp_path: Path) -> None:
    binary, log = _stub_server(tmp_path)
    prompt_file = _write(tmp_path / "p.jsonl", [
        json.dumps({"question_id": i, "category": "qa", "turns": [text]})
        for i, text in enumerate(["Name three primary colors.", "What is the capital of France? Answer briefly."])])
    result = run_specdec("bench", "-m", str(smollm2_gguf), "--prompts", str(prompt_file), "--methods",
                         "none,server:ngram-simple", "--llama-server", str(binary), "--no-peers", "--max-tokens", "6",
                         "--repeat", "2", "--format", "json", "--out", "r.json", "--no-progress", timeout=300)
    assert result.returncode == 0, result.stderr
    doc = json.loads((tmp_path / "r.json").read_text())
    requests = [json.loads(line) for line in log.read_text().splitlines()]
    # two servers (the plain one added as the family's baseline), fed token ids
    assert {r["spec"] for r in requests} == {"none", "ngram-simple"} and all(r["tokens_given"] for r in requests)
    timed = [r for r in requests if r["n"] == 6]  # warm-up requests ask for 8
    prompt_order = [len(r["prompt"]) for r in timed]
    # interleaved per prompt: every server run of prompt 1 comes before any run of prompt 2
    assert len(timed) == 2 * 2 * 2 and len(set(prompt_order[:4])) == 1 and len(set(prompt_order[4:])) == 1
    # the warm-up prompt is none of the measured ones: their first TTFT is a full prefill too
    warm_ups = [r["prompt"] for r in requests if r["n"] == 8]
    assert len(warm_ups) == 2 and not any(w == r["prompt"] for w in warm_ups for r in timed)
    rows = {(r["method"], r["category"]): r for r in doc["results"]}
    assert rows[("server", "overall")]["tokens_per_s"] == 50.0
    assert rows[("server:ngram-simple", "overall")]["tokens_per_step"] == pytest.approx(4 / 2)
    # 2 passes for 4 tokens, verifying 2 rows + 6 drafted tokens
    assert rows[("server:ngram-simple", "overall")]["rows_per_token"] == pytest.approx((2 + 6) / 4)
    assert rows[("none", "overall")]["vs_server"] > 0 and rows[("none", "overall")]["e2e_vs_server"] > 0
    assert doc["header"]["llama_server"].endswith("(version: 0 (stub))")


TIED_PARENT = r"""
import sys, time
from specdec_cli.bench.run_server import start_child
child = start_child([sys.executable, "-c", "import time; time.sleep(120)"])
print(child.pid, flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_killed_bench_takes_its_llama_server_children_with_it() -> None:
    """SIGTERM skips the bench's `finally`: the children must go by themselves, or they keep
    their ports and the cores every later measurement needs."""
    import signal
    import subprocess
    import time

    import psutil

    parent = subprocess.Popen([sys.executable, "-c", TIED_PARENT], stdout=subprocess.PIPE, text=True)
    child_pid = int(parent.stdout.readline())
    assert psutil.Process(child_pid).status() != psutil.STATUS_ZOMBIE
    parent.send_signal(signal.SIGTERM)
    parent.wait(timeout=10)
    parent.stdout.close()

    def gone() -> bool:
        try:
            return psutil.Process(child_pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return True

    deadline = time.monotonic() + 10
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.05)
    survived = not gone()
    if survived:
        psutil.Process(child_pid).kill()
    assert not survived, "the child outlived its killed parent"
