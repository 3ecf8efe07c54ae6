//! A keep-alive HTTP/1.1 client (hyper), in the clear or over TLS, with a bearer token or
//! none: the in-process load generator of the served benches, and how they fund accounts.

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Request, header};
use serde_json::{Value, json};
use std::net::SocketAddr;
use std::time::Duration;

/// One keep-alive HTTP/1.1 connection.
pub struct Connection {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    host: String,
    authorization: Option<String>,
}

/// How a connection reaches a node: TLS trusting the node's certificate, and a token.
#[derive(Clone, Default)]
pub struct Access {
    /// TLS towards `localhost`, or `None` for cleartext.
    pub tls: Option<tokio_rustls::TlsConnector>,
    /// A bearer token sent with every request.
    pub token: Option<String>,
}

impl Connection {
    /// Connects to `address` (no request is sent yet).
    pub async fn open(address: SocketAddr, access: &Access) -> Connection {
        let stream = tokio::net::TcpStream::connect(address).await.expect("connect to the node");
        stream.set_nodelay(true).expect("TCP_NODELAY");
        let sender = match &access.tls {
            None => {
                let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .expect("HTTP/1.1 handshake");
                tokio::spawn(connection);
                sender
            }
            Some(tls) => {
                let name = rustls::pki_types::ServerName::try_from("localhost").expect("a DNS name");
                let stream = tls.connect(name, stream).await.expect("TLS handshake");
                let (sender, connection) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
                    .await
                    .expect("HTTP/1.1 handshake");
                tokio::spawn(connection);
                sender
            }
        };
        let authorization = access.token.as_ref().map(|t| format!("Bearer {t}"));
        Connection { sender, host: address.to_string(), authorization }
    }

    fn request(&self, builder: hyper::http::request::Builder) -> hyper::http::request::Builder {
        let builder = builder.header(header::HOST, &self.host);
        match &self.authorization {
            Some(token) => builder.header(header::AUTHORIZATION, token),
            None => builder,
        }
    }

    /// GETs `path`: its status.
    pub async fn get(&mut self, path: &str) -> u16 {
        self.sender.ready().await.expect("connection ready");
        let request = self.request(Request::get(path)).body(Full::new(Bytes::new())).expect("a request");
        let response = self.sender.send_request(request).await.expect("an answer");
        let status = response.status().as_u16();
        response.into_body().collect().await.expect("the body");
        status
    }

    /// POSTs `body` to `path`: (status, body as JSON or `Null`, `Location`).
    pub async fn post(&mut self, path: &str, body: Value) -> (u16, Value, Option<String>) {
        self.try_post(path, body).await.expect("an answer")
    }

    /// [`Connection::post`], or the error of a connection the node closed or broke.
    pub async fn try_post(&mut self, path: &str, body: Value) -> Result<(u16, Value, Option<String>), hyper::Error> {
        self.sender.ready().await?;
        let request = self
            .request(Request::post(path))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.to_string())))
            .expect("a request");
        let response = self.sender.send_request(request).await?;
        let status = response.status().as_u16();
        let location = response.headers().get(header::LOCATION).map(|l| l.to_str().unwrap_or_default().to_string());
        let bytes = response.into_body().collect().await?.to_bytes();
        Ok((status, serde_json::from_slice(&bytes).unwrap_or(Value::Null), location))
    }
}

/// `count` connections to `address`, once it answers `/readyz` (the runtimes open after the
/// listener binds).
pub async fn connect(address: SocketAddr, access: &Access, count: usize) -> Vec<Connection> {
    let mut connections = Vec::with_capacity(count);
    for _ in 0..count {
        connections.push(Connection::open(address, access).await);
    }
    while connections[0].get("/readyz").await != 200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    connections
}

/// Opens and tops up the accounts `sub-0` .. `sub-<subscribers - 1>` with far more money
/// than any run spends, spread over `connections` (each opens every n-th account in turn, so
/// the node's workers are busy in parallel).
pub async fn fund(connections: Vec<Connection>, subscribers: usize) -> Vec<Connection> {
    let width = connections.len();
    let tasks: Vec<_> = connections
        .into_iter()
        .enumerate()
        .map(|(c, mut connection)| {
            tokio::spawn(async move {
                for s in (c..subscribers).step_by(width) {
                    let path = format!("/v1/commands/account/sub-{s}");
                    let open = json!({"id": "open", "command": {"open": {"currency": "EUR"}}});
                    let top_up = json!({"id": "top-up", "command": {"top-up": {"amount": {"minor_units": 1_000_000_000_000_000i64, "currency": "EUR"}}}});
                    for body in [open, top_up] {
                        let (status, answer, _) = connection.post(&path, body).await;
                        assert_eq!(status, 200, "funding sub-{s}: {answer}");
                    }
                }
                connection
            })
        })
        .collect();
    let mut back = Vec::with_capacity(width);
    for task in tasks {
        back.push(task.await.expect("a funding task panicked"));
    }
    back
}
