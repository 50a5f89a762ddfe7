"""A service's log lines, as `configure_logging` writes them when stderr is not a terminal:
one JSON object a line, whatever the values logged (a process's own, not pytest's config)."""

from __future__ import annotations

import json
import subprocess
import sys

from streams.logs import log_level, log_line

SCRIPT = """
import structlog
from streams.logs import configure_logging

class Named:
    def __structlog__(self):
        return "named"

class Opaque:
    def __repr__(self):
        return "<opaque>"

cycle = []
cycle.append(cycle)
configure_logging()
log = structlog.get_logger()
log.info("first", n=1, text="é", named=Named(), opaque=Opaque(), raw=b"ab", items={3})
log.debug("hidden")
log.warning("second", nested={"k": [1, 2.5, None]})
print("plain text between", file=__import__("sys").stderr)
log.error("third", keyed={None: 1, True: 2})
log.error("fourth", cycle=cycle)
"""


def test_every_line_is_json_with_fallbacks_as_structlog_renders_them() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, timeout=60,
                          check=True)
    lines = done.stderr.decode().splitlines()
    assert lines[2] == "plain text between"  # text and bytes writes keep their order
    first, second, third, fourth = (json.loads(line) for i, line in enumerate(lines)
                                    if i != 2)
    assert first["event"] == "first" and first["level"] == "info"
    assert (first["n"], first["text"], first["named"], first["opaque"]) == (
        1, "é", "named", "<opaque>")
    assert (first["raw"], first["items"]) == ("YWI=", [3])  # bytes as base64, sets as lists
    assert first["timestamp"].endswith("Z")
    assert second == {**second, "event": "second", "level": "warning",
                      "nested": {"k": [1, 2.5, None]}}
    # Keys JSON has no type for are named as text: the line is still written.
    assert (third["event"], third["level"]) == ("third", "error")
    assert sorted(third["keyed"].values()) == [1, 2]
    assert fourth["event"] == "fourth" and fourth["cycle"] == "[[...]]"  # not an exception
    assert done.stdout == b""
    # How the benchmarks and tests read them: by what the line says, not by its spacing.
    assert [log_level(line) for line in lines] == ["info", "warning", None, "error", "error"]
    assert log_line(lines[0]) == first and log_line("Traceback (most recent call last):") is None
