//! A node owned by async code through its handle: requests from many tasks of another tokio
//! runtime are answered one at a time, out-of-range requests are refused without stopping
//! the node, and closing returns the counters.

#![allow(clippy::unwrap_used)] // a test fails loudly on the first unexpected error

use serde_json::json;
use tollgate_host::HostEngine;
use tollgate_host_test::fixtures;
use tollgate_node::view::DecisionView;
use tollgate_node::{Node, NodeError, NodeHandle, Reply, Request};
use tollgate_runtime::{Loader, Manifest, Runtime};

fn request(value: serde_json::Value) -> Request {
    serde_json::from_value(value).expect("a request")
}

fn open() -> Result<Node, NodeError> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/edge.toml");
    let manifest =
        Manifest::load(&path).map_err(tollgate_runtime::RuntimeError::from)?.with_actors_dir(&fixtures::actors_dir());
    let mut loader = Loader::new(HostEngine::shared().map_err(tollgate_runtime::RuntimeError::from)?);
    Node::over(Runtime::new(&manifest, &mut loader)?, "edge")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handle_serves_concurrent_callers_from_another_runtime() {
    let node = std::sync::Arc::new(NodeHandle::spawn(open).expect("the node opens"));
    let open = json!({ "execute": { "stream": "account", "key": "alice", "id": "o1", "command": { "open": { "currency": "EUR" } } } });
    let top_up = json!({ "execute": { "stream": "account", "key": "alice", "id": "t1",
        "command": { "top-up": { "amount": { "minor_units": 1000, "currency": "EUR" } } } } });
    assert!(matches!(node.request(request(open)).await.unwrap(), Reply::Accepted(e) if e.len() == 1));
    assert!(matches!(node.request(request(top_up.clone())).await.unwrap(), Reply::Accepted(_)));

    // 20 callers at once, each asking for 10 voice units (2 cents each): 1000 cents cover
    // them all, and each request id is granted once however the calls interleave.
    let callers: Vec<_> = (0..20)
        .map(|i| {
            let node = node.clone();
            tokio::spawn(async move {
                let admit =
                    json!({ "admit": { "id": format!("r{i}"), "subscriber": "alice", "offer": "voice", "units": 10 } });
                node.request(request(admit)).await
            })
        })
        .collect();
    for caller in callers {
        let reply = caller.await.unwrap().unwrap();
        assert!(matches!(reply, Reply::Decision(DecisionView::Granted { .. })), "{reply:?}");
    }

    // A repeated command is answered as a repeat, not applied twice; a bad field is refused by
    // name and the node keeps serving.
    assert!(matches!(node.request(request(top_up)).await.unwrap(), Reply::Repeated(r) if r.accepted.len() == 1));
    let bad = json!({ "execute": { "stream": "account", "key": "", "id": "x", "command": "close" } });
    let err = node.request(request(bad)).await.unwrap_err();
    assert!(matches!(err, NodeError::Invalid(ref f) if f.field == "key"), "{err}");
    assert_eq!(node.request(Request::AdvanceMs(0)).await.unwrap(), Reply::TimersFired(0));

    let node = std::sync::Arc::into_inner(node).expect("every caller is done");
    let stats = tokio::task::spawn_blocking(move || node.close()).await.unwrap().unwrap();
    assert_eq!(stats.result_codes.get("success"), Some(&20), "{stats:?}");
    assert_eq!(stats.duplicates, 1, "{stats:?}");
}

#[test]
fn a_node_that_cannot_open_says_why_and_leaves_no_thread_behind() {
    let err = NodeHandle::spawn(|| Node::open("/nonexistent/edge.toml".as_ref(), "file:/nonexistent", "edge"))
        .err()
        .expect("no manifest, no node");
    assert!(err.to_string().contains("/nonexistent/edge.toml"), "{err}");
}
