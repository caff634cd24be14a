//! The code sandbox against the real bubblewrap: each language sees its stdin, the network,
//! the file system outside `/workspace` and `/tmp`, and the server's environment and files are
//! out of reach, and each limit ends a run that runs into it. Skipped when bubblewrap is absent,
//! unless `TESSERA_REQUIRE_SANDBOX=1` (CI) makes that a failure.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

use std::path::Path;

use serde_json::{json, Value};
use tessera_runtime::sandbox::{
    CodeRun, Language, Limit, RunOutcome, Sandbox, SandboxConfig, SandboxError, SandboxLimits,
};

async fn sandbox() -> Option<Sandbox> {
    tessera_runtime::sandbox::sandbox_for_tests().await
}

fn run(language: Language, code: &str, stdin: Value) -> CodeRun {
    CodeRun {
        language,
        code: code.to_owned(),
        stdin: stdin.to_string().into_bytes(),
        workspace: None,
        network: false,
        limits: SandboxLimits::default(),
    }
}

async fn exec(sandbox: &Sandbox, run: CodeRun) -> RunOutcome {
    sandbox.run(run).await.expect("the sandbox runs")
}

#[tokio::test]
async fn each_language_runs_and_reads_its_json_input() {
    let Some(sandbox) = sandbox().await else {
        return;
    };
    let input = json!({"n": 21, "who": "sandbox"});
    let python = "import json, sys\nd = json.load(sys.stdin)\nprint(d['who'], d['n'] * 2)";
    let js = "let s='';process.stdin.on('data',c=>s+=c).on('end',()=>{const d=JSON.parse(s);console.log(d.who, d.n*2)})";
    let bash = "read -r line; echo \"$line\" | tr -d '{}\"' ; echo done";
    for (language, code, expected) in [
        (Language::Python, python, "sandbox 42\n"),
        (Language::Javascript, js, "sandbox 42\n"),
        (Language::Bash, bash, "n:21,who:sandbox\ndone\n"),
    ] {
        let out = exec(&sandbox, run(language, code, input.clone())).await;
        assert_eq!(out.stdout, expected, "{language:?}: {out:?}");
        assert_eq!(out.exit_code, Some(0), "{language:?}: {out:?}");
        assert_eq!(out.limit, None);
        assert!(out.sandboxed);
    }
    // A failing program: its stderr and exit code come back.
    let out = exec(
        &sandbox,
        run(
            Language::Python,
            "import sys\nsys.stderr.write('bad input\\n')\nsys.exit(3)",
            json!({}),
        ),
    )
    .await;
    assert_eq!(out.exit_code, Some(3));
    assert_eq!(out.stderr, "bad input\n");
}

const CONNECT: &str = r#"
import json, socket, sys
port = json.load(sys.stdin)["port"]
try:
    socket.create_connection(("127.0.0.1", port), timeout=5).close()
    print("connected")
except OSError as e:
    print("refused", e)
"#;

#[tokio::test]
async fn the_network_is_off_unless_allowed() {
    let Some(sandbox) = sandbox().await else {
        return;
    };
    // A port on the host's loopback (like the database's 5432).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = tokio::spawn(async move { listener.accept().await.is_ok() });

    let out = exec(
        &sandbox,
        run(Language::Python, CONNECT, json!({"port": port})),
    )
    .await;
    assert!(out.stdout.starts_with("refused"), "{out:?}");

    let mut allowed = run(Language::Python, CONNECT, json!({"port": port}));
    allowed.network = true;
    let out = exec(&sandbox, allowed).await;
    assert_eq!(out.stdout, "connected\n", "{out:?}");
    assert!(accepted.await.unwrap());
}

#[tokio::test]
async fn only_the_workspace_and_tmp_are_writable_and_the_workspace_persists() {
    let Some(sandbox) = sandbox().await else {
        return;
    };
    let workspace = tempfile::tempdir().unwrap();
    std::fs::write(workspace.path().join("given.txt"), "from the host").unwrap();
    let code = r#"
import os
for path in ["/usr/x", "/etc/x", "/x", "/code/x", "/proc/x", "/home/x", "/root/x"]:
    try:
        open(path, "w").write("x")
        print("WROTE", path)
    except OSError as e:
        print("refused", path, e.errno)
open("/tmp/scratch", "w").write("tmp ok")
print(open("/tmp/scratch").read())
print(open("given.txt").read(), os.getcwd())
os.makedirs("/workspace/out", exist_ok=True)
open("/workspace/out/made.txt", "w").write("made in the sandbox")
"#;
    let mut r = run(Language::Python, code, json!({}));
    r.workspace = Some(workspace.path().to_owned());
    let out = exec(&sandbox, r).await;
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    assert!(!out.stdout.contains("WROTE"), "{}", out.stdout);
    assert_eq!(out.stdout.matches("refused").count(), 7, "{}", out.stdout);
    assert!(
        out.stdout.contains("tmp ok\nfrom the host /workspace\n"),
        "{}",
        out.stdout
    );
    assert_eq!(
        std::fs::read_to_string(workspace.path().join("out/made.txt")).unwrap(),
        "made in the sandbox"
    );
}

#[tokio::test]
async fn the_servers_environment_and_files_are_invisible() {
    let Some(sandbox) = sandbox().await else {
        return;
    };
    // A secret in the server's environment, and a data directory with a secret file.
    std::env::set_var("TESSERA_TEST_SANDBOX_SECRET", "hunter2-secret-value");
    let data_dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let secret_file = data_dir.path().join("secrets.key");
    std::fs::write(&secret_file, "hunter2-secret-value").unwrap();
    let code = r#"
import json, os, sys
paths = json.load(sys.stdin)["paths"]
print(json.dumps(dict(os.environ)))
for path in paths:
    try:
        print("READ", path, open(path).read()[:40])
    except OSError as e:
        print("refused", path, e.errno)
# Every process this sandbox can see.
for pid in os.listdir("/proc"):
    if pid.isdigit():
        try:
            print("env of", pid, open(f"/proc/{pid}/environ").read())
        except OSError:
            pass
"#;
    let paths = json!({"paths": [
        secret_file.to_str().unwrap(),
        "/etc/shadow",
        "/etc/passwd",
        format!("/proc/{}/environ", std::process::id()),
        "/root/.bash_history",
    ]});
    let out = exec(&sandbox, run(Language::Python, code, paths)).await;
    assert_eq!(out.exit_code, Some(0), "{out:?}");
    assert!(!out.stdout.contains("hunter2"), "{}", out.stdout);
    assert!(!out.stdout.contains("READ"), "{}", out.stdout);
    assert!(
        !out.stdout.contains("TESSERA_TEST_SANDBOX_SECRET"),
        "{}",
        out.stdout
    );
    let env: Value = serde_json::from_str(out.stdout.lines().next().unwrap()).unwrap();
    let names: Vec<&String> = env.as_object().unwrap().keys().collect();
    // Only the minimal environment the sandbox sets (bubblewrap adds PWD, Python LC_CTYPE).
    for name in &names {
        assert!(
            ["PATH", "HOME", "TMPDIR", "LANG", "PWD", "LC_CTYPE"].contains(&name.as_str()),
            "unexpected variable {name} in {names:?}"
        );
    }
}

#[tokio::test]
async fn each_limit_ends_the_run_that_hits_it() {
    let Some(sandbox) = sandbox().await else {
        return;
    };
    // The wall clock is far away except for the sleeper, so that on a loaded machine each
    // case still ends by its own limit (CPU time only accrues while the program runs).
    let limits = SandboxLimits {
        cpu_seconds: 1,
        memory_bytes: 256 * 1024 * 1024,
        max_processes: 16,
        output_bytes: 64 * 1024,
        wall_clock_seconds: 600,
        ..SandboxLimits::default()
    };
    let cases = [
        (
            "fork bomb",
            Language::Python,
            "import os\nwhile True:\n    os.fork()",
            Limit::Processes,
        ),
        // Node reserves address space up front: it needs about 1 GiB to start at all.
        (
            "javascript under a small address space",
            Language::Javascript,
            "console.log('started')",
            Limit::Memory,
        ),
        // Forks until bash gives up (after its own retries); `set -e` makes that the end.
        (
            "bash fork loop",
            Language::Bash,
            "set -e\nwhile true; do sleep 100 & done",
            Limit::Processes,
        ),
        (
            "memory hog",
            Language::Python,
            "x = []\nwhile True:\n    x.append(bytearray(16 * 1024 * 1024))",
            Limit::Memory,
        ),
        (
            "javascript memory hog",
            Language::Javascript,
            "const a = []; while (true) a.push(new Array(1e6).fill(1.5));",
            Limit::Memory,
        ),
        (
            "infinite loop",
            Language::Python,
            "while True:\n    pass",
            Limit::CpuTime,
        ),
        ("sleeper", Language::Bash, "sleep 1000", Limit::WallClock),
        (
            "huge output",
            Language::Python,
            "import sys\nwhile True:\n    sys.stdout.write('y' * 65536)",
            Limit::Output,
        ),
        (
            "10 GB through bash",
            Language::Bash,
            "head -c 10000000000 /dev/zero",
            Limit::Output,
        ),
    ];
    for (name, language, code, limit) in cases {
        let mut r = run(language, code, json!({}));
        r.limits = limits;
        if name == "javascript memory hog" {
            r.limits.memory_bytes = 1024 * 1024 * 1024;
            r.limits.cpu_seconds = 120;
        }
        if name == "sleeper" {
            r.limits.wall_clock_seconds = 2;
        }
        let out = exec(&sandbox, r).await;
        assert_eq!(out.limit, Some(limit), "{name}: {out:?}");
        if limit == Limit::Output {
            assert!(out.output_truncated);
            assert_eq!(out.stdout.len() + out.stderr.len(), 64 * 1024, "{name}");
        }
        if matches!(limit, Limit::Output | Limit::WallClock) {
            assert_eq!(out.exit_code, None, "{name}: killed, no exit code");
        }
    }
}

#[tokio::test]
async fn a_missing_bubblewrap_fails_closed() {
    let config = SandboxConfig {
        bwrap_path: "/nonexistent/bwrap".into(),
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::new(config);
    let err = sandbox
        .run(run(Language::Bash, "echo should not run", json!({})))
        .await;
    match err {
        Err(SandboxError::Unavailable(message)) => {
            assert!(message.contains("bubblewrap"), "{message}")
        }
        other => panic!("expected the sandbox to be unavailable, got {other:?}"),
    }
}

#[tokio::test]
async fn the_operator_may_allow_unsandboxed_runs_explicitly() {
    if !Path::new("/usr/bin/bash").exists() {
        return;
    }
    let config = SandboxConfig {
        bwrap_path: "/nonexistent/bwrap".into(),
        allow_unsandboxed: true,
        ..SandboxConfig::default()
    };
    let sandbox = Sandbox::new(config);
    let out = exec(
        &sandbox,
        run(Language::Bash, "cat; echo; pwd", json!({"a": 1})),
    )
    .await;
    assert!(!out.sandboxed, "the result says it ran without a sandbox");
    assert!(out.stdout.starts_with("{\"a\":1}\n"), "{out:?}");
    assert_eq!(out.exit_code, Some(0));
}
