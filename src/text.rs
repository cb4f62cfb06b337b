//! Small text helpers every other module may use: byte sizes, plurals, printable log text,
//! SQL identifier and literal quoting, display names of tables, and the text of a server
//! error. A leaf: it imports nothing of this crate, so anything can import it.

/// `s` with control characters (newlines, tabs, escapes) shown as escapes, for one-line logs.
pub fn printable(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_debug().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

/// "1 table", "3 tables".
pub fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// "1.2 MiB".
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// A SQL identifier, always double-quoted: `"a""b"`. Also what a `pg_dump -t` pattern needs
/// to match exactly one name.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `"schema"."name"`, always quoted.
pub fn quote_qualified(schema: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

/// An identifier, quoted unless it is a plain lower-case name. For a `regclass` literal,
/// where key words need no quotes (as pg_dump writes it).
pub fn quote_ident_if_needed(s: &str) -> String {
    from_quoted(quote_ident_if_needed_bytes(s.as_bytes()))
}

/// [`quote_ident_if_needed`] of a name in any server encoding (bytes as the database has
/// them: a non-ASCII byte is never plain).
pub fn quote_ident_if_needed_bytes(s: &[u8]) -> Vec<u8> {
    let plain = s
        .first()
        .is_some_and(|c| c.is_ascii_lowercase() || *c == b'_')
        && s.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'_');
    if plain {
        return s.to_vec();
    }
    let mut out = Vec::with_capacity(s.len() + 2);
    out.push(b'"');
    for &c in s {
        if c == b'"' {
            out.push(b'"');
        }
        out.push(c);
    }
    out.push(b'"');
    out
}

/// `schema.name` for a `regclass` literal, each part quoted only where needed (as pg_dump
/// writes it).
pub fn quote_qualified_if_needed(schema: &str, name: &str) -> String {
    from_quoted(quote_qualified_if_needed_bytes(
        schema.as_bytes(),
        name.as_bytes(),
    ))
}

/// [`quote_qualified_if_needed`] in any server encoding.
pub fn quote_qualified_if_needed_bytes(schema: &[u8], name: &[u8]) -> Vec<u8> {
    let mut out = quote_ident_if_needed_bytes(schema);
    out.push(b'.');
    out.extend(quote_ident_if_needed_bytes(name));
    out
}

/// A SQL string literal that reads the same whatever standard_conforming_strings says.
pub fn quote_literal(s: &str) -> String {
    from_quoted(quote_literal_bytes(s.as_bytes()))
}

/// [`quote_literal`] in any server encoding: only the ASCII bytes `'` and `\` are doubled,
/// which no byte of another character can be in a server encoding.
pub fn quote_literal_bytes(s: &[u8]) -> Vec<u8> {
    let escape = s.contains(&b'\\');
    let mut out = Vec::with_capacity(s.len() + 3);
    if escape {
        out.push(b'E');
    }
    out.push(b'\'');
    for &c in s {
        if c == b'\'' || (escape && c == b'\\') {
            out.push(c);
        }
        out.push(c);
    }
    out.push(b'\'');
    out
}

/// Quoting adds only ASCII bytes, so UTF-8 stays UTF-8.
fn from_quoted(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).expect("quoting keeps UTF-8")
}

/// A part of a table's display name, quoted when it could not be read back unquoted
/// (contains '.' or '"', or is empty).
pub fn display_part(s: &str) -> String {
    if s.is_empty() || s.contains('.') || s.contains('"') {
        quote_ident(s)
    } else {
        s.to_string()
    }
}

/// The display name of a table, `schema.table`, as `groups.toml` spells it (the
/// configuration's table references read it back).
pub fn display_name(schema: &str, table: &str) -> String {
    format!("{}.{}", display_part(schema), display_part(table))
}

/// An I/O error's text, saying "disk full" first when it is one (ENOSPC).
pub fn io_message(e: &std::io::Error) -> String {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        format!("disk full ({e})")
    } else {
        e.to_string()
    }
}

/// The text of a tokio-postgres error: for a server error its message, detail, hint and
/// SQLSTATE (the error's own Display says only "db error"), else the error and its causes.
pub fn pg_error_text(e: &tokio_postgres::Error) -> String {
    if let Some(db) = e.as_db_error() {
        let mut s = format!("{}: {}", db.severity(), db.message());
        if let Some(d) = db.detail() {
            s.push_str(&format!("; DETAIL: {d}"));
        }
        if let Some(h) = db.hint() {
            s.push_str(&format!("; HINT: {h}"));
        }
        s.push_str(&format!(" (SQLSTATE {})", db.code().code()));
        return s;
    }
    let mut s = e.to_string();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_quoted() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_qualified("public", "a*b"), "\"public\".\"a*b\"");
        assert_eq!(quote_qualified("we\"ird", "X"), "\"we\"\"ird\".\"X\"");
        assert_eq!(quote_ident_if_needed("plain_1"), "plain_1");
        assert_eq!(quote_ident_if_needed("Mixed"), "\"Mixed\"");
        assert_eq!(quote_ident_if_needed("1st"), "\"1st\"");
    }

    #[test]
    fn literals() {
        assert_eq!(quote_literal("app.seq"), "'app.seq'");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
    }

    #[test]
    fn display_names_keep_parts_apart() {
        assert_eq!(display_name("public", "t"), "public.t");
        assert_eq!(display_name("a.b", "c"), "\"a.b\".c");
        assert_ne!(display_name("a.b", "c"), display_name("a", "b.c"));
    }

    #[test]
    fn sizes_and_plurals() {
        assert_eq!(human_bytes(12), "12 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(plural(1, "table"), "1 table");
        assert_eq!(plural(2, "table"), "2 tables");
        assert_eq!(printable("a\nb"), "a\\nb");
    }
}
