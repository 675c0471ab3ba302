#!/usr/bin/env python3
"""What one write to a RouteState costs the API server, by the size of its status
(`hack/bench-cluster.sh`, on its private cluster before the fleet exists).

  bench-apicost.py API TOKEN APISERVER_PID

The operator's status patch (server-side apply, as the operator sends it) with 0, 20 and 100
pods listed, a user's drain (a merge patch of spec.pods) of a RouteState whose status lists 20
or 100 pods, and an Event (the operator's other write), each as the API server's CPU per
request from /proc, REQUESTS requests in a row, median of RUNS runs; printed beside the same
server's CPU for a GET of a RouteState in the same run. Prints "system/api_cost ..." lines.
"""
import os
import statistics
import sys
import time

from benchlib import Api, cpu_seconds

API_URL, TOKEN, API_PID = sys.argv[1], sys.argv[2], int(sys.argv[3])
RUNS, REQUESTS = int(os.environ.get("RUNS", "3")), int(os.environ.get("REQUESTS", "200"))
NS = "bench-apicost"
GROUP = "/apis/routestate.dev/v1alpha1/namespaces/%s/routestates" % NS
APPLY = "application/apply-patch+yaml"
api = Api(API_URL, TOKEN)


def routestate(name):
    api.call("POST", GROUP, {"apiVersion": "routestate.dev/v1alpha1", "kind": "RouteState",
                             "metadata": {"name": name}, "spec": {}}, "application/json")


def status(listed, k):
    """A status as the operator writes it, `listed` pods in it; `k` changes a condition's
    message so that every apply is a real change."""
    pods = [{"index": i, "name": "web-%d" % i, "ready": True, "routingState": "Ready"} for i in range(listed)]
    return {"apiVersion": "routestate.dev/v1alpha1", "kind": "RouteState",
            "status": {"observedGeneration": 1, "replicas": 100, "readyPods": 100, "routablePods": 100,
                       "pods": pods, "unlistedPods": 100 - listed,
                       "conditions": [{"type": "Ready", "status": "True", "reason": "Published", "message": "m%d" % k,
                                       "lastTransitionTime": "2026-01-01T00:00:00Z", "observedGeneration": 1}]}}


def apply_status(name, listed):
    return lambda k: api.call("PATCH", "%s/%s/status?fieldManager=routestate-operator&force=true" % (GROUP, name),
                              status(listed, k), APPLY)


def drain(name):
    return lambda k: api.call("PATCH", "%s/%s" % (GROUP, name),
                              {"spec": {"pods": [{"index": k % 100, "routingState": "DenyNewCall"}]}})


def event(k):
    return api.call("POST", "/apis/events.k8s.io/v1/namespaces/%s/events" % NS, {
        "metadata": {"generateName": "cost-"}, "eventTime": "2026-01-01T00:00:00.000000Z",
        "reportingController": "routestate-operator", "reportingInstance": "bench", "action": "PublishReady",
        "reason": "RoutingChanged", "type": "Normal", "note": "pod web-%d (index %d) of service s0: READY" % (k, k),
        "regarding": {"apiVersion": "routestate.dev/v1alpha1", "kind": "RouteState", "name": "s0", "namespace": NS}},
        "application/json")


def cpu_ms(request):
    """The API server's CPU per request, milliseconds, median of RUNS runs of REQUESTS."""
    runs = []
    for _ in range(RUNS):
        c0 = cpu_seconds(API_PID)
        for k in range(REQUESTS):
            request(k)
        runs.append((cpu_seconds(API_PID) - c0) / REQUESTS * 1000)
    return statistics.median(runs)


def main():
    api.call("POST", "/api/v1/namespaces", {"metadata": {"name": NS}}, "application/json")
    for name, listed in (("s0", 0), ("s20", 20), ("s100", 100)):
        routestate(name)
        apply_status(name, listed)(0)
    get = cpu_ms(lambda k: api.call("GET", "%s/s0" % GROUP))
    figures = [
        ("status apply, 0 pods listed", cpu_ms(apply_status("s0", 0))),
        ("status apply, 20 pods listed", cpu_ms(apply_status("s20", 20))),
        ("status apply, 100 pods listed", cpu_ms(apply_status("s100", 100))),
        ("a drain (spec merge patch), 20 pods listed", cpu_ms(drain("s20"))),
        ("a drain (spec merge patch), 100 pods listed", cpu_ms(drain("s100"))),
        ("an Event", cpu_ms(event)),
    ]
    for label, ms in figures:
        print("system/api_cost %s: %.2f ms of API server CPU per request = %.1f x a GET of a RouteState "
              "(%.2f ms; median of %d runs x %d requests)" % (label, ms, ms / get, get, RUNS, REQUESTS))
    api.call("DELETE", "/api/v1/namespaces/%s" % NS)


if __name__ == "__main__":
    t = time.time()
    main()
    print("bench-apicost: %.0f s" % (time.time() - t), file=sys.stderr)
