//! The SQL implementation shared by both backends.
//!
//! Written once as a macro instantiated for `SqliteStore` and `PgStore`: the statements use
//! `$n` placeholders and SQL that both engines accept, so only connection set-up, the way a
//! write transaction starts (`BEGIN IMMEDIATE` on SQLite) and migrations differ per backend.
//! A backend type provides `fn reader(&self) -> &Pool<DB>` and
//! `async fn begin_write(&self) -> StoreResult<Transaction<'static, DB>>`.

/// Column lists, kept in one place so every query decodes rows the same way.
pub(crate) const DEPLOYMENT_COLS: &str =
    "id, name, backend_host, frontend_host, settings, created_at";
pub(crate) const KEY_COLS: &str =
    "id, deployment_id, name, prefix, created_at, last_used_at, revoked_at";
pub(crate) const ACTOR_COLS: &str =
    "id, subject_type, external_key, display_name, metadata, created_at";
pub(crate) const AGENT_COLS: &str = "id, spec, version, created_at, updated_at";
pub(crate) const PROJECT_COLS: &str =
    "id, actor_id, agent_id, name, status, created_at, archived_at";

/// Rows unchanged for this long get their `last_used_at` refreshed on use (bounded write load).
pub(crate) const LAST_USED_GRANULARITY_MS: i64 = 60_000;

pub(crate) fn corrupt(what: &str, err: impl std::fmt::Display) -> crate::StoreError {
    crate::StoreError::Corrupt(format!("{what}: {err}"))
}

macro_rules! impl_sql_store {
    ($store:ident, $db:ty) => {
    /// The shared SQL implementation, instantiated for this backend.
    mod shared_sql {
        #[allow(unused_imports)]
        use super::*;
        use sqlx::{QueryBuilder, Row as _};
        use tessera_domain::agent::{Agent, AgentSpec};
        use tessera_domain::records::{
            DeploymentSettings,
            Actor, Deployment, NewActor, NewDeployment, NewProject, Project, ProjectStatus,
            SecretKeyRecord,
        };
        use tessera_domain::identity::AuditKind;
        use tessera_domain::secret::SecretHash;
        use tessera_domain::{
            ActorId, AgentId, DeploymentId, ProjectId, Scope, SecretKeyId, Timestamp,
        };
        use $crate::sql::{
            corrupt, ACTOR_COLS, AGENT_COLS, DEPLOYMENT_COLS, KEY_COLS,
            LAST_USED_GRANULARITY_MS, PROJECT_COLS,
        };
        use $crate::{
            ActorFilter, AgentFilter, AuthenticatedKey, Conflict, Cursor, Entity, NewSecretKey,
            Page, PageRequest, ProjectFilter, StoreError, StoreResult,
        };

        type DbRow = <$db as sqlx::Database>::Row;

        fn parse_id<T>(
            raw: String,
            parse: fn(&str) -> Result<T, tessera_domain::id::IdParseError>,
        ) -> StoreResult<T> {
            parse(&raw).map_err(|e| corrupt("id", e))
        }

        fn opt_ts(raw: Option<i64>) -> Option<Timestamp> {
            raw.map(Timestamp::from_millis)
        }

        pub(crate) fn deployment_from_row(row: &DbRow) -> StoreResult<Deployment> {
            Ok(Deployment {
                id: parse_id(row.try_get("id")?, DeploymentId::parse)?,
                name: row.try_get("name")?,
                backend_host: row.try_get("backend_host")?,
                frontend_host: row.try_get("frontend_host")?,
                settings: serde_json::from_str(row.try_get("settings")?)
                    .map_err(|e| corrupt("deployment settings", e))?,
                created_at: Timestamp::from_millis(row.try_get("created_at")?),
            })
        }

        fn key_from_row(row: &DbRow) -> StoreResult<SecretKeyRecord> {
            Ok(SecretKeyRecord {
                id: parse_id(row.try_get("id")?, SecretKeyId::parse)?,
                deployment_id: parse_id(row.try_get("deployment_id")?, DeploymentId::parse)?,
                name: row.try_get("name")?,
                prefix: row.try_get("prefix")?,
                created_at: Timestamp::from_millis(row.try_get("created_at")?),
                last_used_at: opt_ts(row.try_get("last_used_at")?),
                revoked_at: opt_ts(row.try_get("revoked_at")?),
            })
        }

        pub(super) fn actor_from_row(row: &DbRow) -> StoreResult<Actor> {
            let metadata: String = row.try_get("metadata")?;
            Ok(Actor {
                id: parse_id(row.try_get("id")?, ActorId::parse)?,
                subject_type: row.try_get("subject_type")?,
                external_key: row.try_get("external_key")?,
                display_name: row.try_get("display_name")?,
                metadata: serde_json::from_str(&metadata)
                    .map_err(|e| corrupt("actor metadata", e))?,
                created_at: Timestamp::from_millis(row.try_get("created_at")?),
            })
        }

        pub(super) fn agent_from_row(row: &DbRow) -> StoreResult<Agent> {
            let spec: String = row.try_get("spec")?;
            Ok(Agent {
                id: parse_id(row.try_get("id")?, AgentId::parse)?,
                spec: serde_json::from_str(&spec).map_err(|e| corrupt("agent spec", e))?,
                version: row.try_get("version")?,
                created_at: Timestamp::from_millis(row.try_get("created_at")?),
                updated_at: Timestamp::from_millis(row.try_get("updated_at")?),
            })
        }

        fn project_from_row(row: &DbRow) -> StoreResult<Project> {
            let status: String = row.try_get("status")?;
            Ok(Project {
                id: parse_id(row.try_get("id")?, ProjectId::parse)?,
                actor_id: parse_id(row.try_get("actor_id")?, ActorId::parse)?,
                agent_id: parse_id(row.try_get("agent_id")?, AgentId::parse)?,
                name: row.try_get("name")?,
                status: ProjectStatus::parse(&status)
                    .ok_or_else(|| corrupt("project status", &status))?,
                created_at: Timestamp::from_millis(row.try_get("created_at")?),
                archived_at: opt_ts(row.try_get("archived_at")?),
            })
        }

        /// Appends the cursor condition, order and limit to a query whose WHERE clause is open.
        pub(super) fn push_page(qb: &mut QueryBuilder<'_, $db>, page: &PageRequest) {
            match &page.cursor {
                Cursor::First => {
                    qb.push(" ORDER BY id ASC");
                }
                Cursor::After(id) => {
                    qb.push(" AND id > ").push_bind(id.clone()).push(" ORDER BY id ASC");
                }
                Cursor::Before(id) => {
                    qb.push(" AND id < ").push_bind(id.clone()).push(" ORDER BY id DESC");
                }
            }
            qb.push(" LIMIT ").push_bind(i64::from(page.limit) + 1);
        }

        /// Turns `limit + 1` fetched rows into a page in ascending order.
        pub(super) fn finish_page<T>(
            rows: Vec<DbRow>,
            page: &PageRequest,
            decode: fn(&DbRow) -> StoreResult<T>,
        ) -> StoreResult<Page<T>> {
            let limit = page.limit as usize;
            let has_more = rows.len() > limit;
            let mut items = rows
                .iter()
                .take(limit)
                .map(decode)
                .collect::<StoreResult<Vec<T>>>()?;
            if matches!(page.cursor, Cursor::Before(_)) {
                items.reverse();
            }
            Ok(Page { items, has_more })
        }

        pub(super) fn is_unique_violation(err: &sqlx::Error) -> bool {
            matches!(err, sqlx::Error::Database(db) if db.is_unique_violation())
        }

        /// Records `kind` (a key's creation or revocation) by `by` in the transaction of what
        /// it records.
        async fn audit_key(
            conn: &mut <$db as sqlx::Database>::Connection,
            scope: &Scope,
            key: &SecretKeyRecord,
            by: &tessera_domain::identity::AuditBy,
            kind: AuditKind,
            now: Timestamp,
        ) -> StoreResult<()> {
            let event = by.event(
                kind,
                Some(key.id.as_str().to_owned()),
                serde_json::json!({"name": key.name, "prefix": key.prefix}),
            );
            super::identity_sql::insert_audit(conn, scope, &event, now).await?;
            Ok(())
        }

        async fn insert_key(
            conn: &mut <$db as sqlx::Database>::Connection,
            deployment_id: &DeploymentId,
            new: &NewSecretKey,
            now: Timestamp,
        ) -> StoreResult<SecretKeyRecord> {
            let row = sqlx::query(&format!(
                "INSERT INTO secret_keys (id, deployment_id, name, prefix, hash, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6) RETURNING {KEY_COLS}"
            ))
            .bind(SecretKeyId::generate_at(now).into_string())
            .bind(deployment_id.as_str())
            .bind(new.name.as_str())
            .bind(new.prefix.as_str())
            .bind(new.hash.as_bytes().to_vec())
            .bind(now.as_millis())
            .fetch_one(&mut *conn)
            .await?;
            key_from_row(&row)
        }

        async fn insert_deployment(
            conn: &mut <$db as sqlx::Database>::Connection,
            new: &NewDeployment,
            first_key: &NewSecretKey,
        ) -> StoreResult<(Deployment, SecretKeyRecord)> {
            let now = Timestamp::now();
            let row = sqlx::query(&format!(
                "INSERT INTO deployments (id, name, backend_host, frontend_host, created_at)
                 VALUES ($1, $2, $3, $4, $5) RETURNING {DEPLOYMENT_COLS}"
            ))
            .bind(DeploymentId::generate_at(now).into_string())
            .bind(new.name.as_str())
            .bind(new.backend_host.as_str())
            .bind(new.frontend_host.as_str())
            .bind(now.as_millis())
            .fetch_one(&mut *conn)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict(Conflict::DeploymentNameTaken)
                } else {
                    e.into()
                }
            })?;
            let deployment = deployment_from_row(&row)?;
            let key = insert_key(conn, &deployment.id, first_key, now).await?;
            Ok((deployment, key))
        }

        /// Checks that the agents and tools an agent spec references exist in the scope.
        async fn check_agent_refs(
            conn: &mut <$db as sqlx::Database>::Connection,
            scope: &Scope,
            spec: &AgentSpec,
        ) -> StoreResult<()> {
            for (i, sub) in spec.sub_agent_ids.iter().enumerate() {
                let found = sqlx::query(
                    "SELECT 1 FROM agents WHERE id = $1 AND deployment_id = $2 AND deleted_at IS NULL",
                )
                .bind(sub.as_str())
                .bind(scope.deployment_id().as_str())
                .fetch_optional(&mut *conn)
                .await?;
                if found.is_none() {
                    return Err(StoreError::not_found_in_list(Entity::Agent, "sub_agent_ids", i));
                }
            }
            super::tool_sql::check_tool_refs(conn, scope, spec).await
        }

        impl $store {
            /// Applies pending migrations in one transaction and reports what it did.
            pub async fn migrate(&self) -> StoreResult<$crate::MigrationReport> {
                let mut tx = self.begin_migration().await?;
                sqlx::query($crate::migrate::CREATE_TABLE).execute(&mut *tx).await?;
                let applied: Vec<(i64, String)> = sqlx::query_as(
                    "SELECT version, checksum FROM tessera_migrations ORDER BY version",
                )
                .fetch_all(&mut *tx)
                .await?;
                let mut report = $crate::MigrationReport {
                    applied: Vec::new(),
                    current_version: applied.iter().map(|(v, _)| *v).max().unwrap_or(0),
                };
                for m in $crate::migrate::pending(Self::MIGRATIONS, &applied)? {
                    sqlx::raw_sql(m.sql).execute(&mut *tx).await.map_err(|e| {
                        StoreError::Migration(format!("migration {} ({}): {e}", m.version, m.name))
                    })?;
                    sqlx::query(
                        "INSERT INTO tessera_migrations (version, name, checksum, applied_at)
                         VALUES ($1, $2, $3, $4)",
                    )
                    .bind(m.version)
                    .bind(m.name)
                    .bind(m.checksum())
                    .bind(Timestamp::now().as_millis())
                    .execute(&mut *tx)
                    .await?;
                    report.applied.push((m.version, m.name));
                    report.current_version = m.version;
                }
                tx.commit().await?;
                Ok(report)
            }
        }

        fn agent_spec_json(spec: &AgentSpec) -> StoreResult<String> {
            serde_json::to_string(spec).map_err(|e| corrupt("agent spec", e))
        }

        #[async_trait::async_trait]
        impl $crate::DeploymentStore for $store {
            async fn create_deployment(
                &self,
                new: &NewDeployment,
                first_key: &NewSecretKey,
            ) -> StoreResult<(Deployment, SecretKeyRecord)> {
                let mut tx = self.begin_write().await?;
                let created = insert_deployment(&mut tx, new, first_key).await?;
                tx.commit().await?;
                Ok(created)
            }

            async fn bootstrap_deployment(
                &self,
                new: &NewDeployment,
                first_key: &NewSecretKey,
            ) -> StoreResult<Option<(Deployment, SecretKeyRecord)>> {
                let mut tx = self.begin_write().await?;
                self.lock_bootstrap(&mut tx).await?;
                let existing = sqlx::query("SELECT 1 FROM deployments LIMIT 1")
                    .fetch_optional(&mut *tx)
                    .await?;
                if existing.is_some() {
                    return Ok(None);
                }
                let created = insert_deployment(&mut tx, new, first_key).await?;
                tx.commit().await?;
                Ok(Some(created))
            }

            async fn get_deployment(&self, scope: &Scope) -> StoreResult<Deployment> {
                let row = sqlx::query(&format!(
                    "SELECT {DEPLOYMENT_COLS} FROM deployments WHERE id = $1"
                ))
                .bind(scope.deployment_id().as_str())
                .fetch_optional(self.reader())
                .await?
                .ok_or(StoreError::not_found(Entity::Deployment))?;
                deployment_from_row(&row)
            }

            async fn update_deployment_settings(
                &self,
                scope: &Scope,
                settings: &DeploymentSettings,
            ) -> StoreResult<Deployment> {
                let json = serde_json::to_string(settings).map_err(|e| corrupt("deployment settings", e))?;
                let mut tx = self.begin_write().await?;
                let row = sqlx::query(&format!(
                    "UPDATE deployments SET settings = $1 WHERE id = $2 RETURNING {DEPLOYMENT_COLS}"
                ))
                .bind(json)
                .bind(scope.deployment_id().as_str())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::not_found(Entity::Deployment))?;
                let deployment = deployment_from_row(&row)?;
                tx.commit().await?;
                Ok(deployment)
            }

            async fn find_deployment(&self, id_or_name: &str) -> StoreResult<Option<Deployment>> {
                let row = sqlx::query(&format!(
                    "SELECT {DEPLOYMENT_COLS} FROM deployments WHERE id = $1 OR name = $1"
                ))
                .bind(id_or_name)
                .fetch_optional(self.reader())
                .await?;
                row.as_ref().map(deployment_from_row).transpose()
            }
        }

        #[async_trait::async_trait]
        impl $crate::KeyStore for $store {
            async fn authenticate_key(
                &self,
                hash: &SecretHash,
                now: Timestamp,
            ) -> StoreResult<Option<AuthenticatedKey>> {
                let row = sqlx::query(
                    "SELECT id, deployment_id, hash, last_used_at FROM secret_keys
                     WHERE hash = $1 AND revoked_at IS NULL",
                )
                .bind(hash.as_bytes().to_vec())
                .fetch_optional(self.reader())
                .await?;
                let Some(row) = row else {
                    return Ok(None);
                };
                let stored: Vec<u8> = row.try_get("hash")?;
                let stored = SecretHash::from_bytes(&stored)
                    .ok_or_else(|| corrupt("secret key hash", "wrong length"))?;
                // The index lookup already matched; comparing again in constant time keeps the
                // decision itself free of data-dependent timing.
                if !stored.matches(hash) {
                    return Ok(None);
                }
                let key_id = parse_id(row.try_get("id")?, SecretKeyId::parse)?;
                let deployment_id = parse_id(row.try_get("deployment_id")?, DeploymentId::parse)?;
                let last_used: Option<i64> = row.try_get("last_used_at")?;
                if last_used.is_none_or(|t| now.as_millis() - t >= LAST_USED_GRANULARITY_MS) {
                    let mut tx = self.begin_write().await?;
                    sqlx::query(
                        "UPDATE secret_keys SET last_used_at = $1
                         WHERE id = $2 AND (last_used_at IS NULL OR last_used_at <= $3)",
                    )
                    .bind(now.as_millis())
                    .bind(key_id.as_str())
                    .bind(now.as_millis() - LAST_USED_GRANULARITY_MS)
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                }
                Ok(Some(AuthenticatedKey {
                    scope: Scope::deployment(deployment_id),
                    key_id,
                }))
            }

            async fn create_key(
                &self,
                scope: &Scope,
                new: &NewSecretKey,
                by: &tessera_domain::identity::AuditBy,
            ) -> StoreResult<SecretKeyRecord> {
                let mut tx = self.begin_write().await?;
                let exists = sqlx::query("SELECT 1 FROM deployments WHERE id = $1")
                    .bind(scope.deployment_id().as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                if exists.is_none() {
                    return Err(StoreError::not_found(Entity::Deployment));
                }
                let now = Timestamp::now();
                let key = insert_key(&mut tx, scope.deployment_id(), new, now).await?;
                audit_key(&mut tx, scope, &key, by, AuditKind::SecretKeyCreated, now).await?;
                tx.commit().await?;
                Ok(key)
            }

            async fn list_keys(
                &self,
                scope: &Scope,
                page: &PageRequest,
            ) -> StoreResult<Page<SecretKeyRecord>> {
                let mut qb = QueryBuilder::<$db>::new(format!(
                    "SELECT {KEY_COLS} FROM secret_keys WHERE deployment_id = "
                ));
                qb.push_bind(scope.deployment_id().as_str());
                push_page(&mut qb, page);
                let rows = qb.build().fetch_all(self.reader()).await?;
                finish_page(rows, page, key_from_row)
            }

            async fn revoke_key(
                &self,
                scope: &Scope,
                id: &SecretKeyId,
                by: &tessera_domain::identity::AuditBy,
            ) -> StoreResult<SecretKeyRecord> {
                let mut tx = self.begin_write().await?;
                // Serialise revocations per deployment: two concurrent revokes must not both see
                // the other's key as the remaining active one.
                sqlx::query(&format!("SELECT id FROM deployments WHERE id = $1{}", Self::ROW_LOCK))
                    .bind(scope.deployment_id().as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                let row = sqlx::query(&format!(
                    "SELECT {KEY_COLS} FROM secret_keys WHERE id = $1 AND deployment_id = $2"
                ))
                .bind(id.as_str())
                .bind(scope.deployment_id().as_str())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::not_found(Entity::SecretKey))?;
                let key = key_from_row(&row)?;
                if key.revoked_at.is_some() {
                    return Ok(key);
                }
                let others: i64 = sqlx::query(
                    "SELECT COUNT(*) AS n FROM secret_keys
                     WHERE deployment_id = $1 AND id <> $2 AND revoked_at IS NULL",
                )
                .bind(scope.deployment_id().as_str())
                .bind(id.as_str())
                .fetch_one(&mut *tx)
                .await?
                .try_get("n")?;
                if others == 0 {
                    return Err(StoreError::Conflict(Conflict::LastActiveKey));
                }
                let now = Timestamp::now();
                let row = sqlx::query(&format!(
                    "UPDATE secret_keys SET revoked_at = $1 WHERE id = $2 AND deployment_id = $3
                     RETURNING {KEY_COLS}"
                ))
                .bind(now.as_millis())
                .bind(id.as_str())
                .bind(scope.deployment_id().as_str())
                .fetch_one(&mut *tx)
                .await?;
                let key = key_from_row(&row)?;
                // Only the call that revoked it gets here (the deployment's lock serialises
                // revocations), so the revocation is recorded once.
                audit_key(&mut tx, scope, &key, by, AuditKind::SecretKeyRevoked, now).await?;
                tx.commit().await?;
                Ok(key)
            }
        }

        #[async_trait::async_trait]
        impl $crate::ActorStore for $store {
            async fn create_actor(&self, scope: &Scope, new: &NewActor) -> StoreResult<Actor> {
                let now = Timestamp::now();
                let metadata = serde_json::to_string(new.metadata.as_map())
                    .map_err(|e| corrupt("actor metadata", e))?;
                let mut tx = self.begin_write().await?;
                let row = sqlx::query(&format!(
                    "INSERT INTO actors
                       (id, deployment_id, subject_type, external_key, display_name, metadata, created_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING {ACTOR_COLS}"
                ))
                .bind(ActorId::generate_at(now).into_string())
                .bind(scope.deployment_id().as_str())
                .bind(new.subject_type.as_str())
                .bind(new.external_key.as_str())
                .bind(new.display_name.as_ref().map(|n| n.as_str()))
                .bind(metadata)
                .bind(now.as_millis())
                .fetch_one(&mut *tx)
                .await
                .map_err(|e| {
                    if is_unique_violation(&e) {
                        StoreError::Conflict(Conflict::ActorExists)
                    } else {
                        e.into()
                    }
                })?;
                let actor = actor_from_row(&row)?;
                tx.commit().await?;
                Ok(actor)
            }

            async fn get_actor(&self, scope: &Scope, id: &ActorId) -> StoreResult<Actor> {
                let row = sqlx::query(&format!(
                    "SELECT {ACTOR_COLS} FROM actors WHERE id = $1 AND deployment_id = $2"
                ))
                .bind(id.as_str())
                .bind(scope.deployment_id().as_str())
                .fetch_optional(self.reader())
                .await?
                .ok_or(StoreError::not_found(Entity::Actor))?;
                actor_from_row(&row)
            }

            async fn lookup_actor(
                &self,
                scope: &Scope,
                subject_type: &str,
                external_key: &str,
            ) -> StoreResult<Option<Actor>> {
                let row = sqlx::query(&format!(
                    "SELECT {ACTOR_COLS} FROM actors
                     WHERE deployment_id = $1 AND subject_type = $2 AND external_key = $3"
                ))
                .bind(scope.deployment_id().as_str())
                .bind(subject_type)
                .bind(external_key)
                .fetch_optional(self.reader())
                .await?;
                row.as_ref().map(actor_from_row).transpose()
            }

            async fn list_actors(
                &self,
                scope: &Scope,
                filter: &ActorFilter,
                page: &PageRequest,
            ) -> StoreResult<Page<Actor>> {
                let mut qb = QueryBuilder::<$db>::new(format!(
                    "SELECT {ACTOR_COLS} FROM actors WHERE deployment_id = "
                ));
                qb.push_bind(scope.deployment_id().as_str());
                if let Some(subject_type) = &filter.subject_type {
                    qb.push(" AND subject_type = ").push_bind(subject_type.clone());
                }
                push_page(&mut qb, page);
                let rows = qb.build().fetch_all(self.reader()).await?;
                finish_page(rows, page, actor_from_row)
            }
        }

        #[async_trait::async_trait]
        impl $crate::AgentStore for $store {
            async fn create_agent(&self, scope: &Scope, spec: &AgentSpec) -> StoreResult<Agent> {
                let now = Timestamp::now();
                let json = agent_spec_json(spec)?;
                let mut tx = self.begin_write().await?;
                check_agent_refs(&mut tx, scope, spec).await?;
                let row = sqlx::query(&format!(
                    "INSERT INTO agents
                       (id, deployment_id, endpoint_slug, spec, version, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, 1, $5, $5) RETURNING {AGENT_COLS}"
                ))
                .bind(AgentId::generate_at(now).into_string())
                .bind(scope.deployment_id().as_str())
                .bind(spec.endpoint_slug.as_ref().map(|s| s.as_str()))
                .bind(json)
                .bind(now.as_millis())
                .fetch_one(&mut *tx)
                .await?;
                let agent = agent_from_row(&row)?;
                super::tool_sql::link_agent_tools(&mut tx, scope, &agent.id, &spec.tool_ids).await?;
                tx.commit().await?;
                Ok(agent)
            }

            async fn get_agent(&self, scope: &Scope, id: &AgentId) -> StoreResult<Agent> {
                let row = sqlx::query(&format!(
                    "SELECT {AGENT_COLS} FROM agents
                     WHERE id = $1 AND deployment_id = $2 AND deleted_at IS NULL"
                ))
                .bind(id.as_str())
                .bind(scope.deployment_id().as_str())
                .fetch_optional(self.reader())
                .await?
                .ok_or(StoreError::not_found(Entity::Agent))?;
                agent_from_row(&row)
            }

            async fn list_agents(
                &self,
                scope: &Scope,
                filter: &AgentFilter,
                page: &PageRequest,
            ) -> StoreResult<Page<Agent>> {
                let mut qb = QueryBuilder::<$db>::new(format!(
                    "SELECT {AGENT_COLS} FROM agents WHERE deleted_at IS NULL AND deployment_id = "
                ));
                qb.push_bind(scope.deployment_id().as_str());
                if let Some(slug) = &filter.endpoint_slug {
                    qb.push(" AND endpoint_slug = ").push_bind(slug.clone());
                }
                push_page(&mut qb, page);
                let rows = qb.build().fetch_all(self.reader()).await?;
                finish_page(rows, page, agent_from_row)
            }

            async fn update_agent(
                &self,
                scope: &Scope,
                id: &AgentId,
                expected_version: i64,
                spec: &AgentSpec,
            ) -> StoreResult<Agent> {
                let json = agent_spec_json(spec)?;
                let mut tx = self.begin_write().await?;
                check_agent_refs(&mut tx, scope, spec).await?;
                let row = sqlx::query(&format!(
                    "UPDATE agents SET spec = $1, endpoint_slug = $2, version = version + 1,
                       updated_at = $3
                     WHERE id = $4 AND deployment_id = $5 AND version = $6 AND deleted_at IS NULL
                     RETURNING {AGENT_COLS}"
                ))
                .bind(json)
                .bind(spec.endpoint_slug.as_ref().map(|s| s.as_str()))
                .bind(Timestamp::now().as_millis())
                .bind(id.as_str())
                .bind(scope.deployment_id().as_str())
                .bind(expected_version)
                .fetch_optional(&mut *tx)
                .await?;
                let Some(row) = row else {
                    let exists = sqlx::query(
                        "SELECT 1 FROM agents WHERE id = $1 AND deployment_id = $2 AND deleted_at IS NULL",
                    )
                    .bind(id.as_str())
                    .bind(scope.deployment_id().as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                    return Err(match exists {
                        Some(_) => StoreError::Conflict(Conflict::StaleVersion),
                        None => StoreError::not_found(Entity::Agent),
                    });
                };
                let agent = agent_from_row(&row)?;
                super::tool_sql::link_agent_tools(&mut tx, scope, id, &spec.tool_ids).await?;
                tx.commit().await?;
                Ok(agent)
            }

            async fn delete_agent(&self, scope: &Scope, id: &AgentId) -> StoreResult<()> {
                let mut tx = self.begin_write().await?;
                // Locks the agent so that a concurrent project creation waits for the outcome.
                let exists = sqlx::query(&format!(
                    "SELECT id FROM agents WHERE id = $1 AND deployment_id = $2 AND deleted_at IS NULL{}",
                    Self::ROW_LOCK
                ))
                .bind(id.as_str())
                .bind(scope.deployment_id().as_str())
                .fetch_optional(&mut *tx)
                .await?;
                if exists.is_none() {
                    return Err(StoreError::not_found(Entity::Agent));
                }
                let in_use = sqlx::query(
                    "SELECT 1 FROM actor_projects
                     WHERE agent_id = $1 AND deployment_id = $2 AND status = 'active' LIMIT 1",
                )
                .bind(id.as_str())
                .bind(scope.deployment_id().as_str())
                .fetch_optional(&mut *tx)
                .await?;
                if in_use.is_some() {
                    return Err(StoreError::Conflict(Conflict::AgentInUse));
                }
                // Soft delete: archived projects and, later, past runs keep their reference.
                sqlx::query("UPDATE agents SET deleted_at = $1 WHERE id = $2 AND deployment_id = $3")
                    .bind(Timestamp::now().as_millis())
                    .bind(id.as_str())
                    .bind(scope.deployment_id().as_str())
                    .execute(&mut *tx)
                    .await?;
                // A deleted agent no longer holds its tools.
                super::tool_sql::link_agent_tools(&mut tx, scope, id, &[]).await?;
                tx.commit().await?;
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl $crate::ProjectStore for $store {
            async fn create_project(&self, scope: &Scope, new: &NewProject) -> StoreResult<Project> {
                let now = Timestamp::now();
                let mut tx = self.begin_write().await?;
                let actor = sqlx::query("SELECT 1 FROM actors WHERE id = $1 AND deployment_id = $2")
                    .bind(new.actor_id.as_str())
                    .bind(scope.deployment_id().as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
                if actor.is_none() {
                    return Err(StoreError::not_found_at(Entity::Actor, "actor_id"));
                }
                // Locks the agent: a concurrent delete either waits for this project (and then
                // refuses) or has already deleted it (and this creation fails).
                let agent = sqlx::query(&format!(
                    "SELECT id FROM agents WHERE id = $1 AND deployment_id = $2 AND deleted_at IS NULL{}",
                    Self::ROW_LOCK
                ))
                .bind(new.agent_id.as_str())
                .bind(scope.deployment_id().as_str())
                .fetch_optional(&mut *tx)
                .await?;
                if agent.is_none() {
                    return Err(StoreError::not_found_at(Entity::Agent, "agent_id"));
                }
                let row = sqlx::query(&format!(
                    "INSERT INTO actor_projects
                       (id, deployment_id, actor_id, agent_id, name, status, created_at)
                     VALUES ($1, $2, $3, $4, $5, 'active', $6) RETURNING {PROJECT_COLS}"
                ))
                .bind(ProjectId::generate_at(now).into_string())
                .bind(scope.deployment_id().as_str())
                .bind(new.actor_id.as_str())
                .bind(new.agent_id.as_str())
                .bind(new.name.as_str())
                .bind(now.as_millis())
                .fetch_one(&mut *tx)
                .await?;
                let project = project_from_row(&row)?;
                tx.commit().await?;
                Ok(project)
            }

            async fn get_project(&self, scope: &Scope, id: &ProjectId) -> StoreResult<Project> {
                let row = sqlx::query(&format!(
                    "SELECT {PROJECT_COLS} FROM actor_projects WHERE id = $1 AND deployment_id = $2"
                ))
                .bind(id.as_str())
                .bind(scope.deployment_id().as_str())
                .fetch_optional(self.reader())
                .await?
                .ok_or(StoreError::not_found(Entity::Project))?;
                project_from_row(&row)
            }

            async fn list_projects(
                &self,
                scope: &Scope,
                filter: &ProjectFilter,
                page: &PageRequest,
            ) -> StoreResult<Page<Project>> {
                let mut qb = QueryBuilder::<$db>::new(format!(
                    "SELECT {PROJECT_COLS} FROM actor_projects WHERE deployment_id = "
                ));
                qb.push_bind(scope.deployment_id().as_str());
                if let Some(actor_id) = &filter.actor_id {
                    qb.push(" AND actor_id = ").push_bind(actor_id.as_str().to_owned());
                }
                if let Some(agent_id) = &filter.agent_id {
                    qb.push(" AND agent_id = ").push_bind(agent_id.as_str().to_owned());
                }
                if let Some(status) = filter.status {
                    qb.push(" AND status = ").push_bind(status.as_str());
                }
                push_page(&mut qb, page);
                let rows = qb.build().fetch_all(self.reader()).await?;
                finish_page(rows, page, project_from_row)
            }

            async fn archive_project(&self, scope: &Scope, id: &ProjectId) -> StoreResult<Project> {
                let mut tx = self.begin_write().await?;
                let row = sqlx::query(&format!(
                    "UPDATE actor_projects SET status = 'archived', archived_at = $1
                     WHERE id = $2 AND deployment_id = $3 AND status = 'active'
                     RETURNING {PROJECT_COLS}"
                ))
                .bind(Timestamp::now().as_millis())
                .bind(id.as_str())
                .bind(scope.deployment_id().as_str())
                .fetch_optional(&mut *tx)
                .await?;
                let row = match row {
                    Some(row) => row,
                    None => sqlx::query(&format!(
                        "SELECT {PROJECT_COLS} FROM actor_projects WHERE id = $1 AND deployment_id = $2"
                    ))
                    .bind(id.as_str())
                    .bind(scope.deployment_id().as_str())
                    .fetch_optional(&mut *tx)
                    .await?
                    .ok_or(StoreError::not_found(Entity::Project))?,
                };
                let project = project_from_row(&row)?;
                tx.commit().await?;
                Ok(project)
            }
        }
    }
    };
}

pub(crate) use impl_sql_store;
