//! The reference actors' scenario files pass, and the format's variants work.

use crate::{actor, root, run, scenario};

#[test]
fn every_reference_actor_scenario_passes() {
    let mut files: Vec<String> = Vec::new();
    for dir in std::fs::read_dir(root().join("actors")).unwrap() {
        let scenarios = dir.unwrap().path().join("scenarios");
        if let Ok(entries) = std::fs::read_dir(&scenarios) {
            for e in entries {
                let p = e.unwrap().path();
                if matches!(p.extension().and_then(|e| e.to_str()), Some("toml" | "yaml" | "yml")) {
                    files.push(p.display().to_string());
                }
            }
        }
    }
    files.sort();
    for kind in ["prepaid-account", "rater", "admission-policy", "balance-projector", "charging-session"] {
        assert!(files.iter().any(|f| f.contains(&format!("actors/{kind}/scenarios/"))), "no scenario for {kind}");
    }
    let args: Vec<&str> = std::iter::once("test").chain(files.iter().map(String::as_str)).collect();
    let (code, out, err) = run(&args);
    assert_eq!(code, 0, "{out}\n{err}");
    let last = out.lines().last().unwrap();
    assert!(last.ends_with(" passed, 0 failed"), "{last}");
    assert_eq!(
        out.lines().filter(|l| l.starts_with("ok ")).count(),
        last.split(' ').next().unwrap().parse::<usize>().unwrap()
    );
}

#[test]
fn yaml_scenarios_and_actor_bindings_work() {
    let dir = tempfile::tempdir().unwrap();
    let file = scenario(
        dir.path(),
        "account.yaml",
        "actor: account\nkey: alice\ncase:\n  - name: opens\n    when:\n      command: { open: { currency: EUR } }\n    then:\n      events:\n        - { type: opened, payload: { currency: EUR, overdraft_limit: 0 } }\n",
    );
    let binding = format!("account={}", actor("prepaid_account"));
    let (code, out, err) = run(&["test", &file, "--actor", &binding]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains("ok     ") && out.ends_with("1 passed, 0 failed\n"), "{out}");
}

#[test]
fn a_broken_expectation_fails_with_a_diff_and_the_other_cases_still_run() {
    let dir = tempfile::tempdir().unwrap();
    let text = format!(
        r#"actor = "{}"
[[case]]
name = "right"
given.events = [{{ opened = {{ currency = "EUR", overdraft_limit = 0 }} }}]
when.command = {{ top-up = {{ amount = {{ minor_units = 5, currency = "EUR" }} }} }}
then.events = [{{ topped-up = {{ amount = 5 }} }}]

[[case]]
name = "wrong"
given.events = [{{ opened = {{ currency = "EUR", overdraft_limit = 0 }} }}]
when.command = {{ top-up = {{ amount = {{ minor_units = 5, currency = "EUR" }} }} }}
then.events = [{{ topped-up = {{ amount = 6 }} }}]
"#,
        actor("prepaid_account")
    );
    let file = scenario(dir.path(), "s.toml", &text);
    let (code, out, _) = run(&["test", &file]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains(":: right") && out.lines().any(|l| l.starts_with("ok") && l.ends_with(":: right")), "{out}");
    assert!(out.lines().any(|l| l.starts_with("FAILED") && l.ends_with(":: wrong")), "{out}");
    assert!(out.contains("-         \"amount\": 6") && out.contains("+         \"amount\": 5"), "{out}");
    assert!(out.ends_with("1 passed, 1 failed\n"), "{out}");
}

#[test]
fn test_and_inspect_compile_a_component_once_into_the_code_cache() {
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let file = scenario(
        dir.path(),
        "s.toml",
        &format!(
            "actor = \"{}\"\n[[case]]\nname = \"opens\"\nwhen.command = {{ open = {{ currency = \"EUR\" }} }}\nthen.events = [{{ opened = {{ currency = \"EUR\", overdraft_limit = 0 }} }}]\n",
            actor("prepaid_account")
        ),
    );
    let cached = || std::fs::read_dir(cache.join("compiled")).map(|d| d.count()).unwrap_or(0);
    let with_cache =
        |args: &[&str]| crate::output(crate::tollgate().args(args).env("TOLLGATE_CACHE_DIR", &cache).output().unwrap());
    let (code, out, err) = with_cache(&["test", &file]);
    assert_eq!(code, 0, "{out}\n{err}");
    let entries = cached();
    assert!(entries >= 1, "`tollgate test` left nothing in {}", cache.display());
    // The same component again, by `inspect` and by a second `test`: no new entry.
    let (code, out, err) = with_cache(&["inspect", &actor("prepaid_account")]);
    assert_eq!(code, 0, "{out}\n{err}");
    let (code, out, err) = with_cache(&["test", &file]);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(cached(), entries, "the compiled code was reused, not compiled again");
}

/// Runs `tollgate test` on a scenario file of the reference account aggregate: `actor = ...`,
/// then `rest` (shared setup and cases).
fn account_scenario(rest: &str) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let file = scenario(dir.path(), "s.toml", &format!("actor = \"{}\"\n{rest}", actor("prepaid_account")));
    run(&["test", &file])
}

/// An open account, and top-up `t1` of 5 already run.
const TOPPED_UP: &str = r#"
[given]
events = [{ opened = { currency = "EUR", overdraft_limit = 0 } }]
commands = [{ type = "top-up", payload = { amount = { minor_units = 5, currency = "EUR" } }, command_id = "t1" }]
"#;

#[test]
fn a_case_stating_only_the_state_shows_the_rejection_that_kept_it() {
    let (code, out, _) = account_scenario(
        r#"
[[case]]
name = "overdraws"
given.events = [{ opened = { currency = "EUR", overdraft_limit = 0 } }]
when.command = { direct-debit = { amount = { minor_units = 5, currency = "EUR" } } }
then.state = { balance = -5 }
"#,
    );
    assert_eq!(code, 1, "{out}");
    // The diff carries the decision the case did not state: code, kind and message.
    assert!(out.contains("+   \"rejection\": {"), "{out}");
    assert!(out.contains("\"code\": \"insufficient-funds\"") && out.contains("\"kind\": \"business\""), "{out}");
}

#[test]
fn shared_given_follows_each_cases_key_and_a_case_may_opt_out() {
    let (code, out, err) = account_scenario(
        r#"
key = "alice"

[given]
events = [{ opened = { currency = "EUR", overdraft_limit = 0 } }]

[[case]]
name = "the shared events are alice's"
when.command = { top-up = { amount = { minor_units = 5, currency = "EUR" } } }
then.events = [{ topped-up = { amount = 5 } }]

[[case]]
name = "and bob's, when the case is about bob"
key = "bob"
when.command = { top-up = { amount = { minor_units = 5, currency = "EUR" } } }
then.events = [{ topped-up = { amount = 5 } }]

[[case]]
name = "a case that opts out starts from nothing"
inherit_given = false
when.command = { top-up = { amount = { minor_units = 5, currency = "EUR" } } }
then.rejection = "unknown-account"
"#,
    );
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.ends_with("3 passed, 0 failed\n"), "{out}");
}

#[test]
fn a_case_asserts_a_repeated_command_was_answered_as_a_duplicate() {
    let (code, out, _) = account_scenario(&format!(
        r#"{TOPPED_UP}
[[case]]
name = "the same id again answers the original event and adds nothing"
when.command = {{ type = "top-up", payload = {{ amount = {{ minor_units = 5, currency = "EUR" }} }}, command_id = "t1" }}
then.duplicate = true
then.events = [{{ type = "topped-up", payload = {{ amount = 5 }}, sequence = 2 }}]
then.state = {{ balance = 5 }}

[[case]]
name = "a new id is no duplicate"
when.command = {{ type = "top-up", payload = {{ amount = {{ minor_units = 5, currency = "EUR" }} }}, command_id = "t2" }}
then.duplicate = true
"#
    ));
    assert_eq!(code, 1, "{out}");
    assert!(out.lines().any(|l| l.starts_with("ok") && l.ends_with("adds nothing")), "{out}");
    assert!(out.contains("-   \"duplicate\": true") && out.contains("+   \"duplicate\": false"), "{out}");
}

#[test]
fn a_command_id_reused_for_another_command_is_a_conflict_not_the_first_outcome() {
    let (code, out, err) = account_scenario(&format!(
        r#"{TOPPED_UP}
[[case]]
name = "another amount under the same id"
when.command = {{ type = "top-up", payload = {{ amount = {{ minor_units = 6, currency = "EUR" }} }}, command_id = "t1" }}
then.rejection = {{ code = "command-id-conflict", kind = "malformed" }}
then.duplicate = false
then.state = {{ balance = 5 }}
"#
    ));
    assert_eq!(code, 0, "{out}\n{err}");
}
