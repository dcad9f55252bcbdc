//! Jaeger v2 as a real process (`scripts/jaeger.sh` builds it; `make test` does before the Rust
//! tests): memory storage, OTLP in, API v3 out, all on loopback (`configs/jaeger/test.yaml`).

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_client::TraceServiceClient;

use super::{free_addr, root};

/// `$SCALE_JAEGER`, or `$SCALE_CACHE/jaeger/bin/jaeger` (default cache `~/.cache/scale`).
pub fn binary() -> PathBuf {
    super::cached_binary("SCALE_JAEGER", "jaeger/bin/jaeger", "scripts/jaeger.sh")
}

/// A running Jaeger.
pub struct Jaeger {
    pub child: Child,
    /// OTLP/gRPC receiver.
    pub otlp: SocketAddr,
    /// Query HTTP (API v3).
    pub query: SocketAddr,
    pub log: PathBuf,
}

impl Jaeger {
    /// Start Jaeger and wait until its query API and OTLP receiver answer.
    pub fn start(dir: &Path) -> Jaeger {
        let (otlp, otlp_http, query) = (free_addr(), free_addr(), free_addr());
        let log = dir.join("jaeger.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(binary())
            .arg("--config")
            .arg(root().join("configs/jaeger/test.yaml"))
            .env("JAEGER_OTLP_GRPC_ENDPOINT", otlp.to_string())
            .env("JAEGER_OTLP_HTTP_ENDPOINT", otlp_http.to_string())
            .env("JAEGER_QUERY_HTTP_ENDPOINT", query.to_string())
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("start jaeger");
        let j = Jaeger {
            child,
            otlp,
            query,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while http_get(query, "/api/v3/services").map(|(c, _)| c) != Some(200)
            || TcpStream::connect(otlp).is_err()
        {
            assert!(
                Instant::now() < deadline,
                "jaeger did not come up:\n{}",
                j.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        j
    }

    /// The query API's base URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.query)
    }

    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Jaeger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A plain HTTP/1.0 GET: (status, body).
pub fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
    let mut text = String::new();
    s.read_to_string(&mut text).ok()?;
    let code = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|x| x.1).unwrap_or("");
    Some((code, body.to_string()))
}

/// The export requests of an OTLP JSON lines file (plain or gzip).
pub fn requests(path: &Path) -> Vec<ExportTraceServiceRequest> {
    let file = std::fs::File::open(path).unwrap();
    let reader: Box<dyn BufRead> = if path.extension().is_some_and(|e| e == "gz") {
        Box::new(std::io::BufReader::new(flate2::read::MultiGzDecoder::new(
            file,
        )))
    } else {
        Box::new(std::io::BufReader::new(file))
    };
    reader
        .lines()
        .map(|l| l.unwrap())
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            // The recording has string-encoded doubles ("NaN") that the library does not take;
            // `scale`'s reader bridges them the same way.
            let l = scale_scaler::eval::input::null_string_doubles(&l).unwrap_or(l);
            serde_json::from_str(&l).expect("an OTLP JSON line")
        })
        .collect()
}

/// Export `requests` to the OTLP/gRPC receiver at `addr`, in order.
pub async fn export(addr: SocketAddr, requests: &[ExportTraceServiceRequest]) {
    let mut c = TraceServiceClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
        .max_decoding_message_size(64 << 20);
    for r in requests {
        c.export(r.clone()).await.expect("OTLP export");
    }
}
