"""Sums that come out bit for bit the same however the particles are batched.

Floating-point addition is not associative: summing per-particle statistics chunk by chunk
gives sums that depend (in the last bits) on the chunk size, and summing the chunks as they
arrive gives sums that depend on the number of workers. :class:`TreeSum` fixes the order
once and for all: the per-particle values ``v_0 .. v_(n-1)`` are added along one binary
tree over the particle indices (node ``(level, pos)`` holds the sum of the indices
``pos * 2**level .. (pos + 1) * 2**level - 1``, always as ``left + right``). A batch of
consecutive particles sums the nodes that lie inside it; batches (or their partial trees)
merge by joining sibling nodes. Whatever the batches, the workers and the order in which
partial trees meet, every node is the same sum of the same two children, and the root is
the same to the last bit.

A batch ``[a, b)`` holds at most ``2 log2(b - a)`` nodes (one when ``a`` is a multiple of a
power-of-two batch size), so partial trees stay small.

The values only need ``+`` (a new object, inputs untouched: Dask may hand the same object
to a retried task) and must be commutative bitwise, as IEEE addition is.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Generic, Protocol, TypeVar

__all__ = ["TreeSum", "Summable"]


class Summable(Protocol):
    """Anything with an ``a + b`` that returns a new object."""

    def __add__(self, other):  # pragma: no cover - protocol
        ...


V = TypeVar("V", bound=Summable)


class TreeSum(Generic[V]):
    """Partial sums of ``n`` indexed values along one fixed binary tree.

    Parameters
    ----------
    n
        Number of leaves (indices ``0 .. n-1``) of the whole sum.
    """

    def __init__(self, n: int):
        if n < 1:
            raise ValueError(f"a tree sum needs at least one leaf, got {n}")
        self.n = int(n)
        self.top = max(0, (self.n - 1).bit_length())  # 2**top >= n
        self.nodes: dict[tuple[int, int], V] = {}

    def add(self, index: int, value: V) -> None:
        """Put the value of leaf ``index`` in (each leaf once)."""
        if not 0 <= index < self.n:
            raise IndexError(f"leaf {index} outside 0..{self.n - 1}")
        self._insert(0, int(index), value)

    def _insert(self, level: int, pos: int, value: V) -> None:
        while level < self.top:
            sibling = pos ^ 1
            if sibling << level >= self.n:
                # the right sibling covers no leaf: the parent is this node as it is
                level, pos = level + 1, pos >> 1
                continue
            other = self.nodes.pop((level, sibling), None)
            if other is None:
                break
            value = value + other if pos % 2 == 0 else other + value
            level, pos = level + 1, pos >> 1
        if (level, pos) in self.nodes:
            raise ValueError(f"node {(level, pos)} added twice: a leaf was summed twice")
        self.nodes[(level, pos)] = value

    def merge(self, other: TreeSum[V]) -> TreeSum[V]:
        """A new tree with the nodes of both (disjoint leaves); neither input changes."""
        if other.n != self.n:
            raise ValueError(f"cannot merge tree sums of {self.n} and {other.n} leaves")
        out: TreeSum[V] = TreeSum(self.n)
        out.nodes = dict(self.nodes)
        for (level, pos), value in sorted(other.nodes.items()):
            out._insert(level, pos, value)
        return out

    @property
    def complete(self) -> bool:
        """Whether every leaf is in (the tree holds only its root)."""
        return list(self.nodes) == [(self.top, 0)]

    def total(self) -> V:
        """The sum of all ``n`` leaves (all must have been added)."""
        if not self.complete:
            raise ValueError(
                f"the tree sum is incomplete: nodes {sorted(self.nodes)} of {self.n} leaves"
            )
        return self.nodes[(self.top, 0)]

    @classmethod
    def of(cls, values: Iterable[tuple[int, V]], n: int) -> TreeSum[V]:
        """The partial tree of ``(index, value)`` pairs."""
        tree: TreeSum[V] = cls(n)
        for index, value in values:
            tree.add(index, value)
        return tree
