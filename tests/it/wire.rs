//! Verify's own gRPC framing (`service::unary`) over a raw HTTP/2
//! connection: what tonic clients never send (split and doubled messages,
//! compression) gets tonic's statuses.

use std::net::SocketAddr;

use bytes::Bytes;
use clerk_introspect::pb::VerifyRequest;
use clerk_introspect::service::unary::{MISSING_MESSAGE, MORE_THAN_ONE_MESSAGE};
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
    assert_eq!(refused(call(server.addr, &[], vec![]).await), ("13".into(), MISSING_MESSAGE.into()));
    let (code, message) = refused(call(server.addr, &[], vec![framed(1, b"\x0a\x01a")]).await);
    assert_eq!((code.as_str(), message.contains("compressed-flag")), ("13", true), "{message}");
    let gzip = call(server.addr, &[("grpc-encoding", "gzip")], vec![request.clone()]).await;
    assert_eq!(gzip.headers["grpc-accept-encoding"], "identity");
    assert_eq!(refused(gzip), ("12".into(), "Content is compressed with `gzip` which isn't supported".into()));
}
