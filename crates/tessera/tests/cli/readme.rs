//! The README's walk-through, run verbatim against a real server: if a user can copy it, so can
//! this test.

use std::process::Stdio;

use tessera_store::testing::TestDatabase;

use crate::support::{bootstrap_key, Server};

/// The shell code between the walk-through markers of README.md.
fn walkthrough() -> String {
    shell_between("walkthrough")
}

/// The shell code of the README's ```sh blocks between `<!-- NAME:start -->` and
/// `<!-- NAME:end -->`.
fn shell_between(name: &str) -> String {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../README.md"))
        .expect("README.md is readable");
    let start = readme
        .find(&format!("<!-- {name}:start -->"))
        .unwrap_or_else(|| panic!("README has the {name} start marker"));
    let end = readme
        .find(&format!("<!-- {name}:end -->"))
        .unwrap_or_else(|| panic!("README has the {name} end marker"));
    let section = &readme[start..end];
    let mut script = String::new();
    let mut in_block = false;
    for line in section.lines() {
        if line.starts_with("```") {
            in_block = line.trim() == "```sh";
            continue;
        }
        if in_block {
            script.push_str(line);
            script.push('\n');
        }
    }
    assert!(script.contains("curl"), "the walk-through has commands");
    script
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_walkthrough_runs_verbatim() {
    let db = TestDatabase::sqlite();
    let key = bootstrap_key();
    let server = Server::start(&db.url, &key).await;
    let output = tokio::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &walkthrough()])
        .env("TESSERA_URL", &server.url)
        .env("TESSERA_API_KEY", &key)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "walk-through failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains(r#""external_key":"ext-1234""#), "{stdout}");
    assert!(stdout.contains("actor: actor_"), "{stdout}");
    assert!(stdout.contains("agent: agent_"), "{stdout}");
    assert!(stdout.contains("project: proj_"), "{stdout}");
    assert!(stdout.contains("thread: thread_"), "{stdout}");
    assert!(stdout.contains(r#""status":"queued""#), "{stdout}");
    // The stream replayed the first run's reply and the tool call's notification.
    assert!(stdout.contains("event: message.completed"), "{stdout}");
    assert!(
        stdout.contains(r#""content":"Hello, Tessera!""#),
        "{stdout}"
    );
    assert!(stdout.contains("event: notification"), "{stdout}");
    assert!(
        stdout.contains(r#""content":"tool notify_user returned: the user was notified""#),
        "{stdout}"
    );
    // Step 10 minted a chat link.
    assert!(stdout.contains("/vanity/agents?ticket=tkt_"), "{stdout}");
    assert!(
        stdout.contains(r#""code":"validation_failed""#)
            && stdout.contains(r#""field":"instructions""#),
        "{stdout}"
    );
    db.cleanup().await;
}

/// The board section: a scheduled item whose run writes a file, then its download.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_board_section_runs_verbatim() {
    let db = TestDatabase::sqlite();
    let key = bootstrap_key();
    let server = Server::start(&db.url, &key).await;
    let output = tokio::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &shell_between("boards")])
        .env("TESSERA_URL", &server.url)
        .env("TESSERA_API_KEY", &key)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "board section failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    assert!(stdout.contains("item: item_"), "{stdout}");
    assert!(stdout.contains(r#""status":"completed""#), "{stdout}");
    assert!(stdout.contains(r#""task_key":"TASK-1""#), "{stdout}");
    assert!(stdout.contains(r#""path":"/out/report.md""#), "{stdout}");
    assert!(
        stdout.contains("content-disposition: attachment; filename=\"report.md\""),
        "{stdout}"
    );
    assert!(stdout.contains("cache-control: no-store"), "{stdout}");
    assert!(
        stdout.contains("content-type: text/markdown; charset=utf-8"),
        "{stdout}"
    );
    assert!(
        stdout.trim_end().ends_with("All systems nominal."),
        "{stdout}"
    );
    db.cleanup().await;
}

/// The session-management cycle (ask → pending_action → confirm → result) of the README, run
/// verbatim.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_session_cycle_runs_verbatim() {
    let db = TestDatabase::sqlite();
    let key = bootstrap_key();
    let server = Server::start(&db.url, &key).await;
    let output = tokio::process::Command::new("bash")
        .args([
            "-euo",
            "pipefail",
            "-c",
            &shell_between("sessions-walkthrough"),
        ])
        .env("TESSERA_URL", &server.url)
        .env("TESSERA_API_KEY", &key)
        .stdin(Stdio::null())
        .output()
        .await
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "session cycle failed\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    for expected in [
        r#""status":"waiting_for_input""#,
        r#""preview":{"message":"Your order #123 has shipped"}"#,
        r#""status":"processing""#,
        r#""callback_id":"cb_"#,
        r#""content":"tool notify_user returned: the user was notified""#,
        r#""action_results":[{"action_id":"act_"#,
        r#""result":"the user was notified""#,
        r#""content":"Thanks!""#,
        r#""billable":true"#,
        r#""billable_sessions":1"#,
    ] {
        assert!(
            stdout.contains(expected),
            "missing {expected} in:\n{stdout}"
        );
    }
    db.cleanup().await;
}

/// The tools section: one agent using an `Api`, a `CodeRunner` and an `Mcp` tool in one
/// conversation, run verbatim. It needs bubblewrap and the MCP reference server: skipped
/// without them unless `TESSERA_REQUIRE_SANDBOX=1` / `TESSERA_REQUIRE_MCP=1` (with
/// `TESSERA_TEST_MCP_EVERYTHING` naming the server-everything executable).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_tools_section_runs_verbatim() {
    use tessera_runtime::mcp::testing::{everything_bin, Everything};
    if tessera_runtime::sandbox::sandbox_for_tests()
        .await
        .is_none()
    {
        return;
    }
    let Some(bin) = everything_bin() else {
        return;
    };
    let mcp = Everything::on_free_port(&bin).await;
    let db = TestDatabase::sqlite();
    let key = bootstrap_key();
    // As the README starts it: both guards opened for loopback.
    let server = Server::start_with_env(
        &db.url,
        &key,
        &[
            ("TESSERA_TOOLS__ALLOW_HOSTS", r#"["127.0.0.1"]"#.to_owned()),
            ("TESSERA_MCP__ALLOW_PRIVATE", "true".to_owned()),
        ],
    )
    .await;
    let output = tokio::process::Command::new("bash")
        .args([
            "-euo",
            "pipefail",
            "-c",
            &shell_between("tools-walkthrough"),
        ])
        .env("TESSERA_URL", &server.url)
        .env("TESSERA_API_KEY", &key)
        .env("MCP_URL", mcp.url())
        .stdin(Stdio::null())
        .output()
        .await
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "tools section failed\nstdout:\n{stdout}\nstderr:\n{stderr}\nlog:\n{}",
        server.log()
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    assert_eq!(
        lines[0],
        r#""content":"tool server_health returned: {\"status\":\"ok\"}"#
    );
    assert!(
        lines[1].starts_with(r#""content":"tool sum returned: {\"exit_code\":0,"#)
            && lines[1].contains(r#"\"stdout\":\"42\\n\""#),
        "{stdout}"
    );
    assert_eq!(
        lines[2],
        r#""content":"tool mcp_ev_echo returned: Echo: hello MCP""#
    );
    db.cleanup().await;
}
