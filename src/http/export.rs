//! CSV for accounting: a list endpoint answers `text/csv` when asked with
//! `?format=csv` or `Accept: text/csv`. The export is every row the filters
//! match (from `cursor`, if given), not one page: it is read in keyset chunks
//! and streamed, so neither the node's memory nor one database connection is
//! held for the size of the ledger.

use std::future::Future;

use axum::{
    body::{Body, Bytes},
    http::{header, HeaderMap, HeaderValue},
    response::{IntoResponse, Response},
};
use futures::stream;
use serde::Serialize;

use super::error::{Error, Result};

/// Rows read per query while streaming.
const CHUNK: i64 = 1_000;

/// How a list answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Csv,
}

impl Format {
    /// `?format=` wins; else `Accept` asking for `text/csv` (and not JSON
    /// first); else JSON.
    pub fn of(query: Option<&str>, headers: &HeaderMap) -> Result<Format> {
        match query {
            Some("json") => return Ok(Format::Json),
            Some("csv") => return Ok(Format::Csv),
            Some(other) => {
                return Err(Error::Unprocessable(format!(
                    "format must be json or csv, not {other:?}"
                )))
            }
            None => {}
        }
        let accepted = headers
            .get_all(header::ACCEPT)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|m| m.trim().parse::<mime::Mime>().ok());
        for mime in accepted {
            match (mime.type_(), mime.subtype()) {
                (mime::TEXT, mime::CSV) => return Ok(Format::Csv),
                (mime::APPLICATION, mime::JSON)
                | (mime::STAR, _)
                | (mime::APPLICATION, mime::STAR) => return Ok(Format::Json),
                _ => {}
            }
        }
        Ok(Format::Json)
    }
}

/// A text cell a spreadsheet would run as a formula (`=`, `+`, `-`, `@`, or a
/// leading tab or carriage return) gets a leading `'`: a provider reference or
/// a failure reason is data, never a formula (OWASP "CSV injection").
pub fn cell(text: Option<&str>) -> String {
    match text {
        Some(t) if t.starts_with(['=', '+', '-', '@', '\t', '\r']) => format!("'{t}"),
        Some(t) => t.to_owned(),
        None => String::new(),
    }
}

/// Streams `rows` as CSV (a header row from the field names, then one line
/// per row). `next` reads the chunk of rows below a cursor, newest first,
/// and `id` says each row's cursor.
pub fn stream_csv<R, F, Fut>(
    filename: &str,
    start: Option<i64>,
    next: F,
    id: fn(&R) -> i64,
) -> Response
where
    R: Serialize + Send + 'static,
    F: Fn(Option<i64>, i64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<R>>> + Send + 'static,
{
    // State: the cursor to read below, whether the header is written, done.
    let body = stream::unfold((start, true, false), move |(cursor, first, done)| {
        let chunk = (!done).then(|| next(cursor, CHUNK));
        async move {
            let rows = match chunk?.await {
                Ok(rows) => rows,
                // Headers are gone: ending the body short is how a failure
                // shows; the client sees an incomplete transfer, not a file
                // that looks complete.
                Err(error) => return failed(error.to_string()),
            };
            let last = rows.len() < usize::try_from(CHUNK).unwrap_or(usize::MAX);
            let cursor = rows.last().map(id);
            let mut out = csv::WriterBuilder::new()
                .has_headers(first)
                .from_writer(Vec::new());
            for row in &rows {
                if let Err(error) = out.serialize(row) {
                    return failed(error.to_string());
                }
            }
            let bytes = match out.into_inner() {
                Ok(bytes) => bytes,
                Err(error) => return failed(error.to_string()),
            };
            let done = last || cursor.is_none();
            Some((Ok(Bytes::from(bytes)), (cursor, false, done)))
        }
    });
    let mut response = Body::from_stream(body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    if let Ok(value) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        headers.insert(header::CONTENT_DISPOSITION, value);
    }
    response
}

/// The stream's last item when a chunk cannot be read or written: an error
/// that ends the body, and a state that reads nothing more.
#[allow(clippy::type_complexity)]
fn failed(error: String) -> Option<(std::io::Result<Bytes>, (Option<i64>, bool, bool))> {
    Some((Err(std::io::Error::other(error)), (None, false, true)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formulas_are_quoted_and_data_is_not() {
        assert_eq!(cell(Some("=HYPERLINK(\"x\")")), "'=HYPERLINK(\"x\")");
        assert_eq!(cell(Some("-2+3")), "'-2+3");
        assert_eq!(cell(Some("@SUM(A1)")), "'@SUM(A1)");
        assert_eq!(cell(Some("TRF_123")), "TRF_123");
        assert_eq!(cell(None), "");
    }

    #[test]
    fn the_query_wins_then_accept_then_json() {
        let mut headers = HeaderMap::new();
        assert_eq!(Format::of(None, &headers).unwrap(), Format::Json);
        headers.insert(header::ACCEPT, HeaderValue::from_static("text/csv"));
        assert_eq!(Format::of(None, &headers).unwrap(), Format::Csv);
        assert_eq!(Format::of(Some("json"), &headers).unwrap(), Format::Json);
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("application/json, text/csv;q=0.5"),
        );
        assert_eq!(Format::of(None, &headers).unwrap(), Format::Json);
        assert!(Format::of(Some("xlsx"), &headers).is_err());
    }
}
