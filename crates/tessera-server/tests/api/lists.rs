//! Lists: `{data, has_more, first_id, last_id}`, oldest first, `after`/`before` cursors,
//! default limit 50, maximum 100.

use serde_json::{json, Value};
use tessera_client::models::ListActorsParams;
use tessera_store::backend_tests;
use tessera_store::testing::TestDatabase;

use crate::helpers::{spawn_app, TestApp};

backend_tests!(
    empty_lists_have_the_list_shape,
    pages_forward_and_backward,
    default_limit_is_50_and_maximum_100,
    every_list_pages_the_same_way,
);

fn ids(page: &Value) -> Vec<String> {
    page["data"]
        .as_array()
        .unwrap_or_else(|| panic!("no data array: {page}"))
        .iter()
        .map(|item| item["id"].as_str().unwrap().to_owned())
        .collect()
}

#[track_caller]
fn assert_page(page: &Value, expected: &[String], has_more: bool) {
    assert_eq!(ids(page), expected, "page {page}");
    assert_eq!(page["has_more"], has_more, "has_more of {page}");
    assert_eq!(
        page["first_id"].as_str(),
        expected.first().map(String::as_str),
        "first_id of {page}"
    );
    assert_eq!(
        page["last_id"].as_str(),
        expected.last().map(String::as_str),
        "last_id of {page}"
    );
}

async fn empty_lists_have_the_list_shape(db: &TestDatabase) {
    let app = spawn_app(db).await;
    for path in ["/ai/actors", "/ai/agents", "/ai/actor-projects"] {
        let resp = app.get(path).await;
        assert_eq!(
            resp.ok(200),
            &json!({"data": [], "has_more": false, "first_id": null, "last_id": null}),
            "GET {path}"
        );
    }
    app.stop().await;
}

async fn pages_forward_and_backward(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let mut all = Vec::new();
    for i in 0..7 {
        all.push(app.actor(&format!("a{i}")).await.id);
    }
    let mut sorted = all.clone();
    sorted.sort();
    assert_eq!(sorted, all, "ids sort by creation");

    let p1 = app.get("/ai/actors?limit=3").await;
    assert_page(p1.ok(200), &all[0..3], true);
    let p2 = app
        .get(&format!("/ai/actors?limit=3&after={}", all[2]))
        .await;
    assert_page(p2.ok(200), &all[3..6], true);
    let p3 = app
        .get(&format!("/ai/actors?limit=3&after={}", all[5]))
        .await;
    assert_page(p3.ok(200), &all[6..7], false);
    let past = app
        .get(&format!("/ai/actors?limit=3&after={}", all[6]))
        .await;
    assert_page(past.ok(200), &[], false);

    // Backwards from the last page: each page is still oldest first.
    let b2 = app
        .get(&format!("/ai/actors?limit=3&before={}", all[6]))
        .await;
    assert_page(b2.ok(200), &all[3..6], true);
    let b1 = app
        .get(&format!("/ai/actors?limit=3&before={}", all[3]))
        .await;
    assert_page(b1.ok(200), &all[0..3], false);
    let b0 = app
        .get(&format!("/ai/actors?limit=3&before={}", all[0]))
        .await;
    assert_page(b0.ok(200), &[], false);
    let partial = app
        .get(&format!("/ai/actors?limit=3&before={}", all[2]))
        .await;
    assert_page(partial.ok(200), &all[0..2], false);

    // The SDK sees the same pages.
    let page = app
        .client
        .ai()
        .actors()
        .list_actors(ListActorsParams {
            limit: Some(4),
            after: Some(all[0].clone()),
            ..Default::default()
        })
        .send()
        .await
        .unwrap();
    let got: Vec<String> = page.data.iter().map(|a| a.id.clone()).collect();
    assert_eq!(got, all[1..5]);
    assert!(page.has_more);
    assert_eq!(page.first_id.as_deref(), Some(all[1].as_str()));
    assert_eq!(page.last_id.as_deref(), Some(all[4].as_str()));
    app.stop().await;
}

async fn default_limit_is_50_and_maximum_100(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let mut all = Vec::new();
    for i in 0..101 {
        all.push(app.actor(&format!("bulk-{i:03}")).await.id);
    }
    let first = app.get("/ai/actors").await;
    assert_page(first.ok(200), &all[..50], true);
    let max = app.get("/ai/actors?limit=100").await;
    assert_page(max.ok(200), &all[..100], true);
    let rest = app
        .get(&format!("/ai/actors?limit=100&after={}", all[99]))
        .await;
    assert_page(rest.ok(200), &all[100..], false);
    let back = app.get(&format!("/ai/actors?before={}", all[100])).await;
    assert_page(back.ok(200), &all[50..100], true);
    app.stop().await;
}

/// Walks `path` forwards and backwards with `limit` and checks it yields `expected` in order.
async fn walk(app: &TestApp, path: &str, expected: &[String], limit: usize) {
    let sep = if path.contains('?') { '&' } else { '?' };
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(after) => format!("{path}{sep}limit={limit}&after={after}"),
            None => format!("{path}{sep}limit={limit}"),
        };
        let resp = app.get(&url).await;
        let page = resp.ok(200);
        let page_ids = ids(page);
        assert!(page_ids.len() <= limit, "GET {url}: {page}");
        let more = page["has_more"].as_bool().unwrap();
        seen.extend(page_ids.clone());
        assert!(seen.len() <= expected.len() + 1, "GET {path} does not end");
        if !more {
            break;
        }
        assert_eq!(
            page_ids.len(),
            limit,
            "a page with more after it is full: {page}"
        );
        cursor = page["last_id"].as_str().map(str::to_owned);
    }
    assert_eq!(seen, expected, "forward walk of {path}");

    let mut back = Vec::new();
    let mut before = expected.last().cloned();
    back.push(before.clone().unwrap());
    loop {
        let url = format!(
            "{path}{sep}limit={limit}&before={}",
            before.clone().unwrap()
        );
        let resp = app.get(&url).await;
        let page = resp.ok(200);
        let page_ids = ids(page);
        let mut sorted = page_ids.clone();
        sorted.sort();
        assert_eq!(
            page_ids, sorted,
            "GET {url}: a backward page is still oldest first"
        );
        for id in page_ids.iter().rev() {
            back.push(id.clone());
        }
        if !page["has_more"].as_bool().unwrap() {
            break;
        }
        before = page["first_id"].as_str().map(str::to_owned);
        assert!(
            back.len() <= expected.len() + 1,
            "backward walk of {path} does not end"
        );
    }
    back.reverse();
    assert_eq!(back, expected, "backward walk of {path}");
}

async fn every_list_pages_the_same_way(db: &TestDatabase) {
    let app = spawn_app(db).await;
    let actor = app.actor("owner").await;
    let mut agents = Vec::new();
    let mut projects = Vec::new();
    let mut keys = vec![app.get("/secret-keys").await.body["data"][0]["id"]
        .as_str()
        .unwrap()
        .to_owned()];
    for i in 0..5 {
        let agent = app.agent(&format!("agent {i}")).await;
        projects.push(app.project(&actor.id, &agent.id, &format!("p{i}")).await.id);
        agents.push(agent.id);
        let key = app
            .post("/secret-keys", json!({"name": format!("k{i}")}))
            .await;
        keys.push(key.ok(201)["id"].as_str().unwrap().to_owned());
    }
    for limit in [1, 2, 5, 100] {
        walk(&app, "/ai/agents", &agents, limit).await;
        walk(&app, "/ai/actor-projects", &projects, limit).await;
        walk(
            &app,
            &format!("/ai/actor-projects?actor_id={}", actor.id),
            &projects,
            limit,
        )
        .await;
        walk(&app, "/secret-keys", &keys, limit).await;
    }
    app.stop().await;
}
