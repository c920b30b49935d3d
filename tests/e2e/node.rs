//! A real node: the rendered sandbox pod starts (egress guard, agent container, router), the
//! router enforces from inside the pod, "Ready means enforced" comes from the real router pod,
//! a pushed policy change reaches the running router, and `ci/cluster.sh down` leaves the
//! machine as it found it.
//!
//! Every host in here is a server of the test's own on the host end of the node link
//! (10.250.0.1 / fd6b:6172:0:1::1) or in the node's network namespace, named through the
//! test's own DNS server; nothing is sent outside loopback and the node and pod networks.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use kars_contract::Reason;
use kars_e2e::dns::DnsServer;
use kars_e2e::fixture::PolicyRepoFixture;
use kars_e2e::node::{
    HOST_IP, HOST_IP6, HttpServer, Images, NODE_IP, NODE_NETNS, NodeCluster, machine_state,
    state_difference,
};
use kars_e2e::{block_on_value, unique_name};
use kars_gitops_agent::sync::{SyncOutcome, sync_once};
use libtest_mimic::Trial;
use serde_json::Value;

use crate::trial;

mod chart;

pub fn tests() -> Vec<Trial> {
    vec![trial(
        "node::sandbox_pod_runs_and_its_router_enforces",
        sandbox_pod_runs_and_its_router_enforces,
    )]
}

fn sandbox_pod_runs_and_its_router_enforces() -> Result<()> {
    let before = machine_state()?;
    let result = (|| -> Result<()> {
        let node = NodeCluster::up()?;
        let r = scenario(&node);
        if r.is_err() {
            eprintln!("[node] logs kept in {}/logs", node.dir().display());
        }
        let down = node.down();
        r?;
        down
    })();
    let after = machine_state()?;
    result?;
    ensure!(
        before == after,
        "ci/cluster.sh down did not leave the machine as it found it:\n{}",
        state_difference(&before, &after)
    );
    Ok(())
}

/// The sandbox's folder: BYO runtime with the test agent image, Strict egress to the test's
/// hosts, an inference policy (the router needs one).
fn sandbox_files(
    agent: &str,
    ns: &str,
    image: &str,
    hosts: &[(&str, u16)],
) -> Vec<(String, String)> {
    let endpoints: String = hosts
        .iter()
        .map(|(h, p)| format!("      - {{host: {h}, port: {p}}}\n"))
        .collect();
    vec![
        (
            format!("agents/{agent}/sandbox.yaml"),
            format!(
                "apiVersion: kars.azure.com/v1alpha1\nkind: KarsSandbox\nmetadata:\n  name: {agent}\n  namespace: {ns}\nspec:\n  runtime:\n    kind: BYO\n    byo: {{image: \"{image}\", contractVersion: v1}}\n  sandbox: {{isolation: standard}}\n  resources: {{requests: {{cpu: 50m, memory: 64Mi}}, limits: {{cpu: 500m, memory: 256Mi}}}}\n  inferenceRef: {{name: {agent}-inference}}\n  governance: {{enabled: false}}\n  networkPolicy:\n    egressMode: Strict\n    allowedEndpoints:\n{endpoints}"
            ),
        ),
        (
            format!("agents/{agent}/inference.yaml"),
            format!(
                "apiVersion: kars.azure.com/v1alpha1\nkind: InferencePolicy\nmetadata:\n  name: {agent}-inference\n  namespace: {ns}\nspec:\n  appliesTo: {{sandboxName: {agent}}}\n  modelPreference:\n    primary: {{provider: azure-openai, deployment: gpt-4.1}}\n"
            ),
        ),
    ]
}

struct Sandbox<'a> {
    node: &'a NodeCluster,
    namespace: String,
    name: String,
}

impl Sandbox<'_> {
    fn pod(&self) -> Result<Value> {
        let out = self.node.kubectl_ok(&[
            "-n",
            &self.namespace,
            "get",
            "pods",
            "-l",
            &format!("kars.azure.com/sandbox={}", self.name),
            "-o",
            "json",
        ])?;
        let v: Value = serde_json::from_str(&out)?;
        v["items"]
            .as_array()
            .and_then(|a| {
                a.iter()
                    .find(|p| p["metadata"]["deletionTimestamp"].is_null())
            })
            .cloned()
            .context("no sandbox pod")
    }

    /// Waits until the sandbox pod is Ready (every container), up to `secs`.
    fn wait_ready(&self, secs: u64) -> Result<Value> {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Ok(p) = self.pod() {
                let ready = p["status"]["conditions"].as_array().is_some_and(|c| {
                    c.iter()
                        .any(|c| c["type"] == "Ready" && c["status"] == "True")
                });
                if ready {
                    return Ok(p);
                }
                if Instant::now() > deadline {
                    let describe = self
                        .node
                        .kubectl()
                        .args(["-n", &self.namespace, "describe", "pods"])
                        .output()
                        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                        .unwrap_or_default();
                    bail!("the sandbox pod is not Ready after {secs}s:\n{describe}");
                }
            } else if Instant::now() > deadline {
                bail!("no sandbox pod after {secs}s");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Runs the test agent in the agent container and returns its JSON report.
    fn agent(&self, args: &[&str]) -> Result<Value> {
        self.agent_in("agent", args)
    }

    /// Runs the test agent in `container` (`openclaw` for an OpenClaw runtime).
    fn agent_in(&self, container: &str, args: &[&str]) -> Result<Value> {
        let pod = self.pod()?;
        let name = pod["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut full = vec![
            "-n",
            &self.namespace,
            "exec",
            &name,
            "-c",
            container,
            "--",
            "kars-test-agent",
        ];
        full.extend_from_slice(args);
        let out = self.node.kubectl_ok(&full)?;
        serde_json::from_str(out.trim())
            .with_context(|| format!("kars-test-agent {args:?} printed {out:?}"))
    }

    /// The router's audit records (read from the emptyDir on the node's disk).
    fn audit(&self) -> Result<Vec<Value>> {
        let pod = self.pod()?;
        let uid = pod["metadata"]["uid"].as_str().unwrap_or_default();
        let file = self.node.dir().join(format!(
            "node/kubelet/pods/{uid}/volumes/kubernetes.io~empty-dir/router-audit/audit/audit.jsonl"
        ));
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading {}", file.display()))?;
        Ok(text
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect())
    }
}

fn sync(node: &NodeCluster, repo: &PolicyRepoFixture) -> Result<SyncOutcome> {
    let mut cfg = repo.config(&repo.file_url())?;
    // Pods run here: Ready waits for the routers.
    cfg.enforcement = kars_gitops_agent::enforcement::Mode::Required;
    block_on_value(async {
        let client = node.client().await?;
        sync_once(client, &cfg, None, &|| false)
            .await
            .map_err(|e| anyhow::anyhow!("sync: {e}"))
    })?
}

/// One sync that must apply every object.
fn sync_applied(node: &NodeCluster, repo: &PolicyRepoFixture) -> Result<SyncOutcome> {
    let o = sync(node, repo)?;
    ensure!(
        o.apply.is_success(),
        "apply failed: {:?}",
        o.apply.failures().collect::<Vec<_>>()
    );
    Ok(o)
}

/// Syncs until the PolicyRepo is Ready (every router reports the rendered digests), up to
/// `secs`; returns the outcome and how long it took.
fn sync_until_enforced(
    node: &NodeCluster,
    repo: &PolicyRepoFixture,
    secs: u64,
) -> Result<(SyncOutcome, Duration)> {
    let t0 = Instant::now();
    loop {
        let o = sync(node, repo)?;
        if o.ready == Reason::Synced && o.not_enforced.is_empty() {
            return Ok((o, t0.elapsed()));
        }
        if t0.elapsed() > Duration::from_secs(secs) {
            bail!(
                "not enforced after {secs}s: Ready reason {:?}, not enforced {:?}",
                o.ready,
                o.not_enforced
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn ok(report: &Value) -> bool {
    report["ok"] == true
}

fn scenario(node: &NodeCluster) -> Result<()> {
    // Images of this build, imported into the node's containerd (nothing is pulled).
    let images = Images::build(&node.dir().join("images"))?;
    images_are_reproducible_and_push_by_digest(node, &images)?;
    node.import(&images.archives)?;

    // The test's own DNS, HTTP servers and a second resolver the agent must not reach.
    let host: IpAddr = HOST_IP.parse()?;
    let host6: IpAddr = HOST_IP6.parse()?;
    let records = BTreeMap::from([
        ("allowed.kars.test".to_string(), vec![host, host6]),
        ("denied.kars.test".to_string(), vec![host]),
        (
            "metadata.kars.test".to_string(),
            vec!["169.254.169.254".parse()?],
        ),
        ("later.kars.test".to_string(), vec![host]),
        ("approved.kars.test".to_string(), vec![host]),
    ]);
    let _dns = DnsServer::start(SocketAddr::new(host, 53), records.clone())?;
    let _web = HttpServer::start(SocketAddr::new(host, 8080), "web-8080")?;
    let _web80 = HttpServer::start(SocketAddr::new(host, 80), "web-80")?;
    let _web6 = HttpServer::start(SocketAddr::new(host6, 8080), "web6-8080")?;
    let mut other_dns = std::process::Command::new("nsenter")
        .arg(format!("--net=/run/netns/{NODE_NETNS}"))
        .args(["--", "python3", "-c"])
        .arg(format!(
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\ns.bind(('{NODE_IP}',53))\nwhile True:\n  d,a=s.recvfrom(512)\n  s.sendto(d[:2]+b'\\x81\\x80'+d[4:],a)\n"
        ))
        .spawn()
        .context("starting the second resolver")?;
    let r = with_servers(node, &images).and_then(|()| chart::helm_installed_agent(node, &images));
    let _ = other_dns.kill();
    let _ = other_dns.wait();
    r
}

fn with_servers(node: &NodeCluster, images: &Images) -> Result<()> {
    let prefix = unique_name("node");
    let repo = PolicyRepoFixture::new(&prefix, &[])?;
    let agent = format!("{prefix}-a");
    repo.work.write(
        "kars.yaml",
        &format!(
            "apiVersion: gitops.kars.io/v1alpha1\nkind: RepositoryConfig\nmetadata: {{name: {prefix}}}\nspec:\n  defaultNamespace: {prefix}-ns\n  clusters: [{{name: test, paths: [agents]}}]\n  providers: {{azure-openai: {{endpoint: \"https://example.openai.azure.com/openai/v1\"}}}}\n  images:\n    router: \"{}\"\n    egressGuard: \"{}\"\n  router:\n    allowPrivateCidrs: [10.250.0.0/30, \"fd6b:6172:0:1::/64\"]\n",
            images.get("KARS_IMAGE_ROUTER")?,
            images.get("KARS_IMAGE_EGRESS_GUARD")?,
        ),
    )?;
    let hosts = [
        ("allowed.kars.test", 8080),
        ("allowed.kars.test", 80),
        ("metadata.kars.test", 80),
    ];
    let image = images.get("KARS_IMAGE_TEST_AGENT")?;
    let write_sandbox = |hosts: &[(&str, u16)]| -> Result<()> {
        for (path, body) in sandbox_files(&agent, &repo.namespace(), image, hosts) {
            repo.work.write(&path, &body)?;
        }
        Ok(())
    };
    write_sandbox(&hosts)?;
    repo.commit_and_push("a sandbox on the node")?;

    let t0 = Instant::now();
    let first = sync_applied(node, &repo)?;
    // The pod cannot be running yet: a sandbox that should run has no router confirming.
    ensure!(
        first.ready == Reason::NoRunningRouters,
        "Ready before any router runs: {:?}",
        first.ready
    );
    let sb = Sandbox {
        node,
        namespace: format!("kars-{agent}"),
        name: agent.clone(),
    };
    // The KarsSandbox's own status says so too (upstream's CLI reads it).
    let cr_status = |path: &str| -> Result<String> {
        Ok(node
            .kubectl_ok(&[
                "-n",
                &repo.namespace(),
                "get",
                "karssandbox",
                &agent,
                "-o",
                &format!("jsonpath={path}"),
            ])?
            .trim()
            .to_string())
    };
    ensure!(
        cr_status("{.status.phase}")? == "Creating"
            && cr_status("{.status.conditions[?(@.type==\"Ready\")].reason}")?
                == "NoRunningRouters",
        "KarsSandbox status before its pod runs: {}",
        cr_status("{.status}")?
    );
    let pod = sb.wait_ready(120)?;
    let pod_ready = t0.elapsed();
    // The guard ran to completion and said what it installed, IPv6 included.
    let guard =
        pod["status"]["initContainerStatuses"][0]["state"]["terminated"]["exitCode"].clone();
    ensure!(
        guard == 0,
        "egress-guard did not exit 0: {}",
        pod["status"]["initContainerStatuses"]
    );
    let pod_name = pod["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let guard_log =
        node.kubectl_ok(&["-n", &sb.namespace, "logs", &pod_name, "-c", "egress-guard"])?;
    ensure!(
        guard_log.contains("DNS at 10.250.0.1") && guard_log.contains("IPv6 too"),
        "egress-guard log: {guard_log}"
    );

    // Ready comes from the real router pod.
    let (enforced, took) = sync_until_enforced(node, &repo, 60)?;
    ensure!(enforced.ready == Reason::Synced);
    // Nothing changed since: the kars CRs' status is not written again.
    let quiet = sync(node, &repo)?;
    ensure!(
        quiet.kars_status_patched == 0 && quiet.ready == Reason::Synced,
        "a sync that changed nothing wrote {} kars status(es)",
        quiet.kars_status_patched
    );
    let cond = repo.policyrepo_jsonpath_with(
        node.kubectl(),
        "{.status.conditions[?(@.type==\"Enforced\")]}",
    )?;
    ensure!(
        cr_status("{.status.phase}")? == "Running"
            && cr_status("{.status.sandboxPod}")? == pod_name
            && cr_status("{.status.namespace}")? == sb.namespace
            && cr_status("{.status.conditions[?(@.type==\"Ready\")].status}")? == "True",
        "KarsSandbox status once its router confirms: {}",
        cr_status("{.status}")?
    );
    let policy = node.kubectl_ok(&[
        "-n",
        &repo.namespace(),
        "get",
        "inferencepolicy",
        &format!("{agent}-inference"),
        "-o",
        "jsonpath={.status.phase} {.status.compiledDigest} {.status.loadedDigest}",
    ])?;
    let fields: Vec<&str> = policy.split_whitespace().collect();
    ensure!(
        fields.len() == 3
            && fields[0] == "Ready"
            && fields[1] == fields[2]
            && fields[1].starts_with("sha256:"),
        "InferencePolicy status once the router echoes it: {policy}"
    );
    ensure!(
        cond.contains("\"status\":\"True\"") && cond.contains("Enforced"),
        "Enforced condition: {cond}"
    );
    eprintln!(
        "[node] sandbox pod Ready {:.1}s after the first sync; Enforced {:.1}s later",
        pod_ready.as_secs_f64(),
        took.as_secs_f64()
    );

    let proxy = "127.0.0.1:8444";
    // A direct connection to an allowed host's address: dropped by the guard.
    let direct = sb.agent(&["tcp", "10.250.0.1:8080"])?;
    ensure!(
        !ok(&direct),
        "direct connection to 10.250.0.1:8080 was not blocked: {direct}"
    );
    let direct6 = sb.agent(&["tcp", "[fd6b:6172:0:1::1]:8080"])?;
    ensure!(
        !ok(&direct6),
        "direct IPv6 connection was not blocked: {direct6}"
    );
    // The same host through the router works (CONNECT and absolute-form HTTP).
    let tunnel = sb.agent(&[
        "connect",
        proxy,
        "allowed.kars.test:8080",
        "--send",
        "GET / HTTP/1.1\\r\\nHost: allowed.kars.test\\r\\nConnection: close\\r\\n\\r\\n",
    ])?;
    ensure!(
        ok(&tunnel)
            && tunnel["reply"]
                .as_str()
                .unwrap_or_default()
                .contains("served by web"),
        "CONNECT to an allowed host: {tunnel}"
    );
    let proxied = sb.agent(&["http", "http://allowed.kars.test:8080/", "--proxy", proxy])?;
    ensure!(
        proxied["status"] == 200,
        "proxied GET of an allowed host: {proxied}"
    );
    // Port 80 without any proxy setting: redirected by the guard to the router, allowed.
    let transparent = sb.agent(&["http", "http://allowed.kars.test/"])?;
    ensure!(
        transparent["status"] == 200
            && transparent["body"]
                .as_str()
                .unwrap_or_default()
                .contains("web-80"),
        "transparent :80 to an allowed host: {transparent}"
    );
    // A denied host through the router: refused.
    let denied = sb.agent(&["connect", proxy, "denied.kars.test:8080"])?;
    ensure!(
        !ok(&denied) && denied["status"] == 403,
        "a denied host through the router: {denied}"
    );
    let denied80 = sb.agent(&["http", "http://denied.kars.test/"])?;
    ensure!(
        denied80["status"] == 403,
        "a denied host on :80 (transparent): {denied80}"
    );
    // What the router refused, read the way an operator reads it: `kars egress learned`, through
    // a port-forward of the running pod (API server → kubelet → containerd) with the sandbox's
    // admin token from its Secret.
    let mut learned = kars_e2e::kars_command()?;
    learned
        .args(["egress", "learned", &agent, "-o", "json", "--kubeconfig"])
        .arg(node.kubeconfig());
    let out = kars_e2e::run_to_end(&mut learned)?;
    let v: Value = serde_json::from_str(&out.stdout)
        .with_context(|| format!("kars egress learned: {}", out.combined()))?;
    ensure!(
        out.success()
            && v["mode"] == "strict"
            && v["blocked"].as_array().is_some_and(|b| b
                .iter()
                .any(|e| e["host"] == "denied.kars.test" && e["port"] == 8080)),
        "kars egress learned through a port-forward: {}",
        out.combined()
    );
    // The decision and inference routes answer only the pod itself: a caller from outside the
    // pod (here the node's host, over the pod network) is refused before any work is done.
    let pod_ip = pod["status"]["podIP"]
        .as_str()
        .context("podIP")?
        .to_string();
    let outside = {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect((pod_ip.as_str(), 8443))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        s.write_all(b"POST /governance/check HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\nContent-Length: 21\r\nConnection: close\r\n\r\n{\"action\":\"shell:ls\"}")?;
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    };
    ensure!(
        outside.starts_with("HTTP/1.1 403") && outside.contains("NotFromThisPod"),
        "/governance/check from outside the pod: {outside}"
    );
    // The apiserver: neither directly nor through the router (its address is no allowed host).
    let api = format!("{HOST_IP}:{}", node.apiserver_port()?);
    let api_direct = sb.agent(&["tcp", &api])?;
    ensure!(
        !ok(&api_direct),
        "the apiserver was reachable directly: {api_direct}"
    );
    // :443 goes to the router whatever the address; it refuses an IP literal, so what answers
    // is the router's refusal, never the apiserver.
    let api_service = sb.agent(&[
        "tcp",
        "10.96.0.1:443",
        "--send",
        "GET /version HTTP/1.1\\r\\nHost: 10.96.0.1\\r\\n\\r\\n",
    ])?;
    let reply = api_service["reply"].as_str().unwrap_or_default();
    ensure!(
        reply.contains("X-Kars-Egress-Refusal") && !reply.contains("gitVersion"),
        "the kubernetes Service answered through the redirect: {api_service}"
    );
    let api_proxy = sb.agent(&["connect", proxy, &api])?;
    ensure!(
        !ok(&api_proxy),
        "the apiserver was reachable through the router: {api_proxy}"
    );
    // An allowed name that resolves to the metadata address: refused by the router before any
    // connection, in its answer and in its audit log.
    let meta = sb.agent(&[
        "http",
        "http://metadata.kars.test/latest/meta-data/",
        "--proxy",
        proxy,
    ])?;
    ensure!(
        meta["status"] == 403
            && meta["body"]
                .as_str()
                .unwrap_or_default()
                .contains("metadata"),
        "metadata address through the router: {meta}"
    );
    let audit = sb.audit()?;
    ensure!(
        audit.iter().any(|r| r["host"] == "metadata.kars.test"
            && r["allowed"] == false
            && r.to_string().contains("metadata")),
        "no audit record refusing the metadata address: {audit:?}"
    );
    // The router's admin endpoints refuse the agent container without the token.
    for bearer in [None, Some("not-the-token")] {
        let mut args = vec!["http", "http://127.0.0.1:8443/internal/policy-status"];
        if let Some(b) = bearer {
            args.extend(["--bearer", b]);
        }
        let admin = sb.agent(&args)?;
        ensure!(
            admin["status"] == 401,
            "admin endpoint without the token ({bearer:?}): {admin}"
        );
    }
    // DNS: the pod's resolver answers; another resolver (on the node) is unreachable although
    // it answers the host.
    let resolver = sb.agent(&["dns", "allowed.kars.test", HOST_IP])?;
    ensure!(
        ok(&resolver) && resolver["answers"] == 1,
        "the pod's resolver: {resolver}"
    );
    let other = sb.agent(&["dns", "allowed.kars.test", NODE_IP])?;
    ensure!(
        !ok(&other),
        "a resolver other than the pod's was reachable: {other}"
    );

    // A policy change pushed to Git reaches the running router; Ready waits for it.
    let mut hosts = hosts.to_vec();
    hosts.push(("later.kars.test", 8080));
    write_sandbox(&hosts)?;
    repo.commit_and_push("allow later.kars.test")?;
    let t1 = Instant::now();
    sync_applied(node, &repo)?;
    let (_, reached) = sync_until_enforced(node, &repo, 120)?;
    let total = t1.elapsed();
    let later = sb.agent(&["connect", proxy, "later.kars.test:8080"])?;
    ensure!(
        ok(&later),
        "the new allowlist entry is not enforced: {later}"
    );
    eprintln!(
        "[node] policy change: pushed → router enforcing the new digest in {:.1}s (sync loop {:.1}s)",
        total.as_secs_f64(),
        reached.as_secs_f64()
    );

    // An EgressApproval pushed to Git: refused before, allowed once the router echoes it, and
    // the approval's own status says Active with the digest the router reports.
    let before = sb.agent(&["connect", proxy, "approved.kars.test:8080"])?;
    ensure!(
        !ok(&before),
        "approved.kars.test passed before any approval: {before}"
    );
    repo.work.write(
        &format!("agents/{agent}/approval.yaml"),
        &format!(
            "apiVersion: kars.azure.com/v1alpha1\nkind: EgressApproval\nmetadata:\n  name: {agent}-approved\n  namespace: {ns}\n  annotations:\n    gitops.kars.io/approved-at: \"{now}\"\nspec:\n  sandbox: {agent}\n  hosts:\n    - {{host: approved.kars.test, port: 8080}}\n  reason: e2e approval\n  ttl: PT1H\n",
            ns = repo.namespace(),
            now = kars_contract::time::now_rfc3339(),
        ),
    )?;
    repo.commit_and_push("approve approved.kars.test for an hour")?;
    let (_, approved_in) = sync_until_enforced(node, &repo, 120)?;
    let after = sb.agent(&["connect", proxy, "approved.kars.test:8080"])?;
    ensure!(ok(&after), "the approval is not enforced: {after}");
    let approval = node.kubectl_ok(&[
        "-n",
        &repo.namespace(),
        "get",
        "egressapproval",
        &format!("{agent}-approved"),
        "-o",
        "jsonpath={.status.phase} {.status.hostCount} {.status.mergedDigest}",
    ])?;
    ensure!(
        approval.starts_with("Active 1 sha256:"),
        "EgressApproval status once enforced: {approval}"
    );
    eprintln!(
        "[node] EgressApproval: pushed → enforced in {:.1}s",
        approved_in.as_secs_f64()
    );
    Ok(())
}

fn copy_tree(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    std::fs::create_dir_all(to)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_tree(&e.path(), &target)?;
        } else {
            std::fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}

/// The same inputs give the same image digests; `ci/images.sh push` puts every image into a
/// registry by digest, non-root and labelled.
fn images_are_reproducible_and_push_by_digest(node: &NodeCluster, images: &Images) -> Result<()> {
    let again = Images::build(&node.dir().join("images-again"))?;
    ensure!(
        again.refs == images.refs,
        "two builds of the same binaries differ: {:?} vs {:?}",
        images.refs,
        again.refs
    );
    let registry = kars_e2e::oci::Registry::start(&node.dir().join("registry"))?;
    let out = std::process::Command::new("bash")
        .arg(kars_e2e::workspace_root().join("ci/images.sh"))
        .args(["push"])
        .arg(node.dir().join("images"))
        .args([registry.host.as_str(), "--plain-http"])
        .output()?;
    ensure!(
        out.status.success(),
        "ci/images.sh push: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let pushed = String::from_utf8_lossy(&out.stdout);
    let port: u16 = registry
        .host
        .rsplit(':')
        .next()
        .unwrap_or_default()
        .parse()?;
    for reference in images.refs.values() {
        let (name, digest) = reference
            .trim_start_matches("kars.local/")
            .split_once('@')
            .context("a reference by digest")?;
        ensure!(
            pushed.contains(&format!("{}/{name}@{digest}", registry.host)),
            "push did not print {name}@{digest}: {pushed}"
        );
        let accept = "application/vnd.oci.image.manifest.v1+json";
        let (code, manifest) = kars_e2e::http_request(
            port,
            "GET",
            &format!("/v2/{name}/manifests/{digest}"),
            &[("Accept", accept)],
            "",
        )?;
        ensure!(
            code == 200,
            "{name}@{digest} is not in the registry: {code} {manifest}"
        );
        ensure!(
            kars_contract::sha256_digest(manifest.as_bytes()) == digest,
            "{name}: the registry's manifest is not the one built"
        );
        let manifest: Value = serde_json::from_str(&manifest)?;
        let config_digest = manifest["config"]["digest"].as_str().unwrap_or_default();
        let (code, config) = kars_e2e::http_request(
            port,
            "GET",
            &format!("/v2/{name}/blobs/{config_digest}"),
            &[],
            "",
        )?;
        ensure!(code == 200, "{name}: config blob {code}");
        let config: Value = serde_json::from_str(&config)?;
        let user = config["config"]["User"].as_str().unwrap_or_default();
        ensure!(
            !user.is_empty() && !user.starts_with("0:") && user != "0",
            "{name} runs as {user:?}"
        );
        let labels = &config["config"]["Labels"];
        for label in ["source", "revision", "version", "title"] {
            ensure!(
                labels[format!("org.opencontainers.image.{label}")].is_string(),
                "{name} has no org.opencontainers.image.{label} label: {labels}"
            );
        }
    }
    Ok(())
}
