//! Conformance of tool records: CRUD with optimistic versions, sealed secrets stored apart,
//! attachment to agents (existence, unique names per agent, deletion refused while attached,
//! renames that would clash), tenancy, and platform events with their outbox row.

#![allow(clippy::unwrap_used, clippy::expect_used)] // Tests fail loudly by design.

mod common;
use common::*;

use tessera_domain::token::SecretsKey;
use tessera_domain::tool::{
    ApiAuth, ApiConfig, HttpMethod, InputSchema, NewPlatformEvent, PlatformEventConfig,
    SecretChange, ToolConfig, ToolName, ToolSecret, ToolSpec, UrlTemplate, PLATFORM_EVENT,
};
use tessera_domain::{PlatformEventId, ToolId};

backend_tests!(
    tools_are_created_read_listed_updated_and_deleted,
    secrets_are_stored_sealed_and_kept_or_replaced_on_update,
    agents_attach_existing_tools_with_unique_names,
    attached_tools_cannot_be_deleted_or_renamed_into_a_clash,
    tools_of_another_deployment_are_not_found,
    a_platform_event_is_stored_streamed_and_queued,
);

fn api_spec(name: &str, auth: ApiAuth) -> ToolSpec {
    ToolSpec {
        name: ToolName::parse("name", name).unwrap(),
        description: "looks things up".into(),
        input_schema: InputSchema::any_object(),
        requires_confirmation: false,
        confirmation_expires_in_seconds: None,
        timeout_seconds: Some(5),
        configuration: ToolConfig::Api(ApiConfig {
            url: UrlTemplate::parse("url", "https://api.example.com/x").unwrap(),
            method: HttpMethod::Get,
            headers: Default::default(),
            query_params: vec![],
            auth,
            max_response_bytes: None,
        }),
    }
}

async fn create(store: &Arc<dyn Store>, scope: &Scope, name: &str) -> ToolId {
    let id = ToolId::generate();
    store
        .create_tool(scope, &id, &api_spec(name, ApiAuth::None), None)
        .await
        .unwrap();
    id
}

async fn tools_are_created_read_listed_updated_and_deleted(db: &TestDatabase) {
    let store = open(db).await;
    let scope = deployment(&store, "t1").await;
    let a = create(&store, &scope, "alpha").await;
    let b = create(&store, &scope, "beta").await;
    let got = store.get_tool(&scope, &a).await.unwrap();
    assert_eq!(got.spec, api_spec("alpha", ApiAuth::None));
    assert_eq!(got.version, 1);
    assert_eq!(got.sealed_secret, None);

    let page = store
        .list_tools(&scope, &PageRequest::first(1))
        .await
        .unwrap();
    assert_eq!(page.items.len(), 1);
    assert!(page.has_more);
    assert_eq!(page.items[0].id, a);
    let next = PageRequest {
        limit: 10,
        cursor: Cursor::After(a.as_str().to_owned()),
    };
    let page = store.list_tools(&scope, &next).await.unwrap();
    assert_eq!(
        page.items.iter().map(|t| &t.id).collect::<Vec<_>>(),
        vec![&b]
    );

    let mut spec = got.spec.clone();
    spec.description = "changed".into();
    let updated = store
        .update_tool(&scope, &a, 1, &spec, &SecretChange::Keep)
        .await
        .unwrap();
    assert_eq!(updated.version, 2);
    assert_eq!(updated.spec.description, "changed");
    let stale = store
        .update_tool(&scope, &a, 1, &spec, &SecretChange::Keep)
        .await
        .unwrap_err();
    assert!(
        matches!(stale, StoreError::Conflict(Conflict::StaleVersion)),
        "{stale:?}"
    );

    let by_ids = store
        .tools_by_ids(&scope, &[b.clone(), ToolId::generate(), a.clone()])
        .await
        .unwrap();
    assert_eq!(
        by_ids.iter().map(|t| &t.id).collect::<Vec<_>>(),
        vec![&b, &a],
        "in the asked order"
    );

    store.delete_tool(&scope, &a).await.unwrap();
    let gone = store.get_tool(&scope, &a).await.unwrap_err();
    assert!(matches!(
        gone,
        StoreError::NotFound {
            entity: Entity::Tool,
            ..
        }
    ));
    let again = store.delete_tool(&scope, &a).await.unwrap_err();
    assert!(matches!(
        again,
        StoreError::NotFound {
            entity: Entity::Tool,
            ..
        }
    ));
}

async fn secrets_are_stored_sealed_and_kept_or_replaced_on_update(db: &TestDatabase) {
    let store = open(db).await;
    let scope = deployment(&store, "t2").await;
    let key = SecretsKey::generate();
    let id = ToolId::generate();
    let secret = ToolSecret::parse("token", "very-secret-token-123").unwrap();
    let sealed = secret.seal(&key, &id);
    let spec = api_spec("secretive", ApiAuth::Bearer);
    let tool = store
        .create_tool(&scope, &id, &spec, Some(&sealed))
        .await
        .unwrap();
    let stored = tool.sealed_secret.clone().unwrap();
    assert_eq!(stored, sealed);
    assert!(
        !stored
            .windows(b"very-secret".len())
            .any(|w| w == b"very-secret"),
        "the stored bytes do not contain the secret"
    );
    assert_eq!(ToolSecret::open(&key, &id, &stored).unwrap(), secret);
    // The spec as stored has no trace of it either.
    assert!(!serde_json::to_string(&tool.spec)
        .unwrap()
        .contains("very-secret"));

    let found = store.any_sealed_tool_secret().await.unwrap().unwrap();
    assert_eq!(found, (id.clone(), sealed.clone()));

    let kept = store
        .update_tool(&scope, &id, 1, &spec, &SecretChange::Keep)
        .await
        .unwrap();
    assert_eq!(kept.sealed_secret.as_deref(), Some(sealed.as_slice()));
    let other = ToolSecret::parse("token", "another")
        .unwrap()
        .seal(&key, &id);
    let replaced = store
        .update_tool(&scope, &id, 2, &spec, &SecretChange::Set(other.clone()))
        .await
        .unwrap();
    assert_eq!(replaced.sealed_secret, Some(other));
    let cleared = store
        .update_tool(
            &scope,
            &id,
            3,
            &api_spec("secretive", ApiAuth::None),
            &SecretChange::Clear,
        )
        .await
        .unwrap();
    assert_eq!(cleared.sealed_secret, None);
    assert_eq!(store.any_sealed_tool_secret().await.unwrap(), None);
}

async fn agents_attach_existing_tools_with_unique_names(db: &TestDatabase) {
    let store = open(db).await;
    let scope = deployment(&store, "t3").await;
    let a = create(&store, &scope, "lookup").await;
    let b = create(&store, &scope, "lookup").await; // same name: fine until attached together
    let c = create(&store, &scope, "other").await;

    let mut s = spec("agent");
    s.tool_ids = vec![a.clone(), c.clone()];
    let agent = store.create_agent(&scope, &s).await.unwrap();
    assert_eq!(agent.spec.tool_ids, vec![a.clone(), c.clone()]);

    s.tool_ids = vec![a.clone(), b.clone()];
    let clash = store.create_agent(&scope, &s).await.unwrap_err();
    match clash {
        StoreError::Invalid(e) => {
            assert_eq!(e.field, "tool_ids[1]");
            assert!(e.message.contains("lookup"), "{e}");
        }
        other => panic!("expected a validation error, got {other:?}"),
    }
    s.tool_ids = vec![a.clone(), ToolId::generate()];
    let missing = store
        .update_agent(&scope, &agent.id, agent.version, &s)
        .await
        .unwrap_err();
    assert!(
        matches!(
            missing,
            StoreError::NotFound {
                entity: Entity::Tool,
                field: Some("tool_ids"),
                index: Some(1)
            }
        ),
        "{missing:?}"
    );
    // Nothing changed.
    assert_eq!(
        store
            .get_agent(&scope, &agent.id)
            .await
            .unwrap()
            .spec
            .tool_ids,
        vec![a, c]
    );
}

async fn attached_tools_cannot_be_deleted_or_renamed_into_a_clash(db: &TestDatabase) {
    let store = open(db).await;
    let scope = deployment(&store, "t4").await;
    let a = create(&store, &scope, "first").await;
    let b = create(&store, &scope, "second").await;
    let mut s = spec("agent");
    s.tool_ids = vec![a.clone(), b.clone()];
    let agent = store.create_agent(&scope, &s).await.unwrap();

    let in_use = store.delete_tool(&scope, &a).await.unwrap_err();
    assert!(
        matches!(in_use, StoreError::Conflict(Conflict::ToolInUse)),
        "{in_use:?}"
    );

    let renamed = api_spec("first", ApiAuth::None);
    let clash = store
        .update_tool(&scope, &b, 1, &renamed, &SecretChange::Keep)
        .await
        .unwrap_err();
    match clash {
        StoreError::Invalid(e) => assert_eq!(e.field, "name"),
        other => panic!("expected a validation error, got {other:?}"),
    }
    assert_eq!(
        store.get_tool(&scope, &b).await.unwrap().spec.name.as_str(),
        "second"
    );

    // Detached (agent updated), the tool can go; a deleted agent releases its tools too.
    s.tool_ids = vec![b.clone()];
    let agent = store
        .update_agent(&scope, &agent.id, agent.version, &s)
        .await
        .unwrap();
    store.delete_tool(&scope, &a).await.unwrap();
    assert!(matches!(
        store.delete_tool(&scope, &b).await.unwrap_err(),
        StoreError::Conflict(Conflict::ToolInUse)
    ));
    store.delete_agent(&scope, &agent.id).await.unwrap();
    store.delete_tool(&scope, &b).await.unwrap();
}

async fn tools_of_another_deployment_are_not_found(db: &TestDatabase) {
    let store = open(db).await;
    let mine = deployment(&store, "mine").await;
    let theirs = deployment(&store, "theirs").await;
    let id = create(&store, &theirs, "private").await;
    let not_found = |e: StoreError| {
        matches!(
            e,
            StoreError::NotFound {
                entity: Entity::Tool,
                ..
            }
        )
    };
    assert!(not_found(store.get_tool(&mine, &id).await.unwrap_err()));
    assert!(not_found(store.delete_tool(&mine, &id).await.unwrap_err()));
    assert!(not_found(
        store
            .update_tool(
                &mine,
                &id,
                1,
                &api_spec("x", ApiAuth::None),
                &SecretChange::Keep
            )
            .await
            .unwrap_err()
    ));
    assert!(store
        .tools_by_ids(&mine, std::slice::from_ref(&id))
        .await
        .unwrap()
        .is_empty());
    assert!(store
        .list_tools(&mine, &PageRequest::default())
        .await
        .unwrap()
        .items
        .is_empty());
    let mut s = spec("agent");
    s.tool_ids = vec![id.clone()];
    assert!(not_found(store.create_agent(&mine, &s).await.unwrap_err()));
    assert_eq!(store.get_tool(&theirs, &id).await.unwrap().id, id);
}

async fn a_platform_event_is_stored_streamed_and_queued(db: &TestDatabase) {
    let store = open(db).await;
    let t = tenant(&store, "t6").await;
    let tool_id = ToolId::generate();
    let spec = ToolSpec {
        configuration: ToolConfig::PlatformEvent(PlatformEventConfig {
            event_type: "order.refund_requested".into(),
        }),
        ..api_spec("refund", ApiAuth::None)
    };
    store
        .create_tool(&t.scope, &tool_id, &spec, None)
        .await
        .unwrap();
    let th = thread(&store, &t, "events").await;
    queue(&store, &t.scope, &th.id, "go").await;
    let claimed = claim(&store, "node").await;
    let new = NewPlatformEvent {
        id: PlatformEventId::generate(),
        event_type: "order.refund_requested".into(),
        tool_id: tool_id.clone(),
        payload: json!({"order_id": "o-1", "amount": 12}),
        call_id: Some("call_1".into()),
    };
    let (event, events) = store
        .emit_platform_event(&claimed.lease, &new)
        .await
        .unwrap();
    // The same call again (a resumed run repeating it): the stored event, nothing new.
    let (again, more) = store
        .emit_platform_event(
            &claimed.lease,
            &NewPlatformEvent {
                id: PlatformEventId::generate(),
                payload: json!({"order_id": "o-1", "amount": 99}),
                ..new.clone()
            },
        )
        .await
        .unwrap();
    assert_eq!(again, event, "one event per (run, call)");
    assert!(more.is_empty());
    // Another call of the run is another event.
    let (other_call, _) = store
        .emit_platform_event(
            &claimed.lease,
            &NewPlatformEvent {
                id: PlatformEventId::generate(),
                call_id: Some("call_2".into()),
                ..new.clone()
            },
        )
        .await
        .unwrap();
    assert_ne!(other_call.id, event.id);
    assert_eq!(event.thread_id, th.id);
    assert_eq!(event.run_id, claimed.run.id);
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].kind, PLATFORM_EVENT);
    assert_eq!(events[0].data["event"]["type"], "order.refund_requested");
    assert_eq!(events[0].data["event"]["payload"]["order_id"], "o-1");
    let log = store.events_after(&t.scope, &th.id, 0, 100).await.unwrap();
    assert!(log
        .iter()
        .any(|e| e.kind == PLATFORM_EVENT && e.seq == events[0].seq));

    let outbox = store
        .list_webhook_outbox(&t.scope, &PageRequest::default())
        .await
        .unwrap();
    assert_eq!(outbox.items.len(), 2, "one delivery per event: {outbox:?}");
    assert!(outbox.items.iter().any(|o| o.event_id == new.id));
    assert!(outbox.items.iter().any(|o| o.event_id == other_call.id));
    assert_eq!(outbox.items[0].status, "pending");
    assert_eq!(outbox.items[0].payload["payload"]["amount"], 12);
    let other = deployment(&store, "t6b").await;
    assert!(store
        .list_webhook_outbox(&other, &PageRequest::default())
        .await
        .unwrap()
        .items
        .is_empty());

    // A lost lease stores nothing.
    let stale = Lease {
        run_id: claimed.lease.run_id.clone(),
        attempt: claimed.lease.attempt + 1,
    };
    let lost = store
        .emit_platform_event(
            &stale,
            &NewPlatformEvent {
                id: PlatformEventId::generate(),
                ..new
            },
        )
        .await
        .unwrap_err();
    assert!(matches!(lost, StoreError::LeaseLost), "{lost:?}");
}
