//! The test keys (tests/keys/, public: for tests only) and the issuer and audience the
//! suites' tokens carry.

pub const RSA: &str = include_str!("../../keys/rsa2048.pem");
/// A second RSA key, for rotation.
pub const RSA_B: &str = include_str!("../../keys/rsa2048-b.pem");
pub const EC256: &str = include_str!("../../keys/ec256.pem");
pub const EC384: &str = include_str!("../../keys/ec384.pem");
pub const ED: &str = include_str!("../../keys/ed25519.pem");

pub const ISS: &str = "https://id.example.com/";
pub const AUD: &str = "orders-api";
