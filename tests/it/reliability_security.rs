//! Security: Redis with `requirepass` and TLS only (`rediss://`, a CA made by
//! the test) works end to end for the library and the operator, and the password never shows up
//! in what they log, report or expose.

use routestate::core::ErrorChain;
use std::{
    io::Write,
    sync::{Arc, Mutex},
    time::Duration,
};

use routestate::{
    client::{Client, ClientConfig},
    core::{PodState, RoutingState},
    store::{LinkTtl, PickParams, RedisOptions, Store},
};
use tracing_subscriber::fmt::MakeWriter;

use crate::support::{
    faults::{PrivateRedis, RedisSpec, TlsFiles},
    unique_name,
};

/// A log sink the tests read back.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogBuffer {
    type Writer = LogBuffer;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Captures every event at TRACE and above on this thread (use a current-thread runtime so
/// spawned tasks run here too) until the guard drops.
pub fn capture_logs() -> (LogBuffer, tracing::subscriber::DefaultGuard) {
    let buf = LogBuffer::default();
    let sub = tracing_subscriber::fmt()
        .with_writer(buf.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::TRACE)
        .finish();
    (buf.clone(), tracing::subscriber::set_default(sub))
}

/// A password that cannot appear anywhere by accident.
pub fn secret() -> String {
    format!("pw-{:016x}-{:016x}", rand::random::<u64>(), rand::random::<u64>())
}

/// A TLS-only, password-protected private Redis and its files.
pub fn secure_redis(password: &str) -> (PrivateRedis, TlsFiles) {
    let tls = TlsFiles::new();
    let redis = PrivateRedis::start_with(RedisSpec {
        password: Some(password.to_owned()),
        tls: Some((tls.ca_cert.clone(), tls.cert.clone(), tls.key.clone())),
    });
    (redis, tls)
}

fn opts(url: String, password: Option<&str>, ca: Option<&std::path::Path>) -> RedisOptions {
    RedisOptions {
        password: password.map(str::to_owned),
        ca_file: ca.map(|p| p.to_owned()),
        op_timeout: Duration::from_secs(3),
        ..RedisOptions::standalone(url)
    }
}

#[tokio::test]
async fn library_works_over_tls_with_a_password_and_never_shows_it() {
    let pw = secret();
    let (redis, tls) = secure_redis(&pw);
    let (logs, _guard) = capture_logs();
    let ns = unique_name("sec");

    // The password given separately, and the password inside the URL: both work.
    let good = opts(redis.url(), Some(&pw), Some(&tls.ca_cert));
    let in_url = opts(format!("rediss://:{pw}@127.0.0.1:{}", redis.port), None, Some(&tls.ca_cert));
    for o in [&good, &in_url] {
        assert!(!format!("{o:?}").contains(&pw), "RedisOptions' Debug shows the password: {o:?}");
        let store = Store::connect(o).await.unwrap_or_else(|e| panic!("connecting over TLS: {e}"));
        let now = store.server_time_ms().await.unwrap();
        store.set_pod_states(&ns, "svc", &[(0, PodState::new(5, now, RoutingState::Ready))]).await.unwrap();
        store.set_update_period(&ns, "svc", 10).await.unwrap();
        let params = PickParams { temp_ttl_secs: 60, random: 7, range: 500, fallback_window_ms: 30_000 };
        let placed = store.pick_and_link(&ns, "u1", "svc", params).await.unwrap();
        assert_eq!(placed.map(|p| p.pod), Some(0));
        let t = store.try_set_linked_pod(&ns, "u2", "svc", 0, LinkTtl::Persistent).await.unwrap();
        assert!(t.success);
        assert_eq!(store.get_link_services(&ns, "u2").await.unwrap().get("svc"), Some(&0));
        // The client role (read model + placement) on the same connection.
        let client = Client::new(store.clone(), ClientConfig::default()).unwrap();
        assert_eq!(client.compute_linked_pod(&ns, "u3", "svc").await.unwrap(), 0);
        // A failing operation's error names the op and key, not the password.
        let err = store.get_linked_pod(&ns, "bad{uid", "svc").await.unwrap_err().chain().to_string();
        assert!(!err.contains(&pw), "{err}");
        // A warning the library logs (a garbage entry in a uid's link hash): the positive
        // control that the capture below sees the library's events at all.
        let hash = routestate::core::Keys::link_hash(&ns, "u-garbage").unwrap();
        let _: () =
            redis::cmd("HSET").arg(&hash).arg("svc").arg("not-a-pod").query_async(&mut store.conn()).await.unwrap();
        assert!(store.get_link_services(&ns, "u-garbage").await.unwrap().is_empty());
    }

    // Each way to get it wrong fails, within the timeout, with an error that names the server and
    // its cause (not a bare timeout) and does not contain the password.
    let wrong_pw = format!("{pw}-wrong");
    let cases: Vec<(&str, RedisOptions, &[&str])> = vec![
        (
            "wrong password",
            opts(redis.url(), Some(&wrong_pw), Some(&tls.ca_cert)),
            &["WRONGPASS", "authentication failed"],
        ),
        (
            "wrong password in the URL",
            opts(format!("rediss://:{wrong_pw}@127.0.0.1:{}", redis.port), None, Some(&tls.ca_cert)),
            &["WRONGPASS", "authentication failed"],
        ),
        ("no password", opts(redis.url(), None, Some(&tls.ca_cert)), &["NOAUTH", "Authentication"]),
        (
            "untrusted certificate (no CA given)",
            opts(redis.url(), Some(&pw), None),
            &["certificate", "Certificate", "UnknownIssuer"],
        ),
        (
            // The TLS server drops a connection that does not start a handshake.
            "plain redis:// against the TLS port",
            opts(format!("redis://127.0.0.1:{}", redis.port), Some(&pw), None),
            &["Connection reset by peer", "Broken pipe", "end of file", "connection closed"],
        ),
    ];
    for (what, o, expect) in cases {
        let result = match Store::connect(&o).await {
            Ok(store) => store.server_time_ms().await.map(|_| ()),
            Err(e) => Err(e),
        };
        let err = result.expect_err(what).chain().to_string();
        let full = format!("{err} / {:?}", err);
        assert!(!full.contains(&pw), "{what}: the error shows the password: {full}");
        assert!(expect.iter().any(|e| full.contains(e)), "{what}: unclear error: {full}");
        assert!(!full.contains("timed out"), "{what}: a timeout instead of its cause: {full}");
        assert!(
            full.contains(&redis.port.to_string()) || full.contains("TIME"),
            "{what}: error names no server: {full}"
        );
    }

    let text = logs.text();
    assert!(
        text.contains("skipping a link that is not a pod index") && text.contains(&ns),
        "the log capture saw nothing of the library:\n{text:.2000}"
    );
    assert!(!text.contains(&pw), "the password appears in the logs:\n{text}");
}

/// The operator against the TLS + password Redis, with the password inside the URL (the case
/// most likely to leak): it publishes, and neither its logs, Events, status nor metrics show the
/// password, also while Redis is down and every publish fails with an error naming the server.
#[tokio::test]
async fn operator_works_over_tls_with_a_password_and_never_shows_it() {
    use k8s_openapi::api::{apps::v1::StatefulSet, events::v1::Event};
    use kube::{
        Api,
        api::{ListParams, PostParams},
    };
    use routestate::operator::{Operator, OperatorConfig, RouteState};

    use crate::support::{self, TestNamespace, faults::http_get, operator::install_crd, wait_for};

    let pw = secret();
    let (mut redis, tls) = secure_redis(&pw);
    let (logs, _guard) = capture_logs();
    let client = support::kube_client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "sec-op").await;
    let url = format!("rediss://:{pw}@127.0.0.1:{}", redis.port);
    let operator = Operator::start(OperatorConfig {
        client: client.clone(),
        redis: RedisOptions {
            ca_file: Some(tls.ca_cert.clone()),
            op_timeout: Duration::from_secs(2),
            ..RedisOptions::standalone(&url)
        },
        namespace: Some(ns.name.clone()),
        lease: None,
        http_addr: Some("127.0.0.1:0".parse().unwrap()),
        instance: unique_name("op"),
    })
    .await
    .unwrap_or_else(|e| panic!("starting the operator over TLS: {e}"));
    let addr = operator.http_addr().unwrap();
    ns.api::<StatefulSet>().create(&PostParams::default(), &crate::cluster_smoke::statefulset("web", 2)).await.unwrap();
    let rs: RouteState = serde_json::from_value(serde_json::json!({
        "apiVersion": "routestate.dev/v1alpha1", "kind": "RouteState",
        "metadata": {"name": "web"}, "spec": {"updatePeriodSeconds": 1}
    }))
    .unwrap();
    let rs_api: Api<RouteState> = ns.api();
    rs_api.create(&PostParams::default(), &rs).await.unwrap();

    let store = Store::connect(&opts(redis.url(), Some(&pw), Some(&tls.ca_cert))).await.unwrap();
    wait_for("2 pods published over TLS", Duration::from_secs(60), || async {
        let s = store.read_service(&ns.name, "web").await.map_err(|e| e.to_string())?;
        if s.entries.len() == 2 { Ok(()) } else { Err(format!("{:?}", s.entries)) }
    })
    .await;

    // Redis goes away: the failures are reported (status, metrics, /readyz), without the password.
    redis.kill();
    wait_for("RedisSynced False", Duration::from_secs(60), || async {
        let rs = rs_api.get("web").await.map_err(|e| e.to_string())?;
        let c = rs.status.iter().flat_map(|s| s.conditions.clone()).find(|c| c.type_ == "RedisSynced");
        match c {
            Some(c) if c.status == "False" => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let readyz = http_get(addr, "/readyz").await.unwrap_or_default();
    let metrics = http_get(addr, "/metrics").await.unwrap_or_default();
    let status = serde_json::to_string(&rs_api.get("web").await.unwrap().status).unwrap();
    let events = ns.api::<Event>().list(&ListParams::default()).await.unwrap();
    let events = serde_json::to_string(&events.items).unwrap();
    operator.shutdown().await.unwrap();
    let logs = logs.text();
    assert!(logs.contains("127.0.0.1"), "the log capture saw nothing of the operator:\n{logs:.2000}");
    for (what, text) in [
        ("logs", logs.as_str()),
        ("events", &events),
        ("status", &status),
        ("/readyz", &readyz.1),
        ("/metrics", &metrics.1),
    ] {
        assert!(!text.contains(&pw), "the password appears in the operator's {what}:\n{text:.4000}");
    }
    assert!(status.contains("RedisSynced"), "{status}");
}
