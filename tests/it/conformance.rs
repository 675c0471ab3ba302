//! The wire contract's conformance suite (`tests/conformance/*.yaml`, format in
//! docs/wire-contract.md §9), run against real Redis — standalone and Cluster — through the
//! exact script text routestate sends. Every case: write its initial keys, run its operation,
//! compare the reply, then every key the case involves. All failures are reported at the end,
//! each with its file, case name and what differed.

use std::{collections::BTreeMap, path::Path};

use redis::Value;
use routestate::{
    core::{CpuFactor, Keys, PodState, Workload, weighted_load},
    store::{Store, scripts},
};
use serde::Deserialize;
use serde_json::{Value as Json, json};

use crate::support::unique_name;

/// One file of cases.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Suite {
    /// What the file covers (for people).
    #[serde(default)]
    #[allow(dead_code)]
    doc: String,
    cases: Vec<Case>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Case {
    name: String,
    /// The rule the case checks (for people).
    #[serde(default)]
    #[allow(dead_code)]
    doc: String,
    /// Keys written before the operation.
    #[serde(default)]
    given: BTreeMap<String, Data>,
    #[serde(with = "serde_yaml::with::singleton_map")]
    op: Op,
    /// The expected reply.
    reply: Json,
    /// The keys the operation changed: a key's new value, or `~` (null) when it must be gone.
    /// Every other given key must be as given; every other key of the operation absent.
    #[serde(default)]
    after: BTreeMap<String, Option<Data>>,
}

/// A key's value (exactly one of string, hash, zset) and its TTL: seconds in `given`, a class
/// in `after` (`none`, `temp`, `any`, or `{min, max}` seconds; default `none`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct Data {
    string: Option<String>,
    hash: Option<BTreeMap<String, String>>,
    /// `[member, score]` pairs; in `after`, in the sorted set's order.
    zset: Option<Vec<(String, String)>>,
    ttl: Option<Ttl>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(untagged)]
enum Ttl {
    Seconds(u64),
    Class(TtlClass),
    Range {
        #[serde(default)]
        min: u64,
        max: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(rename_all = "snake_case")]
enum TtlClass {
    None,
    Temp,
    Any,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum Op {
    /// A script by name, with its KEYS and ARGV.
    Script { name: String, keys: Vec<String>, argv: Vec<String> },
    /// A pod state string: `[load, time, routing]` or `invalid`.
    ParseState(String),
    /// A workload value (padded with spaces to `pad_to` bytes): the object or `invalid`.
    ParseWorkload {
        value: String,
        #[serde(default)]
        pad_to: usize,
    },
    /// The weighted load of a report with a cpu factor in millionths.
    WeightedLoad { cpu_factor_ppm: u32, waiting_tasks: u64, load_state: u64 },
    /// A key from its parts: the key or `invalid`.
    Key {
        kind: String,
        ns: String,
        #[serde(default)]
        svc: String,
        #[serde(default)]
        uid: String,
    },
    /// The good set a reader judges from the service's keys, ascending.
    Good { svc: String, range: u64, fallback_window_ms: u64 },
}

fn script(name: &str) -> Option<&'static redis::Script> {
    Some(match name {
        "set_link" => &scripts::SET_LINK,
        "set_link_if_absent" => &scripts::SET_LINK_IF_ABSENT,
        "try_set_link" => &scripts::TRY_SET_LINK,
        "remove_link" => &scripts::REMOVE_LINK,
        "get_link_if_persist" => &scripts::GET_LINK_IF_PERSIST,
        "pick_and_link" => &scripts::PICK_AND_LINK,
        "pick_candidate" => &scripts::PICK_CANDIDATE,
        "link_if_unchanged" => &scripts::LINK_IF_UNCHANGED,
        "publish" => &scripts::PUBLISH,
        "report" => &scripts::REPORT,
        _ => return None,
    })
}

/// Replaces `$NS` and `${NOW}`, `${NOW-<ms>}`, `${NOW+<ms>}` (the Redis time at the case's
/// start); `${T}` is left for matching.
fn subst(s: &str, ns: &str, now: u64) -> String {
    let mut out = s.replace("$NS", ns);
    while let Some(start) = out.find("${NOW") {
        let end = start + out[start..].find('}').expect("an unterminated ${NOW…}");
        let expr = &out[start + 5..end];
        let value = match expr.split_at_checked(1) {
            None => now,
            Some(("-", d)) => now - d.parse::<u64>().expect("${NOW-<ms>}"),
            Some(("+", d)) => now + d.parse::<u64>().expect("${NOW+<ms>}"),
            _ => panic!("bad time expression ${{NOW{expr}}}"),
        };
        out.replace_range(start..=end, &value.to_string());
    }
    out
}

/// Whether `actual` is `expected` with each `${T}` a decimal time in `[t0, t1]`.
fn matches_text(expected: &str, actual: &str, (t0, t1): (u64, u64)) -> bool {
    let mut parts = expected.split("${T}");
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = actual.strip_prefix(first) else { return false };
    for literal in parts {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        let Ok(t) = rest[..digits].parse::<u64>() else { return false };
        if !(t0..=t1).contains(&t) {
            return false;
        }
        let Some(r) = rest[digits..].strip_prefix(literal) else { return false };
        rest = r;
    }
    rest.is_empty()
}

/// `actual` matches `expected`: equal, with `${T}` for times and `{error: prefix}` for errors.
fn matches(expected: &Json, actual: &Json, times: (u64, u64)) -> bool {
    match (expected, actual) {
        (Json::String(e), Json::String(a)) => matches_text(e, a, times),
        (Json::String(e), Json::Number(a)) => matches_text(e, &a.to_string(), times),
        (Json::Array(e), Json::Array(a)) => e.len() == a.len() && e.iter().zip(a).all(|(e, a)| matches(e, a, times)),
        (Json::Object(e), Json::Object(a)) if e.len() == 1 && e.contains_key("error") => {
            match (&e["error"], a.get("error")) {
                (Json::String(prefix), Some(Json::String(msg))) => msg.starts_with(prefix.as_str()),
                _ => false,
            }
        }
        (Json::Object(e), Json::Object(a)) => {
            e.len() == a.len() && e.iter().all(|(k, v)| a.get(k).is_some_and(|a| matches(v, a, times)))
        }
        _ => expected == actual,
    }
}

fn to_json(v: Value) -> Json {
    match v {
        Value::Nil => Json::Null,
        Value::Int(i) => json!(i),
        Value::BulkString(b) => Json::String(String::from_utf8_lossy(&b).into_owned()),
        Value::SimpleString(s) => Json::String(s),
        Value::Okay => json!("OK"),
        Value::Array(a) | Value::Set(a) => Json::Array(a.into_iter().map(to_json).collect()),
        Value::ServerError(e) => json!({"error": format!("{} {}", e.code(), e.details().unwrap_or_default())}),
        other => json!(format!("{other:?}")),
    }
}

fn error_json(e: &redis::RedisError) -> Json {
    json!({"error": format!("{} {}", e.code().unwrap_or("?"), e.detail().unwrap_or_default())})
}

/// A key as stored: its data (a TTL class from its PTTL), `None` when absent.
async fn read_key(store: &Store, key: &str) -> Option<(Json, i64)> {
    let mut conn = store.conn();
    let kind: String = redis::cmd("TYPE").arg(key).query_async(&mut conn).await.unwrap();
    let data = match kind.as_str() {
        "none" => return None,
        "string" => json!({"string": redis::cmd("GET").arg(key).query_async::<String>(&mut conn).await.unwrap()}),
        "hash" => {
            json!({"hash": redis::cmd("HGETALL").arg(key).query_async::<BTreeMap<String, String>>(&mut conn).await.unwrap()})
        }
        "zset" => {
            let flat: Vec<String> =
                redis::cmd("ZRANGE").arg(key).arg(0).arg(-1).arg("WITHSCORES").query_async(&mut conn).await.unwrap();
            json!({"zset": flat.chunks(2).map(|c| [c[0].clone(), c[1].clone()]).collect::<Vec<_>>()})
        }
        other => json!({ "type": other }),
    };
    let pttl: i64 = redis::cmd("PTTL").arg(key).query_async(&mut conn).await.unwrap();
    Some((data, pttl))
}

fn data_json(d: &Data, ns: &str, now: u64) -> Json {
    let s = |v: &str| subst(v, ns, now);
    match (&d.string, &d.hash, &d.zset) {
        (Some(v), None, None) => json!({"string": s(v)}),
        (None, Some(h), None) => json!({"hash": h.iter().map(|(f, v)| (s(f), s(v))).collect::<BTreeMap<_, _>>()}),
        (None, None, Some(z)) => json!({"zset": z.iter().map(|(m, sc)| [s(m), s(sc)]).collect::<Vec<_>>()}),
        _ => panic!("a key needs exactly one of string, hash, zset: {d:?}"),
    }
}

async fn write_key(store: &Store, key: &str, d: &Data, ns: &str, now: u64) {
    let mut conn = store.conn();
    let cmd = match data_json(d, ns, now) {
        Json::Object(o) if o.contains_key("string") => {
            let mut c = redis::cmd("SET");
            c.arg(key).arg(o["string"].as_str().unwrap());
            c
        }
        Json::Object(o) if o.contains_key("hash") => {
            let mut c = redis::cmd("HSET");
            c.arg(key);
            for (f, v) in o["hash"].as_object().unwrap() {
                c.arg(f).arg(v.as_str().unwrap());
            }
            c
        }
        Json::Object(o) => {
            let mut c = redis::cmd("ZADD");
            c.arg(key);
            for pair in o["zset"].as_array().unwrap() {
                c.arg(pair[1].as_str().unwrap()).arg(pair[0].as_str().unwrap());
            }
            c
        }
        other => unreachable!("{other}"),
    };
    let _: () = cmd.query_async(&mut conn).await.unwrap_or_else(|e| panic!("writing {key}: {e}"));
    match &d.ttl {
        None => {}
        Some(Ttl::Seconds(s)) => {
            let _: () = redis::cmd("EXPIRE").arg(key).arg(s).query_async(&mut conn).await.unwrap();
        }
        Some(other) => panic!("a given key's ttl is in seconds, not {other:?}"),
    }
}

fn ttl_ok(ttl: &Ttl, pttl: i64) -> bool {
    match ttl {
        Ttl::Class(TtlClass::None) => pttl == -1,
        Ttl::Class(TtlClass::Temp) => pttl > 0,
        Ttl::Class(TtlClass::Any) => true,
        Ttl::Range { min, max } => pttl > 0 && pttl >= (*min as i64) * 1000 && pttl <= (*max as i64) * 1000,
        Ttl::Seconds(s) => pttl > 0 && pttl <= (*s as i64) * 1000,
    }
}

/// Runs the operation; `None` when it cannot run on this topology (a script whose KEYS span
/// hash slots, on Redis Cluster).
async fn run_op(store: &Store, op: &Op, ns: &str, now: u64) -> Option<Json> {
    let invalid = || json!("invalid");
    Some(match op {
        Op::Script { name, keys, argv } => {
            let script = script(name).unwrap_or_else(|| panic!("no script named {name:?}"));
            let keys: Vec<String> = keys.iter().map(|k| subst(k, ns, now)).collect();
            let slots: std::collections::BTreeSet<u16> =
                keys.iter().map(|k| routestate::core::keys::hash_slot(k)).collect();
            if store.conn().is_cluster() && slots.len() > 1 {
                return None;
            }
            let mut cmd = redis::cmd("EVALSHA");
            cmd.arg(script.get_hash()).arg(keys.len()).arg(&keys);
            for a in argv {
                cmd.arg(subst(a, ns, now));
            }
            let mut conn = store.conn();
            let reply = match cmd.query_async::<Value>(&mut conn).await {
                Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) => {
                    script.load_async(&mut conn).await.unwrap();
                    cmd.query_async::<Value>(&mut conn).await
                }
                r => r,
            };
            match reply {
                Ok(v) => to_json(v),
                Err(e) => error_json(&e),
            }
        }
        Op::ParseState(v) => match PodState::parse(&subst(v, ns, now)) {
            Ok(s) => json!([s.weighted_load, s.updated_at_ms, s.routing.ordinal()]),
            Err(_) => invalid(),
        },
        Op::ParseWorkload { value, pad_to } => {
            let padded = format!("{value:<pad_to$}");
            match Workload::parse(&padded) {
                Ok(w) => serde_json::to_value(&w).unwrap(),
                Err(_) => invalid(),
            }
        }
        Op::WeightedLoad { cpu_factor_ppm, waiting_tasks, load_state } => match CpuFactor::from_ppm(*cpu_factor_ppm) {
            Some(cpu) => json!(weighted_load(cpu, *waiting_tasks, *load_state)),
            None => invalid(),
        },
        Op::Key { kind, ns: key_ns, svc, uid } => {
            let key_ns = subst(key_ns, ns, now);
            let key = match kind.as_str() {
                "state" => Keys::state(&key_ns, svc),
                "meta" => Keys::state_meta(&key_ns, svc),
                "floor" => Keys::state_floor(&key_ns, svc),
                "report" => Keys::state_report(&key_ns, svc),
                "ready" => Keys::state_index(&key_ns, svc),
                "epoch" => Keys::state_epoch(&key_ns, svc),
                "workload" => Keys::workload(&key_ns, svc),
                "link_hash" => Keys::link_hash(&key_ns, uid),
                "link" => Keys::link(&key_ns, uid, svc),
                other => panic!("no key kind {other:?}"),
            };
            key.map_or_else(|_| invalid(), Json::String)
        }
        Op::Good { svc, range, fallback_window_ms } => {
            let states = store.read_service(ns, svc).await.unwrap();
            json!(states.snapshot(*fallback_window_ms, *range).good_pods())
        }
    })
}

fn op_keys(op: &Op, ns: &str, now: u64) -> Vec<String> {
    match op {
        Op::Script { keys, .. } => keys.iter().map(|k| subst(k, ns, now)).collect(),
        _ => Vec::new(),
    }
}

/// Runs one case; `Ok(false)` when skipped on this topology, `Err` with every difference.
async fn run_case(store: &Store, case: &Case) -> Result<bool, Vec<String>> {
    let ns = unique_name("conf");
    let now = store.server_time_ms().await.unwrap();
    for (key, data) in &case.given {
        write_key(store, &subst(key, &ns, now), data, &ns, now).await;
    }
    let Some(reply) = run_op(store, &case.op, &ns, now).await else { return Ok(false) };
    let times = (now, store.server_time_ms().await.unwrap());
    let mut diffs = Vec::new();
    let want_reply: Json = serde_json::from_str(&subst(&case.reply.to_string(), &ns, now)).unwrap();
    if !matches(&want_reply, &reply, times) {
        diffs.push(format!("reply: expected {want_reply}, got {reply}"));
    }
    let none = Ttl::Class(TtlClass::None);
    let mut expected: BTreeMap<String, Option<(Json, Ttl)>> = case
        .given
        .iter()
        .map(|(k, d)| (subst(k, &ns, now), Some((data_json(d, &ns, now), d.ttl.clone().unwrap_or(none.clone())))))
        .collect();
    for (k, d) in &case.after {
        let d = d.as_ref().map(|d| (data_json(d, &ns, now), d.ttl.clone().unwrap_or(none.clone())));
        expected.insert(subst(k, &ns, now), d);
    }
    let mut involved: Vec<String> = case.given.keys().map(|k| subst(k, &ns, now)).collect();
    involved.extend(op_keys(&case.op, &ns, now));
    involved.extend(expected.keys().cloned());
    involved.sort();
    involved.dedup();
    for key in involved {
        let got = read_key(store, &key).await;
        match (expected.get(&key).and_then(Option::as_ref), got) {
            (None, None) => {}
            (None, Some((data, _))) => diffs.push(format!("key {key}: expected absent, got {data}")),
            (Some((data, _)), None) => diffs.push(format!("key {key}: expected {data}, got absent")),
            (Some((want, ttl)), Some((data, pttl))) => {
                if !matches(want, &data, times) {
                    diffs.push(format!("key {key}: expected {want}, got {data}"));
                }
                if !ttl_ok(ttl, pttl) {
                    diffs.push(format!("key {key}: expected TTL {ttl:?}, got PTTL {pttl} ms"));
                }
            }
        }
    }
    if diffs.is_empty() { Ok(true) } else { Err(diffs) }
}

fn load_suites() -> Vec<(String, Suite)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no cases in {}", dir.display());
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).unwrap();
            let suite: Suite = serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            (p.file_name().unwrap().to_string_lossy().into_owned(), suite)
        })
        .collect()
}

/// Runs suites, returning (cases run, cases skipped, failures naming file and case).
async fn run_suites(store: &Store, suites: &[(String, Suite)]) -> (usize, usize, Vec<String>) {
    let (mut ran, mut skipped, mut failures) = (0, 0, Vec::new());
    for (file, suite) in suites {
        let mut names = std::collections::BTreeSet::new();
        for case in &suite.cases {
            assert!(names.insert(&case.name), "{file}: two cases named {:?}", case.name);
            match run_case(store, case).await {
                Ok(true) => ran += 1,
                Ok(false) => skipped += 1,
                Err(diffs) => {
                    ran += 1;
                    failures.push(format!("{file}: {}:\n    {}", case.name, diffs.join("\n    ")));
                }
            }
        }
    }
    (ran, skipped, failures)
}

async fn the_suite_passes(store: Store) {
    let suites = load_suites();
    let (ran, skipped, failures) = run_suites(&store, &suites).await;
    eprintln!("conformance: {ran} cases run, {skipped} skipped on this topology, {} failed", failures.len());
    assert!(failures.is_empty(), "{} of {ran} conformance cases failed:\n{}", failures.len(), failures.join("\n"));
    assert!(ran > skipped, "most cases must run");
}

crate::both!(the_suite_passes);

/// The runner itself: a wrong expected reply and a wrong resulting key are reported with the
/// case's name and both values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_reports_what_differs() {
    let store = crate::support::store::standalone().await;
    let wrong: Suite = serde_yaml::from_str(
        r#"
cases:
  - name: a deliberately wrong case
    op:
      script: {name: set_link, keys: ["sf:{$NS:lk:u}web", "sf:{$NS:lk:u}"], argv: [web, "3", "-1"]}
    reply: 7
    after:
      "sf:{$NS:lk:u}web": {string: "4"}
"#,
    )
    .unwrap();
    let (ran, _, failures) = run_suites(&store, &[("inline.yaml".into(), wrong)]).await;
    assert_eq!((ran, failures.len()), (1, 1), "{failures:?}");
    let f = &failures[0];
    for want in [
        "inline.yaml: a deliberately wrong case",
        "reply: expected 7, got -1",
        r#"expected {"string":"4"}, got {"string":"3"}"#,
        "expected absent, got {\"hash\":{\"web\":\"3\"}}",
    ] {
        assert!(f.contains(want), "{want:?} missing in {f}");
    }
    assert!(matches_text("1-${T}-0", "1-5-0", (5, 5)) && !matches_text("1-${T}-0", "1-6-0", (5, 5)));
    assert_eq!(subst("a${NOW-5}b${NOW}c${NOW+1}", "n", 10), "a5b10c11");
}

/// The original driver's Lua scripts against keys routestate wrote, row by row as the
/// compatibility table of docs/wire-contract.md §10 states it. The scripts are not part of this
/// repository: give the folder holding them (`statefulSetLink.lua`, …, as the original driver
/// ships them) in `ROUTESTATE_ORIGINAL_LUA_DIR`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the original driver's scripts: ROUTESTATE_ORIGINAL_LUA_DIR=<dir> cargo test --test it original_driver -- --ignored"]
async fn original_driver_scripts_against_v1_keys() {
    use routestate::{
        core::RoutingState,
        store::{LinkTtl, PickParams},
    };
    let dir = std::env::var("ROUTESTATE_ORIGINAL_LUA_DIR")
        .expect("ROUTESTATE_ORIGINAL_LUA_DIR: the folder holding the original driver's Lua scripts");
    let store = crate::support::store::standalone().await;
    let eval = |name: &str, keys: Vec<String>, argv: Vec<String>| {
        let path = Path::new(&dir).join(format!("{name}.lua"));
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let mut conn = store.conn();
        async move {
            let mut cmd = redis::cmd("EVAL");
            cmd.arg(text).arg(keys.len()).arg(keys).arg(argv);
            cmd.query_async::<Value>(&mut conn).await.map(to_json).unwrap_or_else(|e| error_json(&e))
        }
    };
    let ns = unique_name("original");
    let (link, hash, state) =
        (Keys::link(&ns, "u", "web").unwrap(), Keys::link_hash(&ns, "u").unwrap(), Keys::state(&ns, "web").unwrap());
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();

    // statefulComputeLinkIfAbsent cannot read v1 states (three fields) ...
    let now = store.server_time_ms().await.unwrap();
    store.set_pod_states(&ns, "web", &[(0, PodState::new(100, now, RoutingState::Ready))]).await.unwrap();
    let target = format!("sf:{{{ns}:target}}");
    let got = eval("statefulComputeLinkIfAbsent", vec![target.clone(), state.clone()], s(&["web", "0"])).await;
    let msg = got["error"].as_str().unwrap_or_else(|| panic!("no error: {got}"));
    assert!(msg.contains("attempt to compare number with nil"), "{msg}");
    // ... but reads the older two-field states, which routestate's readers skip as garbage.
    let old = unique_name("original-old");
    let old_state = Keys::state(&old, "web").unwrap();
    let _: () = redis::cmd("HSET")
        .arg(&old_state)
        .arg("0")
        .arg(format!("100-{now}"))
        .arg("1")
        .arg(format!("50-{now}"))
        .query_async(&mut store.conn())
        .await
        .unwrap();
    let old_target = format!("sf:{{{old}:target}}");
    assert_eq!(eval("statefulComputeLinkIfAbsent", vec![old_target, old_state], s(&["web", "0"])).await, json!(["1"]));
    let read = store.read_service(&old, "web").await.unwrap().snapshot(60_000, 500);
    assert_eq!((read.pods().count(), read.skipped.len()), (0, 2));

    // statefulSetLink writes what routestate reads as a persistent link; its reply is a list.
    assert_eq!(eval("statefulSetLink", vec![link.clone(), hash.clone()], s(&["web", "3", "-1"])).await, json!(["-1"]));
    assert_eq!(store.get_linked_pod_if_persist(&ns, "u", "web").await.unwrap(), Some(3));
    assert_eq!(store.get_link_services(&ns, "u").await.unwrap().get("web"), Some(&3));
    assert!(!store.try_set_linked_pod(&ns, "u", "web", 5, LinkTtl::Persistent).await.unwrap().success);
    // statefulSetLinkIfAbsent and statefulTrySetLink respect routestate's links alike.
    assert_eq!(
        eval("statefulSetLinkIfAbsent", vec![link.clone(), hash.clone()], s(&["web", "5", "-1"])).await,
        json!(["3"])
    );
    assert_eq!(
        eval("statefulTrySetLink", vec![link.clone(), hash.clone()], s(&["web", "5", "-1"])).await,
        json!(["3"])
    );
    assert_eq!(eval("statefulGetLinkIfPersist", vec![link.clone()], vec![]).await, json!(["3"]));
    assert_eq!(eval("statefulGetLinkService", vec![hash.clone()], vec![]).await, json!(["web", "3"]));
    // statefulRemoveLink never delays: the link is gone at once even with persistSeconds 60.
    assert_eq!(eval("statefulRemoveLink", vec![link.clone(), hash.clone()], s(&["web", "60"])).await, json!([1]));
    assert_eq!(store.get_linked_pod(&ns, "u", "web").await.unwrap(), None);
    // A temporary link routestate placed: the original's readers see it as not persistent.
    let params = PickParams { temp_ttl_secs: 300, random: 0, range: 500, fallback_window_ms: 60_000 };
    assert_eq!(store.pick_and_link(&ns, "u", "web", params).await.unwrap().map(|p| p.pod), Some(0));
    assert_eq!(eval("statefulGetLinkIfPersist", vec![link.clone()], vec![]).await, json!(["-1"]));
    assert_eq!(
        eval("statefulRemoveLinkWithId", vec![link.clone(), hash.clone()], s(&["web", "0", "0"])).await,
        json!([1])
    );
    assert_eq!(store.get_linked_pod(&ns, "u", "web").await.unwrap(), None);
}
