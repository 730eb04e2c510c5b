"""Rust and Python read each other's bytes: objects and KV values written by the Rust data
proxy of the frontend (`/datasystem/v1`, Rust end to end) are read by the Python package, and
the other way round."""

import json
import urllib.request

import yr


def _call(info, path, body=None, method="POST"):
    with open(info["token_file"], encoding="utf-8") as f:
        token = f.read().strip()
    req = urllib.request.Request(info["frontend_url"] + path, data=body, method=method,
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=60) as r:
        return r.read()


def test_bytes_cross_between_rust_and_python(session, session_info):
    yr.init(yr.Config(session=session))
    try:
        payload = bytes(range(256)) * 1000
        # Python puts, Rust reads.
        ref = yr.put(payload)
        assert _call(session_info, f"/datasystem/v1/obj/get?id={ref.id}", method="GET") == payload
        # Rust puts, Python reads.
        put = json.loads(_call(session_info, "/datasystem/v1/obj/put", payload[::-1]))
        theirs = yr._yr.borrowed_ref(put["id"], put["size"], yr._yr.node_id())
        assert yr.get(theirs, timeout=30) == payload[::-1]
        _call(session_info, f"/datasystem/v1/obj/del?id={put['id']}")
        # KV both ways.
        yr.kv_write("interop-py", b"from python")
        assert _call(session_info, "/datasystem/v1/kv/get?key=interop-py", method="GET") == b"from python"
        _call(session_info, "/datasystem/v1/kv/set?key=interop-rust", b"from rust")
        assert yr.kv_read("interop-rust", 10) == b"from rust"
        yr.kv_del(["interop-py", "interop-rust"])
    finally:
        yr.finalize()
