//! Verify's gRPC framing (tonic's unary path with `VerifyCodec`) over a raw
//! HTTP/2 connection: what tonic clients never send (split and doubled
//! messages, compression) gets tonic's statuses, and a second request
//! message is refused.

use std::net::SocketAddr;

use bytes::Bytes;
use clerk_introspect::pb::VerifyRequest;
use clerk_introspect::service::introspect::MORE_THAN_ONE_MESSAGE;
use clerk_introspect::test_issuer::{TestIssuer, TestKey};
use http::HeaderMap;
use prost::Message as _;

use crate::support::Server;

/// What came back: the response headers, the body's bytes, the trailers.
struct Answer {
    headers: HeaderMap,
    data: Vec<u8>,
    trailers: Option<HeaderMap>,
}

impl Answer {
    /// The gRPC status: from the trailers, or from the headers of a
    /// trailers-only answer.
    fn status(&self) -> (String, String) {
        let map = self.trailers.as_ref().unwrap_or(&self.headers);
        let text = |name: &str| map.get(name).map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
        (text("grpc-status"), percent_decoded(&text("grpc-message")))
    }
}

/// `grpc-message` is percent-encoded on the wire.
fn percent_decoded(s: &str) -> String {
    let mut out = Vec::new();
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        match b {
            b'%' => {
                let hex: String = bytes.by_ref().take(2).map(char::from).collect();
                out.push(u8::from_str_radix(&hex, 16).unwrap());
            }
            b => out.push(b),
        }
    }
    String::from_utf8(out).unwrap()
}

/// One Verify call whose body is sent as the given DATA frames.
async fn call(addr: SocketAddr, extra: &[(&'static str, &'static str)], frames: Vec<Vec<u8>>) -> Answer {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    let mut client = client.ready().await.unwrap();
    let mut request = http::Request::post(format!("http://{addr}/introspect.v1.TokenIntrospection/Verify"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    for (name, value) in extra {
        request = request.header(*name, *value);
    }
    let (response, mut send) = client.send_request(request.body(()).unwrap(), false).unwrap();
    if frames.is_empty() {
        // No message at all: the stream ends empty.
        send.send_data(Bytes::new(), true).unwrap();
    }
    let last = frames.len().saturating_sub(1);
    for (i, frame) in frames.into_iter().enumerate() {
        send.send_data(Bytes::from(frame), i == last).unwrap();
    }
    let (parts, mut body) = response.await.unwrap().into_parts();
    let mut data = Vec::new();
    while let Some(chunk) = body.data().await {
        let chunk = chunk.unwrap();
        body.flow_control().release_capacity(chunk.len()).unwrap();
        data.extend_from_slice(&chunk);
    }
    let trailers = body.trailers().await.unwrap();
    Answer { headers: parts.headers, data, trailers }
}

fn framed(flag: u8, message: &[u8]) -> Vec<u8> {
    let mut v = vec![flag];
    v.extend_from_slice(&(message.len() as u32).to_be_bytes());
    v.extend_from_slice(message);
    v
}

#[tokio::test]
async fn verify_reads_its_own_frames_and_refuses_what_tonic_refuses() {
    let key = TestKey::rsa("ins_test");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let server = Server::ready(&issuer).await;
    let token = key.mint(&issuer.session_claims(server.now()));
    let request = framed(0, &VerifyRequest { token, expect: None }.encode_to_vec());

    // One message in three DATA frames: a valid answer, then OK trailers.
    let split = vec![request[..3].to_vec(), request[3..100].to_vec(), request[100..].to_vec()];
    let answer = call(server.addr, &[], split).await;
    assert_eq!(answer.headers["content-type"], "application/grpc");
    assert_eq!(answer.status(), ("0".into(), String::new()));
    assert_eq!(u32::from_be_bytes(answer.data[1..5].try_into().unwrap()) as usize, answer.data.len() - 5);
    let response = clerk_introspect::pb::VerifyResponse::decode(&answer.data[5..]).unwrap();
    assert!(response.valid, "{response:?}");

    // Statuses in a trailers-only answer, no message.
    let refused = |answer: Answer| {
        assert!(answer.data.is_empty());
        answer.status()
    };
    assert_eq!(
        refused(call(server.addr, &[], vec![[request.clone(), request.clone()].concat()]).await),
        ("13".into(), MORE_THAN_ONE_MESSAGE.into())
    );
    assert_eq!(refused(call(server.addr, &[], vec![]).await), ("13".into(), "Missing request message.".into()));
    let (code, message) = refused(call(server.addr, &[], vec![framed(1, b"\x0a\x01a")]).await);
    assert_eq!((code.as_str(), message.contains("compressed-flag")), ("13", true), "{message}");
    let gzip = call(server.addr, &[("grpc-encoding", "gzip")], vec![request.clone()]).await;
    assert_eq!(gzip.headers["grpc-accept-encoding"], "identity");
    assert_eq!(refused(gzip), ("12".into(), "Content is compressed with `gzip` which isn't supported".into()));
}

/// One raw HTTP/2 frame.
fn raw_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

#[tokio::test]
async fn a_client_that_makes_the_server_reset_stream_after_stream_gets_goaway() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    const HEADERS: u8 = 0x1;
    const RST_STREAM: u8 = 0x3;
    const GOAWAY: u8 = 0x7;
    const WINDOW_UPDATE: u8 = 0x8;
    const ENHANCE_YOUR_CALM: u32 = 0xb;
    let key = TestKey::rsa("ins_test");
    let issuer = TestIssuer::start(vec![key.clone()]).await.unwrap();
    let server = Server::ready(&issuer).await;

    // A Health/Check request's header block (HPACK: indexed :method POST
    // and :scheme http, literal :path, :authority, content-type and te).
    let mut block = vec![0x83, 0x86];
    for (name_index, value) in [(4u8, "/grpc.health.v1.Health/Check"), (1, "x")] {
        block.extend_from_slice(&[name_index, value.len() as u8]);
        block.extend_from_slice(value.as_bytes());
    }
    block.extend_from_slice(&[0x0f, 31 - 15, 16]);
    block.extend_from_slice(b"application/grpc");
    block.extend_from_slice(b"\x00\x02te\x08trailers");

    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    tcp.write_all(&raw_frame(0x4, 0, 0, &[])).await.unwrap();
    let (mut read, mut write) = tcp.into_split();
    // Each stream: a request, then a WINDOW_UPDATE that overflows its
    // window, a stream error the server answers with RST_STREAM.
    let attack = tokio::spawn(async move {
        for i in 0..2 * clerk_introspect::server::connection::MAX_LOCAL_ERROR_RESETS as u32 {
            let stream = 2 * i + 1;
            let mut frames = raw_frame(HEADERS, 0x4, stream, &block);
            frames.extend(raw_frame(WINDOW_UPDATE, 0, stream, &0x7fff_ffffu32.to_be_bytes()));
            if write.write_all(&frames).await.is_err() {
                return;
            }
        }
        // Keep the write half open: only the server may end this.
        std::future::pending::<()>().await;
    });

    let mut resets = 0;
    let goaway = tokio::time::timeout(std::time::Duration::from_secs(20), async {
        let mut header = [0u8; 9];
        loop {
            if read.read_exact(&mut header).await.is_err() {
                return None;
            }
            let len = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
            let mut payload = vec![0u8; len];
            read.read_exact(&mut payload).await.unwrap();
            match header[3] {
                RST_STREAM => resets += 1,
                GOAWAY => return Some(u32::from_be_bytes(payload[4..8].try_into().unwrap())),
                _ => {}
            }
        }
    })
    .await
    .expect("the server answers (a guard against a hang)");
    attack.abort();
    assert_eq!(goaway, Some(ENHANCE_YOUR_CALM), "after {resets} resets");
    assert!(
        resets <= clerk_introspect::server::connection::MAX_LOCAL_ERROR_RESETS + 1,
        "{resets} resets before the GOAWAY"
    );
    server.stop().await.unwrap();
}
