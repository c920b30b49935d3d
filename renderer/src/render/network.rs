//! The sandbox NetworkPolicy: default deny, with the egress the pod needs (DNS, the metadata
//! endpoint for workload identity, HTTPS to public addresses, other sandboxes' runtime gateways,
//! the mesh, the kars system) plus the ports the allowlist and approvals name, and ingress to
//! the router from the kars system only.
//!
//! Who may reach a sandbox, explicitly: the kars system namespaces on the router port (the
//! agent's enforcement probe, with the admin token) and, with governance on, other sandboxes
//! on the runtime's gateway ports (18789, 18791) only. Upstream also admits other sandboxes to
//! the router port 8443; here nothing on it is meant for them — its decision and inference
//! routes answer only the pod itself and the rest needs the admin token — so it is not opened.

use std::collections::BTreeSet;

use kars_contract::labels::{COMPONENT_LABEL, SANDBOX_LABEL};
use kars_contract::router::PORT as ROUTER_PORT;
use serde_json::{Value, json};

use super::Ctx;

/// The runtime gateway ports other sandboxes may reach (OpenClaw's and Hermes' agent gateway).
pub const GATEWAY_PORTS: [u16; 2] = [18789, 18791];

fn tcp_ports(ports: &[u16]) -> Vec<Value> {
    ports
        .iter()
        .map(|p| json!({"protocol": "TCP", "port": p}))
        .collect()
}

/// Pushes the NetworkPolicy of sandbox `name` in `ns`.
pub(super) fn network_policy(
    ctx: &mut Ctx<'_>,
    src: &str,
    name: &str,
    ns: &str,
    extra_ports: &BTreeSet<i64>,
    governance_on: bool,
) {
    let mut egress = vec![
        json!({"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kube-system"}}}, {"ipBlock": {"cidr": "10.0.0.10/32"}}],
               "ports": [{"protocol": "UDP", "port": 53}, {"protocol": "TCP", "port": 53}]}),
        json!({"to": [{"ipBlock": {"cidr": "169.254.169.254/32"}}], "ports": [{"protocol": "TCP", "port": 80}]}),
        json!({"to": [{"ipBlock": {"cidr": "0.0.0.0/0", "except": ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16"]}}],
               "ports": [{"protocol": "TCP", "port": 443}]}),
        json!({"to": [{"namespaceSelector": {"matchLabels": {"kars.azure.com/role": "sandbox"}}}], "ports": tcp_ports(&GATEWAY_PORTS)}),
        json!({"to": [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "agentmesh"}}}],
               "ports": tcp_ports(&[8765, 8080, 8083, 8082])}),
        json!({"to": [{"namespaceSelector": {"matchLabels": {"app.kubernetes.io/name": "kars", "app.kubernetes.io/component": "system"}}}],
               "ports": [{"protocol": "TCP", "port": 5000}]}),
    ];
    for p in extra_ports {
        egress.push(json!({"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}], "ports": [{"protocol": "TCP", "port": p}]}));
    }
    let system_ns = json!({"namespaceSelector": {"matchLabels": {"app.kubernetes.io/name": "kars", "app.kubernetes.io/component": "system"}}});
    let mut ingress =
        vec![json!({"from": [system_ns], "ports": [{"protocol": "TCP", "port": ROUTER_PORT}]})];
    if governance_on {
        ingress.push(json!({"from": [{"namespaceSelector": {"matchLabels": {"kars.azure.com/role": "sandbox"}}}],
            "ports": tcp_ports(&GATEWAY_PORTS)}));
    }
    let labels = ctx.labels(&[(SANDBOX_LABEL, name)]);
    ctx.push(
        json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": "sandbox-policy", "namespace": ns, "labels": labels},
            "spec": {
                "podSelector": {"matchLabels": {COMPONENT_LABEL: "sandbox"}},
                "policyTypes": ["Egress", "Ingress"],
                "egress": egress,
                "ingress": ingress,
            },
        }),
        src,
    );
}
