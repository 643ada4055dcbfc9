//! Connection URLs as they may be shown: banners, status output, error messages.

/// Query parameters whose values are secrets when their name contains one of these
/// (e.g. Postgres' `password`/`sslpassword`, librdkafka's `rdkafka.sasl.password`,
/// `rdkafka.ssl.key.pem`, `rdkafka.sasl.oauthbearer.client.secret`).
const SECRET_PARAMETERS: &[&str] =
    &["password", "secret", "token", "pem", "credential", "oauthbearer.config"];

/// `url` with its password and secret query parameters replaced by `***`, fit for
/// printing. The user name, hosts and other parameters stay, so the message still says
/// where the process tried to go.
///
/// Written by hand rather than with the `url` crate: Keel's URLs include forms it does
/// not parse (`kafka://a:9092,b:9092`, Postgres' multi-host URLs), and a password with
/// an unescaped `/` or `@` must not leak either. The user information is everything
/// before the last `@` ahead of the query, so a stray `@` in the path at worst hides a
/// little too much.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else { return url.to_owned() };
    let (head, query) = match url[scheme_end..].find('?') {
        Some(q) => (&url[..scheme_end + q], Some(&url[scheme_end + q + 1..])),
        None => (url, None),
    };
    let mut out = String::with_capacity(url.len());
    match head[scheme_end..].rfind('@').map(|at| scheme_end + at) {
        Some(at) => match head[scheme_end..at].find(':').map(|c| scheme_end + c) {
            Some(colon) => {
                out.push_str(&head[..=colon]);
                out.push_str("***");
                out.push_str(&head[at..]);
            }
            None => out.push_str(head),
        },
        None => out.push_str(head),
    }
    if let Some(query) = query {
        out.push('?');
        let pairs: Vec<String> = query
            .split('&')
            .map(|pair| match pair.split_once('=') {
                Some((key, _)) if is_secret(key) => format!("{key}=***"),
                _ => pair.to_owned(),
            })
            .collect();
        out.push_str(&pairs.join("&"));
    }
    out
}

fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    SECRET_PARAMETERS.iter().any(|secret| key.contains(secret))
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_and_secret_parameters_are_hidden() {
        for (url, shown) in [
            ("postgres://keel:s3cret@db:5432/keel", "postgres://keel:***@db:5432/keel"),
            ("amqp://guest:guest@127.0.0.1:5672/%2f", "amqp://guest:***@127.0.0.1:5672/%2f"),
            ("http://ops:pw@consul:8500", "http://ops:***@consul:8500"),
            ("postgres://keel:pa/ss@w@rd@db/keel", "postgres://keel:***@db/keel"),
            (
                "postgres://db/keel?sslmode=require&password=s3cret",
                "postgres://db/keel?sslmode=require&password=***",
            ),
            (
                "kafka://a:9092,b:9093?partitions=3&rdkafka.sasl.password=s3cret&rdkafka.ssl.key.pem=k",
                "kafka://a:9092,b:9093?partitions=3&rdkafka.sasl.password=***&rdkafka.ssl.key.pem=***",
            ),
            ("kafka://u:p@a:9092?x=1", "kafka://u:***@a:9092?x=1"),
        ] {
            assert_eq!(redact_url(url), shown, "{url}");
        }
    }

    #[test]
    fn urls_without_secrets_are_unchanged() {
        for url in [
            "sqlite://keel-data/keel.db",
            "sqlite::memory:",
            "postgres://keel@db/keel",
            "kafka://127.0.0.1:9092?partitions=3",
            "memory://",
            "http://127.0.0.1:8500",
            "not a url",
        ] {
            assert_eq!(redact_url(url), url);
        }
    }
}
