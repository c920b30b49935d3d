//! The sandbox Deployment (egress-guard init container, the agent container, the router
//! sidecar with its policy mounts) and the Service in front of the router.

use std::collections::BTreeSet;

use kars_contract::labels::{COMPONENT_LABEL, SANDBOX_LABEL};
use kars_contract::router::{
    self, ADMIN_TOKEN_DIR, ADMIN_TOKEN_FILE_NAME, ADMIN_TOKEN_SECRET, AGENT_UID, AUDIT_DIR,
    AUDIT_KEY_DATA, AUDIT_KEY_DIR, AUDIT_KEY_SECRET, BUDGET_FILE, FORWARD_PROXY_PORT, LOG_DIR,
    METRICS_PORT, PORT as ROUTER_PORT, ROUTER_UID, STATE_DIR, TOKEN_KEY, env,
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
            if router::dropped_agent_env(k).is_some() {
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
                && router::dropped_agent_env(n).is_none()
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

/// The egress-guard script, for IPv4 (`iptables`) and IPv6 (`ip6tables`) alike: the agent's
/// user may reach loopback and, on port 53, only the pod's resolvers (the `nameserver` lines of
/// the `/etc/resolv.conf` the kubelet wrote); its :80/:443 is redirected to the router's forward
/// proxy; everything else it sends is dropped. A pod with IPv6 addresses whose `ip6tables`
/// does not work fails to start instead of leaving IPv6 open.
///
/// The filter table sees a redirected packet with its new destination (the router on
/// loopback) but still with the output interface of the first route (the pod's `eth0`), so
/// `-o lo` alone would drop every redirected connection: the rule for the proxy's loopback
/// address and port is what lets them through.
pub fn egress_guard_script() -> String {
    let uid = AGENT_UID;
    let proxy = FORWARD_PROXY_PORT;
    format!(
        r#"set -eu
v4=""; v6=""
while read -r key addr _; do
  [ "$key" = nameserver ] || continue
  case "$addr" in *:*) v6="$v6 $addr" ;; *.*) v4="$v4 $addr" ;; esac
done < /etc/resolv.conf
guard() {{
  t="$1"; loopback="$2"; resolvers="$3"
  $t -w -A OUTPUT -m owner --uid-owner {uid} -o lo -j ACCEPT
  $t -w -A OUTPUT -m owner --uid-owner {uid} -d "$loopback" -p tcp --dport {proxy} -j ACCEPT
  for r in $resolvers; do
    $t -w -A OUTPUT -m owner --uid-owner {uid} -d "$r" -p udp --dport 53 -j ACCEPT
    $t -w -A OUTPUT -m owner --uid-owner {uid} -d "$r" -p tcp --dport 53 -j ACCEPT
  done
  $t -w -A OUTPUT -m owner --uid-owner {uid} -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  $t -w -A OUTPUT -m owner --uid-owner {uid} -j DROP
  $t -w -t nat -A OUTPUT -m owner --uid-owner {uid} ! -o lo -p tcp --dport 80 -j REDIRECT --to-ports {proxy}
  $t -w -t nat -A OUTPUT -m owner --uid-owner {uid} ! -o lo -p tcp --dport 443 -j REDIRECT --to-ports {proxy}
}}
guard iptables 127.0.0.1 "$v4"
has6=no
if [ -r /proc/net/if_inet6 ]; then
  while read -r _ _ _ _ _ dev; do [ "$dev" = lo ] || has6=yes; done < /proc/net/if_inet6
fi
if ip6tables -w -L OUTPUT -n >/dev/null 2>&1; then
  guard ip6tables ::1 "$v6"
  six="IPv6 too"
elif [ "$has6" = yes ]; then
  echo "egress-guard: this pod has IPv6 addresses but ip6tables does not work; not starting with IPv6 open" >&2
  exit 1
else
  six="no IPv6 in this pod"
fi
echo "egress-guard: uid {uid} may reach loopback and DNS at${{v4:- (none)}}${{v6}}; its :80 and :443 go to the router on :{proxy}; everything else is dropped ($six)"
"#
    )
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
        (
            env::COMMERCE_LEDGER.into(),
            router::COMMERCE_LEDGER_FILE.into(),
        ),
        (env::AUDIT_DIR.into(), AUDIT_DIR.into()),
        (env::AUDIT_SIGNING_KEY_FILE.into(), router::audit_key_file()),
        (env::GOVERNANCE_ENABLED.into(), governance_on.to_string()),
    ];
    if !ctx.router.allow_private_cidrs.is_empty() {
        router_env.push((
            env::EGRESS_ALLOW_CIDRS.into(),
            ctx.router.allow_private_cidrs.join(","),
        ));
    }
    if let Some(d) = inference.daily_budget {
        router_env.push((env::TOKEN_BUDGET_DAILY.into(), d.to_string()));
    }
    if let Some(p) = inference.per_request {
        router_env.push((env::TOKEN_BUDGET_PER_REQUEST.into(), p.to_string()));
    }
    // The providers the InferencePolicy names: endpoints from kars.yaml, keys from Secrets
    // mounted into the router only.
    let mut endpoints = Vec::new();
    let mut key_files = Vec::new();
    let mut provider_volumes = Vec::new();
    let mut provider_mounts = Vec::new();
    for name in &inference.providers {
        let Some(p) = ctx.providers.get(name) else {
            continue;
        };
        endpoints.push(format!("{name}={}", p.endpoint));
        if let Some(c) = &p.credentials {
            let volume = format!("provider-{name}");
            provider_volumes.push(json!({"name": volume, "secret": {"secretName": c.secret_name, "defaultMode": 0o440, "optional": true, "items": [{"key": c.key, "path": "key"}]}}));
            provider_mounts.push(json!({"name": volume, "mountPath": format!("{}/{name}", router::PROVIDERS_DIR), "readOnly": true}));
            key_files.push(format!("{name}={}", router::provider_key_file(name)));
        }
    }
    if !endpoints.is_empty() {
        router_env.push((env::INFERENCE_PROVIDERS.into(), endpoints.join(",")));
    }
    if !key_files.is_empty() {
        router_env.push((
            env::INFERENCE_PROVIDER_KEY_FILES.into(),
            key_files.join(","),
        ));
    }
    router_env.extend(m.router_env);
    let mut router_mounts = vec![
        json!({"name": "admin-token", "mountPath": ADMIN_TOKEN_DIR, "readOnly": true}),
        json!({"name": "router-state", "mountPath": STATE_DIR}),
        json!({"name": "router-audit", "mountPath": LOG_DIR}),
        json!({"name": "audit-key", "mountPath": AUDIT_KEY_DIR, "readOnly": true}),
    ];
    router_mounts.extend(m.router_mounts);
    router_mounts.extend(provider_mounts);
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
        // The router's audit signing seed: the router only (the agent could otherwise sign a
        // forged chain); 0440 with the pod's fsGroup, like the provider keys.
        json!({"name": "audit-key", "secret": {"secretName": AUDIT_KEY_SECRET, "defaultMode": 0o440, "optional": true, "items": [{"key": AUDIT_KEY_DATA, "path": AUDIT_KEY_DATA}]}}),
    ];
    volumes.extend(m.volumes);
    volumes.extend(provider_volumes);

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

#[cfg(test)]
mod tests {
    use super::*;

    /// The rules `guard` installs, as they run for one family (`$t`, `$loopback` and the
    /// resolver loop expanded the way the shell would for one resolver).
    fn rules() -> Vec<String> {
        let script = egress_guard_script();
        let body = script
            .split_once("guard() {")
            .and_then(|(_, rest)| rest.split_once("\n}"))
            .map(|(b, _)| b.to_string())
            .expect("a guard function");
        body.lines()
            .map(str::trim)
            .filter(|l| l.starts_with("$t "))
            .map(|l| {
                l.replace("$t ", "iptables ")
                    .replace("\"$loopback\"", "127.0.0.1")
                    .replace("\"$r\"", "10.96.0.10")
            })
            .collect()
    }

    #[test]
    fn dns_is_open_only_to_the_pods_resolvers() {
        let rules = rules();
        let dns: Vec<&String> = rules.iter().filter(|r| r.contains("--dport 53")).collect();
        assert_eq!(dns.len(), 2, "{rules:#?}");
        for r in dns {
            assert!(
                r.contains("-d 10.96.0.10"),
                "DNS without a destination: {r}"
            );
        }
        let script = egress_guard_script();
        assert!(script.contains("< /etc/resolv.conf"), "{script}");
    }

    #[test]
    fn every_accept_comes_before_the_drop_and_redirects_reach_the_router() {
        let rules = rules();
        let drop = rules
            .iter()
            .position(|r| r.ends_with("-j DROP"))
            .expect("a DROP rule");
        assert!(
            rules[drop..].iter().all(|r| !r.contains("-j ACCEPT")),
            "an ACCEPT after the DROP is dead: {rules:#?}"
        );
        assert!(
            rules.iter().all(|r| r.contains("--uid-owner 1000")),
            "every rule is for the agent's UID only: {rules:#?}"
        );
        // A redirected connection keeps the first route's interface in the filter table.
        assert!(
            rules[..drop]
                .iter()
                .any(|r| r.contains("-d 127.0.0.1 -p tcp --dport 8444 -j ACCEPT"))
        );
        for port in [80, 443] {
            assert!(rules.iter().any(|r| r.contains("-t nat")
                && r.contains(&format!("--dport {port} -j REDIRECT --to-ports 8444"))));
        }
    }

    #[test]
    fn ipv6_gets_the_same_rules_or_the_pod_does_not_start() {
        let script = egress_guard_script();
        assert!(
            script.contains("guard iptables 127.0.0.1 \"$v4\""),
            "{script}"
        );
        assert!(script.contains("guard ip6tables ::1 \"$v6\""), "{script}");
        assert!(script.contains("exit 1"), "{script}");
        assert!(
            script.starts_with("set -eu"),
            "a failing rule must fail the init container"
        );
    }
}
