"""The layout rules of docs/architecture.md, checked on the source (AST, no imports).

- The round loop and the strategy talk only through arguments and return values: outside
  ``strategies/``, an attribute of a strategy is only ever *called* (a method), never read,
  written or aliased away.
- No function over 60 lines in the round (``orchestrator/federated``), the rules
  (``strategies``) and the site (``clients``).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OUTSIDE_STRATEGIES = ("orchestrator", "clients", "bench")
SHORT_FUNCTIONS = ("orchestrator/federated", "strategies", "clients")
MAX_FUNCTION_LINES = 60


def sources(*dirs: str) -> list[Path]:
    return sorted(p for d in dirs for p in (ROOT / d).rglob("*.py"))


def strategy_names(tree: ast.AST) -> set[str]:
    """How a module names the strategy objects it holds: what ``build_strategy(...)`` is assigned
    to, arguments and fields annotated with a ``*Strategy`` type, and what those are stored as."""
    names: set[str] = set()

    def annotated(ann: ast.expr | None) -> bool:
        # DeltaStrategy, Strategy, "Strategy | None": not a config section (StrategyConfig).
        return ann is not None and re.search(r"Strategy\b", ast.unparse(ann)) is not None

    for node in ast.walk(tree):
        if isinstance(node, ast.arg) and annotated(node.annotation):
            names.add(node.arg)
        if isinstance(node, ast.AnnAssign) and annotated(node.annotation):
            names.add(ast.unparse(node.target))
    for _ in range(3):  # stored under another name: self.strategy = strategy
        for node in ast.walk(tree):
            if not isinstance(node, ast.Assign):
                continue
            for target in node.targets:
                pairs = [(target, node.value)]
                if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                    pairs = list(zip(target.elts, node.value.elts, strict=False))
                for t, v in pairs:
                    built = isinstance(v, ast.Call) and ast.unparse(v.func) == "build_strategy"
                    if built or ast.unparse(v) in names:
                        names.add(ast.unparse(t))
    return names


def strategy_attribute_uses(tree: ast.AST) -> list[tuple[int, str]]:
    """Attributes of a strategy read or written without being called, and plain-name aliases
    of a strategy held as an attribute (``s = self.strategy`` hides the reads that follow)."""
    names = strategy_names(tree)
    called = {id(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and ast.unparse(node.value) in names
            and id(node) not in called
        ):
            found.append((node.lineno, ast.unparse(node)))
        if (
            isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Attribute)
            and ast.unparse(node.value) in names
            and all(isinstance(t, ast.Name) for t in node.targets)
        ):
            found.append((node.lineno, ast.unparse(node)))
    return sorted(found)


def test_no_strategy_attribute_is_read_or_written_outside_strategies():
    problems = []
    for path in sources(*OUTSIDE_STRATEGIES):
        for line, text in strategy_attribute_uses(ast.parse(path.read_text())):
            problems.append(f"{path.relative_to(ROOT)}:{line}: {text}")
    assert not problems, "strategy attributes used from outside:\n" + "\n".join(problems)


def test_the_attribute_check_catches_reads_writes_and_aliases():
    code = """
def f(strategy: DeltaStrategy, job):
    self.strategy = strategy
    x = self.strategy.last_train
    self.strategy.admit_round = f
    s = self.strategy
    ok = self.strategy.plan_train(1)
    strategy.load_state({})
    y = job.strategy.name  # a config section, not a strategy
    built = build_strategy(job)
    z = built.central_dp
"""
    found = [text for _, text in strategy_attribute_uses(ast.parse(code))]
    assert found == [
        "self.strategy.last_train",
        "self.strategy.admit_round",
        "s = self.strategy",
        "built.central_dp",
    ]


def long_functions(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    return [
        f"{path.relative_to(ROOT)}:{n.lineno} {n.name} ({n.end_lineno - n.lineno + 1} lines)"
        for n in ast.walk(tree)
        if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)
        and n.end_lineno is not None
        and n.end_lineno - n.lineno + 1 > MAX_FUNCTION_LINES
    ]


@pytest.mark.parametrize("package", SHORT_FUNCTIONS)
def test_no_function_over_60_lines(package: str):
    found = [f for path in sources(package) for f in long_functions(path)]
    assert not found, "split these so each reads as one step:\n" + "\n".join(found)
