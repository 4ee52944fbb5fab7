//! Load generator: the real server binary against a loopback test issuer,
//! driven over HTTP/2 with many concurrent streams.
//!
//! It starts `clerk-introspect serve` as a child process (twice: with the
//! default token cache, then with `--token-cache-size 0`), pinned to its own
//! CPUs with `taskset` when available, and drives it from this process
//! (or from h2load, see `--driver`) over pre-encoded gRPC requests, so that
//! the client spends as little as possible per call. Scenarios:
//!
//! - `Health/Check`: `grpc.health.v1.Health/Check`, the transport ceiling;
//! - `Health/Check` with its request padded to the hot Verify request's size
//!   (a diagnostic: how much of the gap is the request's size);
//! - alternated Health/Check and hot-token passes (`--ratio-rounds`): the
//!   hot-token target is their median ratio;
//! - `Verify hot`: one RS256 token, over and over (a token-cache hit);
//! - `Verify 10k RS256` / `10k ES256`: 10 000 distinct tokens in turn;
//! - the same at 50 % of the measured peak rate (open loop), for latency,
//!   with Health/Check at the hot token's rate as its transport baseline,
//!   in one long pass and in alternated short ones (`--ratio-rounds`);
//! - `ladder`: Health/Check and the hot token, alternated, at open-loop
//!   rates from 25 % to 65 % of the hot token's peak: p99 against load;
//! - RSS of the server after 100 000 distinct tokens were verified.
//!
//! Before the load it measures single-threaded signature verification
//! rates (aws-lc-rs as the service uses it, and ring) on this machine: the
//! crypto ceiling is the RS256 rate times the server's cores.
//!
//! Clients: the closed-loop passes use h2load (one token) or the `h2`
//! crate (many tokens, many streams per connection). The open-loop
//! (rate-limited) passes use `raw_h2` (`raw_h2.rs`), a minimal
//! HTTP/2 client of its own: pre-encoded frames, one write per batch of
//! due calls per connection, no task or lock per call, on a current-thread
//! runtime, with a pacing thread releasing calls on a fixed schedule. Its open-loop latencies run from each call's *scheduled* send
//! time to the arrival of its trailers (no coordinated omission); closed-
//! loop ones from sending a request to receiving its trailers. Either way
//! they include the client's own scheduling: an upper bound on the
//! server's latency.
//!
//! Run it with `scripts/bench.sh`, which builds the release server binary
//! and this tool, then runs `target/release/loadgen` (`--help` for the
//! options); the server binary defaults to `clerk-introspect` next to this
//! tool's own. `--self-test` (and `cargo test -p loadgen`) checks the raw
//! HTTP/2 client without a server binary (an in-process `h2` server stands
//! in).

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use clerk_introspect::keys::jwk::{Algorithm, VerificationKey, key_from_jwk_json};
use clerk_introspect::pb::{VerifyRequest, VerifyResponse};
use clerk_introspect::test_issuer::{TestIssuer, TestKey};
use h2::client::SendRequest;
use http::{Method, Request, Uri};
use prost::Message as _;
use serde_json::json;
use tokio::task::JoinSet;
use tonic_health::pb::HealthCheckResponse;
use tonic_health::pb::health_check_response::ServingStatus;

mod raw_h2;

const HEALTH: &str = "/grpc.health.v1.Health/Check";
const VERIFY: &str = "/introspect.v1.TokenIntrospection/Verify";

const USAGE: &str = "\
usage: loadgen [options]   (scripts/bench.sh [options] builds and runs it)
  --duration SECS        measured seconds per scenario (default 10)
  --warmup SECS          warm-up seconds per scenario (default 2)
  --connections N        HTTP/2 connections (default 4)
  --streams N            requests in flight per connection (default 32)
  --distinct N           distinct tokens per algorithm (default 10000)
  --rss-tokens N         distinct tokens verified before reading RSS (default 100000)
  --server-cpus LIST     taskset CPU list of the server (default 0)
  --client-cpus LIST     taskset CPU list of this load generator (default 1)
  --server-threads N     server Tokio worker threads (default: CPUs in --server-cpus)
  --client-threads N     load generator worker threads (default: CPUs in --client-cpus)
  --no-pin               no taskset; both sides float over every CPU
  --load-fraction F      rate of the open-loop (latency) passes, as a fraction of
                         the measured peak (default 0.5)
  --driver rust|h2load   client for the closed-loop one-token scenarios (Health/Check,
                         hot token); default h2load when installed (cheaper per call
                         than the built-in h2 client, so the server stays the
                         bottleneck). Open-loop passes always use the raw HTTP/2
                         client (tools/loadgen/src/raw_h2.rs): --connections
                         connections, calls round-robin, at most the server's
                         SETTINGS_MAX_CONCURRENT_STREAMS open per connection (a call
                         beyond it is an error, never queued); latency from each
                         call's scheduled send time to its trailers.
  --server-bin PATH      server binary (default: clerk-introspect next to this
                         binary, e.g. target/release/ for a release build)
  --server-env KEY=VAL   extra environment of the server (repeatable), e.g. RUST_LOG=warn
  --scenarios LIST       comma-separated subset of: crypto, health, hot, cached,
                         uncached, half, ladder, rss (default: all)
  --ratio-rounds N       alternated Health/Check and hot-token pairs whose
                         median ratio is the hot-token target (default 11, the
                         first pair being the main rows; the machine is noisy,
                         one pair is not enough); with `half`, as many
                         alternated open-loop pairs at --load-fraction, whose
                         median p99s are reported next to the long pass
  --ratio-seconds SECS   measured seconds of each further pair's passes, after
                         1 s of warm-up (default 2: short passes, alternated,
                         keep both sides of a pair under the same neighbours)
  --quick                3 s scenarios, 1 s warm-up, 2000 distinct, 20000 for RSS
  --self-test            check the raw HTTP/2 client (header encoding, frame handling,
                         a run against an in-process h2 server) and exit: 0 if
                         every check passes, 1 otherwise";

#[derive(Clone, Debug)]
struct Args {
    duration: Duration,
    warmup: Duration,
    connections: usize,
    streams: usize,
    distinct: usize,
    rss_tokens: usize,
    server_cpus: Option<String>,
    client_cpus: Option<String>,
    server_threads: usize,
    client_threads: usize,
    server_bin: PathBuf,
    scenarios: Vec<String>,
    server_env: Vec<(String, String)>,
    h2load: bool,
    fraction: f64,
    ratio_rounds: usize,
    ratio_seconds: Duration,
    self_test: bool,
}

impl Args {
    fn wants(&self, scenario: &str) -> bool {
        self.scenarios.iter().any(|s| s == scenario || s == "all")
    }
}

fn parse_args() -> Result<Args, String> {
    let cores = machine_cores();
    let mut a = Args {
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(2),
        connections: 4,
        streams: 32,
        distinct: 10_000,
        rss_tokens: 100_000,
        server_cpus: Some("0".into()),
        client_cpus: Some(if cores > 1 { "1".into() } else { "0".into() }),
        server_threads: 0,
        client_threads: 0,
        server_bin: default_server_bin(),
        scenarios: vec!["all".into()],
        server_env: Vec::new(),
        h2load: h2load_available(),
        fraction: 0.5,
        ratio_rounds: 11,
        ratio_seconds: Duration::from_secs(2),
        self_test: false,
    };
    let mut it = std::env::args().skip(1);
    let num = |v: Option<String>, flag: &str| -> Result<u64, String> {
        v.as_deref().and_then(|v| v.parse().ok()).ok_or_else(|| format!("{flag} needs a number\n{USAGE}"))
    };
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--duration" => a.duration = Duration::from_secs(num(it.next(), &arg)?),
            "--warmup" => a.warmup = Duration::from_secs(num(it.next(), &arg)?),
            "--connections" => a.connections = num(it.next(), &arg)?.max(1) as usize,
            "--streams" => a.streams = num(it.next(), &arg)?.max(1) as usize,
            "--ratio-rounds" => a.ratio_rounds = num(it.next(), &arg)?.max(1) as usize,
            "--ratio-seconds" => a.ratio_seconds = Duration::from_secs(num(it.next(), &arg)?.max(1)),
            "--distinct" => a.distinct = num(it.next(), &arg)?.max(1) as usize,
            "--rss-tokens" => a.rss_tokens = num(it.next(), &arg)? as usize,
            "--server-cpus" => a.server_cpus = it.next(),
            "--client-cpus" => a.client_cpus = it.next(),
            "--server-threads" => a.server_threads = num(it.next(), &arg)? as usize,
            "--client-threads" => a.client_threads = num(it.next(), &arg)? as usize,
            "--no-pin" => (a.server_cpus, a.client_cpus) = (None, None),
            "--load-fraction" => {
                a.fraction = it
                    .next()
                    .and_then(|v| v.parse::<f64>().ok())
                    .filter(|f| *f > 0.0 && *f <= 1.0)
                    .ok_or("--load-fraction needs a number in (0, 1]")?
            }
            "--driver" => match it.next().as_deref() {
                Some("h2load") if h2load_available() => a.h2load = true,
                Some("h2load") => {
                    return Err("--driver h2load: h2load is not installed (Debian: nghttp2-client)".into());
                }
                Some("rust") => a.h2load = false,
                _ => return Err(format!("--driver needs rust or h2load\n{USAGE}")),
            },
            "--server-bin" => a.server_bin = it.next().ok_or("--server-bin needs a path")?.into(),
            "--scenarios" => {
                a.scenarios = it.next().ok_or("--scenarios needs a list")?.split(',').map(str::to_owned).collect()
            }
            "--server-env" => {
                let kv = it.next().ok_or("--server-env needs KEY=VALUE")?;
                let (k, v) = kv.split_once('=').ok_or("--server-env needs KEY=VALUE")?;
                a.server_env.push((k.to_owned(), v.to_owned()));
            }
            "--quick" => {
                a.duration = Duration::from_secs(3);
                a.warmup = Duration::from_secs(1);
                a.distinct = 2_000;
                a.rss_tokens = 20_000;
            }
            "--self-test" => a.self_test = true,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown option {other}\n{USAGE}")),
        }
    }
    if !taskset_available() {
        (a.server_cpus, a.client_cpus) = (None, None);
    }
    let count = |cpus: &Option<String>| cpus.as_deref().map_or(cores, cpu_count);
    if a.server_threads == 0 {
        a.server_threads = count(&a.server_cpus);
    }
    if a.client_threads == 0 {
        a.client_threads = count(&a.client_cpus);
    }
    Ok(a)
}

fn main() {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(if e == USAGE { 0 } else { 64 });
        }
    };
    if args.self_test {
        let failures = self_test();
        eprintln!("raw_h2 self-test: {} failure(s)", failures.len());
        std::process::exit(i32::from(!failures.is_empty()));
    }
    if !args.server_bin.is_file() {
        eprintln!(
            "loadgen: no server binary at {}: build it first (`cargo build --release --locked --bin clerk-introspect`, \
             as scripts/bench.sh does) or pass --server-bin",
            args.server_bin.display()
        );
        std::process::exit(1);
    }
    // Pin this process before any thread is started: threads inherit it.
    if let Some(cpus) = &args.client_cpus {
        let status = Command::new("taskset")
            .args(["-p", "-c", cpus, &std::process::id().to_string()])
            .stdout(Stdio::null())
            .status();
        if !status.is_ok_and(|s| s.success()) {
            eprintln!("loadgen: taskset failed; continuing unpinned");
        }
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads)
        .enable_all()
        .build()
        .expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(args)) {
        eprintln!("loadgen: {e}");
        std::process::exit(1);
    }
}

/// The raw HTTP/2 client's checks and the Verify answer check's (what
/// `--self-test` and `cargo test -p loadgen` run): the failures, if any.
fn self_test() -> Vec<String> {
    let mut failures = raw_h2::self_test();
    let check = verify_valid_self_test();
    eprintln!("{} the Verify answer check agrees with prost", if check.is_empty() { "ok  " } else { "FAIL" });
    for f in &check {
        eprintln!("     {f}");
    }
    failures.extend(check);
    failures
}

/// `clerk-introspect` in the directory of this binary: cargo puts both
/// packages' binaries in one target directory (`target/release/` for
/// `cargo build --release`).
fn default_server_bin() -> PathBuf {
    let name = format!("clerk-introspect{}", std::env::consts::EXE_SUFFIX);
    std::env::current_exe().ok().and_then(|exe| Some(exe.parent()?.join(&name))).unwrap_or_else(|| name.into())
}

#[cfg(test)]
mod tests {
    /// `--self-test` as part of `cargo test`: the raw HTTP/2 client against
    /// hand-built frames and an in-process `h2` server, and the Verify
    /// answer check against prost.
    #[test]
    fn raw_h2_client_self_test() {
        let failures = super::self_test();
        assert!(failures.is_empty(), "{failures:#?}");
    }
}

// ---------------------------------------------------------------- the run

type Error = Box<dyn std::error::Error + Send + Sync>;

async fn run(args: Args) -> Result<(), Error> {
    let mut report = String::new();
    let load_before = loadavg();
    writeln!(report, "## Machine\n")?;
    writeln!(report, "- CPU: {} × {}", machine_cores(), cpu_model())?;
    writeln!(report, "- kernel {}, load average at start {}", kernel(), load_before)?;
    writeln!(
        report,
        "- server: `{}` pinned to CPUs {} with {} Tokio worker thread(s); load generator: CPUs {}, {} thread(s); {} HTTP/2 connections × {} requests in flight",
        args.server_bin.file_name().unwrap_or_default().to_string_lossy(),
        args.server_cpus.as_deref().unwrap_or("all (not pinned)"),
        args.server_threads,
        args.client_cpus.as_deref().unwrap_or("all (not pinned)"),
        args.client_threads,
        args.connections,
        args.streams
    )?;
    writeln!(
        report,
        "- clients: {} for the closed-loop one-token scenarios (Health/Check, hot token); the built-in h2 client (pre-encoded requests) for the many-token ones; a raw HTTP/2 client (pre-encoded frames, one write per batch, current-thread runtime) for the open-loop (rate-limited) ones",
        if args.h2load { h2load_version() } else { "the built-in h2 client".to_owned() }
    )?;
    writeln!(
        report,
        "- {} s measured per scenario after {} s of warm-up; latency at the client, to trailers received, from request sent (closed loop) or from the call's scheduled send time (open loop)\n",
        args.duration.as_secs(),
        args.warmup.as_secs()
    )?;
    eprint!("{report}");

    // Keys and tokens.
    let rs = TestKey::rsa("bench-rs256");
    let es = TestKey::es256("bench-es256");
    let issuer = TestIssuer::start(vec![rs.clone(), es.clone()]).await?;
    let iss = issuer.issuer().to_owned();

    let server_cores = args.server_cpus.as_deref().map_or(machine_cores(), cpu_count);
    let mut crypto_ceiling = f64::NAN;
    if args.wants("crypto") {
        eprintln!("measuring single-threaded signature checks…");
        let crypto = crypto_rates(&rs, &es, &iss);
        writeln!(report, "## Signature checks, one thread, this machine\n")?;
        writeln!(
            report,
            "| algorithm | aws-lc-rs (keys parsed once, as served) | ring 0.17 (parses the key per call) |"
        )?;
        writeln!(report, "|---|---|---|")?;
        for (alg, aws, ring) in &crypto {
            writeln!(report, "| {alg} | {aws:.0}/s ({:.1} µs) | {ring:.0}/s ({:.1} µs) |", 1e6 / aws, 1e6 / ring)?;
        }
        let rs_rate = crypto[0].1;
        crypto_ceiling = rs_rate * server_cores as f64;
        writeln!(
            report,
            "\nCrypto ceiling (RS256, aws-lc-rs) = {rs_rate:.0}/s × {server_cores} server core(s) = {crypto_ceiling:.0}/s\n"
        )?;
    }

    let n_rs = if args.wants("cached") || args.wants("uncached") { args.distinct } else { 0 };
    let n_es = if args.wants("rss") { args.rss_tokens.max(n_rs) } else { n_rs };
    eprintln!("minting {n_rs} RS256 and {n_es} ES256 tokens…");
    let started = Instant::now();
    let hot = Arc::new(vec![verify_body(&rs.mint(&claims(&iss, 0)))]);
    let rs_bodies: Arc<Vec<Bytes>> = Arc::new((1..=n_rs).map(|i| verify_body(&rs.mint(&claims(&iss, i)))).collect());
    let es_all: Vec<Bytes> = (1..=n_es).map(|i| verify_body(&es.mint(&claims(&iss, 1_000_000 + i)))).collect();
    let es_bodies = Arc::new(es_all[..n_rs].to_vec());
    let es_all = Arc::new(es_all);
    eprintln!("minted in {:.1} s", started.elapsed().as_secs_f64());
    let health = Arc::new(vec![grpc_frame(&[])]);
    // A diagnostic: Health/Check whose request is as large as the hot Verify
    // request (an unknown field, which the server skips), to show how much
    // of the gap between the two is the request's size.
    let health_padded = Arc::new(vec![grpc_frame(&padded_health_request(hot[0].len() - 5))]);
    let d = args.distinct;
    let pct = (args.fraction * 100.0).round() as u32;

    let mut rows: Vec<Stats> = Vec::new();
    let find = |rows: &Vec<Stats>, name: &str| rows.iter().find(|r| r.name == name).cloned();
    let (mut rss_before, mut rss_after, mut primed) = ((f64::NAN, f64::NAN), (f64::NAN, f64::NAN), 0);
    let mut hot_ratios: Vec<f64> = Vec::new();
    // p99 (ms) of Health/Check and of the hot token in alternated open-loop
    // passes at `--load-fraction` of the peak.
    let mut half_rounds: Vec<(f64, f64)> = Vec::new();
    // The hot token's closed-loop peak and the load ladder measured from it.
    let mut ladder: Option<(f64, Vec<Rung>)> = None;

    // Server A: the default configuration (token cache on).
    if ["health", "hot", "cached", "half", "ladder", "rss"].iter().any(|s| args.wants(s)) {
        let a = ServerProc::spawn(&args, &iss, &[]).await?;
        let t = Target::connect(a.addr, args.connections).await?;
        if args.wants("health") || args.wants("half") || args.wants("ladder") {
            rows.push(t.closed("Health/Check", HEALTH, &health, &args, &a).await);
        }
        if args.wants("health") {
            let name = "Health/Check, request padded to the hot Verify request's size";
            rows.push(t.closed(name, HEALTH, &health_padded, &args, &a).await);
        }
        if args.wants("hot") || args.wants("half") || args.wants("ladder") {
            rows.push(t.closed("Verify hot token (cached)", VERIFY, &hot, &args, &a).await);
        }
        if args.wants("health") && args.wants("hot") {
            let rate = |rows: &Vec<Stats>, name: &str| find(rows, name).map_or(f64::NAN, |s| s.rate());
            hot_ratios.push(rate(&rows, "Verify hot token (cached)") / rate(&rows, "Health/Check"));
            let round = Args { duration: args.ratio_seconds, warmup: Duration::from_secs(1), ..args.clone() };
            for _ in 1..args.ratio_rounds {
                let health = t.closed("Health/Check (ratio round)", HEALTH, &health, &round, &a).await;
                let verify = t.closed("Verify hot token (ratio round)", VERIFY, &hot, &round, &a).await;
                hot_ratios.push(verify.rate() / health.rate());
            }
        }
        if args.wants("cached") {
            t.prime(VERIFY, &rs_bodies).await;
            rows.push(t.closed(&format!("Verify {d} RS256 tokens (cached)"), VERIFY, &rs_bodies, &args, &a).await);
            t.prime(VERIFY, &es_bodies).await;
            rows.push(t.closed(&format!("Verify {d} ES256 tokens (cached)"), VERIFY, &es_bodies, &args, &a).await);
        }
        // The hot token's closed-loop peak: the open-loop passes' rates are fractions of it.
        let peak = find(&rows, "Verify hot token (cached)").map_or(f64::NAN, |s| s.rate());
        if args.wants("half") {
            let name = format!("Verify hot token at {pct} % of its peak");
            rows.push(t.open(&name, VERIFY, &hot, peak * args.fraction, &args, &a).await);
            // The transport's own latency at the same rate: the baseline the
            // Verify figure above is to be read against.
            let name = format!("Health/Check at the rate of the hot token's {pct} %");
            rows.push(t.open(&name, HEALTH, &health, peak * args.fraction, &args, &a).await);
            // The same pair in short alternated passes: one burst from a
            // neighbour on a shared machine spoils one pass, not the median.
            let round = Args { duration: args.ratio_seconds, warmup: Duration::from_secs(1), ..args.clone() };
            for _ in 1..args.ratio_rounds {
                let rate = peak * args.fraction;
                let health = t.open("Health/Check (latency round)", HEALTH, &health, rate, &round, &a).await;
                let verify = t.open("Verify hot token (latency round)", VERIFY, &hot, rate, &round, &a).await;
                half_rounds.push((health.percentile(0.99) * 1e3, verify.percentile(0.99) * 1e3));
            }
        }
        if args.wants("ladder") && peak.is_finite() {
            ladder = Some((peak, t.ladder(&health, &hot, peak, &args, &a).await));
        }
        if args.wants("rss") {
            eprintln!("verifying {} distinct ES256 tokens for the RSS reading…", es_all.len());
            rss_before = a.memory();
            primed = t.prime(VERIFY, &es_all).await;
            rss_after = a.memory();
        }
    }

    // Server B: the token cache disabled: every call checks the signature.
    if args.wants("uncached") {
        let b = ServerProc::spawn(&args, &iss, &["--token-cache-size", "0"]).await?;
        let t = Target::connect(b.addr, args.connections).await?;
        rows.push(t.closed("Health/Check", HEALTH, &health, &args, &b).await);
        let rs_plain = t.closed(&format!("Verify {d} RS256 tokens (no cache)"), VERIFY, &rs_bodies, &args, &b).await;
        let peak = rs_plain.rate();
        rows.push(rs_plain);
        rows.push(t.closed(&format!("Verify {d} ES256 tokens (no cache)"), VERIFY, &es_bodies, &args, &b).await);
        if args.wants("half") {
            let name = format!("Verify {d} RS256 (no cache) at {pct} % of its peak");
            rows.push(t.open(&name, VERIFY, &rs_bodies, peak * args.fraction, &args, &b).await);
        }
    }

    writeln!(report, "## Load\n")?;
    writeln!(
        report,
        "| scenario | server | client | requests/s | p50 ms | p99 ms | p99.9 ms | errors | server CPU per call (of a core) | client CPU per call (of a core) |"
    )?;
    writeln!(report, "|---|---|---|---|---|---|---|---|---|---|")?;
    for r in &rows {
        writeln!(report, "{}", r.row())?;
    }
    if args.wants("rss") {
        writeln!(
            report,
            "\nRSS of the cached server: {:.1} MiB before and {:.1} MiB after verifying {} distinct ES256 tokens ({primed} errors); peak (VmHWM) {:.1} MiB",
            rss_before.0,
            rss_after.0,
            es_all.len(),
            rss_after.1
        )?;
    }

    if let Some((peak, rungs)) = &ladder {
        writeln!(
            report,
            "\n## Latency against load (open loop, {} s per pass; rates as a share of the hot token's closed-loop peak, {peak:.0}/s)\n",
            args.ratio_seconds.as_secs()
        )?;
        writeln!(
            report,
            "| load | calls/s | Health/Check p99 ms | hot Verify p99 ms | Health/Check server CPU per call | hot Verify server CPU per call | errors (Health/Check, Verify) |"
        )?;
        writeln!(report, "|---|---|---|---|---|---|---|")?;
        for r in rungs {
            writeln!(
                report,
                "| {:.0} % | {:.0} | {:.2} | {:.2} | {:.1} µs | {:.1} µs | {}, {} |",
                r.fraction * 100.0,
                r.rate,
                r.health.percentile(0.99) * 1e3,
                r.verify.percentile(0.99) * 1e3,
                r.health.server_cpu_per_call_us(),
                r.verify.server_cpu_per_call_us(),
                r.health.errors,
                r.verify.errors
            )?;
        }
        // The highest rung below which every rung kept p99 under the bound.
        let reach = |ok: &dyn Fn(&Rung) -> bool| rungs.iter().take_while(|r| ok(r)).last().map_or(0.0, |r| r.fraction);
        let (h, v) = (reach(&|r| Rung::ok(&r.health)), reach(&|r| Rung::ok(&r.verify)));
        writeln!(
            report,
            "\np99 < {LADDER_P99_MS} ms on every rung up to: Health/Check {:.0} %, hot Verify {:.0} % of the peak",
            h * 100.0,
            v * 100.0
        )?;
    }

    let rate = |name: &str, server: &str| {
        rows.iter().find(|r| r.name == name && r.server == server).map_or(f64::NAN, |s| s.rate())
    };
    let p99 = |name: &str| rows.iter().find(|r| r.name == name).map_or(f64::NAN, |s| s.percentile(0.99) * 1e3);
    let (health_a, health_b) = (rate("Health/Check", "default"), rate("Health/Check", "--token-cache-size 0"));
    let rs_plain = rate(&format!("Verify {d} RS256 tokens (no cache)"), "--token-cache-size 0");
    let rs_cached = rate(&format!("Verify {d} RS256 tokens (cached)"), "default");
    let hot_ratio = if hot_ratios.is_empty() {
        rate("Verify hot token (cached)", "default") / health_a
    } else {
        let shown: Vec<String> = hot_ratios.iter().map(|r| format!("{r:.2}")).collect();
        hot_ratios.sort_by(f64::total_cmp);
        let median = hot_ratios[hot_ratios.len() / 2];
        writeln!(
            report,
            "\nhot Verify / Health/Check in {} alternated passes: {}; median {median:.2}",
            shown.len(),
            shown.join(", ")
        )?;
        median
    };
    let median_p99 = if half_rounds.is_empty() {
        (f64::NAN, f64::NAN)
    } else {
        let shown: Vec<String> = half_rounds.iter().map(|(h, v)| format!("{h:.2} / {v:.2}")).collect();
        let median = |mut xs: Vec<f64>| {
            xs.sort_by(f64::total_cmp);
            xs[xs.len() / 2]
        };
        let (h, v) =
            (median(half_rounds.iter().map(|r| r.0).collect()), median(half_rounds.iter().map(|r| r.1).collect()));
        writeln!(
            report,
            "\np99 ms at {pct} % load, Health/Check / hot Verify, in {} alternated open-loop passes: {}; medians {h:.2} / {v:.2}",
            shown.len(),
            shown.join(", ")
        )?;
        (h, v)
    };
    let checks = [
        (
            format!("hot Verify / Health (cached server; median of {} passes)", hot_ratios.len().max(1)),
            hot_ratio,
            0.85,
            true,
        ),
        (
            format!("{d} RS256, default server / min(transport {health_a:.0}/s, crypto {crypto_ceiling:.0}/s)"),
            rs_cached / health_a.min(crypto_ceiling),
            0.7,
            true,
        ),
        (
            format!("{d} RS256 (no cache) / min(transport {health_b:.0}/s, crypto {crypto_ceiling:.0}/s)"),
            rs_plain / health_b.min(crypto_ceiling),
            0.7,
            true,
        ),
        (
            format!("p99 of hot Verify at {pct} % load, one {} s pass (ms)", args.duration.as_secs()),
            p99(&format!("Verify hot token at {pct} % of its peak")),
            1.0,
            false,
        ),
        (
            format!(
                "p99 of hot Verify at {pct} % load, median of {} alternated {} s passes (ms)",
                half_rounds.len(),
                args.ratio_seconds.as_secs()
            ),
            median_p99.1,
            1.0,
            false,
        ),
        (
            format!("p99 of {d} RS256 (no cache) at {pct} % load (ms)"),
            p99(&format!("Verify {d} RS256 (no cache) at {pct} % of its peak")),
            1.0,
            false,
        ),
        (format!("RSS after {} distinct tokens (MiB)", es_all.len()), rss_after.0, 64.0, false),
    ];
    writeln!(report, "\n## Targets\n\n| target | measured | goal | met |\n|---|---|---|---|")?;
    for (what, value, goal, at_least) in checks {
        if value.is_nan() {
            continue;
        }
        let met = if at_least { value >= goal } else { value < goal };
        let goal = if at_least { format!("≥ {goal}") } else { format!("< {goal}") };
        writeln!(report, "| {what} | {value:.2} | {goal} | {} |", if met { "yes" } else { "**no**" })?;
    }
    writeln!(report, "\nLoad average at the end: {}", loadavg())?;
    println!("{report}");
    Ok(())
}

// ------------------------------------------------------------- the tokens

fn claims(iss: &str, i: usize) -> serde_json::Value {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
    json!({
        "azp": "https://app.example.com",
        "exp": now + 3600,
        "fva": [0, -1],
        "iat": now,
        "iss": iss,
        "jti": format!("{i:020x}"),
        "nbf": now - 10,
        "role": "authenticated",
        "sid": format!("sess_{i:027}"),
        "sts": "active",
        "sub": format!("user_{i:027}"),
        "v": 2,
    })
}

fn grpc_frame(message: &[u8]) -> Bytes {
    // Not compressed, then the length (big-endian u32).
    let len = u32::try_from(message.len()).expect("a request under 4 GiB");
    [&[0][..], &len.to_be_bytes(), message].concat().into()
}

/// An encoded `HealthCheckRequest` of `size` bytes (for `size` ≥ 2): an
/// empty `service` plus unknown field 15 (length-delimited) of filler, which
/// protobuf decoders skip.
fn padded_health_request(size: usize) -> Vec<u8> {
    let varint_len = |n: usize| prost::encoding::encoded_len_varint(n as u64);
    let filler = (0..size).rev().find(|p| 1 + varint_len(*p) + p <= size).unwrap_or(0);
    let mut out = Vec::with_capacity(size);
    out.push((15 << 3) | 2);
    prost::encoding::encode_varint(filler as u64, &mut out);
    out.resize(out.len() + filler, b'x');
    out
}

fn verify_body(token: &str) -> Bytes {
    grpc_frame(&VerifyRequest { token: token.to_owned(), expect: None }.encode_to_vec())
}

// ---------------------------------------------------------------- crypto

/// Single-threaded verifications per second: (alg, aws-lc-rs, ring).
fn crypto_rates(rs: &TestKey, es: &TestKey, iss: &str) -> Vec<(Algorithm, f64, f64)> {
    let ed = TestKey::generate("bench-ed", Algorithm::EdDSA);
    let mut out = Vec::new();
    for key in [rs, es, &ed] {
        let token = key.mint(&claims(iss, 0));
        let (input, sig) = token.rsplit_once('.').unwrap();
        let (msg, sig) = (input.as_bytes(), URL_SAFE_NO_PAD.decode(sig).unwrap());
        let parsed: VerificationKey = key_from_jwk_json(key.jwk()).unwrap();
        let alg = key.alg();
        let aws = rate(|| assert!(parsed.verify(alg, msg, &sig)));
        let b = |m: &str| URL_SAFE_NO_PAD.decode(key.jwk()[m].as_str().unwrap()).unwrap();
        let ring = {
            use ring::signature as s;
            match alg {
                Algorithm::RS256 => {
                    let (n, e) = (b("n"), b("e"));
                    let k = s::RsaPublicKeyComponents { n: &n, e: &e };
                    rate(|| k.verify(&s::RSA_PKCS1_2048_8192_SHA256, msg, &sig).unwrap())
                }
                Algorithm::ES256 => {
                    let k = s::UnparsedPublicKey::new(&s::ECDSA_P256_SHA256_FIXED, [vec![4], b("x"), b("y")].concat());
                    rate(|| k.verify(msg, &sig).unwrap())
                }
                _ => {
                    let k = s::UnparsedPublicKey::new(&s::ED25519, b("x"));
                    rate(|| k.verify(msg, &sig).unwrap())
                }
            }
        };
        out.push((alg, aws, ring));
    }
    out
}

/// Calls per second of `f` over about one second (after a short warm-up).
fn rate(mut f: impl FnMut()) -> f64 {
    let warm = Instant::now();
    while warm.elapsed() < Duration::from_millis(200) {
        f();
    }
    let (start, mut n) = (Instant::now(), 0u64);
    while start.elapsed() < Duration::from_secs(1) {
        for _ in 0..16 {
            f();
        }
        n += 16;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

// ---------------------------------------------------------------- server

struct ServerProc {
    child: Child,
    addr: SocketAddr,
    label: String,
    tick: f64,
}

impl ServerProc {
    async fn spawn(args: &Args, issuer: &str, extra: &[&str]) -> Result<ServerProc, Error> {
        let port = StdListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let mut cmd = match &args.server_cpus {
            Some(cpus) => {
                let mut c = Command::new("taskset");
                c.args(["-c", cpus]).arg(&args.server_bin);
                c
            }
            None => Command::new(&args.server_bin),
        };
        let log = std::env::temp_dir().join(format!("clerk-introspect-loadgen-{port}.log"));
        // The metrics endpoint on an ephemeral port: served (as in production)
        // without colliding with another server on the default port.
        cmd.args(["serve", "--listen", &addr.to_string(), "--issuer", issuer, "--metrics-listen", "127.0.0.1:0"])
            .args(extra)
            .env("TOKIO_WORKER_THREADS", args.server_threads.to_string())
            .envs(args.server_env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?);
        let child = cmd.spawn()?;
        let label = if extra.is_empty() { "default".to_owned() } else { extra.join(" ") };
        let mut server = ServerProc { child, addr, label, tick: clock_tick() };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(t) = Target::connect(addr, 1).await
                && t.call_once(HEALTH, grpc_frame(&[])).await.is_ok()
            {
                eprintln!("server ({}) serving on {addr}, log {}", server.label, log.display());
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("the server exited ({status}): {}", tail.trim_end()).into());
            }
            if Instant::now() > deadline {
                return Err(format!("the server did not become SERVING within 30 s; see {}", log.display()).into());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// User + system CPU time used so far.
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
        // Fields after the command name (which is in parentheses).
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ticks: f64 = [11, 12].iter().filter_map(|i| fields.get(*i)?.parse::<f64>().ok()).sum();
        Duration::from_secs_f64(ticks / self.tick)
    }

    /// (VmRSS, VmHWM) in MiB.
    fn memory(&self) -> (f64, f64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        let kib = |name: &str| {
            status
                .lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        (kib("VmRSS:") / 1024.0, kib("VmHWM:") / 1024.0)
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------- client

#[derive(Clone)]
struct Target {
    conns: Vec<SendRequest<Bytes>>,
    addr: SocketAddr,
    authority: String,
}

/// Why a call failed.
enum CallError {
    Transport(String),
    Status(String),
    NotValid,
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Transport(e) => write!(f, "transport: {e}"),
            CallError::Status(s) => write!(f, "{s}"),
            CallError::NotValid => f.write_str("answer not valid/SERVING"),
        }
    }
}

const WARMUP: u8 = 0;
const MEASURE: u8 = 1;
const STOP: u8 = 2;

impl Target {
    async fn connect(addr: SocketAddr, connections: usize) -> Result<Target, Error> {
        let mut conns = Vec::new();
        for _ in 0..connections {
            let tcp = tokio::net::TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let (send, conn) = h2::client::Builder::new()
                .initial_window_size(1 << 20)
                .initial_connection_window_size(1 << 22)
                .handshake::<_, Bytes>(tcp)
                .await?;
            tokio::spawn(async move {
                let _ = conn.await;
            });
            conns.push(send);
        }
        Ok(Target { conns, addr, authority: addr.to_string() })
    }

    fn uri(&self, path: &str) -> Uri {
        format!("http://{}{path}", self.authority).parse().expect("URI")
    }

    async fn call_once(&self, path: &str, body: Bytes) -> Result<(), CallError> {
        call(&self.conns[0], &self.uri(path), body).await
    }

    /// Closed loop: every connection keeps `streams` calls in flight, taking
    /// bodies in turn; warm-up, then `duration` measured.
    async fn closed(
        &self,
        name: &str,
        path: &str,
        bodies: &Arc<Vec<Bytes>>,
        args: &Args,
        server: &ServerProc,
    ) -> Stats {
        eprintln!("{name}…");
        if args.h2load && bodies.len() == 1 {
            return self.h2load(name, path, &bodies[0], args, server).await;
        }
        let uri = self.uri(path);
        let next = Arc::new(AtomicUsize::new(0));
        let phase = Arc::new(AtomicU8::new(WARMUP));
        let mut workers = JoinSet::new();
        for conn in &self.conns {
            for _ in 0..args.streams {
                let (conn, uri, bodies, next, phase) =
                    (conn.clone(), uri.clone(), bodies.clone(), next.clone(), phase.clone());
                workers.spawn(async move {
                    let mut w = Worker::default();
                    loop {
                        let started_in = phase.load(Ordering::Relaxed);
                        if started_in == STOP {
                            return w;
                        }
                        let body = bodies[next.fetch_add(1, Ordering::Relaxed) % bodies.len()].clone();
                        let t0 = Instant::now();
                        let result = call(&conn, &uri, body).await;
                        let ns = t0.elapsed().as_nanos().min(u32::MAX as u128) as u32;
                        if started_in == MEASURE && phase.load(Ordering::Relaxed) == MEASURE {
                            w.record(ns, result);
                        }
                    }
                });
            }
        }
        tokio::time::sleep(args.warmup).await;
        let (cpu0, own0) = (server.cpu(), own_cpu().0);
        let t0 = Instant::now();
        phase.store(MEASURE, Ordering::Relaxed);
        tokio::time::sleep(args.duration).await;
        phase.store(STOP, Ordering::Relaxed);
        let elapsed = t0.elapsed();
        let cpu = server.cpu().saturating_sub(cpu0);
        let mut stats = Stats::new(name, &server.label, elapsed, cpu);
        stats.client_cpu = own_cpu().0.saturating_sub(own0);
        while let Some(w) = workers.join_next().await {
            stats.merge(w.expect("worker"));
        }
        stats.finish();
        eprintln!("  {}", stats.row());
        stats
    }

    /// Sends every body once, as fast as the connections allow; returns the
    /// number of failed calls.
    async fn prime(&self, path: &str, bodies: &Arc<Vec<Bytes>>) -> usize {
        let uri = self.uri(path);
        let next = Arc::new(AtomicUsize::new(0));
        let errors = Arc::new(AtomicUsize::new(0));
        let mut workers = JoinSet::new();
        for conn in &self.conns {
            for _ in 0..16 {
                let (conn, uri, bodies, next, errors) =
                    (conn.clone(), uri.clone(), bodies.clone(), next.clone(), errors.clone());
                workers.spawn(async move {
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        let Some(body) = bodies.get(i) else { return };
                        if call(&conn, &uri, body.clone()).await.is_err() {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                });
            }
        }
        while workers.join_next().await.is_some() {}
        errors.load(Ordering::Relaxed)
    }

    /// Open loop, through the raw HTTP/2 client (`raw_h2`): calls started
    /// at `rate` per second whatever the answers' pace, on fresh
    /// connections; a warm-up run, then a measured one. A pacing thread
    /// sleeps (not spins) until the next call is due and releases every call
    /// due by then, so calls leave evenly spaced to within the thread's
    /// wake-up time, about 0.1 ms (Tokio's own timer would release them in
    /// 1 ms bursts); latencies count from each call's scheduled time.
    async fn open(
        &self,
        name: &str,
        path: &str,
        bodies: &Arc<Vec<Bytes>>,
        rate: f64,
        args: &Args,
        server: &ServerProc,
    ) -> Stats {
        eprintln!("{name} ({rate:.0}/s)…");
        let check: raw_h2::Check = if path == HEALTH { Arc::new(health_serving) } else { Arc::new(verify_valid) };
        let addr = self.addr;
        // The raw client runs its own current-thread runtime, which cannot
        // start inside this one: on a thread of its own, this worker blocked.
        let measured = tokio::task::block_in_place(|| {
            std::thread::scope(|scope| {
                scope
                    .spawn(|| {
                        let mut client = raw_h2::Client::connect(addr, args.connections)?;
                        client.run(path, bodies, rate, args.warmup, &check, false);
                        let (cpu0, own0) = (server.cpu(), own_cpu().0);
                        let t0 = Instant::now();
                        let w = client.run(path, bodies, rate, args.duration, &check, true);
                        let elapsed = t0.elapsed();
                        let mut stats = Stats::new(name, &server.label, elapsed, server.cpu().saturating_sub(cpu0));
                        stats.client_cpu = own_cpu().0.saturating_sub(own0);
                        stats.merge(w);
                        Ok::<_, std::io::Error>(stats)
                    })
                    .join()
                    .expect("the raw HTTP/2 client panicked")
            })
        });
        let mut stats = measured.unwrap_or_else(|e| {
            let mut stats = Stats::new(name, &server.label, args.duration, Duration::ZERO);
            stats.errors = 1;
            stats.first_error = Some(format!("raw h2 client: {e}"));
            stats
        });
        stats.driver = "raw h2 (open loop)";
        stats.finish();
        eprintln!("  {}", stats.row());
        stats
    }
}

/// The latency bound of the load ladder.
const LADDER_P99_MS: f64 = 1.0;
/// The load ladder's rates, as fractions of the hot token's closed-loop peak.
const LADDER: [f64; 9] = [0.25, 0.30, 0.35, 0.40, 0.45, 0.50, 0.55, 0.60, 0.65];

/// One rung of the load ladder: Health/Check and the hot token, one after
/// the other, at the same open-loop rate.
struct Rung {
    fraction: f64,
    rate: f64,
    health: Stats,
    verify: Stats,
}

impl Rung {
    fn ok(stats: &Stats) -> bool {
        stats.errors == 0 && stats.percentile(0.99) * 1e3 < LADDER_P99_MS
    }
}

impl Target {
    /// The load ladder: for each rate of [`LADDER`], an open-loop pass of
    /// Health/Check then one of the hot token (`--ratio-seconds` each, after
    /// 1 s of warm-up), so that both see the same neighbours; the p99 of
    /// each against the rate, up to and past saturation.
    async fn ladder(
        &self,
        health: &Arc<Vec<Bytes>>,
        hot: &Arc<Vec<Bytes>>,
        peak: f64,
        args: &Args,
        server: &ServerProc,
    ) -> Vec<Rung> {
        let pass = Args { duration: args.ratio_seconds, warmup: Duration::from_secs(1), ..args.clone() };
        let mut rungs = Vec::new();
        for fraction in LADDER {
            let rate = peak * fraction;
            let pct = (fraction * 100.0).round();
            let health = self.open(&format!("Health/Check, ladder {pct} %"), HEALTH, health, rate, &pass, server).await;
            let verify =
                self.open(&format!("Verify hot token, ladder {pct} %"), VERIFY, hot, rate, &pass, server).await;
            rungs.push(Rung { fraction, rate, health, verify });
        }
        rungs
    }
}

/// `VerifyResponse` with `valid` set (the raw client's check). It walks the
/// message's top-level fields instead of decoding it: a full decode builds
/// the identity's strings, about 1 µs of the client's CPU per call that the
/// open-loop passes would count as the server's latency (a late client is
/// latency there). Malformed wire format is refused, as prost refuses it;
/// the nested identity is skipped, not checked.
fn verify_valid(message: &[u8]) -> bool {
    fn varint(b: &mut &[u8]) -> Option<u64> {
        let mut value = 0u64;
        for shift in (0..64).step_by(7) {
            let (&byte, rest) = b.split_first()?;
            *b = rest;
            value |= u64::from(byte & 0x7f) << shift;
            if byte < 0x80 {
                return Some(value);
            }
        }
        None
    }
    let mut b = message;
    let mut valid = false;
    while !b.is_empty() {
        let Some(key) = varint(&mut b) else { return false };
        let (field, wire_type) = (key >> 3, key & 7);
        let skip = match wire_type {
            0 => match varint(&mut b) {
                Some(v) if field == 1 => {
                    valid = v != 0;
                    0
                }
                Some(_) => 0,
                None => return false,
            },
            1 => 8,
            2 => match varint(&mut b).and_then(|n| usize::try_from(n).ok()) {
                Some(n) => n,
                None => return false,
            },
            5 => 4,
            _ => return false,
        };
        if field == 0 || skip > b.len() {
            return false;
        }
        b = &b[skip..];
    }
    valid
}

/// `verify_valid` agrees with prost on answers the server gives, and
/// refuses what prost refuses (part of `--self-test`).
fn verify_valid_self_test() -> Vec<String> {
    use clerk_introspect::pb::{Identity, Reason};
    let valid = VerifyResponse {
        valid: true,
        reason: Reason::Valid as i32,
        identity: Some(Identity { subject: "user_1".into(), role: "authenticated".into(), ..Identity::default() }),
        ..VerifyResponse::default()
    }
    .encode_to_vec();
    let refused = VerifyResponse {
        valid: false,
        reason: Reason::Expired as i32,
        message: "the token expired".into(),
        ..VerifyResponse::default()
    }
    .encode_to_vec();
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("a valid answer", valid.clone()),
        ("a refusal", refused),
        ("an empty message", Vec::new()),
        ("valid = false written out", vec![0x08, 0x00]),
    ];
    for cut in 1..valid.len() {
        cases.push(("a truncated valid answer", valid[..cut].to_vec()));
    }
    cases.push(("an unknown wire type", vec![0x08, 0x01, 0x0b]));
    cases.push(("field number 0", vec![0x00, 0x01]));
    let mut failures = Vec::new();
    for (what, bytes) in cases {
        let prost = VerifyResponse::decode(bytes.as_slice()).is_ok_and(|r| r.valid);
        if verify_valid(&bytes) != prost {
            failures.push(format!("verify_valid disagrees with prost on {what}: {bytes:02x?}"));
        }
    }
    failures
}

/// `HealthCheckResponse` with status SERVING (the raw client's check).
fn health_serving(message: &[u8]) -> bool {
    HealthCheckResponse::decode(message).is_ok_and(|r| r.status() == ServingStatus::Serving)
}

impl Target {
    /// A closed-loop scenario with one body, driven by h2load: a warm-up
    /// run, then a measured one whose per-request log gives the latencies.
    /// h2load checks HTTP status only, so one call through the built-in
    /// client first checks that the answer is valid.
    async fn h2load(&self, name: &str, path: &str, body: &Bytes, args: &Args, server: &ServerProc) -> Stats {
        let mut stats = Stats::new(name, &server.label, args.duration, Duration::ZERO);
        stats.driver = "h2load";
        if let Err(e) = self.call_once(path, body.clone()).await {
            stats.errors = 1;
            stats.first_error = Some(e.to_string());
            return stats;
        }
        let dir = std::env::temp_dir();
        let body_file = dir.join(format!("loadgen-body-{}.bin", server.addr.port()));
        let log = dir.join(format!("loadgen-h2load-{}.tsv", server.addr.port()));
        std::fs::write(&body_file, body).expect("write the request body");
        let run = |duration: Duration, log: Option<&std::path::Path>| {
            let mut cmd = Command::new("h2load");
            cmd.arg(format!("-D{}", duration.as_secs().max(1)))
                .arg(format!("-c{}", args.connections))
                .arg(format!("-m{}", args.streams))
                .arg(format!("-t{}", args.client_threads.min(args.connections)))
                .arg("-d")
                .arg(&body_file)
                .args(["-H", "content-type: application/grpc", "-H", "te: trailers"]);
            if let Some(log) = log {
                cmd.arg("--log-file").arg(log);
            }
            cmd.arg(format!("http://{}{path}", self.authority)).stdin(Stdio::null()).stderr(Stdio::null());
            cmd.output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        };
        let _ = tokio::task::block_in_place(|| run(args.warmup, None));
        let (cpu0, children0) = (server.cpu(), own_cpu().1);
        let out = tokio::task::block_in_place(|| run(args.duration, Some(&log)));
        stats.server_cpu = server.cpu().saturating_sub(cpu0);
        stats.client_cpu = own_cpu().1.saturating_sub(children0);
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                stats.errors = 1;
                stats.first_error = Some(format!("h2load: {e}"));
                return stats;
            }
        };
        // "requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout"
        if let Some(line) = out.lines().find(|l| l.starts_with("requests:")) {
            let n = |word: &str| {
                line.split(',')
                    .find(|p| p.trim_end().ends_with(word))
                    .and_then(|p| p.split_whitespace().rev().nth(1).and_then(|n| n.parse::<usize>().ok()))
            };
            stats.errors = n("failed").unwrap_or(0) + n("errored").unwrap_or(0) + n("timeout").unwrap_or(0);
        }
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        for line in text.lines() {
            let mut cols = line.split('\t');
            let (_, status, micros) = (cols.next(), cols.next(), cols.next());
            match (status, micros.and_then(|m| m.parse::<u64>().ok())) {
                (Some("200"), Some(us)) => stats.latencies.push((us * 1000).min(u64::from(u32::MAX)) as u32),
                _ => {
                    stats.errors += 1;
                    stats.first_error.get_or_insert_with(|| format!("h2load: {line}"));
                }
            }
        }
        let _ = std::fs::remove_file(&log);
        let _ = std::fs::remove_file(&body_file);
        stats.finish();
        eprintln!("  {}", stats.row());
        stats
    }
}

/// One gRPC call over raw HTTP/2: the response must be status 0 and its
/// message must start with field 1 = true (`VerifyResponse.valid`, or
/// `HealthCheckResponse.status` = SERVING).
async fn call(conn: &SendRequest<Bytes>, uri: &Uri, body: Bytes) -> Result<(), CallError> {
    let t = |e: h2::Error| CallError::Transport(e.to_string());
    let mut send = conn.clone().ready().await.map_err(t)?;
    let request = Request::builder()
        .method(Method::POST)
        .uri(uri.clone())
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .expect("request");
    let (response, mut stream) = send.send_request(request, false).map_err(t)?;
    stream.send_data(body, true).map_err(t)?;
    let response = response.await.map_err(t)?;
    let (parts, mut recv) = response.into_parts();
    if parts.status != http::StatusCode::OK {
        return Err(CallError::Status(format!("HTTP {}", parts.status)));
    }
    if let Some(status) = parts.headers.get("grpc-status") {
        return Err(CallError::Status(format!("grpc-status {status:?} (trailers only)")));
    }
    let mut head = [0u8; 7];
    let mut have = 0;
    while let Some(chunk) = recv.data().await {
        let chunk = chunk.map_err(t)?;
        let _ = recv.flow_control().release_capacity(chunk.len());
        let take = chunk.len().min(head.len() - have);
        head[have..have + take].copy_from_slice(&chunk[..take]);
        have += take;
    }
    let trailers = recv.trailers().await.map_err(t)?.unwrap_or_default();
    match trailers.get("grpc-status").map(|v| v.as_bytes()) {
        Some(b"0") => {}
        other => return Err(CallError::Status(format!("grpc-status {other:?}"))),
    }
    if have < 7 || head[5..7] != [0x08, 0x01] {
        return Err(CallError::NotValid);
    }
    Ok(())
}

// ------------------------------------------------------------- statistics

#[derive(Default)]
struct Worker {
    latencies: Vec<u32>,
    errors: usize,
    first_error: Option<String>,
}

impl Worker {
    fn record(&mut self, ns: u32, result: Result<(), CallError>) {
        match result {
            Ok(()) => self.latencies.push(ns),
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

#[derive(Clone)]
struct Stats {
    name: String,
    server: String,
    driver: &'static str,
    elapsed: Duration,
    server_cpu: Duration,
    client_cpu: Duration,
    latencies: Vec<u32>,
    errors: usize,
    first_error: Option<String>,
}

impl Stats {
    fn new(name: &str, server: &str, elapsed: Duration, server_cpu: Duration) -> Stats {
        Stats {
            name: name.to_owned(),
            server: server.to_owned(),
            driver: "h2 (built-in)",
            elapsed,
            server_cpu,
            client_cpu: Duration::ZERO,
            latencies: Vec::new(),
            errors: 0,
            first_error: None,
        }
    }

    fn merge(&mut self, w: Worker) {
        self.latencies.extend(w.latencies);
        self.errors += w.errors;
        if self.first_error.is_none() {
            self.first_error = w.first_error;
        }
    }

    fn finish(&mut self) {
        self.latencies.sort_unstable();
    }

    /// Successful calls per second.
    fn rate(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64()
    }

    /// The `q` quantile of latency, in seconds.
    fn percentile(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let rank = ((q * self.latencies.len() as f64).ceil() as usize).clamp(1, self.latencies.len());
        f64::from(self.latencies[rank - 1]) / 1e9
    }

    /// CPU time per call (successful or not), in µs.
    fn per_call_us(&self, cpu: Duration) -> f64 {
        let done = self.latencies.len() + self.errors;
        if done == 0 { f64::NAN } else { cpu.as_secs_f64() * 1e6 / done as f64 }
    }

    /// The server's CPU time per call, in µs.
    fn server_cpu_per_call_us(&self) -> f64 {
        self.per_call_us(self.server_cpu)
    }

    fn row(&self) -> String {
        let per_call = |cpu: Duration| self.per_call_us(cpu);
        let share = |cpu: Duration| cpu.as_secs_f64() * 100.0 / self.elapsed.as_secs_f64();
        let errors = match &self.first_error {
            Some(e) => format!("{} ({e})", self.errors),
            None => self.errors.to_string(),
        };
        format!(
            "| {} | {} | {} | {:.0} | {:.3} | {:.3} | {:.3} | {} | {:.1} µs ({:.0} %) | {:.1} µs ({:.0} %) |",
            self.name,
            self.server,
            self.driver,
            self.rate(),
            self.percentile(0.5) * 1e3,
            self.percentile(0.99) * 1e3,
            self.percentile(0.999) * 1e3,
            errors,
            per_call(self.server_cpu),
            share(self.server_cpu),
            per_call(self.client_cpu),
            share(self.client_cpu),
        )
    }
}

// ---------------------------------------------------------------- machine

/// CPU time (user + system) of this process, and of its waited-for children.
fn own_cpu() -> (Duration, Duration) {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = clock_tick();
    let sum = |a: usize, b: usize| {
        let t: f64 = [a, b].iter().filter_map(|i| fields.get(*i)?.parse::<f64>().ok()).sum();
        Duration::from_secs_f64(t / tick)
    };
    (sum(11, 12), sum(13, 14))
}

fn machine_cores() -> usize {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines().filter(|l| l.starts_with("processor")).count().max(1)
}

fn cpu_model() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    info.lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or_else(|| "unknown CPU".to_owned(), |(_, m)| m.trim().to_owned())
}

fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_owned()
}

fn loadavg() -> String {
    let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    l.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
}

/// Number of CPUs in a taskset list such as `0`, `0,2` or `0-3`.
fn cpu_count(list: &str) -> usize {
    list.split(',')
        .map(|part| match part.split_once('-') {
            Some((a, b)) => b.trim().parse::<usize>().unwrap_or(0).saturating_sub(a.trim().parse().unwrap_or(0)) + 1,
            None => 1,
        })
        .sum::<usize>()
        .max(1)
}

fn h2load_version() -> String {
    Command::new("h2load")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map_or_else(|| "h2load".to_owned(), |v| v.trim().replace("h2load nghttp2/", "h2load (nghttp2 ") + ")")
}

fn h2load_available() -> bool {
    Command::new("h2load")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn taskset_available() -> bool {
    Command::new("taskset").arg("-V").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok_and(|s| s.success())
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
fn clock_tick() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok()?.trim().parse().ok())
        .unwrap_or(100.0)
}
