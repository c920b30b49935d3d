//! Running one approved action with short-lived, scoped rights: a RoleBinding in the target
//! namespace only (never cluster-wide) grants upstream's writer ClusterRole to the
//! ServiceAccount `kars-sre/sre-writer`; the agent impersonates that ServiceAccount for the
//! writes and deletes the binding afterwards, whatever happened. Writes are server-side apply
//! under [`FIELD_MANAGER`] (forced: the action is approved to take the fields); deletes carry
//! the uid read before the intent was recorded, so a re-created object of the same name is
//! never deleted.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, ResourceQuota};
use k8s_openapi::api::rbac::v1::RoleBinding;
use kars_contract::Reason;
use kars_renderer::sre::{SRE_NAMESPACE, SreOperation};
use kube::api::{
    Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions,
};
use kube::core::GroupVersionKind;
use serde_json::{Value, json};

/// Field manager of the writes an action makes.
pub const FIELD_MANAGER: &str = "kars-gitops/sre-action";
/// The ServiceAccount actions run as.
pub const WRITER_SERVICE_ACCOUNT: &str = "sre-writer";
/// The label upstream's controller puts on quotas it manages (DeleteResourceQuota refuses them).
pub const CONTROLLER_MANAGED: (&str, &str) = ("kars.azure.com/managed-by", "controller");
/// Template annotation RolloutRestart sets.
pub const RESTARTED_AT: &str = "kars.azure.com/restartedAt";

/// Why an action did not run (or not completely).
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// The quota is managed by the kars controller.
    #[error(
        "ResourceQuota {0} is managed by the kars controller (kars.azure.com/managed-by=controller); it is not deleted"
    )]
    ControllerManagedQuota(String),
    /// The target does not exist.
    #[error("{0} does not exist")]
    TargetMissing(String),
    /// The container is not in the Deployment.
    #[error("Deployment {target} has no container {container:?}")]
    NoSuchContainer {
        /// The Deployment.
        target: String,
        /// The container asked for.
        container: String,
    },
    /// No identity to run as was configured.
    #[error(
        "no scoped identity to run SRE actions as (the agent needs its kubeconfig to impersonate kars-sre/sre-writer)"
    )]
    NoWriter,
    /// The API server refused.
    #[error("{what}: {error}")]
    Kube {
        /// What was being done.
        what: String,
        /// The error.
        error: kube::Error,
    },
}

impl ExecError {
    /// The reason word.
    pub fn reason(&self) -> Reason {
        match self {
            ExecError::ControllerManagedQuota(_) => Reason::ControllerManagedQuota,
            _ => Reason::ExecutionFailed,
        }
    }
}

fn kube_err(what: impl Into<String>) -> impl FnOnce(kube::Error) -> ExecError {
    let what = what.into();
    move |error| ExecError::Kube { what, error }
}

/// The name of the one-shot RoleBinding of action `name`.
pub fn binding_name(name: &str) -> String {
    let mut n = format!("kars-sre-write-{name}");
    n.truncate(253);
    n
}

fn workload_resource(kind: &str) -> ApiResource {
    ApiResource::from_gvk(&GroupVersionKind::gvk("apps", "v1", kind))
}

/// What recognises the action's effect later (see [`effect_visible`]): the uid of the object a
/// delete removes, the restart stamp. Read before the intent is recorded.
pub async fn effect_marker(
    admin: &kube::Client,
    op: &SreOperation,
    now_rfc3339: &str,
) -> Result<Option<String>, ExecError> {
    let uid_of = |v: Option<String>, target: String| v.ok_or(ExecError::TargetMissing(target));
    match op {
        SreOperation::DeleteResourceQuota { namespace, name } => {
            let api: Api<ResourceQuota> = Api::namespaced(admin.clone(), namespace);
            let q = api
                .get_opt(name)
                .await
                .map_err(kube_err(format!("reading {}", op.target())))?
                .ok_or_else(|| ExecError::TargetMissing(op.target()))?;
            let labels = q.metadata.labels.unwrap_or_default();
            if labels.get(CONTROLLER_MANAGED.0).map(String::as_str) == Some(CONTROLLER_MANAGED.1) {
                return Err(ExecError::ControllerManagedQuota(format!(
                    "{namespace}/{name}"
                )));
            }
            uid_of(q.metadata.uid, op.target()).map(Some)
        }
        SreOperation::DeletePod { namespace, name } => {
            let api: Api<Pod> = Api::namespaced(admin.clone(), namespace);
            let p = api
                .get_opt(name)
                .await
                .map_err(kube_err(format!("reading {}", op.target())))?
                .ok_or_else(|| ExecError::TargetMissing(op.target()))?;
            uid_of(p.metadata.uid, op.target()).map(Some)
        }
        SreOperation::RolloutRestart {
            namespace,
            name,
            kind,
        } => {
            let api: Api<DynamicObject> =
                Api::namespaced_with(admin.clone(), namespace, &workload_resource(kind));
            api.get_opt(name)
                .await
                .map_err(kube_err(format!("reading {}", op.target())))?
                .ok_or_else(|| ExecError::TargetMissing(op.target()))?;
            Ok(Some(now_rfc3339.to_string()))
        }
        SreOperation::ScaleDeployment {
            namespace, name, ..
        } => {
            let api: Api<Deployment> = Api::namespaced(admin.clone(), namespace);
            api.get_opt(name)
                .await
                .map_err(kube_err(format!("reading {}", op.target())))?
                .ok_or_else(|| ExecError::TargetMissing(op.target()))?;
            Ok(None)
        }
        SreOperation::PatchDeploymentImage {
            namespace,
            name,
            container,
            ..
        } => {
            let api: Api<Deployment> = Api::namespaced(admin.clone(), namespace);
            let d = api
                .get_opt(name)
                .await
                .map_err(kube_err(format!("reading {}", op.target())))?
                .ok_or_else(|| ExecError::TargetMissing(op.target()))?;
            let has = d
                .spec
                .and_then(|s| s.template.spec)
                .is_some_and(|s| s.containers.iter().any(|c| &c.name == container));
            if !has {
                return Err(ExecError::NoSuchContainer {
                    target: op.target(),
                    container: container.clone(),
                });
            }
            Ok(None)
        }
    }
}

fn managed_by_us(obj: &Value) -> bool {
    obj["metadata"]["managedFields"]
        .as_array()
        .is_some_and(|f| f.iter().any(|m| m["manager"] == FIELD_MANAGER))
}

/// After a crash between recording the intent and the result: whether the action's effect is
/// in the cluster (then it ran).
pub async fn effect_visible(
    admin: &kube::Client,
    op: &SreOperation,
    marker: Option<&str>,
) -> Result<bool, kube::Error> {
    match op {
        SreOperation::DeleteResourceQuota { namespace, name } => {
            let api: Api<ResourceQuota> = Api::namespaced(admin.clone(), namespace);
            Ok(api
                .get_opt(name)
                .await?
                .is_none_or(|q| q.metadata.uid.as_deref() != marker))
        }
        SreOperation::DeletePod { namespace, name } => {
            let api: Api<Pod> = Api::namespaced(admin.clone(), namespace);
            Ok(api
                .get_opt(name)
                .await?
                .is_none_or(|p| p.metadata.uid.as_deref() != marker))
        }
        SreOperation::ScaleDeployment {
            namespace,
            name,
            replicas,
        } => {
            let api: Api<Deployment> = Api::namespaced(admin.clone(), namespace);
            let Some(d) = api.get_opt(name).await? else {
                return Ok(false);
            };
            let v = serde_json::to_value(&d).unwrap_or_default();
            Ok(v["spec"]["replicas"].as_i64() == Some(*replicas) && managed_by_us(&v))
        }
        SreOperation::PatchDeploymentImage {
            namespace,
            name,
            container,
            image,
        } => {
            let api: Api<Deployment> = Api::namespaced(admin.clone(), namespace);
            let Some(d) = api.get_opt(name).await? else {
                return Ok(false);
            };
            let v = serde_json::to_value(&d).unwrap_or_default();
            let set = v["spec"]["template"]["spec"]["containers"]
                .as_array()
                .is_some_and(|cs| {
                    cs.iter()
                        .any(|c| c["name"] == container.as_str() && c["image"] == image.as_str())
                });
            Ok(set && managed_by_us(&v))
        }
        SreOperation::RolloutRestart {
            namespace,
            name,
            kind,
        } => {
            let api: Api<DynamicObject> =
                Api::namespaced_with(admin.clone(), namespace, &workload_resource(kind));
            let Some(o) = api.get_opt(name).await? else {
                return Ok(false);
            };
            Ok(
                o.data["spec"]["template"]["metadata"]["annotations"][RESTARTED_AT].as_str()
                    == marker,
            )
        }
    }
}

/// Runs actions as `kars-sre/sre-writer` through a one-shot, namespace-scoped RoleBinding.
#[derive(Clone)]
pub struct Executor {
    admin: kube::Client,
    writer: Option<kube::Config>,
}

impl std::fmt::Debug for Executor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Executor")
            .field("writer", &self.writer.is_some())
            .finish()
    }
}

impl Executor {
    /// `admin` is the agent's own client (binding, reads); `base` the agent's configuration,
    /// from which the impersonating client is made (`None`: actions cannot run).
    pub fn new(admin: kube::Client, base: Option<kube::Config>) -> Executor {
        let writer = base.map(|mut c| {
            c.auth_info.impersonate = Some(format!(
                "system:serviceaccount:{SRE_NAMESPACE}:{WRITER_SERVICE_ACCOUNT}"
            ));
            c.auth_info.impersonate_groups = None;
            c
        });
        Executor { admin, writer }
    }

    /// Runs `op` for action `name` (`marker` from [`effect_marker`]). The binding is removed
    /// before this returns, also when the action failed.
    pub async fn run(
        &self,
        name: &str,
        op: &SreOperation,
        marker: Option<&str>,
    ) -> Result<(), ExecError> {
        let config = self.writer.clone().ok_or(ExecError::NoWriter)?;
        let writer =
            kube::Client::try_from(config).map_err(kube_err("building the writer client"))?;
        let binding = binding_name(name);
        let bindings: Api<RoleBinding> = Api::namespaced(self.admin.clone(), op.namespace());
        let rb: RoleBinding = serde_json::from_value(json!({
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {
                "name": binding,
                "namespace": op.namespace(),
                "labels": {
                    "app.kubernetes.io/managed-by": "kars-gitops",
                    "app.kubernetes.io/component": "sre-writer",
                    "kars.azure.com/sre-action": name.chars().take(63).collect::<String>(),
                },
            },
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": op.writer_role()},
            "subjects": [{"kind": "ServiceAccount", "name": WRITER_SERVICE_ACCOUNT, "namespace": SRE_NAMESPACE}],
        }))
        .map_err(|e| ExecError::Kube {
            what: "building the RoleBinding".into(),
            error: kube::Error::SerdeError(e),
        })?;
        match bindings.create(&PostParams::default(), &rb).await {
            Ok(_) => {}
            Err(kube::Error::Api(s)) if s.code == 409 => {}
            Err(e) => {
                return Err(kube_err(format!(
                    "binding {} in {}",
                    op.writer_role(),
                    op.namespace()
                ))(e));
            }
        }
        let result = self.write_with_retry(&writer, op, marker).await;
        // Torn down whatever happened; a failure to do so is logged, and the next action's
        // binding of the same name is replaced.
        if let Err(e) = bindings.delete(&binding, &DeleteParams::default()).await
            && !crate::cluster::is_not_found(&e)
        {
            tracing::warn!(binding = %binding, namespace = op.namespace(), error = %e, "could not remove the SRE writer binding");
        }
        result
    }

    /// The RBAC authorizer sees a new binding within moments: retry a forbidden write briefly.
    async fn write_with_retry(
        &self,
        writer: &kube::Client,
        op: &SreOperation,
        marker: Option<&str>,
    ) -> Result<(), ExecError> {
        let mut delay = Duration::from_millis(100);
        for attempt in 0..6 {
            match write(writer, op, marker).await {
                Err(ExecError::Kube {
                    error: kube::Error::Api(s),
                    ..
                }) if s.code == 403 && attempt < 5 => {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                other => return other,
            }
        }
        Ok(())
    }
}

async fn write(
    writer: &kube::Client,
    op: &SreOperation,
    marker: Option<&str>,
) -> Result<(), ExecError> {
    let apply = PatchParams::apply(FIELD_MANAGER).force();
    let what = op.change();
    match op {
        SreOperation::ScaleDeployment {
            namespace,
            name,
            replicas,
        } => {
            let api: Api<Deployment> = Api::namespaced(writer.clone(), namespace);
            let scale = json!({
                "apiVersion": "autoscaling/v1", "kind": "Scale",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"replicas": replicas},
            });
            api.patch_scale(name, &apply, &Patch::Apply(&scale))
                .await
                .map_err(kube_err(what))?;
        }
        SreOperation::PatchDeploymentImage {
            namespace,
            name,
            container,
            image,
        } => {
            let api: Api<Deployment> = Api::namespaced(writer.clone(), namespace);
            let patch = json!({
                "apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"template": {"spec": {"containers": [{"name": container, "image": image}]}}},
            });
            api.patch(name, &apply, &Patch::Apply(&patch))
                .await
                .map_err(kube_err(what))?;
        }
        SreOperation::RolloutRestart {
            namespace,
            name,
            kind,
        } => {
            let api: Api<DynamicObject> =
                Api::namespaced_with(writer.clone(), namespace, &workload_resource(kind));
            let patch = json!({
                "apiVersion": "apps/v1", "kind": kind,
                "metadata": {"name": name, "namespace": namespace},
                "spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: marker.unwrap_or_default()}}}},
            });
            api.patch(name, &apply, &Patch::Apply(&patch))
                .await
                .map_err(kube_err(what))?;
        }
        SreOperation::DeleteResourceQuota { namespace, name } => {
            let api: Api<ResourceQuota> = Api::namespaced(writer.clone(), namespace);
            delete_exact(&api, name, marker)
                .await
                .map_err(kube_err(what))?;
        }
        SreOperation::DeletePod { namespace, name } => {
            let api: Api<Pod> = Api::namespaced(writer.clone(), namespace);
            delete_exact(&api, name, marker)
                .await
                .map_err(kube_err(what))?;
        }
    }
    Ok(())
}

async fn delete_exact<K>(api: &Api<K>, name: &str, uid: Option<&str>) -> Result<(), kube::Error>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let params = DeleteParams {
        preconditions: uid.map(|u| Preconditions {
            uid: Some(u.to_string()),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Ok(_) => Ok(()),
        Err(e) if crate::cluster::is_not_found(&e) => Ok(()),
        Err(e) => Err(e),
    }
}
