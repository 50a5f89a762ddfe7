"""Step graphs as data: topological order, cycle naming and missing dependencies. Pure.

Both MOON (refusing a DAG at dispatch) and MAESTRO (validating a goal) use these, so the
rules for "what is a valid graph" live in one place.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

__all__ = ["find_cycle", "missing_dependencies", "reverse_topological", "topological_order"]


def missing_dependencies(needs: Mapping[str, Sequence[str]]) -> list[tuple[str, str]]:
    """Every (step, dependency) pair whose dependency is not a step of the graph."""
    return [(step, dep) for step, deps in needs.items() for dep in deps if dep not in needs]


def find_cycle(needs: Mapping[str, Sequence[str]]) -> list[str] | None:
    """One cycle as a closed path [a, b, ..., a], or None when the graph is acyclic.

    Iterative DFS so a 10,000-step chain does not hit the recursion limit.
    """
    white, grey, black = 0, 1, 2
    colour = dict.fromkeys(needs, white)
    for root in needs:
        if colour[root] != white:
            continue
        path: list[str] = []
        stack: list[tuple[str, Iterable[str]]] = [(root, iter(needs[root]))]
        colour[root] = grey
        path.append(root)
        while stack:
            node, children = stack[-1]
            for child in children:
                if child not in colour:
                    continue  # a missing dependency is reported elsewhere
                if colour[child] == grey:
                    return [*path[path.index(child) :], child]
                if colour[child] == white:
                    colour[child] = grey
                    path.append(child)
                    stack.append((child, iter(needs[child])))
                    break
            else:
                colour[node] = black
                path.pop()
                stack.pop()
    return None


def topological_order(needs: Mapping[str, Sequence[str]]) -> list[str]:
    """Steps with every dependency before its dependants; ties keep the mapping's order.

    Raises ValueError on a cycle: callers validate with find_cycle first.
    """
    indegree = {step: 0 for step in needs}
    dependants: dict[str, list[str]] = {step: [] for step in needs}
    for step, deps in needs.items():
        for dep in deps:
            if dep in needs:
                indegree[step] += 1
                dependants[dep].append(step)
    ready = [step for step, n in indegree.items() if n == 0]
    order: list[str] = []
    while ready:
        step = ready.pop(0)
        order.append(step)
        for nxt in dependants[step]:
            indegree[nxt] -= 1
            if indegree[nxt] == 0:
                ready.append(nxt)
    if len(order) != len(needs):
        raise ValueError("graph has a cycle")
    return order


def reverse_topological(needs: Mapping[str, Sequence[str]], subset: Iterable[str]) -> list[str]:
    """The steps of `subset` with dependants first: the order compensations run in."""
    wanted = set(subset)
    return [s for s in reversed(topological_order(needs)) if s in wanted]
