//! Escaping, links and the page frame. The style sheet is embedded: nothing is fetched
//! from outside.

use std::fmt::Write as _;

use axum::response::Html;

use crate::BASE;

/// The style sheet of every page.
const STYLE: &str = "
body{font:14px/1.45 system-ui,sans-serif;margin:0;color:#1b1f24;background:#f6f7f9}
header{background:#14213d;color:#fff;padding:.6em 1.2em;display:flex;gap:1.2em;align-items:center}
header a{color:#e5e9f0;text-decoration:none}header a:hover{text-decoration:underline}
header strong{font-size:1.1em;margin-right:1em}
main{padding:1em 1.5em;max-width:90em}
h1{font-size:1.35em;margin:.2em 0 .8em}h2{font-size:1.1em;margin-top:1.5em}
table{border-collapse:collapse;background:#fff;width:100%;margin-bottom:1em}
th,td{border:1px solid #d8dde3;padding:.3em .6em;text-align:left;vertical-align:top}
th{background:#eef1f5}td.n{text-align:right;font-variant-numeric:tabular-nums}
code,pre{font-family:ui-monospace,monospace;font-size:.95em}
pre{background:#fff;border:1px solid #d8dde3;padding:.6em;overflow:auto;max-height:30em}
form.inline{display:inline}button{cursor:pointer}
.warn{color:#a4161a;font-weight:600}.ok{color:#2b9348}.muted{color:#6c757d}
ul.tree{list-style:none;padding-left:1.2em;border-left:1px dashed #adb5bd;margin:.2em 0}
.self{background:#fff3bf;padding:0 .3em}
.filters input{margin-right:.6em}
";

/// `text` escaped for HTML text and attribute values.
pub(crate) fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A console URL: `path` under [`BASE`] with `query` pairs encoded.
pub(crate) fn url(path: &str, query: &[(&str, &str)]) -> String {
    let mut url = format!("{BASE}{path}");
    if !query.is_empty() {
        let encoded = url::form_urlencoded::Serializer::new(String::new())
            .extend_pairs(query.iter().copied())
            .finish();
        url.push('?');
        url.push_str(&encoded);
    }
    url
}

/// `<a href=...>text</a>`, both escaped.
pub(crate) fn link(href: &str, text: &str) -> String {
    format!("<a href=\"{}\">{}</a>", esc(href), esc(text))
}

/// A one-button form posting `fields` to `action` (asking first when `confirm`).
pub(crate) fn button(action: &str, fields: &[(&str, &str)], label: &str, id: &str) -> String {
    let mut form =
        format!("<form class=\"inline\" method=\"post\" action=\"{}\">", esc(&url(action, &[])));
    for (name, value) in fields {
        let _ =
            write!(form, "<input type=\"hidden\" name=\"{}\" value=\"{}\">", esc(name), esc(value));
    }
    let _ =
        write!(form, "<button type=\"submit\" id=\"{}\">{}</button></form>", esc(id), esc(label));
    form
}

/// A whole page: the navigation, `title` and `body` (already HTML).
pub(crate) fn page(title: &str, body: &str) -> Html<String> {
    let nav = [
        ("/", "Overview"),
        ("/streams", "Streams"),
        ("/log", "Log"),
        ("/groups", "Consumer groups"),
        ("/projections", "Projections"),
        ("/relays", "Relays"),
    ]
    .iter()
    .map(|(path, name)| link(&url(path, &[]), name))
    .collect::<Vec<_>>()
    .join("");
    Html(format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width\">\
         <title>{} · Keel console</title><style>{STYLE}</style></head>\
         <body><header><strong>Keel console</strong>{nav}</header>\
         <main><h1>{}</h1>{body}</main></body></html>",
        esc(title),
        esc(title)
    ))
}

/// A table from a header row and rows of cells (already HTML); `numeric` columns are
/// right-aligned.
pub(crate) fn table(headers: &[&str], rows: &[Vec<String>], numeric: &[usize]) -> String {
    let mut html = String::from("<table><tr>");
    for header in headers {
        let _ = write!(html, "<th>{}</th>", esc(header));
    }
    html.push_str("</tr>");
    for row in rows {
        html.push_str("<tr>");
        for (i, cell) in row.iter().enumerate() {
            let class = if numeric.contains(&i) { " class=\"n\"" } else { "" };
            let _ = write!(html, "<td{class}>{cell}</td>");
        }
        html.push_str("</tr>");
    }
    html.push_str("</table>");
    html
}
