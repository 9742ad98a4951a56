//! The `cairn` command as scripts use it: the real binary, a temporary `--home`, exit codes
//! and output checked.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Command, Output, Stdio};

use cairn_node::app::{AppDb, Status};
use cairn_node::contact::ContactCode;
use cairn_node::home::{DaemonStatus, Home};
use cairn_node::identity::Identity;
use cairn_sync::envelope::ItemId;

fn cairn_command(home: &Path, args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_cairn"));
    command
        .arg("--home")
        .arg(home)
        .args(args)
        .env_remove("CAIRN_PASSPHRASE")
        .env_remove("CAIRN_HOME")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null());
    command
}

fn cairn(home: &Path, args: &[&str]) -> Output {
    cairn_command(home, args).output().unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

/// Runs a command that must succeed and returns its stdout.
fn ok(home: &Path, args: &[&str]) -> String {
    let output = cairn(home, args);
    assert!(
        output.status.success(),
        "cairn {args:?} failed: {}",
        stderr(&output)
    );
    stdout(&output)
}

/// Runs a command that must fail at run time (exit 1, one `error:` line) and returns stderr.
fn fails(home: &Path, args: &[&str]) -> String {
    let output = cairn(home, args);
    let err = stderr(&output);
    assert_eq!(output.status.code(), Some(1), "cairn {args:?}: {err}");
    assert!(err.starts_with("error: "), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

fn last_line(text: &str) -> &str {
    text.trim_end().lines().last().unwrap()
}

/// A node in `dir/name`, initialised; returns its home and contact code.
fn node(dir: &Path, name: &str) -> (std::path::PathBuf, String) {
    let home = dir.join(name);
    ok(&home, &["init", "--name", name]);
    let code = last_line(&ok(&home, &["id"])).to_owned();
    (home, code)
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect()
}

#[test]
fn init_then_id_prints_a_decodable_code_on_the_last_line() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("alice");
    let out = ok(&home, &["init", "--name", "Alice"]);
    assert!(out.contains("fingerprint: "), "{out}");
    let init_code = ContactCode::decode(last_line(&out)).unwrap();
    assert_eq!(init_code.display_name().as_str(), "Alice");

    let out = ok(&home, &["id"]);
    assert!(out.starts_with("name: Alice\n"), "{out}");
    let code = ContactCode::decode(last_line(&out)).unwrap();
    assert_eq!(code.identity(), init_code.identity());
    assert!(out.contains(&code.identity().fingerprint().to_string()));

    let with_qr = ok(&home, &["id", "--qr"]);
    assert!(with_qr.lines().count() > 10, "a QR drawing: {with_qr}");
    assert_eq!(last_line(&with_qr), last_line(&out));

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&home), 0o700);
        assert_eq!(mode(&home.join("config.json")), 0o600);
    }
}

#[test]
fn init_refuses_to_overwrite_an_identity() {
    let dir = tempfile::tempdir().unwrap();
    let (home, code) = node(dir.path(), "alice");
    let err = fails(&home, &["init", "--name", "Mallory"]);
    assert!(err.contains("already exists"), "{err}");
    assert_eq!(last_line(&ok(&home, &["id"])), code, "identity unchanged");
    assert!(
        ok(&home, &["id"]).starts_with("name: alice\n"),
        "config unchanged"
    );
}

#[test]
fn init_derives_the_team_network_key() {
    let dir = tempfile::tempdir().unwrap();
    let team = dir.path().join("team");
    ok(&team, &["init", "--name", "T", "--network", "river camp"]);
    assert_eq!(
        Home::at(&team).load_config().unwrap().network_key,
        blake3::derive_key("cairn 2026 network key", b"river camp")
    );
    let open = dir.path().join("open");
    ok(&open, &["init", "--name", "O"]);
    assert_eq!(
        Home::at(&open).load_config().unwrap().network_key,
        cairn_transports::hop::NetworkKey::default_network().0
    );
    // `--network -` reads the secret from stdin, out of the process list.
    let piped = dir.path().join("piped");
    let mut child = cairn_command(&piped, &["init", "--name", "P", "--network", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"river camp\n")
        .unwrap();
    assert!(child.wait_with_output().unwrap().status.success());
    assert_eq!(
        Home::at(&piped).load_config().unwrap().network_key,
        Home::at(&team).load_config().unwrap().network_key
    );
}

#[test]
fn a_passphrase_seals_the_identity() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("sealed");
    let init = cairn_command(&home, &["init", "--name", "S"])
        .env("CAIRN_PASSPHRASE", "correct horse")
        .output()
        .unwrap();
    assert!(init.status.success(), "{}", stderr(&init));
    let err = fails(&home, &["id"]);
    assert!(err.contains("CAIRN_PASSPHRASE"), "{err}");
    let wrong = cairn_command(&home, &["id"])
        .env("CAIRN_PASSPHRASE", "battery staple")
        .output()
        .unwrap();
    assert_eq!(wrong.status.code(), Some(1));
    assert!(stderr(&wrong).contains("wrong passphrase"));
    let right = cairn_command(&home, &["id"])
        .env("CAIRN_PASSPHRASE", "correct horse")
        .output()
        .unwrap();
    assert!(right.status.success());
    ContactCode::decode(last_line(&stdout(&right))).unwrap();

    // Whom the user knows and what they wrote are sealed with the identity: without the
    // passphrase no command shows them, and the files do not hold them in the clear.
    let (_, bob_code) = node(dir.path(), "bob");
    let unlocked = |args: &[&str]| {
        let output = cairn_command(&home, args)
            .env("CAIRN_PASSPHRASE", "correct horse")
            .output()
            .unwrap();
        assert!(output.status.success(), "{args:?}: {}", stderr(&output));
        stdout(&output)
    };
    unlocked(&["contacts", "add", "Bartholomew", &bob_code]);
    unlocked(&[
        "send",
        "Bartholomew",
        "the spare key is under the third cairn",
    ]);
    for args in [
        &["contacts", "list"][..],
        &["messages"],
        &["send", "Bartholomew", "hello"],
    ] {
        let err = fails(&home, args);
        assert!(err.contains("CAIRN_PASSPHRASE"), "{args:?}: {err}");
    }
    // Counts are not sealed: status needs no passphrase.
    let status = json_lines(&ok(&home, &["status", "--json"]));
    assert_eq!(status[0]["queued"], 1);
    assert!(unlocked(&["contacts", "list"]).contains("Bartholomew"));
    assert!(unlocked(&["messages"]).contains("the spare key is under the third cairn"));
    let bob = ContactCode::decode(&bob_code).unwrap().identity();
    let mut files = Vec::new();
    let mut dirs = vec![home.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    for (path, bytes) in &files {
        for secret in [
            &b"Bartholomew"[..],
            b"bartholomew",
            b"the spare key",
            bob.as_bytes(),
        ] {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret),
                "{} holds {:?} in the clear",
                path.display(),
                String::from_utf8_lossy(secret)
            );
        }
    }
}

#[test]
fn two_nodes_add_each_other_and_names_are_unique() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, alice_code) = node(dir.path(), "alice");
    let (bob, bob_code) = node(dir.path(), "bob");
    let (_carol, carol_code) = node(dir.path(), "carol");

    let at_alice = ok(&alice, &["contacts", "add", "Bobby", &bob_code]);
    let at_bob = ok(&bob, &["contacts", "add", "alice", &alice_code]);
    let safety = |out: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix("safety code: "))
            .unwrap()
            .to_owned()
    };
    assert_eq!(safety(&at_alice), safety(&at_bob), "same on both devices");

    // The local name is the one the user chose, and the contact has sealing keys.
    let list = json_lines(&ok(&alice, &["contacts", "list", "--json"]));
    assert_eq!(list.len(), 1);
    assert_eq!(list[0]["name"], "Bobby");
    assert_eq!(list[0]["display_name"], "bob");
    assert_eq!(list[0]["verification"], "unverified");
    let bob_fingerprint = ContactCode::decode(&bob_code)
        .unwrap()
        .identity()
        .fingerprint()
        .to_string();
    assert_eq!(list[0]["fingerprint"], bob_fingerprint.as_str());
    let human = ok(&alice, &["contacts", "list"]);
    assert!(
        human.starts_with("Bobby ") && human.contains("unverified"),
        "{human}"
    );

    // Another person under a taken name (in any case) is refused.
    let err = fails(&alice, &["contacts", "add", "bobby", &carol_code]);
    assert!(err.contains("already used"), "{err}");
    // The same person again under the same name is fine; under another name it is refused.
    ok(&alice, &["contacts", "add", "Bobby", &bob_code]);
    let err = fails(&alice, &["contacts", "add", "Robert", &bob_code]);
    assert!(err.contains("already your contact"), "{err}");
    // Your own code is not a contact.
    let err = fails(&alice, &["contacts", "add", "me", &alice_code]);
    assert!(err.contains("your own"), "{err}");
    assert_eq!(
        json_lines(&ok(&alice, &["contacts", "list", "--json"])).len(),
        1
    );

    // A code pasted in pieces (as from a wrapped terminal) still reads.
    let (first, second) = carol_code.split_at(40);
    ok(&alice, &["contacts", "add", "carol", first, second]);
    assert_eq!(
        json_lines(&ok(&alice, &["contacts", "list", "--json"])).len(),
        2
    );

    let me = Identity::load(&alice, None).unwrap();
    assert_eq!(
        me.public_key(),
        ContactCode::decode(&alice_code).unwrap().identity()
    );
    let keys = cairn_node::contact::ContactBook::open(&alice, &me).unwrap();
    assert!(keys.list().iter().all(|c| c.pair_keys().is_some()));
}

#[test]
fn a_mistyped_code_is_refused_as_a_typo() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, _) = node(dir.path(), "alice");
    let (_, bob_code) = node(dir.path(), "bob");
    // Change one character in the middle of the code.
    let mut chars: Vec<char> = bob_code.chars().collect();
    let middle = chars.len() / 2;
    chars[middle] = if chars[middle] == 'a' { 'b' } else { 'a' };
    let typo: String = chars.into_iter().collect();
    let err = fails(&alice, &["contacts", "add", "bob", &typo]);
    assert!(err.contains("typo"), "{err}");
    let err = fails(&alice, &["contacts", "add", "bob", "hello"]);
    assert!(err.contains("not a Cairn contact code"), "{err}");
    assert_eq!(ok(&alice, &["contacts", "list", "--json"]), "");
}

#[test]
fn send_queues_without_a_daemon_and_messages_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, _) = node(dir.path(), "alice");
    let (_, bob_code) = node(dir.path(), "bob");
    let (_, carol_code) = node(dir.path(), "carol");
    ok(&alice, &["contacts", "add", "bob", &bob_code]);
    ok(&alice, &["contacts", "add", "carol", &carol_code]);

    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let id: u64 = ok(&alice, &["send", "bob", "meet at the ridge"])
        .trim()
        .parse()
        .unwrap();
    let other: u64 = ok(&alice, &["send", "Carol", "-5 degrees tonight"])
        .trim()
        .parse()
        .unwrap();
    assert!(other > id);

    let all = json_lines(&ok(&alice, &["messages", "--json"]));
    assert_eq!(all.len(), 2);
    let m = &all[0];
    assert_eq!(m["id"], id);
    assert_eq!(m["from"], "me");
    assert_eq!(m["to"], "bob");
    assert_eq!(m["text"], "meet at the ridge");
    assert_eq!(m["status"], "queued");
    assert_eq!(m["direction"], "outgoing");
    assert!(m["sent_at"].as_u64().unwrap() >= before);
    assert!(m["received_at"].is_null());
    assert!(m["envelope"].is_null());
    assert_eq!(all[1]["text"], "-5 degrees tonight");

    let with_bob = json_lines(&ok(&alice, &["messages", "--json", "--with", "bob"]));
    assert_eq!(with_bob.len(), 1);
    let human = ok(&alice, &["messages"]);
    assert!(
        human.contains("me -> bob [queued] meet at the ridge"),
        "{human}"
    );

    let err = fails(&alice, &["send", "dave", "hi"]);
    assert!(err.contains("cairn contacts add"), "{err}");
    let err = fails(&alice, &["messages", "--with", "dave"]);
    assert!(err.contains("no contact named"), "{err}");
    let err = fails(&alice, &["send", "bob", &"x".repeat(5000)]);
    assert!(err.contains("4096"), "{err}");
    fails(&alice, &["send", "bob", ""]);
    assert_eq!(json_lines(&ok(&alice, &["messages", "--json"])).len(), 2);

    let status = ok(&alice, &["status"]);
    assert!(status.contains("not running"), "{status}");
    assert!(status.contains("2 queued"), "{status}");
}

#[test]
fn status_reads_a_live_daemon_and_ignores_a_stale_one() {
    let dir = tempfile::tempdir().unwrap();
    let (home, _) = node(dir.path(), "alice");
    let status = json_lines(&ok(&home, &["status", "--json"]));
    assert_eq!(status[0]["running"], false);
    assert_eq!(status[0]["queued"], 0);
    assert!(status[0]["links_up"].is_null());

    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    // This test process stands in for the daemon: its pid exists.
    let live = DaemonStatus {
        pid: std::process::id(),
        updated_at: now,
        peers_seen: 4,
        links_up: 2,
        store_items: 7,
        store_bytes: 900,
        carried: 3,
    };
    Home::at(&home).write_status(&live).unwrap();
    let status = json_lines(&ok(&home, &["status", "--json"]));
    assert_eq!(status[0]["running"], true);
    assert_eq!(status[0]["links_up"], 2);
    assert_eq!(status[0]["store_items"], 7);
    let human = ok(&home, &["status"]);
    assert!(
        human.contains("node: running") && human.contains("links up: 2"),
        "{human}"
    );

    let stale = DaemonStatus {
        updated_at: now - 60,
        ..live
    };
    Home::at(&home).write_status(&stale).unwrap();
    assert!(ok(&home, &["status"]).contains("not running"));
}

#[test]
fn commands_before_init_say_how_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("nothing");
    for args in [
        &["id"][..],
        &["contacts", "list"],
        &["send", "bob", "hi"],
        &["messages"],
        &["status"],
    ] {
        let err = fails(&home, args);
        assert!(err.contains("cairn init"), "{args:?}: {err}");
    }
    assert!(!home.exists(), "reading commands create nothing");
}

#[test]
fn every_command_has_help_and_usage_errors_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path();
    for args in [
        &["--help"][..],
        &["init", "--help"],
        &["id", "--help"],
        &["contacts", "--help"],
        &["contacts", "add", "--help"],
        &["contacts", "list", "--help"],
        &["send", "--help"],
        &["messages", "--help"],
        &["status", "--help"],
        &["run", "--help"],
        &["demo", "--help"],
        &["help", "send"],
    ] {
        let out = ok(home, args);
        assert!(out.contains("Usage:"), "{args:?}: {out}");
    }
    assert!(ok(home, &["messages", "--help"]).contains("Unix seconds"));
    for args in [
        &[][..],
        &["frobnicate"],
        &["init"],
        &["send", "bob"],
        &["contacts", "add", "bob"],
        &["messages", "--jsn"],
        &["run", "--peer", "nowhere"],
    ] {
        let output = cairn(home, args);
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
    }
}

/// The database is shared by processes: this test process holds a handle open (as the daemon
/// does) while `cairn` processes write and read. Two handles in one process are not allowed
/// by heed, so the second party is always a child process.
#[test]
fn the_message_database_is_shared_between_processes() {
    let dir = tempfile::tempdir().unwrap();
    let (alice, _) = node(dir.path(), "alice");
    let (_, bob_code) = node(dir.path(), "bob");
    ok(&alice, &["contacts", "add", "bob", &bob_code]);
    let bob = ContactCode::decode(&bob_code).unwrap().identity();

    let db = AppDb::open(&alice, &Identity::load(&alice, None).unwrap()).unwrap();
    // A child writes; the open handle sees it without reopening.
    let id: u64 = ok(&alice, &["send", "bob", "from the command"])
        .trim()
        .parse()
        .unwrap();
    let queued = db.queued(10).unwrap();
    assert_eq!(queued.len(), 1);
    assert_eq!(queued[0].id, id);

    // This process (the "daemon") seals, relays and receives; the child sees each step.
    db.mark_sealed(id, ItemId([1; 32])).unwrap();
    db.mark_relayed(&ItemId([1; 32])).unwrap();
    db.record_received(bob, "ack from bob", 10, 20, ItemId([2; 32]))
        .unwrap();
    let seen = json_lines(&ok(&alice, &["messages", "--json"]));
    assert_eq!(seen[0]["status"], "relayed");
    assert_eq!(seen[0]["envelope"], "01".repeat(32));
    assert_eq!(seen[1]["status"], "received");
    assert_eq!(seen[1]["from"], "bob");
    assert_eq!(seen[1]["to"], "me");
    assert_eq!(seen[1]["sent_at"], 10);
    assert_eq!(seen[1]["received_at"], 20);

    // Writers in several processes at once: nothing lost, ids unique.
    let children: Vec<_> = (0..4)
        .map(|i| {
            cairn_command(&alice, &["send", "bob", &format!("child {i}")])
                .stdout(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for i in 0..20 {
        db.queue(bob, &format!("parent {i}"), 30).unwrap();
    }
    for child in children {
        assert!(child.wait_with_output().unwrap().status.success());
    }
    let all = db.messages(None).unwrap();
    assert_eq!(all.len(), 2 + 4 + 20);
    let mut ids: Vec<u64> = all.iter().map(|m| m.id).collect();
    ids.dedup();
    assert_eq!(ids.len(), all.len());
    let counts = db.counts().unwrap();
    assert_eq!(counts.queued, 24);
    assert_eq!(
        all.iter().filter(|m| m.status == Status::Queued).count(),
        24
    );
    let status = json_lines(&ok(&alice, &["status", "--json"]));
    assert_eq!(status[0]["queued"], 24);
    assert_eq!(status[0]["relayed"], 1);
    assert_eq!(status[0]["received"], 1);
}

#[test]
fn the_home_comes_from_the_flag_then_cairn_home_then_the_data_directory() {
    let dir = tempfile::tempdir().unwrap();
    let from_env = dir.path().join("from-env");
    let run = |envs: &[(&str, &Path)], args: &[&str]| {
        let mut command = Command::new(env!("CARGO_BIN_EXE_cairn"));
        command
            .args(args)
            .env_remove("CAIRN_PASSPHRASE")
            .env_remove("CAIRN_HOME")
            .env_remove("XDG_DATA_HOME");
        for (key, value) in envs {
            command.env(key, value);
        }
        command.output().unwrap()
    };
    let init = run(&[("CAIRN_HOME", &from_env)], &["init", "--name", "E"]);
    assert!(init.status.success(), "{}", stderr(&init));
    assert!(from_env.join("identity.key").exists());

    // --home wins over CAIRN_HOME.
    let flag = dir.path().join("flag");
    let init = run(
        &[("CAIRN_HOME", &from_env)],
        &["--home", flag.to_str().unwrap(), "init", "--name", "F"],
    );
    assert!(init.status.success(), "{}", stderr(&init));
    assert!(flag.join("identity.key").exists());

    if cfg!(target_os = "linux") {
        let fake_home = dir.path().join("user");
        let init = run(&[("HOME", &fake_home)], &["init", "--name", "D"]);
        assert!(init.status.success(), "{}", stderr(&init));
        assert!(fake_home.join(".local/share/cairn/identity.key").exists());
    }
}

/// Two people pair in person: each types the other's pairing code, the devices talk over
/// loopback TCP, and both end up with the other as a contact verified in person who can be
/// written to at once.
#[test]
fn pairing_in_person_makes_contacts_verified_in_person() {
    use std::io::{BufRead, BufReader, Write as _};
    let dir = tempfile::tempdir().unwrap();
    let (alice, _) = node(dir.path(), "Alice");
    let (bob, _) = node(dir.path(), "Bob");
    let start = |home: &Path, name: &str| {
        cairn_command(home, &["pair", name, "--listen", "127.0.0.1:0"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let mut at_alice = start(&alice, "Bob");
    let mut at_bob = start(&bob, "Alice");
    let first_line = |child: &mut std::process::Child| {
        let mut line = String::new();
        BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        line
    };
    let (alice_code, bob_code) = (first_line(&mut at_alice), first_line(&mut at_bob));
    assert!(alice_code.starts_with("cairn1:"), "{alice_code}");
    at_alice
        .stdin
        .as_mut()
        .unwrap()
        .write_all(bob_code.as_bytes())
        .unwrap();
    at_bob
        .stdin
        .as_mut()
        .unwrap()
        .write_all(alice_code.as_bytes())
        .unwrap();
    for child in [at_alice, at_bob] {
        let output = child.wait_with_output().unwrap();
        assert!(output.status.success(), "{}", stderr(&output));
        assert!(stdout(&output).contains("verified in person"));
    }
    for (home, peer) in [(&alice, "Bob"), (&bob, "Alice")] {
        let list = json_lines(&ok(home, &["contacts", "list", "--json"]));
        assert_eq!(list.len(), 1);
        assert_eq!(list[0]["name"], peer);
        assert_eq!(list[0]["verification"], "verified-in-person");
    }
    ok(&alice, &["send", "Bob", "paired and ready"]);
}
