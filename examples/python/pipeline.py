"""A three-stage numpy pipeline over two nodes, written with openYuanrong's Python API (`make demo`
runs it on a fresh two-node cluster).

Per round: `produce` runs on node A (the driver's node) and returns a SIZE array of uint32; the
array stays in A's shared memory as the call's result object. `transform` is pinned to node B
(a required affinity on the node label `yr.node`): it gets the reference, so the array is pulled
across once and read in place, and it returns a new array that stays in B's shared memory.
`reduce` is pinned back to node A and sums that array (pulled back once). The driver submits
the three calls at once (each takes the previous one's reference), times each stage by when its
result becomes ready, asks each result where its call ran, and checks the sum against the same
arithmetic done in closed form. It also reads stage 1's array itself: A's copy, without a copy
(the numpy buffer lies inside the driver's mapping of the node's shared memory).

The first round includes starting the three function processes; the later ones show the steady
state. After each round the driver drops its references, which frees both arrays on both nodes.

Run: `yr start --master` plus a worker node (`yr start --worker --master-address ...`), then
`python examples/python/pipeline.py [--size-mib 256] [--rounds 3]` with the Python that has `yr`.
"""

import argparse
import sys
import time

import numpy as np

import yr


def produce(n, seed):
    """Stage 1: a[i] = i + seed (uint32), n elements."""
    a = np.arange(n, dtype=np.uint32)
    a += np.uint32(seed)
    return a


def transform(a):
    """Stage 2: b = 3 a + 1 (uint32; the pipeline's sizes keep it below 2**32)."""
    b = np.multiply(a, 3, dtype=np.uint32)
    b += np.uint32(1)
    return b


def reduce(b):
    """Stage 3: the sum of b, exactly (uint64 accumulator)."""
    return int(b.sum(dtype=np.uint64))


def expected_sum(n, seed):
    """sum(3 (i + seed) + 1 for i < n), as stages 1–3 compute it."""
    return 3 * (n * (n - 1) // 2 + n * seed) + n


def on_node(node_id):
    """InvokeOptions that pin a function to the node `node_id` (yr labels every node with
    `yr.node` = its ID)."""
    opt = yr.InvokeOptions()
    opt.schedule_affinities = [
        yr.Affinity(
            yr.AffinityKind.RESOURCE,
            yr.AffinityType.REQUIRED,
            yr.LabelOperator(yr.OperatorType.LABEL_IN, "yr.node", [node_id]),
        )
    ]
    return opt


def gbps(nbytes, seconds):
    return nbytes / seconds / 1e9 if seconds > 0 else float("inf")


def where(ref, names):
    info = ref.call_info()
    if info is None:
        return "?"
    return names.get(info[0], info[0])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size-mib", type=int, default=256, help="array size per stage (MiB)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--session", help="the master node's session folder (default: $YR_SESSION, "
                    "else the newest session on this host)")
    args = ap.parse_args()
    size = args.size_mib << 20
    n = size // 4
    # 3 (n - 1 + seed) + 1 must fit in uint32 for the closed-form check to hold.
    if 3 * (n + args.rounds) + 1 >= 2 ** 32:
        sys.exit("--size-mib too large for uint32 arithmetic (at most 1300)")

    yr.init(yr.Config(session=args.session) if args.session else None)
    try:
        here = yr._yr.node_id()
        nodes = yr._yr.nodes()
        others = [node for node, _host, _labels in nodes if node != here]
        if not others:
            sys.exit(f"pipeline: needs two nodes, the cluster has {len(nodes)}: "
                     "start a worker node (yr start --worker --master-address ...)")
        there = others[0]
        names = {here: f"node A ({here})", there: f"node B ({there})"}
        lo, hi = yr._yr.arena_range()

        stage1 = yr.invoke(produce).options(on_node(here))
        stage2 = yr.invoke(transform).options(on_node(there))
        stage3 = yr.invoke(reduce).options(on_node(here))

        print(f"pipeline: {args.size_mib} MiB uint32 arrays per stage, {args.rounds} round(s), "
              f"{len(nodes)} nodes")
        print(f"  produce and reduce on {names[here]}, transform on {names[there]}")
        totals = []
        for rnd in range(args.rounds):
            t0 = time.perf_counter()
            r1 = stage1.invoke(n, rnd)
            r2 = stage2.invoke(r1)
            r3 = stage3.invoke(r2)
            marks = []
            for r in (r1, r2, r3):
                yr.wait(r, 1, 300)
                marks.append(time.perf_counter())
            total = yr.get(r3, 300)
            end = marks[-1] - t0
            want = expected_sum(n, rnd)
            if total != want:
                sys.exit(f"round {rnd}: reduce returned {total}, expected {want}")
            # Stage 1's array is in this node's shared memory: reading it maps it, no copy.
            a = yr.get(r1, 300)
            zero_copy = lo <= a.__array_interface__["data"][0] < hi and not a.flags.writeable
            if a.nbytes != size or int(a[0]) != rnd or int(a[-1]) != n - 1 + rnd:
                sys.exit(f"round {rnd}: stage 1's array reads back wrong")
            d = [marks[0] - t0, marks[1] - marks[0], marks[2] - marks[1]]
            print(f"round {rnd}: {end * 1e3:7.1f} ms end to end, {gbps(size, end):5.2f} GB/s, "
                  f"sum {total} checked" + ("  (includes starting the function processes)"
                                            if rnd == 0 else ""))
            print(f"    produce   on {where(r1, names):<40} {d[0] * 1e3:7.1f} ms  "
                  f"{gbps(size, d[0]):5.2f} GB/s  (result: {r1.size >> 20} MiB in A's shared memory)")
            print(f"    transform on {where(r2, names):<40} {d[1] * 1e3:7.1f} ms  "
                  f"{gbps(size, d[1]):5.2f} GB/s  (input pulled A -> B, result: {r2.size >> 20} MiB in B's)")
            print(f"    reduce    on {where(r3, names):<40} {d[2] * 1e3:7.1f} ms  "
                  f"{gbps(size, d[2]):5.2f} GB/s  (input pulled B -> A)")
            print(f"    driver read stage 1's array on node A: {a.nbytes >> 20} MiB, "
                  f"zero-copy view: {zero_copy}")
            if not zero_copy:
                sys.exit(f"round {rnd}: the driver's view of stage 1's array is a copy")
            totals.append(end)
            # Dropping the references frees both arrays on both nodes.
            del a, r1, r2, r3
        if len(totals) > 1:
            best = min(totals[1:])
            print(f"steady state: best round {best * 1e3:.1f} ms = {gbps(size, best):.2f} GB/s "
                  f"through three stages and two node-to-node transfers")
        print("pipeline: all results checked")
    finally:
        yr.finalize()


if __name__ == "__main__":
    main()
