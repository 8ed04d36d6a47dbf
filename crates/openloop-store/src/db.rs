//! Connecting to the database and running migrations.

use crate::Result;
use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::AnyPool;
use std::str::FromStr;

/// A pooled connection idle longer than this is pinged before it is used again.
const PING_IF_IDLE_FOR: std::time::Duration = std::time::Duration::from_secs(1);

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// The handle every other module takes.
#[derive(Clone, Debug)]
pub struct Store {
    pub(crate) pool: AnyPool,
    sqlite: bool,
}

impl Store {
    /// Connect to `url` (`sqlite://…` or `postgres://…`) and bring the schema up to date.
    pub async fn connect(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let opts = AnyConnectOptions::from_str(url)?;
        let pool = AnyPoolOptions::new()
            .max_connections(if sqlite { 8 } else { 16 })
            // sqlx pings every connection it hands out by default: one more round trip per
            // statement (to SQLite's worker thread, or over the network to PostgreSQL). A
            // connection used within the last second is known to be alive; only one idle
            // longer is pinged (and replaced if the ping fails), as HikariCP does. SQLite's
            // are never pinged: a local file has no other end to lose.
            .test_before_acquire(false)
            .before_acquire(move |conn, meta| {
                Box::pin(async move {
                    if !sqlite && meta.idle_for > PING_IF_IDLE_FOR {
                        use sqlx::Connection;
                        conn.ping().await?;
                    }
                    Ok(true)
                })
            })
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    if sqlite {
                        use sqlx::Executor;
                        conn.execute("PRAGMA journal_mode = WAL").await?;
                        conn.execute("PRAGMA busy_timeout = 10000").await?;
                        conn.execute("PRAGMA synchronous = NORMAL").await?;
                        conn.execute("PRAGMA foreign_keys = ON").await?;
                    }
                    Ok(())
                })
            })
            .connect_with(opts)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Store { pool, sqlite })
    }

    /// The SQLite URL for a file inside a data directory.
    pub fn sqlite_url(path: &std::path::Path) -> String {
        format!("sqlite://{}?mode=rwc", path.display())
    }

    pub fn is_sqlite(&self) -> bool {
        self.sqlite
    }

    /// A cheap round trip, for health checks.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }
}
