//! The test keys (tests/keys/, public: for tests only) and the issuer and audience the
//! suites' tokens carry.

pub const RSA: &str = include_str!("../../keys/rsa2048.pem");
/// A second RSA key, for rotation.
pub const RSA_B: &str = include_str!("../../keys/rsa2048-b.pem");
pub const EC256: &str = include_str!("../../keys/ec256.pem");
pub const EC384: &str = include_str!("../../keys/ec384.pem");
pub const ED: &str = include_str!("../../keys/ed25519.pem");
/// The public JWK of `rsa1024.pem`: a key too small to be used.
pub const RSA_SMALL_JWK: &str = include_str!("../../keys/rsa1024.jwk.json");
/// Where [`EC256`] is, for the command line's `--key`.
pub const EC256_PATH: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/keys/ec256.pem");

pub const ISS: &str = "https://id.example.com/";
pub const AUD: &str = "orders-api";
