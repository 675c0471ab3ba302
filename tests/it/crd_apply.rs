//! The generated CRD applied as users apply it (`kubectl apply`, client- and server-side, created
//! and changed) draws no warning from the API server — its schema carries only formats the API
//! server knows — and the ranges those formats stood for are still enforced. The CRD is applied
//! under a group and names of its own, so the cluster's RouteState CRD is not touched and
//! `kubectl get routestates` stays unambiguous for the other tests meanwhile.

use serde_yaml::Value;

use crate::support::{
    self, TestNamespace,
    cli::{ok, repo_root, run},
};

/// Kind of the test copy.
const KIND: &str = "FormatProbe";

/// The committed CRD (`crds/routestate.yaml`, what `routestate crd` prints) under `group`, with
/// kind [`KIND`] (same schema, other names).
fn crd_in(group: &str) -> Value {
    let path = repo_root().join("crds/routestate.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let mut crd: Value = serde_yaml::from_str(&text).unwrap();
    crd["metadata"]["name"] = format!("formatprobes.{group}").into();
    crd["spec"]["group"] = group.into();
    crd["spec"]["names"] =
        serde_yaml::from_str(&format!("{{kind: {KIND}, plural: formatprobes, singular: formatprobe}}")).unwrap();
    crd
}

fn schema(crd: &mut Value) -> &mut Value {
    &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
}

/// Applies `crd` with `kubectl apply` and returns its stderr (where kubectl prints the API
/// server's warnings); fails the test if the apply fails.
async fn apply(crd: &Value, server_side: bool) -> String {
    let mut args = vec!["apply", "-f", "-"];
    if server_side {
        args.extend(["--server-side", "--force-conflicts", "--field-manager=crd-apply-test"]);
    }
    let out = run("kubectl", &args, Some(&serde_yaml::to_string(crd).unwrap())).await;
    assert!(out.ok, "kubectl {}: {}", args.join(" "), out.stderr);
    out.stderr
}

/// Deletes the test CRD (and its objects) when the test ends, however it ends.
struct DeleteCrd(String);

impl Drop for DeleteCrd {
    fn drop(&mut self) {
        let _ = std::process::Command::new(support::cli::testbin("kubectl"))
            .args(["delete", "crd", &self.0, "--wait=false", "--ignore-not-found"])
            .output();
    }
}

#[tokio::test]
async fn applying_the_crd_prints_no_warning_and_its_ranges_hold() {
    let client = support::kube_client().await;
    let group = format!("{}.test.routestate.dev", support::unique_name("fmt"));
    let name = format!("formatprobes.{group}");
    let _delete = DeleteCrd(name.clone());
    let crd = crd_in(&group);

    // Created, then changed (a schema change, as an upgrade makes), client- and server-side.
    let stderr = apply(&crd, false).await;
    assert!(stderr.trim().is_empty(), "creating the CRD printed:\n{stderr}");
    let mut changed = crd.clone();
    schema(&mut changed)["spec"]["description"] = "A changed description.".into();
    let stderr = apply(&changed, true).await;
    assert!(stderr.trim().is_empty(), "changing the CRD printed:\n{stderr}");
    // The warning this guards against, on the same CRD: the formats schemars writes by default.
    let mut unsigned = crd.clone();
    schema(&mut unsigned)["spec"]["properties"]["updatePeriodSeconds"]["format"] = "uint32".into();
    let stderr = apply(&unsigned, true).await;
    assert!(stderr.contains(r#"unrecognized format "uint32""#), "no warning for format uint32:\n{stderr}");
    let stderr = apply(&crd, true).await;
    assert!(stderr.trim().is_empty(), "re-applying the generated CRD printed:\n{stderr}");
    ok("kubectl", &["wait", "--for=condition=Established", &format!("crd/{name}"), "--timeout=60s"], None).await;

    // The ranges still hold: in the spec, and in the status (u32 counts, no format left to say so).
    let ns = TestNamespace::new(&client, "crd-fmt").await;
    let create = |obj: &str, spec: serde_json::Value| {
        let manifest = serde_json::json!({
            "apiVersion": format!("{group}/v1alpha1"), "kind": KIND,
            "metadata": {"name": obj, "namespace": ns.name}, "spec": spec,
        });
        async move { run("kubectl", &["create", "-f", "-"], Some(&manifest.to_string())).await }
    };
    for (obj, spec, field) in [
        ("index", serde_json::json!({"pods": [{"index": 1_000_001, "routingState": "Ready"}]}), "spec.pods[0].index"),
        ("period", serde_json::json!({"updatePeriodSeconds": 301}), "spec.updatePeriodSeconds"),
        ("load", serde_json::json!({"pods": [{"index": 0, "loadState": -1}]}), "spec.pods[0].loadState"),
    ] {
        let out = create(obj, spec.clone()).await;
        assert!(!out.ok && out.stderr.contains(field), "{spec} was not rejected naming {field}: {out:?}");
    }
    let out =
        create("good", serde_json::json!({"pods": [{"index": 1_000_000, "loadState": 1_000_000_000_000u64}]})).await;
    assert!(out.ok && out.stderr.trim().is_empty(), "{out:?}");
    let resource = format!("{name}/good");
    let patch_status = |replicas: i64| {
        let patch = serde_json::json!({"status": {"replicas": replicas}}).to_string();
        let resource = resource.clone();
        let ns = ns.name.clone();
        async move {
            run("kubectl", &["patch", &resource, "-n", &ns, "--subresource=status", "--type=merge", "-p", &patch], None)
                .await
        }
    };
    for bad in [i64::from(u32::MAX) + 1, -1] {
        let out = patch_status(bad).await;
        assert!(!out.ok && out.stderr.contains("status.replicas"), "status.replicas {bad} was accepted: {out:?}");
    }
    let out = patch_status(i64::from(u32::MAX)).await;
    assert!(out.ok, "status.replicas {} was rejected: {out:?}", u32::MAX);
}
