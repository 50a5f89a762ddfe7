"""`labelled` keeps each metric's children: the same child the library's `labels` gives."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter

from streams.metrics import labelled


def test_labelled_is_the_libraries_child_for_those_values_and_counts_there() -> None:
    counter = Counter("t_labelled", "a test counter", ["kind"], registry=CollectorRegistry())
    first = labelled(counter, "a")
    assert labelled(counter, "a") is first is counter.labels("a")
    first.inc()
    labelled(counter, "b").inc(2)
    assert counter.labels("a")._value.get() == 1
    assert counter.labels("b")._value.get() == 2
    other = Counter("t_labelled_other", "another", ["kind"], registry=CollectorRegistry())
    assert labelled(other, "a") is not first  # keyed by metric as well as by values
