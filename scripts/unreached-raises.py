"""List the ``raise`` statements under tasks/ that no test reached, and keep that list true.

Reads the coverage data of the last ``pytest --cov`` run (``[tool.coverage]`` in pyproject.toml)
and compares the raises it never ran with tests/unreached_raises.txt, which says for each one why
no test reaches it. Fails when a raise no test reached is not in that file, and when the file
lists a raise that no longer exists; a listed raise this run did reach is noted, not failed
(some are reached only when runs race).

A raise is named by its file, its enclosing function and its own text (``ast.unparse``, so
reformatting does not change it), never by its line number. One line of the list per raise::

    tasks/keyvault.py:_csr: raise KeyVaultError(f'...')  # why no test reaches it

Run after the whole suite (``make test`` does); ``--print`` writes every unreached raise in
that format, to start the list or to copy lines from.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from coverage import Coverage

REPO = Path(__file__).resolve().parent.parent
LIST = REPO / "tests" / "unreached_raises.txt"
PACKAGE = "tasks"
TEXT_WIDTH = 100  # longer raise texts are cut here (and end in "...")
SEPARATOR = "  # "  # never inside a raise's text: ast.unparse writes no two spaces in a row


@dataclass(frozen=True)
class Raise:
    """One raise statement: where it is, and whether the tests ran it."""

    path: str
    function: str
    text: str
    line: int

    @property
    def key(self) -> str:
        """How the list names it: file, enclosing function and text."""
        return f"{self.path}:{self.function}: {self.text}"


def _text(node: ast.Raise) -> str:
    text = ast.unparse(node)
    return text if len(text) <= TEXT_WIDTH else text[: TEXT_WIDTH - 3] + "..."


def raises_in(path: Path) -> list[Raise]:
    """Every raise statement in ``path``, with the qualified name of its enclosing function."""
    found: list[Raise] = []
    rel = path.relative_to(REPO).as_posix()

    def visit(node: ast.AST, scope: tuple[str, ...]) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                visit(child, (*scope, child.name))
            else:
                if isinstance(child, ast.Raise):
                    name = ".".join(scope) or "<module>"
                    found.append(Raise(rel, name, _text(child), child.lineno))
                visit(child, scope)

    visit(ast.parse(path.read_text(), filename=rel), ())
    return found


def unreached(cov: Coverage) -> tuple[list[Raise], list[Raise]]:
    """All raises under the package, and those whose line the tests never ran."""
    everything: list[Raise] = []
    missed: list[Raise] = []
    for path in sorted((REPO / PACKAGE).rglob("*.py")):
        raises = raises_in(path)
        if not raises:
            continue
        _, statements, _, missing, _ = cov.analysis2(str(path))
        not_run = set(missing) | (set(r.line for r in raises) - set(statements))
        everything += raises
        missed += [r for r in raises if r.line in not_run]
    return everything, missed


def read_list(path: Path) -> tuple[dict[str, str], list[str]]:
    """The listed raises (key to reason), and the problems with the file itself."""
    listed: dict[str, str] = {}
    problems: list[str] = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        key, sep, reason = line.partition(SEPARATOR)
        where = f"{path.relative_to(REPO)}:{number}"
        if not sep or not reason.strip():
            problems.append(f"{where}: no reason (end the line with '{SEPARATOR}<why>')")
        elif key in listed:
            problems.append(f"{where}: listed twice: {key}")
        listed[key] = reason.strip()
    return listed, problems


def main() -> int:
    """Compare the unreached raises with the list; print what differs."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--list", type=Path, default=LIST, help="the list of known unreached")
    parser.add_argument("--print", action="store_true", help="print every unreached raise")
    args = parser.parse_args()

    cov = Coverage(config_file=str(REPO / "pyproject.toml"))
    cov.load()
    if not cov.get_data().measured_files():
        sys.stderr.write("unreached-raises: no coverage data; run pytest --cov first\n")
        return 2
    everything, missed = unreached(cov)
    if args.print:
        for r in missed:
            sys.stdout.write(f"{r.key}{SEPARATOR}TODO: why no test reaches it (line {r.line})\n")
        return 0

    listed, problems = read_list(args.list)
    existing = Counter(r.key for r in everything)
    missed_keys = {r.key for r in missed}
    for r in missed:
        if r.key not in listed:
            problems.append(
                f"{r.path}:{r.line}: no test reaches this raise; test it, or add to "
                f"{args.list.relative_to(REPO)}:\n    {r.key}{SEPARATOR}<why no test reaches it>"
            )
    notes = []
    for key in listed:
        if key not in existing:
            problems.append(f"listed but no longer exists (remove the line): {key}")
        elif key not in missed_keys:
            # Not a failure: some listed raises are reached only when runs race (the reasons
            # say so), and a run that happened to hit one must not turn CI red.
            notes.append(f"listed but reached in this run (remove the line if it always is): {key}")
    for note in notes:
        sys.stderr.write(f"unreached-raises: note: {note}\n")
    for problem in problems:
        sys.stderr.write(f"unreached-raises: {problem}\n")
    if problems:
        sys.stderr.write(f"unreached-raises: {len(problems)} problems\n")
        return 1
    reached = len(everything) - len(missed)
    sys.stdout.write(
        f"unreached-raises: {reached} of {len(everything)} raises under {PACKAGE}/ reached; "
        f"the other {len(missed)} are listed with their reasons\n"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
