//! The load phases, each bounded in request count and in time and stopping by itself:
//! one request at a time (latency, time to first token), closed-loop saturation with many
//! connections (maximum requests/s), a fixed open-loop rate (CPU per request) and N streams held
//! open at once (memory).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use hdrhistogram::Histogram;
use tokio::time::Instant;

use crate::{
    Error,
    client::{Connection, Endpoint, OpenBody, Shape},
    process, upstream,
};

/// A histogram of nanoseconds, 1 ns to 10 minutes at 3 significant digits.
pub fn histogram() -> Result<Histogram<u64>, Error> {
    Ok(Histogram::new_with_bounds(1, 600_000_000_000, 3)?)
}

fn record(h: &mut Histogram<u64>, d: Duration) {
    h.saturating_record(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX).max(1));
}

/// One endpoint's requests in the one-at-a-time phase.
pub struct Sequential {
    pub name: String,
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    /// To the end of the answer.
    pub total: Histogram<u64>,
    /// To the first data frame (for streams: the first token).
    pub first_data: Histogram<u64>,
}

/// One request at a time on one keep-alive connection per endpoint, the endpoints interleaved
/// (request i goes to each endpoint in turn) so that a noisy moment touches all of them alike.
/// `warmup` requests per endpoint are not recorded. Stops after `count` rounds or `cap`.
pub async fn sequential(
    endpoints: &[Endpoint],
    shape: Shape,
    warmup: u64,
    count: u64,
    cap: Duration,
) -> Result<Vec<Sequential>, Error> {
    let mut connections = Vec::with_capacity(endpoints.len());
    let mut results = Vec::with_capacity(endpoints.len());
    for endpoint in endpoints {
        connections.push(Some(Connection::open(endpoint.addr).await?));
        results.push(Sequential {
            name: endpoint.name.clone(),
            ok: 0,
            errors: 0,
            first_error: None,
            total: histogram()?,
            first_data: histogram()?,
        });
    }
    let deadline = Instant::now() + cap;
    for round in 0..warmup + count {
        if Instant::now() >= deadline {
            break;
        }
        for ((endpoint, connection), result) in endpoints
            .iter()
            .zip(connections.iter_mut())
            .zip(results.iter_mut())
        {
            let outcome = match connection {
                Some(c) => c.exchange(endpoint.request(shape, false)).await,
                None => Err("no connection".into()),
            };
            match outcome {
                Ok(timing) if round >= warmup => {
                    result.ok += 1;
                    record(&mut result.total, timing.total);
                    record(&mut result.first_data, timing.first_data);
                }
                Ok(_) => {}
                Err(e) => {
                    result.errors += 1;
                    result.first_error.get_or_insert_with(|| e.to_string());
                    // The connection may be gone: the next round gets a new one.
                    *connection = Connection::open(endpoint.addr).await.ok();
                }
            }
        }
    }
    Ok(results)
}

/// A closed loop's outcome.
pub struct Saturation {
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    pub latency: Histogram<u64>,
}

impl Saturation {
    pub fn per_second(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// `connections` connections, each sending its next request as soon as the last one ended,
/// for `duration` or `max_requests` requests in all, whichever comes first.
pub async fn saturate(
    endpoint: &Endpoint,
    shape: Shape,
    connections: usize,
    duration: Duration,
    max_requests: u64,
) -> Result<Saturation, Error> {
    let issued = Arc::new(AtomicU64::new(0));
    let mut opened = Vec::with_capacity(connections);
    for _ in 0..connections {
        opened.push(Connection::open(endpoint.addr).await?);
    }
    let started = Instant::now();
    let deadline = started + duration;
    let mut tasks = Vec::with_capacity(connections);
    for mut connection in opened {
        let endpoint = endpoint.clone();
        let issued = Arc::clone(&issued);
        let mut latency = histogram()?;
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None::<String>);
            while Instant::now() < deadline && issued.fetch_add(1, Ordering::Relaxed) < max_requests
            {
                match connection.exchange(endpoint.request(shape, false)).await {
                    Ok(timing) => {
                        ok += 1;
                        record(&mut latency, timing.total);
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                        match Connection::open(endpoint.addr).await {
                            Ok(c) => connection = c,
                            Err(_) => break,
                        }
                    }
                }
            }
            (ok, errors, first_error, latency)
        }));
    }
    let mut outcome = Saturation {
        ok: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        latency: histogram()?,
    };
    for task in tasks {
        let (ok, errors, first_error, latency) = task.await?;
        outcome.ok += ok;
        outcome.errors += errors;
        if outcome.first_error.is_none() {
            outcome.first_error = first_error;
        }
        outcome.latency.add(&latency)?;
    }
    outcome.elapsed = started.elapsed();
    Ok(outcome)
}

/// An open-loop run's outcome, with the CPU the measured process spent on it.
pub struct FixedRate {
    pub ok: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub elapsed: Duration,
    pub cpu_seconds: f64,
}

impl FixedRate {
    pub fn cpu_per_thousand(&self) -> f64 {
        self.cpu_seconds / (self.ok.max(1) as f64) * 1000.0
    }

    pub fn achieved_rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// `rate` requests per second for `duration` (request i is due at i / rate), spread over
/// `connections` connections, while reading the CPU time of process `pid` before and after.
/// A request falling behind is sent at once; nothing runs past twice the duration plus 10 s.
pub async fn fixed_rate(
    endpoint: &Endpoint,
    shape: Shape,
    rate: u64,
    duration: Duration,
    connections: usize,
    pid: u32,
) -> Result<FixedRate, Error> {
    let total = (rate as f64 * duration.as_secs_f64()).round() as u64;
    let connections = connections.max(1);
    let mut opened = Vec::with_capacity(connections);
    for _ in 0..connections {
        opened.push(Connection::open(endpoint.addr).await?);
    }
    let cpu_before = process::cpu_seconds(pid)?;
    let started = Instant::now();
    let hard_stop = started + duration * 2 + Duration::from_secs(10);
    let mut tasks = Vec::with_capacity(connections);
    for (k, mut connection) in opened.into_iter().enumerate() {
        let endpoint = endpoint.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut errors, mut first_error) = (0u64, 0u64, None::<String>);
            let mut i = k as u64;
            while i < total && Instant::now() < hard_stop {
                let due = started + Duration::from_secs_f64(i as f64 / rate.max(1) as f64);
                tokio::time::sleep_until(due).await;
                match connection.exchange(endpoint.request(shape, false)).await {
                    Ok(_) => ok += 1,
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| e.to_string());
                        match Connection::open(endpoint.addr).await {
                            Ok(c) => connection = c,
                            Err(_) => break,
                        }
                    }
                }
                i += connections as u64;
            }
            (ok, errors, first_error)
        }));
    }
    let mut outcome = FixedRate {
        ok: 0,
        errors: 0,
        first_error: None,
        elapsed: Duration::ZERO,
        cpu_seconds: 0.0,
    };
    for task in tasks {
        let (ok, errors, first_error) = task.await?;
        outcome.ok += ok;
        outcome.errors += errors;
        if outcome.first_error.is_none() {
            outcome.first_error = first_error;
        }
    }
    outcome.elapsed = started.elapsed();
    outcome.cpu_seconds = process::cpu_seconds(pid)? - cpu_before;
    Ok(outcome)
}

/// The memory phase's outcome.
pub struct Held {
    pub wanted: u64,
    /// Streams whose first token arrived and which were then held open together.
    pub held: u64,
    /// Held streams that then ended cleanly once released.
    pub finished: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub rss_before_kib: u64,
    pub rss_held_kib: u64,
}

/// Opens `wanted` held streams (each on its own connection, `parallel` being opened at a time),
/// reads the resident memory of process `pid` once they are all open, then releases them at the
/// upstream and reads each to its end. Opening and draining each stop after `cap`.
pub async fn hold(
    endpoint: &Endpoint,
    wanted: u64,
    parallel: usize,
    pid: u32,
    upstream_addr: SocketAddr,
    cap: Duration,
) -> Result<Held, Error> {
    let rss_before_kib = process::rss_kib(pid)?;
    let opening = futures::stream::iter(0..wanted)
        .map(|_| async {
            let mut connection = Connection::open(endpoint.addr).await?;
            let body = connection
                .start(endpoint.request(Shape::Stream, true))
                .await?;
            Ok::<(Connection, OpenBody), Error>((connection, body))
        })
        .buffer_unordered(parallel.max(1));
    let mut streams = Vec::with_capacity(wanted as usize);
    let mut failures = Failures::default();
    let opened = drain(opening, cap, |outcome| match outcome {
        Ok(stream) => streams.push(stream),
        Err(e) => failures.note(e),
    });
    if !opened.await {
        failures.note(format!("opening the streams took over {cap:?}"));
    }
    let held = streams.len() as u64;
    let rss_held_kib = process::rss_kib(pid)?;
    release(upstream_addr).await?;
    let draining = futures::stream::iter(streams)
        .map(|(connection, body)| async move {
            let outcome = body.finish().await;
            drop(connection);
            outcome
        })
        .buffer_unordered(parallel.max(1) * 4);
    let mut finished = 0u64;
    let drained = drain(draining, cap, |outcome| match outcome {
        Ok(_) => finished += 1,
        Err(e) => failures.note(e),
    });
    if !drained.await {
        failures.note(format!("draining the streams took over {cap:?}"));
    }
    let Failures {
        count: errors,
        first: first_error,
    } = failures;
    Ok(Held {
        wanted,
        held,
        finished,
        errors,
        first_error,
        rss_before_kib,
        rss_held_kib,
    })
}

/// Failed requests of a phase: how many, and the first one's message.
#[derive(Default)]
struct Failures {
    count: u64,
    first: Option<String>,
}

impl Failures {
    fn note(&mut self, error: impl std::fmt::Display) {
        self.count += 1;
        self.first.get_or_insert_with(|| error.to_string());
    }
}

/// Hands each item of `items` to `each` until the stream ends (true) or `cap` passes (false).
async fn drain<T>(
    items: impl futures::Stream<Item = T>,
    cap: Duration,
    mut each: impl FnMut(T),
) -> bool {
    let mut items = std::pin::pin!(items);
    tokio::time::timeout(cap, async {
        while let Some(item) = items.next().await {
            each(item);
        }
    })
    .await
    .is_ok()
}

/// Lets every stream the upstream holds finish.
pub async fn release(upstream_addr: SocketAddr) -> Result<(), Error> {
    let mut connection = Connection::open(upstream_addr).await?;
    let request = http::Request::post(upstream::RELEASE_PATH)
        .header(http::header::HOST, upstream_addr.to_string())
        .body(http_body_util::Full::new(bytes::Bytes::new()))?;
    connection.send_ignoring_body(request).await
}
