"""The mutation audit's mutator (scripts/mutation_audit.py): which sites it mutates, and how."""

from __future__ import annotations

import textwrap

from scripts.mutation_audit import enumerate_mutants, mutate

SOURCE = textwrap.dedent('''
    """Docstring: never mutated."""
    import logging
    from typing import Literal

    log = logging.getLogger(__name__)
    __all__ = ["f"]
    Kind = Literal["a", "b"]


    def f(x: int = 3, flag: bool = True) -> float:
        """Also a docstring."""
        log.info("value %d", x + 1)
        if x < 10 and not flag:
            return max(x * 2.5, -1)
        for i in range(x):
            if i in (1, 2):
                continue
        return f"{x + 1}" == "4"
''')


def _by_line() -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for m in enumerate_mutants(SOURCE):
        out.setdefault(m.line, []).append(m.description)
    return out


def test_sites_and_what_is_left_alone() -> None:
    sites = _by_line()
    # docstrings, imports, the logger call, __all__, Literal[...] and annotations: nothing
    assert set(sites) == {11, 14, 15, 17, 18, 19}
    assert sorted(sites[11]) == ["3 -> 4", "True -> False"]  # defaults (not the annotations)
    assert sorted(sites[14]) == ["10 -> 11", "And -> Or", "Lt -> LtE", "drop Not"]
    assert sorted(sites[15]) == ["1 -> 2", "2.5 -> 3.5", "Mult -> Div", "drop USub", "max -> min"]
    assert sorted(sites[17]) == ["1 -> 2", "2 -> 3", "In -> NotIn"]
    assert sites[18] == ["Continue -> Break"]
    assert sorted(sites[19]) == ["Eq -> NotEq", "str -> XXstrXX"]  # the f-string itself is left alone


def test_each_mutant_changes_exactly_its_site() -> None:
    mutants = {m.description: m for m in enumerate_mutants(SOURCE) if m.line in (14, 15, 18)}
    assert "if x <= 10 and (not flag):" in mutate(SOURCE, mutants["Lt -> LtE"])
    assert "if x < 10 and flag:" in mutate(SOURCE, mutants["drop Not"])
    assert "return min(x * 2.5, -1)" in mutate(SOURCE, mutants["max -> min"])
    assert "return max(x * 2.5, +1)" in mutate(SOURCE, mutants["drop USub"])
    assert "        if i in (1, 2):\n            break" in mutate(SOURCE, mutants["Continue -> Break"])
    ids = [m.id for m in enumerate_mutants(SOURCE)]
    assert len(ids) == len(set(ids)), "mutant ids name one site each"
