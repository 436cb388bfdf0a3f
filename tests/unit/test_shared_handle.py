"""The shared handle: who holds one listening socket, and when the primary may close it."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pycluster._scheduling.shared import SharedHandle


def test_add_once_per_worker() -> None:
    h: SharedHandle[str] = SharedHandle()
    assert h.add("a") is True
    assert h.add("a") is False  # already holds it: do not send it again
    assert h.add("b") is True
    assert h.members == {"a", "b"}


def test_remove_reports_the_last_holder() -> None:
    h: SharedHandle[str] = SharedHandle()
    h.add("a")
    h.add("b")
    assert h.remove("a") is False
    assert h.remove("a") is False  # idempotent, and "b" still holds it
    assert h.remove("b") is True
    assert h.members == frozenset()


def test_remove_of_a_stranger_from_an_empty_handle() -> None:
    h: SharedHandle[str] = SharedHandle()
    assert h.remove("nobody") is True


def test_members_is_a_snapshot() -> None:
    h: SharedHandle[str] = SharedHandle()
    h.add("a")
    snapshot = h.members
    h.add("b")
    assert snapshot == {"a"}


@settings(max_examples=200, deadline=None)
@given(ops=st.lists(st.tuples(st.booleans(), st.sampled_from("abcd")), max_size=40))
def test_matches_a_set(ops: list[tuple[bool, str]]) -> None:
    """Any add/remove sequence: members is the set, and the flags say exactly what changed."""
    h: SharedHandle[str] = SharedHandle()
    model: set[str] = set()
    for is_add, worker in ops:
        if is_add:
            assert h.add(worker) is (worker not in model)
            model.add(worker)
        else:
            model.discard(worker)
            assert h.remove(worker) is (not model)
        assert h.members == model
