//! The server's own view: request latency histograms read from `/metrics`.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// GETs `path` from a server base URL (`http://host:port`) and returns the body.
pub async fn get(server: &str, path: &str) -> Result<String> {
    let host = server
        .trim()
        .trim_start_matches("http://")
        .trim_end_matches('/');
    let mut s = TcpStream::connect(host)
        .await
        .with_context(|| format!("connecting to {host}"))?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await?;
    let text = String::from_utf8(raw).context("non-UTF-8 response")?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .context("response without a header end")?;
    if !head.starts_with("HTTP/1.1 200") {
        bail!("GET {path}: {}", head.lines().next().unwrap_or_default());
    }
    Ok(body.to_string())
}

/// One series summed over every node of `servers` (comma-separated base
/// URLs); `None` if a node's `/metrics` cannot be read.
pub async fn series(servers: &str, name: &str, labels: &str) -> Option<Buckets> {
    let [sum] = several(servers, [(name, labels)]).await?;
    Some(sum)
}

/// Several series (`(name, labels)` as for [`Buckets::parse`]), each summed
/// over every node, from one read of each node's `/metrics`.
pub async fn several<const N: usize>(
    servers: &str,
    wanted: [(&str, &str); N],
) -> Option<[Buckets; N]> {
    let mut sums = std::array::from_fn(|_| Buckets::default());
    for node in servers.split(',').map(str::trim) {
        let text = get(node, "/metrics").await.ok()?;
        for (sum, (name, labels)) in sums.iter_mut().zip(wanted) {
            *sum = sum.plus(&Buckets::parse(&text, name, labels));
        }
    }
    Some(sums)
}

/// Cumulative bucket counts of one histogram series, by upper bound.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Buckets {
    /// (upper bound, cumulative count), ascending; the last bound is +Inf.
    pub cumulative: Vec<(f64, u64)>,
}

impl Buckets {
    /// The series `name{labels...,le="…"}` in a Prometheus text body;
    /// `labels` is empty or `key="value",`.
    pub fn parse(text: &str, name: &str, labels: &str) -> Buckets {
        let prefix = format!("{name}_bucket{{{labels}le=\"");
        let mut by_bound = BTreeMap::new();
        for line in text.lines() {
            let Some(rest) = line.strip_prefix(&prefix) else {
                continue;
            };
            let Some((le, count)) = rest.split_once("\"} ") else {
                continue;
            };
            let bound = if le == "+Inf" {
                f64::INFINITY
            } else {
                match le.parse::<f64>() {
                    Ok(b) => b,
                    Err(_) => continue,
                }
            };
            if let Ok(n) = count.trim().parse::<u64>() {
                by_bound.insert(OrdF64(bound), n);
            }
        }
        Buckets {
            cumulative: by_bound.into_iter().map(|(b, n)| (b.0, n)).collect(),
        }
    }

    /// Both series added bucket by bucket (the same histogram on two nodes).
    pub fn plus(&self, other: &Buckets) -> Buckets {
        let mut by_bound: BTreeMap<OrdF64, u64> = BTreeMap::new();
        for (b, n) in self.cumulative.iter().chain(&other.cumulative) {
            *by_bound.entry(OrdF64(*b)).or_default() += n;
        }
        Buckets {
            cumulative: by_bound.into_iter().map(|(b, n)| (b.0, n)).collect(),
        }
    }

    /// What was observed between `earlier` and `self`.
    pub fn since(&self, earlier: &Buckets) -> Buckets {
        let before: BTreeMap<OrdF64, u64> = earlier
            .cumulative
            .iter()
            .map(|(b, n)| (OrdF64(*b), *n))
            .collect();
        Buckets {
            cumulative: self
                .cumulative
                .iter()
                .map(|(b, n)| {
                    let was = before.get(&OrdF64(*b)).copied().unwrap_or(0);
                    (*b, n.saturating_sub(was))
                })
                .collect(),
        }
    }

    /// Observations in all.
    pub fn count(&self) -> u64 {
        self.cumulative.last().map_or(0, |(_, n)| *n)
    }

    /// The smallest bucket bound that holds at least fraction `q` of the
    /// observations (an upper bound of that quantile), in the unit of the
    /// histogram; `None` if empty.
    pub fn quantile_bound(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let need = (q * total as f64).ceil() as u64;
        self.cumulative
            .iter()
            .find(|(_, n)| *n >= need)
            .map(|(b, _)| *b)
    }

    /// Fraction of observations at or under `bound` (a bucket bound).
    pub fn fraction_within(&self, bound: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        let n = self
            .cumulative
            .iter()
            .take_while(|(b, _)| *b <= bound)
            .last()
            .map_or(0, |(_, n)| *n);
        Some(n as f64 / total as f64)
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct OrdF64(f64);

impl Eq for OrdF64 {}

impl PartialOrd for OrdF64 {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for OrdF64 {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.0.total_cmp(&other.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
# TYPE duet_request_seconds histogram
duet_request_seconds_bucket{kind=\"send\",le=\"0.001\"} 7
duet_request_seconds_bucket{kind=\"send\",le=\"+Inf\"} 9
duet_request_seconds_bucket{kind=\"history\",le=\"0.001\"} 90
duet_request_seconds_bucket{kind=\"history\",le=\"0.005\"} 99
duet_request_seconds_bucket{kind=\"history\",le=\"0.01\"} 100
duet_request_seconds_bucket{kind=\"history\",le=\"+Inf\"} 100
";

    #[test]
    fn parses_one_series_and_bounds_its_quantiles() {
        let h = Buckets::parse(TEXT, "duet_request_seconds", "kind=\"history\",");
        assert_eq!(h.count(), 100);
        assert_eq!(h.quantile_bound(0.5), Some(0.001));
        assert_eq!(h.quantile_bound(0.99), Some(0.005));
        assert_eq!(h.quantile_bound(0.999), Some(0.01));
        assert_eq!(h.fraction_within(0.005), Some(0.99));
        let s = Buckets::parse(TEXT, "duet_request_seconds", "kind=\"send\",");
        assert_eq!(s.count(), 9);
    }

    #[test]
    fn since_subtracts_an_earlier_scrape() {
        let later = Buckets::parse(TEXT, "duet_request_seconds", "kind=\"history\",");
        let earlier = Buckets {
            cumulative: vec![(0.001, 80), (0.005, 80), (0.01, 80), (f64::INFINITY, 80)],
        };
        let d = later.since(&earlier);
        assert_eq!(d.count(), 20);
        assert_eq!(d.quantile_bound(0.5), Some(0.001));
        assert_eq!(d.quantile_bound(0.95), Some(0.005));
        assert_eq!(Buckets::default().quantile_bound(0.5), None);
    }

    #[test]
    fn parses_a_series_without_labels() {
        let text = "duet_commit_batch_size_bucket{le=\"1\"} 4\n\
                    duet_commit_batch_size_bucket{le=\"+Inf\"} 6\n\
                    duet_commit_batch_size_count 6\n";
        let h = Buckets::parse(text, "duet_commit_batch_size", "");
        assert_eq!(h.count(), 6);
        assert_eq!(h.quantile_bound(0.5), Some(1.0));
    }

    #[test]
    fn plus_adds_two_nodes() {
        let h = Buckets::parse(TEXT, "duet_request_seconds", "kind=\"history\",");
        let two = h.plus(&h);
        assert_eq!(two.count(), 200);
        assert_eq!(two.quantile_bound(0.99), Some(0.005));
        assert_eq!(Buckets::default().plus(&h), h);
    }
}
