"""The roles as data (streams/roles.py), without a broker: the rules every rendering obeys."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from streams.roles import GATE_METHODS, Role, inbox_prefix, parse_role, render_accounts, rights
from streams.roles import User as RoleUser
from streams.subjects import Space

ROOT = Path(__file__).resolve().parents[2]
SPACE = Space("t1")
APP = ["engine", "maestro", "operator", "auditor", "gateway", "executor:x1"]
# JetStream API subjects that name no stream: account info, stream names (by subject filter).
NO_STREAM = {"$JS.API.INFO", "$JS.API.STREAM.NAMES"}


def _all(role: str) -> tuple[str, ...]:
    r = rights(role, SPACE, ["work"])
    return r.publish + r.subscribe


@pytest.mark.parametrize("role", APP)
def test_no_application_user_holds_the_whole_api(role):
    for subject in rights(role, SPACE, ["work"]).publish:
        assert subject not in (">", "$JS.>", "$JS.API.>", "$KV.>", "*.>"), subject
        if subject.startswith("$JS.API.") and subject not in NO_STREAM:
            # $JS.API.<KIND>[.<VERB>…].<stream>…: the stream is named before any wildcard
            tokens = subject.split(".")
            named = next(i for i, t in enumerate(tokens) if t.startswith(("t1_", "KV_t1_")))
            assert not {"*", ">"} & set(tokens[:named]), subject


@pytest.mark.parametrize("role", APP)
def test_only_the_admin_changes_streams(role):
    for subject in rights(role, SPACE, ["work"]).publish:
        if subject.startswith("$JS.API.STREAM.MSG.DELETE."):
            # Only the engine, only its own work orders (a cancel withdraws the queued ones);
            # never a journal, never anyone's audit.
            assert (role, subject) == ("engine", "$JS.API.STREAM.MSG.DELETE.t1_WORK")
            continue
        assert not re.match(r"\$JS\.API\.STREAM\.(CREATE|UPDATE|DELETE|MSG\.DELETE)\.", subject)
        assert not subject.startswith("$JS.API.CONSUMER.DELETE.")
        if subject.startswith("$JS.API.STREAM.PURGE."):
            assert (role, subject) == ("engine", "$JS.API.STREAM.PURGE.t1_MOON_CMD")


@pytest.mark.parametrize("role", APP)
def test_each_journal_has_one_writer(role):
    pub = rights(role, SPACE, ["work"]).publish
    assert ("t1.moon.wf.>" in pub) == (role == "engine")
    assert ("t1.maestro.plan.>" in pub) == (role == "maestro")
    assert not any(p.startswith("t1.moon.wf.") for p in pub if role != "engine")


@pytest.mark.parametrize("role", APP)
def test_each_user_subscribes_only_to_its_own_inbox(role):
    inboxes = [s for s in rights(role, SPACE, ["work"]).subscribe if s.startswith("_INBOX")]
    assert inboxes == [f"{inbox_prefix(role)}.>"]
    assert not any(p.startswith("_INBOX") for p in rights(role, SPACE).publish)


def test_an_executors_rights_name_no_other_executor():
    mine = _all("executor:x1")
    text = " ".join(mine)
    assert "x2" not in text
    assert "t1.moon.report.x1.>" in mine and "t1.moon.report.>" not in mine
    assert "$JS.API.CONSUMER.CREATE.t1_WORK.t1_exec-x1.t1.work.exec.x1" in mine
    assert "$JS.API.CONSUMER.CREATE.t1_WORK.t1_any-work.t1.work.any.work" in mine
    assert not any("DURABLE.CREATE" in s for s in mine)  # the body would carry the filter
    assert "$KV.t1_maestro_board.x1" in mine
    assert not any(s.startswith("$KV.") and s != "$KV.t1_maestro_board.x1" for s in mine)


def test_roles_parse_and_refuse():
    assert parse_role("executor:x1") == (Role.EXECUTOR, "x1")
    for bad in ("executor:", "executor:a.b", "executor:*", "engine:x", "root"):
        with pytest.raises(ValueError):
            parse_role(bad)


def test_the_gates_methods_cover_the_gateways_routes():
    """A route without its consumer right would fail at start: keep GATE_METHODS in step."""
    for service, module in (("moon", "moon/gateway.py"), ("maestro", "maestro/gateway.py")):
        routes = re.findall(r'gate\.route\("([a-z_]+)"', (ROOT / module).read_text())
        assert routes and set(routes) <= set(GATE_METHODS[service]), (service, routes)


def test_a_variable_nkey_is_written_bare_and_a_literal_is_checked():
    text = render_accounts([RoleUser("engine", "$NKEY_ENGINE", rights("engine", SPACE))])
    assert "nkey: $NKEY_ENGINE," in text and '"$NKEY_ENGINE"' not in text
    with pytest.raises(ValueError):
        render_accounts([RoleUser("engine", "not a key", rights("engine", SPACE))])
