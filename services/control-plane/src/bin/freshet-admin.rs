//! `freshet-admin`: the operator's CLI for users and access keys (and a
//! look at enhanced fan-out consumers' lag). It talks to the control
//! plane's Identities and ControlPlane services over gRPC, presenting the
//! deployment's internal token and the operator's admin token
//! (`FRESHET_ADMIN_TOKEN`); it never touches Postgres.
//!
//! ```sh
//! freshet-admin user create --account 111122223333 --name alice
//! freshet-admin key create --account 111122223333 --user alice
//! freshet-admin key list --account 111122223333 --user alice
//! freshet-admin key update --account 111122223333 --key AKIA... --status inactive
//! freshet-admin key delete --account 111122223333 --key AKIA...
//! freshet-admin policy put --account 111122223333 --user alice --name writers \
//!     --document file://writers.json
//! freshet-admin policy list --account 111122223333 --user alice
//! freshet-admin policy delete --account 111122223333 --user alice --name writers
//! freshet-admin consumers lag orders --account 111122223333 --region us-east-1
//! ```

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use freshet_proto::v1::identities_client::IdentitiesClient;
use freshet_proto::v1::{
    AccessKeyState, ConsumerLagRequest, CreateAccessKeyRequest, CreateUserRequest,
    DeleteAccessKeyRequest, DeleteUserPolicyRequest, ListAccessKeysRequest,
    ListUserPoliciesRequest, PutUserPolicyRequest, UpdateAccessKeyRequest,
};
use freshet_server::{AdminTokenFlag, ControlPlaneAddr, InternalTokenFlag, TracedChannel};

#[derive(Debug, Parser)]
#[command(
    name = "freshet-admin",
    about = "Manage Freshet's users and access keys"
)]
struct Cli {
    #[command(flatten)]
    control_plane: ControlPlaneAddr,
    #[command(flatten)]
    internal: InternalTokenFlag,
    #[command(flatten)]
    admin: AdminTokenFlag,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Users of an account.
    #[command(subcommand)]
    User(UserCommand),
    /// Access keys of a user or of an account's root.
    #[command(subcommand)]
    Key(KeyCommand),
    /// Identity policies attached to a user.
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Enhanced fan-out consumers of a stream.
    #[command(subcommand)]
    Consumers(ConsumersCommand),
}

#[derive(Debug, Subcommand)]
enum ConsumersCommand {
    /// How far behind the tip each consumer of STREAM is, per shard: the
    /// committed records not yet sent to it (against the tip its leader
    /// reports now) and the MillisBehindLatest of its last event.
    Lag {
        /// The stream's name.
        stream: String,
        #[arg(long, default_value = "000000000000")]
        account: String,
        #[arg(long, default_value = "us-east-1")]
        region: String,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Attaches (or replaces) a user's inline policy.
    Put {
        #[arg(long)]
        account: String,
        #[arg(long)]
        user: String,
        #[arg(long)]
        name: String,
        /// The policy's JSON, or `file://PATH` to read it from a file.
        #[arg(long)]
        document: String,
    },
    /// Prints a user's policies, one JSON document per line after its name.
    List {
        #[arg(long)]
        account: String,
        #[arg(long)]
        user: String,
    },
    /// Detaches a user's inline policy.
    Delete {
        #[arg(long)]
        account: String,
        #[arg(long)]
        user: String,
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Creates a user; prints its ARN.
    Create {
        #[arg(long)]
        account: String,
        #[arg(long)]
        name: String,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Status {
    Active,
    Inactive,
}

#[derive(Debug, Subcommand)]
enum KeyCommand {
    /// Issues a key; prints it with its secret as JSON (the only time the
    /// secret is shown).
    Create {
        #[arg(long)]
        account: String,
        /// The user; without it, a key of the account's root.
        #[arg(long)]
        user: Option<String>,
    },
    /// Lists keys (never their secrets), one per line.
    List {
        #[arg(long)]
        account: String,
        #[arg(long)]
        user: Option<String>,
    },
    /// Activates or deactivates a key.
    Update {
        #[arg(long)]
        account: String,
        #[arg(long)]
        key: String,
        #[arg(long, value_enum)]
        status: Status,
    },
    /// Deletes a key.
    Delete {
        #[arg(long)]
        account: String,
        #[arg(long)]
        key: String,
    },
}

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
enum AdminError {
    #[error(transparent)]
    Token(#[from] freshet_server::BadInternalToken),
    #[error(transparent)]
    Address(#[from] freshet_server::BadAddress),
    #[error("{}", .0.message())]
    Refused(#[from] tonic::Status),
    #[error("read {path}: {source}")]
    ReadDocument {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A policy given inline or as `file://PATH`.
fn document(text: String) -> Result<String, AdminError> {
    match text.strip_prefix("file://") {
        Some(path) => std::fs::read_to_string(path).map_err(|source| AdminError::ReadDocument {
            path: path.to_owned(),
            source,
        }),
        None => Ok(text),
    }
}

async fn run(cli: Cli) -> Result<(), AdminError> {
    // Whatever the deployment's mode, the CLI presents a token if given one.
    let token = cli
        .internal
        .token_for(freshet_server::AuthMode::Development)?;
    let channel =
        freshet_server::admin_channel(&cli.control_plane.addr, &token, &cli.admin.token()?)?;
    let mut identities: IdentitiesClient<TracedChannel> = IdentitiesClient::new(channel.clone());
    match cli.command {
        Command::Consumers(ConsumersCommand::Lag {
            stream,
            account,
            region,
        }) => {
            let lags = freshet_server::control_plane_client(channel)
                .consumer_lag(ConsumerLagRequest {
                    account_id: account,
                    region,
                    stream_name: stream,
                })
                .await?
                .into_inner()
                .lags;
            println!("consumer\tshard\tsubscribed\trecords behind\tms behind");
            for lag in lags {
                let (records, millis) = if lag.known {
                    (
                        lag.records_behind.to_string(),
                        lag.millis_behind.to_string(),
                    )
                } else {
                    ("-".to_owned(), "-".to_owned())
                };
                println!(
                    "{}\t{}\t{}\t{records}\t{millis}",
                    lag.consumer_name,
                    lag.shard_id,
                    if lag.subscribed { "yes" } else { "no" },
                );
            }
        }
        Command::User(UserCommand::Create { account, name }) => {
            let created = identities
                .create_user(CreateUserRequest {
                    account_id: account,
                    user_name: name,
                })
                .await?
                .into_inner();
            println!("{}", created.user_arn);
        }
        Command::Key(KeyCommand::Create { account, user }) => {
            let key = identities
                .create_access_key(CreateAccessKeyRequest {
                    account_id: account,
                    user_name: user.unwrap_or_default(),
                })
                .await?
                .into_inner();
            println!(
                "{}",
                serde_json::json!({
                    "AccessKeyId": key.access_key_id,
                    "SecretAccessKey": key.secret_access_key,
                })
            );
        }
        Command::Key(KeyCommand::List { account, user }) => {
            let listed = identities
                .list_access_keys(ListAccessKeysRequest {
                    account_id: account,
                    user_name: user.unwrap_or_default(),
                })
                .await?
                .into_inner();
            for key in listed.keys {
                let status = match key.state() {
                    AccessKeyState::Active => "Active",
                    AccessKeyState::Inactive => "Inactive",
                    AccessKeyState::Unspecified => "Unknown",
                };
                println!("{}\t{status}\t{}", key.access_key_id, key.created_at_ms);
            }
        }
        Command::Key(KeyCommand::Update {
            account,
            key,
            status,
        }) => {
            let state = match status {
                Status::Active => AccessKeyState::Active,
                Status::Inactive => AccessKeyState::Inactive,
            };
            identities
                .update_access_key(UpdateAccessKeyRequest {
                    account_id: account,
                    access_key_id: key,
                    state: state as i32,
                })
                .await?;
        }
        Command::Policy(PolicyCommand::Put {
            account,
            user,
            name,
            document: text,
        }) => {
            identities
                .put_user_policy(PutUserPolicyRequest {
                    account_id: account,
                    user_name: user,
                    policy_name: name,
                    document: document(text)?,
                })
                .await?;
        }
        Command::Policy(PolicyCommand::List { account, user }) => {
            let listed = identities
                .list_user_policies(ListUserPoliciesRequest {
                    account_id: account,
                    user_name: user,
                })
                .await?
                .into_inner();
            for policy in listed.policies {
                let compact = serde_json::from_str::<serde_json::Value>(&policy.document)
                    .map_or(policy.document.clone(), |value| value.to_string());
                println!("{}\t{compact}", policy.policy_name);
            }
        }
        Command::Policy(PolicyCommand::Delete {
            account,
            user,
            name,
        }) => {
            identities
                .delete_user_policy(DeleteUserPolicyRequest {
                    account_id: account,
                    user_name: user,
                    policy_name: name,
                })
                .await?;
        }
        Command::Key(KeyCommand::Delete { account, key }) => {
            identities
                .delete_access_key(DeleteAccessKeyRequest {
                    account_id: account,
                    access_key_id: key,
                })
                .await?;
        }
    }
    Ok(())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("freshet-admin: {error}");
            ExitCode::FAILURE
        }
    }
}
