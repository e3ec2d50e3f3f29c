"""Separate "hosts" on one machine for the multi-host tests: one Linux network namespace per host, each with
one address on a bridge that lives in a namespace of its own (the machine's own interfaces and firewall are
never touched), an iptables firewall per host, and real processes started inside a host's namespace.

Needs root, `ip` (iproute2) and `iptables`; `Network.unavailable()` says why not when they are missing.
Everything is created under a per-run prefix and removed by `close()`: the processes started here (by PID,
with their children), then the namespaces (which takes their interfaces and firewall rules with them)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

SUBNET = "10.213.0"     # host k gets SUBNET.(k + 1)/24; separate runs never meet (one bridge namespace each)


def run(*cmd: str) -> subprocess.CompletedProcess:
    res = subprocess.run(list(cmd), capture_output=True, text=True, timeout=60)
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({res.returncode}): {res.stderr.strip()}")
    return res


class Host:
    def __init__(self, name: str, ns: str, ip: str, folder: Path):
        self.name, self.ns, self.ip, self.folder = name, ns, ip, folder

    def exec(self, *cmd: str) -> list[str]:
        """`cmd` run inside this host's network namespace."""
        return ["ip", "netns", "exec", self.ns, *cmd]

    def iptables(self, *rule: str) -> None:
        run(*self.exec("iptables", "-w", *rule))


class Network:
    def __init__(self, root: Path, prefix: str | None = None):
        self.root = Path(root)
        self.prefix = prefix or f"ft{os.getpid() % 100000}-"
        self.switch = f"{self.prefix}sw"
        self.hosts: dict[str, Host] = {}
        self.procs: list[subprocess.Popen] = []
        self.namespaces: list[str] = []
        self.kits: dict[str, Path] = {}     # participant -> its kit folder (inside its host's folder)

    @staticmethod
    def unavailable() -> str | None:
        """Why namespaces cannot be made here (None: they can)."""
        if os.geteuid() != 0:
            return "network namespaces need root"
        for tool in ("ip", "iptables"):
            if not shutil.which(tool):
                return f"`{tool}` not found (iproute2 / iptables)"
        probe = f"ftprobe{os.getpid() % 100000}"
        res = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
        if res.returncode != 0:
            return f"`ip netns add` failed: {res.stderr.strip()}"
        try:
            res = subprocess.run(["ip", "netns", "exec", probe, "iptables", "-w", "-S"], capture_output=True,
                                 text=True)
            if res.returncode != 0:
                return f"iptables inside a namespace failed: {res.stderr.strip()}"
        finally:
            subprocess.run(["ip", "netns", "del", probe], capture_output=True)
        return None

    def _netns(self, name: str) -> str:
        run("ip", "netns", "add", name)
        self.namespaces.append(name)
        run("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def up(self) -> "Network":
        self._netns(self.switch)
        run("ip", "-n", self.switch, "link", "add", "br0", "type", "bridge")
        run("ip", "-n", self.switch, "link", "set", "br0", "up")
        return self

    def add_host(self, name: str) -> Host:
        """A new host: its own namespace, address and (empty) folder under root/hosts/<name>."""
        k = len(self.hosts) + 1
        ns = self._netns(f"{self.prefix}{k}")
        port = f"p{k}"
        run("ip", "-n", self.switch, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns)
        run("ip", "-n", self.switch, "link", "set", port, "master", "br0", "up")
        ip = f"{SUBNET}.{k + 1}"
        run("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", "eth0")
        run("ip", "-n", ns, "link", "set", "eth0", "up")
        folder = self.root / "hosts" / name
        folder.mkdir(parents=True, mode=0o700)
        self.hosts[name] = host = Host(name, ns, ip, folder)
        return host

    def start(self, host: Host, cmd: list[str], log: str, env: dict | None = None) -> subprocess.Popen:
        """`cmd` in `host`'s namespace (this Python's `fedtune` first on PATH), working directory its folder,
        output to its log."""
        out = (host.folder / f"{log}.log").open("a")
        env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '/usr/bin:/bin')}",
               "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
               "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
        proc = subprocess.Popen(host.exec(*cmd), stdout=out, stderr=subprocess.STDOUT, env=env, cwd=host.folder,
                                start_new_session=True)
        self.procs.append(proc)
        return proc

    def can_connect(self, src: Host, ip: str, port: int) -> bool:
        """Whether a TCP connection from inside `src` to ip:port is accepted."""
        code = f"import socket; socket.create_connection(({ip!r}, {port}), timeout=5).close()"
        return subprocess.run(src.exec(sys.executable, "-c", code), capture_output=True, timeout=60).returncode == 0

    def listen(self, host: Host, port: int) -> subprocess.Popen:
        """A plain TCP listener in `host` (what a careless service on a site would be); answers until closed."""
        code = (f"import socket; s = socket.create_server(('0.0.0.0', {port})); print('listening', flush=True)\n"
                "while True: s.accept()[0].close()")
        proc = subprocess.Popen(host.exec(sys.executable, "-c", code), stdout=subprocess.PIPE, text=True,
                                start_new_session=True)
        self.procs.append(proc)
        assert proc.stdout.readline().strip() == "listening"
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        """SIGTERM `proc` and everything under it, SIGKILL what is left after 20 s."""
        import psutil
        try:
            tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            tree = []
        for p in tree:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(tree, timeout=20)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        if proc.stdout:
            proc.stdout.close()
        proc.wait()

    def close(self) -> None:
        for proc in reversed(self.procs):
            self.stop(proc)
        for ns in reversed(self.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self.namespaces.clear()


def host_firewall(host: Host, open_ports: dict[int, str | None] | None = None) -> None:
    """Inbound: loopback, replies to this host's own connections, and each port in `open_ports` from its source
    (None: any); any other TCP connection is refused with a reset, anything else dropped. Outbound: open."""
    host.iptables("-P", "INPUT", "DROP")
    host.iptables("-A", "INPUT", "-i", "lo", "-j", "ACCEPT")
    host.iptables("-A", "INPUT", "-m", "conntrack", "--ctstate", "ESTABLISHED,RELATED", "-j", "ACCEPT")
    for port, source in (open_ports or {}).items():
        host.iptables("-A", "INPUT", "-p", "tcp", "--dport", str(port), *(["-s", source] if source else []),
                      "-j", "ACCEPT")
    host.iptables("-A", "INPUT", "-p", "tcp", "-j", "REJECT", "--reject-with", "tcp-reset")
