//! Prometheus for tests: Debian's `prometheus` package (installed with apt-get if missing)
//! gives `promtool check metrics`, and a real server that scrapes a running cluster; plus a
//! reader of the text format that sums the series of a metric matching some labels.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

pub fn ensure_installed() {
    if Command::new("promtool").arg("--version").output().is_ok() {
        return;
    }
    let installed = Command::new("sh")
        .args(["-c", "apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq prometheus"])
        .status()
        .expect("run apt-get");
    assert!(
        installed.success(),
        "could not install prometheus with apt-get"
    );
}

/// Runs `promtool check metrics` on an exposition; panics with its complaints.
pub fn promtool_check(exposition: &str) {
    ensure_installed();
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// `GET http://address/metrics`.
pub async fn scrape(address: &str) -> String {
    let response = reqwest::get(format!("http://{address}/metrics"))
        .await
        .expect("scrape /metrics");
    assert!(response.status().is_success(), "{}", response.status());
    response.text().await.unwrap()
}

/// One parsed exposition: series name, labels, value.
pub struct Exposition {
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Exposition {
    pub fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.starts_with('#') || line.trim().is_empty() {
                continue;
            }
            let (series, value) = line.rsplit_once(' ').expect("a sample line");
            let value: f64 = value.parse().expect("a sample value");
            let (name, labels) = match series.split_once('{') {
                None => (series.to_string(), BTreeMap::new()),
                Some((name, labels)) => {
                    let labels = labels
                        .trim_end_matches('}')
                        .split("\",")
                        .filter(|pair| !pair.is_empty())
                        .map(|pair| {
                            let (key, value) = pair.split_once("=\"").expect("a label");
                            (key.to_string(), value.trim_end_matches('"').to_string())
                        })
                        .collect();
                    (name.to_string(), labels)
                }
            };
            samples.push((name, labels, value));
        }
        Self { samples }
    }

    /// The sum of the series of `name` whose labels include `labels`.
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.samples
            .iter()
            .filter(|(series, series_labels, _)| {
                series == name
                    && labels.iter().all(|(key, value)| {
                        series_labels.get(*key).map(String::as_str) == Some(value)
                    })
            })
            .map(|(_, _, value)| value)
            .sum()
    }
}

/// A Prometheus server scraping `targets` every second.
pub struct PrometheusServer {
    child: Child,
    pub address: String,
    _data: tempfile::TempDir,
}

impl PrometheusServer {
    pub fn start(targets: &[String]) -> Self {
        ensure_installed();
        let data = tempfile::tempdir().unwrap();
        let config = data.path().join("prometheus.yml");
        let target_list = targets
            .iter()
            .map(|target| format!("'{target}'"))
            .collect::<Vec<_>>()
            .join(", ");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: quarry\n    static_configs:\n      - targets: [{target_list}]\n"
            ),
        )
        .unwrap();
        let address = format!("127.0.0.1:{}", free_port());
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", path(data.path(), "tsdb")))
            .arg(format!("--web.listen-address={address}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start prometheus");
        Self {
            child,
            address,
            _data: data,
        }
    }

    /// The value of an instant PromQL query with one result, once it is `expected`.
    pub async fn wait_for_value(&self, query: &str, expected: f64, patience: Duration) {
        let started = Instant::now();
        let mut last = None;
        loop {
            if let Some(value) = self.query(query).await {
                if value == expected {
                    return;
                }
                last = Some(value);
            }
            assert!(
                started.elapsed() < patience,
                "{query} was {last:?}, not {expected}, after {patience:?}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    async fn query(&self, query: &str) -> Option<f64> {
        let encoded: String = query
            .bytes()
            .map(|byte| match byte {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' | b'.' => (byte as char).to_string(),
                other => format!("%{other:02X}"),
            })
            .collect();
        let url = format!("http://{}/api/v1/query?query={encoded}", self.address);
        let response = reqwest::get(url).await.ok()?;
        let body: serde_json::Value = response.json().await.ok()?;
        let result = body["data"]["result"].as_array()?;
        let [sample] = result.as_slice() else {
            return None;
        };
        sample["value"][1].as_str()?.parse().ok()
    }
}

fn path(base: &Path, name: &str) -> String {
    base.join(name).display().to_string()
}

impl Drop for PrometheusServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
