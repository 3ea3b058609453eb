"""Which Ascend-only lines of mindnlp.accel ran: the coverage report of the "as on Ascend" mode.

Ascend-only regions are found in the source, not listed by hand:
  - a function that calls a fused kernel (a name of ascend_kernels.KERNELS): its whole body;
  - the body of an `if` whose test requires `pyboost()`, `stock_fused_rms_norm()`, `fused_enabled()` or
    `on_ascend()`
    (the call alone, or one operand of an `and`);
  - after a guard `if not <one of those>() [or ...]: return ...`, the rest of the block.
`LineRecorder` records the lines of mindnlp/accel files that run while it is active (sys.settrace).
"""
import ast
import os
import sys
from dataclasses import dataclass
from typing import Dict, Iterable, List, Set, Tuple

from ascend_kernels import KERNELS

ASCEND_QUERIES = ("pyboost", "stock_fused_rms_norm", "fused_enabled", "on_ascend")
FUSED_NAMES = tuple(kernel.name for kernel in KERNELS)


@dataclass(frozen=True)
class Region:
    path: str  # relative to the mindnlp/accel directory
    name: str  # "function f" or "f: if ... (line n)"
    lines: Tuple[int, ...]


def _called_name(node):
    if isinstance(node, ast.Call):
        func = node.func
        return func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    return None


def _requires_ascend(test) -> bool:
    if _called_name(test) in ASCEND_QUERIES:
        return True
    return isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And) and any(
        _called_name(value) in ASCEND_QUERIES for value in test.values)


def _is_negated_query(test) -> bool:
    return isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not) and _called_name(test.operand) in ASCEND_QUERIES


def _is_negated_guard(node) -> bool:
    """`if not q(): return` or `if not q() or ...: return`: what follows runs only where q() holds."""
    test = node.test
    negated = _is_negated_query(test) or (isinstance(test, ast.BoolOp) and isinstance(test.op, ast.Or)
                                          and any(_is_negated_query(value) for value in test.values))
    return negated and bool(node.body) and isinstance(node.body[-1], (ast.Return, ast.Raise))


def _lines(nodes: Iterable[ast.AST]) -> Tuple[int, ...]:
    """Lines of the statements in `nodes`, docstrings left out (they do not run as lines)."""
    found = set()
    for node in nodes:
        for sub in ast.walk(node):
            docstring = isinstance(sub, ast.Expr) and isinstance(sub.value, ast.Constant) and isinstance(
                sub.value.value, str)
            if isinstance(sub, ast.stmt) and not docstring:
                found.add(sub.lineno)
    return tuple(sorted(found))


def regions_of(source: str, path: str) -> List[Region]:
    tree = ast.parse(source)
    regions = []
    for function in [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]:
        if any(isinstance(n, ast.Call) and _called_name(n) in FUSED_NAMES for n in _own_nodes(function)):
            regions.append(Region(path, f"function {function.name}", _lines(function.body)))
            continue
        for block in _blocks(function):
            for index, node in enumerate(block):
                if isinstance(node, ast.If) and _requires_ascend(node.test):
                    regions.append(Region(path, f"{function.name}: if {ast.unparse(node.test)} (line {node.lineno})",
                                          _lines(node.body)))
                elif isinstance(node, ast.If) and _is_negated_guard(node) and block[index + 1:]:
                    regions.append(Region(path, f"{function.name}: after `if {ast.unparse(node.test)}: return` "
                                                f"(line {node.lineno})", _lines(block[index + 1:])))
    return regions


def _own_nodes(function):
    """The nodes of `function`'s body, not entering the functions and classes defined in it."""
    pending = list(function.body)
    while pending:
        node = pending.pop()
        yield node
        if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            pending.extend(ast.iter_child_nodes(node))


def _blocks(function):
    """The statement lists directly in `function` (its body and nested if/for/with/try bodies)."""
    pending = [function.body]
    while pending:
        block = pending.pop()
        yield block
        for node in block:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            for field in ("body", "orelse", "finalbody"):
                child = getattr(node, field, None)
                if isinstance(child, list) and child and isinstance(child[0], ast.stmt):
                    pending.append(child)


def accel_regions(accel_dir: str) -> List[Region]:
    regions = []
    for folder, _, files in os.walk(accel_dir):
        for name in sorted(files):
            if name.endswith(".py"):
                full = os.path.join(folder, name)
                with open(full, encoding="utf-8") as f:
                    regions += regions_of(f.read(), os.path.relpath(full, accel_dir))
    return regions


class LineRecorder:
    """Lines of the files under `root` that run between start() and stop(), as {path: {line}}."""

    def __init__(self, root: str):
        self.root = os.path.realpath(root) + os.sep
        self.lines: Dict[str, Set[int]] = {}
        self._previous = None
        self._paths: Dict[str, str] = {}  # co_filename -> path under root, or "" outside it

    def start(self):
        self._previous = sys.gettrace()
        sys.settrace(self._global)

    def stop(self):
        sys.settrace(self._previous)

    def _path(self, filename):
        if filename not in self._paths:
            real = os.path.realpath(filename)
            self._paths[filename] = os.path.relpath(real, self.root) if real.startswith(self.root) else ""
        return self._paths[filename]

    def _global(self, frame, event, arg):
        if event == "call" and self._path(frame.f_code.co_filename):
            return self._local
        return None

    def _local(self, frame, event, arg):
        if event == "line":
            self.lines.setdefault(self._path(frame.f_code.co_filename), set()).add(frame.f_lineno)
        return self._local


def report(regions: List[Region], ran: Dict[str, Set[int]], reasons: Dict[str, str]) -> Tuple[str, List[Region]]:
    """(markdown, regions not entered and without a reason). A region is entered when any of its lines ran."""
    rows, unexplained = [], []
    for region in regions:
        hit = sorted(set(region.lines) & ran.get(region.path, set()))
        if hit:
            status = f"ran ({len(hit)} of {len(region.lines)} lines)"
        else:
            reason = next((why for key, why in reasons.items() if key in f"{region.path}: {region.name}"), None)
            status = f"not entered: {reason}" if reason else "NOT ENTERED"
            if reason is None:
                unexplained.append(region)
        rows.append(f"| {region.path} | {region.name} | {status} |")
    text = "\n".join(["| file | Ascend-only region | in the as-on-Ascend tests |", "|---|---|---|"] + rows)
    return text + "\n", unexplained
