//! `execute_code` end to end: a board item's run (the echo provider's `/tool` command) runs
//! python in the sandbox with the item's workspace mounted; a file the code writes is then
//! downloadable through the workspace API, and a file over the workspace limit is reported in
//! the tool result, not silently dropped. Skipped without bubblewrap unless
//! `TESSERA_REQUIRE_SANDBOX=1`.

use std::time::Duration;

use serde_json::json;
use tessera_client::models::{
    BoardItemStatus, CreateBoardItemRequest, ScheduleKind, ScheduleSpec, UpdateBoardItemRequest,
};
use tessera_domain::Timestamp;
use tessera_store::backend_tests;
use tessera_store::testing::TestDatabase;

use crate::helpers::{poll_until, spawn_app_with};

backend_tests!(code_written_files_reach_the_workspace_api);

const CODE: &str = r#"
import json, os, sys
data = json.load(sys.stdin)
print("sum", sum(data["numbers"]))
print(open("/workspace/in/numbers.txt").read().strip())
os.makedirs("out", exist_ok=True)
with open("out/result.json", "w") as f:
    json.dump({"sum": sum(data["numbers"])}, f)
with open("big.bin", "wb") as f:
    f.write(b"x" * 5000)
"#;

async fn code_written_files_reach_the_workspace_api(db: &TestDatabase) {
    if tessera_runtime::sandbox::sandbox_for_tests()
        .await
        .is_none()
    {
        return;
    }
    let app = spawn_app_with(db, |c| c.max_upload_bytes = 4096).await;
    let actor = app.actor("u1").await;
    let agent = app.agent("coder").await;
    let project = app.project(&actor.id, &agent.id, "p").await;
    let projects = app.client.ai().actor_projects();

    // The item waits for a slot an hour away while its input file is uploaded, then is
    // rescheduled to now.
    let call = json!({"language": "python", "code": CODE, "stdin": {"numbers": [1, 2, 3]}});
    let later = ScheduleSpec {
        schedule_kind: ScheduleKind::Once,
        next_run_at: Some(Timestamp::now().plus_millis(3_600_000).to_rfc3339()),
        interval_seconds: None,
        overlap: None,
    };
    let item = projects
        .create_board_item(
            &project.id,
            CreateBoardItemRequest {
                title: "Sum".into(),
                description: format!("/tool execute_code {call}"),
                schedule: Some(later),
                assigned_thread_id: None,
                capability_tags: None,
            },
        )
        .send()
        .await
        .unwrap();
    projects
        .upload_board_item_filesystem_file(
            &project.id,
            &item.id,
            "/in/numbers.txt",
            b"1 2 3\n".to_vec(),
            "text/plain",
        )
        .send()
        .await
        .unwrap();
    let now = ScheduleSpec {
        schedule_kind: ScheduleKind::Once,
        next_run_at: Some(Timestamp::now().to_rfc3339()),
        interval_seconds: None,
        overlap: None,
    };
    projects
        .update_board_item(
            &project.id,
            &item.id,
            UpdateBoardItemRequest {
                schedule: Some(Some(now)),
                ..Default::default()
            },
        )
        .send()
        .await
        .unwrap();
    let done = poll_until("the item completes", Duration::from_secs(60), || async {
        let item = projects
            .get_board_item(&project.id, &item.id)
            .send()
            .await
            .unwrap();
        match item.status {
            BoardItemStatus::Completed | BoardItemStatus::Failed => Ok(item),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let result = done.last_run.unwrap().result.unwrap();
    let line = result
        .lines()
        .find_map(|l| l.strip_prefix("tool execute_code returned: "))
        .unwrap_or_else(|| panic!("no execute_code result in {result}"));
    let value: serde_json::Value = serde_json::from_str(line).unwrap();
    assert_eq!(value["exit_code"], 0, "{value}");
    assert_eq!(value["stdout"], "sum 6\n1 2 3\n", "{value}");
    assert_eq!(
        value["files_written"],
        json!([{"path": "/out/result.json", "size": 10}])
    );
    let skipped = value["files_skipped"].as_array().unwrap();
    assert_eq!(skipped.len(), 1, "{value}");
    assert_eq!(skipped[0]["path"], "/big.bin");
    assert!(
        skipped[0]["reason"].as_str().unwrap().contains("4096"),
        "{value}"
    );

    let file = projects
        .download_board_item_filesystem_file(&project.id, &item.id, "/out/result.json")
        .send()
        .await
        .unwrap();
    assert_eq!(file.data, br#"{"sum": 6}"#);
    let root = projects
        .list_board_item_filesystem(&project.id, &item.id, None)
        .send()
        .await
        .unwrap();
    let names: Vec<&str> = root.entries.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(names, ["/in", "/out"], "big.bin was not stored");
    app.stop().await;
}
