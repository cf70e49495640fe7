"""The shipped edit-task prompt set (specdec_cli/data/edits.jsonl, made by
bench/make_edit_prompts.py): its shape, its provenance, and that it is reproducible."""

from __future__ import annotations

import ast
import json
import re

import pytest
from repo_scripts import load_script

CODE_CATEGORIES = {"code-rename", "code-type-hints", "code-docstring", "code-fstring",
                   "code-remove-comments", "code-refactor"}
DOC_CATEGORIES = {"doc-rewrite", "doc-copyedit"}
FENCED = re.compile(r"```(\w+)\n(.*?)\n```", re.DOTALL)


@pytest.fixture(scope="module")
def generator():
    return load_script("bench/make_edit_prompts.py")


@pytest.fixture(scope="module")
def tasks(generator) -> list[dict]:
    return [json.loads(line) for line in generator.OUT_PATH.read_text(encoding="utf-8").splitlines()]


def test_size_and_unique_ids(tasks):
    assert len(tasks) >= 40
    ids = [task["question_id"] for task in tasks]
    assert len(set(ids)) == len(ids)
    assert all(re.fullmatch(r"edit-\d{3}", qid) for qid in ids)


def test_every_line_loads_with_the_bench_loader(generator, tasks):
    from specdec_cli.bench.prompts import load_prompts  # here, so the other checks run without it

    prompts = load_prompts(generator.OUT_PATH)
    assert [(p.question_id, p.category, p.text) for p in prompts] == \
        [(t["question_id"], t["category"], t["turns"][0]) for t in tasks]


def test_schema_and_provenance(tasks):
    for task in tasks:
        assert set(task) == {"question_id", "category", "turns", "source", "license"}
        assert len(task["turns"]) == 1
        assert re.match(r"cpython \d+\.\d+\.\d+ Lib/\S+\.py: \S", task["source"]), task["source"]
        assert task["license"] == "PSF-2.0"


def test_categories_cover_every_edit_kind(tasks):
    counts = {}
    for task in tasks:
        counts[task["category"]] = counts.get(task["category"], 0) + 1
    assert set(counts) == CODE_CATEGORIES | DOC_CATEGORIES
    assert sum(counts[c] for c in CODE_CATEGORIES) >= 32
    assert sum(counts[c] for c in DOC_CATEGORIES) >= 8
    assert min(counts.values()) >= 4  # enough per category for a per-category median


def single_blocks(tasks: list[dict], categories: set[str], language: str):
    """(id, prompt, code block) of each task in `categories`, whose prompt must hold exactly
    one fenced block, in `language`."""
    for task in tasks:
        if task["category"] in categories:
            prompt = task["turns"][0]
            blocks = FENCED.findall(prompt)
            assert [lang for lang, _ in blocks] == [language], task["question_id"]
            yield task["question_id"], prompt, blocks[0][1]


def test_code_tasks_hold_one_parsable_function(tasks):
    for question_id, prompt, code in single_blocks(tasks, CODE_CATEGORIES, "python"):
        body = ast.parse(code).body
        assert len(body) == 1 and isinstance(body[0], ast.FunctionDef), question_id
        assert prompt.endswith("Return the complete edited function only, in one code block.")


def test_doc_tasks_hold_one_paragraph(tasks):
    for _, prompt, text in single_blocks(tasks, DOC_CATEGORIES, "text"):
        assert 60 <= len(text.split()) <= 250
        assert prompt.endswith("Return the complete edited paragraph only, in one code block.")


@pytest.mark.slow  # rebuilds the whole set from the standard library's sources
def test_generator_reproduces_the_shipped_file(generator):
    recorded = generator.recorded_tag(generator.OUT_PATH)
    if recorded != generator.version_tag():
        pytest.skip(f"the set was made from {recorded}, this is {generator.version_tag()}: "
                    "another stdlib gives other tasks")
    assert generator.build_jsonl() == generator.OUT_PATH.read_text(encoding="utf-8")


def test_refuses_a_set_made_from_another_python(generator, tmp_path, monkeypatch, capsys):
    shipped = tmp_path / "edits.jsonl"
    shipped.write_text(json.dumps({"source": "cpython 2.7.18 Lib/textwrap.py: wrap (lines 1-20)"}) + "\n")
    monkeypatch.setattr(generator, "OUT_PATH", shipped)
    before = shipped.read_bytes()
    assert generator.main([]) == 2
    assert "cpython 2.7.18" in capsys.readouterr().err
    assert shipped.read_bytes() == before

