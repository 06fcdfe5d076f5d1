//! `rxsentry operators`: who may use the collector, managed by an admin
//! over the API (the collector rewrites its operators file and audits the
//! change), so no shell on the collector host is needed.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use proto::control::v1::{AddOperatorRequest, ListOperatorsRequest, RemoveOperatorRequest};

use crate::admin::api;
use crate::client::{self, Access};

#[derive(Debug, Args)]
pub struct OperatorsArgs {
    #[command(subcommand)]
    command: OperatorsCommand,
}

#[derive(Debug, Subcommand)]
enum OperatorsCommand {
    /// The operators in force and their roles.
    List(#[command(flatten)] Access),
    /// Add an operator; its new token is written to `--token-out` (0600),
    /// never printed: hand that file to the operator.
    Add {
        name: String,
        /// viewer (tail, hosts, queries), responder (also isolate and
        /// release) or admin (also operators and trust).
        #[arg(long)]
        role: String,
        #[arg(long)]
        token_out: PathBuf,
        #[command(flatten)]
        access: Access,
    },
    /// Remove an operator: its token stops working at once (the last
    /// admin cannot be removed).
    Remove {
        name: String,
        #[command(flatten)]
        access: Access,
    },
}

pub async fn run(args: OperatorsArgs) -> anyhow::Result<()> {
    match args.command {
        OperatorsCommand::List(access) => {
            let request = access.request(ListOperatorsRequest {})?;
            let (url, mut api) = api(&access).await?;
            let list = api
                .list_operators(request)
                .await
                .map_err(|s| refused(&url, "list operators", &s))?
                .into_inner();
            println!("{:<24} ROLE", "NAME");
            for o in list.operators {
                println!("{:<24} {}", clean(&o.name), o.role);
            }
        }
        OperatorsCommand::Add {
            name,
            role,
            token_out,
            access,
        } => {
            // Refuse before asking: a token the collector made but the CLI
            // could not keep would be lost (and its operator useless).
            if token_out.exists() {
                anyhow::bail!("{} exists: choose a new file", token_out.display());
            }
            let request = access.request(AddOperatorRequest {
                name: name.clone(),
                role,
            })?;
            let (url, mut api) = api(&access).await?;
            let done = api
                .add_operator(request)
                .await
                .map_err(|s| refused(&url, "add the operator", &s))?
                .into_inner();
            pki::files::write_secret(&token_out, format!("{}\n", done.token).as_bytes())?;
            let role = done.added.map(|a| a.role).unwrap_or_default();
            println!(
                "operator {} ({role}) added by {}; token in {} (0600)",
                clean(&name),
                done.operator,
                token_out.display()
            );
        }
        OperatorsCommand::Remove { name, access } => {
            let request = access.request(RemoveOperatorRequest { name: name.clone() })?;
            let (url, mut api) = api(&access).await?;
            let done = api
                .remove_operator(request)
                .await
                .map_err(|s| refused(&url, "remove the operator", &s))?
                .into_inner();
            let role = done.removed.map(|r| r.role).unwrap_or_default();
            println!(
                "operator {} ({role}) removed by {}",
                clean(&name),
                done.operator
            );
        }
    }
    Ok(())
}

fn refused(url: &str, what: &str, status: &tonic::Status) -> anyhow::Error {
    anyhow::anyhow!(
        "{url} refused to {what}: {}",
        client::describe_status(status)
    )
}

/// Names come from the collector's file: no control characters reach the
/// terminal.
fn clean(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).collect()
}
