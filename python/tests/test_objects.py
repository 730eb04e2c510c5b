"""The Python package against a real one-node cluster started with the `yr` binary (the `session`
fixture of conftest.py)."""

import pytest

import yr


def test_calls_before_init_say_so():
    yr.finalize()
    assert not yr.is_initialized()
    with pytest.raises(yr.NotInitializedError):
        yr.put(b"x")


def test_put_get_wait_round_trip(session):
    yr.init(yr.Config(session=session))
    try:
        assert yr.is_initialized()
        payload = bytes(range(256)) * 4096
        ref = yr.put(payload)
        assert yr.get(ref, timeout=10) == payload
        refs = [yr.put(bytearray([i]) * 10) for i in range(5)]
        assert yr.get(refs, timeout=10) == [bytes([i]) * 10 for i in range(5)]
        ready, rest = yr.wait(refs, wait_num=5, timeout=10)
        assert len(ready) == 5 and rest == []
        assert yr.get(yr.put({"not": "bytes"}), timeout=10) == {"not": "bytes"}
    finally:
        yr.finalize()
    assert not yr.is_initialized()


def test_a_missing_session_is_a_connect_error():
    with pytest.raises(yr.ConnectError, match="session"):
        yr.init(yr.Config(session="/nonexistent/yr-session"))
    assert not yr.is_initialized()
