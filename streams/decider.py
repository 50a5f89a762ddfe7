"""The Decider value and its runner: load, decide, append, and on a Conflict re-read and retry.

Generic over the command, event, state and stored-batch types so MOON's workflows and MAESTRO's
plans share one runner. Conflicts are values; persistent contention is the one exception.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import reduce
from typing import Generic, TypeVar

import msgspec

from streams.replies import Conflict, Refusal
from streams.snapshots import SnapshotStore
from streams.store import Appended, EventStore

__all__ = ["Contention", "Decided", "Decider", "Runner"]

C = TypeVar("C")
E = TypeVar("E")
S = TypeVar("S")
B = TypeVar("B")


@dataclass(frozen=True, slots=True)
class Decider(Generic[C, E, S]):
    decide: Callable[[C, S], Sequence[E] | Refusal]
    evolve: Callable[[S, E], S]
    initial: S

    def fold(self, events: Iterable[E], state: S | None = None) -> S:
        return reduce(self.evolve, events, self.initial if state is None else state)


class Contention(Exception):
    """Lost the optimistic race `attempts` times: an operational failure, not a refusal."""


class Decided(msgspec.Struct, Generic[E, S], frozen=True):
    events: list[E]
    state: S
    version: int
    duplicate: bool = False  # an earlier append with the same command id already holds these
    # The state the events were decided on: what an effect that depends on the change (not on
    # the state alone) compares against, without a second read.
    prior: S | None = None
    # The version `state` is at: `version` but for a duplicate, whose `version` is where the
    # earlier append landed while `state` is the aggregate as it is now.
    state_version: int | None = None


@dataclass
class Runner(Generic[C, E, S, B]):
    """Runs commands against aggregates stored as batches `B` (a command plus its events)."""

    decider: Decider[C, E, S]
    store: EventStore[B]
    pack: Callable[[C, Sequence[E]], B]
    # Folds one stored batch; may remember more than its events (e.g. the command id, for dedupe).
    apply: Callable[[S, B], S]
    kind: Callable[[Sequence[E]], str]
    snapshots: SnapshotStore[S] | None = None
    snapshot_every: int = 50
    attempts: int = 5
    # The owning process's folded state: skips the read when nobody else wrote in between.
    # Least recently used first and bounded, so a long-running engine does not keep every
    # workflow it ever saw; an evicted aggregate is folded again from its snapshot.
    cache: OrderedDict[str, tuple[int, S]] = field(default_factory=OrderedDict)
    cache_size: int = 10_000
    # Called once per batch this runner appended, with the state it was decided on; never for
    # a duplicate or a re-read: telemetry that must not repeat hangs here (moon/tracing.py).
    journaled: Callable[[S, B, int], None] | None = None
    _since_snapshot: dict[str, int] = field(default_factory=dict)

    def _remember(self, aggregate: str, version: int, state: S) -> None:
        self.cache[aggregate] = (version, state)
        self.cache.move_to_end(aggregate)
        while len(self.cache) > self.cache_size:
            evicted, _ = self.cache.popitem(last=False)
            self._since_snapshot.pop(evicted, None)

    def _assumed(self, aggregate: str) -> tuple[int, S]:
        """What this process last saw of the aggregate, or nothing: not yet checked."""
        if (cached := self.cache.get(aggregate)) is not None:
            self.cache.move_to_end(aggregate)
            return cached
        return 0, self.decider.initial

    async def load(self, aggregate: str, *, use_cache: bool = True) -> tuple[int, S]:
        version, state = 0, self.decider.initial
        if use_cache and aggregate in self.cache:
            version, state = self.cache[aggregate]
        elif self.snapshots is not None and (snap := await self.snapshots.load(aggregate)):
            version, state = snap.version, snap.state
        loaded = await self.store.read(aggregate, after=version)
        for item in loaded.items:
            state = self.apply(state, item.value)
        self._remember(aggregate, loaded.version, state)
        return loaded.version, state

    async def handle(
        self, aggregate: str, command: C, *, key: str,
        check: Callable[[C, S], Refusal | None] | None = None,
    ) -> Decided[E, S] | Refusal:
        """`check` authorizes the command against the state it would be decided on (who may
        do this to this aggregate now), before every attempt, so a retry after a conflict is
        checked against the newer state too."""
        # Decided first on what this process last saw (or, for an aggregate it has not seen, on
        # nothing), without asking the store: the append's optimistic concurrency rejects a
        # decision made on a stale state, and a refusal or a decision of nothing, which has no
        # append to check it, is made again on the store's state before it is believed. One
        # round trip less per command for the owning process; two for a new aggregate.
        version, state = self._assumed(aggregate)
        verified = False
        for _ in range(self.attempts):
            refused = check(command, state) if check is not None else None
            decision = self.decider.decide(command, state) if refused is None else refused
            if isinstance(decision, Refusal) or not decision:
                if not verified:
                    version, state = await self.load(aggregate)
                    verified = True
                    continue
                if isinstance(decision, Refusal):
                    return decision
                return Decided(events=[], state=state, version=version)
            events = list(decision)
            outcome = await self.store.append(
                aggregate, self.pack(command, events), expected=version, key=key,
                kind=self.kind(events),
            )
            match outcome:
                case Conflict():
                    version, state = await self.load(aggregate)
                    verified = True
                case Appended(seq=seq, duplicate=True):
                    # Our earlier attempt won: its events are in the log, so re-read them.
                    version, state = await self.load(aggregate)
                    return Decided(events=events, state=state, version=seq, duplicate=True,
                                   state_version=version)
                case Appended(seq=seq):
                    prior = state
                    if self.journaled is not None:
                        self.journaled(state, self.pack(command, events), seq)
                    state = self.apply(state, self.pack(command, events))
                    self._remember(aggregate, seq, state)
                    await self._maybe_snapshot(aggregate, seq, state)
                    return Decided(events=events, state=state, version=seq, prior=prior)
        raise Contention(f"{aggregate}: lost {self.attempts} races in a row")

    async def _maybe_snapshot(self, aggregate: str, version: int, state: S) -> None:
        if self.snapshots is None:
            return
        count = self._since_snapshot.get(aggregate, 0) + 1
        if count >= self.snapshot_every:
            await self.snapshots.save(aggregate, version, state)
            count = 0
        self._since_snapshot[aggregate] = count
