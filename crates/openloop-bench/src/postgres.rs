//! `--postgres-url`: Openloop's warm p50 and throughput a second time, on a server whose
//! database is a fresh one made in that PostgreSQL, against the SQLite figures of the same run.

use anyhow::{Context, Result};
use serde_json::{json, Value};
use sqlx::Connection;

/// A database made for this run; dropped (with any connection left to it) when this drops.
pub struct Database {
    admin: String,
    name: String,
    pub url: String,
}

impl Database {
    pub async fn create(admin: &str) -> Result<Database> {
        let mut conn = sqlx::PgConnection::connect(admin)
            .await
            .with_context(|| "connecting to --postgres-url")?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        let name = format!("openloop_bench_{}_{nanos:x}", std::process::id());
        // The name is ours (digits and letters): no value is formatted into SQL.
        sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
            .context("creating the benchmark's database")?;
        conn.close().await?;
        Ok(Database {
            admin: admin.to_string(),
            url: with_database(admin, &name),
            name,
        })
    }
}

impl Drop for Database {
    fn drop(&mut self) {
        let admin = self.admin.clone();
        let name = self.name.clone();
        // Drop runs inside the benchmark's runtime, which cannot be blocked on: a thread of
        // its own with a runtime of its own.
        let dropped = std::thread::spawn(move || -> Result<()> {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?
                .block_on(async {
                    let mut conn = sqlx::PgConnection::connect(&admin).await?;
                    sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut conn)
                        .await?;
                    anyhow::Ok(())
                })
        })
        .join();
        if !matches!(dropped, Ok(Ok(()))) {
            eprintln!(
                "warning: the benchmark's database {} was not dropped",
                self.name
            );
        }
    }
}

/// `url` with its database name replaced by `name` (query parameters kept).
fn with_database(url: &str, name: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[authority_start..].find('/') {
        Some(i) => &base[..authority_start + i],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{name}?{q}"),
        None => format!("{base}/{name}"),
    }
}

/// Print PostgreSQL's cost over SQLite (p50: PostgreSQL / SQLite; throughput: SQLite /
/// PostgreSQL, so both are "times slower", target at most 1.3) and add it to the JSON line.
pub fn report(
    sqlite: (f64, f64),
    postgres: (f64, f64),
    clients: usize,
    figures: &mut serde_json::Map<String, Value>,
) {
    const TARGET: f64 = 1.3;
    let p50 = postgres.0 / sqlite.0;
    let tput = sqlite.1 / postgres.1;
    println!();
    println!(
        "{:<28} {:>12} {:>12} {:>16}",
        "same run", "SQLite", "PostgreSQL", "PG cost (<= 1.3)"
    );
    for (label, s, p, cost, unit) in [
        (
            "warm p50, 1 client".to_string(),
            sqlite.0,
            postgres.0,
            p50,
            "ms",
        ),
        (
            format!("throughput, {clients} clients"),
            sqlite.1,
            postgres.1,
            tput,
            "/s",
        ),
    ] {
        let met = if cost <= TARGET { "met" } else { "not met" };
        println!(
            "{label:<28} {:>12} {:>12} {cost:>16.2} {met:>12}",
            format!("{s:.2} {unit}"),
            format!("{p:.2} {unit}")
        );
    }
    let r = |v: f64| (v * 1000.0).round() / 1000.0;
    figures.insert("ratio_p50_postgres_over_sqlite".into(), json!(r(p50)));
    figures.insert(
        "ratio_throughput_sqlite_over_postgres".into(),
        json!(r(tput)),
    );
    figures.insert("target_postgres_p50_met".into(), json!(p50 <= TARGET));
    figures.insert(
        "target_postgres_throughput_met".into(),
        json!(tput <= TARGET),
    );
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn database_name_is_replaced() {
        assert_eq!(
            with_database("postgres://u:p@h:5432/postgres", "x"),
            "postgres://u:p@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h:5432", "x"),
            "postgres://u:p@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://h/db?sslmode=disable", "x"),
            "postgres://h/x?sslmode=disable"
        );
    }
}
