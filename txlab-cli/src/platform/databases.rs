//! The services' databases on a PostgreSQL server, whichever platform
//! runs it: one per role, named and reached the same way everywhere.

use anyhow::Context;
use sqlx::{Connection, PgConnection};
use txlab_api::Role;

/// The database each service owns, on a server reached by `admin_url`.
pub fn database_name(role: Role) -> String {
    format!("txlab_{role}")
}

/// `admin_url` with its database replaced by `db`, query string kept.
pub fn database_url(admin_url: &str, db: &str) -> String {
    let (base, query) = match admin_url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (admin_url, None),
    };
    let authority_end = base.find("://").map(|i| i + 3).unwrap_or(0);
    let root = match base[authority_end..].find('/') {
        Some(i) => &base[..authority_end + i],
        None => base,
    };
    match query {
        Some(q) => format!("{root}/{db}?{q}"),
        None => format!("{root}/{db}"),
    }
}

/// Creates each service's database unless it exists.
pub async fn create_databases(admin_url: &str) -> anyhow::Result<()> {
    let mut conn = PgConnection::connect(admin_url)
        .await
        .with_context(|| format!("connecting to PostgreSQL at {}", redact(admin_url)))?;
    for role in Role::ALL {
        let name = database_name(role);
        let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM pg_database WHERE datname = $1")
            .bind(&name)
            .fetch_optional(&mut conn)
            .await?;
        if exists.is_none() {
            // Names come from our own fixed set, never from input.
            sqlx::query(&format!("CREATE DATABASE \"{name}\""))
                .execute(&mut conn)
                .await
                .with_context(|| format!("creating database {name}"))?;
        }
    }
    Ok(())
}

/// A URL with its password hidden, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_swap_only_the_database() {
        assert_eq!(
            database_url("postgres://u@h:5/postgres", "txlab_order"),
            "postgres://u@h:5/txlab_order"
        );
        assert_eq!(database_url("postgres://u@h:5", "d"), "postgres://u@h:5/d");
        assert_eq!(
            database_url("postgres://u:p@h/x?sslmode=disable", "d"),
            "postgres://u:p@h/d?sslmode=disable"
        );
    }

    #[test]
    fn passwords_are_hidden_in_messages() {
        assert_eq!(redact("postgres://u:secret@h/x"), "postgres://u:***@h/x");
        assert_eq!(redact("postgres://u@h/x"), "postgres://u@h/x");
    }
}
