"""Two hosts on one machine: network namespaces joined by a veth pair, each with its own hostname, and an
``ssh`` stand-in that runs mpiexec's proxy in the namespace of the "host" it is asked for. Training over both
(MPI over TCP across the veth, as between two machines) gives one process's model.

Needs root (``ip netns``, ``unshare``); elsewhere the test skips and says why.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from tests.distributed.test_data_parallel import RANKS, assert_same_bits, src_path, train

from xpvision.distributed import launch

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]
SSH = """#!/bin/sh
# ssh stand-in: host {a_ip} runs the command in namespace {a}, host {b_ip} in {b}, each with its own hostname
while [ "${{1#-}}" != "$1" ]; do shift; done
host=$1; shift
case "$host" in {a_ip}) ns={a};; {b_ip}) ns={b};; *) echo "unknown host $host" >&2; exit 255;; esac
exec ip netns exec "$ns" unshare --uts sh -c "hostname $ns; $*"
"""


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    if os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("unshare"):
        pytest.skip("network namespaces need root, ip (iproute2) and unshare (util-linux)")
    tag = f"xpv{os.getpid() % 100000}"
    a, b = f"{tag}a", f"{tag}b"
    try:
        ip("netns", "add", a)
        ip("netns", "add", b)
        ip("link", "add", f"{a}v", "type", "veth", "peer", "name", f"{b}v")
    except subprocess.CalledProcessError as e:
        pytest.skip(f"cannot create network namespaces here: {e.stderr.decode().strip()}")
    try:
        for ns, address in ((a, "10.77.0.1"), (b, "10.77.0.2")):
            ip("link", "set", f"{ns}v", "netns", ns)
            ip("-n", ns, "addr", "add", f"{address}/24", "dev", f"{ns}v")
            ip("-n", ns, "link", "set", f"{ns}v", "up")
            ip("-n", ns, "link", "set", "lo", "up")
        ssh = tmp_path_factory.mktemp("ssh") / "ssh"
        ssh.write_text(SSH.format(a=a, b=b, a_ip="10.77.0.1", b_ip="10.77.0.2"))
        ssh.chmod(0o755)
        yield a, ssh
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


def received_bytes(ns: str) -> int:
    out = subprocess.run(["ip", "-n", ns, "-s", "link", "show", f"{ns}v"], check=True, capture_output=True,
                         text=True).stdout.splitlines()
    return int(out[out.index(next(line for line in out if "RX:" in line)) + 1].split()[0])


def test_training_across_two_hosts_equals_one_process(hosts, data, tmp_path):
    ns, ssh = hosts
    host_args, slots = launch.host_arguments("10.77.0.1:1,10.77.0.2:1", "train.detection.hosts")
    assert slots == 2
    env = {**os.environ, "HYDRA_LAUNCHER": "ssh", "HYDRA_LAUNCHER_EXEC": str(ssh), "HYDRA_IFACE": f"{ns}v",
           "UCX_TLS": "tcp,self",  # TCP as between machines (UCX would find the shared memory of one kernel)
           "PYTHONPATH": src_path()}
    before = received_bytes(ns)
    command = ["ip", "netns", "exec", ns, "unshare", "--uts", "sh", "-c",
               f"hostname {ns}; exec \"$0\" \"$@\"", str(Path(sys.executable).parent / "mpiexec"), "-n", "2",
               *host_args, sys.executable, str(RANKS), "detection", str(data / "detection"),
               str(tmp_path / "two.npz"), "--lr", "0.01"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=240, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    crossed = received_bytes(ns) - before
    saved = np.load(tmp_path / "two.npz")
    one = train(data, tmp_path / "one.npz", "detection", 1)
    two = {key[2:]: saved[key] for key in saved.files if key.startswith("w.")}
    assert_same_bits(one["weights"], two, "two hosts")
    parameters = sum(v.size for k, v in two.items() if not k.endswith(("running_mean", "running_var")))
    assert crossed > 14 * parameters * 4  # 14 steps' float32 gradient sums came over the veth
    print(f"{crossed} bytes came over the veth ({parameters} parameters)")
