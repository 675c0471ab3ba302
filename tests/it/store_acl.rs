//! The Redis ACL recipe for pods (`store::acl`, docs/operations.md "Redis ACL for pods") on a
//! private Redis: a pod's user does its whole job — reports, links, the dataset check — in its
//! own namespace, and every write beyond it is refused with a clear error and changes nothing.

use routestate::core::ErrorChain;
use std::{collections::BTreeMap, time::Duration};

use routestate::{
    core::{CpuFactor, Floor, Keys, PodPlan, PodReport, RoutingState, ServicePlan},
    server::{RedisTransport, ServerConfig, ServerDriver},
    store::{LinkTtl, RedisOptions, ReportOutcome, Store, acl},
};

use crate::support::faults::PrivateRedis;

fn plan(ns: &str) -> ServicePlan {
    let pod = PodPlan { floor: Floor { routing: RoutingState::Ready, load: None }, report: PodReport::default() };
    ServicePlan {
        namespace: ns.into(),
        service: "game".into(),
        period_secs: 30,
        cpu_factor: CpuFactor::DEFAULT,
        replicas: 2,
        pods: BTreeMap::from([(0, pod), (1, pod)]),
        workload: None,
    }
}

/// DUMP of every key of both namespaces (what must not change).
async fn dump(admin: &Store) -> BTreeMap<String, redis::Value> {
    let mut conn = admin.conn();
    let keys: Vec<String> = redis::cmd("KEYS").arg("sf:*").query_async(&mut conn).await.unwrap();
    let mut out = BTreeMap::new();
    for k in keys {
        out.insert(k.clone(), redis::cmd("DUMP").arg(&k).query_async(&mut conn).await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pods_user_writes_only_its_namespaces_reports_and_links() {
    let redis = PrivateRedis::start();
    let admin = Store::connect(&RedisOptions::standalone(redis.url())).await.unwrap();
    let password = format!("pw-{:x}", rand::random::<u64>());
    let user = acl::pod_user_name("apps");
    let rules = acl::pod_user_rules("apps", &format!(">{password}")).unwrap();
    let _: () = redis::cmd("ACL").arg("SETUSER").arg(&user).arg(&rules).query_async(&mut admin.conn()).await.unwrap();
    // The operator publishes both namespaces.
    for result in admin.publish(&[plan("apps"), plan("other")]).await {
        result.unwrap();
    }
    admin.set_linked_pod("other", "u1", "game", 1, LinkTtl::Persistent).await.unwrap();

    let pod = Store::connect(&RedisOptions {
        op_timeout: Duration::from_secs(3),
        ..RedisOptions::standalone(format!("redis://{user}:{password}@127.0.0.1:{}", redis.port))
    })
    .await
    .unwrap_or_else(|e| panic!("connecting as {user}: {e}"));

    // Its whole job, in its namespace.
    let report = PodReport { load_state: 100, waiting_tasks: 10, routing: RoutingState::Ready };
    assert_eq!(
        pod.report_pod_state("apps", "game", 0, &report).await.unwrap(),
        ReportOutcome::Published { routing: RoutingState::Ready, weighted_load: 37 }
    );
    assert_eq!(pod.set_linked_pod("apps", "u1", "game", 0, LinkTtl::Persistent).await.unwrap(), None);
    assert!(pod.try_set_linked_pod("apps", "u2", "game", 1, LinkTtl::Persistent).await.unwrap().success);
    assert_eq!(pod.get_linked_pod("apps", "u1", "game").await.unwrap(), Some(0));
    assert_eq!(pod.get_link_services("apps", "u1").await.unwrap().get("game"), Some(&0));
    assert!(pod.remove_linked_pod("apps", "u2", "game", 0).await.unwrap());
    let transport = RedisTransport::new(pod.clone(), "apps", "game", 1).unwrap();
    let driver = ServerDriver::new(pod.clone(), transport, ServerConfig::new("apps", "game", 1)).unwrap();
    driver.start().await.unwrap_or_else(|e| panic!("the server role as {user}: {e}"));
    driver.set_load_state(50).await.unwrap();
    driver.check_dataset().await.unwrap_or_else(|e| panic!("the dataset check as {user}: {e}"));

    // Everything beyond it: refused, naming the key, nothing changed.
    let before = dump(&admin).await;
    let denied = [
        ("another namespace's report", pod.report_pod_state("other", "game", 0, &report).await.map(drop)),
        ("another namespace's link", pod.set_linked_pod("other", "u1", "game", 0, LinkTtl::Persistent).await.map(drop)),
        ("another namespace's link, removed", pod.remove_linked_pod("other", "u1", "game", 0).await.map(drop)),
    ];
    for (what, result) in denied {
        let e = result.expect_err(what).chain().to_string();
        assert!(e.to_lowercase().contains("noperm") && e.contains("sf:{other:"), "{what}: {e}");
        assert!(!e.contains(&password), "{what}: the error shows the password: {e}");
    }
    let floor = Keys::state_floor("apps", "game").unwrap();
    let meta = Keys::state_meta("apps", "game").unwrap();
    let mut conn = pod.conn();
    let raw: [(&str, redis::Cmd); 4] = [
        ("its own floor, HSET", redis::cmd("HSET").arg(&floor).arg("0").arg("0").clone()),
        ("its own meta, HSET", redis::cmd("HSET").arg(&meta).arg("cpuFactorPpm").arg("0").clone()),
        (
            "its own floor through EVAL",
            redis::cmd("EVAL").arg("return redis.call('HSET', KEYS[1], '0', '0')").arg(1).arg(&floor).clone(),
        ),
        (
            "another namespace's state, HSET",
            redis::cmd("HSET").arg("sf:{other:state:game}").arg("0").arg("1-1-0").clone(),
        ),
    ];
    for (what, cmd) in raw {
        let e = cmd.query_async::<redis::Value>(&mut conn).await.expect_err(what).chain().to_string();
        assert!(e.to_lowercase().contains("noperm"), "{what}: {e}");
    }
    assert_eq!(dump(&admin).await, before, "a refused write changed something");
}

/// The recipe in docs/operations.md is exactly what `store::acl` generates.
#[test]
fn the_documented_recipe_is_the_generated_one() {
    let doc = std::fs::read_to_string(crate::support::cli::repo_root().join("docs/operations.md")).unwrap();
    let line = doc.lines().find(|l| l.starts_with("ACL SETUSER routestate-pods-apps ")).expect("the recipe line");
    let generated = format!(
        "ACL SETUSER {} {}",
        acl::pod_user_name("apps"),
        acl::pod_user_rules("apps", ">PASSWORD").unwrap().join(" ")
    );
    assert_eq!(line, generated, "docs/operations.md is out of date: write the generated line");
}
