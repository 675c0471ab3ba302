#!/usr/bin/env python3
"""The two report paths of the server role on a running private cluster (`hack/bench-cluster.sh`).

- Annotation path: PATCH a pod's `routestate.dev/load` annotation through the API server at a fixed
  rate; per report, the time until the pod's state in Redis shows the new weighted load; the CPU
  the API server and the operator spent per report (from /proc, above an idle baseline measured
  over the same length of time right before).
- Direct path: the same reports sent to Redis as the server role's RedisTransport sends them
  (EVALSHA of report.lua), at a higher rate; the operator's CPU per report (it is not on the
  path, so about 0) and Redis's.

Usage: bench-reports.py API TOKEN REDIS_PORT NAMESPACE SERVICES OPERATOR_PID APISERVER_PID REDIS_PID
Prints "system/..." lines. Rates and durations: REPORT_RATES (annotation, default "50 150"),
DIRECT_RATE (default 2000), REPORT_SECONDS (default 10).
"""
import os
import statistics
import sys
import threading
import time

from benchlib import Api, Redis as RedisAt, cpu_seconds, pct

api, token, rport, ns, services = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
op_pid, api_pid, redis_pid = int(sys.argv[6]), int(sys.argv[7]), int(sys.argv[8])
RATES = [int(r) for r in os.environ.get("REPORT_RATES", "50 150").split()]
DIRECT_RATE = int(os.environ.get("DIRECT_RATE", "2000"))
SECONDS = float(os.environ.get("REPORT_SECONDS", "10"))
ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
Redis = lambda: RedisAt(rport)

_local = threading.local()


def patch(path, body):
    # Reports are sent from many threads: a connection each.
    if not hasattr(_local, "api"):
        _local.api = Api(api, token)
    _local.api.call("PATCH", path, body)


def weighted(load):
    # The published weighted load of a report with `load` and no waiting tasks, cpuFactor 0.7.
    return (300000 * load) // 1000000


def state_load(r, svc, pod):
    v = r.call("HGET", "sf:{%s:state:%s}" % (ns, svc), pod)
    return None if v is None else int(v.split("-")[0])


def idle_baseline(pids):
    c0 = [cpu_seconds(p) for p in pids]
    time.sleep(SECONDS)  # the baseline is a measurement window, not a synchronisation
    return [cpu_seconds(p) - c for p, c in zip(pids, c0)]


def annotation_path(rate, run):
    """Reports at `rate`/s for SECONDS through the pods' annotations."""
    base = idle_baseline([api_pid, op_pid])
    lags, errors, lock = [], [], threading.Lock()

    def one(k):
        svc, pod = "svc-%d" % (k % services), (k // services) % 100
        load = 10_000 + run * 100_000 + k
        r = Redis()
        t0 = time.monotonic()
        try:
            patch("/api/v1/namespaces/%s/pods/%s-%d" % (ns, svc, pod),
                  {"metadata": {"annotations": {"routestate.dev/load": str(load)}}})
            deadline = t0 + 30
            while state_load(r, svc, pod) != weighted(load):
                if time.monotonic() > deadline:
                    raise RuntimeError("not published within 30 s")
                time.sleep(0.002)
            with lock:
                lags.append(time.monotonic() - t0)
        except Exception as e:  # counted and reported, never hidden
            with lock:
                errors.append(str(e))

    c0 = [cpu_seconds(api_pid), cpu_seconds(op_pid)]
    t_start, threads, n = time.monotonic(), [], int(rate * SECONDS)
    for k in range(n):
        delay = t_start + k / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        t = threading.Thread(target=one, args=(k,))
        t.start()
        threads.append(t)
    sent_in = time.monotonic() - t_start
    for t in threads:
        t.join()
    used = [cpu_seconds(api_pid) - c0[0], cpu_seconds(op_pid) - c0[1]]
    per = [(u - b) / max(1, len(lags)) * 1000 for u, b in zip(used, base)]
    return {"rate": n / sent_in, "p50": pct(lags, 50) if lags else float("nan"),
            "p99": pct(lags, 99) if lags else float("nan"), "api_ms": per[0], "op_ms": per[1],
            "errors": len(errors), "ok": len(lags)}


def direct_path():
    """Reports at DIRECT_RATE/s for SECONDS straight to Redis (report.lua), from 8 connections."""
    text = b"".join(open(os.path.join(ROOT, "src/store/lua", f), "rb").read()
                    for f in ("common.lua", "states.lua", "report.lua"))
    sha = Redis().call("SCRIPT", "LOAD", text)
    base = idle_baseline([op_pid, redis_pid])
    c0 = [cpu_seconds(op_pid), cpu_seconds(redis_pid)]
    done, lock = [0], threading.Lock()
    n = int(DIRECT_RATE * SECONDS)
    t_start = time.monotonic()

    def worker(w):
        r = Redis()
        for k in range(w, n, 8):
            delay = t_start + k / DIRECT_RATE - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            svc, pod = "svc-%d" % (k % services), (k // services) % 100
            state = "sf:{%s:state:%s}" % (ns, svc)
            r.call("EVALSHA", sha, 3, state, state + "report", state + "ready", pod, "%d-0-0" % (1000 + k % 500))
            with lock:
                done[0] += 1

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t_start
    used = [cpu_seconds(op_pid) - c0[0], cpu_seconds(redis_pid) - c0[1]]
    per = [(u - b) / max(1, done[0]) * 1e6 for u, b in zip(used, base)]
    return {"rate": done[0] / elapsed, "op_us": per[0], "redis_us": per[1]}


for rate in RATES:
    runs = [annotation_path(rate, run) for run in range(int(os.environ.get("RUNS", "3")))]
    med = lambda k: statistics.median(r[k] for r in runs)
    print("system/reports_annotation %d pods, offered %d/s: sustained %.0f/s, report -> Redis p50 %.1f ms p99 %.1f ms; "
          "API server %.2f ms CPU per report, operator %.2f ms CPU per report; %d errors (median of %d runs)"
          % (services * 100, rate, med("rate"), med("p50") * 1e3, med("p99") * 1e3, med("api_ms"), med("op_ms"),
             sum(r["errors"] for r in runs), len(runs)))
d = direct_path()
print("system/reports_direct %d pods: %.0f reports/s to Redis; operator %.1f µs CPU per report (not on the path), "
      "Redis %.1f µs CPU per report" % (services * 100, d["rate"], d["op_us"], d["redis_us"]))
