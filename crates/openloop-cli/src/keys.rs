//! `openloop keys create|list|revoke`, on the database directly.

use crate::serve::StoreArgs;
use clap::{Args, Subcommand};

#[derive(Args)]
pub struct KeysArgs {
    #[command(flatten)]
    store: StoreArgs,
    #[command(subcommand)]
    command: KeysCommand,
}

#[derive(Subcommand)]
enum KeysCommand {
    /// Create a key and print its secret (shown only this once).
    Create {
        #[arg(long, default_value = "api")]
        name: String,
    },
    /// List keys (never their secrets).
    List,
    /// Revoke a key by id or name.
    Revoke { id: String },
}

pub async fn run(args: KeysArgs) -> anyhow::Result<()> {
    if args.store.database_url.is_none() {
        anyhow::ensure!(
            args.store.data_dir.join("openloop.db").exists(),
            "no database in {}; start the server once with `openloop serve --data-dir {}` or pass --data-dir",
            args.store.data_dir.display(),
            args.store.data_dir.display()
        );
    }
    let store = openloop_store::Store::connect(&args.store.url()).await?;
    match args.command {
        KeysCommand::Create { name } => {
            let (key, secret) = store.create_key(&name).await?;
            eprintln!("created key {} ({})", key.id, key.name);
            println!("{secret}");
        }
        KeysCommand::List => {
            println!("{:<40} {:<16} {:<14} STATUS", "ID", "NAME", "PREFIX");
            for k in store.list_keys().await? {
                let status = if k.revoked_at_ms.is_some() {
                    "revoked"
                } else {
                    "active"
                };
                println!("{:<40} {:<16} {:<14} {status}", k.id, k.name, k.prefix);
            }
        }
        KeysCommand::Revoke { id } => {
            store.revoke_key(&id).await?;
            println!("revoked {id}");
        }
    }
    Ok(())
}
