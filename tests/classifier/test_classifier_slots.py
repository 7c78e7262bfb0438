"""Per-user caps on requests held open at once: counted across processes, given back, lapsing by themselves.

Every test runs against the local-memory cache and against Redis (one atomic script each).
"""
from __future__ import annotations

import os
import time

import pytest
from django.test import override_settings

from classifier.slots import UserSlotStream, user_slot_give_back, user_slot_take
from tests.caches import UNREACHABLE_REDIS_CACHE, cache_backend

_KEY_PREFIX = f"slots-test-{os.getpid()}"


# Replaced by slot_cache (tests.caches.cache_backend).
@pytest.fixture(autouse=True)
def fresh_cache():
    yield


@pytest.fixture(autouse=True, params=["locmem", "redis"])
def slot_cache(request, settings):
    with cache_backend(request.param, settings, key_prefix=_KEY_PREFIX):
        yield request.param


def _take(user_id: int = 1, *, limit: int = 2, hold_s: float = 30.0, token: str | None = None) -> str | None:
    return user_slot_take(kind="wait", user_id=user_id, limit=limit, hold_s=hold_s, token=token)


def test_a_user_holds_at_most_the_limit_and_a_slot_given_back_can_be_taken_again():
    first, second = _take(), _take()
    assert first and second and first != second
    assert _take() is None

    user_slot_give_back(kind="wait", user_id=1, token=first)

    assert _take() is not None
    assert _take() is None


def test_each_user_and_each_kind_has_slots_of_its_own():
    assert _take(limit=1) and _take(limit=1) is None

    assert _take(user_id=2, limit=1) is not None
    assert user_slot_take(kind="export", user_id=1, limit=1, hold_s=30) is not None


def test_a_slot_never_given_back_lapses_by_itself_as_one_held_by_a_killed_process_must():
    assert _take(limit=1, hold_s=0.3)
    assert _take(limit=1) is None

    time.sleep(0.5)

    assert _take(limit=1) is not None


def test_a_lapsed_slot_frees_itself_while_the_user_still_holds_others():
    assert _take(hold_s=0.3) and _take(hold_s=30.0)

    time.sleep(0.5)

    assert _take() is not None
    assert _take() is None


def test_giving_a_slot_back_keeps_the_users_other_slots_held():
    first = _take()
    assert first and _take()
    user_slot_give_back(kind="wait", user_id=1, token=first)
    time.sleep(0.1)

    assert _take() is not None
    assert _take() is None


def test_taking_a_held_slot_again_by_its_token_keeps_it_held_longer_and_counts_it_once():
    token = _take(limit=1, hold_s=1.5)
    time.sleep(1.0)
    assert _take(limit=1, hold_s=1.5, token=token) == token
    time.sleep(1.0)

    # 2 s after it was first taken for 1.5, renewed at 1: still held.
    assert _take(limit=1) is None


def test_a_limit_of_zero_caps_nothing():
    assert all(_take(limit=0) for _ in range(20))


def test_slots_are_taken_from_nobody_while_the_cache_is_unreachable(slot_cache):
    if slot_cache == "locmem":
        pytest.skip("the local-memory cache cannot become unreachable")
    with override_settings(CACHES={"default": UNREACHABLE_REDIS_CACHE}):
        tokens = [_take(limit=1) for _ in range(3)]
        user_slot_give_back(kind="wait", user_id=1, token=tokens[0])
    assert all(tokens)


def _stream(chunks, *, limit: int = 1, hold_s: float = 30.0) -> UserSlotStream:
    token = _take(limit=limit, hold_s=hold_s)
    assert token is not None
    return UserSlotStream(chunks, kind="wait", user_id=1, limit=limit, hold_s=hold_s, token=token)


def test_a_stream_closed_before_its_first_chunk_gives_its_slot_back():
    def chunks():
        yield b"never read"

    stream = _stream(chunks())
    assert _take(limit=1) is None

    stream.close()

    assert _take(limit=1) is not None


def test_a_stream_read_to_its_end_gives_its_slot_back_once_closed_and_closes_what_it_streamed():
    closed = []

    def chunks():
        try:
            yield from (b"a", b"b")
        finally:
            closed.append(True)

    stream = _stream(chunks())
    assert b"".join(stream) == b"ab"
    stream.close()
    stream.close()

    assert closed == [True]
    assert _take(limit=1) is not None


def test_a_slow_stream_keeps_its_slot_held_past_the_hold_while_it_lasts():
    def chunks():
        for _ in range(8):
            time.sleep(0.3)
            yield b"."

    stream = _stream(chunks(), hold_s=1.2)
    read = b""
    for chunk in stream:
        read += chunk
        # Never free while it streams, long after the first 1.2 s.
        assert _take(limit=1) is None
    stream.close()

    assert read == b"." * 8
    assert _take(limit=1) is not None
