//! Many rows in one statement, written the way each engine takes them best.
//!
//! A batch (a burst of fired board slots) writes thousands of rows per statement. A `VALUES`
//! list with one bind per cell suits SQLite, but on PostgreSQL a statement with tens of
//! thousands of parameters is expensive to parse, plan and describe, and its text changes with
//! the row count so it is never reused: a 2,048-row insert took 100–250 ms there. PostgreSQL
//! instead gets one array per column, unpacked by `unnest` — a short statement whatever the
//! row count, with as many parameters as columns.
//!
//! Either way the rows read as columns `column1`, `column2`, … (the names SQLite gives a
//! `VALUES` list), so the same SQL can `INSERT INTO t (…)` them or join them `AS v`.

/// The rows a group-commit batch's `VALUES` list is padded to: `n` rounded up to a power of two.
/// A statement's text changes with its number of rows, and SQLite compiles each text it has
/// not seen; padded, a batch's statements come in a few sizes, each kept prepared in the
/// writer's statement cache instead of compiled anew for every batch.
pub(crate) fn padded_rows(n: usize) -> usize {
    n.max(1).next_power_of_two()
}

/// `items`, then `None` up to [`padded_rows`]: a padding row is all `NULL` (see
/// [`push_null_row`]) and the statement leaves it out (`WHERE column1 IS NOT NULL`, or a join
/// it cannot match).
pub(crate) fn padded<T>(items: &[T]) -> impl Iterator<Item = Option<&T>> {
    items.iter().map(Some).chain(std::iter::repeat_n(
        None,
        padded_rows(items.len()) - items.len(),
    ))
}

/// A padding row of `width` `NULL`s, written as text (no binds).
pub(crate) fn push_null_row<DB: sqlx::Database>(
    values: &mut sqlx::query_builder::Separated<'_, '_, DB, &'static str>,
    width: usize,
) {
    for _ in 0..width {
        values.push("NULL");
    }
}

/// The number of columns in a column list such as `"id, name"`.
pub(crate) fn width(cols: &str) -> usize {
    cols.split(',').count()
}

/// One cell. Columns are `TEXT` or `BIGINT`, each possibly `NULL`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Val {
    Text(Option<String>),
    Int(Option<i64>),
}

impl From<&str> for Val {
    fn from(v: &str) -> Self {
        Val::Text(Some(v.to_owned()))
    }
}

impl From<String> for Val {
    fn from(v: String) -> Self {
        Val::Text(Some(v))
    }
}

impl From<Option<&str>> for Val {
    fn from(v: Option<&str>) -> Self {
        Val::Text(v.map(str::to_owned))
    }
}

impl From<i64> for Val {
    fn from(v: i64) -> Self {
        Val::Int(Some(v))
    }
}

impl From<Option<i64>> for Val {
    fn from(v: Option<i64>) -> Self {
        Val::Int(v)
    }
}

/// Rows of the same width, each cell of the same kind down a column.
#[derive(Debug, Default)]
pub(crate) struct Rows {
    width: usize,
    cells: Vec<Val>,
}

impl Rows {
    pub(crate) fn new(width: usize) -> Self {
        Self {
            width,
            cells: Vec::new(),
        }
    }

    /// Appends a row of exactly `width` cells.
    pub(crate) fn push<const N: usize>(&mut self, row: [Val; N]) {
        debug_assert_eq!(N, self.width, "a row of the wrong width");
        self.cells.extend(row);
    }

    /// The rows, one after the other.
    pub(crate) fn rows(self) -> impl Iterator<Item = Vec<Val>> {
        let width = self.width.max(1);
        let mut cells = self.cells.into_iter();
        std::iter::from_fn(move || {
            let row: Vec<Val> = cells.by_ref().take(width).collect();
            (!row.is_empty()).then_some(row)
        })
    }

    /// The columns, in order; a column is text when its first cell is.
    pub(crate) fn columns(self) -> Vec<Column> {
        let width = self.width;
        let mut columns: Vec<Column> = Vec::with_capacity(width);
        for (i, cell) in self.cells.into_iter().enumerate() {
            let c = i % width.max(1);
            if columns.len() <= c {
                columns.push(match cell {
                    Val::Text(_) => Column::Text(Vec::new()),
                    Val::Int(_) => Column::Int(Vec::new()),
                });
            }
            match (&mut columns[c], cell) {
                (Column::Text(col), Val::Text(v)) => col.push(v),
                (Column::Int(col), Val::Int(v)) => col.push(v),
                // A column of mixed kinds is a bug in the caller.
                (Column::Text(col), Val::Int(v)) => {
                    debug_assert!(false, "column {c} mixes text and integers");
                    col.push(v.map(|v| v.to_string()))
                }
                (Column::Int(col), Val::Text(v)) => {
                    debug_assert!(false, "column {c} mixes integers and text");
                    col.push(v.and_then(|v| v.parse().ok()))
                }
            }
        }
        columns
    }
}

/// One column of cells.
#[derive(Debug, PartialEq)]
pub(crate) enum Column {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Rows {
        let mut rows = Rows::new(3);
        rows.push(["a".into(), 1i64.into(), None::<&str>.into()]);
        rows.push(["b".into(), None::<i64>.into(), "x".into()]);
        rows
    }

    #[test]
    fn rows_come_back_row_by_row() {
        let rows: Vec<Vec<Val>> = sample().rows().collect();
        assert_eq!(
            rows,
            vec![
                vec!["a".into(), 1i64.into(), None::<&str>.into()],
                vec!["b".into(), None::<i64>.into(), "x".into()],
            ]
        );
    }

    #[test]
    fn rows_come_back_column_by_column() {
        assert_eq!(
            sample().columns(),
            vec![
                Column::Text(vec![Some("a".into()), Some("b".into())]),
                Column::Int(vec![Some(1), None]),
                Column::Text(vec![None, Some("x".into())]),
            ]
        );
    }

    #[test]
    fn batches_are_padded_to_powers_of_two() {
        let sizes: Vec<usize> = [0, 1, 2, 3, 4, 5, 64, 65, 128].map(padded_rows).to_vec();
        assert_eq!(sizes, [1, 1, 2, 4, 4, 8, 64, 128, 128]);
        let rows: Vec<Option<&char>> = padded(&['a', 'b', 'c']).collect();
        assert_eq!(rows, [Some(&'a'), Some(&'b'), Some(&'c'), None]);
        assert_eq!(padded::<char>(&[]).count(), 1);
        assert_eq!(width("id, deployment_id, hash"), 3);
    }

    #[test]
    fn no_rows_is_empty() {
        assert_eq!(Rows::new(2).rows().count(), 0);
        assert!(Rows::new(2).columns().is_empty());
    }
}
