//! Errors of the coordinator's state.

/// Errors of the state database.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("the state database {path} is in use by {holders}")]
    Busy { path: String, holders: String },
    #[error("the coordinator's state is locked: {0}")]
    Lock(#[from] super::lock::LockError),
    #[error(
        "the state database {0} is open read-only here; changes go through the running coordinator"
    )]
    ReadOnly(String),
    #[error("no coordinator state at {0}: run `seaport coordinator init` first")]
    Missing(String),
    #[error("state database: {0}")]
    Db(#[from] redb::Error),
    #[error("etcd at {endpoints}: {source}")]
    Etcd {
        endpoints: String,
        source: etcd_client::Error,
    },
    #[error("cannot read {path}: {source}")]
    EtcdFile {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot read or write the site key {path}: {source}; every coordinator of a site needs the same key (ROOT/coordinator/site.key, 0600)")]
    SiteKeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error("{0} is not a site key (64 hex digits)")]
    SiteKeyFormat(String),
    #[error("{0} in the store does not open with this coordinator's site key (another site's key, or changed)")]
    Unsealable(String),
    #[error("the site key {0} is not the key of the site in etcd: copy site.key from a coordinator of this site")]
    WrongSiteKey(String),
    #[error("{path} is not a store record: {source}")]
    BadRecord {
        path: String,
        source: serde_json::Error,
    },
    #[error("this coordinator keeps its state in {0}; moving it to etcd is not supported (initialise a new coordinator root with --store etcd)")]
    HasRedbState(String),
    #[error("this coordinator keeps its state in etcd ({0}); it cannot go back to a redb file")]
    KeptInEtcd(String),
    #[error("--etcd-cert and --etcd-key go together (only {0} was given)")]
    EtcdHalfIdentity(&'static str),
    #[error(
        "{what}: other coordinators changed the same records {attempts} times in a row; try again"
    )]
    Contended { what: &'static str, attempts: u32 },
    #[error("{0}: refused, this coordinator does not lead the site's coordinators now (another one drives operations, or an election is on)")]
    NotLeader(&'static str),
    #[error("corrupt record {key} in table {table}: {source}")]
    Corrupt {
        table: &'static str,
        key: String,
        source: serde_json::Error,
    },
    #[error("join token is not valid")]
    TokenInvalid,
    #[error("join token {0} expired; create a new one with `seaport token create`")]
    TokenExpired(String),
    #[error("join token {0} has no uses left; create a new one with `seaport token create`")]
    TokenUsedUp(String),
    #[error("no node named {0}")]
    NoSuchNode(String),
    #[error("node {0} is enrolled already: enrolling under an existing node id needs a token made for it (`seaport token create --node {0}`)")]
    NodeExists(String),
    #[error("the node this join token was made for, {0}, no longer exists")]
    BoundNodeGone(String),
    #[error("{0:?} is not an IP address")]
    BadIp(String),
    #[error("no admin certificate {0}")]
    NoSuchAdmin(String),
    #[error("{0} names several admin certificates (serials {1}); use the serial")]
    AmbiguousAdmin(String, String),
    #[error("admin certificate serial {0} was not issued by this coordinator (or predates its records); use one from `seaport admin issue`")]
    UnknownAdmin(u64),
    #[error("admin certificate serial {serial} ({name}) was revoked")]
    AdminRevoked { serial: u64, name: String },
    #[error("{0} matches several nodes ({1}); use the node id")]
    AmbiguousNode(String, String),
    #[error("node {0} is revoked; it comes back only with a token made for it (`seaport token create --node {0}`)")]
    NodeRevoked(String),
    #[error("certificate serial {serial} of node {node} was superseded; the node must use its newest certificate or join again")]
    StaleCertificate { node: String, serial: u64 },
    #[error("could not issue certificate: {0}")]
    Issue(String),
}
