"""What the system benchmarks share: a RESP client, an API server client on one kept-alive
connection, CPU time from /proc and percentiles. Standard library only."""
import http.client
import json
import os
import socket
import ssl

HZ = os.sysconf("SC_CLK_TCK")


class Redis:
    """A minimal RESP client (one connection, one command at a time)."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.f = self.s.makefile("rb")

    def call(self, *args):
        args = [a if isinstance(a, bytes) else str(a).encode() for a in args]
        self.s.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args))
        return self.read()

    def read(self):
        line = self.f.readline()
        kind, rest = line[:1], line[1:].strip()
        if kind == b"$":
            n = int(rest)
            return None if n < 0 else self.f.read(n + 2)[:-2].decode()
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        if kind == b"-":
            raise RuntimeError(rest.decode())
        return rest.decode()


class Api:
    """Requests to the API server with a bearer token, on one kept-alive TLS connection (so a
    round trip is the server's, not a TLS handshake's)."""

    def __init__(self, url, token, timeout=30):
        host, port = url.split("//", 1)[1].rsplit(":", 1)
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        self.conn = http.client.HTTPSConnection(host, int(port), context=ctx, timeout=timeout)
        self.token = token

    def call(self, method, path, body=None, ctype="application/merge-patch+json"):
        return json.loads(self.raw(method, path, body, ctype) or b"{}")

    def raw(self, method, path, body=None, ctype="application/merge-patch+json"):
        headers = {"Authorization": "Bearer " + self.token, "Content-Type": ctype}
        data = None if body is None else json.dumps(body).encode()
        for attempt in (0, 1):
            try:
                self.conn.request(method, path, body=data, headers=headers)
                resp = self.conn.getresponse()
                text = resp.read()
                break
            except (http.client.HTTPException, OSError):
                # The server closed the kept-alive connection: once more on a new one.
                self.conn.close()
                if attempt:
                    raise
        if resp.status >= 300:
            raise RuntimeError("%s %s: HTTP %d %s" % (method, path, resp.status, text[:300].decode(errors="replace")))
        return text


def cpu_seconds(pid):
    """User + system CPU seconds of a process so far."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / HZ


def rss_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))


def pct(v, p):
    """The p-th percentile of v (nearest rank)."""
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]
