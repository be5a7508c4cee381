"""The `metrics.listen` address: parsed, and refused on a non-loopback interface unless `metrics.allow_remote` is set."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from mavail.core.errors import ConfigError

__all__ = ["ListenAddress", "check_listen", "parse_listen"]


@dataclass(frozen=True)
class ListenAddress:
    """Where the metrics listener binds: an IP address (v4 or v6) and a port (0: one the system picks)."""

    host: str
    port: int

    @property
    def loopback(self) -> bool:
        """Whether only this machine can reach the address."""
        return ipaddress.ip_address(self.host).is_loopback

    def url(self, port: int | None = None) -> str:
        """The `/metrics` URL at this address (at `port` when given: the one bound for port 0)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port if port is None else port}/metrics"


def parse_listen(text: str) -> ListenAddress | None:
    """`HOST:PORT` (`[V6]:PORT` for IPv6; `localhost` means 127.0.0.1) as an address; None for "" (metrics off).

    The host must be an IP address (or `localhost`): a name would need a DNS lookup to tell whether it is loopback.
    ConfigError names the key and says what is wrong."""
    text = text.strip()
    if not text:
        return None
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ConfigError(f"metrics.listen must be HOST:PORT, like 127.0.0.1:9464 (got {text!r})", field="metrics.listen", value=text)
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    elif ":" in host:
        raise ConfigError(f"metrics.listen: write an IPv6 address in brackets, like [::1]:9464 (got {text!r})", field="metrics.listen",
                          value=text)
    if host == "localhost":
        host = "127.0.0.1"
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        raise ConfigError(f"metrics.listen: {host!r} is not an IP address (use 127.0.0.1, ::1 or, with metrics.allow_remote, "
                          "the address of an interface)", field="metrics.listen", value=text) from None
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ConfigError(f"metrics.listen: the port must be a number from 0 to 65535 (got {port_text!r})", field="metrics.listen",
                          value=text)
    return ListenAddress(str(ip), int(port_text))


def check_listen(listen: str, allow_remote: bool) -> ListenAddress | None:
    """The parsed address, refused (ConfigError) when it is not loopback and `allow_remote` is off."""
    addr = parse_listen(listen)
    if addr is not None and not addr.loopback and not allow_remote:
        raise ConfigError(f"metrics.listen {listen!r} is not a loopback address: anyone who can reach it would read this engine's "
                          "figures; set metrics.allow_remote = true to serve it there anyway (behind a firewall), or use 127.0.0.1",
                          field="metrics.listen", value=listen)
    return addr
