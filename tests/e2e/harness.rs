//! Proves the harness runs a real API server: schema validation and CRD establishment happen
//! server-side, exactly as in a cluster.

use anyhow::{Result, bail, ensure};
use kars_e2e::{Cluster, TestNamespace, block_on, unique_name};
use libtest_mimic::Trial;

use crate::trial;

pub fn tests() -> Vec<Trial> {
    vec![
        trial(
            "harness::api_server_enforces_crd_schema",
            api_server_enforces_crd_schema,
        ),
        trial(
            "harness::controller_manager_creates_replicasets",
            controller_manager_creates_replicasets,
        ),
    ]
}

fn api_server_enforces_crd_schema() -> Result<()> {
    let cluster = Cluster::shared()?;
    let group = format!("{}.e2e.kars.io", unique_name("widgets"));
    let crd = format!(
        r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.{group}
spec:
  group: {group}
  names: {{kind: Widget, plural: widgets, singular: widget}}
  scope: Namespaced
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            required: [size]
            properties:
              size: {{type: integer, minimum: 1, maximum: 10}}
"#
    );
    let dir = tempfile::tempdir()?;
    let crd_file = dir.path().join("crd.yaml");
    std::fs::write(&crd_file, crd)?;
    let crd_path = crd_file.to_string_lossy().to_string();
    let (ok, _, err) = cluster.kubectl(&["apply", "-f", &crd_path])?;
    ensure!(ok, "applying the CRD failed: {err}");
    cluster.wait_established("the CRD", &[&format!("crd/widgets.{group}")])?;

    let ns = TestNamespace::create(cluster, "harness-schema")?;
    let object = |size: i64| {
        format!(
            "apiVersion: {group}/v1\nkind: Widget\nmetadata: {{name: w{size}, namespace: {}}}\nspec: {{size: {size}}}\n",
            ns.name()
        )
    };
    let good = dir.path().join("good.yaml");
    std::fs::write(&good, object(3))?;
    let (ok, _, err) = cluster.kubectl(&["apply", "-f", &good.to_string_lossy()])?;
    ensure!(ok, "a valid Widget was rejected: {err}");

    let bad = dir.path().join("bad.yaml");
    std::fs::write(&bad, object(99))?;
    let (ok, _, err) = cluster.kubectl(&["apply", "-f", &bad.to_string_lossy()])?;
    if ok {
        bail!("the API server accepted spec.size=99 although the schema says maximum 10");
    }
    ensure!(
        err.contains("spec.size") && err.contains("10"),
        "unexpected rejection text: {err}"
    );
    let _ = cluster.kubectl(&["delete", "crd", &format!("widgets.{group}"), "--wait=false"]);
    Ok(())
}

fn controller_manager_creates_replicasets() -> Result<()> {
    let cluster = Cluster::shared()?;
    let ns = TestNamespace::create(cluster, "harness-kcm")?;
    block_on(async {
        use k8s_openapi::api::apps::v1::ReplicaSet;
        use kube::api::{Api, ListParams};
        let (ok, _, err) = cluster.kubectl(&[
            "-n",
            ns.name(),
            "create",
            "deployment",
            "web",
            "--image=example.invalid/web:1",
        ])?;
        ensure!(ok, "creating a Deployment failed: {err}");
        let client = cluster.client().await?;
        let rs: Api<ReplicaSet> = Api::namespaced(client, ns.name());
        for _ in 0..100 {
            if !rs.list(&ListParams::default()).await?.items.is_empty() {
                return Ok(());
            }
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        bail!("no ReplicaSet appeared within 10 s: kube-controller-manager is not reconciling")
    })
}
