//! SQL for third-party toolkits: the toolkits a deployment enabled (`toolkits`) and each actor's
//! connection to them (`toolkit_connections`), shared by both backends like `sql.rs`.
//!
//! Connecting and disabling race only through the toolkit row: a new connection locks it
//! (PostgreSQL `FOR UPDATE`; SQLite has one writer) and disabling deletes it with its
//! connections, so no connection outlives its toolkit.

pub(crate) const TOOLKIT_COLS: &str = "slug, name, settings, created_at, updated_at";
pub(crate) const CONNECTION_COLS: &str =
    "id, actor_id, toolkit, account_id, status, redirect_url, created_at, updated_at";

macro_rules! impl_toolkit_sql {
    ($store:ident, $db:ty) => {
    /// Toolkit SQL, instantiated for this backend.
    pub(crate) mod toolkit_sql {
        #[allow(unused_imports)]
        use super::*;
        use sqlx::Row as _;
        use tessera_domain::toolkit::{
            ConnectionStatus, Toolkit, ToolkitConnection, ToolkitSettings, ToolkitSlug,
        };
        use tessera_domain::{ActorId, ConnectionId, Scope, Timestamp};
        use $crate::sql::corrupt;
        use $crate::sql_toolkits::{CONNECTION_COLS, TOOLKIT_COLS};
        use $crate::{Entity, StoreError, StoreResult};

        type DbRow = <$db as sqlx::Database>::Row;
        type Conn = <$db as sqlx::Database>::Connection;

        fn toolkit_from_row(row: &DbRow) -> StoreResult<Toolkit> {
            let slug: String = row.try_get("slug")?;
            let settings: String = row.try_get("settings")?;
            Ok(Toolkit {
                slug: ToolkitSlug::parse("slug", slug).map_err(|e| corrupt("toolkit slug", e.message))?,
                name: row.try_get("name")?,
                settings: serde_json::from_str(&settings).map_err(|e| corrupt("toolkit settings", e))?,
                created_at: Timestamp::from_millis(row.try_get("created_at")?),
                updated_at: Timestamp::from_millis(row.try_get("updated_at")?),
            })
        }

        fn connection_from_row(row: &DbRow) -> StoreResult<ToolkitConnection> {
            let id: String = row.try_get("id")?;
            let actor: String = row.try_get("actor_id")?;
            let toolkit: String = row.try_get("toolkit")?;
            let status: String = row.try_get("status")?;
            Ok(ToolkitConnection {
                id: ConnectionId::parse(&id).map_err(|e| corrupt("connection id", e))?,
                actor_id: ActorId::parse(&actor).map_err(|e| corrupt("actor id", e))?,
                toolkit: ToolkitSlug::parse("toolkit", toolkit)
                    .map_err(|e| corrupt("toolkit slug", e.message))?,
                account_id: row.try_get("account_id")?,
                status: ConnectionStatus::parse(&status)
                    .ok_or_else(|| corrupt("connection status", &status))?,
                redirect_url: row.try_get("redirect_url")?,
                created_at: Timestamp::from_millis(row.try_get("created_at")?),
                updated_at: Timestamp::from_millis(row.try_get("updated_at")?),
            })
        }

        fn settings_json(settings: &ToolkitSettings) -> StoreResult<String> {
            serde_json::to_string(settings).map_err(|e| corrupt("toolkit settings", e))
        }

        async fn actor_exists(conn: &mut Conn, scope: &Scope, actor: &ActorId) -> StoreResult<()> {
            sqlx::query("SELECT 1 FROM actors WHERE id = $1 AND deployment_id = $2")
                .bind(actor.as_str())
                .bind(scope.deployment_id().as_str())
                .fetch_optional(&mut *conn)
                .await?
                .map(|_| ())
                .ok_or(StoreError::not_found(Entity::Actor))
        }

        /// Checks that the toolkit is enabled, locking its row until the transaction ends.
        async fn lock_toolkit(conn: &mut Conn, scope: &Scope, slug: &ToolkitSlug) -> StoreResult<()> {
            sqlx::query(&format!(
                "SELECT slug FROM toolkits WHERE deployment_id = $1 AND slug = $2{}",
                $store::ROW_LOCK
            ))
            .bind(scope.deployment_id().as_str())
            .bind(slug.as_str())
            .fetch_optional(&mut *conn)
            .await?
            .map(|_| ())
            .ok_or(StoreError::not_found(Entity::Toolkit))
        }

        async fn take_connection(
            conn: &mut Conn,
            scope: &Scope,
            actor: &ActorId,
            slug: &ToolkitSlug,
        ) -> StoreResult<Option<ToolkitConnection>> {
            let row = sqlx::query(&format!(
                "DELETE FROM toolkit_connections
                 WHERE deployment_id = $1 AND actor_id = $2 AND toolkit = $3
                 RETURNING {CONNECTION_COLS}"
            ))
            .bind(scope.deployment_id().as_str())
            .bind(actor.as_str())
            .bind(slug.as_str())
            .fetch_optional(&mut *conn)
            .await?;
            row.as_ref().map(connection_from_row).transpose()
        }

        #[async_trait::async_trait]
        impl $crate::ToolkitStore for $store {
            async fn enable_toolkit(
                &self,
                scope: &Scope,
                slug: &ToolkitSlug,
                name: &str,
                settings: &ToolkitSettings,
            ) -> StoreResult<(Toolkit, bool)> {
                let now = Timestamp::now().as_millis();
                let json = settings_json(settings)?;
                let mut tx = self.begin_write().await?;
                let inserted = sqlx::query(&format!(
                    "INSERT INTO toolkits (deployment_id, slug, name, settings, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $5)
                     ON CONFLICT (deployment_id, slug) DO NOTHING RETURNING {TOOLKIT_COLS}"
                ))
                .bind(scope.deployment_id().as_str())
                .bind(slug.as_str())
                .bind(name)
                .bind(&json)
                .bind(now)
                .fetch_optional(&mut *tx)
                .await?;
                let (row, created) = match inserted {
                    Some(row) => (row, true),
                    None => {
                        let row = sqlx::query(&format!(
                            "UPDATE toolkits SET name = $3, settings = $4, updated_at = $5
                             WHERE deployment_id = $1 AND slug = $2 RETURNING {TOOLKIT_COLS}"
                        ))
                        .bind(scope.deployment_id().as_str())
                        .bind(slug.as_str())
                        .bind(name)
                        .bind(&json)
                        .bind(now)
                        .fetch_one(&mut *tx)
                        .await?;
                        (row, false)
                    }
                };
                let toolkit = toolkit_from_row(&row)?;
                tx.commit().await?;
                Ok((toolkit, created))
            }

            async fn get_toolkit(&self, scope: &Scope, slug: &ToolkitSlug) -> StoreResult<Toolkit> {
                let row = sqlx::query(&format!(
                    "SELECT {TOOLKIT_COLS} FROM toolkits WHERE deployment_id = $1 AND slug = $2"
                ))
                .bind(scope.deployment_id().as_str())
                .bind(slug.as_str())
                .fetch_optional(self.reader())
                .await?
                .ok_or(StoreError::not_found(Entity::Toolkit))?;
                toolkit_from_row(&row)
            }

            async fn list_toolkits(&self, scope: &Scope) -> StoreResult<Vec<Toolkit>> {
                let rows = sqlx::query(&format!(
                    "SELECT {TOOLKIT_COLS} FROM toolkits WHERE deployment_id = $1 ORDER BY slug"
                ))
                .bind(scope.deployment_id().as_str())
                .fetch_all(self.reader())
                .await?;
                rows.iter().map(toolkit_from_row).collect()
            }

            async fn disable_toolkit(
                &self,
                scope: &Scope,
                slug: &ToolkitSlug,
            ) -> StoreResult<Vec<ToolkitConnection>> {
                let mut tx = self.begin_write().await?;
                lock_toolkit(&mut tx, scope, slug).await?;
                let rows = sqlx::query(&format!(
                    "DELETE FROM toolkit_connections WHERE deployment_id = $1 AND toolkit = $2
                     RETURNING {CONNECTION_COLS}"
                ))
                .bind(scope.deployment_id().as_str())
                .bind(slug.as_str())
                .fetch_all(&mut *tx)
                .await?;
                let gone = rows.iter().map(connection_from_row).collect::<StoreResult<Vec<_>>>()?;
                sqlx::query("DELETE FROM toolkits WHERE deployment_id = $1 AND slug = $2")
                    .bind(scope.deployment_id().as_str())
                    .bind(slug.as_str())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(gone)
            }

            async fn actor_toolkits(
                &self,
                scope: &Scope,
                actor: &ActorId,
            ) -> StoreResult<Vec<(Toolkit, Option<ToolkitConnection>)>> {
                let mut conn = self.reader().acquire().await?;
                actor_exists(&mut conn, scope, actor).await?;
                let toolkits = sqlx::query(&format!(
                    "SELECT {TOOLKIT_COLS} FROM toolkits WHERE deployment_id = $1 ORDER BY slug"
                ))
                .bind(scope.deployment_id().as_str())
                .fetch_all(&mut *conn)
                .await?;
                // Every run asks; most deployments have no toolkit to look up connections for.
                if toolkits.is_empty() {
                    return Ok(Vec::new());
                }
                let connections = sqlx::query(&format!(
                    "SELECT {CONNECTION_COLS} FROM toolkit_connections
                     WHERE deployment_id = $1 AND actor_id = $2"
                ))
                .bind(scope.deployment_id().as_str())
                .bind(actor.as_str())
                .fetch_all(&mut *conn)
                .await?;
                let mut connections = connections
                    .iter()
                    .map(connection_from_row)
                    .collect::<StoreResult<Vec<_>>>()?;
                toolkits
                    .iter()
                    .map(|row| {
                        let toolkit = toolkit_from_row(row)?;
                        let connection = connections
                            .iter()
                            .position(|c| c.toolkit == toolkit.slug)
                            .map(|i| connections.swap_remove(i));
                        Ok((toolkit, connection))
                    })
                    .collect()
            }

            async fn put_toolkit_connection(
                &self,
                scope: &Scope,
                connection: &ToolkitConnection,
            ) -> StoreResult<Option<ToolkitConnection>> {
                let mut tx = self.begin_write().await?;
                actor_exists(&mut tx, scope, &connection.actor_id).await?;
                lock_toolkit(&mut tx, scope, &connection.toolkit).await?;
                let previous =
                    take_connection(&mut tx, scope, &connection.actor_id, &connection.toolkit).await?;
                sqlx::query(
                    "INSERT INTO toolkit_connections
                     (id, deployment_id, actor_id, toolkit, account_id, status, redirect_url, created_at, updated_at)
                     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .bind(connection.id.as_str())
                .bind(scope.deployment_id().as_str())
                .bind(connection.actor_id.as_str())
                .bind(connection.toolkit.as_str())
                .bind(&connection.account_id)
                .bind(connection.status.as_str())
                .bind(connection.redirect_url.as_deref())
                .bind(connection.created_at.as_millis())
                .bind(connection.updated_at.as_millis())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(previous)
            }

            async fn set_toolkit_connection_status(
                &self,
                scope: &Scope,
                id: &ConnectionId,
                status: ConnectionStatus,
            ) -> StoreResult<ToolkitConnection> {
                let mut tx = self.begin_write().await?;
                let row = sqlx::query(&format!(
                    "UPDATE toolkit_connections
                     SET status = $3, updated_at = $4,
                         redirect_url = CASE WHEN $3 = 'pending' THEN redirect_url ELSE NULL END
                     WHERE id = $1 AND deployment_id = $2 RETURNING {CONNECTION_COLS}"
                ))
                .bind(id.as_str())
                .bind(scope.deployment_id().as_str())
                .bind(status.as_str())
                .bind(Timestamp::now().as_millis())
                .fetch_optional(&mut *tx)
                .await?
                .ok_or(StoreError::not_found(Entity::Toolkit))?;
                let connection = connection_from_row(&row)?;
                tx.commit().await?;
                Ok(connection)
            }

            async fn delete_toolkit_connection(
                &self,
                scope: &Scope,
                actor: &ActorId,
                slug: &ToolkitSlug,
            ) -> StoreResult<Option<ToolkitConnection>> {
                let mut tx = self.begin_write().await?;
                actor_exists(&mut tx, scope, actor).await?;
                lock_toolkit(&mut tx, scope, slug).await?;
                let gone = take_connection(&mut tx, scope, actor, slug).await?;
                tx.commit().await?;
                Ok(gone)
            }
        }
    }
    };
}

pub(crate) use impl_toolkit_sql;
