//! Test harness: the real server on `127.0.0.1:0` against a real HTTP test
//! issuer on loopback, called through real gRPC clients. Nothing sleeps to
//! wait for a server: the listener is bound before the server starts, and
//! readiness is polled through `grpc.health.v1`.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use clerk_introspect::app::Deps;
use clerk_introspect::clock::{Clock, ManualClock};
use clerk_introspect::config::{Config, IssuerConfig};
use clerk_introspect::keys::RefreshSettings;
use clerk_introspect::pb::token_introspection_client::TokenIntrospectionClient;
use clerk_introspect::pb::{Expectations, GetClaimsRequest, GetClaimsResponse, Reason, VerifyRequest, VerifyResponse};
use clerk_introspect::test_issuer::TestIssuer;
use clerk_introspect::{App, ServeError};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// Longest wait for a readiness change before a test fails.
pub const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// Interval between readiness polls.
pub const POLL: Duration = Duration::from_millis(10);
/// The service name of TokenIntrospection in health checks.
pub const SERVICE: &str = "introspect.v1.TokenIntrospection";

/// Fast retry timing so that outage tests finish quickly.
pub fn fast_refresh() -> RefreshSettings {
    RefreshSettings {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        ..RefreshSettings::default()
    }
}

/// An issuer config for a test issuer, with fast retries.
pub fn issuer_config(issuer: &TestIssuer) -> IssuerConfig {
    let mut c = IssuerConfig::new(issuer.issuer());
    c.refresh = fast_refresh();
    c
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub channel: Channel,
    pub clock: Arc<ManualClock>,
    pub app: App,
    stop: CancellationToken,
    task: JoinHandle<Result<(), ServeError>>,
}

impl Server {
    /// Starts the server trusting `issuers`, with a manual clock at the
    /// current time.
    pub async fn start(issuers: Vec<IssuerConfig>) -> Server {
        Self::start_with(Config::new(issuers)).await
    }

    /// Starts the server with `config` and a manual clock.
    pub async fn start_with(config: Config) -> Server {
        let clock = Arc::new(ManualClock::starting_now());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let app = App::start(&config, Deps { clock: clock.clone(), ..Deps::default() }).expect("app starts");
        let stop = CancellationToken::new();
        let task = tokio::spawn(clerk_introspect::serve(
            listener,
            app.clone(),
            clerk_introspect::ServeOptions::default(),
            stop.clone().cancelled_owned(),
        ));
        let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
        Server { addr, channel, clock, app, stop, task }
    }

    /// Starts the server with `config` (which must set `webhook.listen`) and
    /// its Clerk webhook endpoint wired to the app's revocation service, as
    /// `serve` does; also returns the webhook's address.
    pub async fn start_with_webhook(config: Config) -> (Server, SocketAddr) {
        let clock = Arc::new(ManualClock::starting_now());
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().unwrap();
        let hook = TcpListener::bind(config.webhook.listen.expect("a webhook address")).await.unwrap();
        let hook_addr = hook.local_addr().unwrap();
        let app = App::start(&config, Deps { clock: clock.clone(), ..Deps::default() }).expect("app starts");
        let options = clerk_introspect::ServeOptions {
            webhook: Some(clerk_introspect::server::webhook::WebhookListener {
                listener: hook,
                record: app.revocation.clone(),
            }),
            ..clerk_introspect::ServeOptions::default()
        };
        let stop = CancellationToken::new();
        let task =
            tokio::spawn(clerk_introspect::serve(listener, app.clone(), options, stop.clone().cancelled_owned()));
        let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect_lazy();
        (Server { addr, channel, clock, app, stop, task }, hook_addr)
    }

    /// Starts the server trusting one test issuer, and waits until SERVING.
    pub async fn ready(issuer: &TestIssuer) -> Server {
        Self::ready_with(vec![issuer_config(issuer)]).await
    }

    /// Starts the server trusting `issuers`, and waits until SERVING.
    pub async fn ready_with(issuers: Vec<IssuerConfig>) -> Server {
        let server = Self::start(issuers).await;
        server.wait_for(ServingStatus::Serving).await;
        server
    }

    pub fn now(&self) -> SystemTime {
        self.clock.now()
    }

    pub fn client(&self) -> TokenIntrospectionClient<Channel> {
        TokenIntrospectionClient::new(self.channel.clone())
    }

    pub async fn health(&self, service: &str) -> Result<ServingStatus, tonic::Status> {
        let answer = HealthClient::new(self.channel.clone())
            .check(HealthCheckRequest { service: service.to_owned() })
            .await?
            .into_inner();
        Ok(ServingStatus::try_from(answer.status).unwrap_or(ServingStatus::Unknown))
    }

    /// Polls health (overall and for the service) until it reports `want`.
    pub async fn wait_for(&self, want: ServingStatus) {
        let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
        loop {
            let overall = self.health("").await.ok();
            let service = self.health(SERVICE).await.ok();
            if overall == Some(want) && service == Some(want) {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "health did not become {want:?} (now {overall:?}/{service:?})"
            );
            tokio::time::sleep(POLL).await;
        }
    }

    pub async fn verify_with(
        &self,
        token: &str,
        expect: Option<Expectations>,
    ) -> Result<VerifyResponse, tonic::Status> {
        self.client().verify(VerifyRequest { token: token.to_owned(), expect }).await.map(|r| r.into_inner())
    }

    /// Verify, which must answer (not fail).
    pub async fn verify(&self, token: &str) -> VerifyResponse {
        self.verify_with(token, None).await.expect("Verify answers")
    }

    /// The reason Verify gives.
    pub async fn reason(&self, token: &str) -> Reason {
        Reason::try_from(self.verify(token).await.reason).unwrap()
    }

    pub async fn get_claims(&self, token: &str) -> Result<GetClaimsResponse, tonic::Status> {
        self.client()
            .get_claims(GetClaimsRequest { token: token.to_owned(), expect: None })
            .await
            .map(|r| r.into_inner())
    }

    /// Starts the drain and waits for the server to stop.
    pub async fn stop(self) -> Result<(), ServeError> {
        self.stop.cancel();
        self.task.await.expect("server task")
    }

    /// Starts the drain without waiting.
    pub fn begin_stop(&self) {
        self.stop.cancel();
    }

    pub fn into_task(self) -> JoinHandle<Result<(), ServeError>> {
        self.task
    }
}

/// One `grpc.health.v1.Health/Check` for service `""` over a raw HTTP/2
/// connection (no reconnects behind the test's back, unlike a `Channel`);
/// the HTTP status of the answer.
pub async fn raw_health_check(client: &mut h2::client::SendRequest<bytes::Bytes>, addr: SocketAddr) -> u16 {
    let mut ready = client.clone().ready().await.expect("the connection is still open");
    let request = http::Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (response, mut body) = ready.send_request(request, false).unwrap();
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true).unwrap();
    *client = ready;
    response.await.expect("an answer on the same connection").status().as_u16()
}

/// An HTTP/2 connection to `addr` (no reconnects behind the test's back).
pub async fn h2_connect(
    addr: std::net::SocketAddr,
) -> (h2::client::SendRequest<bytes::Bytes>, tokio::task::JoinHandle<Result<(), h2::Error>>) {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    (client, tokio::spawn(connection))
}

/// Starts a Verify call whose request never comes: the connection is busy
/// while the returned stream is held.
pub async fn hold_a_call(
    client: &mut h2::client::SendRequest<bytes::Bytes>,
    addr: std::net::SocketAddr,
) -> (h2::client::ResponseFuture, h2::SendStream<bytes::Bytes>) {
    let mut ready = client.clone().ready().await.expect("the connection is open");
    let request = http::Request::post(format!("http://{addr}/introspect.v1.TokenIntrospection/Verify"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let held = ready.send_request(request, false).unwrap();
    *client = ready;
    held
}

/// Runs an HTTP/2 client over `stream`: one Health/Check, `idle`, then
/// another on the same connection, which must still be open.
pub async fn still_served_after_idle<S>(stream: S, addr: SocketAddr, idle: Duration)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut client, connection) = h2::client::handshake(stream).await.unwrap();
    let connection = tokio::spawn(connection);
    assert_eq!(raw_health_check(&mut client, addr).await, 200);
    tokio::time::sleep(idle).await;
    assert_eq!(raw_health_check(&mut client, addr).await, 200);
    assert!(!connection.is_finished(), "the connection was closed while idle");
}

/// Reads until the server closes the connection (end of stream or an
/// error): true if it did within 10 s (a guard against a hang, not a timing
/// assertion).
pub async fn closed_by_server(mut stream: impl tokio::io::AsyncRead + Unpin) -> bool {
    use tokio::io::AsyncReadExt as _;
    let mut buf = [0u8; 256];
    let read_to_end = async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                return;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read_to_end).await.is_ok()
}
