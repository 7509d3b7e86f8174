//! Passwords out of connection strings, for logs and error messages.

/// `url` with its password replaced by `***` (in the `user:password@` part and in a
/// `password=` parameter of a URL, or the `password` of libpq's `key=value` form), for logs
/// and error messages. Anything without a password comes back unchanged.
///
/// ```
/// use crat_dispatcher::ledger::redact_url;
///
/// assert_eq!(
///     redact_url("postgres://crat:s3cret@db.example:5432/crat"),
///     "postgres://crat:***@db.example:5432/crat"
/// );
/// assert_eq!(
///     redact_url("postgres://db.example/crat?user=crat&password=s3cret&sslmode=disable"),
///     "postgres://db.example/crat?user=crat&password=***&sslmode=disable"
/// );
/// assert_eq!(redact_url("postgres://crat@db/crat"), "postgres://crat@db/crat");
/// assert_eq!(
///     redact_url("host=db user=crat password='s3 cret' dbname=crat"),
///     "host=db user=crat password=*** dbname=crat"
/// );
/// ```
pub fn redact_url(url: &str) -> String {
    if !url.contains("://") {
        return redact_conninfo(url);
    }
    let mut out = url.to_owned();
    if let Some(scheme_end) = out.find("://") {
        let rest_start = scheme_end + 3;
        let authority_end = out[rest_start..]
            .find(['/', '?'])
            .map_or(out.len(), |i| rest_start + i);
        if let Some(at) = out[rest_start..authority_end].rfind('@') {
            let userinfo_end = rest_start + at;
            if let Some(colon) = out[rest_start..userinfo_end].find(':') {
                out.replace_range(rest_start + colon + 1..userinfo_end, "***");
            }
        }
    }
    if let Some(query_start) = out.find('?') {
        let (head, query) = out.split_at(query_start + 1);
        let redacted: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out = format!("{head}{}", redacted.join("&"));
    }
    out
}

/// libpq's `key = value …` form with the password's value replaced by `***` (a value may be
/// quoted, with `\'` and `\\` escapes inside).
fn redact_conninfo(conninfo: &str) -> String {
    let mut out = String::with_capacity(conninfo.len());
    let mut rest = conninfo;
    while let Some(eq) = rest.find('=') {
        let key = rest[..eq].trim_end();
        let key_start = key.rfind(char::is_whitespace).map_or(0, |i| i + 1);
        let is_password = key[key_start..].eq_ignore_ascii_case("password");
        out.push_str(&rest[..=eq]);
        rest = &rest[eq + 1..];
        let leading = rest.len() - rest.trim_start().len();
        out.push_str(&rest[..leading]);
        rest = &rest[leading..];
        // The value: quoted (up to the closing quote) or up to the next whitespace.
        let end = if let Some(quoted) = rest.strip_prefix('\'') {
            let mut escaped = false;
            let mut close = quoted.len();
            for (i, c) in quoted.char_indices() {
                match (escaped, c) {
                    (true, _) => escaped = false,
                    (false, '\\') => escaped = true,
                    (false, '\'') => {
                        close = i;
                        break;
                    }
                    _ => {}
                }
            }
            (close + 2).min(rest.len())
        } else {
            rest.find(char::is_whitespace).unwrap_or(rest.len())
        };
        if is_password {
            out.push_str("***");
        } else {
            out.push_str(&rest[..end]);
        }
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}
