//! A real Kubernetes control plane on loopback for SCALE's integration tests and demo: `etcd`
//! v3.7.3 and `kube-apiserver` v1.37.2, the binaries `scripts/k8s-bins.sh` builds from the Go
//! module proxy into `$SCALE_CACHE/k8s/bin` (default `~/.cache/scale/k8s/bin`; override with
//! `SCALE_K8S_BIN`).
//!
//! There are no controllers, no scheduler and no kubelet: objects are stored and validated,
//! admission and RBAC run, subresources (scale, resize) work, but nothing reconciles. Tests
//! create Deployments and read their scale directly.
//!
//! Objects can be set up without kubectl, as the admin over raw HTTPS: [`Cluster::apply_yaml`]
//! (server-side apply of a multi-document YAML file, for the [`KINDS`] the manifests in
//! `configs/k8s/` and the Helm chart `deploy/helm/scale` use), [`Cluster::create_namespace`] and [`Cluster::create_deployment`]; the
//! `scale-testcluster` binary exposes them as `--namespace`, `--apply` and `--deployment`.
//!
//! [`Cluster::start`] generates, in a fresh directory:
//! - a CA and a serving certificate for `127.0.0.1` (`ca.crt`, `apiserver.crt/.key`);
//! - the service-account signing key (`sa.key`, `sa.pub`);
//! - a static token file with two identities: [`ADMIN_USER`] (group `system:masters`) and the
//!   daemon's own service account [`DAEMON_USER`] (`scale-system/scale`), which has no rights
//!   until the RBAC from `configs/k8s/` is applied;
//! - `admin.kubeconfig` and `daemon.kubeconfig` for those identities.
//!
//! Everything listens on 127.0.0.1 on free ports; [`Drop`] stops both processes and removes the
//! directory (unless [`Options::keep_dir`]).

use std::fs;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rustls::pki_types::pem::PemObject;

/// User name of the all-powerful test identity.
pub const ADMIN_USER: &str = "scale-admin";
/// User name the daemon authenticates as: its service account `scale` in `scale-system`.
pub const DAEMON_USER: &str = "system:serviceaccount:scale-system:scale";

/// Where the binaries are looked for.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("SCALE_K8S_BIN") {
        return PathBuf::from(d);
    }
    let cache = std::env::var_os("SCALE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/scale")
        });
    cache.join("k8s/bin")
}

/// Options for [`Cluster::start`].
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Working directory; a fresh temporary one when `None`.
    pub dir: Option<PathBuf>,
    /// Keep the directory (logs, kubeconfigs) after the cluster stops.
    pub keep_dir: bool,
}

/// A running etcd + kube-apiserver.
pub struct Cluster {
    dir: PathBuf,
    keep_dir: bool,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    apiserver_args: Vec<String>,
    /// `https://127.0.0.1:<port>`.
    pub server: String,
    /// Bearer token of [`ADMIN_USER`].
    pub admin_token: String,
    /// Bearer token of [`DAEMON_USER`].
    pub daemon_token: String,
}

/// A loopback port that is free now, for a process the caller is about to start.
///
/// Taken below the kernel's ephemeral range (`ip_local_port_range`), not with `bind(0)`: a port
/// from that range can be handed to any outgoing connection (a kube client, a test's own gRPC
/// channel) between this call and the child's bind, which made a daemon fail with "address
/// already in use" now and then. Below the range only another listener can take it, and the
/// ports handed out here never repeat within a process (a counter) and rarely across processes
/// (the walk starts at a point derived from the process id).
pub fn free_port() -> Result<u16> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let ephemeral_lo = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u32>().ok())
        .unwrap_or(32768);
    let lo = (ephemeral_lo / 2).max(1024);
    if ephemeral_lo > lo {
        let span = ephemeral_lo - lo;
        let start = std::process::id().wrapping_mul(7919) % span;
        for _ in 0..span {
            let port = lo + (start + NEXT.fetch_add(1, Ordering::Relaxed)) % span;
            if let Ok(l) = TcpListener::bind(("127.0.0.1", port as u16)) {
                return Ok(l.local_addr()?.port());
            }
        }
    }
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn token() -> String {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    let mut s = String::new();
    for _ in 0..2 {
        let mut h = RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or_default()
                .as_nanos(),
        );
        s.push_str(&format!("{:016x}", h.finish()));
    }
    s
}

fn spawn(bin: &Path, args: &[String], log: &Path) -> Result<Child> {
    let out = fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    let err = out.try_clone()?;
    Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))
}

fn stop(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        // SIGTERM first so etcd and the apiserver shut down cleanly; SIGKILL after 10 s.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn tail(path: &Path) -> String {
    let t = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = t.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// GET `path` over plain HTTP on loopback (etcd's /health); body on 200.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    (body.starts_with("HTTP/1.0 200") || body.starts_with("HTTP/1.1 200")).then_some(body)
}

impl Cluster {
    /// Start etcd and the API server and wait until `/readyz` answers (about 3 s).
    pub fn start(opts: Options) -> Result<Self> {
        let bins = bin_dir();
        let etcd_bin = bins.join("etcd");
        let api_bin = bins.join("kube-apiserver");
        if !etcd_bin.exists() || !api_bin.exists() {
            bail!(
                "kube-apiserver/etcd not found in {}: build them once with scripts/k8s-bins.sh (about 14 minutes), or set SCALE_K8S_BIN",
                bins.display()
            );
        }
        let dir = match opts.dir {
            Some(d) => d,
            None => std::env::temp_dir().join(format!(
                "scale-testcluster-{}-{}",
                std::process::id(),
                token()
            )),
        };
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;

        // Certificates: a CA, the serving certificate for 127.0.0.1, and the service-account key.
        let ca_key = rcgen::KeyPair::generate()?;
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "scale-testcluster-ca");
        let ca = ca_params.self_signed(&ca_key)?;
        let ca_issuer = rcgen::Issuer::new(ca_params, ca_key);
        let srv_key = rcgen::KeyPair::generate()?;
        let mut srv_params =
            rcgen::CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()])?;
        srv_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kube-apiserver");
        let srv = srv_params.signed_by(&srv_key, &ca_issuer)?;
        let sa_key = rcgen::KeyPair::generate()?;
        fs::write(dir.join("ca.crt"), ca.pem())?;
        fs::write(dir.join("apiserver.crt"), srv.pem())?;
        fs::write(dir.join("apiserver.key"), srv_key.serialize_pem())?;
        fs::write(dir.join("sa.key"), sa_key.serialize_pem())?;
        fs::write(dir.join("sa.pub"), sa_key.public_key_pem())?;

        let admin_token = token();
        let daemon_token = token();
        fs::write(
            dir.join("tokens.csv"),
            format!(
                "{admin_token},{ADMIN_USER},uid-admin,\"system:masters\"\n{daemon_token},{DAEMON_USER},uid-scale,\"system:serviceaccounts,system:serviceaccounts:scale-system,system:authenticated\"\n"
            ),
        )?;

        let (client, peer, secure) = (free_port()?, free_port()?, free_port()?);
        let d = |p: &str| dir.join(p).display().to_string();
        let etcd_args: Vec<String> = [
            "--name=default".to_string(),
            format!("--data-dir={}", d("etcd")),
            format!("--listen-client-urls=http://127.0.0.1:{client}"),
            format!("--advertise-client-urls=http://127.0.0.1:{client}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-cluster=default=http://127.0.0.1:{peer}"),
            "--unsafe-no-fsync".to_string(),
            "--log-level=warn".to_string(),
        ]
        .into();
        let apiserver_args: Vec<String> = [
            format!("--etcd-servers=http://127.0.0.1:{client}"),
            "--bind-address=127.0.0.1".to_string(),
            "--advertise-address=127.0.0.1".to_string(),
            format!("--secure-port={secure}"),
            format!("--tls-cert-file={}", d("apiserver.crt")),
            format!("--tls-private-key-file={}", d("apiserver.key")),
            format!("--cert-dir={}", d("certs")),
            "--service-account-issuer=https://kubernetes.default.svc".to_string(),
            format!("--service-account-key-file={}", d("sa.pub")),
            format!("--service-account-signing-key-file={}", d("sa.key")),
            format!("--token-auth-file={}", d("tokens.csv")),
            "--authorization-mode=RBAC".to_string(),
            "--service-cluster-ip-range=10.0.0.0/24".to_string(),
            "--endpoint-reconciler-type=none".to_string(),
            "--anonymous-auth=false".to_string(),
            "--v=1".to_string(),
        ]
        .into();

        let mut cluster = Cluster {
            server: format!("https://127.0.0.1:{secure}"),
            dir: dir.clone(),
            keep_dir: opts.keep_dir,
            etcd: None,
            apiserver: None,
            apiserver_args,
            admin_token,
            daemon_token,
        };
        cluster.etcd = Some(spawn(&etcd_bin, &etcd_args, &dir.join("etcd.log"))?);
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(client, "/health").is_none() {
            if Instant::now() > deadline {
                bail!(
                    "etcd did not become healthy in 30 s:\n{}",
                    tail(&dir.join("etcd.log"))
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster.write_kubeconfig("admin.kubeconfig", ADMIN_USER, &cluster.admin_token.clone())?;
        cluster.write_kubeconfig("daemon.kubeconfig", "scale", &cluster.daemon_token.clone())?;
        cluster.start_apiserver()?;
        Ok(cluster)
    }

    /// The working directory (logs, certificates, kubeconfigs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// PEM of the CA that signed the API server's certificate.
    pub fn ca_pem(&self) -> Result<String> {
        Ok(fs::read_to_string(self.dir.join("ca.crt"))?)
    }

    /// Path of the kubeconfig for [`ADMIN_USER`].
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.join("admin.kubeconfig")
    }

    /// Path of the kubeconfig for [`DAEMON_USER`].
    pub fn daemon_kubeconfig(&self) -> PathBuf {
        self.dir.join("daemon.kubeconfig")
    }

    fn write_kubeconfig(&self, file: &str, user: &str, token: &str) -> Result<()> {
        let cfg = serde_json::json!({
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "scale-test", "cluster": {"server": self.server, "certificate-authority": self.dir.join("ca.crt")}}],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [{"name": user, "context": {"cluster": "scale-test", "user": user, "namespace": "default"}}],
            "current-context": user,
        });
        fs::write(self.dir.join(file), serde_json::to_string_pretty(&cfg)?)?;
        Ok(())
    }

    /// Start (or restart) the API server on the same port and wait for `/readyz`.
    pub fn start_apiserver(&mut self) -> Result<()> {
        if self.apiserver.is_some() {
            return Ok(());
        }
        let log = self.dir.join("kube-apiserver.log");
        self.apiserver = Some(spawn(
            &bin_dir().join("kube-apiserver"),
            &self.apiserver_args,
            &log,
        )?);
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(Some(status)) = self.apiserver.as_mut().map(|c| c.try_wait().ok().flatten())
            {
                self.apiserver = None;
                bail!("kube-apiserver exited ({status}):\n{}", tail(&log));
            }
            if self.ready() {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("kube-apiserver not ready in 60 s:\n{}", tail(&log));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Stop the API server (etcd keeps running): for tests of an API outage.
    pub fn stop_apiserver(&mut self) {
        stop(&mut self.apiserver);
    }

    /// Whether `GET /readyz` (as the admin, over TLS verified against `ca.crt`) answers 200.
    pub fn ready(&self) -> bool {
        self.get_as_admin("/readyz")
            .map(|(code, _)| code == 200)
            .unwrap_or(false)
    }

    /// A blocking `GET path` as [`ADMIN_USER`]: (status code, body). For readiness checks and
    /// the demo's progress display; tests use a kube client.
    pub fn get_as_admin(&self, path: &str) -> Result<(u16, String)> {
        self.request_as_admin("GET", path, None, b"")
    }

    /// A blocking request as [`ADMIN_USER`] over TLS verified against `ca.crt`, one connection
    /// per call: (status code, body, chunked transfer decoded).
    pub fn request_as_admin(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Result<(u16, String)> {
        let port: u16 = self
            .server
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| anyhow!("bad server {}", self.server))?;
        let mut roots = rustls::RootCertStore::empty();
        let ca = fs::read(self.dir.join("ca.crt"))?;
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
            roots.add(cert?)?;
        }
        let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1")?.to_owned();
        let conn = rustls::ClientConnection::new(std::sync::Arc::new(config), name)?;
        let sock = TcpStream::connect(("127.0.0.1", port))?;
        sock.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut tls = rustls::StreamOwned::new(conn, sock);
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {}\r\nAccept: application/json\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.admin_token,
            body.len()
        );
        if let Some(ct) = content_type {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        head.push_str("\r\n");
        tls.write_all(head.as_bytes())?;
        tls.write_all(body)?;
        tls.flush()?;
        let mut resp = Vec::new();
        // The API server closes without close_notify at times; what was read is enough.
        let _ = tls.read_to_end(&mut resp);
        let text = String::from_utf8_lossy(&resp).into_owned();
        let code = text
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| anyhow!("no HTTP status in {text:?}"))?;
        let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((text.as_str(), ""));
        let chunked = headers.lines().any(|l| {
            let l = l.to_ascii_lowercase();
            l.starts_with("transfer-encoding:") && l.contains("chunked")
        });
        Ok((
            code,
            if chunked {
                dechunk(body)
            } else {
                body.to_string()
            },
        ))
    }

    /// Server-side apply every document of a (multi-document) YAML text as [`ADMIN_USER`], field
    /// manager [`FIELD_MANAGER`], conflicts forced. Only the kinds of [`KINDS`] are known.
    /// Returns `Kind namespace/name` for each object applied.
    pub fn apply_yaml(&self, text: &str) -> Result<Vec<String>> {
        let docs: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(text).context("parsing YAML")?;
        let mut applied = Vec::new();
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            applied.push(self.apply(&doc)?);
        }
        Ok(applied)
    }

    /// Server-side apply one object (see [`Cluster::apply_yaml`]).
    pub fn apply(&self, obj: &serde_json::Value) -> Result<String> {
        let (path, what) = object_path(obj)?;
        let body = serde_json::to_vec(obj)?;
        let (code, resp) = self.request_as_admin(
            "PATCH",
            &format!("{path}?fieldManager={FIELD_MANAGER}&force=true"),
            Some("application/apply-patch+yaml"),
            &body,
        )?;
        if !(200..300).contains(&code) {
            bail!("applying {what}: HTTP {code}: {}", api_message(&resp));
        }
        Ok(what)
    }

    /// Create a namespace and its `default` ServiceAccount (there is no controller manager to
    /// create it).
    pub fn create_namespace(&self, name: &str) -> Result<()> {
        self.apply(&serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}))?;
        self.apply(&serde_json::json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default", "namespace": name}}))?;
        Ok(())
    }

    /// Create a Deployment with `replicas` and one container `app` requesting 100m / 128Mi (the
    /// shape of the daemon's integration tests). Nothing runs it: there are no controllers.
    pub fn create_deployment(&self, namespace: &str, name: &str, replicas: u32) -> Result<()> {
        let d = deployment(namespace, name, replicas);
        let (code, resp) = self.request_as_admin(
            "POST",
            &format!(
                "/apis/apps/v1/namespaces/{namespace}/deployments?fieldManager={FIELD_MANAGER}"
            ),
            Some("application/json"),
            &serde_json::to_vec(&d)?,
        )?;
        if code != 201 {
            bail!(
                "creating Deployment {namespace}/{name}: HTTP {code}: {}",
                api_message(&resp)
            );
        }
        Ok(())
    }

    /// `spec.replicas` of a Deployment, read through its scale subresource.
    pub fn deployment_replicas(&self, namespace: &str, name: &str) -> Result<u32> {
        let (code, body) = self.get_as_admin(&format!(
            "/apis/apps/v1/namespaces/{namespace}/deployments/{name}/scale"
        ))?;
        if code != 200 {
            bail!(
                "reading the scale of Deployment {namespace}/{name}: HTTP {code}: {}",
                api_message(&body)
            );
        }
        let v: serde_json::Value = serde_json::from_str(&body)?;
        Ok(v["spec"]["replicas"].as_u64().unwrap_or(0) as u32)
    }
}

/// Field manager of the objects [`Cluster::apply`] writes.
pub const FIELD_MANAGER: &str = "scale-testcluster";

/// The kinds [`Cluster::apply`] knows: (kind, resource, namespaced). The API group and version
/// come from the object's `apiVersion`.
pub const KINDS: &[(&str, &str, bool)] = &[
    ("Namespace", "namespaces", false),
    ("ServiceAccount", "serviceaccounts", true),
    ("ConfigMap", "configmaps", true),
    ("Secret", "secrets", true),
    ("Service", "services", true),
    ("Role", "roles", true),
    ("RoleBinding", "rolebindings", true),
    ("ClusterRole", "clusterroles", false),
    ("ClusterRoleBinding", "clusterrolebindings", false),
    ("Deployment", "deployments", true),
    ("StatefulSet", "statefulsets", true),
    ("CronJob", "cronjobs", true),
    ("Job", "jobs", true),
    ("Lease", "leases", true),
    // The Helm chart's optional ServiceMonitor, once a test has installed its CRD.
    (
        "CustomResourceDefinition",
        "customresourcedefinitions",
        false,
    ),
    ("ServiceMonitor", "servicemonitors", true),
];

/// The REST path of an object and a `Kind namespace/name` label for it.
pub fn object_path(obj: &serde_json::Value) -> Result<(String, String)> {
    let api_version = obj["apiVersion"]
        .as_str()
        .ok_or_else(|| anyhow!("object without apiVersion: {obj}"))?;
    let kind = obj["kind"]
        .as_str()
        .ok_or_else(|| anyhow!("object without kind: {obj}"))?;
    let name = obj["metadata"]["name"]
        .as_str()
        .ok_or_else(|| anyhow!("{kind} without metadata.name"))?;
    let &(_, resource, namespaced) =
        KINDS.iter().find(|(k, _, _)| *k == kind).ok_or_else(|| {
            anyhow!(
                "{kind} {name}: kind not supported (known: {})",
                KINDS.iter().map(|k| k.0).collect::<Vec<_>>().join(", ")
            )
        })?;
    let prefix = if api_version.contains('/') {
        format!("/apis/{api_version}")
    } else {
        format!("/api/{api_version}")
    };
    if namespaced {
        let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default");
        Ok((
            format!("{prefix}/namespaces/{ns}/{resource}/{name}"),
            format!("{kind} {ns}/{name}"),
        ))
    } else {
        Ok((
            format!("{prefix}/{resource}/{name}"),
            format!("{kind} {name}"),
        ))
    }
}

/// The Deployment [`Cluster::create_deployment`] creates.
pub fn deployment(namespace: &str, name: &str, replicas: u32) -> serde_json::Value {
    serde_json::json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"name": "app", "image": "example/app:1", "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}}}]}
            }
        }
    })
}

/// The `message` of a Kubernetes `Status` body, else the body itself (shortened).
fn api_message(body: &str) -> String {
    serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.chars().take(300).collect())
}

/// Decode an HTTP/1.1 chunked body (what was read of it).
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            out.push_str(&after[..n.min(after.len())]);
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].strip_prefix("\r\n").unwrap_or(&after[n..]);
    }
    out
}

impl Drop for Cluster {
    fn drop(&mut self) {
        stop(&mut self.apiserver);
        stop(&mut self.etcd);
        if !self.keep_dir {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() {
        let lo = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok());
        let ports: Vec<u16> = (0..200).map(|_| free_port().unwrap()).collect();
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len(), "{ports:?}");
        if let Some(lo) = lo {
            assert!(
                ports.iter().all(|&p| p < lo),
                "{ports:?} (ephemeral from {lo})"
            );
        }
        for &p in ports.iter().take(10) {
            TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
    }

    #[test]
    fn paths_of_objects() {
        let ns =
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a"}});
        assert_eq!(
            object_path(&ns).unwrap(),
            ("/api/v1/namespaces/a".into(), "Namespace a".into())
        );
        let role = serde_json::json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role", "metadata": {"name": "r", "namespace": "n"}});
        assert_eq!(
            object_path(&role).unwrap().0,
            "/apis/rbac.authorization.k8s.io/v1/namespaces/n/roles/r"
        );
        let d = deployment("n", "d", 2);
        assert_eq!(
            object_path(&d).unwrap().0,
            "/apis/apps/v1/namespaces/n/deployments/d"
        );
        let odd =
            serde_json::json!({"apiVersion": "x/v1", "kind": "Widget", "metadata": {"name": "w"}});
        assert!(
            object_path(&odd)
                .unwrap_err()
                .to_string()
                .contains("not supported")
        );
    }

    #[test]
    fn chunked_bodies() {
        assert_eq!(
            dechunk("5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"),
            "hello world"
        );
        assert_eq!(dechunk("a;ext=1\r\n0123456789\r\n0\r\n\r\n"), "0123456789");
    }
}
