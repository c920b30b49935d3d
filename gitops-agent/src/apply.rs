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

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{StreamExt, stream};
use kars_contract::Reason;
use kars_contract::labels::{
    CLUSTER_LABEL, GENERATED_ANNOTATION, MANAGED_BY, MANAGED_BY_LABEL, OBJECT_DIGEST_ANNOTATION,
    REPOSITORY_LABEL, SOURCE_ANNOTATION,
};
use kars_renderer::rendered::GeneratedSecret;
use kars_renderer::{Rendered, RenderedObject};
use kube::api::{Api, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::cluster::{Cluster, Ownership, gvk, is_not_found, ownership};
use crate::compare::{first_difference, is_subset};
use crate::live::{LiveView, Seen};
use crate::progress::{Event, Progress};

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
    /// The PolicyRepo applying (`<namespace>/<name>`): written into every applied object's
    /// [`kars_contract::labels::OWNER_ANNOTATION`]; a live object owned by another PolicyRepo is refused.
    pub owner: Option<String>,
    /// Where progress goes.
    pub progress: Progress,
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
            owner: None,
            progress: Progress::default(),
        }
    }
}

/// Why one object was not applied.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Refused {
    /// `ApplyFailed`, `Conflict` or `KindNotServed`.
    pub reason: Reason,
    /// What the API server said, and what to do.
    pub message: String,
}

/// Where an object drifted.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Drift {
    /// The first field that differs from the rendered value.
    pub at: String,
}

/// What happened to one object.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "action", rename_all = "camelCase")]
pub enum Action {
    /// It did not exist and was created.
    Created,
    /// It existed and was changed (new content or drift restored).
    Configured,
    /// Live equals rendered; no request was sent.
    Unchanged,
    /// Dry run: would be created.
    WouldCreate,
    /// Dry run: would be changed.
    WouldConfigure,
    /// Refused by the API server (or a conflict).
    Failed(Refused),
    /// Not attempted because another object failed first.
    Skipped,
    /// Changed in the cluster by someone else and left so, because self-heal is off.
    Drifted(Drift),
}

impl Action {
    /// The reason word of an action that is a failure (`None` for success).
    pub fn failure_reason(&self) -> Option<Reason> {
        match self {
            Action::Failed(r) => Some(r.reason),
            Action::Skipped => Some(Reason::Skipped),
            Action::Drifted(_) => Some(Reason::Drifted),
            _ => None,
        }
    }
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
#[serde(rename_all = "camelCase")]
pub struct ApplyReport {
    /// One entry per rendered object, in apply order.
    pub objects: Vec<ObjectOutcome>,
    /// Write requests sent (apply and create; dry runs not counted).
    pub writes: usize,
    /// Secrets created in the cluster.
    pub generated_secrets_created: Vec<String>,
    /// GET and LIST requests sent to learn the live state (0 in a no-op sync whose live view
    /// is current).
    pub reads: usize,
    /// The live objects read before applying (`kind/namespace/name` → object): later steps
    /// judge what this sync did not change from them instead of reading again. With a live
    /// view, objects it knew to be unchanged were not read and are not here.
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

    /// The reason word of a failed apply: the first refused object's (`Conflict`,
    /// `OwnedByAnotherPolicyRepo`, …), else `ApplyFailed`.
    pub fn failure_reason(&self) -> Reason {
        self.objects
            .iter()
            .find_map(|o| match &o.action {
                Action::Failed(r) => Some(r.reason),
                _ => None,
            })
            .unwrap_or(Reason::ApplyFailed)
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

    /// True when an object was created or changed.
    pub fn changed_anything(&self) -> bool {
        self.count(|a| matches!(a, Action::Created | Action::Configured)) > 0
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
    /// The system's random source failed (generated secrets).
    #[error("reading random bytes for a generated secret: {0}")]
    Random(#[source] std::io::Error),
}

impl ApplyError {
    /// The reason word.
    pub fn reason(&self) -> Reason {
        match self {
            ApplyError::Kube(_) | ApplyError::Random(_) => Reason::ApiServerUnavailable,
            ApplyError::Timeout(_) => Reason::WaitTimeout,
        }
    }
}

/// Why one server-side apply did not go through.
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

/// Applies rendered sets to one cluster.
pub struct Applier<'c> {
    cluster: &'c Cluster,
    options: ApplyOptions,
    view: Option<Arc<LiveView>>,
}

/// A kind whose objects more than this are to be read is listed instead of read one by one.
const GET_LIMIT: usize = 64;

impl<'c> Applier<'c> {
    /// An applier for `cluster`.
    pub fn new(cluster: &'c Cluster, options: ApplyOptions) -> Self {
        Applier {
            cluster,
            options,
            view: None,
        }
    }

    /// Compares with (and keeps up to date) the agent's live view: objects it knows to hold
    /// their render are not read (see [`crate::live`]).
    pub fn with_view(mut self, view: Option<Arc<LiveView>>) -> Self {
        self.view = view;
        self
    }

    /// Applies `rendered`. Per-object failures are in the report; `Err` means the apply could not
    /// run (API server unreachable, wait timed out).
    pub async fn apply(&self, rendered: &Rendered) -> Result<ApplyReport, ApplyError> {
        let before = self.cluster.reads();
        let mut report = self.plan_and_apply(rendered).await?;
        report.reads += self.cluster.reads().saturating_sub(before);
        Ok(report)
    }

    async fn plan_and_apply(&self, rendered: &Rendered) -> Result<ApplyReport, ApplyError> {
        let (live, held) = self.read_live(rendered).await?;
        let mut report = ApplyReport::default();
        let mut changed: Vec<(usize, bool)> = Vec::new(); // (index, exists)
        let mut foreign = false;
        for (i, o) in rendered.objects.iter().enumerate() {
            if held[i] {
                report.objects.push(outcome(o, Action::Unchanged));
                continue;
            }
            let current = live.get(&o.key());
            if let Some(Ownership::Foreign(owner)) =
                current.map(|l| ownership(l, rendered, self.options.owner.as_deref()))
            {
                foreign = true;
                report.objects.push(outcome(
                    o,
                    Action::Failed(Refused {
                        reason: Reason::OwnedByAnotherPolicyRepo,
                        message: format!(
                            "the live object belongs to {owner}; two PolicyRepos must not manage one object: remove it from one repository, or delete the other PolicyRepo (kars delete NAME)"
                        ),
                    }),
                ));
                continue;
            }
            let same_digest = current.is_some_and(|l| {
                l["metadata"]["annotations"][OBJECT_DIGEST_ANNOTATION]
                    == o.manifest["metadata"]["annotations"][OBJECT_DIGEST_ANNOTATION]
            });
            let unchanged = same_digest && current.is_some_and(|l| is_subset(&o.manifest, l));
            // Drift: our digest is live (Git did not change) but a field we set was changed.
            if same_digest && !unchanged && !self.options.self_heal {
                let at = current
                    .and_then(|l| first_difference(&o.manifest, l))
                    .unwrap_or_default();
                report
                    .objects
                    .push(outcome(o, Action::Drifted(Drift { at })));
                continue;
            }
            let action = if unchanged {
                Action::Unchanged
            } else {
                Action::Skipped
            };
            report.objects.push(outcome(o, action));
            if !unchanged {
                if let Some(l) = current {
                    tracing::info!(object = %o.key(), difference = ?first_difference(&o.manifest, l), "out of sync");
                }
                changed.push((i, current.is_some()));
            }
        }
        if foreign {
            // Nothing is written while another PolicyRepo owns one of the objects.
            return Ok(report);
        }
        let existing: HashSet<String> = rendered
            .objects
            .iter()
            .zip(&held)
            .filter(|(o, held)| **held || live.contains_key(&o.key()))
            .map(|(o, _)| o.key())
            .collect();
        let refused = self
            .dry_run_all(rendered, &existing, &changed, &mut report)
            .await?;
        if refused || self.options.dry_run {
            if self.options.dry_run && !refused {
                for (i, exists) in &changed {
                    report.objects[*i].action = if *exists {
                        Action::WouldConfigure
                    } else {
                        Action::WouldCreate
                    };
                }
            }
            return Ok(report);
        }
        let failed = self.apply_in_waves(rendered, &changed, &mut report).await?;
        report.live_before = live;
        if !failed {
            report.generated_secrets_created = self
                .ensure_generated_secrets(rendered, &mut report.writes, &mut report.reads)
                .await?;
        }
        Ok(report)
    }

    /// The live objects the compare needs, and per rendered object whether the live view
    /// already knows it to hold its render (then it is not read). Without a view, or for a kind
    /// the view does not know, the kind is listed; otherwise what is left is read one by one
    /// (a kind with more than [`GET_LIMIT`] to read is listed). Every body read is recorded in
    /// the view.
    async fn read_live(
        &self,
        rendered: &Rendered,
    ) -> Result<(BTreeMap<String, Value>, Vec<bool>), ApplyError> {
        let mut held = vec![false; rendered.objects.len()];
        let Some(view) = &self.view else {
            return Ok((self.cluster.list_live(rendered, |_, _| true).await?, held));
        };
        view.watch_kinds(self.cluster, rendered).await;
        let owner = self.options.owner.as_deref();
        let mut listed: HashSet<(String, String)> = HashSet::new();
        let mut to_get: BTreeMap<(String, String), Vec<usize>> = BTreeMap::new();
        for (i, o) in rendered.objects.iter().enumerate() {
            // The SRE step reads its actions' cluster copies (an approval set by hand) from
            // what this step read.
            if o.kind() != "KarsSREAction" && view.holds(o, rendered, owner) {
                held[i] = true;
                continue;
            }
            let kind = (o.api_version().to_string(), o.kind().to_string());
            if view.seen(&gvk(o.api_version(), o.kind()), &o.key()) == Seen::Unknown {
                listed.insert(kind);
            } else {
                to_get.entry(kind).or_default().push(i);
            }
        }
        let mut gets: Vec<&RenderedObject> = Vec::new();
        for (kind, members) in to_get {
            if members.len() > GET_LIMIT || listed.contains(&kind) {
                listed.insert(kind);
            } else {
                gets.extend(members.into_iter().map(|i| &rendered.objects[i]));
            }
        }
        let mut live = if listed.is_empty() {
            BTreeMap::new()
        } else {
            self.cluster
                .list_live(rendered, move |api_version, kind| {
                    listed.contains(&(api_version.to_string(), kind.to_string()))
                })
                .await?
        };
        live.extend(
            self.cluster
                .get_many(&gets, self.options.concurrency)
                .await?,
        );
        for (o, held) in rendered.objects.iter().zip(&held) {
            if let (false, Some(body)) = (*held, live.get(&o.key())) {
                view.observe(o, body);
            }
        }
        Ok((live, held))
    }

    /// Dry-runs every changed object that can be checked now (objects in namespaces this sync
    /// creates cannot: their namespace is missing). Returns true when one was refused.
    async fn dry_run_all(
        &self,
        rendered: &Rendered,
        existing: &HashSet<String>,
        changed: &[(usize, bool)],
        report: &mut ApplyReport,
    ) -> Result<bool, ApplyError> {
        let new_namespaces: BTreeSet<&str> = rendered
            .objects
            .iter()
            .filter(|o| {
                o.kind() == "Namespace" && o.api_version() == "v1" && !existing.contains(&o.key())
            })
            .map(|o| o.name())
            .collect();
        // Owned indices: closures over references trip higher-ranked lifetime inference when
        // the future is spawned.
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
        let results: Vec<(usize, Result<Value, ApplyFailure>)> = stream::iter(checks)
            .buffer_unordered(self.options.concurrency.max(1))
            .collect()
            .await;
        let mut refused = false;
        for (i, r) in results {
            match r {
                Ok(_) | Err(ApplyFailure::NotYetResolvable) => {}
                Err(ApplyFailure::Unreachable(e)) => return Err(e.into()),
                Err(failure) => {
                    report.objects[i].action = failed(&rendered.objects[i], failure);
                    refused = true;
                }
            }
        }
        Ok(refused)
    }

    /// Applies the changed objects wave by wave. Returns true when one failed (later waves
    /// are then skipped).
    async fn apply_in_waves(
        &self,
        rendered: &Rendered,
        changed: &[(usize, bool)],
        report: &mut ApplyReport,
    ) -> Result<bool, ApplyError> {
        let mut waves: BTreeMap<u8, Vec<(usize, bool)>> = BTreeMap::new();
        for (i, exists) in changed {
            waves
                .entry(rendered.objects[*i].wave)
                .or_default()
                .push((*i, *exists));
        }
        let total = changed.len();
        let done = std::sync::atomic::AtomicUsize::new(0);
        let done = &done;
        self.options
            .progress
            .emit(Event::Applied { done: 0, total });
        for (_, members) in waves {
            let jobs = members.clone().into_iter().map(|(i, exists)| async move {
                let o = &rendered.objects[i];
                let r = self.server_apply(o, false).await;
                let n = done.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
                self.options
                    .progress
                    .emit(Event::Applied { done: n, total });
                (i, exists, r)
            });
            let results: Vec<_> = stream::iter(jobs)
                .buffer_unordered(self.options.concurrency.max(1))
                .collect()
                .await;
            let mut any_failed = false;
            let mut active_namespaces = BTreeSet::new();
            for (i, exists, r) in results {
                match r {
                    Ok(body) => {
                        if body["status"]["phase"] == "Active" {
                            active_namespaces.insert(i);
                        }
                        if let Some(view) = &self.view {
                            view.observe(&rendered.objects[i], &body);
                        }
                        report.writes += 1;
                        report.objects[i].action = if exists {
                            Action::Configured
                        } else {
                            Action::Created
                        };
                    }
                    Err(ApplyFailure::Unreachable(e)) => return Err(e.into()),
                    Err(failure) => {
                        if !matches!(failure, ApplyFailure::NotYetResolvable) {
                            report.writes += 1;
                        }
                        report.objects[i].action = failed(&rendered.objects[i], failure);
                        any_failed = true;
                    }
                }
            }
            if any_failed {
                return Ok(true);
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
        Ok(false)
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

    /// Applies one object; returns the object the API server returned. A conflict with fields
    /// changed by hand is taken back when self-heal is on.
    async fn server_apply(&self, o: &RenderedObject, dry_run: bool) -> Result<Value, ApplyFailure> {
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
                    return self.server_apply_with(o, dry_run, true).await;
                }
                Err(ApplyFailure::Conflict(e))
            }
            other => other,
        }
    }

    async fn server_apply_with(
        &self,
        o: &RenderedObject,
        dry_run: bool,
        force: bool,
    ) -> Result<Value, ApplyFailure> {
        let (ar, namespaced) = match self.cluster.resource(&gvk(o.api_version(), o.kind())).await {
            Ok(r) => r,
            Err(e) if is_not_found(&e) => return Err(ApplyFailure::NotYetResolvable),
            Err(e) => return Err(ApplyFailure::Unreachable(e)),
        };
        let api = self.cluster.api(&ar, namespaced, o.namespace());
        let mut pp = PatchParams::apply(&self.options.field_manager);
        if force {
            pp = pp.force();
        }
        pp.dry_run = dry_run;
        match api.patch(o.name(), &pp, &Patch::Apply(&o.manifest)).await {
            Ok(obj) => Ok(crate::cluster::as_json(&obj, &ar)),
            // In a dry run, a missing namespace only means the namespace is created by this sync.
            Err(e) if dry_run && is_not_found(&e) => Err(ApplyFailure::NotYetResolvable),
            Err(e @ kube::Error::Api(_)) if matches!(&e, kube::Error::Api(s) if s.code == 409) => {
                Err(ApplyFailure::Conflict(e))
            }
            Err(e @ kube::Error::Api(_)) if matches!(&e, kube::Error::Api(s) if s.code == 403) => {
                Err(ApplyFailure::Refused(format!(
                    "{}; the agent's identity may not write this kind here (with the Helm chart: grant it in rbac.extraRules, and list the namespace in admissionPolicy.extraNamespaces if the repository does not create it)",
                    status_message(&e)
                )))
            }
            Err(e @ kube::Error::Api(_)) => Err(ApplyFailure::Refused(status_message(&e))),
            Err(e) => Err(ApplyFailure::Unreachable(e)),
        }
    }

    async fn wait_crd_established(&self, name: &str) -> Result<(), ApplyError> {
        let deadline = Instant::now() + self.options.wait_timeout;
        loop {
            let crd = self
                .cluster
                .get(
                    "apiextensions.k8s.io/v1",
                    "CustomResourceDefinition",
                    None,
                    name,
                )
                .await?
                .unwrap_or(Value::Null);
            let established = crd["status"]["conditions"].as_array().is_some_and(|cs| {
                cs.iter()
                    .any(|c| c["type"] == "Established" && c["status"] == "True")
            });
            if established {
                // New kinds: forget cached discovery misses.
                self.cluster.forget_crds();
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
        let deadline = Instant::now() + self.options.wait_timeout;
        loop {
            let ns = self
                .cluster
                .get("v1", "Namespace", None, name)
                .await?
                .unwrap_or(Value::Null);
            match ns["status"]["phase"].as_str() {
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
        reads: &mut usize,
    ) -> Result<Vec<String>, ApplyError> {
        let secrets: &[GeneratedSecret] = &rendered.generated_secrets;
        if secrets.is_empty() {
            return Ok(Vec::new());
        }
        let (ar, _) = self.cluster.resource(&gvk("v1", "Secret")).await?;
        // The live view knows which exist when it may watch Secrets (metadata only).
        let secret_kind = gvk("v1", "Secret");
        let known: Option<BTreeSet<(String, String)>> = self.view.as_ref().and_then(|view| {
            let mut existing = BTreeSet::new();
            for s in secrets {
                let k = crate::cluster::key("Secret", Some(&s.namespace), &s.name);
                if view.exists(&secret_kind, &k)? {
                    existing.insert((s.namespace.clone(), s.name.clone()));
                }
            }
            Some(existing)
        });
        // Else one LIST of our secrets instead of a GET per secret.
        let all: Api<DynamicObject> = Api::all_with(self.cluster.client().clone(), &ar);
        let selector = format!(
            "{REPOSITORY_LABEL}={},{CLUSTER_LABEL}={}",
            rendered.repository, rendered.cluster
        );
        let listed = match known {
            Some(k) => Ok(k),
            None => {
                *reads += 1;
                all.list_metadata(&ListParams::default().labels(&selector))
                    .await
                    .map(|list| {
                        list.items
                            .into_iter()
                            .map(|m| {
                                (
                                    m.metadata.namespace.unwrap_or_default(),
                                    m.metadata.name.unwrap_or_default(),
                                )
                            })
                            .collect()
                    })
            }
        };
        let existing: BTreeSet<(String, String)> = match listed {
            Ok(existing) => existing,
            // Least privilege (the chart's RBAC): listing Secrets cluster-wide would be
            // reading every Secret, so only `get` of the generated names is granted.
            Err(kube::Error::Api(st)) if st.code == 403 => {
                *reads += secrets.len();
                self.existing_generated_secrets(secrets, &ar).await?
            }
            Err(e) => return Err(e.into()),
        };
        let mut created = Vec::new();
        for s in secrets {
            if existing.contains(&(s.namespace.clone(), s.name.clone())) {
                continue;
            }
            let token = random_hex(s.random_bytes).map_err(ApplyError::Random)?;
            let obj: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {
                    "name": s.name,
                    "namespace": s.namespace,
                    "labels": {
                        MANAGED_BY_LABEL: MANAGED_BY,
                        REPOSITORY_LABEL: rendered.repository,
                        CLUSTER_LABEL: rendered.cluster,
                    },
                    "annotations": {GENERATED_ANNOTATION: "true", SOURCE_ANNOTATION: s.source},
                },
                "type": "Opaque",
                "stringData": {s.key.clone(): token},
            }))
            .map_err(|e| ApplyError::Kube(kube::Error::SerdeError(e)))?;
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.cluster.client().clone(), &s.namespace, &ar);
            match api.create(&PostParams::default(), &obj).await {
                Ok(_) => {
                    *writes += 1;
                    created.push(format!("Secret/{}/{}", s.namespace, s.name));
                }
                Err(kube::Error::Api(st)) if st.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(created)
    }

    /// The generated secrets that exist, one GET each (a few at a time), for an identity that
    /// may not list Secrets.
    async fn existing_generated_secrets(
        &self,
        secrets: &[GeneratedSecret],
        ar: &kube::discovery::ApiResource,
    ) -> Result<BTreeSet<(String, String)>, ApplyError> {
        use futures_util::TryStreamExt;
        // Owned per request, so the futures borrow nothing across the await points.
        let lookups: Vec<_> = secrets
            .iter()
            .map(|s| {
                let api: Api<DynamicObject> =
                    Api::namespaced_with(self.cluster.client().clone(), &s.namespace, ar);
                (api, s.namespace.clone(), s.name.clone())
            })
            .collect();
        let found: Vec<Option<(String, String)>> = stream::iter(lookups)
            .map(|(api, namespace, name)| async move {
                match api.get_metadata_opt(&name).await {
                    Ok(Some(_)) => Ok(Some((namespace, name))),
                    Ok(None) => Ok(None),
                    Err(e) => Err(ApplyError::from(e)),
                }
            })
            .buffer_unordered(16)
            .try_collect()
            .await?;
        Ok(found.into_iter().flatten().collect())
    }
}

fn outcome(o: &RenderedObject, action: Action) -> ObjectOutcome {
    ObjectOutcome {
        object: o.key(),
        source: o.source.clone(),
        action,
    }
}

/// The action of a refused object, with its reason and what to do.
fn failed(o: &RenderedObject, failure: ApplyFailure) -> Action {
    let (reason, message) = match failure {
        ApplyFailure::NotYetResolvable => (
            Reason::KindNotServed,
            format!(
                "the API server does not serve {} {}; is its CRD installed?",
                o.api_version(),
                o.kind()
            ),
        ),
        ApplyFailure::Refused(m) => (Reason::ApplyFailed, m),
        ApplyFailure::Conflict(e) => (
            Reason::Conflict,
            format!(
                "{}; another field manager owns these fields. Remove them there, or sync with --force-conflicts to take them over",
                status_message(&e)
            ),
        ),
        ApplyFailure::Unreachable(e) => (Reason::ApiServerUnavailable, status_message(&e)),
    };
    Action::Failed(Refused { reason, message })
}

fn random_hex(n: usize) -> std::io::Result<String> {
    use std::io::Read;
    let mut buf = vec![0u8; n];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut buf)?;
    Ok(hex::encode(buf))
}
