"""The shape of the code, checked: what varies by task lives in logitstore/tasks/ only, and
library modules and functions stay short enough to read at once (docs/tasks.md, style)."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from logitstore.tasks import ALIASES, TASKS

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = sorted(p for pkg in ("logitstore", "students") for p in (ROOT / pkg).rglob("*.py"))
TASKS_DIR = ROOT / "logitstore" / "tasks"
#: Names that can only mean a task ("token" is also the layout name, so it is left out).
TASK_NAMES = set(TASKS) | {a for a in ALIASES if a != "token"}
MAX_FILE_LINES = 420  # "about 400"
MAX_FUNCTION_LINES = 60


def _task_comparisons(tree: ast.AST) -> list[int]:
    """Line numbers of comparisons (==, !=, in) against a string that names a task."""
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for op in operands:
                values = op.elts if isinstance(op, (ast.Tuple, ast.List, ast.Set)) else [op]
                if any(isinstance(v, ast.Constant) and v.value in TASK_NAMES for v in values):
                    lines.append(node.lineno)
    return lines


def test_the_check_finds_a_task_comparison():
    assert _task_comparisons(ast.parse('if task == "question-answering":\n    pass\n')) == [1]
    assert _task_comparisons(ast.parse('ok = name in ("ner", "qa")\n')) == [1]
    assert _task_comparisons(ast.parse('if layout == "token":\n    pass\n')) == []


def test_no_code_outside_the_tasks_package_compares_task_names():
    found = [f"{p.relative_to(ROOT)}:{line}" for p in LIBRARY if TASKS_DIR not in p.parents
             for line in _task_comparisons(ast.parse(p.read_text(encoding="utf-8")))]
    assert not found, "task-name comparisons outside logitstore/tasks/ (make it a Task method):\n" + "\n".join(found)


@pytest.mark.parametrize("path", LIBRARY, ids=lambda p: str(p.relative_to(ROOT)))
def test_library_modules_and_functions_are_short(path):
    text = path.read_text(encoding="utf-8")
    assert len(text.splitlines()) <= MAX_FILE_LINES, f"{path.name} has {len(text.splitlines())} lines"
    long = [f"{n.name} ({n.end_lineno - n.lineno + 1} lines)" for n in ast.walk(ast.parse(text))
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES]
    assert not long, f"{path.name}: functions over {MAX_FUNCTION_LINES} lines: {', '.join(long)}"
