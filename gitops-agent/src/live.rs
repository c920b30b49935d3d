//! The live view: which objects of the kinds we manage exist, at which `resourceVersion`, kept
//! by metadata-only watches instead of being listed again by every sync.
//!
//! Two halves:
//! - **the view**: one `kube-runtime` metadata watcher per managed kind (label
//!   `app.kubernetes.io/managed-by=kars-gitops`), started when a render first names the kind; it
//!   keeps `key → resourceVersion` only, never bodies (a Secret's data is never seen);
//! - **facts**: what a sync learnt from the last body it saw of an object (a list or get, the
//!   server-side-apply response, a status patch response): the `resourceVersion` of that body,
//!   the rendered digest it was found to hold, its health, a kars CR's status.
//!
//! A fact is used only while the view says the object is still at the `resourceVersion` it was
//! learnt at: any change in the cluster (a hand edit, a controller's status update, a delete)
//! moves the object on and the next sync reads it again. A kind whose watch has not finished its
//! initial list, or whose stream failed since its last event (a dropped connection, a 410 Gone
//! before the relist completes), is not trusted at all: the sync lists that kind in full, as it
//! did before the view existed.
//!
//! The view can lag: a change made a moment before a sync may be seen only by the next one — the
//! same bound every watch-based reconciler (Flux, Argo CD) has. It never makes the agent create
//! or delete anything: an object absent from the view is read before it is applied, and prune
//! reads every object it deletes.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use kars_contract::KARS_API_VERSION;
use kars_contract::labels::{
    CLUSTER_LABEL, MANAGED_BY, MANAGED_BY_LABEL, OBJECT_DIGEST_ANNOTATION, OWNER_ANNOTATION,
    REPOSITORY_LABEL,
};
use kars_renderer::{Rendered, RenderedObject};
use kube::api::{Api, DynamicObject, PartialObjectMeta};
use kube::core::GroupVersionKind;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher::{self, Event};
use serde_json::{Value, json};

use crate::cluster::{Cluster, Ownership, gvk, is_not_found, key, ownership};
use crate::compare::is_subset;
use crate::health::ObjectHealth;

/// Where one object stands in the view.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Seen {
    /// The kind is not watched, still being listed, or its stream failed since its last event:
    /// the view knows nothing, read the cluster.
    Unknown,
    /// The watch says the object does not exist.
    Absent,
    /// The watch says it exists at this `resourceVersion`.
    At(String),
}

/// One change the watch of a kind reported (the watcher's events, reduced to a key and what is
/// kept: a resourceVersion for managed kinds).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change<T = String> {
    /// A relist started: the objects that follow replace the kind's view at [`Change::InitDone`].
    Init,
    /// An object of the relist: (key, what is kept).
    InitApply(String, T),
    /// The relist is complete: the kind's view is current.
    InitDone,
    /// An object was created or changed: (key, what is kept).
    Apply(String, T),
    /// An object was deleted.
    Delete(String),
    /// The stream failed (it is retried with backoff): the kind is not trusted until its next
    /// event.
    Failed,
}

/// The view of one kind: key → what is kept of each object (its resourceVersion, or a
/// [`PodSummary`]).
struct KindView<T> {
    /// True from the first completed list until a stream failure (and again after the next
    /// event).
    current: bool,
    /// Set once an initial list completed; a failure before that leaves the kind unknown.
    listed: bool,
    /// key → what is kept.
    objects: HashMap<String, T>,
    /// The relist in progress.
    relist: Option<HashMap<String, T>>,
}

impl<T> Default for KindView<T> {
    fn default() -> Self {
        KindView {
            current: false,
            listed: false,
            objects: HashMap::new(),
            relist: None,
        }
    }
}

impl<T> KindView<T> {
    fn apply(&mut self, change: Change<T>) {
        match change {
            Change::Init => {
                self.relist = Some(HashMap::new());
                self.current = false;
            }
            Change::InitApply(k, v) => {
                self.relist.get_or_insert_with(HashMap::new).insert(k, v);
            }
            Change::InitDone => {
                // Objects gone during the gap are not in the relist, so they leave the view.
                self.objects = self.relist.take().unwrap_or_default();
                self.listed = true;
                self.current = true;
            }
            Change::Apply(k, v) => {
                self.objects.insert(k, v);
                self.current = self.listed && self.relist.is_none();
            }
            Change::Delete(k) => {
                self.objects.remove(&k);
                self.current = self.listed && self.relist.is_none();
            }
            Change::Failed => self.current = false,
        }
    }
}

/// What the enforcement check needs of a sandbox pod.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodSummary {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// The pod IP while the pod is Running.
    pub running_ip: Option<String>,
    /// Its resourceVersion (any change to the pod, a container restart included, moves it).
    pub resource_version: String,
}

impl PodSummary {
    /// The summary of a pod.
    pub fn of(pod: &k8s_openapi::api::core::v1::Pod) -> Self {
        let status = pod.status.as_ref();
        PodSummary {
            namespace: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            labels: pod.metadata.labels.clone().unwrap_or_default(),
            running_ip: status
                .filter(|s| s.phase.as_deref() == Some("Running"))
                .and_then(|s| s.pod_ip.clone()),
            resource_version: pod.metadata.resource_version.clone().unwrap_or_default(),
        }
    }
}

/// What was learnt from the last body seen of one object.
#[derive(Clone, Debug)]
struct Facts {
    /// The body's resourceVersion.
    resource_version: String,
    /// The rendered object digest the body was found to hold (digest annotation equal and every
    /// rendered field holding our value); `None` when it differed.
    holds: Option<String>,
    /// The labels and owner annotation that decide whose the object is.
    owner_meta: Value,
    /// Its health (checked kinds only).
    health: Option<ObjectHealth>,
    /// A kars CR: its generation, status-subresource managers and status.
    status: Option<Value>,
}

/// The shared state the watch tasks write into.
#[derive(Default)]
struct State {
    kinds: Mutex<HashMap<GroupVersionKind, KindView<String>>>,
    facts: Mutex<HashMap<String, Facts>>,
    /// Sandbox pods (label `kars.azure.com/sandbox`), for the enforcement check.
    pods: Mutex<KindView<PodSummary>>,
    /// Router pods confirmed to enforce: `namespace/name` → (pod resourceVersion, the
    /// expected digests they reported).
    enforced: Mutex<HashMap<String, (String, String)>>,
}

/// The live view of one agent process, shared by its syncs (see the module documentation).
pub struct LiveView {
    state: Arc<State>,
    /// The kinds a watch was started for, and the tasks running them (aborted on drop).
    watches: Mutex<HashMap<GroupVersionKind, tokio::task::JoinHandle<()>>>,
    /// The sandbox pods' watch.
    pod_watch: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for LiveView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let watched = self.watches.lock().map(|w| w.len()).unwrap_or_default();
        let known = self.state.facts.lock().map(|f| f.len()).unwrap_or_default();
        f.debug_struct("LiveView")
            .field("watched_kinds", &watched)
            .field("objects_with_facts", &known)
            .finish()
    }
}

impl Default for LiveView {
    fn default() -> Self {
        LiveView::new()
    }
}

impl Drop for LiveView {
    fn drop(&mut self) {
        if let Ok(w) = self.watches.lock() {
            for task in w.values() {
                task.abort();
            }
        }
        if let Ok(Some(task)) = self.pod_watch.lock().as_deref() {
            task.abort();
        }
    }
}

impl LiveView {
    /// An empty view with no watches.
    pub fn new() -> Self {
        LiveView {
            state: Arc::new(State::default()),
            watches: Mutex::new(HashMap::new()),
            pod_watch: Mutex::new(None),
        }
    }

    /// Starts the watch of sandbox pods (label `kars.azure.com/sandbox`) unless it runs: the
    /// enforcement check finds the routers to ask in it.
    pub fn watch_pods(&self, client: &kube::Client) {
        let Ok(mut slot) = self.pod_watch.lock() else {
            return;
        };
        if slot.as_ref().is_some_and(|t| !t.is_finished()) {
            return;
        }
        let api: Api<k8s_openapi::api::core::v1::Pod> = Api::all(client.clone());
        let config = watcher::Config::default().labels(kars_contract::labels::SANDBOX_LABEL);
        let state = self.state.clone();
        *slot = Some(tokio::spawn(async move {
            let _untrust = Untrust(state.clone(), None);
            let events = watcher::watcher(api, config).default_backoff();
            futures_util::pin_mut!(events);
            let key = |p: &k8s_openapi::api::core::v1::Pod| {
                key(
                    "Pod",
                    p.metadata.namespace.as_deref(),
                    p.metadata.name.as_deref().unwrap_or_default(),
                )
            };
            while let Some(event) = events.next().await {
                let change = match event {
                    Ok(Event::Init) => Change::Init,
                    Ok(Event::InitApply(p)) => Change::InitApply(key(&p), PodSummary::of(&p)),
                    Ok(Event::InitDone) => Change::InitDone,
                    Ok(Event::Apply(p)) => Change::Apply(key(&p), PodSummary::of(&p)),
                    Ok(Event::Delete(p)) => Change::Delete(key(&p)),
                    Err(e) => {
                        tracing::debug!(error = %e, "pod watch failed; the enforcement check lists pods until it is back");
                        Change::Failed
                    }
                };
                state.apply_pod(change);
            }
        }));
    }

    /// Applies one change to the sandbox pods' view (what the watch task calls; public for
    /// tests).
    pub fn apply_pod_change(&self, change: Change<PodSummary>) {
        self.state.apply_pod(change);
    }

    /// The sandbox pods, when the pod watch is current.
    pub fn pods(&self) -> Option<Vec<PodSummary>> {
        let pods = self.state.pods.lock().ok()?;
        pods.current
            .then(|| pods.objects.values().cloned().collect())
    }

    /// True when the router pod `p` was confirmed to enforce `expected` (a fingerprint of the
    /// expected digests) and has not changed since.
    pub fn enforced(&self, p: &PodSummary, expected: &str) -> bool {
        self.state.enforced.lock().is_ok_and(|e| {
            e.get(&format!("{}/{}", p.namespace, p.name))
                .is_some_and(|(rv, exp)| *rv == p.resource_version && exp == expected)
        })
    }

    /// Records that the router pod `p` reported `expected`.
    pub fn confirm_enforced(&self, p: &PodSummary, expected: &str) {
        if let Ok(mut e) = self.state.enforced.lock() {
            e.insert(
                format!("{}/{}", p.namespace, p.name),
                (p.resource_version.clone(), expected.to_string()),
            );
        }
    }

    /// Starts a watch for every kind in `rendered` (and Secrets, when it generates any) not
    /// watched yet. A kind the API server does not serve yet is tried again at the next call.
    pub async fn watch_kinds(&self, cluster: &Cluster, rendered: &Rendered) {
        let mut wanted: Vec<GroupVersionKind> = rendered
            .objects
            .iter()
            .map(|o| gvk(o.api_version(), o.kind()))
            .collect();
        if !rendered.generated_secrets.is_empty() {
            wanted.push(gvk("v1", "Secret"));
        }
        let mut seen = HashSet::new();
        wanted.retain(|k| seen.insert(k.clone()));
        for kind in wanted {
            // A watch whose task ended (its runtime shut down) is started again.
            if self
                .watches
                .lock()
                .is_ok_and(|w| w.get(&kind).is_some_and(|t| !t.is_finished()))
            {
                continue;
            }
            let ar = match cluster.resource(&kind).await {
                Ok((ar, _)) => ar,
                Err(e) if is_not_found(&e) => continue,
                Err(e) => {
                    tracing::debug!(kind = %kind.kind, error = %e, "cannot watch this kind yet");
                    continue;
                }
            };
            // Metadata only: a Secret's data, a ConfigMap's policy never reach the view.
            let api: Api<PartialObjectMeta<DynamicObject>> =
                Api::all_with(cluster.client().clone(), &ar);
            let config =
                watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={MANAGED_BY}"));
            let (state, k) = (self.state.clone(), kind.clone());
            let task = tokio::spawn(async move {
                // However the task ends (aborted, its runtime gone), the kind is not trusted.
                let _untrust = Untrust(state.clone(), Some(k.clone()));
                let events = watcher::watcher(api, config).default_backoff();
                futures_util::pin_mut!(events);
                let mut warned = false;
                while let Some(event) = events.next().await {
                    let change = match event {
                        Ok(Event::Init) => Change::Init,
                        Ok(Event::InitApply(m)) => Change::InitApply(
                            meta_key(&k.kind, &m.metadata),
                            m.metadata.resource_version.unwrap_or_default(),
                        ),
                        Ok(Event::InitDone) => Change::InitDone,
                        Ok(Event::Apply(m)) => Change::Apply(
                            meta_key(&k.kind, &m.metadata),
                            m.metadata.resource_version.unwrap_or_default(),
                        ),
                        Ok(Event::Delete(m)) => Change::Delete(meta_key(&k.kind, &m.metadata)),
                        Err(e) => {
                            if is_forbidden(&e) && !warned {
                                warned = true;
                                if k.kind == "Secret" {
                                    // The chart grants Secrets by name only, on purpose.
                                    tracing::info!(error = %e, "may not watch Secrets: generated Secrets are looked up by name at each sync");
                                } else {
                                    tracing::warn!(kind = %k.kind, error = %e, "may not watch this kind: every sync reads its objects instead (grant list and watch to keep a live view)");
                                }
                            } else {
                                tracing::debug!(kind = %k.kind, error = %e, "watch failed; syncs read this kind until the watch is back");
                            }
                            Change::Failed
                        }
                    };
                    state.apply(&k, change);
                }
            });
            if let Ok(mut w) = self.watches.lock() {
                w.insert(kind, task);
            }
        }
    }

    /// Applies one change to the view of `kind` (what the watch tasks call; public for tests).
    pub fn apply_change(&self, kind: &GroupVersionKind, change: Change) {
        self.state.apply(kind, change);
    }

    /// Where the object `key` of `kind` stands.
    pub fn seen(&self, kind: &GroupVersionKind, key: &str) -> Seen {
        let Ok(kinds) = self.state.kinds.lock() else {
            return Seen::Unknown;
        };
        match kinds.get(kind) {
            Some(v) if v.current => match v.objects.get(key) {
                Some(rv) => Seen::At(rv.clone()),
                None => Seen::Absent,
            },
            _ => Seen::Unknown,
        }
    }

    /// True when every watched kind (and the sandbox pods, once watched) has finished its
    /// initial list and is current.
    pub fn is_current(&self) -> bool {
        let pods_watched = self.pod_watch.lock().is_ok_and(|w| w.is_some());
        if pods_watched && self.pods().is_none() {
            return false;
        }
        let started: Vec<GroupVersionKind> = self
            .watches
            .lock()
            .map(|w| w.keys().cloned().collect())
            .unwrap_or_default();
        let Ok(kinds) = self.state.kinds.lock() else {
            return false;
        };
        started
            .iter()
            .all(|k| kinds.get(k).is_some_and(|v| v.current))
    }

    /// Waits up to `timeout` for [`LiveView::is_current`]; returns whether it became so.
    pub async fn wait_current(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while !self.is_current() {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// Records what the body `live` of the rendered object `o` says (a body read, or returned by
    /// a write). Never call it with a dry run's response: that body was not stored.
    pub fn observe(&self, o: &RenderedObject, live: &Value) {
        let meta = &live["metadata"];
        let Some(rv) = meta["resourceVersion"].as_str() else {
            return;
        };
        let digest = &o.manifest["metadata"]["annotations"][OBJECT_DIGEST_ANNOTATION];
        let holds = (meta["annotations"][OBJECT_DIGEST_ANNOTATION] == *digest
            && is_subset(&o.manifest, live))
        .then(|| digest.as_str().unwrap_or_default().to_string());
        let labels = &meta["labels"];
        let owner_meta = json!({"metadata": {
            "labels": {
                MANAGED_BY_LABEL: labels[MANAGED_BY_LABEL],
                REPOSITORY_LABEL: labels[REPOSITORY_LABEL],
                CLUSTER_LABEL: labels[CLUSTER_LABEL],
            },
            "annotations": {OWNER_ANNOTATION: meta["annotations"][OWNER_ANNOTATION]},
        }});
        let health = crate::health::is_checked(o.api_version(), o.kind())
            .then(|| crate::health::judge(o, Some(live)));
        let status = (o.api_version() == KARS_API_VERSION).then(|| status_snapshot(live));
        let facts = Facts {
            resource_version: rv.to_string(),
            holds,
            owner_meta,
            health,
            status,
        };
        if let Ok(mut f) = self.state.facts.lock() {
            f.insert(o.key(), facts);
        }
    }

    /// `read` of the facts about `o`, when the view says it is still at the version they were
    /// learnt at (read in place: no copy per object).
    fn with_current_facts<R>(
        &self,
        o: &RenderedObject,
        read: impl FnOnce(&Facts) -> R,
    ) -> Option<R> {
        let key = o.key();
        let Seen::At(rv) = self.seen(&gvk(o.api_version(), o.kind()), &key) else {
            return None;
        };
        let facts = self.state.facts.lock().ok()?;
        facts
            .get(&key)
            .filter(|f| f.resource_version == rv)
            .map(read)
    }

    /// True when the live object is known to hold exactly the rendered `o` and to be owned by
    /// this repository, cluster and PolicyRepo (`owner`), with no read.
    pub fn holds(&self, o: &RenderedObject, rendered: &Rendered, owner: Option<&str>) -> bool {
        let digest = o.manifest["metadata"]["annotations"][OBJECT_DIGEST_ANNOTATION].as_str();
        digest.is_some()
            && self
                .with_current_facts(o, |f| {
                    f.holds.as_deref() == digest
                        && ownership(&f.owner_meta, rendered, owner) == Ownership::Ours
                })
                .unwrap_or(false)
    }

    /// The health of `o` as last read, when it has not changed since.
    pub fn health(&self, o: &RenderedObject) -> Option<ObjectHealth> {
        self.with_current_facts(o, |f| f.health.clone()).flatten()
    }

    /// A kars CR's generation, status managers and status as last read, when it has not changed
    /// since (a JSON object with `metadata.generation`, `metadata.managedFields` and `status`).
    pub fn status(&self, o: &RenderedObject) -> Option<Value> {
        self.with_current_facts(o, |f| f.status.clone()).flatten()
    }

    /// True when the view knows the object `key` of `kind` exists; `None` when it cannot say.
    pub fn exists(&self, kind: &GroupVersionKind, key: &str) -> Option<bool> {
        match self.seen(kind, key) {
            Seen::Unknown => None,
            Seen::Absent => Some(false),
            Seen::At(_) => Some(true),
        }
    }
}

impl State {
    fn apply(&self, kind: &GroupVersionKind, change: Change) {
        if let Ok(mut kinds) = self.kinds.lock() {
            kinds.entry(kind.clone()).or_default().apply(change);
        }
    }

    fn apply_pod(&self, change: Change<PodSummary>) {
        if let Ok(mut pods) = self.pods.lock() {
            pods.apply(change);
        }
    }
}

/// Marks a kind (`None`: the sandbox pods) not current when its watch task ends, however it
/// ends.
struct Untrust(Arc<State>, Option<GroupVersionKind>);

impl Drop for Untrust {
    fn drop(&mut self) {
        match &self.1 {
            Some(kind) => self.0.apply(kind, Change::Failed),
            None => self.0.apply_pod(Change::Failed),
        }
    }
}

/// True when the watch was refused by authorization (403).
fn is_forbidden(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => s.code == 403,
        watcher::Error::WatchError(s) => s.code == 403,
        _ => false,
    }
}

/// `kind/namespace/name` of a watched object.
fn meta_key(kind: &str, meta: &kube::api::ObjectMeta) -> String {
    key(
        kind,
        meta.namespace.as_deref(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

/// What the status writer needs of a kars CR: generation, who wrote its status, the status.
fn status_snapshot(live: &Value) -> Value {
    let managers: Vec<Value> = live["metadata"]["managedFields"]
        .as_array()
        .map(|fs| {
            fs.iter()
                .filter(|f| f["subresource"] == "status")
                .map(|f| json!({"manager": f["manager"], "subresource": "status"}))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "metadata": {"generation": live["metadata"]["generation"], "managedFields": managers},
        "status": live["status"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use kars_renderer::rendered::Rendered;

    fn configmap(name: &str, data: &str) -> RenderedObject {
        let manifest = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": name, "namespace": "ns",
                "labels": {MANAGED_BY_LABEL: MANAGED_BY, REPOSITORY_LABEL: "repo", CLUSTER_LABEL: "prod"},
                "annotations": {OBJECT_DIGEST_ANNOTATION: format!("sha256:{data}"), OWNER_ANNOTATION: "kars-gitops-system/repo"}},
            "data": {"k": data},
        });
        RenderedObject {
            manifest,
            source: "agents/a/x.yaml".into(),
            wave: 3,
        }
    }

    fn rendered(objects: Vec<RenderedObject>) -> Rendered {
        Rendered {
            repository: "repo".into(),
            cluster: "prod".into(),
            objects,
            generated_secrets: Vec::new(),
            routers: Vec::new(),
            allow_empty_prune: false,
            digest: String::new(),
            held_back: Vec::new(),
        }
    }

    /// The live copy of `o` at `rv` (the API server adds fields of its own).
    fn live(o: &RenderedObject, rv: &str) -> Value {
        let mut l = o.manifest.clone();
        l["metadata"]["resourceVersion"] = json!(rv);
        l["metadata"]["uid"] = json!("u-1");
        l
    }

    const OWNER: Option<&str> = Some("kars-gitops-system/repo");

    fn cm() -> GroupVersionKind {
        gvk("v1", "ConfigMap")
    }

    fn listed(view: &LiveView, objects: &[(&str, &str)]) {
        view.apply_change(&cm(), Change::Init);
        for (k, rv) in objects {
            view.apply_change(&cm(), Change::InitApply(k.to_string(), rv.to_string()));
        }
        view.apply_change(&cm(), Change::InitDone);
    }

    #[test]
    fn an_object_seen_unchanged_since_it_was_read_needs_no_read() {
        let view = LiveView::new();
        let a = configmap("a", "1");
        let r = rendered(vec![a.clone()]);
        view.observe(&a, &live(&a, "10"));
        // Before the watch listed the kind, nothing is trusted.
        assert!(!view.holds(&a, &r, OWNER));
        listed(&view, &[("ConfigMap/ns/a", "10")]);
        assert!(view.holds(&a, &r, OWNER));
        // Another PolicyRepo asking, or another render of it: not held.
        assert!(!view.holds(&a, &r, Some("kars-gitops-system/other")));
        assert!(!view.holds(&configmap("a", "2"), &r, OWNER));
    }

    #[test]
    fn any_change_in_the_cluster_means_read_again() {
        let view = LiveView::new();
        let a = configmap("a", "1");
        let r = rendered(vec![a.clone()]);
        view.observe(&a, &live(&a, "10"));
        listed(&view, &[("ConfigMap/ns/a", "10")]);
        // A hand edit moves the version on.
        view.apply_change(&cm(), Change::Apply("ConfigMap/ns/a".into(), "11".into()));
        assert!(!view.holds(&a, &r, OWNER));
        // Read again: equal again (someone edited a field we do not render).
        view.observe(&a, &live(&a, "11"));
        assert!(view.holds(&a, &r, OWNER));
        // A body that differs from the render is never held, whatever its version.
        let mut edited = live(&a, "12");
        edited["data"]["k"] = json!("by hand");
        view.observe(&a, &edited);
        view.apply_change(&cm(), Change::Apply("ConfigMap/ns/a".into(), "12".into()));
        assert!(!view.holds(&a, &r, OWNER));
        // Deleted: absent, not held.
        view.apply_change(&cm(), Change::Delete("ConfigMap/ns/a".into()));
        assert_eq!(view.seen(&cm(), "ConfigMap/ns/a"), Seen::Absent);
        assert!(!view.holds(&a, &r, OWNER));
    }

    #[test]
    fn a_failed_stream_is_not_trusted_until_its_next_event_and_a_relist_replaces_the_view() {
        let view = LiveView::new();
        let a = configmap("a", "1");
        let r = rendered(vec![a.clone()]);
        view.observe(&a, &live(&a, "10"));
        listed(&view, &[("ConfigMap/ns/a", "10"), ("ConfigMap/ns/b", "7")]);
        view.apply_change(&cm(), Change::Failed);
        assert_eq!(view.seen(&cm(), "ConfigMap/ns/a"), Seen::Unknown);
        assert!(!view.holds(&a, &r, OWNER));
        // 410 Gone: the watcher relists; until the relist is done the kind stays unknown.
        view.apply_change(&cm(), Change::Init);
        view.apply_change(
            &cm(),
            Change::InitApply("ConfigMap/ns/a".into(), "10".into()),
        );
        assert_eq!(view.seen(&cm(), "ConfigMap/ns/a"), Seen::Unknown);
        view.apply_change(&cm(), Change::InitDone);
        assert!(view.holds(&a, &r, OWNER));
        // b was deleted while the stream was down: gone with the relist.
        assert_eq!(view.seen(&cm(), "ConfigMap/ns/b"), Seen::Absent);
        // A failure followed by a resumed watch's next event: current again.
        view.apply_change(&cm(), Change::Failed);
        view.apply_change(&cm(), Change::Apply("ConfigMap/ns/c".into(), "12".into()));
        assert!(view.holds(&a, &r, OWNER));
        // A failure before the first list completed: unknown until a list completes.
        let fresh = LiveView::new();
        fresh.apply_change(&cm(), Change::Failed);
        fresh.apply_change(&cm(), Change::Apply("ConfigMap/ns/a".into(), "10".into()));
        assert_eq!(fresh.seen(&cm(), "ConfigMap/ns/a"), Seen::Unknown);
    }

    #[test]
    fn a_router_pod_is_asked_again_when_it_or_what_it_must_enforce_changes() {
        let view = LiveView::new();
        let pod = PodSummary {
            namespace: "kars-a".into(),
            name: "a-1".into(),
            labels: Default::default(),
            running_ip: Some("10.0.0.5".into()),
            resource_version: "40".into(),
        };
        assert!(view.pods().is_none(), "not listed yet");
        view.apply_pod_change(Change::Init);
        view.apply_pod_change(Change::InitApply("Pod/kars-a/a-1".into(), pod.clone()));
        view.apply_pod_change(Change::InitDone);
        assert_eq!(view.pods(), Some(vec![pod.clone()]));
        assert!(!view.enforced(&pod, "digests-1"), "never confirmed");
        view.confirm_enforced(&pod, "digests-1");
        assert!(view.enforced(&pod, "digests-1"));
        // New digests to enforce (a policy changed): ask again.
        assert!(!view.enforced(&pod, "digests-2"));
        // The pod changed (its container restarted): ask again.
        let restarted = PodSummary {
            resource_version: "41".into(),
            ..pod.clone()
        };
        view.apply_pod_change(Change::Apply("Pod/kars-a/a-1".into(), restarted.clone()));
        assert!(!view.enforced(&restarted, "digests-1"));
        // A failed pod stream: the pods are not known, the check lists them.
        view.apply_pod_change(Change::Failed);
        assert!(view.pods().is_none());
    }

    #[test]
    fn an_object_of_another_repository_is_never_held() {
        let view = LiveView::new();
        let a = configmap("a", "1");
        let r = rendered(vec![a.clone()]);
        let mut theirs = live(&a, "10");
        theirs["metadata"]["labels"][REPOSITORY_LABEL] = json!("other");
        view.observe(&a, &theirs);
        listed(&view, &[("ConfigMap/ns/a", "10")]);
        assert!(!view.holds(&a, &r, OWNER));
    }

    #[test]
    fn kars_status_and_health_are_kept_with_the_version() {
        let view = LiveView::new();
        let manifest = json!({
            "apiVersion": KARS_API_VERSION, "kind": "KarsSandbox",
            "metadata": {"name": "s", "namespace": "ns", "annotations": {OBJECT_DIGEST_ANNOTATION: "sha256:1"}},
            "spec": {},
        });
        let s = RenderedObject {
            manifest,
            source: "agents/s/sandbox.yaml".into(),
            wave: 4,
        };
        let mut body = live(&s, "5");
        body["metadata"]["generation"] = json!(3);
        body["metadata"]["managedFields"] = json!([
            {"manager": "kars-gitops", "operation": "Apply", "fieldsV1": {"f:spec": {}}},
            {"manager": "kars-gitops-status", "subresource": "status", "fieldsV1": {"f:status": {}}},
        ]);
        body["status"] = json!({"conditions": [{"type": "Ready", "status": "True"}]});
        view.observe(&s, &body);
        let kind = gvk(KARS_API_VERSION, "KarsSandbox");
        view.apply_change(&kind, Change::Init);
        view.apply_change(
            &kind,
            Change::InitApply("KarsSandbox/ns/s".into(), "5".into()),
        );
        view.apply_change(&kind, Change::InitDone);
        let status = view.status(&s).expect("status kept");
        assert_eq!(status["metadata"]["generation"], 3);
        assert_eq!(
            status["metadata"]["managedFields"],
            json!([{"manager": "kars-gitops-status", "subresource": "status"}])
        );
        assert_eq!(status["status"], body["status"]);
        assert!(view.health(&s).is_some());
        view.apply_change(&kind, Change::Apply("KarsSandbox/ns/s".into(), "6".into()));
        assert!(view.status(&s).is_none());
        assert!(view.health(&s).is_none());
    }
}
