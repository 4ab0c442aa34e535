//! Tables beyond the local disk: object-store URL schemes, the `storage_options:` a
//! source may carry, their resolution against the environment, and the redaction of
//! secrets from everything quiver prints.
//!
//! Two rules hold by construction (docs/object-storage.md):
//!
//! - **No secret is ever stored or printed.** A secret option (a key, a token, a SAS)
//!   can only be written as `${ENV_VAR}`: the definition stored in the registry and
//!   shown by `plan`/`describe` holds the reference, and the value is read from the
//!   environment when a table is opened. Every error and log line quiver prints
//!   passes through [`redact`], which removes the secret values resolved so far and
//!   those of the cloud credential variables of the environment.
//! - **Whoever writes a source's options cannot choose where this process's secrets
//!   go.** `${NAME}` is read only for secret keys, and only a name this process allows
//!   (the key's own, `aws_secret_access_key` → `AWS_SECRET_ACCESS_KEY`, or one listed
//!   in `QUIVER_STORAGE_ENV`), so no option can carry another key's secret. Where
//!   requests go and which local file or service supplies credentials (endpoints,
//!   proxies, credential URIs, token and key files, `allow_http`: [`is_host_key`]) is
//!   this process's own configuration for a source name (`QUIVER_STORAGE_CONFIG`), never
//!   taken from options it received: a plan decoded from another process
//!   ([`Origin::Received`]) or a definition a replica follows. Every value read from
//!   the environment is remembered for redaction.
//! - **Commits to object storage are atomic.** quiver always passes
//!   `AWS_S3_ALLOW_UNSAFE_RENAME=false`, whatever the environment says, so an S3 commit
//!   is a conditional put (`If-None-Match: *`) or goes through a DynamoDB lock; Azure
//!   and GCS commits are conditional puts natively.
//!
//! ```
//! use quiver_featurestore::storage::{OptionValue, is_secret};
//!
//! assert_eq!(
//!     OptionValue::parse("${AWS_SECRET_ACCESS_KEY}").unwrap(),
//!     OptionValue::Env("AWS_SECRET_ACCESS_KEY".into())
//! );
//! assert!(is_secret("aws_secret_access_key"));
//! assert!(!is_secret("aws_region"));
//! ```

use std::collections::{BTreeMap, HashMap};
use std::fmt;

/// Most options on one source.
pub const MAX_OPTIONS: usize = 32;
/// Longest option value, literal or resolved.
pub const MAX_VALUE_LEN: usize = 4096;

/// The object-store family of a URL scheme, or `None` for local files and unknown
/// schemes.
pub fn family(scheme: &str) -> Option<Family> {
    match scheme {
        "s3" | "s3a" => Some(Family::S3),
        "az" | "azure" | "abfs" | "abfss" | "adl" => Some(Family::Azure),
        "gs" => Some(Family::Gcs),
        _ => None,
    }
}

/// Object stores quiver can read and write Delta tables on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Amazon S3 and S3-compatible stores (`s3://`, `s3a://`).
    S3,
    /// Azure Blob Storage and ADLS Gen2 (`az://`, `abfss://`, ...).
    Azure,
    /// Google Cloud Storage (`gs://`).
    Gcs,
}

impl Family {
    /// The cargo feature that builds this family in.
    pub fn feature(self) -> &'static str {
        match self {
            Family::S3 => "s3",
            Family::Azure => "azure",
            Family::Gcs => "gcs",
        }
    }

    /// Whether this build of quiver can open tables of this family.
    pub fn compiled_in(self) -> bool {
        match self {
            Family::S3 => cfg!(feature = "s3"),
            Family::Azure => cfg!(feature = "azure"),
            Family::Gcs => cfg!(feature = "gcs"),
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Family::S3 => "aws_",
            Family::Azure => "azure_",
            Family::Gcs => "google_",
        }
    }
}

/// Options of any family that are not the store's own (HTTP client settings).
const CLIENT_KEYS: &[&str] = &[
    "allow_http",
    "allow_invalid_certificates",
    "connect_timeout",
    "timeout",
    "pool_idle_timeout",
    "pool_max_idle_per_host",
    "proxy_url",
    "proxy_ca_certificate",
    "proxy_excludes",
    "user_agent",
    "http1_only",
    "http2_only",
    "randomize_addresses",
];

/// Keys that say where requests go or which local file or service supplies
/// credentials: endpoints, proxies, credential URIs, token and key files, certificates,
/// plain HTTP. A process takes these only from its own configuration for a source
/// (`QUIVER_STORAGE_CONFIG`) when the options come from elsewhere ([`Origin::Received`]):
/// whoever writes them otherwise chooses where the receiver's credentials are sent.
pub fn is_host_key(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    let unprefixed = ["aws_", "azure_", "google_"]
        .iter()
        .find_map(|p| key.strip_prefix(p))
        .unwrap_or(&key);
    const CLIENT_HOST: &[&str] = &[
        "allow_http",
        "allow_invalid_certificates",
        "proxy_url",
        "proxy_ca_certificate",
        "proxy_excludes",
    ];
    CLIENT_HOST.contains(&unprefixed)
        || [
            "endpoint",
            "_uri",
            "_url",
            "_file",
            "_path",
            "authority_host",
            "application_credentials",
            "use_azure_cli",
            "use_emulator",
            "fabric_workload_host",
            "profile",
            "imdsv1_fallback",
            "metadata",
            // Which credential file, role or identity the receiver uses.
            "service_account",
            "role_arn",
            "role_session_name",
            "client_id",
            "object_id",
            "msi_resource_id",
        ]
        .iter()
        .any(|part| key.contains(part))
            && !key.ends_with("service_account_key")
}

/// Keys whose values become part of a host name or path the store builds
/// (`{account}.blob.core.windows.net`, `s3.{region}.amazonaws.com`, a bucket): they hold
/// a name, never a character that could end the host or start a path, port or user
/// (`/`, `@`, `:`, `#`, `?`, `%`, spaces).
fn is_name_key(key: &str) -> bool {
    ["account_name", "region", "bucket", "container_name"]
        .iter()
        .any(|part| key.contains(part))
}

fn check_name(key: &str, value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= 255
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{key}` is a name the store puts into a host name or path: letters, digits, `-`, `_` and `.` only"
        ))
    }
}

/// Who wrote the options being resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// This process's own repo or code.
    Local,
    /// Another process: a plan decoded here, or a definition followed from a primary.
    /// Host keys ([`is_host_key`]) among them are refused; this process's own
    /// configuration for the source supplies them.
    Received,
}

static RECEIVER: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Mark this process as one that runs definitions written elsewhere (a replica
/// following a primary): from now on every source's options resolve as
/// [`Origin::Received`].
pub fn set_receiver_process() {
    RECEIVER.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// How this process resolves the options of definitions: [`Origin::Received`] after
/// [`set_receiver_process`], else [`Origin::Local`].
pub fn definition_origin() -> Origin {
    if RECEIVER.load(std::sync::atomic::Ordering::SeqCst) {
        Origin::Received
    } else {
        Origin::Local
    }
}

/// This process's own storage configuration, from its environment:
/// `QUIVER_STORAGE_ENV` (comma-separated variable names a secret option may read
/// besides its key's own) and `QUIVER_STORAGE_CONFIG` (a JSON file: source name →
/// options, which win over a definition's and are the only source of host keys for
/// received options).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProcessConfig {
    allowed_env: std::collections::BTreeSet<String>,
    sources: BTreeMap<String, BTreeMap<String, String>>,
}

/// Largest `QUIVER_STORAGE_CONFIG` file read.
const MAX_CONFIG_BYTES: u64 = 1 << 20;

impl ProcessConfig {
    /// Read from `env` (the process environment in [`ProcessConfig::from_env`]).
    pub fn read(env: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let mut out = Self::default();
        if let Some(list) = env("QUIVER_STORAGE_ENV") {
            for name in list.split(',').map(str::trim).filter(|n| !n.is_empty()) {
                if !name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
                {
                    return Err(format!(
                        "QUIVER_STORAGE_ENV: `{name}` is not a variable name (A-Z, 0-9, _)"
                    ));
                }
                out.allowed_env.insert(name.to_owned());
            }
        }
        if let Some(path) = env("QUIVER_STORAGE_CONFIG") {
            let meta = std::fs::metadata(&path)
                .map_err(|e| format!("QUIVER_STORAGE_CONFIG {path}: {e}"))?;
            if meta.len() > MAX_CONFIG_BYTES {
                return Err(format!(
                    "QUIVER_STORAGE_CONFIG {path} is {} bytes, over {MAX_CONFIG_BYTES}",
                    meta.len()
                ));
            }
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("QUIVER_STORAGE_CONFIG {path}: {e}"))?;
            out.sources = serde_json::from_str(&text).map_err(|e| {
                format!("QUIVER_STORAGE_CONFIG {path}: {e} (write {{\"SOURCE\": {{\"KEY\": \"VALUE\"}}}})")
            })?;
        }
        Ok(out)
    }

    /// [`ProcessConfig::read`] of this process's environment, read once (its file
    /// too) and kept: every table open resolves against the same configuration.
    pub fn from_env() -> Result<Self, String> {
        static CONFIG: std::sync::OnceLock<Result<ProcessConfig, String>> =
            std::sync::OnceLock::new();
        CONFIG
            .get_or_init(|| Self::read(|n| std::env::var(n).ok()))
            .clone()
    }

    fn allows(&self, key: &str, name: &str) -> bool {
        name == key.to_ascii_uppercase() || self.allowed_env.contains(name)
    }
}

/// A key of `storage_options:`: lower-case, and one this family's store reads.
/// The error names the nearest known key.
pub fn check_key(family: Family, key: &str) -> Result<(), String> {
    if key != key.to_ascii_lowercase() {
        return Err(format!(
            "option keys are lower case: write `{}`",
            key.to_ascii_lowercase()
        ));
    }
    if key == "aws_s3_allow_unsafe_rename" {
        return Err("quiver never commits to S3 by an unchecked rename, which loses commits when two writers race; S3 commits are conditional puts (or use `aws_s3_locking_provider: dynamodb`)".into());
    }
    if !key.starts_with(family.prefix()) && !CLIENT_KEYS.contains(&key) {
        return Err(format!(
            "`{key}` is not an option of {} tables: their options start with `{}` (or are HTTP client options such as `allow_http`)",
            match family {
                Family::S3 => "S3",
                Family::Azure => "Azure",
                Family::Gcs => "GCS",
            },
            family.prefix()
        ));
    }
    if known(family, key) {
        Ok(())
    } else {
        let hint = crate::spec::nearest(key, known_keys(family).iter().copied())
            .map(|k| format!("; did you mean `{k}`?"))
            .unwrap_or_default();
        Err(format!("unknown option `{key}`{hint}"))
    }
}

fn known(family: Family, key: &str) -> bool {
    // HTTP client options may carry the store's prefix too (`azure_allow_http`): the
    // environment variables spell them that way.
    let unprefixed = key.strip_prefix(family.prefix()).unwrap_or(key);
    CLIENT_KEYS.contains(&key)
        || CLIENT_KEYS.contains(&unprefixed)
        || known_keys(family).contains(&key)
}

/// The store keys quiver accepts per family: object_store's configuration keys and
/// delta-rs's own (locking, role assumption), in their canonical `prefix_` spelling.
fn known_keys(family: Family) -> &'static [&'static str] {
    match family {
        Family::S3 => &[
            "aws_access_key_id",
            "aws_secret_access_key",
            "aws_session_token",
            "aws_region",
            "aws_default_region",
            "aws_endpoint",
            "aws_endpoint_url",
            "aws_bucket",
            "aws_bucket_name",
            "aws_virtual_hosted_style_request",
            "aws_s3_express",
            "aws_imdsv1_fallback",
            "aws_metadata_endpoint",
            "aws_container_credentials_relative_uri",
            "aws_container_credentials_full_uri",
            "aws_container_authorization_token_file",
            "aws_skip_signature",
            "aws_checksum_algorithm",
            "aws_copy_if_not_exists",
            "aws_conditional_put",
            "aws_disable_tagging",
            "aws_request_payer",
            "aws_server_side_encryption",
            "aws_sse_kms_key_id",
            "aws_sse_bucket_key_enabled",
            "aws_allow_http",
            "aws_profile",
            "aws_s3_locking_provider",
            "aws_endpoint_url_dynamodb",
            "aws_region_dynamodb",
            "aws_access_key_id_dynamodb",
            "aws_secret_access_key_dynamodb",
            "aws_session_token_dynamodb",
            "aws_iam_role_arn",
            "aws_iam_role_session_name",
            "aws_s3_assume_role_arn",
            "aws_s3_role_session_name",
            "aws_web_identity_token_file",
            "aws_role_arn",
            "aws_role_session_name",
            "aws_ec2_metadata_disabled",
            "aws_ec2_metadata_timeout",
            "aws_force_credential_load",
        ],
        Family::Azure => &[
            "azure_storage_account_name",
            "azure_storage_account_key",
            "azure_storage_access_key",
            "azure_storage_master_key",
            "azure_storage_client_id",
            "azure_storage_client_secret",
            "azure_storage_tenant_id",
            "azure_storage_authority_id",
            "azure_storage_authority_host",
            "azure_storage_sas_key",
            "azure_storage_token",
            "azure_storage_use_emulator",
            "azure_storage_endpoint",
            "azure_endpoint",
            "azure_use_fabric_endpoint",
            "azure_msi_endpoint",
            "azure_object_id",
            "azure_msi_resource_id",
            "azure_federated_token_file",
            "azure_use_azure_cli",
            "azure_skip_signature",
            "azure_container_name",
            "azure_disable_tagging",
            "azure_fabric_token_service_url",
            "azure_fabric_workload_host",
            "azure_fabric_session_token",
            "azure_fabric_cluster_identifier",
        ],
        Family::Gcs => &[
            "google_service_account",
            "google_service_account_path",
            "google_service_account_key",
            "google_bucket",
            "google_bucket_name",
            "google_application_credentials",
            "google_skip_signature",
        ],
    }
}

/// Whether values of this key are secrets: they may only be written as `${ENV_VAR}`
/// and are never printed.
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "secret",
        "token",
        "account_key",
        "access_key",
        "master_key",
        "sas",
        "password",
        "service_account_key",
    ]
    .iter()
    .any(|s| key.contains(s))
        && !key.ends_with("_file")
        && !key.ends_with("_uri")
        && !key.ends_with("_url")
        && key != "aws_access_key_id"
        && key != "aws_access_key_id_dynamodb"
}

/// A `storage_options:` value as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptionValue {
    /// Literal text (never a secret).
    Literal(String),
    /// `${NAME}`: the value of an environment variable, read when the table is opened.
    Env(String),
}

impl OptionValue {
    /// Parse a value: `${NAME}` (NAME of `A-Z`, `0-9`, `_`) or literal text without `${`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.len() > MAX_VALUE_LEN {
            return Err(format!(
                "value is {} bytes, over the limit of {MAX_VALUE_LEN}",
                text.len()
            ));
        }
        if let Some(name) = text.strip_prefix("${").and_then(|t| t.strip_suffix('}')) {
            if name.is_empty()
                || name.len() > 128
                || !name
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            {
                return Err(format!(
                    "`{text}` is not an environment reference: write `${{NAME}}` with NAME of A-Z, 0-9 and _"
                ));
            }
            return Ok(OptionValue::Env(name.to_owned()));
        }
        if text.contains("${") {
            return Err(
                "a value is either `${NAME}` as a whole or literal text; quiver does not splice variables into text".into(),
            );
        }
        Ok(OptionValue::Literal(text.to_owned()))
    }
}

/// The value of option `key` as written ([`OptionValue::parse`]), refused when `key` is
/// a secret written literally, or is not a secret and reads the environment (only
/// secrets are `${NAME}`, so no option can be pointed at a secret variable). The key
/// itself is checked by [`check_key`].
pub fn parse_value(key: &str, value: &str) -> Result<OptionValue, String> {
    let parsed = OptionValue::parse(value)?;
    if !is_secret(key)
        && let OptionValue::Env(name) = &parsed
    {
        return Err(format!(
            "`{key}` is not a secret: write its value; `${{{name}}}` is read only for secret options"
        ));
    }
    if is_secret(key) && matches!(parsed, OptionValue::Literal(_)) {
        return Err(format!(
            "`{key}` is a secret and may only be read from the environment: write `{key}: ${{{}}}`; a literal would be stored in the registry and printed by `quiver plan`",
            key.to_ascii_uppercase()
        ));
    }
    Ok(parsed)
}

/// Environment variables whose values are cloud credentials: redacted from every
/// error even when quiver did not read them itself (the SDKs do).
fn env_secret(name: &str) -> bool {
    let upper = name.to_ascii_uppercase();
    (upper.starts_with("AWS_") || upper.starts_with("AZURE_") || upper.starts_with("GOOGLE_"))
        && is_secret(&upper)
}

/// Options resolved against the environment, ready for deltalake; their secret values
/// are known to [`redact`]. Its `Debug` shows keys only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Resolved {
    options: BTreeMap<String, String>,
}

impl fmt::Debug for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.options.keys()).finish()
    }
}

impl Resolved {
    /// Resolve options written in this process (`key` → value as written) for a table
    /// of `family` (`None`: a local table, which takes no options).
    pub fn resolve<'a>(
        family: Option<Family>,
        written: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, String> {
        let cfg = ProcessConfig::from_env()?;
        Self::resolve_with(family, None, written, Origin::Local, &cfg, |name| {
            std::env::var(name).ok()
        })
    }

    /// Resolve the options of source `source` as written by `origin`, against this
    /// process's environment and configuration ([`ProcessConfig::from_env`]).
    pub fn resolve_source<'a>(
        family: Option<Family>,
        source: &str,
        written: impl IntoIterator<Item = (&'a str, &'a str)>,
        origin: Origin,
    ) -> Result<Self, String> {
        let cfg = ProcessConfig::from_env()?;
        Self::resolve_with(family, Some(source), written, origin, &cfg, |name| {
            std::env::var(name).ok()
        })
    }

    /// [`Resolved::resolve_source`] with the configuration and environment given.
    pub fn resolve_with<'a>(
        family: Option<Family>,
        source: Option<&str>,
        written: impl IntoIterator<Item = (&'a str, &'a str)>,
        origin: Origin,
        cfg: &ProcessConfig,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, String> {
        let mut out = Resolved::default();
        let value_of = |key: &str, value: &str| -> Result<String, String> {
            match parse_value(key, value)? {
                OptionValue::Literal(v) => Ok(v),
                OptionValue::Env(name) => {
                    if !cfg.allows(key, &name) {
                        return Err(format!(
                            "`{key}` reads `${{{name}}}`, which this process does not allow: a secret option reads its own variable (`${{{}}}`) or one listed in QUIVER_STORAGE_ENV",
                            key.to_ascii_uppercase()
                        ));
                    }
                    let v = env(&name).ok_or_else(|| {
                        format!("`{key}` reads the environment variable `{name}`, which is not set")
                    })?;
                    if v.len() > MAX_VALUE_LEN {
                        return Err(format!(
                            "`{name}` is {} bytes, over the limit of {MAX_VALUE_LEN}",
                            v.len()
                        ));
                    }
                    remember_secret(&v)?;
                    Ok(v)
                }
            }
        };
        for (key, value) in written {
            let Some(family) = family else {
                return Err(format!(
                    "`storage_options` apply to object-store tables (s3://, az://, abfss://, gs://); `{key}` was given for a local table"
                ));
            };
            check_key(family, key)?;
            if origin == Origin::Received && is_host_key(key) {
                return Err(format!(
                    "`{key}` of source `{}` says where requests go or which local file supplies credentials: this process takes it from its own configuration (QUIVER_STORAGE_CONFIG, under the source's name), never from a plan or definition it received",
                    source.unwrap_or("?")
                ));
            }
            let v = value_of(key, value)?;
            if is_name_key(key) {
                check_name(key, &v)?;
            }
            out.options.insert(key.to_owned(), v);
        }
        // This process's own options for the source win over what was written.
        if let (Some(family), Some(own)) = (family, source.and_then(|s| cfg.sources.get(s))) {
            for (key, value) in own {
                check_key(family, key).map_err(|e| {
                    format!(
                        "QUIVER_STORAGE_CONFIG, source `{}`: {e}",
                        source.unwrap_or("?")
                    )
                })?;
                out.options.insert(key.clone(), value_of(key, value)?);
            }
        }
        if family == Some(Family::S3) {
            // Whatever the environment says: commits are conditional puts or locked.
            out.options
                .insert("AWS_S3_ALLOW_UNSAFE_RENAME".into(), "false".into());
        }
        Ok(out)
    }

    /// Set one option given in code; a secret's value becomes known to [`redact`].
    pub(crate) fn set(&mut self, key: &str, value: &str) -> Result<(), String> {
        if is_secret(key) {
            remember_secret(value)?;
        }
        self.options.insert(key.to_owned(), value.to_owned());
        Ok(())
    }

    /// The options as deltalake takes them.
    pub fn to_map(&self) -> HashMap<String, String> {
        self.options.clone().into_iter().collect()
    }
}

/// Every secret value [`redact`] removes: the cloud credential variables of the
/// environment (read once, at first use) and the secret options resolved since.
/// Bounded: past [`MAX_SECRETS`] values, resolving another secret is refused.
static SECRETS: std::sync::Mutex<Option<Vec<String>>> = std::sync::Mutex::new(None);
const MAX_SECRETS: usize = 256;
/// Shorter values could be ordinary words; no credential is that short.
const MIN_SECRET_LEN: usize = 8;

fn with_secrets<T>(f: impl FnOnce(&mut Vec<String>) -> T) -> T {
    let mut guard = SECRETS.lock().unwrap_or_else(|p| p.into_inner());
    let secrets = guard.get_or_insert_with(|| {
        std::env::vars()
            .filter(|(k, v)| env_secret(k) && v.len() >= MIN_SECRET_LEN)
            .map(|(_, v)| v)
            .collect()
    });
    f(secrets)
}

fn remember_secret(value: &str) -> Result<(), String> {
    with_secrets(|s| {
        if value.len() < MIN_SECRET_LEN || s.iter().any(|k| k == value) {
            Ok(())
        } else if s.len() >= MAX_SECRETS {
            Err(format!(
                "more than {MAX_SECRETS} distinct secrets in one process: redaction would not cover another"
            ))
        } else {
            s.push(value.to_owned());
            Ok(())
        }
    })
}

/// `text` with every secret quiver knows of replaced by `***`: the cloud credential
/// variables of the environment and the secret options resolved so far. Errors leaving
/// the CLI and the server, and every log line they write, pass through it.
pub fn redact(text: &str) -> String {
    with_secrets(|secrets| {
        let mut out = None::<String>;
        for secret in secrets.iter() {
            let cur = out.as_deref().unwrap_or(text);
            if cur.contains(secret.as_str()) {
                out = Some(cur.replace(secret.as_str(), "***"));
            }
        }
        out.unwrap_or_else(|| text.to_owned())
    })
}

/// Register the object-store handlers compiled into this build with deltalake, once.
pub fn register_handlers() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        #[cfg(feature = "s3")]
        deltalake::aws::register_handlers(None);
        #[cfg(feature = "azure")]
        deltalake::azure::register_handlers(None);
        #[cfg(feature = "gcs")]
        deltalake::gcp::register_handlers(None);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_checked_per_family_with_a_suggestion() {
        assert!(check_key(Family::S3, "aws_region").is_ok());
        assert!(check_key(Family::S3, "allow_http").is_ok());
        assert!(check_key(Family::Azure, "azure_allow_http").is_ok());
        let e = check_key(Family::S3, "aws_regoin").unwrap_err();
        assert!(e.contains("did you mean `aws_region`"), "{e}");
        let e = check_key(Family::S3, "azure_storage_account_name").unwrap_err();
        assert!(e.contains("start with `aws_`"), "{e}");
        assert!(
            check_key(Family::S3, "AWS_REGION")
                .unwrap_err()
                .contains("lower case")
        );
        assert!(
            check_key(Family::S3, "aws_s3_allow_unsafe_rename")
                .unwrap_err()
                .contains("conditional puts")
        );
    }

    #[test]
    fn secrets_are_only_read_from_the_environment() {
        let e = parse_value("aws_secret_access_key", "hunter2hunter2").unwrap_err();
        assert!(e.contains("${AWS_SECRET_ACCESS_KEY}"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        assert!(parse_value("aws_secret_access_key", "${MY_KEY}").is_ok());
        assert!(parse_value("azure_storage_sas_key", "sv=2020").is_err());
        assert!(parse_value("aws_access_key_id", "AKIAEXAMPLE").is_ok());
        assert!(OptionValue::parse("a${B}").is_err());
        assert!(OptionValue::parse("${lower}").is_err());
    }

    #[test]
    fn resolution_reads_the_environment_redacts_and_forbids_unsafe_renames() {
        let env = |name: &str| (name == "MY_SECRET").then(|| "s3cr3t-value-1234".to_owned());
        let cfg = ProcessConfig::read(|n| (n == "QUIVER_STORAGE_ENV").then(|| "MY_SECRET".into()))
            .unwrap();
        let r = Resolved::resolve_with(
            Some(Family::S3),
            None,
            [
                ("aws_region", "us-east-1"),
                ("aws_secret_access_key", "${MY_SECRET}"),
            ],
            Origin::Local,
            &cfg,
            env,
        )
        .unwrap();
        assert_eq!(r.to_map()["aws_secret_access_key"], "s3cr3t-value-1234");
        assert_eq!(r.to_map()["AWS_S3_ALLOW_UNSAFE_RENAME"], "false");
        assert_eq!(
            redact("denied for s3cr3t-value-1234 at us-east-1"),
            "denied for *** at us-east-1"
        );
        assert!(!format!("{r:?}").contains("s3cr3t"));
        let e = Resolved::resolve_with(
            Some(Family::S3),
            None,
            [("aws_session_token", "${AWS_SESSION_TOKEN}")],
            Origin::Local,
            &cfg,
            env,
        )
        .unwrap_err();
        assert!(
            e.contains("AWS_SESSION_TOKEN") && e.contains("not set"),
            "{e}"
        );
        assert!(Resolved::resolve(None, [("aws_region", "x")]).is_err());
    }
}

#[cfg(test)]
mod received {
    use super::*;

    fn resolve(
        written: &[(&str, &str)],
        origin: Origin,
        cfg: &ProcessConfig,
    ) -> Result<Resolved, String> {
        let env = |n: &str| match n {
            "AWS_SECRET_ACCESS_KEY" => Some("canary-secret-key-1".to_owned()),
            "AWS_SESSION_TOKEN" => Some("canary-session-tok".to_owned()),
            _ => None,
        };
        Resolved::resolve_with(
            Some(Family::S3),
            Some("transactions"),
            written.iter().copied(),
            origin,
            cfg,
            env,
        )
    }

    #[test]
    fn no_option_can_carry_another_keys_secret() {
        let cfg = ProcessConfig::default();
        // A secret option reads its own variable only.
        let e = resolve(
            &[("aws_session_token", "${AWS_SECRET_ACCESS_KEY}")],
            Origin::Local,
            &cfg,
        )
        .unwrap_err();
        assert!(
            e.contains("does not allow") && e.contains("${AWS_SESSION_TOKEN}"),
            "{e}"
        );
        // A non-secret option never reads the environment.
        let e = resolve(
            &[("aws_region", "${AWS_SECRET_ACCESS_KEY}")],
            Origin::Local,
            &cfg,
        )
        .unwrap_err();
        assert!(e.contains("not a secret"), "{e}");
        let e = resolve(
            &[("user_agent", "${AWS_SESSION_TOKEN}")],
            Origin::Local,
            &cfg,
        )
        .unwrap_err();
        assert!(e.contains("not a secret"), "{e}");
        assert!(
            resolve(
                &[("aws_session_token", "${AWS_SESSION_TOKEN}")],
                Origin::Local,
                &cfg
            )
            .is_ok()
        );
    }

    #[test]
    fn host_options_are_the_receivers_own() {
        for key in [
            "aws_endpoint",
            "aws_endpoint_url",
            "aws_container_credentials_full_uri",
            "aws_container_authorization_token_file",
            "aws_web_identity_token_file",
            "aws_metadata_endpoint",
            "aws_allow_http",
            "proxy_url",
            "allow_invalid_certificates",
            "azure_storage_endpoint",
            "azure_msi_endpoint",
            "azure_federated_token_file",
            "azure_storage_authority_host",
            "google_service_account_path",
            "google_application_credentials",
        ] {
            assert!(is_host_key(key), "{key}");
        }
        for key in [
            "google_service_account",
            "aws_s3_assume_role_arn",
            "aws_role_arn",
            "azure_storage_client_id",
            "azure_object_id",
            "azure_msi_resource_id",
        ] {
            assert!(is_host_key(key), "{key}");
        }
        for key in [
            "aws_region",
            "aws_bucket",
            "aws_secret_access_key",
            "azure_storage_account_name",
            "google_service_account_key",
        ] {
            assert!(!is_host_key(key), "{key}");
        }
        let cfg = ProcessConfig::default();
        // Names that become part of a host cannot end it or start a path.
        for (key, evil) in [
            ("aws_bucket_name", "evil.example/x"),
            ("aws_region", "x@internal.host/#"),
            ("aws_bucket", "b?x=1"),
        ] {
            let e = resolve(&[(key, evil)], Origin::Local, &cfg).unwrap_err();
            assert!(e.contains("host name or path"), "{key}: {e}");
        }
        assert!(resolve(&[("aws_region", "eu-west-1")], Origin::Local, &cfg).is_ok());
        let evil = [("aws_endpoint", "http://127.0.0.1:9"), ("aws_region", "x")];
        assert!(resolve(&evil, Origin::Local, &cfg).is_ok());
        let e = resolve(&evil, Origin::Received, &cfg).unwrap_err();
        assert!(e.contains("`aws_endpoint` of source `transactions`"), "{e}");
        // The receiver's own configuration for the source supplies them.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("storage.json");
        std::fs::write(
            &path,
            r#"{"transactions": {"aws_endpoint": "http://127.0.0.1:9000", "aws_allow_http": "true"}}"#,
        )
        .unwrap();
        let p = path.display().to_string();
        let cfg =
            ProcessConfig::read(|n| (n == "QUIVER_STORAGE_CONFIG").then(|| p.clone())).unwrap();
        let r = resolve(&[("aws_region", "eu-west-1")], Origin::Received, &cfg).unwrap();
        assert_eq!(r.to_map()["aws_endpoint"], "http://127.0.0.1:9000");
        assert_eq!(r.to_map()["aws_region"], "eu-west-1");
    }
}
