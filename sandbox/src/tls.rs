//! TLS for the sandbox listener (rustls with a given certificate chain and key).

use std::sync::Arc;

use crate::server::TlsFiles;

/// Builds an acceptor from PEM files; the error says which file and what was wrong.
pub fn acceptor(files: &TlsFiles) -> Result<tokio_rustls::TlsAcceptor, String> {
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(server_config(
        files,
    )?)))
}

/// A rustls server configuration (ring provider) from a PEM certificate chain and key;
/// also serves Ferry's own HTTPS API listener.
pub fn server_config(files: &TlsFiles) -> Result<rustls::ServerConfig, String> {
    let cert_pem = std::fs::read(&files.cert_file)
        .map_err(|e| format!("cannot read {}: {e}", files.cert_file.display()))?;
    let key_pem = std::fs::read(&files.key_file)
        .map_err(|e| format!("cannot read {}: {e}", files.key_file.display()))?;
    let certs: Vec<_> = rustls_pemfile::certs(&mut &cert_pem[..])
        .collect::<Result<_, _>>()
        .map_err(|e| {
            format!(
                "{}: invalid PEM certificate: {e}",
                files.cert_file.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "{}: no certificate found",
            files.cert_file.display()
        ));
    }
    let key = rustls_pemfile::private_key(&mut &key_pem[..])
        .map_err(|e| format!("{}: invalid PEM key: {e}", files.key_file.display()))?
        .ok_or_else(|| format!("{}: no private key found", files.key_file.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not match: {e}"))?;
    Ok(config)
}
