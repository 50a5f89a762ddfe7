"""Least privilege on the broker (issue 10, part 3), against a real nats-server with auth on.

Each attack the issue names that is a broker-level action is tried with the role that would
try it and must be refused by the server; what each role's job needs must still work. Run with
MAESTRO_SECURITY_BASELINE=1 (a broker without auth, as before): every attack test fails.
"""

from __future__ import annotations

import asyncio

import nats
import pytest

from streams.config import StreamsMissing, Topology, ensure_streams
from streams.credentials import rotate
from streams.health import health_service, probe
from streams.subjects import Space
from tests.security.world import BASELINE, Secured

APP_ROLES = ("engine", "maestro", "operator", "auditor", "gateway")


def _consumer_body(stream: str, **config: object) -> dict[str, object]:
    return {"stream_name": stream, "config": config}


# --- authentication ------------------------------------------------------------------------


async def test_an_unauthenticated_client_is_refused(secured: Secured):
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(secured.url, max_reconnect_attempts=0, allow_reconnect=False)


async def test_a_key_the_server_does_not_know_is_refused(secured: Secured, tmp_path):
    stranger = rotate(tmp_path, "engine")  # a well-formed seed nobody registered
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(secured.url, nkeys_seed=str(stranger), max_reconnect_attempts=0,
                           allow_reconnect=False)


def test_credentials_are_private_files(secured: Secured, embedded_only):
    creds = secured.broker.creds_dir
    assert creds.stat().st_mode & 0o777 == 0o700
    for seed in creds.glob("*.nk"):
        assert seed.stat().st_mode & 0o777 == 0o600, seed
    for config in ("nats-server.conf", "auth.conf"):
        assert (secured.broker.data_dir / config).stat().st_mode & 0o777 == 0o600


# --- the journal and the commands: whose alone ---------------------------------------------


@pytest.mark.parametrize("role", ["maestro", "operator", "auditor", "gateway", "executor"])
async def test_nobody_but_the_engine_appends_to_the_moon_journal(secured: Secured, role):
    if role == "executor":
        role = secured.provision("x1", ["work"])
    nc = await secured.connect(role)
    subject = secured.space.subject("moon.wf.wf1.completed")
    assert await secured.denied_publish(nc, subject, b'{"forged": true}')
    info = await (await secured.connect("admin")).jetstream().stream_info(
        secured.space.stream("MOON"))
    assert info.state.messages == 0


@pytest.mark.parametrize("role", ["engine", "operator", "auditor", "gateway", "executor"])
async def test_nobody_but_maestro_appends_to_plans(secured: Secured, role):
    if role == "executor":
        role = secured.provision("x1", ["work"])
    nc = await secured.connect(role)
    assert await secured.denied_publish(nc, secured.space.subject("maestro.plan.p1.allocated"))


@pytest.mark.parametrize("kind", ["complete_step", "start_step", "replan", "compensate",
                                  "fire_timer", "dispatch", "cancel"])
async def test_an_executor_sends_no_commands(secured: Secured, kind):
    nc = await secured.connect(secured.provision("x1", ["work"]))
    assert await secured.denied_publish(nc, secured.space.subject(f"moon.cmd.wf1.{kind}"))
    assert await secured.denied_publish(nc, secured.space.subject("moon.timer.wf1.t1"))


@pytest.mark.parametrize("role", ["operator", "auditor", "gateway"])
async def test_clients_reach_moon_only_through_the_gate(secured: Secured, role):
    nc = await secured.connect(role)
    for kind in ("complete_step", "replan", "compensate", "dispatch"):
        assert await secured.denied_publish(nc, secured.space.subject(f"moon.cmd.wf1.{kind}"))


async def test_an_executor_reports_only_as_itself(secured: Secured):
    engine = await secured.connect("engine")
    got: asyncio.Queue[str] = asyncio.Queue()

    async def answer(msg):
        await got.put(msg.subject)
        await msg.respond(b"ok")

    await engine.subscribe(secured.space.subject("moon.report.>"), queue="moon-engine", cb=answer)
    await engine.flush()
    x1 = await secured.connect(secured.provision("x1", ["work"]))
    secured.provision("x2", ["work"])
    own = secured.space.subject("moon.report.x1.wf1.complete_step")
    assert (await x1.request(own, b"{}", timeout=5)).data == b"ok"
    assert await got.get() == own
    other = secured.space.subject("moon.report.x2.wf1.complete_step")
    assert await secured.denied_request(x1, other)
    assert got.empty()


async def test_only_the_engine_listens_to_reports(secured: Secured):
    for role in ("maestro", "operator", "gateway", secured.provision("x1", ["work"])):
        nc = await secured.connect(role)
        assert await secured.denied_subscribe(nc, secured.space.subject("moon.report.>"))


# --- consumers --------------------------------------------------------------------------------


@pytest.mark.parametrize("stream", ["AUDIT", "MOON", "MOON_CMD", "INTENTS", "PLANS"])
async def test_an_executor_creates_no_consumer_on_other_streams(secured: Secured, stream):
    nc = await secured.connect(secured.provision("x1", ["work"]))
    name = secured.space.stream(stream)
    assert await secured.denied_request(
        nc, f"$JS.API.CONSUMER.CREATE.{name}", _consumer_body(name, deliver_policy="all"))
    assert await secured.denied_request(
        nc, f"$JS.API.CONSUMER.DURABLE.CREATE.{name}.spy",
        _consumer_body(name, durable_name="spy", ack_policy="explicit"))
    subject = secured.space.subject(">")
    assert await secured.denied_request(
        nc, f"$JS.API.CONSUMER.CREATE.{name}.spy.{subject}",
        _consumer_body(name, name="spy", durable_name="spy", filter_subject=subject))


async def test_an_executor_takes_only_its_own_and_its_pools_orders(secured: Secured):
    space = secured.space
    x1 = await secured.connect(secured.provision("x1", ["work"]))
    secured.provision("x2", ["work", "gpu"])
    work = space.stream("WORK")

    def create(name: str, filter_: str) -> tuple[str, dict[str, object]]:
        consumer, subject = space.consumer(name), space.subject(filter_)
        return (f"$JS.API.CONSUMER.CREATE.{work}.{consumer}.{subject}",
                _consumer_body(work, name=consumer, durable_name=consumer,
                               filter_subject=subject, ack_policy="explicit"))

    # Another executor's orders, a pool it is not in, everything: refused by the server.
    for name, filter_ in (("exec-x2", "work.exec.x2"), ("any-gpu", "work.any.gpu"),
                          ("exec-x1", "work.>"), ("exec-x1", "work.exec.x2")):
        assert await secured.denied_request(x1, *create(name, filter_)), (name, filter_)
    # The legacy form carries its filter in the body: not granted to executors.
    consumer = space.consumer("exec-x1")
    assert await secured.denied_request(
        x1, f"$JS.API.CONSUMER.DURABLE.CREATE.{work}.{consumer}",
        _consumer_body(work, durable_name=consumer, filter_subject=space.subject("work.>")))
    # Its own subject with a body that widens the filter: the server checks they match.
    subject, body = create("exec-x1", "work.exec.x1")
    body["config"] = {**body["config"], "filter_subject": space.subject("work.>")}  # type: ignore[dict-item]
    answer = await secured.api(x1, subject, body)
    assert "error" in answer, answer
    # What it may: its own orders and its pools', by pull.
    engine = (await secured.connect("engine")).jetstream()
    await engine.publish(space.subject("work.exec.x1"), b"mine")
    await engine.publish(space.subject("work.any.work"), b"pooled")
    js = x1.jetstream()
    for durable, filter_, data in (("exec-x1", "work.exec.x1", b"mine"),
                                   ("any-work", "work.any.work", b"pooled")):
        sub = await js.pull_subscribe(space.subject(filter_), durable=space.consumer(durable),
                                      stream=work)
        [msg] = await sub.fetch(1, timeout=5)
        assert msg.data == data
        await msg.ack_sync()


@pytest.mark.parametrize("role", ["executor", "operator", "auditor", "gateway", "maestro"])
async def test_nobody_deletes_the_engines_consumer(secured: Secured, role):
    engine = (await secured.connect("engine")).jetstream()
    durable = secured.space.consumer("moon-engine")
    stream = secured.space.stream("MOON_CMD")
    await engine.subscribe(secured.space.subject("moon.cmd.>"), stream=stream, durable=durable,
                           queue=durable, manual_ack=True, cb=_ignore)
    if role == "executor":
        role = secured.provision("x1", ["work"])
    nc = await secured.connect(role)
    assert await secured.denied_request(nc, f"$JS.API.CONSUMER.DELETE.{stream}.{durable}")
    admin = (await secured.connect("admin")).jetstream()
    assert (await admin.consumer_info(stream, durable)).name == durable


async def _ignore(msg) -> None:
    return None


# --- streams: only the admin creates, changes, purges, deletes --------------------------------


@pytest.mark.parametrize("role", ["engine", "maestro", "operator", "auditor", "gateway",
                                  "executor"])
async def test_nobody_but_the_admin_deletes_or_purges_the_journals(secured: Secured, role):
    if role == "executor":
        role = secured.provision("x1", ["work"])
    nc = await secured.connect(role)
    for stream in ("MOON", "AUDIT", "PLANS", "WORK", "INTENTS"):
        name = secured.space.stream(stream)
        assert await secured.denied_request(nc, f"$JS.API.STREAM.DELETE.{name}"), stream
        assert await secured.denied_request(nc, f"$JS.API.STREAM.PURGE.{name}", {}), stream
        assert await secured.denied_request(
            nc, f"$JS.API.STREAM.MSG.DELETE.{name}", {"seq": 1}), stream
    admin = (await secured.connect("admin")).jetstream()
    assert (await admin.stream_info(secured.space.stream("MOON"))).config.deny_delete


@pytest.mark.parametrize("role", ["maestro", "operator", "auditor", "gateway", "executor"])
async def test_only_the_engine_purges_the_command_stream(secured: Secured, role):
    if role == "executor":
        role = secured.provision("x1", ["work"])
    nc = await secured.connect(role)
    name = secured.space.stream("MOON_CMD")
    assert await secured.denied_request(nc, f"$JS.API.STREAM.PURGE.{name}", {})


async def test_the_operator_cannot_switch_the_journal_rules_off(secured: Secured):
    operator = await secured.connect("operator")
    for stream in ("AUDIT", "MOON"):
        config = next(c for c in Topology(space=secured.space).stream_configs()
                      if c.name == secured.space.stream(stream))
        body = {**config.as_dict(), "deny_delete": False, "deny_purge": False}
        assert await secured.denied_request(
            operator, f"$JS.API.STREAM.UPDATE.{config.name}", body)
    assert await secured.denied_request(
        operator, f"$JS.API.STREAM.CREATE.{secured.space.stream('EVIL')}",
        {"name": secured.space.stream("EVIL"), "subjects": [secured.space.subject("moon.>")]})


@pytest.mark.parametrize("role", ["engine", "maestro", "operator", "gateway", "executor"])
async def test_services_do_not_create_streams_they_find_missing(tmp_path, role):
    """A fresh server whose admin never ran: a service says what to do, in one line."""
    if BASELINE:
        pytest.fail("baseline: without auth every client may create streams")
    world = await Secured.start(tmp_path / "w", Space("fresh"))
    try:
        admin = (await world.connect("admin")).jetstream()
        for stream in ("MOON", "MOON_CMD", "WORK", "AUDIT", "INTENTS", "PLANS"):
            await admin.delete_stream(world.space.stream(stream))
        if role == "executor":
            role = world.provision("x1", ["work"])
        nc = await world.connect(role)
        with pytest.raises(StreamsMissing, match="may not create it") as missing:
            await ensure_streams(nc.jetstream(), Topology(space=world.space))
        assert "\n" not in str(missing.value)
    finally:
        await world.stop()


# --- KV: each key's writer --------------------------------------------------------------------


async def test_an_executor_writes_only_its_own_board_key(secured: Secured):
    space = secured.space
    x1 = await secured.connect(secured.provision("x1", ["work"]))
    secured.provision("x2", ["work"])
    kv = await x1.jetstream().key_value(space.bucket("maestro_board"))
    await kv.put("x1", b'{"offer": 1}')
    for bucket, key in (("maestro_board", "x2"), ("moon_claims", "k1"),
                        ("moon_snapshots", "wf1"), ("envelope_outcomes", "r1"),
                        ("moon_workflows", "wf1"), ("envelope_revoked", "ab"),
                        ("moon_executors", "x1")):
        assert await secured.denied_request(
            x1, f"$KV.{space.bucket(bucket)}.{key}", b"forged"), bucket


@pytest.mark.parametrize("role", ["operator", "auditor", "gateway", "maestro"])
async def test_only_the_gates_and_the_engine_write_their_buckets(secured: Secured, role):
    nc = await secured.connect(role)
    buckets = ["moon_snapshots", "moon_workflows", "moon_claims"]
    if role != "maestro":
        buckets += ["envelope_outcomes", "envelope_nonces"]
    for bucket in buckets:
        subject = f"$KV.{secured.space.bucket(bucket)}.k1"
        assert await secured.denied_request(nc, subject, b"squat"), bucket


# --- inboxes ----------------------------------------------------------------------------------


async def test_inboxes_are_per_user(secured: Secured):
    x1 = await secured.connect(secured.provision("x1", ["work"]))
    secured.provision("x2", ["work"])
    for inbox in ("_INBOX.>", "_INBOX_engine.>", "_INBOX_executor_x2.>", ">", "_INBOX_admin.>"):
        assert await secured.denied_subscribe(x1, inbox), inbox
    operator = await secured.connect("operator")
    assert await secured.denied_subscribe(operator, "_INBOX_engine.>")
    # Nor may anyone publish into another's inbox (a forged reply): replies go only to
    # requests received (allow_responses).
    assert await secured.denied_publish(x1, "_INBOX_engine.abc.1", b"forged reply")


@pytest.mark.parametrize("subject", ["map.moon.dispatch", "intent.moon.dispatch",
                                     "health.moon-engine", "work.exec.x1", "moon.wf.>"])
async def test_an_executor_cannot_listen_where_services_do(secured: Secured, subject):
    nc = await secured.connect(secured.provision("x1", ["work"]))
    assert await secured.denied_subscribe(nc, secured.space.subject(subject), queue="moon-engine")


# --- what each role's job needs ---------------------------------------------------------------


async def test_the_engine_does_its_job(secured: Secured):
    space = secured.space
    nc = await secured.connect("engine")
    js = nc.jetstream()
    assert await ensure_streams(js, Topology(space=space)) == []
    ack = await js.publish(space.subject("moon.wf.wf1.started"), b"{}")
    assert ack.stream == space.stream("MOON")
    audited = await js.publish(space.subject("audit.moon.dispatch.ok"), b"{}")
    # its gate reads a first answer back from its record, by sequence (envelope/audit.py)
    assert (await js.get_msg(space.stream("AUDIT"), audited.seq)).data == b"{}"
    await js.publish(space.subject("work.exec.x1"), b"order")
    timer = space.subject("moon.timer.wf1.t1")
    await js.publish(timer, b"{}", headers={"Nats-Schedule": "@at 2099-01-01T00:00:00Z",
                                             "Nats-Schedule-Target":
                                                 space.subject("moon.cmd.wf1.fire_timer")})
    await js.purge_stream(space.stream("MOON_CMD"), subject=timer)
    durable = space.consumer("moon-engine")
    await js.subscribe(space.subject("moon.cmd.>"), stream=space.stream("MOON_CMD"),
                       durable=durable, queue=durable, manual_ack=True, cb=_ignore)
    kv = await js.key_value(space.bucket("moon_snapshots"))
    await kv.put("wf1", b"{}")
    assert (await kv.get("wf1")).value == b"{}"
    index = await js.key_value(space.bucket("moon_workflows"))
    await index.put("wf1", b"{}")
    got = await js.get_last_msg(space.stream("MOON"), space.subject("moon.wf.wf1.>"),
                                direct=True)
    assert got.data == b"{}"
    pull = await js.pull_subscribe(space.subject("intent.moon.dispatch"),
                                   durable=space.consumer("moon_dispatch"),
                                   stream=space.stream("INTENTS"))
    await pull.unsubscribe()


async def test_maestro_does_its_job(secured: Secured):
    space = secured.space
    js = (await secured.connect("maestro")).jetstream()
    await js.publish(space.subject("maestro.plan.p1.allocated"), b"{}")
    await js.publish(space.subject("moon.cmd.wf1.replan"), b"{}")
    await js.publish(space.subject("moon.cmd.wf1.compensate"), b"{}")
    audited = await js.publish(space.subject("audit.maestro.plan.ok"), b"{}")
    assert (await js.get_msg(space.stream("AUDIT"), audited.seq)).data == b"{}"
    durable = space.consumer("maestro-replanner")
    await js.subscribe(space.subject("moon.wf.*.deviation"), stream=space.stream("DEVIATIONS"),
                       durable=durable, queue=durable, manual_ack=True, cb=_ignore)
    board = await js.key_value(space.bucket("maestro_board"))
    assert [k async for k in _keys(board)] == []


async def _keys(kv):
    try:
        for key in await kv.keys():
            yield key
    except Exception as error:  # nats-py: NoKeysError on an empty bucket
        if type(error).__name__ != "NoKeysError":
            raise


@pytest.mark.parametrize("role", ["operator", "auditor", "gateway"])
async def test_readers_read_the_journal_and_the_audit(secured: Secured, role):
    space = secured.space
    engine = (await secured.connect("engine")).jetstream()
    await engine.publish(space.subject("moon.wf.wf1.started"), b"journal")
    await engine.publish(space.subject("audit.moon.dispatch.ok"), b"audit")
    js = (await secured.connect(role)).jetstream()
    for stream, subject, data in (("MOON", "moon.wf.>", b"journal"),
                                  ("AUDIT", "audit.>", b"audit")):
        got: asyncio.Queue[bytes] = asyncio.Queue()

        async def on_msg(msg, got=got):
            await got.put(msg.data)

        sub = await js.subscribe(space.subject(subject), stream=space.stream(stream),
                                 ordered_consumer=True, cb=on_msg)
        assert await asyncio.wait_for(got.get(), 5) == data
        await sub.unsubscribe()
        last = await js.get_last_msg(space.stream(stream), space.subject(subject), direct=True)
        assert last.data == data


async def test_the_operator_signs_requests_and_revokes(secured: Secured):
    space = secured.space
    engine = await secured.connect("engine")

    async def answer(msg):
        await msg.respond(b"sealed answer")

    await engine.subscribe(space.subject("map.moon.dispatch"), queue="moon", cb=answer)
    await engine.flush()
    operator = await secured.connect("operator")
    reply = await operator.request(space.subject("map.moon.dispatch"), b"envelope", timeout=5)
    assert reply.data == b"sealed answer"
    js = operator.jetstream()
    await js.publish(space.subject("intent.moon.dispatch"), b"envelope")
    revoked = await js.key_value(space.bucket("envelope_revoked"))
    await revoked.put("ab12", b"revoked")
    registry = await js.key_value(space.bucket("moon_executors"))
    await registry.put("x1", b"statement")


async def test_the_auditor_only_reads(secured: Secured):
    auditor = await secured.connect("auditor")
    space = secured.space
    for subject in ("map.moon.dispatch", "intent.moon.dispatch", "audit.moon.x.ok"):
        assert await secured.denied_publish(auditor, space.subject(subject))
    assert await secured.denied_request(
        auditor, f"$KV.{space.bucket('envelope_revoked')}.ab", b"revoked")


async def test_anyone_asks_a_service_how_it_is(secured: Secured):
    engine = await secured.connect("engine")
    service = await health_service(engine, "moon-engine", space=secured.space)
    try:
        for role in ("operator", "auditor", "gateway"):
            nc = await secured.connect(role)
            assert (await probe(nc, "moon-engine", space=secured.space)).ok
            await nc.request("$SRV.PING.moon-engine", b"", timeout=5)
    finally:
        await service.stop()


# --- provisioning an executor on a running server ---------------------------------------------


async def test_a_provisioned_executor_works_after_reload_and_others_stay_up(
    secured: Secured, embedded_only
):
    space = secured.space
    engine = await secured.connect("engine")
    before = await secured.connect(secured.provision("x1", ["work"]))
    role = secured.provision("x2", ["gpu"])  # reloads the running server
    x2 = await secured.connect(role)
    js = x2.jetstream()
    sub = await js.pull_subscribe(space.subject("work.any.gpu"),
                                  durable=space.consumer("any-gpu"), stream=space.stream("WORK"))
    await engine.jetstream().publish(space.subject("work.any.gpu"), b"order")
    [msg] = await sub.fetch(1, timeout=5)
    await msg.ack_sync()
    # Connections made before the reload are still up, with their rights.
    assert before.is_connected and engine.is_connected
    kv = await before.jetstream().key_value(space.bucket("maestro_board"))
    await kv.put("x1", b"offer")


async def test_a_rotated_key_is_refused_after_reload(secured: Secured, embedded_only):
    old = secured.broker.seed("auditor").read_text()
    rotate(secured.broker.creds_dir, "auditor")
    # Returns once the server accepts the new seed (a reload is applied asynchronously).
    await asyncio.to_thread(secured.broker.reload, secured.broker.seed("auditor"))
    await (await secured.connect("auditor")).flush()  # the new seed is accepted
    with pytest.raises(nats.errors.Error, match="Authorization Violation"):
        await nats.connect(secured.url, nkeys_seed_str=old, max_reconnect_attempts=0,
                           allow_reconnect=False)


# --- known gap, for the lead: a durable on a stream others may read ---------------------------


async def test_a_reader_cannot_repoint_maestros_durable(secured: Secured):
    """MAESTRO's durable lives on DEVIATIONS, where only MAESTRO may make consumers: on MOON,
    which every reader reads, the create request's body could name (and re-point) it."""
    space = secured.space
    maestro = await secured.connect("maestro")
    js = maestro.jetstream()
    durable, stream = space.consumer("maestro-replanner"), space.stream("DEVIATIONS")
    sub = await js.subscribe(space.subject("moon.wf.*.deviation"), stream=stream,
                             durable=durable, queue=durable, manual_ack=True, cb=_ignore)
    await sub.unsubscribe()  # MAESTRO restarting: the durable stays, unbound
    operator = await secured.connect("operator")
    body = _consumer_body(stream, name=durable, ack_policy="explicit",
                          deliver_subject="_INBOX_operator.stolen", deliver_group=durable,
                          filter_subject=space.subject("moon.wf.*.deviation"))
    assert await secured.denied_request(operator, f"$JS.API.CONSUMER.CREATE.{stream}", body)
    info = await js.consumer_info(stream, durable)
    assert info.config.deliver_subject != "_INBOX_operator.stolen"
