"""The Python side of `yr bench python`: measures the package `yr` against a running cluster and
prints one JSON object of raw figures (the `yr` command adds ratios and targets and prints them).

What it measures, in this order, in one process (issue 11, "Speed"):
- copy_gbps: numpy copy of a 256 MiB array into a preallocated one (the baseline, same run);
- put_gbps: `yr.put` of that array (one copy into shared memory; the reference is dropped, so
  the object freed, between puts);
- get_p50_us: `yr.get` of the stored array (a zero-copy numpy view; checked to lie in the
  arena), timed alone, and with the view's release; beside it, in interleaved blocks, one
  round trip to the data worker through the same native module (the floor a get cannot beat);
- small_put_per_s: `yr.put` of 1 KiB bytes one at a time (references kept until the round
  ends, then freed; the rate with each reference dropped at once is reported beside it);
- tasks_per_s: a trivial `@yr.invoke` function, `--calls` calls in flight, then `yr.get` of
  all, after a warm-up round that starts the instances; the median round (the best beside it);
- pass_256mib_ms: a call that receives the stored array by reference and returns
  `a[0] + a[-1]`, end to end (submit, run, get), p50 after a warm-up.

Every figure is a median or percentile of repeated samples: this machine kind is shared and
noisy. It is run by `yr bench python` with `--session` naming the cluster's session folder, and
needs numpy (the package's zero-copy path) besides `yr`.
"""

import argparse
import gc
import json
import os
import platform
import statistics
import sys
import time

import numpy as np

import yr

MIB = 1 << 20


def p(values, q):
    """The q-quantile (0..1) of values, the nearest sample."""
    s = sorted(values)
    return s[round((len(s) - 1) * q)]


def log(quiet, msg):
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def copy_gbps(src, iters):
    dst = np.empty_like(src)
    np.copyto(dst, src)  # faults the destination's pages in: "preallocated"
    rates = []
    for _ in range(iters):
        t = time.perf_counter()
        np.copyto(dst, src)
        rates.append(src.nbytes / (time.perf_counter() - t) / 1e9)
    return statistics.median(rates)


def put_gbps(src, iters):
    rates = []
    for i in range(iters + 2):
        t = time.perf_counter()
        ref = yr.put(src)
        d = time.perf_counter() - t
        del ref  # frees the object before the next put
        if i >= 2:  # the first two warm the arena's pages and the client's mappings
            rates.append(src.nbytes / d / 1e9)
    return statistics.median(rates)


def get_us(ref, n, lo, hi):
    """p50/p99 of `yr.get` alone, of get plus dropping the view (the pin's release), and of the
    floor beside it: one round trip to the data worker through the same native module (a KV
    existence check), in blocks interleaved with the gets' so both see the same machine."""
    alone, with_release, rtt = [], [], []
    block = 200
    for b in range(n // block + 1):
        for _ in range(block):
            t = time.perf_counter()
            v = yr.get(ref)
            d = time.perf_counter() - t
            addr = v.__array_interface__["data"][0]
            if not lo <= addr < hi:
                raise SystemExit(f"yr.get returned a copy (address {addr:#x} outside the arena)")
            del v
            d2 = time.perf_counter() - t
            if b:  # block 0 warms up
                alone.append(d * 1e6)
                with_release.append(d2 * 1e6)
        for _ in range(block):
            t = time.perf_counter()
            yr._yr.kv_exists(b"yr-bench-no-such-key")
            if b:
                rtt.append((time.perf_counter() - t) * 1e6)
    return p(alone, 0.5), p(alone, 0.99), p(with_release, 0.5), p(rtt, 0.5)


def small_puts(n, rounds):
    b = os.urandom(1024)
    kept, dropped = [], []
    for _ in range(rounds):
        refs = []
        t = time.perf_counter()
        for _ in range(n):
            refs.append(yr.put(b))
        kept.append(n / (time.perf_counter() - t))
        del refs
        t = time.perf_counter()
        for _ in range(n):
            yr.put(b)
        dropped.append(n / (time.perf_counter() - t))
    return statistics.median(kept), statistics.median(dropped)


@yr.invoke
def trivial():
    return 0


@yr.invoke
def ends(a):
    return a[0] + a[-1]


def tasks(calls, rounds):
    rates = []
    for r in range(rounds + 1):
        t = time.perf_counter()
        refs = [trivial.invoke() for _ in range(calls)]
        out = yr.get(refs)
        d = time.perf_counter() - t
        if out != [0] * calls:
            raise SystemExit("the trivial function returned something else than 0")
        del refs, out
        if r > 0:  # round 0 starts the instances
            rates.append(calls / d)
    return statistics.median(rates), max(rates), min(rates)


def pass_ms(ref, expect, n):
    lat = []
    for i in range(n + 3):
        t = time.perf_counter()
        v = yr.get(ends.invoke(ref))
        d = time.perf_counter() - t
        if v != expect:
            raise SystemExit(f"a[0] + a[-1] came back as {v!r}, not {expect!r}")
        if i >= 3:  # the first calls start the instance and map the arena there
            lat.append(d * 1e3)
    return p(lat, 0.5), p(lat, 0.99)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--session", required=True, help="the cluster's session folder")
    ap.add_argument("--size-mib", type=int, default=256, help="size of the large array")
    ap.add_argument("--iters", type=int, default=10, help="copies and puts of the large array")
    ap.add_argument("--gets", type=int, default=2000, help="gets of the stored array")
    ap.add_argument("--small", type=int, default=20000, help="1 KiB puts per round")
    ap.add_argument("--calls", type=int, default=1000, help="calls in flight per task round")
    ap.add_argument("--rounds", type=int, default=10, help="measured task and small-put rounds")
    ap.add_argument("--passes", type=int, default=30, help="measured 256 MiB pass calls")
    ap.add_argument("--quiet", action="store_true", help="no progress on stderr")
    ap.add_argument("--only", default="", help="comma-separated subset (copy,put,get,small,tasks,pass)")
    a = ap.parse_args()
    only = set(filter(None, a.only.split(",")))
    want = lambda k: not only or k in only  # noqa: E731

    yr.init(yr.Config(session=a.session))
    out = {
        "python": platform.python_version(),
        "numpy": np.__version__,
        "array_bytes": a.size_mib * MIB,
    }
    # float64, so that a[0] + a[-1] is a number the check can predict.
    src = np.arange(a.size_mib * MIB // 8, dtype=np.float64)
    expect = float(src[0] + src[-1])
    if want("copy"):
        log(a.quiet, "numpy copy baseline...")
        out["copy_gbps"] = copy_gbps(src, a.iters)
    if want("put"):
        log(a.quiet, f"yr.put of {a.size_mib} MiB...")
        out["put_gbps"] = put_gbps(src, a.iters)
    stored = yr.put(src)
    if want("get"):
        log(a.quiet, "yr.get of the stored array...")
        lo, hi = yr._yr.arena_range()
        (out["get_p50_us"], out["get_p99_us"], out["get_release_p50_us"],
         out["store_rtt_p50_us"]) = get_us(stored, a.gets, lo, hi)
    if want("small"):
        log(a.quiet, "1 KiB puts...")
        out["small_put_per_s"], out["small_put_dropped_per_s"] = small_puts(a.small, a.rounds)
    gc.collect()
    if want("tasks"):
        log(a.quiet, f"{a.calls} trivial calls in flight, {a.rounds} rounds after a warm-up...")
        out["tasks_per_s"], out["tasks_per_s_best"], out["tasks_per_s_worst"] = tasks(a.calls, a.rounds)
        out["task_calls_in_flight"] = a.calls
        out["task_rounds"] = a.rounds
    if want("pass"):
        log(a.quiet, f"passing the stored {a.size_mib} MiB array by reference...")
        out["pass_256mib_ms"], out["pass_256mib_p99_ms"] = pass_ms(stored, expect, a.passes)
    del stored
    yr.finalize()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
