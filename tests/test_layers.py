"""The architecture as a test: DESIGN.md §2's import rules, and pure cores free of I/O."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.parsing import parse

ROOT = Path(__file__).resolve().parents[1]
OURS = {"streams", "envelope", "moon", "maestro", "surfaces"}
MAY_IMPORT = {
    "streams": set(),
    "envelope": {"streams"},
    "moon": {"streams", "envelope"},
    "maestro": {"streams", "envelope", "moon"},
    # The surfaces are adapters in front of both services' gates: nothing imports them but
    # the command line that starts the whole stack (`maestro up`, in SHELLS below).
    "surfaces": {"streams", "envelope", "moon", "maestro"},
}
# The outermost shells: a CLI may start anything, including the surfaces.
SHELLS = {"maestro/cli.py": {"surfaces"}}
IMPURE = {"nats", "structlog", "asyncio", "time", "random", "uuid", "os", "ortools", "subprocess",
          "socket"}
PURE = [
    "moon/dag.py",
    "moon/workflow.py",
    "moon/rules.py",
    "moon/state.py",
    "moon/outbox.py",
    "moon/replay.py",
    "maestro/goal.py",
    "maestro/sgs.py",
    "maestro/policy.py",
    "maestro/anticipate.py",
    "maestro/plan.py",
    "envelope/seal.py",
    "envelope/grants.py",
    "envelope/treaty.py",
    "envelope/budget.py",
]


def imports(path: Path) -> set[str]:
    tree = parse(path)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(MAY_IMPORT))
def test_packages_import_only_what_the_design_allows(package):
    for module in modules(package):
        allowed = SHELLS.get(str(module.relative_to(ROOT)), set())
        wrong = (imports(module) & OURS) - MAY_IMPORT[package] - {package} - allowed
        assert not wrong, f"{module.relative_to(ROOT)} imports {sorted(wrong)}"


def test_only_the_solver_module_imports_ortools():
    users = [m.relative_to(ROOT).as_posix() for p in OURS for m in modules(p)
             if "ortools" in imports(m)]
    assert users in ([], ["maestro/solve.py"])


@pytest.mark.parametrize("module", PURE)
def test_the_core_touches_no_io_clock_or_randomness(module):
    path = ROOT / module
    if not path.exists():
        pytest.skip(f"{module} not written yet")
    assert not imports(path) & IMPURE, f"{module} imports {sorted(imports(path) & IMPURE)}"
