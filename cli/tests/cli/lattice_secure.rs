//! The lattice behind NATS credentials and subject permissions (`examples/lattice-secure`):
//! an edge's user can do only what an edge does, an impostor can neither answer nor join the
//! core's subjects, wrong credentials fail at connect; and NATS over TLS with a CA.

use crate::lattice::{QUOTA, core_manifest, open_account, walk_through};
use crate::security::Pki;
use crate::serve::{Server, command, curl_available};
use crate::{root, run};
use async_nats::{ConnectErrorKind, Event};
use serde_json::{Value, json};
use std::path::Path;
use std::time::Duration;
use tokio::sync::mpsc;
use tollgate_store::testing::{NatsServer, free_port};

/// The example's users with passwords made for this test, and each password in a file.
struct Users {
    passwords: Vec<(&'static str, String)>,
}

impl Users {
    fn new(dir: &Path) -> Users {
        let seed = std::process::id() as u128
            ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(7, |d| d.as_nanos());
        let passwords: Vec<(&str, String)> = ["CORE", "EDGE_A", "EDGE_B", "OPERATOR"]
            .into_iter()
            .enumerate()
            .map(|(i, user)| {
                (user, format!("{:032x}", seed.wrapping_mul(0x9e37_79b9_7f4a_7c15).wrapping_add(i as u128)))
            })
            .collect();
        for (user, password) in &passwords {
            std::fs::write(dir.join(format!("{user}.password")), format!("{password}\n")).unwrap();
        }
        Users { passwords }
    }

    fn env(&self) -> Vec<(String, String)> {
        self.passwords.iter().map(|(user, password)| (format!("{user}_PASSWORD"), password.clone())).collect()
    }

    fn password(&self, user: &str) -> String {
        self.passwords.iter().find(|(u, _)| *u == user).unwrap().1.clone()
    }
}

/// A NATS client of `user` with its own inbox prefix, on its own tokio runtime; the server's
/// errors (permission violations) arrive on `errors`.
struct Client {
    tokio: tokio::runtime::Runtime,
    client: async_nats::Client,
    errors: mpsc::UnboundedReceiver<String>,
}

impl Client {
    fn connect(url: &str, user: &str, password: &str, inbox: &str) -> Result<Client, async_nats::ConnectError> {
        let tokio = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let (sender, errors) = mpsc::unbounded_channel();
        let options = async_nats::ConnectOptions::new()
            .user_and_password(user.into(), password.into())
            .custom_inbox_prefix(inbox)
            .request_timeout(Some(Duration::from_secs(2)))
            .event_callback(move |event| {
                let sender = sender.clone();
                async move {
                    if let Event::ServerError(e) = event {
                        let _ = sender.send(e.to_string());
                    }
                }
            });
        let client = tokio.block_on(options.connect(url))?;
        Ok(Client { tokio, client, errors })
    }

    fn request(&self, subject: &str, body: &Value) -> Result<(Value, Option<String>), String> {
        let reply = self
            .tokio
            .block_on(self.client.request(subject.to_string(), body.to_string().into()))
            .map_err(|e| e.to_string())?;
        let code = reply
            .headers
            .as_ref()
            .and_then(|h| h.get(async_nats::service::NATS_SERVICE_ERROR_CODE))
            .map(|v| v.to_string());
        Ok((serde_json::from_slice(&reply.payload).unwrap_or(Value::Null), code))
    }

    /// The next error the server sends this client (waits as long as it takes, within 60 s).
    fn next_error(&mut self) -> String {
        self.tokio
            .block_on(async { tokio::time::timeout(Duration::from_secs(60), self.errors.recv()).await })
            .expect("the server answers a violation with an error")
            .unwrap()
    }
}

fn reserve(id: &str) -> Value {
    json!({"key": "alice", "id": id, "command": {"reserve": {"reservation_id": id, "units": 1,
        "plan": ["per-unit voice 10"], "currency": "EUR", "validity_ms": 60000}}})
}

#[test]
fn an_edge_can_do_only_what_an_edge_does() {
    let dir = tempfile::tempdir().unwrap();
    let users = Users::new(dir.path());
    let env = users.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let config = root().join("examples/lattice-secure/nats-server.conf");
    let Some(nats) = NatsServer::start_with_or_skip(Some(&config), &env) else { return };
    let core_password = dir.path().join("CORE.password").display().to_string();
    let core = Server::start(
        &core_manifest(dir.path(), QUOTA),
        &format!("file:{}", dir.path().join("core").display()),
        &["--node", "core", "--nats", &nats.url, "--nats-user", "core", "--nats-password-file", &core_password],
    );
    open_account(&core, "alice", 1000);

    let mut edge = Client::connect(&nats.url, "edge-a", &users.password("EDGE_A"), "_INBOX_edge-a").unwrap();
    // Its own subject, its own grants: answered.
    let (reply, code) = edge.request("tollgate.core.edge.edge-a", &reserve("edge-a/t/alice/1")).unwrap();
    assert_eq!(code, None, "{reply}");
    assert_eq!(reply["accepted"][0]["type"], "reserved", "{reply}");
    let release = json!({"key": "alice", "id": "edge-a/t/alice/1/settle",
        "command": {"release": {"reservation_id": "edge-a/t/alice/1"}}});
    assert_eq!(edge.request("tollgate.core.edge.edge-a", &release).unwrap().1, None);
    // Through its own subject, nothing an edge does not do, and nothing of another edge's.
    let mint = json!({"key": "alice", "id": "edge-a/mint",
        "command": {"top-up": {"amount": {"minor_units": 100000, "currency": "EUR"}}}});
    for body in [mint.clone(), reserve("edge-b/t/alice/1")] {
        let (reply, code) = edge.request("tollgate.core.edge.edge-a", &body).unwrap();
        assert_eq!(code.as_deref(), Some("403"), "{reply}");
        assert_eq!(reply["cause"], "EDGE_NOT_PERMITTED", "{reply}");
    }
    // The general command subject and another edge's subject: refused by the server.
    for subject in ["tollgate.core.command.account", "tollgate.core.edge.edge-b"] {
        assert!(edge.request(subject, &mint).is_err(), "{subject} answered");
        let error = edge.next_error();
        assert!(error.contains("Permissions Violation for Publish") && error.contains(subject), "{error}");
    }
    // An impostor can neither answer the core's subjects nor join its queue group.
    for (subject, group) in [("tollgate.core.command.account", Some("q")), ("tollgate.core.admit", None)] {
        let subscribed = edge.tokio.block_on(async {
            match group {
                Some(group) => edge.client.queue_subscribe(subject, group.into()).await.map(drop),
                None => edge.client.subscribe(subject).await.map(drop),
            }
        });
        assert!(subscribed.is_ok(), "the refusal comes from the server, not the client");
        let error = edge.next_error();
        assert!(error.contains("Permissions Violation for Subscription") && error.contains(subject), "{error}");
    }
    // Nothing of it reached the account: one top-up, the opening one.
    let events = core.get("/v1/streams/account/alice").body;
    let top_ups = events.as_array().unwrap().iter().filter(|e| e["type"] == "topped-up").count();
    assert_eq!(top_ups, 1, "{events}");

    // Wrong credentials fail at connect, for a client and for a node.
    let refused = Client::connect(&nats.url, "edge-a", "wrong", "_INBOX_edge-a").err().expect("refused");
    assert_eq!(refused.kind(), ConnectErrorKind::AuthorizationViolation, "{refused}");
    std::fs::write(dir.path().join("wrong.password"), "wrong\n").unwrap();
    let wrong = dir.path().join("wrong.password").display().to_string();
    let edge_manifest = root().join("examples/lattice/edge.toml").display().to_string();
    let store = format!("file:{}", dir.path().join("edge").display());
    let (code, _, err) = run(&[
        "serve",
        &edge_manifest,
        "--role",
        "edge",
        "--core",
        &nats.url,
        "--node",
        "edge-a",
        "--store",
        &store,
        "--listen",
        "127.0.0.1:0",
        "--nats-user",
        "edge-a",
        "--nats-password-file",
        &wrong,
    ]);
    assert_ne!(code, 0);
    assert!(err.contains("refused the node's credentials"), "{err}");
    assert!(!err.contains("wrong\n") && !err.contains(&users.password("EDGE_A")), "a secret was printed: {err}");
    let (code, err) = core.terminate();
    assert_eq!(code, 0, "{err}");
}

/// The example's README, run as written on free ports.
#[test]
fn the_secure_lattice_walk_through_runs() {
    if !curl_available() {
        return;
    }
    // The walk-through starts its own server; this only checks that one can be started.
    let Some(probe) = NatsServer::start_or_skip() else { return };
    drop(probe);
    let (nats, monitor) = (free_port().unwrap().to_string(), free_port().unwrap().to_string());
    let url = format!("nats://127.0.0.1:{nats}");
    let (code, stdout, stderr) = walk_through(
        "examples/lattice-secure/README.md",
        "/tmp/tollgate-lattice-secure",
        &[("nats://127.0.0.1:4222", &url), ("-p 4222", &format!("-p {nats}")), ("8222", &monitor)],
        2,
    );
    assert_eq!(code, 0, "stdout: {stdout}\nstderr: {stderr}");
    let mut ids = stdout.split("\"command_id\":\"edge-a/").skip(1).filter_map(|rest| rest.split('"').next());
    assert!(ids.any(|id| id.ends_with("/alice/1/settle")), "{stdout}");
    assert!(stdout.contains("\"charged\":20"), "{stdout}");
    assert!(stdout.contains("refused the node's credentials"), "{stdout}");
}

#[test]
fn nats_over_tls_is_checked_against_a_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::new(dir.path());
    let config = dir.path().join("tls.conf");
    let tls = format!(
        "tls {{\n  cert_file: \"{}\"\n  key_file: \"{}\"\n}}\n",
        pki.file("server.pem"),
        pki.file("server.key")
    );
    std::fs::write(&config, tls).unwrap();
    let Some(nats) = NatsServer::start_with_or_skip(Some(&config), &[]) else { return };
    let url = format!("tls://{}", nats.url.split_once("://").unwrap().1);
    let ca = pki.file("ca.pem");
    let manifest = core_manifest(dir.path(), QUOTA);

    // Trusting the CA: the JetStream store and the service both over TLS.
    let core = Server::start(&manifest, &url, &["--node", "core", "--nats", &url, "--nats-tls-ca", &ca]);
    open_account(&core, "alice", 1000);
    let admission = json!({"id": "call-1", "subscriber": "alice", "offer": "voice", "units": 1}).to_string();
    assert_eq!(core.post("/v1/admissions", &admission).status, 200);
    let top_up = command("t2", json!({"top-up": {"amount": {"minor_units": 5, "currency": "EUR"}}}));
    assert_eq!(core.post("/v1/commands/account/alice", &top_up).status, 200);
    let (code, err) = core.terminate();
    assert_eq!(code, 0, "{err}");
    let (code, out, err) = run(&["events", "account", "alice", "--store", &url, "--nats-tls-ca", &ca]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("topped-up"), "{out}");

    // Without the CA, or with another CA, nothing connects: the server's certificate is not trusted.
    let store = format!("file:{}", dir.path().join("plain").display());
    for extra in [&[][..], &["--nats-tls-ca", &pki.file("other-ca.pem")][..]] {
        let (code, _, err) = run(&[&["events", "account", "alice", "--store", &url][..], extra].concat());
        assert_ne!(code, 0);
        assert!(err.to_lowercase().contains("tls") || err.contains("certificate"), "{err}");
        let args = [&["serve", &manifest, "--store", &store, "--listen", "127.0.0.1:0", "--nats", &url][..], extra];
        let (code, _, err) = run(&args.concat());
        assert_ne!(code, 0);
        assert!(err.contains("--nats") && (err.contains("TLS") || err.contains("certificate")), "{err}");
    }
}
