//! The server side of SCRAM (RFC 5802) with SHA-1 and SHA-256 (RFC 7677).
//!
//! MongoDB specifics:
//! - SCRAM-SHA-1 feeds PBKDF2 with `hex(md5(user + ":mongo:" + password))`.
//! - SCRAM-SHA-256 feeds PBKDF2 with `SASLprep(password)` (RFC 4013).
//! - Channel binding is not supported (gs2 flag `n` or `y` only).
//! - With `skipEmptyExchange` the conversation is done after the server-final message;
//!   without it the client sends one more empty `saslContinue`.

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine;
use hmac::{Hmac, Mac};
use md5::Md5;
use rand::RngCore;
use sha1::Sha1;
use sha2::{Digest, Sha256};

use super::users::{AuthenticatedUser, UserStore};
use crate::error::{codes, CmdResult, CommandError};

/// Iterations used for newly derived SCRAM-SHA-1 credentials.
pub const SHA1_ITERATIONS: u32 = 10_000;
/// Iterations used for newly derived SCRAM-SHA-256 credentials.
pub const SHA256_ITERATIONS: u32 = 15_000;
/// Salt lengths used for newly derived credentials.
const SHA1_SALT_LEN: usize = 16;
const SHA256_SALT_LEN: usize = 28;
/// Code the server uses for an unknown or disabled mechanism.
pub const MECHANISM_UNAVAILABLE: i32 = 334;
/// Code the server uses for a SASL protocol violation.
pub const PROTOCOL_ERROR: i32 = 17;

/// The message for every authentication failure, whatever its cause.
pub const AUTH_FAILED_MSG: &str = "Authentication failed.";

/// A SCRAM mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Mechanism {
    ScramSha1,
    ScramSha256,
}

impl Mechanism {
    /// All supported mechanisms, in the order the server lists them.
    pub const ALL: [Mechanism; 2] = [Mechanism::ScramSha1, Mechanism::ScramSha256];

    /// Parses a mechanism name (`SCRAM-SHA-1`, `SCRAM-SHA-256`, case-sensitive like the
    /// server).
    pub fn parse(name: &str) -> CmdResult<Mechanism> {
        match name {
            "SCRAM-SHA-1" => Ok(Mechanism::ScramSha1),
            "SCRAM-SHA-256" => Ok(Mechanism::ScramSha256),
            other => Err(CommandError::new(
                MECHANISM_UNAVAILABLE,
                format!("Received authentication for mechanism {other} which is not enabled"),
            )),
        }
    }

    /// The wire name.
    pub fn name(&self) -> &'static str {
        match self {
            Mechanism::ScramSha1 => "SCRAM-SHA-1",
            Mechanism::ScramSha256 => "SCRAM-SHA-256",
        }
    }

    fn default_iterations(&self) -> u32 {
        match self {
            Mechanism::ScramSha1 => SHA1_ITERATIONS,
            Mechanism::ScramSha256 => SHA256_ITERATIONS,
        }
    }

    fn salt_len(&self) -> usize {
        match self {
            Mechanism::ScramSha1 => SHA1_SALT_LEN,
            Mechanism::ScramSha256 => SHA256_SALT_LEN,
        }
    }

    /// The PBKDF2 password input for this mechanism.
    fn password_input(&self, user: &str, password: &str) -> Vec<u8> {
        match self {
            Mechanism::ScramSha1 => mongo_password_digest(user, password).into_bytes(),
            Mechanism::ScramSha256 => match stringprep::saslprep(password) {
                Ok(p) => p.into_owned().into_bytes(),
                // Callers validate with `saslprep_password` first; fall back to raw bytes.
                Err(_) => password.as_bytes().to_vec(),
            },
        }
    }

    pub(crate) fn hash(&self, data: &[u8]) -> Vec<u8> {
        match self {
            Mechanism::ScramSha1 => Sha1::digest(data).to_vec(),
            Mechanism::ScramSha256 => Sha256::digest(data).to_vec(),
        }
    }

    pub(crate) fn hmac(&self, key: &[u8], data: &[u8]) -> Vec<u8> {
        match self {
            Mechanism::ScramSha1 => {
                let mut m = <Hmac<Sha1> as Mac>::new_from_slice(key)
                    .expect("HMAC accepts keys of any length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
            Mechanism::ScramSha256 => {
                let mut m = <Hmac<Sha256> as Mac>::new_from_slice(key)
                    .expect("HMAC accepts keys of any length");
                m.update(data);
                m.finalize().into_bytes().to_vec()
            }
        }
    }

    pub(crate) fn salted_password(&self, input: &[u8], salt: &[u8], iterations: u32) -> Vec<u8> {
        match self {
            Mechanism::ScramSha1 => {
                let mut out = vec![0u8; 20];
                pbkdf2::pbkdf2_hmac::<Sha1>(input, salt, iterations, &mut out);
                out
            }
            Mechanism::ScramSha256 => {
                let mut out = vec![0u8; 32];
                pbkdf2::pbkdf2_hmac::<Sha256>(input, salt, iterations, &mut out);
                out
            }
        }
    }
}

impl std::fmt::Display for Mechanism {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// MongoDB's legacy password digest: `hex(md5(user + ":mongo:" + password))`.
pub fn mongo_password_digest(user: &str, password: &str) -> String {
    let mut h = Md5::new();
    h.update(user.as_bytes());
    h.update(b":mongo:");
    h.update(password.as_bytes());
    hex::encode(h.finalize())
}

/// Validates a password for SCRAM-SHA-256 (SASLprep, RFC 4013).
pub fn saslprep_password(password: &str) -> CmdResult<String> {
    stringprep::saslprep(password)
        .map(|p| p.into_owned())
        .map_err(|e| CommandError::bad_value(format!("Error preparing password: {e}")))
}

/// The stored credentials of one user for one mechanism.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ScramSecrets {
    pub mechanism: Mechanism,
    pub salt: Vec<u8>,
    pub iterations: u32,
    pub stored_key: Vec<u8>,
    pub server_key: Vec<u8>,
}

impl ScramSecrets {
    /// Derives credentials with a fresh random salt and the default iteration count.
    pub fn derive(mech: Mechanism, user: &str, password: &str) -> ScramSecrets {
        let mut salt = vec![0u8; mech.salt_len()];
        rand::thread_rng().fill_bytes(&mut salt);
        Self::derive_with(mech, user, password, &salt, mech.default_iterations())
    }

    /// Derives credentials with a given salt and iteration count.
    pub fn derive_with(
        mech: Mechanism,
        user: &str,
        password: &str,
        salt: &[u8],
        iterations: u32,
    ) -> ScramSecrets {
        let input = mech.password_input(user, password);
        let salted = mech.salted_password(&input, salt, iterations);
        let client_key = mech.hmac(&salted, b"Client Key");
        let stored_key = mech.hash(&client_key);
        let server_key = mech.hmac(&salted, b"Server Key");
        ScramSecrets {
            mechanism: mech,
            salt: salt.to_vec(),
            iterations,
            stored_key,
            server_key,
        }
    }

    /// Fake credentials for an unknown user: the conversation proceeds and fails at the
    /// proof, so replies do not reveal whether the user exists.
    fn fake(mech: Mechanism) -> ScramSecrets {
        let mut salt = vec![0u8; mech.salt_len()];
        rand::thread_rng().fill_bytes(&mut salt);
        let mut key = vec![0u8; mech.hash(b"").len()];
        rand::thread_rng().fill_bytes(&mut key);
        ScramSecrets {
            mechanism: mech,
            salt,
            iterations: mech.default_iterations(),
            stored_key: mech.hash(&key),
            server_key: key,
        }
    }
}

fn auth_failed() -> CommandError {
    CommandError::new(codes::AUTHENTICATION_FAILED, AUTH_FAILED_MSG)
}

fn protocol(msg: impl Into<String>) -> CommandError {
    CommandError::new(PROTOCOL_ERROR, msg)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Server-first sent; waiting for client-final.
    AwaitClientFinal,
    /// Server-final sent; waiting for the client's empty message (no skipEmptyExchange).
    AwaitEmpty,
    Done,
    Failed,
}

/// The server side of one SCRAM conversation.
#[derive(Debug)]
pub struct ScramConversation {
    mechanism: Mechanism,
    db: String,
    username: String,
    secrets: ScramSecrets,
    /// The user as stored, `None` if unknown (the conversation then fails at `step`).
    candidate: Option<AuthenticatedUser>,
    gs2_header: String,
    client_first_bare: String,
    server_first: String,
    nonce: String,
    state: State,
    skip_empty_exchange: bool,
    authenticated: Option<AuthenticatedUser>,
}

impl ScramConversation {
    /// Parses client-first and looks up the user's secrets; returns the conversation and
    /// the server-first payload. An unknown user gets a plausible reply and fails at
    /// [`step`](Self::step) with code 18.
    pub fn start(
        mech: Mechanism,
        db: &str,
        payload: &[u8],
        users: &UserStore,
    ) -> CmdResult<(ScramConversation, Vec<u8>)> {
        let mut snonce = [0u8; 24];
        rand::thread_rng().fill_bytes(&mut snonce);
        let snonce = B64.encode(snonce);
        Self::start_with_nonce(mech, db, payload, users, &snonce)
    }

    /// [`start`](Self::start) with a chosen server nonce (for test vectors).
    pub fn start_with_nonce(
        mech: Mechanism,
        db: &str,
        payload: &[u8],
        users: &UserStore,
        server_nonce: &str,
    ) -> CmdResult<(ScramConversation, Vec<u8>)> {
        let text = std::str::from_utf8(payload)
            .map_err(|_| protocol("SCRAM client-first message is not valid UTF-8"))?;
        let first = parse_client_first(text)?;
        let stored = users.lookup(db, &first.username);
        let (secrets, candidate) = match stored {
            Some(u) => match u.secrets(mech) {
                Some(s) => (s.clone(), Some(u.to_authenticated())),
                None => (ScramSecrets::fake(mech), None),
            },
            None => (ScramSecrets::fake(mech), None),
        };
        let nonce = format!("{}{}", first.client_nonce, server_nonce);
        let server_first = format!(
            "r={},s={},i={}",
            nonce,
            B64.encode(&secrets.salt),
            secrets.iterations
        );
        let conv = ScramConversation {
            mechanism: mech,
            db: db.to_string(),
            username: first.username,
            secrets,
            candidate,
            gs2_header: first.gs2_header,
            client_first_bare: first.bare,
            server_first: server_first.clone(),
            nonce,
            state: State::AwaitClientFinal,
            skip_empty_exchange: true,
            authenticated: None,
        };
        Ok((conv, server_first.into_bytes()))
    }

    /// Whether the conversation ends right after server-final (`skipEmptyExchange`,
    /// default `true`). With `false`, [`is_done`](Self::is_done) stays false until the
    /// client's extra empty `saslContinue`.
    pub fn set_skip_empty_exchange(&mut self, skip: bool) {
        self.skip_empty_exchange = skip;
    }

    /// Verifies client-final; on success returns server-final (`v=...`). A later empty
    /// payload (no `skipEmptyExchange`) gets an empty reply and ends the conversation.
    pub fn step(&mut self, payload: &[u8]) -> CmdResult<Vec<u8>> {
        match self.state {
            State::AwaitClientFinal => match self.verify_client_final(payload) {
                Ok(reply) => {
                    self.authenticated = self.candidate.clone();
                    self.state = if self.skip_empty_exchange {
                        State::Done
                    } else {
                        State::AwaitEmpty
                    };
                    Ok(reply)
                }
                Err(e) => {
                    self.state = State::Failed;
                    Err(e)
                }
            },
            State::AwaitEmpty | State::Done if payload.is_empty() => {
                self.state = State::Done;
                Ok(Vec::new())
            }
            State::AwaitEmpty | State::Done => Err(protocol(
                "SCRAM conversation is complete; expected an empty message",
            )),
            State::Failed => Err(auth_failed()),
        }
    }

    /// True once the exchange is over and the user is authenticated.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// The authenticated user, once client-final has been verified.
    pub fn user(&self) -> Option<&AuthenticatedUser> {
        self.authenticated.as_ref()
    }

    pub fn mechanism(&self) -> Mechanism {
        self.mechanism
    }

    /// The database the conversation authenticates against.
    pub fn db(&self) -> &str {
        &self.db
    }

    /// The user name from client-first (whether or not it exists).
    pub fn username(&self) -> &str {
        &self.username
    }

    fn verify_client_final(&self, payload: &[u8]) -> CmdResult<Vec<u8>> {
        let text = std::str::from_utf8(payload)
            .map_err(|_| protocol("SCRAM client-final message is not valid UTF-8"))?;
        let Some(idx) = text.rfind(",p=") else {
            return Err(protocol("SCRAM client-final message is missing the proof"));
        };
        let without_proof = &text[..idx];
        let proof_b64 = &text[idx + 3..];
        let mut attrs = without_proof.split(',');
        let cbind = attrs
            .next()
            .and_then(|a| a.strip_prefix("c="))
            .ok_or_else(|| protocol("SCRAM client-final message must start with c="))?;
        let nonce = attrs
            .next()
            .and_then(|a| a.strip_prefix("r="))
            .ok_or_else(|| protocol("SCRAM client-final message is missing the nonce"))?;
        let cbind = B64
            .decode(cbind)
            .map_err(|_| protocol("SCRAM channel binding is not valid base64"))?;
        if cbind != self.gs2_header.as_bytes() {
            return Err(CommandError::bad_value(
                "SCRAM channel binding does not match",
            ));
        }
        if nonce != self.nonce {
            return Err(CommandError::bad_value(
                "Incorrect SCRAM client|server nonce",
            ));
        }
        let proof = B64
            .decode(proof_b64)
            .map_err(|_| protocol("SCRAM proof is not valid base64"))?;
        let mech = self.mechanism;
        let auth_message = format!(
            "{},{},{}",
            self.client_first_bare, self.server_first, without_proof
        );
        let client_signature = mech.hmac(&self.secrets.stored_key, auth_message.as_bytes());
        if self.candidate.is_none() || proof.len() != client_signature.len() {
            return Err(auth_failed());
        }
        let client_key: Vec<u8> = proof
            .iter()
            .zip(client_signature.iter())
            .map(|(a, b)| a ^ b)
            .collect();
        if !constant_time_eq(&mech.hash(&client_key), &self.secrets.stored_key) {
            return Err(auth_failed());
        }
        let server_signature = mech.hmac(&self.secrets.server_key, auth_message.as_bytes());
        Ok(format!("v={}", B64.encode(server_signature)).into_bytes())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

struct ClientFirst {
    gs2_header: String,
    username: String,
    client_nonce: String,
    bare: String,
}

/// Decodes a SCRAM `saslname` (`=2C` -> `,`, `=3D` -> `=`).
pub fn decode_saslname(s: &str) -> CmdResult<String> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('=') {
        out.push_str(&rest[..i]);
        let esc = rest.get(i..i + 3);
        match esc {
            Some("=2C") | Some("=2c") => out.push(','),
            Some("=3D") | Some("=3d") => out.push('='),
            _ => return Err(protocol("Invalid escape sequence in SCRAM user name")),
        }
        rest = &rest[i + 3..];
    }
    out.push_str(rest);
    Ok(out)
}

/// Encodes a user name as a SCRAM `saslname`.
pub fn encode_saslname(s: &str) -> String {
    s.replace('=', "=3D").replace(',', "=2C")
}

fn parse_client_first(text: &str) -> CmdResult<ClientFirst> {
    // gs2-header = gs2-cbind-flag "," [ authzid ] ","
    let (flag, rest) = text
        .split_once(',')
        .ok_or_else(|| protocol("Invalid SCRAM client-first message"))?;
    match flag {
        "n" | "y" => {}
        f if f.starts_with("p=") => {
            return Err(CommandError::bad_value(
                "Server does not support channel binding",
            ))
        }
        _ => return Err(protocol("Invalid SCRAM gs2 channel binding flag")),
    }
    let (authzid, bare) = rest
        .split_once(',')
        .ok_or_else(|| protocol("Invalid SCRAM client-first message"))?;
    let authzid = if authzid.is_empty() {
        None
    } else {
        let a = authzid
            .strip_prefix("a=")
            .ok_or_else(|| protocol("Invalid SCRAM authorization identity"))?;
        Some(decode_saslname(a)?)
    };
    let gs2_header = text[..text.len() - bare.len()].to_string();
    let mut attrs = bare.split(',');
    let first = attrs.next().unwrap_or("");
    if first.starts_with("m=") {
        return Err(protocol("SCRAM mandatory extensions are not supported"));
    }
    let username = first
        .strip_prefix("n=")
        .ok_or_else(|| protocol("Invalid SCRAM client-first message: expected n="))?;
    let username = decode_saslname(username)?;
    if username.is_empty() {
        return Err(protocol("SCRAM user name must not be empty"));
    }
    let client_nonce = attrs
        .next()
        .and_then(|a| a.strip_prefix("r="))
        .ok_or_else(|| protocol("Invalid SCRAM client-first message: expected r="))?;
    if client_nonce.is_empty() || !client_nonce.bytes().all(|b| (0x21..=0x7e).contains(&b)) {
        return Err(protocol("Invalid SCRAM client nonce"));
    }
    if let Some(a) = authzid {
        if a != username {
            return Err(CommandError::bad_value(format!(
                "SCRAM user name {username} and authzid {a} are not the same"
            )));
        }
    }
    Ok(ClientFirst {
        gs2_header,
        username,
        client_nonce: client_nonce.to_string(),
        bare: bare.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::users::RoleRef;

    /// A minimal SCRAM client, written from RFC 5802 for the tests.
    struct Client {
        mech: Mechanism,
        user: String,
        password: String,
        cnonce: String,
        first_bare: String,
        server_signature: Vec<u8>,
    }

    impl Client {
        fn new(mech: Mechanism, user: &str, password: &str, cnonce: &str) -> Client {
            let first_bare = format!("n={},r={}", encode_saslname(user), cnonce);
            Client {
                mech,
                user: user.into(),
                password: password.into(),
                cnonce: cnonce.into(),
                first_bare,
                server_signature: Vec::new(),
            }
        }
        fn first(&self) -> Vec<u8> {
            format!("n,,{}", self.first_bare).into_bytes()
        }
        fn final_msg(&mut self, server_first: &[u8]) -> Vec<u8> {
            let sf = std::str::from_utf8(server_first).unwrap();
            let parts: Vec<&str> = sf.split(',').collect();
            let nonce = parts[0].strip_prefix("r=").unwrap();
            assert!(nonce.starts_with(&self.cnonce));
            let salt = B64.decode(parts[1].strip_prefix("s=").unwrap()).unwrap();
            let iters: u32 = parts[2].strip_prefix("i=").unwrap().parse().unwrap();
            let input = match self.mech {
                Mechanism::ScramSha1 => mongo_password_digest(&self.user, &self.password),
                Mechanism::ScramSha256 => {
                    stringprep::saslprep(&self.password).unwrap().into_owned()
                }
            };
            let m = self.mech;
            let salted = m.salted_password(input.as_bytes(), &salt, iters);
            let client_key = m.hmac(&salted, b"Client Key");
            let stored_key = m.hash(&client_key);
            let without_proof = format!("c=biws,r={nonce}");
            let auth_message = format!("{},{},{}", self.first_bare, sf, without_proof);
            let sig = m.hmac(&stored_key, auth_message.as_bytes());
            let proof: Vec<u8> = client_key.iter().zip(&sig).map(|(a, b)| a ^ b).collect();
            let server_key = m.hmac(&salted, b"Server Key");
            self.server_signature = m.hmac(&server_key, auth_message.as_bytes());
            format!("{without_proof},p={}", B64.encode(proof)).into_bytes()
        }
        fn check_server_final(&self, payload: &[u8]) {
            let expected = format!("v={}", B64.encode(&self.server_signature));
            assert_eq!(std::str::from_utf8(payload).unwrap(), expected);
        }
    }

    fn store_with(user: &str, db: &str, pwd: &str) -> UserStore {
        let store = UserStore::default();
        store
            .create_user(
                db,
                user,
                pwd,
                vec![RoleRef {
                    role: "readWrite".into(),
                    db: db.into(),
                }],
                &[],
            )
            .unwrap();
        store
    }

    fn round_trip(mech: Mechanism, user: &str, pwd: &str, try_pwd: &str) -> CmdResult<Vec<u8>> {
        let store = store_with(user, "admin", pwd);
        let mut client = Client::new(mech, user, try_pwd, "fyko+d2lbbFgONRv9qkxdawL");
        let (mut conv, sf) = ScramConversation::start(mech, "admin", &client.first(), &store)?;
        let sf_text = String::from_utf8(sf.clone()).unwrap();
        assert!(sf_text.starts_with("r=fyko+d2lbbFgONRv9qkxdawL"));
        let iters = if mech == Mechanism::ScramSha1 {
            "i=10000"
        } else {
            "i=15000"
        };
        assert!(sf_text.ends_with(iters), "{sf_text}");
        assert!(!conv.is_done());
        let cf = client.final_msg(&sf);
        let res = conv.step(&cf);
        match &res {
            Ok(v) => {
                client.check_server_final(v);
                assert!(conv.is_done());
                let u = conv.user().unwrap();
                assert_eq!(u.user, user);
                assert_eq!(u.db, "admin");
                assert_eq!(u.roles[0].role, "readWrite");
            }
            Err(_) => {
                assert!(conv.user().is_none());
                assert!(!conv.is_done());
            }
        }
        res
    }

    #[test]
    fn sha256_round_trip() {
        round_trip(Mechanism::ScramSha256, "alice", "s3cr\u{00A0}t", "s3cr t").unwrap();
    }

    #[test]
    fn sha1_round_trip() {
        round_trip(Mechanism::ScramSha1, "bob", "pencil", "pencil").unwrap();
    }

    #[test]
    fn escaped_user_name_round_trip() {
        round_trip(Mechanism::ScramSha256, "we,ird=name", "pw", "pw").unwrap();
    }

    #[test]
    fn bad_password_fails_with_18() {
        for mech in Mechanism::ALL {
            let e = round_trip(mech, "carol", "right", "wrong").unwrap_err();
            assert_eq!(e.code, 18);
            assert_eq!(e.errmsg, "Authentication failed.");
        }
    }

    #[test]
    fn unknown_user_fails_with_18() {
        let store = store_with("dave", "admin", "pw");
        for (db, user) in [("admin", "nobody"), ("test", "dave")] {
            let mut client = Client::new(Mechanism::ScramSha256, user, "pw", "abc");
            let (mut conv, sf) =
                ScramConversation::start(Mechanism::ScramSha256, db, &client.first(), &store)
                    .unwrap();
            let e = conv.step(&client.final_msg(&sf)).unwrap_err();
            assert_eq!(e.code, 18);
            assert_eq!(e.errmsg, "Authentication failed.");
            assert!(conv.user().is_none());
            // A failed conversation stays failed.
            assert_eq!(conv.step(b"").unwrap_err().code, 18);
        }
    }

    #[test]
    fn missing_mechanism_credentials_fail() {
        let store = UserStore::default();
        store
            .create_user("admin", "old", "pw", vec![], &[Mechanism::ScramSha1])
            .unwrap();
        let mut client = Client::new(Mechanism::ScramSha256, "old", "pw", "abc");
        let (mut conv, sf) =
            ScramConversation::start(Mechanism::ScramSha256, "admin", &client.first(), &store)
                .unwrap();
        assert_eq!(conv.step(&client.final_msg(&sf)).unwrap_err().code, 18);
    }

    #[test]
    fn empty_exchange_without_skip() {
        let store = store_with("erin", "admin", "pw");
        let mut client = Client::new(Mechanism::ScramSha1, "erin", "pw", "nonce1");
        let (mut conv, sf) =
            ScramConversation::start(Mechanism::ScramSha1, "admin", &client.first(), &store)
                .unwrap();
        conv.set_skip_empty_exchange(false);
        let v = conv.step(&client.final_msg(&sf)).unwrap();
        client.check_server_final(&v);
        assert!(!conv.is_done());
        assert!(conv.user().is_some());
        assert_eq!(conv.step(b"").unwrap(), Vec::<u8>::new());
        assert!(conv.is_done());
    }

    /// RFC 7677 section 3 test vector.
    #[test]
    fn rfc7677_vector() {
        let salt = B64.decode("W22ZaJ0SNY7soEsUEjb6gQ==").unwrap();
        let secrets =
            ScramSecrets::derive_with(Mechanism::ScramSha256, "user", "pencil", &salt, 4096);
        let store = UserStore::default();
        store
            .insert_with_secrets("admin", "user", vec![], vec![secrets])
            .unwrap();
        let (mut conv, sf) = ScramConversation::start_with_nonce(
            Mechanism::ScramSha256,
            "admin",
            b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
            &store,
            "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        )
        .unwrap();
        assert_eq!(
            String::from_utf8(sf).unwrap(),
            "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        );
        let v = conv
            .step(b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=")
            .unwrap();
        assert_eq!(
            String::from_utf8(v).unwrap(),
            "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="
        );
        assert!(conv.is_done());
    }

    #[test]
    fn malformed_messages_are_errors() {
        let store = store_with("frank", "admin", "pw");
        let m = Mechanism::ScramSha256;
        for bad in [
            &b""[..],
            b"n,,",
            b"x,,n=frank,r=abc",
            b"p=tls-unique,,n=frank,r=abc",
            b"n,,m=ext,n=frank,r=abc",
            b"n,,n=fr=ank,r=abc",
            b"n,,n=frank",
            b"n,a=other,n=frank,r=abc",
            b"\xff\xfe",
        ] {
            assert!(
                ScramConversation::start(m, "admin", bad, &store).is_err(),
                "{bad:?}"
            );
        }
        let (mut conv, _) =
            ScramConversation::start(m, "admin", b"n,,n=frank,r=abc", &store).unwrap();
        assert!(conv.step(b"c=biws,r=abcX,p=AAAA").is_err());
        assert!(Mechanism::parse("PLAIN").is_err());
        assert_eq!(
            Mechanism::parse("SCRAM-SHA-1").unwrap().name(),
            "SCRAM-SHA-1"
        );
    }

    #[test]
    fn saslname_codec() {
        assert_eq!(decode_saslname("a=2Cb=3Dc").unwrap(), "a,b=c");
        assert_eq!(encode_saslname("a,b=c"), "a=2Cb=3Dc");
        assert!(decode_saslname("a=4").is_err());
    }
}
