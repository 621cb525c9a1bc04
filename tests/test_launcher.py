"""The serving launcher: ready on start, nothing left behind on stop, fast failure with the log tail, ports
it cannot own refused, orphaned shared memory removed, and a restart policy that backs off instead of giving up."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from armorm.launcher.orphans import remove_orphaned_segments, shm_segments
from armorm.launcher.server import RestartPolicy, Supervisor
from armorm.launcher.triton_process import ServerStartError, TritonServer


@pytest.mark.integration
def test_stop_leaves_no_processes_or_shared_memory(exported_repository, tmp_path):
    server = TritonServer(exported_repository, log_path=tmp_path / "server.log").start()
    group = server.process.pid
    assert shm_segments(server.shm_prefix), "the Python backend should hold its own shared memory while serving"
    server.stop()
    with pytest.raises(ProcessLookupError):
        os.killpg(group, 0)
    assert not shm_segments(server.shm_prefix)


@pytest.mark.integration
def test_a_broken_repository_fails_fast_with_the_log(tmp_path):
    broken = tmp_path / "repository" / "armorm"
    (broken / "1").mkdir(parents=True)
    (broken / "config.pbtxt").write_text("this is { not a model config")
    with pytest.raises(ServerStartError, match="log tail"):
        TritonServer(tmp_path / "repository", log_path=tmp_path / "server.log", startup_timeout=60).start()


@pytest.mark.integration  # runs armorm-serve itself (it must refuse before starting tritonserver)
def test_armorm_serve_refuses_a_port_that_something_else_holds(exported_repository, tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "armorm.launcher.server", str(exported_repository), "--grpc-port",
                               str(port), "--log-file", str(tmp_path / "triton.log")],
                              capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr  # EXIT_PORT_TAKEN: the one failure worth a retry
    assert f"cannot listen for gRPC on 127.0.0.1:{port}" in done.stderr
    assert not (tmp_path / "triton.log").exists(), "tritonserver must not start"


def test_orphaned_socket_directories_are_removed_and_live_owners_are_kept():
    import tempfile

    from armorm.launcher.orphans import SOCKET_DIR_PREFIX, private_socket_dir, remove_orphaned_socket_dirs

    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = Path(tempfile.mkdtemp(prefix=f"{SOCKET_DIR_PREFIX}{dead.pid}-"))
    (orphan / "grpc.sock:0").touch()
    mine = private_socket_dir()
    try:
        assert oct(mine.stat().st_mode & 0o777) == "0o700"
        assert str(orphan) in remove_orphaned_socket_dirs()
        assert not orphan.exists() and mine.exists()
    finally:
        shutil.rmtree(orphan, ignore_errors=True)
        shutil.rmtree(mine, ignore_errors=True)


def test_orphaned_shared_memory_is_removed_and_live_owners_are_kept():
    dead = subprocess.Popen(["true"])
    dead.wait()
    orphan = Path(f"/dev/shm/armorm_{dead.pid}_deadbeef_region")
    mine = Path(f"/dev/shm/armorm_{os.getpid()}_cafe_region")
    try:
        orphan.write_bytes(b"x")
        mine.write_bytes(b"x")
        assert orphan.name in remove_orphaned_segments()
        assert not orphan.exists() and mine.exists()
        # At start-up a name with this very pid was left by an earlier process (a container's PID 1 again).
        assert mine.name in remove_orphaned_segments(own_pid_is_stale=True) and not mine.exists()
    finally:
        orphan.unlink(missing_ok=True)
        mine.unlink(missing_ok=True)


def test_an_owner_pid_held_by_a_zombie_or_by_another_users_process_counts_as_gone():
    import time

    import psutil

    zombie = subprocess.Popen(["true"])  # exits and is not reaped (no wait) until the end
    other = None
    if os.getuid() == 0:
        other = subprocess.Popen(["sleep", "60"], user=65534)
        stranger = other.pid
    elif psutil.Process(1).uids().effective != os.getuid():
        stranger = 1
    else:
        pytest.skip("needs root, or a pid 1 of another user")
    orphans = [Path(f"/dev/shm/armorm_{zombie.pid}_dead_region"), Path(f"/dev/shm/armorm_{stranger}_reused_region")]
    try:
        deadline = time.monotonic() + 10
        while psutil.Process(zombie.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        for path in orphans:
            path.write_bytes(b"x")
        assert {path.name for path in orphans} <= set(remove_orphaned_segments())
        assert not any(path.exists() for path in orphans)
    finally:
        for path in orphans:
            path.unlink(missing_ok=True)
        zombie.wait()
        if other is not None:
            other.kill()
            other.wait()


def test_a_process_group_is_seen_whole_and_killed_whole_when_sigterm_is_ignored():
    """What TritonServer.stop relies on: its model processes share tritonserver's group, and a server that ignores
    SIGTERM is killed with all of them."""
    import signal
    import time

    from armorm.launcher.processes import alive, process_group, terminate
    from armorm.testing.processes import descendants

    stubborn = ("import signal, subprocess, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                "subprocess.Popen(['sleep', '60']); time.sleep(60)")
    leader = subprocess.Popen([sys.executable, "-c", stubborn], start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not any(command.startswith("sleep") for command in descendants(leader.pid).values()):
            assert time.monotonic() < deadline, "the child never started"
            time.sleep(0.05)
        child = next(pid for pid, command in descendants(leader.pid).items() if command == "sleep 60")
        group = process_group(leader.pid)
        assert set(group) == {leader.pid, child} and group[child] == "sleep 60"
        assert alive(child) and process_group(os.getpgid(0)).keys().isdisjoint(group)
        # SIGTERM is ignored, so after the timeout SIGKILL goes to the whole group.
        assert terminate(leader, timeout=0.5, kill_group=True) == -signal.SIGKILL
        deadline = time.monotonic() + 10
        while process_group(leader.pid):  # a killed child left as a zombie no longer counts
            assert time.monotonic() < deadline, f"left behind: {process_group(leader.pid)}"
            time.sleep(0.05)
    finally:
        try:
            os.killpg(leader.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        leader.wait()


def test_backoff_doubles_up_to_its_ceiling():
    policy = RestartPolicy(initial_backoff_s=1.0, max_backoff_s=8.0)
    ceilings = [1, 2, 4, 8, 8, 8]
    for failures, ceiling in enumerate(ceilings, start=1):
        assert 0.8 * ceiling <= policy.backoff(failures) <= ceiling


class NeverStarts:
    """A typed stand-in for TritonServer whose start-up always fails (e.g. a GPU that is gone)."""

    repository = Path("repository")
    log_path = Path("log")
    process = None
    expected_instances: set = set()

    def __init__(self) -> None:
        self.starts = 0

    def start(self, should_stop):
        self.starts += 1
        raise ServerStartError("no GPU")

    def stop(self, timeout=30.0):
        return None


class IdleGateway:
    config = None

    def __init__(self) -> None:
        self.drained = self.stopped = False

    def begin_drain(self):
        self.drained = True

    def wait_idle(self, timeout):
        return 0

    def stop(self):
        self.stopped = True


def test_a_crash_loop_backs_off_and_keeps_trying_until_stopped():
    import threading

    triton, gateway = NeverStarts(), IdleGateway()
    supervisor = Supervisor(triton, gateway, RestartPolicy(initial_backoff_s=0.01, max_backoff_s=0.05), 1.0)
    threading.Timer(1.0, supervisor.stopping.set).start()
    assert supervisor.run() == 0, "a crash loop never ends the service by itself"
    assert triton.starts >= 10 and gateway.drained and gateway.stopped


def test_max_restarts_gives_up_when_asked():
    supervisor = Supervisor(NeverStarts(), IdleGateway(), RestartPolicy(max_restarts=2, initial_backoff_s=0.01), 1.0)
    assert supervisor.run() == 1


def test_placement_is_chosen_on_the_node_and_only_the_kind_changes(exported_repository, tmp_path):
    from armorm.launcher.model_config import read_config
    from armorm.launcher.placement import KINDS, PlacementError, choose_placement, serving_repository

    assert choose_placement("auto", gpus=1).device == "gpu"
    assert choose_placement("auto", gpus=0).device == "cpu"
    assert choose_placement("cpu", gpus=4).device == "cpu"
    assert choose_placement("exported", gpus=4).device is None
    with pytest.raises(PlacementError, match="no CUDA device is visible"):
        choose_placement("gpu", gpus=0)
    # Already placed as asked (the tests' repository is exported for the CPU): served as it is.
    assert serving_repository(exported_repository, choose_placement("cpu", 0), tmp_path / "a") == exported_repository
    view = serving_repository(exported_repository, choose_placement("gpu", 1), tmp_path / "b")
    assert view != exported_repository and not (tmp_path / "a").exists()
    original = read_config(exported_repository / "armorm_backbone" / "config.pbtxt")
    placed = read_config(view / "armorm_backbone" / "config.pbtxt")
    assert [g.kind for g in placed.instance_group] == [KINDS["gpu"]] * len(original.instance_group)
    del placed.instance_group[:], original.instance_group[:]
    assert placed == original, "only the instance kind may differ"
    assert (view / "armorm_backbone" / "1").resolve() == (exported_repository / "armorm_backbone" / "1").resolve()
    assert (view / "armorm").resolve() == (exported_repository / "armorm").resolve()


@pytest.mark.integration
def test_a_repository_exported_on_a_gpu_host_serves_on_a_cpu_node(exported_repository, tmp_path):
    """config.pbtxt says KIND_GPU (exported where a GPU was); this node has none: armorm-serve serves a view of
    the repository whose backbone runs on the CPU, with every other setting of config.pbtxt kept."""
    import torch

    from armorm.testing.serve_process import ServeProcess
    from armorm_client import ArmoRMClient
    from armorm_export.repository import read_config, write_config
    from tests.conversations import varied_conversations

    if torch.cuda.is_available():
        pytest.skip("needs a node without a GPU")
    repository = tmp_path / "repository"
    shutil.copytree(exported_repository, repository)
    config = repository / "armorm_backbone" / "config.pbtxt"
    config.write_text(config.read_text().replace("KIND_CPU", "KIND_GPU"))
    refused = subprocess.run([sys.executable, "-m", "armorm.launcher.server", str(repository), "--backbone-device",
                              "gpu", "--log-file", str(tmp_path / "refused.log")],
                             capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "no CUDA device is visible" in refused.stderr, refused.stderr
    assert not (tmp_path / "refused.log").exists(), "tritonserver must not start"
    edited = read_config(config)
    edited.dynamic_batching.max_queue_delay_microseconds = 7
    write_config(config, edited, "an operator's edit")
    with ServeProcess(repository, tmp_path / "logs") as served:
        log = served.cli_log.read_text()
        assert "backbone on CPU (0 GPU(s) visible)" in log and "instance kind set for this node" in log
        loaded = served.grpc_client().get_model_config("armorm_backbone", as_json=True)["config"]
        assert [group["kind"] for group in loaded["instance_group"]] == ["KIND_CPU"]
        assert int(loaded["dynamic_batching"]["max_queue_delay_microseconds"]) == 7, "edits still apply"
        with ArmoRMClient(served.grpc_url) as client:
            assert client.score(varied_conversations()[0]).num_tokens > 0


def test_flags_after_a_double_dash_go_to_tritonserver_wherever_the_repository_stands():
    from armorm.launcher.server import parse_args

    for argv in (["repo", "--host", "0.0.0.0", "--", "--log-info=true"], ["--host", "0.0.0.0", "repo", "--",
                                                                          "--log-info=true"]):
        args = parse_args(argv)
        assert (str(args.repository), args.host, args.extra) == ("repo", "0.0.0.0", ["--log-info=true"])
    assert parse_args(["repo"]).extra == []


def test_a_refused_reward_must_be_a_finite_number(capsys):
    from armorm.launcher.server import parse_args

    assert parse_args(["repo"]).refused_reward is None, "off by default: a refused query fails the call"
    assert parse_args(["repo", "--refused-reward", "-10"]).refused_reward == -10.0
    for wrong in ("nan", "inf", "-inf"):
        with pytest.raises(SystemExit):
            parse_args(["repo", f"--refused-reward={wrong}"])
        assert "finite number" in capsys.readouterr().err


def test_keys_must_be_usable_and_leave_the_environment(tmp_path, monkeypatch):
    from armorm.launcher.server import UnusableKeyError, take_secret

    key = tmp_path / "key"
    key.write_text("s3cret-Key_1\n")
    monkeypatch.setenv("ARMORM_API_KEY_FILE", str(key))
    assert take_secret("ARMORM_API_KEY") == "s3cret-Key_1"
    assert "ARMORM_API_KEY_FILE" not in os.environ
    monkeypatch.setenv("ARMORM_API_KEY", "from-env")
    assert take_secret("ARMORM_API_KEY") == "from-env" and "ARMORM_API_KEY" not in os.environ
    monkeypatch.setenv("ARMORM_API_KEY", "")
    assert take_secret("ARMORM_API_KEY") is None, "an empty variable is no key (compose passes empty ones)"
    for content, why in ((b"  \n", "empty"), (b"caf\xc3\xa9", "not ASCII"), (b"two words", "a space"),
                         (b"x" * 5000, "too long"), (b"\xff\xfe", "not UTF-8")):
        key.write_bytes(content)
        monkeypatch.setenv("ARMORM_API_KEY_FILE", str(key))
        with pytest.raises(UnusableKeyError, match="printable ASCII"):
            take_secret("ARMORM_API_KEY")  # never "no key": an empty Secret must not open the API
        assert "ARMORM_API_KEY_FILE" not in os.environ, why
    monkeypatch.setenv("ARMORM_API_KEY_FILE", str(tmp_path / "missing"))
    with pytest.raises(UnusableKeyError, match="cannot read"):
        take_secret("ARMORM_API_KEY")
    monkeypatch.setenv("ARMORM_API_KEY_FILE", str(key))
    monkeypatch.setenv("ARMORM_API_KEY", "both")
    with pytest.raises(UnusableKeyError, match="give one"):
        take_secret("ARMORM_API_KEY")


def test_armorm_serve_refuses_flags_that_would_bypass_or_weaken_it(capsys):
    from armorm.launcher.server import parse_args

    for argv, fragment in ((["repo", "--", "--grpc-address=0.0.0.0"], "sets these itself"),
                           (["repo", "--", "--http-port=8000"], "sets these itself"),
                           (["repo", "--tls-client-ca", "ca.pem"], "--tls-client-ca needs --tls-cert"),
                           (["repo", "--tls-cert", "c.pem"], "go together"),
                           (["repo", "--max-connection-age", "0"], "above 0"),
                           (["repo", "--max-connection-age", "3000000"], "below 2147483"),
                           (["repo", "typo"], "unrecognized arguments")):
        with pytest.raises(SystemExit) as refused:
            parse_args(argv)
        assert refused.value.code == 2 and fragment in capsys.readouterr().err, argv
    assert parse_args(["repo", "--", "--log-info=true"]).extra == ["--log-info=true"]
