"""Every subject and stream name, as functions in one module.

A `Space` prefixes stream, bucket and subject names so that tests (and tenants) get a fresh,
non-overlapping namespace on one server; the production space has an empty prefix.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "Space",
    "audit",
    "audit_all",
    "deviations",
    "health",
    "intent",
    "map_request",
    "moon_cmd",
    "plan_event",
    "plan_events",
    "report",
    "reports",
    "reports_to",
    "timer",
    "token",
    "work",
    "work_any",
    "workflow_event",
    "workflow_events",
]


# --- canonical subjects (unprefixed) -------------------------------------------------------


def health(service: str) -> str:
    """A service's readiness endpoint (a NATS micro endpoint; `$SRV.PING|INFO|STATS` too)."""
    return f"health.{service}"


def intent(service: str, method: str) -> str:
    return f"intent.{service}.{method}"


def map_request(service: str, method: str) -> str:
    return f"map.{service}.{method}"


def workflow_event(workflow: str, kind: str) -> str:
    """The journal subject of one decision; `kind` is its most significant event."""
    return f"moon.wf.{workflow}.{kind}"


def workflow_events(workflow: str = "*") -> str:
    return f"moon.wf.{workflow}.>"


def deviations() -> str:
    """What MAESTRO subscribes to without reading the whole journal."""
    return "moon.wf.*.deviation"


def moon_cmd(workflow: str, kind: str) -> str:
    return f"moon.cmd.{workflow}.{kind}"


def report(executor: str, workflow: str, kind: str, engine: str = "") -> str:
    """An executor's report to the engine (request/reply): the executor's token in the subject
    lets the broker hold each executor to its own subjects; the signature does the rest. With
    `engine` (the process that sent the order), to that engine alone: see `reports_to`."""
    subject = f"moon.report.{token(executor)}.{workflow}.{kind}"
    return f"{subject}.{token(engine)}" if engine else subject


def reports() -> str:
    """Reports for any engine (one queue group): exactly five tokens, so a report addressed to
    one engine (`reports_to`) is never also taken by the group."""
    return "moon.report.*.*.*"


def reports_to(engine: str) -> str:
    """Reports addressed to one engine process: the workflows whose orders it sent, whose
    state its cache holds. Routing only: any engine checks and decides any report alike."""
    return f"moon.report.*.*.*.{token(engine)}"


def timer(workflow: str, name: str) -> str:
    """A schedule subject: one pending timer per subject (a server rule for schedules)."""
    return f"moon.timer.{workflow}.{name}"


def token(text: str) -> str:
    """A subject-safe token: capabilities like `moon:dispatch` or `web.search` become one token."""
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text) or "_"


def work(executor: str) -> str:
    """Orders bound to one executor (MAESTRO's binding allocation)."""
    return f"work.exec.{token(executor)}"


def work_any(capability: str) -> str:
    """Orders any executor of a capability may take (a DAG dispatched without a plan)."""
    return f"work.any.{token(capability)}"


def work_kept() -> str:
    """Where WORK's keeper lives (moon/keeper.py): in WORK, read by no consumer."""
    return "work.kept"


def work_withdrawn() -> str:
    """Where a cancel's markers go (moon/effects.py `withdraw`): in WORK, read by no consumer."""
    return "work.withdrawn"


def plan_event(plan: str, kind: str) -> str:
    return f"maestro.plan.{plan}.{kind}"


def plan_events(plan: str = "*") -> str:
    return f"maestro.plan.{plan}.>"


def audit(service: str, method: str, outcome: str) -> str:
    return f"audit.{service}.{method}.{outcome}"


def audit_all() -> str:
    return "audit.>"


# --- namespaces ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Space:
    """A namespace: `Space("t1")` maps `moon.wf.x.y` to `t1.moon.wf.x.y` and MOON to t1_MOON."""

    prefix: str = ""

    def subject(self, subject: str) -> str:
        return f"{self.prefix}.{subject}" if self.prefix else subject

    def unprefix(self, subject: str) -> str:
        head = f"{self.prefix}."
        return subject[len(head) :] if self.prefix and subject.startswith(head) else subject

    def stream(self, name: str) -> str:
        return f"{self.prefix}_{name}" if self.prefix else name

    def bucket(self, name: str) -> str:
        return f"{self.prefix}_{name}" if self.prefix else name

    def consumer(self, name: str) -> str:
        return f"{self.prefix}_{name}" if self.prefix else name
