#!/usr/bin/env python3
"""The operator at fleet scale, on a running private cluster (`hack/bench-cluster.sh`).

  bench-fleet.py steady N    grow the fleet to N pods (StatefulSets of 100, each with a
                             RouteState), then measure it at rest
  bench-fleet.py scaleup N   measure the same while 1 000 more pods start (10 StatefulSets
                             scaled from 0 to 100), then scale them back to 0
  bench-fleet.py restarted N the operator was just restarted on N pods: until it published them
                             all again, and its footprint then (peak included)

Measured, each beside the API server's own round trip in the same window:
- RouteState patch -> Redis: from sending a drain (spec.pods[].routingState) until Redis shows
  the pod's new state; every sample a real transition (READY -> DENY_NEW_CALL, then back), its
  starting state checked first. Where the time goes, per sample: the PATCH request, until the
  operator's reconcile started, reconcile until the plan, plan until its publish ended (the
  operator's debug log, JSON, read afterwards), until the probe saw it (polling every 1 ms);
  beside it another client's watch delivery of the same change.
- Pod Ready -> routable: from the moment a watch of the pods (this script's own) sees a pod
  Ready until Redis shows it READY. At rest a StatefulSet is scaled up by one, during the
  scale-up every one of the 1 000 new pods counts.
- Footprint at rest: the operator's VmRSS, and its CPU per heartbeat period beside Redis' CPU
  for the same writes (from /proc).

Environment: API, ADMIN_TOKEN, REDIS_PORT, NS, OP_PID, REDIS_PID, OP_LOG, METRICS, PERIOD, RUNS (3),
PATCHES (20 per run, each two transitions). Prints "system/..." lines; progress on stderr.
"""
import bisect
import datetime
import json
import multiprocessing
import queue
import os
import re
import statistics
import sys
import threading
import time
import urllib.request

from benchlib import Api, Redis, cpu_seconds, pct, rss_kib

API_URL, TOKEN, NS = os.environ["API"], os.environ["ADMIN_TOKEN"], os.environ["NS"]
REDIS_PORT, OP_PID, REDIS_PID = int(os.environ["REDIS_PORT"]), int(os.environ["OP_PID"]), int(os.environ["REDIS_PID"])
OP_LOG, PERIOD = os.environ["OP_LOG"], int(os.environ.get("PERIOD", "2"))
RUNS, PATCHES = int(os.environ.get("RUNS", "3")), int(os.environ.get("PATCHES", "20"))
PER_SET, UP_SETS = 100, 10
mp = multiprocessing.get_context("fork")
RS = "/apis/routestate.dev/v1alpha1/namespaces/%s/routestates" % NS
STS = "/apis/apps/v1/namespaces/%s/statefulsets" % NS


def log(*a):
    print("bench-fleet:", *a, file=sys.stderr, flush=True)


def wait(cond, timeout, what, every=0.001):
    deadline = time.time() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.time() > deadline:
            raise SystemExit("bench-fleet: timed out after %d s waiting for %s" % (timeout, what))
        time.sleep(every)


api = Api(API_URL, TOKEN)
redis = Redis(REDIS_PORT)


def state_key(svc):
    return "sf:{%s:state:%s}" % (NS, svc)


def routing(r, svc, idx):
    v = r.call("HGET", state_key(svc), idx)
    return None if v is None else v.rsplit("-", 1)[1]


class Watch(threading.Thread):
    """A watch of `path` (this script's own client) calling `seen(event, time)` for each event,
    resumed from the last resourceVersion when the server ends it."""

    def __init__(self, path, seen):
        super().__init__(daemon=True)
        self.path, self.seen, self.rv = path, seen, None
        self.ready = threading.Event()

    def run(self):
        while True:
            client = Api(API_URL, TOKEN, timeout=3600)
            if self.rv is None:
                listed = client.call("GET", self.path)
                for item in listed["items"]:
                    self.seen({"type": "ADDED", "object": item}, time.time())
                self.rv = listed["metadata"]["resourceVersion"]
                self.ready.set()
            client.conn.request("GET", "%s?watch=1&resourceVersion=%s&allowWatchBookmarks=true" % (self.path, self.rv),
                                headers={"Authorization": "Bearer " + TOKEN})
            resp = client.conn.getresponse()
            if resp.status != 200:
                self.rv = None
                continue
            for line in resp:
                t = time.time()
                event = json.loads(line)
                if event["type"] == "ERROR":  # expired resourceVersion: list again
                    self.rv = None
                    break
                self.rv = event["object"]["metadata"]["resourceVersion"]
                if event["type"] != "BOOKMARK":
                    self.seen(event, t)


rs_seen = {}  # (name, resourceVersion) -> when this script's watch saw it
ready_at = {}  # pod name -> when this script's watch first saw it Ready
lock = threading.Lock()


def on_routestate(event, t):
    m = event["object"]["metadata"]
    with lock:
        rs_seen.setdefault((m["name"], m["resourceVersion"]), t)


def on_pod(event, t):
    pod = event["object"]
    name = pod["metadata"]["name"]
    ready = not pod["metadata"].get("deletionTimestamp") and any(
        c["type"] == "Ready" and c["status"] == "True" for c in pod.get("status", {}).get("conditions", []))
    with lock:
        if event["type"] == "DELETED" or not ready:
            ready_at.pop(name, None)
        else:
            ready_at.setdefault(name, t)


def statefulset(name, replicas):
    return {"apiVersion": "apps/v1", "kind": "StatefulSet", "metadata": {"name": name, "namespace": NS},
            "spec": {"serviceName": name, "replicas": replicas, "podManagementPolicy": "Parallel",
                     "selector": {"matchLabels": {"app": name}},
                     "template": {"metadata": {"labels": {"app": name}},
                                  "spec": {"containers": [{"name": "app", "image": "registry.k8s.io/pause:3.10"}]}}}}


def routestate(name):
    return {"apiVersion": "routestate.dev/v1alpha1", "kind": "RouteState", "metadata": {"name": name, "namespace": NS},
            "spec": {"updatePeriodSeconds": PERIOD}}


def existing(path):
    return {i["metadata"]["name"] for i in api.call("GET", path)["items"]}


def ensure_services(names, replicas):
    have_sts, have_rs = existing(STS), existing(RS)
    for name in names:
        if name not in have_sts:
            api.call("POST", STS, statefulset(name, replicas), "application/json")
        if name not in have_rs:
            api.call("POST", RS, routestate(name), "application/json")


def published(svcs):
    return sum(int(redis.call("HLEN", state_key(s))) for s in svcs)


def ready_count(prefix):
    with lock:
        return sum(1 for n in ready_at if n.startswith(prefix))


def scale(svc, replicas):
    api.call("PATCH", "%s/%s/scale" % (STS, svc), {"spec": {"replicas": replicas}})


# --- the operator's own timings (debug log, JSON) ---

def parse_ts(s):
    # RFC 3339 with up to 9 fraction digits; Python reads 6.
    head, _, frac = s.rstrip("Z").partition(".")
    return datetime.datetime.fromisoformat(head + "." + (frac + "000000")[:6] + "+00:00").timestamp()


def operator_timings():
    """From the operator's log: when each RouteState's plan was set, by RouteState name
    [(time, "reconcile" | "follow")], and each publish as (start, end), sorted."""
    plans, publishes = {}, []
    with open(OP_LOG, errors="replace") as f:
        for line in f:
            if not line.startswith("{"):
                continue
            try:
                e = json.loads(line)
            except ValueError:
                continue
            msg = e.get("message")
            # Only a plan that changed can carry the sample's change.
            if msg in ("plan set", "plan followed") and "routestate" in e and e.get("changed"):
                # ObjectRef's Display: RouteState.v1alpha1.routestate.dev/<name>.<namespace>
                name = e["routestate"].rsplit("/", 1)[1].rsplit(".", 1)[0]
                plans.setdefault(name, []).append((parse_ts(e["timestamp"]), "follow" if msg == "plan followed" else "reconcile"))
            elif msg == "published":
                end = parse_ts(e["timestamp"])
                publishes.append((end - e["tick_us"] / 1e6, end))
    publishes.sort()
    return plans, publishes


def phases(samples):
    """Where each sample's time went (lists of seconds by phase), from the operator's log."""
    plans, publishes = operator_timings()
    starts = [p[0] for p in publishes]
    out = {k: [] for k in ("request", "to_plan", "publish", "seen", "other_watch", "followed")}
    for s in samples:
        lines = [p for p in plans.get(s["svc"], []) if p[0] >= s["t0"]]
        if not lines:
            continue
        plan_t, how = min(lines)
        # The first publish of a tick that began after the plan was set (changed plans go first).
        i = bisect.bisect_left(starts, plan_t - 0.0005)
        if i == len(publishes) or publishes[i][1] > s["t_redis"] + 0.05:
            continue
        end = publishes[i][1]
        out["request"].append(s["t1"] - s["t0"])
        out["to_plan"].append(max(0.0, plan_t - s["t1"]))
        out["publish"].append(max(0.0, end - plan_t))
        out["seen"].append(max(0.0, s["t_redis"] - end))
        out["other_watch"].append(s["t_watch"] - s["t1"])
        out["followed"].append(how == "follow")
    return out


# The verbs of apiserver_request_total that write.
WRITE_VERBS = {"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"}


def api_writes():
    """The API server's write requests so far, from its /metrics: (all, Events, RouteState status)."""
    total = events = status = 0.0
    for line in api.raw("GET", "/metrics").decode(errors="replace").splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels, _, value = line.rpartition(" ")
        verb = re.search(r'verb="([A-Z]+)"', labels)
        if not verb or verb.group(1) not in WRITE_VERBS:
            continue
        total += float(value)
        if 'resource="events"' in labels:
            events += float(value)
        elif 'resource="routestates"' in labels and 'subresource="status"' in labels:
            status += float(value)
    return total, events, status


def operator_events(t0, t1):
    """How many Events the operator's reconciles recorded between t0 and t1 (its debug log)."""
    n = 0
    with open(OP_LOG, errors="replace") as f:
        for line in f:
            if '"reconciled"' not in line or not line.startswith("{"):
                continue
            try:
                e = json.loads(line)
            except ValueError:
                continue
            if t0 <= parse_ts(e["timestamp"]) <= t1:
                n += e.get("events", 0)
    return n


# --- the probes ---

def transition(svc, idx, state, want, before, r, samples, gets):
    """One drain (state DenyNewCall) or undrain (None) of pod idx of svc, timed."""
    wait(lambda: routing(r, svc, idx) == before, 10, "%s pod %d to be %s before its sample" % (svc, idx, before))
    t = time.time()
    api.call("GET", "%s/%s" % (RS, svc))
    gets.append(time.time() - t)
    t0 = time.time()
    out = api.call("PATCH", "%s/%s" % (RS, svc),
                   {"spec": {"pods": [{"index": idx, "routingState": state}] if state else None}})
    t1 = time.time()
    t_redis = wait(lambda: routing(r, svc, idx) == want and time.time(), 30, "%s pod %d to be %s" % (svc, idx, want))
    rv = out["metadata"]["resourceVersion"]
    t_watch = wait(lambda: rs_seen.get((svc, rv)), 30, "the watch to deliver %s" % svc)
    samples.append({"svc": svc, "t0": t0, "t1": t1, "t_redis": t_redis, "t_watch": t_watch, "e2e": t_redis - t0})


def patch_samples(svcs, n, seed, samples, gets, stop=None):
    for k in range(n if stop is None else 10 ** 9):
        if stop is not None and stop():
            break
        svc, idx = svcs[(k * 7 + seed) % len(svcs)], (k * 13 + seed * 7) % PER_SET
        transition(svc, idx, "DenyNewCall", "1", "0", redis, samples, gets)
        transition(svc, idx, None, "0", "1", redis, samples, gets)


def ready_samples(svcs, n, seed):
    """A StatefulSet scaled up by one: its new pod's Ready (seen by the pod watch) -> READY."""
    lags = []
    for k in range(n):
        svc = svcs[(k * 3 + seed) % len(svcs)]
        name = "%s-%d" % (svc, PER_SET)
        if routing(redis, svc, PER_SET) is not None:
            raise SystemExit("bench-fleet: %s index %d is published before its sample" % (svc, PER_SET))
        scale(svc, PER_SET + 1)
        t_rout = wait(lambda: routing(redis, svc, PER_SET) == "0" and time.time(), 60, "%s to be routable" % name)
        t_ready = wait(lambda: ready_at.get(name), 60, "%s to be Ready" % name)
        lags.append(max(0.0, t_rout - t_ready))
        scale(svc, PER_SET)
        wait(lambda: routing(redis, svc, PER_SET) is None, 120, "%s to be removed" % name, every=0.05)
    return lags


def ms(v):
    return v * 1000


def summary(values):
    return (pct(values, 50), pct(values, 99)) if values else (float("nan"), float("nan"))


def phase_text(runs_phases):
    names = (("request", "PATCH request"), ("to_plan", "from its response until the operator's plan"),
             ("publish", "plan until published"), ("seen", "until the probe saw it"),
             ("other_watch", "beside it: another client's watch delivery"))
    parts = []
    for key, label in names:
        p50 = statistics.median(summary(p[key])[0] for p in runs_phases)
        p99 = statistics.median(summary(p[key])[1] for p in runs_phases)
        parts.append("%s %.1f/%.1f" % (label, ms(p50), ms(p99)))
    n = sum(len(p["request"]) for p in runs_phases)
    followed = sum(sum(p["followed"]) for p in runs_phases)
    return "; ".join(parts) + " ms p50/p99 (%d samples matched in the operator's log, %d planned on the watch event, " \
        "%d by a reconcile)" % (n, followed, n - followed)


def med(runs, key, i):
    return statistics.median(r[key][i] for r in runs)


def steady(n):
    svcs = ["svc-%d" % i for i in range(n // PER_SET)]
    t = time.time()
    ensure_services(svcs, PER_SET)
    wait(lambda: ready_count("svc-") >= n, 1800, "%d pods Ready" % n, every=0.5)
    log("%d pods Ready in %.0f s" % (n, time.time() - t))
    wait(lambda: published(svcs) >= n, 600, "%d pods published" % n, every=0.5)
    log("%d pods published in %.0f s" % (n, time.time() - t))
    runs = []
    for run in range(RUNS):
        samples, gets = [], []
        patch_samples(svcs, PATCHES, run, samples, gets)
        lags = ready_samples(svcs, max(3, PATCHES // 4), run)
        runs.append({"e2e": summary([s["e2e"] for s in samples]), "get": summary(gets), "ready": summary(lags),
                     "samples": samples})
    all_phases = [phases(r["samples"]) for r in runs]
    e50, e99, g50, g99 = med(runs, "e2e", 0), med(runs, "e2e", 1), med(runs, "get", 0), med(runs, "get", 1)
    print("system/fleet_patch_to_redis %d pods, steady: p50 %.1f ms, p99 %.1f ms = %.1f / %.1f x the API server's GET "
          "(p50 %.1f ms, p99 %.1f ms, same window); goal p99 <= 250 ms at 10 000 pods (median of %d runs x %d transitions)"
          % (n, ms(e50), ms(e99), e50 / g50, e99 / g99, ms(g50), ms(g99), RUNS, 2 * PATCHES))
    print("system/fleet_phases %d pods, steady: %s" % (n, phase_text(all_phases)))
    r50, r99 = med(runs, "ready", 0), med(runs, "ready", 1)
    print("system/fleet_ready_to_routable %d pods, steady: p50 %.1f ms, p99 %.1f ms = %.1f / %.1f x the API GET "
          "(from this script's watch seeing the pod Ready; median of %d runs x %d pods)"
          % (n, ms(r50), ms(r99), r50 / g50, r99 / g99, RUNS, max(3, PATCHES // 4)))
    footprint(n)


def vm_hwm_kib(pid):
    with open("/proc/%d/status" % pid) as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:"))


def published_by_operator():
    """The pods the operator has published since it started (its routestate_published_pods)."""
    try:
        with urllib.request.urlopen(os.environ["METRICS"], timeout=10) as resp:
            text = resp.read().decode()
    except OSError:  # not listening yet
        return 0
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith("routestate_published_pods{"))


def restarted(n):
    """The operator was just restarted on a fleet of n pods: how long until it published every
    pod again, and its footprint then (its peak too: the first list of every pod)."""
    wait(lambda: published_by_operator() >= n, 600, "the restarted operator to publish %d pods" % n, every=0.05)
    took = time.time() - float(os.environ["OP_STARTED"])
    print("system/fleet_restart %d pods: the restarted operator published every pod %.1f s after it started; "
          "its VmHWM (peak) %.1f MiB (goal <= 96 MiB at 10 000)" % (n, took, vm_hwm_kib(OP_PID) / 1024))
    footprint(n, "after a restart")


def footprint(n, when="steady"):
    rss, cpu, rcpu = [], [], []
    for _ in range(RUNS):
        c0, r0, t0 = cpu_seconds(OP_PID), cpu_seconds(REDIS_PID), time.time()
        time.sleep(3 * PERIOD)  # the measurement window itself, not a synchronisation
        c1, r1, t1 = cpu_seconds(OP_PID), cpu_seconds(REDIS_PID), time.time()
        periods = (t1 - t0) / PERIOD
        cpu.append((c1 - c0) / periods)
        rcpu.append((r1 - r0) / periods)
        rss.append(rss_kib(OP_PID))
    c, rc, m = statistics.median(cpu), statistics.median(rcpu), statistics.median(rss)
    print("system/fleet_footprint %d pods, %s: operator VmRSS %.1f MiB (%.1f KiB per pod with the process base; "
          "goal <= 96 MiB at 10 000), peak VmHWM %.1f MiB; CPU %.1f ms per heartbeat period = %.2f x Redis' %.1f ms "
          "for the same writes (every pod republished each %d s; median of %d windows of 3 periods)"
          % (n, when, m / 1024, m / n, vm_hwm_kib(OP_PID) / 1024, ms(c), c / rc if rc else float("nan"), ms(rc),
             PERIOD, RUNS))


def poll_routable(ups, found, done):
    r = Redis(REDIS_PORT)
    seen = set()
    while not done.is_set():
        for s in ups:
            fields = r.call("HGETALL", state_key(s)) or []
            t = time.time()
            for i in range(0, len(fields), 2):
                name = "%s-%s" % (s, fields[i])
                if name not in seen and fields[i + 1].rsplit("-", 1)[1] == "0":
                    seen.add(name)
                    found.put((name, t))
        time.sleep(0.002)


def scaleup(n):
    base = ["svc-%d" % i for i in range(n // PER_SET)]
    ups = ["up-%d" % i for i in range(UP_SETS)]
    ensure_services(ups, 0)
    wait(lambda: all(routing(redis, s, 0) is None for s in ups), 60, "the scale-up sets to be empty", every=0.1)
    runs, all_phases = [], []
    for run in range(RUNS):
        # Each new pod's first moment READY in Redis, polled by a process of its own, so the
        # probe's patches and this script's watches do not delay it (nor it them).
        found, done = mp.Queue(), mp.Event()
        poller = mp.Process(target=poll_routable, args=(ups, found, done), daemon=True)
        poller.start()
        routable_at = {}

        def drain():
            while True:
                try:
                    name, t = found.get_nowait()
                except queue.Empty:
                    return len(routable_at)
                routable_at.setdefault(name, t)

        writes_before = api_writes()
        t_start = time.time()
        for s in ups:
            scale(s, PER_SET)
        total = UP_SETS * PER_SET
        samples, gets = [], []
        patch_samples(base, 0, run, samples, gets, stop=lambda: drain() >= total or time.time() - t_start > 900)
        wait(lambda: drain() >= total, 900, "%d new pods routable" % total, every=0.05)
        t_all = max(routable_at.values()) - t_start
        t_end = time.time()
        total_w, events_w, status_w = (a - b for a, b in zip(api_writes(), writes_before))
        # The operator's share of the API server's writes while the pods started: its Events and
        # its RouteState status patches (the only client that writes those).
        own = operator_events(t_start, t_end) + status_w
        with lock:
            lags = [max(0.0, routable_at[p] - ready_at[p]) for p in routable_at if p in ready_at]
            t_ready = max(ready_at[p] for p in routable_at if p in ready_at) - t_start
        done.set()
        poller.join()
        log("scale-up %d: %d pods Ready in %.0f s, routable in %.0f s, %d patch samples"
            % (run, total, t_ready, t_all, len(samples)))
        runs.append({"e2e": summary([s["e2e"] for s in samples]), "get": summary(gets), "ready": summary(lags),
                     "t_ready": (t_ready, 0), "t_all": (t_all, 0), "n": (len(samples), 0),
                     "writes": (total_w / (t_end - t_start), 0), "events": (events_w, 0),
                     "own_events": (own - status_w, 0), "own_status": (status_w, 0), "share": (own / total_w, 0)})
        all_phases.append(phases(samples))
        for s in ups:
            scale(s, 0)
        wait(lambda: published(ups) == 0 and ready_count("up-") == 0, 600, "the scale-up to be undone", every=0.2)
    e50, e99, g50, g99 = med(runs, "e2e", 0), med(runs, "e2e", 1), med(runs, "get", 0), med(runs, "get", 1)
    print("system/fleet_patch_to_redis %d pods, during a %d-pod scale-up: p50 %.1f ms, p99 %.1f ms = %.1f / %.1f x the "
          "API server's GET (p50 %.1f ms, p99 %.1f ms, same window); goal p99 <= 1 s (median of %d scale-ups, %.0f "
          "transitions each)" % (n, total, ms(e50), ms(e99), e50 / g50, e99 / g99, ms(g50), ms(g99), RUNS,
                                 med(runs, "n", 0)))
    print("system/fleet_phases %d pods, during the scale-up: %s" % (n, phase_text(all_phases)))
    r50, r99 = med(runs, "ready", 0), med(runs, "ready", 1)
    print("system/fleet_ready_to_routable %d pods, during the scale-up: p50 %.1f ms, p99 %.1f ms = %.1f / %.1f x the "
          "API GET, over all %d new pods; all Ready %.1f s and all routable %.1f s after the scale-up began (median of %d)"
          % (n, ms(r50), ms(r99), r50 / g50, r99 / g99, total, med(runs, "t_ready", 0), med(runs, "t_all", 0), RUNS))
    print("system/fleet_api_writes %d pods, during the scale-up: the API server took %.0f writes/s from all clients "
          "(%.0f Events); the operator's were %.0f Events and %.0f RouteState status patches = %.1f %% of all writes "
          "(median of %d)" % (n, med(runs, "writes", 0), med(runs, "events", 0), med(runs, "own_events", 0),
                              med(runs, "own_status", 0), 100 * med(runs, "share", 0), RUNS))


def main():
    cmd, n = sys.argv[1], int(sys.argv[2])
    if n % PER_SET or n <= 0:
        raise SystemExit("bench-fleet: the size must be a positive multiple of %d, not %d" % (PER_SET, n))
    if cmd == "restarted":  # timed from the operator's start: no watch to list first
        return restarted(n)
    watches = [Watch(RS, on_routestate), Watch("/api/v1/namespaces/%s/pods" % NS, on_pod)]
    for w in watches:
        w.start()
    for w in watches:
        w.ready.wait(60) or sys.exit("bench-fleet: the watch of %s did not start" % w.path)
    {"steady": steady, "scaleup": scaleup}[cmd](n)


if __name__ == "__main__":
    main()
