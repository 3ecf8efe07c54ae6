//! Credential loading from the environment and a docker config file.
//!
//! One test in its own binary: it changes process environment variables, which must not race
//! with other tests.

#![allow(clippy::unwrap_used)] // a test fails loudly on the first unexpected error

use base64::Engine as _;
use tollgate_oci::{Credentials, PASSWORD_ENV, RegistryAuth, USERNAME_ENV, load_credentials};

#[test]
fn credentials_come_from_env_then_docker_config() {
    let dir = tempfile::tempdir().unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode("carol:from-config");
    std::fs::write(
        dir.path().join("config.json"),
        format!(r#"{{"auths": {{"127.0.0.1:5000": {{"auth": "{auth}"}}}}}}"#),
    )
    .unwrap();
    // SAFETY: this binary holds a single test, so no other thread reads the environment.
    unsafe {
        std::env::set_var("DOCKER_CONFIG", dir.path());
        std::env::remove_var(USERNAME_ENV);
        std::env::remove_var(PASSWORD_ENV);
    }
    assert_eq!(tollgate_oci::docker_config_path().unwrap(), dir.path().join("config.json"));
    assert_eq!(load_credentials("127.0.0.1:5000").unwrap(), RegistryAuth::Basic("carol".into(), "from-config".into()));
    assert_eq!(
        Credentials::Auto.to_auth("127.0.0.1:5000").unwrap(),
        RegistryAuth::Basic("carol".into(), "from-config".into())
    );
    assert_eq!(load_credentials("ghcr.io").unwrap(), RegistryAuth::Anonymous);
    assert_eq!(Credentials::Anonymous.to_auth("127.0.0.1:5000").unwrap(), RegistryAuth::Anonymous);

    // The environment wins over the file.
    // SAFETY: as above.
    unsafe {
        std::env::set_var(USERNAME_ENV, "dave");
        std::env::set_var(PASSWORD_ENV, "from-env");
    }
    assert_eq!(load_credentials("127.0.0.1:5000").unwrap(), RegistryAuth::Basic("dave".into(), "from-env".into()));

    // Half a pair is a mistake worth reporting.
    // SAFETY: as above.
    unsafe { std::env::remove_var(PASSWORD_ENV) };
    let err = load_credentials("127.0.0.1:5000").unwrap_err();
    assert!(err.to_string().contains(PASSWORD_ENV), "{err}");
}
