//! Hiding secrets in connection strings and URLs before they are printed.

/// What replaces a secret.
pub const REDACTED: &str = "***";

/// Query options of a MongoDB URI whose values are secrets.
const SECRET_URI_OPTIONS: [&str; 4] = [
    "password",
    "tlscertificatekeyfilepassword",
    "sslpemkeypassword",
    // May carry AWS_SESSION_TOKEN.
    "authmechanismproperties",
];

/// Replace the password of a `mongodb://` / `mongodb+srv://` URI (and the
/// values of secret query options such as `tlsCertificateKeyFilePassword`)
/// with `***`. The user name and hosts are kept for diagnosis.
///
/// `mongodb://u:p%40ss@h1,h2/db?replicaSet=rs` -> `mongodb://u:***@h1,h2/db?replicaSet=rs`
///
/// Errs on the side of hiding: an unencoded `@`, `/` or `?` in the password
/// still hides everything up to the last `@`.
pub fn redacted_uri(uri: &str) -> String {
    let (scheme, rest) = match uri.find("://") {
        Some(i) => (&uri[..i + 3], &uri[i + 3..]),
        None => ("", uri),
    };

    // Where the credentials end: the last '@' anywhere. Hosts never contain
    // '@', and a password with unencoded '@', '/' or '?' is still covered. A
    // '@' in a query option (rare) makes this hide more than needed, which is
    // the safe direction.
    let at = rest.rfind('@');

    let mut out = String::with_capacity(uri.len());
    out.push_str(scheme);
    let after_credentials = match at {
        Some(at) => {
            let userinfo = &rest[..at];
            match userinfo.split_once(':') {
                Some((user, _password)) => {
                    out.push_str(user);
                    out.push(':');
                    out.push_str(REDACTED);
                }
                None => out.push_str(userinfo),
            }
            out.push('@');
            &rest[at + 1..]
        }
        None => rest,
    };

    match after_credentials.split_once('?') {
        None => out.push_str(after_credentials),
        Some((path, query)) => {
            out.push_str(path);
            out.push('?');
            let options: Vec<String> = query
                .split('&')
                .map(|opt| match opt.split_once('=') {
                    Some((k, _))
                        if SECRET_URI_OPTIONS.contains(&k.to_ascii_lowercase().as_str()) =>
                    {
                        format!("{k}={REDACTED}")
                    }
                    _ => opt.to_owned(),
                })
                .collect();
            out.push_str(&options.join("&"));
        }
    }
    out
}

/// Redact an http(s) URL for display: keep scheme, host and port; replace
/// any user info and any path/query/fragment (webhook URLs usually carry
/// their token there) with `***`.
///
/// `https://hooks.slack.com/services/T0/B0/XyZ` -> `https://hooks.slack.com/***`
pub fn redacted_url(url: &str) -> String {
    let (scheme, rest) = match url.find("://") {
        Some(i) => (&url[..i + 3], &url[i + 3..]),
        None => return REDACTED.to_owned(),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    let host = match authority.rfind('@') {
        Some(at) => format!("{REDACTED}@{}", &authority[at + 1..]),
        None => authority.to_owned(),
    };
    let tail = &rest[authority_end..];
    if tail.is_empty() || tail == "/" {
        format!("{scheme}{host}{tail}")
    } else {
        format!("{scheme}{host}/{REDACTED}")
    }
}
