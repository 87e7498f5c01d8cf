//! Real nginx in front of test gateways, with one of two sites:
//!
//! * [`Site::Shipped`]: the shipped `deploy/nginx/` files — changed only where a deployment
//!   changes them: certificate paths, upstream addresses, and (since tests cannot own ports
//!   80/443 or /var/log) the listen ports and the log directory;
//! * [`Site::ShippedWithAuthRequest`]: the same, with the commented `auth_request` example
//!   uncommented and pointed at a business upstream — exactly as its comment tells a user to;
//! * [`Site::Tutorial`]: the wafer tutorial's own `ssl.conf` (`tests/nginx/tutorial-ssl.conf`),
//!   changed only in certificate file names, listen port and upstream port — what a team that
//!   swaps its Node app for weapp keeps running in front of it.
//!
//! The certificate is a throw-away self-signed one made at run time; no key is ever
//! committed. nginx is found through `NGINX_BIN`, then `/usr/sbin/nginx`; `scripts/test.sh`
//! installs it.
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::Arc,
    time::Duration,
};

use crate::{client::WaferClient, ports::Port, process::wait_until_listening};

const SHIPPED_CERT_DIR: &str = "/etc/nginx/tls/weapp.example.com/";

/// Which site nginx serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Site {
    Shipped,
    /// The shipped site with its `auth_request` example in use, in front of this upstream.
    ShippedWithAuthRequest(SocketAddr),
    Tutorial,
}

pub struct Nginx {
    pub https_port: u16,
    /// The plain-HTTP port (the shipped site's redirect; unused by the tutorial's site).
    pub http_port: u16,
    _ports: [Port; 2],
    /// The self-signed certificate (PEM) clients must trust.
    pub certificate_pem: String,
    dir: tempfile::TempDir,
    child: Child,
}

fn binary() -> PathBuf {
    let path = std::env::var("NGINX_BIN").unwrap_or_else(|_| "/usr/sbin/nginx".into());
    let path = PathBuf::from(path);
    assert!(
        path.is_file(),
        "nginx not found at {} (set NGINX_BIN, or run scripts/test.sh, which installs it)",
        path.display()
    );
    path
}

fn shipped(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/nginx")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

impl Nginx {
    /// Starts nginx with the shipped site, its upstream pointing at `gateways`.
    pub fn start(gateways: &[SocketAddr]) -> Self {
        Self::with_site(Site::Shipped, gateways)
    }

    /// Starts nginx with `site` in front of `gateways` (the tutorial's site takes the first).
    pub fn with_site(site: Site, gateways: &[SocketAddr]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let root = dir.path();
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
        let certificate_pem = certified.cert.pem();
        let (cert, key) = (root.join("fullchain.pem"), root.join("privkey.pem"));
        std::fs::write(&cert, &certificate_pem).expect("write cert");
        std::fs::write(&key, certified.signing_key.serialize_pem()).expect("write key");
        let ports = [Port::reserve(), Port::reserve()];
        let (https_port, http_port) = (ports[0].number(), ports[1].number());
        let includes = match site {
            Site::Shipped => shipped_site(root, gateways, https_port, http_port, None),
            Site::ShippedWithAuthRequest(upstream) => {
                shipped_site(root, gateways, https_port, http_port, Some(upstream))
            }
            Site::Tutorial => tutorial_site(root, gateways[0], https_port),
        };

        for temp in ["body", "proxy", "fastcgi", "uwsgi", "scgi"] {
            std::fs::create_dir_all(root.join("tmp").join(temp)).expect("temp dirs");
        }
        // Workers of a root master would run as nobody, who cannot use this private directory.
        let user = if is_root() { "user root;" } else { "" };
        let r = root.display();
        let main = format!(
            "{user}\nworker_processes 1;\ndaemon off;\npid {r}/nginx.pid;\nerror_log {r}/error.log warn;\n\
             events {{ worker_connections 1024; }}\n\
             http {{\n  access_log {r}/access.log;\n  client_body_temp_path {r}/tmp/body;\n  proxy_temp_path {r}/tmp/proxy;\n  \
             fastcgi_temp_path {r}/tmp/fastcgi;\n  uwsgi_temp_path {r}/tmp/uwsgi;\n  scgi_temp_path {r}/tmp/scgi;\n{includes}}}\n"
        );
        std::fs::write(root.join("nginx.conf"), main).expect("write nginx.conf");

        let test = Command::new(binary())
            .arg("-t")
            .arg("-p")
            .arg(root)
            .arg("-c")
            .arg(root.join("nginx.conf"))
            .output()
            .expect("nginx -t runs");
        assert!(
            test.status.success(),
            "nginx -t rejected the {site:?} config: {}",
            String::from_utf8_lossy(&test.stderr)
        );
        let mut child = Command::new(binary())
            .arg("-p")
            .arg(root)
            .arg("-c")
            .arg(root.join("nginx.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx starts");
        let error_log = root.join("error.log");
        wait_until_listening(
            "nginx",
            &mut child,
            https_port,
            Duration::from_secs(10),
            || read(&error_log),
        );
        Self {
            https_port,
            http_port,
            _ports: ports,
            certificate_pem,
            dir,
            child,
        }
    }

    pub fn https_url(&self, path: &str) -> String {
        format!("https://localhost:{}{path}", self.https_port)
    }

    pub fn http_url(&self, path: &str) -> String {
        format!("http://localhost:{}{path}", self.http_port)
    }

    /// The site's access log (the shipped format).
    pub fn access_log(&self) -> String {
        read(&self.dir.path().join("access.log"))
    }

    /// nginx's error log, for failure messages.
    pub fn error_log(&self) -> String {
        read(&self.dir.path().join("error.log"))
    }

    /// An HTTPS client that trusts this nginx's certificate.
    pub fn https_client(&self) -> reqwest::Client {
        reqwest::Client::builder()
            .add_root_certificate(
                reqwest::Certificate::from_pem(self.certificate_pem.as_bytes()).expect("cert"),
            )
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(10))
            .build()
            .expect("https client")
    }

    /// A wafer client of the gateway through this nginx, over HTTPS.
    pub fn wafer_client(&self) -> WaferClient {
        WaferClient {
            http: self.https_client(),
            base: format!("https://localhost:{}", self.https_port),
        }
    }

    /// A rustls connector that trusts this nginx's certificate, for WSS.
    pub fn tls_connector(&self) -> tokio_rustls::TlsConnector {
        let mut roots = rustls::RootCertStore::empty();
        let der =
            rustls::pki_types::pem::PemObject::from_pem_slice(self.certificate_pem.as_bytes())
                .expect("pem");
        roots.add(der).expect("root");
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocols")
        .with_root_certificates(roots)
        .with_no_client_auth();
        tokio_rustls::TlsConnector::from(Arc::new(config))
    }
}

/// The shipped site and upstream files, as a deployment adapts them; the `include` lines.
fn shipped_site(
    root: &Path,
    gateways: &[SocketAddr],
    https_port: u16,
    http_port: u16,
    auth_request_upstream: Option<SocketAddr>,
) -> String {
    let mut site = shipped("weapp.conf");
    if let Some(upstream) = auth_request_upstream {
        site = uncomment_auth_request_example(&site, upstream);
    }
    let site = site
        .replace(SHIPPED_CERT_DIR, &format!("{}/", root.display()))
        .replace("/var/log/nginx/", &format!("{}/", root.display()))
        .replace("listen 443 ", &format!("listen 127.0.0.1:{https_port} "))
        .replace("listen [::]:443 ", &format!("listen [::1]:{https_port} "))
        .replace("listen 80;", &format!("listen 127.0.0.1:{http_port};"))
        .replace("listen [::]:80;", &format!("listen [::1]:{http_port};"));
    assert!(
        !site.contains(SHIPPED_CERT_DIR),
        "every certificate path was replaced"
    );
    std::fs::write(root.join("weapp.conf"), site).expect("write site");

    let servers: String = gateways
        .iter()
        .map(|g| format!("    server {g} max_fails=3 fail_timeout=10s;\n"))
        .collect();
    let upstream: String = shipped("weapp-upstream.conf")
        .lines()
        .filter(|line| !line.trim_start().starts_with("server "))
        .map(|line| {
            if line.trim_start().starts_with("least_conn;") {
                format!("{line}\n{servers}")
            } else {
                format!("{line}\n")
            }
        })
        .collect();
    assert!(upstream.contains(&gateways[0].to_string()));
    std::fs::write(root.join("weapp-upstream.conf"), upstream).expect("write upstream");
    let r = root.display();
    format!("  include {r}/weapp-upstream.conf;\n  include {r}/weapp.conf;\n")
}

/// The `auth_request` example as a user enables it: the lines between its BEGIN and END
/// markers uncommented, the example service address replaced by `upstream`.
fn uncomment_auth_request_example(site: &str, upstream: SocketAddr) -> String {
    let mut inside = false;
    let mut changed = 0;
    let out: String = site
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if trimmed.starts_with("# BEGIN auth_request example") {
                inside = true;
            } else if trimmed.starts_with("# END auth_request example") {
                inside = false;
            } else if inside && let Some(code) = trimmed.strip_prefix('#') {
                changed += 1;
                let indent = &line[..line.len() - trimmed.len()];
                return format!(
                    "{indent}{}\n",
                    code.replace("127.0.0.1:9000", &upstream.to_string())
                );
            }
            format!("{line}\n")
        })
        .collect();
    assert!(
        changed > 10,
        "the auth_request example is missing from weapp.conf"
    );
    out
}

/// The tutorial's `ssl.conf`, changed only in certificate names, listen port and upstream
/// port. nginx 1.25.1 removed its `ssl on;`: there (only) the same thing is said the new way.
fn tutorial_site(root: &Path, gateway: SocketAddr, https_port: u16) -> String {
    let original = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("nginx/tutorial-ssl.conf"),
    )
    .expect("tests/nginx/tutorial-ssl.conf");
    let r = root.display();
    let mut site = original
        .replace("1_www.example.com.crt", &format!("{r}/fullchain.pem"))
        .replace("2_www.example.com.key", &format!("{r}/privkey.pem"))
        .replace("listen 443;", &format!("listen 127.0.0.1:{https_port};"))
        .replace("http://127.0.0.1:8765", &format!("http://{gateway}"));
    assert!(
        site.contains(&format!("http://{gateway}")) && site.contains("fullchain.pem"),
        "the tutorial's config changed shape"
    );
    if !supports_ssl_on() {
        site = site.replace("        ssl on;\n", "").replace(
            &format!("listen 127.0.0.1:{https_port};"),
            &format!("listen 127.0.0.1:{https_port} ssl;"),
        );
    }
    std::fs::write(root.join("tutorial-ssl.conf"), site).expect("write site");
    format!("  include {r}/tutorial-ssl.conf;\n")
}

/// Whether this nginx still has the `ssl on;` directive (removed in 1.25.1).
fn supports_ssl_on() -> bool {
    let output = Command::new(binary())
        .arg("-v")
        .output()
        .expect("nginx -v runs");
    let text = String::from_utf8_lossy(&output.stderr).into_owned();
    let version: Vec<u32> = text
        .split('/')
        .nth(1)
        .unwrap_or_default()
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|n| n.parse().ok())
        .take(3)
        .collect();
    version < vec![1, 25, 1]
}

fn is_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master then takes its workers down with it.
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let _ = self.child.wait();
    }
}
