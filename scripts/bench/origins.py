"""Origins the benchmarks download from: nginx on 127.0.0.1 when it is installed, else the Python test mirror, and the
catalog entry of one of their files."""

from __future__ import annotations

import hashlib
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

from mavail.testing.mirror import MIB, Mirror, Synthetic


class NginxOrigin:
    """nginx on 127.0.0.1 serving files written to `root`; `/cN/` paths cap each connection at N MiB/s."""

    CAPS = (16, 20)

    def __init__(self, tmp: Path) -> None:
        self.root, self.dir = tmp / "www", tmp / "nginx"
        self.root.mkdir()
        self.dir.mkdir()
        self.log = self.dir / "access.log"
        self.port = _free_port()
        caps = "".join(f"    location /c{n}/ {{ alias {self.root}/; limit_rate {n}m; }}\n" for n in self.CAPS)
        t = self.dir
        user = "user root;\n" if os.geteuid() == 0 else ""  # workers must read the files of this private folder
        (t / "nginx.conf").write_text(f"""{user}worker_processes 2;
pid {t}/nginx.pid;
error_log {t}/error.log;
events {{ worker_connections 1024; }}
http {{
  log_format sent '$uri $body_bytes_sent';
  access_log {self.log} sent;
  sendfile on;
  client_body_temp_path {t}; proxy_temp_path {t}; fastcgi_temp_path {t}; uwsgi_temp_path {t}; scgi_temp_path {t};
  server {{
    listen 127.0.0.1:{self.port};
    root {self.root};
{caps}  }}
}}
""")
        subprocess.run([shutil.which("nginx") or "nginx", "-c", str(t / "nginx.conf")], check=True)
        self.kind = "nginx (sendfile)"

    def add(self, name: str, size: int) -> str:
        """Write `size` random bytes to `name`; their sha256."""
        h = hashlib.sha256()
        with open(self.root / name, "wb") as fh:
            left = size
            while left:
                block = os.urandom(min(8 * MIB, left))
                h.update(block)
                fh.write(block)
                left -= len(block)
        return h.hexdigest()

    def alias(self, name: str, target: str) -> None:
        """Serve `target`'s bytes under `name` too (so each name's bytes are counted apart)."""
        (self.root / name).symlink_to(self.root / target)

    def url(self, name: str, cap_mib: int = 0) -> str:
        """The URL of `name`, with each connection capped at `cap_mib` MiB/s (one of CAPS) when given."""
        return f"http://127.0.0.1:{self.port}/" + (f"c{cap_mib}/" if cap_mib else "") + name

    def served(self, name: str) -> int:
        """Body bytes sent for `name` over every path so far."""
        total = 0
        for line in self.log.read_text().splitlines():
            uri, _, n = line.rpartition(" ")
            if uri.rsplit("/", 1)[-1] == name and n.isdigit():
                total += int(n)
        return total

    def close(self) -> None:
        """Stop nginx."""
        pid = int((self.dir / "nginx.pid").read_text())
        os.kill(pid, signal.SIGQUIT)


class MirrorOrigin:
    """The Python test mirror (when nginx is missing): its own CPU cost is in every figure."""

    CAPS = (16, 20)

    def __init__(self, tmp: Path) -> None:
        self.m = Mirror().start()
        self.content: dict[str, Synthetic] = {}
        self.kind = "the Python test mirror (nginx not installed: apt-get install nginx-light; its CPU cost is in every figure)"

    def add(self, name: str, size: int) -> str:
        self.content[name] = Synthetic(name, size)
        for cap in (0, *self.CAPS):
            self._serve(name, name, cap)
        return self.content[name].sha256()

    def _serve(self, name: str, target: str, cap: int) -> None:
        path = (f"c{cap}/" if cap else "") + name
        self.m.add(path, self.content[target])
        self.m.faults(path).throttle_bps = cap * MIB

    def alias(self, name: str, target: str) -> None:
        self.content[name] = self.content[target]
        for cap in (0, *self.CAPS):
            self._serve(name, target, cap)

    def url(self, name: str, cap_mib: int = 0) -> str:
        return self.m.url((f"c{cap_mib}/" if cap_mib else "") + name)

    def served(self, name: str) -> int:
        return sum(self.m.bytes_served.get((f"c{cap}/" if cap else "") + name, 0) for cap in (0, *self.CAPS))

    def close(self) -> None:
        self.m.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def model_toml(mid: str, url: str, size: int, sha: str) -> str:
    """A catalog `[[models]]` block of one file `w.bin`."""
    return (f'[[models]]\nid = "{mid}"\nversion = "1.0.0"\ndisplay_name = "{mid}"\nmodel_type = "text_to_video"\n'
            f'capabilities = ["text_to_video"]\nquality = "medium"\nspeed = "medium"\n[models.vram_gb]\n"832x480" = 8.0\n'
            f'[[models.files]]\npath = "w.bin"\nurl = "{url}"\nmirrors = []\nsize = {size}\nsha256 = "{sha}"\n')


def best_origin(tmp: Path) -> "NginxOrigin | MirrorOrigin":
    """nginx when it is installed (the figures are then the engine's alone), else the Python test mirror."""
    return NginxOrigin(tmp) if shutil.which("nginx") else MirrorOrigin(tmp)
