"""Python calls across a real two-node cluster: a reference passed to a call on the other node
is pulled there once and read in place; a result object whose node is gone raises
ObjectLostError."""

import json
import os
import subprocess
import tempfile

import numpy as np
import pytest

import yr

YR = os.environ.get("YR_BIN", "yr")


def _start(args):
    subprocess.run([YR, "start", *args], check=True, timeout=120, stdout=subprocess.DEVNULL)


def _stop(folder):
    subprocess.run([YR, "stop", "--force", "--session-dir", folder], timeout=120,
                   stdout=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def two_nodes():
    with tempfile.TemporaryDirectory(prefix="yr-py-2n-") as d:
        master, worker = os.path.join(d, "master"), os.path.join(d, "worker")
        _start(["--master", "--ports", "auto", "--shm-size", "1GiB", "--cpu", "16000",
                "--session-dir", master])
        try:
            with open(os.path.join(master, "session.json")) as f:
                address = json.load(f)["master_address"]
            _start(["--worker", "--master-address", address,
                    "--cluster-secret", os.path.join(master, "cluster-secret"), "--ports", "auto",
                    "--shm-size", "1GiB", "--cpu", "16000", "--session-dir", worker])
            with open(os.path.join(worker, "session.json")) as f:
                worker_node = json.load(f)["node_id"]
            yr.init(yr.Config(session=master))
            yield master, worker, worker_node
        finally:
            yr.finalize()
            _stop(worker)
            _stop(master)


def _on(node):
    opt = yr.InvokeOptions()
    opt.schedule_affinities = [yr.Affinity(
        yr.AffinityKind.RESOURCE, yr.AffinityType.REQUIRED,
        yr.LabelOperator(yr.OperatorType.LABEL_IN, "yr.node", [node]))]
    return opt


@yr.invoke
def inspect(a):
    """The sum of the argument, where it ran, and the mapping its bytes are in."""
    addr = a.__array_interface__["data"][0]
    mapping = ""
    with open("/proc/self/maps") as f:
        for line in f:
            parts = line.split()
            lo, hi = (int(x, 16) for x in parts[0].split("-"))
            if lo <= addr < hi:
                mapping = " ".join(parts[5:])
    return int(a.sum(dtype=np.int64)), os.environ.get("YR_NODE_ID"), mapping


@yr.invoke
def produce(n):
    return np.full(n, 3, dtype=np.uint8)


def test_a_reference_is_pulled_to_the_other_node_and_read_in_place(two_nodes):
    _, _, worker_node = two_nodes
    assert worker_node != yr._yr.node_id()
    a = np.arange(8 << 20, dtype=np.int32)  # 32 MiB, on the driver's node
    ref = yr.put(a)
    total, node, mapping = yr.get(inspect.options(_on(worker_node)).invoke(ref), timeout=120)
    assert node == worker_node
    assert total == int(a.sum(dtype=np.int64))
    assert "yr-arena" in mapping, f"the argument is in {mapping!r}, not the arena"
    # A result made on the other node comes back to the driver's node on get.
    b = yr.get(produce.options(_on(worker_node)).invoke(64 << 20), timeout=120)
    assert b.nbytes == 64 << 20 and int(b[0]) == 3 and int(b[-1]) == 3


def test_an_object_whose_node_is_gone_is_lost(two_nodes):
    _, worker, worker_node = two_nodes
    ref = produce.options(_on(worker_node)).invoke(1 << 20)
    ready, _ = yr.wait([ref], 1, 120)
    assert ready, "the producing call did not finish"
    _stop(worker)
    with pytest.raises(yr.ObjectLostError):
        yr.get(ref, timeout=60)
