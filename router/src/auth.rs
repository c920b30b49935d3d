//! Bearer-token checks for protected endpoints.

/// Compares two byte strings in time independent of where they differ (the length may leak).
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// True when the `Authorization` header value carries exactly `Bearer <token>`.
pub fn bearer_matches(header: Option<&str>, token: &str) -> bool {
    if token.is_empty() {
        return false;
    }
    match header.and_then(|h| h.strip_prefix("Bearer ")) {
        Some(given) => constant_time_eq(given.trim().as_bytes(), token.as_bytes()),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens() {
        assert!(bearer_matches(Some("Bearer s3cret"), "s3cret"));
        for bad in [
            None,
            Some("s3cret"),
            Some("Bearer s3creT"),
            Some("Bearer s3cret2"),
            Some("Basic s3cret"),
            Some("Bearer "),
        ] {
            assert!(!bearer_matches(bad, "s3cret"), "{bad:?}");
        }
        assert!(
            !bearer_matches(Some("Bearer "), ""),
            "an empty configured token never matches"
        );
    }
}
