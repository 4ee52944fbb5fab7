//! The Supabase example (`examples/supabase/`) on a real Postgres: what
//! clerk-introspect accepts is exactly what row-level security sees, and what
//! it refuses never reaches the database.
//!
//! Each test starts its own PostgreSQL server (Debian's binaries: `initdb`
//! into a temporary directory, `postgres` on a free loopback port, stopped at
//! the end, also on a panic) and loads `examples/supabase/schema.sql`. The
//! service tests then start the `clerk-introspect serve` binary against a
//! loopback test issuer and drive an example service (Python with psycopg,
//! Node with pg) over HTTP; the others run SQL through psql as PostgREST
//! would, to show what the refusals prevent.
//!
//! What reaches the database is read from Postgres' own statement log
//! (`log_statement = all`, each line tagged with the connection's
//! `application_name`): the server writes a statement there when it receives
//! it, before it runs it, so a request that sent anything shows there by the
//! time its HTTP answer arrives.
//!
//! A missing PostgreSQL fails these tests with what to install; they are never
//! skipped. Their Python and Node packages come from `ci/tools/setup.sh`.

mod external;

use std::fs::{self, File};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant, SystemTime};

use clerk_introspect::pb::token_introspection_client::TokenIntrospectionClient;
use clerk_introspect::pb::{Reason, VerifyRequest};
use clerk_introspect::service::respond::check::refusal;
use clerk_introspect::test_issuer::{TestIssuer, TestKey};
use external::{Served, repo, tools};
use serde_json::{Value, json};
use tonic::transport::Channel;
use tonic_health::pb::health_check_response::ServingStatus;

/// Longest Postgres or an example service may take to start (a hang, not a timing).
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Interval between readiness polls.
const POLL: Duration = Duration::from_millis(20);
/// The example services' deadline for GetClaims (2 s by default): a busy
/// machine must not turn into a refusal; a hang still ends.
const DEADLINE: [&str; 2] = ["--deadline", "30"];
/// Statements one request sends: BEGIN, SET LOCAL ROLE, set_config, the query, COMMIT.
const STATEMENTS_PER_REQUEST: usize = 5;

/// The newcomer's commands as `docs/supabase.md` shows them (checked to be
/// there, verbatim), run against `demo` with its address, our database and a
/// free port put in.
const DOCS: &str = "docs/supabase.md";
const DOCS_SERVICE: &str = "target/tools/venv/bin/python3 examples/supabase/python/service.py --introspect localhost:50051 --database postgresql:///clerk_supabase_example --listen 127.0.0.1:8080 &";
const DOCS_POST: &str =
    r#"curl -s -H "Authorization: Bearer $TOKEN" -d '{"body": "my first note"}' localhost:8080/notes"#;
const DOCS_LIST: &str = r#"curl -s -H "Authorization: Bearer $TOKEN" localhost:8080/notes"#;
const DOCS_WHOAMI: &str = r#"curl -s -H "Authorization: Bearer $TOKEN" localhost:8080/whoami"#;
const DOCS_NO_TOKEN: &str = "curl -si localhost:8080/notes";
/// The demo's user.
const DEMO_USER: &str = "user_2pDemoUser000000000000000";

const ALICE: &str = "user_2pAlice00000000000000000";
const BOB: &str = "user_2pBob0000000000000000000";
const CAROL: &str = "user_2pCarol00000000000000000";
const ACME: &str = "org_2pAcme0000000000000000000";
const GLOBEX: &str = "org_2pGlobex00000000000000000";

// === PostgreSQL ===

/// The directory of PostgreSQL's server binaries: `$PG_BINDIR`, else
/// `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin`
/// (Debian's layout); panics with what to install if none has them.
fn pg_bindir() -> PathBuf {
    let mut candidates: Vec<PathBuf> = std::env::var_os("PG_BINDIR").map(PathBuf::from).into_iter().collect();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    let mut versions: Vec<(u32, PathBuf)> = fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .collect();
    versions.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    candidates.extend(versions.into_iter().map(|(_, dir)| dir));
    find_bindir(&candidates).unwrap_or_else(|e| panic!("{e}"))
}

/// The first of `candidates` that has `initdb`, `postgres` and `psql`.
fn find_bindir(candidates: &[PathBuf]) -> Result<PathBuf, String> {
    let has_all = |dir: &&PathBuf| ["initdb", "postgres", "psql"].iter().all(|b| dir.join(b).is_file());
    candidates.iter().find(has_all).cloned().ok_or_else(|| {
        format!(
            "PostgreSQL's server binaries (initdb, postgres, psql) were not found (looked in {candidates:?}). \
             These tests run a real Postgres: install it (Debian/Ubuntu: apt-get install postgresql; \
             elsewhere: the PostgreSQL server package), or set PG_BINDIR to the directory that holds them."
        )
    })
}

/// Who Postgres runs as: `None` for ourselves; as root, which Postgres
/// refuses, the uid and gid of the `postgres` user.
fn postgres_user() -> Option<(u32, u32)> {
    let id = |args: &[&str]| -> Option<u32> {
        let out = Command::new("id").args(args).output().ok()?;
        String::from_utf8_lossy(&out.stdout).trim().parse().ok()
    };
    if id(&["-u"]).expect("id -u") != 0 {
        return None;
    }
    match (id(&["-u", "postgres"]), id(&["-g", "postgres"])) {
        (Some(uid), Some(gid)) => Some((uid, gid)),
        _ => panic!(
            "these tests run as root, which Postgres refuses, and there is no `postgres` user to run it as \
             (Debian's postgresql package creates one; or run the tests as a normal user)"
        ),
    }
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(owner: Option<(u32, u32)>) -> TempDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        // Under the system temporary directory, which the postgres user can
        // reach (a path under the repository may not be), and short enough
        // for a Unix socket path.
        let name = format!("ci-pg-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let dir = std::env::temp_dir().join(name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir(&dir).expect("create a temporary directory");
        if let Some((uid, gid)) = owner {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown the temporary directory");
        }
        TempDir(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// A PostgreSQL server of our own, with `schema.sql` loaded. Dropping it
/// stops the server (fast shutdown) and removes its directory.
struct Postgres {
    child: Child,
    port: u16,
    bin: PathBuf,
    log: PathBuf,
    // Dropped after the server has stopped (fields drop after `drop`).
    dir: TempDir,
}

impl Postgres {
    fn start() -> Postgres {
        let bin = pg_bindir();
        let owner = postgres_user();
        let dir = TempDir::new(owner);
        let data = dir.0.join("data");
        let as_owner = |program: &str| {
            let mut command = Command::new(bin.join(program));
            if let Some((uid, gid)) = owner {
                // std drops the supplementary groups before setuid.
                command.uid(uid).gid(gid);
            }
            without_libpq_environment(&mut command);
            command.stdin(Stdio::null());
            command
        };
        let out = as_owner("initdb")
            .args(["-D".as_ref(), data.as_os_str()])
            .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-locale", "--no-sync", "--no-instructions"])
            .output()
            .expect("run initdb");
        assert!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));

        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let log = dir.0.join("postgres.log");
        let file = File::create(&log).expect("create the log");
        let child = as_owner("postgres")
            .args(["-D".as_ref(), data.as_os_str(), "-k".as_ref(), dir.0.as_os_str()])
            .args(["-p", &port.to_string(), "-c", "listen_addresses=127.0.0.1"])
            // Fast and disposable: nothing survives the test.
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off"])
            .args(["-c", "wal_level=minimal", "-c", "max_wal_senders=0", "-c", "autovacuum=off"])
            .args(["-c", "max_connections=30", "-c", "shared_buffers=16MB"])
            // Every statement received, tagged with the connection's application_name.
            .args(["-c", "logging_collector=off", "-c", "log_statement=all", "-c", "log_line_prefix=[%a] "])
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .expect("start postgres");
        let mut pg = Postgres { child, port, bin, log, dir };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(Some(status)) = pg.child.try_wait() {
                panic!("postgres exited ({status}) while starting:\n{}", pg.log_text());
            }
            if pg.psql(&[], "select 1").is_ok() {
                break;
            }
            assert!(Instant::now() < deadline, "postgres did not accept connections:\n{}", pg.log_text());
            std::thread::sleep(POLL);
        }
        let schema = repo().join("examples/supabase/schema.sql");
        let out = pg.psql_command(&["-f".as_ref(), schema.as_os_str()]).output().expect("run psql");
        assert!(out.status.success(), "schema.sql failed to load: {}", String::from_utf8_lossy(&out.stderr));
        pg
    }

    /// The libpq connection string of the role the example services log in as.
    fn conninfo(&self) -> String {
        format!("postgresql://authenticator@127.0.0.1:{}/postgres", self.port)
    }

    fn psql_command(&self, args: &[&std::ffi::OsStr]) -> Command {
        let mut command = Command::new(self.bin.join("psql"));
        without_libpq_environment(&mut command);
        command
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-d", "postgres", "-h"])
            .arg(&self.dir.0)
            .args(["-p", &self.port.to_string()])
            .args(args)
            .env("PGAPPNAME", "psql")
            .env("PGCLIENTENCODING", "UTF8");
        command
    }

    /// Runs `script` through psql as the superuser, with psql variables
    /// (`:'name'` in the script quotes them); its output, or its error.
    fn psql(&self, vars: &[(&str, &str)], script: &str) -> Result<String, String> {
        let mut command = self.psql_command(&[]);
        for (name, value) in vars {
            command.arg("-v").arg(format!("{name}={value}"));
        }
        let mut child =
            command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("run psql");
        // psql may exit before reading (a server not up yet): its status says why.
        let _ = std::io::Write::write_all(&mut child.stdin.take().unwrap(), script.as_bytes());
        let out = child.wait_with_output().expect("wait for psql");
        let stdout = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
        if out.status.success() { Ok(stdout) } else { Err(stderr) }
    }

    /// Runs `query` in a transaction set up as PostgREST sets up a request
    /// for a token whose role it resolved to `role`: `SET LOCAL ROLE`, then
    /// `request.jwt.claims` = the claims with `role` set to that role.
    fn as_postgrest(&self, role: &str, claims: &Value, query: &str) -> Result<String, String> {
        let mut claims = claims.clone();
        claims["role"] = json!(role);
        let script = format!(
            "begin;\nset local role {role};\nselect set_config('request.jwt.claims', :'claims', true) \\g /dev/null\n{query};\ncommit;\n"
        );
        self.psql(&[("claims", &claims.to_string())], &script)
    }

    fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// What Postgres logged of the statements it received from connections
    /// named `application`, in order: each statement's line, followed by its
    /// `DETAIL:  parameters: ...` line if it had parameters.
    fn received(&self, application: &str) -> Vec<String> {
        let prefix = format!("[{application}] ");
        self.log_text()
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix))
            .filter(|l| sql_of(l).is_some() || l.starts_with("DETAIL:  parameters: "))
            .map(str::to_owned)
            .collect()
    }

    /// How many statements Postgres received from connections named `application`.
    fn statement_count(&self, application: &str) -> usize {
        self.received(application).iter().filter(|l| sql_of(l).is_some()).count()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Fast shutdown (SIGINT): sessions end, the server exits; then SIGKILL
        // if it has not within 10 s.
        let _ = Command::new("kill").args(["-INT", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && !matches!(self.child.try_wait(), Ok(Some(_))) {
            std::thread::sleep(POLL);
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Removes the libpq variables (`PGHOST`, `PGPASSWORD`, `PGOPTIONS`, …) a
/// machine may have set for its own database from `command`'s environment:
/// the connection strings here say everything.
fn without_libpq_environment(command: &mut Command) {
    for (name, _) in std::env::vars_os() {
        if name.to_str().is_some_and(|n| n.starts_with("PG")) {
            command.env_remove(name);
        }
    }
}

/// The SQL of a logged statement: `LOG:  statement: SQL` (simple protocol)
/// or `LOG:  execute <name>: SQL` (extended protocol).
fn sql_of(line: &str) -> Option<&str> {
    line.strip_prefix("LOG:  statement: ")
        .or_else(|| line.strip_prefix("LOG:  execute ").and_then(|rest| Some(rest.split_once(">: ")?.1)))
}

// === The example services ===

#[derive(Clone, Copy, Debug, PartialEq)]
enum Lang {
    Python,
    Node,
}

impl Lang {
    /// The `application_name` the service's connections carry.
    fn application(self) -> &'static str {
        match self {
            Lang::Python => "supabase-example-python",
            Lang::Node => "supabase-example-node",
        }
    }
}

/// An example service as a child process on a free loopback port.
struct Service {
    child: Child,
    url: String,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Service {
    fn start(lang: Lang, introspect: &str, database: &str) -> Service {
        let mut command = match lang {
            Lang::Python => {
                let mut c = Command::new(tools().join("python3"));
                c.arg(repo().join("examples/supabase/python/service.py"));
                c
            }
            Lang::Node => {
                let mut c = Command::new("node");
                c.arg(repo().join("examples/supabase/node/service.js"));
                c
            }
        };
        command.args(["--introspect", introspect, "--database", database, "--listen", "127.0.0.1:0"]);
        command.args(DEADLINE);
        Service::spawn(command, &format!("the {lang:?} example service"))
    }

    /// Starts `command` and waits for its `listening on <url>` line.
    fn spawn(mut command: Command, what: &str) -> Service {
        without_libpq_environment(&mut command);
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {what}: {e}"));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = stderr.clone();
        let err = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        });
        let (tx, rx) = mpsc::channel();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = out.read_line(&mut line);
            let _ = tx.send(line);
            // Keep draining so the service never blocks on a full pipe.
            let _ = std::io::copy(&mut out, &mut std::io::sink());
        });
        let url = match rx
            .recv_timeout(START_TIMEOUT)
            .ok()
            .and_then(|l| l.trim().strip_prefix("listening on ").map(str::to_owned))
        {
            Some(url) => url,
            None => {
                let _ = child.kill();
                let _ = child.wait();
                panic!("{what} did not start: {:#?}", stderr.lock().unwrap());
            }
        };
        Service { child, url, stderr }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An HTTP answer of an example service.
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"))
    }

    fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_else(|| panic!("no {name} header: {self:?}"))
    }
}

/// Everything one test needs: Postgres, the issuer and its key, the server
/// binary, one example service.
struct Env {
    lang: Lang,
    issuer: TestIssuer,
    key: TestKey,
    server: Served,
    http: reqwest::Client,
    // Stopped before Postgres (fields drop in order).
    service: Service,
    pg: Postgres,
}

impl Env {
    async fn start(lang: Lang) -> Env {
        tools();
        let pg = tokio::task::block_in_place(Postgres::start);
        let key = TestKey::rsa("ins_2pSupabaseTest00000000000");
        let issuer = TestIssuer::start(vec![key.clone()]).await.expect("start the test issuer");
        let server = Served::start(issuer.issuer());
        server.wait_for(ServingStatus::Serving).await;
        let service = tokio::task::block_in_place(|| Service::start(lang, &server.addr.to_string(), &pg.conninfo()));
        Env { lang, issuer, key, server, http: reqwest::Client::new(), service, pg }
    }

    /// Session-token claims (v2) for `sub`, now, with `changes` merged in
    /// (`null` removes a claim).
    fn claims(&self, sub: &str, changes: Value) -> Value {
        let mut claims = self.issuer.session_claims(SystemTime::now());
        claims["sub"] = json!(sub);
        claims["sid"] = json!(format!("sess_{}", &sub[5..]));
        for (k, v) in changes.as_object().expect("changes are an object") {
            if v.is_null() {
                claims.as_object_mut().unwrap().remove(k);
            } else {
                claims[k] = v.clone();
            }
        }
        claims
    }

    fn token(&self, sub: &str, changes: Value) -> String {
        self.key.mint(&self.claims(sub, changes))
    }

    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Answer {
        let url = format!("{}{path}", self.service.url);
        let mut request = self.http.request(method.parse().unwrap(), url).timeout(Duration::from_secs(30));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(body) = body {
            request = request.header("content-type", "application/json").body(body.to_string());
        }
        let response = request.send().await.unwrap_or_else(|e| {
            panic!(
                "{method} {path} to the {:?} service: {e}; its log: {:#?}",
                self.lang,
                self.service.stderr.lock().unwrap()
            )
        });
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let text = response.text().await.expect("the answer's body");
        if let Some(token) = token {
            assert!(!text.contains(token), "the answer echoes the token: {text}");
            let logged = self.service.stderr.lock().unwrap().iter().any(|l| l.contains(token));
            assert!(!logged && !self.pg.log_text().contains(token), "the token was logged");
        }
        Answer { status, headers, text }
    }

    async fn get(&self, path: &str, token: &str) -> Answer {
        self.call("GET", path, Some(token), None).await
    }

    async fn post(&self, path: &str, token: &str, body: &str) -> Answer {
        self.call("POST", path, Some(token), Some(json!({ "body": body }))).await
    }

    /// The bodies of the rows a GET returned (which must succeed).
    async fn bodies(&self, path: &str, token: &str) -> Vec<String> {
        let answer = self.get(path, token).await;
        assert_eq!(answer.status, 200, "{answer:?}");
        answer.json().as_array().expect("an array").iter().map(|r| r["body"].as_str().unwrap().to_owned()).collect()
    }

    fn statements(&self) -> usize {
        self.pg.statement_count(self.lang.application())
    }

    /// What clerk-introspect itself answers for `token` (Verify).
    async fn verdict(&self, token: &str) -> (Reason, String) {
        let channel = Channel::from_shared(format!("http://{}", self.server.addr)).unwrap().connect_lazy();
        let answer = TokenIntrospectionClient::new(channel)
            .verify(VerifyRequest { token: token.to_owned(), expect: None })
            .await
            .expect("Verify answers")
            .into_inner();
        (Reason::try_from(answer.reason).unwrap(), answer.message)
    }
}

// === Scenarios, shared by the Python and Node tests ===

/// User A reads and writes only A's rows, B only B's.
async fn users_see_only_their_own_rows(env: &Env) {
    let (alice, bob) = (env.token(ALICE, json!({})), env.token(BOB, json!({})));
    let added = env.post("/notes", &alice, "Alice's note").await;
    assert_eq!(added.status, 201, "{added:?}");
    assert_eq!(added.json()["user_id"], ALICE, "the row is Alice's: user_id defaults to auth.jwt()->>'sub'");
    assert_eq!(env.post("/notes", &bob, "Bob's note").await.status, 201);
    assert_eq!(env.post("/notes", &alice, "Alice's second note").await.status, 201);

    assert_eq!(env.bodies("/notes", &alice).await, ["Alice's note", "Alice's second note"]);
    assert_eq!(env.bodies("/notes", &bob).await, ["Bob's note"]);
    assert_eq!(env.bodies("/notes", &env.token(CAROL, json!({}))).await, Vec::<String>::new());
    // What the table holds, read as the superuser: each write landed as its author's.
    let rows = env.pg.psql(&[], "select user_id || ':' || body from public.notes order by id").unwrap();
    assert_eq!(rows, format!("{ALICE}:Alice's note\n{BOB}:Bob's note\n{ALICE}:Alice's second note"));
}

/// Members of an organization see its rows; only its admins (v1 `org_role`
/// or v2 `o.rol`) may add one; other organizations see none of them.
async fn only_org_admins_write_and_members_read(env: &Env) {
    let v2 = |sub: &str, org: &str, role: &str| {
        env.token(sub, json!({"o": {"id": org, "slg": "acme", "rol": role, "per": "read,manage", "fpm": "3"}}))
    };
    let v1 = |sub: &str, org: &str, role: &str| {
        env.token(sub, json!({"v": null, "org_id": org, "org_slug": "acme", "org_role": role, "org_permissions": []}))
    };
    let (admin_v2, member_v2) = (v2(ALICE, ACME, "admin"), v2(BOB, ACME, "member"));
    let (admin_v1, member_v1) = (v1(CAROL, ACME, "org:admin"), v1(BOB, ACME, "org:member"));
    let other_admin = v2(CAROL, GLOBEX, "admin");

    let added = env.post("/org/notes", &admin_v2, "plan (v2 admin)").await;
    assert_eq!(added.status, 201, "{added:?}");
    assert_eq!(added.json()["organization_id"], ACME, "{added:?}");
    assert_eq!(env.post("/org/notes", &admin_v1, "budget (v1 admin)").await.status, 201);
    assert_eq!(env.post("/org/notes", &other_admin, "Globex's note").await.status, 201);
    for member in [&member_v2, &member_v1] {
        let refused = env.post("/org/notes", member, "a member's note").await;
        assert_eq!(refused.status, 403, "the admin-only policy refuses a member: {refused:?}");
        assert_eq!(refused.json()["code"], "42501", "{refused:?}");
        assert!(refused.json()["error"].as_str().unwrap().contains("row-level security"), "{refused:?}");
    }
    for reader in [&admin_v2, &member_v2, &admin_v1, &member_v1] {
        assert_eq!(env.bodies("/org/notes", reader).await, ["plan (v2 admin)", "budget (v1 admin)"]);
    }
    assert_eq!(env.bodies("/org/notes", &other_admin).await, ["Globex's note"]);
    // No active organization: no organization's rows, and nothing to add to.
    let no_org = env.token(BOB, json!({}));
    assert_eq!(env.bodies("/org/notes", &no_org).await, Vec::<String>::new());
    assert_eq!(env.post("/org/notes", &no_org, "orphan").await.status, 403);
}

/// What Postgres sees in `auth.jwt()` is the signed payload, exactly, and
/// the transaction is what PostgREST runs: SET LOCAL ROLE, then set_config.
async fn postgres_sees_the_signed_payload(env: &Env) {
    let claims = env.claims(
        ALICE,
        json!({
            "o": {"id": ACME, "slg": "acmé-ünïcode", "rol": "admin", "per": "read,manage", "fpm": "3"},
            "name": "Zoë Ångström 山田太郎 🚀",
            "quota": 9_007_199_254_740_993_u64,
            "fva": [17, -1],
            "public_metadata": {"tier": "pro", "seats": 25, "tags": ["α", "β"], "beta": true, "manager": null},
        }),
    );
    let token = env.key.mint(&claims);
    let signed_payload = claims.to_string(); // TestKey::mint signs exactly this text
    let before = env.pg.received(env.lang.application()).len();

    let whoami = env.get("/whoami", &token).await;
    assert_eq!(whoami.status, 200, "{whoami:?}");
    let seen = whoami.json();
    assert_eq!(seen["jwt"], claims, "auth.jwt() is the token's payload: {whoami:?}");
    assert_eq!(seen["current_user"], "authenticated");
    assert_eq!(seen["sub"], ALICE);
    assert_eq!(seen["organization_id"], ACME, "the v2 organization, read by the policies' coalesce");
    // Beyond equality of parsed values: integers were not turned into floats
    // on the way (2^53 + 1 has no double), nor names escaped away.
    assert!(whoami.text.contains("\"quota\": 9007199254740993"), "{}", whoami.text);
    assert!(whoami.text.contains(&format!("\"iat\": {}", claims["iat"])), "{}", whoami.text);
    assert!(
        whoami.text.contains("Zoë Ångström 山田太郎 🚀") && whoami.text.contains("acmé-ünïcode"),
        "{}",
        whoami.text
    );

    // The request's statements, as Postgres received them.
    let received = env.pg.received(env.lang.application())[before..].to_vec();
    let sql: Vec<&str> = received.iter().filter_map(|l| sql_of(l)).collect();
    assert_eq!(sql.len(), STATEMENTS_PER_REQUEST, "{received:#?}");
    assert_eq!(sql[0].to_lowercase(), "begin", "{received:#?}");
    assert_eq!(sql[1], "set local role \"authenticated\"", "{received:#?}");
    assert!(sql[2].starts_with("select set_config('request.jwt.claims', $1, true)"), "{received:#?}");
    assert!(sql[3].contains("auth.jwt()"), "{received:#?}");
    assert_eq!(sql[4].to_lowercase(), "commit", "{received:#?}");
    let parameters = format!("DETAIL:  parameters: $1 = '{}'", signed_payload.replace('\'', "''"));
    assert!(
        received.contains(&parameters),
        "request.jwt.claims is the signed payload text, byte for byte: {received:#?}"
    );
}

/// The tokens clerk-introspect refuses, with the HTTP status and reason each
/// must get; none of them may reach the database.
///
/// Returns the claims of the no-`role` and the `service_role` token.
async fn refused_tokens_never_reach_the_database(env: &Env, cases: &[&str]) -> (Value, Value) {
    let other_key = TestKey::rsa("ins_2pOtherInstance00000000000");
    let other_issuer = TestIssuer::start(vec![other_key.clone()]).await.expect("a second issuer");
    let hs256 = {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some(env.key.kid().to_owned());
        let secret = jsonwebtoken::EncodingKey::from_secret(b"a legacy Supabase JWT secret");
        jsonwebtoken::encode(&header, &env.claims(ALICE, json!({})), &secret).unwrap()
    };
    let no_role = env.claims(ALICE, json!({"role": null}));
    let service_role = env.claims(ALICE, json!({"role": "service_role"}));
    let all: Vec<(&str, Option<String>, u16, &str)> = vec![
        ("no role", Some(env.key.mint(&no_role)), 403, "REASON_MISSING_ROLE"),
        ("service_role", Some(env.key.mint(&service_role)), 403, "REASON_ROLE_NOT_ALLOWED"),
        (
            "expired",
            Some(env.key.mint(&{
                let mut c = env.issuer.session_claims(SystemTime::now() - Duration::from_secs(300));
                c["sub"] = json!(ALICE);
                c
            })),
            401,
            "REASON_EXPIRED",
        ),
        (
            "other issuer",
            Some(other_key.mint(&{
                let mut c = other_issuer.session_claims(SystemTime::now());
                c["sub"] = json!(ALICE);
                c
            })),
            401,
            "REASON_UNTRUSTED_ISSUER",
        ),
        ("HS256", Some(hs256), 401, "REASON_ALGORITHM_NOT_ALLOWED"),
        ("no token", None, 401, "REASON_MALFORMED"),
    ];
    let before = env.statements();
    let mut tried = 0;
    for (case, token, status, reason) in all.iter().filter(|c| cases.contains(&c.0)) {
        tried += 1;
        for (method, path, body) in [("GET", "/notes", None), ("POST", "/notes", Some(json!({"body": "sneaky"})))] {
            let answer = env.call(method, path, token.as_deref(), body).await;
            assert_eq!(answer.status, *status, "{case}: {answer:?}");
            let body = answer.json();
            assert_eq!(body["reason"], *reason, "{case}: {answer:?}");
            assert_eq!(answer.header("x-introspect-reason"), *reason, "{case}");
            assert_eq!(answer.header("cache-control"), "no-store", "{case}");
            // The same answer as the ext_authz server's: its status for the
            // reason, its RFC 6750 error, and clerk-introspect's sentence.
            let (http, _, error) = refusal(Reason::from_str_name(reason).unwrap());
            assert_eq!(answer.status, http as u16, "{case}: the ext_authz status for {reason}");
            let www = answer.header("www-authenticate");
            assert!(www.starts_with(&format!("Bearer error=\"{error}\", error_description=\"")), "{case}: {www}");
            if let Some(token) = token {
                let (verdict, message) = env.verdict(token).await;
                assert_eq!(verdict.as_str_name(), *reason, "{case}");
                // (Its numbers may have moved on by a second: "expired 240 s ago".)
                let digits = |s: &str| {
                    let mut out = String::new();
                    for c in s.chars() {
                        if !(c.is_ascii_digit() && out.ends_with('#')) {
                            out.push(if c.is_ascii_digit() { '#' } else { c });
                        }
                    }
                    out
                };
                let sentence = body["message"].as_str().unwrap();
                assert_eq!(digits(sentence), digits(&message), "{case}: clerk-introspect's sentence, unchanged");
            }
        }
    }
    assert_eq!(tried, cases.len(), "every case named exists");
    assert_eq!(
        env.statements(),
        before,
        "a refused request sent Postgres nothing: {:#?}",
        env.pg.received(env.lang.application())
    );
    // The count is live: one accepted request right after moves it by its
    // five statements, no more (nothing of the refused ones arrived late).
    let valid = env.get("/notes", &env.token(ALICE, json!({}))).await;
    assert_eq!(valid.status, 200, "{valid:?}");
    assert_eq!(env.statements(), before + STATEMENTS_PER_REQUEST, "{:#?}", env.pg.received(env.lang.application()));
    assert!(!env.pg.log_text().contains("sneaky"), "no refused write reached Postgres");
    (no_role, service_role)
}

/// What the refusals of `no_role` and `service_role` (the claims of those
/// tokens, Alice's) prevented, shown by running the same claims straight
/// against Postgres the way PostgREST would have, with Alice and Bob each
/// owning notes: without `role` the request runs as `anon`, so Alice silently
/// sees nothing and cannot write; `service_role` bypasses row-level security:
/// everyone's rows, and writes of anyone's.
fn without_the_refusal(pg: &Postgres, no_role: &Value, service_role: &Value) {
    assert!(no_role.get("role").is_none() && service_role["role"] == "service_role");
    let who_and_what = "select current_user || '|' || (auth.jwt()->>'sub') || '|' \
                        || coalesce(string_agg(body, ',' order by id), '') from public.notes";
    // Control: the same claims with role authenticated see Alice's rows only.
    let alices = pg.as_postgrest("authenticated", no_role, who_and_what).unwrap();
    let alices = alices.strip_prefix(&format!("authenticated|{ALICE}|")).expect(&alices).to_owned();
    assert!(!alices.is_empty() && !alices.contains("Bob"), "{alices}");

    // No role: PostgREST's anon role. Postgres knows it is Alice, yet she
    // sees nothing, with no error...
    assert_eq!(pg.as_postgrest("anon", no_role, who_and_what).unwrap(), format!("anon|{ALICE}|"));
    // ...and her writes fail on row-level security.
    let write = pg.as_postgrest("anon", no_role, "insert into public.notes (body) values ('lost')");
    assert!(write.as_ref().is_err_and(|e| e.contains("new row violates row-level security policy")), "{write:?}");

    // service_role: every user's rows...
    let everyone = pg.as_postgrest("service_role", service_role, who_and_what).unwrap();
    let everyone = everyone.strip_prefix(&format!("service_role|{ALICE}|")).expect(&everyone).to_owned();
    assert!(everyone.starts_with(&alices) && everyone.contains("Bob's note"), "{everyone}");
    // ...and no insert check either: a row for Bob, written with Alice's
    // claims, which as authenticated she cannot write.
    let forge = format!("insert into public.notes (user_id, body) values ('{BOB}', 'forged')");
    let refused = pg.as_postgrest("authenticated", service_role, &forge);
    assert!(refused.as_ref().is_err_and(|e| e.contains("row-level security")), "{refused:?}");
    pg.as_postgrest("service_role", service_role, &forge).expect("service_role writes any row");
}

// === Tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_service_keeps_users_and_organizations_apart() {
    let env = Env::start(Lang::Python).await;
    users_see_only_their_own_rows(&env).await;
    only_org_admins_write_and_members_read(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_service_hands_postgres_the_signed_payload() {
    let env = Env::start(Lang::Python).await;
    postgres_sees_the_signed_payload(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_service_refuses_before_the_database_what_would_have_run_as_anon_or_bypassed_rls() {
    let env = Env::start(Lang::Python).await;
    for (user, body) in [(ALICE, "Alice's note"), (BOB, "Bob's note")] {
        assert_eq!(env.post("/notes", &env.token(user, json!({})), body).await.status, 201);
    }
    let cases = ["no role", "service_role", "expired", "other issuer", "HS256", "no token"];
    let (no_role, service_role) = refused_tokens_never_reach_the_database(&env, &cases).await;
    tokio::task::block_in_place(|| without_the_refusal(&env.pg, &no_role, &service_role));

    // clerk-introspect gone: no decision, so 503 (as the ext_authz server
    // answers unavailable keys), and still nothing reaches the database.
    let mut env = env;
    env.server.stop();
    let before = env.statements();
    let answer = env.get("/notes", &env.token(ALICE, json!({}))).await;
    assert_eq!(answer.status, 503, "{answer:?}");
    assert_eq!(answer.json()["reason"], "UNAVAILABLE", "{answer:?}");
    assert_eq!((answer.header("x-introspect-reason"), answer.header("retry-after")), ("UNAVAILABLE", "5"));
    assert_eq!(env.statements(), before, "{:#?}", env.pg.received(env.lang.application()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_service_keeps_users_apart_forwards_the_payload_and_refuses_before_the_database() {
    let env = Env::start(Lang::Node).await;
    users_see_only_their_own_rows(&env).await;
    only_org_admins_write_and_members_read(&env).await;
    postgres_sees_the_signed_payload(&env).await;
    refused_tokens_never_reach_the_database(&env, &["no role", "service_role", "expired", "no token"]).await;
}

/// Supabase's `auth.uid()` casts `sub` to uuid: it fails on a Clerk user id,
/// where `auth.jwt()->>'sub'` (what schema.sql's policies use) works.
#[test]
fn auth_uid_fails_on_a_clerk_id_where_auth_jwt_sub_works() {
    let pg = Postgres::start();
    let clerk = json!({"sub": ALICE});
    let uid = pg.as_postgrest("authenticated", &clerk, "select auth.uid()");
    assert!(
        uid.as_ref().is_err_and(|e| e.contains(&format!("invalid input syntax for type uuid: \"{ALICE}\""))),
        "{uid:?}"
    );
    assert_eq!(pg.as_postgrest("authenticated", &clerk, "select auth.jwt()->>'sub'").unwrap(), ALICE);
    // The function itself is right: a Supabase Auth user's uuid passes.
    let supabase = json!({"sub": "6f1c2a4e-9b1d-4c55-8e2f-0a7b3c9d1e42"});
    assert_eq!(pg.as_postgrest("authenticated", &supabase, "select auth.uid()").unwrap(), supabase["sub"]);
    // And the RLS policies, written with auth.jwt(), work for the Clerk id.
    pg.as_postgrest("authenticated", &clerk, "insert into public.notes (body) values ('mine')").expect("insert");
    assert_eq!(pg.as_postgrest("authenticated", &clerk, "select body from public.notes").unwrap(), "mine");
}

/// What `docs/supabase.md` tells a newcomer to run works against
/// `clerk-introspect demo`: the token line demo prints can be pasted into a
/// shell, and the Python service, started as the docs show, answers the
/// docs' requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_commands_work_against_demo() {
    for command in ["cargo run --release -- demo", DOCS_SERVICE, DOCS_POST, DOCS_LIST, DOCS_WHOAMI, DOCS_NO_TOKEN] {
        let docs = fs::read_to_string(repo().join(DOCS)).expect("read the docs");
        assert!(docs.lines().any(|l| l.trim() == command), "{DOCS} no longer shows the tested command:\n  {command}");
    }
    tools();
    let pg = tokio::task::block_in_place(Postgres::start);
    let demo = tokio::task::block_in_place(Demo::start);

    // The token, as a shell has it after the pasted line.
    let out = Command::new("bash")
        .args(["-c", &format!("{}\nprintf '%s' \"$TOKEN\"", demo.export_line)])
        .output()
        .expect("run bash");
    let token = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(out.status.success() && token.split('.').count() == 3, "the pasted line gives no token: {out:?}");

    let service = DOCS_SERVICE
        .trim_end_matches(" &")
        .replace("target/tools/venv/bin/python3", &tools().join("python3").display().to_string())
        .replace("localhost:50051", &demo.addr)
        .replace("postgresql:///clerk_supabase_example", &pg.conninfo())
        .replace("127.0.0.1:8080", "127.0.0.1:0");
    let mut words = service.split(' ');
    let mut command = Command::new(words.next().unwrap());
    command.args(words).args(DEADLINE).current_dir(repo());
    let service = tokio::task::block_in_place(|| Service::spawn(command, "the docs' Python service"));
    let http = reqwest::Client::new();
    let call = |method: &str, path: &str, token: Option<&str>, body: Option<&str>| {
        let mut request = http.request(method.parse().unwrap(), format!("{}{path}", service.url));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        if let Some(body) = body {
            request = request.body(body.to_owned());
        }
        async move {
            let response = request.send().await.expect("the service answers");
            (response.status().as_u16(), response.text().await.unwrap())
        }
    };
    let (status, added) = call("POST", "/notes", Some(&token), Some(r#"{"body": "my first note"}"#)).await;
    assert_eq!(status, 201, "{added}");
    let (status, notes) = call("GET", "/notes", Some(&token), None).await;
    assert_eq!(status, 200, "{notes}");
    let notes: Value = serde_json::from_str(&notes).unwrap();
    assert_eq!(notes, json!([{"id": 1, "user_id": DEMO_USER, "body": "my first note"}]));
    let (status, whoami) = call("GET", "/whoami", Some(&token), None).await;
    let whoami: Value = serde_json::from_str(&whoami).unwrap();
    assert_eq!((status, &whoami["current_user"], &whoami["sub"]), (200, &json!("authenticated"), &json!(DEMO_USER)));
    let before = pg.statement_count("supabase-example-python");
    let (status, refused) = call("GET", "/notes", None, None).await;
    assert_eq!(status, 401, "{refused}");
    assert!(refused.contains("REASON_MALFORMED"), "{refused}");
    assert_eq!(pg.statement_count("supabase-example-python"), before, "Postgres received nothing");
}

/// `clerk-introspect demo`, serving until dropped.
struct Demo {
    child: Child,
    addr: String,
    export_line: String,
}

impl Demo {
    fn start() -> Demo {
        let mut child = Command::new(external::BIN)
            .args(["demo", "--listen", "127.0.0.1:0"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start clerk-introspect demo");
        let (tx, rx) = mpsc::channel();
        let out = BufReader::new(child.stdout.take().unwrap());
        std::thread::spawn(move || {
            for line in out.lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let (mut addr, mut export_line, mut seen) = (None, None, Vec::new());
        let deadline = Instant::now() + START_TIMEOUT;
        while addr.is_none() || export_line.is_none() {
            let Ok(line) = rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) else {
                let _ = child.kill();
                let _ = child.wait();
                panic!("demo did not print its address and an `export TOKEN=` line: {seen:#?}");
            };
            if let Some(rest) = line.strip_prefix("The server keeps running at ") {
                addr = rest.split(' ').next().map(str::to_owned);
            }
            if line.trim_start().starts_with("export TOKEN='") {
                // A line of its own: what a person copies is the whole line.
                export_line = Some(line.trim().to_owned());
            }
            seen.push(line);
        }
        Demo { child, addr: addr.unwrap(), export_line: export_line.unwrap() }
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_missing_postgres_fails_with_what_to_install() {
    let empty = TempDir::new(None);
    let error = find_bindir(std::slice::from_ref(&empty.0)).unwrap_err();
    assert!(error.contains("apt-get install postgresql") && error.contains("PG_BINDIR"), "{error}");
    assert!(error.contains(&empty.0.display().to_string()), "names where it looked: {error}");
}
