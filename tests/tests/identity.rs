//! Identity and access through real clients: secure mode verifies every
//! SigV4 signature (header and presigned forms) against keys whose secrets
//! the control plane keeps sealed; development mode takes any key, a
//! 12-digit one naming the account.

use std::time::{Duration, SystemTime};

use aws_sdk_kinesis::config::Credentials;
use aws_sdk_kinesis::error::ProvideErrorMetadata as _;
use aws_sdk_kinesis::primitives::Blob;
use aws_sigv4::http_request::{
    sign, SignableBody, SignableRequest, SignatureLocation, SigningSettings,
};
use aws_sigv4::sign::v4;
use freshet_e2e::raw_http::post_http1_to;
use freshet_e2e::{
    kinesis_client_as, Cluster, ClusterOptions, SECURE_ACCESS_KEY, SECURE_SECRET_KEY,
};
use freshet_proto::v1::identities_client::IdentitiesClient;
use freshet_proto::v1::{
    AccessKeyState, CreateAccessKeyRequest, CreateUserRequest, ListAccessKeysRequest,
    UpdateAccessKeyRequest,
};
use freshet_server::AuthMode;

async fn secure_cluster() -> anyhow::Result<Cluster> {
    Cluster::start_with(ClusterOptions {
        auth: AuthMode::Sigv4,
        worker_zones: vec!["az-a", "az-b"],
        ..ClusterOptions::default()
    })
    .await
}

fn client(cluster: &Cluster, region: &str, key: &str, secret: &str) -> aws_sdk_kinesis::Client {
    kinesis_client_as(
        &cluster.endpoint,
        region,
        Credentials::new(key, secret, None, None, "identity-test"),
    )
}

/// The exception name a ListStreams call is refused with, if it is.
async fn refusal(client: &aws_sdk_kinesis::Client) -> Option<String> {
    match client.list_streams().send().await {
        Ok(_) => None,
        Err(error) => Some(error.code().unwrap_or("(no code)").to_owned()),
    }
}

/// Creates a one-shard stream as `client`; its ARN.
async fn create_stream_arn(client: &aws_sdk_kinesis::Client, name: &str) -> anyhow::Result<String> {
    client
        .create_stream()
        .stream_name(name)
        .shard_count(1)
        .send()
        .await?;
    let summary = client
        .describe_stream_summary()
        .stream_name(name)
        .send()
        .await?;
    Ok(summary
        .stream_description_summary()
        .map(|s| s.stream_arn().to_owned())
        .unwrap_or_default())
}

fn address(cluster: &Cluster) -> String {
    cluster.endpoint.trim_start_matches("http://").to_owned()
}

/// A ListStreams request signed by the AWS SDK's own signer, as of `at`,
/// in the header form or presigned for `presigned_for`.
fn signed_list_streams(
    address: &str,
    key: &str,
    secret: &str,
    at: SystemTime,
    presigned_for: Option<Duration>,
) -> anyhow::Result<(String, Vec<(String, String)>)> {
    signed_request(address, key, secret, at, presigned_for, true)
}

/// As [`signed_list_streams`]; with `sign_target` false the X-Amz-Target
/// header is added after signing, so the signature does not cover it.
fn signed_request(
    address: &str,
    key: &str,
    secret: &str,
    at: SystemTime,
    presigned_for: Option<Duration>,
    sign_target: bool,
) -> anyhow::Result<(String, Vec<(String, String)>)> {
    let identity = Credentials::new(key, secret, None, None, "identity-test").into();
    let mut settings = SigningSettings::default();
    if let Some(expires) = presigned_for {
        settings.signature_location = SignatureLocation::QueryParams;
        settings.expires_in = Some(expires);
    }
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-east-1")
        .name("kinesis")
        .time(at)
        .settings(settings)
        .build()?
        .into();
    let uri = format!("http://{address}/");
    let all_headers = [
        ("host", address),
        ("content-type", "application/x-amz-json-1.1"),
        ("x-amz-target", "Kinesis_20131202.ListStreams"),
    ];
    let signed_count = if sign_target { 3 } else { 2 };
    let signable = SignableRequest::new(
        "POST",
        &uri,
        all_headers[..signed_count].iter().copied(),
        SignableBody::Bytes(b"{}"),
    )?;
    let (instructions, _) = sign(signable, &params)?.into_parts();
    let mut request = http::Request::post(&uri).body(())?;
    for (name, value) in &all_headers[..signed_count] {
        request.headers_mut().insert(*name, value.parse()?);
    }
    instructions.apply_to_request_http1x(&mut request);
    if !sign_target {
        let (name, value) = all_headers[2];
        request.headers_mut().insert(name, value.parse()?);
    }
    let path = request
        .uri()
        .path_and_query()
        .map_or("/".to_owned(), |p| p.to_string());
    let headers = request
        .headers()
        .iter()
        .filter(|(name, _)| *name != "host")
        .map(|(name, value)| Ok((name.to_string(), value.to_str()?.to_owned())))
        .collect::<anyhow::Result<_>>()?;
    Ok((path, headers))
}

async fn send_signed(
    address: &str,
    (path, headers): (String, Vec<(String, String)>),
) -> anyhow::Result<freshet_e2e::raw_http::RawResponse> {
    let headers: Vec<(&str, &str)> = headers
        .iter()
        .map(|(name, value)| (name.as_str(), value.as_str()))
        .collect();
    post_http1_to(address, &path, &headers, b"{}").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secure_mode_verifies_every_signature() -> anyhow::Result<()> {
    let cluster = secure_cluster().await?;
    let root = cluster.kinesis();
    root.create_stream()
        .stream_name("guarded")
        .shard_count(1)
        .send()
        .await?;
    let written = root
        .put_record()
        .stream_name("guarded")
        .partition_key("k")
        .data(Blob::new("hello"))
        .send()
        .await?;
    assert!(!written.sequence_number().is_empty());

    let wrong_secret = client(&cluster, "us-east-1", SECURE_ACCESS_KEY, "not-the-secret");
    assert_eq!(
        refusal(&wrong_secret).await.as_deref(),
        Some("InvalidSignatureException")
    );
    let unknown = client(&cluster, "us-east-1", "AKIAUNKNOWNKEY000000", "whatever");
    assert_eq!(
        refusal(&unknown).await.as_deref(),
        Some("UnrecognizedClientException")
    );
    let malformed_key = client(&cluster, "us-east-1", "test", "test");
    assert_eq!(
        refusal(&malformed_key).await.as_deref(),
        Some("UnrecognizedClientException")
    );
    let with_session_token = kinesis_client_as(
        &cluster.endpoint,
        "us-east-1",
        Credentials::new(
            SECURE_ACCESS_KEY,
            SECURE_SECRET_KEY,
            Some("a-session-token".to_owned()),
            None,
            "identity-test",
        ),
    );
    assert_eq!(
        refusal(&with_session_token).await.as_deref(),
        Some("UnrecognizedClientException")
    );
    let other_region = client(&cluster, "eu-west-1", SECURE_ACCESS_KEY, SECURE_SECRET_KEY);
    assert_eq!(
        refusal(&other_region).await.as_deref(),
        Some("InvalidSignatureException")
    );

    // Signed by the SDK's signer 20 minutes ago: too old. Signed now: fine.
    let address = address(&cluster);
    let now = SystemTime::now();
    let stale = signed_list_streams(
        &address,
        SECURE_ACCESS_KEY,
        SECURE_SECRET_KEY,
        now - Duration::from_secs(20 * 60),
        None,
    )?;
    let stale = send_signed(&address, stale).await?;
    assert_eq!(
        (stale.status, stale.error_type().as_str()),
        (400, "InvalidSignatureException"),
        "{}",
        stale.body
    );
    assert!(stale.body.contains("Signature expired"), "{}", stale.body);
    let fresh = signed_list_streams(&address, SECURE_ACCESS_KEY, SECURE_SECRET_KEY, now, None)?;
    let fresh = send_signed(&address, fresh).await?;
    assert_eq!(fresh.status, 200, "{}", fresh.body);
    assert!(fresh.body.contains("guarded"), "{}", fresh.body);

    // The presigned form: valid for its lifetime, however old within it.
    let presigned = signed_list_streams(
        &address,
        SECURE_ACCESS_KEY,
        SECURE_SECRET_KEY,
        now - Duration::from_secs(30 * 60),
        Some(Duration::from_secs(3600)),
    )?;
    assert!(presigned.0.contains("X-Amz-Signature="), "{}", presigned.0);
    let presigned = send_signed(&address, presigned).await?;
    assert_eq!(presigned.status, 200, "{}", presigned.body);
    let expired = signed_list_streams(
        &address,
        SECURE_ACCESS_KEY,
        SECURE_SECRET_KEY,
        now - Duration::from_secs(30 * 60),
        Some(Duration::from_secs(600)),
    )?;
    let expired = send_signed(&address, expired).await?;
    assert_eq!(expired.error_type(), "InvalidSignatureException");

    // A signature that does not cover X-Amz-Target could be replayed as
    // another operation: refused.
    let retargetable = signed_request(
        &address,
        SECURE_ACCESS_KEY,
        SECURE_SECRET_KEY,
        now,
        None,
        false,
    )?;
    let retargetable = send_signed(&address, retargetable).await?;
    assert_eq!(
        retargetable.error_type(),
        "IncompleteSignatureException",
        "{}",
        retargetable.body
    );

    let no_credentials = post_http1_to(
        &address,
        "/",
        &[
            ("Content-Type", "application/x-amz-json-1.1"),
            ("X-Amz-Target", "Kinesis_20131202.ListStreams"),
        ],
        b"{}",
    )
    .await?;
    assert_eq!(
        no_credentials.error_type(),
        "MissingAuthenticationTokenException"
    );

    // Nothing the refused callers sent changed anything.
    let streams = root.list_streams().send().await?;
    assert_eq!(streams.stream_names(), ["guarded"]);
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_keys_work_until_disabled() -> anyhow::Result<()> {
    let cluster = secure_cluster().await?;
    let mut identities = cluster.identities()?;
    identities
        .create_user(CreateUserRequest {
            account_id: "111122223333".into(),
            user_name: "alice".into(),
        })
        .await?;
    let key = identities
        .create_access_key(CreateAccessKeyRequest {
            account_id: "111122223333".into(),
            user_name: "alice".into(),
        })
        .await?
        .into_inner();
    identities
        .put_user_policy(freshet_proto::v1::PutUserPolicyRequest {
            account_id: "111122223333".into(),
            user_name: "alice".into(),
            policy_name: "everything".into(),
            document: r#"{"Statement":{"Effect":"Allow","Action":"kinesis:*","Resource":"*"}}"#
                .into(),
        })
        .await?;
    let alice = client(
        &cluster,
        "us-east-1",
        &key.access_key_id,
        &key.secret_access_key,
    );
    let arn = create_stream_arn(&alice, "alices").await?;
    assert!(arn.contains(":111122223333:stream/alices"), "{arn}");
    // Accounts do not see each other's streams.
    let root_streams = cluster.kinesis().list_streams().send().await?;
    assert!(root_streams.stream_names().is_empty());

    // A second key, then the quota of two.
    identities
        .create_access_key(CreateAccessKeyRequest {
            account_id: "111122223333".into(),
            user_name: "alice".into(),
        })
        .await?;
    let third = identities
        .create_access_key(CreateAccessKeyRequest {
            account_id: "111122223333".into(),
            user_name: "alice".into(),
        })
        .await;
    assert_eq!(
        third.err().map(|s| s.code()),
        Some(tonic::Code::ResourceExhausted)
    );
    let listed = identities
        .list_access_keys(ListAccessKeysRequest {
            account_id: "111122223333".into(),
            user_name: "alice".into(),
        })
        .await?
        .into_inner();
    assert_eq!(listed.keys.len(), 2);

    // Disabled: refused once the frontend's short key cache (1 s in
    // tests) lets go.
    identities
        .update_access_key(UpdateAccessKeyRequest {
            account_id: "111122223333".into(),
            access_key_id: key.access_key_id.clone(),
            state: AccessKeyState::Inactive as i32,
        })
        .await?;
    freshet_e2e::wait_until(Duration::from_secs(10), || async {
        refusal(&alice).await.as_deref() == Some("UnrecognizedClientException")
    })
    .await?;

    // The secret is stored sealed: it appears nowhere in Postgres.
    let pool = sqlx::PgPool::connect(&cluster.database_url).await?;
    let rows: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT secret_sealed FROM access_keys")
        .fetch_all(&pool)
        .await?;
    assert_eq!(rows.len(), 3, "the bootstrap key and alice's two");
    for (sealed,) in rows {
        for secret in [
            key.secret_access_key.as_bytes(),
            SECURE_SECRET_KEY.as_bytes(),
        ] {
            assert!(!sealed.windows(secret.len()).any(|w| w == secret));
        }
    }
    pool.close().await;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn development_mode_takes_any_key_and_a_twelve_digit_one_names_the_account(
) -> anyhow::Result<()> {
    let cluster = Cluster::start_with(ClusterOptions {
        worker_zones: vec!["az-a", "az-b"],
        ..ClusterOptions::default()
    })
    .await?;
    let west = client(&cluster, "us-west-2", "123456789012", "anything");
    let arn = create_stream_arn(&west, "mine").await?;
    assert_eq!(arn, "arn:aws:kinesis:us-west-2:123456789012:stream/mine");
    // Any other key is the default account, which has no streams.
    let other = client(&cluster, "us-west-2", "AKIAWHATEVER", "x");
    assert!(other.list_streams().send().await?.stream_names().is_empty());

    // Streams are namespaced per region too: the same account sees none in
    // us-east-1, and a stream of the same name there is another stream.
    let east = client(&cluster, "us-east-1", "123456789012", "anything");
    assert!(east.list_streams().send().await?.stream_names().is_empty());
    let east_arn = create_stream_arn(&east, "mine").await?;
    assert_eq!(
        east_arn,
        "arn:aws:kinesis:us-east-1:123456789012:stream/mine"
    );
    west.put_record()
        .stream_name("mine")
        .partition_key("k")
        .data(Blob::new("west"))
        .send()
        .await?;
    let read_all = |who: aws_sdk_kinesis::Client| async move {
        let iterator = who
            .get_shard_iterator()
            .stream_name("mine")
            .shard_id("shardId-000000000000")
            .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
            .send()
            .await?;
        let records = who
            .get_records()
            .shard_iterator(iterator.shard_iterator().unwrap_or_default())
            .send()
            .await?;
        anyhow::Ok(
            records
                .records()
                .iter()
                .map(|r| r.data().as_ref().to_vec())
                .collect::<Vec<_>>(),
        )
    };
    assert_eq!(read_all(west.clone()).await?, [b"west".to_vec()]);
    assert!(read_all(east.clone()).await?.is_empty());
    // An ARN of another region is not served by this region's endpoint.
    let elsewhere = east.describe_stream_summary().stream_arn(&arn).send().await;
    assert_eq!(
        elsewhere.err().map(|e| denial(&e).0).as_deref(),
        Some("ResourceNotFoundException")
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn internal_calls_without_the_deployment_token_are_refused_in_secure_mode(
) -> anyhow::Result<()> {
    use freshet_proto::v1::membership_client::MembershipClient;
    use freshet_proto::v1::storage_client::StorageClient;
    use freshet_proto::v1::{ListWorkersRequest, RegisterWorkerRequest, ReplicateRequest};

    let cluster = secure_cluster().await?;
    let anonymous = |address: &str| {
        freshet_server::grpc_channel(address, &freshet_server::InternalToken::none())
    };
    // Re-registering a worker at an address of the caller's choosing.
    let hijack = MembershipClient::new(anonymous(&cluster.membership_addr)?)
        .register_worker(RegisterWorkerRequest {
            worker_id: "worker-0-az-a".into(),
            availability_zone: "az-a".into(),
            address: "127.0.0.1:1".into(),
            disk_id: String::new(),
            disk_confirmed: false,
        })
        .await;
    assert_eq!(
        hijack.err().map(|status| status.code()),
        Some(tonic::Code::Unauthenticated)
    );
    // Pushing a batch into a replica.
    let workers = MembershipClient::new(cluster.channel(&cluster.membership_addr)?)
        .list_workers(ListWorkersRequest {})
        .await?
        .into_inner()
        .workers;
    let worker = workers.first().expect("a worker");
    assert!(!worker.address.is_empty());
    let pushed = StorageClient::new(anonymous(&worker.address)?)
        .replicate(ReplicateRequest::default())
        .await;
    assert_eq!(
        pushed.err().map(|status| status.code()),
        Some(tonic::Code::Unauthenticated)
    );
    // Minting keys: refused without any token, and with the internal
    // token alone (which every service holds): that takes the operator's
    // admin token.
    let mint = |channel| async move {
        IdentitiesClient::new(channel)
            .create_access_key(CreateAccessKeyRequest {
                account_id: "000000000000".into(),
                user_name: String::new(),
            })
            .await
            .err()
            .map(|status| status.code())
    };
    assert_eq!(
        mint(anonymous(&cluster.control_plane_addr)?).await,
        Some(tonic::Code::Unauthenticated)
    );
    assert_eq!(
        mint(cluster.channel(&cluster.control_plane_addr)?).await,
        Some(tonic::Code::Unauthenticated)
    );
    let operator = freshet_server::admin_channel(
        &cluster.control_plane_addr,
        &freshet_server::InternalToken::new(freshet_e2e::SECURE_INTERNAL_TOKEN)?,
        &freshet_server::AdminToken::new(freshet_e2e::SECURE_ADMIN_TOKEN)?,
    )?;
    assert_eq!(mint(operator).await, None, "the operator mints");
    // Health probes need no token.
    let health =
        tonic_health::pb::health_client::HealthClient::new(anonymous(&cluster.membership_addr)?)
            .check(tonic_health::pb::HealthCheckRequest {
                service: String::new(),
            })
            .await?;
    assert_eq!(
        health.into_inner().status(),
        tonic_health::pb::health_check_response::ServingStatus::Serving
    );
    // The worker still serves where it registered.
    let listed = MembershipClient::new(cluster.channel(&cluster.membership_addr)?)
        .list_workers(ListWorkersRequest {})
        .await?
        .into_inner()
        .workers;
    assert!(listed.iter().all(|w| w.address != "127.0.0.1:1"));
    cluster.shutdown().await;
    Ok(())
}

/// Runs `freshet-admin` against the cluster; its standard output.
async fn admin(cluster: &Cluster, args: &[&str]) -> anyhow::Result<String> {
    let output = tokio::process::Command::new(freshet_e2e::workspace_binary("freshet-admin")?)
        .args(["--control-plane-addr", &cluster.control_plane_addr])
        .args(args)
        .env("FRESHET_INTERNAL_TOKEN", freshet_e2e::SECURE_INTERNAL_TOKEN)
        .env("FRESHET_ADMIN_TOKEN", freshet_e2e::SECURE_ADMIN_TOKEN)
        .output()
        .await?;
    anyhow::ensure!(
        output.status.success(),
        "freshet-admin {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8(output.stdout)?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_cli_issues_keys_that_sign_requests() -> anyhow::Result<()> {
    let cluster = secure_cluster().await?;
    let arn = admin(
        &cluster,
        &[
            "user",
            "create",
            "--account",
            "444455556666",
            "--name",
            "bob",
        ],
    )
    .await?;
    assert_eq!(arn.trim(), "arn:aws:iam::444455556666:user/bob");
    let issued: serde_json::Value = serde_json::from_str(
        &admin(
            &cluster,
            &[
                "key",
                "create",
                "--account",
                "444455556666",
                "--user",
                "bob",
            ],
        )
        .await?,
    )?;
    let key = issued["AccessKeyId"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let secret = issued["SecretAccessKey"].as_str().unwrap_or_default();
    let bob = client(&cluster, "us-east-1", &key, secret);
    admin(
        &cluster,
        &[
            "policy",
            "put",
            "--account",
            "444455556666",
            "--user",
            "bob",
            "--name",
            "streams",
            "--document",
            r#"{"Statement":{"Effect":"Allow","Action":"kinesis:*Stream*","Resource":"*"}}"#,
        ],
    )
    .await?;
    bob.create_stream()
        .stream_name("bobs")
        .shard_count(1)
        .send()
        .await?;
    let listed = admin(
        &cluster,
        &["key", "list", "--account", "444455556666", "--user", "bob"],
    )
    .await?;
    assert!(listed.starts_with(&format!("{key}\tActive\t")), "{listed}");
    assert!(!listed.contains(secret), "a listing shows no secret");
    let policy_file = tempfile::NamedTempFile::new()?;
    std::fs::write(
        policy_file.path(),
        r#"{"Statement":{"Effect":"Allow","Action":"kinesis:*","Resource":"*"}}"#,
    )?;
    admin(
        &cluster,
        &[
            "policy",
            "put",
            "--account",
            "444455556666",
            "--user",
            "bob",
            "--name",
            "everything",
            "--document",
            &format!("file://{}", policy_file.path().display()),
        ],
    )
    .await?;
    let policies = admin(
        &cluster,
        &[
            "policy",
            "list",
            "--account",
            "444455556666",
            "--user",
            "bob",
        ],
    )
    .await?;
    assert!(policies.starts_with("everything\t{"), "{policies}");
    admin(
        &cluster,
        &[
            "key",
            "update",
            "--account",
            "444455556666",
            "--key",
            &key,
            "--status",
            "inactive",
        ],
    )
    .await?;
    freshet_e2e::wait_until(Duration::from_secs(10), || async {
        refusal(&bob).await.as_deref() == Some("UnrecognizedClientException")
    })
    .await?;
    admin(
        &cluster,
        &["key", "delete", "--account", "444455556666", "--key", &key],
    )
    .await?;
    let after = admin(
        &cluster,
        &["key", "list", "--account", "444455556666", "--user", "bob"],
    )
    .await?;
    assert!(after.is_empty(), "{after}");

    // Without the deployment's token the CLI is refused.
    let anonymous = tokio::process::Command::new(freshet_e2e::workspace_binary("freshet-admin")?)
        .args(["--control-plane-addr", &cluster.control_plane_addr])
        .args([
            "user",
            "create",
            "--account",
            "444455556666",
            "--name",
            "mallory",
        ])
        .env_remove("FRESHET_INTERNAL_TOKEN")
        .env_remove("FRESHET_ADMIN_TOKEN")
        .output()
        .await?;
    assert!(!anonymous.status.success());
    // Nor with the internal token alone.
    let service_only =
        tokio::process::Command::new(freshet_e2e::workspace_binary("freshet-admin")?)
            .args(["--control-plane-addr", &cluster.control_plane_addr])
            .args([
                "user",
                "create",
                "--account",
                "444455556666",
                "--name",
                "mallory",
            ])
            .env("FRESHET_INTERNAL_TOKEN", freshet_e2e::SECURE_INTERNAL_TOKEN)
            .env_remove("FRESHET_ADMIN_TOKEN")
            .output()
            .await?;
    assert!(!service_only.status.success());
    assert!(
        String::from_utf8_lossy(&service_only.stderr).contains("admin token"),
        "{}",
        String::from_utf8_lossy(&service_only.stderr)
    );
    cluster.shutdown().await;
    Ok(())
}

/// Creates user `name` in `account` with one access key; the Identities
/// client and a Kinesis client signing as the user.
async fn new_user(
    cluster: &Cluster,
    account: &str,
    name: &str,
) -> anyhow::Result<(
    IdentitiesClient<freshet_server::TracedChannel>,
    aws_sdk_kinesis::Client,
)> {
    let mut identities = cluster.identities()?;
    identities
        .create_user(CreateUserRequest {
            account_id: account.into(),
            user_name: name.into(),
        })
        .await?;
    let key = identities
        .create_access_key(CreateAccessKeyRequest {
            account_id: account.into(),
            user_name: name.into(),
        })
        .await?
        .into_inner();
    let user = client(
        cluster,
        "us-east-1",
        &key.access_key_id,
        &key.secret_access_key,
    );
    Ok((identities, user))
}

/// The exception and message of an SDK error.
fn denial<E: aws_sdk_kinesis::error::ProvideErrorMetadata>(error: &E) -> (String, String) {
    (
        error.code().unwrap_or("(no code)").to_owned(),
        error.message().unwrap_or_default().to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_policies_decide_what_a_user_may_do() -> anyhow::Result<()> {
    use freshet_proto::v1::PutUserPolicyRequest;

    let cluster = secure_cluster().await?;
    let root = cluster.kinesis();
    for name in ["orders-eu", "payments"] {
        root.create_stream()
            .stream_name(name)
            .shard_count(1)
            .send()
            .await?;
    }
    let (mut identities, alice) = new_user(&cluster, "000000000000", "alice").await?;
    let put = |stream: &'static str| {
        alice
            .put_record()
            .stream_name(stream)
            .partition_key("k")
            .data(Blob::new("x"))
            .send()
    };

    // No policy: nothing, not even her own account's list.
    let (code, message) = denial(&put("orders-eu").await.expect_err("no policy yet"));
    assert_eq!(code, "AccessDeniedException");
    assert!(
        message.starts_with("User: arn:aws:iam::000000000000:user/alice is not authorized to perform: kinesis:PutRecord on resource: arn:aws:kinesis:us-east-1:000000000000:stream/orders-eu"),
        "{message}"
    );

    // Writers of every stream but payments, which an explicit deny
    // closes even to the allow-everything statement.
    let put_policy = |name: &str, document: &str| PutUserPolicyRequest {
        account_id: "000000000000".into(),
        user_name: "alice".into(),
        policy_name: name.into(),
        document: document.into(),
    };
    identities
        .put_user_policy(put_policy(
            "writers",
            r#"{"Version":"2012-10-17","Statement":[
                {"Effect":"Allow","Action":["kinesis:PutRecord","kinesis:PutRecords"],"Resource":"arn:aws:kinesis:*:000000000000:stream/*"},
                {"Effect":"Allow","Action":"kinesis:*","Resource":"*","Condition":{"IpAddress":{"aws:SourceIp":"127.0.0.1/32"}}},
                {"Effect":"Deny","Action":"*","Resource":"arn:aws:kinesis:*:*:stream/payments"}]}"#,
        ))
        .await?;
    let malformed = identities
        .put_user_policy(put_policy("broken", r#"{"Statement":{"Effect":"Allow"}}"#))
        .await;
    assert_eq!(
        malformed.err().map(|s| s.code()),
        Some(tonic::Code::InvalidArgument)
    );
    freshet_e2e::wait_until(Duration::from_secs(10), || async {
        put("orders-eu").await.is_ok()
    })
    .await?;
    let (code, message) = denial(&put("payments").await.expect_err("denied"));
    assert_eq!(code, "AccessDeniedException");
    assert!(
        message.ends_with("with an explicit deny in an identity-based policy"),
        "{message}"
    );
    // The conditional allow holds from loopback: reads and lists too.
    let listed = alice.list_streams().send().await?;
    assert_eq!(listed.stream_names().len(), 2);

    // Narrowed to another address: only the unconditional writes remain.
    identities
        .put_user_policy(put_policy(
            "writers",
            r#"{"Statement":[
                {"Effect":"Allow","Action":"kinesis:Put*","Resource":"*"},
                {"Effect":"Allow","Action":"kinesis:*","Resource":"*","Condition":{"IpAddress":{"aws:SourceIp":"203.0.113.0/24"}}}]}"#,
        ))
        .await?;
    freshet_e2e::wait_until(Duration::from_secs(10), || async {
        alice.list_streams().send().await.is_err()
    })
    .await?;
    let (code, message) = denial(&alice.list_streams().send().await.expect_err("denied"));
    assert_eq!(code, "AccessDeniedException");
    assert!(
        message.ends_with("because no identity-based policy allows the kinesis:ListStreams action"),
        "{message}"
    );
    let iterator = alice
        .get_shard_iterator()
        .stream_name("orders-eu")
        .shard_id("shardId-000000000000")
        .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
        .send()
        .await;
    assert_eq!(
        iterator.err().map(|e| denial(&e).0).as_deref(),
        Some("AccessDeniedException")
    );
    assert!(
        put("payments").await.is_ok(),
        "the deny went with the old policy"
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_resource_policy_grants_and_denies() -> anyhow::Result<()> {
    let cluster = secure_cluster().await?;
    let root = cluster.kinesis();
    root.create_stream()
        .stream_name("shared")
        .shard_count(1)
        .send()
        .await?;
    let arn = "arn:aws:kinesis:us-east-1:000000000000:stream/shared";
    let (_, writer) = new_user(&cluster, "000000000000", "writer").await?;
    let put = |who: &aws_sdk_kinesis::Client| {
        who.put_record()
            .stream_name("shared")
            .partition_key("k")
            .data(Blob::new("x"))
            .send()
    };
    assert!(put(&writer).await.is_err(), "no identity policy, no grant");

    // The stream's own policy grants the user writes.
    let invalid = root
        .put_resource_policy()
        .resource_arn(arn)
        .policy(r#"{"Statement":{"Effect":"Allow","Action":"kinesis:PutRecord","Resource":"*"}}"#)
        .send()
        .await;
    assert_eq!(
        invalid.err().map(|e| denial(&e).0).as_deref(),
        Some("InvalidArgumentException"),
        "a resource policy must name its principals"
    );
    let grant = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::000000000000:user/writer"},"Action":"kinesis:PutRecord","Resource":"arn:aws:kinesis:us-east-1:000000000000:stream/shared"}]}"#;
    root.put_resource_policy()
        .resource_arn(arn)
        .policy(grant)
        .send()
        .await?;
    let stored = root.get_resource_policy().resource_arn(arn).send().await?;
    assert_eq!(stored.policy(), grant);
    put(&writer).await?;

    // A deny in it binds even the account's root, which can still remove
    // the policy.
    root.put_resource_policy()
        .resource_arn(arn)
        .policy(r#"{"Statement":{"Effect":"Deny","Principal":"*","Action":"kinesis:PutRecord","Resource":"*"}}"#)
        .send()
        .await?;
    let (code, message) = denial(&put(&root).await.expect_err("denied"));
    assert_eq!(code, "AccessDeniedException");
    assert!(
        message.ends_with("with an explicit deny in a resource-based policy"),
        "{message}"
    );
    root.delete_resource_policy()
        .resource_arn(arn)
        .send()
        .await?;
    put(&root).await?;
    let none = root.get_resource_policy().resource_arn(arn).send().await?;
    assert_eq!(none.policy(), "{}");

    // Another account's stream, or one that does not exist.
    let foreign = root
        .get_resource_policy()
        .resource_arn("arn:aws:kinesis:us-east-1:111122223333:stream/shared")
        .send()
        .await;
    assert_eq!(
        foreign.err().map(|e| denial(&e).0).as_deref(),
        Some("AccessDeniedException")
    );
    let missing = root
        .get_resource_policy()
        .resource_arn("arn:aws:kinesis:us-east-1:000000000000:stream/nope")
        .send()
        .await;
    assert_eq!(
        missing.err().map(|e| denial(&e).0).as_deref(),
        Some("ResourceNotFoundException")
    );

    // A deleted stream takes its policy along: created again, it has none.
    root.put_resource_policy()
        .resource_arn(arn)
        .policy(grant)
        .send()
        .await?;
    root.delete_stream().stream_name("shared").send().await?;
    freshet_e2e::wait_until(Duration::from_secs(30), || async {
        root.create_stream()
            .stream_name("shared")
            .shard_count(1)
            .send()
            .await
            .is_ok()
    })
    .await?;
    let fresh = root.get_resource_policy().resource_arn(arn).send().await?;
    assert_eq!(fresh.policy(), "{}");
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_account_reaches_a_stream_only_through_its_resource_policy() -> anyhow::Result<()> {
    use freshet_proto::v1::PutUserPolicyRequest;

    let cluster = secure_cluster().await?;
    let owner = cluster.kinesis();
    let arn = create_stream_arn(&owner, "orders").await?;
    assert_eq!(arn, "arn:aws:kinesis:us-east-1:000000000000:stream/orders");
    // The partner's own account lets it do anything with Kinesis.
    let (mut identities, partner) = new_user(&cluster, "111122223333", "partner").await?;
    identities
        .put_user_policy(PutUserPolicyRequest {
            account_id: "111122223333".into(),
            user_name: "partner".into(),
            policy_name: "kinesis".into(),
            document: r#"{"Statement":{"Effect":"Allow","Action":"kinesis:*","Resource":"*"}}"#
                .into(),
        })
        .await?;
    let put = |who: &aws_sdk_kinesis::Client| {
        who.put_record()
            .stream_arn(&arn)
            .partition_key("k")
            .data(Blob::new("from the partner"))
            .send()
    };

    // Without a resource policy the owner's account has not agreed.
    let (code, message) = denial(&put(&partner).await.expect_err("no resource policy"));
    assert_eq!(code, "AccessDeniedException");
    assert_eq!(
        message,
        format!("User: arn:aws:iam::111122223333:user/partner is not authorized to perform: kinesis:PutRecord on resource: {arn} because no resource-based policy allows the kinesis:PutRecord action")
    );
    // A name is always the caller's own stream: the partner has none.
    let own = partner
        .describe_stream_summary()
        .stream_name("orders")
        .send()
        .await;
    assert_eq!(
        own.err().map(|e| denial(&e).0).as_deref(),
        Some("ResourceNotFoundException")
    );

    // The owner grants the partner's account writes and reads.
    owner
        .put_resource_policy()
        .resource_arn(&arn)
        .policy(format!(
            r#"{{"Version":"2012-10-17","Statement":[{{"Effect":"Allow","Principal":{{"AWS":"111122223333"}},"Action":["kinesis:PutRecord","kinesis:GetShardIterator","kinesis:GetRecords","kinesis:ListShards"],"Resource":"{arn}"}}]}}"#
        ))
        .send()
        .await?;
    let landed = put(&partner).await?;
    let shards = partner.list_shards().stream_arn(&arn).send().await?;
    assert_eq!(shards.shards().len(), 1);
    let iterator = partner
        .get_shard_iterator()
        .stream_arn(&arn)
        .shard_id(landed.shard_id())
        .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
        .send()
        .await?;
    let records = partner
        .get_records()
        .stream_arn(&arn)
        .shard_iterator(iterator.shard_iterator().unwrap_or_default())
        .send()
        .await?;
    let data: Vec<&[u8]> = records
        .records()
        .iter()
        .map(|r| r.data().as_ref())
        .collect();
    assert_eq!(data, [b"from the partner".as_slice()]);

    // What the policy does not grant stays refused, and the partner can
    // neither manage the stream nor its policy.
    let deleted = partner.delete_stream().stream_arn(&arn).send().await;
    assert_eq!(
        deleted.err().map(|e| denial(&e).0).as_deref(),
        Some("AccessDeniedException")
    );
    let policy = partner
        .get_resource_policy()
        .resource_arn(&arn)
        .send()
        .await;
    assert_eq!(
        policy.err().map(|e| denial(&e).0).as_deref(),
        Some("AccessDeniedException")
    );

    // The partner's own account can still say no: a deny in its identity
    // policy beats the owner's allow.
    identities
        .put_user_policy(PutUserPolicyRequest {
            account_id: "111122223333".into(),
            user_name: "partner".into(),
            policy_name: "no-writes".into(),
            document:
                r#"{"Statement":{"Effect":"Deny","Action":"kinesis:PutRecord","Resource":"*"}}"#
                    .into(),
        })
        .await?;
    freshet_e2e::wait_until(Duration::from_secs(10), || async {
        put(&partner).await.is_err()
    })
    .await?;
    let (code, message) = denial(&put(&partner).await.expect_err("denied"));
    assert_eq!(code, "AccessDeniedException");
    assert!(
        message.ends_with("with an explicit deny in an identity-based policy"),
        "{message}"
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_in_secure_mode_signs_and_is_refused_as_aws_refuses() -> anyhow::Result<()> {
    let boto3_available = std::process::Command::new("python3")
        .args(["-c", "import boto3"])
        .status()
        .is_ok_and(|s| s.success());
    if !boto3_available {
        eprintln!(
            "boto3 is not installed: the boto3 secure-mode check was not run (pip install boto3)"
        );
        return Ok(());
    }
    let cluster = secure_cluster().await?;
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("smoke/boto3_secure.py");
    let checked = tokio::process::Command::new("python3")
        .arg(script)
        .args([&cluster.endpoint, SECURE_ACCESS_KEY, SECURE_SECRET_KEY])
        .output()
        .await?;
    assert!(
        checked.status.success(),
        "boto3 secure-mode check failed:\n{}\n{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tagging_needs_its_own_permission_even_inside_create_stream() -> anyhow::Result<()> {
    use freshet_proto::v1::PutUserPolicyRequest;

    let cluster = secure_cluster().await?;
    let (mut identities, bob) = new_user(&cluster, "000000000000", "bob").await?;
    // Bob may create and describe streams and list tags, not add them.
    identities
        .put_user_policy(PutUserPolicyRequest {
            account_id: "000000000000".into(),
            user_name: "bob".into(),
            policy_name: "no-tagging".into(),
            document: r#"{"Statement":[
                {"Effect":"Allow","Action":["kinesis:CreateStream","kinesis:DescribeStreamSummary","kinesis:ListTagsForStream","kinesis:ListTagsForResource"],"Resource":"*"}]}"#
                .into(),
        })
        .await?;
    let tagged_create = || {
        bob.create_stream()
            .stream_name("bobs")
            .shard_count(1)
            .tags("team", "bob")
            .send()
    };
    freshet_e2e::wait_until(Duration::from_secs(10), || async {
        tagged_create()
            .await
            .err()
            .is_some_and(|e| denial(&e).0 == "AccessDeniedException")
    })
    .await?;
    let (_, message) = denial(&tagged_create().await.expect_err("no AddTagsToStream"));
    assert!(
        message.contains("kinesis:AddTagsToStream"),
        "denied for the tagging: {message}"
    );
    // Nothing was created; untagged, it is.
    bob.create_stream()
        .stream_name("bobs")
        .shard_count(1)
        .send()
        .await?;
    let added = bob
        .add_tags_to_stream()
        .stream_name("bobs")
        .tags("team", "bob")
        .send()
        .await
        .expect_err("no AddTagsToStream");
    assert_eq!(denial(&added).0, "AccessDeniedException");
    // The same stream through another partition's spelling of its ARN is
    // the same resource, under the same rules.
    let elsewhere = "arn:aws-cn:kinesis:us-east-1:000000000000:stream/bobs";
    let tagged = bob
        .tag_resource()
        .resource_arn(elsewhere)
        .tags("team", "bob")
        .send()
        .await
        .expect_err("no TagResource");
    assert_eq!(denial(&tagged).0, "AccessDeniedException");
    let listed = bob
        .list_tags_for_resource()
        .resource_arn(elsewhere)
        .send()
        .await?;
    assert!(listed.tags.unwrap_or_default().is_empty());
    cluster.shutdown().await;
    Ok(())
}
