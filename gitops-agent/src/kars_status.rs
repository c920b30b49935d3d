//! The status of the kars CRs themselves. In a GitOps-only cluster no kars controller runs, yet
//! upstream's CLI and consoles read `KarsSandbox.status` (phase, namespace, sandboxPod,
//! conditions) and nothing else. After each sync's enforce step the agent writes that status
//! from what it found: a sandbox is `Running` and `Ready` only when a router in its running pod
//! reports the rendered policy digests.
//!
//! Written on the status subresource with a JSON merge patch under the field manager
//! [`STATUS_MANAGER`], only when something other than a transition time changed (a no-op sync
//! writes nothing). The health step does not mistake this status for a kars controller's
//! ([`written_by_us`]), and a status some other manager (a kars controller) wrote is left
//! alone. The policy CRs (ToolPolicy, InferencePolicy, KarsMemory) get their compiled digest and
//! `Ready`/`RouterEnforcing` once every router that mounts them reports it; an EgressApproval
//! is `Active` once its sandbox's router reports the approvals, `Expired` after its TTL.

use std::collections::{BTreeMap, HashMap};

use futures_util::{StreamExt, stream};
use kars_contract::KARS_GROUP;
use kube::api::{Api, ApiResource, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};

use crate::apply::{Action, ApplyReport};
use crate::enforcement::Enforcement;
use crate::live::LiveView;
use kars_contract::PolicyKind;
use kars_renderer::rendered::{MountedPolicy, RouterExpectation};
use kars_renderer::{Rendered, RenderedObject};

/// The field manager of the status the agent writes on kars CRs.
pub const STATUS_MANAGER: &str = "kars-gitops-status";

/// Whether the live object's status was written by this agent and by nobody else (then it is
/// not a kars controller's report).
pub fn written_by_us(live: &Value) -> bool {
    let Some(fields) = live["metadata"]["managedFields"].as_array() else {
        return false;
    };
    let status_managers: Vec<&str> = fields
        .iter()
        .filter(|f| f["subresource"] == "status")
        .filter_map(|f| f["manager"].as_str())
        .collect();
    !status_managers.is_empty() && status_managers.iter().all(|m| *m == STATUS_MANAGER)
}

/// One condition.
fn condition(kind: &str, ok: bool, reason: &str, message: &str) -> Value {
    json!({"type": kind, "status": if ok { "True" } else { "False" }, "reason": reason, "message": message})
}

/// The status a KarsSandbox gets, from the enforce step's result for its router Deployment
/// (`None`: the sandbox is suspended, no router should run).
pub fn sandbox_status(
    name: &str,
    spec: &Value,
    result: Option<&Enforcement>,
    generation: Option<i64>,
) -> Value {
    let ns = kars_renderer::render::sandbox_namespace(name);
    let pattern = format!("{name}-*");
    let (phase, pod, conditions) = match result {
        None => (
            "Running",
            pattern,
            vec![
                condition("Ready", true, "Reconciled", "suspended by spec: 0 replicas"),
                condition("Progressing", false, "Reconciled", "nothing to roll out"),
                condition(
                    "RuntimeReady",
                    false,
                    "SuspendedBySpec",
                    "no agent runs while suspended",
                ),
                condition(
                    "Suspended",
                    true,
                    "SuspendedBySpec",
                    "spec.suspended is true",
                ),
            ],
        ),
        Some(Enforcement::Enforced { pods }) => (
            "Running",
            pods.first().cloned().unwrap_or(pattern),
            vec![
                condition(
                    "Ready",
                    true,
                    "Reconciled",
                    &format!(
                        "the router of {} running pod(s) reports the rendered policy digests",
                        pods.len()
                    ),
                ),
                condition("Progressing", false, "Reconciled", "rolled out"),
                condition("RuntimeReady", true, "Reconciled", "the sandbox pod runs"),
                condition("Suspended", false, "Active", "not suspended"),
            ],
        ),
        Some(Enforcement::NoRunningPods) => (
            "Creating",
            pattern,
            vec![
                condition(
                    "Ready",
                    false,
                    "NoRunningRouters",
                    "no sandbox pod runs yet, so no router has confirmed the rendered policies",
                ),
                condition(
                    "Progressing",
                    true,
                    "NoRunningRouters",
                    "waiting for the sandbox pod",
                ),
                condition(
                    "RuntimeReady",
                    false,
                    "NoRunningRouters",
                    "no sandbox pod runs yet",
                ),
                condition("Suspended", false, "Active", "not suspended"),
            ],
        ),
        Some(Enforcement::NotEnforced(problems)) => {
            let message = problems.join("; ");
            (
                "Degraded",
                pattern,
                vec![
                    condition("Ready", false, "NotEnforced", &message),
                    condition("Degraded", true, "NotEnforced", &message),
                    condition("Progressing", false, "NotEnforced", &message),
                    condition("RuntimeReady", true, "Reconciled", "the sandbox pod runs"),
                    condition("Suspended", false, "Active", "not suspended"),
                ],
            )
        }
    };
    let mut status = json!({
        "phase": phase,
        "namespace": ns,
        "sandboxPod": pod,
        "inferenceEndpoint": format!(
            "http://{name}.{ns}.svc.cluster.local:{}",
            kars_contract::router::PORT
        ),
        "conditions": conditions,
    });
    if let Some(kind) = spec["runtime"]["kind"].as_str() {
        status["runtimeKind"] = json!(kind);
    }
    if let Some(g) = generation {
        status["observedGeneration"] = json!(g);
    }
    status
}

/// `desired` with each condition's `lastTransitionTime`: kept from `previous` when the
/// condition's status did not change, else `now`.
pub fn with_transition_times(mut desired: Value, previous: &Value, now: &str) -> Value {
    let before: BTreeMap<String, (Value, Value)> = previous["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| {
            Some((
                c["type"].as_str()?.to_string(),
                (c["status"].clone(), c["lastTransitionTime"].clone()),
            ))
        })
        .collect();
    if let Some(conditions) = desired["conditions"].as_array_mut() {
        for c in conditions {
            let kind = c["type"].as_str().unwrap_or_default().to_string();
            let time = match before.get(&kind) {
                Some((status, time)) if *status == c["status"] && time.is_string() => time.clone(),
                _ => json!(now),
            };
            c["lastTransitionTime"] = time;
        }
    }
    desired
}

/// True when `live` already says what `desired` says (transition times aside).
pub fn unchanged(desired: &Value, live: &Value) -> bool {
    let strip = |v: &Value| {
        let mut v = v.clone();
        if let Some(cs) = v["conditions"].as_array_mut() {
            for c in cs {
                if let Some(m) = c.as_object_mut() {
                    m.remove("lastTransitionTime");
                }
            }
        }
        v
    };
    strip(desired) == strip(live)
}

/// The status a policy CR (ToolPolicy, InferencePolicy, KarsMemory) gets: its compiled digest,
/// and `Ready` (`RouterEnforcing`) once the router of every sandbox that mounts it and should
/// run reports that digest; `uses` are those mounts.
pub fn policy_status(kind: PolicyKind, uses: &[PolicyUse<'_>], generation: Option<i64>) -> Value {
    let digest = uses
        .first()
        .map(|u| u.mounted.digest.clone())
        .unwrap_or_default();
    let bundle = uses.iter().find_map(|u| u.mounted.bundle_digest.clone());
    let running: Vec<&PolicyUse<'_>> = uses.iter().filter(|u| u.result.is_some()).collect();
    let confirmed = running
        .iter()
        .filter(|u| matches!(u.result, Some(Enforcement::Enforced { .. })))
        .count();
    let all_confirmed = !running.is_empty() && confirmed == running.len();
    let first = uses.first();
    let configmaps: Vec<String> = uses
        .iter()
        .map(|u| format!("{}/{}", u.namespace, u.mounted.configmap))
        .collect();
    let (ready, reason, message) = if all_confirmed {
        (
            true,
            "RouterEnforcing",
            format!("{confirmed} sandbox router(s) report {digest}"),
        )
    } else if running.is_empty() {
        (
            false,
            "NoSandboxesReferencing",
            "no sandbox that mounts it should run".to_string(),
        )
    } else {
        (
            false,
            "PolicyNotEnforced",
            format!(
                "{confirmed} of {} sandbox router(s) report {digest} so far",
                running.len()
            ),
        )
    };
    let mut status = json!({
        "phase": if all_confirmed { "Ready" } else { "Compiled" },
        "conditions": [
            condition("Compiled", true, "Compiled", &format!("compiled into {}", configmaps.join(", "))),
            condition("Ready", ready, reason, &message),
        ],
    });
    match kind {
        PolicyKind::AgtProfile => {
            status["agtProfileDigest"] = json!(digest);
            if let Some(b) = &bundle {
                status["agtProfileBundleDigest"] = json!(b);
            }
        }
        _ => {
            status["compiledDigest"] = json!(digest);
            if all_confirmed {
                status["loadedDigest"] = json!(digest);
            }
            if let Some(b) = &bundle {
                status["bundleRefDigest"] = json!(b);
            }
            if let Some(u) = first {
                let field = if kind == PolicyKind::Memory {
                    "bindingConfigMapRef"
                } else {
                    "profileConfigMapRef"
                };
                // Upstream's schema has only `name` here (the ConfigMap is in the sandbox
                // namespace); a field the API server prunes would make every sync rewrite.
                status[field] = json!({"name": u.mounted.configmap});
            }
        }
    }
    if let Some(g) = generation {
        status["observedGeneration"] = json!(g);
    }
    status
}

/// The status of an EgressApproval: `Active` (`RouterConfirmed`) once its sandbox's router
/// reports the approvals mount, `Expired` from `approved-at + ttl` on, `Pending` before
/// (`AwaitingRouterEcho`, or `BlockedOnSandbox` when its sandbox is not rendered). `target` is
/// the sandbox's approvals mount and router result, when the sandbox is rendered.
pub fn approval_status(
    manifest: &Value,
    target: Option<(Option<&MountedPolicy>, Option<&Enforcement>)>,
    now: i64,
    generation: Option<i64>,
) -> Value {
    use kars_contract::time::{format_rfc3339, parse_iso8601_duration, parse_rfc3339};
    let spec = &manifest["spec"];
    let sandbox = spec["sandbox"].as_str().unwrap_or_default();
    let start = manifest["metadata"]["annotations"][kars_contract::labels::APPROVED_AT_ANNOTATION]
        .as_str()
        .and_then(parse_rfc3339);
    let ttl = spec["ttl"]
        .as_str()
        .and_then(|t| parse_iso8601_duration(t).ok())
        .and_then(|t| i64::try_from(t).ok());
    let expires = start.zip(ttl).map(|(s, t)| s.saturating_add(t));
    let (phase, ready, reason, message) = match (target, expires) {
        (_, Some(e)) if now >= e => (
            "Expired",
            false,
            "Expired",
            format!("expired at {}", format_rfc3339(e)),
        ),
        (None, _) => (
            "Pending",
            false,
            "BlockedOnSandbox",
            format!("sandbox {sandbox:?} is not rendered in this cluster"),
        ),
        (Some((_, Some(Enforcement::Enforced { .. }))), _) => (
            "Active",
            true,
            "RouterConfirmed",
            format!("the router of sandbox {sandbox:?} enforces it"),
        ),
        (Some(_), _) => (
            "Pending",
            false,
            "AwaitingRouterEcho",
            format!("waiting for the router of sandbox {sandbox:?} to report it"),
        ),
    };
    let mut status = json!({
        "phase": phase,
        "hostCount": spec["hosts"].as_array().map_or(0, Vec::len),
        "conditions": [condition("Ready", ready, reason, &message)],
    });
    if let Some(s) = start {
        status["effectiveAt"] = json!(format_rfc3339(s));
    }
    if let Some(e) = expires {
        status["expiresAt"] = json!(format_rfc3339(e));
    }
    if let Some((Some(m), _)) = target {
        status["mergedDigest"] = json!(m.digest);
    }
    if let Some(g) = generation {
        status["observedGeneration"] = json!(g);
    }
    status
}

/// One mount of a policy CR into a sandbox's router.
pub struct PolicyUse<'a> {
    /// The sandbox namespace the ConfigMap is in.
    pub namespace: &'a str,
    /// The mounted ConfigMap and digest.
    pub mounted: &'a MountedPolicy,
    /// What the sandbox's router reports (`None`: the sandbox should not run).
    pub result: Option<&'a Enforcement>,
}

/// The CR kind a policy kind is compiled from, when it comes from a CR of its own.
fn policy_cr_kind(kind: PolicyKind) -> Option<&'static str> {
    match kind {
        PolicyKind::AgtProfile => Some("ToolPolicy"),
        PolicyKind::InferencePolicy => Some("InferencePolicy"),
        PolicyKind::Memory => Some("KarsMemory"),
        _ => None,
    }
}

fn kars_api(client: &kube::Client, namespace: &str, kind: &str) -> Api<DynamicObject> {
    Api::namespaced_with(
        client.clone(),
        namespace,
        &ApiResource::from_gvk(&GroupVersionKind::gvk(KARS_GROUP, "v1alpha1", kind)),
    )
}

/// What [`write`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Written {
    /// Status patches sent.
    pub patched: usize,
    /// Objects whose status could not be written, with the error.
    pub failed: Vec<(String, String)>,
    /// Objects read to learn their generation and status (the rest were known from the apply's
    /// reads or the live view).
    pub reads: usize,
}

/// One kars object whose status is written, and how to compute it from its generation.
struct Target<'a> {
    kind: &'static str,
    namespace: String,
    name: String,
    status: Box<dyn Fn(Option<i64>) -> Value + Send + Sync + 'a>,
}

/// Writes the status of every rendered KarsSandbox and of the policy CRs their routers mount,
/// from the enforce step's `results` (`namespace/deployment` → result), where it differs from
/// what the live object says, `concurrency` patches at a time.
pub async fn write(
    client: &kube::Client,
    rendered: &Rendered,
    apply: &ApplyReport,
    results: &[(String, Enforcement)],
    concurrency: usize,
    view: Option<&LiveView>,
) -> Written {
    let by_deployment: BTreeMap<String, &Enforcement> =
        results.iter().map(|(d, e)| (d.clone(), e)).collect();
    let rendered_keys: std::collections::BTreeSet<String> =
        rendered.objects.iter().map(|o| o.key()).collect();
    let mut targets: Vec<Target<'_>> = Vec::new();
    let mut policy_uses: BTreeMap<
        (&'static str, String, String),
        (PolicyKind, Vec<PolicyUse<'_>>),
    > = BTreeMap::new();
    // (CR namespace, sandbox) → its router and what the router reports (`None`: suspended).
    let mut sandboxes: BTreeMap<(String, String), (&RouterExpectation, Option<&Enforcement>)> =
        BTreeMap::new();
    for o in &rendered.objects {
        if o.kind() != "KarsSandbox" || o.api_version() != kars_contract::KARS_API_VERSION {
            continue;
        }
        let (name, Some(cr_ns)) = (o.name(), o.namespace()) else {
            continue;
        };
        let sandbox_ns = kars_renderer::render::sandbox_namespace(name);
        let Some(router) = rendered
            .routers
            .iter()
            .find(|r| r.deployment == name && r.namespace == sandbox_ns)
        else {
            continue;
        };
        let result = if router.should_run {
            match by_deployment.get(&format!("{}/{}", router.namespace, router.deployment)) {
                Some(r) => Some(*r),
                None => continue,
            }
        } else {
            None
        };
        sandboxes.insert((cr_ns.to_string(), name.to_string()), (router, result));
        for (kind, mounted) in &router.policies {
            let (Some(cr_kind), Some(owner)) = (policy_cr_kind(*kind), &mounted.owner) else {
                continue;
            };
            // Only CRs this repository renders get a status from it.
            if !rendered_keys.contains(&format!("{cr_kind}/{cr_ns}/{owner}")) {
                continue;
            }
            policy_uses
                .entry((cr_kind, cr_ns.to_string(), owner.clone()))
                .or_insert_with(|| (*kind, Vec::new()))
                .1
                .push(PolicyUse {
                    namespace: &router.namespace,
                    mounted,
                    result,
                });
        }
        let spec = &o.manifest["spec"];
        let name_owned = name.to_string();
        targets.push(Target {
            kind: "KarsSandbox",
            namespace: cr_ns.to_string(),
            name: name.to_string(),
            status: Box::new(move |generation| {
                sandbox_status(&name_owned, spec, result, generation)
            }),
        });
    }
    let now_secs =
        kars_contract::time::parse_rfc3339(&kars_contract::time::now_rfc3339()).unwrap_or(0);
    for o in &rendered.objects {
        if o.kind() != "EgressApproval" || o.api_version() != kars_contract::KARS_API_VERSION {
            continue;
        }
        let (name, Some(ns)) = (o.name(), o.namespace()) else {
            continue;
        };
        let sandbox = o.manifest["spec"]["sandbox"].as_str().unwrap_or_default();
        let target = sandboxes
            .get(&(ns.to_string(), sandbox.to_string()))
            .map(|(router, result)| (router.policies.get(&PolicyKind::EgressApproval), *result));
        let manifest = &o.manifest;
        targets.push(Target {
            kind: "EgressApproval",
            namespace: ns.to_string(),
            name: name.to_string(),
            status: Box::new(move |generation| {
                approval_status(manifest, target, now_secs, generation)
            }),
        });
    }
    for ((cr_kind, ns, name), (kind, uses)) in policy_uses {
        targets.push(Target {
            kind: cr_kind,
            namespace: ns,
            name,
            status: Box::new(move |generation| policy_status(kind, &uses, generation)),
        });
    }

    let actions: BTreeMap<&str, &Action> = apply
        .objects
        .iter()
        .map(|o| (o.object.as_str(), &o.action))
        .collect();
    let now = kars_contract::time::now_rfc3339();
    let params = PatchParams {
        field_manager: Some(STATUS_MANAGER.to_string()),
        ..PatchParams::default()
    };
    let objects: HashMap<String, &RenderedObject> =
        rendered.objects.iter().map(|o| (o.key(), o)).collect();
    let ctx = WriteContext {
        client,
        actions: &actions,
        apply,
        now: &now,
        params: &params,
        view,
        objects: &objects,
    };
    // Owned indices: a closure over references trips higher-ranked lifetime inference when the
    // sync is spawned.
    let (targets, ctx) = (&targets, &ctx);
    let writes = (0..targets.len()).map(move |i| write_one(ctx, &targets[i]));
    // Each CR's status is its own subresource: one patch per object that changed, sent
    // `concurrency` at a time.
    let results: Vec<(StatusWrite, bool)> = stream::iter(writes)
        .buffer_unordered(concurrency.max(1))
        .collect()
        .await;
    let mut out = Written::default();
    for (r, read) in results {
        out.reads += usize::from(read);
        match r {
            StatusWrite::Patched => out.patched += 1,
            StatusWrite::Failed(key, error) => out.failed.push((key, error)),
            StatusWrite::Left => {}
        }
    }
    out.failed.sort();
    out
}

/// What every status write of one sync shares.
struct WriteContext<'a> {
    client: &'a kube::Client,
    actions: &'a BTreeMap<&'a str, &'a Action>,
    apply: &'a ApplyReport,
    now: &'a str,
    params: &'a PatchParams,
    view: Option<&'a LiveView>,
    objects: &'a HashMap<String, &'a RenderedObject>,
}

/// Reads (when needed) and patches the status of one target; says whether it read (a named
/// function, not a closure: the future must not depend on a higher-ranked lifetime when the sync
/// is spawned).
async fn write_one(ctx: &WriteContext<'_>, t: &Target<'_>) -> (StatusWrite, bool) {
    let key = format!("{}/{}/{}", t.kind, t.namespace, t.name);
    let api = kars_api(ctx.client, &t.namespace, t.kind);
    let rendered = ctx.objects.get(&key).copied();
    // The generation and status after this sync's apply: what the apply read or the live view
    // knows when the apply changed nothing, else read again.
    let known = match ctx.actions.get(key.as_str()) {
        Some(Action::Unchanged) => ctx
            .apply
            .live_before
            .get(&key)
            .cloned()
            .or_else(|| ctx.view.zip(rendered).and_then(|(view, o)| view.status(o))),
        // Created by this sync: generation 1, no status yet.
        Some(Action::Created) => Some(json!({"metadata": {"generation": 1}})),
        _ => None,
    };
    let read = known.is_none();
    let live = match known {
        Some(l) => l,
        None => match api.get(&t.name).await {
            Ok(obj) => {
                let body = serde_json::to_value(obj).unwrap_or_default();
                if let (Some(view), Some(o)) = (ctx.view, rendered) {
                    view.observe(o, &body);
                }
                body
            }
            Err(e) => return (StatusWrite::Failed(key, e.to_string()), read),
        },
    };
    // A kars controller runs and reports on this object: its status is not ours to write.
    let reported = live["status"].as_object().is_some_and(|m| !m.is_empty());
    if reported && !written_by_us(&live) {
        return (StatusWrite::Left, read);
    }
    let desired = (t.status)(live["metadata"]["generation"].as_i64());
    if unchanged(&desired, &live["status"]) {
        return (StatusWrite::Left, read);
    }
    let desired = with_transition_times(desired, &live["status"], ctx.now);
    match api
        .patch_status(
            &t.name,
            ctx.params,
            &Patch::Merge(json!({"status": desired})),
        )
        .await
    {
        Ok(obj) => {
            if let (Some(view), Some(o)) = (ctx.view, rendered) {
                view.observe(o, &serde_json::to_value(obj).unwrap_or_default());
            }
            (StatusWrite::Patched, read)
        }
        Err(e) => (StatusWrite::Failed(key, e.to_string()), read),
    }
}

/// What happened to one object's status.
enum StatusWrite {
    /// Patched.
    Patched,
    /// Already so, or reported by a kars controller.
    Left,
    /// Could not be read or patched: (object, error).
    Failed(String, String),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cond<'a>(s: &'a Value, t: &str) -> &'a Value {
        s["conditions"]
            .as_array()
            .and_then(|cs| cs.iter().find(|c| c["type"] == t))
            .unwrap_or(&Value::Null)
    }

    #[test]
    fn a_sandbox_is_running_only_when_its_router_confirms() {
        let spec = json!({"runtime": {"kind": "BYO"}});
        let waiting = sandbox_status("a", &spec, Some(&Enforcement::NoRunningPods), Some(2));
        assert_eq!(waiting["phase"], "Creating");
        assert_eq!(waiting["sandboxPod"], "a-*");
        assert_eq!(waiting["namespace"], "kars-a");
        assert_eq!(waiting["observedGeneration"], 2);
        assert_eq!(waiting["runtimeKind"], "BYO");
        assert_eq!(cond(&waiting, "Ready")["status"], "False");
        assert_eq!(cond(&waiting, "Ready")["reason"], "NoRunningRouters");

        let running = sandbox_status(
            "a",
            &spec,
            Some(&Enforcement::Enforced {
                pods: vec!["a-7d9f-x2".into()],
            }),
            Some(2),
        );
        assert_eq!(running["phase"], "Running");
        assert_eq!(running["sandboxPod"], "a-7d9f-x2");
        assert_eq!(cond(&running, "Ready")["status"], "True");
        assert_eq!(cond(&running, "Ready")["reason"], "Reconciled");

        let stale = sandbox_status(
            "a",
            &spec,
            Some(&Enforcement::NotEnforced(vec!["stale digest".into()])),
            Some(2),
        );
        assert_eq!(stale["phase"], "Degraded");
        assert_eq!(cond(&stale, "Degraded")["status"], "True");
        assert!(
            cond(&stale, "Ready")["message"]
                .as_str()
                .is_some_and(|m| m.contains("stale digest"))
        );

        let suspended = sandbox_status("a", &spec, None, Some(3));
        assert_eq!(cond(&suspended, "Suspended")["reason"], "SuspendedBySpec");
    }

    #[test]
    fn transition_times_move_only_when_a_condition_changes() {
        let spec = json!({"runtime": {"kind": "BYO"}});
        let first = with_transition_times(
            sandbox_status("a", &spec, Some(&Enforcement::NoRunningPods), Some(1)),
            &Value::Null,
            "2026-12-02T00:00:00Z",
        );
        let again = sandbox_status("a", &spec, Some(&Enforcement::NoRunningPods), Some(1));
        assert!(unchanged(&again, &first), "same status: nothing to write");
        let running = sandbox_status(
            "a",
            &spec,
            Some(&Enforcement::Enforced {
                pods: vec!["a-1".into()],
            }),
            Some(1),
        );
        assert!(!unchanged(&running, &first));
        let next = with_transition_times(running, &first, "2026-12-02T00:05:00Z");
        assert_eq!(
            cond(&next, "Ready")["lastTransitionTime"],
            "2026-12-02T00:05:00Z"
        );
        assert_eq!(
            cond(&next, "Suspended")["lastTransitionTime"],
            "2026-12-02T00:00:00Z",
            "Suspended stayed False"
        );
    }

    #[test]
    fn a_policy_is_ready_when_every_running_router_reports_its_digest() {
        let mounted = MountedPolicy {
            configmap: "a-inference".into(),
            digest: "sha256:abc".into(),
            owner: Some("a-inference".into()),
            bundle_digest: None,
        };
        let enforced = Enforcement::Enforced {
            pods: vec!["a-1".into()],
        };
        let waiting = Enforcement::NoRunningPods;
        fn uses_of<'a>(
            mounted: &'a MountedPolicy,
            results: Vec<Option<&'a Enforcement>>,
        ) -> Vec<PolicyUse<'a>> {
            results
                .into_iter()
                .map(|result| PolicyUse {
                    namespace: "kars-a",
                    mounted,
                    result,
                })
                .collect()
        }
        let uses = |results| uses_of(&mounted, results);
        let ready = policy_status(
            PolicyKind::InferencePolicy,
            &uses(vec![Some(&enforced)]),
            Some(4),
        );
        assert_eq!(ready["phase"], "Ready");
        assert_eq!(ready["compiledDigest"], "sha256:abc");
        assert_eq!(ready["loadedDigest"], "sha256:abc");
        assert_eq!(
            ready["profileConfigMapRef"],
            json!({"name": "a-inference"}),
            "only the fields upstream's schema keeps"
        );
        assert_eq!(ready["observedGeneration"], 4);
        assert_eq!(cond(&ready, "Ready")["reason"], "RouterEnforcing");

        let partly = policy_status(
            PolicyKind::InferencePolicy,
            &uses(vec![Some(&enforced), Some(&waiting)]),
            None,
        );
        assert_eq!(partly["phase"], "Compiled");
        assert!(
            partly.get("loadedDigest").is_none(),
            "not echoed by every router"
        );
        assert_eq!(cond(&partly, "Ready")["reason"], "PolicyNotEnforced");

        let nobody = policy_status(PolicyKind::AgtProfile, &uses(vec![None]), None);
        assert_eq!(nobody["agtProfileDigest"], "sha256:abc");
        assert_eq!(cond(&nobody, "Ready")["reason"], "NoSandboxesReferencing");
    }

    #[test]
    fn an_approval_is_active_once_its_router_confirms_and_expires_on_time() {
        let manifest = json!({
            "metadata": {"annotations": {"gitops.kars.io/approved-at": "2026-12-02T00:00:00Z"}},
            "spec": {"sandbox": "a", "ttl": "PT1H", "hosts": [{"host": "x.example"}, {"host": "y.example"}]},
        });
        let mounted = MountedPolicy {
            configmap: "a-egress-approvals".into(),
            digest: "sha256:approvals".into(),
            owner: None,
            bundle_digest: None,
        };
        let start = kars_contract::time::parse_rfc3339("2026-12-02T00:00:00Z").unwrap_or(0);
        let enforced = Enforcement::Enforced {
            pods: vec!["a-1".into()],
        };
        let confirmed = Some((Some(&mounted), Some(&enforced)));
        let active = approval_status(&manifest, confirmed, start + 60, Some(1));
        assert_eq!(active["phase"], "Active");
        assert_eq!(active["hostCount"], 2);
        assert_eq!(active["mergedDigest"], "sha256:approvals");
        assert_eq!(active["effectiveAt"], "2026-12-02T00:00:00Z");
        assert_eq!(active["expiresAt"], "2026-12-02T01:00:00Z");
        assert_eq!(cond(&active, "Ready")["reason"], "RouterConfirmed");

        let waiting = approval_status(
            &manifest,
            Some((Some(&mounted), Some(&Enforcement::NoRunningPods))),
            start + 60,
            None,
        );
        assert_eq!(waiting["phase"], "Pending");
        assert_eq!(cond(&waiting, "Ready")["reason"], "AwaitingRouterEcho");

        let blocked = approval_status(&manifest, None, start + 60, None);
        assert_eq!(cond(&blocked, "Ready")["reason"], "BlockedOnSandbox");

        let expired = approval_status(&manifest, confirmed, start + 3600, None);
        assert_eq!(
            expired["phase"], "Expired",
            "expired exactly at approved-at + ttl"
        );
    }

    #[test]
    fn only_a_status_nobody_else_wrote_is_ours() {
        let ours = json!({"metadata": {"managedFields": [
            {"manager": "kars-gitops", "operation": "Apply"},
            {"manager": STATUS_MANAGER, "subresource": "status"},
        ]}});
        assert!(written_by_us(&ours));
        let controller = json!({"metadata": {"managedFields": [
            {"manager": STATUS_MANAGER, "subresource": "status"},
            {"manager": "kars-controller", "subresource": "status"},
        ]}});
        assert!(!written_by_us(&controller));
        assert!(!written_by_us(&json!({"metadata": {}})));
    }
}
