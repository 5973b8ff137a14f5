"""The Host names the HTTP face answers (DNS rebinding) and the requests it takes as the gateway's own
(cross-site requests); the application (``gateway.http.app``) checks both in front of every route.

* **Host** (DNS rebinding). A page on a name its owner controls can make that name resolve to the
  gateway's address; the browser then counts the gateway as the page's own origin and lets it read
  the answers. Such a request still names the page's host in ``Host``, so with auth off (nothing
  else stands in the way) only Host names that are the gateway's are answered: localhost, IP
  addresses (a rebinding page always has a DNS name: an IP literal is the gateway's own origin, and
  a kubelet probing the pod's IP, a ``docker -p`` port map or a port-forward keep working), the
  names of http_listen and public_url, and ``http_allowed_hosts``. Others: 421 HOST_NOT_ALLOWED.
  The port is not compared (port maps and proxies change it; a rebinding page differs in its name).
  With auth on a rebinding page has no token (the dashboard's cookie belongs to the real name, and
  browsers add no bearer header by themselves), so Host is checked only where the operator lists
  names. ``/healthz`` and ``/readyz`` answer any Host: they tell nothing, and probes must not fail.
* **Origin** (cross-site requests, CSRF). A page on another site can make the browser send a form
  (text/plain, urlencoded, multipart) to any address, without the preflight that a JSON body would
  need; the predict facade takes any body as JSON inputs, so that made jobs. A state-changing
  request (not GET, HEAD, OPTIONS) that a browser marks as cross-origin (``Sec-Fetch-Site`` other
  than same-origin, or an ``Origin`` that is not this host; or, from old browsers that send
  neither, a form whose ``Referer`` is another site) is answered 403 CROSS_ORIGIN_REQUEST, with auth
  on or off. Clients that are not browsers (the OctoAI SDK, curl, the dashboard's own page) send no
  such headers or same-origin ones, and pass whatever their content type.
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit

from aiohttp import web

from gateway.settings import Settings, split_host

__all__ = ["SAFE_METHODS", "HostPolicy", "cross_origin"]

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
_FORMS = ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data")


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def _url_host(url: str) -> tuple[str, int | None] | None:
    """(name, port) of an http(s) URL (its port, else the scheme's); None when it is no such URL."""
    try:
        parts = urlsplit(url.strip())
        if parts.scheme.lower() not in _DEFAULT_PORTS or not parts.netloc:
            return None
        name, port = split_host(parts.netloc.rpartition("@")[2])
    except ValueError:
        return None
    return name, port if port is not None else _DEFAULT_PORTS[parts.scheme.lower()]


class HostPolicy:
    """Which Host names the HTTP face answers, and whether an Origin is the gateway's own."""

    def __init__(self, settings: Settings, auth_enabled: bool) -> None:
        entries = list(settings.http_allowed_hosts)
        self.any = "*" in entries or (auth_enabled and not entries)
        self._names: set[str] = {"localhost"}  # any port
        self._name_ports: set[tuple[str, int]] = set()
        self._suffixes: list[tuple[str, int | None]] = []  # *.example.com -> (".example.com", port)
        listen = settings.http_listen.rpartition(":")[0].strip("[]").lower().removesuffix(".")
        if listen and not _is_ip(listen):
            self._names.add(listen)  # http_listen = "gw.internal:8080": that name is ours
        public = _url_host(settings.public_url) if settings.public_url else None
        if public is not None:
            self._names.add(public[0])
        for entry in entries:
            if entry == "*":
                continue
            if entry.startswith("*."):
                name, port = split_host(entry[2:])
                self._suffixes.append(("." + name, port))
                continue
            name, port = split_host(entry)
            if port is None:
                self._names.add(name)
            else:
                self._name_ports.add((name, port))

    def _listed(self, name: str, port: int | None) -> bool:
        """Whether the name is one of ours; without a port (as browsers write 80 and 443), an entry
        with a port of 80 or 443 matches."""
        ports = _DEFAULT_PORTS.values() if port is None else (port,)
        if name in self._names or any((name, p) in self._name_ports for p in ports):
            return True
        return any(name.endswith(suffix) and (want is None or want in ports) for suffix, want in self._suffixes)

    def allows(self, host: str) -> bool:
        """Whether a Host header's value is one of the gateway's names (case, a trailing dot, IPv6
        brackets and the port as a browser writes them)."""
        if self.any:
            return True
        try:
            name, port = split_host(host)
        except ValueError:
            return False
        return _is_ip(name) or self._listed(name, port)

    def own_origin(self, origin: str, host: str) -> bool:
        """Whether ``origin`` (an Origin header, or a Referer) is the origin the request was sent to:
        the same name and port as its Host, or a name the operator listed (a proxy that rewrites Host,
        with a browser too old to send Sec-Fetch-Site). Not "any IP address": another port of the same
        address is another site."""
        site = _url_host(origin)
        if site is None:
            return False
        name, port = site
        try:
            host_name, host_port = split_host(host)
        except ValueError:
            return False
        if name == host_name and port in (_DEFAULT_PORTS.values() if host_port is None else (host_port,)):
            return True
        # localhost at any port is a default of the Host check, not a claim that every local port is ours
        return (name != "localhost" or (name, port) in self._name_ports) and self._listed(name, port)


def cross_origin(hosts: HostPolicy, request: web.Request) -> str:
    """Why the request comes from another site, or "" when nothing says so."""
    headers = request.headers
    host = headers.get("Host", "")
    site = headers.get("Sec-Fetch-Site", "").strip().lower()
    if site:
        # "none": the user's own action (the address bar, a bookmark), never another page's
        return "" if site in ("same-origin", "none") else f"the browser marks it Sec-Fetch-Site: {site}"
    origin = headers.get("Origin")
    if origin is not None:
        if not host or not hosts.own_origin(origin, host):
            return f"it comes from the origin {origin.strip()[:200]!r}, not this gateway's"
        return ""
    referer = headers.get("Referer", "")
    if referer and request.content_type in _FORMS and not (host and hosts.own_origin(referer, host)):
        origin = referer.split("?")[0][:200]
        return f"a form without Origin, sent from {origin!r}"
    return ""  # not a browser: the OctoAI SDK, curl, a script
