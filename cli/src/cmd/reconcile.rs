//! `kars reconcile NAME [--wait]`, `kars suspend NAME`, `kars resume NAME [--wait]`: ask the
//! running agent to sync now, or stop and restart its syncs. `reconcile` writes the time into
//! the PolicyRepo's `gitops.kars.io/reconcile-requested-at` annotation (flux's
//! `reconcile.fluxcd.io/requestedAt`); the agent watches it, syncs, and records the value in
//! `status.lastHandledReconcileAt`, which `--wait` waits for (and, when that sync applied and
//! routers, pods or a namespace are still on their way, for Ready).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use kars_contract::labels::RECONCILE_ANNOTATION;
use serde_json::json;

use super::policyrepo;
use crate::access::{self, ClusterArgs, Connected};
use crate::failure::{CHECK, Failure};
use crate::ui;

/// Arguments of `kars reconcile` and `kars resume`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The PolicyRepo.
    name: String,
    /// Wait until the agent has synced and print the result (exit 1 when not Ready); while
    /// routers, pods or a namespace are on their way, wait for Ready until --timeout.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits.
    #[arg(long, value_name = "DURATION", default_value = "2m", value_parser = super::sync::parse_seconds)]
    timeout: Duration,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Arguments of `kars suspend`.
#[derive(clap::Args, Debug)]
pub struct SuspendArgs {
    /// The PolicyRepo.
    name: String,
    #[command(flatten)]
    cluster: ClusterArgs,
}

/// Runs `kars reconcile`.
pub fn reconcile(args: Args) -> Result<ExitCode, Failure> {
    super::block_on(async move {
        let at = access::connect(&args.cluster).await?;
        let pr = policyrepo::get(&at, &args.cluster, &args.name).await?;
        if pr.spec.suspend {
            return Err(Failure::msg(
                CHECK,
                format!(
                    "PolicyRepo {}/{} is suspended; the agent does not sync it",
                    args.cluster.namespace, args.name
                ),
            )
            .reason("Suspended")
            .hint(format!("kars resume {} first", args.name)));
        }
        request_and_wait(&at, &args).await
    })
}

/// Runs `kars resume`: clears `spec.suspend` and asks for a sync.
pub fn resume(args: Args) -> Result<ExitCode, Failure> {
    super::block_on(async move {
        let at = access::connect(&args.cluster).await?;
        policyrepo::patch(
            &at,
            &args.cluster,
            &args.name,
            json!({"spec": {"suspend": false}}),
        )
        .await?;
        ui::note(format!(
            "PolicyRepo {}/{} resumed",
            args.cluster.namespace, args.name
        ));
        request_and_wait(&at, &args).await
    })
}

/// Runs `kars suspend`: sets `spec.suspend`; the cluster keeps what is applied.
pub fn suspend(args: SuspendArgs) -> Result<ExitCode, Failure> {
    super::block_on(async move {
        let at = access::connect(&args.cluster).await?;
        let pr = policyrepo::patch(
            &at,
            &args.cluster,
            &args.name,
            json!({"spec": {"suspend": true}}),
        )
        .await?;
        if ui::get().machine() {
            ui::emit(&pr)?;
        } else {
            crate::outln!(
                "PolicyRepo {}/{} suspended: no sync runs until `kars resume {}`; what is applied stays",
                args.cluster.namespace,
                args.name,
                args.name
            );
        }
        Ok(ExitCode::SUCCESS)
    })
}

async fn request_and_wait(at: &Connected, args: &Args) -> Result<ExitCode, Failure> {
    let requested = kars_gitops_agent::agent::reconcile_request_time();
    policyrepo::patch(
        at,
        &args.cluster,
        &args.name,
        json!({"metadata": {"annotations": {RECONCILE_ANNOTATION: requested}}}),
    )
    .await?;
    if !args.wait {
        if ui::get().machine() {
            ui::emit(
                &json!({"name": args.name, "namespace": args.cluster.namespace, "requestedAt": requested}),
            )?;
        } else {
            crate::outln!(
                "PolicyRepo {}/{}: sync requested at {requested} (kars get {} shows the result)",
                args.cluster.namespace,
                args.name,
                args.name
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    ui::note(format!(
        "waiting up to {}s for the agent to sync PolicyRepo {}/{} …",
        args.timeout.as_secs(),
        args.cluster.namespace,
        args.name
    ));
    let deadline = Instant::now() + args.timeout;
    let mut noted_waiting = false;
    loop {
        let pr = policyrepo::get(at, &args.cluster, &args.name).await?;
        let handled = pr
            .status
            .as_ref()
            .and_then(|s| s.last_handled_reconcile_at.as_deref());
        if handled == Some(requested.as_str()) {
            let ready = policyrepo::condition(&pr, "Ready");
            let ok = policyrepo::is_ready(&pr);
            // Applied, and something is on its way (routers loading the policy, pods
            // starting, a namespace terminating): the agent syncs again soon, so keep waiting
            // for Ready, as `flux reconcile` does.
            let on_its_way = ready.is_some_and(|c| {
                matches!(
                    c.reason.as_str(),
                    "NotEnforced" | "NoRunningRouters" | "Progressing"
                )
            });
            if !ok && on_its_way && Instant::now() < deadline {
                if !noted_waiting {
                    ui::note(format!(
                        "applied; Ready is {} ({}): waiting for it",
                        ready.map_or("", |c| c.reason.as_str()),
                        ready.map_or("", |c| c.message.as_str())
                    ));
                    noted_waiting = true;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
            if ui::get().machine() {
                ui::emit(&pr)?;
            } else {
                crate::outln!(
                    "PolicyRepo {}/{} synced: applied {} — Ready {} {} {}",
                    args.cluster.namespace,
                    args.name,
                    pr.status
                        .as_ref()
                        .and_then(|s| s.last_applied_revision.as_deref())
                        .unwrap_or("-"),
                    ready.map_or("Unknown", |c| c.status.as_str()),
                    ready.map_or("", |c| c.reason.as_str()),
                    ready.map_or("", |c| c.message.as_str())
                );
            }
            return Ok(if ok {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(CHECK)
            });
        }
        if Instant::now() >= deadline {
            return Err(Failure::msg(
                CHECK,
                format!(
                    "no agent synced PolicyRepo {}/{} within {}s of the request",
                    args.cluster.namespace,
                    args.name,
                    args.timeout.as_secs()
                ),
            )
            .reason("WaitTimeout")
            .hint(format!(
                "is kars-gitops-agent running for it (kubectl -n {} get pods)? `kars sync` syncs from here",
                args.cluster.namespace
            )));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
