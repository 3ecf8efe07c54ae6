//! Who gets in: HTTPS and mutual TLS (curl, and a kept-alive rustls client across a certificate
//! reload), OAuth2 bearer access tokens with a scope per route (tokens signed here by issuer
//! keys generated here), and a node that refuses to listen beyond loopback unprotected.

use crate::serve::{Server, command, curl_available};
use crate::{output, tollgate};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

const BASE64URL: base64::engine::GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

/// The keys of an NRF issuing tokens: ES256 (published as a JWKS with a `kid`) and RS256
/// (published as a PEM public key).
struct Nrf {
    es256: KeyPair,
    rs256: rsa::RsaPrivateKey,
}

impl Nrf {
    fn new() -> Nrf {
        tollgate_serve::auth::install_crypto();
        Nrf {
            es256: KeyPair::generate().unwrap(),
            rs256: rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048).unwrap(),
        }
    }

    /// Writes the public keys into `dir`: `nrf.jwks` and `nrf-rsa.pem`.
    fn publish(&self, dir: &Path) {
        // An uncompressed P-256 point: 0x04, x, y.
        let point = self.es256.public_key_raw();
        let (x, y) = point[1..].split_at(32);
        let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "nrf-1", "use": "sig",
            "x": base64::Engine::encode(&BASE64URL, x), "y": base64::Engine::encode(&BASE64URL, y)}]});
        std::fs::write(dir.join("nrf.jwks"), jwks.to_string()).unwrap();
        let public = rsa::pkcs8::EncodePublicKey::to_public_key_pem(&self.rs256.to_public_key(), Default::default());
        std::fs::write(dir.join("nrf-rsa.pem"), public.unwrap()).unwrap();
    }

    fn sign(&self, claims: &Value) -> String {
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some("nrf-1".into());
        encode(&header, claims, &EncodingKey::from_ec_pem(self.es256.serialize_pem().as_bytes()).unwrap()).unwrap()
    }

    fn sign_rs256(&self, claims: &Value) -> String {
        let pem = rsa::pkcs8::EncodePrivateKey::to_pkcs8_pem(&self.rs256, Default::default()).unwrap();
        let key = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
        encode(&Header::new(Algorithm::RS256), claims, &key).unwrap()
    }
}

/// Access token claims as TS 29.510 has them, granting `scope`, valid for five minutes.
fn claims(scope: &str) -> Value {
    json!({"iss": "nrf.operator.example", "sub": "smf-instance-7", "aud": ["CHF"], "scope": scope,
        "iat": now(), "exp": now() + 300})
}

/// The test node's manifest with `[auth]` trusting `nrf`'s published keys.
fn manifest_with_auth(dir: &Path, extra: &str) -> String {
    let path = crate::node::manifest(dir);
    let text = std::fs::read_to_string(&path).unwrap();
    let auth = format!(
        "[auth]\nissuers = [\"nrf.operator.example\"]\naudience = [\"CHF\", \"chf-instance-1\"]\nkeys = [\"nrf.jwks\", \"nrf-rsa.pem\"]\nleeway_secs = 5\n{extra}\n"
    );
    std::fs::write(&path, format!("{auth}{text}")).unwrap();
    path
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[test]
fn tokens_are_checked_for_signature_issuer_audience_validity_and_scope() {
    let dir = tempfile::tempdir().unwrap();
    let nrf = Nrf::new();
    nrf.publish(dir.path());
    let manifest = manifest_with_auth(dir.path(), "");
    let store = format!("file:{}", dir.path().join("log").display());
    let server = Server::start(&manifest, &store, &[]);
    let admission = json!({"id": "a1", "subscriber": "alice", "offer": "voice", "units": 1}).to_string();
    let admit = |token: Option<&str>| {
        let header = token.map(bearer);
        let headers: Vec<(&str, &str)> = header.iter().map(|h| ("authorization", h.as_str())).collect();
        server.send("POST", "/v1/admissions", Some(&admission), &headers)
    };

    // Health and readiness stay open; metrics too unless the manifest protects them.
    for path in ["/healthz", "/readyz", "/metrics"] {
        assert_eq!(server.get(path).status, 200, "{path}");
    }
    let good = nrf.sign(&claims("tollgate-admissions"));
    assert_eq!(admit(Some(&good)).status, 200);
    assert_eq!(admit(Some(&nrf.sign_rs256(&claims("tollgate-admissions")))).status, 200, "RS256 from a PEM key");

    // Every way a token can be wrong, with its status and reason.
    let mut expired = claims("tollgate-admissions");
    expired["exp"] = json!(now() - 60);
    let mut early = claims("tollgate-admissions");
    early["nbf"] = json!(now() + 600);
    let mut stranger = claims("tollgate-admissions");
    stranger["iss"] = json!("nrf.elsewhere.example");
    let mut other_audience = claims("tollgate-admissions");
    other_audience["aud"] = json!(["PCF"]);
    let forged = Nrf::new().sign(&claims("tollgate-admissions"));
    let parts: Vec<&str> = good.split('.').collect();
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        base64::Engine::encode(&BASE64URL, claims("tollgate-admin").to_string()),
        parts[2]
    );
    let unsigned = format!(
        "{}.{}.",
        base64::Engine::encode(&BASE64URL, r#"{"alg":"none","typ":"JWT"}"#),
        base64::Engine::encode(&BASE64URL, claims("tollgate-admissions").to_string())
    );
    // HMAC with the issuer's public key as the secret: the classic key-confusion forgery.
    let public_pem = std::fs::read(dir.path().join("nrf-rsa.pem")).unwrap();
    let confused =
        encode(&Header::new(Algorithm::HS256), &claims("tollgate-admissions"), &EncodingKey::from_secret(&public_pem))
            .unwrap();
    let cases = [
        (None, 401, "missing"),
        (Some(nrf.sign(&expired)), 401, "expired"),
        (Some(nrf.sign(&early)), 401, "not_yet_valid"),
        (Some(nrf.sign(&stranger)), 401, "wrong_issuer"),
        (Some(nrf.sign(&other_audience)), 401, "wrong_audience"),
        (Some(nrf.sign(&claims("nchf-convergedcharging"))), 403, "insufficient_scope"),
        (Some(forged), 401, "bad_signature"),
        (Some(tampered), 401, "bad_signature"),
        (Some(unsigned), 401, "malformed"),
        (Some(confused), 401, "unsupported_algorithm"),
        (Some("not-a-jwt".to_string()), 401, "malformed"),
    ];
    for (token, status, reason) in &cases {
        let answer = admit(token.as_deref());
        assert_eq!(answer.status, *status, "{reason}: {}", answer.body);
        assert_eq!(answer.content_type, "application/problem+json", "{reason}");
        let challenge = answer.challenge.clone().unwrap_or_default();
        match *reason {
            "missing" => assert_eq!(challenge, r#"Bearer realm="tollgate""#),
            "insufficient_scope" => {
                assert!(challenge.contains(r#"error="insufficient_scope", scope="tollgate-admissions""#), "{challenge}")
            }
            _ => assert!(challenge.contains(r#"error="invalid_token""#), "{reason}: {challenge}"),
        }
    }
    refused_before_its_body_the_connection_serves_the_next_request(&server, &admission, &good);
    let metrics = server.get("/metrics").body.as_str().unwrap().to_string();
    for reason in [
        "missing",
        "expired",
        "not_yet_valid",
        "wrong_issuer",
        "wrong_audience",
        "insufficient_scope",
        "bad_signature",
        "malformed",
        "unsupported_algorithm",
    ] {
        let line = format!("tollgate_auth_refusals_total{{reason=\"{reason}\"}}");
        assert!(metrics.contains(&line), "{line} in {metrics}");
    }

    // A token for the Nchf service cannot create money; only the admin scope can.
    let top_up = command("t1", json!({"top-up": {"amount": {"minor_units": 1_000_000, "currency": "EUR"}}}));
    let open = command("o1", json!({"open": {"currency": "EUR"}}));
    let nchf = bearer(&nrf.sign(&claims("nchf-convergedcharging tollgate-commands")));
    for body in [&open, &top_up] {
        let answer = server.send("POST", "/v1/commands/account/alice", Some(body), &[("authorization", &nchf)]);
        assert_eq!(
            (answer.status, answer.body["cause"].as_str()),
            (403, Some("INSUFFICIENT_SCOPE")),
            "{}",
            answer.body
        );
    }
    let admin = bearer(&nrf.sign(&claims("tollgate-admin")));
    assert_eq!(
        server.send("POST", "/v1/commands/account/alice", Some(&open), &[("authorization", &admin)]).status,
        200
    );
    assert_eq!(
        server.send("POST", "/v1/commands/account/alice", Some(&top_up), &[("authorization", &admin)]).status,
        200
    );
    let read = bearer(&nrf.sign(&claims("tollgate-read")));
    assert_eq!(server.send("GET", "/v1/streams/account/alice", None, &[("authorization", &read)]).status, 200);
    assert_eq!(server.send("GET", "/v1/streams/account/alice", None, &[("authorization", &nchf)]).status, 403);

    // No token ever reaches the node's log.
    let (code, err) = server.terminate();
    assert_eq!(code, 0, "{err}");
    for (token, _, _) in &cases {
        if let Some(token) = token {
            assert!(!err.contains(token.as_str()), "a token was logged");
        }
    }
    assert!(!err.contains(&good) && !err.contains("eyJ"), "{err}");
}

/// A client that sends its body after the head (as HTTP/1.1 clients do) and is refused on the
/// head alone reads its answer, sends the body, and its kept-alive connection then serves the
/// next request: the node reads the refused body instead of closing under the client.
fn refused_before_its_body_the_connection_serves_the_next_request(server: &Server, body: &str, token: &str) {
    let address = server.base().trim_start_matches("http://");
    let mut socket = std::net::TcpStream::connect(address).unwrap();
    let mut reader = BufReader::new(socket.try_clone().unwrap());
    let head = |authorization: &str| {
        format!(
            "POST /v1/admissions HTTP/1.1\r\nhost: {address}\r\ncontent-type: application/json\r\n\
             content-length: {}\r\n{authorization}\r\n",
            body.len()
        )
    };
    for path in ["/v1/admissions", "/v1/no-such-route"] {
        let request = head("").replace("/v1/admissions", path);
        socket.write_all(request.as_bytes()).unwrap();
        let (status, _) = read_answer(&mut reader);
        assert_eq!(status, if path == "/v1/admissions" { 401 } else { 404 }, "{path} answered on its head");
        socket.write_all(body.as_bytes()).unwrap();
    }
    socket.write_all(format!("{}{body}", head(&format!("authorization: Bearer {token}\r\n"))).as_bytes()).unwrap();
    let (status, answer) = read_answer(&mut reader);
    assert_eq!(status, 200, "the connection's next request: {answer}");
}

/// One HTTP/1.1 answer with a `content-length` body: its status and body.
fn read_answer(reader: &mut impl BufRead) -> (u16, String) {
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status = line.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("status line {line:?}"));
    let mut length = 0;
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        if line.trim().is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap();
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    (status, String::from_utf8_lossy(&body).into_owned())
}

#[test]
fn a_protected_metrics_route_needs_its_scope() {
    let dir = tempfile::tempdir().unwrap();
    let nrf = Nrf::new();
    nrf.publish(dir.path());
    let manifest = manifest_with_auth(dir.path(), "protect_metrics = true");
    let server = Server::start(&manifest, &format!("file:{}", dir.path().join("log").display()), &[]);
    assert_eq!(server.get("/metrics").status, 401);
    let token = bearer(&nrf.sign(&claims("tollgate-metrics")));
    assert_eq!(server.send("GET", "/metrics", None, &[("authorization", &token)]).status, 200);
    assert_eq!(server.get("/healthz").status, 200);
}

#[test]
fn a_node_beyond_loopback_without_tls_and_tokens_does_not_start() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = crate::node::manifest(dir.path());
    let store = format!("file:{}", dir.path().join("log").display());
    // Refused before anything is bound.
    let out = tollgate().args(["serve", &manifest, "--store", &store, "--listen", "0.0.0.0:0"]).output().unwrap();
    let (code, stdout, err) = output(out);
    assert_ne!(code, 0);
    assert!(stdout.is_empty(), "nothing was listening: {stdout}");
    for named in ["0.0.0.0:0", "--tls-cert", "[auth]", "--insecure"] {
        assert!(err.contains(named), "{named}: {err}");
    }
    // A manifest naming key files that are not keys is refused, naming the file.
    std::fs::write(dir.path().join("nrf.jwks"), "{}").unwrap();
    std::fs::write(dir.path().join("nrf-rsa.pem"), "not a key").unwrap();
    let broken = manifest_with_auth(dir.path(), "");
    let (code, _, err) = crate::run(&["serve", &broken, "--store", &store, "--listen", "127.0.0.1:0"]);
    assert_ne!(code, 0);
    assert!(err.contains("nrf.jwks"), "{err}");
}

/// A test PKI: a CA, the node's certificate (localhost, 127.0.0.1), a client certificate of
/// the CA, and a client certificate of another CA. PEM files in `dir`.
pub(crate) struct Pki {
    dir: PathBuf,
    ca: Issuer<'static, KeyPair>,
}

impl Pki {
    pub(crate) fn new(dir: &Path) -> Pki {
        let ca = Pki::authority(dir, "ca", "tollgate test CA");
        let pki = Pki { dir: dir.into(), ca };
        pki.leaf("server", "tollgate-node", true);
        pki.leaf("client", "smf-1", false);
        let other = Pki::authority(dir, "other-ca", "someone else's CA");
        Pki { dir: dir.into(), ca: other }.leaf("stranger", "smf-stranger", false);
        pki
    }

    fn authority(dir: &Path, name: &str, cn: &str) -> Issuer<'static, KeyPair> {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, cn);
        std::fs::write(dir.join(format!("{name}.pem")), params.self_signed(&key).unwrap().pem()).unwrap();
        Issuer::new(params, key)
    }

    /// Writes `NAME.pem` and `NAME.key`, signed by this PKI's CA.
    fn leaf(&self, name: &str, cn: &str, server: bool) {
        let key = KeyPair::generate().unwrap();
        let names = if server { vec!["localhost".to_string()] } else { Vec::new() };
        let mut params = CertificateParams::new(names).unwrap();
        params.distinguished_name.push(DnType::CommonName, cn);
        if server {
            params.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
        }
        let cert = params.signed_by(&key, &self.ca).unwrap();
        std::fs::write(self.dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        std::fs::write(self.dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }

    pub(crate) fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}

/// `curl` over HTTPS to the node, trusting the test CA, with `extra` arguments: (exit code,
/// stdout).
fn curl(pki: &Pki, url: &str, extra: &[&str]) -> (i32, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-s", "-o", "/dev/null", "--cacert", &pki.file("ca.pem"), "-w", "%{http_code} %{http_version}"]);
    let (code, out, _) = output(cmd.args(extra).arg(url).output().unwrap());
    (code, out)
}

fn client_cert(pki: &Pki) -> [String; 4] {
    ["--cert".into(), pki.file("client.pem"), "--key".into(), pki.file("client.key")]
}

/// A node serving HTTPS with mutual TLS, killed when dropped.
struct TlsNode(Child, String);

impl Drop for TlsNode {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A node serving HTTPS with mutual TLS (the CA of `pki`), once it is ready.
fn tls_node(dir: &Path, pki: &Pki) -> TlsNode {
    let manifest = crate::node::manifest(dir);
    let store = format!("file:{}", dir.join("log").display());
    let mut child = tollgate()
        .args(["serve", &manifest, "--store", &store, "--listen", "127.0.0.1:0", "--node", "tls"])
        .args(["--tls-cert", &pki.file("server.pem"), "--tls-key", &pki.file("server.key")])
        .args(["--tls-client-ca", &pki.file("ca.pem")])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line.trim().strip_prefix("listening on ").unwrap().to_string();
    assert!(base.starts_with("https://127.0.0.1:"), "{line}");
    let cert = client_cert(pki);
    let with_cert: Vec<&str> = cert.iter().map(String::as_str).collect();
    // Readiness is a state the node reaches; the harness's timeout bounds the wait.
    while !curl(pki, &format!("{base}/readyz"), &with_cert).1.starts_with("200 ") {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    TlsNode(child, base)
}

#[test]
fn https_with_client_certificates_over_http1_and_http2() {
    if !curl_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let node = tls_node(dir.path(), &pki);
    let cert = client_cert(&pki);
    let with_cert: Vec<&str> = cert.iter().map(String::as_str).collect();
    let health = format!("{}/healthz", node.1);
    assert_eq!(curl(&pki, &health, &[&with_cert[..], &["--http1.1"]].concat()), (0, "200 1.1".into()));
    assert_eq!(curl(&pki, &health, &[&with_cert[..], &["--http2"]].concat()), (0, "200 2".into()), "ALPN h2");
    // Without a certificate, or with one of another CA, the handshake fails: no HTTP at all.
    let (code, out) = curl(&pki, &health, &[]);
    assert!(code != 0 && out.starts_with("000"), "no client certificate: {code} {out}");
    let stranger = ["--cert", &pki.file("stranger.pem"), "--key", &pki.file("stranger.key")];
    let (code, out) = curl(&pki, &health, &stranger);
    assert!(code != 0 && out.starts_with("000"), "a stranger's certificate: {code} {out}");
    // Cleartext to the TLS port is not served.
    let plain = node.1.replace("https://", "http://");
    let (_, out, _) =
        output(Command::new("curl").args(["-s", "-o", "/dev/null", "-w", "%{http_code}", &plain]).output().unwrap());
    assert_eq!(out, "000");
}

/// One HTTP/1.1 request on a kept-alive TLS connection: the status line.
async fn ask(stream: &mut tokio_rustls::client::TlsStream<tokio::net::TcpStream>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(b"GET /healthz HTTP/1.1\r\nhost: localhost\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    while !String::from_utf8_lossy(&answer).ends_with("\r\n\r\nok\n") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "the connection closed: {}", String::from_utf8_lossy(&answer));
        answer.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&answer).lines().next().unwrap_or_default().to_string()
}

#[test]
fn sighup_reads_the_certificate_again_without_dropping_connections() {
    if !curl_available() {
        return;
    }
    use rustls::pki_types::pem::PemObject;
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let node = tls_node(dir.path(), &pki);
    let cert = client_cert(&pki);
    let with_cert: Vec<&str> = cert.iter().map(String::as_str).collect();
    let health = format!("{}/healthz", node.1);
    let subject = || {
        let args = [&with_cert[..], &["-w", "%{certs}"]].concat();
        let (_, out) = curl(&pki, &health, &args);
        out
    };
    assert!(subject().contains("tollgate-node"), "{}", subject());

    // A connection kept alive across the reload.
    let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from_pem_file(pki.dir.join("ca.pem")).unwrap()).unwrap();
    let chain = vec![rustls::pki_types::CertificateDer::from_pem_file(pki.dir.join("client.pem")).unwrap()];
    let key = rustls::pki_types::PrivateKeyDer::from_pem_file(pki.dir.join("client.key")).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .unwrap();
    let address = node.1.strip_prefix("https://").unwrap().to_string();
    let mut kept = tokio.block_on(async {
        let tcp = tokio::net::TcpStream::connect(&address).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await.unwrap()
    });
    assert_eq!(tokio.block_on(ask(&mut kept)), "HTTP/1.1 200 OK");

    // A renewed certificate, then SIGHUP: new connections see it.
    pki.leaf("server", "tollgate-node-renewed", true);
    let pid = node.0.id().to_string();
    assert!(Command::new("kill").args(["-HUP", &pid]).status().unwrap().success());
    while !subject().contains("tollgate-node-renewed") {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    // The connection opened before is still served.
    assert_eq!(tokio.block_on(ask(&mut kept)), "HTTP/1.1 200 OK");
}
