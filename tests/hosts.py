"""Several hosts on one machine, for tests of what crosses a network (issue 12).

A :class:`Network` is a Linux bridge in a network namespace of its own (the *switch*); each
:class:`Host` is a network namespace with one veth link to that bridge, a private address
(``10.77.0.N/24``, which exists only inside these namespaces), a Unix user of its own and a data
directory only that user can read. Nothing is added to the root namespace: no link, no address,
no route, so a host reaches the other hosts and nothing else. In particular not the machine's own
``127.0.0.1`` services (a host's loopback is its own) nor the outside world (a host has no default
route). Worker hosts are made ``isolated``: their bridge ports may talk to the receiving host's
port but not to each other, as on a switch with port isolation. :meth:`Host.restrict_egress`
narrows a host further to a list of address/port pairs, with nftables, where ``nft`` exists.

Processes run inside a host with ``ip netns exec NS setpriv --reuid USER …`` (``start``/``run``),
each in a mount namespace of its own (``ip netns exec`` makes one), so a host may hide paths the
test's Python lives under that its user could not traverse (``/root/.pyenv`` under a ``/root`` of
mode 0700: a tmpfs over ``/root`` holding only that folder). The test process itself can step
one thread into a host (:meth:`Host.netns`, ``setns(2)``) to open sockets there: a PACS that
listens on the receiving host's address, a modality that sends to it, a database query.

:meth:`Host.power_off` removes the host's link and SIGKILLs every process in its namespace, the
way a machine that loses power disappears (no FIN, no RST reaches its peers). :meth:`Network.close`
(also run at exit, and for the leftovers of a test process that died: :func:`sweep_stale`) kills
every process of every host, deletes the links and namespaces and removes the data directories.

Users are ``pxh-<host name>``, made once with ``useradd --system`` and kept (harmless, and two
test runs at once share them). Needs root, iproute2's ``ip`` and ``bridge``, ``setpriv`` and
``useradd``: :func:`unavailable_reason` says what is missing, for ``pytest.skip``.
"""

from __future__ import annotations

import atexit
import contextlib
import ctypes
import glob
import itertools
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SUBNET = "10.77.0"  # a /24 that exists only inside the namespaces a Network makes
PREFIX = "pxh"  # namespaces pxh<pid>x<n>-<host>, folders /tmp/pxh<pid>x<n>-*
_NAME = re.compile(r"^pxh(\d+)x\d*-")
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
_counter = itertools.count()
_open: set["Network"] = set()
_lock = threading.Lock()


class HostsUnavailable(RuntimeError):
    """Network namespaces (or a tool the harness needs) are not available here."""


def _ip(*args: str, check: bool = True, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    r = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=timeout)
    if check and r.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {r.stderr.strip() or r.returncode}")
    return r


def _setns(fd: int) -> None:
    if _libc.setns(fd, _CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"setns: {os.strerror(err)}")


def namespaces() -> list[str]:
    """Names of the network namespaces ``ip netns`` knows."""
    r = _ip("netns", "list", check=False)
    return [line.split()[0] for line in r.stdout.splitlines() if line.strip()]


def _pids_in(ns: str) -> list[int]:
    r = _ip("netns", "pids", ns, check=False)
    me = os.getpid()
    return [int(p) for p in r.stdout.split() if p.isdigit() and int(p) != me]


def _kill_namespace(ns: str, timeout: float = 10.0) -> None:
    """SIGKILL every process whose network namespace is ``ns`` until none is left."""
    deadline = time.monotonic() + timeout
    while pids := _pids_in(ns):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RuntimeError(f"processes {pids} of {ns} survive SIGKILL")
        time.sleep(0.02)


def _delete_namespace(ns: str) -> None:
    _kill_namespace(ns)
    # The links first: a namespace's links go with it only once the kernel frees it, later.
    r = _ip("-n", ns, "-o", "link", "show", check=False)
    for line in r.stdout.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name != "lo":
            _ip("-n", ns, "link", "del", name, check=False)
    _ip("netns", "del", ns, check=False)
    shutil.rmtree(Path("/etc/netns") / ns, ignore_errors=True)


def sweep_stale() -> list[str]:
    """Remove the namespaces and folders of Networks whose test process is gone (killed before
    it could clean up). Returns the namespaces removed."""
    removed = []
    for ns in namespaces():
        m = _NAME.match(ns)
        if m and not _alive(int(m.group(1))):
            _delete_namespace(ns)
            removed.append(ns)
    for folder in [*glob.glob(f"/tmp/{PREFIX}*x*-*"), *glob.glob(f"/etc/netns/{PREFIX}*x*-*")]:
        m = _NAME.match(Path(folder).name)
        if m and not _alive(int(m.group(1))):
            shutil.rmtree(folder, ignore_errors=True)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _hidden_paths() -> tuple[str, list[str]] | None:
    """The folder our interpreter and repository live under that other users cannot traverse
    (``/root``, mode 0700), and the children of it they need (``/root/.pyenv``)."""
    needed = {Path(sys.executable).resolve(), Path(sys.base_prefix).resolve(),
              Path(sys.prefix).resolve(), REPO}
    blocked: dict[str, set[str]] = {}
    for path in needed:
        parts = path.parts
        for depth in range(1, len(parts) + 1):
            folder = Path(*parts[:depth])
            if not folder.stat().st_mode & stat.S_IXOTH:
                if depth == len(parts):
                    raise HostsUnavailable(f"{folder} is not open to other users: the hosts' "
                                           "users could not run the test's Python from it")
                blocked.setdefault(str(folder), set()).add(str(Path(*parts[:depth + 1])))
                break
    if not blocked:
        return None
    if len(blocked) > 1:
        raise HostsUnavailable(f"Python and the repository live under several folders other users "
                               f"cannot enter ({sorted(blocked)})")
    (folder, children), = blocked.items()
    return folder, sorted(children)


_REASON: list[str | None] = []


def unavailable_reason() -> str | None:
    """Why hosts cannot be made here (for ``pytest.skip``), or None."""
    if _REASON:
        return _REASON[0]
    reason = _probe()
    _REASON.append(reason)
    return reason


def _probe() -> str | None:
    if sys.platform != "linux":
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "making network namespaces and users needs root (run the tests as root)"
    for tool in ("ip", "bridge", "setpriv", "unshare"):
        if shutil.which(tool) is None:
            return f"{tool!r} not found (Debian: iproute2, util-linux)"
    if shutil.which("useradd") is None:
        return "'useradd' not found (Debian: passwd): hosts need users of their own"
    try:
        _hidden_paths()
    except HostsUnavailable as exc:
        return str(exc)
    probe = f"{PREFIX}{os.getpid()}x-probe"
    try:
        r = _ip("netns", "add", probe, check=False)
        if r.returncode != 0:
            return f"cannot create a network namespace: {r.stderr.strip()}"
        for args, what in [(("link", "add", "br0", "type", "bridge"), "a bridge"),
                           (("link", "add", "a0", "type", "veth", "peer", "name", "b0"),
                            "a veth pair")]:
            r = _ip("-n", probe, *args, check=False)
            if r.returncode != 0:
                return f"cannot create {what} in a network namespace: {r.stderr.strip()}"
    finally:
        _delete_namespace(probe)
    return None


def ensure_user(name: str) -> pwd.struct_passwd:
    """The Unix user ``name``, made (system user, own group, no home, no shell) if absent."""
    try:
        return pwd.getpwnam(name)
    except KeyError:
        pass
    r = subprocess.run(["useradd", "--system", "--user-group", "--no-create-home",
                        "--home-dir", "/nonexistent", "--shell", "/usr/sbin/nologin", name],
                       capture_output=True, text=True)
    try:
        return pwd.getpwnam(name)  # made by us, or by a test run beside us
    except KeyError:
        raise HostsUnavailable(f"cannot create user {name}: {r.stderr.strip()}") from None


# Runs as root inside the host's fresh mount namespace (``ip netns exec`` makes one, a slave of
# the machine's: nothing mounted here is seen outside), then becomes the host's user.
# It runs in a UTS namespace of its own too, to give the host its name (Celery names its workers
# after it). $1 host name, $2 uid, $3 gid, $4 staging folder, $5 hidden folder, $6 its children
# (space separated), then the command.
_PRELUDE = r"""
set -e
name=$1 uid=$2 gid=$3 stage=$4 hidden=$5 children=$6
shift 6
hostname "$name"
if [ -n "$hidden" ]; then
  mount -t tmpfs -o mode=0755,size=64k pxh-hide "$stage"
  for c in $children; do
    mkdir "$stage/${c##*/}"
    mount --rbind "$c" "$stage/${c##*/}"
  done
  mount --rbind "$stage" "$hidden"
fi
exec setpriv --reuid="$uid" --regid="$gid" --init-groups -- "$@"
"""


class Host:
    """One machine: a network namespace, an address, a user and a data directory."""

    def __init__(self, network: "Network", name: str, index: int, isolated: bool) -> None:
        self.network = network
        self.name = name
        self.ns = f"{network.tag}-{name}"
        self.address = f"{network.subnet}.{index}"
        self.isolated = isolated
        self.user = ensure_user(f"pxh-{name}")
        self.uid, self.gid = self.user.pw_uid, self.user.pw_gid
        self.data_dir = network.base / name
        self.data_dir.mkdir(mode=0o700)
        os.chown(self.data_dir, self.uid, self.gid)
        self.log_dir = network.log_dir
        self.procs: list[subprocess.Popen[bytes]] = []
        self._port = f"v{index}"  # its end on the bridge
        _ip("netns", "add", self.ns)
        _ip("-n", self.ns, "link", "set", "lo", "up")
        # Both ends are made where they live: nothing ever appears in the root namespace.
        _ip("link", "add", "eth0", "netns", self.ns, "type", "veth",
            "peer", "name", self._port, "netns", network.switch)
        _ip("-n", network.switch, "link", "set", self._port, "master", "br0", "up")
        if isolated:
            r = subprocess.run(["bridge", "-n", network.switch, "link", "set", "dev", self._port,
                                "isolated", "on"], capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeError(f"cannot isolate bridge port {self._port}: {r.stderr.strip()}")
        _ip("-n", self.ns, "addr", "add", f"{self.address}/24", "dev", "eth0")
        _ip("-n", self.ns, "link", "set", "eth0", "up")
        # ip netns exec binds /etc/netns/<ns>/<file> over /etc/<file>: the hosts' names, and no
        # name server (it could not be reached anyway: lookups fail at once instead of waiting)
        self.etc = Path("/etc/netns") / self.ns
        self.etc.mkdir(parents=True, exist_ok=True)
        (self.etc / "resolv.conf").write_text("# no name server on the test network\n")
        (self.etc / "hosts").touch()

    def __repr__(self) -> str:
        return f"Host({self.name} {self.address})"

    # --- processes -------------------------------------------------------------------------

    def env(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        """A clean environment for a process of this host (nothing of the test's own)."""
        return {
            "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.data_dir), "USER": self.user.pw_name, "LOGNAME": self.user.pw_name,
            "LANG": "C.UTF-8", "TMPDIR": str(self.data_dir), "PYTHONUNBUFFERED": "1",
            "PYTHONDONTWRITEBYTECODE": "1", **(extra or {}),
        }

    def command(self, argv: Sequence[str], *, as_root: bool = False) -> list[str]:
        """The command line that runs ``argv`` inside this host (as its user unless ``as_root``)."""
        argv = [str(a) for a in argv]
        if as_root:
            return ["ip", "netns", "exec", self.ns, *argv]
        hidden = self.network.hidden
        return ["ip", "netns", "exec", self.ns, "unshare", "--uts", "sh", "-c", _PRELUDE,
                "pxh-host", self.name, str(self.uid), str(self.gid), str(self.network.stage),
                hidden[0] if hidden else "", " ".join(hidden[1]) if hidden else "", *argv]

    def start(self, argv: Sequence[str], *, env: dict[str, str] | None = None,
              log: str | None = None, cwd: Path = REPO, as_root: bool = False,
              ) -> subprocess.Popen[bytes]:
        """Start ``argv`` in this host; its output goes to ``<logs>/<host>-<log>.log``."""
        out: Any = subprocess.DEVNULL
        if log:
            out = self.log_path(log).open("ab")
        try:
            proc = subprocess.Popen(self.command(argv, as_root=as_root), cwd=cwd,
                                    env=self.env(env), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        finally:
            if log:
                out.close()
        self.procs.append(proc)
        return proc

    def run(self, argv: Sequence[str], *, env: dict[str, str] | None = None, timeout: float = 60,
            check: bool = True, as_root: bool = False, input: str | None = None,
            ) -> subprocess.CompletedProcess[str]:
        """Run ``argv`` in this host to its end and return its output."""
        r = subprocess.run(self.command(argv, as_root=as_root), cwd=REPO, env=self.env(env),
                           capture_output=True, text=True, timeout=timeout, input=input)
        if check and r.returncode != 0:
            raise RuntimeError(f"{self.name}: {shlex.join(map(str, argv))} exited "
                               f"{r.returncode}:\n{r.stdout[-2000:]}{r.stderr[-2000:]}")
        return r

    def python(self, code: str, *, timeout: float = 60, check: bool = True,
               env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
        """Run Python ``code`` (the test's interpreter, the repository on its path) in this host."""
        return self.run([sys.executable, "-c", code], timeout=timeout, check=check,
                        env={"PYTHONPATH": str(REPO), **(env or {})})

    def log_path(self, what: str) -> Path:
        return self.log_dir / f"{self.name}-{what}.log"

    def log(self, what: str) -> str:
        path = self.log_path(what)
        return path.read_text(errors="replace") if path.exists() else ""

    def pids(self) -> list[int]:
        """Every process in this host's network namespace (the test's own excepted)."""
        return _pids_in(self.ns)

    def kill_all(self) -> None:
        """SIGKILL every process of this host and reap the ones we started."""
        _kill_namespace(self.ns)
        for proc in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)

    def unlink(self) -> None:
        """Remove this host's network link: it is cut off from the other hosts at once."""
        _ip("-n", self.ns, "link", "del", "eth0", check=False)

    def power_off(self) -> None:
        """As a machine losing power: the link goes first (its peers get no FIN and no RST,
        their connections just stop answering), then every process dies by SIGKILL."""
        self.unlink()
        self.kill_all()

    @property
    def linked(self) -> bool:
        return _ip("-n", self.ns, "link", "show", "eth0", check=False).returncode == 0

    # --- the network seen from here ---------------------------------------------------------

    @contextlib.contextmanager
    def netns(self) -> Iterator[None]:
        """Move the calling thread into this host's network namespace for the block: sockets
        made inside belong to the host for good (threads started inside inherit it too)."""
        own = os.open("/proc/thread-self/ns/net", os.O_RDONLY)
        try:
            target = os.open(f"/run/netns/{self.ns}", os.O_RDONLY)
            try:
                _setns(target)
                try:
                    yield
                finally:
                    _setns(own)
            finally:
                os.close(target)
        finally:
            os.close(own)

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` with the calling thread in this host's namespace."""
        with self.netns():
            return fn(*args, **kwargs)

    def connect_error(self, address: str, port: int, timeout: float = 1.0) -> str | None:
        """None when a TCP connection from this host to ``address:port`` is accepted, else why
        not (``ECONNREFUSED``, ``ENETUNREACH``, ``timed out``…)."""
        with self.netns():
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.settimeout(timeout)
            sock.connect((address, port))
            return None
        except TimeoutError:
            return "timed out"
        except OSError as exc:
            return (os.strerror(exc.errno) if exc.errno else str(exc))
        finally:
            sock.close()

    def can_connect(self, address: str, port: int, timeout: float = 1.0) -> bool:
        return self.connect_error(address, port, timeout) is None

    def wait_port(self, address: str, port: int, timeout: float = 30.0,
                  proc: subprocess.Popen[bytes] | None = None, what: str = "") -> None:
        """Wait until ``address:port`` accepts connections from this host (``proc``: fail as
        soon as that process has exited)."""
        deadline = time.monotonic() + timeout
        while not self.can_connect(address, port, 0.5):
            if proc is not None and proc.poll() is not None:
                raise RuntimeError(f"{what or proc.args[-1]} exited {proc.returncode} before "
                                   f"{address}:{port} opened")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{address}:{port} not open from {self.name} in {timeout} s")
            time.sleep(0.05)

    def restrict_egress(self, allowed: Sequence[tuple[str, int]]) -> None:
        """Let this host open TCP connections only to ``allowed`` (address, port) pairs (and its
        own loopback); anything else is refused at once (TCP reset). Needs ``nft``."""
        if shutil.which("nft") is None:
            raise HostsUnavailable("'nft' not found (Debian: nftables): egress not restricted")
        rules = "\n".join(f"    ip daddr {a} tcp dport {p} accept" for a, p in allowed)
        ruleset = f"""
table inet pxh_egress {{
  chain out {{
    type filter hook output priority 0; policy drop;
    oif "lo" accept
    ct state established,related accept
{rules}
    meta l4proto tcp reject with tcp reset
    reject
  }}
}}
"""
        self.run(["nft", "-f", "-"], as_root=True, input=ruleset)


class Network:
    """A switch (a bridge in a namespace of its own) and the hosts linked to it.

    Use as a context manager, or call :meth:`close`: it runs at exit too, and what a killed test
    process left is swept by the next one."""

    def __init__(self, subnet: str = SUBNET, *, keep_logs: Path | None = None) -> None:
        reason = unavailable_reason()
        if reason:
            raise HostsUnavailable(reason)
        sweep_stale()
        self.subnet = subnet
        self.keep_logs = keep_logs
        self.tag = f"{PREFIX}{os.getpid()}x{next(_counter)}"
        self.switch = f"{self.tag}-sw"
        self.hosts: dict[str, Host] = {}
        self.hidden = _hidden_paths()
        self.closed = False
        self.base = Path(tempfile.mkdtemp(prefix=f"{self.tag}-", dir="/tmp"))
        with _lock:
            _open.add(self)
        try:
            self.base.chmod(0o711)
            self.stage = self.base / "stage"
            self.stage.mkdir(mode=0o755)
            self.log_dir = self.base / "logs"
            self.log_dir.mkdir(mode=0o700)
            _ip("netns", "add", self.switch)
            _ip("-n", self.switch, "link", "set", "lo", "up")
            _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
            _ip("-n", self.switch, "link", "set", "br0", "up")
        except BaseException:
            self.close()
            raise

    def host(self, name: str, *, isolated: bool = False) -> Host:
        """A new host linked to the switch, at ``<subnet>.<n>`` (1, 2, … in the order made).
        ``isolated`` hosts reach the others that are not, but not one another."""
        if not re.fullmatch(r"[a-z][a-z0-9]{0,11}", name) or name in self.hosts or name == "sw":
            raise ValueError(f"bad or duplicate host name {name!r}")
        host = Host(self, name, len(self.hosts) + 1, isolated)
        self.hosts[name] = host
        self._write_hosts()
        return host

    def _write_hosts(self) -> None:
        """Every host's /etc/hosts names them all (rewritten in place: the running see it)."""
        lines = ["127.0.0.1 localhost", *(f"{h.address} {h.name}" for h in self.hosts.values())]
        for host in self.hosts.values():
            with (host.etc / "hosts").open("r+") as fh:
                fh.truncate()
                fh.write("\n".join(lines) + "\n")

    def namespaces(self) -> list[str]:
        return [ns for ns in namespaces() if ns.startswith(f"{self.tag}-")]

    def close(self) -> None:
        """Kill every process of every host, delete links and namespaces, remove the folders.
        Each step runs even if an earlier one failed; the first error is raised at the end."""
        if self.closed:
            return
        self.closed = True
        errors: list[BaseException] = []
        for host in list(self.hosts.values()):
            try:
                host.kill_all()
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
        for ns in [*(h.ns for h in self.hosts.values()), self.switch]:
            try:
                _delete_namespace(ns)
            except Exception as exc:  # noqa: BLE001
                errors.append(exc)
        for ns in self.namespaces():  # one made before an error kept it from self.hosts
            with contextlib.suppress(Exception):
                _delete_namespace(ns)
        if self.keep_logs is not None and self.log_dir.is_dir():
            with contextlib.suppress(OSError):
                shutil.copytree(self.log_dir, self.keep_logs / f"hosts-{self.tag}",
                                dirs_exist_ok=True)
        shutil.rmtree(self.base, ignore_errors=True)
        with _lock:
            _open.discard(self)
        if errors:
            raise errors[0]

    def __enter__(self) -> "Network":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@atexit.register
def _close_all() -> None:
    for network in list(_open):
        with contextlib.suppress(Exception):
            network.close()


# --- services on a host ------------------------------------------------------------------------

def _pg_bin() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/postgres"),
                   key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0)
    if not found:
        raise HostsUnavailable("no PostgreSQL server under /usr/lib/postgresql/*/bin")
    return Path(found[-1]).parent


class Postgres:
    """A private PostgreSQL cluster of ``host``'s user, listening on the host's address only,
    trusting the network's subnet (and fast: no fsync; a test's data need not survive)."""

    def __init__(self, host: Host, port: int = 5432) -> None:
        self.host, self.port = host, port
        self.datadir = host.data_dir / "postgres"
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@{self.host.address}:{self.port}/{database}"

    def start(self, timeout: float = 60) -> "Postgres":
        bin_ = _pg_bin()
        self.host.run([bin_ / "initdb", "-D", self.datadir, "-U", "postgres", "-A", "trust",
                       "-E", "UTF8", "--locale=C", "--no-sync"], timeout=timeout)
        with (self.datadir / "pg_hba.conf").open("a") as fh:
            fh.write(f"host all all {self.host.network.subnet}.0/24 trust\n")
        self.proc = self.host.start(
            [bin_ / "postgres", "-D", self.datadir, "-h", self.host.address, "-p", self.port,
             "-k", self.datadir, "-c", "fsync=off", "-c", "synchronous_commit=off",
             "-c", "full_page_writes=off", "-c", "max_connections=200",
             # A peer that vanished (power off: no FIN, no RST) is dropped in seconds, and with
             # it its open transaction and the row locks it held, which would otherwise block
             # other hosts' inserts of the same keys: by keepalive when the connection was idle
             # (else about 2 hours), by tcp_user_timeout when a reply to it was still unacked
             # (else TCP retransmits for about 15 minutes). Lock waits over 1 s are logged.
             "-c", "tcp_keepalives_idle=5", "-c", "tcp_keepalives_interval=1",
             "-c", "tcp_keepalives_count=3", "-c", "tcp_user_timeout=3000",
             "-c", "log_lock_waits=on", "-c", "deadlock_timeout=1s"], log="postgres")
        self.host.wait_port(self.host.address, self.port, timeout, self.proc, "postgres")
        deadline = time.monotonic() + timeout
        while self.host.run([bin_ / "pg_isready", "-q", "-h", self.host.address, "-p", self.port],
                            check=False).returncode != 0:
            if time.monotonic() > deadline:
                raise TimeoutError(f"PostgreSQL not ready:\n{self.host.log('postgres')[-2000:]}")
            time.sleep(0.1)
        return self

    def psql(self, sql: str, database: str = "postgres") -> str:
        return self.host.run([_pg_bin() / "psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                              "-h", self.host.address, "-p", self.port, "-U", "postgres",
                              "-d", database, "-c", sql]).stdout

    def create_database(self, name: str) -> str:
        """A new database; returns its SQLAlchemy URL."""
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)


class Redis:
    """``redis-server`` on ``host``'s address only, keeping nothing on disk (as in production)."""

    def __init__(self, host: Host, port: int = 6379) -> None:
        self.host, self.port = host, port
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://{self.host.address}:{self.port}/0"

    def start(self, timeout: float = 30) -> "Redis":
        workdir = self.host.data_dir / "redis"
        self.host.run(["mkdir", "-p", workdir])
        self.proc = self.host.start(
            ["redis-server", "--bind", self.host.address, "--port", self.port, "--save", "",
             "--appendonly", "no", "--protected-mode", "no", "--dir", workdir], log="redis")
        self.host.wait_port(self.host.address, self.port, timeout, self.proc, "redis-server")
        return self

    def cli(self, *args: str) -> str:
        return self.host.run(["redis-cli", "-h", self.host.address, "-p", self.port,
                              *args]).stdout.strip()
