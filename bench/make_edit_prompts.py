"""Generate specdec_cli/data/edits.jsonl: a held-out set of edit tasks for `specdec bench`.

Edit requests ("rename this variable", "add type hints", "fix the typos") are where
model-free drafting should shine: most of the answer is a copy of the prompt. The tasks are
built from text no one on this project wrote, CPython's standard library as installed
with the running interpreter:

- code tasks: functions of 12-45 lines from a fixed list of stdlib modules, each with ONE
  edit that the function's AST shows to make sense (only functions with %-formatting get
  the f-string task, a real local variable is renamed, ...);
- document tasks: a fixed list of prose paragraphs from stdlib docstrings, each with a
  requested rewrite.

Only the stdlib is read, never third-party packages, so the set depends on nothing but the
Python version; the script refuses to overwrite a set made from another version (the
stdlib source would differ) unless --force. Output is byte-for-byte deterministic: the
candidates come in a fixed order (module list, then file order) and every choice comes from
one seeded random.Random.

    python bench/make_edit_prompts.py [--force]
"""

from __future__ import annotations

import argparse
import ast
import builtins
import functools
import io
import json
import keyword
import platform
import random
import re
import sys
import sysconfig
import textwrap
import tokenize
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

OUT_PATH = Path(__file__).resolve().parent.parent / "specdec_cli" / "data" / "edits.jsonl"
STDLIB = Path(sysconfig.get_paths()["stdlib"])
LICENSE = "PSF-2.0"
SEED = 0
TASKS_PER_CODE_KIND = 6

# Modules the code tasks come from: varied domains (text, parsing, numbers, network
# protocols, files), all plain Python source in the stdlib.
CODE_MODULES = (
    "argparse.py", "base64.py", "bisect.py", "calendar.py", "cmd.py", "configparser.py",
    "csv.py", "difflib.py", "email/utils.py", "fnmatch.py", "fractions.py", "ftplib.py",
    "gettext.py", "glob.py", "heapq.py", "http/cookies.py", "imaplib.py", "ipaddress.py",
    "json/decoder.py", "json/encoder.py", "mimetypes.py", "netrc.py", "optparse.py",
    "poplib.py", "pprint.py", "pstats.py", "quopri.py", "shlex.py", "shutil.py",
    "smtplib.py", "statistics.py", "string.py", "tabnanny.py", "textwrap.py", "timeit.py",
    "tokenize.py", "trace.py", "urllib/parse.py", "zipfile.py",
)
MIN_LINES, MAX_LINES = 12, 45
MAX_CODE_CHARS = 2400  # ~600 tokens: with the instruction, prompts stay under ~700 tokens

CODE_RETURN = "Return the complete edited function only, in one code block."
DOC_RETURN = "Return the complete edited paragraph only, in one code block."


# ---- reading the stdlib -----------------------------------------------------------------

@dataclass(frozen=True)
class Function:
    module: str  # path under Lib/, e.g. "json/decoder.py"
    qualname: str  # "TextWrapper._split"
    first: int  # 1-based line range in the module file, decorators included
    last: int
    code: str  # the source, dedented (methods start at column 0)
    node: ast.FunctionDef  # parsed from `code`, so offsets match what the prompt shows

    @property
    def is_method(self) -> bool:
        return "." in self.qualname

    @property
    def noun(self) -> str:
        return "method" if self.is_method else "function"


def version_tag() -> str:
    """What the set is made from, as written at the start of every `source` field."""
    return f"{platform.python_implementation().lower()} {platform.python_version()}"


def defs_with_qualnames(tree: ast.Module) -> list[tuple[str, ast.FunctionDef]]:
    """Module-level functions and methods of module-level classes (nested functions are
    left out: out of their enclosing function they read oddly)."""
    found = []
    for node in tree.body:
        if isinstance(node, ast.FunctionDef):
            found.append((node.name, node))
        elif isinstance(node, ast.ClassDef):
            found.extend((f"{node.name}.{item.name}", item) for item in node.body
                         if isinstance(item, ast.FunctionDef))
    return found


def read_functions(module: str) -> list[Function]:
    text = (STDLIB / module).read_text(encoding="utf-8")
    tree = ast.parse(text)
    lines = text.split("\n")  # as ast counts lines: splitlines() would also split at \f
    functions = []
    for qualname, node in defs_with_qualnames(tree):
        first = min([node.lineno] + [d.lineno for d in node.decorator_list])
        last = node.end_lineno
        if not MIN_LINES <= last - first + 1 <= MAX_LINES:
            continue
        code = textwrap.dedent("\n".join(lines[first - 1:last]))
        if len(code) > MAX_CODE_CHARS:
            continue
        try:
            parsed = ast.parse(code).body[0]
        except SyntaxError:  # a string literal with lines left of the indentation
            continue
        functions.append(Function(module, qualname, first, last, code, parsed))
    return functions


# ---- code edit kinds: what the AST must show, and the instruction -----------------------
# Each `find_*` is pure (returns what the edit needs, or None when the function does not
# qualify); the instruction is phrased afterwards with the shared random generator.

def own_nodes(func: ast.FunctionDef) -> list[ast.AST]:
    """The function's nodes, not descending into nested functions, classes or lambdas."""
    found, stack = [], list(ast.iter_child_nodes(func))
    while stack:
        node = stack.pop()
        found.append(node)
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            stack.extend(ast.iter_child_nodes(node))
    return found


def all_identifiers(fn: Function) -> set[str]:
    return set(re.findall(r"[A-Za-z_]\w*", fn.code))


def param_names(func: ast.FunctionDef) -> list[str]:
    args = func.args
    every = args.posonlyargs + args.args + args.kwonlyargs + [a for a in (args.vararg, args.kwarg) if a]
    return [a.arg for a in every]


def find_local_to_rename(fn: Function) -> str | None:
    """The local variable used most (at least 3 times; ties by name), never a parameter or
    a global/nonlocal."""
    nodes = own_nodes(fn.node)
    declared = {name for node in nodes if isinstance(node, (ast.Global, ast.Nonlocal)) for name in node.names}
    assigned = {node.id for node in nodes if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store)}
    locals_ = assigned - declared - set(param_names(fn.node)) - {"_"}
    uses = Counter(node.id for node in nodes if isinstance(node, ast.Name) and node.id in locals_)
    ranked = sorted(((-count, name) for name, count in uses.items() if count >= 3))
    return ranked[0][1] if ranked else None


# New names for common short locals; any other name gets a prefix.
RENAMES = {
    "i": "index", "j": "inner_index", "k": "key", "n": "count", "s": "text", "c": "char",
    "x": "value", "v": "value", "line": "current_line", "lines": "line_list",
    "result": "outcome", "res": "outcome", "data": "payload", "name": "entry_name",
    "key": "lookup_key", "value": "item_value", "parts": "pieces", "chunks": "pieces",
    "words": "tokens", "path": "target_path", "m": "match", "match": "found",
    "mo": "match", "mid": "middle", "pos": "position", "idx": "index", "buf": "buffer",
    "msg": "message", "rv": "retval", "fp": "file_obj", "f": "file_obj", "hash_": "hash_value",
}
RENAME_PREFIXES = ("the_", "cur_", "local_", "my_")


def new_local_name(fn: Function, old: str, rng: random.Random) -> str:
    taken = all_identifiers(fn)
    new = RENAMES.get(old)
    if new is None or new in taken:
        new = rng.choice(RENAME_PREFIXES) + old.lstrip("_")
    while new in taken:  # keep the edit a pure rename: never merge with an existing name
        new += "_"
    return new


def find_unannotated(fn: Function) -> bool | None:
    args = fn.node.args
    every = args.posonlyargs + args.args + args.kwonlyargs + [a for a in (args.vararg, args.kwarg) if a]
    if fn.node.returns or any(a.annotation for a in every):
        return None
    return True if [a for a in every if a.arg not in ("self", "cls")] else None


def find_no_docstring(fn: Function) -> str | None:
    return None if ast.get_docstring(fn.node) else "add"


def find_docstring(fn: Function) -> str | None:
    return "replace" if ast.get_docstring(fn.node) else None


def find_old_formatting(fn: Function) -> bool | None:
    for node in own_nodes(fn.node):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Mod) \
                and isinstance(node.left, ast.Constant) and isinstance(node.left.value, str):
            return True
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                and node.func.attr == "format" and isinstance(node.func.value, ast.Constant) \
                and isinstance(node.func.value.value, str):
            return True
    return None


def count_comments(fn: Function) -> int:
    tokens = tokenize.generate_tokens(io.StringIO(fn.code).readline)
    return sum(token.type == tokenize.COMMENT for token in tokens)


def find_comments(fn: Function) -> int | None:
    count = count_comments(fn)
    return count if count >= 3 else None


def statement_lists(func: ast.FunctionDef) -> list[list[ast.stmt]]:
    blocks = [func.body]
    for node in own_nodes(func):
        for name in ("body", "orelse", "finalbody"):
            block = getattr(node, name, None)
            if isinstance(block, list) and block and isinstance(block[0], ast.stmt):
                blocks.append(block)
        blocks.extend(handler.body for handler in getattr(node, "handlers", []))
    return blocks


def appended_name(stmt: ast.stmt) -> str | None:
    """`x.append(...)` as a statement, or `if c: x.append(...)`: the name x."""
    if isinstance(stmt, ast.If) and not stmt.orelse and len(stmt.body) == 1:
        stmt = stmt.body[0]
    if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
        call = stmt.value
        if isinstance(call.func, ast.Attribute) and call.func.attr == "append" \
                and isinstance(call.func.value, ast.Name) and len(call.args) == 1:
            return call.func.value.id
    return None


def find_list_building_loop(fn: Function) -> str | None:
    """`x = []` directly followed by a for loop whose only statement appends to x."""
    for block in statement_lists(fn.node):
        for before, loop in zip(block, block[1:]):
            if isinstance(before, ast.Assign) and len(before.targets) == 1 \
                    and isinstance(before.targets[0], ast.Name) \
                    and isinstance(before.value, ast.List) and not before.value.elts \
                    and isinstance(loop, ast.For) and not loop.orelse and len(loop.body) == 1 \
                    and appended_name(loop.body[0]) == before.targets[0].id:
                return before.targets[0].id
    return None


def body_without_docstring(func: ast.FunctionDef) -> list[ast.stmt]:
    return func.body[1:] if ast.get_docstring(func) is not None else func.body


def find_final_if(fn: Function) -> ast.If | None:
    """A function ending in an `if` with no else that holds at least three lines of work:
    inverting it into a guard clause de-indents that work."""
    body = body_without_docstring(fn.node)
    last = body[-1] if body else None
    # The `if` line is quoted in the instruction: it must fit on one line.
    if isinstance(last, ast.If) and not last.orelse and last.test.end_lineno == last.lineno \
            and last.end_lineno - last.body[0].lineno >= 2:
        return last
    return None


def find_new_function_name(fn: Function) -> str | None:
    """Private -> public or public -> private, when the new name clashes with nothing."""
    name = fn.node.name
    if name.startswith("__") and name.endswith("__"):
        return None
    new = name.lstrip("_") if name.startswith("_") else "_" + name
    clashes = keyword.iskeyword(new) or hasattr(builtins, new) or new in all_identifiers(fn) \
        or new in module_names(fn.module)
    return None if clashes or not new else new


@functools.cache
def module_names(module: str) -> set[str]:
    return set(re.findall(r"[A-Za-z_]\w*", (STDLIB / module).read_text(encoding="utf-8")))


# ---- instructions -----------------------------------------------------------------------

def code_rename(fn: Function, old: str, rng: random.Random) -> str:
    new = new_local_name(fn, old, rng)
    return rng.choice((
        f"Rename the local variable `{old}` to `{new}` everywhere in this {fn.noun}. Change nothing else.",
        f"In the {fn.noun} below, rename the variable `{old}` to `{new}`; keep all other code as it is.",
        f"Refactor: the local name `{old}` should be called `{new}`. Update every use of it and leave the rest unchanged.",
    ))


def code_type_hints(fn: Function, _: bool, rng: random.Random) -> str:
    return rng.choice((
        f"Add type hints to every parameter and to the return value of this {fn.noun}. Do not change its behaviour or anything else.",
        f"Annotate this {fn.noun} with type hints (parameters and return type), using built-in generics like `list[str]`. Keep the body unchanged.",
        f"Add PEP 484 type annotations to the signature of the {fn.noun} below; infer the types from how the parameters are used. Change nothing else.",
    ))


def code_docstring(fn: Function, mode: str, rng: random.Random) -> str:
    if mode == "add":
        return rng.choice((
            f"Add a docstring to this {fn.noun}: a one-line summary, a blank line, then what each parameter means and what it returns. Leave the code unchanged.",
            f"This {fn.noun} has no docstring. Write one (Google style, with Args: and Returns: sections) and leave the code as it is.",
        ))
    style = rng.choice(("Google style, with Args:, Returns: and, if it raises, Raises: sections",
                        "reStructuredText style, with :param name: and :returns: fields",
                        "NumPy style, with Parameters and Returns sections"))
    return f"Replace the docstring of this {fn.noun} with a new one in {style}. Keep the code unchanged."


def code_fstring(fn: Function, _: bool, rng: random.Random) -> str:
    return rng.choice((
        f"Convert every %-formatting and str.format() call in this {fn.noun} to an f-string. The output strings must stay exactly the same.",
        f"Modernise the string formatting in the {fn.noun} below: use f-strings instead of `%` and `.format()`. Change nothing else.",
    ))


def code_remove_comments(fn: Function, count: int, rng: random.Random) -> str:
    return rng.choice((
        f"Remove all {count} `#` comments from this {fn.noun}. Keep the docstring, if any, and every line of code exactly as it is.",
        f"Strip the comments out of the {fn.noun} below (there are {count}); do not touch the code or the docstring.",
    ))


def code_list_comprehension(fn: Function, name: str, rng: random.Random) -> str:
    return rng.choice((
        f"Replace the for loop that builds the list `{name}` with a list comprehension. Change nothing else in the {fn.noun}.",
        f"In this {fn.noun}, `{name}` is built with a for loop and `.append()`. Rewrite that as a single list comprehension and keep the rest unchanged.",
    ))


def code_early_return(fn: Function, last_if: ast.If, rng: random.Random) -> str:
    line = fn.code.splitlines()[last_if.lineno - 1].strip()
    return rng.choice((
        f"Add an early return: invert the final `{line}` into a guard clause that returns, and de-indent the code it contained. Behaviour must not change.",
        f"Flatten this {fn.noun}: turn the last `if` statement (`{line}`) into an early return so its body is no longer nested. Keep everything else.",
    ))


def code_rename_function(fn: Function, new: str, rng: random.Random) -> str:
    old = fn.node.name
    why = "make it private" if new.startswith("_") else "make it public"
    return rng.choice((
        f"Rename the {fn.noun} `{old}` to `{new}` ({why}), including any calls it makes to itself. Change nothing else.",
        f"Refactor: {why} by renaming `{old}` to `{new}`. Update recursive calls if there are any and keep the body otherwise unchanged.",
    ))


@dataclass(frozen=True)
class CodeEdit:
    find: Callable[[Function], object]  # what the edit needs, or None when it does not apply
    instruct: Callable[[Function, object, random.Random], str]


# Per category, the edits it cycles through. The rarer kinds come first so that they get
# the functions that qualify for them; every function is used at most once.
CODE_CATEGORIES = (
    ("code-fstring", (CodeEdit(find_old_formatting, code_fstring),)),
    ("code-remove-comments", (CodeEdit(find_comments, code_remove_comments),)),
    ("code-refactor", (
        CodeEdit(find_list_building_loop, code_list_comprehension),
        CodeEdit(find_final_if, code_early_return),
        CodeEdit(find_new_function_name, code_rename_function),
    )),
    ("code-docstring", (
        CodeEdit(find_no_docstring, code_docstring),
        CodeEdit(find_docstring, code_docstring),
    )),
    ("code-type-hints", (CodeEdit(find_unannotated, code_type_hints),)),
    ("code-rename", (CodeEdit(find_local_to_rename, code_rename),)),
)


# ---- document edits ---------------------------------------------------------------------

@dataclass(frozen=True)
class DocSource:
    module: str  # path under Lib/
    obj: str  # qualname of the documented object; "" for the module docstring
    paragraph: int  # 1-based, paragraphs split on blank lines of the cleaned docstring
    edit: str  # a key of DOC_CATEGORY
    term: tuple[str, str] = ("", "")  # for "replace": the term and its replacement


# Hand-picked prose paragraphs (2-6 sentences, 60-250 words), one module each, each paired
# with an edit that suits it (a passive paragraph gets "make it active", ...).
DOC_SOURCES = (
    DocSource("logging/__init__.py", "LogRecord", 2, "active"),
    DocSource("sched.py", "", 3, "passive"),
    DocSource("smtplib.py", "SMTP_SSL", 1, "formal"),
    DocSource("difflib.py", "SequenceMatcher", 1, "shorten"),
    DocSource("uuid.py", "UUID", 1, "bullets"),
    DocSource("abc.py", "ABCMeta", 2, "plain"),
    DocSource("queue.py", "Queue.put", 2, "replace", ("free slot", "open slot")),
    DocSource("threading.py", "_RLock.acquire", 2, "replace", ("lock", "mutex")),
    DocSource("getopt.py", "getopt", 3, "replace", ("option", "flag")),
    DocSource("pdb.py", "", 12, "typos"),
    DocSource("socketserver.py", "", 17, "typos"),
    DocSource("inspect.py", "getclasstree", 2, "typos"),
)
DOC_CATEGORY = {"active": "doc-rewrite", "passive": "doc-rewrite", "formal": "doc-rewrite",
                "shorten": "doc-rewrite", "bullets": "doc-rewrite", "plain": "doc-rewrite",
                "replace": "doc-copyedit", "typos": "doc-copyedit"}
TYPOS_PER_PARAGRAPH = 3


def find_object(tree: ast.Module, qualname: str) -> ast.AST:
    """The class or function named by qualname; ast.walk also finds definitions made under
    an `if` or `try` (smtplib.SMTP_SSL, abc.ABCMeta)."""
    node: ast.AST = tree
    for part in qualname.split("."):
        node = next(child for child in ast.walk(node) if child is not node
                    and isinstance(child, (ast.ClassDef, ast.FunctionDef)) and child.name == part)
    return node


def read_paragraph(source: DocSource) -> str:
    tree = ast.parse((STDLIB / source.module).read_text(encoding="utf-8"))
    node = find_object(tree, source.obj) if source.obj else tree
    paragraphs = re.split(r"\n\s*\n", ast.get_docstring(node, clean=True))
    # Docstrings are hard-wrapped and use two spaces after a full stop: reflow to one line.
    text = " ".join(paragraphs[source.paragraph - 1].split())
    words = len(text.split())
    sentences = len(re.split(r"(?<=[.!?])\s+(?=[A-Z\"'(])", text))
    if not (60 <= words <= 250 and 2 <= sentences <= 6):
        raise SystemExit(f"{source.module} {source.obj or 'module'} paragraph {source.paragraph}: "
                         f"{words} words, {sentences} sentences; DOC_SOURCES needs updating")
    return text


def swap_letters(word: str, rng: random.Random) -> str:
    """A typo: two neighbouring inner letters swapped (always a visible change)."""
    spots = [i for i in range(1, len(word) - 2) if word[i] != word[i + 1]]
    i = rng.choice(spots)
    return word[:i] + word[i + 1] + word[i] + word[i + 2:]


def add_typos(text: str, rng: random.Random) -> str:
    words = text.split(" ")
    eligible = [i for i, word in enumerate(words) if re.fullmatch(r"[a-z]{6,}", word)]
    for i in sorted(rng.sample(eligible, TYPOS_PER_PARAGRAPH)):
        words[i] = swap_letters(words[i], rng)
    return " ".join(words)


def doc_instruction(source: DocSource, text: str, rng: random.Random) -> tuple[str, str]:
    """(instruction, the paragraph as shown): only "typos" changes the paragraph."""
    words = len(text.split())
    if source.edit == "replace":
        old, new = source.term
        if len(re.findall(rf"\b{old}", text)) < 2:
            raise SystemExit(f"{source.module}: '{old}' is not used twice; DOC_SOURCES needs updating")
        return (f"Replace the term \"{old}\" with \"{new}\" throughout this paragraph (its plural "
                "too); adjust articles if needed and change nothing else."), text
    if source.edit == "typos":
        return rng.choice((
            f"This paragraph contains {TYPOS_PER_PARAGRAPH} spelling mistakes. Correct them and keep everything else exactly as it is.",
            f"Proofread the paragraph below: fix the {TYPOS_PER_PARAGRAPH} misspelled words and change nothing else.",
        )), add_typos(text, rng)
    instruction = {
        "active": "Rewrite this paragraph in the active voice wherever it uses the passive. Keep every technical detail and name.",
        "passive": "Rewrite this paragraph so that it uses the passive voice instead of addressing the reader (\"you can ...\"). Keep its meaning and every technical name.",
        "formal": "Make this paragraph more formal and grammatically complete, as for a reference manual. Keep all technical content.",
        "shorten": f"Shorten this paragraph by about a third (to roughly {round(words * 2 / 3)} words) without dropping any technical fact.",
        "bullets": "Convert this paragraph into a short introductory sentence followed by a bulleted list (one bullet per point, using \"- \"). Keep all the details.",
        "plain": "Rewrite this paragraph in plain language for a Python beginner, explaining the jargon briefly. Keep it to one paragraph and keep it accurate.",
    }[source.edit]
    return instruction, text


# ---- assembling the set -----------------------------------------------------------------

@dataclass(frozen=True)
class Task:
    category: str
    prompt: str
    source: str


def code_prompt(instruction: str, code: str) -> str:
    return f"{instruction}\n\n```python\n{code}\n```\n\n{CODE_RETURN}"


def doc_prompt(instruction: str, text: str) -> str:
    return f"{instruction}\n\n```text\n{text}\n```\n\n{DOC_RETURN}"


def pick_code_tasks(functions: list[Function], rng: random.Random) -> list[Task]:
    """TASKS_PER_CODE_KIND tasks per category, each on its own function, spread over the
    modules: a pick comes from the least-used modules among the functions that qualify."""
    used: set[Function] = set()
    per_module: Counter[str] = Counter()
    tasks = []
    for category, edits in CODE_CATEGORIES:
        candidates = {edit: [(fn, need) for fn in functions if (need := edit.find(fn)) is not None]
                      for edit in edits}
        for n in range(TASKS_PER_CODE_KIND):
            edit = edits[n % len(edits)]
            qualified = [(fn, need) for fn, need in candidates[edit] if fn not in used]
            if not qualified:
                raise SystemExit(f"no function left for {category} ({edit.find.__name__})")
            fewest = min(per_module[fn.module] for fn, _ in qualified)
            fn, need = rng.choice([pair for pair in qualified if per_module[pair[0].module] == fewest])
            used.add(fn)
            per_module[fn.module] += 1
            source = f"{version_tag()} Lib/{fn.module}: {fn.qualname} (lines {fn.first}-{fn.last})"
            tasks.append(Task(category, code_prompt(edit.instruct(fn, need, rng), fn.code), source))
    return tasks


def doc_tasks(rng: random.Random) -> list[Task]:
    tasks = []
    for source in DOC_SOURCES:
        text = read_paragraph(source)
        instruction, shown = doc_instruction(source, text, rng)
        where = f"{source.obj} docstring" if source.obj else "module docstring"
        tasks.append(Task(DOC_CATEGORY[source.edit], doc_prompt(instruction, shown),
                          f"{version_tag()} Lib/{source.module}: {where}, paragraph {source.paragraph}"))
    return tasks


def build_jsonl() -> str:
    """The whole file, as text: what the tests compare with the shipped file."""
    rng = random.Random(SEED)
    functions = [fn for module in CODE_MODULES for fn in read_functions(module)]
    tasks = pick_code_tasks(functions, rng) + doc_tasks(rng)
    lines = [json.dumps({"question_id": f"edit-{number:03d}", "category": task.category,
                         "turns": [task.prompt], "source": task.source, "license": LICENSE},
                        ensure_ascii=False)
             for number, task in enumerate(tasks, start=1)]
    return "\n".join(lines) + "\n"


def recorded_tag(path: Path) -> str | None:
    """The "cpython X.Y.Z" an existing set was made from, or None when there is none."""
    if not path.exists():
        return None
    first = json.loads(path.read_text(encoding="utf-8").splitlines()[0])
    return first["source"].split(" Lib/")[0]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--force", action="store_true",
                        help="remake the set even though this Python differs from the one it was made from")
    args = parser.parse_args(argv)
    recorded = recorded_tag(OUT_PATH)
    if recorded is not None and recorded != version_tag() and not args.force:
        print(f"{OUT_PATH.name} was made from {recorded}, this is {version_tag()}: its stdlib source "
              "differs, so the tasks would change. Run this with that Python, or pass --force to "
              "remake the set.", file=sys.stderr)
        return 2
    text = build_jsonl()
    OUT_PATH.write_text(text, encoding="utf-8", newline="\n")
    counts = Counter(json.loads(line)["category"] for line in text.splitlines())
    print(f"{sum(counts.values())} tasks in {OUT_PATH}: "
          + ", ".join(f"{category} {count}" for category, count in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
