//! The CRD's validation, enforced by the real API server: bad RouteStates are rejected with a
//! message naming the field; defaults are applied to good ones.

use kube::{
    Api,
    api::{ApiResource, DynamicObject, PostParams},
};
use routestate::operator::RouteState;

use crate::support::{self, TestNamespace, operator::install_crd};

async fn create(api: &Api<DynamicObject>, name: &str, spec: serde_json::Value) -> Result<DynamicObject, String> {
    // Raw JSON, so no client-side type can reject or normalise the bad values first.
    let obj: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "routestate.dev/v1alpha1", "kind": "RouteState", "metadata": {"name": name}, "spec": spec
    }))
    .unwrap();
    api.create(&PostParams::default(), &obj).await.map_err(|e| e.to_string())
}

#[tokio::test]
async fn the_api_server_rejects_invalid_routestates_naming_the_field() {
    let client = support::kube_client().await;
    install_crd(&client).await;
    let ns = TestNamespace::new(&client, "op-crd").await;
    let api: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &ns.name, &ApiResource::erase::<RouteState>(&()));

    let cases = [
        (serde_json::json!({"cpuFactor": 1.5}), "spec.cpuFactor"),
        (serde_json::json!({"cpuFactor": -0.1}), "spec.cpuFactor"),
        (serde_json::json!({"updatePeriodSeconds": 0}), "spec.updatePeriodSeconds"),
        (serde_json::json!({"updatePeriodSeconds": 301}), "spec.updatePeriodSeconds"),
        (serde_json::json!({"routingState": "Drain"}), "spec.routingState"),
        (serde_json::json!({"pods": [{"index": -1, "routingState": "Ready"}]}), "spec.pods[0].index"),
        (serde_json::json!({"pods": [{"index": 1, "routingState": "Sleep"}]}), "spec.pods[0].routingState"),
        (serde_json::json!({"pods": [{"index": 1, "loadState": -5}]}), "spec.pods[0].loadState"),
        (
            serde_json::json!({"pods": [{"index": 1, "routingState": "Ready"}, {"index": 1, "routingState": "Shutdown"}]}),
            "spec.pods[1]",
        ),
        (serde_json::json!({"pods": [{"index": 2}]}), "spec.pods[0].routingState"),
        (serde_json::json!({"serviceName": "a{b}"}), "spec.serviceName"),
        (serde_json::json!({"statefulSet": "Not_A_Name"}), "spec.statefulSet"),
    ];
    for (i, (spec, field)) in cases.into_iter().enumerate() {
        let err = create(&api, &format!("bad-{i}"), spec.clone())
            .await
            .expect_err(&format!("the API server accepted {spec}"));
        assert!(err.contains(field), "rejection of {spec} does not name {field}: {err}");
        if field == "spec.pods[0].routingState" && spec["pods"][0].get("routingState").is_none() {
            assert!(err.contains("must set routingState or loadState"), "{err}");
        }
    }

    // A minimal RouteState gets every default.
    let ok = create(&api, "good", serde_json::json!({})).await.unwrap();
    let spec = &ok.data["spec"];
    assert_eq!(spec["routingState"], "Ready");
    assert_eq!(spec["cpuFactor"], 0.7);
    assert_eq!(spec["updatePeriodSeconds"], 10);
    let ok = create(
        &api,
        "overrides",
        serde_json::json!({"pods": [{"index": 0, "loadState": 5}, {"index": 3, "routingState": "Shutdown"}]}),
    )
    .await;
    assert!(ok.is_ok(), "{ok:?}");
}
