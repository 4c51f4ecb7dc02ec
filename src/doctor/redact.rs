//! Evidence is shown to people and pasted into tickets: anything that looks like a credential
//! is replaced before it is printed (tokens, bearer headers, long opaque strings, values of
//! secret-named fields).

/// Characters of base64 / base64url (not `/` or `.`: resource ids and dotted names are not
/// secrets; a JWT's dots are taken when it starts like one, `eyJ`).
fn opaque(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '+' | '=' | '_' | '-')
}

fn jwt(c: char) -> bool {
    opaque(c) || c == '.'
}

pub fn redact(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        let lower = rest.to_ascii_lowercase();
        // `secret=...`, `password: ...`, `Bearer ...`: the value goes.
        if let Some(n) = [
            "bearer ",
            "client_secret=",
            "password=",
            "secret=",
            "sig=",
            "token=",
        ]
        .iter()
        .find(|p| lower.starts_with(*p))
        .map(|p| p.len())
        {
            out.push_str(&rest[..n]);
            let value = rest[n..].find(|c: char| !jwt(c)).unwrap_or(rest.len() - n);
            if value > 0 {
                out.push_str("[REDACTED]");
            }
            rest = &rest[n + value..];
            continue;
        }
        let token = rest.starts_with("eyJ");
        let run = rest
            .find(|c: char| if token { !jwt(c) } else { !opaque(c) })
            .unwrap_or(rest.len());
        if run >= 40 || (token && run > 20) {
            out.push_str("[REDACTED]");
            rest = &rest[run..];
            continue;
        }
        let step = if run == 0 {
            rest.chars().next().map_or(1, char::len_utf8)
        } else {
            run
        };
        out.push_str(&rest[..step]);
        rest = &rest[step..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn credentials_go_ids_stay() {
        let jwt = "eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJlc2lnbmF0dXJl";
        assert_eq!(redact(&format!("token {jwt} end")), "token [REDACTED] end");
        assert_eq!(
            redact("Authorization: Bearer abc.def"),
            "Authorization: Bearer [REDACTED]"
        );
        assert_eq!(
            redact("client_secret=s3cr3t&x=1"),
            "client_secret=[REDACTED]&x=1"
        );
        let id = "/subscriptions/0b5c3e2a-8d7f-4e61-9a43-2f1c6d8e7b90/resourceGroups/rg";
        assert_eq!(redact(id), id);
        let line = "E1201 10:51:26.000000 1 server.go:54] StatusCode=0 -- Original Error: context deadline exceeded";
        assert_eq!(redact(line), line);
        let spc = "error: SecretProviderClass.secrets-store.csi.x-k8s.io \"app-spc\" not found";
        assert_eq!(redact(spc), spc);
        assert_eq!(redact(&format!("x {} y", "A".repeat(44))), "x [REDACTED] y");
    }
}
