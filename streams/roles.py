"""Who may do what on the broker: every role's NATS permissions as data, and their config text.

Pure: no I/O. `rights(role, space)` answers the exact publish/subscribe allow lists of one role
in one namespace; `render_accounts` writes the `accounts {}` block that nats-server loads, for
the embedded broker (streams/broker.py) and for deploy/ (streams/deploy_config.py) alike.

Rules the lists follow (issue 10, part 3):
- no application user holds `$JS.API.>`: JetStream API subjects are granted one stream and one
  consumer at a time; creating, updating, deleting or purging a stream is the admin's alone
  (the engine may purge MOON_CMD: it drops its own pending timers, and a purge request names its
  subject filter in the payload, which permissions cannot see — so the right covers the stream);
- durable consumers are created only by the exact `CONSUMER.CREATE.<stream>.<name>.<filter>`
  form (the server checks that the body's name and filter match the subject); readers get the
  ephemeral form `CONSUMER.CREATE.<stream>` on the streams they may read, no consumer delete;
- every user has an inbox prefix of its own (`_INBOX_<role>`) and may subscribe only there;
  replies to requests it received go through `allow_responses`, never a publish right on `_INBOX`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum

from streams.ids import is_valid_id
from streams.subjects import Space, token

__all__ = [
    "ACCOUNT",
    "BASE_ROLES",
    "GATE_METHODS",
    "JS_DENY",
    "Rights",
    "Role",
    "executor_role",
    "inbox_prefix",
    "nkey_variable",
    "parse_role",
    "render_accounts",
    "render_deploy",
    "rights",
]

ACCOUNT = "MAESTRO"  # the one application account; SYS is the server's own


class Role(StrEnum):
    ADMIN = "admin"
    ENGINE = "engine"
    MAESTRO = "maestro"
    OPERATOR = "operator"
    AUDITOR = "auditor"
    GATEWAY = "gateway"
    EXECUTOR = "executor"  # one user per executor: `executor:<id>`


BASE_ROLES: tuple[str, ...] = tuple(r.value for r in Role if r is not Role.EXECUTOR)

# The gates' methods (envelope/gate.py: a pull consumer `<service>_<method>` per route on
# INTENTS). Listed, not wildcarded: a `*` in the consumer-name token would let one gate re-point
# the other's consumer. tests/security/test_broker_roles.py checks the gateways' routes fit.
GATE_METHODS: dict[str, tuple[str, ...]] = {
    "moon": ("dispatch", "compensate", "cancel", "fork", "checkpoint", "replay"),
    "maestro": ("plan", "allocate", "ratify", "replan"),
}

# The micro service name each role answers health for (streams/health.py, moon/service.py).
SERVICE_NAMES: dict[Role, str] = {
    Role.ENGINE: "moon-engine",
    Role.MAESTRO: "maestro",
    Role.EXECUTOR: "moon-worker",
    Role.GATEWAY: "gateway",
}

# Denied to every application role, whatever its allow list says (deny wins in nats-server):
# belt and braces for the admin-only JetStream operations.
JS_DENY: tuple[str, ...] = (
    "$JS.API.STREAM.CREATE.>",
    "$JS.API.STREAM.UPDATE.>",
    "$JS.API.STREAM.DELETE.>",
    "$JS.API.STREAM.PURGE.>",
    "$JS.API.STREAM.MSG.DELETE.>",
    "$JS.API.STREAM.SNAPSHOT.>",
    "$JS.API.STREAM.RESTORE.>",
    "$JS.API.STREAM.PEER.>",
    "$JS.API.STREAM.LEADER.>",
    "$JS.API.STREAM.LIST",
    "$JS.API.CONSUMER.DELETE.>",
    "$JS.API.CONSUMER.PAUSE.>",
    "$JS.API.CONSUMER.RESET.>",
    "$JS.API.CONSUMER.UNPIN.>",
    "$JS.API.CONSUMER.LEADER.>",
    "$JS.API.CONSUMER.LIST.>",
    "$JS.API.CONSUMER.NAMES.>",
    "$JS.API.ACCOUNT.>",
    "$JS.API.META.>",
    "$JS.API.SERVER.>",
)


@dataclass(frozen=True)
class Rights:
    """One user's permissions: allow lists (deny-by-default) and explicit denies."""

    publish: tuple[str, ...]
    subscribe: tuple[str, ...]
    deny_publish: tuple[str, ...] = ()
    deny_subscribe: tuple[str, ...] = ()
    responses: bool = False  # may answer requests it received (allow_responses)
    everything: bool = field(default=False)  # the admin: no permissions block at all

    def permissions_text(self, indent: str = "") -> str:
        """The `permissions: {...}` value in nats-server config syntax, one subject a line
        (JSON-quoted: quoted strings are never variables, so `$JS.API...` stays literal)."""
        def block(allow: Sequence[str], deny: Sequence[str], at: str) -> list[str]:
            lines = [f"{at}allow: {_list(allow, at + '  ')}"]
            if deny:
                lines.append(f"{at}deny: {_list(deny, at + '  ')}")
            return lines

        inner = indent + "    "
        lines = ["{", f"{indent}  publish: {{",
                 *block(self.publish, self.deny_publish, inner), f"{indent}  }}",
                 f"{indent}  subscribe: {{",
                 *block(self.subscribe, self.deny_subscribe, inner), f"{indent}  }}"]
        if self.responses:
            lines.append(f'{indent}  allow_responses: {{ max: 1, expires: "1m" }}')
        lines.append(f"{indent}}}")
        return "\n".join(lines)


def _list(items: Iterable[str], at: str) -> str:
    body = "".join(f"\n{at}  {json.dumps(i)}" for i in items)
    return f"[{body}\n{at}]"


def executor_role(executor_id: str) -> str:
    if not is_valid_id(executor_id):
        raise ValueError(f"executor id {executor_id!r} is not [A-Za-z0-9_-]{{1,64}}")
    return f"{Role.EXECUTOR.value}:{executor_id}"


def parse_role(name: str) -> tuple[Role, str | None]:
    """`engine` -> (ENGINE, None); `executor:x1` -> (EXECUTOR, "x1"); anything else: ValueError."""
    head, _, executor = name.partition(":")
    role = Role(head)
    if role is Role.EXECUTOR:
        if not is_valid_id(executor):
            raise ValueError(f"role {name!r}: an executor role is executor:<id>")
        return role, executor
    if executor:
        raise ValueError(f"role {name!r}: only executors carry an id")
    return role, None


def inbox_prefix(name: str) -> str:
    """`_INBOX_engine`, `_INBOX_executor_x1`: the only inbox a user may subscribe to."""
    role, executor = parse_role(name)
    return f"_INBOX_{role.value}" + (f"_{executor}" if executor else "")


# --- subject builders for one space --------------------------------------------------------


@dataclass(frozen=True)
class _On:
    """The subjects of one space: stream, bucket, consumer names get its prefix."""

    space: Space

    def s(self, subject: str) -> str:
        return self.space.subject(subject)

    def stream(self, name: str) -> str:
        return self.space.stream(name)

    def kv_stream(self, bucket: str) -> str:
        return f"KV_{self.space.bucket(bucket)}"

    def kv_key(self, bucket: str, key: str = ">") -> str:
        return f"$KV.{self.space.bucket(bucket)}.{key}"

    # JetStream API, one stream at a time.
    def info(self, stream: str) -> list[str]:
        return [f"$JS.API.STREAM.INFO.{stream}"]

    def read(self, stream: str) -> list[str]:
        """Read a stream: info, direct and stored gets, ordered (ephemeral) consumers."""
        return [
            f"$JS.API.STREAM.INFO.{stream}",
            f"$JS.API.DIRECT.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}.>",
            f"$JS.API.STREAM.MSG.GET.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}",
            f"$JS.API.CONSUMER.INFO.{stream}.*",  # kv.keys() asks its watcher's pending count
            f"$JS.FC.{stream}.>",  # flow control answers of ordered consumers
        ]

    def lookup(self, stream: str) -> list[str]:
        """Get by key only (a KV get): no consumers, so no scan of the bucket's history."""
        return [f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.DIRECT.GET.{stream}.>"]

    def durable(self, stream: str, name: str, filter_: str, *, push: bool = False) -> list[str]:
        """Create (exact form), inspect, pull from and ack one named consumer. `push`: also the
        legacy `DURABLE.CREATE` that nats-py's push `subscribe(durable=)` sends, whose filter
        sits in the body — only for a consumer on a stream the role alone consumes."""
        out = [
            f"$JS.API.CONSUMER.CREATE.{stream}.{name}.{filter_}",
            f"$JS.API.CONSUMER.INFO.{stream}.{name}",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{name}",
            f"$JS.ACK.{stream}.{name}.>",
        ]
        if push:
            out.append(f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{name}")
        return out

    def micro(self, service: str) -> list[str]:
        """What a micro service (streams/health.py) subscribes to for its own name."""
        return [
            *(f"$SRV.{verb}" for verb in ("PING", "INFO", "STATS")),
            *(f"$SRV.{verb}.{service}" for verb in ("PING", "INFO", "STATS")),
            *(f"$SRV.{verb}.{service}.*" for verb in ("PING", "INFO", "STATS")),
            self.s(f"health.{service}"),
        ]

    def ask_health(self) -> list[str]:
        """Anyone may ask any service how it is."""
        return ["$SRV.>", self.s("health.*")]


def _dedupe(items: Iterable[str]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _gate(on: _On, service: str) -> list[str]:
    """A gate (envelope/gate.py): its INTENTS pull consumers and its idempotency buckets."""
    out = on.info(on.stream("INTENTS"))
    for method in GATE_METHODS[service]:
        out += on.durable(on.stream("INTENTS"), on.space.consumer(f"{service}_{method}"),
                          on.s(f"intent.{service}.{method}"))
    # Idempotency, replay and the limits replicas share (envelope/shared.py), and who owns
    # which id (envelope/ownership.py).
    for bucket in ("envelope_outcomes", "envelope_nonces", "envelope_limits", "envelope_owners"):
        out += [*on.lookup(on.kv_stream(bucket)), on.kv_key(bucket)]
    out += on.read(on.kv_stream("envelope_revoked"))  # the revocation watcher
    # An idempotent route's first answer is read back from its audit record, by the sequence
    # the server names in its answer to a duplicate (envelope/audit.py): a get by sequence
    # from the stream's leader, no consumer.
    out.append(f"$JS.API.STREAM.MSG.GET.{on.stream('AUDIT')}")
    return out


def _ask_gates(on: _On) -> list[str]:
    """A client of the gates: signed requests (request/reply) and durable intents."""
    return [on.s(f"map.{svc}.*") for svc in GATE_METHODS] + \
        [on.s(f"intent.{svc}.*") for svc in GATE_METHODS]


def _readers(on: _On) -> list[str]:
    """Journals, audit and the workflow index: what operators, auditors and gateways read."""
    out: list[str] = ["$JS.API.STREAM.NAMES"]  # `moon tail` finds a stream by subject
    for stream in ("MOON", "PLANS", "AUDIT"):
        out += on.read(on.stream(stream))
    out += on.read(on.kv_stream("moon_workflows"))
    return out


def _deny(*, keep: Iterable[str] = ()) -> tuple[str, ...]:
    kept = set(keep)
    return tuple(d for d in JS_DENY if d not in kept)


def rights(name: str, space: Space | None = None, capabilities: Sequence[str] = ()) -> Rights:
    """The exact rights of role `name` (`engine`, `executor:<id>`, …) in `space`; an executor's
    `capabilities` name the pools it may take orders from."""
    on = _On(space or Space())
    role, executor = parse_role(name)
    inbox = f"{inbox_prefix(name)}.>"
    base_pub = ["$JS.API.INFO", *on.ask_health()]
    match role:
        case Role.ADMIN:
            return Rights(publish=(">",), subscribe=(">",), responses=False, everything=True)
        case Role.ENGINE:
            cmd = on.stream("MOON_CMD")
            pub = [
                *base_pub,
                on.s("moon.wf.>"),                     # the journal: the engine's alone
                on.s("moon.cmd.*.fire_timer"),         # a due timer, sent at once
                on.s("moon.timer.>"),                  # schedules (Nats-Schedule)
                on.s("work.exec.*"), on.s("work.any.*"),
                on.s("work.withdrawn"),                # a cancel's markers (moon/effects.py)
                on.s("work.kept"),                     # its keeper (moon/keeper.py)
                on.s("audit.moon.>"),
                *on.read(on.stream("MOON")),
                *on.info(cmd), *on.info(on.stream("WORK")), *on.info(on.stream("AUDIT")),
                # withdrawing the queued orders of a cancelled workflow (moon/effects.py)
                f"$JS.API.STREAM.MSG.DELETE.{on.stream('WORK')}",
                f"$JS.API.STREAM.PURGE.{cmd}",         # dropping its own timers (see above)
                *on.durable(cmd, on.space.consumer("moon-engine"), on.s("moon.cmd.>"),
                            push=True),
                *_gate(on, "moon"),
                *on.read(on.kv_stream("moon_snapshots")), on.kv_key("moon_snapshots"),
                *on.read(on.kv_stream("moon_workflows")), on.kv_key("moon_workflows"),
                # the engines' marks (moon/projection.py): theirs alone to read and write
                *on.read(on.kv_stream("moon_marks")), on.kv_key("moon_marks"),
                *on.read(on.kv_stream("moon_executors")),
                *on.lookup(on.kv_stream("moon_claims")),  # legacy: read only
            ]
            sub = [inbox, on.s("moon.report.>"), on.s("map.moon.*"),
                   *on.micro(SERVICE_NAMES[Role.ENGINE])]
            return Rights(_dedupe(pub), _dedupe(sub), _deny(keep=["$JS.API.STREAM.PURGE.>"]),
                          responses=True)
        case Role.MAESTRO:
            pub = [
                *base_pub,
                on.s("maestro.plan.>"),                # its journal: MAESTRO's alone
                on.s("maestro.cfp.*"), on.s("maestro.award.*"),
                on.s("moon.cmd.*.replan"), on.s("moon.cmd.*.compensate"),
                on.s("audit.maestro.>"),
                *_ask_gates(on),                       # its own calls to the moon gate
                *on.read(on.stream("PLANS")), *on.read(on.stream("MOON")),
                *on.info(on.stream("MOON_CMD")), *on.info(on.stream("AUDIT")),
                # Its durable on DEVIATIONS (streams/config.py), a stream nobody else may make
                # consumers on: on MOON a reader could re-point it by name.
                *on.info(on.stream("DEVIATIONS")),
                *on.durable(on.stream("DEVIATIONS"), on.space.consumer("maestro-replanner"),
                            on.s("moon.wf.*.deviation"), push=True),
                *_gate(on, "maestro"),
                *on.read(on.kv_stream("maestro_board")),
                *on.read(on.kv_stream("moon_executors")),
                *on.read(on.kv_stream("moon_workflows")),
            ]
            sub = [inbox, on.s("map.maestro.*"), *on.micro(SERVICE_NAMES[Role.MAESTRO])]
            return Rights(_dedupe(pub), _dedupe(sub), _deny(), responses=True)
        case Role.OPERATOR:
            pub = [
                *base_pub, *_ask_gates(on), *_readers(on),
                *on.read(on.kv_stream("envelope_revoked")), on.kv_key("envelope_revoked"),
                *on.read(on.kv_stream("moon_executors")), on.kv_key("moon_executors"),
                *on.read(on.kv_stream("maestro_board")),
                *on.info(on.stream("INTENTS")), *on.info(on.stream("MOON_CMD")),
                *on.info(on.stream("WORK")),
                f"$JS.API.CONSUMER.INFO.{on.stream('WORK')}.*",  # is a pool served (moon status)
            ]
            return Rights(_dedupe(pub), (inbox,), _deny())
        case Role.AUDITOR:
            pub = [*base_pub, "$JS.API.STREAM.NAMES"]
            for stream in ("MOON", "PLANS", "AUDIT"):
                pub += on.read(on.stream(stream))
            return Rights(_dedupe(pub), (inbox,), _deny())
        case Role.GATEWAY:
            pub = [*base_pub, *_ask_gates(on), *_readers(on)]
            sub = [inbox, *on.micro(SERVICE_NAMES[Role.GATEWAY])]
            return Rights(_dedupe(pub), _dedupe(sub), _deny(), responses=True)
        case Role.EXECUTOR:
            assert executor is not None
            me = token(executor)
            work = on.stream("WORK")
            pub = [
                *base_pub,
                on.s(f"moon.report.{me}.>"),           # its own reports, nobody else's
                on.kv_key("maestro_board", me),        # its own offer
                *on.lookup(on.kv_stream("maestro_board")),
                *on.lookup(on.kv_stream("moon_executors")),
                *on.info(work),
                *on.durable(work, on.space.consumer(f"exec-{me}"), on.s(f"work.exec.{me}")),
            ]
            for capability in capabilities:
                cap = token(capability)
                pub += on.durable(work, on.space.consumer(f"any-{cap}"), on.s(f"work.any.{cap}"))
            sub = [inbox, on.s("maestro.cfp.*"), on.s(f"maestro.award.{me}"),
                   *on.micro(SERVICE_NAMES[Role.EXECUTOR])]
            return Rights(_dedupe(pub), _dedupe(sub), _deny(), responses=True)


@dataclass(frozen=True)
class User:
    """One user of the account: its nkey (a public key, or `$VAR` for deploy/) and rights."""

    role: str
    nkey: str
    rights: Rights


def render_accounts(users: Sequence[User], *, sys_nkey: str | None = None) -> str:
    """The `accounts {}` block (and `system_account`) for nats-server. An nkey starting with `$`
    is written bare: nats-server substitutes a bare `$VAR` from the environment (a quoted one
    would be taken literally — the bug of the old deploy/accounts.conf)."""
    lines = ["accounts {", f"  {ACCOUNT} {{", "    jetstream: enabled", "    users: ["]
    for user in users:
        lines.append(f"      # {user.role}")
        if user.rights.everything:
            lines.append(f"      {{ nkey: {_nkey(user.nkey)} }}")
            continue
        perms = user.rights.permissions_text(indent="        ")
        lines.append(f"      {{ nkey: {_nkey(user.nkey)}, permissions: {perms} }}")
    lines += ["    ]", "  }"]
    if sys_nkey is not None:
        lines += ["  SYS {", f"    users: [ {{ nkey: {_nkey(sys_nkey)} }} ]", "  }"]
    lines.append("}")
    if sys_nkey is not None:
        lines.append("system_account: SYS")
    return "\n".join(lines) + "\n"


def _nkey(value: str) -> str:
    if value.startswith("$"):
        return value  # an environment variable, substituted by the server
    if not (value.startswith("U") and value.isalnum()):
        raise ValueError(f"not a user nkey: {value!r}")
    return value


# --- deploy/: the same users, their keys from the environment ------------------------------


def nkey_variable(role: str) -> str:
    """`NKEY_ENGINE`, `NKEY_EXECUTOR_EXEC_1`: the variable holding a role's public key."""
    kind, executor = parse_role(role)
    name = kind.value if executor is None else f"executor_{executor}"
    return "NKEY_" + name.upper().replace("-", "_")


def render_deploy(executors: Mapping[str, Sequence[str]], space: Space | None = None) -> str:
    """deploy/accounts.conf: every base role and each listed executor (id -> capabilities),
    rights as on the embedded broker, each nkey a bare `$NKEY_*` the server substitutes from
    its environment (a variable left unset stops the server: it fails closed)."""
    roles = [*BASE_ROLES, *(executor_role(e) for e in executors)]
    variables = [nkey_variable(r) for r in roles]
    if len(set(variables)) != len(variables):
        raise ValueError(f"two executors share one variable name: {sorted(variables)}")
    def capabilities(role: str) -> Sequence[str]:
        return executors.get(parse_role(role)[1] or "", ())

    users = [User(role, f"${variable}", rights(role, space, capabilities(role)))
             for role, variable in zip(roles, variables, strict=True)]
    header = (
        "# GENERATED by `python deploy/render.py` from streams/roles.py and\n"
        "# deploy/executors.json: edit those and re-run it (tests/test_deploy.py checks that\n"
        "# this file is up to date).\n"
        "# Each user is an NKey; its public key comes from the environment (NKEY_<ROLE>, see\n"
        "# README \"Roles and credentials\"). Bare $VARs are substituted; quoted ones are not.\n"
    )
    return header + render_accounts(users, sys_nkey="$NKEY_SYS")
