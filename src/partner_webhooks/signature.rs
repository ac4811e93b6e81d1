//! Signing secrets and signatures, by the Standard Webhooks specification
//! (<https://www.standardwebhooks.com>): the secret is `whsec_` + base64 of
//! random bytes, and `webhook-signature` is `v1,` + base64 of the
//! HMAC-SHA256, keyed with the decoded secret, of `{id}.{timestamp}.{body}`.
//! The signing itself is the specification's own crate, `standardwebhooks`.

use base64::Engine;

use crate::config::Secret;

/// Random bytes in a new secret: the specification asks for 24 to 64.
const SECRET_BYTES: usize = 32;

/// A new endpoint secret from the operating system's CSPRNG.
pub fn new_secret() -> Result<Secret, getrandom::Error> {
    let mut key = [0u8; SECRET_BYTES];
    getrandom::fill(&mut key)?;
    Ok(Secret::new(format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(key)
    )))
}

/// The `webhook-signature` header of one delivery.
pub fn sign(secret: &Secret, id: &str, timestamp: i64, body: &str) -> anyhow::Result<String> {
    // The error types say nothing of the key; they are mapped anyway so that
    // no error here could ever carry it into a log.
    let webhook = standardwebhooks::Webhook::new(secret.expose())
        .map_err(|_| anyhow::anyhow!("the endpoint's signing secret is not valid base64"))?;
    webhook
        .sign(id, timestamp, body.as_bytes())
        .map_err(|_| anyhow::anyhow!("the event body is not UTF-8"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The specification's own example (its README and test vectors).
    #[test]
    fn signs_the_specifications_example() {
        let secret = Secret::new("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw");
        let body = r#"{"test": 2432232314}"#;
        assert_eq!(
            sign(&secret, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, body).unwrap(),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }

    #[test]
    fn new_secrets_are_random_and_decode_to_32_bytes() {
        let a = new_secret().unwrap();
        let b = new_secret().unwrap();
        assert_ne!(a, b);
        let key = base64::engine::general_purpose::STANDARD
            .decode(a.expose().strip_prefix("whsec_").unwrap())
            .unwrap();
        assert_eq!(key.len(), SECRET_BYTES);
        assert_eq!(format!("{a:?}"), "[redacted]");
    }
}
