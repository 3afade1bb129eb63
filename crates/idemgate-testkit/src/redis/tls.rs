//! Redis over TLS for tests: a throwaway certificate authority and a `redis-server` that speaks
//! only TLS.
//!
//! [`TestCerts::generate`] makes a CA and a server certificate for `127.0.0.1` and `localhost`
//! (with `rcgen`), written as PEM files in a temporary directory. [`TlsRedisServer::start`] runs
//! Debian's `redis-server` (built with TLS) with `--port 0 --tls-port P`, that certificate and
//! `--tls-auth-clients no`, so a client needs only to trust the CA.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Child;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tempfile::TempDir;

use super::{spawn_redis_with, START_WITHIN};

/// A CA and a server certificate signed by it, as PEM files in a private directory.
#[derive(Debug)]
pub struct TestCerts {
    dir: TempDir,
}

impl TestCerts {
    /// Generates the CA (`ca.pem`) and a server certificate (`server.pem`, key `server.key`)
    /// valid for `127.0.0.1` and `localhost`. Panics (test support) when generation fails.
    pub fn generate() -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory for certificates");
        let ca_key = KeyPair::generate().expect("a CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "idemgate test CA");
        ca_params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("a self-signed CA");

        let server_key = KeyPair::generate().expect("a server key");
        let mut params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()])
            .expect("server certificate parameters");
        params
            .distinguished_name
            .push(DnType::CommonName, "idemgate test redis");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let server = params.signed_by(&server_key, &ca).expect("a server certificate");

        let write = |name: &str, pem: String| {
            std::fs::write(dir.path().join(name), pem).expect("writing a PEM file");
        };
        write("ca.pem", ca.pem());
        write("server.pem", server.pem());
        write("server.key", server_key.serialize_pem());
        Self { dir }
    }

    /// The CA certificate (PEM) a client must trust.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The server certificate (PEM).
    pub fn cert_path(&self) -> PathBuf {
        self.dir.path().join("server.pem")
    }

    /// The server's private key (PEM).
    pub fn key_path(&self) -> PathBuf {
        self.dir.path().join("server.key")
    }

    /// The `redis-server` arguments that serve TLS with these files (clients need no
    /// certificate of their own).
    pub fn server_args(&self) -> Vec<String> {
        let path = |p: PathBuf| p.display().to_string();
        vec![
            "--tls-cert-file".into(),
            path(self.cert_path()),
            "--tls-key-file".into(),
            path(self.key_path()),
            "--tls-ca-cert-file".into(),
            path(self.ca_path()),
            "--tls-auth-clients".into(),
            "no".into(),
        ]
    }
}

/// A private `redis-server` that accepts only TLS connections (see the module docs).
#[derive(Debug)]
pub struct TlsRedisServer {
    port: u16,
    certs: TestCerts,
    _dir: TempDir,
    child: Option<Child>,
}

impl TlsRedisServer {
    /// Starts a TLS-only server on a free port with a fresh CA. Panics (test support) when
    /// `redis-server` is missing, lacks TLS, or does not accept connections within 10 s.
    pub fn start() -> Self {
        let certs = TestCerts::generate();
        let dir = tempfile::tempdir().expect("a temporary directory for redis-server");
        for _ in 0..3 {
            let port = crate::free_port();
            let mut args = vec![
                "--port".to_owned(),
                "0".to_owned(),
                "--tls-port".to_owned(),
                port.to_string(),
            ];
            args.extend(certs.server_args());
            let mut child = spawn_redis_with(dir.path(), &args);
            let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
            if crate::wait_for_port(addr, START_WITHIN) && matches!(child.try_wait(), Ok(None)) {
                return Self {
                    port,
                    certs,
                    _dir: dir,
                    child: Some(child),
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        panic!("redis-server did not start with TLS (is it built with TLS support?)");
    }

    /// The TLS port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA certificate that signed the server's certificate.
    pub fn ca_path(&self) -> PathBuf {
        self.certs.ca_path()
    }

    /// The certificates in use.
    pub fn certs(&self) -> &TestCerts {
        &self.certs
    }

    /// `rediss://127.0.0.1:PORT` (no CA given: a client trusting only the system roots must
    /// refuse it).
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.port)
    }
}

impl Drop for TlsRedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
