"""The recorded golden journal still replays: same decisions, same end state (a Replayer)."""

from __future__ import annotations

import msgspec

from moon.replay import fold, verify
from streams.moon_events import Decision, significant_kind
from tests.histories.make_golden import EXPECTED, HISTORY, record, script, summary

_decision = msgspec.json.Decoder(Decision)


def _journal() -> list[Decision]:
    return [_decision.decode(line) for line in HISTORY.read_bytes().splitlines() if line]


def test_the_golden_journal_re_decides_to_the_same_events() -> None:
    assert verify(_journal()) == []


def test_the_golden_journal_folds_to_the_recorded_summary() -> None:
    assert summary(fold(_journal())) == msgspec.json.decode(EXPECTED.read_bytes())


def test_the_golden_script_still_records_the_same_journal() -> None:
    decisions, _ = record(script())
    assert decisions == _journal()


def test_maestro_sees_every_deviation_of_the_golden_journal_on_its_subject() -> None:
    kinds = [significant_kind(d.events) for d in _journal()]
    assert kinds.count("deviation") == 2
    assert kinds[0] == "dispatched" and kinds[-1] == "compensated"
