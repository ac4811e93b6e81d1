//! TLS to PostgreSQL for the tokio-postgres connections (the migrator and
//! the LISTEN connection), read from the same `DATABASE_URL` as the pool.
//!
//! sqlx reads `sslmode` and `sslrootcert` itself (rustls, ring, webpki
//! roots). tokio-postgres knows only `disable`, `prefer` and `require`, and
//! no `sslrootcert`, so [`tokio_postgres`] takes both out of the URL, gives
//! tokio-postgres the mode it can enforce (encrypt or not) and does the
//! checking in the rustls configuration, the way libpq's `sslmode` means it:
//!
//! | sslmode | encrypted | chain checked | host name checked |
//! |---|---|---|---|
//! | `disable`, `allow` | no | – | – |
//! | `prefer` (the default) | if the server offers TLS | no | no |
//! | `require` | yes, or no connection | only with `sslrootcert` (then as `verify-ca`, like libpq) | no |
//! | `verify-ca` | yes | yes | no |
//! | `verify-full` | yes | yes | yes |
//!
//! The chain is checked against the certificates in `sslrootcert` plus the
//! Mozilla roots (webpki-roots), exactly the set sqlx trusts, so a URL that
//! works for the pool works for the listener and the migrator. As in sqlx,
//! `PGSSLMODE` and `PGSSLROOTCERT` apply when the URL has no such parameter.

use std::{path::PathBuf, str::FromStr, sync::Arc};

use anyhow::{bail, Context};
use percent_encoding::percent_decode_str;
use rustls::{
    client::{
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
        WebPkiServerVerifier,
    },
    crypto::{self, CryptoProvider},
    pki_types::{pem::PemObject, CertificateDer, ServerName, UnixTime},
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres_rustls::MakeRustlsConnect;

/// libpq's `sslmode`, as sqlx and this module read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

impl FromStr for SslMode {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> anyhow::Result<Self> {
        Ok(match s {
            // sqlx treats `allow` as `disable` too.
            "disable" | "allow" => SslMode::Disable,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => bail!(
                "sslmode={other} is not one of disable, allow, prefer, require, verify-ca, verify-full"
            ),
        })
    }
}

/// The TLS settings of a `DATABASE_URL`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgTls {
    pub mode: SslMode,
    pub root_cert: Option<PathBuf>,
}

/// The URL parameters this module reads, in sqlx's spellings.
const MODE_KEYS: &[&str] = &["sslmode", "ssl-mode"];
const ROOT_CERT_KEYS: &[&str] = &["sslrootcert", "ssl-root-cert", "ssl-ca"];

impl PgTls {
    /// Reads the TLS settings; returns them with the URL left without them.
    pub fn split_url(database_url: &str) -> anyhow::Result<(Self, String)> {
        let mut mode = None;
        let mut root_cert = None;
        let (base, query) = match database_url.split_once('?') {
            Some((base, query)) => (base, query),
            None => (database_url, ""),
        };
        let mut kept = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode(key)?;
            if MODE_KEYS.contains(&key.as_str()) {
                mode = Some(decode(value)?.parse()?);
            } else if ROOT_CERT_KEYS.contains(&key.as_str()) {
                root_cert = Some(PathBuf::from(decode(value)?));
            } else {
                kept.push(pair);
            }
        }
        let mode = match mode {
            Some(mode) => mode,
            None => match std::env::var("PGSSLMODE") {
                Ok(value) => value.parse().context("PGSSLMODE")?,
                Err(_) => SslMode::Prefer,
            },
        };
        let root_cert = root_cert.or_else(|| std::env::var_os("PGSSLROOTCERT").map(PathBuf::from));
        let url = if kept.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{}", kept.join("&"))
        };
        Ok((Self { mode, root_cert }, url))
    }

    /// The mode in force: `require` with a root certificate checks the
    /// chain, as libpq does (sqlx on its own would not).
    pub fn effective_mode(&self) -> SslMode {
        match self.mode {
            SslMode::Require if self.root_cert.is_some() => SslMode::VerifyCa,
            mode => mode,
        }
    }

    /// The rustls client configuration for this mode.
    pub fn client_config(&self) -> anyhow::Result<ClientConfig> {
        let provider = Arc::new(crypto::ring::default_provider());
        let builder = ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .context("rustls has no protocol version in common with ring")?;
        let chain = |roots| {
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .context("cannot build the certificate verifier")
        };
        let config = match self.effective_mode() {
            SslMode::VerifyFull => builder
                .with_root_certificates(self.roots()?)
                .with_no_client_auth(),
            mode => {
                let chain = match mode {
                    SslMode::VerifyCa => Some(chain(self.roots()?)?),
                    _ => None,
                };
                builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(WithoutHostName {
                        provider: provider.clone(),
                        chain,
                    }))
                    .with_no_client_auth()
            }
        };
        Ok(config)
    }

    fn roots(&self) -> anyhow::Result<RootCertStore> {
        let mut roots = RootCertStore {
            roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
        };
        if let Some(path) = &self.root_cert {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .with_context(|| format!("sslrootcert {}: cannot read it", path.display()))?;
            if certs.is_empty() {
                bail!("sslrootcert {}: no PEM certificate in it", path.display());
            }
            for cert in certs {
                roots.add(cert).with_context(|| {
                    format!("sslrootcert {}: a bad certificate", path.display())
                })?;
            }
        }
        Ok(roots)
    }
}

fn decode(s: &str) -> anyhow::Result<String> {
    // Query values are form-encoded for sqlx (`+` is a space): read them the same way.
    Ok(percent_decode_str(&s.replace('+', " "))
        .decode_utf8()
        .context("DATABASE_URL has a parameter that is not UTF-8")?
        .into_owned())
}

/// A tokio-postgres configuration and TLS connector for `DATABASE_URL`.
pub fn tokio_postgres(
    database_url: &str,
) -> anyhow::Result<(tokio_postgres::Config, MakeRustlsConnect)> {
    let (tls, url) = PgTls::split_url(database_url)?;
    let mut config: tokio_postgres::Config = url
        .parse()
        .context("DATABASE_URL is not a valid PostgreSQL URL")?;
    config.ssl_mode(match tls.effective_mode() {
        SslMode::Disable => tokio_postgres::config::SslMode::Disable,
        SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
        SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
            tokio_postgres::config::SslMode::Require
        }
    });
    Ok((config, MakeRustlsConnect::new(tls.client_config()?)))
}

/// The verifier of the modes that do not check the host name. Without a
/// chain verifier (`prefer`, `require`) any certificate will do, libpq's
/// meaning; with one (`verify-ca`) the chain must lead to a trusted root but
/// the certificate may name any host. The handshake's signatures are checked
/// in both.
#[derive(Debug)]
struct WithoutHostName {
    provider: Arc<CryptoProvider>,
    chain: Option<Arc<WebPkiServerVerifier>>,
}

impl ServerCertVerifier for WithoutHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        // webpki checks the chain first and the name last, so a name error
        // means the chain is good.
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        crypto::verify_tls12_signature(message, cert, dss, algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        let algorithms = &self.provider.signature_verification_algorithms;
        crypto::verify_tls13_signature(message, cert, dss, algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_and_the_rest_kept_verbatim() {
        let (tls, url) = PgTls::split_url(
            "postgres://u:p@db:5432/app?sslmode=verify-full&options=-c%20x%3Dy&sslrootcert=%2Ftmp%2Fca%20dir%2Fca.pem",
        )
        .unwrap();
        assert_eq!(tls.mode, SslMode::VerifyFull);
        assert_eq!(tls.root_cert, Some(PathBuf::from("/tmp/ca dir/ca.pem")));
        assert_eq!(url, "postgres://u:p@db:5432/app?options=-c%20x%3Dy");
        url.parse::<tokio_postgres::Config>().unwrap();

        let (tls, url) = PgTls::split_url("postgres://db/app?sslmode=verify-ca").unwrap();
        assert_eq!(tls.mode, SslMode::VerifyCa);
        assert_eq!(url, "postgres://db/app");
    }

    #[test]
    fn require_with_a_root_certificate_checks_the_chain_as_libpq_does() {
        let require = |root: Option<&str>| PgTls {
            mode: SslMode::Require,
            root_cert: root.map(PathBuf::from),
        };
        assert_eq!(require(None).effective_mode(), SslMode::Require);
        assert_eq!(require(Some("/ca.pem")).effective_mode(), SslMode::VerifyCa);
    }

    #[test]
    fn an_unknown_sslmode_or_a_missing_root_certificate_is_a_clear_error() {
        let e = PgTls::split_url("postgres://db/app?sslmode=verify").unwrap_err();
        assert!(
            e.to_string().contains("sslmode=verify is not one of"),
            "{e}"
        );
        let e =
            tokio_postgres("postgres://db/app?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
                .err()
                .unwrap();
        assert!(
            format!("{e:#}").contains("sslrootcert /nonexistent/ca.pem: cannot read it"),
            "{e:#}"
        );
    }

    #[test]
    fn every_mode_gives_tokio_postgres_a_config_it_parses() {
        for mode in [
            "disable",
            "allow",
            "prefer",
            "require",
            "verify-ca",
            "verify-full",
        ] {
            let (config, _) = tokio_postgres(&format!("postgres://db/app?sslmode={mode}")).unwrap();
            let expected = match mode {
                "disable" | "allow" => tokio_postgres::config::SslMode::Disable,
                "prefer" => tokio_postgres::config::SslMode::Prefer,
                _ => tokio_postgres::config::SslMode::Require,
            };
            assert_eq!(config.get_ssl_mode(), expected, "{mode}");
        }
    }
}
