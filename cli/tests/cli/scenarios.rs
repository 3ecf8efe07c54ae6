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
