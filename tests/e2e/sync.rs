//! The agent's sync against the real control plane and real git remotes: push → applied,
//! refusal of unsigned commits, pruning with its safety rules, drift restored, unreachable
//! remotes, and fault tests (API server stopped mid-sync, agent killed mid-apply).

use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use kars_e2e::fixture::{GitDaemon, PolicyRepoFixture};
use kars_e2e::{Cluster, PrivateCluster, block_on, install_kars_crds, unique_name};
use kars_gitops_agent::apply::Action;
use kars_gitops_agent::prune::PruneResult;
use kars_gitops_agent::status::PolicyRepo;
use kars_gitops_agent::sync::{SyncError, SyncOutcome, sync_once};
use kube::api::Api;
use libtest_mimic::Trial;

use crate::trial;

pub fn tests() -> Vec<Trial> {
    vec![
        trial(
            "sync::signed_push_over_file_and_git_daemon_is_applied",
            signed_push_is_applied,
        ),
        trial(
            "sync::unsigned_commit_is_refused_and_the_cluster_is_unchanged",
            unsigned_is_refused,
        ),
        trial(
            "sync::prune_deletes_only_what_left_git_and_is_ours",
            prune_rules,
        ),
        trial(
            "sync::drift_is_restored_other_managers_fields_are_kept",
            drift,
        ),
        trial(
            "sync::live_view_no_op_reads_nothing_hand_edits_and_deletes_are_restored",
            live_view,
        ),
        trial(
            "sync::unreachable_remote_is_reported_and_changes_nothing",
            unreachable_remote,
        ),
        trial(
            "faults::api_server_stopped_during_a_sync_then_the_next_converges",
            api_server_stopped,
        ),
        trial(
            "faults::agent_killed_mid_apply_then_restarted_converges",
            agent_killed,
        ),
    ]
}

fn never_stop() -> bool {
    false
}

async fn policy_repo(client: &kube::Client, f: &PolicyRepoFixture) -> Result<PolicyRepo> {
    let api: Api<PolicyRepo> = Api::namespaced(client.clone(), &format!("{}-status", f.prefix));
    Ok(api.get(&f.prefix).await?)
}

fn condition(pr: &PolicyRepo, t: &str) -> (String, String, String) {
    pr.status
        .as_ref()
        .and_then(|s| s.conditions.iter().find(|c| c.type_ == t))
        .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        .unwrap_or_default()
}

async fn sync(
    client: &kube::Client,
    cfg: &kars_gitops_agent::sync::SyncConfig,
) -> Result<SyncOutcome, SyncError> {
    sync_once(client.clone(), cfg, None, &never_stop).await
}

/// One sync that must succeed.
async fn synced(
    client: &kube::Client,
    cfg: &kars_gitops_agent::sync::SyncConfig,
) -> Result<SyncOutcome> {
    sync(client, cfg).await.map_err(|e| anyhow::anyhow!("{e}"))
}

/// A fixture repository with `agents` on the shared cluster (the kars CRDs installed).
fn fixture(prefix: &str, agents: &[&str]) -> Result<(&'static Cluster, PolicyRepoFixture)> {
    let cluster = Cluster::shared()?;
    install_kars_crds(cluster)?;
    Ok((
        cluster,
        PolicyRepoFixture::new(&unique_name(prefix), agents)?,
    ))
}

fn signed_push_is_applied() -> Result<()> {
    let (cluster, f) = fixture("push", &["a"])?;
    block_on(async {
        let client = cluster.client().await?;
        // file:// remote.
        let cfg = f.config(&f.file_url())?;
        let o = synced(&client, &cfg).await?;
        ensure!(
            o.converged(),
            "first sync did not converge: {:?}",
            o.apply.failures().collect::<Vec<_>>()
        );
        let sandboxes = f.sandboxes(&client);
        sandboxes
            .get(&f.agent("a"))
            .await
            .context("KarsSandbox not applied")?;
        let deployments: Api<Deployment> =
            Api::namespaced(client.clone(), &format!("kars-{}", f.agent("a")));
        deployments
            .get(&f.agent("a"))
            .await
            .context("Deployment not applied")?;
        let pr = policy_repo(&client, &f).await?;
        let st = pr.status.clone().unwrap_or_default();
        ensure!(
            st.last_applied_revision.as_deref() == Some(o.commit.as_str()),
            "status revision {:?} != {}",
            st.last_applied_revision,
            o.commit
        );
        ensure!(
            st.last_applied_signers == vec!["ops@kars.test".to_string()],
            "signers {:?}",
            st.last_applied_signers
        );
        ensure!(
            condition(&pr, "Ready").0 == "True",
            "Ready: {:?}",
            condition(&pr, "Ready")
        );
        ensure!(!st.inventory.is_empty());

        // A no-op sync sends no writes, not even to its own status (once health has settled:
        // the first look after an apply may see the ReplicaSet appear).
        synced(&client, &cfg).await?;
        let before = policy_repo(&client, &f).await?;
        let again = synced(&client, &cfg).await?;
        let after = policy_repo(&client, &f).await?;
        if before.metadata.resource_version != after.metadata.resource_version {
            let (b, a) = (
                serde_json::to_value(&before.status)?,
                serde_json::to_value(&after.status)?,
            );
            let changed: Vec<String> = a
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(k, v)| b.get(k.as_str()) != Some(v))
                .map(|(k, v)| {
                    format!(
                        "{k}: {} -> {v}",
                        b.get(k.as_str()).cloned().unwrap_or_default()
                    )
                })
                .collect();
            bail!("a no-op sync rewrote the PolicyRepo status: {changed:?}");
        }
        ensure!(
            again.apply.writes == 0,
            "no-op sync sent {} writes",
            again.apply.writes
        );
        ensure!(
            again
                .apply
                .objects
                .iter()
                .all(|o| o.action == Action::Unchanged)
        );

        // git:// remote served by git daemon: a new signed commit is applied.
        let remote_dir = f.remote.parent().context("remote parent")?.to_path_buf();
        let daemon = GitDaemon::start(&remote_dir)?;
        f.add_agent("b", &["pypi.org"])?;
        let head = f.commit_and_push("add agent b")?;
        let mut cfg = f.config(&format!("git://127.0.0.1:{}/remote.git", daemon.port))?;
        cfg.cache_dir = f.path().join("cache-daemon");
        let o = synced(&client, &cfg).await?;
        ensure!(
            o.commit == head && o.converged(),
            "git:// sync: commit {} (want {head}), converged {}",
            o.commit,
            o.converged()
        );
        ensure!(
            o.verification.commits.len() == 1,
            "only the new commit is verified, got {}",
            o.verification.commits.len()
        );
        let pr = policy_repo(&client, &f).await?;
        ensure!(pr.status.and_then(|s| s.last_applied_revision).as_deref() == Some(head.as_str()));
        Ok(())
    })
}

fn unsigned_is_refused() -> Result<()> {
    let (cluster, f) = fixture("unsigned", &["a"])?;
    block_on(async {
        let client = cluster.client().await?;
        let cfg = f.config(&f.file_url())?;
        let first = synced(&client, &cfg).await?;
        let cms: Api<ConfigMap> =
            Api::namespaced(client.clone(), &format!("kars-{}", f.agent("a")));
        let name = format!("karssandbox-{}-egress-allowlist", f.agent("a"));
        let before = cms.get(&name).await?.data;
        // An unsigned commit that would open egress to evil.example.
        f.add_agent("a", &["evil.example"])?;
        f.commit_unsigned_and_push("open egress")?;
        match sync(&client, &cfg).await {
            Err(SyncError::Untrusted(v)) => ensure!(
                v.first_problem().is_some_and(|p| p.contains("Unsigned")),
                "{:?}",
                v.first_problem()
            ),
            other => bail!(
                "an unsigned commit was not refused: {:?}",
                other.map(|o| o.commit)
            ),
        }
        ensure!(
            cms.get(&name).await?.data == before,
            "the allowlist changed although the commit was refused"
        );
        let pr = policy_repo(&client, &f).await?;
        let (status, reason, _) = condition(&pr, "Verified");
        ensure!(
            status == "False" && reason == "Unsigned",
            "Verified condition: {status} {reason}"
        );
        ensure!(
            pr.status.and_then(|s| s.last_applied_revision).as_deref()
                == Some(first.commit.as_str()),
            "last applied revision moved"
        );
        Ok(())
    })
}

fn prune_rules() -> Result<()> {
    let (cluster, f) = fixture("prune", &["a", "b"])?;
    let ns = f.namespace();
    f.work.write(
        "policies/keep.yaml",
        &format!("apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: keepme\n  namespace: {ns}\n  annotations: {{gitops.kars.io/prune: disabled}}\ndata: {{a: b}}\n"),
    )?;
    f.commit_and_push("add keepme")?;
    block_on(async {
        let client = cluster.client().await?;
        let cfg = f.config(&f.file_url())?;
        let o = synced(&client, &cfg).await?;
        ensure!(o.converged());
        let b_ns = format!("kars-{}", f.agent("b"));
        // Someone else's object in b's namespace, and one of b's objects taken over by hand.
        let (ok, _, err) = cluster.kubectl(&[
            "-n",
            &b_ns,
            "create",
            "configmap",
            "foreign",
            "--from-literal=x=1",
        ])?;
        ensure!(ok, "{err}");
        let approvals = format!("karssandbox-{}-egress-approvals", f.agent("b"));
        let (ok, _, err) = cluster.kubectl(&[
            "-n",
            &b_ns,
            "label",
            "configmap",
            &approvals,
            "app.kubernetes.io/managed-by-",
        ])?;
        ensure!(ok, "{err}");

        // Remove agent b and the keepme ConfigMap: more than 30% of the inventory.
        f.remove_agent("b")?;
        f.work.remove("policies/keep.yaml")?;
        f.commit_and_push("remove agent b")?;
        let o = synced(&client, &cfg).await?;
        ensure!(
            o.prune_refused
                .as_ref()
                .is_some_and(|r| r.contains("threshold")),
            "mass deletion not refused: {:?}",
            o.prune_refused
        );
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &b_ns);
        ensure!(
            deployments.get_opt(&f.agent("b")).await?.is_some(),
            "a refused prune deleted something"
        );
        let pr = policy_repo(&client, &f).await?;
        ensure!(
            condition(&pr, "Applied").1 == "PruneRefused",
            "Applied: {:?}",
            condition(&pr, "Applied")
        );

        // Regression: a dry run never said what would be pruned (PruneOptions::dry_run was
        // never read). With the threshold waived, it lists b's objects and deletes nothing.
        let inventory_before = policy_repo(&client, &f).await?.status.map(|s| s.inventory);
        let mut dry = cfg.clone();
        dry.apply.dry_run = true;
        dry.prune.allow_mass_prune = true;
        let o = synced(&client, &dry).await?;
        let b_deployment = format!("Deployment/{b_ns}/{}", f.agent("b"));
        ensure!(
            o.prune
                .iter()
                .any(|(k, r)| *k == b_deployment && *r == PruneResult::WouldDelete),
            "the dry run does not say b's Deployment would be pruned: {:?}",
            o.prune
        );
        ensure!(
            deployments.get_opt(&f.agent("b")).await?.is_some(),
            "a dry run deleted something"
        );
        ensure!(
            policy_repo(&client, &f).await?.status.map(|s| s.inventory) == inventory_before,
            "a dry run changed the inventory"
        );

        // Approve the mass deletion for this commit only.
        let mut cfg2 = cfg.clone();
        cfg2.prune.allow_mass_prune = true;
        let o = sync(&client, &cfg2)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        ensure!(o.prune_refused.is_none());
        let result = |suffix: &str| {
            o.prune
                .iter()
                .find(|(k, _)| k.ends_with(suffix))
                .map(|(_, r)| r.clone())
        };
        ensure!(
            deployments.get_opt(&f.agent("b")).await?.is_none(),
            "b's Deployment survived"
        );
        ensure!(
            matches!(
                result(&format!("Deployment/{b_ns}/{}", f.agent("b"))),
                Some(PruneResult::Deleted)
            ),
            "{:?}",
            o.prune
        );
        let keep: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        ensure!(
            keep.get_opt("keepme").await?.is_some(),
            "the prune-disabled ConfigMap was deleted"
        );
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &b_ns);
        ensure!(
            cms.get_opt(&approvals).await?.is_some(),
            "an object that lost our labels was deleted"
        );
        ensure!(
            cms.get_opt("foreign").await?.is_some(),
            "a foreign object was deleted"
        );
        ensure!(
            matches!(result(&format!("Namespace/{b_ns}")), Some(PruneResult::Kept(m)) if m.contains("foreign")),
            "namespace with foreign objects: {:?}",
            result(&format!("Namespace/{b_ns}"))
        );
        // The namespace stays in the inventory (retried); the orphans left it.
        let inv = policy_repo(&client, &f)
            .await?
            .status
            .map(|s| s.inventory)
            .unwrap_or_default();
        ensure!(
            inv.iter().any(|e| e == &format!("v1|Namespace||{b_ns}")),
            "kept namespace left the inventory"
        );
        ensure!(
            !inv.iter().any(|e| e.contains("keepme")),
            "orphaned object still in the inventory"
        );
        // Agent a is untouched.
        let a_deploy: Api<Deployment> =
            Api::namespaced(client.clone(), &format!("kars-{}", f.agent("a")));
        ensure!(a_deploy.get_opt(&f.agent("a")).await?.is_some());
        // Once the foreign object is gone, the next sync deletes the namespace.
        let (ok, _, err) =
            cluster.kubectl(&["-n", &b_ns, "delete", "configmap", "foreign", &approvals])?;
        ensure!(ok, "{err}");
        let o = synced(&client, &cfg).await?;
        ensure!(
            o.prune
                .iter()
                .any(|(k, r)| k == &format!("Namespace/{b_ns}")
                    && matches!(r, PruneResult::Deleted | PruneResult::Terminating)),
            "empty namespace not deleted: {:?}",
            o.prune
        );
        Ok(())
    })
}

fn drift() -> Result<()> {
    let (cluster, f) = fixture("drift", &["a"])?;
    block_on(async {
        let client = cluster.client().await?;
        let cfg = f.config(&f.file_url())?;
        synced(&client, &cfg).await?;
        let ns = format!("kars-{}", f.agent("a"));
        let name = f.agent("a");
        // By hand: scale (a field we own) and annotate (a field we do not set).
        let (ok, _, err) =
            cluster.kubectl(&["-n", &ns, "scale", "deployment", &name, "--replicas=3"])?;
        ensure!(ok, "{err}");
        let (ok, _, err) = cluster.kubectl(&[
            "-n",
            &ns,
            "annotate",
            "deployment",
            &name,
            "team.example/owner=alice",
        ])?;
        ensure!(ok, "{err}");
        // With self-heal off the drift is reported, not restored.
        let mut no_heal = cfg.clone();
        no_heal.apply.self_heal = false;
        let o = synced(&client, &no_heal).await?;
        let drifted = o
            .apply
            .objects
            .iter()
            .find(|x| x.object == format!("Deployment/{ns}/{name}"))
            .map(|x| x.action.clone());
        ensure!(
            matches!(&drifted, Some(Action::Drifted(d)) if d.at.contains("replicas")),
            "self-heal off: {drifted:?}"
        );
        ensure!(
            o.apply.writes == 0,
            "self-heal off still wrote {} times",
            o.apply.writes
        );
        let d: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        ensure!(
            d.get(&name).await?.spec.and_then(|s| s.replicas) == Some(3),
            "self-heal off restored the drift"
        );
        let o = synced(&client, &cfg).await?;
        ensure!(
            o.converged(),
            "drift repair failed: {:?}",
            o.apply.failures().collect::<Vec<_>>()
        );
        let live = d.get(&name).await?;
        ensure!(
            live.spec.as_ref().and_then(|s| s.replicas) == Some(1),
            "replicas not restored"
        );
        let ann = live.metadata.annotations.unwrap_or_default();
        ensure!(
            ann.get("team.example/owner").map(String::as_str) == Some("alice"),
            "another manager's field was removed"
        );
        // A controller (not a person) owning one of our fields is a conflict, reported, not forced.
        let patch = format!(
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{replicas: 2}}\n"
        );
        let file = f.path().join("hpa-like.yaml");
        std::fs::write(&file, patch)?;
        let (ok, _, err) = cluster.kubectl(&[
            "apply",
            "--server-side",
            "--field-manager=autoscaler-controller",
            "--force-conflicts",
            "-f",
            &file.to_string_lossy(),
        ])?;
        ensure!(ok, "{err}");
        let o = synced(&client, &cfg).await?;
        let failure = o
            .apply
            .failures()
            .next()
            .context("a conflict with a controller should be reported")?;
        ensure!(
            matches!(&failure.action, Action::Failed(f) if f.reason == kars_contract::Reason::Conflict && f.message.contains("conflict") && f.message.contains("--force-conflicts")),
            "{:?}",
            failure.action
        );
        ensure!(
            d.get(&name).await?.spec.and_then(|s| s.replicas) == Some(2),
            "a controller's field was forced without --force-conflicts"
        );
        let pr = policy_repo(&client, &f).await?;
        ensure!(
            pr.status
                .map(|s| s.failures.iter().any(|x| x.reason == "Conflict"))
                .unwrap_or(false),
            "conflict not in the status"
        );
        Ok(())
    })
}

/// Syncs until `done` holds for an outcome (the live view sees a change a few milliseconds
/// after it is made), at most 20 times; returns that outcome.
async fn sync_until(
    client: &kube::Client,
    cfg: &kars_gitops_agent::sync::SyncConfig,
    what: &str,
    done: impl Fn(&SyncOutcome) -> bool,
) -> Result<SyncOutcome> {
    for _ in 0..20 {
        let o = synced(client, cfg).await?;
        if done(&o) {
            return Ok(o);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("{what}: not so after 20 syncs")
}

fn live_view() -> Result<()> {
    let (cluster, f) = fixture("live", &["a", "b"])?;
    block_on(async {
        let client = cluster.client().await?;
        let mut cfg = f.config(&f.file_url())?;
        let view = std::sync::Arc::new(kars_gitops_agent::live::LiveView::new());
        cfg.live_view = Some(view.clone());
        cfg.render_memo = Some(std::sync::Arc::new(
            kars_gitops_agent::sync::memo::RenderMemo::new(),
        ));
        let first = synced(&client, &cfg).await?;
        ensure!(!first.render_reused, "nothing to reuse in a first sync");
        ensure!(first.converged(), "first sync: {:?}", first.ready);
        ensure!(
            view.wait_current(Duration::from_secs(30)).await,
            "the live view's watches did not list their kinds within 30 s"
        );
        // The first sync's writes and the controllers' status updates are seen; once they
        // settle a sync reads nothing and writes nothing.
        let objects = first.apply.objects.len();
        let noop = sync_until(&client, &cfg, "a no-op sync without reads", |o| {
            o.reads == 0
        })
        .await?;
        ensure!(
            noop.apply.writes == 0 && noop.kars_status_patched == 0,
            "no-op wrote: {} applies, {} status patches",
            noop.apply.writes,
            noop.kars_status_patched
        );
        ensure!(
            noop.apply.count(|a| *a == Action::Unchanged) == objects,
            "every object is known unchanged"
        );
        ensure!(
            noop.render_reused,
            "the same head tree is not rendered again"
        );
        // Health judged from what the view kept (no node here: the Deployments stay Progressing).
        ensure!(
            noop.health.checked == first.health.checked
                && noop.health.not_ready.len() == first.health.not_ready.len(),
            "health not judged from the view: {:?} (first sync: {:?})",
            noop.health,
            first.health
        );

        // A hand edit of a field we render: the view sees the new version, the sync reads that
        // object and restores it.
        let ns = format!("kars-{}", f.agent("a"));
        let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
        let cm = cms
            .list(&Default::default())
            .await?
            .items
            .into_iter()
            .find(|c| {
                c.metadata
                    .labels
                    .as_ref()
                    .is_some_and(|l| l.contains_key("app.kubernetes.io/managed-by"))
                    && c.data.as_ref().is_some_and(|d| !d.is_empty())
            })
            .context("a managed ConfigMap with data")?;
        let name = cm.metadata.name.clone().unwrap_or_default();
        let key = format!("ConfigMap/{ns}/{name}");
        let (field, original) = cm
            .data
            .as_ref()
            .and_then(|d| d.iter().next())
            .map(|(k, v)| (k.clone(), v.clone()))
            .context("data")?;
        let patch = serde_json::json!({"data": {field.clone(): "edited by hand"}});
        let (ok, _, err) = cluster.kubectl(&[
            "-n",
            &ns,
            "patch",
            "configmap",
            &name,
            "--type=merge",
            "-p",
            &patch.to_string(),
        ])?;
        ensure!(ok, "{err}");
        let restored = sync_until(&client, &cfg, "the hand edit restored", |o| {
            o.apply
                .objects
                .iter()
                .any(|x| x.object == key && x.action == Action::Configured)
        })
        .await?;
        ensure!(
            restored.apply.writes == 1,
            "only the edited object is written: {} writes",
            restored.apply.writes
        );
        let live = cms.get(&name).await?;
        ensure!(
            live.data.and_then(|d| d.get(&field).cloned()) == Some(original),
            "{key}: {field} not restored"
        );

        // Deleted by hand: absent from the view, read, created again.
        let (ok, _, err) = cluster.kubectl(&["-n", &ns, "delete", "configmap", &name])?;
        ensure!(ok, "{err}");
        sync_until(&client, &cfg, "the deleted object created again", |o| {
            o.apply
                .objects
                .iter()
                .any(|x| x.object == key && x.action == Action::Created)
        })
        .await?;
        ensure!(cms.get_opt(&name).await?.is_some(), "{key} not recreated");
        // And quiet again.
        sync_until(&client, &cfg, "quiet again", |o| {
            o.reads == 0 && o.apply.writes == 0
        })
        .await?;

        // A new commit adding an agent: a new tree, rendered again (not the memo's) and applied.
        // No endpoints: `allowedEndpoints:` is null, which the renderer must not send.
        f.add_agent("c", &[])?;
        let pushed = f.commit_and_push("add c")?;
        let changed = synced(&client, &cfg).await?;
        ensure!(
            !changed.render_reused && changed.commit == pushed && changed.converged(),
            "a new tree must be rendered and applied: reused {}, commit {} (pushed {pushed}), ready {:?}, failures {:?}",
            changed.render_reused,
            changed.commit,
            changed.ready,
            changed.apply.failures().collect::<Vec<_>>()
        );
        ensure!(
            changed.apply.objects.len() > objects,
            "the new agent's objects are in the render"
        );
        Ok(())
    })
}

fn unreachable_remote() -> Result<()> {
    let (cluster, f) = fixture("unreach", &["a"])?;
    block_on(async {
        let client = cluster.client().await?;
        let cfg = f.config(&f.file_url())?;
        let first = synced(&client, &cfg).await?;
        let closed = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut bad = cfg.clone();
        bad.source = format!("git://127.0.0.1:{closed}/remote.git");
        bad.cache_dir = f.path().join("cache-unreachable");
        match sync(&client, &bad).await {
            Err(SyncError::Source(e)) => ensure!(e.to_string().contains("127.0.0.1"), "{e}"),
            other => bail!(
                "unreachable remote not reported as a source error: {:?}",
                other.map(|o| o.commit)
            ),
        }
        let pr = policy_repo(&client, &f).await?;
        let (status, reason, msg) = condition(&pr, "SourceReady");
        ensure!(
            status == "False" && reason == "SourceUnavailable",
            "SourceReady: {status} {reason} {msg}"
        );
        ensure!(
            pr.status.and_then(|s| s.last_applied_revision).as_deref()
                == Some(first.commit.as_str())
        );
        let d: Api<Deployment> = Api::namespaced(client.clone(), &format!("kars-{}", f.agent("a")));
        ensure!(
            d.get_opt(&f.agent("a")).await?.is_some(),
            "objects changed while the remote was unreachable"
        );
        Ok(())
    })
}

async fn client_for(kubeconfig: &std::path::Path) -> Result<kube::Client> {
    Ok(kars_gitops_agent::sync::kube_client(Some(kubeconfig)).await?)
}

fn many_agents(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:03}")).collect()
}

fn api_server_stopped() -> Result<()> {
    let pc = PrivateCluster::up()?;
    let agents = many_agents("x", 40);
    let refs: Vec<&str> = agents.iter().map(String::as_str).collect();
    let f = PolicyRepoFixture::new(&unique_name("apistop"), &refs)?;
    let mut cfg = f.config(&f.file_url())?;
    // With a live view: its watches fail with the API server, and the syncs after it read the
    // cluster instead of trusting what the view saw before.
    cfg.live_view = Some(std::sync::Arc::new(kars_gitops_agent::live::LiveView::new()));
    let stop_after = Duration::from_millis(1500);
    // Stop the API server while the sync runs.
    let result = block_on(async {
        let client = client_for(&pc.kubeconfig()).await?;
        let sync_task = tokio::spawn({
            let cfg = cfg.clone();
            async move { sync_once(client, &cfg, None, &never_stop).await }
        });
        tokio::time::sleep(stop_after).await;
        let dir = pc.dir().to_path_buf();
        tokio::task::spawn_blocking(move || {
            let pid =
                std::fs::read_to_string(dir.join("run/kube-apiserver.pid")).unwrap_or_default();
            std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.trim())
                .status()
        })
        .await??;
        match tokio::time::timeout(Duration::from_secs(120), sync_task).await {
            Ok(Ok(Ok(o))) if o.converged() => {
                bail!("the sync finished before the API server stopped; raise the agent count")
            }
            Ok(Ok(Ok(_))) | Ok(Ok(Err(_))) => Ok(()),
            Ok(Err(e)) => bail!("the sync task panicked: {e}"),
            Err(_) => bail!("the sync hung for 120 s after the API server stopped"),
        }
    });
    result?;
    pc.stop()?;
    pc.start_again()?;
    block_on(async {
        let client = client_for(&pc.kubeconfig()).await?;
        let o = sync_once(client.clone(), &cfg, None, &never_stop)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        ensure!(
            o.converged(),
            "did not converge after the API server came back: {:?}",
            o.apply.failures().collect::<Vec<_>>()
        );
        let again = sync_once(client, &cfg, None, &never_stop)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        ensure!(
            again.apply.writes == 0,
            "not converged: {} writes on the next sync",
            again.apply.writes
        );
        Ok(())
    })
}

fn agent_killed() -> Result<()> {
    let pc = PrivateCluster::up()?;
    let agents = many_agents("k", 40);
    let refs: Vec<&str> = agents.iter().map(String::as_str).collect();
    let f = PolicyRepoFixture::new(&unique_name("sigkill"), &refs)?;
    let agent = kars_e2e::workspace_root().join("target/debug/kars-gitops-agent");
    ensure!(
        agent.exists(),
        "{} is not built (cargo build -p kars-gitops-agent)",
        agent.display()
    );
    let run_agent = || {
        let mut c = f.agent_command(
            &f.file_url(),
            &pc.kubeconfig(),
            &f.path().join("agent-cache"),
        );
        c.arg("--once")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    };
    let mut child = run_agent().spawn()?;
    std::thread::sleep(Duration::from_millis(2500));
    let killed_mid_sync = child.try_wait()?.is_none();
    let _ = child.kill(); // SIGKILL
    let _ = child.wait();
    ensure!(
        killed_mid_sync,
        "the agent finished before it was killed; raise the agent count"
    );
    let status = run_agent().status()?;
    ensure!(
        status.success(),
        "the restarted agent did not converge (exit {status})"
    );
    block_on(async {
        let client = client_for(&pc.kubeconfig()).await?;
        let cfg = f.config(&f.file_url())?;
        let o = sync_once(client, &cfg, None, &never_stop)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        ensure!(
            o.apply.writes == 0 && o.converged(),
            "after restart: {} writes, converged {}",
            o.apply.writes,
            o.converged()
        );
        Ok(())
    })
}
