//! `tollgate push`, then `tollgate test` with the actor bound to an `oci://` reference: the
//! pulled component runs the reference scenarios.

use crate::{actor, output, root, tollgate};
use tollgate_oci::testing::Registry;

#[test]
fn scenarios_run_against_an_actor_pulled_from_a_registry() {
    let Some(registry) = Registry::start() else { return };
    let cache = tempfile::tempdir().unwrap();
    let reference = format!("{}/tollgate/prepaid-account:0.1.0", registry.host());
    let (code, _, stderr) = output(
        tollgate()
            .args(["push", &reference, &actor("prepaid_account"), "--plain-http"])
            .env("TOLLGATE_CACHE_DIR", cache.path())
            .output()
            .unwrap(),
    );
    assert_eq!(code, 0, "push failed: {stderr}");
    let scenario = root().join("actors/prepaid-account/scenarios/account.toml");
    let (code, stdout, stderr) = output(
        tollgate()
            .arg("test")
            .arg(&scenario)
            .args(["--actor", &format!("prepaid_account=oci://{reference}"), "--plain-http"])
            .env("TOLLGATE_CACHE_DIR", cache.path())
            .output()
            .unwrap(),
    );
    assert_eq!(code, 0, "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.trim_end().ends_with(" 0 failed"), "{stdout}");
    let pulled = std::fs::read_dir(cache.path().join("oci/blobs/sha256")).unwrap().count();
    assert_eq!(pulled, 1, "the component was pulled into the cache once");
}
