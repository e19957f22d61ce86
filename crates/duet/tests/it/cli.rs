//! The `duet` binary end to end: serve on a fresh data dir, usersig, and the
//! scriptable client commands with `--json`.

use std::path::Path;
use std::process::Output;

use serde_json::Value;

use crate::serve_proc::{ServeProc, duet};

fn run(args: &[&str], data: &Path) -> Output {
    duet()
        .args(args)
        .arg("--data")
        .arg(data)
        .env("DUET_LOG", "error")
        .output()
        .expect("run duet")
}

fn ok_lines(out: Output) -> Vec<Value> {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l:?}: {e}")))
        .collect()
}

#[test]
fn serve_creates_an_identity_and_the_cli_talks_to_it() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("duet-data");
    let cache = tmp.path().join("cache");
    let server = ServeProc::start(&data, &[]);
    let identity = std::fs::read_to_string(data.join("identity.toml")).expect("identity kept");
    assert!(identity.contains("sdkappid") && identity.contains("secret_key"));

    // usersig signs with the kept identity.
    let out = run(&["usersig", "alice", "--expire", "600"], &data);
    let sig = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let claims = duet_usersig::decode(&sig).unwrap();
    assert_eq!(claims.identifier, "alice");
    assert_eq!(claims.expire, 600);

    let common = |user: &'static str| -> Vec<String> {
        vec![
            "--server".into(),
            server.url.clone(),
            "--user".into(),
            user.into(),
            "--cache".into(),
            cache.display().to_string(),
            "--json".into(),
        ]
    };
    let with = |cmd: &[&str], user: &'static str| -> Output {
        let mut args: Vec<String> = cmd.iter().map(|s| s.to_string()).collect();
        args.extend(common(user));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&refs, &data)
    };

    // bob logs in once (creating the account); nothing to sync yet.
    let lines = ok_lines(with(&["listen", "--for", "0.5"], "bob"));
    assert!(lines.iter().any(|l| l["event"] == "sync_finished"));

    let sent = ok_lines(with(
        &["send", "--to", "bob", "--text", "hello from the cli"],
        "alice",
    ));
    let key = sent[0]["MsgKey"].as_str().unwrap().to_string();

    let lines = ok_lines(with(&["listen", "--for", "0.5"], "bob"));
    let msg = lines
        .iter()
        .find(|l| l["event"] == "new_message")
        .expect("new_message");
    assert_eq!(msg["message"]["From_Account"], "alice");
    assert_eq!(msg["message"]["To_Account"], "bob");
    assert_eq!(msg["message"]["MsgKey"], key.as_str());
    assert_eq!(
        msg["message"]["MsgBody"][0]["MsgContent"]["Text"],
        "hello from the cli"
    );
    let pos = |e: &str| lines.iter().position(|l| l["event"] == e).unwrap();
    assert!(
        pos("new_message") < pos("conversations") && pos("conversations") < pos("sync_finished")
    );

    // The cursor is cached: a second listen reports nothing again.
    let lines = ok_lines(with(&["listen", "--for", "0.5"], "bob"));
    assert!(
        !lines.iter().any(|l| l["event"] == "new_message"),
        "{lines:?}"
    );

    let hist = ok_lines(with(&["history", "--with", "alice", "--count", "5"], "bob"));
    assert_eq!(hist.len(), 1);
    assert_eq!(hist[0]["MsgKey"], key.as_str());

    let convs = ok_lines(with(&["conversations"], "bob"));
    assert_eq!(convs[0]["peer"], "alice");
    assert_eq!(convs[0]["unread"], 1);
    ok_lines(with(&["read", "--with", "alice"], "bob"));
    let convs = ok_lines(with(&["conversations"], "bob"));
    assert_eq!(convs[0]["unread"], 0);

    ok_lines(with(&["recall", "--key", &key], "alice"));
    let again = with(&["recall", "--key", &key], "alice");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("error 20023"));

    let nobody = with(&["send", "--to", "nobody", "--text", "x"], "alice");
    assert!(!nobody.status.success());
    assert!(String::from_utf8_lossy(&nobody.stderr).contains("error 20003"));

    // The recall reached bob's device through the timeline.
    let lines = ok_lines(with(&["listen", "--for", "0.5"], "bob"));
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "message_recalled" && l["MsgKey"] == key.as_str()),
        "{lines:?}"
    );

    assert_eq!(server.terminate().code(), Some(0));
}
