//! TLS on the gRPC port (rustls), and optionally mutual TLS: with a client CA, only callers
//! holding a certificate it signed get past the handshake. API keys still decide what each
//! caller may do (`access.rs`); a client CA alone counts as authentication for the rule that
//! refuses an open API beyond loopback.
use secrecy::{ExposeSecret as _, SecretString};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};
use weapp_common::config::{pem_file, secret_file};

#[derive(clap::Args, Clone, Debug)]
pub struct TlsSettings {
    /// PEM certificate (chain) for TLS on the gRPC port; with WEAPP_GRPC_TLS_KEY_FILE.
    #[arg(id = "grpc_tls_cert_file", value_name = "GRPC_TLS_CERT_FILE", long = "grpc-tls-cert-file", env = "WEAPP_GRPC_TLS_CERT_FILE", value_parser = pem_file, requires = "grpc_tls_key_file")]
    pub cert: Option<String>,

    /// Its private key (PEM).
    #[arg(id = "grpc_tls_key_file", value_name = "GRPC_TLS_KEY_FILE", long = "grpc-tls-key-file", env = "WEAPP_GRPC_TLS_KEY_FILE", value_parser = secret_file, requires = "grpc_tls_cert_file")]
    pub key: Option<SecretString>,

    /// PEM CA certificate(s): callers must present a client certificate they signed (mutual
    /// TLS). Needs the server certificate too.
    #[arg(id = "grpc_tls_client_ca_file", value_name = "GRPC_TLS_CLIENT_CA_FILE", long = "grpc-tls-client-ca-file", env = "WEAPP_GRPC_TLS_CLIENT_CA_FILE", value_parser = pem_file, requires = "grpc_tls_cert_file")]
    pub client_ca: Option<String>,
}

impl TlsSettings {
    /// The server's TLS configuration, when TLS is on.
    pub fn server_config(&self) -> Option<ServerTlsConfig> {
        let (cert, key) = (self.cert.as_ref()?, self.key.as_ref()?);
        let config = ServerTlsConfig::new().identity(Identity::from_pem(
            cert.as_bytes(),
            key.expose_secret().as_bytes(),
        ));
        Some(match &self.client_ca {
            Some(ca) => config.client_ca_root(Certificate::from_pem(ca.as_bytes())),
            None => config,
        })
    }

    /// Whether callers are authenticated by their certificates.
    pub fn requires_client_certificates(&self) -> bool {
        self.client_ca.is_some()
    }
}
