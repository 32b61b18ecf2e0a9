//! The `mesh` binary's answers to bad input, and its clean shutdown: every
//! mistake gets a clear message and a non-zero exit, and nothing is changed.
//! These run on loopback only and need no root.

use std::net::UdpSocket;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const MESH: &str = env!("CARGO_BIN_EXE_mesh");

fn mesh(args: &[&str]) -> Output {
    Command::new(MESH).args(args).output().expect("run mesh")
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Starts an agent on loopback with its own data dir and socket.
fn agent(dir: &Path, extra: &[&str]) -> Child {
    Command::new(MESH)
        .args(["agent", "--name", "t", "--bind", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.join("data"))
        .arg("--socket")
        .arg(dir.join("sock"))
        .arg("--docker-plugin-dir")
        .arg(dir.join("plugins"))
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start agent")
}

fn wait_for_socket(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !path.exists() {
        assert!(Instant::now() < deadline, "agent did not open {}", path.display());
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn bad_flags_and_bad_config_fail_with_a_reason() {
    let out = mesh(&["agent", "--bogus"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--bogus"), "{}", stderr(&out));

    let out = mesh(&["agent", "--bind", "not-an-address"]);
    assert!(!out.status.success() && stderr(&out).contains("--bind"), "{}", stderr(&out));

    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("mesh.toml");
    std::fs::write(&config, "name = \"a\"\nbind = 7950\n").expect("write");
    let out = mesh(&["agent", "--config", config.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("bad config file") && stderr(&out).contains("bind"), "{}", stderr(&out));

    let out = mesh(&["agent", "--config", "/nonexistent/mesh.toml"]);
    assert!(!out.status.success() && stderr(&out).contains("cannot read config file"), "{}", stderr(&out));

    let out = mesh(&["agent", "--name", "x", "--join", "198.18.0.1"]);
    assert!(!out.status.success() && stderr(&out).contains("--token"), "{}", stderr(&out));
}

#[test]
fn busy_port_busy_socket_and_unusable_data_dir_are_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let taken = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("addr").to_string();
    let data = dir.path().join("data");
    let out = mesh(&["agent", "--name", "t", "--bind", &port, "--data-dir", data.to_str().expect("utf-8")]);
    assert!(!out.status.success() && stderr(&out).contains("cannot listen on"), "{}", stderr(&out));

    let out = mesh(&["agent", "--name", "t", "--bind", "127.0.0.1:0", "--data-dir", "/proc/version/data"]);
    assert!(!out.status.success() && stderr(&out).contains("data dir"), "{}", stderr(&out));

    let mut first = agent(dir.path(), &[]);
    wait_for_socket(&dir.path().join("sock"));
    let second = agent(dir.path(), &[]).wait_with_output().expect("second agent");
    assert!(!second.status.success() && stderr(&second).contains("already serving"), "{}", stderr(&second));
    first.kill().expect("kill");
    let _ = first.wait();
}

/// What `mesh status` says on `socket` when it gets no answer.
fn status_error(socket: &Path) -> String {
    let out = mesh(&["status", "--socket", socket.to_str().expect("utf-8")]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    stderr(&out)
}

#[test]
fn an_agent_that_fails_at_start_up_leaves_no_socket_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut first = agent(dir.path(), &[]);
    let plugin = dir.path().join("plugins").join("mesh.sock");
    wait_for_socket(&plugin);

    // A second agent with a control socket of its own but the first's
    // Docker plugin dir gets as far as the plugin socket, and stops there.
    let other = dir.path().join("other");
    let socket = other.join("sock");
    let second = Command::new(MESH)
        .args(["agent", "--name", "t2", "--bind", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(other.join("data"))
        .arg("--socket")
        .arg(&socket)
        .arg("--docker-plugin-dir")
        .arg(dir.path().join("plugins"))
        .output()
        .expect("second agent");
    let said = stderr(&second);
    assert!(!second.status.success(), "{said}");
    assert!(said.contains("another agent is already serving") && said.contains("mesh.sock"), "{said}");
    assert!(said.contains("--docker-plugin-dir"), "the hint names the option to change: {said}");
    assert!(!socket.exists(), "the failed agent removed the control socket it made");
    let said = status_error(&socket);
    assert!(said.contains("is `mesh agent` running?") && !said.contains("refused"), "{said}");

    assert!(plugin.exists(), "the first agent keeps its plugin socket");
    let first_socket = dir.path().join("sock");
    let out = mesh(&["status", "--socket", first_socket.to_str().expect("utf-8")]);
    assert!(out.status.success(), "the first agent still answers: {}", stderr(&out));
    first.kill().expect("kill");
    let _ = first.wait();
}

#[test]
fn a_stale_socket_file_gets_the_same_hint_as_a_missing_one() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stale = dir.path().join("sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).expect("bind"));
    assert!(stale.exists(), "a socket file with no one listening");
    let said = status_error(&stale);
    assert!(said.contains("cannot reach the mesh agent"), "{said}");
    assert!(said.contains("is `mesh agent` running?"), "{said}");
    assert_eq!(said, status_error(&dir.path().join("missing")).replace("missing", "sock"), "stale or missing alike");
}

#[test]
fn client_commands_explain_what_is_wrong() {
    let out = mesh(&["members", "--socket", "/nonexistent/mesh.sock"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("cannot reach the mesh agent"), "{}", stderr(&out));

    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = agent(dir.path(), &[]);
    let socket = dir.path().join("sock");
    wait_for_socket(&socket);
    let sock = socket.to_str().expect("utf-8");
    for command in ["members", "token", "leave"] {
        let out = mesh(&[command, "--socket", sock]);
        assert!(!out.status.success() && stderr(&out).contains("mesh init"), "{command}: {}", stderr(&out));
    }
    let out = mesh(&["join", "nowhere.invalid", "--token", "x", "--socket", sock]);
    assert!(!out.status.success() && stderr(&out).contains("bad join token"), "{}", stderr(&out));
    let status = mesh(&["status", "--socket", sock, "--format", "json"]);
    assert!(String::from_utf8_lossy(&status.stdout).contains("\"uninitialized\""));

    // init works once, then says why it will not run again.
    let token = mesh(&["init", "--socket", sock]);
    assert!(token.status.success(), "{}", stderr(&token));
    assert!(String::from_utf8_lossy(&token.stdout).starts_with("mesh1."));
    let again = mesh(&["init", "--socket", sock]);
    assert!(!again.status.success() && stderr(&again).contains("already in a cluster"), "{}", stderr(&again));
    child.kill().expect("kill");
    let _ = child.wait();
}

#[test]
fn sigterm_stops_cleanly_and_json_logs_are_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let child = agent(dir.path(), &["--log-format", "json"]);
    let socket = dir.path().join("sock");
    wait_for_socket(&socket);
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(killed.success());
    let out = child.wait_with_output().expect("agent output");
    assert!(out.status.success(), "exit: {:?}\n{}", out.status, stderr(&out));
    assert!(!socket.exists(), "the control socket is removed on shutdown");
    let logs = stderr(&out);
    assert!(logs.lines().count() >= 2, "{logs}");
    for line in logs.lines() {
        let value: serde_json::Value = serde_json::from_str(line).expect("each log line is JSON");
        assert!(value.get("level").is_some(), "{line}");
    }
}

#[test]
fn an_empty_docker_plugin_dir_turns_the_plugin_off() {
    let dir = tempfile::tempdir().expect("tempdir");
    let child = Command::new(MESH)
        .args(["agent", "--name", "t", "--bind", "127.0.0.1:0", "--docker-plugin-dir", ""])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--socket")
        .arg(dir.path().join("sock"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start agent");
    wait_for_socket(&dir.path().join("sock"));
    let killed = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().expect("kill");
    assert!(killed.success());
    let out = child.wait_with_output().expect("agent output");
    assert!(out.status.success(), "exit: {:?}\n{}", out.status, stderr(&out));
    assert!(!stderr(&out).to_lowercase().contains("docker"), "no plugin is served: {}", stderr(&out));
}

#[test]
fn completions_and_the_man_page_come_from_the_command_line_definition() {
    let bash = mesh(&["completions", "bash"]);
    assert!(bash.status.success(), "{}", stderr(&bash));
    let script = String::from_utf8_lossy(&bash.stdout);
    assert!(script.contains("complete -F _mesh") && script.contains("events"), "{script}");
    for shell in ["zsh", "fish"] {
        let out = mesh(&["completions", shell]);
        assert!(out.status.success() && out.stdout.len() > 1000, "{shell}: {}", stderr(&out));
    }
    let out = mesh(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2), "an unknown shell is a usage error");

    let man = mesh(&["manpage"]);
    assert!(man.status.success(), "{}", stderr(&man));
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(page.starts_with(".ie") || page.starts_with(".TH"), "roff: {}", &page[..page.len().min(200)]);
    for wanted in [".SH COMMANDS", "mesh network create", "\\-\\-metrics\\-addr", "MESH_SOCKET"] {
        assert!(page.contains(wanted), "the man page lacks {wanted}");
    }
}

#[test]
fn under_a_service_manager_the_agent_says_when_it_is_ready_and_stopping() {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().expect("tempdir");
    let notify = dir.path().join("notify");
    let manager = UnixDatagram::bind(&notify).expect("bind the notification socket");
    manager.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
    let mut child = Command::new(MESH)
        .args(["agent", "--name", "t", "--bind", "127.0.0.1:0", "--docker-plugin-dir", ""])
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .arg("--socket")
        .arg(dir.path().join("sock"))
        .env("NOTIFY_SOCKET", &notify)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start agent");
    let mut buffer = [0u8; 64];
    let n = manager.recv(&mut buffer).expect("READY=1 within 10 s");
    assert_eq!(&buffer[..n], b"READY=1");
    assert!(dir.path().join("sock").exists(), "ready means the control socket is there");
    let pid = child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().expect("kill").success());
    let n = manager.recv(&mut buffer).expect("STOPPING=1");
    assert_eq!(&buffer[..n], b"STOPPING=1");
    assert!(child.wait().expect("wait").success());
}
