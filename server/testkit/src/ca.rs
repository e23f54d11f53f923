//! A certificate authority made for one test (rcgen): federation tests run every `hushd` over
//! HTTPS with a certificate for its loopback IP signed by this CA, and trust only this CA.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};

/// How long a request of [`TestCa::client`] may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(30);

/// The test certificate authority; its files live in a temporary directory removed on drop.
pub struct TestCa {
    _dir: tempfile::TempDir,
    cert: rcgen::Certificate,
    key: KeyPair,
    /// PEM file of the CA certificate (what servers list in `[federation] ca_files`).
    pub pem_path: PathBuf,
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}

impl TestCa {
    /// A new CA named "Hush test CA".
    pub fn new() -> TestCa {
        let dir = tempfile::tempdir().expect("temporary directory for the test CA");
        let key = KeyPair::generate().expect("CA key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA parameters");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "Hush test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params
            .self_signed(&key)
            .expect("self-signed CA certificate");
        let pem_path = dir.path().join("ca.pem");
        std::fs::write(&pem_path, cert.pem()).expect("write the CA certificate");
        TestCa {
            _dir: dir,
            cert,
            key,
            pem_path,
        }
    }

    /// Issues a server certificate for `ip` (or a DNS name) and writes it and its key as
    /// `tls.crt` and `tls.key` into `out`; returns `(cert path, key path)`.
    pub fn issue(&self, ip: &str, out: &Path) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(vec![ip.to_owned()]).expect("server parameters");
        params.distinguished_name.push(DnType::CommonName, ip);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("server certificate");
        let cert_path = out.join("tls.crt");
        let key_path = out.join("tls.key");
        std::fs::write(&cert_path, cert.pem()).expect("write the server certificate");
        std::fs::write(&key_path, key.serialize_pem()).expect("write the server key");
        (cert_path, key_path)
    }

    /// An HTTPS client that trusts only this CA.
    pub fn client(&self) -> reqwest::Client {
        let pem = std::fs::read(&self.pem_path).expect("read the CA certificate");
        reqwest::Client::builder()
            .use_rustls_tls()
            .tls_built_in_root_certs(false)
            .add_root_certificate(reqwest::Certificate::from_pem(&pem).expect("CA PEM"))
            .timeout(CLIENT_TIMEOUT)
            .build()
            .expect("HTTPS client")
    }
}
