//! SQL for tool records, their attachment to agents (`agent_tools`, kept in step with each
//! agent's `tool_ids`), platform events and the webhook outbox, shared by both backends like
//! `sql.rs`.
//!
//! Attaching and renaming race only through the tool rows: attaching locks each attached tool
//! row (PostgreSQL `FOR UPDATE`; SQLite has one writer), renaming and deleting update or lock
//! the tool row, so a name clash or the deletion of an attached tool cannot slip between a
//! check and its write.

pub(crate) const TOOL_COLS: &str = "id, spec, sealed_secret, version, created_at, updated_at";

macro_rules! impl_tool_sql {
    ($store:ident, $db:ty) => {
    /// Tool SQL, instantiated for this backend.
    pub(crate) mod tool_sql {
        #[allow(unused_imports)]
        use super::*;
        use sqlx::{QueryBuilder, Row as _};
        use tessera_domain::agent::AgentSpec;
        use tessera_domain::event::NewEvent;
        use tessera_domain::tool::{
            NewPlatformEvent, PlatformEvent, SecretChange, Tool, ToolSpec, INTERNAL_TOOL_NAMES,
            PLATFORM_EVENT,
        };
        use tessera_domain::{
            AgentId, PlatformEventId, Scope, ThreadId, Timestamp, ToolId, ValidationError,
        };
        use $crate::sql::corrupt;
        use $crate::sql_tools::TOOL_COLS;
        use $crate::{
            Conflict, Entity, Lease, Notification, OutboxEntry, Page, PageRequest, StoreError,
            StoreResult, ThreadEvent,
        };
        use super::run_sql::{append, fence};
        use super::shared_sql::{finish_page, push_page};

        type DbRow = <$db as sqlx::Database>::Row;
        type Conn = <$db as sqlx::Database>::Connection;

        fn parse_id<T>(raw: String, parse: fn(&str) -> Result<T, tessera_domain::id::IdParseError>) -> StoreResult<T> {
            parse(&raw).map_err(|e| corrupt("id", e))
        }

        fn tool_from_row(row: &DbRow) -> StoreResult<Tool> {
            let spec: String = row.try_get("spec")?;
            Ok(Tool {
                id: parse_id(row.try_get("id")?, ToolId::parse)?,
                spec: serde_json::from_str(&spec).map_err(|e| corrupt("tool spec", e))?,
                sealed_secret: row.try_get("sealed_secret")?,
                version: row.try_get("version")?,
                created_at: Timestamp::from_millis(row.try_get("created_at")?),
                updated_at: Timestamp::from_millis(row.try_get("updated_at")?),
            })
        }

        fn outbox_from_row(row: &DbRow) -> StoreResult<OutboxEntry> {
            let payload: String = row.try_get("payload")?;
            Ok(OutboxEntry {
                event_id: parse_id(row.try_get("event_id")?, PlatformEventId::parse)?,
                event_type: row.try_get("event_type")?,
                payload: serde_json::from_str(&payload).map_err(|e| corrupt("outbox payload", e))?,
                status: row.try_get("status")?,
                attempts: row.try_get("attempts")?,
                created_at: Timestamp::from_millis(row.try_get("created_at")?),
            })
        }

        fn spec_json(spec: &ToolSpec) -> StoreResult<String> {
            serde_json::to_string(spec).map_err(|e| corrupt("tool spec", e))
        }

        /// Checks an agent's `tool_ids`: each a tool of the scope (locked until the
        /// transaction ends), no two with one name, none with an internal tool's name.
        pub(crate) async fn check_tool_refs(
            conn: &mut Conn,
            scope: &Scope,
            spec: &AgentSpec,
        ) -> StoreResult<()> {
            let mut names: Vec<String> = Vec::with_capacity(spec.tool_ids.len());
            for (i, tool) in spec.tool_ids.iter().enumerate() {
                let row = sqlx::query(&format!(
                    "SELECT name FROM tools WHERE id = $1 AND deployment_id = $2{}",
                    $store::ROW_LOCK
                ))
                .bind(tool.as_str())
                .bind(scope.deployment_id().as_str())
                .fetch_optional(&mut *conn)
                .await?;
                let Some(row) = row else {
                    return Err(StoreError::not_found_in_list(Entity::Tool, "tool_ids", i));
                };
                let name: String = row.try_get("name")?;
                let field = format!("tool_ids[{i}]");
                if INTERNAL_TOOL_NAMES.contains(&name.as_str()) {
                    return Err(StoreError::Invalid(ValidationError::new(
                        field,
                        format!("the tool's name `{name}` is the name of an internal tool"),
                    )));
                }
                if let Some(j) = names.iter().position(|n| *n == name) {
                    return Err(StoreError::Invalid(ValidationError::new(
                        field,
                        format!("tool_ids[{j}] has the same name `{name}`: tool names must be unique per agent"),
                    )));
                }
                names.push(name);
            }
            Ok(())
        }

        /// Makes `agent_tools` match the agent's `tool_ids`.
        pub(crate) async fn link_agent_tools(
            conn: &mut Conn,
            scope: &Scope,
            agent: &AgentId,
            tool_ids: &[ToolId],
        ) -> StoreResult<()> {
            sqlx::query("DELETE FROM agent_tools WHERE agent_id = $1 AND deployment_id = $2")
                .bind(agent.as_str())
                .bind(scope.deployment_id().as_str())
                .execute(&mut *conn)
                .await?;
            if tool_ids.is_empty() {
                return Ok(());
            }
            let mut qb = QueryBuilder::<$db>::new(
                "INSERT INTO agent_tools (agent_id, tool_id, deployment_id) ",
            );
            qb.push_values(tool_ids, |mut b, tool| {
                b.push_bind(agent.as_str())
                    .push_bind(tool.as_str())
                    .push_bind(scope.deployment_id().as_str());
            });
            qb.build().execute(&mut *conn).await?;
            Ok(())
        }

        #[async_trait::async_trait]
        impl $crate::ToolStore for $store {
            async fn create_tool(
                &self,
                scope: &Scope,
                id: &ToolId,
                spec: &ToolSpec,
                sealed_secret: Option<&[u8]>,
            ) -> StoreResult<Tool> {
                let now = Timestamp::now();
                let json = spec_json(spec)?;
                let mut tx = self.begin_write().await?;
                let row = sqlx::query(&format!(
                    "INSERT INTO tools (id, deployment_id, name, spec, sealed_secret, version, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, 1, $6, $6) RETURNING {TOOL_COLS}"
                ))
                .bind(id.as_str())
                .bind(scope.deployment_id().as_str())
                .bind(spec.name.as_str())
                .bind(json)
                .bind(sealed_secret.map(<[u8]>::to_vec))
                .bind(now.as_millis())
                .fetch_one(&mut *tx)
                .await?;
                let tool = tool_from_row(&row)?;
                tx.commit().await?;
                Ok(tool)
            }

            async fn get_tool(&self, scope: &Scope, id: &ToolId) -> StoreResult<Tool> {
                let row = sqlx::query(&format!(
                    "SELECT {TOOL_COLS} FROM tools WHERE id = $1 AND deployment_id = $2"
                ))
                .bind(id.as_str())
                .bind(scope.deployment_id().as_str())
                .fetch_optional(self.reader())
                .await?
                .ok_or(StoreError::not_found(Entity::Tool))?;
                tool_from_row(&row)
            }

            async fn list_tools(&self, scope: &Scope, page: &PageRequest) -> StoreResult<Page<Tool>> {
                let mut qb = QueryBuilder::<$db>::new(format!(
                    "SELECT {TOOL_COLS} FROM tools WHERE deployment_id = "
                ));
                qb.push_bind(scope.deployment_id().as_str());
                push_page(&mut qb, page);
                let rows = qb.build().fetch_all(self.reader()).await?;
                finish_page(rows, page, tool_from_row)
            }

            async fn update_tool(
                &self,
                scope: &Scope,
                id: &ToolId,
                expected_version: i64,
                spec: &ToolSpec,
                secret: &SecretChange,
            ) -> StoreResult<Tool> {
                let json = spec_json(spec)?;
                let mut tx = self.begin_write().await?;
                let mut qb = QueryBuilder::<$db>::new("UPDATE tools SET spec = ");
                qb.push_bind(json)
                    .push(", name = ")
                    .push_bind(spec.name.as_str())
                    .push(", version = version + 1, updated_at = ")
                    .push_bind(Timestamp::now().as_millis());
                match secret {
                    SecretChange::Keep => {}
                    SecretChange::Set(sealed) => {
                        qb.push(", sealed_secret = ").push_bind(sealed.clone());
                    }
                    SecretChange::Clear => {
                        qb.push(", sealed_secret = NULL");
                    }
                }
                qb.push(" WHERE id = ")
                    .push_bind(id.as_str())
                    .push(" AND deployment_id = ")
                    .push_bind(scope.deployment_id().as_str())
                    .push(" AND version = ")
                    .push_bind(expected_version)
                    .push(format!(" RETURNING {TOOL_COLS}"));
                let row = qb.build().fetch_optional(&mut *tx).await?;
                let Some(row) = row else {
                    let exists = sqlx::query("SELECT 1 FROM tools WHERE id = $1 AND deployment_id = $2")
                        .bind(id.as_str())
                        .bind(scope.deployment_id().as_str())
                        .fetch_optional(&mut *tx)
                        .await?;
                    return Err(match exists {
                        Some(_) => StoreError::Conflict(Conflict::StaleVersion),
                        None => StoreError::not_found(Entity::Tool),
                    });
                };
                // Another tool of an agent that attaches this one must not have its new name.
                let clash = sqlx::query(
                    "SELECT a1.agent_id FROM agent_tools a1
                     JOIN agent_tools a2 ON a2.agent_id = a1.agent_id AND a2.tool_id <> a1.tool_id
                     JOIN tools t ON t.id = a2.tool_id
                     WHERE a1.tool_id = $1 AND a1.deployment_id = $2 AND t.name = $3 LIMIT 1",
                )
                .bind(id.as_str())
                .bind(scope.deployment_id().as_str())
                .bind(spec.name.as_str())
                .fetch_optional(&mut *tx)
                .await?;
                if let Some(clash) = clash {
                    let agent: String = clash.try_get("agent_id")?;
                    return Err(StoreError::Invalid(ValidationError::new(
                        "name",
                        format!("agent {agent} also attaches another tool named `{}`", spec.name),
                    )));
                }
                let tool = tool_from_row(&row)?;
                tx.commit().await?;
                Ok(tool)
            }

            async fn delete_tool(&self, scope: &Scope, id: &ToolId) -> StoreResult<()> {
                let mut tx = self.begin_write().await?;
                let exists = sqlx::query(&format!(
                    "SELECT id FROM tools WHERE id = $1 AND deployment_id = $2{}",
                    Self::ROW_LOCK
                ))
                .bind(id.as_str())
                .bind(scope.deployment_id().as_str())
                .fetch_optional(&mut *tx)
                .await?;
                if exists.is_none() {
                    return Err(StoreError::not_found(Entity::Tool));
                }
                let in_use = sqlx::query("SELECT 1 FROM agent_tools WHERE tool_id = $1 LIMIT 1")
                    .bind(id.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                if in_use.is_some() {
                    return Err(StoreError::Conflict(Conflict::ToolInUse));
                }
                sqlx::query("DELETE FROM tools WHERE id = $1 AND deployment_id = $2")
                    .bind(id.as_str())
                    .bind(scope.deployment_id().as_str())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(())
            }

            async fn tools_by_ids(&self, scope: &Scope, ids: &[ToolId]) -> StoreResult<Vec<Tool>> {
                if ids.is_empty() {
                    return Ok(Vec::new());
                }
                let mut qb = QueryBuilder::<$db>::new(format!(
                    "SELECT {TOOL_COLS} FROM tools WHERE deployment_id = "
                ));
                qb.push_bind(scope.deployment_id().as_str()).push(" AND id IN (");
                let mut list = qb.separated(", ");
                for id in ids {
                    list.push_bind(id.as_str());
                }
                list.push_unseparated(")");
                let rows = qb.build().fetch_all(self.reader()).await?;
                let mut found = rows.iter().map(tool_from_row).collect::<StoreResult<Vec<_>>>()?;
                found.sort_by_key(|t| ids.iter().position(|i| *i == t.id));
                Ok(found)
            }

            async fn any_sealed_tool_secret(&self) -> StoreResult<Option<(ToolId, Vec<u8>)>> {
                let row = sqlx::query(
                    "SELECT id, sealed_secret FROM tools WHERE sealed_secret IS NOT NULL ORDER BY id DESC LIMIT 1",
                )
                .fetch_optional(self.reader())
                .await?;
                row.map(|row| {
                    Ok((
                        parse_id(row.try_get("id")?, ToolId::parse)?,
                        row.try_get::<Vec<u8>, _>("sealed_secret")?,
                    ))
                })
                .transpose()
            }

            async fn emit_platform_event(
                &self,
                lease: &Lease,
                new: &NewPlatformEvent,
            ) -> StoreResult<(PlatformEvent, Vec<ThreadEvent>)> {
                let now = Timestamp::now();
                let mut tx = self.begin_write().await?;
                let (dep, thread_id) = fence(&mut tx, lease).await?;
                let event = PlatformEvent {
                    id: new.id.clone(),
                    event_type: new.event_type.clone(),
                    tool_id: new.tool_id.clone(),
                    thread_id: parse_id(thread_id.clone(), ThreadId::parse)?,
                    run_id: lease.run_id.clone(),
                    payload: new.payload.clone(),
                    created_at: now,
                };
                let payload = serde_json::to_string(&new.payload).map_err(|e| corrupt("event payload", e))?;
                let inserted = sqlx::query(
                    "INSERT INTO platform_events (id, deployment_id, event_type, tool_id, thread_id, run_id, payload, created_at, call_id)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) ON CONFLICT (run_id, call_id) DO NOTHING",
                )
                .bind(new.id.as_str())
                .bind(dep.as_str())
                .bind(new.event_type.as_str())
                .bind(new.tool_id.as_str())
                .bind(thread_id.as_str())
                .bind(lease.run_id.as_str())
                .bind(payload)
                .bind(now.as_millis())
                .bind(new.call_id.as_deref())
                .execute(&mut *tx)
                .await?;
                if inserted.rows_affected() == 0 {
                    // The call emitted its event before (a resumed run repeats it): that event,
                    // stored, streamed and queued once.
                    let row = sqlx::query(
                        "SELECT id, event_type, tool_id, payload, created_at FROM platform_events
                         WHERE run_id = $1 AND call_id = $2",
                    )
                    .bind(lease.run_id.as_str())
                    .bind(new.call_id.as_deref())
                    .fetch_one(&mut *tx)
                    .await?;
                    let stored: String = row.try_get("payload")?;
                    let existing = PlatformEvent {
                        id: parse_id(row.try_get("id")?, PlatformEventId::parse)?,
                        event_type: row.try_get("event_type")?,
                        tool_id: parse_id(row.try_get("tool_id")?, ToolId::parse)?,
                        thread_id: event.thread_id,
                        run_id: event.run_id,
                        payload: serde_json::from_str(&stored).map_err(|e| corrupt("event payload", e))?,
                        created_at: Timestamp::from_millis(row.try_get("created_at")?),
                    };
                    tx.commit().await?;
                    return Ok((existing, Vec::new()));
                }
                let delivered = event.json();
                sqlx::query(
                    "INSERT INTO webhook_outbox (id, deployment_id, event_id, event_type, payload, status, attempts, next_attempt_at, created_at)
                     VALUES ($1, $2, $3, $4, $5, 'pending', 0, $6, $6)",
                )
                .bind(new.id.as_str())
                .bind(dep.as_str())
                .bind(new.id.as_str())
                .bind(new.event_type.as_str())
                .bind(delivered.to_string())
                .bind(now.as_millis())
                .execute(&mut *tx)
                .await?;
                let events = append(
                    &mut tx,
                    &dep,
                    &thread_id,
                    Some(lease.run_id.as_str()),
                    &[NewEvent { kind: PLATFORM_EVENT, data: serde_json::json!({"event": delivered}) }],
                )
                .await?;
                self.notify(&mut tx, &Notification::ThreadEvents(event.thread_id.clone())).await?;
                tx.commit().await?;
                Ok((event, events))
            }

            async fn list_webhook_outbox(&self, scope: &Scope, page: &PageRequest) -> StoreResult<Page<OutboxEntry>> {
                let mut qb = QueryBuilder::<$db>::new(
                    "SELECT event_id, event_type, payload, status, attempts, created_at FROM webhook_outbox WHERE deployment_id = ",
                );
                qb.push_bind(scope.deployment_id().as_str());
                push_page(&mut qb, page);
                let rows = qb.build().fetch_all(self.reader()).await?;
                finish_page(rows, page, outbox_from_row)
            }
        }
    }
    };
}

pub(crate) use impl_tool_sql;
