//! The client side of raw HTTP/1.1 exchanges, for tests that talk to the server over a
//! socket byte by byte: Basic credentials, and a response head split into its parts.

use base64::Engine as _;

/// The `Authorization` value for HTTP Basic with `user` and `password`.
pub fn basic_auth(user: &str, password: &str) -> String {
    let pair = format!("{user}:{password}");
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

/// A response head (status line and header lines, without the blank line that ends it)
/// as (status, headers with lower-cased names and trimmed values).
pub fn parse_response_head(head: &str) -> (u16, Vec<(String, String)>) {
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .unwrap()
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();

    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    (status, headers)
}

/// A header's value by its lower-case name.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}
