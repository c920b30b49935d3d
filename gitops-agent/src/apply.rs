//! Apply: server-side apply of a rendered set, in waves, writing only what changed.
//!
//! 1. **Plan.** List the live objects carrying our repository label, per kind, and compare each
//!    rendered object with its live copy: the `gitops.kars.io/object-digest` annotation must
//!    match and every field we render must still hold our value (drift check). Equal objects
//!    get no request at all, so a no-op sync is reads only.
//! 2. **Dry run.** Every changed object whose namespace and kind already exist is applied with
//!    `dryRun=All` first. If the API server refuses any of them, nothing is written.
//! 3. **Apply.** Wave by wave (CRDs, namespaces, RBAC, config, kars CRs, services, workloads),
//!    with bounded parallelism inside a wave; CRDs are waited for until Established and
//!    namespaces until Active before the next wave.
//! 4. **Generated secrets** (router admin tokens) are created when missing, never overwritten.
//!
//! Conflicts with other field managers are reported per object and not forced unless
//! [`ApplyOptions::force_conflicts`] is set.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use kars_renderer::render::{
    CLUSTER_LABEL, GeneratedSecret, OBJECT_DIGEST_ANNOTATION, REPOSITORY_LABEL,
};
use kars_renderer::{Rendered, RenderedObject};
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use serde_json::{Value, json};

/// The field manager name kars GitOps applies with.
pub const FIELD_MANAGER: &str = "kars-gitops";

/// How to apply.
#[derive(Clone, Debug)]
pub struct ApplyOptions {
    /// Server-side-apply field manager.
    pub field_manager: String,
    /// Take over fields other managers own (like `kubectl apply --server-side --force-conflicts`).
    pub force_conflicts: bool,
    /// Only dry-run: report what would change, write nothing.
    pub dry_run: bool,
    /// Objects applied at once within a wave.
    pub concurrency: usize,
    /// How long to wait for CRDs to be Established and namespaces Active.
    pub wait_timeout: Duration,
    /// Restore drift: fields of ours that a person changed by hand (a field manager whose name
    /// starts with one of [`ApplyOptions::manual_managers`]) are taken back. Conflicts with any
    /// other manager (a controller) are reported instead, unless `force_conflicts` is set.
    pub self_heal: bool,
    /// Field-manager name prefixes that mean "edited by hand".
    pub manual_managers: Vec<String>,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            field_manager: FIELD_MANAGER.to_string(),
            force_conflicts: false,
            dry_run: false,
            concurrency: 8,
            wait_timeout: Duration::from_secs(60),
            self_heal: true,
            manual_managers: vec![
                "kubectl".to_string(),
                "Mozilla".to_string(),
                "k9s".to_string(),
            ],
        }
    }
}

/// What happened to one object.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "action", content = "reason", rename_all = "lowercase")]
pub enum Action {
    /// It did not exist and was created.
    Created,
    /// It existed and was changed (new content or drift restored).
    Configured,
    /// Live equals rendered; no request was sent.
    Unchanged,
    /// Dry run: would be created or changed.
    WouldChange,
    /// Refused by the API server (or a conflict); the message says why.
    Failed(String),
    /// Not attempted because another object failed first.
    Skipped,
    /// Changed in the cluster by someone else and left so, because self-heal is off.
    Drifted(String),
}

/// The outcome for one object.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ObjectOutcome {
    /// `kind/namespace/name`.
    pub object: String,
    /// Repository file it comes from.
    pub source: String,
    /// What happened.
    #[serde(flatten)]
    pub action: Action,
}

/// The outcome of a whole apply.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ApplyReport {
    /// One entry per rendered object, in apply order.
    pub objects: Vec<ObjectOutcome>,
    /// Write requests sent (apply and create; dry runs not counted).
    pub writes: usize,
    /// Secrets created in the cluster.
    pub generated_secrets_created: Vec<String>,
    /// The live objects listed before applying (`kind/namespace/name` → object): a sync that
    /// changed nothing reuses them for its health look instead of listing again.
    #[serde(skip)]
    pub live_before: BTreeMap<String, Value>,
}

impl ApplyReport {
    /// Objects that failed.
    pub fn failures(&self) -> impl Iterator<Item = &ObjectOutcome> {
        self.objects
            .iter()
            .filter(|o| matches!(o.action, Action::Failed(_)))
    }

    /// True when every object is applied or unchanged.
    pub fn is_success(&self) -> bool {
        self.failures().next().is_none()
            && !self.objects.iter().any(|o| o.action == Action::Skipped)
    }

    /// Count of objects with the given action.
    pub fn count(&self, pred: impl Fn(&Action) -> bool) -> usize {
        self.objects.iter().filter(|o| pred(&o.action)).count()
    }
}

/// Why an apply could not run at all (per-object failures are in the report instead).
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The API server could not be reached or refused a read we need.
    #[error("talking to the API server: {0}")]
    Kube(#[from] kube::Error),
    /// A CRD or namespace did not become ready in time.
    #[error("{0}")]
    Timeout(String),
}

/// A stable short label for metrics and status reasons.
impl ApplyError {
    /// The reason label.
    pub fn reason(&self) -> &'static str {
        match self {
            ApplyError::Kube(_) => "ApiServerUnavailable",
            ApplyError::Timeout(_) => "WaitTimeout",
        }
    }
}

/// Applies rendered sets to one cluster.
pub struct Applier {
    client: kube::Client,
    options: ApplyOptions,
    resources: Mutex<HashMap<GroupVersionKind, (ApiResource, bool)>>,
}

fn gvk_of(o: &RenderedObject) -> GroupVersionKind {
    let (group, version) = match o.api_version().split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", o.api_version()),
    };
    GroupVersionKind::gvk(group, version, o.kind())
}

fn status_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => {
            if s.reason.is_empty() {
                s.message.clone()
            } else {
                format!("{} ({})", s.message, s.reason)
            }
        }
        other => other.to_string(),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// True when every field of `desired` has the same value in `live` (extra live fields, such as
/// server defaults, are fine). Lists of objects with a `name` are matched by name; other lists
/// must be equal element by element.
pub fn is_subset(desired: &Value, live: &Value) -> bool {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => d.iter().all(|(k, dv)| match l.get(k) {
            Some(lv) => is_subset(dv, lv),
            None => {
                dv.is_null()
                    || dv.as_object().is_some_and(|m| m.is_empty())
                    || dv.as_array().is_some_and(|a| a.is_empty())
            }
        }),
        (Value::Array(d), Value::Array(l)) => {
            let named = !d.is_empty()
                && d.iter()
                    .all(|x| x.get("name").is_some_and(Value::is_string));
            if named {
                d.iter().all(|dx| {
                    l.iter()
                        .any(|lx| lx.get("name") == dx.get("name") && is_subset(dx, lx))
                })
            } else {
                d.len() == l.len() && d.iter().zip(l).all(|(a, b)| is_subset(a, b))
            }
        }
        (Value::Number(a), Value::Number(b)) => a.as_f64() == b.as_f64(),
        (a, b) => a == b,
    }
}

/// The first field path where `live` does not hold `desired`'s value (`None` when it does).
pub fn first_difference(desired: &Value, live: &Value) -> Option<String> {
    fn walk(d: &Value, l: &Value, path: &mut String) -> Option<String> {
        match (d, l) {
            (Value::Object(dm), Value::Object(lm)) => {
                for (k, dv) in dm {
                    let len = path.len();
                    path.push('.');
                    path.push_str(k);
                    let found = match lm.get(k) {
                        Some(lv) => walk(dv, lv, path),
                        None if is_subset(dv, &Value::Null)
                            || dv.as_object().is_some_and(|m| m.is_empty())
                            || dv.as_array().is_some_and(|a| a.is_empty()) =>
                        {
                            None
                        }
                        None => Some(path.clone()),
                    };
                    if found.is_some() {
                        return found;
                    }
                    path.truncate(len);
                }
                None
            }
            (Value::Array(da), Value::Array(la)) => {
                let named = !da.is_empty()
                    && da
                        .iter()
                        .all(|x| x.get("name").is_some_and(Value::is_string));
                for (i, dx) in da.iter().enumerate() {
                    let len = path.len();
                    if named {
                        let name = dx["name"].as_str().unwrap_or_default();
                        path.push_str(&format!("[name={name}]"));
                        let found = match la.iter().find(|lx| lx.get("name") == dx.get("name")) {
                            Some(lx) => walk(dx, lx, path),
                            None => Some(path.clone()),
                        };
                        if found.is_some() {
                            return found;
                        }
                    } else {
                        path.push_str(&format!("[{i}]"));
                        let found = match la.get(i) {
                            Some(lx) => walk(dx, lx, path),
                            None => Some(path.clone()),
                        };
                        if found.is_some() {
                            return found;
                        }
                    }
                    path.truncate(len);
                }
                if !named && da.len() != la.len() {
                    return Some(format!("{path} (length {} vs {})", da.len(), la.len()));
                }
                None
            }
            _ if is_subset(d, l) => None,
            _ => Some(format!("{path} (want {d}, have {l})")),
        }
    }
    walk(desired, live, &mut String::new())
}

impl Applier {
    /// An applier using `client`.
    pub fn new(client: kube::Client, options: ApplyOptions) -> Self {
        Applier {
            client,
            options,
            resources: Mutex::new(HashMap::new()),
        }
    }

    /// The client.
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// Resolves a kind to its API resource and whether it is namespaced (cached).
    pub async fn resource(
        &self,
        gvk: &GroupVersionKind,
    ) -> Result<(ApiResource, bool), kube::Error> {
        if let Some(hit) = self.resources.lock().ok().and_then(|m| m.get(gvk).cloned()) {
            return Ok(hit);
        }
        let (ar, caps) = discovery::pinned_kind(&self.client, gvk).await?;
        let entry = (ar, caps.scope == Scope::Namespaced);
        if let Ok(mut m) = self.resources.lock() {
            m.insert(gvk.clone(), entry.clone());
        }
        Ok(entry)
    }

    fn api_for(&self, ar: &ApiResource, namespaced: bool, ns: Option<&str>) -> Api<DynamicObject> {
        match (namespaced, ns) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, ar),
            (true, None) => Api::default_namespaced_with(self.client.clone(), ar),
            (false, _) => Api::all_with(self.client.clone(), ar),
        }
    }

    /// Lists our live objects of every kind in the set, keyed by `kind/namespace/name`.
    async fn live_objects(
        &self,
        rendered: &Rendered,
    ) -> Result<BTreeMap<String, Value>, ApplyError> {
        Ok(self.list_live(rendered, |_, _| true).await?)
    }

    /// Lists our live objects (by the repository and cluster labels, one LIST per kind) of the
    /// kinds in `rendered` for which `wanted(apiVersion, kind)` holds, keyed by
    /// `kind/namespace/name`.
    pub async fn list_live(
        &self,
        rendered: &Rendered,
        wanted: impl Fn(&str, &str) -> bool,
    ) -> Result<BTreeMap<String, Value>, kube::Error> {
        let selector = format!(
            "{REPOSITORY_LABEL}={},{CLUSTER_LABEL}={}",
            rendered.repository, rendered.cluster
        );
        let mut kinds: Vec<GroupVersionKind> = rendered
            .objects
            .iter()
            .filter(|o| wanted(o.api_version(), o.kind()))
            .map(gvk_of)
            .collect();
        kinds.sort_by(|a, b| (&a.group, &a.version, &a.kind).cmp(&(&b.group, &b.version, &b.kind)));
        kinds.dedup();
        let mut live = BTreeMap::new();
        for gvk in kinds {
            let (ar, _) = match self.resource(&gvk).await {
                Ok(r) => r,
                Err(e) if is_not_found(&e) => continue, // kind not installed yet: nothing live
                Err(e) => return Err(e),
            };
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
            let list = api.list(&ListParams::default().labels(&selector)).await?;
            for item in list.items {
                let name = item.metadata.name.clone().unwrap_or_default();
                let key = match &item.metadata.namespace {
                    Some(ns) => format!("{}/{ns}/{name}", gvk.kind),
                    None => format!("{}/{name}", gvk.kind),
                };
                let mut value = serde_json::to_value(&item).unwrap_or(Value::Null);
                // List items carry no apiVersion/kind of their own.
                value["apiVersion"] = json!(ar.api_version);
                value["kind"] = json!(ar.kind);
                live.insert(key, value);
            }
        }
        Ok(live)
    }

    /// Applies `rendered`. Per-object failures are in the report; `Err` means the apply could not
    /// run (API server unreachable, wait timed out).
    pub async fn apply(&self, rendered: &Rendered) -> Result<ApplyReport, ApplyError> {
        let live = self.live_objects(rendered).await?;
        let mut report = ApplyReport::default();
        let mut changed: Vec<(usize, bool)> = Vec::new(); // (index, exists)
        for (i, o) in rendered.objects.iter().enumerate() {
            let current = live.get(&o.key());
            let unchanged = current.is_some_and(|l| {
                l["metadata"]["annotations"][OBJECT_DIGEST_ANNOTATION]
                    == o.manifest["metadata"]["annotations"][OBJECT_DIGEST_ANNOTATION]
                    && is_subset(&o.manifest, l)
            });
            // Drift: our digest is live (Git did not change) but a field we set was changed.
            let drifted = !unchanged
                && current.is_some_and(|l| {
                    l["metadata"]["annotations"][OBJECT_DIGEST_ANNOTATION]
                        == o.manifest["metadata"]["annotations"][OBJECT_DIGEST_ANNOTATION]
                });
            if drifted && !self.options.self_heal {
                let what = current
                    .and_then(|l| first_difference(&o.manifest, l))
                    .unwrap_or_default();
                report.objects.push(ObjectOutcome {
                    object: o.key(),
                    source: o.source.clone(),
                    action: Action::Drifted(what),
                });
                continue;
            }
            report.objects.push(ObjectOutcome {
                object: o.key(),
                source: o.source.clone(),
                action: if unchanged {
                    Action::Unchanged
                } else {
                    Action::Skipped
                },
            });
            if !unchanged {
                if let Some(l) = current {
                    tracing::info!(object = %o.key(), difference = ?first_difference(&o.manifest, l), "out of sync");
                }
                changed.push((i, current.is_some()));
            }
        }

        // Dry run of everything that can be checked now.
        // Owned indices: closures over references trip higher-ranked lifetime inference when
        // the future is spawned.
        // Objects in namespaces this sync creates cannot be dry-run (their namespace is missing).
        let new_namespaces: std::collections::BTreeSet<&str> = rendered
            .objects
            .iter()
            .filter(|o| {
                o.kind() == "Namespace" && o.api_version() == "v1" && !live.contains_key(&o.key())
            })
            .map(|o| o.name())
            .collect();
        let indices: Vec<usize> = changed
            .iter()
            .map(|(i, _)| *i)
            .filter(|i| {
                rendered.objects[*i]
                    .namespace()
                    .is_none_or(|ns| !new_namespaces.contains(ns))
            })
            .collect();
        let checks = indices.into_iter().map(|i| async move {
            let o = &rendered.objects[i];
            (i, self.server_apply(o, true).await)
        });
        let results: Vec<(usize, Result<Option<String>, ApplyFailure>)> = stream::iter(checks)
            .buffer_unordered(self.options.concurrency.max(1))
            .collect()
            .await;
        let mut refused = false;
        for (i, r) in results {
            match r {
                Ok(_) | Err(ApplyFailure::NotYetResolvable) => {}
                Err(ApplyFailure::Refused(msg)) => {
                    report.objects[i].action = Action::Failed(msg);
                    refused = true;
                }
                Err(ApplyFailure::Unreachable(e)) => return Err(e.into()),
                Err(ApplyFailure::Conflict(e)) => {
                    report.objects[i].action = Action::Failed(status_message(&e));
                    refused = true;
                }
            }
        }
        if refused || self.options.dry_run {
            if self.options.dry_run && !refused {
                for (i, _) in &changed {
                    report.objects[*i].action = Action::WouldChange;
                }
            }
            return Ok(report);
        }

        // Real apply, wave by wave.
        let mut waves: BTreeMap<u8, Vec<(usize, bool)>> = BTreeMap::new();
        for (i, exists) in &changed {
            waves
                .entry(rendered.objects[*i].wave)
                .or_default()
                .push((*i, *exists));
        }
        let mut failed = false;
        for (_, members) in waves {
            if failed {
                break;
            }
            let owned: Vec<(usize, bool)> = members.clone();
            let jobs = owned.into_iter().map(|(i, exists)| async move {
                let o = &rendered.objects[i];
                (i, exists, self.server_apply(o, false).await)
            });
            let results: Vec<_> = stream::iter(jobs)
                .buffer_unordered(self.options.concurrency.max(1))
                .collect()
                .await;
            let mut active_namespaces = std::collections::BTreeSet::new();
            for (i, exists, r) in results {
                match r {
                    Ok(phase) => {
                        if phase.as_deref() == Some("Active") {
                            active_namespaces.insert(i);
                        }
                        report.writes += 1;
                        report.objects[i].action = if exists {
                            Action::Configured
                        } else {
                            Action::Created
                        };
                    }
                    Err(ApplyFailure::Refused(msg)) => {
                        report.writes += 1;
                        report.objects[i].action = Action::Failed(msg);
                        failed = true;
                    }
                    Err(ApplyFailure::NotYetResolvable) => {
                        report.objects[i].action = Action::Failed(format!(
                            "the API server does not serve {} {}; is its CRD installed?",
                            rendered.objects[i].api_version(),
                            rendered.objects[i].kind()
                        ));
                        failed = true;
                    }
                    Err(ApplyFailure::Unreachable(e)) => return Err(e.into()),
                    Err(ApplyFailure::Conflict(e)) => {
                        report.writes += 1;
                        report.objects[i].action = Action::Failed(status_message(&e));
                        failed = true;
                    }
                }
            }
            // Readiness gates before the next wave.
            for (i, _) in &members {
                let o = &rendered.objects[*i];
                match o.kind() {
                    "CustomResourceDefinition" => self.wait_crd_established(o.name()).await?,
                    "Namespace" if !active_namespaces.contains(i) => {
                        self.wait_namespace_active(o.name()).await?
                    }
                    _ => {}
                }
            }
        }
        report.live_before = live;
        if !failed {
            report.generated_secrets_created = self
                .ensure_generated_secrets(rendered, &mut report.writes)
                .await?;
        }
        Ok(report)
    }

    /// Managers named in a 409 conflict (`conflict with "kubectl" with subresource "scale"`).
    fn conflicting_managers(e: &kube::Error) -> Vec<String> {
        let kube::Error::Api(s) = e else {
            return Vec::new();
        };
        let mut text = s.message.clone();
        if let Some(d) = &s.details {
            for c in &d.causes {
                text.push('\n');
                text.push_str(&c.message);
            }
        }
        let mut out: Vec<String> = text
            .split("conflict with \"")
            .skip(1)
            .filter_map(|rest| rest.split('"').next().map(str::to_string))
            .collect();
        out.sort();
        out.dedup();
        out
    }

    /// Applies one object; returns the `status.phase` of the object the API server returned.
    async fn server_apply(
        &self,
        o: &RenderedObject,
        dry_run: bool,
    ) -> Result<Option<String>, ApplyFailure> {
        match self
            .server_apply_with(o, dry_run, self.options.force_conflicts)
            .await
        {
            Err(ApplyFailure::Conflict(e)) => {
                let managers = Self::conflicting_managers(&e);
                let manual = !managers.is_empty()
                    && managers.iter().all(|m| {
                        self.options
                            .manual_managers
                            .iter()
                            .any(|p| m.starts_with(p.as_str()))
                    });
                if self.options.self_heal && manual {
                    tracing::info!(object = %o.key(), managers = ?managers, "restoring fields changed by hand");
                    return match self.server_apply_with(o, dry_run, true).await {
                        Err(ApplyFailure::Conflict(e)) => {
                            Err(ApplyFailure::Refused(status_message(&e)))
                        }
                        other => other,
                    };
                }
                let mut msg = status_message(&e);
                msg.push_str("; another field manager owns these fields. Remove them there, or sync with --force-conflicts to take them over");
                Err(ApplyFailure::Refused(msg))
            }
            other => other,
        }
    }

    async fn server_apply_with(
        &self,
        o: &RenderedObject,
        dry_run: bool,
        force: bool,
    ) -> Result<Option<String>, ApplyFailure> {
        let gvk = gvk_of(o);
        let (ar, namespaced) = match self.resource(&gvk).await {
            Ok(r) => r,
            Err(e) if is_not_found(&e) => return Err(ApplyFailure::NotYetResolvable),
            Err(e) => return Err(ApplyFailure::Unreachable(e)),
        };
        let api = self.api_for(&ar, namespaced, o.namespace());
        let mut pp = PatchParams::apply(&self.options.field_manager);
        if force {
            pp = pp.force();
        }
        pp.dry_run = dry_run;
        match api.patch(o.name(), &pp, &Patch::Apply(&o.manifest)).await {
            Ok(obj) => Ok(obj.data["status"]["phase"].as_str().map(str::to_string)),
            // In a dry run, a missing namespace only means the namespace is created by this sync.
            Err(e) if dry_run && is_not_found(&e) => Err(ApplyFailure::NotYetResolvable),
            Err(e @ kube::Error::Api(_)) if matches!(&e, kube::Error::Api(s) if s.code == 409) => {
                Err(ApplyFailure::Conflict(e))
            }
            Err(e @ kube::Error::Api(_)) => Err(ApplyFailure::Refused(status_message(&e))),
            Err(e) => Err(ApplyFailure::Unreachable(e)),
        }
    }

    async fn wait_crd_established(&self, name: &str) -> Result<(), ApplyError> {
        let gvk = GroupVersionKind::gvk("apiextensions.k8s.io", "v1", "CustomResourceDefinition");
        let (ar, _) = self.resource(&gvk).await?;
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
        let deadline = Instant::now() + self.options.wait_timeout;
        loop {
            let crd = api.get(name).await?;
            let established = crd.data["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["type"] == "Established" && c["status"] == "True")
                });
            if established {
                // New kinds: forget cached discovery misses.
                if let Ok(mut m) = self.resources.lock() {
                    m.retain(|k, _| k.kind != "CustomResourceDefinition");
                }
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ApplyError::Timeout(format!(
                    "CRD {name} was not Established within {:?}",
                    self.options.wait_timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_namespace_active(&self, name: &str) -> Result<(), ApplyError> {
        let gvk = GroupVersionKind::gvk("", "v1", "Namespace");
        let (ar, _) = self.resource(&gvk).await?;
        let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
        let deadline = Instant::now() + self.options.wait_timeout;
        loop {
            let ns = api.get(name).await?;
            match ns.data["status"]["phase"].as_str() {
                Some("Active") => return Ok(()),
                Some("Terminating") => {
                    return Err(ApplyError::Timeout(format!(
                        "namespace {name} is still terminating from an earlier deletion; the next sync will retry"
                    )));
                }
                _ => {}
            }
            if Instant::now() > deadline {
                return Err(ApplyError::Timeout(format!(
                    "namespace {name} did not become Active within {:?}",
                    self.options.wait_timeout
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Creates missing generated secrets (random hex tokens); existing ones are never touched.
    async fn ensure_generated_secrets(
        &self,
        rendered: &Rendered,
        writes: &mut usize,
    ) -> Result<Vec<String>, ApplyError> {
        let secrets: &[GeneratedSecret] = &rendered.generated_secrets;
        let gvk = GroupVersionKind::gvk("", "v1", "Secret");
        let (ar, _) = self.resource(&gvk).await?;
        // One LIST of our secrets instead of a GET per secret.
        let all: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
        let selector = format!(
            "{REPOSITORY_LABEL}={},{CLUSTER_LABEL}={}",
            rendered.repository, rendered.cluster
        );
        let existing: std::collections::BTreeSet<(String, String)> = all
            .list_metadata(&ListParams::default().labels(&selector))
            .await?
            .items
            .into_iter()
            .map(|m| {
                (
                    m.metadata.namespace.unwrap_or_default(),
                    m.metadata.name.unwrap_or_default(),
                )
            })
            .collect();
        let mut created = Vec::new();
        for s in secrets {
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &s.namespace, &ar);
            match existing.contains(&(s.namespace.clone(), s.name.clone())) {
                true => continue,
                false => {
                    let token = random_hex(s.random_bytes)
                        .map_err(|e| ApplyError::Timeout(format!("reading random bytes: {e}")))?;
                    let obj: DynamicObject = serde_json::from_value(json!({
                        "apiVersion": "v1",
                        "kind": "Secret",
                        "metadata": {
                            "name": s.name,
                            "namespace": s.namespace,
                            "labels": {
                                "app.kubernetes.io/managed-by": kars_renderer::render::MANAGED_BY,
                                REPOSITORY_LABEL: rendered.repository,
                                CLUSTER_LABEL: rendered.cluster,
                            },
                            "annotations": {"gitops.kars.io/generated": "true", "gitops.kars.io/source": s.source},
                        },
                        "type": "Opaque",
                        "stringData": {s.key.clone(): token},
                    }))
                    .map_err(|e| ApplyError::Timeout(format!("building Secret {}: {e}", s.name)))?;
                    match api.create(&PostParams::default(), &obj).await {
                        Ok(_) => {
                            *writes += 1;
                            created.push(format!("Secret/{}/{}", s.namespace, s.name));
                        }
                        Err(kube::Error::Api(st)) if st.code == 409 => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Ok(created)
    }
}

enum ApplyFailure {
    /// The kind or namespace does not exist yet.
    NotYetResolvable,
    /// The API server refused the object.
    Refused(String),
    /// Another field manager owns fields we set.
    Conflict(kube::Error),
    /// The API server could not be reached.
    Unreachable(kube::Error),
}

fn random_hex(n: usize) -> std::io::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(hex::encode(buf))
}

/// `live` reduced to the fields `desired` sets (named list items matched by name): what a diff
/// between the rendered object and the cluster should show.
pub fn project(desired: &Value, live: &Value) -> Value {
    match (desired, live) {
        (Value::Object(d), Value::Object(l)) => Value::Object(
            d.iter()
                .filter_map(|(k, dv)| l.get(k).map(|lv| (k.clone(), project(dv, lv))))
                .collect(),
        ),
        (Value::Array(d), Value::Array(l)) => {
            let named = !d.is_empty()
                && d.iter()
                    .all(|x| x.get("name").is_some_and(Value::is_string));
            if named {
                Value::Array(
                    d.iter()
                        .filter_map(|dx| {
                            l.iter()
                                .find(|lx| lx.get("name") == dx.get("name"))
                                .map(|lx| project(dx, lx))
                        })
                        .collect(),
                )
            } else {
                Value::Array(
                    d.iter()
                        .zip(l)
                        .map(|(a, b)| project(a, b))
                        .chain(l.iter().skip(d.len()).cloned())
                        .collect(),
                )
            }
        }
        (_, l) => l.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subset_accepts_server_defaults_and_detects_edits() {
        let desired = json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "a", "image": "x"}]}}}});
        let live = json!({"spec": {"replicas": 1, "progressDeadlineSeconds": 600,
            "template": {"spec": {"containers": [{"name": "a", "image": "x", "imagePullPolicy": "Always"}, {"name": "b", "image": "y"}]}}}});
        assert!(is_subset(&desired, &live));
        let edited = json!({"spec": {"replicas": 3, "template": {"spec": {"containers": [{"name": "a", "image": "x"}]}}}});
        assert!(!is_subset(&desired, &edited));
        let image_changed = json!({"spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "a", "image": "evil"}]}}}});
        assert!(!is_subset(&desired, &image_changed));
        assert!(!is_subset(
            &json!({"args": ["a", "b"]}),
            &json!({"args": ["a"]})
        ));
        assert!(is_subset(&json!({"a": {}}), &json!({})));
    }
}
