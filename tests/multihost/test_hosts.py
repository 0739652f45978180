"""The multi-host harness itself (tests/hosts.py): addresses, users, isolation, power-off, cleanup."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import hosts
from hosts import Host, Network, Postgres, Redis

pytestmark = pytest.mark.skipif(hosts.unavailable_reason() is not None,
                                reason=f"no test hosts: {hosts.unavailable_reason()}")

SERVE = "import socket,sys,time; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, " \
        "socket.SO_REUSEADDR, 1); s.bind(('0.0.0.0', int(sys.argv[1]))); s.listen(); time.sleep(600)"


@pytest.fixture
def net(tmp_path: Path) -> Iterator[Network]:
    with Network(keep_logs=tmp_path) as network:
        yield network


def _listen(host: Host, port: int) -> subprocess.Popen[bytes]:
    proc = host.start([sys.executable, "-c", SERVE, str(port)], log=f"listen-{port}")
    host.wait_port(host.address, port, 10, proc)
    return proc


def _root_addresses() -> list[str]:
    out = subprocess.run(["ip", "-4", "-o", "addr", "show"], capture_output=True, text=True).stdout
    return [line.split()[3].split("/")[0] for line in out.splitlines()]


def test_hosts_reach_each_other(net: Network) -> None:
    recv, w1, w2 = net.host("recv"), net.host("w1", isolated=True), net.host("w2", isolated=True)
    assert [h.address for h in (recv, w1, w2)] == ["10.77.0.1", "10.77.0.2", "10.77.0.3"]
    _listen(recv, 7001)
    _listen(w1, 7002)
    for worker in (w1, w2):
        # from the test's own thread stepped into the host, and from a process of the host
        assert worker.connect_error(recv.address, 7001) is None
        code = f"import socket; socket.create_connection(({recv.address!r}, 7001), 2); print('ok')"
        assert worker.python(code).stdout.strip() == "ok"
    assert recv.connect_error(w1.address, 7002) is None  # the receiver reaches a worker
    # the address exists only inside the hosts: not in the root namespace, not reached from it
    assert recv.address not in _root_addresses()


def test_each_host_has_its_user_and_private_data_dir(net: Network) -> None:
    recv, w1 = net.host("recv"), net.host("w1", isolated=True)
    for host in (recv, w1):
        assert host.run(["id", "-un"]).stdout.strip() == f"pxh-{host.name}"
        assert host.run(["hostname"]).stdout.strip() == host.name
        assert host.run(["getent", "hosts", "recv"]).stdout.split() == [recv.address, "recv"]
        assert host.data_dir.stat().st_uid == host.uid
        assert oct(host.data_dir.stat().st_mode & 0o777) == "0o700"
        host.run(["sh", "-c", f"echo x > {host.data_dir}/mine"])
    denied = w1.run(["cat", f"{recv.data_dir}/mine"], check=False)
    assert denied.returncode != 0 and "Permission denied" in denied.stderr
    # the host's Python imports the project though /root (mode 0700) holds the interpreter
    out = w1.python("import os, daemon.config; print(os.geteuid())").stdout.strip()
    assert out == str(w1.uid)


def test_a_worker_reaches_the_receiver_only(net: Network) -> None:
    recv, w1, w2 = net.host("recv"), net.host("w1", isolated=True), net.host("w2", isolated=True)
    _listen(recv, 7001)
    _listen(w2, 7003)
    # services of the machine itself (the root namespace): on its loopback and on every address
    with socket.socket() as loop_srv, socket.socket() as any_srv:
        loop_srv.bind(("127.0.0.1", 0))
        any_srv.bind(("0.0.0.0", 0))
        loop_srv.listen()
        any_srv.listen()
        loop_port, any_port = loop_srv.getsockname()[1], any_srv.getsockname()[1]
        socket.create_connection(("127.0.0.1", loop_port), 1).close()  # they do answer here
        assert w1.connect_error("127.0.0.1", loop_port) == os.strerror(111)  # its own loopback
        for address in _root_addresses():
            assert w1.connect_error(address, any_port) is not None, address
    assert w1.connect_error("10.1.2.3", 80) == "Network is unreachable"  # no way out
    assert w1.connect_error(recv.address, 7001) is None
    assert w1.connect_error(w2.address, 7003, timeout=0.5) is not None  # isolated from w2


def test_egress_restricted_to_the_receivers_ports(net: Network) -> None:
    recv, w1 = net.host("recv"), net.host("w1", isolated=True)
    _listen(recv, 7001)
    _listen(recv, 7002)
    try:
        w1.restrict_egress([(recv.address, 7001)])
    except hosts.HostsUnavailable as exc:
        pytest.skip(str(exc))
    assert w1.connect_error(recv.address, 7001) is None
    assert w1.connect_error(recv.address, 7002) == os.strerror(111)  # reset at once, by the rule
    assert recv.connect_error(recv.address, 7002) is None  # the receiver itself is not limited


def test_postgres_and_redis_on_the_receiver(net: Network) -> None:
    recv, w1 = net.host("recv"), net.host("w1", isolated=True)
    pg = Postgres(recv).start()
    redis = Redis(recv).start()
    url = pg.create_database("harness")
    assert url == "postgresql+psycopg://postgres@10.77.0.1:5432/harness"
    code = textwrap.dedent(f"""
        import psycopg, redis
        with psycopg.connect("host={recv.address} port=5432 user=postgres dbname=harness") as c:
            print(c.execute("SELECT current_user, inet_server_addr()").fetchone())
        print(redis.Redis.from_url({redis.url!r}).ping())
    """)
    out = w1.python(code).stdout.split("\n")
    assert out[0] == "('postgres', IPv4Address('10.77.0.1'))" and out[1] == "True"
    # both run as the receiver's user, in its namespace
    for proc in (pg.proc, redis.proc):
        assert proc is not None and proc.poll() is None
    owners = {int(Path(f"/proc/{p}/status").read_text().split("Uid:")[1].split()[0])
              for p in recv.pids()}
    assert owners == {recv.uid}
    assert redis.cli("ping") == "PONG"


def test_postgres_drops_a_vanished_hosts_transaction(net: Network) -> None:
    """A worker host that loses power inside a transaction, with a reply of PostgreSQL's still in
    flight to it, holds its row locks until the server gives up on the connection: the harness's
    server does so in seconds (tcp_user_timeout; TCP alone retransmits for ~15 minutes), so the
    other hosts' inserts of the same keys go on."""
    recv, w1 = net.host("recv"), net.host("w1", isolated=True)
    pg = Postgres(recv).start()
    pg.psql("CREATE TABLE t (k int PRIMARY KEY)")
    code = textwrap.dedent(f"""
        import psycopg
        c = psycopg.connect("host={recv.address} user=postgres dbname=postgres")
        c.execute("INSERT INTO t VALUES (1)")  # uncommitted: its key stays locked
        print("inserted", flush=True)
        while True:  # replies of 20 MB: some of one is always unacknowledged
            c.execute("SELECT repeat('x', 20000000)").fetchone()
    """)
    w1.start([sys.executable, "-c", code], log="client")
    deadline = time.monotonic() + 30
    while "inserted" not in w1.log("client"):
        assert time.monotonic() < deadline, w1.log("client")
        time.sleep(0.05)
    time.sleep(0.5)
    w1.power_off()
    t0 = time.monotonic()
    out = pg.psql("INSERT INTO t VALUES (1) ON CONFLICT DO NOTHING RETURNING k")
    assert out.strip() == "1"  # w1's insert was rolled back, ours went in
    assert time.monotonic() - t0 < 15


def test_power_off_kills_every_process_and_cuts_the_link(net: Network) -> None:
    recv, w1 = net.host("recv"), net.host("w1", isolated=True)
    _listen(recv, 7001)
    # a worker with a detached grandchild (a daemon escaping its parent's process group)
    w1.start(["sh", "-c", f"setsid sleep 600 & exec {sys.executable} -c 'import time; "
              f"time.sleep(600)'"])
    time.sleep(0.3)
    before = w1.pids()
    assert len(before) >= 2
    held = w1.call(socket.create_connection, (recv.address, 7001), 2)
    w1.power_off()
    assert w1.pids() == [] and not w1.linked
    for pid in before:
        assert not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text()
    assert recv.connect_error(w1.address, 22, timeout=0.5) is not None
    held.close()
    # the receiver keeps running
    assert recv.pids() and recv.connect_error(recv.address, 7001) is None


def test_close_leaves_nothing_even_after_a_failure(tmp_path: Path) -> None:
    with pytest.raises(ZeroDivisionError):
        with Network(keep_logs=tmp_path) as network:
            host = network.host("recv")
            network.host("w1", isolated=True)
            proc = host.start(["sleep", "600"])
            base, tag = network.base, network.tag
            1 / 0
    assert proc.poll() == -signal.SIGKILL
    assert not [ns for ns in hosts.namespaces() if ns.startswith(tag)]
    assert not base.exists()
    assert not list(Path("/etc/netns").glob(f"{tag}-*"))
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert "veth" not in links and f"{tag}" not in links


def test_sweep_removes_what_a_killed_test_process_left(tmp_path: Path) -> None:
    """A test process SIGKILLed with its hosts up: the next Network (sweep_stale) removes them."""
    code = textwrap.dedent("""
        import os, sys, time
        sys.path.insert(0, "tests")
        import hosts
        net = hosts.Network()
        net.host("recv").start(["sleep", "600"])
        print(net.tag, net.base, flush=True)
        time.sleep(600)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], cwd=hosts.REPO, stdout=subprocess.PIPE,
                             text=True)
    assert child.stdout is not None
    tag, base = child.stdout.readline().split()
    assert [ns for ns in hosts.namespaces() if ns.startswith(tag)]
    child.kill()
    child.wait(10)
    removed = hosts.sweep_stale()
    assert sorted(removed) == sorted([f"{tag}-recv", f"{tag}-sw"])
    assert not [ns for ns in hosts.namespaces() if ns.startswith(tag)]
    assert not Path(base).exists()
