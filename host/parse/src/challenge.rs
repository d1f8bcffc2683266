//! `WWW-Authenticate`: how a registry says which credentials it wants, and where to get a token.

/// A `WWW-Authenticate` challenge: its scheme, lower-cased, and its parameters (names
/// lower-cased, values unquoted). Values may be quoted, with commas and escapes inside.
pub fn parse_challenge(header: &str) -> (String, Vec<(String, String)>) {
    let header = header.trim();
    let (scheme, rest) = header
        .split_once(char::is_whitespace)
        .unwrap_or((header, ""));
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace() || *c == ',').is_some() {}
        let name: String = std::iter::from_fn(|| chars.next_if(|c| *c != '=' && *c != ','))
            .collect::<String>()
            .trim()
            .to_ascii_lowercase();
        if name.is_empty() && chars.peek().is_none() {
            break;
        }
        if chars.next_if_eq(&'=').is_none() {
            continue; // a bare token (e.g. token68): no parameter
        }
        while chars.next_if(|c| *c == ' ' || *c == '\t').is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'"').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '"' => break,
                    '\\' => value.extend(chars.next()),
                    c => value.push(c),
                }
            }
        } else {
            value = std::iter::from_fn(|| chars.next_if(|c| *c != ','))
                .collect::<String>()
                .trim()
                .to_string();
        }
        if !name.is_empty() {
            params.push((name, value));
        }
    }
    (scheme.to_ascii_lowercase(), params)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_in_any_order_with_quoted_commas() {
        let (scheme, params) = parse_challenge(
            r#"BEARER service="reg, istry",realm="https://auth.example/token" , scope="repository:a/b:pull,push",error=invalid_token"#,
        );
        assert_eq!(scheme, "bearer");
        let get = |n: &str| params.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(get("realm"), Some("https://auth.example/token"));
        assert_eq!(get("service"), Some("reg, istry"));
        assert_eq!(get("scope"), Some("repository:a/b:pull,push"));
        assert_eq!(get("error"), Some("invalid_token"));
        let (scheme, params) = parse_challenge(r#"Basic realm="a \"quoted\" realm""#);
        assert_eq!(scheme, "basic");
        assert_eq!(params, vec![("realm".into(), r#"a "quoted" realm"#.into())]);
        assert_eq!(parse_challenge("Bearer").0, "bearer");
    }
}
