//! Keyset pages, newest first: a page is the rows with an id below the
//! cursor, and `next_cursor` is the last id returned while more remain. Unlike
//! offsets, a row written meanwhile never shifts a page or repeats a row.

use super::error::{Error, Result};

/// `limit` checked against `1..=max`, or `default` when absent.
pub fn limit(limit: Option<i64>, default: i64, max: i64) -> Result<i64> {
    let limit = limit.unwrap_or(default);
    if (1..=max).contains(&limit) {
        Ok(limit)
    } else {
        Err(Error::Unprocessable(format!(
            "limit must be from 1 to {max}"
        )))
    }
}

/// A cursor as a client sends it back: a positive id.
pub fn cursor(cursor: Option<i64>) -> Result<Option<i64>> {
    match cursor {
        Some(c) if c < 1 => Err(Error::Unprocessable(
            "cursor must be a positive id from next_cursor".into(),
        )),
        other => Ok(other),
    }
}

/// Splits `limit + 1` fetched rows into the page and its `next_cursor`: the
/// extra row only says that another page follows.
pub fn split<T>(mut rows: Vec<T>, limit: i64, id: impl Fn(&T) -> i64) -> (Vec<T>, Option<i64>) {
    let limit = usize::try_from(limit).unwrap_or(0);
    if rows.len() > limit {
        rows.truncate(limit);
        let next = rows.last().map(id);
        (rows, next)
    } else {
        (rows, None)
    }
}
