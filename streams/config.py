"""Every stream, consumer and KV bucket, as values; `ensure_streams` makes a server match them.

Durability: journals are file-backed with `deny_delete`/`deny_purge`; the embedded single node
runs with `sync_interval: always` (streams/broker.py) and clusters use R3 (deploy/).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from nats.js import JetStreamContext, api
from nats.js.errors import BadRequestError, NotFoundError, ServiceUnavailableError

from streams import subjects
from streams.credentials import role_of
from streams.roles import rights
from streams.subjects import Space

__all__ = [
    "AUDIT",
    "DEVIATIONS",
    "EXECUTORS",
    "INTENTS",
    "JOURNALS",
    "MOON",
    "MOON_CMD",
    "PLANS",
    "WORK",
    "BucketSpec",
    "StreamConflict",
    "StreamSpec",
    "StreamsMissing",
    "Topology",
    "ensure_bucket",
    "ensure_streams",
]

DAY_S = 24 * 3600.0
DUPLICATE_WINDOW_S = 600.0  # longer than any client retry horizon: a re-sent command is deduped


@dataclass(frozen=True)
class StreamSpec:
    """A stream as data; `config(space, replicas)` renders the nats-py config."""

    name: str
    subjects: tuple[str, ...]
    retention: api.RetentionPolicy = api.RetentionPolicy.LIMITS
    journal: bool = False  # deny_delete + deny_purge: an append-only log by server rule
    max_age_s: float | None = None
    schedules: bool = False
    ttl: bool = False
    max_bytes: int | None = None
    max_msg_size: int | None = None
    discard_new: bool = False
    sources: tuple[tuple[str, str], ...] = ()  # (stream, subject filter) copied in, in order

    def config(self, space: Space, replicas: int = 1) -> api.StreamConfig:
        return api.StreamConfig(
            name=space.stream(self.name),
            subjects=[space.subject(s) for s in self.subjects] or None,
            retention=self.retention,
            storage=api.StorageType.FILE,
            num_replicas=replicas,
            duplicate_window=DUPLICATE_WINDOW_S,
            deny_delete=self.journal,
            deny_purge=self.journal,
            allow_direct=True,
            max_age=self.max_age_s,
            allow_msg_schedules=True if self.schedules else None,
            allow_msg_ttl=True if self.ttl else None,
            max_bytes=self.max_bytes,
            max_msg_size=self.max_msg_size or -1,
            discard=api.DiscardPolicy.NEW if self.discard_new else api.DiscardPolicy.OLD,
            sources=[api.StreamSource(name=space.stream(name), filter_subject=space.subject(f))
                     for name, f in self.sources] or None,
        )


@dataclass(frozen=True)
class BucketSpec:
    name: str
    history: int = 1
    ttl_s: float | None = None


# Bounded in bytes and per message: a flood makes publishes fail visibly (discard new) rather
# than drop intents already acknowledged; a message is the gate's 64 KiB cap plus headers.
INTENTS = StreamSpec("INTENTS", (subjects.intent("*", "*"),), max_age_s=30 * DAY_S,
                     max_bytes=256 * 1024 * 1024, max_msg_size=66_560, discard_new=True)
MOON = StreamSpec("MOON", (subjects.workflow_events(),), journal=True)
# Timers live beside the commands they fire into: a schedule's target must be in its stream.
MOON_CMD = StreamSpec(
    "MOON_CMD",
    ("moon.cmd.>", "moon.timer.>"),
    retention=api.RetentionPolicy.WORK_QUEUE,
    schedules=True,
    max_msg_size=1024 * 1024,  # a replan of a 10,000-step plan fits; a flood of giants does not
)
# Per-message TTLs for its keeper only (moon/keeper.py): an order carries none.
WORK = StreamSpec("WORK", ("work.>",), retention=api.RetentionPolicy.WORK_QUEUE, ttl=True)
PLANS = StreamSpec("PLANS", (subjects.plan_events(),), journal=True)
# The journal's deviations, copied in by the server: MAESTRO's durable lives here, on a stream
# only MAESTRO may make consumers on. On MOON, which every reader may read, a reader could
# re-point the durable while MAESTRO is down (consumer names ride in the create request's body,
# which broker permissions cannot see). The copies are the engine's signed bytes.
DEVIATIONS = StreamSpec("DEVIATIONS", (), max_age_s=30 * DAY_S,
                        sources=(("MOON", subjects.deviations()),))
AUDIT = StreamSpec("AUDIT", (subjects.audit_all(),), max_age_s=365 * DAY_S)

STREAMS: tuple[StreamSpec, ...] = (INTENTS, MOON, MOON_CMD, WORK, PLANS, AUDIT, DEVIATIONS)
JOURNALS = (MOON, PLANS)

SNAPSHOTS = BucketSpec("moon_snapshots")
WORKFLOWS = BucketSpec("moon_workflows")  # the workflow index: `moon list` without a scan
BOARD = BucketSpec("maestro_board", ttl_s=15.0)  # offers expire unless refreshed: liveness
NONCES = BucketSpec("envelope_nonces", ttl_s=900.0)
REVOKED = BucketSpec("envelope_revoked")
OUTCOMES = BucketSpec("envelope_outcomes", ttl_s=7 * DAY_S)
# An executor claims an attempt's idempotency key before running it (moon/worker.py): longer
# than any step timeout, since an order past its deadline is acked unrun.
CLAIMS = BucketSpec("moon_claims", ttl_s=7 * DAY_S)
# Executor id -> its did:key, capabilities and trust, each entry a statement signed by an
# organisation root or operator (envelope/registry.py): who may report for which work order.
EXECUTORS = BucketSpec("moon_executors", history=5)
# Shared by gate replicas (envelope/shared.py, envelope/ownership.py): treaty rate buckets and
# budget balances; which caller owns an id.
LIMITS = BucketSpec("envelope_limits")
OWNERS = BucketSpec("envelope_owners")
# Engine process -> the journal sequence before which all it dispatched is projected
# (moon/projection.py): where another engine picks up a dead one's young workflows.
MARKS = BucketSpec("moon_marks")
BUCKETS: tuple[BucketSpec, ...] = (SNAPSHOTS, WORKFLOWS, BOARD, NONCES, REVOKED, OUTCOMES,
                                   CLAIMS, EXECUTORS, LIMITS, OWNERS, MARKS)


class StreamConflict(RuntimeError):
    """A stream exists with a config we cannot reconcile (e.g. other subjects or retention)."""


class StreamsMissing(RuntimeError):
    """A service (not the admin) found a stream or bucket missing: it may not create it."""


def _admin(js: JetStreamContext) -> bool:
    """Only the admin creates or changes streams (streams/roles.py); a connection to a server
    without auth (role unknown) may, as before."""
    role = role_of(getattr(js, "_nc", None))
    return role is None or role == "admin"


def _visible(js: JetStreamContext, space: Space) -> Callable[[str], bool]:
    """Which streams this connection may look at: a service checks those of its job only."""
    role = role_of(getattr(js, "_nc", None))
    if role is None or role == "admin":
        return lambda _: True
    allowed = set(rights(role, space).publish)
    return lambda stream: f"$JS.API.STREAM.INFO.{stream}" in allowed


def _missing(js: JetStreamContext, what: str) -> StreamsMissing:
    role = role_of(getattr(js, "_nc", None))
    return StreamsMissing(
        f"{what} does not exist and role {role!r} may not create it: start the stack "
        "(the embedded default creates the streams as admin) or run "
        "`python -m streams.credentials ensure` with the admin's credentials"
    )


# Fields a stream cannot change in place: a difference here is a conflict, not an update.
_IMMUTABLE = ("retention", "storage")


def _differences(
    want: api.StreamConfig, have: api.StreamConfig
) -> dict[str, tuple[object, object]]:
    fields_ = (
        "subjects", "retention", "storage", "num_replicas", "duplicate_window", "deny_delete",
        "deny_purge", "allow_direct", "max_age", "allow_msg_schedules", "allow_msg_ttl",
        "max_bytes", "max_msg_size", "discard",
    )
    out: dict[str, tuple[object, object]] = {}
    for name in fields_:
        a, b = getattr(want, name), getattr(have, name)
        if name == "subjects":
            a, b = sorted(a or []), sorted(b or [])
        if name == "max_age":
            a, b = a or 0, b or 0
        if name in ("max_bytes", "max_msg_size"):
            a, b = a if a and a > 0 else -1, b if b and b > 0 else -1
        if name == "discard":
            a, b = a or api.DiscardPolicy.OLD, b or api.DiscardPolicy.OLD
        if name in ("allow_msg_schedules", "allow_msg_ttl", "allow_direct"):
            a, b = bool(a), bool(b)
        if a != b:
            out[name] = (b, a)
    return out


@dataclass
class Topology:
    """The rendered streams and buckets of one namespace, and what `ensure` changed."""

    space: Space = field(default_factory=Space)
    replicas: int = 1
    streams: Sequence[StreamSpec] = STREAMS
    buckets: Sequence[BucketSpec] = BUCKETS

    def stream_configs(self) -> list[api.StreamConfig]:
        return [spec.config(self.space, self.replicas) for spec in self.streams]


async def ensure_streams(
    js: JetStreamContext, topology: Topology | None = None
) -> list[str]:
    """Create or update every stream and bucket; returns what changed (empty on a second run).
    A connection that is not the admin's only checks that they exist: a missing one raises
    `StreamsMissing` (one line saying what to do), a different one is the admin's to reconcile."""
    topology = topology or Topology()
    changed: list[str] = []
    admin = _admin(js)
    visible = _visible(js, topology.space)
    for want in topology.stream_configs():
        assert want.name is not None
        if not visible(want.name):
            continue
        try:
            info = await _patiently(functools.partial(js.stream_info, want.name))
        except NotFoundError:
            if not admin:
                raise _missing(js, f"stream {want.name}") from None
            await js.add_stream(want)
            changed.append(f"created stream {want.name}")
            continue
        diff = _differences(want, info.config)
        if not diff or not admin:
            continue
        if any(name in diff for name in _IMMUTABLE):
            have_text = ", ".join(f"{k}={v[0]}" for k, v in diff.items())
            want_text = ", ".join(f"{k}={v[1]}" for k, v in diff.items())
            raise StreamConflict(f"stream {want.name} exists with {have_text}; wanted {want_text}")
        try:
            await js.update_stream(want)
        except BadRequestError as error:
            raise StreamConflict(f"stream {want.name}: {error.description}") from error
        changed.append(f"updated stream {want.name}: {sorted(diff)}")
    changed += await _ensure_buckets(js, topology.space, topology.buckets, topology.replicas)
    return changed


UNAVAILABLE_PATIENCE_S = 5.0
T = TypeVar("T")


async def _patiently(call: Callable[[], Awaitable[T]]) -> T:
    """A JetStream API call retried while the server answers 503: it does so for a moment
    during every config reload (provisioning an executor reloads it), which a service starting
    then must ride out rather than die of, or take for a missing stream."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + UNAVAILABLE_PATIENCE_S
    while True:
        try:
            return await call()
        except ServiceUnavailableError:
            if loop.time() > deadline:
                raise
            await asyncio.sleep(0.1)


async def _ensure_buckets(
    js: JetStreamContext, space: Space, buckets: Iterable[BucketSpec], replicas: int
) -> list[str]:
    visible = _visible(js, space)
    return [f"created bucket {space.bucket(spec.name)}" for spec in buckets
            if visible(f"KV_{space.bucket(spec.name)}")
            and await ensure_bucket(js, space, spec, replicas)]


async def ensure_bucket(js: JetStreamContext, space: Space, spec: BucketSpec,
                        replicas: int = 1) -> bool:
    """Create the bucket unless it exists (True when created); for clients that may start
    before anyone ran `ensure_streams`, so that they make it as the topology would."""
    name = space.bucket(spec.name)
    try:
        await _patiently(lambda: js.key_value(name))
    except NotFoundError:  # BucketNotFoundError is one
        if not _admin(js):
            raise _missing(js, f"bucket {name}") from None
        await js.create_key_value(
            api.KeyValueConfig(
                bucket=name,
                history=spec.history,
                ttl=spec.ttl_s,
                storage=api.StorageType.FILE,
                replicas=replicas,
                direct=True,
            )
        )
        return True
    return False


def space_from_env() -> Space:
    """MAESTRO_SPACE names a namespace for CLIs and services (tests and tenants); default none."""
    import os  # noqa: PLC0415 - only the shells ask the environment

    return Space(os.environ.get("MAESTRO_SPACE", ""))


def replicas_from_env() -> int:
    """MAESTRO_REPLICAS: 3 on a cluster (R3 streams), 1 on a single node."""
    import os  # noqa: PLC0415

    return int(os.environ.get("MAESTRO_REPLICAS", "1"))
