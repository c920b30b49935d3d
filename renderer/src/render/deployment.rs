//! The sandbox Deployment (egress-guard init container, the agent container, the router
//! sidecar with its policy mounts) and the Service in front of the router.

use std::collections::BTreeSet;

use kars_contract::labels::{COMPONENT_LABEL, SANDBOX_LABEL};
use kars_contract::router::{
    self, ADMIN_TOKEN_DIR, ADMIN_TOKEN_FILE_NAME, ADMIN_TOKEN_SECRET, AGENT_UID, AUDIT_DIR,
    BUDGET_FILE, FORWARD_PROXY_PORT, LOG_DIR, METRICS_PORT, PORT as ROUTER_PORT, ROUTER_UID,
    STATE_DIR, TOKEN_KEY, env,
};
use serde_json::{Value, json};

use super::Ctx;
use super::policies::{InferenceSettings, PodPolicies};
use crate::api::{self, KarsSandbox, RuntimeKind};
use crate::repo::SourceObject;

/// Image of the agent container for a runtime kind.
pub fn runtime_image(images: &crate::config::Images, sb: &KarsSandbox) -> String {
    let rt = &sb.spec.runtime;
    if let Some(img) = rt.byo.as_ref().map(|b| b.image.clone()) {
        return img;
    }
    if let Some(img) = rt.openclaw.as_ref().and_then(|o| o.image.clone()) {
        return img;
    }
    if let Some(img) = images.runtimes.get(rt.kind.as_str()) {
        return img.clone();
    }
    let slug = match rt.kind {
        RuntimeKind::OpenClaw => "openclaw",
        RuntimeKind::OpenAIAgents => "openai-agents",
        RuntimeKind::MicrosoftAgentFramework => "maf",
        RuntimeKind::SemanticKernel => "semantic-kernel",
        RuntimeKind::LangGraph => "langgraph",
        RuntimeKind::Anthropic => "anthropic",
        RuntimeKind::PydanticAi => "pydantic-ai",
        RuntimeKind::Hermes => "hermes",
        RuntimeKind::Byo => "byo",
    };
    format!("karsacr.azurecr.io/kars-runtime-{slug}:latest")
}

const RESERVED_ENV_PREFIXES: [&str; 5] = ["AGT_", "FOUNDRY_AGENT_", "AZURE_", "IMDS_", "KARS_"];

fn is_env_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && (b[0].is_ascii_alphabetic() || b[0] == b'_')
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_')
}

fn user_env(sb: &KarsSandbox) -> Vec<Value> {
    let rt = &sb.spec.runtime;
    let extra = rt
        .openclaw
        .as_ref()
        .and_then(|r| r.extra_env.clone())
        .or_else(|| {
            rt.code_blocks()
                .into_iter()
                .flatten()
                .find_map(|r| r.extra_env.clone())
        });
    let mut out = Vec::new();
    if let Some(Value::Object(m)) = extra {
        let mut keys: Vec<&String> = m.keys().collect();
        keys.sort();
        for k in keys {
            if !is_env_name(k) || RESERVED_ENV_PREFIXES.iter().any(|p| k.starts_with(p)) {
                continue;
            }
            let v = match &m[k] {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            out.push(json!({"name": k, "value": v}));
        }
    }
    if let Some(byo) = &rt.byo {
        for e in &byo.env {
            if let Some(n) = e["name"].as_str()
                && is_env_name(n)
                && !RESERVED_ENV_PREFIXES.iter().any(|p| n.starts_with(p))
            {
                out.push(e.clone());
            }
        }
    }
    out
}

fn env_list(pairs: &[(String, String)]) -> Vec<Value> {
    pairs
        .iter()
        .map(|(k, v)| json!({"name": k, "value": v}))
        .collect()
}

/// The egress-guard script: the agent's user may reach only loopback and DNS; its :80/:443
/// is redirected to the router's forward proxy.
fn egress_guard_script() -> String {
    let uid = AGENT_UID;
    let proxy = FORWARD_PROXY_PORT;
    [
        "set -eu".to_string(),
        format!("iptables -A OUTPUT -m owner --uid-owner {uid} -o lo -j ACCEPT"),
        format!("iptables -A OUTPUT -m owner --uid-owner {uid} -p udp --dport 53 -j ACCEPT"),
        format!("iptables -A OUTPUT -m owner --uid-owner {uid} -p tcp --dport 53 -j ACCEPT"),
        format!(
            "iptables -A OUTPUT -m owner --uid-owner {uid} -m state --state ESTABLISHED,RELATED -j ACCEPT"
        ),
        format!("iptables -A OUTPUT -m owner --uid-owner {uid} -j DROP"),
        format!(
            "iptables -t nat -A OUTPUT -m owner --uid-owner {uid} ! -o lo -p tcp --dport 80 -j REDIRECT --to-port {proxy}"
        ),
        format!(
            "iptables -t nat -A OUTPUT -m owner --uid-owner {uid} ! -o lo -p tcp --dport 443 -j REDIRECT --to-port {proxy}"
        ),
    ]
    .join("\n")
}

/// The sandbox Deployment.
#[allow(clippy::too_many_arguments)]
pub(super) fn sandbox_deployment(
    ctx: &Ctx<'_>,
    o: &SourceObject,
    sb: &KarsSandbox,
    ns: &str,
    cr_ns: &str,
    egress_mode: &str,
    governance_on: bool,
    inference: &InferenceSettings,
    m: PodPolicies,
) -> Value {
    let model = inference.model.as_str();
    let name = o.name.as_str();
    let spec = &sb.spec;
    let s = &spec.sandbox;
    let confidential = s.isolation == "confidential";
    let seccomp = if s.isolation == "enhanced"
        && !s.seccomp_profile.is_empty()
        && s.seccomp_profile != "RuntimeDefault"
    {
        json!({"type": "Localhost", "localhostProfile": format!("profiles/{}.json", s.seccomp_profile)})
    } else {
        json!({"type": "RuntimeDefault"})
    };
    let mut pod_sc = json!({
        "runAsNonRoot": s.run_as_non_root,
        "runAsUser": AGENT_UID,
        "runAsGroup": AGENT_UID,
        "fsGroup": AGENT_UID,
        "seccompProfile": seccomp,
    });
    let selinux = s.selinux_context.as_str();
    if !selinux.is_empty() && selinux != api::SELINUX_DEFAULT_QUIRK {
        pod_sc["seLinuxOptions"] = json!({"type": selinux});
    }
    let kind = spec.runtime.kind;
    let container_name = if kind == RuntimeKind::OpenClaw {
        "openclaw"
    } else {
        "agent"
    };

    let mut agent_env = vec![
        ("KARS_MODEL".to_string(), model.to_string()),
        ("KARS_RUNTIME_CONTRACT_VERSION".into(), "v1".into()),
        ("KARS_RUNTIME_KIND".into(), kind.as_str().into()),
        (env::SANDBOX_NAME.into(), name.into()),
        ("KARS_MESH_PROVIDER".into(), "agt".into()),
        (
            "KARS_INFERENCE_URL".into(),
            format!("http://127.0.0.1:{ROUTER_PORT}/v1"),
        ),
        (
            "OPENAI_BASE_URL".into(),
            format!("http://127.0.0.1:{ROUTER_PORT}/v1"),
        ),
    ];
    if governance_on {
        agent_env.push((
            "KARS_GOVERNANCE_URL".into(),
            format!("http://127.0.0.1:{ROUTER_PORT}/governance/check"),
        ));
    }
    let mut env = env_list(&agent_env);
    let taken: BTreeSet<String> = agent_env.iter().map(|(k, _)| k.clone()).collect();
    env.extend(
        user_env(sb)
            .into_iter()
            .filter(|e| !taken.contains(e["name"].as_str().unwrap_or_default())),
    );

    let mut agent_mounts = vec![
        json!({"name": "sandbox-data", "mountPath": "/sandbox"}),
        json!({"name": "tmp", "mountPath": "/tmp"}),
    ];
    agent_mounts.extend(m.agent_mounts);
    // Upstream also mounts the router's admin token into OpenClaw/Hermes agent containers; we do
    // not: the agent is untrusted code and the token guards the router's admin endpoints.
    let mut agent_ports = Vec::new();
    if matches!(kind, RuntimeKind::OpenClaw | RuntimeKind::Hermes) {
        agent_ports.push(json!({"name": "gateway", "containerPort": 18789, "protocol": "TCP"}));
    }
    if kind == RuntimeKind::Hermes {
        agent_ports.push(json!({"name": "dashboard", "containerPort": 9119, "protocol": "TCP"}));
    }
    let resources = match &spec.resources {
        Some(r) => {
            json!({"requests": r.requests.clone().unwrap_or(json!({})), "limits": r.limits.clone().unwrap_or(json!({}))})
        }
        None => {
            json!({"requests": {"cpu": "500m", "memory": "1Gi"}, "limits": {"cpu": "2", "memory": "4Gi"}})
        }
    };
    let mut agent = json!({
        "name": container_name,
        "image": runtime_image(ctx.images, sb),
        "securityContext": {
            "runAsUser": AGENT_UID,
            "allowPrivilegeEscalation": s.allow_privilege_escalation,
            "readOnlyRootFilesystem": s.read_only_root_filesystem,
            "capabilities": {"drop": ["ALL"]},
        },
        "env": env,
        "envFrom": [{"secretRef": {"name": format!("{name}-credentials"), "optional": true}}],
        "volumeMounts": agent_mounts,
        "resources": resources,
        "livenessProbe": {"exec": {"command": ["test", "-f", "/proc/1/status"]}},
        "readinessProbe": {"exec": {"command": ["test", "-f", "/proc/1/status"]}},
    });
    if !agent_ports.is_empty() {
        agent["ports"] = json!(agent_ports);
    }
    if let Some(byo) = &spec.runtime.byo {
        if !byo.command.is_empty() {
            agent["command"] = json!(byo.command);
        }
        if !byo.args.is_empty() {
            agent["args"] = json!(byo.args);
        }
    }

    let mut router_env = vec![
        (env::SANDBOX_NAME.to_string(), name.to_string()),
        (env::SANDBOX_ISOLATION.into(), s.isolation.clone()),
        (env::EGRESS_MODE.into(), egress_mode.to_ascii_lowercase()),
        (env::ROUTER_PORT.into(), ROUTER_PORT.to_string()),
        (
            env::FORWARD_PROXY_PORT.into(),
            FORWARD_PROXY_PORT.to_string(),
        ),
        (env::METRICS_PORT.into(), METRICS_PORT.to_string()),
        (env::ADMIN_TOKEN_FILE.into(), router::admin_token_file()),
        (env::TOKEN_BUDGET_PERSIST_PATH.into(), BUDGET_FILE.into()),
        (env::AUDIT_DIR.into(), AUDIT_DIR.into()),
        (env::GOVERNANCE_ENABLED.into(), governance_on.to_string()),
    ];
    if let Some(d) = inference.daily_budget {
        router_env.push((env::TOKEN_BUDGET_DAILY.into(), d.to_string()));
    }
    if let Some(p) = inference.per_request {
        router_env.push((env::TOKEN_BUDGET_PER_REQUEST.into(), p.to_string()));
    }
    router_env.extend(m.router_env);
    let mut router_mounts = vec![
        json!({"name": "admin-token", "mountPath": ADMIN_TOKEN_DIR, "readOnly": true}),
        json!({"name": "router-state", "mountPath": STATE_DIR}),
        json!({"name": "router-audit", "mountPath": LOG_DIR}),
    ];
    router_mounts.extend(m.router_mounts);
    let router = json!({
        "name": router::CONTAINER,
        "image": ctx.images.router,
        "ports": [
            {"name": "inference", "containerPort": ROUTER_PORT, "protocol": "TCP"},
            {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"},
        ],
        "securityContext": {
            "runAsUser": ROUTER_UID,
            "runAsNonRoot": true,
            "allowPrivilegeEscalation": false,
            "readOnlyRootFilesystem": true,
            "capabilities": {"drop": ["ALL"]},
        },
        "resources": {"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "500m", "memory": "256Mi"}},
        "env": env_list(&router_env),
        "volumeMounts": router_mounts,
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": "inference"}},
        "readinessProbe": {"httpGet": {"path": "/healthz", "port": "inference"}},
    });
    let guard = json!({
        "name": "egress-guard",
        "image": ctx.images.egress_guard,
        "command": ["sh", "-c", egress_guard_script()],
        "securityContext": {
            "runAsUser": 0,
            "runAsNonRoot": false,
            "seccompProfile": {"type": "Unconfined"},
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
        },
        "resources": {"requests": {"cpu": "10m", "memory": "32Mi"}, "limits": {"cpu": "200m", "memory": "256Mi"}},
    });

    let mut volumes = vec![
        json!({"name": "sandbox-data", "emptyDir": {}}),
        json!({"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "4Gi"}}),
        json!({"name": "router-state", "emptyDir": {"sizeLimit": "16Mi"}}),
        json!({"name": "router-audit", "emptyDir": {"sizeLimit": "256Mi"}}),
        json!({"name": "admin-token", "secret": {"secretName": ADMIN_TOKEN_SECRET, "optional": true, "items": [{"key": TOKEN_KEY, "path": ADMIN_TOKEN_FILE_NAME}]}}),
    ];
    volumes.extend(m.volumes);

    let mut pod_spec = json!({
        "serviceAccountName": "sandbox",
        "securityContext": pod_sc,
        "initContainers": [guard],
        "containers": [agent, router],
        "volumes": volumes,
        "tolerations": [{"key": "kars.azure.com/sandbox", "operator": "Equal", "value": "true", "effect": "NoSchedule"}],
        "nodeSelector": {"kars.azure.com/pool": if confidential { "sandbox-kata" } else { "sandbox" }},
    });
    if confidential {
        pod_spec["runtimeClassName"] = json!("kata-vm-isolation");
    }
    let replicas = if spec.suspended == Some(true) { 0 } else { 1 };
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": name,
            "namespace": ns,
            "labels": ctx.labels(&[(SANDBOX_LABEL, name), (COMPONENT_LABEL, "sandbox"), ("kars.azure.com/parent-namespace", cr_ns)]),
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {SANDBOX_LABEL: name}},
            "template": {
                "metadata": {"labels": {SANDBOX_LABEL: name, COMPONENT_LABEL: "sandbox", "azure.workload.identity/use": "true"}},
                "spec": pod_spec,
            },
        },
    })
}

/// The Service in front of the router (and, for Hermes, its gateway and dashboard).
pub(super) fn service(ctx: &mut Ctx<'_>, src: &str, name: &str, ns: &str, kind: RuntimeKind) {
    let mut ports = vec![
        json!({"name": "inference", "port": ROUTER_PORT, "targetPort": ROUTER_PORT, "protocol": "TCP"}),
    ];
    if kind == RuntimeKind::Hermes {
        ports.push(
            json!({"name": "gateway", "port": 18789, "targetPort": 18789, "protocol": "TCP"}),
        );
        ports.push(
            json!({"name": "dashboard", "port": 9119, "targetPort": 9119, "protocol": "TCP"}),
        );
    }
    let labels = ctx.labels(&[(SANDBOX_LABEL, name)]);
    ctx.push(
        json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": name, "namespace": ns, "labels": labels},
            "spec": {"selector": {SANDBOX_LABEL: name}, "ports": ports},
        }),
        src,
    );
}
