//! Where the instructions go: reads a callgrind output file and sums its instruction counts
//! (Ir) by what the code is for — JSON, protobuf, the ledger, logging, allocation, hyper/axum,
//! the runtime, the gateway's own code, ... — in two views that each add up to 100%:
//!
//! - **self**: each function's own instructions go to its category.
//! - **charged**: the instructions of allocation, memcpy and std/core generics (`Vec`, `String`,
//!   iterators, `fmt`) are charged to whoever called them, in proportion to the calls' cost,
//!   up the call graph until a caller of another category takes them; so the allocating and
//!   copying JSON parsing causes counts as JSON. Callgrind keeps caller/callee pairs, not whole
//!   stacks, so this is a proportional estimate, not an exact attribution.

use std::{collections::HashMap, fmt::Write as _};

use crate::Error;

/// A category of code, as the profile summary reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    Json,
    Protobuf,
    GrpcPlumbing,
    Ledger,
    Logging,
    Allocation,
    MemCopy,
    Http,
    UpstreamClient,
    Runtime,
    KeyHashing,
    Limits,
    Gateway,
    StdGeneric,
    Other,
}

impl Category {
    pub const ALL: [Category; 15] = [
        Category::Json,
        Category::Protobuf,
        Category::GrpcPlumbing,
        Category::Ledger,
        Category::Logging,
        Category::Allocation,
        Category::MemCopy,
        Category::Http,
        Category::UpstreamClient,
        Category::Runtime,
        Category::KeyHashing,
        Category::Limits,
        Category::Gateway,
        Category::StdGeneric,
        Category::Other,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Category::Json => "JSON parse/serialise (serde, serde_json)",
            Category::Protobuf => "protobuf encode/decode (prost, tonic codec)",
            Category::GrpcPlumbing => "in-process gRPC plumbing (tonic, transport)",
            Category::Ledger => "ledger and accounts (SQLite, sqlx, sea-orm)",
            Category::Logging => "logging/tracing (tracing, tower-http trace)",
            Category::Allocation => "allocation (malloc/free)",
            Category::MemCopy => "memcpy/memmove/memset/memcmp (libc)",
            Category::Http => "hyper/axum/tower/http (REST side and upstream HTTP)",
            Category::UpstreamClient => "reqwest and SSE parsing (upstream client)",
            Category::Runtime => "tokio runtime, futures",
            Category::KeyHashing => "API key hashing (sha2)",
            Category::Limits => "limits (governor, dashmap)",
            Category::Gateway => "Tollgate's own code (tollgate*)",
            Category::StdGeneric => "std/core/alloc generics (Vec, String, fmt, hash maps)",
            Category::Other => "other (uuid, chrono, ld.so, unnamed, ...)",
        }
    }
}

/// Whether allocation, copies and generics are charged to their callers.
fn is_transparent(category: Category) -> bool {
    matches!(
        category,
        Category::Allocation | Category::MemCopy | Category::StdGeneric
    )
}

/// The category of a function from its source file, where that tells (SQLite's amalgamation,
/// glibc's allocator and string functions), else from its (demangled) name.
pub fn categorise_in(name: &str, file: Option<&str>) -> Category {
    match file {
        Some(f) if f.ends_with("sqlite3.c") => Category::Ledger,
        Some(f) if f.contains("malloc/") => Category::Allocation,
        Some(f) if f.contains("/multiarch/mem") || f.contains("/multiarch/str") => {
            Category::MemCopy
        }
        _ => categorise(name),
    }
}

/// The category of a (demangled) function name.
pub fn categorise(name: &str) -> Category {
    let path = own_path(name);
    let krate = crate_of(path);
    if is_allocation(name) {
        return Category::Allocation;
    }
    if is_mem_op(name) {
        return Category::MemCopy;
    }
    if name.starts_with("pthread_") || name.starts_with("__pthread_") {
        return Category::Runtime;
    }
    if name.starts_with("sqlite3") || name.starts_with("pcache1") || name.starts_with("unixSync") {
        return Category::Ledger;
    }
    if path.starts_with("tonic::codec") || path.starts_with("tonic_prost") {
        return Category::Protobuf;
    }
    if path.starts_with("tower_http::trace") {
        return Category::Logging;
    }
    if path.starts_with("tollgate::transport") {
        return Category::GrpcPlumbing;
    }
    if path.starts_with("tollgate_billing::ledger")
        || path.starts_with("tollgate_billing::accounts")
    {
        return Category::Ledger;
    }
    match krate {
        "serde" | "serde_json" | "serde_path_to_error" | "serde_core" => Category::Json,
        "prost" | "prost_types" => Category::Protobuf,
        "tonic" | "tonic_types" => Category::GrpcPlumbing,
        "sqlx" | "sqlx_core" | "sqlx_sqlite" | "sea_orm" | "sea_query" | "sea_query_binder"
        | "libsqlite3_sys" => Category::Ledger,
        "tracing" | "tracing_core" | "tracing_subscriber" | "tracing_log" | "sharded_slab"
        | "log" | "nu_ansi_term" => Category::Logging,
        "hyper" | "hyper_util" | "axum" | "axum_core" | "h2" | "http" | "http_body"
        | "http_body_util" | "httparse" | "tower" | "tower_http" | "tower_layer"
        | "tower_service" | "matchit" | "httpdate" | "mime" => Category::Http,
        "reqwest" | "url" | "idna" | "form_urlencoded" => Category::UpstreamClient,
        "tokio" | "tokio_util" | "tokio_stream" | "mio" | "futures_util" | "futures_core"
        | "futures_channel" | "futures_task" | "futures_executor" | "async_stream"
        | "parking_lot" | "parking_lot_core" | "pin_project_lite" | "flume" | "crossbeam_queue"
        | "crossbeam_utils" | "event_listener" => Category::Runtime,
        "sha2" | "digest" | "subtle" | "hex" | "block_buffer" | "cpufeatures" | "generic_array" => {
            Category::KeyHashing
        }
        "governor" | "dashmap" | "quanta" | "nonzero_ext" => Category::Limits,
        "tollgate" | "tollgate_catalog" | "tollgate_billing" | "tollgate_inference"
        | "tollgate_gateway" => Category::Gateway,
        "core" | "alloc" | "std" | "hashbrown" | "smallvec" | "indexmap" | "bytes" | "itoa"
        | "ryu" | "memchr" | "once_cell" | "arc_swap" | "equivalent" | "foldhash" => {
            Category::StdGeneric
        }
        _ => Category::Other,
    }
}

fn is_allocation(name: &str) -> bool {
    const NAMES: [&str; 12] = [
        "malloc",
        "free",
        "realloc",
        "calloc",
        "cfree",
        "memalign",
        "posix_memalign",
        "aligned_alloc",
        "__rust_alloc",
        "__rust_dealloc",
        "__rust_realloc",
        "__rust_alloc_zeroed",
    ];
    NAMES.contains(&name)
        || name.starts_with("_int_malloc")
        || name.starts_with("_int_free")
        || name.starts_with("_int_realloc")
        || name.starts_with("__libc_malloc")
        || name.starts_with("__libc_free")
        || name.starts_with("__libc_realloc")
        || name.starts_with("__libc_calloc")
        || name.starts_with("malloc_consolidate")
        || name.starts_with("unlink_chunk")
        || name.starts_with("tcache_")
        || name.starts_with("sysmalloc")
        || name.starts_with("alloc::alloc::")
        || name.trim_start_matches("__rustc::").starts_with("__rdl_")
        || name.trim_start_matches("__rustc::").starts_with("__rg_")
        || name.trim_start_matches("__rustc::").starts_with("__rust_")
}

fn is_mem_op(name: &str) -> bool {
    let bare = name.trim_start_matches('_');
    [
        "memcpy", "memmove", "memset", "memcmp", "bcmp", "mempcpy", "strlen",
    ]
    .iter()
    .any(|op| bare.starts_with(op))
}

/// The path the code belongs to: for `<A as Trait>::m`, the trait's when it is a
/// serialisation or tracing trait (the code is that library's, generated for A), else A's; for
/// `<A>::m`, A's; otherwise the name itself.
pub fn own_path(name: &str) -> &str {
    let Some(inner) = name.strip_prefix('<') else {
        return name;
    };
    let mut depth = 0usize;
    let mut end = inner.len();
    let mut as_at = None;
    for (i, c) in inner.char_indices() {
        match c {
            '<' | '(' | '[' => depth += 1,
            ')' | ']' => depth = depth.saturating_sub(1),
            '>' if depth == 0 => {
                end = i;
                break;
            }
            '>' => depth -= 1,
            ' ' if depth == 0 && inner[i..].starts_with(" as ") && as_at.is_none() => {
                as_at = Some(i);
            }
            _ => {}
        }
    }
    let inner = &inner[..end];
    let (ty, tr) = match as_at {
        Some(at) => (&inner[..at], Some(&inner[at + 4..])),
        None => (inner, None),
    };
    let ty = ty
        .trim_start_matches("&mut ")
        .trim_start_matches('&')
        .trim_start_matches("dyn ")
        .trim_start_matches("*const ")
        .trim_start_matches("*mut ");
    if let Some(tr) = tr {
        // A generic parameter, a primitive or a tuple: the trait's code it is.
        if !ty.contains("::") {
            return tr;
        }
        let trait_crate = crate_of(tr);
        if matches!(
            trait_crate,
            "serde" | "serde_core" | "prost" | "tracing_core" | "tracing_subscriber" | "tracing"
        ) {
            return tr;
        }
    }
    // `<A<B>>::m` or `<&A>::m`: A's path.
    if ty.starts_with('<') {
        return own_path(ty);
    }
    ty
}

/// The first path segment: the crate.
pub fn crate_of(path: &str) -> &str {
    let end = path.find([':', '<', ' ', '(']).unwrap_or(path.len());
    &path[..end]
}

/// A parsed profile: each function's own cost and the inclusive cost of each call edge.
#[derive(Debug, Default)]
pub struct Profile {
    pub total: u64,
    pub self_cost: HashMap<String, u64>,
    /// (caller, callee) -> inclusive Ir of those calls.
    pub calls: HashMap<(String, String), u64>,
    /// The source file of each function, where the profile names one.
    pub files: HashMap<String, String>,
}

/// Parses callgrind's output format (name compression, relative positions, the first event
/// being Ir, as `--tool=callgrind` writes it by default).
pub fn parse(text: &str) -> Result<Profile, Error> {
    let mut names: HashMap<String, String> = HashMap::new();
    let mut file_names: HashMap<String, String> = HashMap::new();
    let mut file = String::new();
    let mut profile = Profile::default();
    let mut positions = 1usize;
    let mut current = String::new();
    let mut callee: Option<String> = None;
    let mut pending_call: Option<String> = None;
    let mut summed = 0u64;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("positions:") {
            positions = rest.split_whitespace().count().max(1);
        } else if let Some(rest) = line.strip_prefix("fl=") {
            file = resolve(&mut file_names, rest);
        } else if let Some(rest) = ["fi=", "fe=", "cfi=", "cfl="]
            .iter()
            .find_map(|key| line.strip_prefix(key))
        {
            // Same namespace as fl=: names defined here may be referred to later.
            resolve(&mut file_names, rest);
        } else if let Some(rest) = line.strip_prefix("fn=") {
            current = resolve(&mut names, rest);
            callee = None;
            if !file.is_empty() && file != "???" {
                profile
                    .files
                    .entry(current.clone())
                    .or_insert_with(|| file.clone());
            }
        } else if let Some(rest) = line.strip_prefix("cfn=") {
            callee = Some(resolve(&mut names, rest));
        } else if line.starts_with("calls=") {
            pending_call = callee.clone();
        } else if let Some(rest) = line
            .strip_prefix("totals:")
            .or_else(|| line.strip_prefix("summary:"))
        {
            if let Some(n) = rest.split_whitespace().next().and_then(|n| n.parse().ok()) {
                profile.total = profile.total.max(n);
            }
        } else if line
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_digit() || c == '+' || c == '-' || c == '*')
        {
            let ir: u64 = line
                .split_whitespace()
                .nth(positions)
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            match pending_call.take() {
                Some(to) => {
                    *profile.calls.entry((current.clone(), to)).or_default() += ir;
                }
                None => {
                    *profile.self_cost.entry(current.clone()).or_default() += ir;
                    summed += ir;
                }
            }
        }
    }
    profile.total = profile.total.max(summed);
    if profile.total == 0 {
        return Err("the profile holds no instructions (was instrumentation ever on?)".into());
    }
    Ok(profile)
}

/// `(id) name` defines a compressed name, `(id)` refers to one, a bare name is itself. The
/// function namespace is shared by `fn=` and `cfn=`.
fn resolve(names: &mut HashMap<String, String>, spec: &str) -> String {
    let spec = spec.trim();
    if let Some(rest) = spec.strip_prefix('(')
        && let Some((id, name)) = rest.split_once(')')
    {
        let name = name.trim();
        if name.is_empty() {
            return names.get(id).cloned().unwrap_or_else(|| format!("({id})"));
        }
        names.insert(id.to_owned(), name.to_owned());
        return name.to_owned();
    }
    spec.to_owned()
}

/// Sums by category.
pub struct Summary {
    pub total: u64,
    pub by_self: HashMap<Category, u64>,
    /// Allocation, copies and generics charged to their callers' categories.
    pub charged: HashMap<Category, u64>,
    /// The dearest functions by own cost.
    pub top: Vec<(String, u64, Category)>,
}

/// Rounds of charging up the call graph; what is left after them (deep recursion through
/// generics) stays where it is.
const CHARGE_ROUNDS: usize = 16;

pub fn summarise(profile: &Profile, top: usize) -> Summary {
    let category_of: HashMap<&str, Category> = profile
        .self_cost
        .keys()
        .chain(profile.calls.keys().flat_map(|(a, b)| [a, b]))
        .map(|name| {
            let file = profile.files.get(name).map(String::as_str);
            (name.as_str(), categorise_in(name, file))
        })
        .collect();
    let category = |name: &str| category_of.get(name).copied().unwrap_or(Category::Other);
    let mut by_self: HashMap<Category, u64> = HashMap::new();
    let mut ranked: Vec<(String, u64, Category)> = Vec::new();
    for (name, &cost) in &profile.self_cost {
        *by_self.entry(category(name)).or_default() += cost;
        ranked.push((name.clone(), cost, category(name)));
    }
    ranked.sort_by_key(|r| std::cmp::Reverse(r.1));
    ranked.truncate(top);

    // Callers of each function, with the inclusive cost of their calls, as weights.
    let mut callers: HashMap<&str, Vec<(&str, u64)>> = HashMap::new();
    for ((caller, callee), &cost) in &profile.calls {
        if caller != callee && cost > 0 {
            callers.entry(callee).or_default().push((caller, cost));
        }
    }
    let mut charged: HashMap<Category, f64> = HashMap::new();
    let mut pending: HashMap<&str, f64> = HashMap::new();
    for (name, &cost) in &profile.self_cost {
        if is_transparent(category(name)) {
            *pending.entry(name.as_str()).or_default() += cost as f64;
        } else {
            *charged.entry(category(name)).or_default() += cost as f64;
        }
    }
    for _ in 0..CHARGE_ROUNDS {
        let mut next: HashMap<&str, f64> = HashMap::new();
        for (name, amount) in pending {
            let Some(up) = callers.get(name) else {
                *charged.entry(category(name)).or_default() += amount;
                continue;
            };
            let weight: u64 = up.iter().map(|(_, w)| w).sum();
            for (caller, w) in up {
                let share = amount * *w as f64 / weight.max(1) as f64;
                if is_transparent(category(caller)) {
                    *next.entry(caller).or_default() += share;
                } else {
                    *charged.entry(category(caller)).or_default() += share;
                }
            }
        }
        pending = next;
    }
    for (name, amount) in pending {
        *charged.entry(category(name)).or_default() += amount;
    }
    Summary {
        total: profile.total,
        by_self,
        charged: charged
            .into_iter()
            .map(|(c, v)| (c, v.round() as u64))
            .collect(),
        top: ranked,
    }
}

impl Summary {
    /// The summary as text; `requests` divides the total into a per-request cost.
    pub fn render(&self, requests: u64) -> String {
        let mut out = String::new();
        let pct = |v: u64| 100.0 * v as f64 / self.total.max(1) as f64;
        let _ = writeln!(
            out,
            "instructions (Ir): {} in all, {} per request over {requests} requests",
            self.total,
            self.total / requests.max(1)
        );
        let _ = writeln!(
            out,
            "\n  {:<58} {:>8} {:>10} {:>14}",
            "category", "self %", "charged %", "charged Ir/req"
        );
        let mut rows: Vec<Category> = Category::ALL.to_vec();
        rows.sort_by_key(|c| std::cmp::Reverse(self.by_self.get(c).copied().unwrap_or(0)));
        for category in rows {
            let own = self.by_self.get(&category).copied().unwrap_or(0);
            let charged = self.charged.get(&category).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "  {:<58} {:>8.1} {:>10.1} {:>14}",
                category.label(),
                pct(own),
                pct(charged),
                charged / requests.max(1)
            );
        }
        let _ = writeln!(
            out,
            "\n  self: each function's own instructions. charged: allocation, copies and std \
             generics\n  charged to their callers' categories in proportion to the calls' cost."
        );
        let _ = writeln!(out, "\n  dearest functions by own instructions:");
        for (name, cost, category) in &self.top {
            let mut shown: String = name.chars().take(120).collect();
            if shown.len() < name.len() {
                shown.push('…');
            }
            let _ = writeln!(
                out,
                "  {:>6.2}%  {:<12} {shown}",
                pct(*cost),
                format!("{category:?}")
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn functions_fall_in_the_category_of_their_code() {
        let cases = [
            ("serde_json::de::from_slice", Category::Json),
            (
                "<tollgate::openai::request::ChatCompletionRequest as serde::de::Deserialize>::deserialize",
                Category::Json,
            ),
            (
                "<&mut serde_json::ser::Serializer<W,F> as serde::ser::Serializer>::serialize_str",
                Category::Json,
            ),
            (
                "<tollgate::v1::ChatRequest as prost::message::Message>::encode_raw",
                Category::Protobuf,
            ),
            ("prost::encoding::string::merge", Category::Protobuf),
            (
                "<tonic::codec::prost::ProstDecoder<U> as tonic::codec::Decoder>::decode",
                Category::Protobuf,
            ),
            (
                "tonic::server::grpc::Grpc<T>::unary::{{closure}}",
                Category::GrpcPlumbing,
            ),
            ("sqlite3VdbeExec", Category::Ledger),
            (
                "sqlx_sqlite::connection::worker::ConnectionWorker::establish",
                Category::Ledger,
            ),
            (
                "tollgate_billing::ledger::Ledger::write_batch::{{closure}}",
                Category::Ledger,
            ),
            (
                "tracing_subscriber::fmt::format::Format::format_event",
                Category::Logging,
            ),
            (
                "tower_http::trace::service::Trace<S,M>::call",
                Category::Logging,
            ),
            ("_int_malloc", Category::Allocation),
            ("free", Category::Allocation),
            ("__memcpy_avx_unaligned_erms", Category::MemCopy),
            (
                "<hyper::proto::h1::role::Server as hyper::proto::h1::Http1Transaction>::parse",
                Category::Http,
            ),
            (
                "<hyper::server::conn::http1::Connection<I,S> as core::future::future::Future>::poll",
                Category::Http,
            ),
            (
                "tokio::runtime::task::harness::Harness<T,S>::poll",
                Category::Runtime,
            ),
            (
                "<sha2::core_api::Sha256VarCore as digest::core_api::UpdateCore>::update_blocks",
                Category::KeyHashing,
            ),
            (
                "tollgate_inference::service::Inference::chat::{{closure}}",
                Category::Gateway,
            ),
            (
                "<alloc::vec::Vec<T,A> as core::clone::Clone>::clone",
                Category::StdGeneric,
            ),
            ("0x0000000000a1b2c3", Category::Other),
            (
                "<T as alloc::slice::<impl [T]>::to_vec_in::ConvertVec>::to_vec",
                Category::StdGeneric,
            ),
            (
                "<(S,T) as sea_query::types::IntoColumnRef>::into_column_ref",
                Category::Ledger,
            ),
            ("__rustc::__rdl_alloc", Category::Allocation),
            ("url::parser::Parser::parse_path", Category::UpstreamClient),
        ];
        for (name, want) in cases {
            assert_eq!(categorise(name), want, "{name}");
        }
    }

    #[test]
    fn the_source_file_tells_sqlite_and_glibc_apart() {
        assert_eq!(
            categorise_in(
                "walChecksumBytes",
                Some("/x/libsqlite3-sys/sqlite3/sqlite3.c")
            ),
            Category::Ledger
        );
        assert_eq!(
            categorise_in("checkchunk", Some("./malloc/malloc.c")),
            Category::Allocation
        );
        assert_eq!(
            categorise_in(
                "foo",
                Some("../sysdeps/x86_64/multiarch/memmove-vec-unaligned-erms.S")
            ),
            Category::MemCopy
        );
    }

    #[test]
    fn generics_are_charged_up_to_a_caller_of_another_category() {
        let text = "\
events: Ir
positions: line
fl=(1) src/ledger.rs
fn=(1) tollgate_billing::ledger::write
1 10
cfl=(2) alloc/vec.rs
cfn=(2) alloc::vec::Vec<T>::push
calls=1 1
1 90
fl=(2)
fn=(2)
1 30
cfn=(3) malloc
calls=1 1
1 60
fn=(3)
1 60
";
        let profile = parse(text).unwrap();
        assert_eq!(profile.files["alloc::vec::Vec<T>::push"], "alloc/vec.rs");
        let summary = summarise(&profile, 3);
        assert_eq!(summary.total, 100);
        assert_eq!(summary.by_self[&Category::StdGeneric], 30);
        assert_eq!(summary.charged[&Category::Ledger], 100);
        assert_eq!(
            summary.top[0],
            ("malloc".to_owned(), 60, Category::Allocation)
        );
    }

    #[test]
    fn parses_compressed_names_self_costs_and_calls() {
        let text = "\
events: Ir
positions: line
summary: 1000

fn=(1) main
10 100
cfn=(2) serde_json::de::from_slice
calls=1 5
* 600
fn=(2)
5 550
cfn=(3) malloc
calls=2 7
+1 50
fn=(3)
7 50
totals: 1000
";
        let profile = parse(text).unwrap();
        assert_eq!(profile.total, 1000);
        assert_eq!(profile.self_cost["main"], 100);
        assert_eq!(profile.self_cost["serde_json::de::from_slice"], 550);
        assert_eq!(profile.self_cost["malloc"], 50);
        assert_eq!(
            profile.calls[&("main".to_owned(), "serde_json::de::from_slice".to_owned())],
            600
        );
        let summary = summarise(&profile, 10);
        assert_eq!(summary.by_self[&Category::Json], 550);
        assert_eq!(summary.by_self[&Category::Allocation], 50);
        // Charged: the allocation JSON parsing does counts as JSON.
        assert_eq!(summary.charged[&Category::Json], 600);
        assert_eq!(summary.charged.get(&Category::Allocation), None);
        let text = summary.render(10);
        assert!(text.contains("100 per request"), "{text}");
    }
}
