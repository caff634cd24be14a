//! Append-only schema migrations, one list per backend.
//!
//! Applied migrations are recorded with a checksum of their SQL; a changed or unknown applied
//! migration stops start-up instead of silently running on a schema the code does not expect.

use sha2::{Digest, Sha256};

use crate::StoreError;

/// One schema step. Never edit one that has shipped: add a new one.
pub(crate) struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

impl Migration {
    pub fn checksum(&self) -> String {
        Sha256::digest(self.sql.as_bytes())
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

pub(crate) const SQLITE: &[Migration] = &[
    Migration {
        version: 1,
        name: "foundation",
        sql: include_str!("../migrations/sqlite/0001_foundation.sql"),
    },
    Migration {
        version: 2,
        name: "threads_runs",
        sql: include_str!("../migrations/sqlite/0002_threads_runs.sql"),
    },
    Migration {
        version: 3,
        name: "deployment_settings",
        sql: include_str!("../migrations/sqlite/0003_deployment_settings.sql"),
    },
    Migration {
        version: 4,
        name: "identity",
        sql: include_str!("../migrations/sqlite/0004_identity.sql"),
    },
    Migration {
        version: 5,
        name: "tickets",
        sql: include_str!("../migrations/sqlite/0005_tickets.sql"),
    },
    Migration {
        version: 6,
        name: "sessions",
        sql: include_str!("../migrations/sqlite/0006_sessions.sql"),
    },
    Migration {
        version: 7,
        name: "boards",
        sql: include_str!("../migrations/sqlite/0007_boards.sql"),
    },
    Migration {
        version: 8,
        name: "tools",
        sql: include_str!("../migrations/sqlite/0008_tools.sql"),
    },
    Migration {
        version: 9,
        name: "session_gaps",
        sql: include_str!("../migrations/sqlite/0009_session_gaps.sql"),
    },
    Migration {
        version: 10,
        name: "toolkits",
        sql: include_str!("../migrations/sqlite/0010_toolkits.sql"),
    },
    Migration {
        version: 11,
        name: "questions_and_tool_dedupe",
        sql: include_str!("../migrations/sqlite/0011_questions_and_tool_dedupe.sql"),
    },
    Migration {
        version: 12,
        name: "run_queue",
        sql: include_str!("../migrations/sqlite/0012_run_queue.sql"),
    },
    Migration {
        version: 13,
        name: "cheaper_hot_writes",
        sql: include_str!("../migrations/sqlite/0013_cheaper_hot_writes.sql"),
    },
    Migration {
        version: 14,
        name: "console_sign_in_failures",
        sql: include_str!("../migrations/sqlite/0014_console_sign_in_failures.sql"),
    },
];

pub(crate) const POSTGRES: &[Migration] = &[
    Migration {
        version: 1,
        name: "foundation",
        sql: include_str!("../migrations/postgres/0001_foundation.sql"),
    },
    Migration {
        version: 2,
        name: "threads_runs",
        sql: include_str!("../migrations/postgres/0002_threads_runs.sql"),
    },
    Migration {
        version: 3,
        name: "deployment_settings",
        sql: include_str!("../migrations/postgres/0003_deployment_settings.sql"),
    },
    Migration {
        version: 4,
        name: "identity",
        sql: include_str!("../migrations/postgres/0004_identity.sql"),
    },
    Migration {
        version: 5,
        name: "tickets",
        sql: include_str!("../migrations/postgres/0005_tickets.sql"),
    },
    Migration {
        version: 6,
        name: "sessions",
        sql: include_str!("../migrations/postgres/0006_sessions.sql"),
    },
    Migration {
        version: 7,
        name: "boards",
        sql: include_str!("../migrations/postgres/0007_boards.sql"),
    },
    Migration {
        version: 8,
        name: "tools",
        sql: include_str!("../migrations/postgres/0008_tools.sql"),
    },
    Migration {
        version: 9,
        name: "session_gaps",
        sql: include_str!("../migrations/postgres/0009_session_gaps.sql"),
    },
    Migration {
        version: 10,
        name: "toolkits",
        sql: include_str!("../migrations/postgres/0010_toolkits.sql"),
    },
    Migration {
        version: 11,
        name: "questions_and_tool_dedupe",
        sql: include_str!("../migrations/postgres/0011_questions_and_tool_dedupe.sql"),
    },
    Migration {
        version: 12,
        name: "run_queue",
        sql: include_str!("../migrations/postgres/0012_run_queue.sql"),
    },
    Migration {
        version: 13,
        name: "cheaper_hot_writes",
        sql: include_str!("../migrations/postgres/0013_cheaper_hot_writes.sql"),
    },
    Migration {
        version: 14,
        name: "console_sign_in_failures",
        sql: include_str!("../migrations/postgres/0014_console_sign_in_failures.sql"),
    },
];

pub(crate) const CREATE_TABLE: &str = "CREATE TABLE IF NOT EXISTS tessera_migrations (
    version    BIGINT PRIMARY KEY,
    name       TEXT NOT NULL,
    checksum   TEXT NOT NULL,
    applied_at BIGINT NOT NULL
)";

/// What `migrate` did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// `(version, name)` of each migration applied by this call.
    pub applied: Vec<(i64, &'static str)>,
    /// Schema version after the call.
    pub current_version: i64,
}

/// Checks the recorded migrations against the known list and returns the ones still to apply.
pub(crate) fn pending<'a>(
    known: &'a [Migration],
    applied: &[(i64, String)],
) -> Result<Vec<&'a Migration>, StoreError> {
    for (version, checksum) in applied {
        match known.iter().find(|m| m.version == *version) {
            None => {
                return Err(StoreError::Migration(format!(
                    "the database has migration {version}, which this binary does not know: \
                     it was migrated by a newer version of tessera"
                )))
            }
            Some(m) if m.checksum() != *checksum => {
                return Err(StoreError::Migration(format!(
                    "migration {version} ({}) was changed after it was applied; migrations are \
                     append-only",
                    m.name
                )))
            }
            Some(_) => {}
        }
    }
    Ok(known
        .iter()
        .filter(|m| !applied.iter().any(|(v, _)| *v == m.version))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_increasing_and_match_across_backends() {
        for list in [SQLITE, POSTGRES] {
            for pair in list.windows(2) {
                assert!(pair[0].version < pair[1].version);
            }
        }
        let names = |l: &[Migration]| l.iter().map(|m| (m.version, m.name)).collect::<Vec<_>>();
        assert_eq!(names(SQLITE), names(POSTGRES));
    }

    #[test]
    fn changed_or_unknown_migrations_are_refused() {
        let all: Vec<_> = SQLITE.iter().map(|m| (m.version, m.checksum())).collect();
        assert!(pending(SQLITE, &all).unwrap().is_empty());
        assert_eq!(pending(SQLITE, &all[..1]).unwrap().len(), SQLITE.len() - 1);
        assert_eq!(pending(SQLITE, &[]).unwrap().len(), SQLITE.len());
        assert!(pending(SQLITE, &[(1, "x".into())]).is_err());
        assert!(pending(SQLITE, &[(999, "x".into())]).is_err());
    }
}
