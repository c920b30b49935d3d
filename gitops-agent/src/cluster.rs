//! Cluster access shared by apply, prune, health, enforcement and the read-only views: the kube
//! client, kind discovery (cached per sync), and the live objects kars GitOps owns.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Mutex;

use kars_contract::labels::{
    CLUSTER_LABEL, MANAGED_BY, MANAGED_BY_LABEL, OWNER_ANNOTATION, REPOSITORY_LABEL,
};
use kars_renderer::{Rendered, RenderedObject};
use kube::api::{Api, ApiResource, DynamicObject, ListParams};
use kube::core::GroupVersionKind;
use kube::discovery::{self, Scope};
use serde_json::{Value, json};

/// Builds a kube client from a kubeconfig file, or from the environment (in-cluster config,
/// `KUBECONFIG`, `~/.kube/config`) when `None`.
pub async fn kube_client(kubeconfig: Option<&Path>) -> Result<kube::Client, kube::Error> {
    kube::Client::try_from(kube_config(kubeconfig).await?)
}

/// The client configuration from `kubeconfig`, or inferred (in-cluster, `$KUBECONFIG`,
/// `~/.kube/config`). The SRE executor derives its impersonating client from it.
pub async fn kube_config(kubeconfig: Option<&Path>) -> Result<kube::Config, kube::Error> {
    Ok(match kubeconfig {
        Some(path) => {
            let kc =
                kube::config::Kubeconfig::read_from(path).map_err(kube::Error::InferKubeconfig)?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(kube::Error::InferKubeconfig)?
        }
        None => kube::Config::infer()
            .await
            .map_err(kube::Error::InferConfig)?,
    })
}

/// True when the API server answered 404.
pub fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

/// The group/version/kind of `apiVersion` + `kind`.
pub fn gvk(api_version: &str, kind: &str) -> GroupVersionKind {
    let (group, version) = match api_version.split_once('/') {
        Some((g, v)) => (g, v),
        None => ("", api_version),
    };
    GroupVersionKind::gvk(group, version, kind)
}

/// `kind/namespace/name` (or `kind/name`), the key rendered and live objects share.
pub fn key(kind: &str, namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{kind}/{ns}/{name}"),
        None => format!("{kind}/{name}"),
    }
}

/// Objects per LIST page.
const LIST_PAGE: u32 = 1000;

/// Whose a live object is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Ownership {
    /// This repository, cluster and PolicyRepo (or an object applied before owners were
    /// recorded, by this repository and cluster).
    Ours,
    /// Someone else's, described for messages (`PolicyRepo ns/name`, or the repository and
    /// cluster labels).
    Foreign(String),
}

/// Whose `live` is, for the sync of `rendered` by the PolicyRepo `owner` (`ns/name`).
pub fn ownership(live: &Value, rendered: &Rendered, owner: Option<&str>) -> Ownership {
    let meta = &live["metadata"];
    let label = |k: &str| meta["labels"][k].as_str().unwrap_or_default();
    let recorded = meta["annotations"][OWNER_ANNOTATION].as_str();
    let (repository, cluster) = (label(REPOSITORY_LABEL), label(CLUSTER_LABEL));
    if let (Some(theirs), Some(ours)) = (recorded, owner)
        && theirs != ours
    {
        return Ownership::Foreign(format!("PolicyRepo {theirs}"));
    }
    if repository != rendered.repository || cluster != rendered.cluster {
        let by = recorded
            .map(|o| format!(" (PolicyRepo {o})"))
            .unwrap_or_default();
        return Ownership::Foreign(format!("repository {repository:?} cluster {cluster:?}{by}"));
    }
    Ownership::Ours
}

/// One cluster, with kind discovery cached.
pub struct Cluster {
    client: kube::Client,
    resources: Mutex<HashMap<GroupVersionKind, (ApiResource, bool)>>,
    /// GET and LIST requests sent through [`Cluster::get`] and [`Cluster::list_live`].
    reads: std::sync::atomic::AtomicUsize,
}

impl Cluster {
    /// A cluster reached through `client`.
    pub fn new(client: kube::Client) -> Self {
        Cluster {
            client,
            resources: Mutex::new(HashMap::new()),
            reads: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    /// GET and LIST requests for objects sent so far through [`Cluster::get`] and
    /// [`Cluster::list_live`] (a sync reports the difference across its steps).
    pub fn reads(&self) -> usize {
        self.reads.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count_read(&self) {
        self.reads
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// The client.
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// Resolves a kind to its API resource and whether it is namespaced (cached; a kind that
    /// is not served is a 404 error).
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

    /// Forgets cached discovery of CRDs (after new kinds became Established).
    pub fn forget_crds(&self) {
        if let Ok(mut m) = self.resources.lock() {
            m.retain(|k, _| k.kind != "CustomResourceDefinition");
        }
    }

    /// The API of `ar` for an object in `namespace` (cluster-scoped kinds ignore it).
    pub fn api(
        &self,
        ar: &ApiResource,
        namespaced: bool,
        namespace: Option<&str>,
    ) -> Api<DynamicObject> {
        match (namespaced, namespace) {
            (true, Some(ns)) => Api::namespaced_with(self.client.clone(), ns, ar),
            (true, None) => Api::default_namespaced_with(self.client.clone(), ar),
            (false, _) => Api::all_with(self.client.clone(), ar),
        }
    }

    /// The live copy of one object as JSON (with its apiVersion and kind), `None` when it (or
    /// its kind) does not exist.
    pub async fn get(
        &self,
        api_version: &str,
        kind: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, kube::Error> {
        let (ar, namespaced) = match self.resource(&gvk(api_version, kind)).await {
            Ok(r) => r,
            Err(e) if is_not_found(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        self.count_read();
        match self.api(&ar, namespaced, namespace).get_opt(name).await {
            Ok(Some(live)) => Ok(Some(as_json(&live, &ar))),
            Ok(None) => Ok(None),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The live copy of a rendered object.
    pub async fn get_rendered(&self, o: &RenderedObject) -> Result<Option<Value>, kube::Error> {
        self.get(o.api_version(), o.kind(), o.namespace(), o.name())
            .await
    }

    /// The live copies of `objects` (absent when not found), one GET each, `concurrency` at a
    /// time, keyed by `kind/namespace/name`.
    pub async fn get_many(
        &self,
        objects: &[&RenderedObject],
        concurrency: usize,
    ) -> Result<BTreeMap<String, Value>, kube::Error> {
        use futures_util::StreamExt;
        // Owned indices and a named function: a closure over references trips higher-ranked
        // lifetime inference when the sync future is spawned.
        let reads = (0..objects.len()).map(|i| self.get_keyed(objects[i]));
        let results: Vec<Result<(String, Option<Value>), kube::Error>> =
            futures_util::stream::iter(reads)
                .buffer_unordered(concurrency.max(1))
                .collect()
                .await;
        let mut out = BTreeMap::new();
        for r in results {
            if let (key, Some(live)) = r? {
                out.insert(key, live);
            }
        }
        Ok(out)
    }

    async fn get_keyed(&self, o: &RenderedObject) -> Result<(String, Option<Value>), kube::Error> {
        self.get_rendered(o).await.map(|live| (o.key(), live))
    }

    /// The live objects kars GitOps manages (by the managed-by label, one LIST per kind) of
    /// the kinds in `rendered` for which `wanted(apiVersion, kind)` holds, keyed by
    /// `kind/namespace/name`: ours and those of other repositories or PolicyRepos (see
    /// [`ownership`]). A kind the API server does not serve yet has nothing live.
    pub async fn list_live(
        &self,
        rendered: &Rendered,
        wanted: impl Fn(&str, &str) -> bool,
    ) -> Result<BTreeMap<String, Value>, kube::Error> {
        let selector = format!("{MANAGED_BY_LABEL}={MANAGED_BY}");
        let mut kinds: Vec<GroupVersionKind> = rendered
            .objects
            .iter()
            .filter(|o| wanted(o.api_version(), o.kind()))
            .map(|o| gvk(o.api_version(), o.kind()))
            .collect();
        kinds.sort_by(|a, b| (&a.group, &a.version, &a.kind).cmp(&(&b.group, &b.version, &b.kind)));
        kinds.dedup();
        // Only the keys rendered now are kept, and the lists are paged, so memory follows
        // this render, not every kars object of every repository in the cluster.
        let keys: std::collections::HashSet<String> =
            rendered.objects.iter().map(RenderedObject::key).collect();
        let mut live = BTreeMap::new();
        for gvk in kinds {
            let (ar, _) = match self.resource(&gvk).await {
                Ok(r) => r,
                Err(e) if is_not_found(&e) => continue,
                Err(e) => return Err(e),
            };
            let api: Api<DynamicObject> = Api::all_with(self.client.clone(), &ar);
            let mut params = ListParams::default().labels(&selector).limit(LIST_PAGE);
            loop {
                self.count_read();
                let page = match api.list(&params).await {
                    Ok(page) => page,
                    // A kind this identity may not list: nothing of it is seen live, and the
                    // apply of each such object reports the refusal with its own reason.
                    Err(kube::Error::Api(s)) if s.code == 403 => {
                        tracing::warn!(kind = %gvk.kind, "may not list this kind; its objects will be refused");
                        break;
                    }
                    Err(e) => return Err(e),
                };
                for item in page.items {
                    let k = key(
                        &gvk.kind,
                        item.metadata.namespace.as_deref(),
                        item.metadata.name.as_deref().unwrap_or_default(),
                    );
                    if keys.contains(&k) {
                        live.insert(k, as_json(&item, &ar));
                    }
                }
                match page.metadata.continue_.filter(|c| !c.is_empty()) {
                    Some(token) => params = params.continue_token(&token),
                    None => break,
                }
            }
        }
        Ok(live)
    }
}

/// A live object as JSON; list items carry no apiVersion/kind of their own, so they are set.
pub(crate) fn as_json(obj: &DynamicObject, ar: &ApiResource) -> Value {
    let mut value = serde_json::to_value(obj).unwrap_or(Value::Null);
    value["apiVersion"] = json!(ar.api_version);
    value["kind"] = json!(ar.kind);
    value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered() -> Rendered {
        Rendered {
            repository: "repo".into(),
            cluster: "prod".into(),
            objects: Vec::new(),
            generated_secrets: Vec::new(),
            routers: Vec::new(),
            allow_empty_prune: false,
            digest: String::new(),
            held_back: Vec::new(),
        }
    }

    fn live(repository: &str, cluster: &str, owner: Option<&str>) -> Value {
        let mut v = json!({"metadata": {"labels": {
            MANAGED_BY_LABEL: MANAGED_BY, REPOSITORY_LABEL: repository, CLUSTER_LABEL: cluster,
        }, "annotations": {}}});
        if let Some(o) = owner {
            v["metadata"]["annotations"][OWNER_ANNOTATION] = json!(o);
        }
        v
    }

    #[test]
    fn only_this_repository_cluster_and_policy_repo_is_ours() {
        let r = rendered();
        let me = Some("ns/me");
        assert_eq!(
            ownership(&live("repo", "prod", Some("ns/me")), &r, me),
            Ownership::Ours
        );
        // Applied before owners were recorded, by this repository and cluster: adopted.
        assert_eq!(
            ownership(&live("repo", "prod", None), &r, me),
            Ownership::Ours
        );
        // Every way of being someone else's.
        for (l, who) in [
            (
                live("repo", "prod", Some("ns/other")),
                "PolicyRepo ns/other",
            ),
            (
                live("repo", "prod", Some("other-ns/me")),
                "PolicyRepo other-ns/me",
            ),
            (live("other", "prod", None), "repository \"other\""),
            (live("repo", "staging", None), "cluster \"staging\""),
            (live("other", "prod", Some("ns/me")), "repository \"other\""),
            (json!({"metadata": {}}), "repository \"\""),
        ] {
            match ownership(&l, &r, me) {
                Ownership::Foreign(d) => assert!(d.contains(who), "{d} should name {who}"),
                Ownership::Ours => panic!("{l} must not be ours"),
            }
        }
    }
}
