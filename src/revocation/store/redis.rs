//! Redis Streams as the revocation store.
//!
//! - append: `XADD <key> MINID ~ <now − retention>-0 * e <event JSON>`, so
//!   the stream holds about the retention window and no more;
//! - replay: `XRANGE <key> <now − retention>-0 + COUNT n`, page by page;
//! - subscription: `XREAD [BLOCK ms] COUNT n STREAMS <key> <last id>`.
//!
//! Two connections (each a [`ConnectionManager`], which reconnects by
//! itself): a blocking `XREAD` holds its connection until it answers, so
//! appends have their own. Every command has a deadline
//! ([`COMMAND_TIMEOUT`], or the block time plus it), so an outage makes
//! calls fail fast instead of hanging a webhook.
//!
//! `redis://` and `rediss://` (TLS through rustls on the aws-lc-rs
//! provider, the process' only crypto stack, and the OS trust store). The
//! password comes from the URL, or is given apart (env or file) and set on
//! the connection; it is never logged ([`RedisStore::describe`] shows the
//! host and port only).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::{StreamRangeReply, StreamReadOptions, StreamReadReply};
use redis::{AsyncCommands, Client, IntoConnectionInfo};

use super::{BoxFuture, Position, Store, StoreError, StoreId, Stored, id_millis};
use crate::revocation::RevocationEvent;

/// The stream's default key.
pub const STREAM_KEY: &str = "clerk-introspect:revocations";
/// The one field of an entry: the event as JSON.
pub const FIELD: &str = "e";
/// Longest event JSON read from the stream (an event is about 150 bytes).
pub const MAX_ENTRY_BYTES: usize = 4096;
/// Deadline of one command (besides a blocking read's block time).
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(1);
/// Deadline of one connection attempt.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// First delay between reconnection attempts of a connection manager.
pub const RECONNECT_MIN_DELAY: Duration = Duration::from_millis(50);
/// Longest delay between reconnection attempts of a connection manager.
pub const RECONNECT_MAX_DELAY: Duration = Duration::from_secs(2);
/// Longest `XREAD BLOCK` a read may ask for.
pub const MAX_BLOCK: Duration = Duration::from_secs(5);

/// Why a store URL cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UrlError {
    /// Not `redis://` or `rediss://`.
    #[error("the revocation store must be a redis:// or rediss:// URL (got a {0}:// URL)")]
    Scheme(String),
    /// Not a URL the Redis client reads (the text is the client's, without the URL).
    #[error("the revocation store URL cannot be read: {0}")]
    Invalid(String),
}

/// A Redis Stream store.
pub struct RedisStore {
    key: String,
    address: String,
    retention_ms: u64,
    writer: ConnectionManager,
    reader: ConnectionManager,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore").field("address", &self.address).field("key", &self.key).finish_non_exhaustive()
    }
}

/// Checks that `url` is a `redis://` or `rediss://` URL the client reads;
/// returns its `host:port` (for logs).
pub fn check_url(url: &str) -> Result<String, UrlError> {
    let scheme = url.split_once("://").map_or("", |(s, _)| s);
    if !matches!(scheme, "redis" | "rediss") {
        let shown: String = scheme.chars().filter(char::is_ascii_alphanumeric).take(16).collect();
        return Err(UrlError::Scheme(shown));
    }
    let info = url.into_connection_info().map_err(|e| UrlError::Invalid(e.kind_text()))?;
    Ok(info.addr().to_string())
}

/// The error kind's words, never the URL.
trait KindText {
    fn kind_text(&self) -> String;
}

impl KindText for redis::RedisError {
    fn kind_text(&self) -> String {
        format!("{:?}", self.kind())
    }
}

fn unavailable(what: &str, e: &redis::RedisError) -> StoreError {
    // The Display of a RedisError names the error and the server's text; it
    // does not hold the URL or the password.
    StoreError::Unavailable(format!("{what}: {e}"))
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

impl RedisStore {
    /// A store on the stream `key` at `url`, with `password` when the URL
    /// has none, keeping about `retention` of events. Connects lazily (on
    /// the first command), so that a replica starts while Redis is down.
    /// Must run inside a Tokio runtime.
    pub fn new(url: &str, password: Option<&str>, key: &str, retention: Duration) -> Result<RedisStore, UrlError> {
        let address = check_url(url)?;
        let mut info = url.into_connection_info().map_err(|e| UrlError::Invalid(e.kind_text()))?;
        if let Some(password) = password
            && info.redis_settings().password().is_none()
        {
            let settings = info.redis_settings().clone().set_password(password);
            info = info.set_redis_settings(settings);
        }
        let client = Client::open(info).map_err(|e| UrlError::Invalid(e.kind_text()))?;
        let config = |response: Duration| {
            ConnectionManagerConfig::new()
                .set_connection_timeout(Some(CONNECT_TIMEOUT))
                .set_response_timeout(Some(response))
                .set_min_delay(RECONNECT_MIN_DELAY)
                .set_max_delay(RECONNECT_MAX_DELAY)
                .set_number_of_retries(1)
        };
        let writer = ConnectionManager::new_lazy_with_config(client.clone(), config(COMMAND_TIMEOUT))
            .map_err(|e| UrlError::Invalid(e.kind_text()))?;
        let reader = ConnectionManager::new_lazy_with_config(client, config(MAX_BLOCK + COMMAND_TIMEOUT))
            .map_err(|e| UrlError::Invalid(e.kind_text()))?;
        Ok(RedisStore {
            key: key.to_owned(),
            address,
            retention_ms: u64::try_from(retention.as_millis()).unwrap_or(u64::MAX),
            writer,
            reader,
        })
    }

    /// The stream's key.
    pub fn key(&self) -> &str {
        &self.key
    }

    fn entry(&self, id: redis::streams::StreamId) -> Stored {
        let appended_ms = id_millis(&id.id);
        let event = match id.map.get(FIELD) {
            Some(redis::Value::BulkString(bytes)) if bytes.len() <= MAX_ENTRY_BYTES => {
                serde_json::from_slice::<RevocationEvent>(bytes).map_err(|e| format!("not an event: {e}"))
            }
            Some(redis::Value::BulkString(bytes)) => Err(format!("{} bytes, more than {MAX_ENTRY_BYTES}", bytes.len())),
            _ => Err(format!("no {FIELD:?} field")),
        };
        Stored { id: StoreId(id.id), appended_ms, event }
    }
}

impl Store for RedisStore {
    fn describe(&self) -> String {
        format!("redis {} (stream {})", self.address, self.key)
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn append<'a>(&'a self, event: &'a RevocationEvent) -> BoxFuture<'a, Result<StoreId, StoreError>> {
        Box::pin(async move {
            let json = serde_json::to_string(event).map_err(|e| StoreError::Unavailable(e.to_string()))?;
            let min_id = format!("{}-0", now_ms().saturating_sub(self.retention_ms));
            let mut cmd = redis::cmd("XADD");
            cmd.arg(&self.key).arg("MINID").arg("~").arg(min_id).arg("*").arg(FIELD).arg(json);
            let mut conn = self.writer.clone();
            let id: String = tokio::time::timeout(COMMAND_TIMEOUT, cmd.query_async(&mut conn))
                .await
                .map_err(|_| StoreError::Unavailable("XADD timed out".into()))?
                .map_err(|e| unavailable("XADD", &e))?;
            Ok(StoreId(id))
        })
    }

    fn read<'a>(
        &'a self,
        from: &'a Position,
        max: usize,
        block: Option<Duration>,
    ) -> BoxFuture<'a, Result<Vec<Stored>, StoreError>> {
        Box::pin(async move {
            let mut conn = self.reader.clone();
            match from {
                Position::Since(ms) => {
                    let reply: StreamRangeReply = tokio::time::timeout(
                        COMMAND_TIMEOUT,
                        conn.xrange_count(&self.key, format!("{ms}-0"), "+", max),
                    )
                    .await
                    .map_err(|_| StoreError::Unavailable("XRANGE timed out".into()))?
                    .map_err(|e| unavailable("XRANGE", &e))?;
                    Ok(reply.ids.into_iter().map(|id| self.entry(id)).collect())
                }
                Position::After(last) => {
                    let mut options = StreamReadOptions::default().count(max);
                    let mut deadline = COMMAND_TIMEOUT;
                    if let Some(wait) = block {
                        let wait = wait.min(MAX_BLOCK);
                        options = options.block(usize::try_from(wait.as_millis()).unwrap_or(usize::MAX).max(1));
                        deadline += wait;
                    }
                    let keys = [self.key.as_str()];
                    let ids = [last.0.as_str()];
                    let reply: Option<StreamReadReply> =
                        tokio::time::timeout(deadline, conn.xread_options(&keys, &ids, &options))
                            .await
                            .map_err(|_| StoreError::Unavailable("XREAD timed out".into()))?
                            .map_err(|e| unavailable("XREAD", &e))?;
                    let entries = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids);
                    Ok(entries.map(|id| self.entry(id)).collect())
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_without_echoing_them() {
        assert_eq!(check_url("redis://127.0.0.1:6379").unwrap(), "127.0.0.1:6379");
        assert_eq!(check_url("redis://:secret@redis.example:6380/2").unwrap(), "redis.example:6380");
        assert_eq!(check_url("rediss://redis.example").unwrap(), "redis.example:6379");
        let e = check_url("http://user:secret@host").unwrap_err().to_string();
        assert!(e.contains("redis:// or rediss://") && !e.contains("secret"), "{e}");
        let e = check_url("redis://:secret@").unwrap_err().to_string();
        assert!(!e.contains("secret"), "{e}");
    }
}
