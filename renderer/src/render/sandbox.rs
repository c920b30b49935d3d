//! One KarsSandbox: its namespace and identity, then (in the other modules) its policies,
//! NetworkPolicy, Deployment and Service.

use std::collections::BTreeMap;

use kars_contract::labels::SANDBOX_LABEL;
use kars_contract::router::{
    ADMIN_TOKEN_SECRET, AUDIT_KEY_DATA, AUDIT_KEY_SECRET, GATEWAY_TOKEN_SECRET, TOKEN_KEY,
};
use serde_json::{Map, json};

use super::policies::{self, ApprovalsBySandbox, PodPolicies, Sandbox};
use super::{Ctx, deployment, network, sandbox_namespace};
use crate::api::KarsSandbox;
use crate::rendered::{GeneratedSecret, RouterExpectation};
use crate::repo::{Index, SourceObject};

/// Renders everything a sandbox implies.
pub(super) fn render(
    ctx: &mut Ctx<'_>,
    o: &SourceObject,
    sb: &KarsSandbox,
    index: &Index<'_>,
    approvals: &ApprovalsBySandbox<'_>,
) {
    let name = o.name.as_str();
    let cr_ns = o.namespace.as_deref().unwrap_or_default();
    let ns = sandbox_namespace(name);
    let src = o.file.as_str();
    identity(ctx, o, sb, &ns);

    let mut pod = PodPolicies::default();
    let Some(extra_ports) = policies::egress(ctx, o, sb, &ns, approvals, &mut pod) else {
        return;
    };
    let governance_on = sb.spec.governance.as_ref().is_none_or(|g| g.enabled);
    let s = Sandbox {
        o,
        sb,
        ns: &ns,
        index,
    };
    if governance_on {
        policies::agt_profile(ctx, &s, &mut pod);
    }
    let inference = policies::inference(ctx, &s, &mut pod);
    policies::memory(ctx, &s, &mut pod);
    if governance_on {
        policies::mcp_servers(ctx, &s, &mut pod);
    }

    network::network_policy(ctx, src, name, &ns, &extra_ports, governance_on);
    let egress_mode = sb
        .spec
        .network_policy
        .as_ref()
        .map_or("Learn", |n| n.egress_mode.as_str());
    let expected = std::mem::take(&mut pod.expected);
    let d = deployment::sandbox_deployment(
        ctx,
        o,
        sb,
        &ns,
        cr_ns,
        egress_mode,
        governance_on,
        &inference,
        pod,
    );
    ctx.push(d, src);
    ctx.routers.push(RouterExpectation {
        namespace: ns.clone(),
        deployment: name.to_string(),
        pod_selector: BTreeMap::from([(SANDBOX_LABEL.to_string(), name.to_string())]),
        policies: expected,
        should_run: sb.spec.suspended != Some(true),
    });
    if governance_on {
        deployment::service(ctx, src, name, &ns, sb.spec.runtime.kind);
    }
}

/// Namespace, ServiceAccounts, the spawner ClusterRoleBinding and the tokens generated in the
/// cluster.
fn identity(ctx: &mut Ctx<'_>, o: &SourceObject, sb: &KarsSandbox, ns: &str) {
    let name = o.name.as_str();
    let src = o.file.as_str();
    let spec = &sb.spec;
    let sandbox_labels = |ctx: &Ctx<'_>| ctx.labels(&[(SANDBOX_LABEL, name)]);

    let ns_labels = ctx.labels(&[
        ("app.kubernetes.io/name", "kars"),
        ("app.kubernetes.io/component", "sandbox"),
        (SANDBOX_LABEL, name),
        ("kars.azure.com/role", "sandbox"),
        ("kars.azure.com/isolated", "strict"),
        ("pod-security.kubernetes.io/enforce", "privileged"),
        ("pod-security.kubernetes.io/audit", "baseline"),
        ("pod-security.kubernetes.io/warn", "baseline"),
    ]);
    ctx.push(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns, "labels": ns_labels}}), src);

    let sa_labels = sandbox_labels(ctx);
    ctx.push(
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "sandbox", "namespace": ns, "labels": sa_labels}}),
        src,
    );
    if !spec.azure_services.is_empty() {
        let mut ann = Map::new();
        for (i, s) in spec.azure_services.iter().enumerate() {
            ann.insert(format!("kars.azure.com/service-{i}"), json!(s.service));
            if let Some(a) = &s.account {
                ann.insert(format!("kars.azure.com/service-{i}-account"), json!(a));
            }
            if !s.permissions.is_empty() {
                ann.insert(
                    format!("kars.azure.com/service-{i}-permissions"),
                    json!(s.permissions.join(",")),
                );
            }
        }
        let labels = sandbox_labels(ctx);
        ctx.push(
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": name, "namespace": ns, "labels": labels, "annotations": ann}}),
            src,
        );
    }
    let crb_labels = sandbox_labels(ctx);
    ctx.push(
        json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": format!("kars-spawner-{name}"), "labels": crb_labels},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "kars-sandbox-spawner"},
            "subjects": [{"kind": "ServiceAccount", "name": "sandbox", "namespace": ns}],
        }),
        src,
    );
    for (secret, key, bytes) in [
        (GATEWAY_TOKEN_SECRET, TOKEN_KEY, 16),
        (ADMIN_TOKEN_SECRET, TOKEN_KEY, 32),
        (AUDIT_KEY_SECRET, AUDIT_KEY_DATA, 32),
    ] {
        ctx.secrets.push(GeneratedSecret {
            namespace: ns.to_string(),
            name: secret.to_string(),
            key: key.to_string(),
            random_bytes: bytes,
            source: src.to_string(),
        });
    }
}
