//! The benchmark's report: every figure per endpoint and shape, and as a ratio to the floor (the
//! bare proxy) from the same run; printed as tables and written as JSON.

use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::{
    client::Shape,
    load::{FixedRate, Held, Saturation, Sequential},
    process::Pinning,
};

/// The endpoint every ratio is taken against.
pub const FLOOR: &str = "proxy";
/// The endpoint "added" latency is measured from.
pub const DIRECT: &str = "direct";

/// p50 and p99, milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        let ms = |q: f64| h.value_at_quantile(q) as f64 / 1e6;
        Percentiles {
            p50: ms(0.50),
            p99: ms(0.99),
        }
    }

    fn minus(self, other: Percentiles) -> Self {
        Percentiles {
            p50: self.p50 - other.p50,
            p99: self.p99 - other.p99,
        }
    }

    fn ratio_to(self, floor: Percentiles) -> RatioPair {
        RatioPair {
            p50: ratio(self.p50, floor.p50),
            p99: ratio(self.p99, floor.p99),
        }
    }
}

/// Ratios to the floor; absent where the floor's figure is not above zero.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct RatioPair {
    pub p50: Option<f64>,
    pub p99: Option<f64>,
}

/// Sets each row's ratio to the floor's row of the same kind; `figure` gives a row's endpoint,
/// kind (shape, stream count) and value.
fn set_ratios<R, K: PartialEq>(
    rows: &mut [R],
    figure: impl Fn(&R) -> (&str, K, f64),
    set: impl Fn(&mut R, Option<f64>),
) {
    let floors: Vec<(K, f64)> = rows
        .iter()
        .map(&figure)
        .filter(|(endpoint, _, _)| *endpoint == FLOOR)
        .map(|(_, kind, value)| (kind, value))
        .collect();
    for row in rows.iter_mut() {
        let (_, kind, value) = figure(row);
        let ratio = floors
            .iter()
            .find(|(floor_kind, _)| *floor_kind == kind)
            .and_then(|(_, floor)| ratio(value, *floor));
        set(row, ratio);
    }
}

fn ratio(value: f64, floor: f64) -> Option<f64> {
    (floor > 0.0).then(|| value / floor)
}

#[derive(Debug, Serialize)]
pub struct LatencyRow {
    pub shape: Shape,
    pub endpoint: String,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// To the end of the answer.
    pub total_ms: Percentiles,
    /// To the first data frame: for streams, the time to first token.
    pub first_token_ms: Percentiles,
    /// Through this endpoint minus straight to the upstream.
    pub added_total_ms: Option<Percentiles>,
    pub added_first_token_ms: Option<Percentiles>,
    pub added_total_ratio: Option<RatioPair>,
    pub added_first_token_ratio: Option<RatioPair>,
}

impl LatencyRow {
    /// The figure the issue tracks for this shape: the whole answer for JSON, the first token
    /// for streams; measured, added, and added as a ratio to the floor's.
    fn headline(&self) -> (Percentiles, Option<Percentiles>, Option<RatioPair>) {
        match self.shape {
            Shape::Json => (self.total_ms, self.added_total_ms, self.added_total_ratio),
            Shape::Stream => (
                self.first_token_ms,
                self.added_first_token_ms,
                self.added_first_token_ratio,
            ),
        }
    }
}

#[derive(Debug, Serialize)]
pub struct ThroughputRow {
    pub shape: Shape,
    pub endpoint: String,
    pub connections: usize,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub seconds: f64,
    pub requests_per_second: f64,
    pub latency_ms: Percentiles,
    pub ratio: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct CpuRow {
    pub shape: Shape,
    pub endpoint: String,
    pub target_rate: u64,
    pub achieved_rate: f64,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub cpu_seconds: f64,
    pub cpu_seconds_per_1000: f64,
    pub ratio: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct MemoryRow {
    pub endpoint: String,
    pub streams: u64,
    pub held: u64,
    pub finished: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub rss_before_mib: f64,
    pub rss_held_mib: f64,
    /// (held - before) / held streams.
    pub kib_per_stream: Option<f64>,
    pub ratio: Option<f64>,
}

/// The whole run.
#[derive(Debug, Serialize)]
pub struct Report {
    pub mode: String,
    pub started_at: String,
    pub pinning: Pinning,
    pub settings: serde_json::Value,
    pub floor: &'static str,
    pub latency: Vec<LatencyRow>,
    pub throughput: Vec<ThroughputRow>,
    pub cpu: Vec<CpuRow>,
    pub memory: Vec<MemoryRow>,
    pub notes: Vec<String>,
}

impl Report {
    pub fn new(mode: &str, pinning: Pinning, settings: serde_json::Value) -> Self {
        Report {
            mode: mode.to_owned(),
            started_at: chrono::Utc::now().to_rfc3339(),
            pinning,
            settings,
            floor: FLOOR,
            latency: Vec::new(),
            throughput: Vec::new(),
            cpu: Vec::new(),
            memory: Vec::new(),
            notes: Vec::new(),
        }
    }

    /// Adds the one-at-a-time results of one shape, with "added" and ratios.
    pub fn add_latency(&mut self, shape: Shape, results: &[Sequential]) {
        let find = |name: &str| results.iter().find(|r| r.name == name);
        let direct =
            find(DIRECT).map(|r| (Percentiles::of(&r.total), Percentiles::of(&r.first_data)));
        let floor = find(FLOOR).zip(direct).map(|(r, (dt, df))| {
            (
                Percentiles::of(&r.total).minus(dt),
                Percentiles::of(&r.first_data).minus(df),
            )
        });
        for r in results {
            let total = Percentiles::of(&r.total);
            let first = Percentiles::of(&r.first_data);
            let added = (r.name != DIRECT)
                .then_some(direct)
                .flatten()
                .map(|(dt, df)| (total.minus(dt), first.minus(df)));
            let ratios = added
                .zip(floor)
                .map(|((at, af), (ft, ff))| (at.ratio_to(ft), af.ratio_to(ff)));
            self.latency.push(LatencyRow {
                shape,
                endpoint: r.name.clone(),
                ok: r.ok,
                errors: r.errors,
                first_error: r.first_error.clone(),
                total_ms: total,
                first_token_ms: first,
                added_total_ms: added.map(|a| a.0),
                added_first_token_ms: added.map(|a| a.1),
                added_total_ratio: ratios.map(|r| r.0),
                added_first_token_ratio: ratios.map(|r| r.1),
            });
        }
    }

    pub fn add_throughput(
        &mut self,
        shape: Shape,
        endpoint: &str,
        connections: usize,
        s: &Saturation,
    ) {
        self.throughput.push(ThroughputRow {
            shape,
            endpoint: endpoint.to_owned(),
            connections,
            ok: s.ok,
            errors: s.errors,
            first_error: s.first_error.clone(),
            seconds: s.elapsed.as_secs_f64(),
            requests_per_second: s.per_second(),
            latency_ms: Percentiles::of(&s.latency),
            ratio: None,
        });
    }

    pub fn add_cpu(&mut self, shape: Shape, endpoint: &str, target_rate: u64, f: &FixedRate) {
        self.cpu.push(CpuRow {
            shape,
            endpoint: endpoint.to_owned(),
            target_rate,
            achieved_rate: f.achieved_rate(),
            ok: f.ok,
            errors: f.errors,
            first_error: f.first_error.clone(),
            cpu_seconds: f.cpu_seconds,
            cpu_seconds_per_1000: f.cpu_per_thousand(),
            ratio: None,
        });
    }

    pub fn add_memory(&mut self, endpoint: &str, h: &Held) {
        let mib = |kib: u64| kib as f64 / 1024.0;
        self.memory.push(MemoryRow {
            endpoint: endpoint.to_owned(),
            streams: h.wanted,
            held: h.held,
            finished: h.finished,
            errors: h.errors,
            first_error: h.first_error.clone(),
            rss_before_mib: mib(h.rss_before_kib),
            rss_held_mib: mib(h.rss_held_kib),
            kib_per_stream: (h.held > 0)
                .then(|| (h.rss_held_kib as f64 - h.rss_before_kib as f64) / h.held as f64),
            ratio: None,
        });
    }

    /// Fills in the ratios of throughput, CPU and memory to the floor's row of the same kind.
    pub fn compute_ratios(&mut self) {
        set_ratios(
            &mut self.throughput,
            |r| (r.endpoint.as_str(), r.shape, r.requests_per_second),
            |r, ratio| r.ratio = ratio,
        );
        set_ratios(
            &mut self.cpu,
            |r| (r.endpoint.as_str(), r.shape, r.cpu_seconds_per_1000),
            |r, ratio| r.ratio = ratio,
        );
        set_ratios(
            &mut self.memory,
            |r| (r.endpoint.as_str(), r.streams, r.rss_held_mib),
            |r, ratio| r.ratio = ratio,
        );
    }

    /// Failed requests in all phases, and streams that could not be held.
    pub fn failures(&self) -> u64 {
        self.latency.iter().map(|r| r.errors).sum::<u64>()
            + self.throughput.iter().map(|r| r.errors).sum::<u64>()
            + self.cpu.iter().map(|r| r.errors).sum::<u64>()
            + self
                .memory
                .iter()
                .map(|r| r.errors + (r.streams - r.held.min(r.streams)))
                .sum::<u64>()
    }

    /// The human-readable tables.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let x = |r: Option<f64>| r.map_or("-".to_owned(), |r| format!("{r:.2}x"));
        let pair = |p: Option<Percentiles>| {
            p.map_or("-".to_owned(), |p| format!("{:.3} / {:.3}", p.p50, p.p99))
        };
        let rpair = |p: Option<RatioPair>| {
            p.map_or("-".to_owned(), |p| format!("{} / {}", x(p.p50), x(p.p99)))
        };
        let _ = writeln!(
            out,
            "Tollgate benchmark ({} mode, {}; pinned: {}). Ratios are to the floor, `{FLOOR}`, from this run.",
            self.mode,
            self.started_at,
            if self.pinning.enabled {
                format!(
                    "gateway/proxy on core {}, upstream + load on core {}",
                    self.pinning.gateway_core, self.pinning.load_core
                )
            } else {
                "no".to_owned()
            }
        );
        for shape in [Shape::Json, Shape::Stream] {
            let rows: Vec<&LatencyRow> = self.latency.iter().filter(|r| r.shape == shape).collect();
            if rows.is_empty() {
                continue;
            }
            let what = match shape {
                Shape::Json => "latency to the end of the answer",
                Shape::Stream => "time to first token",
            };
            let _ = writeln!(
                out,
                "\n{} one request at a time: {what}, ms, p50 / p99 (added = through it minus direct)",
                shape.name()
            );
            let _ = writeln!(
                out,
                "  {:<24} {:>8} {:>19} {:>19} {:>19} {:>7}",
                "endpoint", "n", "measured", "added", "added / floor's", "errors"
            );
            for r in rows {
                let (measured, added, ratio_of) = r.headline();
                let _ = writeln!(
                    out,
                    "  {:<24} {:>8} {:>19} {:>19} {:>19} {:>7}",
                    r.endpoint,
                    r.ok,
                    pair(Some(measured)),
                    pair(added),
                    rpair(ratio_of),
                    r.errors
                );
            }
        }
        if !self.throughput.is_empty() {
            let _ = writeln!(out, "\nmaximum requests/s, closed loop");
            let _ = writeln!(
                out,
                "  {:<7} {:<24} {:>6} {:>10} {:>8} {:>19} {:>7}",
                "shape", "endpoint", "conns", "req/s", "/ floor", "latency p50 / p99", "errors"
            );
            for r in &self.throughput {
                let _ = writeln!(
                    out,
                    "  {:<7} {:<24} {:>6} {:>10.0} {:>8} {:>19} {:>7}",
                    r.shape.name(),
                    r.endpoint,
                    r.connections,
                    r.requests_per_second,
                    x(r.ratio),
                    pair(Some(r.latency_ms)),
                    r.errors
                );
            }
        }
        if !self.cpu.is_empty() {
            let _ = writeln!(
                out,
                "\nCPU seconds per 1,000 requests at a fixed rate (the process behind the endpoint)"
            );
            let _ = writeln!(
                out,
                "  {:<7} {:<24} {:>8} {:>9} {:>10} {:>8} {:>7}",
                "shape", "endpoint", "rate", "achieved", "CPU s/1k", "/ floor", "errors"
            );
            for r in &self.cpu {
                let _ = writeln!(
                    out,
                    "  {:<7} {:<24} {:>8} {:>9.0} {:>10.3} {:>8} {:>7}",
                    r.shape.name(),
                    r.endpoint,
                    r.target_rate,
                    r.achieved_rate,
                    r.cpu_seconds_per_1000,
                    x(r.ratio),
                    r.errors
                );
            }
        }
        if !self.memory.is_empty() {
            let _ = writeln!(
                out,
                "\nresident memory with idle streams held (the process behind the endpoint)"
            );
            let _ = writeln!(
                out,
                "  {:<24} {:>8} {:>8} {:>11} {:>10} {:>10} {:>8} {:>7}",
                "endpoint",
                "streams",
                "held",
                "before MiB",
                "held MiB",
                "KiB/strm",
                "/ floor",
                "errors"
            );
            for r in &self.memory {
                let _ = writeln!(
                    out,
                    "  {:<24} {:>8} {:>8} {:>11.1} {:>10.1} {:>10} {:>8} {:>7}",
                    r.endpoint,
                    r.streams,
                    r.held,
                    r.rss_before_mib,
                    r.rss_held_mib,
                    r.kib_per_stream.map_or("-".into(), |k| format!("{k:.1}")),
                    x(r.ratio),
                    r.errors
                );
            }
        }
        for note in &self.notes {
            let _ = writeln!(out, "\nnote: {note}");
        }
        let errors: Vec<String> = self
            .latency
            .iter()
            .filter_map(|r| {
                r.first_error
                    .as_ref()
                    .map(|e| format!("{} ({}): {e}", r.endpoint, r.shape.name()))
            })
            .chain(self.throughput.iter().filter_map(|r| {
                r.first_error
                    .as_ref()
                    .map(|e| format!("{} ({}): {e}", r.endpoint, r.shape.name()))
            }))
            .chain(self.cpu.iter().filter_map(|r| {
                r.first_error
                    .as_ref()
                    .map(|e| format!("{} ({}): {e}", r.endpoint, r.shape.name()))
            }))
            .chain(self.memory.iter().filter_map(|r| {
                r.first_error
                    .as_ref()
                    .map(|e| format!("{} ({} streams): {e}", r.endpoint, r.streams))
            }))
            .collect();
        for e in errors {
            let _ = writeln!(out, "first error: {e}");
        }
        out
    }
}
