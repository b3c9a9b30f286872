"""A DVC remote on a real SSH server: Debian's sshd started on a free port of 127.0.0.1 with a generated
host key and a generated client key, ``dvc-ssh`` as the client. One clone runs the pipeline and pushes its
outputs and run cache; a colleague's clone gets the results by ``dvc pull`` or ``dvc repro --pull`` without
recomputing.

The project is a two-stage DVC pipeline of its own (seconds), since what is tested is the remote, not
xpvision's stages; each stage appends a line to a log outside the repository, so a recomputation anywhere is
seen.
"""

import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
SSHD = Path("/usr/sbin/sshd")
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

DVC_YAML = """\
stages:
  make:
    cmd: python -c "import pathlib, os; pathlib.Path('data.txt').write_text('x' * 1000);
      open(os.environ['RAN_LOG'], 'a').write('make\\n')"
    outs: [data.txt]
  count:
    cmd: python -c "import pathlib, os;
      pathlib.Path('count.txt').write_text(str(len(open('data.txt').read())));
      open(os.environ['RAN_LOG'], 'a').write('count\\n')"
    deps: [data.txt]
    outs: [count.txt]
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """(port, client key file, remote folder) of a running sshd; stopped at the end of the module."""
    if not SSHD.exists() or not shutil.which("ssh-keygen"):
        pytest.skip("openssh-server is not installed (apt-get install openssh-server)")
    folder = tmp_path_factory.mktemp("sshd")
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)], check=True)
    shutil.copy(folder / "client_key.pub", folder / "authorized_keys")
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation folder (absent until a first start)
    port = free_port()
    config = folder / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {folder / 'host_key'}\n"
        f"AuthorizedKeysFile {folder / 'authorized_keys'}\nStrictModes no\nPidFile {folder / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
        "UsePAM no\nSubsystem sftp internal-sftp\n")
    process = subprocess.Popen([str(SSHD), "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    process.kill()
                    raise RuntimeError(f"sshd did not start: {process.communicate()[1]}") from None
                time.sleep(0.2)
        remote = folder / "remote"
        remote.mkdir()
        yield port, folder / "client_key", remote
    finally:
        process.terminate()
        process.wait(timeout=10)


def run(cwd: Path, log: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "RAN_LOG": str(log),
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    done = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, f"{' '.join(args)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout + done.stderr


def test_push_from_one_clone_and_pull_into_others_recomputes_nothing(sshd, tmp_path):
    port, key, remote = sshd
    dvc = str(BIN / "dvc")
    a, log_a = tmp_path / "a", tmp_path / "ran_a.log"
    a.mkdir()
    (a / "dvc.yaml").write_text(DVC_YAML)
    run(a, log_a, "git", "init", "-q")
    run(a, log_a, dvc, "init", "-q")
    run(a, log_a, dvc, "config", "core.analytics", "false")
    run(a, log_a, dvc, "remote", "add", "-d", "team", f"ssh://{getpass.getuser()}@127.0.0.1:{port}{remote}")
    run(a, log_a, dvc, "remote", "modify", "--local", "team", "keyfile", str(key))  # each clone its own key
    run(a, log_a, dvc, "repro")
    assert log_a.read_text().split() == ["make", "count"]
    run(a, log_a, "git", "add", "-A")
    run(a, log_a, "git", "commit", "-qm", "pipeline and its lock")
    run(a, log_a, dvc, "push", "--run-cache")
    assert any(path.is_file() for path in remote.rglob("*")), "nothing reached the SSH remote"

    b, log_b = tmp_path / "b", tmp_path / "ran_b.log"
    run(tmp_path, log_b, "git", "clone", "-q", str(a), str(b))
    assert not (b / "count.txt").exists()
    run(b, log_b, dvc, "remote", "modify", "--local", "team", "keyfile", str(key))
    run(b, log_b, dvc, "pull")
    assert (b / "count.txt").read_text() == "1000"
    output = run(b, log_b, dvc, "repro")
    assert "Running stage" not in output and not log_b.exists(), output

    c, log_c = tmp_path / "c", tmp_path / "ran_c.log"
    run(tmp_path, log_c, "git", "clone", "-q", str(a), str(c))
    run(c, log_c, dvc, "remote", "modify", "--local", "team", "keyfile", str(key))
    output = run(c, log_c, dvc, "repro", "--pull")
    assert (c / "count.txt").read_text() == "1000"
    assert not log_c.exists(), output
