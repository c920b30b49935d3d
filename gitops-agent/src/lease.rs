//! Leader election with a `coordination.k8s.io/v1` Lease, so two replicas never apply at once.
//!
//! The holder renews every `lease_duration / 3`; another replica takes over only after the lease
//! has not been renewed for `lease_duration`. Updates use the Lease's resourceVersion, so two
//! candidates racing for an expired lease cannot both win.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{Api, PostParams};

/// Leader-election settings.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    /// Lease namespace.
    pub namespace: String,
    /// Lease name.
    pub name: String,
    /// This replica's identity (pod name).
    pub identity: String,
    /// How long a lease is valid without renewal.
    pub duration: Duration,
}

/// The outcome of one attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Leadership {
    /// We hold the lease.
    Leader,
    /// Someone else holds a valid lease.
    Follower(String),
}

fn now_micro() -> MicroTime {
    MicroTime(k8s_openapi::jiff::Timestamp::now())
}

/// Tries to acquire or renew the lease once.
pub async fn try_acquire(
    client: &kube::Client,
    cfg: &LeaseConfig,
) -> Result<Leadership, kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    let secs = i32::try_from(cfg.duration.as_secs()).unwrap_or(i32::MAX);
    match api.get_opt(&cfg.name).await? {
        None => {
            let lease: Lease = serde_json::from_value(serde_json::json!({
                "metadata": {"name": cfg.name, "namespace": cfg.namespace},
                "spec": {
                    "holderIdentity": cfg.identity,
                    "leaseDurationSeconds": secs,
                    "acquireTime": now_micro(),
                    "renewTime": now_micro(),
                    "leaseTransitions": 0,
                }
            }))
            .map_err(kube::Error::SerdeError)?;
            match api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(Leadership::Leader),
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    Ok(Leadership::Follower("another replica".into()))
                }
                Err(e) => Err(e),
            }
        }
        Some(mut lease) => {
            let spec = lease.spec.clone().unwrap_or_default();
            let holder = spec.holder_identity.clone().unwrap_or_default();
            let expired = match &spec.renew_time {
                Some(t) => {
                    let age = k8s_openapi::jiff::Timestamp::now().duration_since(t.0);
                    age.as_secs() >= i64::from(spec.lease_duration_seconds.unwrap_or(secs))
                }
                None => true,
            };
            if holder != cfg.identity && !holder.is_empty() && !expired {
                return Ok(Leadership::Follower(holder));
            }
            let mut new_spec = spec.clone();
            if holder != cfg.identity {
                new_spec.acquire_time = Some(now_micro());
                new_spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
            }
            new_spec.holder_identity = Some(cfg.identity.clone());
            new_spec.lease_duration_seconds = Some(secs);
            new_spec.renew_time = Some(now_micro());
            lease.spec = Some(new_spec);
            // replace() carries the resourceVersion: a concurrent update makes ours fail with 409.
            match api.replace(&cfg.name, &PostParams::default(), &lease).await {
                Ok(_) => Ok(Leadership::Leader),
                Err(kube::Error::Api(s)) if s.code == 409 => Ok(Leadership::Follower(
                    "another replica (lost the race)".into(),
                )),
                Err(e) => Err(e),
            }
        }
    }
}

/// Gives the lease up (on shutdown) so another replica can take over at once.
pub async fn release(client: &kube::Client, cfg: &LeaseConfig) -> Result<(), kube::Error> {
    let api: Api<Lease> = Api::namespaced(client.clone(), &cfg.namespace);
    if let Some(mut lease) = api.get_opt(&cfg.name).await?
        && lease
            .spec
            .as_ref()
            .and_then(|s| s.holder_identity.as_deref())
            == Some(cfg.identity.as_str())
    {
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.renew_time = None;
        }
        let _ = api.replace(&cfg.name, &PostParams::default(), &lease).await;
    }
    Ok(())
}
