"""openYuanrong's driver API on a real one-node cluster started with the `yr` binary: stateless
functions, stateful and named instances, objects (zero copy), KV, exceptions, timeouts, instance
death and reference freeing."""

import os
import subprocess
import tempfile
import time

import numpy as np
import pytest

import yr

YR = os.environ.get("YR_BIN", "yr")


@pytest.fixture(scope="module")
def cluster():
    with tempfile.TemporaryDirectory(prefix="yr-py-api-") as d:
        folder = os.path.join(d, "node")
        subprocess.run(
            [YR, "start", "--master", "--ports", "auto", "--shm-size", "1GiB", "--cpu", "32000",
             "--session-dir", folder],
            check=True, timeout=120, stdout=subprocess.DEVNULL,
        )
        yr.init(yr.Config(session=folder))
        try:
            yield folder
        finally:
            yr.finalize()
            subprocess.run([YR, "stop", "--force", "--session-dir", folder], timeout=120,
                           stdout=subprocess.DEVNULL)


@yr.invoke
def add(n, k=1):
    return n + k


@yr.invoke
def ends(a):
    return int(a[0] + a[-1])


@yr.invoke
def where(a):
    """Where the argument's bytes are: the name of the mapping holding them, and whether the
    array may be written."""
    addr = a.__array_interface__["data"][0]
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= addr < hi:
                return (" ".join(parts[5:]), bool(a.flags.writeable))
    return ("", bool(a.flags.writeable))


@yr.invoke
def make(n):
    return np.full(n, 7, dtype=np.uint8)


class Oops(Exception):
    pass


@yr.invoke
def fail(msg):
    raise Oops(msg)


@yr.invoke
def sleepy(s):
    time.sleep(s)
    return s


@yr.instance
class Counter:
    def __init__(self, start=0):
        self.count = start

    def add(self, n):
        self.count += n
        return self.count

    def get(self):
        return self.count

    def die(self):
        os._exit(3)


@yr.instance
class Broken:
    def __init__(self):
        raise ValueError("constructor failed")

    def get(self):
        return 1


@yr.invoke
def secret_seen():
    """What of the instance's secret this function process can still see: in os.environ, in a
    child's environment, and in /proc/self/environ (what other processes of the user read)."""
    import posix
    import subprocess as sp
    child = sp.run(["/usr/bin/env"], capture_output=True, text=True).stdout
    with open("/proc/self/environ", "rb") as f:
        proc = [e for e in f.read().split(b"\0") if e.startswith(b"YR_INSTANCE_SECRET=")]
    return (os.environ.get("YR_INSTANCE_SECRET"), b"YR_INSTANCE_SECRET" in posix.environ,
            "YR_INSTANCE_SECRET" in child, [set(e.split(b"=", 1)[1]) for e in proc])


def test_a_function_process_does_not_keep_its_instance_secret_in_sight(cluster):
    in_environ, in_posix, in_child, in_proc = yr.get(secret_seen.invoke(), timeout=60)
    assert (in_environ, in_posix, in_child) == (None, False, False)
    # The agent gave it one; its bytes are overwritten where /proc shows them.
    assert in_proc == [{ord("x")}]


def test_stateless_calls_return_refs_at_once_and_values_on_get(cluster):
    refs = [add.invoke(i) for i in range(20)]
    assert yr.get(refs, timeout=60) == [i + 1 for i in range(20)]
    assert yr.get(add.invoke(1, k=10)) == 11
    # A reference as an argument is resolved where the call runs.
    assert yr.get(add.invoke(add.invoke(add.invoke(0)))) == 3
    opt = yr.InvokeOptions(cpu=300, memory=128)
    opt.concurrency = 2
    assert yr.get(add.options(opt).invoke(41)) == 42
    with pytest.raises(RuntimeError, match="cannot be called directly"):
        add(1)


def test_large_values_pass_by_reference_without_copies(cluster):
    a = np.arange(8 << 20, dtype=np.int64)  # 64 MiB
    ref = yr.put(a)
    b = yr.get(ref)
    lo, hi = yr._yr.arena_range()
    assert lo <= b.__array_interface__["data"][0] < hi, "the array is not in the mapped arena"
    assert not b.flags.writeable
    assert np.array_equal(a, b)
    assert yr.get(ends.invoke(ref)) == int(a[0] + a[-1])
    mapping, writeable = yr.get(where.invoke(ref))
    assert "yr-arena" in mapping, f"the callee's argument is in {mapping!r}, not the arena"
    assert not writeable
    # A large result stays in shared memory and is read in place.
    big = yr.get(make.invoke(32 << 20))
    assert big.nbytes == 32 << 20 and int(big[-1]) == 7
    assert lo <= big.__array_interface__["data"][0] < hi


def _rss_anon_kib():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    raise AssertionError("no RssAnon in /proc/self/status")


def test_get_does_not_copy_into_private_memory(cluster):
    size = 256 << 20
    ref = yr.put(np.ones(size, dtype=np.uint8))
    before = _rss_anon_kib()
    b = yr.get(ref)
    assert int(b.sum(dtype=np.uint64)) == size  # touches every page
    grown = (_rss_anon_kib() - before) * 1024
    assert grown < size // 8, f"private memory grew by {grown} bytes reading a {size}-byte object"
    del b, ref


def test_bytes_are_stored_raw_and_read_back(cluster):
    ref = yr.put(b"raw bytes")
    assert yr.get(ref) == b"raw bytes"
    assert yr.get(yr.put(bytearray(b"\x00" * 100000))) == b"\x00" * 100000
    assert yr.get(yr.put(123)) == 123
    assert yr.get([yr.put(i) for i in range(3)]) == [0, 1, 2]
    assert yr.get(yr.put({"key": "value"})) == {"key": "value"}
    with pytest.raises(ValueError):
        yr.put(None)
    with pytest.raises(TypeError):
        yr.put(ref)


def test_stateful_calls_run_in_order_and_keep_state(cluster):
    c = Counter.invoke(10)
    refs = [c.add.invoke(1) for _ in range(50)]
    assert yr.get(refs, timeout=60) == list(range(11, 61))
    assert yr.get(c.get.invoke()) == 60
    with pytest.raises(AttributeError):
        c.nope
    c.terminate()
    with pytest.raises(yr.InstanceDiedError):
        c.get.invoke()


def test_named_instances_are_found_again(cluster):
    opt = yr.InvokeOptions()
    opt.name = "counter-1"
    opt.ns = "demo"  # openYuanrong's docs set this undeclared attribute; it is ignored
    first = Counter.options(opt).invoke()
    assert yr.get(first.add.invoke(3)) == 3
    again = Counter.options(opt).invoke()
    assert yr.get(again.get.invoke()) == 3
    found = yr.get_instance("counter-1")
    assert yr.get(found.get.invoke()) == 3
    # Listed by name; one in a namespace only when every namespace is asked for; an instance
    # without a name never.
    opt2 = yr.InvokeOptions()
    opt2.name, opt2.namespace = "counter-2", "team-a"
    other = Counter.options(opt2).invoke()
    unnamed = Counter.invoke()
    assert yr.get([other.add.invoke(1), unnamed.add.invoke(1)]) == [1, 1]
    assert "counter-1" in yr.list_named_instances()
    assert "counter-2" not in yr.list_named_instances()
    everywhere = yr.list_named_instances(all_namespaces=True)
    assert {"name": "counter-1", "namespace": ""} in everywhere
    assert {"name": "counter-2", "namespace": "team-a"} in everywhere
    assert not any(e["name"] == unnamed.instance_id for e in everywhere), everywhere
    assert yr.get(yr.get_instance("counter-2", "team-a").get.invoke()) == 1
    for inst in (other, unnamed):
        inst.terminate()
    first.terminate()
    assert "counter-1" not in yr.list_named_instances()
    with pytest.raises(RuntimeError):
        yr.get_instance("no-such-instance", timeout=0)


def test_a_remote_exception_is_raised_by_get_with_its_traceback(cluster):
    with pytest.raises(Oops) as e:
        yr.get(fail.invoke("bad input"))
    assert isinstance(e.value, yr.YRInvokeError)
    text = str(e.value)
    assert "Traceback" in text and "in fail" in text and "bad input" in text
    # A failed reference passed on fails the next call the same way.
    with pytest.raises(Oops):
        yr.get(add.invoke(fail.invoke("first")))
    # A constructor's failure surfaces on the instance's calls.
    b = Broken.invoke()
    with pytest.raises(ValueError, match="constructor failed"):
        yr.get(b.get.invoke(), timeout=60)
    b.terminate()


def test_timeouts_raise_timeout_errors(cluster):
    r = sleepy.invoke(3)
    with pytest.raises(TimeoutError):
        yr.get(r, timeout=0.5)
    with pytest.raises(yr.GetTimeoutError):
        yr.get(r, timeout=0.5)
    assert yr.get(r, timeout=60) == 3
    ready, rest = yr.wait([sleepy.invoke(0), sleepy.invoke(5)], 1, 30)
    assert len(ready) == 1 and len(rest) == 1
    opt = yr.InvokeOptions()
    opt.timeout = 1
    with pytest.raises(yr.CallTimeoutError):
        yr.get(sleepy.options(opt).invoke(5), timeout=60)


@yr.instance
class SlowCounter:
    def __init__(self):
        self.count = 0

    def add_after(self, seconds, n):
        time.sleep(seconds)
        self.count += n
        return self.count

    def get(self):
        return self.count


def test_a_stateful_call_that_timed_out_never_applies_afterwards(cluster):
    # The call that times out is running in the instance's process, which holds the state it
    # may change: the instance is recycled (its process ends) before the caller hears of the
    # timeout. Without recovery (recover_retry_times 0, the default) it is then dead.
    c = SlowCounter.invoke()
    assert yr.get(c.add_after.invoke(0, 1), timeout=60) == 1
    opt = yr.InvokeOptions()
    opt.timeout = 1
    started = time.time()
    with pytest.raises(yr.CallTimeoutError):
        yr.get(c.add_after.options(opt).invoke(4, 1), timeout=60)
    assert time.time() - started < 3.9, "the caller waited for the call to finish"
    # No read ever sees the timed-out addition, also after the 4 s it would have taken.
    seen, errors = [], []
    while time.time() - started < 6:
        try:
            seen.append(yr.get(c.get.invoke(), timeout=30))
        except yr.PlatformError as e:
            errors.append(e)
        time.sleep(0.1)
    assert seen == [], f"reads answered after the instance was recycled: {seen}"
    assert isinstance(errors[-1], yr.InstanceDiedError), errors[-1]
    c.terminate()


def test_a_dead_instance_and_a_missing_function_have_their_own_errors(cluster):
    c = Counter.invoke()
    assert yr.get(c.add.invoke(1)) == 1
    with pytest.raises(yr.InstanceDiedError):
        yr.get(c.die.invoke(), timeout=60)
    c.terminate()
    with pytest.raises(yr.FunctionNotFoundError):
        yr.get(yr._yr.submit("py-no-such-function", [b""]), timeout=60)


def test_refs_are_freed_when_the_last_python_reference_goes(cluster):
    def objects():
        return yr._yr.store_stats()["objects"]

    base = objects()
    refs = [make.invoke(100 << 10) for _ in range(1000)]  # results above the inline limit
    assert sum(int(a[0]) for a in yr.get(refs, timeout=300)) == 7000
    assert objects() >= base + 1000
    del refs
    deadline = time.monotonic() + 30
    while objects() > base and time.monotonic() < deadline:
        time.sleep(0.05)  # frees travel asynchronously to the data worker
    assert objects() <= base, f"{objects() - base} objects leaked after 1,000 calls"


def test_kv_on_the_data_worker(cluster):
    yr.kv_write("kv-key", b"value1", yr.ExistenceOpt.NONE, yr.WriteMode.NONE_L2_CACHE, 0)
    assert yr.kv_read("kv-key") == b"value1"
    assert yr.kv_get("kv-key") == b"value1"
    with pytest.raises(RuntimeError):
        yr.kv_write("kv-key", b"x", yr.ExistenceOpt.NX)
    yr.kv_del("kv-key")
    with pytest.raises(RuntimeError):
        yr.kv_read("kv-key", 0)


@yr.invoke
def total(refs):
    return sum(yr.get(refs))


@yr.invoke
def twice_removed(n):
    """A call that makes a call of its own (the function process connects on first use)."""
    return yr.get(add.invoke(n), timeout=60)


def test_refs_inside_values_and_calls_from_calls(cluster):
    refs = [yr.put(i) for i in range(1, 4)]
    # openYuanrong's "passing data objects": references inside a value are read by the callee.
    assert yr.get(total.invoke(yr.put(refs)), timeout=60) == 6
    assert yr.get(total.invoke(refs), timeout=60) == 6
    assert yr.get(twice_removed.invoke(41), timeout=120) == 42
    with pytest.raises(yr.YRError, match="stored object"):
        yr.put([sleepy.invoke(1)])  # a pending reference cannot travel inside a value


@yr.invoke
def timed(folder, name, seconds):
    """Writes when it started and when it ended (time.time()) into `folder`/`name`."""
    start = time.time()
    with open(os.path.join(folder, name + ".start"), "w") as f:
        f.write(repr(start))
    time.sleep(seconds)
    end = time.time()
    with open(os.path.join(folder, name + ".end"), "w") as f:
        f.write(repr(end))
    return name


def _read_time(path):
    with open(path) as f:
        return float(f.read())


def _wait_for_file(path, within=60):
    deadline = time.monotonic() + within
    while not os.path.exists(path):
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.02)


def test_cancel_fails_the_reference_and_a_waiting_call_never_runs(cluster, tmp_path):
    opt = yr.InvokeOptions()
    opt.max_instances, opt.concurrency = 1, 1
    f = timed.options(opt)
    d = str(tmp_path)
    running = f.invoke(d, "running", 3)
    # The only slot of the only instance is taken: the next call waits for it.
    _wait_for_file(os.path.join(d, "running.start"))
    waiting = f.invoke(d, "waiting", 0)
    yr.cancel(waiting)
    with pytest.raises(yr.CancelError, match="cancelled"):
        yr.get(waiting, timeout=10)
    # A running call is cancelled too: its reference fails at once, while the call finishes
    # where it runs and keeps its slot until then.
    yr.cancel([running])
    with pytest.raises(yr.CancelError):
        yr.get(running, timeout=10)
    assert yr.get(f.invoke(d, "next", 0), timeout=60) == "next"
    assert not os.path.exists(os.path.join(d, "waiting.start")), "a cancelled waiting call ran"
    assert _read_time(os.path.join(d, "next.start")) >= _read_time(os.path.join(d, "running.end"))
    # An ended call, a put and a stateful call are left alone; a non-reference is refused.
    done = add.invoke(1)
    assert yr.get(done) == 2
    yr.cancel(done)
    assert yr.get(done) == 2
    put = yr.put(5)
    yr.cancel(put)
    assert yr.get(put) == 5
    with pytest.raises(TypeError):
        yr.cancel("not a reference")
